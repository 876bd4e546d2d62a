// SPDX-License-Identifier: Apache-2.0
//! The task that owns [`Ipam`]: it takes API requests and the events of its
//! gossip channel, persists the state before any answer leaves, and sends
//! its gossip through the mesh's gossip port ([`crate::mesh::gossip`]).
//!
//! Requests that arrive together are handled as one batch and cost one
//! write of the state file; a reply is only sent once the state that
//! contains it is on disk, so an address handed out survives a crash.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::space::{Allocation, Ident};
use super::subnet::Subnet;
use super::{persist, Ipam, IpamError, OpId, Removal};
use crate::mesh::gossip::{Channel, GossipEvent, GossipSender, GossipTo, Registration};
use crate::mesh::{ConnId, PeerName};

/// The gossip channel of IP address management.
pub const CHANNEL: Channel = Channel(1);
/// Requests handled per batch before the state is written.
const BATCH: usize = 256;
/// How often waiting requests whose caller went away are dropped, and the
/// state file is made durable if it changed.
const PRUNE_INTERVAL: Duration = Duration::from_secs(1);

/// Reply channel of a request that yields an address.
pub type AddressReply = oneshot::Sender<Result<Allocation, IpamError>>;

/// A request from the local API.
#[derive(Debug)]
pub enum Request {
    /// Allocate in `subnet` (default subnet when `None`).
    Allocate {
        /// Who the address is for.
        ident: Ident,
        /// Where.
        subnet: Option<Subnet>,
        /// Reply.
        reply: AddressReply,
    },
    /// Claim a specific address.
    Claim {
        /// Who the address is for.
        ident: Ident,
        /// The address.
        addr: Ipv4Addr,
        /// Its prefix length.
        prefix: u8,
        /// Reply.
        reply: AddressReply,
    },
    /// Release one or all addresses of `ident`.
    Release {
        /// Whose.
        ident: Ident,
        /// Which one; all when `None`.
        addr: Option<Ipv4Addr>,
        /// Reply: what was released.
        reply: oneshot::Sender<Vec<Allocation>>,
    },
    /// Addresses of `ident`.
    Lookup {
        /// Whose.
        ident: Ident,
        /// Reply.
        reply: oneshot::Sender<Vec<Allocation>>,
    },
    /// Every identifier holding addresses of this peer, with them.
    List {
        /// Reply.
        reply: oneshot::Sender<Vec<(Ident, Vec<Allocation>)>>,
    },
    /// Release everything under `prefix` not in `keep`.
    Gc {
        /// Candidate prefix.
        prefix: String,
        /// Identifiers to keep.
        keep: BTreeSet<String>,
        /// Reply: identifiers released.
        reply: oneshot::Sender<Vec<Ident>>,
    },
    /// Remove a dead peer.
    RmPeer {
        /// Name or nickname.
        peer: String,
        /// Reply.
        reply: oneshot::Sender<Result<Removal, IpamError>>,
    },
    /// Status report.
    Report {
        /// Reply.
        reply: oneshot::Sender<weave_api::IpamReport>,
    },
}

/// Refuses an allocation range that overlaps a route of this host (other
/// than routes via `bridge`, which are ours): pods would be unreachable, or
/// worse, shadow real hosts. The default route is not a conflict.
pub async fn check_overlap(
    netlink: &impl weave_platform::Netlink,
    range: &Subnet,
    bridge: Option<&str>,
) -> crate::Result<()> {
    let ours = match bridge {
        Some(b) => netlink.link_index(b).await?,
        None => None,
    };
    for r in netlink.routes_v4().await? {
        let std::net::IpAddr::V4(dst) = r.dst else {
            continue;
        };
        if r.prefix_len == 0 || (ours.is_some() && r.oif == ours) {
            continue;
        }
        if super::subnet::overlaps_route(range, dst, r.prefix_len) {
            return Err(crate::Error::RangeOverlap {
                range: range.to_string(),
                route: format!("{dst}/{}", r.prefix_len),
            });
        }
    }
    Ok(())
}

/// Answers held back until the state containing them is persisted.
enum Outgoing {
    Address(AddressReply, Result<Allocation, IpamError>),
    Released(oneshot::Sender<Vec<Allocation>>, Vec<Allocation>),
    Gc(oneshot::Sender<Vec<Ident>>, Vec<Ident>),
    RmPeer(
        oneshot::Sender<Result<Removal, IpamError>>,
        Result<Removal, IpamError>,
    ),
}

/// The IPAM task.
pub struct Allocator {
    ipam: Ipam,
    state_dir: PathBuf,
    requests: mpsc::Receiver<Request>,
    events: mpsc::Receiver<GossipEvent>,
    gossip: GossipSender,
    waiters: HashMap<OpId, AddressReply>,
    outgoing: Vec<Outgoing>,
    gossip_to: Vec<ConnId>,
    next_op: OpId,
    gossip_interval: Duration,
    unsynced: bool,
    removed: Option<watch::Sender<BTreeSet<PeerName>>>,
}

impl Allocator {
    /// An allocator persisting to `state_dir`, gossiping through the
    /// registration of [`CHANNEL`].
    pub fn new(
        ipam: Ipam,
        state_dir: PathBuf,
        requests: mpsc::Receiver<Request>,
        gossip: Registration,
    ) -> Self {
        Self {
            ipam,
            state_dir,
            requests,
            events: gossip.inbox,
            gossip: gossip.sender,
            waiters: HashMap::new(),
            outgoing: Vec::new(),
            gossip_to: Vec::new(),
            next_op: 1,
            gossip_interval: Duration::from_secs(10),
            unsynced: false,
            removed: None,
        }
    }

    /// Publishes the set of peers removed for good (rmpeer, reclaim) on
    /// `tx` whenever it grows, for subsystems that drop what those peers
    /// owned (weaveDNS records).
    pub fn with_removed(mut self, tx: watch::Sender<BTreeSet<PeerName>>) -> Self {
        self.removed = Some(tx);
        self
    }

    /// Sets the anti-entropy interval: our state goes to one random
    /// neighbour this often, which repairs any gossip lost on the way.
    pub fn with_gossip_interval(mut self, interval: Duration) -> Self {
        self.gossip_interval = interval;
        self
    }

    /// Runs until `cancel` fires.
    pub async fn run(mut self, cancel: CancellationToken) -> crate::Result<()> {
        info!(range = %self.ipam.config().universe, default_subnet = %self.ipam.config().default_subnet, status = %self.ipam.status(), "IP allocation started");
        let mut next_prune = Instant::now() + PRUNE_INTERVAL;
        let mut next_gossip = Instant::now() + self.gossip_interval;
        loop {
            let now = Instant::now();
            let wake = self
                .ipam
                .next_tick(now)
                .unwrap_or(now + Duration::from_secs(3600))
                .min(next_prune)
                .min(next_gossip);
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    if now >= next_prune {
                        next_prune = now + PRUNE_INTERVAL;
                        self.prune();
                        self.sync().await;
                    }
                    if now >= next_gossip {
                        next_gossip = now + self.gossip_interval;
                        self.send(GossipTo::Random);
                    }
                    self.ipam.tick(now);
                }
                Some(req) = self.requests.recv() => {
                    self.on_request(req);
                    for _ in 1..BATCH {
                        match self.requests.try_recv() {
                            Ok(req) => self.on_request(req),
                            Err(_) => break,
                        }
                    }
                }
                Some(ev) = self.events.recv() => self.on_event(ev),
            }
            self.flush().await;
        }
        self.flush().await;
        self.sync().await;
        info!("IP allocation stopped");
        Ok(())
    }

    fn op(&mut self) -> OpId {
        self.next_op += 1;
        self.next_op
    }

    fn on_request(&mut self, req: Request) {
        let now = Instant::now();
        match req {
            Request::Allocate {
                ident,
                subnet,
                reply,
            } => {
                let op = self.op();
                match self.ipam.allocate(op, ident, subnet, now) {
                    Some(r) => self.outgoing.push(Outgoing::Address(reply, r)),
                    None => {
                        self.waiters.insert(op, reply);
                    }
                }
            }
            Request::Claim {
                ident,
                addr,
                prefix,
                reply,
            } => {
                let op = self.op();
                match self.ipam.claim(op, ident, addr, prefix, now) {
                    Some(r) => self.outgoing.push(Outgoing::Address(reply, r)),
                    None => {
                        self.waiters.insert(op, reply);
                    }
                }
            }
            Request::Release { ident, addr, reply } => {
                let out = self.ipam.release(&ident, addr.map(u32::from), now);
                self.outgoing.push(Outgoing::Released(reply, out));
            }
            Request::Lookup { ident, reply } => {
                let _ = reply.send(self.ipam.lookup(&ident));
            }
            Request::List { reply } => {
                let space = self.ipam.space();
                let list = space
                    .idents()
                    .map(|i| (i.clone(), space.lookup(i).to_vec()))
                    .collect();
                let _ = reply.send(list);
            }
            Request::Gc {
                prefix,
                keep,
                reply,
            } => {
                let out = self.ipam.gc(&prefix, &keep, now);
                self.outgoing.push(Outgoing::Gc(reply, out));
            }
            Request::RmPeer { peer, reply } => {
                let r = self.ipam.rmpeer(&peer, now);
                self.outgoing.push(Outgoing::RmPeer(reply, r));
            }
            Request::Report { reply } => {
                let _ = reply.send(self.ipam.report());
            }
        }
    }

    fn on_event(&mut self, ev: GossipEvent) {
        let now = Instant::now();
        match ev {
            GossipEvent::Received { conn, from, body } => {
                match self.ipam.on_gossip(from, &body, now) {
                    Ok(out) => {
                        if out.reply {
                            self.gossip_to.push(conn);
                        }
                    }
                    Err(e) => warn!(peer = %from, error = %e, "dropping IPAM gossip"),
                }
            }
            GossipEvent::NeighbourUp { conn, .. } => self.gossip_to.push(conn),
            GossipEvent::Reachable(set) => self.ipam.set_reachable(set, now),
        }
    }

    /// Drops waiting requests whose caller has given up.
    fn prune(&mut self) {
        let gone: Vec<OpId> = self
            .waiters
            .iter()
            .filter(|(_, r)| r.is_closed())
            .map(|(op, _)| *op)
            .collect();
        for op in gone {
            debug!(op, "caller went away; request withdrawn");
            self.waiters.remove(&op);
            self.ipam.cancel(op);
        }
    }

    /// Makes the state file durable if it changed since the last time.
    async fn sync(&mut self) {
        if !std::mem::take(&mut self.unsynced) {
            return;
        }
        let dir = self.state_dir.clone();
        match tokio::task::spawn_blocking(move || persist::sync(&dir)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => error!(error = %e, "could not sync IPAM state to disk"),
            Err(e) => error!(error = %e, "IPAM sync task failed"),
        }
    }

    /// Persists if needed, then answers and gossips.
    async fn flush(&mut self) {
        while let Some((op, r)) = self.ipam.poll_completion() {
            if let Some(reply) = self.waiters.remove(&op) {
                self.outgoing.push(Outgoing::Address(reply, r));
            }
        }
        if self.ipam.take_persist_dirty() {
            let state = self.ipam.persisted();
            let dir = self.state_dir.clone();
            let res = tokio::task::spawn_blocking(move || persist::save(&dir, &state)).await;
            match res {
                Ok(Ok(())) => self.unsynced = true,
                Ok(Err(e)) => {
                    error!(error = %e, "could not persist IPAM state; allocations may not survive a crash")
                }
                Err(e) => error!(error = %e, "IPAM persistence task failed"),
            }
        }
        for out in self.outgoing.drain(..) {
            match out {
                Outgoing::Address(reply, r) => {
                    let _ = reply.send(r);
                }
                Outgoing::Released(reply, r) => {
                    let _ = reply.send(r);
                }
                Outgoing::Gc(reply, r) => {
                    let _ = reply.send(r);
                }
                Outgoing::RmPeer(reply, r) => {
                    let _ = reply.send(r);
                }
            }
        }
        if let Some(tx) = &self.removed {
            let now = self.ipam.removed_peers();
            tx.send_if_modified(|old| {
                let grew = *old != now;
                if grew {
                    *old = now;
                }
                grew
            });
        }
        let dirty = self.ipam.take_gossip_dirty();
        if !dirty && self.gossip_to.is_empty() {
            return;
        }
        let conns: Vec<ConnId> = self.gossip_to.drain(..).collect();
        for conn in conns {
            self.send(GossipTo::Conn(conn));
        }
        if dirty {
            self.send(GossipTo::Fanout);
        }
    }

    fn send(&mut self, to: GossipTo) {
        // Gossip is repeated by anti-entropy; dropping under pressure is fine.
        if !self.gossip.send(to, self.ipam.gossip_state().encode()) {
            debug!("router busy; IPAM gossip dropped");
        }
    }
}
