// SPDX-License-Identifier: Apache-2.0
//! The ring: who owns which part of the allocation range.
//!
//! The range is cut at *tokens*; a token's entry owns the addresses from the
//! token up to the next token (the last one runs to the end of the range).
//! Each entry carries a version, and an entry only ever changes by being
//! replaced with a higher version, so two rings merge token by token with
//! "higher rank wins" — a join that is commutative, associative and
//! idempotent. Tokens are never deleted.
//!
//! Who may write an entry: its owner (when it grants part of its space to
//! another peer), and, for entries of a peer removed with `rmpeer`, exactly
//! one *heir*, chosen by [`Ring::heir`] from the ring itself so that every
//! peer computing it agrees. This module never decides whether a peer is
//! alive; that is the caller's business.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::subnet::Subnet;
use crate::mesh::PeerName;

/// Ownership of the range starting at a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The owner.
    pub owner: PeerName,
    /// Raised by one on every change of this token.
    pub version: u64,
    /// Written by an heir taking over from a removed peer; at equal versions
    /// a change by the previous owner itself wins over a takeover.
    pub takeover: bool,
}

impl Entry {
    /// Total order deciding merges.
    fn rank(&self) -> (u64, bool, PeerName) {
        (self.version, !self.takeover, self.owner)
    }
}

/// Problems of a ring received from elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// A token outside the range.
    #[error("token {0} lies outside the range {1}")]
    TokenOutside(std::net::Ipv4Addr, Subnet),
    /// A non-empty ring must have a token at the start of the range.
    #[error("no token at the start of the range {0}")]
    NoStartToken(Subnet),
    /// Seeds must be sorted, distinct, and present exactly when tokens are.
    #[error("malformed seed list")]
    Seeds,
}

/// The ring of one allocation range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ring {
    /// The allocation range.
    pub universe: Subnet,
    /// The peers the range was first split among (sorted). Rings with the same
    /// range but different seeds were created independently.
    pub seeds: Vec<PeerName>,
    /// Token → entry.
    pub tokens: BTreeMap<u32, Entry>,
}

impl Ring {
    /// A ring nobody owns anything of yet.
    pub fn new(universe: Subnet) -> Self {
        Self {
            universe,
            seeds: Vec::new(),
            tokens: BTreeMap::new(),
        }
    }

    /// Whether nobody owns anything yet.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Checks the invariants of a ring received from elsewhere.
    pub fn validate(&self) -> Result<(), RingError> {
        for t in self.tokens.keys() {
            if !self.universe.contains(u64::from(*t)) {
                return Err(RingError::TokenOutside((*t).into(), self.universe));
            }
        }
        if !self.tokens.is_empty() && !self.tokens.contains_key(&start_token(&self.universe)) {
            return Err(RingError::NoStartToken(self.universe));
        }
        let sorted = self.seeds.windows(2).all(|w| w[0] < w[1]);
        if !sorted || self.seeds.is_empty() != self.tokens.is_empty() {
            return Err(RingError::Seeds);
        }
        Ok(())
    }

    /// Splits an empty ring among `peers`: the range is halved recursively,
    /// the lower half going to the first half of the sorted list, so every
    /// peer gets one aligned block.
    pub fn claim_for_peers(&mut self, peers: &[PeerName]) {
        debug_assert!(self.is_empty());
        let mut peers = peers.to_vec();
        peers.sort();
        peers.dedup();
        if peers.is_empty() {
            return;
        }
        split(
            &mut self.tokens,
            self.universe.start(),
            self.universe.end(),
            &peers,
        );
        self.seeds = peers;
    }

    /// The entry owning `addr`, if the ring is not empty and `addr` is inside.
    pub fn owner(&self, addr: u64) -> Option<PeerName> {
        if !self.universe.contains(addr) {
            return None;
        }
        let a = u32::try_from(addr).ok()?;
        self.tokens.range(..=a).next_back().map(|(_, e)| e.owner)
    }

    /// Every range with its entry: `(start, end, entry)`.
    pub fn ranges(&self) -> Vec<(u64, u64, Entry)> {
        let mut out = Vec::with_capacity(self.tokens.len());
        let mut it = self.tokens.iter().peekable();
        while let Some((t, e)) = it.next() {
            let end = it
                .peek()
                .map_or(self.universe.end(), |(n, _)| u64::from(**n));
            out.push((u64::from(*t), end, *e));
        }
        out
    }

    /// The ranges `peer` owns, adjacent ones joined.
    pub fn ranges_of(&self, peer: PeerName) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (s, e, entry) in self.ranges() {
            if entry.owner != peer {
                continue;
            }
            match out.last_mut() {
                Some(last) if last.1 == s => last.1 = e,
                _ => out.push((s, e)),
            }
        }
        out
    }

    /// Addresses owned by each peer.
    pub fn shares(&self) -> BTreeMap<PeerName, u64> {
        let mut out = BTreeMap::new();
        for (s, e, entry) in self.ranges() {
            *out.entry(entry.owner).or_insert(0) += e - s;
        }
        out
    }

    /// Gives `[start, end)`, which `from` owns entirely, to `to`.
    pub fn grant(&mut self, start: u64, end: u64, from: PeerName, to: PeerName) {
        debug_assert!(start < end && self.universe.start() <= start && end <= self.universe.end());
        let (Ok(s), e) = (u32::try_from(start), u32::try_from(end)) else {
            return;
        };
        if let Ok(e) = e {
            if end < self.universe.end() && !self.tokens.contains_key(&e) {
                self.tokens.insert(
                    e,
                    Entry {
                        owner: from,
                        version: 1,
                        takeover: false,
                    },
                );
            }
        }
        let inside: Vec<u32> = self
            .tokens
            .range(s..)
            .map(|(t, _)| *t)
            .take_while(|t| u64::from(*t) < end)
            .collect();
        for t in inside {
            let entry = self.tokens.get_mut(&t).expect("token listed above");
            entry.owner = to;
            entry.version += 1;
            entry.takeover = false;
        }
        self.tokens.entry(s).or_insert(Entry {
            owner: to,
            version: 1,
            takeover: false,
        });
    }

    /// Merges `other` (same range and seeds) into this ring; returns whether
    /// anything changed here.
    pub fn merge(&mut self, other: &Ring) -> bool {
        debug_assert_eq!(self.universe, other.universe);
        if self.tokens.is_empty() {
            if other.tokens.is_empty() {
                return false;
            }
            self.seeds.clone_from(&other.seeds);
            self.tokens.clone_from(&other.tokens);
            return true;
        }
        let mut changed = false;
        for (t, theirs) in &other.tokens {
            match self.tokens.get_mut(t) {
                Some(ours) if ours.rank() >= theirs.rank() => {}
                Some(ours) => {
                    *ours = *theirs;
                    changed = true;
                }
                None => {
                    self.tokens.insert(*t, *theirs);
                    changed = true;
                }
            }
        }
        changed
    }

    /// Who inherits the entry at `token` when its owner is in `removed`
    /// (removed peer → the peer that asked for the removal): the owner of the
    /// nearest token before it (wrapping round) whose owner is not removed,
    /// else the peer that asked for the removal.
    pub fn heir(&self, token: u32, removed: &BTreeMap<PeerName, PeerName>) -> Option<PeerName> {
        let owner = self.tokens.get(&token)?.owner;
        let by = *removed.get(&owner)?;
        let before = self.tokens.range(..token).rev();
        let after = self.tokens.range(token..).rev();
        for (_, e) in before.chain(after) {
            if !removed.contains_key(&e.owner) {
                return Some(e.owner);
            }
        }
        (!removed.contains_key(&by)).then_some(by)
    }

    /// Takes over, as `me`, every entry of a removed peer whose heir is `me`;
    /// returns the number of addresses taken.
    pub fn take_over(&mut self, removed: &BTreeMap<PeerName, PeerName>, me: PeerName) -> u64 {
        let mut taken = 0;
        let ranges = self.ranges();
        for (s, e, entry) in ranges {
            if !removed.contains_key(&entry.owner) {
                continue;
            }
            let Ok(t) = u32::try_from(s) else { continue };
            if self.heir(t, removed) == Some(me) {
                let slot = self.tokens.get_mut(&t).expect("token from ranges()");
                slot.owner = me;
                slot.version += 1;
                slot.takeover = true;
                taken += e - s;
            }
        }
        taken
    }
}

/// The token at the start of the range.
fn start_token(universe: &Subnet) -> u32 {
    u32::try_from(universe.start()).expect("IPv4 subnets start below 2^32")
}

fn split(tokens: &mut BTreeMap<u32, Entry>, start: u64, end: u64, peers: &[PeerName]) {
    if peers.len() == 1 || end - start < 2 {
        let t = u32::try_from(start).expect("tokens lie inside an IPv4 range");
        tokens.insert(
            t,
            Entry {
                owner: peers[0],
                version: 1,
                takeover: false,
            },
        );
        return;
    }
    let mid = start + (end - start) / 2;
    let (low, high) = peers.split_at(peers.len() / 2);
    split(tokens, start, mid, low);
    split(tokens, mid, end, high);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: u64) -> PeerName {
        PeerName::from_u64(n)
    }

    fn ring(peers: &[u64]) -> Ring {
        let mut r = Ring::new("10.0.0.0/24".parse().unwrap());
        let names: Vec<PeerName> = peers.iter().map(|n| p(*n)).collect();
        r.claim_for_peers(&names);
        r
    }

    #[test]
    fn split_gives_aligned_blocks_to_everyone() {
        let r = ring(&[3, 1, 2]);
        r.validate().unwrap();
        let shares = r.shares();
        assert_eq!(shares[&p(1)], 128);
        assert_eq!(shares[&p(2)], 64);
        assert_eq!(shares[&p(3)], 64);
        assert_eq!(r.seeds, vec![p(1), p(2), p(3)]);
        assert_eq!(r.owner(r.universe.start()), Some(p(1)));
        assert_eq!(r.owner(r.universe.end() - 1), Some(p(3)));
        assert_eq!(r.owner(r.universe.end()), None);
    }

    #[test]
    fn grant_moves_exactly_the_range() {
        let mut r = ring(&[1, 2]);
        let s = r.universe.start();
        r.grant(s + 64, s + 96, p(1), p(9));
        r.validate().unwrap();
        assert_eq!(r.ranges_of(p(9)), vec![(s + 64, s + 96)]);
        assert_eq!(r.ranges_of(p(1)), vec![(s, s + 64), (s + 96, s + 128)]);
        assert_eq!(r.shares()[&p(2)], 128);
        // Granting back joins the ranges again.
        r.grant(s + 64, s + 96, p(9), p(1));
        assert_eq!(r.ranges_of(p(1)), vec![(s, s + 128)]);
    }

    #[test]
    fn merge_is_a_join() {
        let base = ring(&[1, 2]);
        let s = base.universe.start();
        let mut a = base.clone();
        a.grant(s + 10, s + 20, p(1), p(3));
        let mut b = base.clone();
        b.grant(s + 200, s + 210, p(2), p(4));
        let mut ab = a.clone();
        ab.merge(&b);
        let mut ba = b.clone();
        ba.merge(&a);
        assert_eq!(ab, ba);
        let again = ab.clone();
        assert!(!ab.merge(&again));
        assert!(!ab.merge(&a));
        let mut empty = Ring::new(base.universe);
        assert!(empty.merge(&ab));
        assert_eq!(empty, ab);
    }

    #[test]
    fn heirs_are_the_same_whoever_asks() {
        let r = ring(&[1, 2, 3, 4]);
        let s = r.universe.start();
        let mut removed = BTreeMap::new();
        removed.insert(p(3), p(4));
        let t3 = u32::try_from(s + 128).unwrap();
        assert_eq!(r.heir(t3, &removed), Some(p(2)));
        let mut other = removed.clone();
        other.insert(p(3), p(1));
        assert_eq!(r.heir(t3, &other), Some(p(2)));
        // Removing the first peer too: its range wraps to the last one.
        removed.insert(p(1), p(4));
        assert_eq!(r.heir(u32::try_from(s).unwrap(), &removed), Some(p(4)));
        let mut a = r.clone();
        assert_eq!(a.take_over(&removed, p(2)), 64);
        assert_eq!(a.take_over(&removed, p(4)), 64);
        a.validate().unwrap();
        assert!(!a.shares().contains_key(&p(1)) && !a.shares().contains_key(&p(3)));
    }

    #[test]
    fn takeover_loses_a_tie_with_the_owner_itself() {
        let mut r = ring(&[1, 2]);
        let t = u32::try_from(r.universe.start()).unwrap();
        let mut heir = r.clone();
        let mut removed = BTreeMap::new();
        removed.insert(p(1), p(2));
        heir.take_over(&removed, p(2));
        r.grant(r.universe.start(), r.universe.start() + 128, p(1), p(7));
        let mut merged = heir.clone();
        merged.merge(&r);
        assert_eq!(merged.tokens[&t].owner, p(7));
    }

    #[test]
    fn invalid_rings_are_refused() {
        let mut r = ring(&[1]);
        r.tokens
            .insert(5, r.tokens.values().next().copied().unwrap());
        assert!(matches!(r.validate(), Err(RingError::TokenOutside(..))));
        let mut r = ring(&[1, 2]);
        let first = *r.tokens.keys().next().unwrap();
        r.tokens.remove(&first);
        assert!(matches!(r.validate(), Err(RingError::NoStartToken(_))));
        let mut r = ring(&[1, 2]);
        r.seeds.reverse();
        assert_eq!(r.validate(), Err(RingError::Seeds));
    }
}
