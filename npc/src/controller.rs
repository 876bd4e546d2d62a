// SPDX-License-Identifier: Apache-2.0
//! The controller: kube-rs reflectors for Pods, Namespaces, NetworkPolicies, Nodes and (when
//! the CRD is served) ClusterNetworkPolicies feed one reconcile loop that compiles the state
//! and applies it.
//!
//! Invariants:
//! - Nothing is applied before every cache has been listed once, so a restart keeps the
//!   previous process's ruleset in force (or, after a boot, the hold ruleset of the init
//!   container) until a complete new one replaces it in one transaction.
//! - The loop works on the caches' state, not on individual events, so their order cannot
//!   matter. Objects whose resourceVersion changed are fed to the kept [`Compiled`], which
//!   updates what they affect (a policy change rewrites that policy's chains and the chains
//!   of the local pods it selects; a pod change, set elements); only the difference is sent.
//! - A watch that fails keeps its cache: the watcher relists with backoff and the ruleset stays
//!   as it was meanwhile. A failed transaction is retried as a full rebuild, after a delay
//!   that doubles with each failure in a row (1 s up to [`MAX_BACKOFF`]); changes arriving
//!   meanwhile wait for it.
//! - Every `resync` a full rebuild is applied even without changes, repairing drift (someone
//!   deleting or editing our tables).

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, ObjectReference, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, store::Writer, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, instrument, warn};
use weave_platform::firewall::{Firewall, NftFirewall};

use crate::attached::{self, Attached};
use crate::cluster_policy::{self, ClusterNetworkPolicy};
use crate::compile::{Compiled, NodeConfig, Objects};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::metrics::{self, Metrics};
use crate::policy::Rejection;

/// Quiet time after a change before recompiling, so a burst of events costs one apply.
const DEBOUNCE: Duration = Duration::from_millis(5);
/// Wait before the first retry of a failed transaction.
const RETRY: Duration = Duration::from_secs(1);
/// Longest wait between retries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Runs weave-npc until `cancel`: builds the client from `config`, serves metrics, reads the
/// drop log and runs the [`Controller`] with the real `nft`.
pub async fn run(config: Config, cancel: CancellationToken) -> Result<()> {
    let started = Instant::now();
    check_bridge_netfilter();
    let client = client(&config).await?;
    let firewall: Arc<dyn Firewall> =
        Arc::new(NftFirewall::with_program(config.nft.clone()).with_limit(config.nft_limit));
    let metrics = Arc::new(Metrics::default());
    let mut tasks: JoinSet<(&'static str, Result<()>)> = JoinSet::new();
    if let Some(addr) = config.metrics_addr {
        let listener = metrics::bind(addr).await?;
        info!(%addr, "serving metrics");
        let (m, f, c) = (Arc::clone(&metrics), Arc::clone(&firewall), cancel.clone());
        // The loop runs at least every resync; three missed in a row means it is stuck.
        let stall = config.resync * 3 + Duration::from_secs(30);
        tasks.spawn(async move { ("metrics", metrics::serve(listener, m, f, stall, c).await) });
    }
    let mut controller = Controller::new(
        client.clone(),
        firewall,
        config.node.clone(),
        Arc::clone(&metrics),
        config.resync,
    );
    controller.started = started;
    controller.recorder = Some(Recorder::new(
        client,
        Reporter {
            controller: "weave-npc".into(),
            instance: Some(config.node.node_name.clone()),
        },
    ));
    if config.drop_log {
        let (shared, m, c) = (controller.shared(), Arc::clone(&metrics), cancel.clone());
        let group = config.node.log_group;
        tasks.spawn(async move {
            crate::droplog::run(group, shared, m, c).await;
            ("drop log", Ok(()))
        });
    }
    if let Some(socket) = config.api_socket.clone() {
        let (a, n, c) = (controller.attached(), controller.changed(), cancel.clone());
        tasks.spawn(async move {
            attached::poll(socket, a, n, c).await;
            ("agent allocations", Ok(()))
        });
    }
    let c = cancel.clone();
    tasks.spawn(async move { ("controller", controller.run(c).await) });
    let mut result = Ok(());
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((_, Ok(()))) => {}
            Ok((name, Err(err))) => {
                error!(task = name, error = %err, "task failed");
                cancel.cancel();
                if result.is_ok() {
                    result = Err(err);
                }
            }
            Err(source) => {
                cancel.cancel();
                if result.is_ok() {
                    result = Err(Error::Join {
                        what: "a task",
                        source,
                    });
                }
            }
        }
    }
    result
}

/// Removes both `weave-npc` tables (and nothing else) with `nft` at `program`.
pub async fn cleanup(program: std::path::PathBuf) -> Result<()> {
    apply_once(program, crate::compile::cleanup()).await
}

/// Installs the hold ruleset unless our tables exist (see [`crate::compile::hold`]);
/// returns whether it was installed.
pub async fn hold(program: std::path::PathBuf, pod_port_prefix: &str) -> Result<bool> {
    match apply_once(program, crate::compile::hold(pod_port_prefix)).await {
        Ok(()) => Ok(true),
        Err(Error::Firewall(weave_platform::firewall::FirewallError::Refused {
            stderr, ..
        })) if stderr.contains("File exists") => Ok(false),
        Err(e) => Err(e),
    }
}

/// Applies `script` once with `nft` at `program`.
async fn apply_once(program: std::path::PathBuf, script: String) -> Result<()> {
    let firewall = NftFirewall::with_program(program);
    tokio::task::spawn_blocking(move || firewall.apply_script(&script))
        .await
        .map_err(|source| Error::Join {
            what: "nft",
            source,
        })??;
    Ok(())
}

/// Warns when bridged IPv4 would bypass the inet hooks, which would leave same-node
/// pod-to-pod traffic unfiltered. Turning it on is the node's business (it is on by default
/// once `br_netfilter` is loaded), so weave-npc only says so loudly.
fn check_bridge_netfilter() {
    const KEY: &str = "net.bridge.bridge-nf-call-iptables";
    match weave_platform::read_sysctl(KEY) {
        Ok(v) if v == "1" => {}
        Ok(v) => error!(key = KEY, value = %v, "bridged pod traffic is not filtered: set it to 1"),
        Err(err) => {
            error!(key = KEY, error = %err, "br_netfilter is not available: same-node pod traffic is not filtered")
        }
    }
}

/// Builds the API client from `--kubeconfig`, or infers it (in-cluster or `$KUBECONFIG`).
pub async fn client(config: &Config) -> Result<Client> {
    client_from(config.kubeconfig.as_deref()).await
}

/// Builds the API client from `kubeconfig`, or infers it.
pub async fn client_from(kubeconfig: Option<&std::path::Path>) -> Result<Client> {
    let kube_config = match kubeconfig {
        Some(path) => {
            let file =
                kube::config::Kubeconfig::read_from(path).map_err(|source| Error::Kubeconfig {
                    path: path.to_owned(),
                    source,
                })?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|source| Error::Kubeconfig {
                    path: path.to_owned(),
                    source,
                })?
        }
        None => kube::Config::infer().await.map_err(Error::InferConfig)?,
    };
    Client::try_from(kube_config).map_err(Error::Client)
}

/// The API resource of ClusterNetworkPolicy.
pub fn cluster_policy_resource() -> ApiResource {
    ApiResource {
        group: cluster_policy::GROUP.into(),
        version: cluster_policy::VERSION.into(),
        api_version: format!("{}/{}", cluster_policy::GROUP, cluster_policy::VERSION),
        kind: cluster_policy::KIND.into(),
        plural: cluster_policy::PLURAL.into(),
    }
}

/// Whether the API server serves ClusterNetworkPolicy (its CRD is installed).
pub async fn cluster_policies_served(client: &Client) -> bool {
    let version = format!("{}/{}", cluster_policy::GROUP, cluster_policy::VERSION);
    match client.list_api_group_resources(&version).await {
        Ok(list) => list
            .resources
            .iter()
            .any(|r| r.name == cluster_policy::PLURAL),
        Err(_) => false,
    }
}

/// A ClusterNetworkPolicy from its dynamic form; `None` if it does not deserialize.
pub fn typed_cluster_policy(obj: &DynamicObject) -> Option<ClusterNetworkPolicy> {
    serde_json::to_value(obj)
        .ok()
        .and_then(|v| serde_json::from_value(v).ok())
}

/// Watches the API and keeps this node's ruleset equal to `compile` of what it sees.
pub struct Controller {
    /// API client.
    client: Client,
    /// Where rulesets go.
    firewall: Arc<dyn Firewall>,
    /// Node settings for compile.
    node: NodeConfig,
    /// Figures for `/metrics`.
    metrics: Arc<Metrics>,
    /// Period of the full reconcile.
    resync: Duration,
    /// The compiled state the kernel holds, shared with the drop log; `None` forces a
    /// rebuild.
    compiled: Arc<RwLock<Option<Compiled>>>,
    /// When the process started (for the first apply's log line).
    started: Instant,
    /// Posts Events about rejected policies (none in tests).
    recorder: Option<Recorder>,
    /// Addresses the node's agent handed out ([`attached`]).
    attached: Attached,
    /// Wakes the loop: a cache or the agent's allocations changed.
    changed: Arc<Notify>,
}

impl Controller {
    /// A controller using `client` and applying through `firewall`.
    pub fn new(
        client: Client,
        firewall: Arc<dyn Firewall>,
        node: NodeConfig,
        metrics: Arc<Metrics>,
        resync: Duration,
    ) -> Self {
        Self {
            client,
            firewall,
            node,
            metrics,
            resync,
            compiled: Arc::new(RwLock::new(None)),
            started: Instant::now(),
            recorder: None,
            attached: Attached::default(),
            changed: Arc::new(Notify::new()),
        }
    }

    /// The agent's allocations as the controller reads them, for [`attached::poll`].
    pub fn attached(&self) -> Attached {
        Arc::clone(&self.attached)
    }

    /// What wakes the controller's loop.
    pub fn changed(&self) -> Arc<Notify> {
        Arc::clone(&self.changed)
    }

    /// The compiled state, shared (the drop log reads it).
    pub fn shared(&self) -> Arc<RwLock<Option<Compiled>>> {
        Arc::clone(&self.compiled)
    }

    /// Runs until `cancel` or until a watch ends for good.
    pub async fn run(self, cancel: CancellationToken) -> Result<()> {
        let changed = Arc::clone(&self.changed);
        let mut watches: JoinSet<Result<()>> = JoinSet::new();
        let served = cluster_policies_served(&self.client).await;
        let pods = spawn_watch::<Pod>(&mut watches, &self.client, &changed, "pods");
        let namespaces =
            spawn_watch::<Namespace>(&mut watches, &self.client, &changed, "namespaces");
        let policies =
            spawn_watch::<NetworkPolicy>(&mut watches, &self.client, &changed, "networkpolicies");
        let nodes = spawn_watch::<Node>(&mut watches, &self.client, &changed, "nodes");
        let mut cluster = None;
        if served {
            cluster = Some(spawn_cluster_watch(&mut watches, &self.client, &changed));
        } else {
            info!("ClusterNetworkPolicy is not served (its CRD is not installed); checking again at each resync");
        }
        let ready = async {
            pods.wait_until_ready().await.is_ok()
                && namespaces.wait_until_ready().await.is_ok()
                && policies.wait_until_ready().await.is_ok()
                && nodes.wait_until_ready().await.is_ok()
                && match &cluster {
                    Some(c) => c.wait_until_ready().await.is_ok(),
                    None => true,
                }
        };
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            Some(ended) = watches.join_next() => return watch_result(ended),
            ok = ready => if !ok { return Err(Error::WatchEnded { kind: "initial list" }) },
        }
        info!(node = %self.node.node_name, "caches synced; enforcing");
        let mut state = Reconciler {
            seen: HashMap::new(),
            next_full: Instant::now(),
            reported: BTreeSet::new(),
            failures: 0,
            first_applied: false,
        };
        loop {
            if cluster.is_none()
                && Instant::now() >= state.next_full
                && cluster_policies_served(&self.client).await
            {
                info!("ClusterNetworkPolicy is served now; watching it");
                let store = spawn_cluster_watch(&mut watches, &self.client, &changed);
                // Enforce them in the same rebuild as everything else.
                let _ = store.wait_until_ready().await;
                cluster = Some(store);
            }
            let stores = Stores {
                pods: pods.state(),
                namespaces: namespaces.state(),
                policies: policies.state(),
                nodes: nodes.state(),
                cluster: cluster.as_ref().map(Store::state).unwrap_or_default(),
            };
            let wait = match self.reconcile(&mut state, &stores).await {
                Ok(()) => {
                    state.failures = 0;
                    state.next_full
                }
                Err(err) => {
                    state.failures += 1;
                    let backoff = backoff(state.failures);
                    error!(error = %err, failures = state.failures, retry_in = ?backoff, "apply failed; retrying with a full rebuild");
                    self.metrics.apply_failed();
                    *self.write() = None;
                    Instant::now() + backoff
                }
            };
            self.metrics.ticked();
            if state.failures > 0 {
                // Changes wait for the retry: a failing nft must not run at the rate of events.
                tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    Some(ended) = watches.join_next() => return watch_result(ended),
                    () = tokio::time::sleep_until(wait) => {}
                }
                continue;
            }
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                Some(ended) = watches.join_next() => return watch_result(ended),
                () = changed.notified() => tokio::time::sleep(DEBOUNCE).await,
                () = tokio::time::sleep_until(wait) => {}
            }
        }
    }

    /// The shared state, for writing (a panic elsewhere must not stop the controller).
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Option<Compiled>> {
        self.compiled
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Brings the kernel up to `stores`: a full rebuild when the resync is due or the last
    /// transaction failed; otherwise the objects that changed are fed to the kept
    /// [`Compiled`] and the difference applied.
    #[instrument(skip_all, fields(pods = stores.pods.len(), policies = stores.policies.len()))]
    async fn reconcile(&self, state: &mut Reconciler, stores: &Stores) -> Result<()> {
        let now = Instant::now();
        let attached = self
            .attached
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let (script, full, rejected, counters, rules) = {
            let mut guard = self.write();
            let rebuild = guard.is_none() || now >= state.next_full;
            let script = if rebuild {
                state.seen.clear();
                let compiled = Compiled::build(
                    &self.node,
                    Objects {
                        policies: &stores.policies,
                        cluster_policies: &typed(&stores.cluster),
                        namespaces: &stores.namespaces,
                        nodes: &stores.nodes,
                        pods: &stores.pods,
                        attached: &attached,
                    },
                );
                for kind in Kind::ALL {
                    state.seen.insert(kind, stores.versions(kind));
                }
                let script = compiled.full();
                *guard = Some(compiled);
                script
            } else {
                let compiled = guard
                    .as_mut()
                    .expect("rebuild is chosen when nothing is compiled");
                for kind in Kind::ALL {
                    let now = stores.versions(kind);
                    let seen = state.seen.entry(kind).or_default();
                    let changed = changed_keys(seen, &now);
                    if !changed.is_empty() {
                        stores.feed(kind, compiled, &changed);
                    }
                    *seen = now;
                }
                compiled.set_attached(&attached);
                compiled.update()
            };
            let compiled = guard.as_ref().expect("compiled above");
            (
                script,
                rebuild,
                compiled.rejected(),
                compiled.counters(),
                compiled.rule_count(),
            )
        };
        self.report(state, &rejected).await;
        self.metrics.compiled(&rejected, &counters, rules);
        if !script.is_empty() {
            let firewall = Arc::clone(&self.firewall);
            let started = Instant::now();
            tokio::task::spawn_blocking(move || firewall.apply_script(&script))
                .await
                .map_err(|source| Error::Join {
                    what: "nft",
                    source,
                })??;
            let seconds = started.elapsed().as_secs_f64();
            self.metrics
                .applied(full, seconds, now.elapsed().as_secs_f64());
            debug!(full, seconds, "ruleset applied");
        }
        if !state.first_applied {
            state.first_applied = true;
            info!(
                since_start_ms = self.started.elapsed().as_millis(),
                rules, "first ruleset applied; enforcing"
            );
        }
        if full {
            state.next_full = now + self.resync;
        }
        Ok(())
    }

    /// Logs rejections not logged before and posts an Event on each rejected policy.
    async fn report(&self, state: &mut Reconciler, rejected: &[Rejection]) {
        for r in rejected {
            let key = (r.policy.clone(), r.reason.clone());
            if state.reported.contains(&key) {
                continue;
            }
            let effect = if r.isolate.is_some() {
                "its pods stay isolated with nothing allowed"
            } else {
                "it is not enforced"
            };
            warn!(policy = %r.policy, reason = %r.reason, "policy rejected; {effect}");
            if let Some(recorder) = &self.recorder {
                let event = Event {
                    type_: EventType::Warning,
                    reason: "PolicyRejected".into(),
                    note: Some(format!(
                        "weave-npc on {}: {}; {effect}",
                        self.node.node_name, r.reason
                    )),
                    action: "Compile".into(),
                    secondary: None,
                };
                if let Err(err) = recorder.publish(&event, &reference(&r.policy)).await {
                    debug!(policy = %r.policy, error = %err, "post the rejection event");
                }
            }
        }
        state.reported = rejected
            .iter()
            .map(|r| (r.policy.clone(), r.reason.clone()))
            .collect();
    }
}

/// The object reference of a rejected policy (`namespace/name` or
/// `ClusterNetworkPolicy/name`).
fn reference(policy: &str) -> ObjectReference {
    match policy.strip_prefix(&format!("{}/", cluster_policy::KIND)) {
        Some(name) => ObjectReference {
            api_version: Some(format!(
                "{}/{}",
                cluster_policy::GROUP,
                cluster_policy::VERSION
            )),
            kind: Some(cluster_policy::KIND.into()),
            name: Some(name.into()),
            ..ObjectReference::default()
        },
        None => {
            let (namespace, name) = policy.split_once('/').unwrap_or(("", policy));
            ObjectReference {
                api_version: Some("networking.k8s.io/v1".into()),
                kind: Some("NetworkPolicy".into()),
                namespace: Some(namespace.into()),
                name: Some(name.into()),
                ..ObjectReference::default()
            }
        }
    }
}

/// The wait before retry number `failures` (1-based): 1 s, doubling, at most
/// [`MAX_BACKOFF`].
pub fn backoff(failures: u32) -> Duration {
    let doubled = RETRY.saturating_mul(1 << failures.saturating_sub(1).min(16));
    doubled.min(MAX_BACKOFF)
}

/// The ClusterNetworkPolicies of the store that deserialize.
fn typed(list: &[Arc<DynamicObject>]) -> Vec<ClusterNetworkPolicy> {
    list.iter()
        .filter_map(|o| typed_cluster_policy(o))
        .collect()
}

/// The kinds of object the controller follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    /// Pods.
    Pods,
    /// Namespaces.
    Namespaces,
    /// NetworkPolicies.
    Policies,
    /// Nodes.
    Nodes,
    /// ClusterNetworkPolicies.
    Cluster,
}

impl Kind {
    /// Every kind, in the order changes are fed (the order does not change the result).
    const ALL: [Kind; 5] = [
        Kind::Policies,
        Kind::Cluster,
        Kind::Namespaces,
        Kind::Nodes,
        Kind::Pods,
    ];
}

/// The reflectors' contents at one moment.
struct Stores {
    /// All pods.
    pods: Vec<Arc<Pod>>,
    /// All namespaces.
    namespaces: Vec<Arc<Namespace>>,
    /// All NetworkPolicies.
    policies: Vec<Arc<NetworkPolicy>>,
    /// All nodes.
    nodes: Vec<Arc<Node>>,
    /// All ClusterNetworkPolicies.
    cluster: Vec<Arc<DynamicObject>>,
}

impl Stores {
    /// The versions of the objects of `kind`.
    fn versions(&self, kind: Kind) -> HashMap<ObjectKey, Version> {
        match kind {
            Kind::Pods => versions(&self.pods),
            Kind::Namespaces => versions(&self.namespaces),
            Kind::Policies => versions(&self.policies),
            Kind::Nodes => versions(&self.nodes),
            Kind::Cluster => versions(&self.cluster),
        }
    }

    /// Feeds the objects of `kind` whose keys are in `changed` to `compiled` (removing those
    /// that are gone).
    fn feed(&self, kind: Kind, compiled: &mut Compiled, changed: &BTreeSet<ObjectKey>) {
        let pick = |key: &ObjectKey| changed.contains(key);
        match kind {
            Kind::Cluster => compiled.set_cluster_policies(&typed(&self.cluster)),
            Kind::Pods => {
                let present = present(&self.pods, &pick, |p| compiled.set_pod(p));
                for (ns, name) in changed.difference(&present) {
                    compiled.remove_pod(ns.as_deref().unwrap_or_default(), name);
                }
            }
            Kind::Namespaces => {
                let present = present(&self.namespaces, &pick, |n| compiled.set_namespace(n));
                for (_, name) in changed.difference(&present) {
                    compiled.remove_namespace(name);
                }
            }
            Kind::Policies => {
                let present = present(&self.policies, &pick, |p| compiled.set_policy(p));
                for (ns, name) in changed.difference(&present) {
                    compiled.remove_policy(ns.as_deref().unwrap_or_default(), name);
                }
            }
            Kind::Nodes => {
                let present = present(&self.nodes, &pick, |n| compiled.set_node(n));
                for (_, name) in changed.difference(&present) {
                    compiled.remove_node(name);
                }
            }
        }
    }
}

/// Calls `set` on each object of `objects` that `pick` selects; returns their keys.
fn present<K: Resource>(
    objects: &[Arc<K>],
    pick: &impl Fn(&ObjectKey) -> bool,
    mut set: impl FnMut(&K),
) -> BTreeSet<ObjectKey> {
    let mut out = BTreeSet::new();
    for o in objects {
        let key = key_of(o.as_ref());
        if pick(&key) {
            set(o);
            out.insert(key);
        }
    }
    out
}

/// An object's identity (namespace, name).
type ObjectKey = (Option<String>, String);

/// An object's version: its resourceVersion, or, without one, the address of the cached copy
/// (the reflector replaces the copy whenever the object changes).
type Version = (Option<String>, usize);

/// The identity of `o`.
fn key_of<K: Resource>(o: &K) -> ObjectKey {
    let meta = o.meta();
    (
        meta.namespace.clone(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// The versions of `objects` by identity.
fn versions<K: Resource>(objects: &[Arc<K>]) -> HashMap<ObjectKey, Version> {
    objects
        .iter()
        .map(|o| {
            let version = match &o.meta().resource_version {
                Some(rv) => (Some(rv.clone()), 0),
                None => (None, Arc::as_ptr(o).cast::<()>() as usize),
            };
            (key_of(o.as_ref()), version)
        })
        .collect()
}

/// Keys added, changed or removed between `seen` and `now`.
fn changed_keys(
    seen: &HashMap<ObjectKey, Version>,
    now: &HashMap<ObjectKey, Version>,
) -> BTreeSet<ObjectKey> {
    let mut out: BTreeSet<ObjectKey> = now
        .iter()
        .filter(|(k, v)| seen.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect();
    out.extend(seen.keys().filter(|k| !now.contains_key(*k)).cloned());
    out
}

/// What the reconcile loop remembers between rounds.
struct Reconciler {
    /// Versions of the objects fed to the compiled state, per kind.
    seen: HashMap<Kind, HashMap<ObjectKey, Version>>,
    /// When the next full rebuild is due.
    next_full: Instant,
    /// Rejections already logged.
    reported: BTreeSet<(String, String)>,
    /// Failed transactions in a row.
    failures: u32,
    /// Whether a ruleset has been applied since the start.
    first_applied: bool,
}

/// Starts a reflector for all objects of kind `K`; every event wakes the reconcile loop.
fn spawn_watch<K>(
    tasks: &mut JoinSet<Result<()>>,
    client: &Client,
    changed: &Arc<Notify>,
    kind: &'static str,
) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    let (store, writer) = reflector::store::<K>();
    spawn_reflector(tasks, Api::<K>::all(client.clone()), writer, changed, kind);
    store
}

/// Starts the ClusterNetworkPolicy reflector.
fn spawn_cluster_watch(
    tasks: &mut JoinSet<Result<()>>,
    client: &Client,
    changed: &Arc<Notify>,
) -> Store<DynamicObject> {
    let resource = cluster_policy_resource();
    let writer = Writer::new(resource.clone());
    let store = writer.as_reader();
    let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
    spawn_reflector(tasks, api, writer, changed, "clusternetworkpolicies");
    store
}

/// Runs a watcher on `api` into `writer`; every event wakes the reconcile loop.
fn spawn_reflector<K>(
    tasks: &mut JoinSet<Result<()>>,
    api: Api<K>,
    writer: Writer<K>,
    changed: &Arc<Notify>,
    kind: &'static str,
) where
    K: Resource + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Clone + Eq + std::hash::Hash + Send + Sync,
{
    let changed = Arc::clone(changed);
    tasks.spawn(async move {
        let stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .reflect(writer);
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => changed.notify_one(),
                Err(err) => warn!(kind, error = %err, "watch failed; relisting with backoff"),
            }
        }
        Err(Error::WatchEnded { kind })
    });
}

/// The result of a watch task that ended.
fn watch_result(ended: Result<Result<()>, tokio::task::JoinError>) -> Result<()> {
    match ended {
        Ok(result) => result,
        Err(source) => Err(Error::Join {
            what: "a watch",
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_to_a_minute() {
        let waits: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn references_name_the_policy() {
        let np = reference("x/deny");
        assert_eq!(np.namespace.as_deref(), Some("x"));
        assert_eq!(np.kind.as_deref(), Some("NetworkPolicy"));
        let cnp = reference("ClusterNetworkPolicy/admin");
        assert_eq!(cnp.name.as_deref(), Some("admin"));
        assert_eq!(cnp.namespace, None);
    }
}
