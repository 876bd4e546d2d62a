// SPDX-License-Identifier: Apache-2.0
//! UDP path verification per neighbour.
//!
//! Both ends of each control connection send heartbeats (carrying the
//! connection UID) to the other's sleeve address: fast (every
//! [`PROBE_INTERVAL`]) until answered, then every [`KEEPALIVE_INTERVAL`].
//! An ack proves the round trip, so the path is *established* for the side
//! that receives it. A heartbeat's observed source address replaces the
//! address we send to, so a peer behind NAT (which can send but not be
//! reached unsolicited) is reached at its public mapping as soon as its
//! first heartbeat gets through: the path works when only one side can open
//! it. No ack for [`PATH_TIMEOUT`] means the path failed; probing resumes.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::frame;
use crate::mesh::overlay::Neighbour;
use crate::mesh::PeerName;

/// Heartbeat interval while the path is unverified.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// Heartbeat interval on a verified path.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// A verified path with no ack for this long has failed.
pub const PATH_TIMEOUT: Duration = Duration::from_secs(5);

/// A change of a path's state, to report to the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathEvent {
    /// The path to the peer works both ways.
    Established(PeerName, u64),
    /// The path stopped working.
    Failed(PeerName, u64),
}

#[derive(Debug, Clone)]
struct Path {
    conn_uid: u64,
    addr: SocketAddr,
    established: bool,
    last_ack: Option<Instant>,
    next_tx: Instant,
}

/// Path state of every neighbour.
#[derive(Debug)]
pub struct Paths {
    local: PeerName,
    paths: HashMap<PeerName, Path>,
}

impl Paths {
    /// No paths yet.
    pub fn new(local: PeerName) -> Self {
        Self {
            local,
            paths: HashMap::new(),
        }
    }

    /// Follows the mesh's neighbour set: new connections start probing,
    /// gone ones are dropped, a replaced connection starts over.
    pub fn sync(&mut self, neighbours: &BTreeMap<PeerName, Neighbour>, now: Instant) {
        self.paths.retain(|p, path| {
            neighbours
                .get(p)
                .is_some_and(|n| n.conn_uid == path.conn_uid)
        });
        for (peer, n) in neighbours {
            self.paths.entry(*peer).or_insert(Path {
                conn_uid: n.conn_uid,
                addr: n.addr,
                established: false,
                last_ack: None,
                next_tx: now,
            });
        }
    }

    /// Where to send frames for a neighbour, if its path is verified.
    pub fn addr(&self, peer: &PeerName) -> Option<SocketAddr> {
        self.paths
            .get(peer)
            .filter(|p| p.established)
            .map(|p| p.addr)
    }

    /// The sender of a datagram is a neighbour whose path we know, coming
    /// from the IP we expect (source ports may change under NAT).
    pub fn is_known_sender(&self, peer: &PeerName, src: SocketAddr) -> bool {
        self.paths
            .get(peer)
            .is_some_and(|p| p.addr.ip() == src.ip())
    }

    /// The neighbour a datagram from `src` came from, judged by its IP
    /// alone: `None` when no neighbour, or more than one (behind one NAT),
    /// has that IP. What the datagram claims is not trusted.
    pub fn sender_at(&self, src: SocketAddr) -> Option<PeerName> {
        let mut at = self
            .paths
            .iter()
            .filter(|(_, p)| p.addr.ip() == src.ip())
            .map(|(peer, _)| *peer);
        let first = at.next()?;
        at.next().is_none().then_some(first)
    }

    /// A heartbeat arrived from `src`; returns the ack to send back to
    /// `src` and, while our own direction is unverified, a heartbeat of ours
    /// to send right away (the peer is evidently ready for it), so that both
    /// ends verify the path within one round trip.
    pub fn on_heartbeat(
        &mut self,
        hop: PeerName,
        to: PeerName,
        conn_uid: u64,
        src: SocketAddr,
        now: Instant,
    ) -> Option<(
        [u8; frame::HEARTBEAT_LEN],
        Option<[u8; frame::HEARTBEAT_LEN]>,
    )> {
        let local = self.local;
        let path = self.matching(hop, to, conn_uid, src)?;
        let probe = (!path.established).then(|| {
            path.next_tx = now + PROBE_INTERVAL;
            frame::heartbeat(local, hop, conn_uid, false)
        });
        Some((frame::heartbeat(local, hop, conn_uid, true), probe))
    }

    /// The path a heartbeat or ack belongs to: addressed to us, on the
    /// current connection with `hop`. Its address follows `src` (NAT).
    fn matching(
        &mut self,
        hop: PeerName,
        to: PeerName,
        conn_uid: u64,
        src: SocketAddr,
    ) -> Option<&mut Path> {
        if to != self.local {
            return None;
        }
        let path = self
            .paths
            .get_mut(&hop)
            .filter(|p| p.conn_uid == conn_uid)?;
        path.addr = src;
        Some(path)
    }

    /// An ack arrived: the round trip works.
    pub fn on_ack(
        &mut self,
        hop: PeerName,
        to: PeerName,
        conn_uid: u64,
        src: SocketAddr,
        now: Instant,
    ) -> Option<PathEvent> {
        let path = self.matching(hop, to, conn_uid, src)?;
        path.last_ack = Some(now);
        if path.established {
            return None;
        }
        path.established = true;
        path.next_tx = now + KEEPALIVE_INTERVAL;
        Some(PathEvent::Established(hop, conn_uid))
    }

    /// Heartbeats due now go to `out`; failures to `events`.
    pub fn tick(
        &mut self,
        now: Instant,
        out: &mut Vec<(SocketAddr, [u8; frame::HEARTBEAT_LEN])>,
        events: &mut Vec<PathEvent>,
    ) {
        for (peer, path) in &mut self.paths {
            if path.established && path.last_ack.is_some_and(|t| now >= t + PATH_TIMEOUT) {
                path.established = false;
                events.push(PathEvent::Failed(*peer, path.conn_uid));
            }
            if now >= path.next_tx {
                out.push((
                    path.addr,
                    frame::heartbeat(self.local, *peer, path.conn_uid, false),
                ));
                let every = if path.established {
                    KEEPALIVE_INTERVAL
                } else {
                    PROBE_INTERVAL
                };
                path.next_tx = now + every;
            }
        }
    }

    /// When `tick` is next needed.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.paths
            .values()
            .map(|p| match (p.established, p.last_ack) {
                (true, Some(t)) => p.next_tx.min(t + PATH_TIMEOUT),
                _ => p.next_tx,
            })
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(i: u8) -> PeerName {
        PeerName::from_bytes([2, 0, 0, 0, 0, i])
    }

    fn addr(i: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], port))
    }

    fn neighbours(peer: u8, uid: u64) -> BTreeMap<PeerName, Neighbour> {
        BTreeMap::from([(
            n(peer),
            Neighbour {
                addr: addr(peer, 6783),
                conn_uid: uid,
                keys: None,
            },
        )])
    }

    /// Runs heartbeats between a and b; `a_reachable` false models a NAT in
    /// front of a: b's packets reach a only after a has sent to b.
    fn exchange(a: &mut Paths, b: &mut Paths, a_reachable: bool, now: Instant) -> Vec<PathEvent> {
        let mut events = Vec::new();
        let mut a_opened = false;
        for step in 0..4 {
            let t = now + PROBE_INTERVAL * step;
            let (mut out_a, mut out_b) = (Vec::new(), Vec::new());
            a.tick(t, &mut out_a, &mut events);
            b.tick(t, &mut out_b, &mut events);
            // a's packets arrive at b from a's NAT mapping
            let a_public = addr(1, if a_reachable { 6783 } else { 40001 });
            for (_, hb) in out_a {
                a_opened = true;
                let crate::sleeve::frame::Datagram::Heartbeat { hop, to, conn_uid } =
                    frame::decode(&hb).unwrap()
                else {
                    panic!()
                };
                if let Some((ack, _)) = b.on_heartbeat(hop, to, conn_uid, a_public, t) {
                    let crate::sleeve::frame::Datagram::HeartbeatAck { hop, to, conn_uid } =
                        frame::decode(&ack).unwrap()
                    else {
                        panic!()
                    };
                    events.extend(a.on_ack(hop, to, conn_uid, addr(2, 6783), t));
                }
            }
            for (dst, hb) in out_b {
                if !a_reachable && (dst != a_public || !a_opened) {
                    continue;
                }
                let crate::sleeve::frame::Datagram::Heartbeat { hop, to, conn_uid } =
                    frame::decode(&hb).unwrap()
                else {
                    panic!()
                };
                if let Some((ack, _)) = a.on_heartbeat(hop, to, conn_uid, addr(2, 6783), t) {
                    let crate::sleeve::frame::Datagram::HeartbeatAck { hop, to, conn_uid } =
                        frame::decode(&ack).unwrap()
                    else {
                        panic!()
                    };
                    events.extend(b.on_ack(hop, to, conn_uid, a_public, t));
                }
            }
        }
        events
    }

    #[test]
    fn a_sender_is_known_by_its_ip_alone_and_only_when_unambiguous() {
        let now = Instant::now();
        let mut a = Paths::new(n(1));
        let mut two = neighbours(2, 5);
        two.extend(neighbours(3, 6));
        a.sync(&two, now);
        assert_eq!(a.sender_at(addr(2, 40000)), Some(n(2)), "any source port");
        assert_eq!(a.sender_at(addr(3, 6783)), Some(n(3)));
        assert_eq!(a.sender_at(addr(9, 6783)), None, "no neighbour there");
        // n(4) behind the same address as n(3): neither is named
        let mut nat = two.clone();
        nat.insert(
            n(4),
            Neighbour {
                addr: addr(3, 6784),
                conn_uid: 7,
                keys: None,
            },
        );
        a.sync(&nat, now);
        assert_eq!(a.sender_at(addr(3, 6783)), None);
        assert_eq!(a.sender_at(addr(2, 6783)), Some(n(2)));
    }

    #[test]
    fn both_sides_establish() {
        let now = Instant::now();
        let (mut a, mut b) = (Paths::new(n(1)), Paths::new(n(2)));
        a.sync(&neighbours(2, 77), now);
        b.sync(&neighbours(1, 77), now);
        let ev = exchange(&mut a, &mut b, true, now);
        assert!(ev.contains(&PathEvent::Established(n(2), 77)));
        assert!(ev.contains(&PathEvent::Established(n(1), 77)));
        assert_eq!(a.addr(&n(2)), Some(addr(2, 6783)));
    }

    #[test]
    fn works_when_only_one_side_can_open_it() {
        let now = Instant::now();
        let (mut a, mut b) = (Paths::new(n(1)), Paths::new(n(2)));
        a.sync(&neighbours(2, 5), now);
        b.sync(&neighbours(1, 5), now);
        let ev = exchange(&mut a, &mut b, false, now);
        assert!(ev.contains(&PathEvent::Established(n(1), 5)), "{ev:?}");
        assert!(ev.contains(&PathEvent::Established(n(2), 5)), "{ev:?}");
        assert_eq!(
            b.addr(&n(1)),
            Some(addr(1, 40001)),
            "b follows a's NAT mapping"
        );
    }

    #[test]
    fn wrong_connection_uid_or_receiver_is_ignored_and_silence_fails() {
        let now = Instant::now();
        let mut a = Paths::new(n(1));
        a.sync(&neighbours(2, 5), now);
        assert!(a.on_heartbeat(n(2), n(1), 6, addr(2, 6783), now).is_none());
        assert!(a.on_heartbeat(n(2), n(3), 5, addr(2, 6783), now).is_none());
        let (_, probe) = a.on_heartbeat(n(2), n(1), 5, addr(2, 6783), now).unwrap();
        assert!(
            probe.is_some(),
            "an unverified side answers with its own probe"
        );
        assert_eq!(
            a.on_ack(n(2), n(1), 5, addr(2, 6783), now),
            Some(PathEvent::Established(n(2), 5))
        );
        let mut out = Vec::new();
        let mut ev = Vec::new();
        a.tick(now + PATH_TIMEOUT, &mut out, &mut ev);
        assert_eq!(ev, vec![PathEvent::Failed(n(2), 5)]);
        assert_eq!(a.addr(&n(2)), None);
        // a new connection replaces the path state
        a.sync(&neighbours(2, 9), now);
        assert!(a.on_heartbeat(n(2), n(1), 9, addr(2, 6783), now).is_some());
    }
}
