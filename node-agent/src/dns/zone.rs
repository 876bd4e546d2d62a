// SPDX-License-Identifier: Apache-2.0
//! The gossiped table of weaveDNS records, sans-IO: local registrations and
//! removals, merging gossip, purging tombstones, dropping removed peers.
//!
//! Data model: every record belongs to the **origin** peer that registered
//! it, and only the origin changes it. A record is identified by (name,
//! address, holder) within its origin and carries a version taken from the
//! origin's own counter, and a tombstone flag. Each origin also publishes a
//! **floor**: every record of it at or below the floor is gone.
//!
//! Merge, per origin: the higher floor wins; per record the higher version
//! wins (a tombstone wins a tie); records at or below the floor are dropped.
//! Each step is a maximum, so the merge is commutative, associative and
//! idempotent, and nothing in it depends on clocks agreeing between peers.
//!
//! Tombstones are purged by their origin only, and safely: it raises its
//! floor past them and gives its live records at or below the new floor
//! fresh versions in the same delta. A stale copy of a deleted record that
//! turns up later (from a peer that was partitioned away for a day) is at
//! or below the floor and is dropped everywhere, so nothing comes back to
//! life, however long the partition. The same move repairs an origin that
//! lost its state: hearing of its own records at versions it never issued,
//! it jumps its counter and floor past them.
//!
//! Bounds: [`MAX_PER_ORIGIN`] records (live and deleted) per origin,
//! [`MAX_ORIGINS`] origins and [`MAX_TOTAL`] records in all; gossip beyond
//! them is refused and counted. Own tombstones are purged after
//! [`TOMBSTONE_AGE`], or early once there are more than [`MAX_TOMBSTONES`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::gossip::{DnsGossip, OriginGossip, WireEntry, CHUNK_ENTRIES};
pub use super::gossip::{Holder, MAX_HOLDER, MAX_ORIGINS, MAX_PER_ORIGIN};
use super::name::DnsName;
use crate::mesh::PeerName;

/// Records kept in all.
pub const MAX_TOTAL: usize = 262_144;
/// Own tombstones are purged once this old.
pub const TOMBSTONE_AGE: Duration = Duration::from_secs(60);
/// Own tombstones beyond this are purged early (the older half).
pub const MAX_TOMBSTONES: usize = 4096;
/// Identity of a record within its origin.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// The name.
    pub name: DnsName,
    /// The address.
    pub addr: Ipv4Addr,
    /// Who registered it.
    pub holder: Holder,
}

/// Version and state of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// The origin's counter when it last changed.
    pub version: u64,
    /// Deleted.
    pub tombstone: bool,
}

impl Slot {
    /// Whether `self` replaces `other` in a merge.
    fn beats(self, other: Slot) -> bool {
        self.version > other.version
            || (self.version == other.version && self.tombstone && !other.tombstone)
    }
}

/// A record going live (`true`) or away (`false`), for the lookup table.
pub type Transition = (Key, bool);

/// Why a registration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZoneError {
    /// The local peer holds as many records as it may.
    #[error("this peer holds {MAX_PER_ORIGIN} DNS records already; remove some first")]
    Full,
}

/// Counters of refused gossip.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ZoneStats {
    /// Records refused because a bound was reached.
    pub refused: u64,
    /// Times this peer found its own records at versions it had lost and
    /// moved past them.
    pub self_repairs: u64,
}

/// Records of one origin.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Origin {
    floor: u64,
    entries: BTreeMap<Key, Slot>,
}

/// What the origin state persisted across restarts holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnState {
    /// The counter.
    pub clock: u64,
    /// The floor.
    pub floor: u64,
    /// Own records, live and deleted.
    pub entries: Vec<WireEntry>,
}

/// What merging gossip did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergeOutcome {
    /// Our state changed (the change is in the next delta).
    pub changed: bool,
    /// What the sender lacks, to send back on its connection.
    pub reply: Option<DnsGossip>,
}

/// The record table of one peer.
#[derive(Debug)]
pub struct Zone {
    me: PeerName,
    clock: u64,
    origins: BTreeMap<PeerName, Origin>,
    /// Own tombstones: version → when deleted.
    tombs: BTreeMap<u64, Instant>,
    removed: BTreeSet<PeerName>,
    total: usize,
    /// Changed since the last delta: per origin, the keys and whether the floor moved.
    delta: BTreeMap<PeerName, (bool, BTreeSet<Key>)>,
    transitions: Vec<Transition>,
    persist_dirty: bool,
    stats: ZoneStats,
}

impl Zone {
    /// An empty zone for peer `me`, or one restored from its own persisted records.
    pub fn new(me: PeerName, own: Option<OwnState>, now: Instant) -> Self {
        let mut z = Self {
            me,
            clock: 0,
            origins: BTreeMap::new(),
            tombs: BTreeMap::new(),
            removed: BTreeSet::new(),
            total: 0,
            delta: BTreeMap::new(),
            transitions: Vec::new(),
            persist_dirty: false,
            stats: ZoneStats::default(),
        };
        z.origins.insert(me, Origin::default());
        if let Some(s) = own {
            z.clock = s.clock;
            let o = z.origins.get_mut(&me).expect("own origin inserted above");
            o.floor = s.floor;
            for e in s.entries.into_iter().take(MAX_PER_ORIGIN) {
                if e.version <= s.floor {
                    continue;
                }
                z.clock = z.clock.max(e.version);
                let (key, slot) = split(e);
                if slot.tombstone {
                    z.tombs.insert(slot.version, now);
                }
                z.set(me, key, slot);
            }
        }
        z
    }

    /// The local peer.
    pub fn me(&self) -> PeerName {
        self.me
    }

    /// Registers `name → addr` held by `holder` on this peer; false if it
    /// was registered already (a repeat changes nothing).
    pub fn add(&mut self, key: Key) -> Result<bool, ZoneError> {
        let own = &self.origins[&self.me];
        match own.entries.get(&key) {
            Some(s) if !s.tombstone => return Ok(false),
            Some(_) => {}
            None if own.entries.len() >= MAX_PER_ORIGIN || self.total >= MAX_TOTAL => {
                return Err(ZoneError::Full)
            }
            None => {}
        }
        if let Some(old) = own.entries.get(&key) {
            self.tombs.remove(&old.version);
        }
        self.clock += 1;
        let slot = Slot {
            version: self.clock,
            tombstone: false,
        };
        self.set(self.me, key, slot);
        Ok(true)
    }

    /// Deletes this peer's live records that `matches` selects; returns them.
    pub fn remove(&mut self, matches: impl Fn(&Key) -> bool, now: Instant) -> Vec<Key> {
        let gone: Vec<Key> = self.origins[&self.me]
            .entries
            .iter()
            .filter(|(k, s)| !s.tombstone && matches(k))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &gone {
            self.clock += 1;
            self.tombs.insert(self.clock, now);
            let slot = Slot {
                version: self.clock,
                tombstone: true,
            };
            self.set(self.me, k.clone(), slot);
        }
        gone
    }

    /// Purges own tombstones older than [`TOMBSTONE_AGE`] (or the older half
    /// beyond [`MAX_TOMBSTONES`]) by raising the floor past them.
    pub fn purge(&mut self, now: Instant) {
        let mut floor = self
            .tombs
            .iter()
            .take_while(|(_, at)| now.saturating_duration_since(**at) >= TOMBSTONE_AGE)
            .map(|(v, _)| *v)
            .last()
            .unwrap_or(0);
        if self.tombs.len() > MAX_TOMBSTONES {
            let cut = self.tombs.len() - MAX_TOMBSTONES / 2;
            if let Some(v) = self.tombs.keys().nth(cut - 1) {
                floor = floor.max(*v);
            }
        }
        if floor > self.origins[&self.me].floor {
            self.rebase(floor);
        }
    }

    /// When [`Self::purge`] has something to do next.
    pub fn next_purge(&self) -> Option<Instant> {
        self.tombs.values().next().map(|at| *at + TOMBSTONE_AGE)
    }

    /// Raises the own floor to `floor`: tombstones at or below it go, live
    /// records at or below it get fresh versions (in the same delta).
    fn rebase(&mut self, floor: u64) {
        let me = self.me;
        let stale: Vec<(Key, Slot)> = self.origins[&me]
            .entries
            .iter()
            .filter(|(_, s)| s.version <= floor)
            .map(|(k, s)| (k.clone(), *s))
            .collect();
        for (k, s) in stale {
            if s.tombstone {
                self.drop_key(me, &k);
            } else {
                self.clock += 1;
                let slot = Slot {
                    version: self.clock,
                    tombstone: false,
                };
                self.set(me, k, slot);
            }
        }
        self.tombs.retain(|v, _| *v > floor);
        self.origins.get_mut(&me).expect("own origin").floor = floor;
        self.delta.entry(me).or_default().0 = true;
        self.persist_dirty = true;
    }

    /// Forgets peers removed for good (rmpeer, reclaim): their records go
    /// now and their gossip is ignored from then on.
    pub fn set_removed(&mut self, removed: &BTreeSet<PeerName>) {
        for p in removed.difference(&self.removed.clone()) {
            if *p == self.me {
                continue;
            }
            self.removed.insert(*p);
            if let Some(o) = self.origins.remove(p) {
                self.total -= o.entries.len();
                for (k, s) in o.entries {
                    if !s.tombstone {
                        self.transitions.push((k, false));
                    }
                }
            }
            self.delta.remove(p);
        }
    }

    /// Merges gossip received from a neighbour.
    pub fn merge(&mut self, g: &DnsGossip) -> MergeOutcome {
        let mut changed = false;
        let mut reply = Vec::new();
        for o in &g.origins {
            if self.removed.contains(&o.origin) {
                continue;
            }
            if o.origin == self.me {
                changed |= self.check_own(o);
            } else {
                changed |= self.merge_origin(o);
            }
            if o.complete {
                if let Some(r) = self.lacking(o) {
                    reply.push(r);
                }
            }
        }
        if g.complete {
            let listed: BTreeSet<PeerName> = g.origins.iter().map(|o| o.origin).collect();
            for (p, o) in &self.origins {
                if !listed.contains(p) && !o.entries.is_empty() {
                    reply.push(origin_gossip(*p, o, o.entries.keys(), false));
                }
            }
        }
        MergeOutcome {
            changed,
            reply: (!reply.is_empty()).then(|| DnsGossip::new(false, reply)),
        }
    }

    /// Gossip about our own records: fine if it is behind us; if it shows
    /// versions we never issued (or lost), move past them.
    fn check_own(&mut self, o: &OriginGossip) -> bool {
        let own = &self.origins[&self.me];
        let top = o
            .entries
            .iter()
            .map(|e| e.version)
            .chain([o.floor])
            .max()
            .unwrap_or(0);
        let unknown = top > self.clock
            || o.entries.iter().any(|e| {
                let (k, s) = split(e.clone());
                e.version > own.floor && own.entries.get(&k).is_none_or(|ours| s.beats(*ours))
            });
        if !unknown {
            return false;
        }
        self.stats.self_repairs += 1;
        self.clock = self.clock.max(top);
        self.rebase(self.clock);
        true
    }

    fn merge_origin(&mut self, o: &OriginGossip) -> bool {
        if !self.origins.contains_key(&o.origin) {
            if self.origins.len() >= MAX_ORIGINS {
                self.stats.refused += o.entries.len() as u64;
                return false;
            }
            self.origins.insert(o.origin, Origin::default());
        }
        let mut changed = false;
        let floor = self.origins[&o.origin].floor.max(o.floor);
        for e in &o.entries {
            if e.version <= floor {
                continue;
            }
            let (k, s) = split(e.clone());
            let st = &self.origins[&o.origin];
            match st.entries.get(&k) {
                Some(ours) if !s.beats(*ours) => continue,
                Some(_) => {}
                None if st.entries.len() >= MAX_PER_ORIGIN || self.total >= MAX_TOTAL => {
                    self.stats.refused += 1;
                    continue;
                }
                None => {}
            }
            self.set(o.origin, k, s);
            changed = true;
        }
        if o.floor > self.origins[&o.origin].floor {
            let stale: Vec<Key> = self.origins[&o.origin]
                .entries
                .iter()
                .filter(|(_, s)| s.version <= o.floor)
                .map(|(k, _)| k.clone())
                .collect();
            for k in stale {
                self.drop_key(o.origin, &k);
            }
            self.origins
                .get_mut(&o.origin)
                .expect("inserted above")
                .floor = o.floor;
            self.delta.entry(o.origin).or_default().0 = true;
            changed = true;
        }
        changed
    }

    /// What the sender of a complete origin `o` lacks of it, if anything.
    fn lacking(&self, o: &OriginGossip) -> Option<OriginGossip> {
        let ours = self.origins.get(&o.origin)?;
        let theirs: HashMap<Key, Slot> = o.entries.iter().cloned().map(split).collect();
        let keys: Vec<&Key> = ours
            .entries
            .iter()
            .filter(|(k, s)| s.version > o.floor && theirs.get(*k).is_none_or(|t| s.beats(*t)))
            .map(|(k, _)| k)
            .collect();
        if keys.is_empty() && ours.floor <= o.floor {
            return None;
        }
        Some(origin_gossip(o.origin, ours, keys.into_iter(), false))
    }

    /// Sets a record, keeping counts, the live-set transitions and the delta.
    fn set(&mut self, origin: PeerName, key: Key, slot: Slot) {
        let st = self.origins.entry(origin).or_default();
        let was_live = match st.entries.insert(key.clone(), slot) {
            Some(old) => !old.tombstone,
            None => {
                self.total += 1;
                false
            }
        };
        if was_live == slot.tombstone {
            self.transitions.push((key.clone(), !slot.tombstone));
        }
        if origin == self.me {
            self.persist_dirty = true;
        }
        self.delta.entry(origin).or_default().1.insert(key);
    }

    fn drop_key(&mut self, origin: PeerName, key: &Key) {
        let Some(st) = self.origins.get_mut(&origin) else {
            return;
        };
        if let Some(old) = st.entries.remove(key) {
            self.total -= 1;
            if !old.tombstone {
                self.transitions.push((key.clone(), false));
            }
            if origin == self.me {
                self.persist_dirty = true;
            }
        }
    }

    /// What changed since the last call, as gossip for the neighbours.
    pub fn take_delta(&mut self) -> Option<DnsGossip> {
        let delta = std::mem::take(&mut self.delta);
        let origins: Vec<OriginGossip> = delta
            .into_iter()
            .filter_map(|(p, (floor_moved, keys))| {
                let o = self.origins.get(&p)?;
                let g = origin_gossip(p, o, keys.iter(), false);
                (floor_moved || !g.entries.is_empty()).then_some(g)
            })
            .collect();
        (!origins.is_empty()).then(|| DnsGossip::new(false, origins))
    }

    /// Live-set changes since the last call, for the lookup table.
    pub fn take_transitions(&mut self) -> Vec<Transition> {
        std::mem::take(&mut self.transitions)
    }

    /// Whether own records changed since the last call (then persist them).
    pub fn take_persist_dirty(&mut self) -> bool {
        std::mem::take(&mut self.persist_dirty)
    }

    /// Everything, as messages of at most [`CHUNK_ENTRIES`] records; an
    /// origin that fits in one message is marked complete, and a state that
    /// fits in one message is complete as a whole.
    pub fn full_state(&self) -> Vec<DnsGossip> {
        let mut out = Vec::new();
        let mut cur: Vec<OriginGossip> = Vec::new();
        let mut room = CHUNK_ENTRIES;
        for (p, o) in &self.origins {
            let entries: Vec<&Key> = o.entries.keys().collect();
            if entries.len() <= room {
                room -= entries.len();
                cur.push(origin_gossip(*p, o, entries.into_iter(), true));
                continue;
            }
            for piece in entries.chunks(CHUNK_ENTRIES) {
                if piece.len() > room {
                    out.push(DnsGossip::new(false, std::mem::take(&mut cur)));
                    room = CHUNK_ENTRIES;
                }
                room -= piece.len();
                cur.push(origin_gossip(*p, o, piece.iter().copied(), false));
            }
        }
        let single = out.is_empty();
        out.push(DnsGossip::new(single, cur));
        out
    }

    /// Own records and counters, to persist.
    pub fn own_state(&self) -> OwnState {
        let o = &self.origins[&self.me];
        OwnState {
            clock: self.clock,
            floor: o.floor,
            entries: origin_gossip(self.me, o, o.entries.keys(), true).entries,
        }
    }

    /// Live records: origin, key, version.
    pub fn live(&self) -> impl Iterator<Item = (PeerName, &Key, u64)> + '_ {
        self.origins.iter().flat_map(|(p, o)| {
            o.entries
                .iter()
                .filter(|(_, s)| !s.tombstone)
                .map(move |(k, s)| (*p, k, s.version))
        })
    }

    /// Live records of this peer.
    pub fn own_live(&self) -> usize {
        self.origins[&self.me]
            .entries
            .values()
            .filter(|s| !s.tombstone)
            .count()
    }

    /// Records held, live and deleted.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Own tombstones waiting to be purged.
    pub fn tombstones(&self) -> usize {
        self.tombs.len()
    }

    /// Counters.
    pub fn stats(&self) -> ZoneStats {
        self.stats
    }

    /// The own counter (the highest version issued).
    pub fn clock(&self) -> u64 {
        self.clock
    }
}

fn split(e: WireEntry) -> (Key, Slot) {
    (
        Key {
            name: e.name,
            addr: e.addr,
            holder: e.holder,
        },
        Slot {
            version: e.version,
            tombstone: e.tombstone,
        },
    )
}

/// The records `keys` of origin `p` (keys it no longer holds are skipped).
fn origin_gossip<'a>(
    p: PeerName,
    o: &Origin,
    keys: impl Iterator<Item = &'a Key>,
    complete: bool,
) -> OriginGossip {
    OriginGossip {
        origin: p,
        floor: o.floor,
        complete,
        entries: keys
            .filter_map(|k| {
                o.entries.get(k).map(|s| WireEntry {
                    name: k.name.clone(),
                    addr: k.addr,
                    holder: k.holder.clone(),
                    version: s.version,
                    tombstone: s.tombstone,
                })
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests;
