// SPDX-License-Identifier: Apache-2.0
//! Wiring a network namespace to the bridge: a veth pair whose host end is a
//! bridge port and whose other end, `ethwe0`, holds the given addresses.
//! Used by `weave attach`/`weave detach`; the CNI plugin will share it.
//!
//! Every step is idempotent, so attaching twice is harmless, and detaching
//! something already gone succeeds.

use std::net::IpAddr;
use std::path::Path;

use weave_platform::{LinuxNetlink, Netlink};

/// Name of the interface inside the namespace.
pub const POD_IFNAME: &str = "ethwe0";

/// An address with its prefix length, as `10.2.1.4/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The address.
    pub addr: IpAddr,
    /// The prefix length.
    pub prefix_len: u8,
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("invalid CIDR {s:?}: expected ADDRESS/PREFIX like 10.2.1.4/24");
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let prefix_len: u8 = p.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix_len == 0 || prefix_len > max {
            return Err(format!(
                "invalid CIDR {s:?}: prefix length must be 1..={max}"
            ));
        }
        Ok(Self { addr, prefix_len })
    }
}

/// Host-side interface name for a namespace path: stable, so detach finds it
/// and a repeated attach reuses it (FNV-1a of the path, 6 hex digits).
pub fn host_ifname(netns: &Path) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in netns.as_os_str().as_encoded_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("vethwepl{:06x}", h & 0x00ff_ffff)
}

/// Errors of attaching.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The namespace path does not exist.
    #[error("network namespace {0} does not exist")]
    NoNetns(String),
    /// The bridge is missing (the sleeve is off).
    #[error("bridge {0} does not exist; is weaver running with a bridge?")]
    NoBridge(String),
    /// A kernel operation failed.
    #[error(transparent)]
    Platform(#[from] weave_platform::Error),
}

/// Wires `netns` to `bridge` with `cidrs`; returns the pod interface name.
pub async fn attach(
    host: &impl Netlink,
    bridge: &str,
    mtu: u32,
    netns: &Path,
    cidrs: &[Cidr],
) -> Result<String, AttachError> {
    if !netns.exists() {
        return Err(AttachError::NoNetns(netns.display().to_string()));
    }
    let bridge_index = host
        .link_index(bridge)
        .await?
        .ok_or_else(|| AttachError::NoBridge(bridge.to_string()))?;
    let host_if = host_ifname(netns);
    let index = host.create_veth(&host_if, POD_IFNAME, netns, mtu).await?;
    host.set_master(index, bridge_index).await?;
    host.set_up(index).await?;
    let pod = LinuxNetlink::in_netns(netns)?;
    let pod_index = pod.link_index(POD_IFNAME).await?.ok_or_else(|| {
        AttachError::NoNetns(format!("{} (no {POD_IFNAME} inside)", netns.display()))
    })?;
    for c in cidrs {
        pod.add_addr(pod_index, c.addr, c.prefix_len).await?;
    }
    pod.set_up(pod_index).await?;
    if let Some(lo) = pod.link_index("lo").await? {
        pod.set_up(lo).await?;
    }
    // Multicast leaves through the overlay, as on Weave Net.
    if cidrs.iter().any(|c| c.addr.is_ipv4()) {
        pod.add_route(IpAddr::from([224, 0, 0, 0]), 4, None, pod_index)
            .await?;
    }
    Ok(POD_IFNAME.to_string())
}

/// Undoes [`attach`]: deleting the host end removes the pair.
pub async fn detach(host: &impl Netlink, netns: &Path) -> Result<(), AttachError> {
    host.delete_link(&host_ifname(netns)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_refuse_nonsense() {
        let c: Cidr = "10.2.1.4/24".parse().unwrap();
        assert_eq!(c.to_string(), "10.2.1.4/24");
        for bad in [
            "10.2.1.4",
            "10.2.1.4/33",
            "10.2.1.4/0",
            "x/24",
            "fd00::1/129",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert!("fd00::1/64".parse::<Cidr>().is_ok());
    }

    #[test]
    fn host_names_are_stable_and_short() {
        let a = host_ifname(Path::new("/run/netns/pod-a"));
        assert_eq!(a, host_ifname(Path::new("/run/netns/pod-a")));
        assert_ne!(a, host_ifname(Path::new("/run/netns/pod-b")));
        assert!(a.len() <= 15);
    }
}
