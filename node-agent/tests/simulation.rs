// SPDX-License-Identifier: Apache-2.0
//! Many peers in one process: the sans-IO mesh cores wired together by a
//! simulated network with latency, reordering, gossip loss, link failures,
//! late joins and restarts. After the chaos stops, every peer must hold the
//! same topology, matching what each peer says of itself, and the same routes.

// Peer indexes are small (< 1000); the casts between them and addresses or
// names cannot truncate.
#![allow(clippy::cast_possible_truncation)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::net::SocketAddr;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use weave_node_agent::mesh::routes::{Graph, Routes};
use weave_node_agent::mesh::topology::Topology;
use weave_node_agent::mesh::{Action, ConnId, Mesh, MeshConfig, PeerName, PeerUid};

/// Something that happens at a simulated instant.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Start(usize),
    Tick(usize),
    Dialled {
        peer: usize,
        conn: ConnId,
        ok: bool,
    },
    Deliver {
        peer: usize,
        conn: ConnId,
        data: Vec<u8>,
    },
    Closed {
        peer: usize,
        conn: ConnId,
    },
    Chaos,
    Restart(usize),
}

struct Sim {
    rng: StdRng,
    t0: Instant,
    now: Duration,
    queue: BinaryHeap<Reverse<(Duration, u64, Ev)>>,
    seq: u64,
    meshes: Vec<Option<Mesh>>,
    next_tick: Vec<Option<Duration>>,
    /// Which pairs of peers can reach each other at all.
    allowed: BTreeSet<(usize, usize)>,
    /// Links cut until the given time.
    down: BTreeMap<(usize, usize), Duration>,
    /// (peer, conn) -> (other peer, other conn), both directions.
    pairs: BTreeMap<(usize, ConnId), (usize, ConnId)>,
    /// When the intro of each connection direction is delivered; later
    /// frames may be reordered among themselves but not before it.
    intro_at: BTreeMap<(usize, ConnId), Duration>,
    /// A dialling peer learns its connection is up at this time; nothing is
    /// delivered to it on that connection before (as with TCP).
    ready_at: BTreeMap<(usize, ConnId), Duration>,
    chaos_until: Duration,
    gossip_loss: f64,
    restarts: u64,
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250 + 1) as u8], 6783))
}

fn peer_of(a: SocketAddr) -> usize {
    let SocketAddr::V4(v4) = a else {
        unreachable!()
    };
    let o = v4.ip().octets();
    usize::from(o[2]) * 250 + usize::from(o[3]) - 1
}

fn name(i: usize) -> PeerName {
    PeerName::from_u64(0x0200_0000_0000 + i as u64)
}

fn key(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

impl Sim {
    fn new(n: usize, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut allowed = BTreeSet::new();
        for i in 0..n {
            allowed.insert(key(i, (i + 1) % n));
            for _ in 0..2 {
                let j = rng.gen_range(0..n);
                if j != i {
                    allowed.insert(key(i, j));
                }
            }
        }
        Self {
            rng,
            t0: Instant::now(),
            now: Duration::ZERO,
            queue: BinaryHeap::new(),
            seq: 0,
            meshes: (0..n).map(|_| None).collect(),
            next_tick: vec![None; n],
            allowed,
            down: BTreeMap::new(),
            pairs: BTreeMap::new(),
            intro_at: BTreeMap::new(),
            ready_at: BTreeMap::new(),
            chaos_until: Duration::ZERO,
            gossip_loss: 0.0,
            restarts: 0,
        }
    }

    fn at(&mut self, t: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((t, self.seq, ev)));
    }

    fn latency(&mut self) -> Duration {
        Duration::from_micros(self.rng.gen_range(500..40_000))
    }

    fn link_up(&self, a: usize, b: usize) -> bool {
        self.allowed.contains(&key(a, b))
            && self
                .down
                .get(&key(a, b))
                .is_none_or(|until| *until <= self.now)
    }

    fn start_peer(&mut self, i: usize) {
        let mut cfg = MeshConfig::new(name(i), format!("p{i}"), 6783);
        cfg.conn_limit = 100;
        // Links fail by explicit cuts here, so slower heartbeats lose nothing
        // and keep the event count (and the test's run time) down.
        cfg.heartbeat_interval = Duration::from_secs(3);
        cfg.read_timeout = Duration::from_secs(15);
        self.restarts += 1;
        let uid = PeerUid::random(&mut self.rng);
        let seed = self.rng.gen();
        let now = self.t0 + self.now;
        let mut mesh = Mesh::new(cfg, uid, seed, now);
        // join through one random running peer that can be reached from here,
        // as an operator would give the address of a host already in the mesh
        let neighbours: Vec<usize> = self
            .allowed
            .iter()
            .filter_map(|&(a, b)| {
                if a == i {
                    Some(b)
                } else if b == i {
                    Some(a)
                } else {
                    None
                }
            })
            .collect();
        let running: Vec<usize> = neighbours
            .iter()
            .copied()
            .filter(|&j| self.meshes[j].is_some())
            .collect();
        if !running.is_empty() {
            let via = running[self.rng.gen_range(0..running.len())];
            mesh.connect(&[addr(via)], false, now);
        }
        self.meshes[i] = Some(mesh);
        self.drain(i);
    }

    /// Carries out the actions of peer `p` and schedules its next tick.
    fn drain(&mut self, p: usize) {
        loop {
            let Some(mesh) = self.meshes[p].as_mut() else {
                return;
            };
            let Some(action) = mesh.poll_action() else {
                break;
            };
            match action {
                Action::Dial { conn, addr } => {
                    let q = peer_of(addr);
                    let lat = self.latency();
                    let ok = self.link_up(p, q) && self.meshes[q].is_some();
                    if ok {
                        let now = self.t0 + self.now;
                        let from = SocketAddr::new(addr_ip(p), 30000 + (self.seq % 30000) as u16);
                        let accepted = self.meshes[q].as_mut().and_then(|m| m.accepted(from, now));
                        match accepted {
                            Some(qc) => {
                                self.pairs.insert((p, conn), (q, qc));
                                self.pairs.insert((q, qc), (p, conn));
                                self.ready_at.insert((p, conn), self.now + lat);
                                self.at(
                                    self.now + lat,
                                    Ev::Dialled {
                                        peer: p,
                                        conn,
                                        ok: true,
                                    },
                                );
                                self.drain(q);
                            }
                            None => self.at(
                                self.now + lat,
                                Ev::Dialled {
                                    peer: p,
                                    conn,
                                    ok: false,
                                },
                            ),
                        }
                    } else {
                        self.at(
                            self.now + lat,
                            Ev::Dialled {
                                peer: p,
                                conn,
                                ok: false,
                            },
                        );
                    }
                }
                Action::Send { conn, data } => {
                    let Some(&(q, qc)) = self.pairs.get(&(p, conn)) else {
                        continue;
                    };
                    let is_gossip = data.len() > 4 && data[4] == 3 && &data[..5] != b"weave";
                    if is_gossip
                        && self.now < self.chaos_until
                        && self.rng.gen_bool(self.gossip_loss)
                    {
                        continue;
                    }
                    let lat = self.latency();
                    let ready = self
                        .ready_at
                        .get(&(q, qc))
                        .map_or(Duration::ZERO, |r| *r + Duration::from_micros(1));
                    let t = match self.intro_at.get(&(p, conn)) {
                        Some(intro) => (self.now + lat).max(*intro + Duration::from_micros(1)),
                        None => {
                            self.intro_at.insert((p, conn), (self.now + lat).max(ready));
                            (self.now + lat).max(ready)
                        }
                    };
                    self.at(
                        t,
                        Ev::Deliver {
                            peer: q,
                            conn: qc,
                            data,
                        },
                    );
                }
                Action::Close { conn } => {
                    if let Some((q, qc)) = self.pairs.remove(&(p, conn)) {
                        self.pairs.remove(&(q, qc));
                        let lat = self.latency() + Duration::from_millis(50);
                        self.at(self.now + lat, Ev::Closed { peer: q, conn: qc });
                    }
                }
                // No application channels run in this simulation.
                Action::Deliver { .. } | Action::NeighbourUp { .. } => {}
            }
        }
        let Some(mesh) = self.meshes[p].as_ref() else {
            return;
        };
        let t = mesh.poll_timeout().saturating_duration_since(self.t0);
        let t = t.max(self.now);
        if self.next_tick[p] != Some(t) {
            self.next_tick[p] = Some(t);
            self.at(t, Ev::Tick(p));
        }
    }

    fn cut_random_link(&mut self) {
        let live: Vec<(usize, ConnId)> = self.pairs.keys().copied().collect();
        if live.is_empty() {
            return;
        }
        let (p, pc) = live[self.rng.gen_range(0..live.len())];
        let (q, qc) = self.pairs[&(p, pc)];
        self.pairs.remove(&(p, pc));
        self.pairs.remove(&(q, qc));
        let outage = Duration::from_secs(self.rng.gen_range(3..15));
        self.down.insert(key(p, q), self.now + outage);
        let now = self.t0 + self.now;
        for (peer, conn) in [(p, pc), (q, qc)] {
            if let Some(m) = self.meshes[peer].as_mut() {
                m.closed(conn, "link failure", now);
            }
            self.drain(peer);
        }
    }

    fn restart(&mut self, i: usize) {
        // Every connection of the old incarnation dies with it.
        let mine: Vec<(usize, ConnId)> = self
            .pairs
            .keys()
            .filter(|(p, _)| *p == i)
            .copied()
            .collect();
        for k in mine {
            if let Some((q, qc)) = self.pairs.remove(&k) {
                self.pairs.remove(&(q, qc));
                let lat = self.latency();
                self.at(self.now + lat, Ev::Closed { peer: q, conn: qc });
            }
        }
        self.meshes[i] = None;
        self.start_peer(i);
    }

    fn run_until(&mut self, end: Duration) {
        while let Some(Reverse((t, _, _))) = self.queue.peek() {
            if *t > end {
                break;
            }
            let Reverse((t, _, ev)) = self.queue.pop().expect("peeked");
            self.now = t;
            let now = self.t0 + t;
            match ev {
                Ev::Start(i) => {
                    // A peer joins once a host it can reach runs (the first
                    // one founds the mesh), so the join graph is connected.
                    let founded = self.meshes.iter().any(Option::is_some);
                    let reachable_running = self.allowed.iter().any(|&(a, b)| {
                        (a == i && self.meshes[b].is_some()) || (b == i && self.meshes[a].is_some())
                    });
                    if founded && !reachable_running {
                        self.at(t + Duration::from_secs(1), Ev::Start(i));
                    } else {
                        self.start_peer(i);
                    }
                }
                Ev::Restart(i) => self.restart(i),
                Ev::Tick(p) => {
                    if self.next_tick[p] != Some(t) {
                        continue;
                    }
                    self.next_tick[p] = None;
                    if let Some(m) = self.meshes[p].as_mut() {
                        m.tick(now);
                    }
                    self.drain(p);
                }
                Ev::Dialled { peer, conn, ok } => {
                    if let Some(m) = self.meshes[peer].as_mut() {
                        if ok && self.pairs.contains_key(&(peer, conn)) {
                            m.dialled(conn, now);
                        } else {
                            m.dial_failed(conn, "connection refused", now);
                        }
                    }
                    self.drain(peer);
                }
                Ev::Deliver { peer, conn, data } => {
                    if let Some(m) = self.meshes[peer].as_mut() {
                        m.received(conn, &data, now);
                    }
                    self.drain(peer);
                }
                Ev::Closed { peer, conn } => {
                    if let Some(m) = self.meshes[peer].as_mut() {
                        m.closed(conn, "connection reset", now);
                    }
                    self.drain(peer);
                }
                Ev::Chaos => {
                    if t < self.chaos_until {
                        self.cut_random_link();
                        let next = t + Duration::from_millis(self.rng.gen_range(200..1500));
                        self.at(next, Ev::Chaos);
                    }
                }
            }
        }
        self.now = end;
    }

    fn mesh(&self, i: usize) -> &Mesh {
        self.meshes[i].as_ref().expect("peer started")
    }
}

fn addr_ip(i: usize) -> std::net::IpAddr {
    addr(i).ip()
}

/// Asserts that every peer holds the same records, equal to what each peer
/// says of itself, and routes equal to those computed from that common view.
fn assert_converged(sim: &Sim, n: usize) {
    let truth: Vec<_> = (0..n)
        .map(|i| sim.mesh(i).topology().local().clone())
        .collect();
    for i in 0..n {
        let t = sim.mesh(i).topology();
        assert_eq!(t.len(), n, "peer {i} knows {} peers, expected {n}", t.len());
        for (j, rec) in truth.iter().enumerate() {
            assert_eq!(
                t.get(&rec.name),
                Some(rec),
                "peer {i}'s record of peer {j} differs"
            );
        }
    }
    // every live link is announced by both ends as established
    for (i, rec) in truth.iter().enumerate() {
        for (other, c) in &rec.conns {
            assert!(c.established);
            let j = (other.as_u64() - 0x0200_0000_0000) as usize;
            assert!(
                truth[j].conns.contains_key(&name(i)),
                "link {i}-{j} announced by {i} only"
            );
        }
    }
    for i in 0..n {
        let mut view = Topology::new(truth[i].clone());
        view.merge(truth.clone());
        let expected = Routes::compute(&view, Graph::Symmetric);
        assert_eq!(sim.mesh(i).routes(), &expected, "routes of peer {i}");
        assert_eq!(
            expected.unicast.len(),
            n - 1,
            "peer {i} cannot route to everyone"
        );
    }
    // following next hops from anywhere reaches the destination without loops
    for src in 0..n {
        for dst in 0..n {
            let mut at = src;
            let mut hops = 0;
            while at != dst {
                let via = sim
                    .mesh(at)
                    .routes()
                    .next_hop(&name(dst))
                    .expect("route exists");
                at = (via.as_u64() - 0x0200_0000_0000) as usize;
                hops += 1;
                assert!(hops <= n, "routing loop from {src} to {dst}");
            }
        }
    }
}

#[test]
fn hundred_peers_converge_after_chaos() {
    const N: usize = 100;
    for seed in [1, 2] {
        let mut sim = Sim::new(N, seed);
        for i in 0..N {
            let t = Duration::from_millis(sim.rng.gen_range(0..20_000));
            sim.at(t, Ev::Start(i));
        }
        sim.chaos_until = Duration::from_secs(60);
        sim.gossip_loss = 0.2;
        sim.at(Duration::from_secs(5), Ev::Chaos);
        for _ in 0..5 {
            let i = sim.rng.gen_range(0..N);
            let t = Duration::from_millis(sim.rng.gen_range(25_000..55_000));
            sim.at(t, Ev::Restart(i));
        }
        // Chaos for a minute, then long enough for the longest back-off
        // (60 s, jittered up to 90 s) and a few anti-entropy rounds.
        sim.run_until(Duration::from_secs(60 + 240));
        assert!(sim.restarts > N as u64);
        assert_converged(&sim, N);
    }
}

#[test]
fn a_partition_heals() {
    const N: usize = 20;
    let mut sim = Sim::new(N, 9);
    for i in 0..N {
        sim.at(Duration::from_millis(i as u64 * 100), Ev::Start(i));
    }
    sim.run_until(Duration::from_secs(30));
    assert_converged(&sim, N);
    // cut every link between the two halves for a while
    let half = |i: usize| i < N / 2;
    let across: Vec<_> = sim
        .allowed
        .iter()
        .copied()
        .filter(|&(a, b)| half(a) != half(b))
        .collect();
    for &(a, b) in &across {
        sim.down.insert((a, b), Duration::from_secs(90));
    }
    let crossing: Vec<_> = sim
        .pairs
        .iter()
        .filter(|(k, v)| half(k.0) != half(v.0))
        .map(|(k, _)| *k)
        .collect();
    let now = sim.t0 + sim.now;
    for (p, c) in crossing {
        sim.pairs.remove(&(p, c));
        if let Some(m) = sim.meshes[p].as_mut() {
            m.closed(c, "link failure", now);
        }
        sim.drain(p);
    }
    sim.run_until(Duration::from_secs(60));
    for i in 0..N {
        let t = sim.mesh(i).topology();
        assert_eq!(t.len(), N / 2, "peer {i} still knows the other half");
    }
    sim.run_until(Duration::from_secs(90 + 200));
    assert_converged(&sim, N);
}
