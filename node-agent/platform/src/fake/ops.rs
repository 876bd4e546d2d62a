// SPDX-License-Identifier: Apache-2.0
//! The [`Netlink`] operations of [`FakeNetlink`], following the kernel's
//! answers (checked against it by `tests/privileged.rs`).

use std::{net::IpAddr, path::Path};

use super::{FakeKind, FakeNetlink, FakeOp, FakePeer};
use crate::{
    error::{netlink_error, Error, Result},
    netlink::{
        addr_op, fdb_op, fmt_mac, network, route_op, validate_ifname, veth_op, vxlan_op,
        BridgePortFlags, FdbEntry, FdbTarget, Mac, Netlink, Route, VxlanLink, VxlanSpec,
    },
};

/// Smallest MTU the kernel accepts on Ethernet-like links (`ETH_MIN_MTU`).
const MIN_MTU: u32 = 68;
/// Largest MTU bridges and veths accept (`ETH_MAX_MTU`).
const MAX_MTU: u32 = 65535;

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
        let described = veth_op(host_if, peer_if, netns_path)?;
        let what = || described.clone();
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
        let described = addr_op(index, addr, prefix_len)?;
        let what = || described.clone();
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

    async fn del_addr(&self, index: u32, addr: IpAddr, prefix_len: u8) -> Result<()> {
        let described = format!("delete {}", addr_op(index, addr, prefix_len)?);
        let what = || described.clone();
        self.op(FakeOp::DelAddr, what, |w, netns| {
            let link = w.ns(netns).get_mut(index, what)?;
            link.addrs.retain(|&(a, l)| !(a == addr && l == prefix_len));
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
        let described = route_op(dst, prefix_len, gateway, index)?;
        let what = || described.clone();
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

    async fn link_mtu_by_index(&self, index: u32) -> Result<Option<u32>> {
        self.op(
            FakeOp::LinkMtu,
            || format!("get link {index}"),
            |w, netns| Ok(w.ns(netns).links.get(&index).map(|l| l.mtu)),
        )
    }

    async fn link_mac(&self, index: u32) -> Result<Option<[u8; 6]>> {
        self.op(
            FakeOp::LinkMac,
            || format!("get link {index}"),
            |w, netns| Ok(w.ns(netns).links.get(&index).map(|l| l.mac)),
        )
    }
    async fn ensure_vxlan(&self, name: &str, spec: VxlanSpec) -> Result<VxlanLink> {
        let described = vxlan_op(name, spec)?;
        let what = || described.clone();
        self.op(FakeOp::EnsureVxlan, what, |w, netns| {
            check_mtu(spec.mtu, what)?;
            let mac = w.next_mac();
            let ns = w.ns(netns);
            match ns.by_name(name).map(|l| (l.index, l.kind)) {
                Some((index, FakeKind::Vxlan(had)))
                    if had.vni == spec.vni && had.port == spec.port =>
                {
                    let link = ns.get_mut(index, what)?;
                    link.mtu = spec.mtu;
                    link.up = true;
                    link.kind = FakeKind::Vxlan(spec);
                    return Ok(VxlanLink {
                        index,
                        adopted: true,
                    });
                }
                Some((_, FakeKind::Vxlan(_))) => {
                    ns.remove(name);
                }
                Some((_, kind)) => {
                    return Err(Error::LinkKindMismatch {
                        op: what(),
                        name: name.to_owned(),
                        expected: "vxlan",
                        found: kind.name().to_owned(),
                    })
                }
                None => {}
            }
            let index = ns.insert(name, FakeKind::Vxlan(spec), spec.mtu, mac);
            ns.get_mut(index, what)?.up = true;
            Ok(VxlanLink {
                index,
                adopted: false,
            })
        })
    }

    async fn set_bridge_port(&self, index: u32, flags: BridgePortFlags) -> Result<()> {
        let what = || format!("set flags {flags:?} on bridge port {index}");
        self.op(FakeOp::SetBridgePort, what, |w, netns| {
            let link = w.ns(netns).get_mut(index, what)?;
            if link.master.is_none() {
                return Err(Error::netlink(what(), netlink_error(libc::EOPNOTSUPP)));
            }
            if let Some(on) = flags.isolated {
                link.isolated = on;
            }
            if let Some(on) = flags.learning {
                link.learning = on;
            }
            Ok(())
        })
    }

    async fn fdb_entries(&self) -> Result<Vec<FdbEntry>> {
        self.op(
            FakeOp::FdbEntries,
            || "list fdb entries".to_owned(),
            |w, netns| Ok(w.ns(netns).fdb.clone()),
        )
    }

    async fn fdb_add(&self, entry: &FdbEntry) -> Result<()> {
        let described = fdb_op("add", entry)?;
        let what = || described.clone();
        self.op(FakeOp::FdbAdd, what, |w, netns| {
            let ns = w.ns(netns);
            let link = ns.get_mut(entry.ifindex, what)?.clone();
            match entry.target {
                FdbTarget::Bridge { bridge, .. } => {
                    // br_fdb_add: the port must be one of that bridge's.
                    if link.master != Some(bridge) {
                        return Err(Error::netlink(what(), netlink_error(libc::EINVAL)));
                    }
                    ns.fdb.retain(|e| {
                        !(e.mac == entry.mac
                            && matches!(e.target, FdbTarget::Bridge { bridge: b, .. } if b == bridge))
                    });
                }
                FdbTarget::Remote { .. } => {
                    // vxlan_fdb_add: only VXLAN devices have remote entries.
                    if !matches!(link.kind, FakeKind::Vxlan(_)) {
                        return Err(Error::netlink(what(), netlink_error(libc::EOPNOTSUPP)));
                    }
                    if entry.mac == [0; 6] {
                        if ns.fdb.contains(entry) {
                            return Ok(());
                        }
                    } else {
                        ns.fdb.retain(|e| {
                            !(e.mac == entry.mac
                                && e.ifindex == entry.ifindex
                                && matches!(e.target, FdbTarget::Remote { .. }))
                        });
                    }
                }
            }
            ns.fdb.push(*entry);
            Ok(())
        })
    }

    async fn fdb_del(&self, entry: &FdbEntry) -> Result<()> {
        let described = fdb_op("delete", entry)?;
        let what = || described.clone();
        self.op(FakeOp::FdbDel, what, |w, netns| {
            let ns = w.ns(netns);
            ns.fdb.retain(|e| match (e.target, entry.target) {
                (FdbTarget::Bridge { bridge: a, .. }, FdbTarget::Bridge { bridge: b, .. }) => {
                    !(e.mac == entry.mac && e.ifindex == entry.ifindex && a == b)
                }
                (FdbTarget::Remote { dst: a, .. }, FdbTarget::Remote { dst: b, .. }) => {
                    !(e.mac == entry.mac && e.ifindex == entry.ifindex && a == b)
                }
                _ => true,
            });
            Ok(())
        })
    }

    async fn wait_oper_up(&self, index: u32, _limit: std::time::Duration) -> Result<bool> {
        // No link watch here: a link is operationally up once it is set up.
        self.op(
            FakeOp::WaitOperUp,
            || format!("wait for link {index} to be up"),
            |w, netns| Ok(w.ns(netns).links.get(&index).is_some_and(|l| l.up)),
        )
    }

    async fn announce(&self, index: u32, mac: Mac, addrs: &[IpAddr]) -> Result<()> {
        let what = || format!("announce addresses on link {index}");
        self.op(FakeOp::Announce, what, |w, netns| {
            let ns = w.ns(netns);
            ns.get_mut(index, what)?;
            ns.announced.extend(addrs.iter().map(|a| (index, mac, *a)));
            Ok(())
        })
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
