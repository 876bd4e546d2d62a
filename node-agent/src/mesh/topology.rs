// SPDX-License-Identifier: Apache-2.0
//! The gossiped topology: one record per peer, listing the connections that
//! peer announces.
//!
//! Invariants:
//! - Only a peer itself writes its record; others copy it. Each incarnation
//!   (UID) increments its version on every change, so `(version, uid)` orders
//!   records, and the whole record breaks the (impossible in practice) tie.
//!   Merging keeps the greatest record per peer: that is commutative,
//!   associative and idempotent, so gossip may arrive in any order, twice, or
//!   through any path.
//! - A record about ourselves is never taken from gossip. If it comes from an
//!   older incarnation with a version at or above ours, we jump past it so
//!   our own record wins everywhere (what Weave's mesh calls `setVersionBeyond`).
//! - Records of peers unreachable from us are pruned locally by the caller
//!   ([`Topology::remove`]); they are never re-advertised by us.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;

use super::peer::{PeerName, PeerUid};
use super::wire::{put_addr, put_str8, Reader, WireError};

/// First byte of a topology gossip body: a set of full records.
pub const KIND_UPDATE: u8 = 1;
/// First byte of a topology gossip body: a digest of `(name, uid, version)`.
pub const KIND_DIGEST: u8 = 2;

/// A connection as announced in a peer's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnRecord {
    /// Where the remote end listens: the IP the announcing peer sees, with the
    /// port the remote announced in its hello.
    pub addr: SocketAddr,
    /// The announcing peer dialled it.
    pub outbound: bool,
    /// The connection is established (carries data).
    pub established: bool,
}

/// One peer's gossiped record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRecord {
    /// Peer name.
    pub name: PeerName,
    /// Incarnation.
    pub uid: PeerUid,
    /// Incremented by the peer on every change of its record.
    pub version: u64,
    /// Nickname.
    pub nickname: String,
    /// Its connections, by remote peer name.
    pub conns: BTreeMap<PeerName, ConnRecord>,
}

impl PeerRecord {
    /// True when `self` must replace `other` in a merge.
    fn supersedes(&self, other: &PeerRecord) -> bool {
        let key = |r: &PeerRecord| (r.version, r.uid);
        match key(self).cmp(&key(other)) {
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Less => false,
            // Equal version and UID means the same incarnation wrote both, so
            // they are equal; compare content anyway to keep merge a total order.
            std::cmp::Ordering::Equal => {
                (&self.nickname, &self.conns) > (&other.nickname, &other.conns)
            }
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.name.to_bytes());
        out.extend_from_slice(&self.uid.get().to_be_bytes());
        out.extend_from_slice(&self.version.to_be_bytes());
        put_str8(out, &self.nickname);
        let n = u16::try_from(self.conns.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&n.to_be_bytes());
        for (name, c) in self.conns.iter().take(usize::from(n)) {
            out.extend_from_slice(&name.to_bytes());
            put_addr(out, c.addr);
            out.push(u8::from(c.outbound) | (u8::from(c.established) << 1));
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let name = r.name()?;
        let uid = r.u64()?;
        if uid == 0 {
            return Err(WireError::Invalid("peer record uid 0"));
        }
        let version = r.u64()?;
        let nickname = r.str8()?;
        let n = r.u16()?;
        let mut conns = BTreeMap::new();
        for _ in 0..n {
            let peer = r.name()?;
            let addr = r.addr()?;
            let flags = r.u8()?;
            if flags & !0b11 != 0 {
                return Err(WireError::Invalid("connection flags"));
            }
            if peer == name {
                return Err(WireError::Invalid(
                    "peer record lists a connection to itself",
                ));
            }
            let rec = ConnRecord {
                addr,
                outbound: flags & 1 != 0,
                established: flags & 2 != 0,
            };
            if conns.insert(peer, rec).is_some() {
                return Err(WireError::Invalid("peer record lists a connection twice"));
            }
        }
        Ok(Self {
            name,
            uid: PeerUid::new(uid),
            version,
            nickname,
            conns,
        })
    }
}

/// A digest entry: enough to tell whether a record is newer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DigestEntry {
    /// Peer name.
    pub name: PeerName,
    /// Incarnation.
    pub uid: PeerUid,
    /// Version.
    pub version: u64,
}

/// A decoded topology gossip body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopologyGossip {
    /// Full records.
    Update(Vec<PeerRecord>),
    /// `(name, uid, version)` of every record the sender holds.
    Digest(Vec<DigestEntry>),
}

impl TopologyGossip {
    /// Encodes the body (without the gossip channel byte).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Self::Update(records) => {
                out.push(KIND_UPDATE);
                let n = u16::try_from(records.len()).unwrap_or(u16::MAX);
                out.extend_from_slice(&n.to_be_bytes());
                for r in records.iter().take(usize::from(n)) {
                    r.encode(&mut out);
                }
            }
            Self::Digest(entries) => {
                out.push(KIND_DIGEST);
                let n = u16::try_from(entries.len()).unwrap_or(u16::MAX);
                out.extend_from_slice(&n.to_be_bytes());
                for e in entries.iter().take(usize::from(n)) {
                    out.extend_from_slice(&e.name.to_bytes());
                    out.extend_from_slice(&e.uid.get().to_be_bytes());
                    out.extend_from_slice(&e.version.to_be_bytes());
                }
            }
        }
        out
    }

    /// Decodes a body; every record must be complete and well-formed.
    pub fn decode(body: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body, "topology gossip");
        let kind = r.u8()?;
        let n = r.u16()?;
        let out = match kind {
            KIND_UPDATE => {
                let mut records = Vec::with_capacity(usize::from(n).min(1024));
                let mut seen = BTreeSet::new();
                for _ in 0..n {
                    let rec = PeerRecord::decode(&mut r)?;
                    if !seen.insert(rec.name) {
                        return Err(WireError::Invalid("update lists a peer twice"));
                    }
                    records.push(rec);
                }
                Self::Update(records)
            }
            KIND_DIGEST => {
                let mut entries = Vec::with_capacity(usize::from(n).min(1024));
                for _ in 0..n {
                    let name = r.name()?;
                    let uid = PeerUid::new(r.u64()?);
                    let version = r.u64()?;
                    entries.push(DigestEntry { name, uid, version });
                }
                Self::Digest(entries)
            }
            _ => return Err(WireError::Invalid("topology gossip kind")),
        };
        r.finish()?;
        Ok(out)
    }
}

/// What a merge changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MergeOutcome {
    /// Peers whose record was added or replaced.
    pub improved: Vec<PeerName>,
    /// The local peer had to jump its version past an older incarnation's.
    pub local_bumped: bool,
}

/// The local view of all peers' records, the local peer's included.
#[derive(Debug, Clone)]
pub struct Topology {
    local: PeerName,
    peers: BTreeMap<PeerName, PeerRecord>,
}

impl Topology {
    /// A topology holding only the local record.
    pub fn new(local: PeerRecord) -> Self {
        let name = local.name;
        let mut peers = BTreeMap::new();
        peers.insert(name, local);
        Self { local: name, peers }
    }

    /// The local peer's name.
    pub fn local_name(&self) -> PeerName {
        self.local
    }

    /// The local record.
    pub fn local(&self) -> &PeerRecord {
        &self.peers[&self.local]
    }

    /// Changes the local record through `f` and bumps its version.
    pub fn update_local(&mut self, f: impl FnOnce(&mut PeerRecord)) {
        let rec = self
            .peers
            .get_mut(&self.local)
            .expect("the local record is never removed");
        f(rec);
        rec.version += 1;
    }

    /// A record by name.
    pub fn get(&self, name: &PeerName) -> Option<&PeerRecord> {
        self.peers.get(name)
    }

    /// All records, ordered by name.
    pub fn records(&self) -> impl Iterator<Item = &PeerRecord> {
        self.peers.values()
    }

    /// Number of records, the local one included.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Always false: the local record is always there.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Merges received records; see the module invariants.
    pub fn merge(&mut self, records: Vec<PeerRecord>) -> MergeOutcome {
        let mut out = MergeOutcome::default();
        for rec in records {
            if rec.name == self.local {
                let local = self
                    .peers
                    .get_mut(&self.local)
                    .expect("local record present");
                if rec.uid != local.uid && rec.version >= local.version {
                    local.version = rec.version + 1;
                    out.local_bumped = true;
                }
                continue;
            }
            match self.peers.get(&rec.name) {
                Some(have) if !rec.supersedes(have) => {}
                _ => {
                    out.improved.push(rec.name);
                    self.peers.insert(rec.name, rec);
                }
            }
        }
        out
    }

    /// Digest of every record held.
    pub fn digest(&self) -> Vec<DigestEntry> {
        self.peers
            .values()
            .map(|r| DigestEntry {
                name: r.name,
                uid: r.uid,
                version: r.version,
            })
            .collect()
    }

    /// Compares a peer's digest with ours: the records we hold that are newer
    /// than (or missing from) theirs, and whether they hold something newer
    /// than ours (in which case they should hear our digest).
    pub fn diff_digest(&self, theirs: &[DigestEntry]) -> (Vec<PeerName>, bool) {
        let theirs: BTreeMap<PeerName, (u64, PeerUid)> = theirs
            .iter()
            .map(|e| (e.name, (e.version, e.uid)))
            .collect();
        let mut newer_here = Vec::new();
        for r in self.peers.values() {
            match theirs.get(&r.name) {
                Some(&(v, u)) if (v, u) >= (r.version, r.uid) => {}
                _ => newer_here.push(r.name),
            }
        }
        let newer_there = theirs.iter().any(|(name, &(v, u))| {
            *name != self.local
                && self
                    .peers
                    .get(name)
                    .is_none_or(|r| (v, u) > (r.version, r.uid))
        });
        (newer_here, newer_there)
    }

    /// Peers reachable from the local one by following recorded connections
    /// (in the direction the recording peer announces them), the local one
    /// included.
    pub fn reachable(&self) -> BTreeSet<PeerName> {
        let mut seen = BTreeSet::from([self.local]);
        let mut queue = VecDeque::from([self.local]);
        while let Some(p) = queue.pop_front() {
            let Some(rec) = self.peers.get(&p) else {
                continue;
            };
            for next in rec.conns.keys() {
                if self.peers.contains_key(next) && seen.insert(*next) {
                    queue.push_back(*next);
                }
            }
        }
        seen
    }

    /// Drops a remote record (never the local one).
    pub fn remove(&mut self, name: &PeerName) -> Option<PeerRecord> {
        if *name == self.local {
            return None;
        }
        self.peers.remove(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(i: u8) -> PeerName {
        PeerName::from_bytes([2, 0, 0, 0, 0, i])
    }

    fn record(i: u8, uid: u64, version: u64, conns: &[u8]) -> PeerRecord {
        PeerRecord {
            name: name(i),
            uid: PeerUid::new(uid),
            version,
            nickname: format!("h{i}"),
            conns: conns
                .iter()
                .map(|&c| {
                    (
                        name(c),
                        ConnRecord {
                            addr: SocketAddr::from(([10, 0, 0, c], 6783)),
                            outbound: c > i,
                            established: true,
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn update_wire_bytes() {
        let mut rec = record(1, 5, 7, &[2]);
        rec.nickname = "a".into();
        let body = TopologyGossip::Update(vec![rec.clone()]).encode();
        #[rustfmt::skip]
        let expected: &[u8] = &[
            1,                    // kind: update
            0, 1,                 // one record
            2, 0, 0, 0, 0, 1,     // name
            0, 0, 0, 0, 0, 0, 0, 5, // uid
            0, 0, 0, 0, 0, 0, 0, 7, // version
            1, b'a',              // nickname
            0, 1,                 // one connection
            2, 0, 0, 0, 0, 2,     // to peer 2
            4, 10, 0, 0, 2,       // IPv4 10.0.0.2
            0x1a, 0x7f,           // port 6783
            0b11,                 // outbound, established
        ];
        assert_eq!(body, expected);
        assert_eq!(
            TopologyGossip::decode(&body).unwrap(),
            TopologyGossip::Update(vec![rec])
        );
    }

    #[test]
    fn digest_round_trips_and_garbage_is_refused() {
        let g = TopologyGossip::Digest(vec![DigestEntry {
            name: name(3),
            uid: PeerUid::new(9),
            version: 4,
        }]);
        assert_eq!(TopologyGossip::decode(&g.encode()).unwrap(), g);
        assert!(TopologyGossip::decode(&[]).is_err());
        assert!(TopologyGossip::decode(&[7, 0, 0]).is_err());
        let mut bytes = g.encode();
        bytes.push(1);
        assert!(TopologyGossip::decode(&bytes).is_err());
        let mut dup = TopologyGossip::Update(vec![record(1, 1, 1, &[])]).encode();
        dup[2] = 2;
        dup.extend_from_slice(&dup.clone()[3..]);
        assert_eq!(
            TopologyGossip::decode(&dup),
            Err(WireError::Invalid("update lists a peer twice"))
        );
    }

    #[test]
    fn merge_is_commutative_associative_idempotent() {
        let updates = [
            record(2, 1, 3, &[1]),
            record(2, 1, 5, &[1, 3]),
            record(2, 9, 2, &[]),
            record(3, 4, 1, &[2]),
            record(3, 4, 1, &[2]),
        ];
        let base = Topology::new(record(1, 1, 1, &[]));
        let mut results = Vec::new();
        // every order of application gives the same state
        for perm in [
            [0, 1, 2, 3, 4],
            [4, 3, 2, 1, 0],
            [2, 0, 4, 1, 3],
            [1, 1, 0, 3, 2],
        ] {
            let mut t = base.clone();
            for i in perm {
                t.merge(vec![updates[i].clone()]);
            }
            t.merge(vec![updates[4].clone(), updates[0].clone()]);
            results.push(t.records().cloned().collect::<Vec<_>>());
        }
        assert!(results.windows(2).all(|w| w[0] == w[1]), "{results:#?}");
        assert_eq!(results[0][1].version, 5);
    }

    #[test]
    fn older_incarnation_of_self_pushes_version_beyond() {
        let mut t = Topology::new(record(1, 100, 2, &[]));
        let out = t.merge(vec![record(1, 99, 40, &[2])]);
        assert!(out.local_bumped);
        assert!(out.improved.is_empty());
        assert_eq!(t.local().version, 41);
        assert_eq!(t.local().uid, PeerUid::new(100));
        assert!(t.local().conns.is_empty());
    }

    #[test]
    fn reachability_follows_recorded_connections() {
        let mut t = Topology::new(record(1, 1, 1, &[2]));
        t.merge(vec![
            record(2, 1, 1, &[1, 3]),
            record(3, 1, 1, &[2]),
            record(4, 1, 1, &[5]),
        ]);
        let r = t.reachable();
        assert_eq!(r, BTreeSet::from([name(1), name(2), name(3)]));
    }

    #[test]
    fn digest_diff_finds_both_directions() {
        let mut a = Topology::new(record(1, 1, 1, &[]));
        a.merge(vec![record(2, 1, 5, &[]), record(3, 1, 1, &[])]);
        let mut b = Topology::new(record(4, 1, 1, &[]));
        b.merge(vec![record(2, 1, 4, &[]), record(3, 1, 2, &[])]);
        let (newer_here, newer_there) = a.diff_digest(&b.digest());
        assert_eq!(newer_here, vec![name(1), name(2)]);
        assert!(newer_there);
    }
}
