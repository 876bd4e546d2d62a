// SPDX-License-Identifier: Apache-2.0
//! `compile`: the pure function from a snapshot of API objects to the node's whole nftables
//! ruleset (STYLE §2, compute first, apply second).
//!
//! Layout (two tables, both named `weave-npc`; no other table is ever named):
//!
//! - `inet weave-npc`, chain `forward` (hook forward): sees routed traffic and, through
//!   `br_netfilter`, traffic bridged between ports of the `weave` bridge, with conntrack.
//!   Established and related packets are accepted first, so replies of allowed connections
//!   always pass. New flows from a local pod isolated for egress jump to `egress`, whose
//!   allow rules `return` so the same packet still meets the destination's ingress check;
//!   new flows to a local pod isolated for ingress jump to `ingress`, whose allow rules
//!   `accept`. Both chains end by jumping to `ingress-denied`/`egress-denied`, where each
//!   local pod has a rule with its own counter and a rate-limited nflog entry naming it, and
//!   then `drop`. Traffic from the node itself to its pods leaves through the output hook
//!   and is never filtered (kubelet probes).
//! - `bridge weave-npc`, chain `forward`: IPv4 frames to or from a pod port whose address is
//!   not a known local pod are dropped. A pod the controller has not seen yet is therefore
//!   unreachable (never open by accident) and becomes reachable as soon as its address is
//!   programmed.
//!
//! Everything that changes with pod and namespace churn lives in named sets: per policy its
//! local target pods, per rule peer the peer pods, per rule with named ports the
//! `address . protocol . port` triples resolved on each destination pod. [`Compiled`] keeps the
//! structure (tables, chains, rules, set declarations) apart from set contents, so that an
//! update whose structure is unchanged is sent as set element changes only.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::rc::Rc;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use nftables::expr::{Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix};
use nftables::schema::{
    Chain, Counter, Element, FlushObject, NfCmd, NfListObject, NfObject, Nftables, Rule, Set,
    SetType, SetTypeValue, Table,
};
use nftables::stmt::{JumpTarget, Log, Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use crate::policy::{
    NamespaceInfo, Peer, PodInfo, Policy, PortMatch, PortSpec, Rejection, Rule as PolicyRule,
};
use crate::selector::Selector;

/// Name of both our tables.
pub const TABLE: &str = "weave-npc";
/// Set of local pods isolated for ingress.
const INGRESS_ISOLATED: &str = "ingress-isolated";
/// Set of local pods isolated for egress.
const EGRESS_ISOLATED: &str = "egress-isolated";
/// Set (bridge table) of every known local pod address.
const LOCAL_PODS: &str = "local-pods";

/// What compile needs to know about the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// This node's name (`spec.nodeName` of local pods).
    pub node_name: String,
    /// Prefix of the host ends of pod veths on the bridge (`vethwepl`).
    pub pod_port_prefix: String,
    /// nflog group of drop log entries.
    pub log_group: u16,
    /// Log entries per second per pod and direction.
    pub log_rate: u32,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            node_name: String::new(),
            pod_port_prefix: "vethwepl".into(),
            log_group: 86,
            log_rate: 10,
        }
    }
}

/// The API objects a ruleset is compiled from.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// All pods of the cluster.
    pub pods: Vec<Pod>,
    /// All namespaces.
    pub namespaces: Vec<Namespace>,
    /// All `networking.k8s.io/v1` NetworkPolicies.
    pub policies: Vec<NetworkPolicy>,
}

/// A set's identity: family and name.
type SetKey = (Family, String);

/// The two families we use (`NfFamily` is not `Ord`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Family {
    /// `inet`.
    Inet,
    /// `bridge`.
    Bridge,
}

impl Family {
    /// The nftables family.
    fn nf(self) -> NfFamily {
        match self {
            Self::Inet => NfFamily::INet,
            Self::Bridge => NfFamily::Bridge,
        }
    }
}

/// A local pod's drop counter, for metrics.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DropCounter {
    /// Counter name in the inet table.
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// `ingress` or `egress`.
    pub direction: &'static str,
}

/// A local pod: namespace, name, address.
type PodTailKey = (String, String, Ipv4Addr);

/// A compiled ruleset: structure plus set contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    /// Tables, set declarations (empty), chains and rules, in order.
    structure: Vec<NfListObject<'static>>,
    /// Per local pod, its drop counters and the rules of the `*-denied` chains that count
    /// and log its drops. They are independent of each other, so a new local pod's can be
    /// appended without touching anything else.
    pod_tails: BTreeMap<PodTailKey, Vec<NfListObject<'static>>>,
    /// Elements of every named set.
    sets: BTreeMap<SetKey, Vec<Expression<'static>>>,
    /// Policies that were rejected, with the reason.
    pub rejected: Vec<Rejection>,
    /// Drop counters of local pods.
    pub counters: Vec<DropCounter>,
}

/// Builds the ruleset for `node` from `snapshot`.
pub fn compile(snapshot: &Snapshot, node: &NodeConfig) -> Compiled {
    let mut pods: Vec<PodInfo> = snapshot.pods.iter().filter_map(PodInfo::from_pod).collect();
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let namespaces: BTreeMap<String, NamespaceInfo> = snapshot
        .namespaces
        .iter()
        .map(NamespaceInfo::from_namespace)
        .map(|n| (n.name.clone(), n))
        .collect();
    let mut rejected = Vec::new();
    let mut policies = Vec::new();
    for np in &snapshot.policies {
        match Policy::parse(np) {
            Ok(p) => policies.push(p),
            Err(r) => {
                if let Some((target, ingress, egress)) = &r.isolate {
                    // Fail closed: the policy's pods stay isolated, with nothing allowed.
                    let (namespace, name) = r.policy.split_once('/').unwrap_or_default();
                    policies.push(Policy {
                        namespace: namespace.into(),
                        name: name.into(),
                        target: target.clone(),
                        ingress: ingress.then(Vec::new),
                        egress: egress.then(Vec::new),
                    });
                }
                rejected.push(r);
            }
        }
    }
    policies.sort_by_key(Policy::key);
    rejected.sort_by(|a, b| a.policy.cmp(&b.policy));
    let mut b = Builder::new(node);
    for (k, p) in pods.iter().enumerate() {
        b.pods_by_ns.entry(p.namespace.clone()).or_default().push(k);
    }
    let local: Vec<&PodInfo> = pods.iter().filter(|p| p.node == node.node_name).collect();
    b.base();
    let mut ingress_isolated = BTreeSet::new();
    let mut egress_isolated = BTreeSet::new();
    for (i, policy) in policies.iter().enumerate() {
        let targets: Vec<&PodInfo> = local
            .iter()
            .copied()
            .filter(|p| p.namespace == policy.namespace && policy.target.matches(&p.labels))
            .collect();
        let tgt = format!("p{i}-tgt");
        b.set(
            Family::Inet,
            &tgt,
            addr_set(),
            targets.iter().map(|p| addr(p.ip)).collect(),
        );
        let comment = policy.key();
        for (rules, ingress, isolated) in [
            (&policy.ingress, true, &mut ingress_isolated),
            (&policy.egress, false, &mut egress_isolated),
        ] {
            let Some(rules) = rules else { continue };
            isolated.extend(targets.iter().map(|p| p.ip));
            for (r, rule) in rules.iter().enumerate() {
                let ctx = RuleCtx {
                    policy,
                    prefix: format!("p{i}-{}{r}", if ingress { "in" } else { "eg" }),
                    ingress,
                    tgt: &tgt,
                    comment: &comment,
                    targets: &targets,
                };
                b.rule_set(&ctx, rule, &pods, &namespaces);
            }
        }
    }
    b.set(
        Family::Inet,
        INGRESS_ISOLATED,
        addr_set(),
        ingress_isolated.iter().map(|ip| addr(*ip)).collect(),
    );
    b.set(
        Family::Inet,
        EGRESS_ISOLATED,
        addr_set(),
        egress_isolated.iter().map(|ip| addr(*ip)).collect(),
    );
    b.set(
        Family::Bridge,
        LOCAL_PODS,
        addr_set(),
        local.iter().map(|p| addr(p.ip)).collect(),
    );
    b.tails(&local);
    Compiled {
        structure: b.structure,
        pod_tails: b.pod_tails,
        sets: b.sets,
        rejected,
        counters: b.counters,
    }
}

impl Compiled {
    /// The whole ruleset as one transaction: both tables are created if missing, deleted, and
    /// rebuilt, so the kernel switches from the old ruleset to the new one atomically.
    pub fn full(&self) -> Nftables<'static> {
        let mut objects = Vec::new();
        for family in [Family::Inet, Family::Bridge] {
            objects.push(NfObject::CmdObject(NfCmd::Add(table(family))));
            objects.push(NfObject::CmdObject(NfCmd::Delete(table(family))));
        }
        for object in &self.structure {
            objects.push(NfObject::CmdObject(NfCmd::Add(object.clone())));
            if let NfListObject::Set(set) = object {
                if let Some(elem) = self
                    .sets
                    .get(&(family_of(set.family), set.name.to_string()))
                {
                    if !elem.is_empty() {
                        objects.push(NfObject::CmdObject(NfCmd::Add(element(set, elem))));
                    }
                }
            }
        }
        for object in self.pod_tails.values().flatten() {
            objects.push(NfObject::CmdObject(NfCmd::Add(object.clone())));
        }
        Nftables {
            objects: objects.into(),
        }
    }

    /// The transaction that turns `previous` (what the kernel holds) into `self` by changing
    /// set elements and adding the drop accounting of new local pods, or `None` when
    /// anything else differs (a policy, a local pod gone or readdressed) and
    /// [`full`](Self::full) is needed. An empty document means nothing changed.
    pub fn update_from(&self, previous: &Compiled) -> Option<Nftables<'static>> {
        if self.structure != previous.structure {
            return None;
        }
        let kept = previous
            .pod_tails
            .iter()
            .all(|(key, tail)| self.pod_tails.get(key) == Some(tail));
        if !kept {
            return None;
        }
        let mut objects = Vec::new();
        for object in &self.structure {
            let NfListObject::Set(set) = object else {
                continue;
            };
            let key = (family_of(set.family), set.name.to_string());
            let new = self.sets.get(&key);
            if new == previous.sets.get(&key) {
                continue;
            }
            objects.push(NfObject::CmdObject(NfCmd::Flush(FlushObject::Set(
                set.clone(),
            ))));
            if let Some(elem) = new.filter(|e| !e.is_empty()) {
                objects.push(NfObject::CmdObject(NfCmd::Add(element(set, elem))));
            }
        }
        for (key, tail) in &self.pod_tails {
            if !previous.pod_tails.contains_key(key) {
                objects.extend(
                    tail.iter()
                        .cloned()
                        .map(|o| NfObject::CmdObject(NfCmd::Add(o))),
                );
            }
        }
        Some(Nftables {
            objects: objects.into(),
        })
    }

    /// Number of rules, for logs and benchmarks.
    pub fn rule_count(&self) -> usize {
        self.structure
            .iter()
            .chain(self.pod_tails.values().flatten())
            .filter(|o| matches!(o, NfListObject::Rule(_)))
            .count()
    }
}

/// The transaction removing both our tables (and nothing else); fine if they are absent.
pub fn cleanup() -> Nftables<'static> {
    let mut objects = Vec::new();
    for family in [Family::Inet, Family::Bridge] {
        objects.push(NfObject::CmdObject(NfCmd::Add(table(family))));
        objects.push(NfObject::CmdObject(NfCmd::Delete(table(family))));
    }
    Nftables {
        objects: objects.into(),
    }
}

/// Everything one rule of one policy needs besides the rule.
struct RuleCtx<'a> {
    /// The policy.
    policy: &'a Policy,
    /// Name prefix of the rule's sets (`p3-in0`).
    prefix: String,
    /// Direction.
    ingress: bool,
    /// Name of the policy's target set.
    tgt: &'a str,
    /// Rule comment (the policy key).
    comment: &'a str,
    /// Local pods the policy selects.
    targets: &'a [&'a PodInfo],
}

/// Accumulates structure and sets in order.
struct Builder<'a> {
    /// Node settings.
    node: &'a NodeConfig,
    /// Structure so far.
    structure: Vec<NfListObject<'static>>,
    /// Set contents so far.
    sets: BTreeMap<SetKey, Vec<Expression<'static>>>,
    /// Rules of the `ingress` chain, added after the sets they use.
    ingress: Vec<NfListObject<'static>>,
    /// Rules of the `egress` chain.
    egress: Vec<NfListObject<'static>>,
    /// Drop counters.
    counters: Vec<DropCounter>,
    /// Per local pod: its drop counters and log rules.
    pod_tails: BTreeMap<PodTailKey, Vec<NfListObject<'static>>>,
    /// Peer sets made so far, by what they select.
    peer_sets: HashMap<PeerKey, (String, Rc<Vec<usize>>)>,
    /// Indexes of the pods of each namespace.
    pods_by_ns: HashMap<String, Vec<usize>>,
}

/// What a pod peer selects.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PeerKey {
    /// Namespace selector, if any.
    namespaces: Option<Selector>,
    /// Pod selector.
    pods: Selector,
    /// The policy's namespace when there is no namespace selector.
    own: Option<String>,
}

impl<'a> Builder<'a> {
    /// An empty builder.
    fn new(node: &'a NodeConfig) -> Self {
        Self {
            node,
            structure: Vec::new(),
            sets: BTreeMap::new(),
            ingress: Vec::new(),
            egress: Vec::new(),
            counters: Vec::new(),
            pod_tails: BTreeMap::new(),
            peer_sets: HashMap::new(),
            pods_by_ns: HashMap::new(),
        }
    }

    /// Tables and chains.
    fn base(&mut self) {
        for family in [Family::Inet, Family::Bridge] {
            self.structure.push(table(family));
        }
        self.structure.push(base_chain(Family::Inet, "forward"));
        self.structure.push(chain(Family::Inet, "ingress"));
        self.structure.push(chain(Family::Inet, "egress"));
        self.structure.push(chain(Family::Inet, "ingress-denied"));
        self.structure.push(chain(Family::Inet, "egress-denied"));
        self.structure.push(base_chain(Family::Bridge, "forward"));
    }

    /// Declares a named set with its elements.
    fn set(
        &mut self,
        family: Family,
        name: &str,
        kind: SetTypeValue<'static>,
        elem: Vec<Expression<'static>>,
    ) {
        self.structure.push(NfListObject::Set(Box::new(Set {
            family: family.nf(),
            table: TABLE.into(),
            name: name.to_owned().into(),
            handle: None,
            set_type: kind,
            policy: None,
            flags: None,
            elem: None,
            timeout: None,
            gc_interval: None,
            size: None,
            comment: None,
        })));
        // Callers pass elements in a deterministic order; the same address may come from two
        // pods (a stale one and its successor), and nft refuses duplicates in one command.
        let mut seen = std::collections::HashSet::new();
        let elem = elem
            .into_iter()
            .filter(|e| seen.insert(serde_json::to_string(e).unwrap_or_default()))
            .collect();
        self.sets.insert((family, name.to_owned()), elem);
    }

    /// The shared set of pods a peer selects (created on first use) and the pods' indexes.
    /// Policies often repeat the same selectors, so sets are keyed by what they select.
    fn peer_set(
        &mut self,
        key: PeerKey,
        pods: &[PodInfo],
        namespaces: &BTreeMap<String, NamespaceInfo>,
    ) -> (String, Rc<Vec<usize>>) {
        if let Some(found) = self.peer_sets.get(&key) {
            return found.clone();
        }
        let matching_ns: Vec<&str> = match (&key.namespaces, &key.own) {
            (_, Some(own)) => vec![own.as_str()],
            (Some(sel), None) => namespaces
                .values()
                .filter(|n| sel.matches(&n.labels))
                .map(|n| n.name.as_str())
                .collect(),
            (None, None) => Vec::new(),
        };
        let mut selected: Vec<usize> = matching_ns
            .iter()
            .flat_map(|ns| self.pods_by_ns.get(*ns).into_iter().flatten().copied())
            .filter(|&k| key.pods.matches(&pods[k].labels))
            .collect();
        selected.sort_unstable();
        let name = format!("peer{}", self.peer_sets.len());
        self.set(
            Family::Inet,
            &name,
            addr_set(),
            selected.iter().map(|&k| addr(pods[k].ip)).collect(),
        );
        let found = (name, Rc::new(selected));
        self.peer_sets.insert(key, found.clone());
        found
    }

    /// Sets and rules for one policy rule.
    fn rule_set(
        &mut self,
        ctx: &RuleCtx<'_>,
        rule: &PolicyRule,
        pods: &[PodInfo],
        namespaces: &BTreeMap<String, NamespaceInfo>,
    ) {
        let (own, other) = if ctx.ingress {
            ("daddr", "saddr")
        } else {
            ("saddr", "daddr")
        };
        let mut peer_matches: Vec<Vec<Statement<'static>>> = Vec::new();
        // Destination pods a named port may resolve on (egress: the peer pods).
        let mut peer_pods: BTreeSet<usize> = BTreeSet::new();
        let mut any_destination = rule.peers.is_none();
        match &rule.peers {
            None => peer_matches.push(Vec::new()),
            Some(peers) => {
                for peer in peers {
                    match peer {
                        Peer::Pods {
                            namespaces: ns_sel,
                            pods: pod_sel,
                        } => {
                            let key = PeerKey {
                                namespaces: ns_sel.clone(),
                                pods: pod_sel.clone(),
                                own: ns_sel.is_none().then(|| ctx.policy.namespace.clone()),
                            };
                            let (name, selected) = self.peer_set(key, pods, namespaces);
                            peer_pods.extend(selected.iter().copied());
                            peer_matches.push(vec![in_set(ip(other), &name)]);
                        }
                        Peer::Block { cidr, except } => {
                            any_destination = true;
                            let mut m = vec![eq(ip(other), prefix(cidr.addr(), cidr.prefix_len()))];
                            if !except.is_empty() {
                                let items = except
                                    .iter()
                                    .map(|e| {
                                        nftables::expr::SetItem::Element(prefix(
                                            e.addr(),
                                            e.prefix_len(),
                                        ))
                                    })
                                    .collect();
                                m.push(Statement::Match(Match {
                                    left: ip(other),
                                    right: Expression::Named(NamedExpression::Set(items)),
                                    op: Operator::NEQ,
                                }));
                            }
                            peer_matches.push(m);
                        }
                    }
                }
            }
        }
        let port_matches = self.port_matches(ctx, rule, pods, &peer_pods, any_destination);
        let verdict = if ctx.ingress {
            Statement::Accept(None)
        } else {
            Statement::Return(None)
        };
        for peer in &peer_matches {
            for port in &port_matches {
                let mut expr = vec![in_set(ip(own), ctx.tgt)];
                expr.extend(peer.iter().cloned());
                expr.extend(port.iter().cloned());
                expr.push(verdict.clone());
                let rule = rule_in(
                    Family::Inet,
                    if ctx.ingress { "ingress" } else { "egress" },
                    expr,
                    Some(ctx.comment),
                );
                if ctx.ingress {
                    self.ingress.push(rule);
                } else {
                    self.egress.push(rule);
                }
            }
        }
    }

    /// One match list per group of ports (an empty list matching everything when the rule
    /// has no ports); named ports become a set of resolved destinations.
    fn port_matches(
        &mut self,
        ctx: &RuleCtx<'_>,
        rule: &PolicyRule,
        pods: &[PodInfo],
        peer_pods: &BTreeSet<usize>,
        any_destination: bool,
    ) -> Vec<Vec<Statement<'static>>> {
        if rule.ports.is_empty() {
            return vec![Vec::new()];
        }
        let mut out = Vec::new();
        let mut ranges: BTreeMap<_, Vec<(u16, u16)>> = BTreeMap::new();
        let mut whole = BTreeSet::new();
        let mut named: Vec<&PortSpec> = Vec::new();
        for spec in &rule.ports {
            match &spec.port {
                PortMatch::Any => {
                    whole.insert(spec.protocol);
                }
                PortMatch::Range(a, b) => ranges.entry(spec.protocol).or_default().push((*a, *b)),
                PortMatch::Named(_) => named.push(spec),
            }
        }
        for proto in &whole {
            out.push(vec![eq(
                meta(MetaKey::L4proto),
                Expression::String(proto.nft_name().into()),
            )]);
        }
        for (proto, list) in ranges {
            if whole.contains(&proto) {
                continue;
            }
            let items: Vec<_> = list
                .iter()
                .map(|&(a, b)| {
                    nftables::expr::SetItem::Element(if a == b {
                        Expression::Number(u32::from(a))
                    } else {
                        Expression::Range(Box::new(nftables::expr::Range {
                            range: [
                                Expression::Number(u32::from(a)),
                                Expression::Number(u32::from(b)),
                            ],
                        }))
                    })
                })
                .collect();
            out.push(vec![
                eq(
                    meta(MetaKey::L4proto),
                    Expression::String(proto.nft_name().into()),
                ),
                eq(th_dport(), Expression::Named(NamedExpression::Set(items))),
            ]);
        }
        if !named.is_empty() {
            // Resolve each name on each possible destination pod: the policy's targets for
            // ingress, the peer pods (or every pod, for ipBlock and "any") for egress.
            let destinations: Vec<&PodInfo> = if ctx.ingress {
                ctx.targets.to_vec()
            } else if any_destination {
                pods.iter().collect()
            } else {
                peer_pods.iter().map(|&k| &pods[k]).collect()
            };
            let mut elem = Vec::new();
            for spec in &named {
                let PortMatch::Named(name) = &spec.port else {
                    continue;
                };
                for pod in &destinations {
                    if let Some(port) = pod.named_port(name, spec.protocol) {
                        elem.push(Expression::Named(NamedExpression::Concat(vec![
                            addr(pod.ip),
                            Expression::String(spec.protocol.nft_name().into()),
                            Expression::Number(u32::from(port)),
                        ])));
                    }
                }
            }
            let set_name = format!("{}-named", ctx.prefix);
            self.set(
                Family::Inet,
                &set_name,
                SetTypeValue::Concatenated(
                    vec![SetType::Ipv4Addr, SetType::InetProto, SetType::InetService].into(),
                ),
                elem,
            );
            out.push(vec![in_set(
                Expression::Named(NamedExpression::Concat(vec![
                    ip("daddr"),
                    meta(MetaKey::L4proto),
                    th_dport(),
                ])),
                &set_name,
            )]);
        }
        out
    }

    /// Per-pod drop accounting, the chain tails and the base chains' rules.
    fn tails(&mut self, local: &[&PodInfo]) {
        let node = self.node;
        for (chain_name, field) in [("egress", "saddr"), ("ingress", "daddr")] {
            let mut rules = std::mem::take(if chain_name == "ingress" {
                &mut self.ingress
            } else {
                &mut self.egress
            });
            let denied = format!("{chain_name}-denied");
            for pod in local {
                let counter = format!("{denied}/{}/{}", pod.namespace, pod.name);
                self.counters.push(DropCounter {
                    name: counter.clone(),
                    namespace: pod.namespace.clone(),
                    pod: pod.name.clone(),
                    direction: if chain_name == "ingress" {
                        "ingress"
                    } else {
                        "egress"
                    },
                });
                let mut log = Log::new(Some(u32::from(node.log_group)));
                log.prefix = Some(
                    format!(
                        "weave-npc {chain_name} denied {}/{}: ",
                        pod.namespace, pod.name
                    )
                    .into(),
                );
                let tail = self
                    .pod_tails
                    .entry((pod.namespace.clone(), pod.name.clone(), pod.ip))
                    .or_default();
                tail.push(NfListObject::Counter(Counter {
                    family: NfFamily::INet,
                    table: TABLE.into(),
                    name: counter.clone().into(),
                    handle: None,
                    packets: None,
                    bytes: None,
                }));
                tail.push(rule_in(
                    Family::Inet,
                    &denied,
                    vec![
                        eq(ip(field), addr(pod.ip)),
                        Statement::Counter(nftables::stmt::Counter::Named(counter.into())),
                        Statement::Limit(nftables::stmt::Limit {
                            rate: node.log_rate,
                            rate_unit: None,
                            per: Some("second".into()),
                            burst: None,
                            burst_unit: None,
                            inv: None,
                        }),
                        Statement::Log(Some(log)),
                    ],
                    None,
                ));
            }
            rules.push(rule_in(
                Family::Inet,
                chain_name,
                vec![Statement::Jump(JumpTarget {
                    target: denied.into(),
                })],
                None,
            ));
            rules.push(rule_in(
                Family::Inet,
                chain_name,
                vec![Statement::Drop(None)],
                None,
            ));
            self.structure.extend(rules);
        }
        let ct = Statement::Match(Match {
            left: Expression::Named(NamedExpression::CT(nftables::expr::CT {
                key: "state".into(),
                family: None,
                dir: None,
            })),
            right: Expression::List(vec![
                Expression::String("established".into()),
                Expression::String("related".into()),
            ]),
            op: Operator::IN,
        });
        let forward = [
            vec![ct, Statement::Accept(None)],
            vec![
                in_set(ip("saddr"), EGRESS_ISOLATED),
                Statement::Jump(JumpTarget {
                    target: "egress".into(),
                }),
            ],
            vec![
                in_set(ip("daddr"), INGRESS_ISOLATED),
                Statement::Jump(JumpTarget {
                    target: "ingress".into(),
                }),
            ],
        ];
        for expr in forward {
            self.structure
                .push(rule_in(Family::Inet, "forward", expr, None));
        }
        let port = format!("{}*", node.pod_port_prefix);
        for (dir, field) in [(MetaKey::Oifname, "daddr"), (MetaKey::Iifname, "saddr")] {
            self.structure.push(rule_in(
                Family::Bridge,
                "forward",
                vec![
                    eq(meta(dir), Expression::String(port.clone().into())),
                    eq(meta(MetaKey::Protocol), Expression::String("ip".into())),
                    Statement::Match(Match {
                        left: ip(field),
                        right: Expression::String(format!("@{LOCAL_PODS}").into()),
                        op: Operator::NEQ,
                    }),
                    Statement::Drop(None),
                ],
                Some("address of no known local pod"),
            ));
        }
    }
}

/// Our table in `family`.
fn table(family: Family) -> NfListObject<'static> {
    NfListObject::Table(Table {
        family: family.nf(),
        name: TABLE.into(),
        handle: None,
    })
}

/// A regular chain.
fn chain(family: Family, name: &str) -> NfListObject<'static> {
    NfListObject::Chain(Chain {
        family: family.nf(),
        table: TABLE.into(),
        name: name.to_owned().into(),
        ..Chain::default()
    })
}

/// A filter chain on the forward hook that accepts by default.
fn base_chain(family: Family, name: &str) -> NfListObject<'static> {
    NfListObject::Chain(Chain {
        family: family.nf(),
        table: TABLE.into(),
        name: name.to_owned().into(),
        _type: Some(NfChainType::Filter),
        hook: Some(NfHook::Forward),
        prio: Some(0),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    })
}

/// A rule appended to `chain`.
fn rule_in(
    family: Family,
    chain: &str,
    expr: Vec<Statement<'static>>,
    comment: Option<&str>,
) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: family.nf(),
        table: TABLE.into(),
        chain: chain.to_owned().into(),
        expr: expr.into(),
        handle: None,
        index: None,
        comment: comment.map(|c| Cow::Owned(c.to_owned())),
    })
}

/// `add element` for `set`.
fn element(set: &Set<'static>, elem: &[Expression<'static>]) -> NfListObject<'static> {
    NfListObject::Element(Element {
        family: set.family,
        table: TABLE.into(),
        name: set.name.clone(),
        elem: elem.to_vec().into(),
    })
}

/// Our family for an nftables family (only ours occur).
fn family_of(family: NfFamily) -> Family {
    if family == NfFamily::Bridge {
        Family::Bridge
    } else {
        Family::Inet
    }
}

/// The type of a set of IPv4 addresses.
fn addr_set() -> SetTypeValue<'static> {
    SetTypeValue::Single(SetType::Ipv4Addr)
}

/// An address literal.
fn addr(ip: Ipv4Addr) -> Expression<'static> {
    Expression::String(ip.to_string().into())
}

/// A prefix literal.
fn prefix(ip: Ipv4Addr, len: u8) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(addr(ip)),
        len: u32::from(len),
    }))
}

/// `ip <field>`.
fn ip(field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: "ip".into(),
            field: field.into(),
        },
    )))
}

/// `th dport`.
fn th_dport() -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: "th".into(),
            field: "dport".into(),
        },
    )))
}

/// `meta <key>`.
fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

/// `left == right`.
fn eq(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

/// `left @set`.
fn in_set(left: Expression<'static>, set: &str) -> Statement<'static> {
    eq(left, Expression::String(format!("@{set}").into()))
}
