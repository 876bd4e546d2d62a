// SPDX-License-Identifier: Apache-2.0
//! Gossip and merge: the one state peers exchange ([`GossipState`]: the
//! ring, the removed peers, each peer's record with its requests for space
//! and answers, and the consensus before the ring exists), its encoding, and
//! how a peer merges what it receives.
//!
//! Invariant: every part merges as a join (commutative, associative,
//! idempotent), so gossip can be repeated, reordered and relayed freely; a
//! peer's record changes only through that peer, and the ring only as its
//! owners allow (`ring.rs`).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{info, warn};

use super::paxos::{Acceptor, NodeId};
use super::ring::Ring;
use super::{Ipam, IpamError};
use crate::mesh::PeerName;

/// Version of the gossip encoding.
const GOSSIP_FORMAT: u8 = 1;

/// A request for space, published in the requester's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ask {
    /// Raised for each new request.
    pub id: u64,
    /// Who is asked.
    pub donor: PeerName,
    /// First address wanted.
    pub start: u32,
    /// One past the last address wanted.
    pub end: u64,
    /// Exactly `start` is wanted (a claim), not any part of the range.
    pub single: bool,
}

/// A donor's answer to the latest request of one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The request answered.
    pub ask: u64,
    /// Whether space was granted (the ring shows what).
    pub granted: bool,
}

/// The gossiped record of one peer; only that peer writes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Raised on every change.
    pub version: u64,
    /// Nickname.
    pub nickname: String,
    /// Free addresses in its share (a hint for choosing donors).
    pub free: u64,
    /// Observers own nothing until given space.
    pub observer: bool,
    /// Its current request for space.
    pub ask: Option<Ask>,
    /// Its answers, by requester.
    pub replies: BTreeMap<PeerName, Reply>,
}

/// Everything peers exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipState {
    /// Encoding version (currently 1).
    pub format: u8,
    /// The ring.
    pub ring: Ring,
    /// Removed peer → the peer that removed it (the lowest such name wins).
    pub removed: BTreeMap<PeerName, PeerName>,
    /// Peer records.
    pub peers: BTreeMap<PeerName, PeerInfo>,
    /// Consensus state, only while the ring is empty.
    pub paxos: BTreeMap<NodeId, Acceptor>,
}

impl GossipState {
    /// Decodes and validates gossip bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, IpamError> {
        let g: GossipState =
            postcard::from_bytes(bytes).map_err(|e| IpamError::Gossip(e.to_string()))?;
        if g.format != GOSSIP_FORMAT {
            return Err(IpamError::Gossip(format!(
                "format {} not supported (this peer speaks {GOSSIP_FORMAT})",
                g.format
            )));
        }
        g.ring
            .validate()
            .map_err(|e| IpamError::Gossip(e.to_string()))?;
        Ok(g)
    }

    /// Encodes for the wire.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("encoding to a Vec cannot fail")
    }
}

/// What the caller should do after gossip arrived.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GossipOutcome {
    /// Our state changed: spread it.
    pub changed: bool,
    /// The sender lacks something we have: send it our state.
    pub reply: bool,
}

/// Whether record `a` replaces record `b`: a higher version, or (after an
/// incarnation forgot its versions) the same version with content that
/// sorts higher, so that every peer keeps the same one.
pub(super) fn supersedes(a: &PeerInfo, b: &PeerInfo) -> bool {
    match a.version.cmp(&b.version) {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Equal => {
            a != b && postcard::to_stdvec(a).ok() > postcard::to_stdvec(b).ok()
        }
    }
}

impl Ipam {
    /// The peers reachable now (the local one need not be included).
    pub fn set_reachable(&mut self, reachable: BTreeSet<PeerName>, now: Instant) {
        if reachable != self.reachable {
            self.reachable = reachable;
            self.step(now);
        }
    }

    /// Our state, for gossip.
    pub fn gossip_state(&self) -> GossipState {
        GossipState {
            format: GOSSIP_FORMAT,
            ring: self.ring.clone(),
            removed: self.removed.clone(),
            peers: self.peers.clone(),
            paxos: match (&self.paxos, self.ring.is_empty()) {
                (Some(p), true) => p.nodes().clone(),
                _ => BTreeMap::new(),
            },
        }
    }

    /// Merges gossip from `from`.
    pub fn on_gossip(
        &mut self,
        from: PeerName,
        bytes: &[u8],
        now: Instant,
    ) -> Result<GossipOutcome, IpamError> {
        let g = GossipState::decode(bytes)?;
        if g.ring.universe != self.ring.universe {
            self.log_once(
                format!("range {from}"),
                &format!(
                    "peer {from} uses allocation range {}, we use {}; ignoring its IPAM state (set the same --ipalloc-range everywhere)",
                    g.ring.universe, self.ring.universe
                ),
            );
            return Ok(GossipOutcome::default());
        }
        let mut changed = false;
        for (p, by) in &g.removed {
            match self.removed.get_mut(p) {
                Some(ours) if *ours <= *by => {}
                Some(ours) => {
                    *ours = *by;
                    changed = true;
                }
                None => {
                    warn!(peer = %p, by = %by, "peer removed from IP allocation (heard by gossip)");
                    self.removed.insert(*p, *by);
                    changed = true;
                }
            }
        }
        changed |= self.merge_ring(&g.ring);
        for (name, theirs) in &g.peers {
            if *name == self.cfg.name {
                let mine = self
                    .peers
                    .get_mut(name)
                    .expect("own record is always present");
                if supersedes(theirs, mine) {
                    // An older incarnation of ours was ahead: jump past it.
                    mine.version = theirs.version + 1;
                    changed = true;
                }
                continue;
            }
            match self.peers.get(name) {
                Some(ours) if !supersedes(theirs, ours) => {}
                _ => {
                    self.peers.insert(*name, theirs.clone());
                    changed = true;
                }
            }
        }
        if self.ring.is_empty() {
            if let Some(p) = &mut self.paxos {
                changed |= p.merge(&g.paxos);
            }
        }
        if changed {
            self.gossip_dirty = true;
            self.persist_dirty = true;
        }
        self.step(now);
        let reply = self.gossip_state() != g;
        Ok(GossipOutcome { changed, reply })
    }

    pub(super) fn merge_ring(&mut self, theirs: &Ring) -> bool {
        if theirs.is_empty() {
            return false;
        }
        if !self.ring.is_empty() && theirs.seeds != self.ring.seeds {
            if theirs.seeds > self.ring.seeds {
                // They will adopt ours.
                return false;
            }
            let fmt = |s: &[PeerName]| {
                s.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            };
            self.log_once(
                format!("seeds {}", fmt(&theirs.seeds)),
                &format!(
                    "two IP allocation rings met: ours was split among [{}], theirs among [{}]; adopting theirs (the lower); addresses handed out here before may be duplicated elsewhere",
                    fmt(&self.ring.seeds),
                    fmt(&theirs.seeds)
                ),
            );
            self.ring = theirs.clone();
            self.persist_dirty = true;
            return true;
        }
        let was_empty = self.ring.is_empty();
        let changed = self.ring.merge(theirs);
        if was_empty && changed {
            info!(
                seeds = self.ring.seeds.len(),
                "learned the IP allocation ring"
            );
        }
        changed
    }

    /// Whether our state changed since the last call (then gossip it).
    pub fn take_gossip_dirty(&mut self) -> bool {
        std::mem::take(&mut self.gossip_dirty)
    }
}
