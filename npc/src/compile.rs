// SPDX-License-Identifier: Apache-2.0
//! `compile`: the pure function from a snapshot of API objects to the node's whole nftables
//! ruleset (STYLE §2, compute first, apply second), and the incremental form of it that the
//! controller keeps between watch events.
//!
//! Layout (two tables, both named `weave-npc`; no other table is ever named):
//!
//! - `inet weave-npc`, chain `forward` (hook forward): sees routed traffic and, through
//!   `br_netfilter`, traffic bridged between ports of the `weave` bridge, with conntrack.
//!   Established and related packets are accepted first, so replies of allowed connections
//!   always pass. New flows from a local pod isolated for egress jump to `egress`, whose
//!   allow rules `return` so the same packet still meets the destination's ingress check;
//!   new flows to a local pod isolated for ingress jump to `ingress`, whose allow rules
//!   `accept`. Both chains end by jumping to `ingress-denied`/`egress-denied`, where a
//!   verdict map keyed by the local pod's address jumps to that pod's own chain
//!   (`ingress-denied/<namespace>/<pod>`: its counter and a rate-limited nflog entry naming
//!   it), and then `drop`. Traffic from the node itself to its pods leaves through the output hook
//!   and is never filtered (kubelet probes).
//! - `bridge weave-npc`, chain `forward`: IPv4 frames to or from a pod port whose address is
//!   not a known local pod are dropped. A pod the controller has not seen yet is therefore
//!   unreachable (never open by accident) and becomes reachable as soon as its address is
//!   programmed.
//!
//! Everything that changes with pod and namespace churn lives in named sets: per policy its
//! local target pods, per rule peer the peer pods, per rule with named ports the
//! `address . protocol . port` triples resolved on each destination pod. The rules depend on
//! the policies only. A [`Compiled`] therefore keeps the rules (a function of the policies)
//! apart from the set contents, which it maintains per pod: [`Compiled::set_pod`] and
//! [`Compiled::set_namespace`] retract what the old version of an object put into the sets
//! and add what the new one puts there, so a pod event costs a few selector matches instead
//! of a recompile, and [`Compiled::update`] turns the difference into `add element` /
//! `delete element` commands (plus creating or removing the accounting chains of local pods
//! that came or went). A policy change rebuilds the whole thing.
//!
//! The output is a script in nft's native syntax (`nft -f -`): nft parses it faster than the
//! equivalent JSON. No rule uses an anonymous set (`{ 80, 443 }`), because nft 1.0 spends
//! time quadratic in their number when a ruleset is loaded; ports lists become one rule per
//! port or range and `except` lists one `!=` match per block.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;

use crate::policy::{
    NamespaceInfo, Peer, PodInfo, Policy, PortMatch, PortSpec, Protocol, Rejection,
    Rule as PolicyRule,
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
/// The directions and the address field naming the local pod in each.
const DIRECTIONS: [(&str, &str); 2] = [("egress", "saddr"), ("ingress", "daddr")];

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

/// The two families we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Family {
    /// `inet`.
    Inet,
    /// `bridge`.
    Bridge,
}

impl Family {
    /// The nft spelling.
    fn name(self) -> &'static str {
        match self {
            Self::Inet => "inet",
            Self::Bridge => "bridge",
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

/// A pod's identity: namespace and name.
type PodKey = (String, String);

/// One element of a named set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Elem {
    /// An address (`ipv4_addr` sets).
    Addr(Ipv4Addr),
    /// A resolved named port (`ipv4_addr . inet_proto . inet_service` sets).
    Port(Ipv4Addr, Protocol, u16),
}

impl std::fmt::Display for Elem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Addr(ip) => write!(f, "{ip}"),
            Self::Port(ip, proto, port) => write!(f, "{ip} . {} . {port}", proto.nft_name()),
        }
    }
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

impl PeerKey {
    /// Whether `pod`, in a namespace labelled `ns_labels` (`None`: no such namespace), is
    /// selected.
    fn matches(&self, pod: &PodInfo, ns_labels: Option<&BTreeMap<String, String>>) -> bool {
        let ns_ok = match (&self.own, &self.namespaces) {
            (Some(own), _) => pod.namespace == *own,
            (None, Some(sel)) => ns_labels.is_some_and(|l| sel.matches(l)),
            (None, None) => false,
        };
        ns_ok && self.pods.matches(&pod.labels)
    }
}

/// The destinations a named port is resolved on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Dest {
    /// The policy's local targets (ingress).
    Targets(TargetKey),
    /// The pods of these peers (egress).
    Peers(Vec<PeerKey>),
    /// Every pod (egress to any peer or to an ipBlock).
    All,
}

/// What a policy's `podSelector` selects (local pods only).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TargetKey {
    /// The policy's namespace.
    namespace: String,
    /// Its pod selector.
    pods: Selector,
}

impl TargetKey {
    /// Whether `pod` (local when `local`) is selected.
    fn matches(&self, pod: &PodInfo, local: bool) -> bool {
        local && pod.namespace == self.namespace && self.pods.matches(&pod.labels)
    }
}

/// What a named set holds, as a function of one pod (and its namespace's labels). Sets are
/// shared by every rule that needs the same contents: the kernel looks sets up by name in a
/// list, so loading a ruleset costs time proportional to rules × sets.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum SetDef {
    /// Local pods a policy selects.
    Target(TargetKey),
    /// Pods a peer selects.
    Peer(PeerKey),
    /// Named ports resolved on destinations.
    Named {
        /// Where the names are resolved.
        dest: Dest,
        /// Port names and their protocols.
        ports: Vec<(String, Protocol)>,
    },
    /// Local pods isolated for ingress (`true`) or egress.
    Isolated(bool),
    /// Every local pod.
    LocalPods,
}

/// A named set: where it lives, its name and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SetDecl {
    /// Family of its table.
    family: Family,
    /// Name.
    name: String,
    /// Holds named-port triples rather than addresses.
    triples: bool,
    /// What it holds.
    def: SetDef,
}

/// Index of a set in [`Compiled::sets`].
type SetId = usize;

/// A compiled ruleset that can follow pod and namespace changes incrementally.
///
/// Build one with [`compile`] (or [`Compiled::new`] plus `set_*` calls), render it whole
/// with [`full`](Self::full), feed it changed objects, and turn what changed into a small
/// transaction with [`update`](Self::update).
#[derive(Debug, Clone)]
pub struct Compiled {
    /// Node settings.
    node: NodeConfig,
    /// Valid (or fail-closed) policies, sorted by key.
    policies: Vec<Policy>,
    /// Named sets, in declaration order.
    sets: Vec<SetDecl>,
    /// Rules of the inet table (`add rule` commands without the `add rule inet weave-npc`).
    rules: Vec<String>,
    /// Per set: element → number of pods contributing it (two pods may share an address).
    contents: Vec<BTreeMap<Elem, u32>>,
    /// Sets whose contents depend on the pod's namespace only (peers without namespace
    /// selector, targets, named ports on targets), by that namespace.
    by_namespace: HashMap<String, Vec<SetId>>,
    /// Sets that may hold a pod of any namespace.
    global: Vec<SetId>,
    /// Known pods.
    pods: HashMap<PodKey, PodInfo>,
    /// Pod names per namespace.
    pods_by_ns: HashMap<String, BTreeSet<String>>,
    /// Known namespaces' labels.
    namespaces: HashMap<String, BTreeMap<String, String>>,
    /// Local pods (with drop accounting) and their addresses.
    tails: BTreeMap<PodKey, Ipv4Addr>,
    /// Policies that were rejected, with the reason.
    pub rejected: Vec<Rejection>,
    /// Changes since the last [`update`](Self::update) or [`applied`](Self::applied): set
    /// elements touched and whether each was present before.
    touched: HashMap<(SetId, Elem), bool>,
    /// Local pods whose accounting chains the kernel holds.
    applied_tails: BTreeSet<PodKey>,
    /// The accounting maps' elements the kernel holds: address → pod.
    applied_owners: BTreeMap<Ipv4Addr, PodKey>,
}

/// Builds the ruleset for `node` from `snapshot`.
pub fn compile(snapshot: &Snapshot, node: &NodeConfig) -> Compiled {
    let mut c = Compiled::new(snapshot.policies.iter(), node);
    for ns in &snapshot.namespaces {
        c.set_namespace(ns);
    }
    for pod in &snapshot.pods {
        c.set_pod(pod);
    }
    c.applied();
    c
}

impl Compiled {
    /// The rules for `policies` with no pods and no namespaces yet.
    pub fn new<'a>(
        policies: impl IntoIterator<Item = &'a NetworkPolicy>,
        node: &NodeConfig,
    ) -> Self {
        let mut rejected = Vec::new();
        let mut parsed = Vec::new();
        for np in policies {
            match Policy::parse(np) {
                Ok(p) => parsed.push(p),
                Err(r) => {
                    if let Some((target, ingress, egress)) = &r.isolate {
                        // Fail closed: the policy's pods stay isolated, with nothing allowed.
                        let (namespace, name) = r.policy.split_once('/').unwrap_or_default();
                        parsed.push(Policy {
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
        parsed.sort_by_key(Policy::key);
        rejected.sort_by(|a, b| a.policy.cmp(&b.policy));
        let mut b = Builder::default();
        for policy in &parsed {
            b.policy(policy);
        }
        let mut ingress = std::mem::take(&mut b.ingress);
        ingress.push("ingress jump ingress-denied".into());
        ingress.push("ingress drop".into());
        let mut egress = std::mem::take(&mut b.egress);
        egress.push("egress jump egress-denied".into());
        egress.push("egress drop".into());
        b.declare(
            Family::Inet,
            INGRESS_ISOLATED,
            false,
            SetDef::Isolated(true),
        );
        b.declare(
            Family::Inet,
            EGRESS_ISOLATED,
            false,
            SetDef::Isolated(false),
        );
        b.declare(Family::Bridge, LOCAL_PODS, false, SetDef::LocalPods);
        let mut rules = vec![
            "forward ct state established,related accept".to_owned(),
            format!("forward ip saddr @{EGRESS_ISOLATED} jump egress"),
            format!("forward ip daddr @{INGRESS_ISOLATED} jump ingress"),
        ];
        rules.extend(ingress);
        rules.extend(egress);
        let mut by_namespace: HashMap<String, Vec<SetId>> = HashMap::new();
        let mut global = Vec::new();
        for (id, set) in b.sets.iter().enumerate() {
            let ns = match &set.def {
                SetDef::Target(t)
                | SetDef::Named {
                    dest: Dest::Targets(t),
                    ..
                } => Some(t.namespace.clone()),
                SetDef::Peer(key) => key.own.clone(),
                _ => None,
            };
            match ns {
                Some(ns) => by_namespace.entry(ns).or_default().push(id),
                None => global.push(id),
            }
        }
        Self {
            node: node.clone(),
            policies: parsed,
            contents: vec![BTreeMap::new(); b.sets.len()],
            sets: b.sets,
            rules,
            by_namespace,
            global,
            pods: HashMap::new(),
            pods_by_ns: HashMap::new(),
            namespaces: HashMap::new(),
            tails: BTreeMap::new(),
            rejected,
            touched: HashMap::new(),
            applied_tails: BTreeSet::new(),
            applied_owners: BTreeMap::new(),
        }
    }

    /// Adds or replaces namespace `ns`.
    pub fn set_namespace(&mut self, ns: &Namespace) {
        let info = NamespaceInfo::from_namespace(ns);
        if self.namespaces.get(&info.name) == Some(&info.labels) {
            return;
        }
        self.relabel_namespace(&info.name, Some(info.labels.clone()));
    }

    /// Removes namespace `name`.
    pub fn remove_namespace(&mut self, name: &str) {
        if self.namespaces.contains_key(name) {
            self.relabel_namespace(name, None);
        }
    }

    /// Adds or replaces `pod` (keyed by namespace and name). A pod policy does not apply to
    /// (finished, host network, no address yet) counts as removed.
    pub fn set_pod(&mut self, pod: &Pod) {
        let key = (
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.name.clone().unwrap_or_default(),
        );
        let Some(info) = PodInfo::from_pod(pod) else {
            self.remove_pod(&key.0, &key.1);
            return;
        };
        if self.pods.get(&key) == Some(&info) {
            return;
        }
        if let Some(old) = self.pods.remove(&key) {
            self.contribute(&old, false);
        }
        self.contribute(&info, true);
        if info.node == self.node.node_name {
            self.tails.insert(key.clone(), info.ip);
        } else {
            self.tails.remove(&key);
        }
        self.pods_by_ns
            .entry(key.0.clone())
            .or_default()
            .insert(key.1.clone());
        self.pods.insert(key, info);
    }

    /// Removes pod `namespace/name`.
    pub fn remove_pod(&mut self, namespace: &str, name: &str) {
        let key = (namespace.to_owned(), name.to_owned());
        let Some(old) = self.pods.remove(&key) else {
            return;
        };
        self.contribute(&old, false);
        if let Some(names) = self.pods_by_ns.get_mut(namespace) {
            names.remove(name);
            if names.is_empty() {
                self.pods_by_ns.remove(namespace);
            }
        }
        self.tails.remove(&key);
    }

    /// Marks the current state as what the kernel holds (after applying [`full`](Self::full)).
    pub fn applied(&mut self) {
        self.touched.clear();
        self.applied_tails = self.tails.keys().cloned().collect();
        self.applied_owners = self.owners();
    }

    /// The accounting maps' elements: each local address jumps to the chain of one pod (the
    /// first by name when a stale pod and its successor share the address).
    fn owners(&self) -> BTreeMap<Ipv4Addr, PodKey> {
        let mut out = BTreeMap::new();
        for (key, ip) in &self.tails {
            out.entry(*ip).or_insert_with(|| key.clone());
        }
        out
    }

    /// The transaction that brings the kernel from the state last marked applied (by
    /// [`applied`](Self::applied) or a previous `update`) to this one: set element changes,
    /// plus creating and removing the accounting chains of local pods that came or went. An
    /// empty script means nothing changed. The current state counts as applied from now on.
    pub fn update(&mut self) -> String {
        let touched = std::mem::take(&mut self.touched);
        let mut add: BTreeMap<SetId, Vec<Elem>> = BTreeMap::new();
        let mut del: BTreeMap<SetId, Vec<Elem>> = BTreeMap::new();
        for ((set, elem), was) in touched {
            let now = self.contents[set].contains_key(&elem);
            if now && !was {
                add.entry(set).or_default().push(elem);
            } else if was && !now {
                del.entry(set).or_default().push(elem);
            }
        }
        let mut out = String::new();
        for (verb, changes) in [("delete", &mut del), ("add", &mut add)] {
            for (set, elems) in changes.iter_mut() {
                elems.sort_unstable();
                let decl = &self.sets[*set];
                let _ = writeln!(
                    out,
                    "{verb} element {} {TABLE} {} {{ {} }}",
                    decl.family.name(),
                    decl.name,
                    join(elems.iter())
                );
            }
        }
        let owners = self.owners();
        let tails: BTreeSet<PodKey> = self.tails.keys().cloned().collect();
        let gone: Vec<Ipv4Addr> = self
            .applied_owners
            .iter()
            .filter(|(ip, owner)| owners.get(ip) != Some(owner))
            .map(|(ip, _)| *ip)
            .collect();
        for (dir, _) in DIRECTIONS {
            if !gone.is_empty() {
                let _ = writeln!(
                    out,
                    "delete element inet {TABLE} {dir}-denied-pods {{ {} }}",
                    join(gone.iter())
                );
            }
            for (namespace, name) in self.applied_tails.difference(&tails) {
                let chain = accounting_name(dir, namespace, name);
                let _ = writeln!(
                    out,
                    "flush chain inet {TABLE} {chain}\ndelete chain inet {TABLE} {chain}\ndelete counter inet {TABLE} {chain}"
                );
            }
        }
        for key in tails.difference(&self.applied_tails) {
            self.write_tail(&mut out, key);
        }
        let came: BTreeMap<&Ipv4Addr, &PodKey> = owners
            .iter()
            .filter(|(ip, owner)| self.applied_owners.get(ip) != Some(owner))
            .collect();
        self.write_owners(&mut out, came.iter().map(|(ip, key)| (*ip, *key)));
        self.applied_tails = tails;
        self.applied_owners = owners;
        out
    }

    /// The whole ruleset as one transaction: both tables are created if missing, deleted,
    /// and rebuilt, so the kernel switches from the old ruleset to the new one atomically.
    pub fn full(&self) -> String {
        let mut out = String::with_capacity(256 * (self.rules.len() + self.sets.len()));
        for family in [Family::Inet, Family::Bridge] {
            let f = family.name();
            let _ = writeln!(out, "add table {f} {TABLE}\ndelete table {f} {TABLE}");
        }
        out.push_str(&base_chains());
        for (decl, contents) in self.sets.iter().zip(&self.contents) {
            let kind = if decl.triples {
                "ipv4_addr . inet_proto . inet_service"
            } else {
                "ipv4_addr"
            };
            let _ = writeln!(
                out,
                "add set {} {TABLE} {} {{ type {kind}; }}",
                decl.family.name(),
                decl.name
            );
            if !contents.is_empty() {
                let _ = writeln!(
                    out,
                    "add element {} {TABLE} {} {{ {} }}",
                    decl.family.name(),
                    decl.name,
                    join(contents.keys())
                );
            }
        }
        for rule in &self.rules {
            let _ = writeln!(out, "add rule inet {TABLE} {rule}");
        }
        let port = &self.node.pod_port_prefix;
        for (dir, field) in [("oifname", "daddr"), ("iifname", "saddr")] {
            let _ = writeln!(
                out,
                "add rule bridge {TABLE} forward {dir} \"{port}*\" meta protocol ip ip {field} != @{LOCAL_PODS} drop comment \"address of no known local pod\""
            );
        }
        for key in self.tails.keys() {
            self.write_tail(&mut out, key);
        }
        let owners = self.owners();
        self.write_owners(&mut out, owners.iter());
        out
    }

    /// The accounting maps' elements for `owners`.
    fn write_owners<'a>(
        &self,
        out: &mut String,
        owners: impl Iterator<Item = (&'a Ipv4Addr, &'a PodKey)> + Clone,
    ) {
        if owners.clone().next().is_none() {
            return;
        }
        for (dir, _) in DIRECTIONS {
            let elems = owners.clone().map(|(ip, (namespace, name))| {
                format!("{ip} : jump {}", accounting_name(dir, namespace, name))
            });
            let _ = writeln!(
                out,
                "add element inet {TABLE} {dir}-denied-pods {{ {} }}",
                join(elems)
            );
        }
    }

    /// The drop counter and accounting chain of local pod `key`, for both directions: the
    /// chain counts every drop and logs it (rate-limited) with the pod's name.
    fn write_tail(&self, out: &mut String, key: &PodKey) {
        let (namespace, name) = key;
        for (dir, _) in DIRECTIONS {
            let chain = accounting_name(dir, namespace, name);
            // nflog prefixes hold at most 127 bytes; names are ASCII (DNS names).
            let mut prefix = format!("weave-npc {dir} denied {namespace}/{name}");
            prefix.truncate(125);
            let _ = writeln!(
                out,
                "add counter inet {TABLE} {chain}\nadd chain inet {TABLE} {chain}\nadd rule inet {TABLE} {chain} counter name \"{chain}\" limit rate {}/second log prefix \"{prefix}: \" group {}",
                self.node.log_rate, self.node.log_group
            );
        }
    }

    /// Number of rules, for logs and benchmarks.
    pub fn rule_count(&self) -> usize {
        // Bridge rules, the two accounting map lookups, one rule per pod and direction.
        self.rules.len() + 2 + 2 + 2 * self.tails.len()
    }

    /// Drop counters of local pods.
    pub fn counters(&self) -> Vec<DropCounter> {
        let mut out = Vec::with_capacity(2 * self.tails.len());
        for direction in ["ingress", "egress"] {
            for (namespace, pod) in self.tails.keys() {
                out.push(DropCounter {
                    name: accounting_name(direction, namespace, pod),
                    namespace: namespace.clone(),
                    pod: pod.clone(),
                    direction,
                });
            }
        }
        out
    }

    /// The elements of every set, by family and name (for tests comparing states).
    pub fn set_contents(&self) -> BTreeMap<(String, String), BTreeSet<String>> {
        self.sets
            .iter()
            .zip(&self.contents)
            .map(|(d, c)| {
                (
                    (d.family.name().to_owned(), d.name.clone()),
                    c.keys().map(ToString::to_string).collect(),
                )
            })
            .collect()
    }

    /// Replaces the labels of namespace `name` (`None`: it is gone), moving its pods' set
    /// memberships along.
    fn relabel_namespace(&mut self, name: &str, labels: Option<BTreeMap<String, String>>) {
        let pods: Vec<PodInfo> = self
            .pods_by_ns
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|p| self.pods.get(&(name.to_owned(), p.clone())).cloned())
            .collect();
        for pod in &pods {
            self.contribute_to(pod, true, false);
        }
        match labels {
            Some(l) => self.namespaces.insert(name.to_owned(), l),
            None => self.namespaces.remove(name),
        };
        for pod in &pods {
            self.contribute_to(pod, true, true);
        }
    }

    /// Adds (`add`) or retracts what `pod` puts into the sets.
    fn contribute(&mut self, pod: &PodInfo, add: bool) {
        self.contribute_to(pod, false, add);
    }

    /// Adds or retracts what `pod` puts into the sets; `global_only`: only the sets that
    /// depend on namespace labels.
    fn contribute_to(&mut self, pod: &PodInfo, global_only: bool, add: bool) {
        let local = pod.node == self.node.node_name;
        let ns_labels = self.namespaces.get(&pod.namespace);
        let mut found: Vec<(SetId, Elem)> = Vec::new();
        let own = if global_only {
            None
        } else {
            self.by_namespace.get(&pod.namespace)
        };
        for &id in self.global.iter().chain(own.into_iter().flatten()) {
            self.elems(id, pod, local, ns_labels, &mut found);
        }
        for (id, elem) in found {
            let present = self.contents[id].contains_key(&elem);
            self.touched.entry((id, elem)).or_insert(present);
            if add {
                *self.contents[id].entry(elem).or_insert(0) += 1;
            } else if let Some(n) = self.contents[id].get_mut(&elem) {
                *n -= 1;
                if *n == 0 {
                    self.contents[id].remove(&elem);
                }
            }
        }
    }

    /// What `pod` puts into set `id`, appended to `out`.
    fn elems(
        &self,
        id: SetId,
        pod: &PodInfo,
        local: bool,
        ns_labels: Option<&BTreeMap<String, String>>,
        out: &mut Vec<(SetId, Elem)>,
    ) {
        match &self.sets[id].def {
            SetDef::Target(t) => {
                if t.matches(pod, local) {
                    out.push((id, Elem::Addr(pod.ip)));
                }
            }
            SetDef::Peer(key) => {
                if key.matches(pod, ns_labels) {
                    out.push((id, Elem::Addr(pod.ip)));
                }
            }
            SetDef::Named { dest, ports } => {
                let selected = match dest {
                    Dest::Targets(t) => t.matches(pod, local),
                    Dest::Peers(keys) => keys.iter().any(|k| k.matches(pod, ns_labels)),
                    Dest::All => true,
                };
                if selected {
                    for (name, proto) in ports {
                        if let Some(port) = pod.named_port(name, *proto) {
                            out.push((id, Elem::Port(pod.ip, *proto, port)));
                        }
                    }
                }
            }
            SetDef::Isolated(ingress) => {
                let isolated = local
                    && self.policies.iter().any(|p| {
                        (if *ingress {
                            p.ingress.is_some()
                        } else {
                            p.egress.is_some()
                        }) && p.namespace == pod.namespace
                            && p.target.matches(&pod.labels)
                    });
                if isolated {
                    out.push((id, Elem::Addr(pod.ip)));
                }
            }
            SetDef::LocalPods => {
                if local {
                    out.push((id, Elem::Addr(pod.ip)));
                }
            }
        }
    }
}

/// The transaction removing both our tables (and nothing else); fine if they are absent.
pub fn cleanup() -> String {
    let mut out = String::new();
    for family in [Family::Inet, Family::Bridge] {
        let f = family.name();
        let _ = writeln!(out, "add table {f} {TABLE}\ndelete table {f} {TABLE}");
    }
    out
}

/// Tables and chains.
fn base_chains() -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "add table inet {TABLE}\nadd chain inet {TABLE} forward {{ type filter hook forward priority 0; policy accept; }}"
    );
    for chain in ["ingress", "egress", "ingress-denied", "egress-denied"] {
        let _ = writeln!(out, "add chain inet {TABLE} {chain}");
    }
    for (dir, field) in DIRECTIONS {
        let _ = writeln!(
            out,
            "add map inet {TABLE} {dir}-denied-pods {{ type ipv4_addr : verdict; }}\nadd rule inet {TABLE} {dir}-denied ip {field} vmap @{dir}-denied-pods"
        );
    }
    let _ = writeln!(
        out,
        "add table bridge {TABLE}\nadd chain bridge {TABLE} forward {{ type filter hook forward priority 0; policy accept; }}"
    );
    out
}

/// The name of a local pod's accounting chain and counter: `<dir>-denied/<namespace>/<pod>`,
/// or, when that would not fit nftables' 255-byte names, a prefix of it followed by a hash of
/// the whole (FNV-1a, stable across runs).
fn accounting_name(dir: &str, namespace: &str, pod: &str) -> String {
    const MAX: usize = 200;
    let full = format!("{dir}-denied/{namespace}/{pod}");
    if full.len() <= MAX {
        return full;
    }
    let hash = full.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut cut = MAX - 17;
    while !full.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}~{hash:016x}", &full[..cut])
}

/// `a, b, c`.
fn join<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    let mut out = String::new();
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{item}");
    }
    out
}

/// Accumulates set declarations and rules from the policies.
#[derive(Default)]
struct Builder {
    /// Sets so far.
    sets: Vec<SetDecl>,
    /// Rules of the `ingress` chain.
    ingress: Vec<String>,
    /// Rules of the `egress` chain.
    egress: Vec<String>,
    /// Sets declared so far, by what they hold.
    shared: HashMap<SetDef, String>,
}

impl Builder {
    /// Declares a set.
    fn declare(&mut self, family: Family, name: &str, triples: bool, def: SetDef) {
        self.sets.push(SetDecl {
            family,
            name: name.to_owned(),
            triples,
            def,
        });
    }

    /// Sets and rules of `policy`.
    fn policy(&mut self, policy: &Policy) {
        let target = TargetKey {
            namespace: policy.namespace.clone(),
            pods: policy.target.clone(),
        };
        let tgt = self.shared_set(SetDef::Target(target.clone()));
        let comment = policy.key();
        for (rules, ingress) in [(&policy.ingress, true), (&policy.egress, false)] {
            let Some(rules) = rules else { continue };
            for rule in rules {
                self.rule(policy, &target, ingress, &tgt, &comment, rule);
            }
        }
    }

    /// The name of the set holding `def`, declared on first use. Policies often repeat the
    /// same selectors, so sets are keyed by what they hold.
    fn shared_set(&mut self, def: SetDef) -> String {
        if let Some(name) = self.shared.get(&def) {
            return name.clone();
        }
        let (kind, triples) = match &def {
            SetDef::Target(_) => ("tgt", false),
            SetDef::Peer(_) => ("peer", false),
            SetDef::Named { .. } => ("named", true),
            SetDef::Isolated(_) | SetDef::LocalPods => ("set", false),
        };
        let name = format!("{kind}{}", self.sets.len());
        self.declare(Family::Inet, &name, triples, def.clone());
        self.shared.insert(def, name.clone());
        name
    }

    /// Sets and rules for one policy rule: one rule per peer × port match.
    fn rule(
        &mut self,
        policy: &Policy,
        target: &TargetKey,
        ingress: bool,
        tgt: &str,
        comment: &str,
        rule: &PolicyRule,
    ) {
        let (own, other) = if ingress {
            ("daddr", "saddr")
        } else {
            ("saddr", "daddr")
        };
        let mut peer_matches: Vec<String> = Vec::new();
        let mut peer_keys: Vec<PeerKey> = Vec::new();
        let mut any_destination = rule.peers.is_none();
        match &rule.peers {
            None => peer_matches.push(String::new()),
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
                                own: ns_sel.is_none().then(|| policy.namespace.clone()),
                            };
                            let name = self.shared_set(SetDef::Peer(key.clone()));
                            peer_keys.push(key);
                            peer_matches.push(format!(" ip {other} @{name}"));
                        }
                        Peer::Block { cidr, except } => {
                            any_destination = true;
                            let mut m =
                                format!(" ip {other} {}/{}", cidr.addr(), cidr.prefix_len());
                            for e in except {
                                let _ = write!(m, " ip {other} != {}/{}", e.addr(), e.prefix_len());
                            }
                            peer_matches.push(m);
                        }
                    }
                }
            }
        }
        let dest = if ingress {
            Dest::Targets(target.clone())
        } else if any_destination {
            Dest::All
        } else {
            Dest::Peers(peer_keys)
        };
        let port_matches = self.port_matches(rule, dest);
        let (chain, verdict) = if ingress {
            ("ingress", "accept")
        } else {
            ("egress", "return")
        };
        for peer in &peer_matches {
            for port in &port_matches {
                let text =
                    format!("{chain} ip {own} @{tgt}{peer}{port} {verdict} comment \"{comment}\"");
                if ingress {
                    self.ingress.push(text);
                } else {
                    self.egress.push(text);
                }
            }
        }
    }

    /// One match (with a leading space) per port, range or protocol (an empty match when the
    /// rule has no ports); named ports become a set of resolved destinations.
    fn port_matches(&mut self, rule: &PolicyRule, dest: Dest) -> Vec<String> {
        if rule.ports.is_empty() {
            return vec![String::new()];
        }
        let mut out = Vec::new();
        let mut ranges: BTreeMap<Protocol, BTreeSet<(u16, u16)>> = BTreeMap::new();
        let mut whole = BTreeSet::new();
        let mut named: Vec<(String, Protocol)> = Vec::new();
        for spec in &rule.ports {
            let PortSpec { protocol, port } = spec;
            match port {
                PortMatch::Any => {
                    whole.insert(*protocol);
                }
                PortMatch::Range(a, b) => {
                    ranges.entry(*protocol).or_default().insert((*a, *b));
                }
                PortMatch::Named(name) => {
                    if !named.contains(&(name.clone(), *protocol)) {
                        named.push((name.clone(), *protocol));
                    }
                }
            }
        }
        for proto in &whole {
            out.push(format!(" meta l4proto {}", proto.nft_name()));
        }
        for (proto, list) in ranges {
            if whole.contains(&proto) {
                continue;
            }
            for (a, b) in list {
                let ports = if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                };
                out.push(format!(
                    " meta l4proto {} th dport {ports}",
                    proto.nft_name()
                ));
            }
        }
        if !named.is_empty() {
            let name = self.shared_set(SetDef::Named { dest, ports: named });
            out.push(format!(" ip daddr . meta l4proto . th dport @{name}"));
        }
        out
    }
}
