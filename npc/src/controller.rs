// SPDX-License-Identifier: Apache-2.0
//! The controller: kube-rs reflectors for Pods, Namespaces and NetworkPolicies feed one
//! reconcile loop that compiles the whole state and applies it.
//!
//! Invariants:
//! - Nothing is applied before all three caches have been listed once, so a restart keeps
//!   the previous process's ruleset in force until a complete new one replaces it in one
//!   transaction (no window without rules, no window with partial rules).
//! - Every change is a recompile of the whole snapshot, so the order of watch events cannot
//!   matter. When only set contents differ from what was applied, only those are sent.
//! - A watch that fails keeps its cache: the watcher relists with backoff and the ruleset stays
//!   as it was meanwhile. A failed transaction is retried as a full rebuild.
//! - Every `resync` a full rebuild is applied even without changes, repairing drift (someone
//!   deleting or editing our tables).

use std::collections::BTreeSet;
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
use crate::compile::{compile, Compiled, NodeConfig, Snapshot};
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
        tasks.spawn(async move { ("metrics", metrics::serve(listener, m, f, c).await) });
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
    tokio::task::spawn_blocking(move || firewall.apply(&crate::compile::cleanup()))
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
            applied: None,
            next_full: Instant::now(),
            reported: BTreeSet::new(),
        };
        loop {
            let snapshot = Snapshot {
                pods: pods.state().iter().map(|p| Pod::clone(p)).collect(),
                namespaces: namespaces
                    .state()
                    .iter()
                    .map(|n| Namespace::clone(n))
                    .collect(),
                policies: policies
                    .state()
                    .iter()
                    .map(|p| NetworkPolicy::clone(p))
                    .collect(),
            };
            let wait = match self.reconcile(&mut state, &snapshot).await {
                Ok(()) => state.next_full,
                Err(err) => {
                    error!(error = %err, "apply failed; retrying with a full rebuild");
                    self.metrics.apply_failed();
                    state.applied = None;
                    Instant::now() + RETRY
                }
            };
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                Some(ended) = watches.join_next() => return watch_result(ended),
                () = changed.notified() => tokio::time::sleep(DEBOUNCE).await,
                () = tokio::time::sleep_until(wait) => {}
            }
        }
    }

    /// Compiles `snapshot` and applies the difference to what was applied before.
    #[instrument(skip_all, fields(pods = snapshot.pods.len(), policies = snapshot.policies.len()))]
    async fn reconcile(&self, state: &mut Reconciler, snapshot: &Snapshot) -> Result<()> {
        let compiled = compile(snapshot, &self.node);
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
        self.metrics.compiled(
            &compiled.rejected,
            &compiled.counters,
            compiled.rule_count(),
        );
        let now = Instant::now();
        let incremental = match &state.applied {
            Some(previous) if now < state.next_full => compiled.update_from(previous),
            _ => None,
        };
        let full = incremental.is_none();
        let doc = incremental.unwrap_or_else(|| compiled.full());
        if !doc.objects.is_empty() {
            let firewall = Arc::clone(&self.firewall);
            let started = Instant::now();
            tokio::task::spawn_blocking(move || firewall.apply(&doc))
                .await
                .map_err(|source| Error::Join {
                    what: "nft",
                    source,
                })??;
            let seconds = started.elapsed().as_secs_f64();
            self.metrics.applied(full, seconds);
            debug!(
                full,
                seconds,
                rules = compiled.rule_count(),
                "ruleset applied"
            );
        }
        if full {
            state.next_full = now + self.resync;
        }
        state.applied = Some(compiled);
        Ok(())
    }
}

/// What the reconcile loop remembers between rounds.
struct Reconciler {
    /// What the kernel holds, as far as we know.
    applied: Option<Compiled>,
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
