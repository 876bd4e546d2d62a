// SPDX-License-Identifier: Apache-2.0
//! The mesh state machine of one peer: connections, handshake, topology
//! gossip, routes and the connection maker, with no I/O.
//!
//! The socket layer feeds it events (`accepted`, `dialled`, `received`,
//! `closed`, `tick`) with the current time and carries out the [`Action`]s it
//! queues (dial, send, close). The same struct is driven by the in-process
//! simulation of many peers in the tests, so everything that decides anything
//! lives here.
//!
//! Gossip: a change is pushed as full records to a random subset of
//! neighbours (about 2·log2(N), so traffic grows as N log N, not N²); each
//! receiver forwards only what was new to it. Periodically each peer sends a
//! digest of `(name, uid, version)` to one neighbour, which answers with what
//! it has newer: that repairs anything the push missed. A new connection gets
//! the full topology at once.
//!
//! With a password (`MeshConfig::psks`), each connection first runs the
//! Noise handshake of [`crate::crypto::handshake`] and then seals every
//! frame ([`crate::crypto::session`]); the Hello travels sealed, so nothing
//! about a peer is learnt before it proved it knows the password.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::connmaker::{ConnectionMaker, TargetState};
use super::overlay::{Neighbour, OverlayView};
use super::peer::{PeerName, PeerUid};
use super::routes::{broadcast_children, Graph, Routes};
use super::topology::{ConnRecord, PeerRecord, Topology, TopologyGossip};
use super::wire::{self, Decoder, Frame, Hello, Message, RawFrame, WireError};
use crate::crypto::{Secret, SleeveKeys};
use secure::{Crypto, AUTH_FAILED};

mod secure;

/// Gossip channel of the topology; every other channel belongs to a
/// subsystem registered on the gossip port ([`super::gossip`]).
pub const CHANNEL_TOPOLOGY: u8 = 0;
/// Topology changes are batched for this long before reachability, routes
/// and targets are recomputed (a burst of gossip costs one computation).
const REFRESH_DELAY: Duration = Duration::from_millis(20);
/// Tunables of the mesh; [`MeshConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// Our peer name.
    pub name: PeerName,
    /// Our nickname.
    pub nickname: String,
    /// The TCP port we listen on (announced to peers).
    pub listen_port: u16,
    /// Most connections (established, handshaking and dialling) at once.
    pub conn_limit: usize,
    /// Interval of heartbeats on each established connection.
    pub heartbeat_interval: Duration,
    /// A connection that receives nothing for this long is closed.
    pub read_timeout: Duration,
    /// A connection must complete its handshake within this.
    pub handshake_timeout: Duration,
    /// Interval of anti-entropy digests.
    pub gossip_interval: Duration,
    /// How long an unreachable peer stays in the topology.
    pub peer_gc_grace: Duration,
    /// First reconnect back-off.
    pub backoff_initial: Duration,
    /// Largest reconnect back-off.
    pub backoff_max: Duration,
    /// A data plane confirms each connection (UDP path verified) before it
    /// counts as established; without one, the handshake alone does.
    pub overlay: bool,
    /// Pre-shared keys from the mesh password(s), preferred first; empty:
    /// no encryption (protocol version 1).
    pub psks: Vec<Secret>,
}

impl MeshConfig {
    /// Defaults: limit 100, heartbeat 1 s, read timeout 6 s, handshake 10 s,
    /// digest every 10 s, unreachable peers kept 3 s, back-off 1 s to 60 s.
    pub fn new(name: PeerName, nickname: String, listen_port: u16) -> Self {
        Self {
            name,
            nickname,
            listen_port,
            conn_limit: 100,
            heartbeat_interval: Duration::from_secs(1),
            read_timeout: Duration::from_secs(6),
            handshake_timeout: Duration::from_secs(10),
            gossip_interval: Duration::from_secs(10),
            peer_gc_grace: Duration::from_secs(3),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            overlay: false,
            psks: Vec::new(),
        }
    }

    /// The protocol version this configuration speaks.
    fn version(&self) -> u8 {
        if self.psks.is_empty() {
            wire::PLAIN_VERSION
        } else {
            wire::SEALED_VERSION
        }
    }
}

/// Handle of one connection, assigned by the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// What the socket layer must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a TCP connection to `addr`, then call `dialled` or `dial_failed`.
    Dial {
        /// The connection handle to report back with.
        conn: ConnId,
        /// Where to connect.
        addr: SocketAddr,
    },
    /// Write these bytes, in order, on the connection.
    Send {
        /// The connection.
        conn: ConnId,
        /// Bytes to write.
        data: Vec<u8>,
    },
    /// Flush what was queued, then close the connection. No `closed` call is
    /// expected afterwards (the mesh has forgotten it already).
    Close {
        /// The connection.
        conn: ConnId,
    },
    /// Gossip of an application channel arrived (anything but the topology).
    Deliver {
        /// The connection it came on.
        conn: ConnId,
        /// The neighbour that sent it.
        peer: PeerName,
        /// The channel.
        channel: u8,
        /// The body, for the channel's owner to decode.
        body: Vec<u8>,
    },
    /// A connection was established: application channels send it their
    /// state, as the mesh does with the topology.
    NeighbourUp {
        /// The new connection.
        conn: ConnId,
        /// The neighbour.
        peer: PeerName,
    },
}

/// The remote end of an established connection.
#[derive(Debug, Clone)]
struct Remote {
    name: PeerName,
    uid: PeerUid,
    nickname: String,
    conn_uid: u64,
    listen_addr: SocketAddr,
    /// The data plane confirmed the path (always true without overlay).
    confirmed: bool,
    /// Sleeve keys agreed in the handshake (none without a password).
    keys: Option<Arc<SleeveKeys>>,
}

#[derive(Debug)]
enum ConnState {
    Dialing,
    Handshaking { version: Option<u8> },
    Established(Remote),
}

#[derive(Debug)]
struct Conn {
    remote: SocketAddr,
    outbound: bool,
    target: Option<SocketAddr>,
    state: ConnState,
    decoder: Decoder,
    opened: Instant,
    last_recv: Instant,
    next_heartbeat: Instant,
    local_conn_id: u64,
    bytes_in: u64,
    bytes_out: u64,
    crypto: Crypto,
}

/// Counters, reported by `weave report`.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Bytes received on all connections.
    pub bytes_in: u64,
    /// Bytes sent on all connections.
    pub bytes_out: u64,
    /// Gossip messages received.
    pub gossip_in: u64,
    /// Gossip messages sent.
    pub gossip_out: u64,
    /// Connections closed for a protocol error of the remote side.
    pub protocol_errors: u64,
    /// Handshakes refused: wrong password, or only one side has one.
    pub auth_failures: u64,
    /// Sealed control frames that did not decrypt (the connection closes).
    pub decrypt_failures: u64,
}

/// The mesh of one peer.
#[derive(Debug)]
pub struct Mesh {
    cfg: MeshConfig,
    uid: PeerUid,
    rng: StdRng,
    topo: Topology,
    routes: Routes,
    conns: BTreeMap<ConnId, Conn>,
    next_id: u64,
    maker: ConnectionMaker,
    unreachable: BTreeMap<PeerName, Instant>,
    next_digest: Instant,
    refresh_at: Option<Instant>,
    overlay_view: Arc<OverlayView>,
    actions: VecDeque<Action>,
    stats: Stats,
}

impl Mesh {
    /// A mesh for a new incarnation `uid`; `seed` drives every random choice
    /// (gossip fan-out, jitter, connection ids), so simulations replay.
    pub fn new(cfg: MeshConfig, uid: PeerUid, seed: u64, now: Instant) -> Self {
        let local = PeerRecord {
            name: cfg.name,
            uid,
            version: 1,
            nickname: cfg.nickname.clone(),
            conns: BTreeMap::new(),
        };
        let maker = ConnectionMaker::new(cfg.backoff_initial, cfg.backoff_max);
        let local_name = cfg.name;
        let next_digest = now + cfg.gossip_interval;
        Self {
            cfg,
            uid,
            rng: StdRng::seed_from_u64(seed),
            topo: Topology::new(local),
            routes: Routes::default(),
            conns: BTreeMap::new(),
            next_id: 1,
            maker,
            unreachable: BTreeMap::new(),
            next_digest,
            refresh_at: None,
            overlay_view: Arc::new(OverlayView {
                local: local_name,
                ..OverlayView::default()
            }),
            actions: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// Our peer name.
    pub fn name(&self) -> PeerName {
        self.cfg.name
    }

    /// Our incarnation.
    pub fn uid(&self) -> PeerUid {
        self.uid
    }

    /// The configuration.
    pub fn config(&self) -> &MeshConfig {
        &self.cfg
    }

    /// The local view of the topology.
    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    /// Data-plane routes (links established in both directions).
    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    /// Peers that became unreachable and are about to be dropped.
    pub fn unreachable(&self) -> &BTreeMap<PeerName, Instant> {
        &self.unreachable
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The connection maker's targets.
    pub fn maker(&self) -> &ConnectionMaker {
        &self.maker
    }

    /// The latest snapshot for the data plane.
    pub fn overlay_view(&self) -> &Arc<OverlayView> {
        &self.overlay_view
    }

    /// The data plane verified the path to `peer` on connection `conn_uid`:
    /// the connection now counts as established and carries data.
    pub fn overlay_established(&mut self, peer: PeerName, conn_uid: u64, now: Instant) {
        self.set_confirmed(peer, conn_uid, true, now);
    }

    /// The data plane lost the path to `peer`: routes avoid the link (other
    /// peers may relay) until it is verified again.
    pub fn overlay_failed(&mut self, peer: PeerName, conn_uid: u64, now: Instant) {
        self.set_confirmed(peer, conn_uid, false, now);
    }

    fn set_confirmed(&mut self, peer: PeerName, conn_uid: u64, ok: bool, now: Instant) {
        let found = self.conns.values_mut().find_map(|c| match &mut c.state {
            ConnState::Established(r) if r.name == peer && r.conn_uid == conn_uid => Some(r),
            _ => None,
        });
        let Some(r) = found else { return };
        if r.confirmed == ok {
            return;
        }
        r.confirmed = ok;
        if ok {
            info!(%peer, "data path established");
        } else {
            warn!(%peer, "data path lost; traffic is relayed through other peers where possible");
        }
        self.topology_changed(now);
        self.topo.update_local(|rec| {
            if let Some(c) = rec.conns.get_mut(&peer) {
                c.established = ok;
            }
        });
        self.push_records(&[self.cfg.name], None);
    }

    /// Peers reachable over links established at both ends (not us).
    pub fn reachable_peers(&self) -> BTreeSet<PeerName> {
        self.routes.unicast.keys().copied().collect()
    }

    /// Sends gossip of an application channel on one established connection.
    pub fn send_channel(&mut self, conn: ConnId, channel: u8, body: Vec<u8>) {
        let established = self
            .conns
            .get(&conn)
            .is_some_and(|c| matches!(c.state, ConnState::Established(_)));
        if established {
            self.stats.gossip_out += 1;
            self.send(conn, Message::Gossip { channel, body }.encode());
        }
    }

    /// Sends gossip of an application channel to a random subset of
    /// neighbours (as many as topology gossip uses), leaving out `exclude`.
    pub fn fanout_channel(&mut self, channel: u8, body: Vec<u8>, exclude: Option<ConnId>) {
        let mut ids: Vec<ConnId> = self
            .established_ids()
            .into_iter()
            .filter(|id| Some(*id) != exclude)
            .collect();
        ids.shuffle(&mut self.rng);
        ids.truncate(fanout(self.topo.len()));
        let data = Message::Gossip { channel, body }.encode();
        for id in ids {
            self.stats.gossip_out += 1;
            self.send(id, data.clone());
        }
    }

    /// Sends gossip of an application channel to one random neighbour.
    pub fn random_channel(&mut self, channel: u8, body: Vec<u8>) {
        let ids = self.established_ids();
        if let Some(&id) = ids.choose(&mut self.rng) {
            self.send_channel(id, channel, body);
        }
    }

    /// Whether the mesh still tracks this connection.
    pub fn has_conn(&self, id: ConnId) -> bool {
        self.conns.contains_key(&id)
    }

    /// Next queued action.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Adds direct targets (see [`ConnectionMaker::add_direct`]) and dials.
    pub fn connect(&mut self, addrs: &[SocketAddr], replace: bool, now: Instant) {
        info!(peers = ?addrs, replace, "connect");
        self.maker.add_direct(addrs, replace, now);
        self.run_maker(now);
    }

    /// Forgets direct targets.
    pub fn forget(&mut self, addrs: &[SocketAddr], now: Instant) {
        info!(peers = ?addrs, "forget");
        self.maker.forget(addrs);
        self.run_maker(now);
    }

    /// A connection was accepted; `None` means it must be dropped at once
    /// (connection limit).
    pub fn accepted(&mut self, remote: SocketAddr, now: Instant) -> Option<ConnId> {
        if self.conns.len() >= self.cfg.conn_limit {
            warn!(%remote, limit = self.cfg.conn_limit, "refusing connection: connection limit reached");
            return None;
        }
        let id = self.new_conn(
            remote,
            false,
            None,
            ConnState::Handshaking { version: None },
            now,
        );
        self.send_intro(id);
        Some(id)
    }

    /// An outbound dial succeeded.
    pub fn dialled(&mut self, id: ConnId, now: Instant) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if !matches!(c.state, ConnState::Dialing) {
            return;
        }
        c.state = ConnState::Handshaking { version: None };
        c.last_recv = now;
        self.send_intro(id);
    }

    /// An outbound dial failed.
    pub fn dial_failed(&mut self, id: ConnId, error: &str, now: Instant) {
        if self.conns.contains_key(&id) {
            self.remove_conn(id, error, now);
        }
    }

    /// The socket layer saw the connection end (EOF or error).
    pub fn closed(&mut self, id: ConnId, reason: &str, now: Instant) {
        if self.conns.contains_key(&id) {
            self.remove_conn(id, reason, now);
        }
    }

    /// Bytes arrived on a connection.
    pub fn received(&mut self, id: ConnId, data: &[u8], now: Instant) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        c.last_recv = now;
        c.bytes_in += data.len() as u64;
        self.stats.bytes_in += data.len() as u64;
        c.decoder.push(data);
        loop {
            let Some(c) = self.conns.get_mut(&id) else {
                return;
            };
            let frame = match c.decoder.next_raw() {
                Ok(None) => return,
                Ok(Some(RawFrame::Header(v))) => Ok(Frame::Header(v)),
                Ok(Some(RawFrame::Body { len, body })) => match &mut c.crypto {
                    Crypto::Sealed { opener, .. } => match opener.open(len, &body) {
                        Ok(Some(plain)) => Message::decode(&plain).map(Frame::Message),
                        Ok(None) => continue,
                        Err(e) => {
                            self.stats.decrypt_failures += 1;
                            let remote = c.remote;
                            warn!(%remote, error = %e, "closing connection: sealed frame did not decrypt");
                            self.close(id, "decryption failed", now);
                            return;
                        }
                    },
                    _ => Message::decode(&body).map(Frame::Message),
                },
                Err(e) => Err(e),
            };
            if let Err(e) = frame.and_then(|f| self.on_frame(id, f, now)) {
                self.protocol_error(id, &e, now);
                return;
            }
        }
    }

    /// Runs every timer due at `now`.
    pub fn tick(&mut self, now: Instant) {
        let mut expired = Vec::new();
        let mut beat = Vec::new();
        for (id, c) in &mut self.conns {
            match c.state {
                ConnState::Established(_) => {
                    if now >= c.last_recv + self.cfg.read_timeout {
                        expired.push((
                            *id,
                            format!("nothing received for {:?}", self.cfg.read_timeout),
                        ));
                    } else if now >= c.next_heartbeat {
                        c.next_heartbeat = now + self.cfg.heartbeat_interval;
                        beat.push(*id);
                    }
                }
                ConnState::Dialing | ConnState::Handshaking { .. } => {
                    if now >= c.opened + self.cfg.handshake_timeout {
                        expired.push((*id, "handshake timed out".to_string()));
                    }
                }
            }
        }
        let heartbeat = Message::Heartbeat.encode();
        for id in beat {
            self.send(id, heartbeat.clone());
        }
        let mut rekeys = Vec::new();
        for (id, c) in &mut self.conns {
            if let Crypto::Sealed { sealer, .. } = &mut c.crypto {
                if let Some(data) = sealer.rekey_if_due(now) {
                    rekeys.push((*id, data));
                }
            }
        }
        for (id, data) in rekeys {
            self.send_sealed(id, data);
        }
        for (id, reason) in expired {
            self.close(id, &reason, now);
        }
        if self.refresh_at.is_some_and(|at| now >= at) {
            self.refresh(now);
        }
        if now >= self.next_digest {
            let jitter = self
                .cfg
                .gossip_interval
                .mul_f64(self.rng.gen_range(0.9..1.1));
            self.next_digest = now + jitter;
            self.send_digest(now);
        }
        self.collect_unreachable(now);
        self.dial_due(now);
    }

    /// When `tick` must next be called.
    pub fn poll_timeout(&self) -> Instant {
        let mut t = self.next_digest;
        if let Some(at) = self.refresh_at {
            t = t.min(at);
        }
        for c in self.conns.values() {
            let at = match c.state {
                ConnState::Established(_) => {
                    c.next_heartbeat.min(c.last_recv + self.cfg.read_timeout)
                }
                _ => c.opened + self.cfg.handshake_timeout,
            };
            t = t.min(at);
        }
        // With no room for another connection, a due target waits for a
        // connection to end (which runs the maker) rather than spinning here.
        if self.conns.len() < self.cfg.conn_limit {
            if let Some(at) = self.maker.next_deadline() {
                t = t.min(at);
            }
        }
        for since in self.unreachable.values() {
            t = t.min(*since + self.cfg.peer_gc_grace);
        }
        t
    }

    fn new_conn(
        &mut self,
        remote: SocketAddr,
        outbound: bool,
        target: Option<SocketAddr>,
        state: ConnState,
        now: Instant,
    ) -> ConnId {
        let id = ConnId(self.next_id);
        self.next_id += 1;
        let local_conn_id = self.rng.gen();
        let crypto = if self.cfg.psks.is_empty() {
            Crypto::Plain
        } else {
            Crypto::Pending
        };
        self.conns.insert(
            id,
            Conn {
                remote,
                outbound,
                target,
                state,
                decoder: Decoder::for_version(self.cfg.version()),
                opened: now,
                last_recv: now,
                next_heartbeat: now + self.cfg.heartbeat_interval,
                local_conn_id,
                bytes_in: 0,
                bytes_out: 0,
                crypto,
            },
        );
        id
    }

    /// The version header and, without a password, the Hello right away
    /// (with one, the Hello waits for the handshake).
    fn send_intro(&mut self, id: ConnId) {
        self.send(id, wire::header_for(self.cfg.version()).to_vec());
        if self.cfg.psks.is_empty() {
            self.send_hello(id);
        }
    }

    fn send_hello(&mut self, id: ConnId) {
        let Some(c) = self.conns.get(&id) else { return };
        let hello = Message::Hello(Hello {
            name: self.cfg.name,
            uid: self.uid,
            conn_id: c.local_conn_id,
            listen_port: self.cfg.listen_port,
            nickname: self.cfg.nickname.clone(),
        });
        self.send(id, hello.encode());
    }

    /// Queues one encoded frame (or the version header), sealing it when
    /// the connection has its keys.
    fn send(&mut self, id: ConnId, data: Vec<u8>) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let data = match &mut c.crypto {
            Crypto::Sealed { sealer, .. } => sealer.seal(&data[4..]),
            _ => data,
        };
        self.send_sealed(id, data);
    }

    /// Queues bytes exactly as given.
    fn send_sealed(&mut self, id: ConnId, data: Vec<u8>) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.bytes_out += data.len() as u64;
            self.stats.bytes_out += data.len() as u64;
            self.actions.push_back(Action::Send { conn: id, data });
        }
    }

    fn send_gossip(&mut self, id: ConnId, g: &TopologyGossip) {
        self.stats.gossip_out += 1;
        let data = Message::Gossip {
            channel: CHANNEL_TOPOLOGY,
            body: g.encode(),
        }
        .encode();
        self.send(id, data);
    }

    fn on_frame(&mut self, id: ConnId, frame: Frame, now: Instant) -> Result<(), WireError> {
        let c = self
            .conns
            .get_mut(&id)
            .expect("caller checked the connection exists");
        let sealing = matches!(c.crypto, Crypto::Pending | Crypto::Offered(_));
        match (&mut c.state, frame) {
            (ConnState::Handshaking { version: v @ None }, Frame::Header(version)) => {
                *v = Some(version);
                if c.outbound && matches!(c.crypto, Crypto::Pending) {
                    self.offer(id);
                }
                Ok(())
            }
            (
                ConnState::Handshaking { version: Some(_) },
                Frame::Message(Message::Handshake(m)),
            ) if sealing => {
                self.on_handshake(id, &m, now);
                Ok(())
            }
            (ConnState::Handshaking { version: Some(_) }, Frame::Message(Message::Hello(h)))
                if !sealing =>
            {
                self.on_hello(id, h, now);
                Ok(())
            }
            (_, Frame::Message(Message::Close { reason }))
                if sealing && reason.starts_with(AUTH_FAILED) =>
            {
                self.auth_failed(id, "the peer refused our password", now);
                Ok(())
            }
            (_, Frame::Message(Message::Close { reason })) => {
                let reason = format!("closed by peer: {reason}");
                self.close(id, &reason, now);
                Ok(())
            }
            (ConnState::Established(_), Frame::Message(Message::Heartbeat)) => Ok(()),
            (ConnState::Established(r), Frame::Message(Message::Gossip { channel, body })) => {
                let from = r.name;
                if channel != CHANNEL_TOPOLOGY {
                    self.actions.push_back(Action::Deliver {
                        conn: id,
                        peer: from,
                        channel,
                        body,
                    });
                    return Ok(());
                }
                self.stats.gossip_in += 1;
                let g = TopologyGossip::decode(&body)?;
                self.on_topology_gossip(id, g, now);
                Ok(())
            }
            _ => Err(WireError::Invalid("message out of sequence")),
        }
    }

    fn on_hello(&mut self, id: ConnId, h: Hello, now: Instant) {
        let c = &self.conns[&id];
        let (remote, outbound, target) = (c.remote, c.outbound, c.target);
        if h.name == self.cfg.name {
            if h.uid == self.uid {
                info!(%remote, "connected to ourselves; not dialling this address again");
            } else {
                warn!(%remote, name = %h.name, "peer name collision: another peer uses our name; not dialling it again");
            }
            if let Some(t) = target {
                self.maker.never_retry(t);
            }
            self.close(id, "peer name collision or connection to self", now);
            return;
        }
        let conn_uid = c.local_conn_id ^ h.conn_id;
        let listen_addr = SocketAddr::new(remote.ip(), h.listen_port);
        // Duplicate connections: both ends see the same two connection UIDs
        // and keep the lower, so they agree on the survivor. A connection of an
        // older incarnation of the same peer always gives way.
        let existing = self.conns.iter().find_map(|(other, oc)| match &oc.state {
            ConnState::Established(r) if r.name == h.name && *other != id => {
                Some((*other, r.uid, r.conn_uid))
            }
            _ => None,
        });
        if let Some((other, other_uid, other_conn_uid)) = existing {
            if other_uid == h.uid && other_conn_uid <= conn_uid {
                debug!(peer = %h.name, %remote, "duplicate connection; keeping the other one");
                self.close(id, "duplicate connection", now);
                return;
            }
            let why = if other_uid == h.uid {
                "duplicate connection"
            } else {
                "peer restarted"
            };
            self.close(other, why, now);
        }
        let established = self
            .conns
            .values()
            .filter(|c| matches!(c.state, ConnState::Established(_)))
            .count();
        if established >= self.cfg.conn_limit {
            warn!(peer = %h.name, %remote, limit = self.cfg.conn_limit, "refusing connection: connection limit reached");
            self.close(id, "connection limit reached", now);
            return;
        }
        if let Some(rec) = self.topo.get(&h.name) {
            if rec.uid != h.uid {
                info!(peer = %h.name, nickname = %h.nickname, "peer restarted");
            }
        }
        info!(peer = %h.name, nickname = %h.nickname, %remote, outbound, "connection established");
        let c = self.conns.get_mut(&id).expect("connection checked above");
        let keys = match &c.crypto {
            Crypto::Sealed { sleeve, .. } => Some(sleeve.clone()),
            _ => None,
        };
        c.state = ConnState::Established(Remote {
            name: h.name,
            uid: h.uid,
            nickname: h.nickname,
            conn_uid,
            listen_addr,
            confirmed: !self.cfg.overlay,
            keys,
        });
        c.next_heartbeat = now + self.cfg.heartbeat_interval;
        self.topo.update_local(|rec| {
            rec.conns.insert(
                h.name,
                ConnRecord {
                    addr: listen_addr,
                    outbound,
                    established: !self.cfg.overlay,
                },
            );
        });
        // A new neighbour gets everything we know; everybody else hears about
        // our new connection.
        let all = self.gossipable(self.topo.records().map(|r| r.name));
        self.send_gossip(id, &TopologyGossip::Update(all));
        self.actions.push_back(Action::NeighbourUp {
            conn: id,
            peer: h.name,
        });
        self.topology_changed(now);
        self.push_records(&[self.cfg.name], Some(id));
    }

    fn on_topology_gossip(&mut self, from: ConnId, g: TopologyGossip, now: Instant) {
        match g {
            TopologyGossip::Update(records) => {
                let out = self.topo.merge(records);
                if out.local_bumped {
                    info!(
                        version = self.topo.local().version,
                        "heard of an older incarnation of ourselves; version raised"
                    );
                }
                if out.improved.is_empty() && !out.local_bumped {
                    return;
                }
                self.topology_changed(now);
                let mut names = out.improved;
                if out.local_bumped {
                    names.push(self.cfg.name);
                }
                self.push_records(&names, Some(from));
            }
            TopologyGossip::Digest(entries) => {
                let (newer_here, newer_there) = self.topo.diff_digest(&entries);
                let records = self.gossipable(newer_here.into_iter());
                if !records.is_empty() {
                    self.send_gossip(from, &TopologyGossip::Update(records));
                }
                if newer_there {
                    let digest = self.digest();
                    self.send_gossip(from, &TopologyGossip::Digest(digest));
                }
            }
        }
    }

    /// Records we may advertise: known and not unreachable.
    fn gossipable(&self, names: impl Iterator<Item = PeerName>) -> Vec<PeerRecord> {
        names
            .filter(|n| !self.unreachable.contains_key(n))
            .filter_map(|n| self.topo.get(&n).cloned())
            .collect()
    }

    fn digest(&self) -> Vec<super::topology::DigestEntry> {
        self.topo
            .digest()
            .into_iter()
            .filter(|e| !self.unreachable.contains_key(&e.name))
            .collect()
    }

    fn established_ids(&self) -> Vec<ConnId> {
        self.conns
            .iter()
            .filter(|(_, c)| matches!(c.state, ConnState::Established(_)))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Pushes the current records of `names` to a random subset of neighbours.
    fn push_records(&mut self, names: &[PeerName], exclude: Option<ConnId>) {
        let records = self.gossipable(names.iter().copied());
        if records.is_empty() {
            return;
        }
        let mut ids: Vec<ConnId> = self
            .established_ids()
            .into_iter()
            .filter(|id| Some(*id) != exclude)
            .collect();
        let fanout = fanout(self.topo.len());
        ids.shuffle(&mut self.rng);
        ids.truncate(fanout);
        let g = TopologyGossip::Update(records);
        for id in ids {
            self.send_gossip(id, &g);
        }
    }

    fn send_digest(&mut self, _now: Instant) {
        let ids = self.established_ids();
        if let Some(&id) = ids.choose(&mut self.rng) {
            let digest = self.digest();
            self.send_gossip(id, &TopologyGossip::Digest(digest));
        }
    }

    /// After any change of the topology: schedules [`Self::refresh`].
    fn topology_changed(&mut self, now: Instant) {
        self.refresh_at.get_or_insert(now + REFRESH_DELAY);
    }

    /// Recomputes reachability, routes and targets from the topology.
    fn refresh(&mut self, now: Instant) {
        self.refresh_at = None;
        let reachable = self.topo.reachable();
        for rec in self.topo.records() {
            if reachable.contains(&rec.name) {
                self.unreachable.remove(&rec.name);
            } else {
                self.unreachable.entry(rec.name).or_insert(now);
            }
        }
        self.collect_unreachable(now);
        self.routes = Routes::compute(&self.topo, Graph::Symmetric);
        self.update_overlay_view();
        self.run_maker(now);
    }

    fn collect_unreachable(&mut self, now: Instant) {
        let grace = self.cfg.peer_gc_grace;
        let gone: Vec<PeerName> = self
            .unreachable
            .iter()
            .filter(|(_, since)| now >= **since + grace)
            .map(|(n, _)| *n)
            .collect();
        for name in gone {
            self.unreachable.remove(&name);
            if let Some(rec) = self.topo.remove(&name) {
                info!(peer = %name, nickname = %rec.nickname, "removed unreachable peer");
            }
        }
    }

    fn update_overlay_view(&mut self) {
        // Broadcast trees cost a search per peer: only a data plane needs them.
        if !self.cfg.overlay {
            return;
        }
        let mut broadcast = BTreeMap::new();
        for rec in self.topo.records() {
            if !self.unreachable.contains_key(&rec.name) {
                broadcast.insert(
                    rec.name,
                    broadcast_children(&self.topo, Graph::Symmetric, rec.name),
                );
            }
        }
        let neighbours = self
            .conns
            .values()
            .filter_map(|c| match &c.state {
                ConnState::Established(r) => Some((
                    r.name,
                    Neighbour {
                        addr: r.listen_addr,
                        conn_uid: r.conn_uid,
                        keys: r.keys.clone(),
                    },
                )),
                _ => None,
            })
            .collect();
        let view = OverlayView {
            local: self.cfg.name,
            version: self.overlay_view.version + 1,
            unicast: self.routes.unicast.clone(),
            broadcast,
            neighbours,
        };
        let same = view.unicast == self.overlay_view.unicast
            && view.broadcast == self.overlay_view.broadcast
            && view.neighbours == self.overlay_view.neighbours;
        if !same {
            self.overlay_view = Arc::new(view);
        }
    }

    /// Addresses covered by live connections, for the connection maker.
    fn covered(&self) -> BTreeSet<SocketAddr> {
        let mut out = BTreeSet::new();
        for c in self.conns.values() {
            if let ConnState::Established(r) = &c.state {
                out.insert(r.listen_addr);
                if let Some(t) = c.target {
                    out.insert(t);
                }
            }
        }
        out
    }

    /// Addresses announced for peers we have no connection to.
    fn discovered(&self) -> BTreeSet<SocketAddr> {
        let local = self.cfg.name;
        let connected: BTreeSet<PeerName> = self
            .conns
            .values()
            .filter_map(|c| match &c.state {
                ConnState::Established(r) => Some(r.name),
                _ => None,
            })
            .collect();
        let mut out = BTreeSet::new();
        for rec in self.topo.records() {
            if rec.name == local || self.unreachable.contains_key(&rec.name) {
                continue;
            }
            for (peer, c) in &rec.conns {
                if *peer != local
                    && !connected.contains(peer)
                    && !self.unreachable.contains_key(peer)
                {
                    out.insert(c.addr);
                }
            }
        }
        out
    }

    /// Brings the targets up to date with connections and topology, then dials.
    fn run_maker(&mut self, now: Instant) {
        let covered = self.covered();
        self.maker.sync_connected(&covered, now, &mut self.rng);
        let discovered = self.discovered();
        self.maker.set_discovered(&discovered, now);
        self.dial_due(now);
    }

    /// Dials the targets that are due, within the connection limit.
    fn dial_due(&mut self, now: Instant) {
        let budget = self.cfg.conn_limit.saturating_sub(self.conns.len());
        for addr in self.maker.due(now, budget) {
            let id = self.new_conn(addr, true, Some(addr), ConnState::Dialing, now);
            debug!(%addr, "dialling");
            self.actions.push_back(Action::Dial { conn: id, addr });
        }
    }

    fn protocol_error(&mut self, id: ConnId, e: &WireError, now: Instant) {
        if let Some(why) = self.encryption_mismatch(e) {
            return self.auth_failed(id, why, now);
        }
        self.stats.protocol_errors += 1;
        let remote = self.conns.get(&id).map(|c| c.remote);
        warn!(remote = ?remote, error = %e, "closing connection: protocol error");
        self.close(id, &format!("protocol error: {e}"), now);
    }

    /// Tells the peer why (best effort), then closes.
    fn close(&mut self, id: ConnId, reason: &str, now: Instant) {
        let Some(c) = self.conns.get(&id) else { return };
        if !matches!(c.state, ConnState::Dialing) {
            self.send(
                id,
                Message::Close {
                    reason: reason.to_string(),
                }
                .encode(),
            );
        }
        self.actions.push_back(Action::Close { conn: id });
        self.remove_conn(id, reason, now);
    }

    fn remove_conn(&mut self, id: ConnId, reason: &str, now: Instant) {
        let Some(c) = self.conns.remove(&id) else {
            return;
        };
        if let ConnState::Established(r) = &c.state {
            info!(peer = %r.name, nickname = %r.nickname, remote = %c.remote, %reason, "connection closed");
            self.topo.update_local(|rec| {
                rec.conns.remove(&r.name);
            });
            self.topology_changed(now);
            self.push_records(&[self.cfg.name], None);
        } else {
            debug!(remote = %c.remote, %reason, "connection attempt ended");
        }
        let was_established = matches!(c.state, ConnState::Established(_));
        if let Some(target) = c.target {
            if !self.covered().contains(&target)
                && self
                    .maker
                    .targets()
                    .get(&target)
                    .is_some_and(|t| t.state == TargetState::Attempting)
            {
                self.maker
                    .attempt_failed(target, reason.to_string(), now, &mut self.rng);
            }
        }
        if was_established {
            self.run_maker(now);
        } else {
            self.dial_due(now);
        }
    }

    /// A snapshot for the local API.
    pub fn report(&self, now: Instant) -> weave_api::Report {
        use weave_api::{
            ConnectionReport, ConnectionState, PeerConnection, PeerReport, RouteReport,
        };
        let local = self.topo.local();
        let nick = |n: &PeerName| {
            self.topo
                .get(n)
                .map(|r| r.nickname.clone())
                .unwrap_or_default()
        };
        let peers = self
            .topo
            .records()
            .map(|r| PeerReport {
                name: r.name.to_string(),
                nickname: r.nickname.clone(),
                uid: r.uid.get(),
                version: r.version,
                reachable: !self.unreachable.contains_key(&r.name),
                connections: r
                    .conns
                    .iter()
                    .map(|(n, c)| PeerConnection {
                        name: n.to_string(),
                        nickname: nick(n),
                        address: c.addr.to_string(),
                        outbound: c.outbound,
                        established: c.established,
                    })
                    .collect(),
            })
            .collect();
        let mut connections: Vec<ConnectionReport> = self
            .conns
            .values()
            .map(|c| {
                let (peer, nickname, state, info) = match &c.state {
                    ConnState::Established(r) if r.confirmed => (
                        Some(r.name.to_string()),
                        Some(r.nickname.clone()),
                        ConnectionState::Established,
                        String::new(),
                    ),
                    ConnState::Established(r) => (
                        Some(r.name.to_string()),
                        Some(r.nickname.clone()),
                        ConnectionState::Pending,
                        "waiting for the UDP path".to_string(),
                    ),
                    ConnState::Dialing => {
                        (None, None, ConnectionState::Pending, "connecting".into())
                    }
                    ConnState::Handshaking { .. } => {
                        (None, None, ConnectionState::Pending, "handshaking".into())
                    }
                };
                ConnectionReport {
                    peer,
                    nickname,
                    address: c.remote.to_string(),
                    state,
                    outbound: c.outbound,
                    mode: self.cfg.overlay.then(|| "sleeve".to_string()),
                    encrypted: matches!(c.crypto, Crypto::Sealed { .. }),
                    info,
                    bytes_in: c.bytes_in,
                    bytes_out: c.bytes_out,
                    mtu: None,
                    frames_in: 0,
                    frames_out: 0,
                    data_bytes_in: 0,
                    data_bytes_out: 0,
                }
            })
            .collect();
        for (addr, t) in self.maker.targets() {
            if let TargetState::Waiting(at) = t.state {
                let Some(err) = &t.last_error else { continue };
                connections.push(ConnectionReport {
                    peer: None,
                    nickname: None,
                    address: addr.to_string(),
                    state: ConnectionState::Failed,
                    outbound: true,
                    mode: None,
                    encrypted: false,
                    info: format!(
                        "{err}, retry in {:.1}s",
                        at.saturating_duration_since(now).as_secs_f64()
                    ),
                    bytes_in: 0,
                    bytes_out: 0,
                    mtu: None,
                    frames_in: 0,
                    frames_out: 0,
                    data_bytes_in: 0,
                    data_bytes_out: 0,
                });
            }
        }
        weave_api::Report {
            ipam: None,
            version: env!("CARGO_PKG_VERSION").to_string(),
            protocol: format!("{v}..{v}", v = self.cfg.version()),
            peer: weave_api::LocalPeer {
                name: local.name.to_string(),
                nickname: local.nickname.clone(),
                uid: local.uid.get(),
                version: local.version,
            },
            peers,
            connections,
            targets: self
                .maker
                .direct()
                .iter()
                .map(ToString::to_string)
                .collect(),
            routes: self
                .routes
                .unicast
                .iter()
                .map(|(d, v)| RouteReport {
                    destination: d.to_string(),
                    via: v.to_string(),
                })
                .collect(),
            stats: weave_api::MeshStats {
                bytes_in: self.stats.bytes_in,
                bytes_out: self.stats.bytes_out,
                gossip_in: self.stats.gossip_in,
                gossip_out: self.stats.gossip_out,
                protocol_errors: self.stats.protocol_errors,
                auth_failures: self.stats.auth_failures,
                decrypt_failures: self.stats.decrypt_failures,
            },
            sleeve: None,
        }
    }
}

/// How many neighbours a change is pushed to: 2·⌈log2 N⌉, at least 3.
fn fanout(peers: usize) -> usize {
    let log2_ceil = (usize::BITS - (peers.max(2) - 1).leading_zeros()) as usize;
    (2 * log2_ceil).max(3)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn mesh(i: u8, now: Instant) -> Mesh {
        let name = PeerName::from_bytes([2, 0, 0, 0, 0, i]);
        Mesh::new(
            MeshConfig::new(name, format!("h{i}"), 6783),
            PeerUid::new(u64::from(i)),
            u64::from(i),
            now,
        )
    }

    /// Runs two meshes against each other over one in-memory connection;
    /// returns every byte that crossed it.
    pub(super) fn pump(
        a: &mut Mesh,
        a_id: ConnId,
        b: &mut Mesh,
        b_id: ConnId,
        now: Instant,
    ) -> Vec<u8> {
        let mut wire = Vec::new();
        for _ in 0..20 {
            let mut moved = false;
            while let Some(act) = a.poll_action() {
                if let Action::Send { conn, data } = act {
                    assert_eq!(conn, a_id);
                    wire.extend_from_slice(&data);
                    b.received(b_id, &data, now);
                    moved = true;
                }
            }
            while let Some(act) = b.poll_action() {
                if let Action::Send { conn, data } = act {
                    assert_eq!(conn, b_id);
                    wire.extend_from_slice(&data);
                    a.received(a_id, &data, now);
                    moved = true;
                }
            }
            if !moved {
                break;
            }
        }
        wire
    }

    #[test]
    fn two_peers_handshake_and_exchange_topology() {
        let now = Instant::now();
        let mut a = mesh(1, now);
        let mut b = mesh(2, now);
        let b_addr = SocketAddr::from(([10, 0, 0, 2], 6783));
        a.connect(&[b_addr], false, now);
        let Some(Action::Dial { conn: a_id, addr }) = a.poll_action() else {
            panic!("expected a dial");
        };
        assert_eq!(addr, b_addr);
        let b_id = b
            .accepted(SocketAddr::from(([10, 0, 0, 1], 40000)), now)
            .unwrap();
        a.dialled(a_id, now);
        pump(&mut a, a_id, &mut b, b_id, now);
        // routes are recomputed once a burst of changes has settled
        let later = now + REFRESH_DELAY;
        assert!(a.poll_timeout() <= later);
        a.tick(later);
        b.tick(later);
        assert_eq!(a.topology().len(), 2);
        assert_eq!(b.topology().len(), 2);
        assert_eq!(a.routes().next_hop(&b.name()), Some(b.name()));
        assert_eq!(b.routes().next_hop(&a.name()), Some(a.name()));
        // b records a's listening address, not the ephemeral source port
        let rec = &b.topology().local().conns[&a.name()];
        assert_eq!(rec.addr, SocketAddr::from(([10, 0, 0, 1], 6783)));
        let report = a.report(now);
        assert_eq!(report.connections.len(), 1);
        assert_eq!(
            report.connections[0].state,
            weave_api::ConnectionState::Established
        );
    }

    #[test]
    fn garbage_closes_the_connection_and_counts() {
        let now = Instant::now();
        let mut a = mesh(1, now);
        let id = a
            .accepted(SocketAddr::from(([10, 0, 0, 9], 1)), now)
            .unwrap();
        a.received(id, b"GET / HTTP/1.1\r\n\r\n", now);
        assert_eq!(a.stats().protocol_errors, 1);
        let actions: Vec<_> = std::iter::from_fn(|| a.poll_action()).collect();
        assert!(actions.contains(&Action::Close { conn: id }), "{actions:?}");
        assert!(a.report(now).connections.is_empty());
    }

    #[test]
    fn silent_connections_time_out() {
        let now = Instant::now();
        let mut a = mesh(1, now);
        let id = a
            .accepted(SocketAddr::from(([10, 0, 0, 9], 1)), now)
            .unwrap();
        let later = now + a.config().handshake_timeout;
        assert!(a.poll_timeout() <= later);
        a.tick(later);
        let actions: Vec<_> = std::iter::from_fn(|| a.poll_action()).collect();
        assert!(actions.contains(&Action::Close { conn: id }));
    }

    #[test]
    fn self_connection_is_never_retried() {
        let now = Instant::now();
        let mut a = mesh(1, now);
        let self_addr = SocketAddr::from(([10, 0, 0, 1], 6783));
        a.connect(&[self_addr], false, now);
        let Some(Action::Dial { conn: out_id, .. }) = a.poll_action() else {
            panic!()
        };
        let in_id = a
            .accepted(SocketAddr::from(([10, 0, 0, 1], 5555)), now)
            .unwrap();
        a.dialled(out_id, now);
        let mut sends = Vec::new();
        while let Some(act) = a.poll_action() {
            if let Action::Send { conn, data } = act {
                sends.push((conn, data));
            }
        }
        for (conn, data) in sends {
            let to = if conn == out_id { in_id } else { out_id };
            a.received(to, &data, now);
        }
        assert!(a.maker().targets().is_empty());
        a.tick(now + Duration::from_secs(120));
        assert!(!std::iter::from_fn(|| a.poll_action()).any(|x| matches!(x, Action::Dial { .. })));
    }

    #[test]
    fn connection_limit_refuses_extra_peers() {
        let now = Instant::now();
        let name = PeerName::from_bytes([2, 0, 0, 0, 0, 1]);
        let mut cfg = MeshConfig::new(name, "h1".into(), 6783);
        cfg.conn_limit = 2;
        let mut a = Mesh::new(cfg, PeerUid::new(1), 1, now);
        let from = |i: u8| SocketAddr::from(([10, 0, 0, i], 40000));
        assert!(a.accepted(from(2), now).is_some());
        assert!(a.accepted(from(3), now).is_some());
        assert_eq!(a.accepted(from(4), now), None);
        // and no dials either while full
        a.connect(&[SocketAddr::from(([10, 0, 0, 5], 6783))], false, now);
        assert!(!std::iter::from_fn(|| a.poll_action()).any(|x| matches!(x, Action::Dial { .. })));
    }

    #[test]
    fn fanout_is_logarithmic() {
        assert_eq!(fanout(1), 3);
        assert_eq!(fanout(5), 6);
        assert_eq!(fanout(2), 3);
        assert_eq!(fanout(100), 14);
        assert_eq!(fanout(1000), 20);
    }
}
