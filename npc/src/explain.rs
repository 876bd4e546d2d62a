// SPDX-License-Identifier: Apache-2.0
//! Explaining a verdict: which policies allow or deny one connection, and why, evaluated on
//! the same validated model the ruleset is compiled from ([`Compiled`]).
//!
//! The evaluation mirrors the ruleset tier by tier, once at the source pod (egress) and once
//! at the destination pod (ingress): Admin ClusterNetworkPolicy rules by priority, then the
//! NetworkPolicies isolating the pod (any rule allowing is enough; none means denied), then,
//! for pods no NetworkPolicy isolates, Baseline rules; nothing matching means allowed.
//! Peers are identified by address, as the kernel sees them: a pod by its pod IP, a node by
//! its InternalIP. The drop log uses it to name the policy that dropped a packet, and
//! `weave-npc explain` prints it.

use std::fmt;
use std::net::Ipv4Addr;

use crate::cluster_policy::{Action, ClusterPeer, ClusterPolicy, ClusterRule, PodsOf, Tier};
use crate::compile::Compiled;
use crate::policy::{Peer, PodInfo, PortMatch, PortSpec, Protocol, Rule};

/// One end of a connection.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// A pod (as the compiled state knows it).
    Pod(PodInfo),
    /// An address that is no known pod.
    Address(Ipv4Addr),
}

impl Endpoint {
    /// The endpoint at `ip`: the pod with that address if there is one.
    pub fn at(compiled: &Compiled, ip: Ipv4Addr) -> Self {
        compiled
            .pods_at(ip)
            .first()
            .map_or(Self::Address(ip), |p| Self::Pod((*p).clone()))
    }

    /// Its address.
    pub fn ip(&self) -> Ipv4Addr {
        match self {
            Self::Pod(p) => p.ip,
            Self::Address(ip) => *ip,
        }
    }

    /// The pod, if it is one.
    pub fn pod(&self) -> Option<&PodInfo> {
        match self {
            Self::Pod(p) => Some(p),
            Self::Address(_) => None,
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pod(p) => write!(f, "{}/{} ({})", p.namespace, p.name, p.ip),
            Self::Address(ip) => write!(f, "{ip}"),
        }
    }
}

/// What decided one direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The end is no pod, so this direction is not checked.
    NotAPod,
    /// A ClusterNetworkPolicy rule matched (Accept or Deny; Pass in the Baseline tier).
    Cluster {
        /// Admin or Baseline.
        tier: Tier,
        /// Policy name.
        policy: String,
        /// Rule name.
        rule: String,
        /// Its action.
        action: Action,
    },
    /// NetworkPolicies isolate the pod; `allowed_by` names the first that allows.
    NetworkPolicy {
        /// `namespace/name` of every isolating policy.
        isolating: Vec<String>,
        /// The policy and rule index allowing the connection, if any.
        allowed_by: Option<(String, usize)>,
        /// Admin rules that passed the connection on, if any.
        passed_by: Option<String>,
    },
    /// Nothing applies: allowed by Kubernetes' default.
    Default {
        /// The Admin rule that passed the connection on, if any.
        passed_by: Option<String>,
    },
}

/// The decision of one direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allowed?
    pub allowed: bool,
    /// Why.
    pub reason: Reason,
}

impl Decision {
    /// A short name of what decided, for logs and metrics (`NetworkPolicy x/a,x/b`,
    /// `ClusterNetworkPolicy p rule r`, `default`).
    pub fn by(&self) -> String {
        match &self.reason {
            Reason::NotAPod => "not a pod".into(),
            Reason::Cluster {
                tier, policy, rule, ..
            } => format!(
                "ClusterNetworkPolicy {policy} ({}) rule {rule}",
                tier.name()
            ),
            Reason::NetworkPolicy {
                isolating,
                allowed_by: Some((p, _)),
                ..
            } => {
                let _ = isolating;
                format!("NetworkPolicy {p}")
            }
            Reason::NetworkPolicy { isolating, .. } => {
                format!("NetworkPolicy default deny ({})", isolating.join(", "))
            }
            Reason::Default { .. } => "default".into(),
        }
    }
}

/// The explanation of one connection.
#[derive(Debug, Clone)]
pub struct Explanation {
    /// Source.
    pub src: Endpoint,
    /// Destination.
    pub dst: Endpoint,
    /// Protocol.
    pub protocol: Protocol,
    /// Destination port.
    pub port: u16,
    /// At the source (egress).
    pub egress: Decision,
    /// At the destination (ingress).
    pub ingress: Decision,
}

impl Explanation {
    /// Whether the connection is allowed.
    pub fn allowed(&self) -> bool {
        self.egress.allowed && self.ingress.allowed
    }

    /// The decision that denies, if any (egress first: the source node drops first).
    pub fn denial(&self) -> Option<(&'static str, &Decision)> {
        if !self.egress.allowed {
            Some(("egress", &self.egress))
        } else if !self.ingress.allowed {
            Some(("ingress", &self.ingress))
        } else {
            None
        }
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} → {} {}/{}",
            self.src,
            self.dst,
            self.protocol.nft_name().to_uppercase(),
            self.port
        )?;
        for (dir, end, d) in [
            ("egress", &self.src, &self.egress),
            ("ingress", &self.dst, &self.ingress),
        ] {
            let verdict = if d.allowed { "allowed" } else { "denied" };
            write!(f, "  {dir} at {end}: {verdict}")?;
            match &d.reason {
                Reason::NotAPod => writeln!(f, " (not a pod: not checked here)")?,
                Reason::Cluster {
                    tier,
                    policy,
                    rule,
                    action,
                } => writeln!(
                    f,
                    " by ClusterNetworkPolicy {policy} ({} tier), rule {rule}: {}",
                    tier.name(),
                    action.name()
                )?,
                Reason::NetworkPolicy {
                    isolating,
                    allowed_by,
                    passed_by,
                } => {
                    if let Some(p) = passed_by {
                        write!(f, " (passed on by {p})")?;
                    }
                    match allowed_by {
                        Some((p, i)) => writeln!(f, " by NetworkPolicy {p}, {dir} rule {i}")?,
                        None => writeln!(
                            f,
                            ": isolated by NetworkPolicy {} and no rule allows it",
                            isolating.join(", ")
                        )?,
                    }
                }
                Reason::Default { passed_by } => {
                    if let Some(p) = passed_by {
                        write!(f, " (passed on by {p})")?;
                    }
                    writeln!(f, ": no policy applies")?;
                }
            }
        }
        write!(
            f,
            "  verdict: {}",
            if self.allowed() { "allowed" } else { "denied" }
        )
    }
}

/// Explains a connection from `src` to `dst` on `protocol`/`port`.
pub fn explain(
    compiled: &Compiled,
    src: Endpoint,
    dst: Endpoint,
    protocol: Protocol,
    port: u16,
) -> Explanation {
    let flow = Flow {
        compiled,
        src: &src,
        dst: &dst,
        protocol,
        port,
    };
    let egress = flow.decide(false);
    let ingress = flow.decide(true);
    Explanation {
        src,
        dst,
        protocol,
        port,
        egress,
        ingress,
    }
}

/// A connection being evaluated.
struct Flow<'a> {
    /// The model.
    compiled: &'a Compiled,
    /// Source.
    src: &'a Endpoint,
    /// Destination.
    dst: &'a Endpoint,
    /// Protocol.
    protocol: Protocol,
    /// Destination port.
    port: u16,
}

impl Flow<'_> {
    /// The decision at the destination (`ingress`) or at the source.
    fn decide(&self, ingress: bool) -> Decision {
        let (own, peer) = if ingress {
            (self.dst, self.src)
        } else {
            (self.src, self.dst)
        };
        let Some(pod) = own.pod() else {
            return Decision {
                allowed: true,
                reason: Reason::NotAPod,
            };
        };
        let mut passed_by = None;
        // Admin tier, stopping at a Pass.
        if let Some((p, rule)) = self.first_match(Tier::Admin, pod, peer, ingress) {
            if rule.action == Action::Pass {
                passed_by = Some(format!(
                    "ClusterNetworkPolicy {} rule {}",
                    p.name, rule.name
                ));
            } else {
                return Decision {
                    allowed: rule.action == Action::Accept,
                    reason: Reason::Cluster {
                        tier: Tier::Admin,
                        policy: p.name.clone(),
                        rule: rule.name.clone(),
                        action: rule.action,
                    },
                };
            }
        }
        // NetworkPolicies.
        let isolating = self.compiled.isolating(pod, ingress);
        if !isolating.is_empty() {
            let mut allowed_by = None;
            for p in &isolating {
                let rules = if ingress { &p.ingress } else { &p.egress };
                if let Some(i) = rules
                    .iter()
                    .flatten()
                    .position(|r| self.np_rule_matches(r, &p.namespace, peer))
                {
                    allowed_by = Some((p.key(), i));
                    break;
                }
            }
            return Decision {
                allowed: allowed_by.is_some(),
                reason: Reason::NetworkPolicy {
                    isolating: isolating.iter().map(|p| p.key()).collect(),
                    allowed_by,
                    passed_by,
                },
            };
        }
        // Baseline tier.
        if let Some((p, rule)) = self.first_match(Tier::Baseline, pod, peer, ingress) {
            return Decision {
                allowed: rule.action != Action::Deny,
                reason: Reason::Cluster {
                    tier: Tier::Baseline,
                    policy: p.name.clone(),
                    rule: rule.name.clone(),
                    action: rule.action,
                },
            };
        }
        Decision {
            allowed: true,
            reason: Reason::Default { passed_by },
        }
    }

    /// The first rule of `tier` (in evaluation order) whose policy selects `pod` and which
    /// matches `peer` in the direction.
    fn first_match(
        &self,
        tier: Tier,
        pod: &PodInfo,
        peer: &Endpoint,
        ingress: bool,
    ) -> Option<(&ClusterPolicy, &ClusterRule)> {
        self.compiled
            .cluster_policies()
            .iter()
            .filter(|p| p.tier == tier && self.pods_match(&p.subject, pod))
            .find_map(|p| {
                let rules = if ingress { &p.ingress } else { &p.egress };
                rules
                    .iter()
                    .find(|r| self.cluster_rule_matches(r, peer))
                    .map(|r| (p, r))
            })
    }

    /// Whether `pod` is among `sel`'s pods.
    fn pods_match(&self, sel: &PodsOf, pod: &PodInfo) -> bool {
        self.compiled
            .namespace_labels(&pod.namespace)
            .is_some_and(|l| sel.namespaces.matches(l))
            && sel.pods.matches(&pod.labels)
    }

    /// Whether a NetworkPolicy rule of a policy in `namespace` matches `peer` and the port.
    fn np_rule_matches(&self, rule: &Rule, namespace: &str, peer: &Endpoint) -> bool {
        let peer_ok = match &rule.peers {
            None => true,
            Some(peers) => peers.iter().any(|p| match p {
                Peer::Pods { namespaces, pods } => peer.pod().is_some_and(|pod| {
                    let ns_ok = match namespaces {
                        None => pod.namespace == namespace,
                        Some(sel) => self
                            .compiled
                            .namespace_labels(&pod.namespace)
                            .is_some_and(|l| sel.matches(l)),
                    };
                    ns_ok && pods.matches(&pod.labels)
                }),
                Peer::Block { cidr, except } => {
                    let ip = peer.ip();
                    cidr.contains(&ip) && !except.iter().any(|e| e.contains(&ip))
                }
            }),
        };
        peer_ok && self.ports_match(&rule.ports)
    }

    /// Whether a ClusterNetworkPolicy rule matches `peer` and the port.
    fn cluster_rule_matches(&self, rule: &ClusterRule, peer: &Endpoint) -> bool {
        let peer_ok = rule.peers.iter().any(|p| match p {
            ClusterPeer::Pods(sel) => peer.pod().is_some_and(|pod| self.pods_match(sel, pod)),
            ClusterPeer::Nodes(sel) => self
                .compiled
                .node_addresses(|l| sel.matches(l))
                .contains(&peer.ip()),
            ClusterPeer::Network(net) => net.contains(&peer.ip()),
        });
        peer_ok && self.ports_match(&rule.ports)
    }

    /// Whether the protocol and port match `ports` (empty: all), named ports resolved on the
    /// destination pod.
    fn ports_match(&self, ports: &[PortSpec]) -> bool {
        if ports.is_empty() {
            return true;
        }
        let named = |name: &str, proto: Option<Protocol>| {
            self.dst.pod().is_some_and(|pod| {
                pod.ports.iter().any(|(n, p, number)| {
                    n == name
                        && *p == self.protocol
                        && proto.is_none_or(|want| want == *p)
                        && *number == self.port
                })
            })
        };
        ports.iter().any(|spec| match &spec.port {
            PortMatch::Any => spec.protocol == self.protocol,
            PortMatch::Range(a, b) => {
                spec.protocol == self.protocol && (*a..=*b).contains(&self.port)
            }
            PortMatch::Named(name) => named(name, Some(spec.protocol)),
            PortMatch::NamedAny(name) => named(name, None),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{compile, NodeConfig, Snapshot};
    use serde_json::{json, Value};

    /// Namespaces x and y (labelled `ns`), pods a and b in each, `b` serving `web` on 8080.
    fn snapshot(policies: Vec<Value>, cluster: Vec<Value>) -> Snapshot {
        let mut s = Snapshot::default();
        for (i, ns) in ["x", "y"].iter().enumerate() {
            s.namespaces.push(
                serde_json::from_value(json!({"metadata": {"name": ns, "labels": {"ns": ns}}}))
                    .expect("namespace"),
            );
            for (j, pod) in ["a", "b"].iter().enumerate() {
                s.pods.push(
                    serde_json::from_value(json!({
                        "metadata": {"name": pod, "namespace": ns, "labels": {"pod": pod}},
                        "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [
                            {"name": "web", "containerPort": 8080}]}]},
                        "status": {"phase": "Running", "podIP": format!("10.32.{i}.{}", j + 1)}
                    }))
                    .expect("pod"),
                );
            }
        }
        s.policies = policies
            .into_iter()
            .map(|p| serde_json::from_value(p).expect("policy"))
            .collect();
        s.cluster_policies = cluster
            .into_iter()
            .map(|p| serde_json::from_value(p).expect("cluster policy"))
            .collect();
        s
    }

    /// Explains `src` → `dst` TCP `port` on `snap`.
    fn check(snap: &Snapshot, src: &str, dst: &str, port: u16) -> Explanation {
        let c = compile(snap, &NodeConfig::default());
        let end = |s: &str| {
            let (ns, name) = s.split_once('/').expect("ns/name");
            Endpoint::Pod(c.pod(ns, name).expect("pod").clone())
        };
        explain(&c, end(src), end(dst), Protocol::Tcp, port)
    }

    #[test]
    fn network_policies_isolate_and_allow() {
        let snap = snapshot(
            vec![
                json!({"metadata": {"name": "deny", "namespace": "x"}, "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}),
                json!({"metadata": {"name": "web", "namespace": "x"}, "spec": {"podSelector": {"matchLabels": {"pod": "b"}},
                       "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}], "ports": [{"port": "web"}]}]}}),
            ],
            vec![],
        );
        let e = check(&snap, "y/a", "x/b", 8080);
        assert!(e.allowed(), "{e}");
        assert_eq!(e.ingress.by(), "NetworkPolicy x/web");
        let e = check(&snap, "y/a", "x/b", 80);
        assert!(!e.allowed(), "another port: {e}");
        assert_eq!(e.ingress.by(), "NetworkPolicy default deny (x/deny, x/web)");
        let e = check(&snap, "x/b", "x/a", 8080);
        assert!(!e.allowed());
        assert_eq!(e.denial().map(|(d, _)| d), Some("ingress"));
        let e = check(&snap, "x/a", "y/b", 8080);
        assert!(e.allowed() && e.egress.reason == Reason::Default { passed_by: None });
    }

    #[test]
    fn cluster_tiers_come_before_and_after_network_policies() {
        let allow_y = json!({"metadata": {"name": "allow-y", "namespace": "x"}, "spec": {"podSelector": {},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}});
        let admin = json!({"metadata": {"name": "admin"}, "spec": {"tier": "Admin", "priority": 1,
            "subject": {"namespaces": {"matchLabels": {"ns": "x"}}},
            "ingress": [{"name": "pass-web", "action": "Pass", "from": [{"namespaces": {}}], "protocols": [{"destinationNamedPort": "web"}]},
                        {"name": "deny-y", "action": "Deny", "from": [{"namespaces": {"matchLabels": {"ns": "y"}}}]}]}});
        let baseline = json!({"metadata": {"name": "base"}, "spec": {"tier": "Baseline", "priority": 1,
            "subject": {"namespaces": {}},
            "ingress": [{"name": "deny-all", "action": "Deny", "from": [{"namespaces": {}}]}]}});
        let snap = snapshot(vec![allow_y], vec![admin, baseline]);
        // An Admin Deny beats the namespace's allow.
        let e = check(&snap, "y/a", "x/a", 80);
        assert!(!e.allowed(), "{e}");
        assert_eq!(
            e.ingress.by(),
            "ClusterNetworkPolicy admin (Admin) rule deny-y"
        );
        // Pass hands the decision to the NetworkPolicies, which allow.
        let e = check(&snap, "y/a", "x/b", 8080);
        assert!(e.allowed(), "{e}");
        assert!(matches!(
            e.ingress.reason,
            Reason::NetworkPolicy {
                passed_by: Some(_),
                ..
            }
        ));
        // The Baseline applies only where no NetworkPolicy isolates: y has none.
        let e = check(&snap, "x/a", "y/a", 80);
        assert!(!e.allowed());
        assert_eq!(
            e.ingress.by(),
            "ClusterNetworkPolicy base (Baseline) rule deny-all"
        );
    }
}
