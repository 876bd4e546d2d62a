// SPDX-License-Identifier: Apache-2.0
//! weaveDNS: containers find each other by name on any host.
//!
//! Each peer registers the names of its own containers (`weave attach
//! --name`, the CNI plugin, `weave dns-add`, `weave expose -h`) in its
//! [`zone`], a table of records owned by the peer that registered them and
//! gossiped over the mesh on channel 2 ([`gossip`], `PROTOCOL.md` §11). The
//! [`server`] (hickory-server, UDP and TCP) answers names in the domain
//! (default `weave.local.`) from the [`table`] the zone keeps up to date,
//! with every address of a name shuffled per query, and forwards the rest
//! to the servers of `--resolv-conf` ([`upstream`]). [`listen`] keeps it
//! listening on the bridge's addresses; [`service`] is the task that owns
//! the zone.
//!
//! A dead peer's records go when the peer is removed for good (`weave
//! rmpeer`, or reclaim of a deleted Kubernetes Node), which IPAM decides and
//! announces; a peer that is merely unreachable (partitioned away, or
//! restarting) keeps its records, because its containers most likely still
//! run and its records come back unchanged after the heal.

pub mod gossip;
pub mod listen;
pub mod name;
pub mod server;
pub mod service;
pub mod table;
pub mod upstream;
pub mod zone;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::mesh::gossip::GossipPort;
use crate::mesh::PeerName;
pub use name::{DnsName, Domain};
pub use service::Request;

/// The DNS flags, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSettings {
    /// Where to listen.
    pub listen: listen::Listen,
    /// The domain.
    pub domain: Domain,
    /// TTL of answers, seconds.
    pub ttl: u32,
    /// The resolver configuration naming the upstream servers.
    pub resolv_conf: PathBuf,
    /// How long each upstream server gets to answer.
    pub upstream_timeout: Duration,
}

/// What the API needs of weaveDNS.
#[derive(Debug, Clone)]
pub struct DnsHandle {
    /// Requests to the DNS task.
    pub requests: mpsc::Sender<Request>,
    /// The lookup table.
    pub table: table::SharedTable,
    /// The domain.
    pub domain: Domain,
    /// Wakes the listener after an address was added to the bridge.
    pub rescan: Arc<Notify>,
}

/// Sets up weaveDNS: binds a fixed listening address now (a taken port is
/// an error at start), registers its gossip channel on `port`, and spawns
/// its tasks into `tasks`.
#[allow(clippy::too_many_arguments)]
pub async fn start(
    settings: &DnsSettings,
    me: PeerName,
    state_dir: PathBuf,
    gossip_interval: Duration,
    port: &mut GossipPort,
    removed: Option<watch::Receiver<BTreeSet<PeerName>>>,
    tasks: &mut JoinSet<(&'static str, crate::Result<()>)>,
    cancel: &CancellationToken,
) -> crate::Result<DnsHandle> {
    let table = table::SharedTable::default();
    let stats = Arc::new(server::QueryStats::default());
    let (resolv, servers) = upstream::ResolvWatch::new(settings.resolv_conf.clone());
    let (listen_tx, listen_rx) = watch::channel::<upstream::Servers>(Arc::new(Vec::new()));
    let forwarder = Arc::new(upstream::Forwarder::new(
        servers,
        listen_rx.clone(),
        settings.upstream_timeout,
    ));
    let handler = server::Handler::new(
        table.clone(),
        settings.domain.clone(),
        settings.ttl,
        forwarder.clone(),
        stats.clone(),
    );
    let rescan = Arc::new(Notify::new());
    let listener = listen::ListenTask::new(
        settings.listen.clone(),
        server::Listeners::new(handler),
        rescan.clone(),
        listen_tx,
    )
    .await?;
    let registration = port
        .register(service::CHANNEL)
        .expect("weaveDNS is the only subsystem on its channel");
    let own = service::load(&state_dir, me);
    let zone = zone::Zone::new(me, own, Instant::now());
    let (req_tx, req_rx) = mpsc::channel(1024);
    let info = service::ServiceInfo {
        domain: settings.domain.clone(),
        ttl: settings.ttl,
        forwarder,
        stats,
        listen: listen_rx,
    };
    let mut svc = service::Service::new(zone, table.clone(), state_dir, req_rx, registration, info)
        .with_gossip_interval(gossip_interval);
    if let Some(r) = removed {
        svc = svc.with_removed(r);
    }
    let c = cancel.clone();
    tasks.spawn(async move { ("dns", svc.run(c).await) });
    let c = cancel.clone();
    tasks.spawn(async move { ("dns-listen", listener.run(c).await) });
    let c = cancel.clone();
    tasks.spawn(async move { ("dns-upstream", resolv.run(c).await) });
    Ok(DnsHandle {
        requests: req_tx,
        table,
        domain: settings.domain.clone(),
        rescan,
    })
}
