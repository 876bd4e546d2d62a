// SPDX-License-Identifier: Apache-2.0
//! A seeded simulation of the fast-path choice: several peers, each a
//! [`Choice`], on a fake underlay whose links can be blocked, lossy or
//! unable to carry full frames, with time stepped by hand. Checks the
//! timing goals (fallback within 2 s, re-upgrade within 10 s), the reasons
//! shown, the symmetry of the decision, and that a restart never takes the
//! kernel's entries away from traffic.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use super::advert::Advert;
use super::choice::{Action, Choice, Received, Settings, Timing};
use super::plan::desired;
use super::{Encap, Mode, Reason, Remote, VNI};
use crate::mesh::overlay::Neighbour;
use crate::mesh::PeerName;

const STEP: Duration = Duration::from_millis(10);
const FULL: u16 = 1450;

fn name(i: usize) -> PeerName {
    PeerName::from_bytes([2, 0, 0, 0, 0, u8::try_from(i + 1).unwrap()])
}

fn remote(i: usize) -> Remote {
    Remote {
        ip: std::net::IpAddr::from([10, 0, 0, u8::try_from(i + 1).unwrap()]),
        port: 6784,
    }
}

/// A pod MAC on node `i`.
fn pod(i: usize) -> [u8; 6] {
    [0x0a, 0, 0, 0, u8::try_from(i + 1).unwrap(), 1]
}

#[derive(Debug, Clone, Copy)]
struct Link {
    blocked: bool,
    max_len: usize,
    loss: f64,
}

impl Default for Link {
    fn default() -> Self {
        Self {
            blocked: false,
            max_len: usize::MAX,
            loss: 0.0,
        }
    }
}

struct Sim {
    now: Instant,
    rng: StdRng,
    nodes: Vec<Choice>,
    available: Vec<Result<u16, Reason>>,
    /// Which pairs have a control connection, and its UID.
    conns: BTreeMap<(usize, usize), u64>,
    links: BTreeMap<(usize, usize), Link>,
    /// Frames on the wire: delivery time, receiver, bytes.
    wire: Vec<(Instant, usize, Vec<u8>)>,
    /// Mode changes seen: (time, node, peer, mode).
    changes: Vec<(Instant, usize, PeerName, Mode)>,
    next_uid: u64,
}

fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

impl Sim {
    fn new(n: usize, seed: u64) -> Sim {
        Self::with(vec![Ok(6784); n], seed)
    }

    fn with(available: Vec<Result<u16, Reason>>, seed: u64) -> Sim {
        let now = Instant::now();
        let n = available.len();
        let nodes = (0..n).map(|i| choice(i, available[i], now)).collect();
        let mut sim = Sim {
            now,
            rng: StdRng::seed_from_u64(seed),
            nodes,
            available,
            conns: BTreeMap::new(),
            links: BTreeMap::new(),
            wire: Vec::new(),
            changes: Vec::new(),
            next_uid: 100,
        };
        for a in 0..n {
            for b in a + 1..n {
                sim.connect(a, b);
            }
        }
        sim.sync_all();
        sim
    }

    fn connect(&mut self, a: usize, b: usize) {
        self.next_uid += 1;
        self.conns.insert(pair(a, b), self.next_uid);
    }

    fn neighbours(&self, i: usize) -> BTreeMap<PeerName, Neighbour> {
        self.conns
            .iter()
            .filter_map(|(&(a, b), uid)| {
                let other = if a == i {
                    b
                } else if b == i {
                    a
                } else {
                    return None;
                };
                Some((
                    name(other),
                    Neighbour {
                        addr: SocketAddr::new(remote(other).ip, 6783),
                        conn_uid: *uid,
                        keys: None,
                    },
                ))
            })
            .collect()
    }

    fn advert(&self, i: usize) -> Advert {
        Advert {
            available: self.available[i].map(|_| ()).map_err(Some),
            vni: VNI,
            port: 6784,
            encaps: vec![Encap::Vxlan],
            macs: vec![pod(i)],
        }
    }

    /// Every node follows the connections; neighbours swap adverts.
    fn sync_all(&mut self) {
        for i in 0..self.nodes.len() {
            let nb = self.neighbours(i);
            self.nodes[i].sync(&nb, self.now);
            for peer in nb.keys() {
                let j = index(*peer);
                let ad = self.advert(j);
                self.nodes[i].on_advert(*peer, ad, self.now);
            }
        }
        self.drain();
    }

    fn link(&self, a: usize, b: usize) -> Link {
        self.links.get(&pair(a, b)).copied().unwrap_or_default()
    }

    fn drain(&mut self) {
        for i in 0..self.nodes.len() {
            while let Some(a) = self.nodes[i].poll_action() {
                match a {
                    Action::Send(bytes) => {
                        let mut to = [0u8; 6];
                        to.copy_from_slice(&bytes[..6]);
                        let j = index(PeerName::from_bytes(to));
                        let l = self.link(i, j);
                        let lost = self.rng.gen_bool(l.loss);
                        if !l.blocked && bytes.len() <= l.max_len && !lost {
                            self.wire
                                .push((self.now + Duration::from_millis(1), j, bytes));
                        }
                    }
                    Action::Changed { peer, to, .. } => self.changes.push((self.now, i, peer, to)),
                    Action::Held { .. } | Action::Released { .. } => {}
                }
            }
        }
    }

    fn step(&mut self) {
        self.now += STEP;
        let due: Vec<(Instant, usize, Vec<u8>)>;
        (due, self.wire) = std::mem::take(&mut self.wire)
            .into_iter()
            .partition(|(t, _, _)| *t <= self.now);
        for (_, j, bytes) in due {
            self.nodes[j].on_frame(&bytes, self.now);
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].poll_timeout() <= self.now {
                self.nodes[i].tick(self.now);
            }
        }
        self.drain();
    }

    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.step();
        }
    }

    /// Runs until `f` holds, at most `limit`; returns how long it took.
    fn until(&mut self, limit: Duration, f: impl Fn(&Sim) -> bool) -> Option<Duration> {
        let start = self.now;
        while self.now - start <= limit {
            if f(self) {
                return Some(self.now - start);
            }
            self.step();
        }
        None
    }

    fn mode(&self, i: usize, j: usize) -> Option<Mode> {
        self.nodes[i].modes().get(&name(j)).copied()
    }

    fn all_fastdp(&self) -> bool {
        self.conns.keys().all(|&(a, b)| {
            self.mode(a, b) == Some(Mode::Fastdp) && self.mode(b, a) == Some(Mode::Fastdp)
        })
    }
}

fn index(p: PeerName) -> usize {
    usize::from(p.to_bytes()[5]) - 1
}

fn choice(i: usize, available: Result<u16, Reason>, now: Instant) -> Choice {
    Choice::new(
        Settings {
            local: name(i),
            available,
            encrypted: false,
            full_len: FULL,
            timing: Timing::default(),
        },
        now,
    )
}

#[test]
fn all_links_reach_the_fast_path_within_two_seconds() {
    let mut sim = Sim::new(4, 1);
    let took = sim
        .until(Duration::from_secs(5), Sim::all_fastdp)
        .expect("every connection on the fast path");
    assert!(took <= Duration::from_secs(2), "took {took:?}");
    for i in 0..4 {
        let others: BTreeSet<PeerName> = (0..4).filter(|j| *j != i).map(name).collect();
        assert_eq!(sim.nodes[i].kernel_peers(), others);
        // the plan pins every other node's pod to its address
        let n = &sim.nodes[i];
        let d = desired(
            name(i),
            &n.candidates(sim.now),
            &n.carriers(),
            &BTreeSet::from([pod(i)]),
        );
        for j in (0..4).filter(|j| *j != i) {
            assert_eq!(d.remotes.get(&pod(j)), Some(&remote(j)));
            assert!(d.pinned.contains(&pod(j)) && d.flood.contains(&remote(j)));
        }
        assert!(!d.pinned.contains(&pod(i)));
    }
}

#[test]
fn a_blocked_link_falls_back_within_two_seconds_and_comes_back_within_ten() {
    let mut sim = Sim::new(3, 2);
    sim.until(Duration::from_secs(5), Sim::all_fastdp)
        .expect("fast path");
    sim.links.insert(
        (0, 1),
        Link {
            blocked: true,
            ..Link::default()
        },
    );
    let blocked_at = sim.now;
    let down = sim
        .until(Duration::from_secs(5), |s| {
            s.mode(0, 1) != Some(Mode::Fastdp) && s.mode(1, 0) != Some(Mode::Fastdp)
        })
        .expect("fallback");
    assert!(down <= Duration::from_secs(2), "fell back after {down:?}");
    sim.run(Duration::from_secs(20));
    for (a, b) in [(0, 1), (1, 0)] {
        assert_eq!(sim.mode(a, b), Some(Mode::Sleeve(Reason::HeartbeatTimeout)));
    }
    // the other connections never left the fast path
    let others: Vec<_> = sim
        .changes
        .iter()
        .filter(|(t, ..)| *t > blocked_at) // the upgrades that completed the mesh are at `blocked_at`
        .filter(|(_, i, p, _)| !matches!((*i, index(*p)), (0, 1) | (1, 0)))
        .collect();
    assert!(others.is_empty(), "other connections changed: {others:?}");
    assert!(!sim.nodes[0].kernel_peers().contains(&name(1)));
    sim.links.remove(&(0, 1));
    let up = sim
        .until(Duration::from_secs(15), Sim::all_fastdp)
        .expect("re-upgrade");
    assert!(up <= Duration::from_secs(10), "came back after {up:?}");
}

#[test]
fn a_path_that_cannot_carry_full_frames_stays_on_the_sleeve_with_reason_mtu() {
    let mut sim = Sim::new(3, 3);
    sim.links.insert(
        (0, 2),
        Link {
            max_len: 1400,
            ..Link::default()
        },
    );
    sim.run(Duration::from_secs(10));
    assert_eq!(sim.mode(0, 2), Some(Mode::Sleeve(Reason::Mtu)));
    assert_eq!(sim.mode(2, 0), Some(Mode::Sleeve(Reason::Mtu)));
    assert_eq!(sim.mode(0, 1), Some(Mode::Fastdp));
    assert!(
        sim.changes
            .iter()
            .all(|(_, i, p, m)| !(*m == Mode::Fastdp && pair(*i, index(*p)) == (0, 2))),
        "the narrow path was never chosen"
    );
    // the MTU shrinks on a path in use: it falls back in time too
    sim.links.insert(
        (0, 1),
        Link {
            max_len: 1400,
            ..Link::default()
        },
    );
    let down = sim
        .until(Duration::from_secs(5), |s| {
            s.mode(0, 1) == Some(Mode::Sleeve(Reason::Mtu))
                && s.mode(1, 0) == Some(Mode::Sleeve(Reason::Mtu))
        })
        .expect("fallback on a shrunk MTU");
    assert!(down <= Duration::from_secs(2), "{down:?}");
}

#[test]
fn loss_does_not_make_the_choice_flap() {
    let mut sim = Sim::new(3, 4);
    sim.until(Duration::from_secs(5), Sim::all_fastdp)
        .expect("fast path");
    for a in 0..3 {
        for b in a + 1..3 {
            sim.links.insert(
                (a, b),
                Link {
                    loss: 0.1,
                    ..Link::default()
                },
            );
        }
    }
    let before = sim.changes.len();
    sim.run(Duration::from_secs(120));
    assert_eq!(
        sim.changes.len(),
        before,
        "modes changed under 10% loss: {:?}",
        &sim.changes[before..]
    );
}

#[test]
fn a_restarting_peer_keeps_its_entries_on_both_sides() {
    let mut sim = Sim::new(3, 5);
    sim.until(Duration::from_secs(5), Sim::all_fastdp)
        .expect("fast path");
    // node 1's agent dies: its connections close, its state is gone, but
    // the kernel keeps what node 1 had programmed
    let found: BTreeMap<Remote, BTreeSet<[u8; 6]>> = [0, 2]
        .iter()
        .map(|j| (remote(*j), BTreeSet::from([pod(*j)])))
        .collect();
    sim.conns.retain(|&(a, b), _| a != 1 && b != 1);
    sim.nodes[1] = choice(1, Ok(6784), sim.now);
    sim.sync_all();
    let carried = |s: &Sim, i: usize, j: usize| {
        s.nodes[i]
            .carriers()
            .iter()
            .any(|c| c.remote == remote(j) && c.macs.iter().any(|(m, _)| *m == pod(j)))
    };
    assert!(carried(&sim, 0, 1) && carried(&sim, 2, 1), "held");
    sim.run(Duration::from_secs(2));
    // the new agent adopts what it finds, then reconnects
    sim.nodes[1].adopt(found, sim.now);
    assert!(carried(&sim, 1, 0) && carried(&sim, 1, 2), "adopted");
    sim.connect(0, 1);
    sim.connect(1, 2);
    sim.sync_all();
    for _ in 0..500 {
        sim.step();
        for (i, j) in [(0, 1), (1, 0), (1, 2), (2, 1)] {
            assert!(carried(&sim, i, j), "{i} dropped {j} at {:?}", sim.now);
        }
    }
    assert!(sim.all_fastdp());
    assert!(sim.nodes[1].held().is_empty(), "holds end when confirmed");
}

#[test]
fn a_held_peer_that_does_not_come_back_is_released() {
    let mut sim = Sim::new(2, 6);
    sim.until(Duration::from_secs(5), Sim::all_fastdp)
        .expect("fast path");
    sim.conns.clear();
    sim.sync_all();
    assert_eq!(sim.nodes[0].held().len(), 1);
    sim.run(Timing::default().hold + Duration::from_secs(1));
    assert!(sim.nodes[0].held().is_empty());
    assert!(sim.nodes[0].carriers().is_empty());
}

#[test]
fn peers_without_the_fast_path_and_local_reasons_are_shown() {
    let mut sim = Sim::with(vec![Ok(6784), Err(Reason::Disabled), Ok(6784)], 7);
    sim.run(Duration::from_secs(8));
    assert_eq!(sim.mode(0, 1), Some(Mode::Sleeve(Reason::PeerWithout)));
    assert_eq!(sim.mode(1, 0), Some(Mode::Sleeve(Reason::Disabled)));
    assert_eq!(sim.mode(0, 2), Some(Mode::Fastdp));
    let mut enc = Sim::with(vec![Err(Reason::Encryption), Err(Reason::Encryption)], 8);
    enc.run(Duration::from_secs(8));
    assert_eq!(enc.mode(0, 1), Some(Mode::Sleeve(Reason::Encryption)));
    assert!(enc.wire.is_empty(), "no heartbeats without a fast path");
}

#[test]
fn forged_and_stray_frames_are_ignored() {
    let mut sim = Sim::new(2, 9);
    sim.until(Duration::from_secs(5), Sim::all_fastdp)
        .expect("fast path");
    let good = super::heartbeat::Frame {
        to: name(0),
        from: name(1),
        kind: super::heartbeat::Kind::Heartbeat,
        tx_ok: true,
        reason: None,
        conn_uid: sim.conns[&(0, 1)],
        seq: 1,
        full: false,
        len: 60,
    };
    let now = sim.now;
    let n = &mut sim.nodes[0];
    assert_eq!(n.on_frame(&good.encode(), now), Received::Heartbeat);
    for forged in [
        super::heartbeat::Frame {
            conn_uid: 12345,
            ..good
        },
        super::heartbeat::Frame {
            to: name(5),
            ..good
        },
        super::heartbeat::Frame {
            from: name(7),
            ..good
        },
        super::heartbeat::Frame {
            kind: super::heartbeat::Kind::Ack,
            full: true,
            seq: 0xdead,
            ..good
        },
    ] {
        assert_eq!(
            n.on_frame(&forged.encode(), now),
            Received::Ignored,
            "{forged:?}"
        );
    }
    assert_eq!(n.on_frame(b"short", now), Received::Ignored);
}
