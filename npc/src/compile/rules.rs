// SPDX-License-Identifier: Apache-2.0
//! The rules of a policy's chains: one rule per peer and port group, each referring to the
//! shared sets it needs (taken with [`Compiled::acquire`], released when the policy goes).
//! Each pod peer is a set of the pods it selects, each ipBlock a match of its own.
//!
//! A rule's ports become one match: a single port or range inline (`meta l4proto tcp th
//! dport 80`), several as a named interval set of `protocol . port-range`, named ports as a
//! set of `address . protocol . port` resolved on the destination pods.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::sets::{cut, object_name, Dest, NamedPort, PeerKey, SetDef};
use super::{ClusterEntry, Compiled, CounterOwner, DropCounter, PolicyEntry, SetId};
use crate::cluster_policy::{Action, ClusterPeer, ClusterPolicy, ClusterRule, PodsOf, Tier};
use crate::policy::{Peer, Policy, PortMatch, PortSpec, Protocol, Rule};

/// nft comments hold at most 128 bytes.
const COMMENT_MAX: usize = 120;

impl Compiled {
    /// Compiles NetworkPolicy `policy`: its sets and the rules of its chains.
    pub(super) fn compile_policy(&mut self, policy: Policy) -> PolicyEntry {
        let mut sets = Vec::new();
        let comment = cut(&policy.key(), COMMENT_MAX);
        let mut chain = |c: &mut Self, rules: &Option<Vec<Rule>>, ingress: bool| {
            rules.as_ref().map(|rules| {
                let mut out = Vec::new();
                for rule in rules {
                    let peers = c.np_peers(&policy, rule, ingress, &mut sets);
                    let ports = c.port_matches(&rule.ports, dest(ingress), &mut sets);
                    for peer in &peers {
                        for port in &ports {
                            let matches = format!("{peer}{port} ");
                            out.push(format!(
                                "{}accept comment \"{comment}\"",
                                matches.trim_start()
                            ));
                        }
                    }
                }
                out
            })
        };
        let ingress = chain(self, &policy.ingress, true);
        let egress = chain(self, &policy.egress, false);
        PolicyEntry {
            policy,
            sets,
            ingress,
            egress,
        }
    }

    /// Compiles the ClusterNetworkPolicies (sorted): the four tier chains, their sets and the
    /// counters of their Deny rules.
    pub(super) fn compile_cluster(&mut self, policies: Vec<ClusterPolicy>) -> ClusterEntry {
        let mut sets = Vec::new();
        let mut chains: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut counters = BTreeMap::new();
        for tier in [Tier::Admin, Tier::Baseline] {
            for dir in ["ingress", "egress"] {
                chains.insert(tier_chain(dir, tier), Vec::new());
            }
        }
        for policy in &policies {
            let subject = self.acquire(SetDef::Peer(pods_key(&policy.subject, true)));
            sets.push(subject);
            let subject = self.set_name(subject);
            for (rules, ingress) in [(&policy.ingress, true), (&policy.egress, false)] {
                let dir = if ingress { "ingress" } else { "egress" };
                let (own, _) = fields(ingress);
                for (i, rule) in rules.iter().enumerate() {
                    let verdict = match (rule.action, policy.tier) {
                        (Action::Accept, _) | (Action::Pass, Tier::Baseline) => "accept".into(),
                        (Action::Pass, Tier::Admin) => "return".into(),
                        (Action::Deny, _) => {
                            let name =
                                object_name(&["cnp-denied", &policy.name, dir, &i.to_string()]);
                            counters.insert(
                                name.clone(),
                                DropCounter {
                                    name: name.clone(),
                                    owner: CounterOwner::ClusterRule(
                                        policy.name.clone(),
                                        rule.name.clone(),
                                    ),
                                    direction: if ingress { "ingress" } else { "egress" },
                                },
                            );
                            format!("counter name \"{name}\" jump {dir}-denied")
                        }
                    };
                    let comment = cut(
                        &format!("{} {}: {}", policy.tier.name(), policy.name, rule.name),
                        COMMENT_MAX,
                    );
                    let peers = self.cluster_peers(rule, ingress, &mut sets);
                    let ports = self.port_matches(&rule.ports, dest(ingress), &mut sets);
                    let out = chains.entry(tier_chain(dir, policy.tier)).or_default();
                    for peer in &peers {
                        for port in &ports {
                            out.push(format!(
                                "ip {own} @{subject}{peer}{port} {verdict} comment \"{comment}\""
                            ));
                        }
                    }
                }
            }
        }
        ClusterEntry {
            policies,
            sets,
            chains,
            counters,
            rejected: Vec::new(),
        }
    }

    /// The name of set `id`.
    fn set_name(&self, id: SetId) -> String {
        self.slots[id]
            .as_ref()
            .map(|s| s.name.clone())
            .unwrap_or_default()
    }

    /// One match (with a leading space, or empty for "any") per peer of a NetworkPolicy rule.
    fn np_peers(
        &mut self,
        policy: &Policy,
        rule: &Rule,
        ingress: bool,
        sets: &mut Vec<SetId>,
    ) -> Vec<String> {
        let (_, other) = fields(ingress);
        let Some(peers) = &rule.peers else {
            return vec![String::new()];
        };
        let mut out = Vec::new();
        let mut keys = Vec::new();
        for peer in peers {
            match peer {
                Peer::Pods { namespaces, pods } => {
                    let key = PeerKey {
                        namespaces: namespaces.clone(),
                        pods: pods.clone(),
                        own: namespaces.is_none().then(|| policy.namespace.clone()),
                        local: false,
                    };
                    if !keys.contains(&key) {
                        keys.push(key);
                    }
                }
                Peer::Block { cidr, except } => {
                    let mut m = format!(" ip {other} {}/{}", cidr.addr(), cidr.prefix_len());
                    for e in except {
                        let _ = write!(m, " ip {other} != {}/{}", e.addr(), e.prefix_len());
                    }
                    out.push(m);
                }
            }
        }
        let mut pods = self.pods_match(keys, other, sets);
        pods.append(&mut out);
        pods
    }

    /// One match per pod peer of `keys`, each a set of the pods it selects. (One set for all
    /// of a rule's peers would mean fewer rules but far more elements, since the unions of
    /// different rules overlap; elements cost nft more than rules do.)
    fn pods_match(
        &mut self,
        keys: Vec<PeerKey>,
        field: &str,
        sets: &mut Vec<SetId>,
    ) -> Vec<String> {
        keys.into_iter()
            .map(|key| {
                let id = self.acquire(SetDef::Peer(key));
                sets.push(id);
                format!(" ip {field} @{}", self.set_name(id))
            })
            .collect()
    }

    /// One match per peer of a ClusterNetworkPolicy rule.
    fn cluster_peers(
        &mut self,
        rule: &ClusterRule,
        ingress: bool,
        sets: &mut Vec<SetId>,
    ) -> Vec<String> {
        let (_, other) = fields(ingress);
        let mut out = Vec::new();
        let mut keys = Vec::new();
        for peer in &rule.peers {
            match peer {
                ClusterPeer::Pods(p) => {
                    let key = pods_key(p, false);
                    if !keys.contains(&key) {
                        keys.push(key);
                    }
                }
                ClusterPeer::Nodes(sel) => {
                    let id = self.acquire(SetDef::Nodes(sel.clone()));
                    sets.push(id);
                    out.push(format!(" ip {other} @{}", self.set_name(id)));
                }
                ClusterPeer::Network(net) => {
                    out.push(format!(" ip {other} {}/{}", net.addr(), net.prefix_len()));
                }
            }
        }
        let mut pods = self.pods_match(keys, other, sets);
        pods.append(&mut out);
        pods
    }

    /// One match (with a leading space) per port group of `ports`; `[""]` when empty.
    fn port_matches(
        &mut self,
        ports: &[PortSpec],
        dest: Dest,
        sets: &mut Vec<SetId>,
    ) -> Vec<String> {
        if ports.is_empty() {
            return vec![String::new()];
        }
        let mut out = Vec::new();
        let numbered = merge_ranges(ports);
        match numbered.as_slice() {
            [] => {}
            [(proto, 0, u16::MAX)] => out.push(format!(" meta l4proto {}", proto.nft_name())),
            [(proto, a, b)] if a == b => {
                out.push(format!(" meta l4proto {} th dport {a}", proto.nft_name()));
            }
            [(proto, a, b)] => out.push(format!(
                " meta l4proto {} th dport {a}-{b}",
                proto.nft_name()
            )),
            list => {
                let specs = list
                    .iter()
                    .map(|(proto, a, b)| PortSpec {
                        protocol: *proto,
                        port: PortMatch::Range(*a, *b),
                    })
                    .collect();
                let id = self.acquire(SetDef::Ports(specs));
                sets.push(id);
                out.push(format!(" meta l4proto . th dport @{}", self.set_name(id)));
            }
        }
        let mut named: Vec<NamedPort> = Vec::new();
        for p in ports {
            let entry = match &p.port {
                PortMatch::Named(name) => (name.clone(), Some(p.protocol)),
                PortMatch::NamedAny(name) => (name.clone(), None),
                PortMatch::Any | PortMatch::Range(..) => continue,
            };
            if !named.contains(&entry) {
                named.push(entry);
            }
        }
        if !named.is_empty() {
            let id = self.acquire(SetDef::Named { dest, ports: named });
            sets.push(id);
            out.push(format!(
                " ip daddr . meta l4proto . th dport @{}",
                self.set_name(id)
            ));
        }
        out
    }
}

/// The numbered ports of `ports` as sorted, merged ranges per protocol (an interval set
/// refuses overlapping elements).
fn merge_ranges(ports: &[PortSpec]) -> Vec<(Protocol, u16, u16)> {
    let mut by_proto: BTreeMap<Protocol, Vec<(u16, u16)>> = BTreeMap::new();
    for p in ports {
        let range = match p.port {
            PortMatch::Any => (0, u16::MAX),
            PortMatch::Range(a, b) => (a, b),
            PortMatch::Named(_) | PortMatch::NamedAny(_) => continue,
        };
        by_proto.entry(p.protocol).or_default().push(range);
    }
    let mut out = Vec::new();
    for (proto, mut ranges) in by_proto {
        ranges.sort_unstable();
        let mut merged: Vec<(u16, u16)> = Vec::new();
        for (a, b) in ranges {
            match merged.last_mut() {
                Some(last) if u32::from(a) <= u32::from(last.1) + 1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        out.extend(merged.into_iter().map(|(a, b)| (proto, a, b)));
    }
    out
}

/// The address fields naming the policy's own pod and the peer in a direction.
fn fields(ingress: bool) -> (&'static str, &'static str) {
    if ingress {
        ("daddr", "saddr")
    } else {
        ("saddr", "daddr")
    }
}

/// Where named ports are resolved: on the local destination (ingress) or any pod (egress,
/// where the peer match restricts the destination).
fn dest(ingress: bool) -> Dest {
    if ingress {
        Dest::Local
    } else {
        Dest::All
    }
}

/// The set definition of ClusterNetworkPolicy pods (`local`: subjects on this node).
fn pods_key(p: &PodsOf, local: bool) -> PeerKey {
    PeerKey {
        namespaces: Some(p.namespaces.clone()),
        pods: p.pods.clone(),
        own: None,
        local,
    }
}

/// The tier chain of `tier` for direction `dir`.
pub(super) fn tier_chain(dir: &str, tier: Tier) -> String {
    match tier {
        Tier::Admin => format!("{dir}-admin"),
        Tier::Baseline => format!("{dir}-baseline"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_per_protocol() {
        let spec = |protocol, a, b| PortSpec {
            protocol,
            port: PortMatch::Range(a, b),
        };
        let merged = merge_ranges(&[
            spec(Protocol::Tcp, 80, 80),
            spec(Protocol::Tcp, 81, 90),
            spec(Protocol::Tcp, 85, 86),
            spec(Protocol::Udp, 53, 53),
            spec(Protocol::Tcp, 443, 443),
        ]);
        assert_eq!(
            merged,
            vec![
                (Protocol::Tcp, 80, 90),
                (Protocol::Tcp, 443, 443),
                (Protocol::Udp, 53, 53)
            ]
        );
        let any = merge_ranges(&[
            spec(Protocol::Tcp, 80, 80),
            PortSpec {
                protocol: Protocol::Tcp,
                port: PortMatch::Any,
            },
        ]);
        assert_eq!(any, vec![(Protocol::Tcp, 0, u16::MAX)]);
    }
}
