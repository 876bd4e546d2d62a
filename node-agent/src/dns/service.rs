// SPDX-License-Identifier: Apache-2.0
//! The task that owns the [`Zone`]: it takes registrations from the API,
//! the events of its gossip channel and the set of removed peers, keeps the
//! server's lookup table in step, persists this peer's records
//! (`dns.json`) and gossips: deltas to a fan-out of neighbours after each
//! change, the full state to each new neighbour and to one random
//! neighbour every gossip interval, and to a sender what it lacks.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::gossip::DnsGossip;
use super::name::{DnsName, Domain};
use super::server::QueryStats;
use super::table::{self, SharedTable};
use super::upstream::{Forwarder, Servers};
use super::zone::{Holder, Key, OwnState, Zone, ZoneError};
use crate::mesh::gossip::{Channel, GossipEvent, GossipSender, GossipTo, Registration};
use crate::mesh::PeerName;

/// The gossip channel of weaveDNS.
pub const CHANNEL: Channel = Channel(2);
/// Requests handled per batch before the table, file and gossip catch up.
const BATCH: usize = 256;
/// Name of the state file in `--state-dir`.
pub const STATE_FILE: &str = "dns.json";
/// Version of the state file.
const STATE_FORMAT: u8 = 1;

/// A request from the local API.
#[derive(Debug)]
pub enum Request {
    /// Register `name` for each of `addrs`, held by `holder`.
    Add {
        /// The name.
        name: DnsName,
        /// Its addresses.
        addrs: Vec<Ipv4Addr>,
        /// Who holds the records.
        holder: Holder,
        /// Reply: records added.
        reply: oneshot::Sender<Result<usize, ZoneError>>,
    },
    /// Remove this peer's records matching every field given.
    Remove {
        /// Only this name.
        name: Option<DnsName>,
        /// Only these addresses (all when empty).
        addrs: Vec<Ipv4Addr>,
        /// Only this holder.
        holder: Option<Holder>,
        /// Reply: records removed.
        reply: oneshot::Sender<usize>,
    },
    /// Status, with the live records when `entries`.
    Report {
        /// List the records.
        entries: bool,
        /// Reply.
        reply: oneshot::Sender<weave_api::DnsReport>,
    },
}

/// The state file: this peer's records and counter.
#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    format: u8,
    peer: PeerName,
    #[serde(flatten)]
    own: OwnState,
}

/// Loads this peer's records from `dir`; a file of another peer or format
/// is ignored with a warning (the records are then registered anew).
pub fn load(dir: &Path, me: PeerName) -> Option<OwnState> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).ok()?;
    match serde_json::from_str::<StateFile>(&text) {
        Ok(f) if f.format == STATE_FORMAT && f.peer == me => Some(f.own),
        Ok(f) => {
            warn!(path = %path.display(), peer = %f.peer, format = f.format, "DNS state file of another peer or format ignored");
            None
        }
        Err(e) => {
            warn!(path = %path.display(), error = %e, "unreadable DNS state file ignored");
            None
        }
    }
}

/// What the report shows besides the zone.
pub struct ServiceInfo {
    /// The domain.
    pub domain: Domain,
    /// Answer TTL.
    pub ttl: u32,
    /// The forwarder (upstream servers, failures).
    pub forwarder: Arc<Forwarder>,
    /// Query counters.
    pub stats: Arc<QueryStats>,
    /// Addresses served.
    pub listen: watch::Receiver<Servers>,
}

/// The DNS task.
pub struct Service {
    zone: Zone,
    table: SharedTable,
    state_dir: PathBuf,
    requests: mpsc::Receiver<Request>,
    events: mpsc::Receiver<GossipEvent>,
    gossip: GossipSender,
    removed: Option<watch::Receiver<BTreeSet<PeerName>>>,
    gossip_interval: Duration,
    info: ServiceInfo,
}

impl Service {
    /// A task for `zone`, answering from `table`.
    pub fn new(
        zone: Zone,
        table: SharedTable,
        state_dir: PathBuf,
        requests: mpsc::Receiver<Request>,
        registration: Registration,
        info: ServiceInfo,
    ) -> Self {
        Self {
            zone,
            table,
            state_dir,
            requests,
            events: registration.inbox,
            gossip: registration.sender,
            removed: None,
            gossip_interval: Duration::from_secs(10),
            info,
        }
    }

    /// Follows the peers removed for good (IPAM's rmpeer and reclaim): their
    /// records go.
    pub fn with_removed(mut self, removed: watch::Receiver<BTreeSet<PeerName>>) -> Self {
        self.removed = Some(removed);
        self
    }

    /// Sets the anti-entropy interval.
    pub fn with_gossip_interval(mut self, interval: Duration) -> Self {
        self.gossip_interval = interval;
        self
    }

    /// Runs until `cancel` fires.
    pub async fn run(mut self, cancel: CancellationToken) -> crate::Result<()> {
        info!(domain = %self.info.domain.name(), records = self.zone.own_live(), "weaveDNS started");
        self.catch_up().await;
        let mut next_gossip = Instant::now() + self.gossip_interval;
        loop {
            let now = Instant::now();
            let wake = self
                .zone
                .next_purge()
                .unwrap_or(now + Duration::from_secs(3600))
                .min(next_gossip);
            let removed_changed = async {
                match &mut self.removed {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    if now >= next_gossip {
                        next_gossip = now + self.gossip_interval;
                        self.send_full(GossipTo::Random);
                    }
                    self.zone.purge(now);
                }
                ok = removed_changed => {
                    if ok {
                        self.apply_removed();
                    } else {
                        self.removed = None;
                    }
                }
                Some(req) = self.requests.recv() => {
                    self.on_request(req);
                    for _ in 1..BATCH {
                        match self.requests.try_recv() {
                            Ok(req) => self.on_request(req),
                            Err(_) => break,
                        }
                    }
                }
                Some(ev) = self.events.recv() => self.on_event(ev),
            }
            self.catch_up().await;
        }
        info!("weaveDNS stopped");
        Ok(())
    }

    fn apply_removed(&mut self) {
        let Some(rx) = &mut self.removed else { return };
        let set = rx.borrow_and_update().clone();
        self.zone.set_removed(&set);
    }

    fn on_request(&mut self, req: Request) {
        let now = Instant::now();
        match req {
            Request::Add {
                name,
                addrs,
                holder,
                reply,
            } => {
                let mut added = 0;
                let mut result = Ok(());
                for addr in addrs {
                    let key = Key {
                        name: name.clone(),
                        addr,
                        holder: holder.clone(),
                    };
                    match self.zone.add(key) {
                        Ok(true) => added += 1,
                        Ok(false) => {}
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                }
                if added > 0 {
                    info!(%name, %holder, added, "DNS name registered");
                }
                let _ = reply.send(result.map(|()| added));
            }
            Request::Remove {
                name,
                addrs,
                holder,
                reply,
            } => {
                let gone = self.zone.remove(
                    |k| {
                        name.as_ref().is_none_or(|n| *n == k.name)
                            && (addrs.is_empty() || addrs.contains(&k.addr))
                            && holder.as_ref().is_none_or(|h| *h == k.holder)
                    },
                    now,
                );
                if !gone.is_empty() {
                    info!(removed = gone.len(), name = ?name.as_ref().map(ToString::to_string), holder = ?holder.as_ref().map(ToString::to_string), "DNS records removed");
                }
                let _ = reply.send(gone.len());
            }
            Request::Report { entries, reply } => {
                let _ = reply.send(self.report(entries));
            }
        }
    }

    fn on_event(&mut self, ev: GossipEvent) {
        match ev {
            GossipEvent::Received { conn, from, body } => match DnsGossip::decode(&body) {
                Ok(g) => {
                    let out = self.zone.merge(&g);
                    if let Some(reply) = out.reply {
                        self.send(GossipTo::Conn(conn), &reply);
                    }
                }
                Err(e) => warn!(peer = %from, error = %e, "dropping DNS gossip"),
            },
            GossipEvent::NeighbourUp { conn, .. } => self.send_full(GossipTo::Conn(conn)),
            GossipEvent::Reachable(_) => {}
        }
    }

    /// Brings the table, the state file and the neighbours up to date.
    async fn catch_up(&mut self) {
        table::apply(&self.table, self.zone.take_transitions());
        if self.zone.take_persist_dirty() {
            let file = StateFile {
                format: STATE_FORMAT,
                peer: self.zone.me(),
                own: self.zone.own_state(),
            };
            let path = self.state_dir.join(STATE_FILE);
            let res = tokio::task::spawn_blocking(move || {
                let json = serde_json::to_vec(&file).expect("the state serializes");
                crate::atomic_file::replace(&path, &json)
            })
            .await;
            match res {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    error!(error = %e, "could not persist DNS records; they may not survive a restart")
                }
                Err(e) => error!(error = %e, "DNS persistence task failed"),
            }
        }
        if let Some(delta) = self.zone.take_delta() {
            self.send(GossipTo::Fanout, &delta);
        }
    }

    fn send_full(&mut self, to: GossipTo) {
        for g in self.zone.full_state() {
            self.send(to, &g);
        }
    }

    fn send(&self, to: GossipTo, g: &DnsGossip) {
        // Gossip is repeated by anti-entropy; dropping under pressure is fine.
        if !self.gossip.send(to, g.encode()) {
            debug!("router busy; DNS gossip dropped");
        }
    }

    fn report(&self, entries: bool) -> weave_api::DnsReport {
        let live = self.zone.live().count() as u64;
        weave_api::DnsReport {
            domain: self.info.domain.name().to_string(),
            listen: self
                .info
                .listen
                .borrow()
                .iter()
                .map(ToString::to_string)
                .collect(),
            upstream: self
                .info
                .forwarder
                .servers()
                .iter()
                .map(ToString::to_string)
                .collect(),
            ttl: self.info.ttl,
            local_entries: self.zone.own_live() as u64,
            entries: live,
            records: self.zone.total() as u64,
            tombstones: self.zone.tombstones() as u64,
            queries: self
                .info
                .stats
                .snapshot()
                .into_iter()
                .map(|(t, r, n)| weave_api::DnsQueryCount {
                    qtype: t.into(),
                    result: r.into(),
                    count: n,
                })
                .collect(),
            upstream_failures: self.info.forwarder.failures(),
            refused_records: self.zone.stats().refused,
            records_list: if entries {
                self.zone
                    .live()
                    .map(|(origin, k, version)| weave_api::DnsEntry {
                        name: k.name.to_string(),
                        address: k.addr,
                        id: k.holder.to_string(),
                        origin: origin.to_string(),
                        version,
                    })
                    .collect()
            } else {
                Vec::new()
            },
        }
    }
}
