// SPDX-License-Identifier: Apache-2.0
//! `FakeNetlink`: an in-memory [`Netlink`] for unit tests (feature `fake`).
//!
//! This file holds the handle, its accessors and the state; `ops` implements
//! [`Netlink`] on it.
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
//! [`Netlink`]: crate::Netlink

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

use crate::{
    error::{netlink_error, Error, Result},
    netlink::{network, BridgeFdbState, FdbEntry, FdbTarget, Route, VxlanSpec},
};

mod ops;
#[cfg(test)]
mod tests;

/// The key of the namespace a [`FakeNetlink::new`] handle is bound to.
pub const HOST_NETNS: &str = "/proc/self/ns/net";

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
    /// A VXLAN device with these settings.
    Vxlan(VxlanSpec),
}

impl FakeKind {
    /// The name `ip -d link` would show (`device` for none).
    fn name(self) -> &'static str {
        match self {
            FakeKind::Loopback | FakeKind::Device => "device",
            FakeKind::Bridge => "bridge",
            FakeKind::Veth => "veth",
            FakeKind::Tap => "tun",
            FakeKind::Vxlan(_) => "vxlan",
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
    /// Whether the bridge port is isolated.
    pub isolated: bool,
    /// Whether the bridge learns on this port (on by default).
    pub learning: bool,
    /// Addresses with prefix lengths, in the order they were added.
    pub addrs: Vec<(IpAddr, u8)>,
    /// MAC address.
    pub mac: [u8; 6],
    /// The other end, for a veth.
    pub peer: Option<FakePeer>,
}

/// An operation of [`Netlink`](crate::Netlink), to aim [`FakeNetlink::fail_next`] at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeOp {
    /// [`Netlink::ensure_bridge`](crate::Netlink::ensure_bridge).
    EnsureBridge,
    /// [`Netlink::link_index`](crate::Netlink::link_index).
    LinkIndex,
    /// [`Netlink::link_mtu`](crate::Netlink::link_mtu).
    LinkMtu,
    /// [`Netlink::wait_oper_up`](crate::Netlink::wait_oper_up).
    WaitOperUp,
    /// [`Netlink::set_up`](crate::Netlink::set_up).
    SetUp,
    /// [`Netlink::set_mtu`](crate::Netlink::set_mtu).
    SetMtu,
    /// [`Netlink::set_master`](crate::Netlink::set_master).
    SetMaster,
    /// [`Netlink::set_hairpin`](crate::Netlink::set_hairpin).
    SetHairpin,
    /// [`Netlink::delete_link`](crate::Netlink::delete_link).
    DeleteLink,
    /// [`Netlink::create_veth`](crate::Netlink::create_veth).
    CreateVeth,
    /// [`Netlink::add_addr`](crate::Netlink::add_addr).
    AddAddr,
    /// [`Netlink::del_addr`](crate::Netlink::del_addr).
    DelAddr,
    /// [`Netlink::addrs`](crate::Netlink::addrs).
    Addrs,
    /// [`Netlink::add_route`](crate::Netlink::add_route).
    AddRoute,
    /// [`Netlink::routes_v4`](crate::Netlink::routes_v4).
    RoutesV4,
    /// [`Netlink::set_mac`](crate::Netlink::set_mac).
    SetMac,
    /// [`Netlink::link_mac`](crate::Netlink::link_mac).
    LinkMac,
    /// [`Netlink::ensure_vxlan`](crate::Netlink::ensure_vxlan).
    EnsureVxlan,
    /// [`Netlink::set_bridge_port`](crate::Netlink::set_bridge_port).
    SetBridgePort,
    /// [`Netlink::fdb_entries`](crate::Netlink::fdb_entries).
    FdbEntries,
    /// [`Netlink::fdb_add`](crate::Netlink::fdb_add).
    FdbAdd,
    /// [`Netlink::fdb_del`](crate::Netlink::fdb_del).
    FdbDel,
    /// [`Netlink::announce`](crate::Netlink::announce).
    Announce,
}

/// An in-memory [`Netlink`](crate::Netlink) bound to one namespace of a shared fake world.
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
    /// Forwarding entries of bridges and VXLAN devices.
    fdb: Vec<FdbEntry>,
    /// Announcements made: link index, MAC and the address announced.
    announced: Vec<(u32, [u8; 6], IpAddr)>,
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

    /// Every forwarding entry of this namespace, in the order they were made.
    pub fn fdb(&self) -> Vec<FdbEntry> {
        self.with(|w| w.ns(&self.netns).fdb.clone())
    }

    /// Adds an entry the kernel made itself: a MAC learned on bridge port
    /// `port` (the fake does not forward frames, so nothing learns).
    pub fn learn(&self, mac: [u8; 6], port: u32) {
        self.with(|w| {
            let ns = w.ns(&self.netns);
            let Some(bridge) = ns.links.get(&port).and_then(|l| l.master) else {
                return;
            };
            ns.fdb.retain(|e| {
                !(e.mac == mac
                    && matches!(e.target, FdbTarget::Bridge { bridge: b, .. } if b == bridge))
            });
            ns.fdb.push(FdbEntry {
                mac,
                ifindex: port,
                target: FdbTarget::Bridge {
                    bridge,
                    state: BridgeFdbState::Learned,
                },
            });
        });
    }

    /// The announcements made from this namespace: link, MAC, address.
    pub fn announced(&self) -> Vec<(u32, [u8; 6], IpAddr)> {
        self.with(|w| w.ns(&self.netns).announced.clone())
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
                fdb: Vec::new(),
                announced: Vec::new(),
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
                isolated: false,
                learning: true,
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
        // A port's entries and a bridge's go with them.
        self.fdb.retain(|e| {
            e.ifindex != index
                && !matches!(e.target, FdbTarget::Bridge { bridge, .. } if bridge == index)
        });
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
