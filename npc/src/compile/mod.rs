// SPDX-License-Identifier: Apache-2.0
//! `compile`: the pure function from a snapshot of API objects to the node's whole nftables
//! ruleset (STYLE §2, compute first, apply second), and the incremental form of it that the
//! controller keeps between watch events.
//!
//! Layout (two tables, both named `weave-npc`; no other table is ever named):
//!
//! - `inet weave-npc` has two base chains on the forward hook, which sees routed traffic and,
//!   through `br_netfilter`, traffic bridged between ports of the `weave` bridge: `egress`
//!   (priority -1) checks new flows from local pods, `ingress` (priority 0) new flows to local
//!   pods. An `accept` ends only its own base chain, so a flow allowed out of its source pod
//!   still meets the destination's ingress check. Each base chain accepts established and
//!   related packets first, then runs the three tiers in order:
//!   1. `<dir>-admin`: the Admin ClusterNetworkPolicy rules by priority (`accept`, `return`
//!      for Pass, or count and jump to `<dir>-denied` for Deny);
//!   2. a verdict map keyed by the local pod's address (`<dir>-np-pods`) jumps, when
//!      NetworkPolicies isolate the pod, to the chain of its group (`<dir>-group-<hash>`:
//!      pods selected by the same policies share one), which jumps to the chain of every
//!      policy selecting it (`<dir>-policy/<ns>/<name>`, whose rules `accept`) and then to
//!      `<dir>-denied`, where a verdict map by address leads to the pod's accounting chain;
//!   3. `<dir>-baseline`: the Baseline ClusterNetworkPolicy rules, for pods no NetworkPolicy
//!      isolates. What passes all three is accepted by the chain's policy.
//!
//!   Accounting chains `<dir>-denied/<ns>/<pod>` count every drop in a named counter, log it
//!   (rate-limited) to nflog with the pod's name, and drop. Traffic between a pod and its own
//!   node (kubelet probes; input and output hooks) is never filtered, as the NetworkPolicy
//!   API specifies.
//! - `bridge weave-npc`, chain `forward`: frames to or from a pod port are dropped unless they
//!   are ARP or IPv4 with the address of a known local pod on the pod's side. A pod the
//!   controller has not seen yet is therefore unreachable (never open by accident), and IPv6
//!   (link-local included; pods have IPv4 addresses only) never reaches or leaves a pod.
//!
//! Everything that churns with pods and namespaces lives in named sets (`sets.rs`). Policy
//! rules depend on the policies only; the per-pod chains and verdict maps are derived from
//! the local pods and the policies selecting them. A [`Compiled`] keeps all of it and follows
//! changes of any object incrementally: [`Compiled::update`] turns the difference since the
//! last apply into one transaction (set elements, the chains of changed policies, the chains
//! of local pods whose policies changed, map elements); [`Compiled::full`] renders the whole
//! ruleset. Names are derived from contents, so the incremental state renders exactly as a
//! fresh compile of the same snapshot.
//!
//! The output is a script in nft's native syntax (`nft -f -`): nft parses it faster than the
//! equivalent JSON. No rule uses an anonymous set (`{ 80, 443 }`), because nft 1.0 spends
//! time quadratic in their number when a ruleset is loaded; several ports of one rule become
//! a named interval set instead.

mod render;
mod rules;
pub(crate) mod sets;

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;

pub use self::render::{cleanup, hold};
use self::sets::{object_name, Elem, SetDef};
use crate::cluster_policy::{ClusterNetworkPolicy, ClusterPolicy};
use crate::policy::{NamespaceInfo, PodInfo, Policy, Rejection};

/// Name of both our tables.
pub const TABLE: &str = "weave-npc";
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
    /// All ClusterNetworkPolicies.
    pub cluster_policies: Vec<ClusterNetworkPolicy>,
    /// All nodes (for ClusterNetworkPolicy node peers).
    pub nodes: Vec<Node>,
}

/// A named drop counter, for metrics.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DropCounter {
    /// Counter name in the inet table.
    pub name: String,
    /// What it counts.
    pub owner: CounterOwner,
    /// `ingress` or `egress`.
    pub direction: &'static str,
}

/// Whose drops a counter counts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum CounterOwner {
    /// Every drop of traffic of this local pod (namespace, name).
    Pod(String, String),
    /// Drops by one Deny rule of a ClusterNetworkPolicy (policy, rule).
    ClusterRule(String, String),
}

/// A pod's identity: namespace and name.
pub(crate) type PodKey = (String, String);

/// A node as ClusterNetworkPolicy node peers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeInfo {
    /// Labels.
    pub(crate) labels: BTreeMap<String, String>,
    /// InternalIP addresses (IPv4).
    pub(crate) addresses: Vec<Ipv4Addr>,
}

/// A named set and its state.
#[derive(Debug, Clone)]
struct Slot {
    /// What it holds.
    def: SetDef,
    /// Its name.
    name: String,
    /// Element → number of pods (or nodes) contributing it.
    contents: BTreeMap<Elem, u32>,
    /// Rules (policies) using it; at zero it is removed by the next update.
    refs: u32,
    /// Whether the kernel has it (element changes are then tracked).
    in_kernel: bool,
}

/// Index of a set in [`Compiled::slots`].
type SetId = usize;

/// A NetworkPolicy as compiled: its model, the sets its rules use and the rules of its
/// two chains (`None` when it does not isolate that direction).
#[derive(Debug, Clone)]
struct PolicyEntry {
    /// The validated (or fail-closed) policy.
    policy: Policy,
    /// Sets its rules hold a reference to.
    sets: Vec<SetId>,
    /// Rules of `ingress-policy/<ns>/<name>`.
    ingress: Option<Vec<String>>,
    /// Rules of `egress-policy/<ns>/<name>`.
    egress: Option<Vec<String>>,
}

/// The compiled ClusterNetworkPolicies: models in evaluation order, the sets they use, and
/// the rules of the four tier chains.
#[derive(Debug, Clone, Default)]
struct ClusterEntry {
    /// Valid policies sorted by tier, priority and name.
    policies: Vec<ClusterPolicy>,
    /// Sets the tier rules hold.
    sets: Vec<SetId>,
    /// Tier chain name → rules.
    chains: BTreeMap<String, Vec<String>>,
    /// Counters of Deny rules.
    counters: BTreeMap<String, DropCounter>,
    /// Rejected ClusterNetworkPolicies.
    rejected: Vec<Rejection>,
}

/// What the kernel holds as far as the last applied transaction goes.
#[derive(Debug, Clone, Default)]
struct Applied {
    /// Derived chains (pod, accounting, tier) and their rules.
    chains: BTreeMap<String, Vec<String>>,
    /// Policy chains.
    policy_chains: BTreeSet<String>,
    /// Verdict maps: name → address → verdict.
    maps: BTreeMap<String, BTreeMap<Ipv4Addr, String>>,
    /// Named counters.
    counters: BTreeSet<String>,
}

/// A compiled ruleset that follows API changes incrementally.
///
/// Build one with [`compile`] (or [`Compiled::new`] plus `set_*` calls), render it whole
/// with [`full`](Self::full), feed it changed objects, and turn what changed into a small
/// transaction with [`update`](Self::update).
#[derive(Debug, Clone)]
pub struct Compiled {
    /// Node settings.
    node: NodeConfig,
    /// Known pods (those policy applies to).
    pods: HashMap<PodKey, PodInfo>,
    /// Pod names per namespace.
    pods_by_ns: HashMap<String, BTreeSet<String>>,
    /// Pods per address (a stale pod and its successor may share one).
    pods_by_ip: HashMap<Ipv4Addr, BTreeSet<PodKey>>,
    /// Known namespaces' labels.
    namespaces: HashMap<String, BTreeMap<String, String>>,
    /// Known nodes.
    nodes: HashMap<String, NodeInfo>,
    /// NetworkPolicies by (namespace, name).
    policies: BTreeMap<PodKey, PolicyEntry>,
    /// NetworkPolicies that were rejected, by (namespace, name).
    np_rejected: BTreeMap<PodKey, Rejection>,
    /// ClusterNetworkPolicies.
    cluster: ClusterEntry,
    /// Sets; `None` marks a free slot.
    slots: Vec<Option<Slot>>,
    /// Sets by definition.
    set_ids: HashMap<SetDef, SetId>,
    /// Pod sets whose members all live in one namespace, by that namespace.
    by_namespace: HashMap<String, BTreeSet<SetId>>,
    /// Pod sets that may hold a pod of any namespace.
    global: BTreeSet<SetId>,
    /// Node sets.
    node_sets: BTreeSet<SetId>,
    /// Element changes of sets the kernel has since the last update: (set, element) → whether
    /// the kernel has the element.
    touched: HashMap<(SetId, Elem), bool>,
    /// Policy chains changed since the last update.
    dirty_policy_chains: BTreeSet<String>,
    /// The kernel's state.
    applied: Applied,
    /// Addresses the node's agent handed out, pods' or not.
    attached: BTreeSet<Ipv4Addr>,
}

/// Builds the ruleset for `node` from `snapshot`.
pub fn compile(snapshot: &Snapshot, node: &NodeConfig) -> Compiled {
    Compiled::build(
        node,
        Objects {
            policies: &snapshot.policies,
            cluster_policies: &snapshot.cluster_policies,
            namespaces: &snapshot.namespaces,
            nodes: &snapshot.nodes,
            pods: &snapshot.pods,
            attached: &BTreeSet::new(),
        },
    )
}

/// Borrowed API objects to build a [`Compiled`] from (slices of owned objects or of `Arc`s,
/// as reflector stores hold them).
#[derive(Debug, Clone, Copy)]
pub struct Objects<'a, P, N, S, O> {
    /// NetworkPolicies.
    pub policies: &'a [P],
    /// ClusterNetworkPolicies.
    pub cluster_policies: &'a [ClusterNetworkPolicy],
    /// Namespaces.
    pub namespaces: &'a [S],
    /// Nodes.
    pub nodes: &'a [O],
    /// Pods.
    pub pods: &'a [N],
    /// Addresses the node's agent handed out ([`Compiled::set_attached`]).
    pub attached: &'a BTreeSet<Ipv4Addr>,
}

impl Compiled {
    /// The state for `node` built from `objects`, marked as applied (render it with
    /// [`full`](Self::full)).
    pub fn build<P, N, S, O>(node: &NodeConfig, objects: Objects<'_, P, N, S, O>) -> Self
    where
        P: Borrow<NetworkPolicy>,
        N: Borrow<Pod>,
        S: Borrow<Namespace>,
        O: Borrow<Node>,
    {
        let mut c = Self::new(node);
        for np in objects.policies {
            c.set_policy(np.borrow());
        }
        c.set_cluster_policies(objects.cluster_policies);
        for ns in objects.namespaces {
            c.set_namespace(ns.borrow());
        }
        for n in objects.nodes {
            c.set_node(n.borrow());
        }
        for pod in objects.pods {
            c.set_pod(pod.borrow());
        }
        c.set_attached(objects.attached);
        c.applied();
        c
    }

    /// An empty state: no policies, pods, namespaces or nodes.
    pub fn new(node: &NodeConfig) -> Self {
        let mut c = Self {
            node: node.clone(),
            pods: HashMap::new(),
            pods_by_ns: HashMap::new(),
            pods_by_ip: HashMap::new(),
            namespaces: HashMap::new(),
            nodes: HashMap::new(),
            policies: BTreeMap::new(),
            np_rejected: BTreeMap::new(),
            cluster: ClusterEntry::default(),
            slots: Vec::new(),
            set_ids: HashMap::new(),
            by_namespace: HashMap::new(),
            global: BTreeSet::new(),
            node_sets: BTreeSet::new(),
            touched: HashMap::new(),
            dirty_policy_chains: BTreeSet::new(),
            applied: Applied::default(),
            attached: BTreeSet::new(),
        };
        // Held for good.
        c.acquire(SetDef::LocalPods);
        c
    }

    /// Policies that were rejected, with the reason (NetworkPolicies by key, then
    /// ClusterNetworkPolicies).
    pub fn rejected(&self) -> Vec<Rejection> {
        self.np_rejected
            .values()
            .chain(&self.cluster.rejected)
            .cloned()
            .collect()
    }

    /// Adds or replaces NetworkPolicy `np`.
    pub fn set_policy(&mut self, np: &NetworkPolicy) {
        let key = (
            np.metadata.namespace.clone().unwrap_or_default(),
            np.metadata.name.clone().unwrap_or_default(),
        );
        let policy = match Policy::parse(np) {
            Ok(p) => {
                self.np_rejected.remove(&key);
                Some(p)
            }
            Err(r) => {
                // Fail closed: the policy's pods stay isolated, with nothing allowed.
                let closed = r.isolate.clone().map(|(target, ingress, egress)| Policy {
                    namespace: key.0.clone(),
                    name: key.1.clone(),
                    target,
                    ingress: ingress.then(Vec::new),
                    egress: egress.then(Vec::new),
                });
                self.np_rejected.insert(key.clone(), r);
                closed
            }
        };
        if self.policies.get(&key).map(|e| &e.policy) == policy.as_ref() {
            return;
        }
        self.drop_policy(&key);
        if let Some(policy) = policy {
            let entry = self.compile_policy(policy);
            for dir in ["ingress", "egress"] {
                self.dirty_policy_chains
                    .insert(policy_chain(dir, &key.0, &key.1));
            }
            self.policies.insert(key, entry);
        }
    }

    /// Removes NetworkPolicy `namespace/name`.
    pub fn remove_policy(&mut self, namespace: &str, name: &str) {
        let key = (namespace.to_owned(), name.to_owned());
        self.np_rejected.remove(&key);
        self.drop_policy(&key);
    }

    /// Replaces all ClusterNetworkPolicies.
    pub fn set_cluster_policies(&mut self, list: &[ClusterNetworkPolicy]) {
        let mut valid = Vec::new();
        let mut rejected = Vec::new();
        for cnp in list {
            match ClusterPolicy::parse(cnp) {
                Ok(p) => valid.push(p),
                Err(r) => rejected.push(r),
            }
        }
        valid.sort_by(|a, b| a.order().cmp(&b.order()));
        rejected.sort_by(|a, b| a.policy.cmp(&b.policy));
        if valid == self.cluster.policies {
            self.cluster.rejected = rejected;
            return;
        }
        let old = std::mem::take(&mut self.cluster);
        let mut entry = self.compile_cluster(valid);
        entry.rejected.extend(rejected);
        for id in old.sets {
            self.release(id);
        }
        self.cluster = entry;
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

    /// Adds or replaces node `node`.
    pub fn set_node(&mut self, node: &Node) {
        let name = node.metadata.name.clone().unwrap_or_default();
        let info = NodeInfo {
            labels: node.metadata.labels.clone().unwrap_or_default(),
            addresses: node
                .status
                .iter()
                .flat_map(|s| s.addresses.iter().flatten())
                .filter(|a| a.type_ == "InternalIP")
                .filter_map(|a| a.address.parse().ok())
                .collect(),
        };
        if self.nodes.get(&name) == Some(&info) {
            return;
        }
        self.remove_node(&name);
        self.contribute_node(&info, true);
        self.nodes.insert(name, info);
    }

    /// Removes node `name`.
    pub fn remove_node(&mut self, name: &str) {
        if let Some(old) = self.nodes.remove(name) {
            self.contribute_node(&old, false);
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
        self.remove_pod(&key.0, &key.1);
        self.contribute(&info, false, true);
        self.pods_by_ns
            .entry(key.0.clone())
            .or_default()
            .insert(key.1.clone());
        self.pods_by_ip
            .entry(info.ip)
            .or_default()
            .insert(key.clone());
        self.pods.insert(key, info);
    }

    /// Replaces the addresses the node's agent handed out (`GET /ipam/allocations`): they
    /// join the local pods' addresses in the bridge guard's set, so that a container the
    /// agent wired outside Kubernetes (`weave attach`, nerdctl or another CNI runtime) may
    /// send and receive on its pod port. No policy selects such a container; policies of the
    /// pods it talks to apply as to any address.
    pub fn set_attached(&mut self, addrs: &BTreeSet<Ipv4Addr>) {
        if *addrs == self.attached {
            return;
        }
        let Some(&id) = self.set_ids.get(&SetDef::LocalPods) else {
            return;
        };
        let gone = self
            .attached
            .difference(addrs)
            .map(|a| (id, Elem::Addr(*a)))
            .collect::<Vec<_>>();
        let new: Vec<_> = addrs
            .difference(&self.attached)
            .map(|a| (id, Elem::Addr(*a)))
            .collect();
        self.count(gone, false);
        self.count(new, true);
        self.attached.clone_from(addrs);
    }

    /// Removes pod `namespace/name`.
    pub fn remove_pod(&mut self, namespace: &str, name: &str) {
        let key = (namespace.to_owned(), name.to_owned());
        let Some(old) = self.pods.remove(&key) else {
            return;
        };
        self.contribute(&old, false, false);
        if let Some(names) = self.pods_by_ns.get_mut(namespace) {
            names.remove(name);
            if names.is_empty() {
                self.pods_by_ns.remove(namespace);
            }
        }
        if let Some(keys) = self.pods_by_ip.get_mut(&old.ip) {
            keys.remove(&key);
            if keys.is_empty() {
                self.pods_by_ip.remove(&old.ip);
            }
        }
    }

    /// Marks the current state as what the kernel holds (after applying [`full`](Self::full)).
    pub fn applied(&mut self) {
        self.drop_unused_sets();
        for slot in self.slots.iter_mut().flatten() {
            slot.in_kernel = true;
        }
        self.touched.clear();
        self.dirty_policy_chains.clear();
        self.applied = Applied {
            chains: self.derived_chains(),
            policy_chains: self.policy_chains().into_keys().collect(),
            maps: self.maps(),
            counters: self.counters().into_iter().map(|c| c.name).collect(),
        };
    }

    /// Number of rules, for logs and benchmarks.
    pub fn rule_count(&self) -> usize {
        let policy: usize = self
            .policies
            .values()
            .map(|e| {
                e.ingress
                    .iter()
                    .chain(&e.egress)
                    .map(Vec::len)
                    .sum::<usize>()
            })
            .sum();
        let derived: usize = self.derived_chains().values().map(Vec::len).sum();
        policy + derived + render::BASE_RULES
    }

    /// Named drop counters: every local pod's, per direction, and every ClusterNetworkPolicy
    /// Deny rule's.
    pub fn counters(&self) -> Vec<DropCounter> {
        let mut out = Vec::with_capacity(2 * self.local_pods().len());
        for (direction, _) in DIRECTIONS {
            for (namespace, pod) in self.local_pods().keys() {
                out.push(DropCounter {
                    name: accounting_chain(direction, namespace, pod),
                    owner: CounterOwner::Pod(namespace.clone(), pod.clone()),
                    direction,
                });
            }
        }
        out.extend(self.cluster.counters.values().cloned());
        out
    }

    /// The elements of every set, by family and name (for tests comparing states).
    pub fn set_contents(&self) -> BTreeMap<(String, String), BTreeSet<String>> {
        self.slots
            .iter()
            .flatten()
            .filter(|s| s.refs > 0)
            .map(|s| {
                let family = if s.def.bridge() { "bridge" } else { "inet" };
                (
                    (family.to_owned(), s.name.clone()),
                    s.contents.keys().map(ToString::to_string).collect(),
                )
            })
            .collect()
    }

    /// The pods with address `ip`.
    pub fn pods_at(&self, ip: Ipv4Addr) -> Vec<&PodInfo> {
        self.pods_by_ip
            .get(&ip)
            .into_iter()
            .flatten()
            .filter_map(|k| self.pods.get(k))
            .collect()
    }

    /// Pod `namespace/name`, if known.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&PodInfo> {
        self.pods.get(&(namespace.to_owned(), name.to_owned()))
    }

    /// The valid (or fail-closed) NetworkPolicies.
    pub fn policies(&self) -> impl Iterator<Item = &Policy> {
        self.policies.values().map(|e| &e.policy)
    }

    /// The valid ClusterNetworkPolicies in evaluation order.
    pub fn cluster_policies(&self) -> &[ClusterPolicy] {
        &self.cluster.policies
    }

    /// The labels of namespace `name`, if it exists.
    pub fn namespace_labels(&self, name: &str) -> Option<&BTreeMap<String, String>> {
        self.namespaces.get(name)
    }

    /// The addresses of nodes whose labels `matches` accepts.
    pub(crate) fn node_addresses(
        &self,
        matches: impl Fn(&BTreeMap<String, String>) -> bool,
    ) -> Vec<Ipv4Addr> {
        self.nodes
            .values()
            .filter(|n| matches(&n.labels))
            .flat_map(|n| n.addresses.iter().copied())
            .collect()
    }

    /// Whether `pod` runs on this node.
    pub(crate) fn is_local(&self, pod: &PodInfo) -> bool {
        pod.node == self.node.node_name
    }

    /// Local pods and their addresses.
    fn local_pods(&self) -> BTreeMap<PodKey, Ipv4Addr> {
        self.pods
            .iter()
            .filter(|(_, p)| self.is_local(p))
            .map(|(k, p)| (k.clone(), p.ip))
            .collect()
    }

    /// The NetworkPolicies isolating `pod` in direction `ingress` (or egress), by key.
    pub fn isolating(&self, pod: &PodInfo, ingress: bool) -> Vec<&Policy> {
        let lo = (pod.namespace.clone(), String::new());
        self.policies
            .range(lo..)
            .take_while(|(k, _)| k.0 == pod.namespace)
            .map(|(_, e)| &e.policy)
            .filter(|p| {
                let on = if ingress {
                    p.ingress.is_some()
                } else {
                    p.egress.is_some()
                };
                on && p.target.matches(&pod.labels)
            })
            .collect()
    }

    /// Removes policy `key` and what it holds.
    fn drop_policy(&mut self, key: &PodKey) {
        if let Some(old) = self.policies.remove(key) {
            for id in old.sets {
                self.release(id);
            }
            for dir in ["ingress", "egress"] {
                self.dirty_policy_chains
                    .insert(policy_chain(dir, &key.0, &key.1));
            }
        }
    }

    /// The set holding `def`, created (and filled) on first use; one more reference.
    fn acquire(&mut self, def: SetDef) -> SetId {
        if let Some(&id) = self.set_ids.get(&def) {
            if let Some(slot) = self.slots[id].as_mut() {
                slot.refs += 1;
            }
            return id;
        }
        let mut name = def.name();
        // A hash collision between two definitions gets the second a distinct name.
        while self.slots.iter().flatten().any(|s| s.name == name) {
            name.push('x');
        }
        let mut contents: BTreeMap<Elem, u32> = BTreeMap::new();
        for e in def.static_elems() {
            *contents.entry(e).or_insert(0) += 1;
        }
        let mut found = Vec::new();
        if def.holds_pods() {
            for pod in self.pods.values() {
                let labels = self.namespaces.get(&pod.namespace);
                def.pod_elems(pod, self.is_local(pod), labels, &mut found);
            }
        }
        if let SetDef::Nodes(sel) = &def {
            found.extend(
                self.node_addresses(|l| sel.matches(l))
                    .into_iter()
                    .map(Elem::Addr),
            );
        }
        for e in found {
            *contents.entry(e).or_insert(0) += 1;
        }
        let slot = Slot {
            def: def.clone(),
            name,
            contents,
            refs: 1,
            in_kernel: false,
        };
        let id = match self.slots.iter().position(Option::is_none) {
            Some(free) => {
                self.slots[free] = Some(slot);
                free
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        };
        if def.holds_pods() {
            match def.namespace() {
                Some(ns) => {
                    self.by_namespace
                        .entry(ns.to_owned())
                        .or_default()
                        .insert(id);
                }
                None => {
                    self.global.insert(id);
                }
            }
        }
        if matches!(def, SetDef::Nodes(_)) {
            self.node_sets.insert(id);
        }
        self.set_ids.insert(def, id);
        id
    }

    /// One reference fewer to set `id`; unused sets go at the next update.
    fn release(&mut self, id: SetId) {
        if let Some(slot) = self.slots[id].as_mut() {
            slot.refs = slot.refs.saturating_sub(1);
        }
    }

    /// Forgets sets no rule uses; returns the names of those the kernel has.
    fn drop_unused_sets(&mut self) -> Vec<(bool, String)> {
        let mut gone = Vec::new();
        for id in 0..self.slots.len() {
            let unused = self.slots[id].as_ref().is_some_and(|s| s.refs == 0);
            if !unused {
                continue;
            }
            let Some(slot) = self.slots[id].take() else {
                continue;
            };
            if slot.in_kernel {
                gone.push((slot.def.bridge(), slot.name.clone()));
            }
            self.set_ids.remove(&slot.def);
            self.global.remove(&id);
            self.node_sets.remove(&id);
            if let Some(ns) = slot.def.namespace() {
                if let Some(ids) = self.by_namespace.get_mut(ns) {
                    ids.remove(&id);
                    if ids.is_empty() {
                        self.by_namespace.remove(ns);
                    }
                }
            }
            self.touched.retain(|(set, _), _| *set != id);
        }
        gone
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
            self.contribute(pod, true, false);
        }
        match labels {
            Some(l) => self.namespaces.insert(name.to_owned(), l),
            None => self.namespaces.remove(name),
        };
        for pod in &pods {
            self.contribute(pod, true, true);
        }
    }

    /// Adds (`add`) or retracts what `pod` puts into the sets; `global_only`: only the sets
    /// that depend on namespace labels.
    fn contribute(&mut self, pod: &PodInfo, global_only: bool, add: bool) {
        let local = self.is_local(pod);
        let ns_labels = self.namespaces.get(&pod.namespace);
        let mut found: Vec<(SetId, Elem)> = Vec::new();
        let own = if global_only {
            None
        } else {
            self.by_namespace.get(&pod.namespace)
        };
        let mut elems = Vec::new();
        for &id in self.global.iter().chain(own.into_iter().flatten()) {
            if let Some(slot) = &self.slots[id] {
                elems.clear();
                slot.def.pod_elems(pod, local, ns_labels, &mut elems);
                found.extend(elems.iter().map(|e| (id, *e)));
            }
        }
        self.count(found, add);
    }

    /// Adds or retracts what `node` puts into the node sets.
    fn contribute_node(&mut self, node: &NodeInfo, add: bool) {
        let mut found = Vec::new();
        for &id in &self.node_sets {
            if let Some(Slot {
                def: SetDef::Nodes(sel),
                ..
            }) = &self.slots[id]
            {
                if sel.matches(&node.labels) {
                    found.extend(node.addresses.iter().map(|a| (id, Elem::Addr(*a))));
                }
            }
        }
        self.count(found, add);
    }

    /// Adds or retracts one contribution per entry of `found`, noting element changes of sets
    /// the kernel has.
    fn count(&mut self, found: Vec<(SetId, Elem)>, add: bool) {
        for (id, elem) in found {
            let Some(slot) = self.slots[id].as_mut() else {
                continue;
            };
            if slot.in_kernel {
                let present = slot.contents.contains_key(&elem);
                self.touched.entry((id, elem)).or_insert(present);
            }
            if add {
                *slot.contents.entry(elem).or_insert(0) += 1;
            } else if let Some(n) = slot.contents.get_mut(&elem) {
                *n -= 1;
                if *n == 0 {
                    slot.contents.remove(&elem);
                }
            }
        }
    }

    /// The local pod owning each local address (the first by name when a stale pod and its
    /// successor share it).
    fn owners(&self) -> BTreeMap<Ipv4Addr, PodKey> {
        let mut out = BTreeMap::new();
        for (key, ip) in self.local_pods() {
            out.entry(ip).or_insert(key);
        }
        out
    }

    /// Policy chains and their rules.
    fn policy_chains(&self) -> BTreeMap<String, &Vec<String>> {
        let mut out = BTreeMap::new();
        for ((ns, name), e) in &self.policies {
            if let Some(rules) = &e.ingress {
                out.insert(policy_chain("ingress", ns, name), rules);
            }
            if let Some(rules) = &e.egress {
                out.insert(policy_chain("egress", ns, name), rules);
            }
        }
        out
    }

    /// Chains derived from the local pods and the policies: accounting and pod chains, and
    /// the tier chains.
    fn derived_chains(&self) -> BTreeMap<String, Vec<String>> {
        let mut out = self.cluster.chains.clone();
        for (namespace, name) in self.local_pods().into_keys() {
            let Some(pod) = self.pods.get(&(namespace.clone(), name.clone())) else {
                continue;
            };
            for (dir, _) in DIRECTIONS {
                let accounting = accounting_chain(dir, &namespace, &name);
                // nflog prefixes hold at most 127 bytes; names are ASCII (DNS names).
                let prefix = sets::cut(&format!("weave-npc {dir} denied {namespace}/{name}"), 120);
                out.insert(
                    accounting.clone(),
                    vec![
                        format!(
                            "counter name \"{accounting}\" limit rate {}/second log prefix \"{prefix}: \" group {}",
                            self.node.log_rate, self.node.log_group
                        ),
                        "drop".to_owned(),
                    ],
                );
                if let Some((group, policies)) = self.group(pod, dir) {
                    let mut rules: Vec<String> = policies
                        .iter()
                        .map(|p| format!("jump {}", policy_chain(dir, &p.namespace, &p.name)))
                        .collect();
                    // No policy accepted: the pod's accounting (by address) and drop.
                    rules.push(format!("jump {dir}-denied"));
                    out.insert(group, rules);
                }
            }
        }
        out
    }

    /// The group chain of `pod` in direction `dir` and the NetworkPolicies it applies, when
    /// any isolates the pod. Pods selected by the same policies share one chain (named by a
    /// hash of the policies), so a ruleset has a chain per distinct set of policies rather
    /// than per pod.
    fn group(&self, pod: &PodInfo, dir: &str) -> Option<(String, Vec<&Policy>)> {
        let policies = self.isolating(pod, dir == "ingress");
        if policies.is_empty() {
            return None;
        }
        let keys: Vec<String> = policies.iter().map(|p| p.key()).collect();
        let name = format!(
            "{dir}-group-{:016x}",
            sets::fnv1a(keys.join(",").as_bytes())
        );
        Some((name, policies))
    }

    /// The four verdict maps: address → verdict.
    fn maps(&self) -> BTreeMap<String, BTreeMap<Ipv4Addr, String>> {
        let mut out: BTreeMap<String, BTreeMap<Ipv4Addr, String>> = BTreeMap::new();
        for (dir, _) in DIRECTIONS {
            out.insert(format!("{dir}-np-pods"), BTreeMap::new());
            out.insert(format!("{dir}-denied-pods"), BTreeMap::new());
        }
        for (ip, (namespace, name)) in self.owners() {
            let Some(pod) = self.pods.get(&(namespace.clone(), name.clone())) else {
                continue;
            };
            for (dir, _) in DIRECTIONS {
                if let Some(m) = out.get_mut(&format!("{dir}-denied-pods")) {
                    m.insert(
                        ip,
                        format!("jump {}", accounting_chain(dir, &namespace, &name)),
                    );
                }
                if let Some((group, _)) = self.group(pod, dir) {
                    if let Some(m) = out.get_mut(&format!("{dir}-np-pods")) {
                        m.insert(ip, format!("jump {group}"));
                    }
                }
            }
        }
        out
    }
}

/// The chain of NetworkPolicy `ns/name` for direction `dir`.
fn policy_chain(dir: &str, ns: &str, name: &str) -> String {
    object_name(&[&format!("{dir}-policy"), ns, name])
}

/// The accounting chain (and counter) of local pod `ns/name` in direction `dir`.
pub(crate) fn accounting_chain(dir: &str, ns: &str, name: &str) -> String {
    object_name(&[&format!("{dir}-denied"), ns, name])
}
