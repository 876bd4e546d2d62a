// SPDX-License-Identifier: Apache-2.0
//! Donation: a peer out of space asks one other peer (a reachable owner
//! with free space, not one that refused recently) for part of its share,
//! by publishing an [`Ask`] in its gossiped record; the donor answers with a
//! [`Reply`] and, when it grants, a ring that shows the new owner. Also the
//! free-space hints that guide the choice of donor.
//!
//! Invariant: only the owner of a range gives it away, and only one request
//! per peer is open at a time.

use std::collections::BTreeMap;

use tokio::time::Instant;
use tracing::{debug, info};

use super::gossip::{Ask, Reply};
use super::subnet::ip;
use super::{Ipam, ASK_TIMEOUT, DENIED_BACKOFF};
use crate::mesh::PeerName;

impl Ipam {
    /// Free addresses in our share.
    pub(super) fn free(&self) -> u64 {
        self.ring
            .ranges_of(self.cfg.name)
            .iter()
            .map(|(s, e)| (e - s) - self.space.used_in(*s, *e))
            .sum()
    }

    /// Answers requests for space addressed to us.
    pub(super) fn serve_asks(&mut self) {
        let me = self.cfg.name;
        if self.removed.contains_key(&me) {
            return;
        }
        let asks: Vec<(PeerName, Ask)> = self
            .peers
            .iter()
            .filter(|(p, _)| **p != me && !self.removed.contains_key(p))
            .filter_map(|(p, i)| i.ask.clone().map(|a| (*p, a)))
            .filter(|(_, a)| a.donor == me)
            .collect();
        for (requester, ask) in asks {
            let answered = self.peers[&me]
                .replies
                .get(&requester)
                .is_some_and(|r| r.ask >= ask.id);
            if answered {
                continue;
            }
            let grant = if ask.single {
                let a = u64::from(ask.start);
                (self.ring.owner(a) == Some(me) && self.space.holder(ask.start).is_none())
                    .then_some((a, a + 1))
            } else {
                self.largest_free_run(u64::from(ask.start), ask.end)
                    .map(|(s, e)| (s + (e - s) / 2, e))
            };
            if let Some((s, e)) = grant {
                self.ring.grant(s, e, me, requester);
                info!(peer = %requester, from = %ip(s), to = %ip(e - 1), addresses = e - s, "donated IP space");
                self.persist_dirty = true;
            } else {
                debug!(peer = %requester, "no IP space to donate");
            }
            let mine = self
                .peers
                .get_mut(&me)
                .expect("own record is always present");
            mine.replies.insert(
                requester,
                Reply {
                    ask: ask.id,
                    granted: grant.is_some(),
                },
            );
            mine.version += 1;
            self.gossip_dirty = true;
        }
    }

    /// The longest run of free addresses of ours inside `[start, end)`.
    pub(super) fn largest_free_run(&self, start: u64, end: u64) -> Option<(u64, u64)> {
        let mut best: Option<(u64, u64)> = None;
        for (s, e) in self.ring.ranges_of(self.cfg.name) {
            let (s, e) = (s.max(start), e.min(end));
            let mut run_start = s;
            let mut consider = |a: u64, b: u64| {
                if b > a && best.is_none_or(|(x, y)| b - a > y - x) {
                    best = Some((a, b));
                }
            };
            if s >= e {
                continue;
            }
            for (used, _) in self
                .space
                .iter()
                .filter(|(_, a)| (s..e).contains(&u64::from(a.addr)))
                .map(|(i, a)| (u64::from(a.addr), i))
                .collect::<BTreeMap<_, _>>()
            {
                consider(run_start, used);
                run_start = used + 1;
            }
            consider(run_start, e);
        }
        best
    }

    /// Follows up our own request for space.
    pub(super) fn check_ask(&mut self, now: Instant) {
        let me = self.cfg.name;
        let Some(ask) = self.peers[&me].ask.clone() else {
            return;
        };
        let reply = self
            .peers
            .get(&ask.donor)
            .and_then(|i| i.replies.get(&me))
            .filter(|r| r.ask == ask.id)
            .cloned();
        let expired = self.ask_sent.is_none_or(|t| now >= t + ASK_TIMEOUT);
        let donor_gone =
            !self.reachable.contains(&ask.donor) || self.removed.contains_key(&ask.donor);
        if reply.is_none() && !expired && !donor_gone {
            return;
        }
        if let Some(r) = &reply {
            if !r.granted {
                self.denied.insert(ask.donor, now);
                if ask.single {
                    self.claim_denied.insert(ask.start, ask.donor);
                }
            }
        }
        let mine = self
            .peers
            .get_mut(&me)
            .expect("own record is always present");
        mine.ask = None;
        mine.version += 1;
        self.ask_sent = None;
        self.gossip_dirty = true;
    }

    pub(super) fn next_ask_id(&mut self) -> u64 {
        // Ids must grow across restarts too: a donor remembers the last one
        // it answered. The record version grows across restarts.
        let base = self.peers[&self.cfg.name].version;
        self.next_ask = self.next_ask.max(base) + 1;
        self.next_ask
    }

    /// Peers (not us, not removed) owning part of `[start, end)`.
    pub(super) fn owners_in(&self, start: u64, end: u64) -> BTreeMap<PeerName, u64> {
        let mut out = BTreeMap::new();
        for (s, e, entry) in self.ring.ranges() {
            let (s, e) = (s.max(start), e.min(end));
            if s < e && entry.owner != self.cfg.name && !self.removed.contains_key(&entry.owner) {
                *out.entry(entry.owner).or_insert(0) += e - s;
            }
        }
        out
    }

    /// The reachable owner in `[start, end)` with the most free space by its
    /// own account, skipping those that refused lately.
    pub(super) fn choose_donor(&mut self, start: u64, end: u64, now: Instant) -> Option<PeerName> {
        self.denied.retain(|_, t| now < *t + DENIED_BACKOFF);
        let owners = self.owners_in(start, end);
        let best = owners
            .iter()
            .filter(|(p, _)| self.reachable.contains(*p) && !self.denied.contains_key(*p))
            .map(|(p, size)| {
                let free = self.peers.get(p).map_or(0, |i| i.free);
                (free > 0, free.min(*size), *size, *p)
            })
            .max()?;
        Some(best.3)
    }

    /// Publishes our free count when it moved noticeably (it is only a
    /// hint; publishing every change would gossip on every allocation).
    pub(super) fn refresh_free(&mut self) {
        let free = self.free();
        let mine = self
            .peers
            .get_mut(&self.cfg.name)
            .expect("own record is always present");
        let old = mine.free;
        let moved = (free == 0) != (old == 0) || free.abs_diff(old) * 8 > old.max(1);
        if moved && free != old {
            mine.free = free;
            mine.version += 1;
            self.gossip_dirty = true;
        }
    }
}
