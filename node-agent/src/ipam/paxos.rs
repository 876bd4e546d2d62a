// SPDX-License-Identifier: Apache-2.0
//! Agreeing once on who splits the empty range (`--ipalloc-init consensus=N`):
//! single-decree Paxos carried by gossip.
//!
//! Every elector plays every role. Its acceptor state — the highest proposal
//! it promised and the proposal it accepted with its value — is gossiped; the
//! state of one node only ever grows, so the gossip merge keeps the larger of
//! two copies. A proposer whose proposal is the highest promise of a quorum
//! accepts it with the value of the highest accepted proposal among those
//! promises (or its own value, the electors it knows); acceptors follow once
//! they see the proposer's acceptance. A value is chosen once a quorum has
//! accepted the same proposal, and every node that sees this builds the same
//! ring from it.
//!
//! Nodes are (name, incarnation): a restarted peer has forgotten its promises,
//! so it takes part as a new node.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::mesh::PeerName;

/// One incarnation of an elector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId {
    /// Peer name.
    pub name: PeerName,
    /// Incarnation.
    pub uid: u64,
}

/// A proposal number: rounds first, the proposer breaks ties.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProposalId {
    /// Round.
    pub round: u64,
    /// Who proposed.
    pub proposer: NodeId,
}

/// The gossiped state of one node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acceptor {
    /// Highest proposal promised.
    pub promise: Option<ProposalId>,
    /// Proposal accepted, with its value (sorted peer names).
    pub accepted: Option<(ProposalId, Vec<PeerName>)>,
}

impl Acceptor {
    fn rank(&self) -> (Option<ProposalId>, Option<ProposalId>) {
        (self.promise, self.accepted.as_ref().map(|(id, _)| *id))
    }
}

/// Paxos state of every node this node has heard of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paxos {
    me: NodeId,
    quorum: usize,
    nodes: BTreeMap<NodeId, Acceptor>,
}

impl Paxos {
    /// State of `me` in a group where `quorum` nodes must agree.
    pub fn new(me: NodeId, quorum: usize) -> Self {
        let mut nodes = BTreeMap::new();
        nodes.insert(me, Acceptor::default());
        Self {
            me,
            quorum: quorum.max(1),
            nodes,
        }
    }

    /// The quorum.
    pub fn quorum(&self) -> usize {
        self.quorum
    }

    /// All node states, for gossip.
    pub fn nodes(&self) -> &BTreeMap<NodeId, Acceptor> {
        &self.nodes
    }

    /// Peers known to take part (one per name).
    pub fn electors(&self) -> BTreeSet<PeerName> {
        self.nodes.keys().map(|n| n.name).collect()
    }

    /// Merges gossiped node states; returns whether anything changed.
    pub fn merge(&mut self, theirs: &BTreeMap<NodeId, Acceptor>) -> bool {
        let mut changed = false;
        for (id, a) in theirs {
            if *id == self.me {
                continue;
            }
            match self.nodes.get_mut(id) {
                Some(ours) if ours.rank() >= a.rank() => {}
                Some(ours) => {
                    *ours = a.clone();
                    changed = true;
                }
                None => {
                    self.nodes.insert(*id, a.clone());
                    changed = true;
                }
            }
        }
        changed
    }

    /// Starts a new proposal, higher than any seen.
    pub fn propose(&mut self) {
        let round = self
            .nodes
            .values()
            .flat_map(|a| [a.promise, a.accepted.as_ref().map(|(p, _)| *p)])
            .flatten()
            .map(|p| p.round)
            .max()
            .unwrap_or(0)
            + 1;
        let me = self.me;
        self.mine().promise = Some(ProposalId {
            round,
            proposer: me,
        });
    }

    /// Whether this node's proposal is the highest it promised.
    pub fn proposing(&self) -> bool {
        self.nodes[&self.me]
            .promise
            .is_some_and(|p| p.proposer == self.me)
    }

    /// Runs the acceptor and proposer rules once; `value` is what this node
    /// proposes if no value was accepted before. Returns whether the local
    /// state changed.
    pub fn think(&mut self, value: impl FnOnce() -> Vec<PeerName>) -> bool {
        let before = self.nodes[&self.me].clone();
        // Acceptor: promise the highest proposal seen.
        let highest = self.nodes.values().filter_map(|a| a.promise).max();
        if highest > self.nodes[&self.me].promise {
            self.mine().promise = highest;
        }
        let promise = self.nodes[&self.me].promise;
        if let Some(p) = promise {
            let mine_accepted = self.nodes[&self.me].accepted.as_ref().map(|(id, _)| *id);
            if p.proposer == self.me {
                // Proposer: a quorum promised our proposal.
                let promised: Vec<&Acceptor> = self
                    .nodes
                    .values()
                    .filter(|a| a.promise == Some(p))
                    .collect();
                if mine_accepted != Some(p) && promised.len() >= self.quorum {
                    let prior = promised
                        .iter()
                        .filter_map(|a| a.accepted.as_ref())
                        .max_by_key(|(id, _)| *id)
                        .map(|(_, v)| v.clone());
                    let mut v = prior.unwrap_or_else(value);
                    v.sort();
                    v.dedup();
                    self.mine().accepted = Some((p, v));
                }
            } else if mine_accepted != Some(p) {
                // Acceptor: follow the proposer we promised once it accepted.
                let proposed = self
                    .nodes
                    .iter()
                    .find(|(id, _)| **id == p.proposer)
                    .and_then(|(_, a)| a.accepted.clone())
                    .filter(|(id, _)| *id == p);
                if let Some(acc) = proposed {
                    self.mine().accepted = Some(acc);
                }
            }
        }
        self.nodes[&self.me] != before
    }

    /// The chosen value, once a quorum accepted the same proposal.
    pub fn decision(&self) -> Option<Vec<PeerName>> {
        let mut count: BTreeMap<ProposalId, (usize, &Vec<PeerName>)> = BTreeMap::new();
        for a in self.nodes.values() {
            if let Some((id, v)) = &a.accepted {
                count.entry(*id).or_insert((0, v)).0 += 1;
            }
        }
        count
            .into_values()
            .find(|(n, _)| *n >= self.quorum)
            .map(|(_, v)| v.clone())
    }

    fn mine(&mut self) -> &mut Acceptor {
        self.nodes
            .get_mut(&self.me)
            .expect("own node is always present")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn node(n: u64) -> NodeId {
        NodeId {
            name: PeerName::from_u64(n),
            uid: n * 7,
        }
    }

    /// `n` nodes, several proposing at random moments, gossip delivered in a
    /// random order between random pairs: all decided values are equal.
    fn run(seed: u64, n: usize, quorum: usize) -> Vec<Option<Vec<PeerName>>> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut nodes: Vec<Paxos> = (0..n)
            .map(|i| Paxos::new(node(i as u64 + 1), quorum))
            .collect();
        for step in 0..4000 {
            let i = rng.gen_range(0..n);
            let wants = step % 97 == 0 || (step % 31 == 0 && rng.gen_bool(0.3));
            if wants && nodes[i].decision().is_none() {
                nodes[i].propose();
            }
            let j = rng.gen_range(0..n);
            let theirs = nodes[j].nodes().clone();
            nodes[i].merge(&theirs);
            // Each proposer proposes what it knows, which differs per node.
            let known: Vec<PeerName> = nodes[i].electors().into_iter().collect();
            nodes[i].think(|| known);
        }
        nodes.iter().map(Paxos::decision).collect()
    }

    #[test]
    fn all_nodes_decide_the_same_value() {
        for seed in 0..60 {
            let decisions = run(seed, 5, 3);
            let decided: BTreeSet<Vec<PeerName>> = decisions.iter().flatten().cloned().collect();
            assert_eq!(decided.len(), 1, "seed {seed}: {decisions:?}");
            assert!(
                decisions.iter().all(Option::is_some),
                "seed {seed}: {decisions:?}"
            );
        }
    }

    #[test]
    fn a_single_node_decides_alone_with_quorum_one() {
        let mut p = Paxos::new(node(1), 1);
        p.propose();
        p.think(|| vec![PeerName::from_u64(1)]);
        assert_eq!(p.decision(), Some(vec![PeerName::from_u64(1)]));
    }

    #[test]
    fn no_decision_without_a_quorum() {
        let mut a = Paxos::new(node(1), 2);
        a.propose();
        a.think(|| vec![PeerName::from_u64(1)]);
        assert_eq!(a.decision(), None);
        let mut b = Paxos::new(node(2), 2);
        b.merge(a.nodes());
        b.think(Vec::new);
        a.merge(b.nodes());
        a.think(|| vec![PeerName::from_u64(1)]);
        b.merge(a.nodes());
        b.think(Vec::new);
        a.merge(b.nodes());
        assert!(a.decision().is_some());
        assert_eq!(a.decision(), b.decision());
    }
}
