// SPDX-License-Identifier: Apache-2.0
//! The typed model `compile` works on: pods, namespaces and NetworkPolicies as read from the
//! API, validated once.
//!
//! Parsing a `networking.k8s.io/v1` NetworkPolicy applies the API's defaulting (policyTypes,
//! TCP as the default protocol) and rejects what cannot be enforced exactly (bad selectors,
//! unknown protocols or policy types, bad CIDRs, `endPort` with a named port). A rejected
//! policy is reported by the caller; it never stops other policies from being enforced.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::selector::Selector;

/// Most nftables rules one policy may compile to (peers × port groups, summed over its
/// rules). Beyond it the policy is rejected rather than compiled: one object must not be able
/// to stall the apply of everything else.
pub const MAX_RULES_PER_POLICY: usize = 1000;
/// Most `except` blocks of one `ipBlock` (each is a match in the rule).
pub const MAX_EXCEPT: usize = 256;

/// A transport protocol NetworkPolicy can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP (the default).
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// Parses the API spelling (`TCP`, `UDP`, `SCTP`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }

    /// The nftables name (`tcp`, `udp`, `sctp`).
    pub fn nft_name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }
}

/// A running pod with an IPv4 address, as policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The pod's IPv4 address.
    pub ip: Ipv4Addr,
    /// Node the pod is scheduled on.
    pub node: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Named container ports: (name, protocol, number).
    pub ports: Vec<(String, Protocol, u16)>,
}

impl PodInfo {
    /// The pod as policy sees it, or `None` when policy does not apply to it: finished pods,
    /// host-network pods and pods without an IPv4 address yet.
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let spec = pod.spec.as_ref()?;
        if spec.host_network == Some(true) {
            return None;
        }
        let status = pod.status.as_ref()?;
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
            return None;
        }
        let ip = status
            .pod_ips
            .iter()
            .flatten()
            .map(|a| a.ip.as_str())
            .chain(status.pod_ip.as_deref())
            .find_map(|s| s.parse::<Ipv4Addr>().ok())?;
        let ports = spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                let name = p.name.clone()?;
                let proto = Protocol::parse(p.protocol.as_deref().unwrap_or("TCP"))?;
                let number = u16::try_from(p.container_port).ok()?;
                Some((name, proto, number))
            })
            .collect();
        Some(Self {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            ip,
            node: spec.node_name.clone().unwrap_or_default(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ports,
        })
    }

    /// The container port named `name` for `proto`, if the pod has one.
    pub fn named_port(&self, name: &str, proto: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|(n, p, _)| n == name && *p == proto)
            .map(|(_, _, number)| *number)
    }
}

/// A namespace's name and labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceInfo {
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

impl NamespaceInfo {
    /// The namespace as policy sees it.
    pub fn from_namespace(ns: &Namespace) -> Self {
        Self {
            name: ns.metadata.name.clone().unwrap_or_default(),
            labels: ns.metadata.labels.clone().unwrap_or_default(),
        }
    }
}

/// A port as a policy names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PortMatch {
    /// Any port of the protocol.
    Any,
    /// A range of port numbers (`port` to `endPort`, or one port).
    Range(u16, u16),
    /// A container port name with the entry's protocol, resolved per destination pod.
    Named(String),
    /// A container port name with whatever protocol the container port declares
    /// (ClusterNetworkPolicy's `destinationNamedPort`).
    NamedAny(String),
}

/// One entry of a rule's `ports`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PortSpec {
    /// Protocol (TCP when the policy does not say).
    pub protocol: Protocol,
    /// Which ports.
    pub port: PortMatch,
}

/// One entry of a rule's `from` or `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// Pods chosen by label. `namespaces: None` means the policy's own namespace.
    Pods {
        /// Namespace selector, if the peer has one.
        namespaces: Option<Selector>,
        /// Pod selector (everything when the peer has only a namespace selector).
        pods: Selector,
    },
    /// An IPv4 block with exceptions.
    Block {
        /// The block.
        cidr: Ipv4Net,
        /// Excluded sub-blocks.
        except: Vec<Ipv4Net>,
    },
}

/// One ingress or egress rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `None`: any peer (absent or empty `from`/`to`).
    pub peers: Option<Vec<Peer>>,
    /// Empty: any port and protocol.
    pub ports: Vec<PortSpec>,
}

/// A validated NetworkPolicy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The pods it applies to, within its namespace.
    pub target: Selector,
    /// Ingress rules if the policy isolates ingress (an empty list denies all ingress).
    pub ingress: Option<Vec<Rule>>,
    /// Egress rules if the policy isolates egress.
    pub egress: Option<Vec<Rule>>,
}

/// Why a policy was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// `namespace/name`.
    pub policy: String,
    /// What is wrong with it.
    pub reason: String,
    /// The target selector when that part is valid: its pods stay isolated (fail closed)
    /// in the policy's directions, with no rule allowing anything.
    pub isolate: Option<(Selector, bool, bool)>,
}

impl Policy {
    /// Validates `np`. On error, the rejection says why and whether its pods can still be
    /// isolated.
    pub fn parse(np: &NetworkPolicy) -> Result<Self, Rejection> {
        let namespace = np.metadata.namespace.clone().unwrap_or_default();
        let name = np.metadata.name.clone().unwrap_or_default();
        let key = format!("{namespace}/{name}");
        let spec = np.spec.clone().unwrap_or_default();
        let reject = |reason: String, isolate| Rejection {
            policy: key.clone(),
            reason,
            isolate,
        };
        let target = Selector::parse(&spec.pod_selector.clone().unwrap_or_default())
            .map_err(|e| reject(format!("podSelector: {e}"), None))?;
        let (mut ingress_on, mut egress_on) = (false, false);
        match spec.policy_types.as_deref() {
            Some(types) if !types.is_empty() => {
                for t in types {
                    match t.as_str() {
                        "Ingress" => ingress_on = true,
                        "Egress" => egress_on = true,
                        other => {
                            return Err(reject(format!("unknown policy type {other:?}"), None))
                        }
                    }
                }
            }
            // API defaulting: always Ingress, Egress when there are egress rules.
            _ => {
                ingress_on = true;
                egress_on = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
            }
        }
        let isolate = Some((target.clone(), ingress_on, egress_on));
        let rules = |list: &Option<Vec<NetworkPolicyRule>>, ingress: bool| {
            list.iter()
                .flatten()
                .enumerate()
                .map(|(i, r)| {
                    parse_rule(r, ingress)
                        .map_err(|e| format!("{} rule {i}: {e}", direction(ingress)))
                })
                .collect::<Result<Vec<_>, String>>()
        };
        let ingress = if ingress_on {
            let list: Option<Vec<NetworkPolicyRule>> = spec.ingress.as_ref().map(|v| {
                v.iter()
                    .map(|r| NetworkPolicyRule {
                        peers: r.from.clone(),
                        ports: r.ports.clone(),
                    })
                    .collect()
            });
            Some(rules(&list, true).map_err(|e| reject(e, isolate.clone()))?)
        } else {
            None
        };
        let egress = if egress_on {
            let list: Option<Vec<NetworkPolicyRule>> = spec.egress.as_ref().map(|v| {
                v.iter()
                    .map(|r| NetworkPolicyRule {
                        peers: r.to.clone(),
                        ports: r.ports.clone(),
                    })
                    .collect()
            });
            Some(rules(&list, false).map_err(|e| reject(e, isolate.clone()))?)
        } else {
            None
        };
        let policy = Self {
            namespace,
            name,
            target,
            ingress,
            egress,
        };
        let rules = policy.rule_count();
        if rules > MAX_RULES_PER_POLICY {
            return Err(reject(
                format!(
                    "compiles to {rules} rules (peers × port groups), more than the limit of {MAX_RULES_PER_POLICY}: split it or merge its peers"
                ),
                isolate,
            ));
        }
        Ok(policy)
    }

    /// How many nftables rules the policy compiles to.
    pub fn rule_count(&self) -> usize {
        self.ingress
            .iter()
            .chain(&self.egress)
            .flatten()
            .map(|r| r.peers.as_ref().map_or(1, Vec::len) * port_groups(&r.ports))
            .sum()
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// How many rules one peer of a rule with `ports` becomes: one for all numbered ports (a
/// single match, or a set when there are several), one more for named ports, and one when
/// the rule has no ports.
pub fn port_groups(ports: &[PortSpec]) -> usize {
    if ports.is_empty() {
        return 1;
    }
    let numbered = ports
        .iter()
        .any(|p| matches!(p.port, PortMatch::Any | PortMatch::Range(..)));
    let named = ports
        .iter()
        .any(|p| matches!(p.port, PortMatch::Named(_) | PortMatch::NamedAny(_)));
    usize::from(numbered) + usize::from(named)
}

/// The direction's name for messages.
fn direction(ingress: bool) -> &'static str {
    if ingress {
        "ingress"
    } else {
        "egress"
    }
}

/// Ingress and egress rules in one shape (`from` or `to` as `peers`).
struct NetworkPolicyRule {
    /// `from` or `to`.
    peers: Option<Vec<NetworkPolicyPeer>>,
    /// `ports`.
    ports: Option<Vec<NetworkPolicyPort>>,
}

/// Validates one rule.
fn parse_rule(rule: &NetworkPolicyRule, _ingress: bool) -> Result<Rule, String> {
    let peers = match rule.peers.as_deref() {
        None | Some([]) => None,
        Some(list) => Some(
            list.iter()
                .enumerate()
                .filter_map(|(i, p)| {
                    parse_peer(p)
                        .map_err(|e| format!("peer {i}: {e}"))
                        .transpose()
                })
                .collect::<Result<Vec<_>, String>>()?,
        ),
    };
    let ports = rule
        .ports
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, p)| parse_port(p).map_err(|e| format!("port {i}: {e}")))
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Rule { peers, ports })
}

/// Validates one peer; `None` for an IPv6 block, which can never match an IPv4 pod.
fn parse_peer(peer: &NetworkPolicyPeer) -> Result<Option<Peer>, String> {
    if let Some(block) = &peer.ip_block {
        if peer.pod_selector.is_some() || peer.namespace_selector.is_some() {
            return Err("ipBlock cannot be combined with selectors".into());
        }
        let cidr: IpNet = block
            .cidr
            .parse()
            .map_err(|_| format!("invalid CIDR {:?}", block.cidr))?;
        let IpNet::V4(cidr) = cidr else {
            return Ok(None);
        };
        let mut except = Vec::new();
        let excepts = block.except.as_deref().unwrap_or_default();
        if excepts.len() > MAX_EXCEPT {
            return Err(format!(
                "ipBlock has {} except entries, more than the limit of {MAX_EXCEPT}",
                excepts.len()
            ));
        }
        for e in excepts {
            match e.parse::<IpNet>() {
                Ok(IpNet::V4(net)) => except.push(net.trunc()),
                Ok(IpNet::V6(_)) => {}
                Err(_) => return Err(format!("invalid except CIDR {e:?}")),
            }
        }
        return Ok(Some(Peer::Block {
            cidr: cidr.trunc(),
            except,
        }));
    }
    let namespaces = peer
        .namespace_selector
        .as_ref()
        .map(Selector::parse)
        .transpose()
        .map_err(|e| format!("namespaceSelector: {e}"))?;
    let pods = match &peer.pod_selector {
        Some(s) => Selector::parse(s).map_err(|e| format!("podSelector: {e}"))?,
        None if namespaces.is_some() => Selector::everything(),
        None => return Err("a peer needs a selector or an ipBlock".into()),
    };
    Ok(Some(Peer::Pods { namespaces, pods }))
}

/// Validates one port entry.
fn parse_port(port: &NetworkPolicyPort) -> Result<PortSpec, String> {
    let name = port.protocol.as_deref().unwrap_or("TCP");
    let protocol = Protocol::parse(name).ok_or_else(|| format!("unknown protocol {name:?}"))?;
    let port = match (&port.port, port.end_port) {
        (None, None) => PortMatch::Any,
        (None, Some(_)) => return Err("endPort without port".into()),
        (Some(IntOrString::Int(n)), end) => {
            let start = port_number(*n)?;
            let end = end.map(port_number).transpose()?.unwrap_or(start);
            if end < start {
                return Err(format!("endPort {end} is below port {start}"));
            }
            PortMatch::Range(start, end)
        }
        (Some(IntOrString::String(s)), None) => match s.parse::<i32>() {
            Ok(n) => {
                let n = port_number(n)?;
                PortMatch::Range(n, n)
            }
            Err(_) if !s.is_empty() && s.len() <= 15 => PortMatch::Named(s.clone()),
            Err(_) => return Err(format!("invalid port name {s:?}")),
        },
        (Some(IntOrString::String(_)), Some(_)) => {
            return Err("endPort cannot be used with a named port".into())
        }
    };
    Ok(PortSpec { protocol, port })
}

/// A port number in 1..=65535.
fn port_number(n: i32) -> Result<u16, String> {
    u16::try_from(n)
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| format!("port {n} is out of range"))
}
