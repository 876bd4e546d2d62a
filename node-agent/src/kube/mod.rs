// SPDX-License-Identifier: Apache-2.0
//! The agent's Kubernetes side (`--kube-peers`): peers from Nodes, the first IPAM split sized
//! by the Node count, the peer registry that makes reclaiming a deleted Node's space safe, and
//! the Node's `NetworkUnavailable` condition.
//!
//! Before the mesh starts ([`Kube::prepare`]): if this node's persisted peer was reclaimed
//! while the agent was away, its state is removed so the agent joins as a new peer (never
//! clashing with the ring that gave its space away); the peer registers itself; the Nodes are
//! listed, giving the initial peers (every other Node's InternalIP) and the consensus size (a
//! strict majority of all Nodes must agree on the first split, so two halves of a fresh
//! cluster can never both form a ring).
//!
//! While running ([`KubeTask`]): a watch on Nodes replaces the mesh's targets as Nodes come
//! and go; each change (and a periodic pass) reclaims the space of peers whose Node is gone
//! or was re-created, one peer at a time, under a lock in the registry (see [`registry`]);
//! once this node can serve pods the Node's `NetworkUnavailable` condition is set False.
//!
//! The agent reaches its own router and IPAM through the [`Agent`] trait, so this module knows
//! nothing of their channels and its reconcile logic is tested against fakes.

pub mod nodes;
pub mod registry;

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::{reflector, watcher, WatchStreamExt as _};
use kube::Client;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::mesh::PeerName;
use registry::Registry;

/// The registry ConfigMap's name.
pub const REGISTRY_NAME: &str = "weave-net";
/// The registry ConfigMap's key.
const REGISTRY_KEY: &str = "peers";
/// A file in the state directory: this peer has been registered (so a later absence from the
/// registry means it was reclaimed, not that it never registered).
const REGISTERED_FILE: &str = "kube-registered";
/// How often the reconcile pass runs without a Node event.
const RESYNC: Duration = Duration::from_secs(10);
/// How long the agent's start keeps retrying the API server.
const START_PATIENCE: Duration = Duration::from_secs(60);
/// How many registry writes one pass may attempt (conflicts make it re-read).
const PASS_WRITES: usize = 8;

/// Settings of the Kubernetes side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeSettings {
    /// This Node's name (`spec.nodeName` of the agent's pod).
    pub node_name: String,
    /// Namespace of the registry ConfigMap.
    pub namespace: String,
    /// Name of the registry ConfigMap.
    pub registry: String,
    /// A kubeconfig file; in-cluster configuration when `None`.
    pub kubeconfig: Option<PathBuf>,
}

/// Errors of the Kubernetes side.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// No usable client configuration.
    #[error("cannot configure the Kubernetes client (in-cluster or --kubeconfig): {0}")]
    Config(String),
    /// An API request failed.
    #[error("{what}: {source}")]
    Api {
        /// What was being done.
        what: String,
        /// The failure.
        #[source]
        source: kube::Error,
    },
    /// The registry holds something that is not a registry.
    #[error("the peer registry ConfigMap {0} holds invalid JSON: {1}")]
    Registry(String, #[source] serde_json::Error),
    /// A state file could not be changed.
    #[error("{what} {path}: {source}")]
    State {
        /// What was being done.
        what: &'static str,
        /// Which file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
}

/// What the Kubernetes side needs from the rest of the agent.
pub trait Agent: Send + Sync + 'static {
    /// Makes `addrs` the mesh's direct targets (replacing the previous set).
    fn replace_peers(
        &self,
        addrs: Vec<SocketAddr>,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// Gives the address space of dead peer `peer` to live ones (`weave rmpeer`). `Ok(false)`
    /// when IPAM never knew the peer (nothing to reclaim).
    fn rmpeer(&self, peer: String) -> impl Future<Output = Result<bool, String>> + Send;
    /// Whether this node can serve pods (data plane up, IPAM able to allocate).
    fn ready(&self) -> impl Future<Output = bool> + Send;
}

/// What [`Kube::prepare`] learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The other Nodes' peer addresses.
    pub peers: Vec<SocketAddr>,
    /// How many Nodes exist (this one included).
    pub nodes: usize,
}

/// A connected Kubernetes side.
#[derive(Clone)]
pub struct Kube {
    /// The API client.
    client: Client,
    /// Settings.
    settings: KubeSettings,
}

impl std::fmt::Debug for Kube {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kube")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Kube {
    /// A client from `--kubeconfig` or the in-cluster environment.
    pub async fn connect(settings: KubeSettings) -> Result<Kube, KubeError> {
        let config = match &settings.kubeconfig {
            Some(path) => {
                let file = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| KubeError::Config(e.to_string()))?;
                kube::Config::from_custom_kubeconfig(
                    file,
                    &kube::config::KubeConfigOptions::default(),
                )
                .await
                .map_err(|e| KubeError::Config(e.to_string()))?
            }
            None => kube::Config::infer()
                .await
                .map_err(|e| KubeError::Config(e.to_string()))?,
        };
        let client = Client::try_from(config).map_err(|e| KubeError::Config(e.to_string()))?;
        Ok(Kube { client, settings })
    }

    /// A Kubernetes side over an existing client (tests use a mock service).
    pub fn with_client(client: Client, settings: KubeSettings) -> Kube {
        Kube { client, settings }
    }

    /// Removes the state of a persisted peer that was reclaimed while the agent was away;
    /// returns whether it did. Runs before the peer name is loaded.
    pub async fn forget_if_reclaimed(&self, state_dir: &Path) -> Result<bool, KubeError> {
        let marker = state_dir.join(REGISTERED_FILE);
        let name_file = state_dir.join(crate::state::PEER_NAME_FILE);
        let (Ok(registered), Ok(name)) = (
            std::fs::read_to_string(&marker),
            std::fs::read_to_string(&name_file),
        ) else {
            return Ok(false);
        };
        let name = name.trim();
        if registered.trim() != name {
            return Ok(false);
        }
        let (registry, _) = with_retries("read the peer registry", || self.read_registry()).await?;
        if registry.contains(name) {
            return Ok(false);
        }
        warn!(
            peer = name,
            "this node's peer was reclaimed while the agent was away; starting as a new peer"
        );
        for file in [
            crate::ipam::persist::FILE,
            crate::state::PEER_NAME_FILE,
            REGISTERED_FILE,
        ] {
            let path = state_dir.join(file);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(KubeError::State {
                        what: "remove",
                        path,
                        source,
                    })
                }
            }
        }
        Ok(true)
    }

    /// Registers peer `me` for this Node and lists the Nodes.
    pub async fn prepare(
        &self,
        me: PeerName,
        state_dir: &Path,
        port: u16,
    ) -> Result<Prepared, KubeError> {
        let me = me.to_string();
        let node = self.settings.node_name.clone();
        with_retries("register this peer", || {
            self.update_registry("register this peer", |r| r.register(&me, &node))
        })
        .await?;
        let marker = state_dir.join(REGISTERED_FILE);
        crate::atomic_file::write_durable(&marker, me.as_bytes()).map_err(|source| {
            KubeError::State {
                what: "write",
                path: marker,
                source,
            }
        })?;
        let nodes = with_retries("list Nodes", || async {
            self.nodes()
                .list(&ListParams::default())
                .await
                .map_err(|source| KubeError::Api {
                    what: "list Nodes".into(),
                    source,
                })
        })
        .await?;
        let peers = nodes::peer_addrs(&nodes.items, &self.settings.node_name, port);
        info!(node = %self.settings.node_name, nodes = nodes.items.len(), peers = ?peers, "peers from the Kubernetes Nodes");
        Ok(Prepared {
            peers,
            nodes: nodes.items.len().max(1),
        })
    }

    /// The task that follows Nodes, reclaims dead peers and sets the Node condition.
    pub fn task<A: Agent>(self, me: PeerName, port: u16, agent: A) -> KubeTask<A> {
        KubeTask {
            kube: self,
            me: me.to_string(),
            port,
            agent,
        }
    }

    /// The Nodes API.
    fn nodes(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }

    /// The ConfigMaps API of the registry's namespace.
    fn config_maps(&self) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), &self.settings.namespace)
    }

    /// The registry and the resourceVersion it was read at (`None`: the ConfigMap does not
    /// exist yet).
    async fn read_registry(&self) -> Result<(Registry, Option<String>), KubeError> {
        let name = &self.settings.registry;
        let found = self
            .config_maps()
            .get_opt(name)
            .await
            .map_err(|source| KubeError::Api {
                what: format!("read ConfigMap {}/{name}", self.settings.namespace),
                source,
            })?;
        let Some(cm) = found else {
            return Ok((Registry::default(), None));
        };
        let text = cm
            .data
            .as_ref()
            .and_then(|d| d.get(REGISTRY_KEY))
            .map(String::as_str);
        let registry = Registry::parse(text)
            .map_err(|e| KubeError::Registry(format!("{}/{name}", self.settings.namespace), e))?;
        Ok((registry, cm.metadata.resource_version))
    }

    /// Writes `registry` if the ConfigMap is still at `version` (creating it when `None`).
    /// `Ok(false)` when someone else wrote first: re-read and decide again.
    async fn write_registry(
        &self,
        registry: &Registry,
        version: Option<String>,
    ) -> Result<bool, KubeError> {
        let name = self.settings.registry.clone();
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(self.settings.namespace.clone()),
                resource_version: version.clone(),
                labels: Some([("app.kubernetes.io/name".to_owned(), "weave".to_owned())].into()),
                ..ObjectMeta::default()
            },
            data: Some([(REGISTRY_KEY.to_owned(), registry.to_text())].into()),
            ..ConfigMap::default()
        };
        let api = self.config_maps();
        let result = match version {
            Some(_) => api
                .replace(&name, &PostParams::default(), &cm)
                .await
                .map(drop),
            None => api.create(&PostParams::default(), &cm).await.map(drop),
        };
        match result {
            Ok(()) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(source) => Err(KubeError::Api {
                what: format!("write ConfigMap {}/{name}", self.settings.namespace),
                source,
            }),
        }
    }

    /// Applies `change` to the freshest registry until the write wins (or nothing changes).
    async fn update_registry(
        &self,
        what: &str,
        mut change: impl FnMut(&mut Registry) -> bool,
    ) -> Result<(), KubeError> {
        loop {
            let (mut registry, version) = self.read_registry().await?;
            if !change(&mut registry) && version.is_some() {
                return Ok(());
            }
            if self.write_registry(&registry, version).await? {
                debug!(what, "peer registry updated");
                return Ok(());
            }
        }
    }
}

/// Runs `call` until it succeeds, waiting longer after each API failure (0.5 s doubling to
/// 8 s), for at most [`START_PATIENCE`]: at a node's boot the API server may not be
/// reachable yet (kube-proxy has not programmed the Service address), and a quick retry here
/// beats the kubelet's restart backoff. Errors other than API errors are not retried.
async fn with_retries<T, F, Fut>(what: &str, mut call: F) -> Result<T, KubeError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, KubeError>>,
{
    let deadline = tokio::time::Instant::now() + START_PATIENCE;
    let mut pause = Duration::from_millis(500);
    loop {
        match call().await {
            Err(KubeError::Api { source, .. })
                if tokio::time::Instant::now() + pause < deadline =>
            {
                warn!(error = %source, retry_in = ?pause, "{what}: the API server did not answer; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(8));
            }
            other => return other,
        }
    }
}

/// The running Kubernetes side of the agent.
pub struct KubeTask<A> {
    /// The client.
    kube: Kube,
    /// This peer's name.
    me: String,
    /// The mesh port of every peer.
    port: u16,
    /// The rest of the agent.
    agent: A,
}

impl<A: Agent> KubeTask<A> {
    /// Runs until `cancel`: follows Nodes, reclaims, sets the Node condition. API failures
    /// are logged and retried; they never stop the agent.
    pub async fn run(self, cancel: CancellationToken) -> crate::Result<()> {
        let (store, writer) = reflector::store::<Node>();
        let changed = std::sync::Arc::new(Notify::new());
        let watch = {
            let changed = changed.clone();
            let stream = watcher(self.kube.nodes(), watcher::Config::default())
                .default_backoff()
                .reflect(writer)
                .touched_objects();
            async move {
                futures_util::pin_mut!(stream);
                while let Some(event) = stream.next().await {
                    if let Err(e) = event {
                        warn!(error = %e, "watch of Nodes failed; retrying");
                    }
                    changed.notify_one();
                }
            }
        };
        let watch = tokio::spawn(watch);
        let mut state = Reconciled::default();
        let mut resync = tokio::time::interval(RESYNC);
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                () = changed.notified() => {}
                _ = resync.tick() => {}
            }
            if store.wait_until_ready().await.is_err() {
                break;
            }
            let nodes: Vec<std::sync::Arc<Node>> = store.state();
            self.reconcile(nodes.iter().map(AsRef::as_ref), &mut state)
                .await;
        }
        watch.abort();
        Ok(())
    }

    /// One pass over the current Nodes.
    async fn reconcile<'a>(
        &self,
        nodes: impl Iterator<Item = &'a Node> + Clone,
        state: &mut Reconciled,
    ) {
        let peers = nodes::peer_addrs(nodes.clone(), &self.kube.settings.node_name, self.port);
        if state.peers.as_ref() != Some(&peers) {
            match self.agent.replace_peers(peers.clone()).await {
                Ok(()) => {
                    info!(peers = ?peers, "mesh targets follow the Nodes");
                    state.peers = Some(peers);
                }
                Err(e) => warn!(error = %e, "cannot replace the mesh targets"),
            }
        }
        let names = nodes::names(nodes.clone());
        if let Err(e) = self.reclaim(&names).await {
            warn!(error = %e, "reclaim pass failed; retrying");
        }
        let mine = nodes
            .clone()
            .find(|n| n.metadata.name.as_deref() == Some(self.kube.settings.node_name.as_str()));
        if let Some(node) = mine {
            if !nodes::network_available(node) && self.agent.ready().await {
                if let Err(e) = self.set_network_available().await {
                    warn!(error = %e, "cannot set the Node's NetworkUnavailable condition");
                }
            }
        }
    }

    /// Reclaims the space of dead peers, one at a time under the registry's lock; lists this
    /// peer again if its entry vanished while its Node exists (the ConfigMap was deleted or
    /// overwritten: without this, the next restart would take the agent for reclaimed).
    async fn reclaim(&self, present: &BTreeSet<String>) -> Result<(), KubeError> {
        for _ in 0..PASS_WRITES {
            let (mut registry, version) = self.kube.read_registry().await?;
            let node = &self.kube.settings.node_name;
            if present.contains(node) && !registry.contains(&self.me) {
                registry.register(&self.me, node);
                if self.kube.write_registry(&registry, version).await? {
                    warn!(peer = %self.me, "this peer was missing from the registry; listed it again");
                }
                continue;
            }
            let Some(target) = registry.to_reclaim(&self.me, present).into_iter().next() else {
                return Ok(());
            };
            if registry.reclaiming.get(&target) != Some(&self.me) {
                registry.lock(&target, &self.me);
                if self.kube.write_registry(&registry, version).await? {
                    info!(peer = %target, "reclaiming the space of a peer whose Node is gone");
                }
                continue;
            }
            match self.agent.rmpeer(target.clone()).await {
                Ok(known) => {
                    registry.finish(&target);
                    if self.kube.write_registry(&registry, version).await? {
                        info!(peer = %target, owned_space = known, "peer reclaimed");
                    }
                }
                Err(e) => {
                    // Typically: still reachable (its Node object went before its agent did).
                    debug!(peer = %target, error = %e, "reclaim refused for now");
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Sets `NetworkUnavailable=False` on this Node.
    async fn set_network_available(&self) -> Result<(), KubeError> {
        let now = k8s_openapi::chrono::Utc::now()
            .to_rfc3339_opts(k8s_openapi::chrono::SecondsFormat::Secs, true);
        let patch = nodes::network_available_patch(&now);
        let name = &self.kube.settings.node_name;
        self.kube
            .nodes()
            .patch_status(name, &PatchParams::default(), &Patch::Strategic(patch))
            .await
            .map_err(|source| KubeError::Api {
                what: format!("patch the status of Node {name}"),
                source,
            })?;
        info!(node = %name, "Node condition NetworkUnavailable=False set");
        Ok(())
    }
}

/// What the task last achieved.
#[derive(Debug, Default)]
struct Reconciled {
    /// The targets last given to the mesh.
    peers: Option<Vec<SocketAddr>>,
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn unavailable() -> KubeError {
        KubeError::Api {
            what: "list Nodes".into(),
            source: kube::Error::Api(kube::core::ErrorResponse {
                status: "Failure".into(),
                message: "connection refused".into(),
                reason: "ServiceUnavailable".into(),
                code: 503,
            }),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn start_retries_an_unreachable_api_server_then_gives_up() {
        let calls = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let got = with_retries("test", || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(unavailable())
            } else {
                Ok(7)
            }
        })
        .await
        .expect("the third call succeeds");
        assert_eq!(got, 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(1500),
            "0.5 s then 1 s"
        );

        let started = tokio::time::Instant::now();
        let err = with_retries("test", || async { Err::<(), _>(unavailable()) })
            .await
            .expect_err("never succeeds");
        assert!(err.to_string().contains("list Nodes"), "{err}");
        assert!(
            started.elapsed() <= START_PATIENCE,
            "gave up within the patience"
        );
        assert!(
            started.elapsed() >= START_PATIENCE / 2,
            "kept trying for a while"
        );

        let calls = AtomicU32::new(0);
        let err = with_retries("test", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(KubeError::Config("no kubeconfig".into()))
        })
        .await
        .expect_err("not an API error");
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "configuration errors are not retried"
        );
        assert!(err.to_string().contains("no kubeconfig"));
    }
}
