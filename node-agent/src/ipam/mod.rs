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
pub mod paxos;
pub mod persist;
pub mod ring;
pub mod space;
pub mod subnet;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::mesh::PeerName;
use paxos::{Acceptor, NodeId, Paxos};
use ring::Ring;
use space::{Allocation, Ident, Space};
use subnet::{ip, Subnet};

/// Version of the gossip encoding.
const GOSSIP_FORMAT: u8 = 1;
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

/// Errors of IPAM requests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// The subnet is not inside the allocation range.
    #[error("subnet {subnet} is outside the allocation range {range}")]
    OutsideRange {
        /// The subnet asked for.
        subnet: Subnet,
        /// The range.
        range: Subnet,
    },
    /// The address is the network or broadcast address of its subnet.
    #[error("address {addr} is the network or broadcast address of {subnet}")]
    Reserved {
        /// The address.
        addr: std::net::Ipv4Addr,
        /// Its subnet.
        subnet: Subnet,
    },
    /// Another identifier holds the address.
    #[error("address {addr} is already in use by {holder}")]
    InUse {
        /// The address.
        addr: std::net::Ipv4Addr,
        /// Its holder.
        holder: String,
    },
    /// The owner of the address cannot be asked for it.
    #[error("address {addr} belongs to peer {owner}, which is unreachable")]
    OwnerUnreachable {
        /// The address.
        addr: std::net::Ipv4Addr,
        /// Its owner.
        owner: String,
    },
    /// The owner of the address refused to hand it over.
    #[error("address {addr} is in use on peer {owner}")]
    ClaimDenied {
        /// The address.
        addr: std::net::Ipv4Addr,
        /// Its owner.
        owner: String,
    },
    /// This peer was removed from the ring.
    #[error("this peer was removed from IP allocation by {by} (weave rmpeer); clear its state directory to rejoin under a new name")]
    Removed {
        /// Who removed it.
        by: String,
    },
    /// No peer by that name or nickname.
    #[error("no peer {0:?} is known to IP allocation")]
    UnknownPeer(String),
    /// A nickname matched several peers.
    #[error("nickname {0:?} is ambiguous; use the peer name")]
    AmbiguousPeer(String),
    /// rmpeer of a reachable peer.
    #[error("peer {0} is reachable; only a peer that is gone for good can be removed")]
    PeerReachable(String),
    /// rmpeer of ourselves.
    #[error("a peer cannot remove itself")]
    RemoveSelf,
    /// The request was withdrawn.
    #[error("cancelled")]
    Cancelled,
    /// Gossip that could not be decoded.
    #[error("undecodable IPAM gossip: {0}")]
    Gossip(String),
}

/// Identifies a request that may complete later.
pub type OpId = u64;

/// A request for space, published in the requester's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ask {
    /// Raised for each new request.
    pub id: u64,
    /// Who is asked.
    pub donor: PeerName,
    /// First address wanted.
    pub start: u32,
    /// One past the last address wanted.
    pub end: u64,
    /// Exactly `start` is wanted (a claim), not any part of the range.
    pub single: bool,
}

/// A donor's answer to the latest request of one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The request answered.
    pub ask: u64,
    /// Whether space was granted (the ring shows what).
    pub granted: bool,
}

/// The gossiped record of one peer; only that peer writes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Raised on every change.
    pub version: u64,
    /// Nickname.
    pub nickname: String,
    /// Free addresses in its share (a hint for choosing donors).
    pub free: u64,
    /// Observers own nothing until given space.
    pub observer: bool,
    /// Its current request for space.
    pub ask: Option<Ask>,
    /// Its answers, by requester.
    pub replies: BTreeMap<PeerName, Reply>,
}

/// Everything peers exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipState {
    /// Encoding version (`GOSSIP_FORMAT`).
    pub format: u8,
    /// The ring.
    pub ring: Ring,
    /// Removed peer → the peer that removed it (the lowest such name wins).
    pub removed: BTreeMap<PeerName, PeerName>,
    /// Peer records.
    pub peers: BTreeMap<PeerName, PeerInfo>,
    /// Consensus state, only while the ring is empty.
    pub paxos: BTreeMap<NodeId, Acceptor>,
}

impl GossipState {
    /// Decodes and validates gossip bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, IpamError> {
        let g: GossipState =
            postcard::from_bytes(bytes).map_err(|e| IpamError::Gossip(e.to_string()))?;
        if g.format != GOSSIP_FORMAT {
            return Err(IpamError::Gossip(format!(
                "format {} not supported (this peer speaks {GOSSIP_FORMAT})",
                g.format
            )));
        }
        g.ring
            .validate()
            .map_err(|e| IpamError::Gossip(e.to_string()))?;
        Ok(g)
    }

    /// Encodes for the wire.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("encoding to a Vec cannot fail")
    }
}

/// What the caller should do after gossip arrived.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GossipOutcome {
    /// Our state changed: spread it.
    pub changed: bool,
    /// The sender lacks something we have: send it our state.
    pub reply: bool,
}

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

#[derive(Debug, Clone)]
enum OpKind {
    Allocate { ident: Ident, subnet: Subnet },
    Claim { ident: Ident, alloc: Allocation },
}

#[derive(Debug, Clone)]
struct Pending {
    id: OpId,
    kind: OpKind,
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

    /// Allocates an address of `subnet` (the default one when `None`) for
    /// `ident`. `Some` is the answer now; `None` means the answer comes later
    /// from [`Self::poll_completion`] under `op`.
    pub fn allocate(
        &mut self,
        op: OpId,
        ident: Ident,
        subnet: Option<Subnet>,
        now: Instant,
    ) -> Option<Result<Allocation, IpamError>> {
        let subnet = match self.subnet(subnet) {
            Ok(s) => s,
            Err(e) => return Some(Err(e)),
        };
        self.submit(op, OpKind::Allocate { ident, subnet }, now)
    }

    /// Claims `addr` in `subnet` for `ident` (restarts, fixed addresses,
    /// moved containers). Addresses outside the range are only recorded.
    pub fn claim(
        &mut self,
        op: OpId,
        ident: Ident,
        addr: std::net::Ipv4Addr,
        prefix: u8,
        now: Instant,
    ) -> Option<Result<Allocation, IpamError>> {
        let a = u32::from(addr);
        let net = std::net::Ipv4Addr::from(a & (u32::MAX << (32 - u32::from(prefix.clamp(1, 30)))));
        let subnet = match Subnet::new(net, prefix) {
            Ok(s) => s,
            Err(e) => return Some(Err(IpamError::Gossip(e))),
        };
        let (lo, hi) = subnet.host_range();
        if !(lo..hi).contains(&u64::from(a)) {
            return Some(Err(IpamError::Reserved { addr, subnet }));
        }
        self.submit(
            op,
            OpKind::Claim {
                ident,
                alloc: Allocation { addr: a, subnet },
            },
            now,
        )
    }

    fn submit(
        &mut self,
        op: OpId,
        kind: OpKind,
        now: Instant,
    ) -> Option<Result<Allocation, IpamError>> {
        self.pending.push(Pending { id: op, kind });
        self.step(now);
        let pos = self.completions.iter().position(|(id, _)| *id == op)?;
        self.completions.remove(pos).map(|(_, r)| r)
    }

    /// Withdraws a request that is still waiting.
    pub fn cancel(&mut self, op: OpId) {
        self.pending.retain(|p| p.id != op);
    }

    /// Whether any request waits.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
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

    /// The peers reachable now (the local one need not be included).
    pub fn set_reachable(&mut self, reachable: BTreeSet<PeerName>, now: Instant) {
        if reachable != self.reachable {
            self.reachable = reachable;
            self.step(now);
        }
    }

    /// Our state, for gossip.
    pub fn gossip_state(&self) -> GossipState {
        GossipState {
            format: GOSSIP_FORMAT,
            ring: self.ring.clone(),
            removed: self.removed.clone(),
            peers: self.peers.clone(),
            paxos: match (&self.paxos, self.ring.is_empty()) {
                (Some(p), true) => p.nodes().clone(),
                _ => BTreeMap::new(),
            },
        }
    }

    /// Merges gossip from `from`.
    pub fn on_gossip(
        &mut self,
        from: PeerName,
        bytes: &[u8],
        now: Instant,
    ) -> Result<GossipOutcome, IpamError> {
        let g = GossipState::decode(bytes)?;
        if g.ring.universe != self.ring.universe {
            self.log_once(
                format!("range {from}"),
                &format!(
                    "peer {from} uses allocation range {}, we use {}; ignoring its IPAM state (set the same --ipalloc-range everywhere)",
                    g.ring.universe, self.ring.universe
                ),
            );
            return Ok(GossipOutcome::default());
        }
        let mut changed = false;
        for (p, by) in &g.removed {
            match self.removed.get_mut(p) {
                Some(ours) if *ours <= *by => {}
                Some(ours) => {
                    *ours = *by;
                    changed = true;
                }
                None => {
                    warn!(peer = %p, by = %by, "peer removed from IP allocation (heard by gossip)");
                    self.removed.insert(*p, *by);
                    changed = true;
                }
            }
        }
        changed |= self.merge_ring(&g.ring);
        for (name, theirs) in &g.peers {
            if *name == self.cfg.name {
                let mine = self
                    .peers
                    .get_mut(name)
                    .expect("own record is always present");
                if theirs.version >= mine.version {
                    // An older incarnation of ours was ahead: jump past it.
                    mine.version = theirs.version + 1;
                    changed = true;
                }
                continue;
            }
            match self.peers.get(name) {
                Some(ours) if !supersedes(theirs, ours) => {}
                _ => {
                    self.peers.insert(*name, theirs.clone());
                    changed = true;
                }
            }
        }
        if self.ring.is_empty() {
            if let Some(p) = &mut self.paxos {
                changed |= p.merge(&g.paxos);
            }
        }
        if changed {
            self.gossip_dirty = true;
            self.persist_dirty = true;
        }
        self.step(now);
        let reply = self.gossip_state() != g;
        Ok(GossipOutcome { changed, reply })
    }

    fn merge_ring(&mut self, theirs: &Ring) -> bool {
        if theirs.is_empty() {
            return false;
        }
        if !self.ring.is_empty() && theirs.seeds != self.ring.seeds {
            if theirs.seeds > self.ring.seeds {
                // They will adopt ours.
                return false;
            }
            let fmt = |s: &[PeerName]| {
                s.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            };
            self.log_once(
                format!("seeds {}", fmt(&theirs.seeds)),
                &format!(
                    "two IP allocation rings met: ours was split among [{}], theirs among [{}]; adopting theirs (the lower); addresses handed out here before may be duplicated elsewhere",
                    fmt(&self.ring.seeds),
                    fmt(&theirs.seeds)
                ),
            );
            self.ring = theirs.clone();
            self.persist_dirty = true;
            return true;
        }
        let was_empty = self.ring.is_empty();
        let changed = self.ring.merge(theirs);
        if was_empty && changed {
            info!(
                seeds = self.ring.seeds.len(),
                "learned the IP allocation ring"
            );
        }
        changed
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

    /// A finished request.
    pub fn poll_completion(&mut self) -> Option<(OpId, Result<Allocation, IpamError>)> {
        self.completions.pop_front()
    }

    /// Whether our state changed since the last call (then gossip it).
    pub fn take_gossip_dirty(&mut self) -> bool {
        std::mem::take(&mut self.gossip_dirty)
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
                    if self.pending.is_empty() {
                        format!("idle: consensus deferred until the first allocation ({known} of {n} peers known)")
                    } else {
                        format!("waiting for consensus: {known} of {n} peers")
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
            range: self.cfg.universe.to_string(),
            default_subnet: self.cfg.default_subnet.to_string(),
            total: self.cfg.universe.size(),
            used: self.space.len() as u64,
            pending: self.pending.len() as u64,
            owners,
            removed: self.removed.keys().map(ToString::to_string).collect(),
            state_bytes: self.gossip_state().encode().len() as u64,
        }
    }

    /// Free addresses in our share.
    fn free(&self) -> u64 {
        self.ring
            .ranges_of(self.cfg.name)
            .iter()
            .map(|(s, e)| (e - s) - self.space.used_in(*s, *e))
            .sum()
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

    /// Answers requests for space addressed to us.
    fn serve_asks(&mut self) {
        let me = self.cfg.name;
        if self.removed.contains_key(&me) {
            return;
        }
        let asks: Vec<(PeerName, Ask)> = self
            .peers
            .iter()
            .filter(|(p, _)| **p != me && !self.removed.contains_key(p))
            .filter_map(|(p, i)| i.ask.clone().map(|a| (*p, a)))
            .filter(|(_, a)| a.donor == me)
            .collect();
        for (requester, ask) in asks {
            let answered = self.peers[&me]
                .replies
                .get(&requester)
                .is_some_and(|r| r.ask >= ask.id);
            if answered {
                continue;
            }
            let grant = if ask.single {
                let a = u64::from(ask.start);
                (self.ring.owner(a) == Some(me) && self.space.holder(ask.start).is_none())
                    .then_some((a, a + 1))
            } else {
                self.largest_free_run(u64::from(ask.start), ask.end)
                    .map(|(s, e)| (s + (e - s) / 2, e))
            };
            if let Some((s, e)) = grant {
                self.ring.grant(s, e, me, requester);
                info!(peer = %requester, from = %ip(s), to = %ip(e - 1), addresses = e - s, "donated IP space");
                self.persist_dirty = true;
            } else {
                debug!(peer = %requester, "no IP space to donate");
            }
            let mine = self
                .peers
                .get_mut(&me)
                .expect("own record is always present");
            mine.replies.insert(
                requester,
                Reply {
                    ask: ask.id,
                    granted: grant.is_some(),
                },
            );
            mine.version += 1;
            self.gossip_dirty = true;
        }
    }

    /// The longest run of free addresses of ours inside `[start, end)`.
    fn largest_free_run(&self, start: u64, end: u64) -> Option<(u64, u64)> {
        let mut best: Option<(u64, u64)> = None;
        for (s, e) in self.ring.ranges_of(self.cfg.name) {
            let (s, e) = (s.max(start), e.min(end));
            let mut run_start = s;
            let mut consider = |a: u64, b: u64| {
                if b > a && best.is_none_or(|(x, y)| b - a > y - x) {
                    best = Some((a, b));
                }
            };
            if s >= e {
                continue;
            }
            for (used, _) in self
                .space
                .iter()
                .filter(|(_, a)| (s..e).contains(&u64::from(a.addr)))
                .map(|(i, a)| (u64::from(a.addr), i))
                .collect::<BTreeMap<_, _>>()
            {
                consider(run_start, used);
                run_start = used + 1;
            }
            consider(run_start, e);
        }
        best
    }

    /// Follows up our own request for space.
    fn check_ask(&mut self, now: Instant) {
        let me = self.cfg.name;
        let Some(ask) = self.peers[&me].ask.clone() else {
            return;
        };
        let reply = self
            .peers
            .get(&ask.donor)
            .and_then(|i| i.replies.get(&me))
            .filter(|r| r.ask == ask.id)
            .cloned();
        let expired = self.ask_sent.is_none_or(|t| now >= t + ASK_TIMEOUT);
        let donor_gone =
            !self.reachable.contains(&ask.donor) || self.removed.contains_key(&ask.donor);
        if reply.is_none() && !expired && !donor_gone {
            return;
        }
        if let Some(r) = &reply {
            if !r.granted {
                self.denied.insert(ask.donor, now);
                if ask.single {
                    self.claim_denied.insert(ask.start, ask.donor);
                }
            }
        }
        let mine = self
            .peers
            .get_mut(&me)
            .expect("own record is always present");
        mine.ask = None;
        mine.version += 1;
        self.ask_sent = None;
        self.gossip_dirty = true;
    }

    fn run_pending(&mut self, now: Instant) {
        let me = self.cfg.name;
        let mut need_space: Option<Subnet> = None;
        let mut need_claim: Option<(u32, PeerName)> = None;
        let mut unreachable_owner = false;
        let pending = std::mem::take(&mut self.pending);
        for p in pending {
            let done = match &p.kind {
                OpKind::Allocate { ident, subnet } => {
                    self.try_allocate(ident, *subnet, &mut need_space)
                }
                OpKind::Claim { ident, alloc } => {
                    self.try_claim(ident, *alloc, &mut need_claim, &mut unreachable_owner)
                }
            };
            match done {
                Some(r) => {
                    if r.is_ok() {
                        self.persist_dirty = true;
                    }
                    self.completions.push_back((p.id, r));
                }
                None => self.pending.push(p),
            }
        }
        self.waiting = Waiting::Nothing;
        if self.peers[&me].ask.is_some() || self.ring.is_empty() {
            return;
        }
        let ask = if let Some((addr, owner)) = need_claim {
            Some(Ask {
                id: 0,
                donor: owner,
                start: addr,
                end: u64::from(addr) + 1,
                single: true,
            })
        } else if let Some(subnet) = need_space {
            let (lo, hi) = subnet.host_range();
            match self.choose_donor(lo, hi, now) {
                Some(donor) => Some(Ask {
                    id: 0,
                    donor,
                    start: u32::try_from(lo).expect("host addresses are below 2^32"),
                    end: hi,
                    single: false,
                }),
                None => {
                    self.waiting = if self.owners_in(lo, hi).is_empty() {
                        Waiting::Space
                    } else {
                        Waiting::UnreachableOwners
                    };
                    None
                }
            }
        } else {
            None
        };
        let _ = unreachable_owner;
        if let Some(mut ask) = ask {
            self.waiting = Waiting::Space;
            ask.id = self.next_ask_id();
            debug!(donor = %ask.donor, from = %ip(u64::from(ask.start)), single = ask.single, "asking for IP space");
            let mine = self
                .peers
                .get_mut(&me)
                .expect("own record is always present");
            mine.ask = Some(ask);
            mine.version += 1;
            self.ask_sent = Some(now);
            self.gossip_dirty = true;
        }
    }

    fn next_ask_id(&mut self) -> u64 {
        // Ids must grow across restarts too: a donor remembers the last one
        // it answered. The record version grows across restarts.
        let base = self.peers[&self.cfg.name].version;
        self.next_ask = self.next_ask.max(base) + 1;
        self.next_ask
    }

    fn try_allocate(
        &mut self,
        ident: &Ident,
        subnet: Subnet,
        need_space: &mut Option<Subnet>,
    ) -> Option<Result<Allocation, IpamError>> {
        if let Some(a) = self.space.find_in(ident, &subnet) {
            return Some(Ok(a));
        }
        if let Some(by) = self.removed.get(&self.cfg.name) {
            return Some(Err(IpamError::Removed { by: by.to_string() }));
        }
        if self.ring.is_empty() {
            return None;
        }
        let owned = self.ring.ranges_of(self.cfg.name);
        if let Some(a) = self.space.allocate(ident, subnet, &owned) {
            debug!(id = %ident, address = %a, "allocated");
            return Some(Ok(a));
        }
        need_space.get_or_insert(subnet);
        None
    }

    fn try_claim(
        &mut self,
        ident: &Ident,
        alloc: Allocation,
        need_claim: &mut Option<(u32, PeerName)>,
        unreachable_owner: &mut bool,
    ) -> Option<Result<Allocation, IpamError>> {
        let addr = ip(u64::from(alloc.addr));
        match self.space.holder(alloc.addr) {
            Some(h) if h == ident => return Some(Ok(alloc)),
            Some(h) => {
                return Some(Err(IpamError::InUse {
                    addr,
                    holder: h.to_string(),
                }))
            }
            None => {}
        }
        if !self.cfg.universe.contains(u64::from(alloc.addr)) {
            // Outside the range: nobody else allocates it; just record it.
            let _ = self.space.claim(ident, alloc);
            return Some(Ok(alloc));
        }
        if let Some(by) = self.removed.get(&self.cfg.name) {
            return Some(Err(IpamError::Removed { by: by.to_string() }));
        }
        let owner = self.ring.owner(u64::from(alloc.addr))?;
        if owner == self.cfg.name {
            self.claim_denied.remove(&alloc.addr);
            let _ = self.space.claim(ident, alloc);
            debug!(id = %ident, address = %alloc, "claimed");
            return Some(Ok(alloc));
        }
        if let Some(denier) = self.claim_denied.remove(&alloc.addr) {
            return Some(Err(IpamError::ClaimDenied {
                addr,
                owner: denier.to_string(),
            }));
        }
        if self.removed.contains_key(&owner) {
            // Its heir takes over shortly; ask again then.
            return None;
        }
        if !self.reachable.contains(&owner) {
            *unreachable_owner = true;
            return Some(Err(IpamError::OwnerUnreachable {
                addr,
                owner: owner.to_string(),
            }));
        }
        need_claim.get_or_insert((alloc.addr, owner));
        None
    }

    /// Peers (not us, not removed) owning part of `[start, end)`.
    fn owners_in(&self, start: u64, end: u64) -> BTreeMap<PeerName, u64> {
        let mut out = BTreeMap::new();
        for (s, e, entry) in self.ring.ranges() {
            let (s, e) = (s.max(start), e.min(end));
            if s < e && entry.owner != self.cfg.name && !self.removed.contains_key(&entry.owner) {
                *out.entry(entry.owner).or_insert(0) += e - s;
            }
        }
        out
    }

    /// The reachable owner in `[start, end)` with the most free space by its
    /// own account, skipping those that refused lately.
    fn choose_donor(&mut self, start: u64, end: u64, now: Instant) -> Option<PeerName> {
        self.denied.retain(|_, t| now < *t + DENIED_BACKOFF);
        let owners = self.owners_in(start, end);
        let best = owners
            .iter()
            .filter(|(p, _)| self.reachable.contains(*p) && !self.denied.contains_key(*p))
            .map(|(p, size)| {
                let free = self.peers.get(p).map_or(0, |i| i.free);
                (free > 0, free.min(*size), *size, *p)
            })
            .max()?;
        Some(best.3)
    }

    /// Publishes our free count when it moved noticeably (it is only a
    /// hint; publishing every change would gossip on every allocation).
    fn refresh_free(&mut self) {
        let free = self.free();
        let mine = self
            .peers
            .get_mut(&self.cfg.name)
            .expect("own record is always present");
        let old = mine.free;
        let moved = (free == 0) != (old == 0) || free.abs_diff(old) * 8 > old.max(1);
        if moved && free != old {
            mine.free = free;
            mine.version += 1;
            self.gossip_dirty = true;
        }
    }
}

/// Whether record `a` replaces record `b`: a higher version, or (after an
/// incarnation forgot its versions) the same version with content that
/// sorts higher, so that every peer keeps the same one.
fn supersedes(a: &PeerInfo, b: &PeerInfo) -> bool {
    match a.version.cmp(&b.version) {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Equal => {
            a != b && postcard::to_stdvec(a).ok() > postcard::to_stdvec(b).ok()
        }
    }
}

#[cfg(test)]
mod tests;
