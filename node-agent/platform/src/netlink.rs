// SPDX-License-Identifier: Apache-2.0
//! The `Netlink` seam: links, addresses and routes of one network namespace.
//!
//! [`Netlink`] is what the data plane and the CNI plugin program against;
//! [`LinuxNetlink`] speaks rtnetlink to the kernel and `fake::FakeNetlink`
//! (feature `fake`) keeps the same state in memory. Both share the argument
//! checks below (`*_op` check an operation's arguments and name it for
//! errors, so both implementations refuse and describe alike) and the same
//! idempotency rules (STYLE §2): creating something that exists is success,
//! deleting something that is gone is success.
//!
//! A handle is bound to one namespace for life: the namespace its netlink
//! socket was opened in. Use [`LinuxNetlink::in_netns`] for another one.

mod linux;

use std::{future::Future, net::IpAddr, path::Path};

pub use self::linux::LinuxNetlink;
use crate::error::{Error, Result};

/// Longest interface name the kernel accepts (`IFNAMSIZ` - 1).
pub const MAX_IFNAME_LEN: usize = 15;

/// One IPv4 route of the main table, as listed by [`Netlink::routes_v4`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Route {
    /// Destination network (`0.0.0.0` for the default route).
    pub dst: IpAddr,
    /// Destination prefix length.
    pub prefix_len: u8,
    /// Next hop, if the route goes through a gateway.
    pub gateway: Option<IpAddr>,
    /// Output interface index, if the route names one.
    pub oif: Option<u32>,
}

/// Link, address and route operations on one network namespace (the
/// `ip link` / `ip addr` / `ip route` subset weave needs).
///
/// Methods return `Send` futures so callers can spawn them. The trait is meant
/// for generic use (`N: Netlink`), not as a trait object.
pub trait Netlink: Send + Sync {
    /// Creates the bridge if missing (idempotent: EEXIST is success), sets its
    /// MTU and brings it up; returns its ifindex. Fails with
    /// [`Error::LinkKindMismatch`] if `name` exists but is not a bridge.
    /// Like `ip link add NAME type bridge; ip link set NAME mtu MTU up`.
    fn ensure_bridge(&self, name: &str, mtu: u32) -> impl Future<Output = Result<u32>> + Send;

    /// The ifindex of the link called `name`, or `None` if there is none.
    fn link_index(&self, name: &str) -> impl Future<Output = Result<Option<u32>>> + Send;

    /// The MTU of the link called `name`, or `None` if there is no such link.
    fn link_mtu(&self, name: &str) -> impl Future<Output = Result<Option<u32>>> + Send;

    /// Brings a link up (`ip link set dev X up`).
    fn set_up(&self, index: u32) -> impl Future<Output = Result<()>> + Send;

    /// Sets a link's MTU (`ip link set dev X mtu MTU`).
    fn set_mtu(&self, index: u32, mtu: u32) -> impl Future<Output = Result<()>> + Send;

    /// Attaches a link to a bridge (`ip link set dev X master BR`).
    fn set_master(&self, index: u32, master: u32) -> impl Future<Output = Result<()>> + Send;

    /// Sets the hairpin flag on a bridge port
    /// (`ip link set dev X type bridge_slave hairpin on`), so frames may leave
    /// through the port they came in on.
    fn set_hairpin(&self, index: u32, on: bool) -> impl Future<Output = Result<()>> + Send;

    /// Deletes a link by name; a missing link is success. Deleting one end of
    /// a veth pair deletes both.
    fn delete_link(&self, name: &str) -> impl Future<Output = Result<()>> + Send;

    /// Creates a veth pair: `host_if` stays in this namespace, its peer is
    /// created directly inside the namespace at `netns_path` under the name
    /// `peer_if`, both with `mtu`. Returns the host end's ifindex. Both ends
    /// start down. If `host_if` already exists as a veth (a retried CNI ADD),
    /// its index is returned; if it exists as something else, this fails with
    /// [`Error::LinkKindMismatch`].
    fn create_veth(
        &self,
        host_if: &str,
        peer_if: &str,
        netns_path: &Path,
        mtu: u32,
    ) -> impl Future<Output = Result<u32>> + Send;

    /// Adds an address to a link (`ip addr add ADDR/LEN dev X`); an address
    /// that is already there is success.
    fn add_addr(
        &self,
        index: u32,
        addr: IpAddr,
        prefix_len: u8,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Removes an address from a link (`ip addr del ADDR/LEN dev X`); an
    /// address that is not there is success.
    fn del_addr(
        &self,
        index: u32,
        addr: IpAddr,
        prefix_len: u8,
    ) -> impl Future<Output = Result<()>> + Send;

    /// The addresses of a link, IPv4 and IPv6, with their prefix lengths.
    fn addrs(&self, index: u32) -> impl Future<Output = Result<Vec<(IpAddr, u8)>>> + Send;

    /// Adds a route to `dst/prefix_len` in the main table, through `gateway`
    /// if given, out of link `index` (`ip route add DST/LEN [via GW] dev X`).
    /// EEXIST is success: the kernel reports it for any route to the same
    /// prefix, even one with another gateway or device, so callers that care
    /// compare [`Netlink::routes_v4`] first (desired, diff, apply).
    fn add_route(
        &self,
        dst: IpAddr,
        prefix_len: u8,
        gateway: Option<IpAddr>,
        index: u32,
    ) -> impl Future<Output = Result<()>> + Send;

    /// IPv4 unicast routes of the main table, including the connected routes
    /// the kernel adds for addresses on links that are up.
    fn routes_v4(&self) -> impl Future<Output = Result<Vec<Route>>> + Send;

    /// Sets a link's MAC address (`ip link set dev X address MAC`).
    fn set_mac(&self, index: u32, mac: [u8; 6]) -> impl Future<Output = Result<()>> + Send;

    /// The MAC address of a link, or `None` if it has none (or is gone).
    fn link_mac(&self, index: u32) -> impl Future<Output = Result<Option<[u8; 6]>>> + Send;

    /// The MTU of the link with ifindex `index`, or `None` if there is none
    /// (routes name their device by index).
    fn link_mtu_by_index(&self, index: u32) -> impl Future<Output = Result<Option<u32>>> + Send;
}

/// Refuses names the kernel would refuse (`dev_valid_name`), so both
/// implementations fail the same way and before any side effect.
pub(crate) fn validate_ifname(name: &str) -> Result<()> {
    let invalid = |reason| {
        Err(Error::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return invalid("empty");
    }
    if name.len() > MAX_IFNAME_LEN {
        return invalid("longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return invalid("reserved");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
    {
        return invalid("contains '/', ':', whitespace or NUL");
    }
    Ok(())
}

/// Checks the arguments of [`Netlink::create_veth`] (both names); returns
/// the operation as errors name it.
pub(crate) fn veth_op(host_if: &str, peer_if: &str, netns_path: &Path) -> Result<String> {
    validate_ifname(host_if)?;
    validate_ifname(peer_if)?;
    Ok(format!(
        "create veth {host_if} with peer {peer_if} in network namespace {}",
        netns_path.display()
    ))
}

/// Checks the arguments of [`Netlink::add_addr`]; returns the operation as
/// errors name it.
pub(crate) fn addr_op(index: u32, addr: IpAddr, prefix_len: u8) -> Result<String> {
    check_addr(addr, prefix_len)?;
    Ok(format!("add address {addr}/{prefix_len} to link {index}"))
}

/// Checks the arguments of [`Netlink::add_route`]; returns the operation as
/// errors name it.
pub(crate) fn route_op(
    dst: IpAddr,
    prefix_len: u8,
    gateway: Option<IpAddr>,
    index: u32,
) -> Result<String> {
    check_route(dst, prefix_len, gateway)?;
    let via = gateway.map(|gw| format!(" via {gw}")).unwrap_or_default();
    Ok(format!("add route {dst}/{prefix_len}{via} dev {index}"))
}

pub use crate::fmt_mac;

/// Width in bits of `addr`'s family.
fn family_width(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// Checks an interface address's prefix length.
pub(crate) fn check_addr(addr: IpAddr, prefix_len: u8) -> Result<()> {
    if prefix_len > family_width(addr) {
        return Err(Error::InvalidPrefix {
            addr,
            prefix_len,
            reason: "prefix length longer than the address",
        });
    }
    Ok(())
}

/// Checks a route: prefix length within the family, no host bits in the
/// destination (the kernel refuses those with EINVAL), gateway of the same
/// family.
pub(crate) fn check_route(dst: IpAddr, prefix_len: u8, gateway: Option<IpAddr>) -> Result<()> {
    check_addr(dst, prefix_len)?;
    if network(dst, prefix_len) != dst {
        return Err(Error::InvalidPrefix {
            addr: dst,
            prefix_len,
            reason: "host bits set in route destination",
        });
    }
    if gateway.is_some_and(|gw| gw.is_ipv4() != dst.is_ipv4()) {
        return Err(Error::InvalidPrefix {
            addr: dst,
            prefix_len,
            reason: "gateway is of another address family",
        });
    }
    Ok(())
}

/// `addr` with the bits past `prefix_len` cleared. `prefix_len` must be
/// within the family's width.
pub(crate) fn network(addr: IpAddr, prefix_len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::V4((u32::from(a) & mask).into())
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::V6((u128::from(a) & mask).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifname_rules_match_the_kernel() {
        for ok in ["weave", "vethwepl1234567", "eth0.100", "a"] {
            validate_ifname(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "",
            "vethwepl12345678",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "a\0",
        ] {
            assert!(validate_ifname(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn route_checks() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("test address");
        check_route(ip("10.32.0.0"), 12, None).expect("network address");
        check_route(ip("0.0.0.0"), 0, Some(ip("10.0.0.1"))).expect("default route");
        check_route(ip("10.32.0.1"), 32, None).expect("host route");
        assert!(check_route(ip("10.32.0.1"), 12, None).is_err());
        assert!(check_route(ip("10.32.0.0"), 33, None).is_err());
        assert!(check_route(ip("10.32.0.0"), 12, Some(ip("fe80::1"))).is_err());
        check_route(ip("fd00::"), 64, Some(ip("fe80::1"))).expect("v6 route");
        assert!(check_addr(ip("fd00::1"), 129).is_err());
    }

    #[test]
    fn mac_is_formatted_like_iproute2() {
        assert_eq!(fmt_mac([0x02, 0, 0xab, 1, 2, 0xff]), "02:00:ab:01:02:ff");
    }

    #[test]
    fn network_clears_host_bits() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("test address");
        assert_eq!(network(ip("10.32.1.2"), 12), ip("10.32.0.0"));
        assert_eq!(network(ip("10.32.1.2"), 0), ip("0.0.0.0"));
        assert_eq!(network(ip("10.32.1.2"), 32), ip("10.32.1.2"));
        assert_eq!(network(ip("fd00::1:2"), 112), ip("fd00::1:0"));
    }
}
