// SPDX-License-Identifier: Apache-2.0
//! Named sets: what each one holds as a function of one pod (or node), and its name.
//!
//! A set is identified by its definition ([`SetDef`]); every rule needing the same contents
//! shares one set, because nftables looks sets up by name in a list and loading a ruleset
//! costs rules × sets. Names are derived from the definition (a hash), so a ruleset rebuilt
//! from scratch names its sets exactly as one that was changed step by step: the
//! incremental state can be compared with a fresh compile text for text.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::policy::{PodInfo, PortMatch, PortSpec, Protocol};
use crate::selector::Selector;

/// What a pod peer selects.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PeerKey {
    /// Namespace selector; `None` with `own` set means the policy's own namespace.
    pub(crate) namespaces: Option<Selector>,
    /// Pod selector.
    pub(crate) pods: Selector,
    /// The policy's namespace when there is no namespace selector.
    pub(crate) own: Option<String>,
    /// Only pods on this node (the subjects of a policy, which this node enforces).
    pub(crate) local: bool,
}

impl PeerKey {
    /// Whether `pod` (on this node when `local`), in a namespace labelled `ns_labels`
    /// (`None`: no such namespace), is selected.
    pub(crate) fn matches(
        &self,
        pod: &PodInfo,
        local: bool,
        ns_labels: Option<&BTreeMap<String, String>>,
    ) -> bool {
        if self.local && !local {
            return false;
        }
        let ns_ok = match (&self.own, &self.namespaces) {
            (Some(own), _) => pod.namespace == *own,
            (None, Some(sel)) => ns_labels.is_some_and(|l| sel.matches(l)),
            (None, None) => false,
        };
        ns_ok && self.pods.matches(&pod.labels)
    }
}

/// Where named ports are resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Dest {
    /// On this node's pods (ingress: the destination is a local pod).
    Local,
    /// On every pod (egress: the rule's peer match restricts the destination).
    All,
}

/// One entry of a named-port set definition: the name, and the protocol it must have
/// (`None`: whatever the container port declares).
pub(crate) type NamedPort = (String, Option<Protocol>);

/// What a named set holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum SetDef {
    /// Addresses of the pods a peer selects.
    Peer(PeerKey),
    /// `address . protocol . port` of named container ports on the destinations.
    Named {
        /// Which pods.
        dest: Dest,
        /// The names.
        ports: Vec<NamedPort>,
    },
    /// `protocol . port-range` of a rule's numbered ports (static, interval set).
    Ports(Vec<PortSpec>),
    /// InternalIP addresses of the nodes a selector picks.
    Nodes(Selector),
    /// Every local pod (bridge table).
    LocalPods,
}

/// The element type of a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SetKind {
    /// `ipv4_addr`.
    Addr,
    /// `ipv4_addr . inet_proto . inet_service`.
    Triple,
    /// `inet_proto . inet_service` with intervals.
    Ports,
}

impl SetKind {
    /// The nft declaration body.
    pub(crate) fn declaration(self) -> &'static str {
        match self {
            Self::Addr => "type ipv4_addr;",
            Self::Triple => "type ipv4_addr . inet_proto . inet_service;",
            Self::Ports => "type inet_proto . inet_service; flags interval;",
        }
    }
}

impl SetDef {
    /// Element type.
    pub(crate) fn kind(&self) -> SetKind {
        match self {
            Self::Named { .. } => SetKind::Triple,
            Self::Ports(_) => SetKind::Ports,
            Self::Peer(_) | Self::Nodes(_) | Self::LocalPods => SetKind::Addr,
        }
    }

    /// Whether the bridge table holds it.
    pub(crate) fn bridge(&self) -> bool {
        matches!(self, Self::LocalPods)
    }

    /// The namespace whose pods alone can be members, if the contents depend only on that
    /// (peers without a namespace selector); such sets are skipped for other pods.
    pub(crate) fn namespace(&self) -> Option<&str> {
        match self {
            Self::Peer(key) => key.own.as_deref(),
            _ => None,
        }
    }

    /// Whether pods can be members at all.
    pub(crate) fn holds_pods(&self) -> bool {
        matches!(self, Self::Peer(_) | Self::Named { .. } | Self::LocalPods)
    }

    /// A stable name: a short kind followed by a hash of the definition. `LocalPods` keeps
    /// its well-known name.
    pub(crate) fn name(&self) -> String {
        let kind = match self {
            Self::Peer(k) if k.local => "subject",
            Self::Peer(_) => "peer",
            Self::Named { .. } => "named",
            Self::Ports(_) => "ports",
            Self::Nodes(_) => "nodes",
            Self::LocalPods => return "local-pods".into(),
        };
        format!("{kind}-{:016x}", fnv1a(format!("{self:?}").as_bytes()))
    }

    /// What `pod` (local when `local`) puts into this set.
    pub(crate) fn pod_elems(
        &self,
        pod: &PodInfo,
        local: bool,
        ns_labels: Option<&BTreeMap<String, String>>,
        out: &mut Vec<Elem>,
    ) {
        match self {
            Self::Peer(key) => {
                if key.matches(pod, local, ns_labels) {
                    out.push(Elem::Addr(pod.ip));
                }
            }
            Self::Named { dest, ports } => {
                if *dest == Dest::Local && !local {
                    return;
                }
                for (name, proto) in ports {
                    for (n, p, number) in &pod.ports {
                        if n == name && proto.is_none_or(|want| want == *p) {
                            out.push(Elem::Port(pod.ip, *p, *number));
                        }
                    }
                }
            }
            Self::LocalPods => {
                if local {
                    out.push(Elem::Addr(pod.ip));
                }
            }
            Self::Ports(_) | Self::Nodes(_) => {}
        }
    }

    /// The static contents of a `Ports` set.
    pub(crate) fn static_elems(&self) -> Vec<Elem> {
        let Self::Ports(ports) = self else {
            return Vec::new();
        };
        ports
            .iter()
            .filter_map(|p| match p.port {
                PortMatch::Any => Some(Elem::Range(p.protocol, 0, u16::MAX)),
                PortMatch::Range(a, b) => Some(Elem::Range(p.protocol, a, b)),
                PortMatch::Named(_) | PortMatch::NamedAny(_) => None,
            })
            .collect()
    }
}

/// One element of a named set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Elem {
    /// An address.
    Addr(Ipv4Addr),
    /// A resolved named port.
    Port(Ipv4Addr, Protocol, u16),
    /// A protocol and port range.
    Range(Protocol, u16, u16),
}

impl std::fmt::Display for Elem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Addr(ip) => write!(f, "{ip}"),
            Self::Port(ip, proto, port) => write!(f, "{ip} . {} . {port}", proto.nft_name()),
            Self::Range(proto, a, b) if a == b => write!(f, "{} . {a}", proto.nft_name()),
            Self::Range(proto, a, b) => write!(f, "{} . {a}-{b}", proto.nft_name()),
        }
    }
}

/// FNV-1a, 64 bits: stable across runs and builds.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A chain, counter or set name built from parts joined by `/`, or, when that would not fit
/// nftables' names, a prefix of it followed by a hash of the whole.
pub(crate) fn object_name(parts: &[&str]) -> String {
    const MAX: usize = 200;
    let full = parts.join("/");
    if full.len() <= MAX {
        return full;
    }
    let mut cut = MAX - 17;
    while !full.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = full[..cut].to_owned();
    let _ = write!(out, "~{:016x}", fnv1a(full.as_bytes()));
    out
}

/// `text` cut to at most `max` bytes on a character boundary, without `"` (nft strings
/// cannot escape it).
pub(crate) fn cut(text: &str, max: usize) -> String {
    let clean: String = text.chars().filter(|c| *c != '"' && *c != '\\').collect();
    let mut end = clean.len().min(max);
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    clean[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_and_bounded() {
        let def = SetDef::Peer(PeerKey {
            namespaces: None,
            pods: Selector::everything(),
            own: Some("x".into()),
            local: false,
        });
        assert_eq!(def.name(), def.clone().name());
        assert!(def.name().starts_with("peer-"));
        let long = "n".repeat(300);
        let name = object_name(&["ingress-denied", &long, "pod"]);
        assert!(name.len() <= 200, "{}", name.len());
        assert_ne!(name, object_name(&["ingress-denied", &long, "other"]));
        assert_eq!(cut("a\"b\\c", 10), "abc");
        assert_eq!(cut("ééé", 3), "é");
    }
}
