// SPDX-License-Identifier: Apache-2.0
//! ClusterNetworkPolicy (`policy.networking.k8s.io/v1beta1`, sig-network's network-policy-api):
//! the API types as served by the CRD, and the validated model `compile` works on.
//!
//! Semantics (the API's documentation): policies of the `Admin` tier are evaluated before
//! NetworkPolicies, those of the `Baseline` tier after them and only for pods no
//! NetworkPolicy isolates in that direction. Within a tier, lower `priority` comes first (ties
//! are broken by name here, which the API leaves undefined), and within a policy the rules
//! come in order; the first rule whose peers and protocols match decides: `Accept` allows the
//! traffic without consulting later tiers, `Deny` drops it, `Pass` skips the rest of the Admin
//! tier. Nothing matching in any tier means allowed (Kubernetes' default).
//!
//! Validation rejects what cannot be enforced exactly here: invalid selectors, CIDRs or ports,
//! and peers this implementation does not enforce (`domainNames`). A rejected policy is
//! reported (log, event, metric) and ignored; its rules allow and deny nothing.

use ipnet::{IpNet, Ipv4Net};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::{Deserialize, Serialize};

use crate::policy::{PortMatch, PortSpec, Protocol, Rejection};
use crate::selector::Selector;

/// API group of ClusterNetworkPolicy.
pub const GROUP: &str = "policy.networking.k8s.io";
/// The version served by the pinned CRD.
pub const VERSION: &str = "v1beta1";
/// Plural resource name.
pub const PLURAL: &str = "clusternetworkpolicies";
/// Kind.
pub const KIND: &str = "ClusterNetworkPolicy";

/// A ClusterNetworkPolicy as the API serves it (the fields this implementation reads).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterNetworkPolicy {
    /// Object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The policy.
    #[serde(default)]
    pub spec: ClusterNetworkPolicySpec,
}

/// `spec` of a ClusterNetworkPolicy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicySpec {
    /// `Admin` or `Baseline`.
    #[serde(default)]
    pub tier: String,
    /// Lower is evaluated first.
    #[serde(default)]
    pub priority: i32,
    /// The pods the policy applies to.
    #[serde(default)]
    pub subject: ApiSubject,
    /// Ingress rules, in order.
    #[serde(default)]
    pub ingress: Vec<ApiRule>,
    /// Egress rules, in order.
    #[serde(default)]
    pub egress: Vec<ApiRule>,
}

/// `subject`: exactly one of `namespaces` or `pods`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiSubject {
    /// Every pod of the namespaces this selects.
    pub namespaces: Option<LabelSelector>,
    /// The pods this selects.
    pub pods: Option<NamespacedPod>,
}

/// Pods by namespace and pod labels.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedPod {
    /// Namespaces.
    #[serde(default)]
    pub namespace_selector: LabelSelector,
    /// Pods within them.
    #[serde(default)]
    pub pod_selector: LabelSelector,
}

/// An ingress or egress rule (`from` for ingress, `to` for egress).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiRule {
    /// Optional name, used in logs.
    #[serde(default)]
    pub name: String,
    /// `Accept`, `Deny` or `Pass`.
    #[serde(default)]
    pub action: String,
    /// Ingress peers.
    #[serde(default)]
    pub from: Vec<ApiPeer>,
    /// Egress peers.
    #[serde(default)]
    pub to: Vec<ApiPeer>,
    /// Protocols and ports; empty means all.
    #[serde(default)]
    pub protocols: Vec<ApiProtocol>,
}

/// One peer: exactly one field is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiPeer {
    /// Every pod of these namespaces.
    pub namespaces: Option<LabelSelector>,
    /// These pods.
    pub pods: Option<NamespacedPod>,
    /// Nodes (egress only; experimental).
    pub nodes: Option<LabelSelector>,
    /// CIDRs (egress only).
    pub networks: Option<Vec<String>>,
    /// Domain names (egress only; not enforced here).
    pub domain_names: Option<Vec<String>>,
}

/// One entry of `protocols`: exactly one field is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiProtocol {
    /// TCP, optionally one port or range.
    pub tcp: Option<ApiProtocolPort>,
    /// UDP.
    pub udp: Option<ApiProtocolPort>,
    /// SCTP.
    pub sctp: Option<ApiProtocolPort>,
    /// A container port name resolved on the destination pod (TCP, UDP or SCTP as declared).
    pub destination_named_port: Option<String>,
}

/// `tcp`/`udp`/`sctp`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiProtocolPort {
    /// The destination port; absent means every port.
    pub destination_port: Option<ApiPort>,
}

/// A port number or a range.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiPort {
    /// One port.
    pub number: Option<i32>,
    /// A range.
    pub range: Option<ApiPortRange>,
}

/// An inclusive port range.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiPortRange {
    /// First port.
    pub start: i32,
    /// Last port.
    pub end: i32,
}

/// Admin or Baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    /// Before NetworkPolicies.
    Admin,
    /// After NetworkPolicies, for pods they do not isolate.
    Baseline,
}

impl Tier {
    /// The API spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::Admin => "Admin",
            Self::Baseline => "Baseline",
        }
    }
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Allowed; later tiers are not consulted.
    Accept,
    /// Dropped.
    Deny,
    /// The rest of the Admin tier is skipped (in the Baseline tier: allowed).
    Pass,
}

impl Action {
    /// The API spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::Accept => "Accept",
            Self::Deny => "Deny",
            Self::Pass => "Pass",
        }
    }
}

/// Pods chosen by namespace labels and pod labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodsOf {
    /// Namespaces.
    pub namespaces: Selector,
    /// Pods in them.
    pub pods: Selector,
}

/// A validated peer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClusterPeer {
    /// Pods.
    Pods(PodsOf),
    /// Nodes by label (their InternalIP addresses).
    Nodes(Selector),
    /// An IPv4 block.
    Network(Ipv4Net),
}

/// A validated rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClusterRule {
    /// Name for logs (`#<index>` when unnamed).
    pub name: String,
    /// What it does.
    pub action: Action,
    /// Peers; empty means the rule can never match (an IPv6-only `networks` list).
    pub peers: Vec<ClusterPeer>,
    /// Ports; empty means all.
    pub ports: Vec<PortSpec>,
}

/// A validated ClusterNetworkPolicy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClusterPolicy {
    /// Name (cluster-scoped).
    pub name: String,
    /// Tier.
    pub tier: Tier,
    /// Priority within the tier.
    pub priority: i32,
    /// Its pods.
    pub subject: PodsOf,
    /// Ingress rules in order.
    pub ingress: Vec<ClusterRule>,
    /// Egress rules in order.
    pub egress: Vec<ClusterRule>,
}

impl ClusterPolicy {
    /// Validates `cnp`; the rejection says why (a rejected ClusterNetworkPolicy is ignored).
    pub fn parse(cnp: &ClusterNetworkPolicy) -> Result<Self, Rejection> {
        let name = cnp.metadata.name.clone().unwrap_or_default();
        let reject = |reason: String| Rejection {
            policy: format!("{KIND}/{name}"),
            reason,
            isolate: None,
        };
        let spec = &cnp.spec;
        let tier = match spec.tier.as_str() {
            "Admin" => Tier::Admin,
            "Baseline" => Tier::Baseline,
            other => return Err(reject(format!("unknown tier {other:?}"))),
        };
        if !(0..=1000).contains(&spec.priority) {
            return Err(reject(format!(
                "priority {} is outside 0..=1000",
                spec.priority
            )));
        }
        let subject = match (&spec.subject.namespaces, &spec.subject.pods) {
            (Some(ns), None) => PodsOf {
                namespaces: Selector::parse(ns).map_err(|e| reject(format!("subject: {e}")))?,
                pods: Selector::everything(),
            },
            (None, Some(p)) => pods_of(p).map_err(|e| reject(format!("subject: {e}")))?,
            _ => {
                return Err(reject(
                    "subject needs exactly one of namespaces or pods".into(),
                ))
            }
        };
        let rules = |list: &[ApiRule], ingress: bool| -> Result<Vec<ClusterRule>, Rejection> {
            let dir = if ingress { "ingress" } else { "egress" };
            list.iter()
                .enumerate()
                .map(|(i, r)| {
                    parse_rule(r, i, ingress).map_err(|e| reject(format!("{dir} rule {i}: {e}")))
                })
                .collect()
        };
        Ok(Self {
            name: name.clone(),
            tier,
            priority: spec.priority,
            subject,
            ingress: rules(&spec.ingress, true)?,
            egress: rules(&spec.egress, false)?,
        })
    }

    /// Evaluation order: tier, priority, then name.
    pub fn order(&self) -> (Tier, i32, &str) {
        (self.tier, self.priority, &self.name)
    }
}

/// Validates a `NamespacedPod`.
fn pods_of(p: &NamespacedPod) -> Result<PodsOf, String> {
    Ok(PodsOf {
        namespaces: Selector::parse(&p.namespace_selector)
            .map_err(|e| format!("namespaceSelector: {e}"))?,
        pods: Selector::parse(&p.pod_selector).map_err(|e| format!("podSelector: {e}"))?,
    })
}

/// Validates one rule.
fn parse_rule(rule: &ApiRule, index: usize, ingress: bool) -> Result<ClusterRule, String> {
    let action = match rule.action.as_str() {
        "Accept" => Action::Accept,
        "Deny" => Action::Deny,
        "Pass" => Action::Pass,
        other => return Err(format!("unknown action {other:?}")),
    };
    let list = if ingress { &rule.from } else { &rule.to };
    if list.is_empty() {
        return Err(format!(
            "{} needs at least one peer",
            if ingress { "from" } else { "to" }
        ));
    }
    let mut peers = Vec::new();
    for (i, peer) in list.iter().enumerate() {
        let set = usize::from(peer.namespaces.is_some())
            + usize::from(peer.pods.is_some())
            + usize::from(peer.nodes.is_some())
            + usize::from(peer.networks.is_some())
            + usize::from(peer.domain_names.is_some());
        if set != 1 {
            return Err(format!("peer {i} needs exactly one field"));
        }
        if ingress && (peer.nodes.is_some() || peer.networks.is_some()) {
            return Err(format!("peer {i}: nodes and networks are egress peers"));
        }
        if let Some(ns) = &peer.namespaces {
            peers.push(ClusterPeer::Pods(PodsOf {
                namespaces: Selector::parse(ns)
                    .map_err(|e| format!("peer {i}: namespaces: {e}"))?,
                pods: Selector::everything(),
            }));
        } else if let Some(p) = &peer.pods {
            peers.push(ClusterPeer::Pods(
                pods_of(p).map_err(|e| format!("peer {i}: pods: {e}"))?,
            ));
        } else if let Some(nodes) = &peer.nodes {
            peers.push(ClusterPeer::Nodes(
                Selector::parse(nodes).map_err(|e| format!("peer {i}: nodes: {e}"))?,
            ));
        } else if let Some(networks) = &peer.networks {
            for cidr in networks {
                match cidr.parse::<IpNet>() {
                    Ok(IpNet::V4(net)) => peers.push(ClusterPeer::Network(net.trunc())),
                    // Pods have IPv4 addresses only; an IPv6 network matches nothing.
                    Ok(IpNet::V6(_)) => {}
                    Err(_) => {
                        return Err(format!("peer {i}: invalid CIDR {cidr:?}"));
                    }
                }
            }
        } else {
            return Err(format!("peer {i}: domainNames are not supported"));
        }
    }
    let mut ports = Vec::new();
    for (i, p) in rule.protocols.iter().enumerate() {
        ports.push(parse_protocol(p).map_err(|e| format!("protocol {i}: {e}"))?);
    }
    let name = if rule.name.is_empty() {
        format!("#{index}")
    } else {
        rule.name.clone()
    };
    Ok(ClusterRule {
        name,
        action,
        peers,
        ports,
    })
}

/// Validates one `protocols` entry.
fn parse_protocol(p: &ApiProtocol) -> Result<PortSpec, String> {
    let set = usize::from(p.tcp.is_some())
        + usize::from(p.udp.is_some())
        + usize::from(p.sctp.is_some())
        + usize::from(p.destination_named_port.is_some());
    if set != 1 {
        return Err("needs exactly one of tcp, udp, sctp, destinationNamedPort".into());
    }
    if let Some(name) = &p.destination_named_port {
        if name.is_empty() || name.len() > 15 {
            return Err(format!("invalid port name {name:?}"));
        }
        // The protocol is the container port's; `protocol` is unused with `NamedAny`.
        return Ok(PortSpec {
            protocol: Protocol::Tcp,
            port: PortMatch::NamedAny(name.clone()),
        });
    }
    let (protocol, port) = match (&p.tcp, &p.udp, &p.sctp) {
        (Some(t), _, _) => (Protocol::Tcp, t),
        (_, Some(u), _) => (Protocol::Udp, u),
        (_, _, Some(s)) => (Protocol::Sctp, s),
        _ => return Err("needs a protocol".into()),
    };
    let port = match &port.destination_port {
        None => PortMatch::Any,
        Some(ApiPort {
            number: Some(n),
            range: None,
        }) => {
            let n = number(*n)?;
            PortMatch::Range(n, n)
        }
        Some(ApiPort {
            number: None,
            range: Some(r),
        }) => {
            let (a, b) = (number(r.start)?, number(r.end)?);
            if b < a {
                return Err(format!("range end {b} is below its start {a}"));
            }
            PortMatch::Range(a, b)
        }
        Some(_) => return Err("destinationPort needs exactly one of number or range".into()),
    };
    Ok(PortSpec { protocol, port })
}

/// A port number in 1..=65535.
fn number(n: i32) -> Result<u16, String> {
    u16::try_from(n)
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| format!("port {n} is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cnp(spec: serde_json::Value) -> ClusterNetworkPolicy {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).expect("cnp")
    }

    #[test]
    fn a_full_policy_parses() {
        let p = ClusterPolicy::parse(&cnp(json!({
            "tier": "Admin", "priority": 10,
            "subject": {"namespaces": {"matchLabels": {"team": "a"}}},
            "ingress": [{"name": "deny-b", "action": "Deny",
                         "from": [{"namespaces": {"matchLabels": {"team": "b"}}}],
                         "protocols": [{"tcp": {"destinationPort": {"number": 80}}},
                                       {"udp": {"destinationPort": {"range": {"start": 53, "end": 54}}}},
                                       {"destinationNamedPort": "web"}]}],
            "egress": [{"action": "Pass", "to": [{"networks": ["10.0.0.0/8", "fd00::/8"]}]}]
        })))
        .expect("valid");
        assert_eq!(p.tier, Tier::Admin);
        assert_eq!(p.ingress[0].action, Action::Deny);
        assert_eq!(p.ingress[0].ports.len(), 3);
        assert_eq!(
            p.ingress[0].ports[1],
            PortSpec {
                protocol: Protocol::Udp,
                port: PortMatch::Range(53, 54)
            }
        );
        assert_eq!(p.egress[0].name, "#0");
        assert_eq!(
            p.egress[0].peers,
            vec![ClusterPeer::Network("10.0.0.0/8".parse().expect("net"))],
            "the IPv6 network matches no pod and is dropped"
        );
    }

    #[test]
    fn invalid_policies_are_rejected_with_a_reason() {
        let cases = [
            (
                json!({"tier": "Middle", "priority": 1, "subject": {"namespaces": {}}}),
                "tier",
            ),
            (
                json!({"tier": "Admin", "priority": 5000, "subject": {"namespaces": {}}}),
                "priority",
            ),
            (
                json!({"tier": "Admin", "priority": 1, "subject": {}}),
                "subject",
            ),
            (
                json!({"tier": "Admin", "priority": 1, "subject": {"namespaces": {}},
                       "ingress": [{"action": "Maybe", "from": [{"namespaces": {}}]}]}),
                "action",
            ),
            (
                json!({"tier": "Admin", "priority": 1, "subject": {"namespaces": {}},
                       "egress": [{"action": "Deny", "to": [{"domainNames": ["example.com"]}]}]}),
                "domainNames",
            ),
            (
                json!({"tier": "Admin", "priority": 1, "subject": {"namespaces": {}},
                       "egress": [{"action": "Deny", "to": [{"networks": ["10.0.0.300/8"]}]}]}),
                "CIDR",
            ),
            (
                json!({"tier": "Admin", "priority": 1, "subject": {"namespaces": {}},
                       "ingress": [{"action": "Deny", "from": [{"namespaces": {}}],
                                    "protocols": [{"tcp": {"destinationPort": {"number": 70000}}}]}]}),
                "out of range",
            ),
        ];
        for (spec, want) in cases {
            let err = ClusterPolicy::parse(&cnp(spec.clone())).expect_err("rejected");
            assert!(err.reason.contains(want), "{spec}: {}", err.reason);
            assert_eq!(err.policy, "ClusterNetworkPolicy/p");
        }
    }
}
