// SPDX-License-Identifier: Apache-2.0
//! [`LinuxNetlink`]: the [`Netlink`] seam over a real rtnetlink socket.
//!
//! Requests are built with rtnetlink's builders; replies are read from the
//! raw message stream so dumps can see `NLM_F_DUMP_INTR` (set when the
//! kernel's tables changed mid-dump) and be retried a bounded number of times,
//! as containernetworking/plugins' `netlinksafe` does. The connection task is
//! spawned on the tokio runtime that was current when the handle was made and
//! ends when the last clone of the handle is dropped.

use std::{
    fs::File,
    net::IpAddr,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use futures_util::StreamExt;
use rtnetlink::{
    packet_core::{
        NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP,
        NLM_F_DUMP_INTR, NLM_F_REPLACE, NLM_F_REQUEST,
    },
    packet_route::{
        address::{AddressAttribute, AddressMessage},
        link::{
            InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo,
            LinkMessage, VxlanDf,
        },
        neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
        },
        route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteScope, RouteType},
        AddressFamily, RouteNetlinkMessage,
    },
    proto::Connection,
    Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan,
    RouteMessageBuilder,
};
use tracing::debug;

use super::{
    addr_op, fdb_op, fmt_mac, route_op, validate_ifname, veth_op, vxlan_op, BridgeFdbState,
    BridgePortFlags, FdbEntry, FdbTarget, Mac, Netlink, Route, VxlanLink, VxlanSpec,
};
use crate::{
    error::{netlink_errno, Error, Result},
    netns,
};

/// How many times a dump interrupted by `NLM_F_DUMP_INTR` is retried before
/// giving up (the same bound as containernetworking/plugins' `netlinksafe`).
const DUMP_ATTEMPTS: u32 = 10;

/// A [`Netlink`] handle bound to the network namespace its socket was opened
/// in. Cheap to clone; clones share one connection.
#[derive(Debug, Clone)]
pub struct LinuxNetlink {
    handle: Handle,
    /// The namespace the socket was opened in, when not the caller's own
    /// (announcements open a packet socket there).
    netns: Option<PathBuf>,
}

impl LinuxNetlink {
    /// A handle for the current thread's namespace. Call from within a tokio
    /// runtime with IO enabled: the connection is spawned on it.
    pub fn new() -> Result<LinuxNetlink> {
        let op = "open netlink socket";
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::NoRuntime { op: op.into() })?;
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| Error::io(op, e))?;
        Ok(Self::spawn(&runtime, conn, handle, None))
    }

    /// A handle whose netlink socket lives in the namespace at `path`. The
    /// socket is opened on a thread that entered the namespace
    /// ([`netns::open_in`]) and then driven on the current tokio runtime, so
    /// no runtime thread ever changes namespace.
    pub fn in_netns(path: &Path) -> Result<LinuxNetlink> {
        let op = || {
            format!(
                "open netlink socket in network namespace {}",
                path.display()
            )
        };
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime { op: op() })?;
        let reactor = runtime.clone();
        let (conn, handle, _) = netns::open_in(path, move || {
            // Register the socket with the caller's runtime from the netns
            // thread: the socket keeps the namespace, the runtime drives it.
            let _entered = reactor.enter();
            rtnetlink::new_connection()
        })?;
        Ok(Self::spawn(&runtime, conn, handle, Some(path.to_owned())))
    }

    fn spawn(
        runtime: &tokio::runtime::Handle,
        mut conn: Connection<RouteNetlinkMessage>,
        handle: Handle,
        netns: Option<PathBuf>,
    ) -> LinuxNetlink {
        // Forward NLMSG_DONE so `dump` can see NLM_F_DUMP_INTR on it too.
        conn.set_forward_done(true);
        runtime.spawn(conn);
        LinuxNetlink { handle, netns }
    }

    /// Sends a request that changes something and waits for the kernel's
    /// acknowledgement (`flags` besides `NLM_F_REQUEST | NLM_F_ACK`).
    async fn ack(&self, msg: RouteNetlinkMessage, flags: u16) -> Result<(), rtnetlink::Error> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        let mut stream = self.handle.clone().request(req)?;
        while let Some(msg) = stream.next().await {
            if let NetlinkPayload::Error(err) = msg.payload {
                if err.code.is_some() {
                    return Err(rtnetlink::Error::NetlinkError(err));
                }
            }
        }
        Ok(())
    }

    /// Sends a request expecting one reply (`RTM_GETLINK` by name or index).
    async fn get_one(
        &self,
        msg: RouteNetlinkMessage,
    ) -> Result<RouteNetlinkMessage, rtnetlink::Error> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST;
        let mut stream = self.handle.clone().request(req)?;
        let mut reply = None;
        while let Some(msg) = stream.next().await {
            match msg.payload {
                NetlinkPayload::InnerMessage(inner) => reply = Some(inner),
                NetlinkPayload::Error(err) if err.code.is_some() => {
                    return Err(rtnetlink::Error::NetlinkError(err));
                }
                _ => {}
            }
        }
        reply.ok_or(rtnetlink::Error::RequestFailed)
    }

    /// Dumps a table, retrying while the kernel flags the dump as
    /// inconsistent.
    async fn dump(&self, op: &str, msg: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>> {
        for attempt in 1..=DUMP_ATTEMPTS {
            let mut req = NetlinkMessage::from(msg.clone());
            req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
            let mut stream = self
                .handle
                .clone()
                .request(req)
                .map_err(|e| Error::netlink(op, e))?;
            let mut out = Vec::new();
            let mut interrupted = false;
            while let Some(msg) = stream.next().await {
                if msg.header.flags & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                match msg.payload {
                    NetlinkPayload::InnerMessage(inner) => out.push(inner),
                    NetlinkPayload::Error(err) if err.code.is_some() => {
                        return Err(Error::netlink(op, rtnetlink::Error::NetlinkError(err)));
                    }
                    // Lost messages: the result would be incomplete.
                    NetlinkPayload::Overrun(_) => interrupted = true,
                    _ => {}
                }
            }
            if !interrupted {
                return Ok(out);
            }
            debug!(op, attempt, "netlink dump interrupted, retrying");
        }
        Err(Error::DumpInterrupted {
            op: op.into(),
            attempts: DUMP_ATTEMPTS,
        })
    }

    /// The link called `name`, or `None`.
    async fn link_by_name(&self, name: &str) -> Result<Option<LinkMessage>> {
        validate_ifname(name)?;
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        self.get_link(msg, || format!("get link {name}")).await
    }

    /// The link with ifindex `index`, or `None`.
    async fn link_by_index(&self, index: u32) -> Result<Option<LinkMessage>> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.get_link(msg, || format!("get link {index}")).await
    }

    async fn get_link(
        &self,
        msg: LinkMessage,
        op: impl FnOnce() -> String,
    ) -> Result<Option<LinkMessage>> {
        match self.get_one(RouteNetlinkMessage::GetLink(msg)).await {
            Ok(RouteNetlinkMessage::NewLink(link)) => Ok(Some(link)),
            Ok(other) => Err(Error::netlink(
                op(),
                rtnetlink::Error::UnexpectedMessage(NetlinkMessage::from(other)),
            )),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(Error::netlink(op(), e)),
        }
    }

    /// Applies an `ip link set`-style change to link `index`.
    async fn change_link(&self, msg: LinkMessage, op: impl FnOnce() -> String) -> Result<()> {
        self.handle
            .link()
            .change(msg)
            .execute()
            .await
            .map_err(|e| Error::netlink(op(), e))
    }
}

impl Netlink for LinuxNetlink {
    async fn ensure_bridge(&self, name: &str, mtu: u32) -> Result<u32> {
        validate_ifname(name)?;
        let op = || format!("ensure bridge {name}");
        // LinkBridge::new asks for the bridge to start up.
        let create = LinkBridge::new(name).mtu(mtu).build();
        match self.handle.link().add(create).execute().await {
            Ok(()) => debug!(bridge = name, mtu, "created bridge"),
            Err(e) if netlink_errno(&e) == Some(libc::EEXIST) => {
                debug!(bridge = name, "bridge exists");
            }
            Err(e) => return Err(Error::netlink(op(), e)),
        }
        let link = self
            .link_by_name(name)
            .await?
            .ok_or_else(|| Error::LinkNotFound {
                op: op(),
                name: name.to_owned(),
            })?;
        let kind = link_kind(&link);
        if kind.as_ref() != Some(&InfoKind::Bridge) {
            return Err(Error::LinkKindMismatch {
                op: op(),
                name: name.to_owned(),
                expected: "bridge",
                found: kind_name(kind.as_ref()),
            });
        }
        let index = link.header.index;
        if link_attr_mtu(&link) != Some(mtu) {
            self.set_mtu(index, mtu).await?;
        }
        if !link.header.flags.contains(LinkFlags::Up) {
            self.set_up(index).await?;
        }
        Ok(index)
    }

    async fn link_index(&self, name: &str) -> Result<Option<u32>> {
        Ok(self.link_by_name(name).await?.map(|l| l.header.index))
    }

    async fn link_mtu(&self, name: &str) -> Result<Option<u32>> {
        Ok(self
            .link_by_name(name)
            .await?
            .and_then(|l| link_attr_mtu(&l)))
    }

    async fn set_up(&self, index: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.change_link(msg, || format!("set link {index} up"))
            .await
    }

    async fn set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
        self.change_link(msg, || format!("set mtu {mtu} on link {index}"))
            .await
    }

    async fn set_master(&self, index: u32, master: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).controller(master).build();
        self.change_link(msg, || format!("attach link {index} to bridge {master}"))
            .await
    }

    async fn set_hairpin(&self, index: u32, on: bool) -> Result<()> {
        // Bridge-port options travel as IFLA_INFO_SLAVE_DATA in an
        // RTM_NEWLINK without NLM_F_CREATE (what `ip link set ... type
        // bridge_slave` sends); RTM_SETLINK does not carry them.
        let msg = LinkBridgePort::new(index).hairpin(on).build();
        self.handle
            .link()
            .set_port(msg)
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("set hairpin {on} on bridge port {index}"), e))
    }

    async fn delete_link(&self, name: &str) -> Result<()> {
        validate_ifname(name)?;
        let msg = LinkUnspec::new_with_name(name).build();
        match self.handle.link().del_with_message(msg).execute().await {
            Ok(()) => {
                debug!(link = name, "deleted link");
                Ok(())
            }
            Err(e) if is_missing(&e) => {
                debug!(link = name, "link already gone");
                Ok(())
            }
            Err(e) => Err(Error::netlink(format!("delete link {name}"), e)),
        }
    }

    async fn create_veth(
        &self,
        host_if: &str,
        peer_if: &str,
        netns_path: &Path,
        mtu: u32,
    ) -> Result<u32> {
        let described = veth_op(host_if, peer_if, netns_path)?;
        let op = || described.clone();
        // The descriptor must stay open until the kernel has answered: it
        // names the namespace by IFLA_NET_NS_FD.
        let ns = File::open(netns_path).map_err(|e| Error::io(op(), e))?;
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer_if)
            .mtu(mtu)
            .setns_by_fd(ns.as_raw_fd())
            .build();
        let msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host_if)
            .mtu(mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        let created = self.handle.link().add(msg).execute().await;
        drop(ns);
        match created {
            Ok(()) => debug!(host_if, peer_if, mtu, "created veth pair"),
            Err(e) if netlink_errno(&e) == Some(libc::EEXIST) => {
                // A retried ADD finds its own host end; anything else by that
                // name (or a clash on the peer's name) is an error.
                let Some(link) = self.link_by_name(host_if).await? else {
                    return Err(Error::netlink(op(), e));
                };
                let kind = link_kind(&link);
                if kind.as_ref() != Some(&InfoKind::Veth) {
                    return Err(Error::LinkKindMismatch {
                        op: op(),
                        name: host_if.to_owned(),
                        expected: "veth",
                        found: kind_name(kind.as_ref()),
                    });
                }
                debug!(host_if, "veth exists");
                return Ok(link.header.index);
            }
            Err(e) => return Err(Error::netlink(op(), e)),
        }
        self.link_index(host_if)
            .await?
            .ok_or_else(|| Error::LinkNotFound {
                op: op(),
                name: host_if.to_owned(),
            })
    }

    async fn add_addr(&self, index: u32, addr: IpAddr, prefix_len: u8) -> Result<()> {
        let op = addr_op(index, addr, prefix_len)?;
        match self
            .handle
            .address()
            .add(index, addr, prefix_len)
            .execute()
            .await
        {
            Err(e) if netlink_errno(&e) != Some(libc::EEXIST) => Err(Error::netlink(op, e)),
            _ => Ok(()),
        }
    }

    async fn del_addr(&self, index: u32, addr: IpAddr, prefix_len: u8) -> Result<()> {
        let op = format!("delete {}", addr_op(index, addr, prefix_len)?);
        let mut req = AddressMessage::default();
        req.header.index = index;
        let dumped = self.dump(&op, RouteNetlinkMessage::GetAddress(req)).await?;
        // The kernel deletes by the message it dumped, so send that one back.
        let found = dumped.into_iter().find_map(|msg| match msg {
            RouteNetlinkMessage::NewAddress(a)
                if a.header.index == index
                    && a.header.prefix_len == prefix_len
                    && address_of(&a) == Some(addr) =>
            {
                Some(a)
            }
            _ => None,
        });
        let Some(msg) = found else {
            return Ok(());
        };
        match self.handle.address().del(msg).execute().await {
            Err(e)
                if !matches!(
                    netlink_errno(&e),
                    Some(libc::EADDRNOTAVAIL | libc::ENOENT | libc::ESRCH)
                ) =>
            {
                Err(Error::netlink(op, e))
            }
            _ => Ok(()),
        }
    }

    async fn addrs(&self, index: u32) -> Result<Vec<(IpAddr, u8)>> {
        let mut req = AddressMessage::default();
        req.header.index = index;
        let op = format!("list addresses of link {index}");
        let replies = self.dump(&op, RouteNetlinkMessage::GetAddress(req)).await?;
        Ok(replies
            .into_iter()
            .filter_map(|msg| match msg {
                // Without strict checking the kernel dumps every link's
                // addresses, so filter here.
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                    address_of(&a).map(|ip| (ip, a.header.prefix_len))
                }
                _ => None,
            })
            .collect())
    }

    async fn add_route(
        &self,
        dst: IpAddr,
        prefix_len: u8,
        gateway: Option<IpAddr>,
        index: u32,
    ) -> Result<()> {
        let op = route_op(dst, prefix_len, gateway, index)?;
        let mut msg = match dst {
            IpAddr::V4(d) => {
                let mut b = RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                    .destination_prefix(d, prefix_len)
                    .output_interface(index);
                if let Some(IpAddr::V4(gw)) = gateway {
                    b = b.gateway(gw);
                }
                b.build()
            }
            IpAddr::V6(d) => {
                let mut b = RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                    .destination_prefix(d, prefix_len)
                    .output_interface(index);
                if let Some(IpAddr::V6(gw)) = gateway {
                    b = b.gateway(gw);
                }
                b.build()
            }
        };
        if gateway.is_none() {
            // Like iproute2: a route without a gateway is on-link.
            msg.header.scope = RouteScope::Link;
        }
        match self.handle.route().add(msg).execute().await {
            Err(e) if netlink_errno(&e) != Some(libc::EEXIST) => Err(Error::netlink(op, e)),
            _ => Ok(()),
        }
    }

    async fn routes_v4(&self) -> Result<Vec<Route>> {
        let mut req = RouteMessage::default();
        req.header.address_family = AddressFamily::Inet;
        let replies = self
            .dump("list ipv4 routes", RouteNetlinkMessage::GetRoute(req))
            .await?;
        Ok(replies
            .into_iter()
            .filter_map(|msg| match msg {
                RouteNetlinkMessage::NewRoute(r) => main_table_route(&r),
                _ => None,
            })
            .collect())
    }

    async fn set_mac(&self, index: u32, mac: [u8; 6]) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index)
            .address(mac.to_vec())
            .build();
        self.change_link(msg, || format!("set mac {} on link {index}", fmt_mac(mac)))
            .await
    }

    async fn link_mtu_by_index(&self, index: u32) -> Result<Option<u32>> {
        Ok(self
            .link_by_index(index)
            .await?
            .and_then(|l| link_attr_mtu(&l)))
    }

    async fn link_mac(&self, index: u32) -> Result<Option<[u8; 6]>> {
        Ok(self.link_by_index(index).await?.and_then(|link| {
            link.attributes.iter().find_map(|attr| match attr {
                LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
                _ => None,
            })
        }))
    }
    async fn ensure_vxlan(&self, name: &str, spec: VxlanSpec) -> Result<VxlanLink> {
        let op = vxlan_op(name, spec)?;
        if let Some(link) = self.link_by_name(name).await? {
            let kind = link_kind(&link);
            if kind.as_ref() != Some(&InfoKind::Vxlan) {
                return Err(Error::LinkKindMismatch {
                    op,
                    name: name.to_owned(),
                    expected: "vxlan",
                    found: kind_name(kind.as_ref()),
                });
            }
            if vxlan_matches(&link, spec) {
                let index = link.header.index;
                if link_attr_mtu(&link) != Some(spec.mtu) {
                    self.set_mtu(index, spec.mtu).await?;
                }
                if !link.header.flags.contains(LinkFlags::Up) {
                    self.set_up(index).await?;
                }
                debug!(vxlan = name, index, "adopted vxlan device");
                return Ok(VxlanLink {
                    index,
                    adopted: true,
                });
            }
            debug!(
                vxlan = name,
                "vxlan device has other settings; replacing it"
            );
            self.delete_link(name).await?;
        }
        let msg = LinkVxlan::new(name, spec.vni)
            .port(spec.port)
            .learning(false)
            .df(VxlanDf::Set)
            .mtu(spec.mtu)
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| Error::netlink(op.clone(), e))?;
        let index = self
            .link_index(name)
            .await?
            .ok_or_else(|| Error::LinkNotFound {
                op: op.clone(),
                name: name.to_owned(),
            })?;
        // The UDP socket is opened when the device goes up: a taken port
        // fails here, not later (weaveworks/weave#2375).
        if let Err(e) = self.set_up(index).await {
            let _ = self.delete_link(name).await;
            return Err(e);
        }
        debug!(vxlan = name, index, "created vxlan device");
        Ok(VxlanLink {
            index,
            adopted: false,
        })
    }

    async fn set_bridge_port(&self, index: u32, flags: BridgePortFlags) -> Result<()> {
        let mut msg = LinkBridgePort::new(index);
        if let Some(on) = flags.isolated {
            msg = msg.isolated(on);
        }
        if let Some(on) = flags.learning {
            msg = msg.learning(on);
        }
        self.handle
            .link()
            .set_port(msg.build())
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("set flags {flags:?} on bridge port {index}"), e))
    }

    async fn fdb_entries(&self) -> Result<Vec<FdbEntry>> {
        let mut req = NeighbourMessage::default();
        req.header.family = AddressFamily::Bridge;
        let replies = self
            .dump("list fdb entries", RouteNetlinkMessage::GetNeighbour(req))
            .await?;
        Ok(replies
            .iter()
            .filter_map(|msg| match msg {
                RouteNetlinkMessage::NewNeighbour(n) => fdb_entry(n),
                _ => None,
            })
            .collect())
    }

    async fn fdb_add(&self, entry: &FdbEntry) -> Result<()> {
        let op = fdb_op("add", entry)?;
        let msg = fdb_message(entry);
        // The flood list holds one entry per destination; every other MAC
        // has one destination, which a new one replaces.
        let flags = match entry.target {
            FdbTarget::Remote { .. } if entry.mac == [0; 6] => NLM_F_CREATE | NLM_F_APPEND,
            _ => NLM_F_CREATE | NLM_F_REPLACE,
        };
        match self
            .ack(RouteNetlinkMessage::NewNeighbour(msg), flags)
            .await
        {
            Err(e) if netlink_errno(&e) != Some(libc::EEXIST) => Err(Error::netlink(op, e)),
            _ => Ok(()),
        }
    }

    async fn fdb_del(&self, entry: &FdbEntry) -> Result<()> {
        let op = fdb_op("delete", entry)?;
        let msg = fdb_message(entry);
        match self.ack(RouteNetlinkMessage::DelNeighbour(msg), 0).await {
            Err(e) if !is_missing(&e) => Err(Error::netlink(op, e)),
            _ => Ok(()),
        }
    }

    async fn wait_oper_up(&self, index: u32, limit: std::time::Duration) -> Result<bool> {
        let op = format!("wait for link {index} to be up");
        let wait = move || oper_up_within(index, limit);
        match &self.netns {
            Some(path) => netns::open_in(path, wait),
            None => wait().map_err(|e| Error::io(op.clone(), e)),
        }
        .map_err(|e| match e {
            Error::Io { source, .. } => Error::io(op, source),
            other => other,
        })
    }

    async fn announce(&self, index: u32, mac: Mac, addrs: &[IpAddr]) -> Result<()> {
        let op = format!("announce addresses on link {index}");
        let frames: Vec<Vec<u8>> = addrs
            .iter()
            .map(|a| crate::packet::announcement(mac, *a))
            .collect();
        let send = move || -> std::io::Result<()> {
            let socket = crate::packet::PacketSocket::sender(index)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            for f in &frames {
                socket.send_to(index, f)?;
            }
            Ok(())
        };
        // Like `in_netns`, a short-lived thread enters the namespace; the
        // socket is used and closed there.
        match &self.netns {
            Some(path) => netns::open_in(path, send),
            None => send().map_err(|e| Error::io(op.clone(), e)),
        }
        .map_err(|e| match e {
            Error::Io { source, .. } => Error::io(op, source),
            other => other,
        })
    }
}

/// Blocks the calling thread (in the namespace of the link) until link
/// `index` is operationally up or `limit` has passed: a netlink socket
/// joins the link notification group first, then asks for the link once,
/// then reads the notifications, so no change between the two is missed.
fn oper_up_within(index: u32, limit: std::time::Duration) -> std::io::Result<bool> {
    use rtnetlink::packet_route::link::State;
    use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
    /// `RTMGRP_LINK`: link notifications.
    const LINK_GROUP: u32 = 1;
    #[allow(clippy::disallowed_types)] // a deadline for a blocking socket, not tokio's
    let deadline = std::time::Instant::now() + limit;
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind(&SocketAddr::new(0, LINK_GROUP))?;
    let mut get = LinkMessage::default();
    get.header.index = index;
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetLink(get));
    req.header.flags = NLM_F_REQUEST;
    req.finalize();
    let mut buf = vec![0u8; req.buffer_len()];
    req.serialize(&mut buf);
    socket.send_to(&buf, &SocketAddr::new(0, 0), 0)?;
    let mut rx = vec![0u8; 32 * 1024];
    loop {
        #[allow(clippy::disallowed_types)]
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::from(libc::timeval {
                tv_sec: libc::time_t::try_from(left.as_secs()).unwrap_or(libc::time_t::MAX),
                tv_usec: libc::suseconds_t::from(left.subsec_micros().max(1)),
            }),
        )?;
        let n = match socket.recv(&mut &mut rx[..], 0) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(false)
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let mut off = 0;
        while off + 16 <= n {
            let len = u32::from_ne_bytes([rx[off], rx[off + 1], rx[off + 2], rx[off + 3]]) as usize;
            if len < 16 || off + len > n {
                break;
            }
            let bytes = &rx[off..off + len];
            off += (len + 3) & !3;
            let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes) else {
                continue;
            };
            match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link))
                    if link.header.index == index =>
                {
                    let up = link
                        .attributes
                        .iter()
                        .any(|a| matches!(a, LinkAttribute::OperState(State::Up)));
                    if up {
                        return Ok(true);
                    }
                }
                // the link does not exist
                NetlinkPayload::Error(e) if e.code.is_some() => return Ok(false),
                _ => {}
            }
        }
    }
}

/// Whether an existing VXLAN device has the settings the fast path needs
/// (VNI, port, learning off); its MTU may differ.
fn vxlan_matches(link: &LinkMessage, spec: VxlanSpec) -> bool {
    let infos = link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::LinkInfo(infos) => Some(infos),
        _ => None,
    });
    let Some(data) = infos.and_then(|infos| {
        infos.iter().find_map(|info| match info {
            LinkInfo::Data(InfoData::Vxlan(data)) => Some(data),
            _ => None,
        })
    }) else {
        return false;
    };
    let mut vni = None;
    let mut port = None;
    let mut learning = true;
    for d in data {
        match d {
            InfoVxlan::Id(v) => vni = Some(*v),
            InfoVxlan::Port(p) => port = Some(*p),
            InfoVxlan::Learning(l) => learning = *l,
            _ => {}
        }
    }
    vni == Some(spec.vni) && port == Some(spec.port) && !learning
}

/// The netlink message for a forwarding entry (add or delete).
fn fdb_message(e: &FdbEntry) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = e.ifindex;
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(e.mac.to_vec()));
    match e.target {
        FdbTarget::Bridge { state, .. } => {
            msg.header.flags = NeighbourFlags::Controller;
            if state == BridgeFdbState::Sticky {
                msg.header.flags |= NeighbourFlags::Sticky;
            }
            msg.header.state = match state {
                BridgeFdbState::Local => NeighbourState::Permanent,
                BridgeFdbState::Learned => NeighbourState::Reachable,
                BridgeFdbState::Static | BridgeFdbState::Sticky => NeighbourState::Noarp,
            };
        }
        FdbTarget::Remote { dst, port } => {
            msg.header.flags = NeighbourFlags::Own;
            msg.header.state = NeighbourState::Permanent;
            msg.attributes
                .push(NeighbourAttribute::Destination(match dst {
                    IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
                    IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
                }));
            if let Some(port) = port {
                msg.attributes.push(NeighbourAttribute::Port(port));
            }
        }
    }
    msg
}

/// A dumped `AF_BRIDGE` neighbour as a forwarding entry: entries of a
/// bridge (`master`) and remote entries of a VXLAN device (`self` with a
/// destination); `None` for the ports' own address lists and anything else.
fn fdb_entry(n: &NeighbourMessage) -> Option<FdbEntry> {
    let mut mac = None;
    let mut dst = None;
    let mut port = None;
    let mut master = None;
    for attr in &n.attributes {
        match attr {
            NeighbourAttribute::LinkLayerAddress(b) => mac = <Mac>::try_from(b.as_slice()).ok(),
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                dst = Some(IpAddr::V4(*v4));
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                dst = Some(IpAddr::V6(*v6));
            }
            // In a bridge-family dump (ours) netlink-packet-route cannot
            // tell the address family of NDA_DST and hands over its bytes.
            NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                dst = match b.len() {
                    4 => <[u8; 4]>::try_from(b.as_slice()).ok().map(IpAddr::from),
                    16 => <[u8; 16]>::try_from(b.as_slice()).ok().map(IpAddr::from),
                    _ => None,
                };
            }
            NeighbourAttribute::Port(p) => port = Some(*p),
            NeighbourAttribute::Controller(m) => master = Some(*m),
            _ => {}
        }
    }
    let mac = mac?;
    let state = u16::from(n.header.state);
    // Bridge entries name their bridge (NDA_MASTER); remote entries of a
    // VXLAN device their destination (NDA_DST); the ports' own address
    // lists have neither.
    let target = if let Some(bridge) = master {
        const NUD_PERMANENT: u16 = 0x80;
        const NUD_NOARP: u16 = 0x40;
        let state = if state & NUD_PERMANENT != 0 {
            BridgeFdbState::Local
        } else if state & NUD_NOARP != 0 {
            if n.header.flags.contains(NeighbourFlags::Sticky) {
                BridgeFdbState::Sticky
            } else {
                BridgeFdbState::Static
            }
        } else {
            BridgeFdbState::Learned
        };
        FdbTarget::Bridge { bridge, state }
    } else {
        // The kernel lists a port only where it differs from the device's.
        FdbTarget::Remote { dst: dst?, port }
    };
    Some(FdbEntry {
        mac,
        ifindex: n.header.ifindex,
        target,
    })
}

/// Whether a netlink error means "no such link/object" (ENODEV, ENOENT).
fn is_missing(err: &rtnetlink::Error) -> bool {
    matches!(netlink_errno(err), Some(libc::ENODEV | libc::ENOENT))
}

/// The `IFLA_INFO_KIND` of a link (`None` for devices without one, such as
/// `lo` or physical NICs).
fn link_kind(link: &LinkMessage) -> Option<InfoKind> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|info| match info {
            LinkInfo::Kind(kind) => Some(kind.clone()),
            _ => None,
        }),
        _ => None,
    })
}

fn kind_name(kind: Option<&InfoKind>) -> String {
    kind.map_or_else(|| "device".to_owned(), ToString::to_string)
}

fn link_attr_mtu(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::Mtu(mtu) => Some(*mtu),
        _ => None,
    })
}

/// An address message's address: `IFA_LOCAL` when present (on
/// point-to-point links `IFA_ADDRESS` is the peer's), else `IFA_ADDRESS`.
fn address_of(msg: &AddressMessage) -> Option<IpAddr> {
    let local = msg.attributes.iter().find_map(|attr| match attr {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    local.or_else(|| {
        msg.attributes.iter().find_map(|attr| match attr {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })
}

/// Converts a dumped route into a [`Route`] if it is an IPv4 unicast route
/// of the main table.
fn main_table_route(r: &RouteMessage) -> Option<Route> {
    // Tables above 255 only appear in RTA_TABLE; the header then says 252
    // (RT_TABLE_COMPAT), so the attribute wins when present.
    let table = r
        .attributes
        .iter()
        .find_map(|attr| match attr {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or_else(|| u32::from(r.header.table));
    if table != u32::from(RouteHeader::RT_TABLE_MAIN)
        || r.header.kind != RouteType::Unicast
        || r.header.address_family != AddressFamily::Inet
    {
        return None;
    }
    let mut route = Route {
        dst: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        prefix_len: r.header.destination_prefix_length,
        gateway: None,
        oif: None,
    };
    for attr in &r.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet(d)) => route.dst = IpAddr::V4(*d),
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => route.gateway = Some(IpAddr::V4(*g)),
            RouteAttribute::Oif(oif) => route.oif = Some(*oif),
            _ => {}
        }
    }
    Some(route)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn main_table_routes_are_parsed_and_others_skipped() {
        let mut r = RouteMessage::default();
        r.header.address_family = AddressFamily::Inet;
        r.header.table = RouteHeader::RT_TABLE_MAIN;
        r.header.kind = RouteType::Unicast;
        r.header.destination_prefix_length = 12;
        r.attributes = vec![
            RouteAttribute::Table(254),
            RouteAttribute::Destination(RouteAddress::Inet("10.32.0.0".parse().expect("ip"))),
            RouteAttribute::Gateway(RouteAddress::Inet("192.168.1.1".parse().expect("ip"))),
            RouteAttribute::Oif(3),
        ];
        assert_eq!(
            main_table_route(&r),
            Some(Route {
                dst: "10.32.0.0".parse().expect("ip"),
                prefix_len: 12,
                gateway: Some("192.168.1.1".parse().expect("ip")),
                oif: Some(3),
            })
        );

        let mut local = r.clone();
        local.header.table = 255;
        local.attributes[0] = RouteAttribute::Table(255);
        assert_eq!(main_table_route(&local), None);

        let mut default = r.clone();
        default.header.destination_prefix_length = 0;
        default.attributes.remove(1);
        let parsed = main_table_route(&default).expect("default route");
        assert_eq!(parsed.dst, IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        assert_eq!(parsed.prefix_len, 0);
    }

    #[test]
    fn handles_need_a_runtime() {
        let err = LinuxNetlink::new().expect_err("no runtime on this thread");
        assert!(matches!(err, Error::NoRuntime { .. }), "{err}");
        let err = LinuxNetlink::in_netns(Path::new("/proc/self/ns/net")).expect_err("no runtime");
        assert!(matches!(err, Error::NoRuntime { .. }), "{err}");
    }
}
