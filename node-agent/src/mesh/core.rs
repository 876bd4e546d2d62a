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
//!
//! This file holds the state, the configuration, the actions and the timers;
//! the rest of `impl Mesh` is split by seam into child modules: `conns.rs`
//! (connections, handshake, connection maker), `gossip.rs` (topology and
//! application-channel gossip), `overlay.rs` (the view for the data plane),
//! `report.rs` and `secure.rs` (the Noise handshake).
//!
//! Invariants: only this struct changes mesh state, and only when called;
//! every decision is a function of its inputs, the time given and its seeded
//! random source, so a simulation replays exactly.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use super::connmaker::ConnectionMaker;
use super::overlay::OverlayView;
use super::peer::{PeerName, PeerUid};
use super::routes::Routes;
use super::topology::{PeerRecord, Topology};
use super::wire::{self, Decoder, Message};
use crate::crypto::{Secret, SleeveKeys};
use secure::Crypto;

mod conns;
mod gossip;
mod overlay;
mod report;
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

    /// Whether the mesh still tracks this connection.
    pub fn has_conn(&self, id: ConnId) -> bool {
        self.conns.contains_key(&id)
    }

    /// Next queued action.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
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
