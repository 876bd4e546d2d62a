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
//!
//! Besides links, addresses and routes, the seam covers what the kernel fast
//! path needs: a VXLAN device ([`Netlink::ensure_vxlan`]), bridge-port flags
//! ([`Netlink::set_bridge_port`]) and forwarding-database entries of the
//! bridge and of the VXLAN device ([`FdbEntry`], `bridge fdb`); and the
//! announcements a pod makes when it appears ([`Netlink::announce`]).

mod linux;

use std::{future::Future, net::IpAddr, path::Path};

pub use self::linux::LinuxNetlink;
use crate::error::{Error, Result};

/// Longest interface name the kernel accepts (`IFNAMSIZ` - 1).
pub const MAX_IFNAME_LEN: usize = 15;

/// An Ethernet address.
pub type Mac = [u8; 6];

/// Settings of a VXLAN device for [`Netlink::ensure_vxlan`]: `ip link add
/// NAME type vxlan id VNI dstport PORT nolearning df set` (no local, remote
/// or group address: destinations come from its forwarding entries, and it
/// listens on every IPv4 address of the namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanSpec {
    /// VXLAN network identifier (24 bits).
    pub vni: u32,
    /// UDP port it listens on and sends to by default.
    pub port: u16,
    /// MTU of the device (the inner frames it takes, without Ethernet header).
    pub mtu: u32,
}

/// What [`Netlink::ensure_vxlan`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanLink {
    /// Its ifindex.
    pub index: u32,
    /// Whether it existed with these settings and was kept as it was
    /// (forwarding entries included).
    pub adopted: bool,
}

/// Flags of a bridge port for [`Netlink::set_bridge_port`]; `None` leaves a
/// flag as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BridgePortFlags {
    /// Isolated ports never forward to each other, only to non-isolated ones
    /// (`bridge link set dev X isolated on`).
    pub isolated: Option<bool>,
    /// Whether the bridge learns source addresses arriving on the port
    /// (`bridge link set dev X learning off`).
    pub learning: Option<bool>,
}

/// How a bridge's forwarding entry came to be (`bridge fdb` shows it as
/// nothing, `static`, `sticky` or `permanent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BridgeFdbState {
    /// Learned from traffic; ages out.
    Learned,
    /// Added by user space; never ages, but learning may move it.
    Static,
    /// Added by user space and pinned to its port: learning never moves it.
    Sticky,
    /// An address of the bridge or of a port itself (delivered locally).
    Local,
}

/// What a forwarding entry says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FdbTarget {
    /// An entry of the bridge `bridge` (`master`): frames to the MAC leave
    /// through the port the entry belongs to.
    Bridge {
        /// Ifindex of the bridge.
        bridge: u32,
        /// How it came to be.
        state: BridgeFdbState,
    },
    /// An entry of a VXLAN device's own table (`self`): frames to the MAC
    /// are sent to `dst:port`. The all-zero MAC lists where frames without
    /// an entry of their own go (broadcast, multicast, unknown unicast), one
    /// entry per destination.
    Remote {
        /// The peer's underlay address.
        dst: IpAddr,
        /// Its UDP port; `None` is the device's own (the kernel lists no
        /// port for those).
        port: Option<u16>,
    },
}

/// One forwarding-database entry (`bridge fdb show`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FdbEntry {
    /// The Ethernet address.
    pub mac: Mac,
    /// The device it belongs to: a bridge port for [`FdbTarget::Bridge`],
    /// the VXLAN device for [`FdbTarget::Remote`].
    pub ifindex: u32,
    /// What it says.
    pub target: FdbTarget,
}

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

    /// Creates the VXLAN device `name` with `spec` (learning off, "don't
    /// fragment" set on the outer header) and brings it up; returns its
    /// ifindex. A VXLAN device of that name with the same VNI and port is
    /// adopted as it is (its forwarding entries stay), only its MTU set; one
    /// with other settings is replaced. Fails with
    /// [`Error::LinkKindMismatch`] if `name` is another kind of link, and
    /// with the kernel's errno if the port is taken (EADDRINUSE, reported
    /// when the device goes up).
    fn ensure_vxlan(
        &self,
        name: &str,
        spec: VxlanSpec,
    ) -> impl Future<Output = Result<VxlanLink>> + Send;

    /// Sets flags of bridge port `index` (`bridge link set dev X ...`).
    fn set_bridge_port(
        &self,
        index: u32,
        flags: BridgePortFlags,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Every bridge and VXLAN forwarding entry of the namespace
    /// (`bridge fdb show`), without the ports' own address lists.
    fn fdb_entries(&self) -> impl Future<Output = Result<Vec<FdbEntry>>> + Send;

    /// Adds or replaces a forwarding entry. A bridge entry must be
    /// [`BridgeFdbState::Static`] or [`BridgeFdbState::Sticky`] and replaces
    /// any entry of the bridge for that MAC (`bridge fdb replace MAC dev PORT
    /// master static [sticky]`); a remote entry for a MAC replaces the MAC's
    /// destination (`bridge fdb replace MAC dev VXLAN dst IP port P self
    /// permanent`), except for the all-zero MAC, whose destinations add up
    /// (`bridge fdb append`). Adding what exists is success.
    fn fdb_add(&self, entry: &FdbEntry) -> impl Future<Output = Result<()>> + Send;

    /// Deletes a forwarding entry (for the all-zero MAC, that one
    /// destination); a missing entry is success.
    fn fdb_del(&self, entry: &FdbEntry) -> impl Future<Output = Result<()>> + Send;

    /// Waits up to `limit` for link `index` of this handle's namespace to be
    /// operationally up (its `operstate` UP). A veth end's carrier comes on
    /// when its peer goes up, but the kernel's link watch, which gives the
    /// device a working queue and turns a bridge port on, runs a moment
    /// later; a frame sent before that is lost. Returns whether it came up
    /// in time (`false` also when there is no such link).
    fn wait_oper_up(
        &self,
        index: u32,
        limit: std::time::Duration,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Announces `addrs` from link `index` of this handle's namespace, whose
    /// MAC is `mac`: a gratuitous ARP request for each IPv4 address and an
    /// unsolicited neighbour advertisement (override set, to all nodes) for
    /// each IPv6 one, so that neighbours and switches forget where the
    /// addresses were before (RFC 5227 §3, RFC 4861 §7.2.6).
    fn announce(
        &self,
        index: u32,
        mac: Mac,
        addrs: &[IpAddr],
    ) -> impl Future<Output = Result<()>> + Send;
}

/// Checks the arguments of [`Netlink::fdb_add`] and [`Netlink::fdb_del`];
/// returns the operation as errors name it (`verb` is `add` or `delete`).
pub(crate) fn fdb_op(verb: &str, e: &FdbEntry) -> Result<String> {
    let mac = fmt_mac(e.mac);
    match e.target {
        FdbTarget::Bridge { state, .. } => {
            if verb == "add" && !matches!(state, BridgeFdbState::Static | BridgeFdbState::Sticky) {
                return Err(Error::InvalidFdb {
                    entry: format!("{mac} dev {}", e.ifindex),
                    reason: "only static or sticky bridge entries can be added",
                });
            }
            Ok(format!("{verb} fdb entry {mac} dev {} master", e.ifindex))
        }
        FdbTarget::Remote { dst, port } => {
            if mac_is_group(e.mac) {
                return Err(Error::InvalidFdb {
                    entry: format!("{mac} dev {} dst {dst}", e.ifindex),
                    reason: "a remote entry needs a unicast or all-zero MAC",
                });
            }
            let port = port.map(|p| format!(" port {p}")).unwrap_or_default();
            if dst.is_unspecified() || dst.is_multicast() || port == " port 0" {
                return Err(Error::InvalidFdb {
                    entry: format!("{mac} dev {} dst {dst}{port}", e.ifindex),
                    reason: "a remote entry needs a unicast destination and a non-zero port",
                });
            }
            Ok(format!(
                "{verb} fdb entry {mac} dev {} dst {dst}{port} self",
                e.ifindex
            ))
        }
    }
}

/// Whether `mac` is a group (multicast or broadcast) address.
pub(crate) fn mac_is_group(mac: Mac) -> bool {
    mac[0] & 1 == 1
}

/// Checks a VXLAN device's settings; returns the operation as errors name it.
pub(crate) fn vxlan_op(name: &str, spec: VxlanSpec) -> Result<String> {
    validate_ifname(name)?;
    let op = format!(
        "ensure vxlan {name} id {} dstport {} mtu {}",
        spec.vni, spec.port, spec.mtu
    );
    if spec.vni >= 1 << 24 || spec.port == 0 {
        return Err(Error::InvalidVxlan {
            op,
            reason: "the VNI must fit 24 bits and the port must not be 0",
        });
    }
    Ok(op)
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
    fn fdb_and_vxlan_checks() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("test address");
        let remote = |mac: Mac, dst: &str, port: u16| FdbEntry {
            mac,
            ifindex: 3,
            target: FdbTarget::Remote {
                dst: ip(dst),
                port: Some(port),
            },
        };
        fdb_op("add", &remote([0; 6], "10.0.0.2", 6784)).expect("flood entry");
        fdb_op("add", &remote([2, 0, 0, 0, 0, 1], "10.0.0.2", 6784)).expect("unicast entry");
        assert!(fdb_op("add", &remote([1, 0, 0x5e, 0, 0, 1], "10.0.0.2", 6784)).is_err());
        assert!(fdb_op("add", &remote([0; 6], "0.0.0.0", 6784)).is_err());
        assert!(fdb_op("add", &remote([0; 6], "10.0.0.2", 0)).is_err());
        let learned = FdbEntry {
            mac: [2, 0, 0, 0, 0, 1],
            ifindex: 3,
            target: FdbTarget::Bridge {
                bridge: 2,
                state: BridgeFdbState::Learned,
            },
        };
        assert!(
            fdb_op("add", &learned).is_err(),
            "only static entries are added"
        );
        fdb_op("delete", &learned).expect("any entry can be deleted");
        let spec = VxlanSpec {
            vni: 1 << 24,
            port: 6784,
            mtu: 1436,
        };
        assert!(vxlan_op("vxlan-weave", spec).is_err());
        assert!(vxlan_op("vxlan-weave", VxlanSpec { vni: 1, ..spec }).is_ok());
        assert!(vxlan_op(
            "vxlan-weave",
            VxlanSpec {
                vni: 1,
                port: 0,
                ..spec
            }
        )
        .is_err());
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
