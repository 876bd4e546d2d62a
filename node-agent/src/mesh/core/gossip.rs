// SPDX-License-Identifier: Apache-2.0
//! Gossip of the mesh: the topology (changes pushed to a random fan-out
//! of neighbours, digests for anti-entropy, reachability and routes
//! recomputed in batches) and the application channels that the gossip port
//! (`mesh::gossip`) carries for other subsystems.
//!
//! Invariant: merging gossip is commutative and idempotent, so repeated,
//! reordered or relayed gossip converges to the same topology.

use std::collections::BTreeSet;

use rand::seq::SliceRandom;
use tokio::time::Instant;
use tracing::info;

use super::{fanout, ConnId, ConnState, Mesh, CHANNEL_TOPOLOGY, REFRESH_DELAY};
use crate::mesh::peer::PeerName;
use crate::mesh::routes::{Graph, Routes};
use crate::mesh::topology::{DigestEntry, PeerRecord, TopologyGossip};
use crate::mesh::wire::Message;

impl Mesh {
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

    pub(super) fn send_gossip(&mut self, id: ConnId, g: &TopologyGossip) {
        self.stats.gossip_out += 1;
        let data = Message::Gossip {
            channel: CHANNEL_TOPOLOGY,
            body: g.encode(),
        }
        .encode();
        self.send(id, data);
    }

    pub(super) fn on_topology_gossip(&mut self, from: ConnId, g: TopologyGossip, now: Instant) {
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
    pub(super) fn gossipable(&self, names: impl Iterator<Item = PeerName>) -> Vec<PeerRecord> {
        names
            .filter(|n| !self.unreachable.contains_key(n))
            .filter_map(|n| self.topo.get(&n).cloned())
            .collect()
    }

    pub(super) fn digest(&self) -> Vec<DigestEntry> {
        self.topo
            .digest()
            .into_iter()
            .filter(|e| !self.unreachable.contains_key(&e.name))
            .collect()
    }

    /// Pushes the current records of `names` to a random subset of neighbours.
    pub(super) fn push_records(&mut self, names: &[PeerName], exclude: Option<ConnId>) {
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

    pub(super) fn send_digest(&mut self, _now: Instant) {
        let ids = self.established_ids();
        if let Some(&id) = ids.choose(&mut self.rng) {
            let digest = self.digest();
            self.send_gossip(id, &TopologyGossip::Digest(digest));
        }
    }

    /// After any change of the topology: schedules [`Self::refresh`].
    pub(super) fn topology_changed(&mut self, now: Instant) {
        self.refresh_at.get_or_insert(now + REFRESH_DELAY);
    }

    /// Recomputes reachability, routes and targets from the topology.
    pub(super) fn refresh(&mut self, now: Instant) {
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

    pub(super) fn collect_unreachable(&mut self, now: Instant) {
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
}
