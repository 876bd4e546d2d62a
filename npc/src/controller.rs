// SPDX-License-Identifier: Apache-2.0
//! The controller: kube-rs reflectors for Pods, Namespaces and NetworkPolicies feed one
//! reconcile loop that compiles the whole state and applies it.
//!
//! Invariants:
//! - Nothing is applied before all three caches have been listed once, so a restart keeps
//!   the previous process's ruleset in force until a complete new one replaces it in one
//!   transaction (no window without rules, no window with partial rules).
//! - The loop works on the caches' state, not on individual events, so their order cannot
//!   matter. A policy change rebuilds the ruleset; a pod or namespace change is fed to the
//!   kept [`Compiled`], which updates the set contents it affects, and only the changed set
//!   elements (and the accounting chains of local pods that came or went) are sent.
//! - A watch that fails keeps its cache: the watcher relists with backoff and the ruleset stays
//!   as it was meanwhile. A failed transaction is retried as a full rebuild.
//! - Every `resync` a full rebuild is applied even without changes, repairing drift (someone
//!   deleting or editing our tables).

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, instrument, warn};
use weave_platform::firewall::{Firewall, NftFirewall};

use crate::cli::Config;
use crate::compile::{Compiled, NodeConfig};
use crate::error::{Error, Result};
use crate::metrics::{self, Metrics};

/// Quiet time after a change before recompiling, so a burst of events costs one apply.
const DEBOUNCE: Duration = Duration::from_millis(5);
/// Wait before retrying a failed transaction.
const RETRY: Duration = Duration::from_secs(1);

/// Runs weave-npc until `cancel`: builds the client from `config`, serves metrics and runs
/// the [`Controller`] with the real `nft`.
pub async fn run(config: Config, cancel: CancellationToken) -> Result<()> {
    check_bridge_netfilter();
    let client = client(&config).await?;
    let firewall: Arc<dyn Firewall> = Arc::new(NftFirewall::with_program(config.nft.clone()));
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
    let controller = Controller::new(
        client,
        firewall,
        config.node.clone(),
        metrics,
        config.resync,
    );
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
    let firewall = NftFirewall::with_program(program);
    tokio::task::spawn_blocking(move || firewall.apply_script(&crate::compile::cleanup()))
        .await
        .map_err(|source| Error::Join {
            what: "cleanup",
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
async fn client(config: &Config) -> Result<Client> {
    let kube_config = match &config.kubeconfig {
        Some(path) => {
            let file =
                kube::config::Kubeconfig::read_from(path).map_err(|source| Error::Kubeconfig {
                    path: path.clone(),
                    source,
                })?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|source| Error::Kubeconfig {
                    path: path.clone(),
                    source,
                })?
        }
        None => kube::Config::infer().await.map_err(Error::InferConfig)?,
    };
    Client::try_from(kube_config).map_err(Error::Client)
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
        }
    }

    /// Runs until `cancel` or until a watch ends for good.
    pub async fn run(self, cancel: CancellationToken) -> Result<()> {
        let changed = Arc::new(Notify::new());
        let mut watches: JoinSet<Result<()>> = JoinSet::new();
        let pods = spawn_watch::<Pod>(&mut watches, &self.client, &changed, "pods");
        let namespaces =
            spawn_watch::<Namespace>(&mut watches, &self.client, &changed, "namespaces");
        let policies =
            spawn_watch::<NetworkPolicy>(&mut watches, &self.client, &changed, "networkpolicies");
        let ready = async {
            pods.wait_until_ready().await.is_ok()
                && namespaces.wait_until_ready().await.is_ok()
                && policies.wait_until_ready().await.is_ok()
        };
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            Some(ended) = watches.join_next() => return watch_result(ended),
            ok = ready => if !ok { return Err(Error::WatchEnded { kind: "initial list" }) },
        }
        info!(node = %self.node.node_name, "caches synced; enforcing");
        let mut state = Reconciler {
            compiled: None,
            seen_policies: HashMap::new(),
            seen_pods: HashMap::new(),
            seen_namespaces: HashMap::new(),
            next_full: Instant::now(),
            reported: BTreeSet::new(),
        };
        loop {
            let stores = Stores {
                pods: pods.state(),
                namespaces: namespaces.state(),
                policies: policies.state(),
            };
            let wait = match self.reconcile(&mut state, &stores).await {
                Ok(()) => state.next_full,
                Err(err) => {
                    error!(error = %err, "apply failed; retrying with a full rebuild");
                    self.metrics.apply_failed();
                    state.compiled = None;
                    Instant::now() + RETRY
                }
            };
            self.metrics.ticked();
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                Some(ended) = watches.join_next() => return watch_result(ended),
                () = changed.notified() => tokio::time::sleep(DEBOUNCE).await,
                () = tokio::time::sleep_until(wait) => {}
            }
        }
    }

    /// Brings the kernel up to `stores`: a full rebuild when policies changed, the resync is
    /// due or the last transaction failed; otherwise only the pods and namespaces that
    /// changed are fed to the kept [`Compiled`] and its element changes applied.
    #[instrument(skip_all, fields(pods = stores.pods.len(), policies = stores.policies.len()))]
    async fn reconcile(&self, state: &mut Reconciler, stores: &Stores) -> Result<()> {
        let now = Instant::now();
        let policies = versions(&stores.policies, |p| p.metadata.namespace.clone());
        let rebuild = state.compiled.is_none()
            || now >= state.next_full
            || !same_versions(&policies, &state.seen_policies);
        let (script, full) = if rebuild {
            let mut compiled = Compiled::new(stores.policies.iter().map(AsRef::as_ref), &self.node);
            for ns in &stores.namespaces {
                compiled.set_namespace(ns);
            }
            for pod in &stores.pods {
                compiled.set_pod(pod);
            }
            compiled.applied();
            state.seen_policies = policies;
            state.seen_namespaces = versions(&stores.namespaces, |_| None);
            state.seen_pods = versions(&stores.pods, |p| p.metadata.namespace.clone());
            let script = compiled.full();
            self.report(state, &compiled);
            state.compiled = Some(compiled);
            (script, true)
        } else {
            let compiled = state
                .compiled
                .as_mut()
                .expect("rebuild is chosen when nothing is compiled");
            let namespaces = versions(&stores.namespaces, |_| None);
            for ns in &stores.namespaces {
                let key = (None, ns.metadata.name.clone().unwrap_or_default());
                if state.seen_namespaces.get(&key) != namespaces.get(&key) {
                    compiled.set_namespace(ns);
                }
            }
            for (_, name) in state.seen_namespaces.keys() {
                if !namespaces.contains_key(&(None, name.clone())) {
                    compiled.remove_namespace(name);
                }
            }
            state.seen_namespaces = namespaces;
            let pods = versions(&stores.pods, |p| p.metadata.namespace.clone());
            for pod in &stores.pods {
                let key = (
                    pod.metadata.namespace.clone(),
                    pod.metadata.name.clone().unwrap_or_default(),
                );
                if state.seen_pods.get(&key) != pods.get(&key) {
                    compiled.set_pod(pod);
                }
            }
            for (ns, name) in state.seen_pods.keys() {
                if !pods.contains_key(&(ns.clone(), name.clone())) {
                    compiled.remove_pod(ns.as_deref().unwrap_or_default(), name);
                }
            }
            state.seen_pods = pods;
            (compiled.update(), false)
        };
        if let Some(compiled) = &state.compiled {
            self.metrics.compiled(
                &compiled.rejected,
                &compiled.counters(),
                compiled.rule_count(),
            );
        }
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
            self.metrics.applied(full, seconds);
            debug!(full, seconds, "ruleset applied");
        }
        if rebuild {
            state.next_full = now + self.resync;
        }
        Ok(())
    }

    /// Logs rejections not logged before.
    fn report(&self, state: &mut Reconciler, compiled: &Compiled) {
        for r in &compiled.rejected {
            let key = (r.policy.clone(), r.reason.clone());
            if !state.reported.contains(&key) {
                warn!(policy = %r.policy, reason = %r.reason, "policy rejected; its pods stay isolated with nothing allowed");
            }
        }
        state.reported = compiled
            .rejected
            .iter()
            .map(|r| (r.policy.clone(), r.reason.clone()))
            .collect();
    }
}

/// The reflectors' contents at one moment.
struct Stores {
    /// All pods.
    pods: Vec<Arc<Pod>>,
    /// All namespaces.
    namespaces: Vec<Arc<Namespace>>,
    /// All NetworkPolicies.
    policies: Vec<Arc<NetworkPolicy>>,
}

/// An object's identity (namespace, name).
type ObjectKey = (Option<String>, String);

/// An object's version: its resourceVersion, or, without one, the address of the cached copy
/// (the reflector replaces the copy whenever the object changes).
type Version = (Option<String>, usize);

/// The versions of `objects` by identity.
fn versions<K: Resource>(
    objects: &[Arc<K>],
    namespace: impl Fn(&K) -> Option<String>,
) -> HashMap<ObjectKey, Version> {
    objects
        .iter()
        .map(|o| {
            let meta = o.meta();
            let version = match &meta.resource_version {
                Some(rv) => (Some(rv.clone()), 0),
                None => (None, Arc::as_ptr(o).cast::<()>() as usize),
            };
            (
                (namespace(o), meta.name.clone().unwrap_or_default()),
                version,
            )
        })
        .collect()
}

/// Whether two version maps are equal.
fn same_versions(a: &HashMap<ObjectKey, Version>, b: &HashMap<ObjectKey, Version>) -> bool {
    a.len() == b.len() && a.iter().all(|(k, v)| b.get(k) == Some(v))
}

/// What the reconcile loop remembers between rounds.
struct Reconciler {
    /// The compiled state the kernel holds, as far as we know; `None` forces a rebuild.
    compiled: Option<Compiled>,
    /// Versions of the policies `compiled` was built from.
    seen_policies: HashMap<ObjectKey, Version>,
    /// Versions of the pods fed to `compiled`.
    seen_pods: HashMap<ObjectKey, Version>,
    /// Versions of the namespaces fed to `compiled`.
    seen_namespaces: HashMap<ObjectKey, Version>,
    /// When the next full rebuild is due.
    next_full: Instant,
    /// Rejections already logged.
    reported: BTreeSet<(String, String)>,
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
    let api = Api::<K>::all(client.clone());
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
    store
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
