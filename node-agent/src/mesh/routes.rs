// SPDX-License-Identifier: Apache-2.0
//! Routes computed from the topology: the unicast next hop towards every
//! reachable peer and the broadcast tree of every source.
//!
//! Both come from a breadth-first search in which each level is visited in
//! peer-name order, so any two peers holding the same topology compute the
//! same trees: a broadcast is then forwarded along one spanning tree and every
//! peer receives exactly one copy.
//!
//! Two graphs are used. The data plane only uses links that both ends announce
//! as established ([`Graph::Symmetric`]); gossip may use every announced
//! connection ([`Graph::Announced`]) so that control traffic flows before a
//! link is fully confirmed.

use std::collections::{BTreeMap, BTreeSet};

use super::peer::PeerName;
use super::topology::Topology;

/// Which connections count as edges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Graph {
    /// A-B is an edge when A and B each announce an established connection to the other.
    Symmetric,
    /// A-B is an edge when A announces a connection to B (B must be known).
    Announced,
}

/// Unicast routes of the local peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    /// Destination → neighbour to send to (the destination itself when adjacent).
    pub unicast: BTreeMap<PeerName, PeerName>,
}

/// Neighbours of `p` in `graph`, in name order.
fn neighbours(topo: &Topology, graph: Graph, p: PeerName) -> Vec<PeerName> {
    let Some(rec) = topo.get(&p) else {
        return Vec::new();
    };
    rec.conns
        .iter()
        .filter(|(other, c)| match graph {
            Graph::Announced => topo.get(other).is_some(),
            Graph::Symmetric => {
                c.established
                    && topo
                        .get(other)
                        .and_then(|o| o.conns.get(&p))
                        .is_some_and(|back| back.established)
            }
        })
        .map(|(other, _)| *other)
        .collect()
}

/// BFS tree from `root`: child → parent, visiting each level in name order.
fn bfs_parents(topo: &Topology, graph: Graph, root: PeerName) -> BTreeMap<PeerName, PeerName> {
    let mut parent = BTreeMap::new();
    let mut seen = BTreeSet::from([root]);
    let mut level = vec![root];
    while !level.is_empty() {
        level.sort();
        let mut next = Vec::new();
        for p in &level {
            for n in neighbours(topo, graph, *p) {
                if seen.insert(n) {
                    parent.insert(n, *p);
                    next.push(n);
                }
            }
        }
        level = next;
    }
    parent
}

impl Routes {
    /// Unicast routes from the local peer over `graph`.
    pub fn compute(topo: &Topology, graph: Graph) -> Self {
        let local = topo.local_name();
        let parent = bfs_parents(topo, graph, local);
        let mut unicast = BTreeMap::new();
        for &dest in parent.keys() {
            let mut hop = dest;
            while let Some(&p) = parent.get(&hop) {
                if p == local {
                    break;
                }
                hop = p;
            }
            unicast.insert(dest, hop);
        }
        Self { unicast }
    }

    /// Next hop towards `dest`, if reachable.
    pub fn next_hop(&self, dest: &PeerName) -> Option<PeerName> {
        self.unicast.get(dest).copied()
    }
}

/// The neighbours the local peer must forward a broadcast from `source` to:
/// its children in `source`'s BFS tree.
pub fn broadcast_children(topo: &Topology, graph: Graph, source: PeerName) -> Vec<PeerName> {
    let local = topo.local_name();
    bfs_parents(topo, graph, source)
        .into_iter()
        .filter(|(_, parent)| *parent == local)
        .map(|(child, _)| child)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::peer::PeerUid;
    use crate::mesh::topology::{ConnRecord, PeerRecord};
    use std::net::SocketAddr;

    fn name(i: u8) -> PeerName {
        PeerName::from_bytes([2, 0, 0, 0, 0, i])
    }

    /// Topology seen from `local`, given undirected links; links listed in
    /// `one_way` are announced only by their first peer.
    fn topo(local: u8, n: u8, links: &[(u8, u8)], one_way: &[(u8, u8)]) -> Topology {
        let mut recs: Vec<PeerRecord> = (1..=n)
            .map(|i| PeerRecord {
                name: name(i),
                uid: PeerUid::new(1),
                version: 1,
                nickname: String::new(),
                conns: BTreeMap::new(),
            })
            .collect();
        let conn = |i: u8| ConnRecord {
            addr: SocketAddr::from(([10, 0, 0, i], 6783)),
            outbound: true,
            established: true,
        };
        for &(a, b) in links {
            recs[usize::from(a - 1)].conns.insert(name(b), conn(b));
            recs[usize::from(b - 1)].conns.insert(name(a), conn(a));
        }
        for &(a, b) in one_way {
            recs[usize::from(a - 1)].conns.insert(name(b), conn(b));
        }
        let mut t = Topology::new(recs[usize::from(local - 1)].clone());
        t.merge(recs);
        t
    }

    #[test]
    fn chain_routes_through_the_middle() {
        let t = topo(1, 3, &[(1, 2), (2, 3)], &[]);
        let r = Routes::compute(&t, Graph::Symmetric);
        assert_eq!(r.next_hop(&name(2)), Some(name(2)));
        assert_eq!(r.next_hop(&name(3)), Some(name(2)));
    }

    #[test]
    fn one_way_links_carry_no_data_but_carry_gossip() {
        let t = topo(1, 2, &[], &[(1, 2)]);
        assert_eq!(
            Routes::compute(&t, Graph::Symmetric).next_hop(&name(2)),
            None
        );
        assert_eq!(
            Routes::compute(&t, Graph::Announced).next_hop(&name(2)),
            Some(name(2))
        );
    }

    #[test]
    fn ties_break_by_name() {
        // square 1-2-4, 1-3-4: peer 4 is reached via the lower name, 2
        let t = topo(1, 4, &[(1, 3), (1, 2), (3, 4), (2, 4)], &[]);
        assert_eq!(
            Routes::compute(&t, Graph::Symmetric).next_hop(&name(4)),
            Some(name(2))
        );
    }

    #[test]
    fn broadcast_reaches_everyone_exactly_once() {
        let links = [(1, 2), (1, 3), (2, 3), (2, 4), (3, 5), (4, 5), (5, 6)];
        for source in 1..=6u8 {
            let mut received = BTreeMap::from([(source, 1)]);
            let mut frontier = vec![source];
            while let Some(p) = frontier.pop() {
                let t = topo(p, 6, &links, &[]);
                for child in broadcast_children(&t, Graph::Symmetric, name(source)) {
                    let c = child.to_bytes()[5];
                    *received.entry(c).or_insert(0) += 1;
                    frontier.push(c);
                }
            }
            assert_eq!(received.len(), 6, "source {source}: {received:?}");
            assert!(
                received.values().all(|&n| n == 1),
                "source {source}: {received:?}"
            );
        }
    }
}
