// SPDX-License-Identifier: Apache-2.0
//! Wiring a network namespace to a bridge: a veth pair whose host end is a
//! bridge port and whose other end, inside the namespace, holds the pod's
//! addresses and routes. Shared by `weave attach` (the agent) and the CNI
//! plugin `weave-net`, so both wire pods the same way.
//!
//! Every step is idempotent (STYLE §2): wiring twice gives the same result,
//! and [`unwire`] of something already gone succeeds. Nothing here decides
//! addresses or names: callers pass them in, so the agent's IPAM and the
//! plugin's result stay the single source of truth.

use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;

use crate::netlink::Netlink;

/// Prefix of every host-side veth name (as on Weave Net, so operators
/// recognise the ports of `weave` in `ip link`).
pub const HOST_IF_PREFIX: &str = "vethwepl";

/// A route to install inside the namespace (`ip route add DST/LEN [via GW]
/// dev POD_IF`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodRoute {
    /// Destination network (`0.0.0.0/0` for the default route).
    pub dst: IpNet,
    /// Next hop; `None` routes straight out of the pod interface.
    pub gateway: Option<IpAddr>,
}

/// What to build for one pod.
#[derive(Debug, Clone, Copy)]
pub struct PodWiring<'a> {
    /// The bridge the host end joins.
    pub bridge: &'a str,
    /// Name of the host end (see [`host_ifname`]).
    pub host_if: &'a str,
    /// Name of the end inside the namespace (`ethwe0`, or the CNI ifname).
    pub pod_if: &'a str,
    /// Path of the namespace (`/run/netns/NAME`, `/proc/PID/ns/net`).
    pub netns: &'a Path,
    /// MTU of both ends.
    pub mtu: u32,
    /// Addresses of the pod interface, each with the prefix length of its
    /// network.
    pub addrs: &'a [IpNet],
    /// Routes inside the namespace, added in order after the addresses.
    pub routes: &'a [PodRoute],
    /// Whether the bridge may send a frame back out of the port it came in
    /// on (`hairpinMode`: a pod reaching itself through a service address).
    pub hairpin: bool,
}

/// What [`wire`] built, for results that report interfaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wired {
    /// Ifindex of the host end.
    pub host_index: u32,
    /// MAC of the host end.
    pub host_mac: Option<[u8; 6]>,
    /// Ifindex of the pod end, inside the namespace.
    pub pod_index: u32,
    /// MAC of the pod end.
    pub pod_mac: Option<[u8; 6]>,
}

/// Errors of wiring a namespace.
#[derive(Debug, thiserror::Error)]
pub enum WiringError {
    /// The namespace path does not exist.
    #[error("network namespace {0} does not exist")]
    NoNetns(String),
    /// The bridge is missing (the agent is not running, or runs without one).
    #[error("bridge {0} does not exist; is weaver running with a bridge?")]
    NoBridge(String),
    /// The pod end did not show up inside the namespace after creation.
    #[error("interface {ifname} missing in network namespace {netns} after creating it")]
    NoPodIf {
        /// The interface name.
        ifname: String,
        /// The namespace path.
        netns: String,
    },
    /// A kernel operation failed.
    #[error(transparent)]
    Platform(#[from] crate::Error),
}

/// Host-side interface name for `key`: [`HOST_IF_PREFIX`] and `digits` hex
/// digits (1..=7, clamped) of the key's FNV-1a hash. Stable, so teardown
/// finds the link from the key alone, and at most 15 bytes.
pub fn host_ifname(key: &str, digits: usize) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in key.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let digits = digits.clamp(1, 7);
    let mask = (1u32 << (4 * digits)) - 1;
    format!("{HOST_IF_PREFIX}{:0digits$x}", h & mask)
}

/// Wires `w.netns` to `w.bridge`: creates the veth pair with its peer
/// directly inside the namespace, makes the host end a bridge port (with
/// hairpin as asked) and brings it up, then configures addresses, link
/// state, loopback and routes inside through `pod`, a handle opened in that
/// namespace. A gateway outside every pod subnet first gets a link-scope
/// host route, as the reference plugins do. Last, once the kernel has
/// seen both veth ends up ([`Netlink::wait_oper_up`]), the pod announces its
/// addresses (gratuitous ARP, unsolicited neighbour advertisement), as
/// Weave Net did, so that a moved address is found at its new place at
/// once.
pub async fn wire(
    host: &impl Netlink,
    pod: &impl Netlink,
    w: &PodWiring<'_>,
) -> Result<Wired, WiringError> {
    if !w.netns.exists() {
        return Err(WiringError::NoNetns(w.netns.display().to_string()));
    }
    let bridge_index = host
        .link_index(w.bridge)
        .await?
        .ok_or_else(|| WiringError::NoBridge(w.bridge.to_string()))?;
    let host_index = host
        .create_veth(w.host_if, w.pod_if, w.netns, w.mtu)
        .await?;
    host.set_master(host_index, bridge_index).await?;
    host.set_hairpin(host_index, w.hairpin).await?;
    host.set_up(host_index).await?;
    let pod_index = pod
        .link_index(w.pod_if)
        .await?
        .ok_or_else(|| WiringError::NoPodIf {
            ifname: w.pod_if.to_string(),
            netns: w.netns.display().to_string(),
        })?;
    for c in w.addrs {
        pod.add_addr(pod_index, c.addr(), c.prefix_len()).await?;
    }
    pod.set_up(pod_index).await?;
    if let Some(lo) = pod.link_index("lo").await? {
        pod.set_up(lo).await?;
    }
    for r in w.routes {
        if let Some(gw) = r.gateway {
            if !w.addrs.iter().any(|c| c.contains(&gw)) {
                let width = if gw.is_ipv4() { 32 } else { 128 };
                pod.add_route(gw, width, None, pod_index).await?;
            }
        }
        pod.add_route(r.dst.addr(), r.dst.prefix_len(), r.gateway, pod_index)
            .await?;
    }
    let pod_mac = pod.link_mac(pod_index).await?;
    if let Some(mac) = pod_mac {
        // A pod that reappears with an address it had elsewhere (or another
        // pod's old address) tells everybody at once, instead of leaving
        // stale ARP entries to time out. Best effort: the pod works without.
        // Sent before the kernel's link watch has seen both ends' carrier,
        // the announcement would be lost on the pod end's queue or at the
        // host end's bridge port, which are turned on only then.
        let limit = std::time::Duration::from_secs(2);
        let host_up = host.wait_oper_up(host_index, limit).await;
        let pod_up = pod.wait_oper_up(pod_index, limit).await;
        for (end, up) in [("host", host_up), ("pod", pod_up)] {
            match up {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(end, "veth end not up after {limit:?}; announcing anyway")
                }
                Err(e) => tracing::warn!(error = %e, end, "cannot watch the veth end's state"),
            }
        }
        let addrs: Vec<IpAddr> = w.addrs.iter().map(IpNet::addr).collect();
        if let Err(e) = pod.announce(pod_index, mac, &addrs).await {
            tracing::warn!(error = %e, netns = %w.netns.display(), "cannot announce the pod's addresses");
        }
    }
    Ok(Wired {
        host_index,
        host_mac: host.link_mac(host_index).await?,
        pod_index,
        pod_mac,
    })
}

/// Undoes [`wire`]: deleting the host end removes the pair (and with it the
/// pod end, its addresses and routes). A missing link is success.
pub async fn unwire(host: &impl Netlink, host_if: &str) -> Result<(), WiringError> {
    host.delete_link(host_if).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_stable_and_short() {
        let a = host_ifname("/run/netns/pod-a", 6);
        assert_eq!(a, host_ifname("/run/netns/pod-a", 6));
        assert_ne!(a, host_ifname("/run/netns/pod-b", 6));
        assert_eq!(a.len(), 14);
        assert_eq!(host_ifname("cni:x", 99).len(), 15);
        assert_eq!(host_ifname("cni:x", 0).len(), 9);
    }
}
