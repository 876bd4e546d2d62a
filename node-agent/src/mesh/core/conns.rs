// SPDX-License-Identifier: Apache-2.0
//! The connections of the mesh: dialling and accepting, the handshake up
//! to the Hello (duplicate connections resolved, the topology record
//! updated), reading frames in order, closing, and the connection maker's
//! targets. Each connection's bytes go through its decoder and, with a
//! password, its session (`secure.rs`) before any message is looked at.
//!
//! Invariant: a connection is either tracked here or closed; one closed is
//! forgotten at once, and the socket layer is told to close it.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use rand::Rng;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::secure::{Crypto, AUTH_FAILED};
use super::{Action, Conn, ConnId, ConnState, Mesh, Remote, CHANNEL_TOPOLOGY};
use crate::mesh::connmaker::TargetState;
use crate::mesh::peer::PeerName;
use crate::mesh::topology::{ConnRecord, TopologyGossip};
use crate::mesh::wire;
use crate::mesh::wire::{Decoder, Frame, Hello, Message, RawFrame, WireError};

impl Mesh {
    /// Adds direct targets (see
    /// [`ConnectionMaker::add_direct`](crate::mesh::connmaker::ConnectionMaker::add_direct))
    /// and dials.
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

    pub(super) fn new_conn(
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
    pub(super) fn send_intro(&mut self, id: ConnId) {
        self.send(id, wire::header_for(self.cfg.version()).to_vec());
        if self.cfg.psks.is_empty() {
            self.send_hello(id);
        }
    }

    pub(super) fn send_hello(&mut self, id: ConnId) {
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
    pub(super) fn send(&mut self, id: ConnId, data: Vec<u8>) {
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
    pub(super) fn send_sealed(&mut self, id: ConnId, data: Vec<u8>) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.bytes_out += data.len() as u64;
            self.stats.bytes_out += data.len() as u64;
            self.actions.push_back(Action::Send { conn: id, data });
        }
    }

    pub(super) fn on_frame(
        &mut self,
        id: ConnId,
        frame: Frame,
        now: Instant,
    ) -> Result<(), WireError> {
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

    pub(super) fn on_hello(&mut self, id: ConnId, h: Hello, now: Instant) {
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

    pub(super) fn established_ids(&self) -> Vec<ConnId> {
        self.conns
            .iter()
            .filter(|(_, c)| matches!(c.state, ConnState::Established(_)))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Addresses covered by live connections, for the connection maker.
    pub(super) fn covered(&self) -> BTreeSet<SocketAddr> {
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
    pub(super) fn discovered(&self) -> BTreeSet<SocketAddr> {
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
    pub(super) fn run_maker(&mut self, now: Instant) {
        let covered = self.covered();
        self.maker.sync_connected(&covered, now, &mut self.rng);
        let discovered = self.discovered();
        self.maker.set_discovered(&discovered, now);
        self.dial_due(now);
    }

    /// Dials the targets that are due, within the connection limit.
    pub(super) fn dial_due(&mut self, now: Instant) {
        let budget = self.cfg.conn_limit.saturating_sub(self.conns.len());
        for addr in self.maker.due(now, budget) {
            let id = self.new_conn(addr, true, Some(addr), ConnState::Dialing, now);
            debug!(%addr, "dialling");
            self.actions.push_back(Action::Dial { conn: id, addr });
        }
    }

    pub(super) fn protocol_error(&mut self, id: ConnId, e: &WireError, now: Instant) {
        if let Some(why) = self.encryption_mismatch(e) {
            return self.auth_failed(id, why, now);
        }
        self.stats.protocol_errors += 1;
        let remote = self.conns.get(&id).map(|c| c.remote);
        warn!(remote = ?remote, error = %e, "closing connection: protocol error");
        self.close(id, &format!("protocol error: {e}"), now);
    }

    /// Tells the peer why (best effort), then closes.
    pub(super) fn close(&mut self, id: ConnId, reason: &str, now: Instant) {
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

    pub(super) fn remove_conn(&mut self, id: ConnId, reason: &str, now: Instant) {
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
}
