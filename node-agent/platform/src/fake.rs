// SPDX-License-Identifier: Apache-2.0
//! `FakeNetlink`: an in-memory [`Netlink`] for unit tests (feature `fake`).
//!
//! It keeps links (index, name, kind, MTU, master, up, hairpin, addresses,
//! MAC, veth peer) and routes per network namespace, in a "world" shared by
//! all handles made from one [`FakeNetlink::new`], so a test can create a veth
//! into a pod namespace with one handle and configure the peer through
//! [`FakeNetlink::in_netns`], as the CNI plugin does with [`LinuxNetlink`].
//!
//! It follows the kernel where callers can observe it: EEXIST on create and
//! ENODEV/ENOENT on delete are success, the same argument checks run first,
//! unknown indexes fail with ENODEV, routes need an up link (ENETDOWN) and a
//! reachable gateway (ENETUNREACH), connected routes appear for addresses on
//! up links, deleting one veth end deletes the other, deleting a namespace
//! deletes the veths that had an end in it. Namespaces spring into existence
//! when first named (there is no file to open), each with `lo` as index 1.
//! [`FakeNetlink::fail_next`] injects an errno into the next call of an
//! operation.
//!
//! [`LinuxNetlink`]: crate::LinuxNetlink

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

use crate::{
    error::{netlink_error, Error, Result},
    netlink::{check_addr, check_route, network, validate_ifname, Netlink, Route},
};

/// The key of the namespace a [`FakeNetlink::new`] handle is bound to.
pub const HOST_NETNS: &str = "/proc/self/ns/net";

/// Smallest MTU the kernel accepts on Ethernet-like links (`ETH_MIN_MTU`).
const MIN_MTU: u32 = 68;
/// Largest MTU bridges and veths accept (`ETH_MAX_MTU`).
const MAX_MTU: u32 = 65535;

/// What kind of link a [`FakeLink`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeKind {
    /// The loopback device `lo`.
    Loopback,
    /// A device without an `IFLA_INFO_KIND`, like a physical NIC.
    Device,
    /// A Linux bridge.
    Bridge,
    /// One end of a veth pair.
    Veth,
    /// A TUN/TAP device.
    Tap,
}

impl FakeKind {
    /// The name `ip -d link` would show (`device` for none).
    fn name(self) -> &'static str {
        match self {
            FakeKind::Loopback | FakeKind::Device => "device",
            FakeKind::Bridge => "bridge",
            FakeKind::Veth => "veth",
            FakeKind::Tap => "tun",
        }
    }
}

/// Where the other end of a veth pair is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakePeer {
    /// The peer's interface name.
    pub name: String,
    /// The key (path) of the namespace the peer is in.
    pub netns: PathBuf,
}

/// One link as the fake sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeLink {
    /// Interface index, unique within its namespace.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Link kind.
    pub kind: FakeKind,
    /// MTU.
    pub mtu: u32,
    /// Index of the bridge this link is attached to.
    pub master: Option<u32>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Hairpin mode of the bridge port.
    pub hairpin: bool,
    /// Addresses with prefix lengths, in the order they were added.
    pub addrs: Vec<(IpAddr, u8)>,
    /// MAC address.
    pub mac: [u8; 6],
    /// The other end, for a veth.
    pub peer: Option<FakePeer>,
}

/// An operation of [`Netlink`], to aim [`FakeNetlink::fail_next`] at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeOp {
    /// [`Netlink::ensure_bridge`].
    EnsureBridge,
    /// [`Netlink::link_index`].
    LinkIndex,
    /// [`Netlink::link_mtu`].
    LinkMtu,
    /// [`Netlink::set_up`].
    SetUp,
    /// [`Netlink::set_mtu`].
    SetMtu,
    /// [`Netlink::set_master`].
    SetMaster,
    /// [`Netlink::set_hairpin`].
    SetHairpin,
    /// [`Netlink::delete_link`].
    DeleteLink,
    /// [`Netlink::create_veth`].
    CreateVeth,
    /// [`Netlink::add_addr`].
    AddAddr,
    /// [`Netlink::addrs`].
    Addrs,
    /// [`Netlink::add_route`].
    AddRoute,
    /// [`Netlink::routes_v4`].
    RoutesV4,
    /// [`Netlink::set_mac`].
    SetMac,
    /// [`Netlink::link_mac`].
    LinkMac,
}

/// An in-memory [`Netlink`] bound to one namespace of a shared fake world.
/// Clones and [`FakeNetlink::in_netns`] handles share that world.
#[derive(Debug, Clone)]
pub struct FakeNetlink {
    world: Arc<Mutex<World>>,
    netns: PathBuf,
}

#[derive(Debug, Default)]
struct World {
    namespaces: BTreeMap<PathBuf, Namespace>,
    failures: Vec<(FakeOp, i32)>,
    /// Counter behind unique MAC addresses.
    macs: u32,
}

#[derive(Debug)]
struct Namespace {
    links: BTreeMap<u32, FakeLink>,
    next_index: u32,
    /// Routes added with `add_route` (connected routes are derived).
    routes: Vec<Route>,
}

impl Default for FakeNetlink {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeNetlink {
    /// A fresh world whose host namespace ([`HOST_NETNS`]) has only `lo`.
    pub fn new() -> FakeNetlink {
        let fake = FakeNetlink {
            world: Arc::default(),
            netns: PathBuf::from(HOST_NETNS),
        };
        fake.with(|w| {
            w.ns(Path::new(HOST_NETNS));
        });
        fake
    }

    /// A handle on the namespace at `path` in the same world (created, with
    /// `lo`, if this is the first time it is named).
    pub fn in_netns(&self, path: &Path) -> FakeNetlink {
        self.with(|w| {
            w.ns(path);
        });
        FakeNetlink {
            world: Arc::clone(&self.world),
            netns: path.to_owned(),
        }
    }

    /// The key of the namespace this handle is bound to.
    pub fn netns(&self) -> &Path {
        &self.netns
    }

    /// Adds a link that exists before the code under test runs (an uplink
    /// `eth0`, a TAP made by [`crate::Tap`]). Starts up; returns its index.
    pub fn add_link(&self, name: &str, kind: FakeKind, mtu: u32) -> u32 {
        self.with(|w| {
            let mac = w.next_mac();
            let ns = w.ns(&self.netns);
            let index = ns.insert(name, kind, mtu, mac);
            if let Some(link) = ns.links.get_mut(&index) {
                link.up = true;
            }
            index
        })
    }

    /// Deletes the namespace at `path` and everything in it, along with the
    /// other ends of veths that had an end there (as the kernel does when a
    /// pod's namespace goes away).
    pub fn remove_netns(&self, path: &Path) {
        self.with(|w| {
            if let Some(ns) = w.namespaces.remove(path) {
                for link in ns.links.into_values() {
                    if let Some(peer) = link.peer {
                        w.remove_link_by_name(&peer.netns, &peer.name);
                    }
                }
            }
        });
    }

    /// Makes the next call of `op` (on any handle of this world) fail with
    /// `errno`, as a netlink error, before it changes anything.
    pub fn fail_next(&self, op: FakeOp, errno: i32) {
        self.with(|w| w.failures.push((op, errno)));
    }

    /// The link called `name` in this namespace.
    pub fn link(&self, name: &str) -> Option<FakeLink> {
        self.with(|w| w.ns(&self.netns).by_name(name).cloned())
    }

    /// The link with index `index` in this namespace.
    pub fn link_by_index(&self, index: u32) -> Option<FakeLink> {
        self.with(|w| w.ns(&self.netns).links.get(&index).cloned())
    }

    /// All links of this namespace, by index.
    pub fn links(&self) -> Vec<FakeLink> {
        self.with(|w| w.ns(&self.netns).links.values().cloned().collect())
    }

    /// All routes of this namespace's main table, both families, connected
    /// ones included, sorted.
    pub fn routes(&self) -> Vec<Route> {
        self.with(|w| w.ns(&self.netns).all_routes())
    }

    fn with<R>(&self, f: impl FnOnce(&mut World) -> R) -> R {
        // A panic in another test thread must not hide this one's state.
        let mut world = self.world.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut world)
    }

    /// Runs one operation: first any injected failure, then `f` on this
    /// namespace.
    fn op<R>(
        &self,
        op: FakeOp,
        what: impl FnOnce() -> String,
        f: impl FnOnce(&mut World, &Path) -> Result<R>,
    ) -> Result<R> {
        self.with(|w| {
            if let Some(pos) = w.failures.iter().position(|(o, _)| *o == op) {
                let (_, errno) = w.failures.remove(pos);
                return Err(Error::netlink(what(), netlink_error(errno)));
            }
            f(w, &self.netns)
        })
    }
}

impl World {
    /// The namespace at `path`, created with `lo` if new.
    fn ns(&mut self, path: &Path) -> &mut Namespace {
        if !self.namespaces.contains_key(path) {
            let mut ns = Namespace {
                links: BTreeMap::new(),
                next_index: 1,
                routes: Vec::new(),
            };
            let lo = ns.insert("lo", FakeKind::Loopback, 65536, [0; 6]);
            if let Some(lo) = ns.links.get_mut(&lo) {
                lo.up = true;
                lo.addrs = vec![
                    (IpAddr::V4(Ipv4Addr::LOCALHOST), 8),
                    (IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
                ];
            }
            self.namespaces.insert(path.to_owned(), ns);
        }
        self.namespaces
            .get_mut(path)
            .expect("the namespace was inserted just above if it was missing")
    }

    fn next_mac(&mut self) -> [u8; 6] {
        self.macs += 1;
        let [a, b, c, d] = self.macs.to_be_bytes();
        // Locally administered, unicast.
        [0x02, 0x00, a, b, c, d]
    }

    /// Removes a link and everything hanging off it; also removes the other
    /// end of a veth.
    fn remove_link_by_name(&mut self, netns: &Path, name: &str) {
        let Some(ns) = self.namespaces.get_mut(netns) else {
            return;
        };
        let Some(link) = ns.remove(name) else {
            return;
        };
        if let Some(peer) = link.peer {
            if let Some(other) = self.namespaces.get_mut(&peer.netns) {
                other.remove(&peer.name);
            }
        }
    }
}

impl Namespace {
    fn insert(&mut self, name: &str, kind: FakeKind, mtu: u32, mac: [u8; 6]) -> u32 {
        let index = self.next_index;
        self.next_index += 1;
        self.links.insert(
            index,
            FakeLink {
                index,
                name: name.to_owned(),
                kind,
                mtu,
                master: None,
                up: false,
                hairpin: false,
                addrs: Vec::new(),
                mac,
                peer: None,
            },
        );
        index
    }

    fn by_name(&self, name: &str) -> Option<&FakeLink> {
        self.links.values().find(|l| l.name == name)
    }

    /// The link at `index`, or the kernel's ENODEV.
    fn get_mut(&mut self, index: u32, what: impl FnOnce() -> String) -> Result<&mut FakeLink> {
        self.links
            .get_mut(&index)
            .ok_or_else(|| Error::netlink(what(), netlink_error(libc::ENODEV)))
    }

    /// Removes the link called `name`, detaching its ports and dropping its
    /// routes.
    fn remove(&mut self, name: &str) -> Option<FakeLink> {
        let index = self.by_name(name)?.index;
        let link = self.links.remove(&index)?;
        for port in self.links.values_mut() {
            if port.master == Some(index) {
                port.master = None;
            }
        }
        self.routes.retain(|r| r.oif != Some(index));
        Some(link)
    }

    /// Prefix routes the kernel adds for addresses on up links.
    fn connected_routes(&self) -> Vec<Route> {
        let mut out = Vec::new();
        for link in self
            .links
            .values()
            .filter(|l| l.up && l.kind != FakeKind::Loopback)
        {
            for &(addr, len) in &link.addrs {
                let width = if addr.is_ipv4() { 32 } else { 128 };
                if len < width {
                    out.push(Route {
                        dst: network(addr, len),
                        prefix_len: len,
                        gateway: None,
                        oif: Some(link.index),
                    });
                }
            }
        }
        out
    }

    fn all_routes(&self) -> Vec<Route> {
        let mut all = self.connected_routes();
        all.extend(self.routes.iter().copied());
        all.sort_by_key(|r| (r.dst, r.prefix_len, r.gateway, r.oif));
        all.dedup();
        all
    }
}

/// The kernel's MTU bounds for bridges and veths (EINVAL outside).
fn check_mtu(mtu: u32, what: impl FnOnce() -> String) -> Result<()> {
    if (MIN_MTU..=MAX_MTU).contains(&mtu) {
        Ok(())
    } else {
        Err(Error::netlink(what(), netlink_error(libc::EINVAL)))
    }
}

fn fmt_mac(mac: [u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

impl Netlink for FakeNetlink {
    async fn ensure_bridge(&self, name: &str, mtu: u32) -> Result<u32> {
        validate_ifname(name)?;
        let what = || format!("ensure bridge {name}");
        self.op(FakeOp::EnsureBridge, what, |w, netns| {
            check_mtu(mtu, what)?;
            let mac = w.next_mac();
            let ns = w.ns(netns);
            let index = match ns.by_name(name) {
                Some(link) if link.kind == FakeKind::Bridge => link.index,
                Some(link) => {
                    return Err(Error::LinkKindMismatch {
                        op: what(),
                        name: name.to_owned(),
                        expected: "bridge",
                        found: link.kind.name().to_owned(),
                    })
                }
                None => ns.insert(name, FakeKind::Bridge, mtu, mac),
            };
            let link = ns.get_mut(index, what)?;
            link.mtu = mtu;
            link.up = true;
            Ok(index)
        })
    }

    async fn link_index(&self, name: &str) -> Result<Option<u32>> {
        validate_ifname(name)?;
        self.op(
            FakeOp::LinkIndex,
            || format!("get link {name}"),
            |w, netns| Ok(w.ns(netns).by_name(name).map(|l| l.index)),
        )
    }

    async fn link_mtu(&self, name: &str) -> Result<Option<u32>> {
        validate_ifname(name)?;
        self.op(
            FakeOp::LinkMtu,
            || format!("get link {name}"),
            |w, netns| Ok(w.ns(netns).by_name(name).map(|l| l.mtu)),
        )
    }

    async fn set_up(&self, index: u32) -> Result<()> {
        let what = || format!("set link {index} up");
        self.op(FakeOp::SetUp, what, |w, netns| {
            w.ns(netns).get_mut(index, what)?.up = true;
            Ok(())
        })
    }

    async fn set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        let what = || format!("set mtu {mtu} on link {index}");
        self.op(FakeOp::SetMtu, what, |w, netns| {
            let link = w.ns(netns).get_mut(index, what)?;
            check_mtu(mtu, what)?;
            link.mtu = mtu;
            Ok(())
        })
    }

    async fn set_master(&self, index: u32, master: u32) -> Result<()> {
        let what = || format!("attach link {index} to bridge {master}");
        self.op(FakeOp::SetMaster, what, |w, netns| {
            let ns = w.ns(netns);
            ns.get_mut(index, what)?;
            // do_set_master: an unknown master is EINVAL, a master that
            // cannot take ports is EOPNOTSUPP.
            let errno = match ns.links.get(&master) {
                None => Some(libc::EINVAL),
                Some(m) if m.kind != FakeKind::Bridge => Some(libc::EOPNOTSUPP),
                Some(_) => None,
            };
            if let Some(errno) = errno {
                return Err(Error::netlink(what(), netlink_error(errno)));
            }
            ns.get_mut(index, what)?.master = Some(master);
            Ok(())
        })
    }

    async fn set_hairpin(&self, index: u32, on: bool) -> Result<()> {
        let what = || format!("set hairpin {on} on bridge port {index}");
        self.op(FakeOp::SetHairpin, what, |w, netns| {
            let link = w.ns(netns).get_mut(index, what)?;
            if link.master.is_none() {
                return Err(Error::netlink(what(), netlink_error(libc::EOPNOTSUPP)));
            }
            link.hairpin = on;
            Ok(())
        })
    }

    async fn delete_link(&self, name: &str) -> Result<()> {
        validate_ifname(name)?;
        self.op(
            FakeOp::DeleteLink,
            || format!("delete link {name}"),
            |w, netns| {
                w.remove_link_by_name(netns, name);
                Ok(())
            },
        )
    }

    async fn create_veth(
        &self,
        host_if: &str,
        peer_if: &str,
        netns_path: &Path,
        mtu: u32,
    ) -> Result<u32> {
        validate_ifname(host_if)?;
        validate_ifname(peer_if)?;
        let what = || {
            format!(
                "create veth {host_if} with peer {peer_if} in network namespace {}",
                netns_path.display()
            )
        };
        self.op(FakeOp::CreateVeth, what, |w, netns| {
            check_mtu(mtu, what)?;
            if let Some(link) = w.ns(netns).by_name(host_if) {
                if link.kind != FakeKind::Veth {
                    return Err(Error::LinkKindMismatch {
                        op: what(),
                        name: host_if.to_owned(),
                        expected: "veth",
                        found: link.kind.name().to_owned(),
                    });
                }
                return Ok(link.index);
            }
            let peer_taken = w.ns(netns_path).by_name(peer_if).is_some()
                || (netns_path == netns && host_if == peer_if);
            if peer_taken {
                return Err(Error::netlink(what(), netlink_error(libc::EEXIST)));
            }
            let (host_mac, peer_mac) = (w.next_mac(), w.next_mac());
            let host = w.ns(netns).insert(host_if, FakeKind::Veth, mtu, host_mac);
            let peer = w
                .ns(netns_path)
                .insert(peer_if, FakeKind::Veth, mtu, peer_mac);
            if let Some(l) = w.ns(netns).links.get_mut(&host) {
                l.peer = Some(FakePeer {
                    name: peer_if.to_owned(),
                    netns: netns_path.to_owned(),
                });
            }
            if let Some(l) = w.ns(netns_path).links.get_mut(&peer) {
                l.peer = Some(FakePeer {
                    name: host_if.to_owned(),
                    netns: netns.to_owned(),
                });
            }
            Ok(host)
        })
    }

    async fn add_addr(&self, index: u32, addr: IpAddr, prefix_len: u8) -> Result<()> {
        check_addr(addr, prefix_len)?;
        let what = || format!("add address {addr}/{prefix_len} to link {index}");
        self.op(FakeOp::AddAddr, what, |w, netns| {
            let link = w.ns(netns).get_mut(index, what)?;
            // The kernel matches IPv4 addresses on (local, prefix length) and
            // IPv6 ones on the address alone; either way EEXIST is success.
            let exists = link
                .addrs
                .iter()
                .any(|&(a, l)| a == addr && (addr.is_ipv6() || l == prefix_len));
            if !exists {
                link.addrs.push((addr, prefix_len));
            }
            Ok(())
        })
    }

    async fn addrs(&self, index: u32) -> Result<Vec<(IpAddr, u8)>> {
        self.op(
            FakeOp::Addrs,
            || format!("list addresses of link {index}"),
            |w, netns| {
                Ok(w.ns(netns)
                    .links
                    .get(&index)
                    .map(|l| l.addrs.clone())
                    .unwrap_or_default())
            },
        )
    }

    async fn add_route(
        &self,
        dst: IpAddr,
        prefix_len: u8,
        gateway: Option<IpAddr>,
        index: u32,
    ) -> Result<()> {
        check_route(dst, prefix_len, gateway)?;
        let what = || {
            let via = gateway.map(|gw| format!(" via {gw}")).unwrap_or_default();
            format!("add route {dst}/{prefix_len}{via} dev {index}")
        };
        self.op(FakeOp::AddRoute, what, |w, netns| {
            let ns = w.ns(netns);
            let link = ns.get_mut(index, what)?.clone();
            let fail = |errno| Err(Error::netlink(what(), netlink_error(errno)));
            if !link.up {
                return fail(libc::ENETDOWN);
            }
            if let Some(gw) = gateway {
                let on_link = link
                    .addrs
                    .iter()
                    .any(|&(a, l)| a.is_ipv4() == gw.is_ipv4() && network(a, l) == network(gw, l));
                let link_local =
                    matches!(gw, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
                if !on_link && !link_local {
                    return fail(libc::ENETUNREACH);
                }
            }
            if ns
                .all_routes()
                .iter()
                .any(|r| r.dst == dst && r.prefix_len == prefix_len)
            {
                return Ok(());
            }
            ns.routes.push(Route {
                dst,
                prefix_len,
                gateway,
                oif: Some(index),
            });
            Ok(())
        })
    }

    async fn routes_v4(&self) -> Result<Vec<Route>> {
        self.op(
            FakeOp::RoutesV4,
            || "list ipv4 routes".to_owned(),
            |w, netns| {
                Ok(w.ns(netns)
                    .all_routes()
                    .into_iter()
                    .filter(|r| r.dst.is_ipv4())
                    .collect())
            },
        )
    }

    async fn set_mac(&self, index: u32, mac: [u8; 6]) -> Result<()> {
        let what = || format!("set mac {} on link {index}", fmt_mac(mac));
        self.op(FakeOp::SetMac, what, |w, netns| {
            let link = w.ns(netns).get_mut(index, what)?;
            // eth_prepare_mac_addr_change: multicast or all-zero MACs are
            // refused.
            if mac[0] & 1 == 1 || mac == [0; 6] {
                return Err(Error::netlink(what(), netlink_error(libc::EADDRNOTAVAIL)));
            }
            link.mac = mac;
            Ok(())
        })
    }

    async fn link_mac(&self, index: u32) -> Result<Option<[u8; 6]>> {
        self.op(
            FakeOp::LinkMac,
            || format!("get link {index}"),
            |w, netns| Ok(w.ns(netns).links.get(&index).map(|l| l.mac)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[tokio::test]
    async fn ensure_bridge_is_idempotent_and_updates_mtu() {
        let nl = FakeNetlink::new();
        let first = nl.ensure_bridge("weave", 1376).await.expect("create");
        let again = nl.ensure_bridge("weave", 1400).await.expect("exists");
        assert_eq!(first, again);
        let br = nl.link("weave").expect("bridge exists");
        assert_eq!((br.kind, br.mtu, br.up), (FakeKind::Bridge, 1400, true));
        assert_eq!(nl.link_mtu("weave").await.expect("mtu"), Some(1400));
        assert_eq!(nl.link_index("weave").await.expect("index"), Some(first));
        assert_eq!(nl.link_index("nope").await.expect("index"), None);
        assert_eq!(nl.links().len(), 2, "lo and the bridge");
    }

    #[tokio::test]
    async fn ensure_bridge_refuses_a_link_of_another_kind() {
        let nl = FakeNetlink::new();
        nl.add_link("weave", FakeKind::Device, 1500);
        let err = nl
            .ensure_bridge("weave", 1376)
            .await
            .expect_err("not a bridge");
        assert!(matches!(err, Error::LinkKindMismatch { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "ensure bridge weave: link weave exists but is a device, not a bridge"
        );
    }

    #[tokio::test]
    async fn bad_arguments_fail_before_any_change() {
        let nl = FakeNetlink::new();
        assert!(matches!(
            nl.ensure_bridge("a-name-that-is-too-long", 1500).await,
            Err(Error::InvalidName { .. })
        ));
        let err = nl
            .ensure_bridge("weave", 10)
            .await
            .expect_err("mtu too small");
        assert_eq!(err.errno(), Some(libc::EINVAL));
        assert!(nl.link("weave").is_none());
        assert!(matches!(
            nl.add_addr(1, ip("10.0.0.1"), 33).await,
            Err(Error::InvalidPrefix { .. })
        ));
        assert!(matches!(
            nl.add_route(ip("10.0.0.1"), 24, None, 1).await,
            Err(Error::InvalidPrefix { .. })
        ));
    }

    #[tokio::test]
    async fn unknown_indexes_fail_with_enodev() {
        let nl = FakeNetlink::new();
        for res in [
            nl.set_up(99).await,
            nl.set_mtu(99, 1500).await,
            nl.set_master(99, 1).await,
            nl.set_mac(99, [2, 0, 0, 0, 0, 1]).await,
            nl.add_addr(99, ip("10.0.0.1"), 24).await,
        ] {
            assert_eq!(res.expect_err("no link 99").errno(), Some(libc::ENODEV));
        }
        assert_eq!(nl.link_mac(99).await.expect("lookup"), None);
        assert_eq!(nl.addrs(99).await.expect("dump"), vec![]);
    }

    #[tokio::test]
    async fn veth_peer_lands_in_the_target_namespace() {
        let host = FakeNetlink::new();
        let pod_ns = Path::new("/var/run/netns/pod1");
        let idx = host
            .create_veth("vethwepl1", "eth0", pod_ns, 1376)
            .await
            .expect("create");
        let again = host
            .create_veth("vethwepl1", "eth0", pod_ns, 1376)
            .await
            .expect("retry");
        assert_eq!(idx, again, "a retried ADD finds its own veth");

        let pod = host.in_netns(pod_ns);
        let peer = pod.link("eth0").expect("peer in pod namespace");
        assert_eq!(
            (peer.kind, peer.mtu, peer.up),
            (FakeKind::Veth, 1376, false)
        );
        assert_eq!(
            peer.peer.as_ref().map(|p| p.name.as_str()),
            Some("vethwepl1")
        );
        assert!(
            host.link("eth0").is_none(),
            "peer is not in the host namespace"
        );
        assert_eq!(
            host.link("vethwepl1").and_then(|l| l.peer),
            Some(FakePeer {
                name: "eth0".into(),
                netns: pod_ns.to_owned()
            })
        );

        // Another host veth whose peer name clashes inside the pod: EEXIST.
        let err = host
            .create_veth("vethwepl2", "eth0", pod_ns, 1376)
            .await
            .expect_err("peer name taken");
        assert_eq!(err.errno(), Some(libc::EEXIST));
        assert!(host.link("vethwepl2").is_none());
    }

    #[tokio::test]
    async fn deleting_one_veth_end_or_the_namespace_removes_both() {
        let host = FakeNetlink::new();
        let pod_ns = Path::new("/var/run/netns/pod1");
        let pod = host.in_netns(pod_ns);
        host.create_veth("vethwepl1", "eth0", pod_ns, 1500)
            .await
            .expect("create");
        host.delete_link("vethwepl1").await.expect("delete");
        host.delete_link("vethwepl1")
            .await
            .expect("delete is idempotent");
        assert!(pod.link("eth0").is_none());

        host.create_veth("vethwepl1", "eth0", pod_ns, 1500)
            .await
            .expect("create");
        host.remove_netns(pod_ns);
        assert!(
            host.link("vethwepl1").is_none(),
            "host end goes with the netns"
        );
    }

    #[tokio::test]
    async fn bridge_ports_master_and_hairpin() {
        let nl = FakeNetlink::new();
        let br = nl.ensure_bridge("weave", 1376).await.expect("bridge");
        let port = nl
            .create_veth("vethwe-bridge", "vethwe-pcap", Path::new(HOST_NETNS), 1376)
            .await
            .expect("veth");
        let err = nl
            .set_hairpin(port, true)
            .await
            .expect_err("not a port yet");
        assert_eq!(err.errno(), Some(libc::EOPNOTSUPP));
        let lo = nl
            .link_index("lo")
            .await
            .expect("lookup")
            .expect("lo exists");
        let err = nl
            .set_master(port, lo)
            .await
            .expect_err("lo is not a bridge");
        assert_eq!(err.errno(), Some(libc::EOPNOTSUPP));
        assert_eq!(
            nl.set_master(port, 999)
                .await
                .expect_err("no master")
                .errno(),
            Some(libc::EINVAL)
        );

        nl.set_master(port, br).await.expect("attach");
        nl.set_hairpin(port, true).await.expect("hairpin");
        let link = nl.link_by_index(port).expect("port");
        assert_eq!((link.master, link.hairpin), (Some(br), true));

        nl.delete_link("weave").await.expect("delete bridge");
        assert_eq!(nl.link_by_index(port).expect("port").master, None);
    }

    #[tokio::test]
    async fn addresses_are_idempotent_and_make_connected_routes_when_up() {
        let nl = FakeNetlink::new();
        let eth = nl
            .create_veth("eth0", "peer0", Path::new("/netns/other"), 1500)
            .await
            .expect("veth");
        nl.add_addr(eth, ip("10.32.0.1"), 12).await.expect("add");
        nl.add_addr(eth, ip("10.32.0.1"), 12)
            .await
            .expect("add again");
        nl.add_addr(eth, ip("fd00::1"), 64).await.expect("add v6");
        assert_eq!(
            nl.addrs(eth).await.expect("list"),
            vec![(ip("10.32.0.1"), 12), (ip("fd00::1"), 64)]
        );
        assert_eq!(
            nl.routes_v4().await.expect("routes"),
            vec![],
            "link is down"
        );

        nl.set_up(eth).await.expect("up");
        assert_eq!(
            nl.routes_v4().await.expect("routes"),
            vec![Route {
                dst: ip("10.32.0.0"),
                prefix_len: 12,
                gateway: None,
                oif: Some(eth)
            }]
        );
    }

    #[tokio::test]
    async fn routes_need_an_up_link_and_a_reachable_gateway() {
        let nl = FakeNetlink::new();
        let eth = nl.add_link("eth0", FakeKind::Device, 1500);
        let br = nl.ensure_bridge("weave", 1376).await.expect("bridge");
        let down = nl
            .create_veth("veth0", "veth1", Path::new(HOST_NETNS), 1500)
            .await
            .expect("veth");
        nl.add_addr(eth, ip("192.168.1.10"), 24)
            .await
            .expect("addr");

        let err = nl
            .add_route(ip("10.40.0.0"), 16, None, down)
            .await
            .expect_err("link down");
        assert_eq!(err.errno(), Some(libc::ENETDOWN));
        let err = nl
            .add_route(ip("10.40.0.0"), 16, Some(ip("172.16.0.1")), eth)
            .await
            .expect_err("gateway off-link");
        assert_eq!(err.errno(), Some(libc::ENETUNREACH));
        assert_eq!(
            err.to_string(),
            format!("add route 10.40.0.0/16 via 172.16.0.1 dev {eth}")
        );

        nl.add_route(ip("0.0.0.0"), 0, Some(ip("192.168.1.1")), eth)
            .await
            .expect("default");
        nl.add_route(ip("10.32.0.0"), 12, None, br)
            .await
            .expect("on-link");
        // EEXIST is success, even for a different gateway: callers diff first.
        nl.add_route(ip("10.32.0.0"), 12, None, br)
            .await
            .expect("again");
        nl.add_route(ip("0.0.0.0"), 0, Some(ip("192.168.1.2")), eth)
            .await
            .expect("same prefix");

        let routes = nl.routes_v4().await.expect("routes");
        assert_eq!(routes.len(), 3, "{routes:?}");
        assert!(routes.contains(&Route {
            dst: ip("0.0.0.0"),
            prefix_len: 0,
            gateway: Some(ip("192.168.1.1")),
            oif: Some(eth)
        }));

        nl.delete_link("weave").await.expect("delete");
        assert_eq!(
            nl.routes_v4().await.expect("routes").len(),
            2,
            "routes go with their link"
        );
        assert_eq!(nl.routes().len(), 2);
    }

    #[tokio::test]
    async fn mac_addresses() {
        let nl = FakeNetlink::new();
        let br = nl.ensure_bridge("weave", 1500).await.expect("bridge");
        let mac = nl
            .link_mac(br)
            .await
            .expect("mac")
            .expect("bridge has a mac");
        assert_eq!(mac[0] & 0b11, 0b10, "locally administered unicast");
        nl.set_mac(br, [0x02, 1, 2, 3, 4, 5]).await.expect("set");
        assert_eq!(
            nl.link_mac(br).await.expect("mac"),
            Some([0x02, 1, 2, 3, 4, 5])
        );
        let err = nl
            .set_mac(br, [0x01, 0, 0x5e, 0, 0, 1])
            .await
            .expect_err("multicast");
        assert_eq!(err.errno(), Some(libc::EADDRNOTAVAIL));
    }

    #[tokio::test]
    async fn injected_failures_hit_the_next_call_only() {
        let nl = FakeNetlink::new();
        let pod = nl.in_netns(Path::new("/netns/pod"));
        nl.fail_next(FakeOp::DeleteLink, libc::EBUSY);
        let err = pod.delete_link("eth0").await.expect_err("injected");
        assert_eq!(err.errno(), Some(libc::EBUSY));
        assert_eq!(err.to_string(), "delete link eth0");
        pod.delete_link("eth0").await.expect("next call succeeds");
    }
}
