// SPDX-License-Identifier: Apache-2.0
//! IP address management without a cluster store.
//!
//! The allocation range is split among peers by the [`ring`]; each peer
//! hands out addresses only from its own share ([`space`]), so peers on both
//! sides of a partition keep allocating without ever colliding. A peer out of
//! space asks another for some (donation); a peer gone for good has its share
//! inherited by a deterministic heir after `rmpeer`.
//!
//! [`Ipam`] is sans-IO: it takes requests, gossip bytes, the set of reachable
//! peers and the time, and produces completions, gossip to send and a
//! "persist me" flag. The [`allocator`] task drives it.
//!
//! Everything peers exchange is one gossiped state ([`GossipState`]): the
//! ring, the removed peers, each peer's small record (free-space hint, its
//! current request for space, its answers to others' requests) and, before
//! the ring exists, the consensus state. Each part merges as a join, so
//! gossip can be repeated, reordered and relayed freely; requests for space
//! therefore travel across relays like any other gossip.

pub mod allocator;
mod donation;
mod error;
mod gossip;
pub mod paxos;
mod pending;
pub mod persist;
pub mod ring;
pub mod space;
pub mod subnet;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::mesh::PeerName;
use paxos::{NodeId, Paxos};
use ring::Ring;
use space::{Allocation, Ident, Space};
use subnet::Subnet;

pub use error::IpamError;
pub use gossip::{Ask, GossipOutcome, GossipState, PeerInfo, Reply};
use pending::{OpKind, Pending};

/// A request for space unanswered for this long is given up (and retried).
const ASK_TIMEOUT: Duration = Duration::from_secs(10);
/// A donor that refused is not asked again for this long.
const DENIED_BACKOFF: Duration = Duration::from_secs(10);
/// With a quorum but not all N electors known, consensus waits this long
/// for the rest before going ahead.
const CONSENSUS_GRACE: Duration = Duration::from_secs(5);
/// A proposal not decided within this (plus jitter) is made again.
const PROPOSAL_RETRY: Duration = Duration::from_secs(3);
/// Periodic step when something waits.
const RETRY_TICK: Duration = Duration::from_secs(1);

/// How the ring gets its first owners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Init {
    /// Deferred until the first allocation; then `N` electors (a majority of
    /// them at least) agree on who splits the range.
    Consensus(usize),
    /// Split at once among these peers; every peer must get the same list.
    Seed(Vec<PeerName>),
    /// Never owns space until given some.
    Observer,
}

/// Configuration of IPAM on one peer.
#[derive(Debug, Clone)]
pub struct IpamConfig {
    /// Our peer name.
    pub name: PeerName,
    /// Our incarnation (consensus nodes are per incarnation).
    pub uid: u64,
    /// Our nickname, shown to others.
    pub nickname: String,
    /// The allocation range.
    pub universe: Subnet,
    /// Where allocations without a subnet go (inside the range).
    pub default_subnet: Subnet,
    /// Bootstrap mode.
    pub init: Init,
}

/// Identifies a request that may complete later.
pub type OpId = u64;

/// Result of rmpeer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    /// The removed peer.
    pub peer: PeerName,
    /// Addresses it owned.
    pub addresses: u64,
    /// Who inherits them.
    pub heirs: BTreeSet<PeerName>,
}

/// Why allocations wait, for the status line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    Nothing,
    Space,
    UnreachableOwners,
}

/// IPAM state of one peer.
#[derive(Debug)]
pub struct Ipam {
    cfg: IpamConfig,
    rng: StdRng,
    ring: Ring,
    removed: BTreeMap<PeerName, PeerName>,
    peers: BTreeMap<PeerName, PeerInfo>,
    paxos: Option<Paxos>,
    space: Space,
    reachable: BTreeSet<PeerName>,
    pending: Vec<Pending>,
    completions: VecDeque<(OpId, Result<Allocation, IpamError>)>,
    ask_sent: Option<Instant>,
    next_ask: u64,
    denied: BTreeMap<PeerName, Instant>,
    claim_denied: BTreeMap<u32, PeerName>,
    wanted_since: Option<Instant>,
    next_proposal: Option<Instant>,
    waiting: Waiting,
    logged: BTreeSet<String>,
    gossip_dirty: bool,
    persist_dirty: bool,
}

impl Ipam {
    /// IPAM for a fresh peer, or one restored from `persisted`.
    pub fn new(cfg: IpamConfig, persisted: Option<persist::Persisted>, seed: u64) -> Self {
        let mut me = PeerInfo {
            version: 1,
            nickname: cfg.nickname.clone(),
            observer: cfg.init == Init::Observer,
            ..PeerInfo::default()
        };
        let mut ring = Ring::new(cfg.universe);
        let mut removed = BTreeMap::new();
        let mut space = Space::default();
        if let Some(p) = persisted {
            ring = p.ring;
            removed = p.removed;
            me.version = p.version + 1;
            for (ident, alloc) in p.allocations {
                let _ = space.claim(&ident, alloc);
            }
        }
        let mut paxos = None;
        if ring.is_empty() {
            match &cfg.init {
                Init::Seed(peers) => {
                    ring.claim_for_peers(peers);
                    info!(seeds = ?ring.seeds.iter().map(ToString::to_string).collect::<Vec<_>>(), "IP allocation range split among the seed peers");
                }
                Init::Consensus(n) => {
                    let me_node = NodeId {
                        name: cfg.name,
                        uid: cfg.uid,
                    };
                    paxos = Some(Paxos::new(me_node, n / 2 + 1));
                }
                Init::Observer => {}
            }
        }
        let mut peers = BTreeMap::new();
        peers.insert(cfg.name, me);
        let mut ipam = Self {
            cfg,
            rng: StdRng::seed_from_u64(seed),
            ring,
            removed,
            peers,
            paxos,
            space,
            reachable: BTreeSet::new(),
            pending: Vec::new(),
            completions: VecDeque::new(),
            ask_sent: None,
            next_ask: 1,
            denied: BTreeMap::new(),
            claim_denied: BTreeMap::new(),
            wanted_since: None,
            next_proposal: None,
            waiting: Waiting::Nothing,
            logged: BTreeSet::new(),
            gossip_dirty: true,
            persist_dirty: false,
        };
        ipam.refresh_free();
        ipam
    }

    /// The configuration.
    pub fn config(&self) -> &IpamConfig {
        &self.cfg
    }

    /// Peers removed for good (rmpeer, reclaim).
    pub fn removed_peers(&self) -> BTreeSet<PeerName> {
        self.removed.keys().copied().collect()
    }

    /// The ring as this peer sees it.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// This peer's allocations.
    pub fn space(&self) -> &Space {
        &self.space
    }

    /// Addresses of `ident`.
    pub fn lookup(&self, ident: &Ident) -> Vec<Allocation> {
        self.space.lookup(ident).to_vec()
    }

    /// Resolves an optional subnet to one inside the range.
    pub fn subnet(&self, subnet: Option<Subnet>) -> Result<Subnet, IpamError> {
        let subnet = subnet.unwrap_or(self.cfg.default_subnet);
        if !self.cfg.universe.covers(&subnet) {
            return Err(IpamError::OutsideRange {
                subnet,
                range: self.cfg.universe,
            });
        }
        Ok(subnet)
    }

    /// Releases one address of `ident` (all when `addr` is `None`).
    pub fn release(&mut self, ident: &Ident, addr: Option<u32>, now: Instant) -> Vec<Allocation> {
        self.pending.retain(|p| match &p.kind {
            OpKind::Allocate { ident: i, .. } | OpKind::Claim { ident: i, .. } => {
                i != ident || addr.is_some()
            }
        });
        let out = self.space.release(ident, addr);
        if !out.is_empty() {
            debug!(id = %ident, addresses = ?out.iter().map(ToString::to_string).collect::<Vec<_>>(), "released");
            self.persist_dirty = true;
            self.step(now);
        }
        out
    }

    /// Releases every allocation whose identifier starts with `prefix` and is
    /// not in `keep`; returns the identifiers released.
    pub fn gc(&mut self, prefix: &str, keep: &BTreeSet<String>, now: Instant) -> Vec<Ident> {
        let gone: Vec<Ident> = self
            .space
            .idents()
            .filter(|i| i.as_str().starts_with(prefix) && !keep.contains(i.as_str()))
            .cloned()
            .collect();
        for i in &gone {
            self.release(i, None, now);
        }
        if !gone.is_empty() {
            info!(released = gone.len(), %prefix, "garbage-collected allocations");
        }
        gone
    }

    /// Removes a peer that is gone for good: its ranges go to heirs chosen
    /// from the ring, so peers removing it concurrently agree.
    pub fn rmpeer(&mut self, target: &str, now: Instant) -> Result<Removal, IpamError> {
        let peer = self.resolve_peer(target)?;
        if peer == self.cfg.name {
            return Err(IpamError::RemoveSelf);
        }
        if self.reachable.contains(&peer) {
            return Err(IpamError::PeerReachable(peer.to_string()));
        }
        let addresses = self.ring.shares().get(&peer).copied().unwrap_or(0);
        let mut removed = self.removed.clone();
        removed.entry(peer).or_insert(self.cfg.name);
        let heirs: BTreeSet<PeerName> = self
            .ring
            .ranges()
            .iter()
            .filter(|(_, _, e)| e.owner == peer)
            .filter_map(|(s, _, _)| u32::try_from(*s).ok())
            .filter_map(|t| self.ring.heir(t, &removed))
            .collect();
        if self
            .removed
            .insert(peer, *removed.get(&peer).expect("inserted above"))
            .is_none()
        {
            warn!(%peer, addresses, heirs = ?heirs.iter().map(ToString::to_string).collect::<Vec<_>>(), "peer removed from IP allocation");
            self.gossip_dirty = true;
            self.persist_dirty = true;
        }
        self.step(now);
        Ok(Removal {
            peer,
            addresses,
            heirs,
        })
    }

    fn resolve_peer(&self, target: &str) -> Result<PeerName, IpamError> {
        let known = |p: &PeerName| {
            self.peers.contains_key(p) || self.ring.tokens.values().any(|e| e.owner == *p)
        };
        if let Ok(p) = target.parse::<PeerName>() {
            return if known(&p) {
                Ok(p)
            } else {
                Err(IpamError::UnknownPeer(target.to_string()))
            };
        }
        let matches: Vec<PeerName> = self
            .peers
            .iter()
            .filter(|(_, i)| i.nickname == target)
            .map(|(p, _)| *p)
            .collect();
        match matches.as_slice() {
            [p] => Ok(*p),
            [] => Err(IpamError::UnknownPeer(target.to_string())),
            _ => Err(IpamError::AmbiguousPeer(target.to_string())),
        }
    }

    fn log_once(&mut self, key: String, msg: &str) {
        if self.logged.insert(key) {
            error!("{msg}");
        }
    }

    /// Runs timers due at `now`.
    pub fn tick(&mut self, now: Instant) {
        self.step(now);
    }

    /// When [`Self::tick`] must run next, if anything waits.
    pub fn next_tick(&self, now: Instant) -> Option<Instant> {
        let mine = &self.peers[&self.cfg.name];
        let waiting = !self.pending.is_empty() || mine.ask.is_some();
        waiting.then(|| {
            let mut t = now + RETRY_TICK;
            if let Some(p) = self.next_proposal {
                t = t.min(p.max(now));
            }
            t
        })
    }

    /// Whether the persisted state is stale since the last call.
    pub fn take_persist_dirty(&mut self) -> bool {
        std::mem::take(&mut self.persist_dirty)
    }

    /// What survives a restart.
    pub fn persisted(&self) -> persist::Persisted {
        persist::Persisted {
            format: persist::FORMAT,
            peer: self.cfg.name,
            range: self.cfg.universe,
            version: self.peers[&self.cfg.name].version,
            ring: self.ring.clone(),
            removed: self.removed.clone(),
            allocations: self.space.iter().map(|(i, a)| (i.clone(), a)).collect(),
        }
    }

    /// Whether an allocation could proceed now.
    pub fn ready(&self) -> bool {
        if self.removed.contains_key(&self.cfg.name) {
            return false;
        }
        if !self.ring.is_empty() {
            return true;
        }
        match (&self.cfg.init, &self.paxos) {
            (Init::Consensus(_), Some(p)) => p.electors().len() >= p.quorum(),
            _ => false,
        }
    }

    /// The status line.
    pub fn status(&self) -> String {
        if let Some(by) = self.removed.get(&self.cfg.name) {
            return format!("removed by {by}");
        }
        if self.ring.is_empty() {
            return match (&self.cfg.init, &self.paxos) {
                (Init::Consensus(n), Some(p)) => {
                    let known = p.electors().len();
                    let peers = if known == 1 { "peer" } else { "peers" };
                    let quorum = p.quorum();
                    if self.pending.is_empty() {
                        format!(
                            "idle: the range is split by consensus at the first allocation \
                             ({known} {peers} known, {quorum} needed of an expected {n})"
                        )
                    } else {
                        format!("waiting for consensus: {known} {peers} known, {quorum} needed of an expected {n}")
                    }
                }
                _ => "waiting for a peer to share the IP allocation ring (observer)".to_string(),
            };
        }
        match self.waiting {
            _ if self.pending.is_empty() => "ready".to_string(),
            Waiting::UnreachableOwners => {
                "all IP ranges with free space are owned by unreachable peers - use 'weave rmpeer' if they are gone for good".to_string()
            }
            Waiting::Space | Waiting::Nothing => "waiting for IP space from other peers".to_string(),
        }
    }

    /// A report for the API.
    pub fn report(&self) -> weave_api::IpamReport {
        let shares = self.ring.shares();
        let mut names: BTreeSet<PeerName> = shares.keys().copied().collect();
        names.extend(self.peers.keys().filter(|p| !self.removed.contains_key(p)));
        let owners = names
            .into_iter()
            .map(|p| {
                let local = p == self.cfg.name;
                let info = self.peers.get(&p);
                weave_api::IpamOwner {
                    name: p.to_string(),
                    nickname: info.map(|i| i.nickname.clone()).unwrap_or_default(),
                    addresses: shares.get(&p).copied().unwrap_or(0),
                    free: if local {
                        self.free()
                    } else {
                        info.map_or(0, |i| i.free)
                    },
                    local,
                    reachable: local || self.reachable.contains(&p),
                }
            })
            .collect();
        weave_api::IpamReport {
            status: self.status(),
            ready: self.ready(),
            range: self.cfg.universe.into(),
            default_subnet: self.cfg.default_subnet.into(),
            total: self.cfg.universe.size(),
            used: self.space.len() as u64,
            pending: self.pending.len() as u64,
            owners,
            removed: self.removed.keys().map(ToString::to_string).collect(),
            state_bytes: self.gossip_state().encode().len() as u64,
        }
    }

    /// Brings everything up to date: consensus, takeovers, donations asked
    /// of us, our own request for space, waiting requests, the free hint.
    fn step(&mut self, now: Instant) {
        if self.ring.is_empty() {
            self.consensus(now);
        }
        if !self.removed.is_empty() && !self.removed.contains_key(&self.cfg.name) {
            let taken = self.ring.take_over(&self.removed, self.cfg.name);
            if taken > 0 {
                info!(addresses = taken, "took over the ranges of removed peers");
                self.gossip_dirty = true;
                self.persist_dirty = true;
            }
        }
        self.serve_asks();
        self.check_ask(now);
        self.run_pending(now);
        self.refresh_free();
    }

    fn consensus(&mut self, now: Instant) {
        let Init::Consensus(n) = self.cfg.init else {
            return;
        };
        let Some(paxos) = &mut self.paxos else { return };
        let known = paxos.electors().len();
        if self.pending.is_empty() {
            self.wanted_since = None;
        } else {
            let since = *self.wanted_since.get_or_insert(now);
            let enough = known >= n || (known >= paxos.quorum() && now >= since + CONSENSUS_GRACE);
            let due = self.next_proposal.is_none_or(|t| now >= t);
            if enough && due && paxos.decision().is_none() {
                paxos.propose();
                self.gossip_dirty = true;
                let jitter = Duration::from_millis(self.rng.gen_range(0..1000));
                self.next_proposal = Some(now + PROPOSAL_RETRY + jitter);
                debug!(
                    known,
                    quorum = paxos.quorum(),
                    "proposing the initial split of the IP allocation range"
                );
            }
        }
        let electors: Vec<PeerName> = paxos.electors().into_iter().collect();
        if paxos.think(|| electors) {
            self.gossip_dirty = true;
        }
        if let Some(value) = paxos.decision() {
            self.ring.claim_for_peers(&value);
            info!(peers = ?value.iter().map(ToString::to_string).collect::<Vec<_>>(), "consensus reached; IP allocation range split");
            self.paxos = None;
            self.next_proposal = None;
            self.gossip_dirty = true;
            self.persist_dirty = true;
        }
    }
}

#[cfg(test)]
mod tests;
