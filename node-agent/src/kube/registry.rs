// SPDX-License-Identifier: Apache-2.0
//! The peer registry kept in the API: which weave peer runs (or ran) on which Node, and who is
//! reclaiming the space of a peer whose Node is gone.
//!
//! It lives as JSON in one ConfigMap (`kube-system/weave-net`, key `peers`), written only by
//! replacing the whole object with its resourceVersion, so two agents never both succeed in
//! a change made from the same reading: the loser re-reads and decides again. This module is
//! the pure part: the document, and each decision as a function of a reading.
//!
//! Invariants:
//! - a peer is listed at most once;
//! - a peer is removed from the list only by the agent that reclaimed its space (after its
//!   `rmpeer` succeeded), or by itself never: an agent leaves the list only by being reclaimed;
//! - a lock names the agent reclaiming one peer; it may be taken over only when its holder is
//!   itself no longer listed (it was reclaimed in turn), so a live reclaimer is never raced.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// One weave peer and the Node it runs on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Entry {
    /// Peer name (`aa:bb:cc:dd:ee:ff`).
    pub peer: String,
    /// Node name.
    pub node: String,
}

/// The registry document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    /// Every peer that has started and not been reclaimed, in registration order.
    #[serde(default)]
    pub peers: Vec<Entry>,
    /// Peer being reclaimed → the peer reclaiming it.
    #[serde(default)]
    pub reclaiming: BTreeMap<String, String>,
}

/// What an agent should do with one peer of the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing: the peer is alive (its Node exists and it is the Node's current peer).
    Keep,
    /// Reclaim it: take the lock (or hold it already), then `rmpeer`.
    Reclaim,
    /// Someone else reclaims it; wait.
    Busy(String),
}

impl Registry {
    /// Parses the ConfigMap value; an absent value is an empty registry.
    pub fn parse(text: Option<&str>) -> Result<Registry, serde_json::Error> {
        match text {
            None => Ok(Registry::default()),
            Some(t) if t.trim().is_empty() => Ok(Registry::default()),
            Some(t) => serde_json::from_str(t),
        }
    }

    /// The ConfigMap value.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("the registry serialises")
    }

    /// Whether `peer` is listed.
    pub fn contains(&self, peer: &str) -> bool {
        self.peers.iter().any(|e| e.peer == peer)
    }

    /// Lists `me` on `node` if absent; returns whether the document changed.
    pub fn register(&mut self, me: &str, node: &str) -> bool {
        if self.contains(me) {
            return false;
        }
        self.peers.push(Entry {
            peer: me.to_owned(),
            node: node.to_owned(),
        });
        true
    }

    /// What `me` should do about listed peer `peer`, given the Nodes that exist.
    ///
    /// A peer is dead when its Node is gone, or when another peer registered later for the
    /// same Node (the Node was re-created or re-imaged and runs a new agent: one agent per
    /// Node). `me` is never dead to itself.
    pub fn verdict(&self, peer: &str, me: &str, nodes: &BTreeSet<String>) -> Verdict {
        let Some(index) = self.peers.iter().position(|e| e.peer == peer) else {
            return Verdict::Keep;
        };
        if peer == me {
            return Verdict::Keep;
        }
        let entry = &self.peers[index];
        let superseded = self.peers[index + 1..].iter().any(|e| e.node == entry.node);
        if nodes.contains(&entry.node) && !superseded {
            return Verdict::Keep;
        }
        match self.reclaiming.get(peer) {
            Some(holder) if holder != me && self.contains(holder) => Verdict::Busy(holder.clone()),
            _ => Verdict::Reclaim,
        }
    }

    /// Every listed peer `me` should reclaim now (see [`Registry::verdict`]).
    pub fn to_reclaim(&self, me: &str, nodes: &BTreeSet<String>) -> Vec<String> {
        self.peers
            .iter()
            .filter(|e| self.verdict(&e.peer, me, nodes) == Verdict::Reclaim)
            .map(|e| e.peer.clone())
            .collect()
    }

    /// Takes the lock on `peer` for `me`; returns whether the document changed.
    pub fn lock(&mut self, peer: &str, me: &str) -> bool {
        self.reclaiming
            .insert(peer.to_owned(), me.to_owned())
            .as_deref()
            != Some(me)
    }

    /// Records that `peer` was reclaimed: it leaves the list with its lock, and locks it held
    /// are dropped (whoever needs them takes them afresh).
    pub fn finish(&mut self, peer: &str) {
        self.peers.retain(|e| e.peer != peer);
        self.reclaiming.remove(peer);
        self.reclaiming.retain(|_, holder| holder != peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    fn registry(entries: &[(&str, &str)]) -> Registry {
        let mut r = Registry::default();
        for (peer, node) in entries {
            r.register(peer, node);
        }
        r
    }

    #[test]
    fn live_peers_are_kept_and_gone_nodes_reclaimed() {
        let r = registry(&[("p1", "n1"), ("p2", "n2"), ("p3", "n3")]);
        let present = nodes(&["n1", "n2"]);
        assert_eq!(r.verdict("p2", "p1", &present), Verdict::Keep);
        assert_eq!(r.verdict("p3", "p1", &present), Verdict::Reclaim);
        assert_eq!(r.to_reclaim("p1", &present), ["p3"]);
        assert_eq!(
            r.to_reclaim("p3", &present),
            Vec::<String>::new(),
            "never reclaims itself"
        );
    }

    #[test]
    fn a_recreated_node_supersedes_its_old_peer() {
        let r = registry(&[("old", "n1"), ("p2", "n2"), ("new", "n1")]);
        let present = nodes(&["n1", "n2"]);
        assert_eq!(r.verdict("old", "new", &present), Verdict::Reclaim);
        assert_eq!(r.verdict("new", "p2", &present), Verdict::Keep);
    }

    #[test]
    fn a_live_holder_keeps_its_lock_and_a_dead_one_loses_it() {
        let mut r = registry(&[("p1", "n1"), ("p2", "n2"), ("p3", "n3")]);
        let present = nodes(&["n1", "n2"]);
        assert!(r.lock("p3", "p2"));
        assert!(
            !r.lock("p3", "p2"),
            "taking a held lock again changes nothing"
        );
        assert_eq!(r.verdict("p3", "p1", &present), Verdict::Busy("p2".into()));
        assert_eq!(r.verdict("p3", "p2", &present), Verdict::Reclaim);
        // p2 is reclaimed in turn (by p1): its lock on p3 goes with it.
        r.finish("p2");
        assert!(!r.reclaiming.values().any(|h| h == "p2"));
        assert_eq!(r.verdict("p3", "p1", &present), Verdict::Reclaim);
        // Even a stale lock (holder gone from the list) is taken over.
        r.reclaiming.insert("p3".into(), "ghost".into());
        assert_eq!(r.verdict("p3", "p1", &present), Verdict::Reclaim);
    }

    #[test]
    fn registration_is_idempotent_and_the_text_round_trips() {
        let mut r = Registry::default();
        assert!(r.register("p1", "n1"));
        assert!(!r.register("p1", "n1"));
        r.lock("p9", "p1");
        let again = Registry::parse(Some(&r.to_text())).expect("round trip");
        assert_eq!(again, r);
        assert_eq!(Registry::parse(None).expect("absent"), Registry::default());
        assert!(Registry::parse(Some("{not json")).is_err());
    }

    /// Agents acting on stale readings: every change is made on the freshest document, as the
    /// resourceVersion check forces; whatever the interleaving, each dead peer is reclaimed by
    /// exactly one agent and live peers are never touched.
    #[test]
    fn concurrent_reclaimers_never_both_win() {
        use rand::{Rng, SeedableRng};
        for seed in 0..200 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut doc = registry(&[
                ("a", "n1"),
                ("b", "n2"),
                ("c", "n3"),
                ("d", "n4"),
                ("e", "n5"),
            ]);
            let present = nodes(&["n1", "n2", "n3"]);
            let agents = ["a", "b", "c"];
            let mut version = 0u64;
            let mut readings: BTreeMap<&str, (u64, Registry)> = agents
                .iter()
                .map(|a| (*a, (version, doc.clone())))
                .collect();
            let mut reclaimed_by: BTreeMap<String, &str> = BTreeMap::new();
            for _ in 0..60 {
                let agent = agents[rng.gen_range(0..agents.len())];
                let (seen, reading) = readings[agent].clone();
                if seen != version || rng.gen_bool(0.3) {
                    readings.insert(agent, (version, doc.clone()));
                    continue;
                }
                let Some(target) = reading.to_reclaim(agent, &present).first().cloned() else {
                    continue;
                };
                let mut next = reading.clone();
                if reading.reclaiming.get(&target).map(String::as_str) == Some(agent) {
                    // Holding the lock: rmpeer succeeded; record it.
                    assert!(
                        reclaimed_by.insert(target.clone(), agent).is_none(),
                        "seed {seed}: {target} reclaimed twice"
                    );
                    next.finish(&target);
                } else {
                    next.lock(&target, agent);
                }
                doc = next;
                version += 1;
                readings.insert(agent, (version, doc.clone()));
            }
            for peer in reclaimed_by.keys() {
                assert!(
                    ["d", "e"].contains(&peer.as_str()),
                    "seed {seed}: live {peer} reclaimed"
                );
            }
            for live in ["a", "b", "c"] {
                assert!(doc.contains(live), "seed {seed}: {live} left the list");
            }
        }
    }
}
