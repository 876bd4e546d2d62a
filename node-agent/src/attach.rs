// SPDX-License-Identifier: Apache-2.0
//! `weave attach`/`weave detach`: wiring a network namespace to the bridge
//! with a veth pair whose other end, `ethwe0`, holds the given addresses.
//!
//! The wiring itself lives in [`weave_platform::wiring`], shared with the
//! CNI plugin; this module only fixes what is particular to attach: the pod
//! interface name, host names derived from the namespace path, and the
//! multicast route. Attaching twice is harmless, and detaching something
//! already gone succeeds.

use std::path::Path;

use weave_api::net::IpNet;
use weave_platform::wiring::{self, PodRoute, PodWiring, WiringError};
use weave_platform::{LinuxNetlink, Netlink};

/// Name of the interface inside the namespace.
pub const POD_IFNAME: &str = "ethwe0";

/// Host-side interface name for a namespace path: stable, so detach finds it
/// and a repeated attach reuses it (FNV-1a of the path, 6 hex digits).
pub fn host_ifname(netns: &Path) -> String {
    wiring::host_ifname(&netns.to_string_lossy(), 6)
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

impl From<WiringError> for AttachError {
    fn from(e: WiringError) -> Self {
        match e {
            WiringError::NoNetns(n) => Self::NoNetns(n),
            WiringError::NoPodIf { netns, ifname } => {
                Self::NoNetns(format!("{netns} (no {ifname} inside)"))
            }
            WiringError::NoBridge(b) => Self::NoBridge(b),
            WiringError::Platform(p) => Self::Platform(p),
        }
    }
}

/// Wires `netns` to `bridge` with `cidrs`; returns the pod interface name.
pub async fn attach(
    host: &impl Netlink,
    bridge: &str,
    mtu: u32,
    netns: &Path,
    cidrs: &[IpNet],
) -> Result<String, AttachError> {
    if !netns.exists() {
        return Err(AttachError::NoNetns(netns.display().to_string()));
    }
    let pod = LinuxNetlink::in_netns(netns)?;
    // Multicast leaves through the overlay, as on Weave Net.
    let multicast = [PodRoute {
        dst: IpNet::V4(
            weave_api::net::Ipv4Net::new([224, 0, 0, 0].into(), 4)
                .expect("4 is a valid IPv4 prefix length"),
        ),
        gateway: None,
    }];
    let routes: &[PodRoute] = if cidrs.iter().any(|c| c.addr().is_ipv4()) {
        &multicast
    } else {
        &[]
    };
    let host_if = host_ifname(netns);
    wiring::wire(
        host,
        &pod,
        &PodWiring {
            bridge,
            host_if: &host_if,
            pod_if: POD_IFNAME,
            netns,
            mtu,
            addrs: cidrs,
            routes,
            hairpin: false,
        },
    )
    .await?;
    Ok(POD_IFNAME.to_string())
}

/// Undoes [`attach`]: deleting the host end removes the pair.
pub async fn detach(host: &impl Netlink, netns: &Path) -> Result<(), AttachError> {
    wiring::unwire(host, &host_ifname(netns)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_stable_and_short() {
        let a = host_ifname(Path::new("/run/netns/pod-a"));
        assert_eq!(a, host_ifname(Path::new("/run/netns/pod-a")));
        assert_ne!(a, host_ifname(Path::new("/run/netns/pod-b")));
        assert!(a.len() <= 15);
    }
}
