// SPDX-License-Identifier: Apache-2.0
//! Simulation tests of IPAM: many peers in one process, gossip delivered in
//! random orders between random pairs, random partitions, restarts from the
//! persisted state, donations and removals. After every step no address may
//! be handed out by two peers; once healed, every ring must be the same.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use super::space::Ident;
use super::*;

fn name(i: usize) -> PeerName {
    PeerName::from_u64(0x0200_0000_0000 + i as u64)
}

fn config(i: usize, init: Init, universe: &str) -> IpamConfig {
    IpamConfig {
        name: name(i),
        uid: 1000 + i as u64,
        nickname: format!("host{i}"),
        universe: universe.parse().unwrap(),
        default_subnet: universe.parse().unwrap(),
        init,
    }
}

struct Node {
    ipam: Ipam,
    alive: bool,
    part: usize,
    incarnation: u64,
    /// Idents with an outstanding request (so each is asked for once).
    asked: BTreeMap<OpId, Ident>,
}

struct Sim {
    rng: StdRng,
    nodes: Vec<Node>,
    now: Instant,
    next_op: OpId,
    init: Init,
    universe: &'static str,
}

impl Sim {
    fn new(seed: u64, n: usize, init: Init, universe: &'static str) -> Self {
        let now = Instant::now();
        let nodes = (0..n)
            .map(|i| Node {
                ipam: Ipam::new(config(i, init.clone(), universe), None, seed ^ i as u64),
                alive: true,
                part: 0,
                incarnation: 0,
                asked: BTreeMap::new(),
            })
            .collect();
        let mut sim = Self {
            rng: StdRng::seed_from_u64(seed),
            nodes,
            now,
            next_op: 1,
            init,
            universe,
        };
        sim.update_reachability();
        sim
    }

    fn connected(&self, a: usize, b: usize) -> bool {
        a != b
            && self.nodes[a].alive
            && self.nodes[b].alive
            && self.nodes[a].part == self.nodes[b].part
    }

    fn update_reachability(&mut self) {
        for i in 0..self.nodes.len() {
            let set: BTreeSet<PeerName> = (0..self.nodes.len())
                .filter(|j| self.connected(i, *j))
                .map(name)
                .collect();
            let now = self.now;
            self.nodes[i].ipam.set_reachable(set, now);
        }
    }

    /// Delivers `from`'s state to `to`, and the answer back if asked for.
    fn gossip(&mut self, from: usize, to: usize) {
        if !self.connected(from, to) {
            return;
        }
        let bytes = self.nodes[from].ipam.gossip_state().encode();
        let now = self.now;
        let out = self.nodes[to]
            .ipam
            .on_gossip(name(from), &bytes, now)
            .unwrap();
        if out.reply {
            let back = self.nodes[to].ipam.gossip_state().encode();
            self.nodes[from]
                .ipam
                .on_gossip(name(to), &back, now)
                .unwrap();
        }
    }

    fn live(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].alive)
            .collect()
    }

    fn allocate(&mut self, i: usize, ident: &str) {
        let op = self.next_op;
        self.next_op += 1;
        let id = Ident::new(ident).unwrap();
        let now = self.now;
        if self.nodes[i]
            .ipam
            .allocate(op, id.clone(), None, now)
            .is_none()
        {
            self.nodes[i].asked.insert(op, id);
        }
    }

    fn drain(&mut self) {
        for n in &mut self.nodes {
            while let Some((op, _)) = n.ipam.poll_completion() {
                n.asked.remove(&op);
            }
            n.ipam.take_gossip_dirty();
            n.ipam.take_persist_dirty();
        }
    }

    fn restart(&mut self, i: usize) {
        let persisted = self.nodes[i].ipam.persisted();
        // The file format is part of what is tested.
        let persisted = persist::Persisted::from_json(&persisted.to_json()).unwrap();
        let node = &mut self.nodes[i];
        node.incarnation += 1;
        let mut cfg = config(i, self.init.clone(), self.universe);
        cfg.uid += 100 * node.incarnation;
        node.ipam = Ipam::new(cfg, Some(persisted), node.incarnation);
        node.asked.clear();
        self.update_reachability();
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        let now = self.now;
        for n in self.nodes.iter_mut().filter(|n| n.alive) {
            n.ipam.tick(now);
        }
    }

    /// Random gossip until nothing changes for a while.
    fn quiesce(&mut self) {
        for _ in 0..40 {
            let live = self.live();
            for &a in &live {
                for &b in &live {
                    self.gossip(a, b);
                }
            }
            self.advance(Duration::from_millis(500));
            self.drain();
        }
    }

    /// Event-driven gossip as the allocator does it, without anti-entropy:
    /// a peer sends its state only when it changed (to every connected peer
    /// here), and answers a sender that lacked something. Returns the number
    /// of messages once nobody has anything new to say.
    fn push_dirty(&mut self) -> usize {
        let mut sent = 0;
        for _ in 0..100 {
            let dirty: Vec<usize> = (0..self.nodes.len())
                .filter(|i| self.nodes[*i].alive && self.nodes[*i].ipam.take_gossip_dirty())
                .collect();
            if dirty.is_empty() {
                return sent;
            }
            for a in dirty {
                for b in 0..self.nodes.len() {
                    if self.connected(a, b) {
                        sent += 1;
                        self.gossip(a, b);
                    }
                }
            }
        }
        panic!("gossip never settles: {sent} messages");
    }

    /// No address of the range is held by two live peers.
    fn check_unique(&self) {
        let mut holders: BTreeMap<u32, usize> = BTreeMap::new();
        for (i, n) in self.nodes.iter().enumerate().filter(|(_, n)| n.alive) {
            for (_, a) in n.ipam.space().iter() {
                if let Some(j) = holders.insert(a.addr, i) {
                    panic!(
                        "address {} handed out by peers {j} and {i}",
                        Ipv4Addr::from(a.addr)
                    );
                }
            }
        }
    }

    /// Every allocation lies in the range its peer owns.
    fn check_owned(&self) {
        for (i, n) in self.nodes.iter().enumerate().filter(|(_, n)| n.alive) {
            for (id, a) in n.ipam.space().iter() {
                assert_eq!(
                    n.ipam.ring().owner(u64::from(a.addr)),
                    Some(name(i)),
                    "peer {i} holds {} for {id} outside its share",
                    Ipv4Addr::from(a.addr)
                );
            }
        }
    }
}

/// Random operations under random partitions: never a duplicate, and all
/// rings equal after healing.
fn chaos(seed: u64, init: Init) {
    let mut sim = Sim::new(seed, 6, init, "10.9.0.0/25");
    let mut counter = 0;
    let mut killed = 0;
    for step in 0..600 {
        let live = sim.live();
        match sim.rng.gen_range(0..100) {
            0..=34 => {
                let i = *live.choose(&mut sim.rng).unwrap();
                counter += 1;
                sim.allocate(i, &format!("c{counter}"));
            }
            35..=49 => {
                let i = *live.choose(&mut sim.rng).unwrap();
                let ids: Vec<Ident> = sim.nodes[i].ipam.space().idents().cloned().collect();
                if let Some(id) = ids.choose(&mut sim.rng) {
                    let now = sim.now;
                    sim.nodes[i].ipam.release(id, None, now);
                }
            }
            50..=54 => {
                // New partition: each live peer in side 0 or 1.
                for i in live.clone() {
                    sim.nodes[i].part = sim.rng.gen_range(0..2);
                }
                sim.update_reachability();
            }
            55..=59 => {
                for i in live.clone() {
                    sim.nodes[i].part = 0;
                }
                sim.update_reachability();
            }
            60..=62 => {
                let i = *live.choose(&mut sim.rng).unwrap();
                sim.restart(i);
            }
            63 if killed < 1 && live.len() > 3 && step > 100 => {
                // Death and removal happen with the network whole, after
                // the dead peer's last changes have spread (see the
                // rmpeer notes in ARCHITECTURE.md).
                for i in live.clone() {
                    sim.nodes[i].part = 0;
                }
                sim.update_reachability();
                sim.quiesce();
                let victim = *live.choose(&mut sim.rng).unwrap();
                sim.nodes[victim].alive = false;
                killed += 1;
                sim.update_reachability();
                // Two peers remove it at once, each before hearing of the other.
                let others: Vec<usize> = sim.live();
                let now = sim.now;
                for &r in others.iter().take(2) {
                    sim.nodes[r]
                        .ipam
                        .rmpeer(&name(victim).to_string(), now)
                        .unwrap();
                }
            }
            _ => {
                let a = *live.choose(&mut sim.rng).unwrap();
                let b = *live.choose(&mut sim.rng).unwrap();
                sim.gossip(a, b);
            }
        }
        let d = Duration::from_millis(sim.rng.gen_range(10..400));
        sim.advance(d);
        sim.drain();
        sim.check_unique();
        sim.check_owned();
    }
    for i in sim.live() {
        sim.nodes[i].part = 0;
    }
    sim.update_reachability();
    sim.quiesce();
    sim.check_unique();
    let live = sim.live();
    // Quiet once converged and nothing waits (callers of requests that
    // cannot be served in a full range give up): an exchange between every
    // pair changes nothing and asks for no answer, so gossip stops instead of
    // echoing.
    for &i in &live {
        let ops: Vec<OpId> = sim.nodes[i].asked.keys().copied().collect();
        for op in ops {
            sim.nodes[i].ipam.cancel(op);
        }
    }
    sim.quiesce();
    for &a in &live {
        for &b in &live {
            if a != b {
                let bytes = sim.nodes[a].ipam.gossip_state().encode();
                let now = sim.now;
                let out = sim.nodes[b].ipam.on_gossip(name(a), &bytes, now).unwrap();
                assert_eq!(
                    out,
                    GossipOutcome::default(),
                    "seed {seed}: {a} -> {b} still gossips"
                );
            }
        }
    }
    let first = sim.nodes[live[0]].ipam.gossip_state();
    for &i in &live[1..] {
        let s = sim.nodes[i].ipam.gossip_state();
        assert_eq!(
            s.ring, first.ring,
            "seed {seed}: rings differ between {} and {i}",
            live[0]
        );
        assert_eq!(s.removed, first.removed, "seed {seed}");
    }
    // The run did exercise allocation and donation.
    let held: usize = live.iter().map(|i| sim.nodes[*i].ipam.space().len()).sum();
    assert!(held > 10, "seed {seed}: only {held} addresses held");
    assert!(
        first.ring.tokens.len() > first.ring.seeds.len(),
        "seed {seed}: no donation happened"
    );
    // Every address is owned by a live peer once removals are done.
    for (_, _, e) in first.ring.ranges() {
        assert!(
            live.iter().any(|i| name(*i) == e.owner),
            "seed {seed}: {e:?} owned by a dead peer"
        );
    }
}

#[test]
fn chaos_with_consensus_never_duplicates_and_converges() {
    for seed in 0..12 {
        chaos(seed, Init::Consensus(6));
    }
}

#[test]
fn chaos_with_seed_never_duplicates_and_converges() {
    for seed in 100..112 {
        chaos(seed, Init::Seed((0..6).map(name).collect()));
    }
}

#[test]
fn idle_status_says_when_the_range_will_be_split() {
    let mut sim = Sim::new(1, 3, Init::Consensus(1), "10.32.0.0/12");
    assert_eq!(
        sim.nodes[0].ipam.status(),
        "idle: the range is split by consensus at the first allocation (1 peer known, 1 needed of an expected 1)"
    );
    sim.quiesce();
    let status = sim.nodes[0].ipam.status();
    assert!(
        status.starts_with("idle: the range is split by consensus at the first allocation ("),
        "{status}"
    );
    assert!(!status.contains("of 1 peers"), "{status}");
}

#[test]
fn consensus_waits_for_a_quorum_then_splits_among_all_known() {
    let mut sim = Sim::new(1, 3, Init::Consensus(3), "10.32.0.0/12");
    sim.allocate(0, "a");
    assert!(sim.nodes[0].ipam.has_pending());
    assert_eq!(
        sim.nodes[0].ipam.status(),
        "waiting for consensus: 1 peer known, 2 needed of an expected 3"
    );
    assert!(!sim.nodes[0].ipam.ready());
    sim.quiesce();
    assert!(!sim.nodes[0].ipam.has_pending());
    assert_eq!(sim.nodes[0].ipam.status(), "ready");
    let shares = sim.nodes[2].ipam.ring().shares();
    assert_eq!(shares.len(), 3, "{shares:?}");
    assert_eq!(shares.values().sum::<u64>(), 1 << 20);
}

#[test]
fn observers_get_space_by_donation() {
    let mut sim = Sim::new(2, 3, Init::Seed(vec![name(0), name(1)]), "10.32.0.0/24");
    let cfg = config(2, Init::Observer, "10.32.0.0/24");
    sim.nodes[2].ipam = Ipam::new(cfg, None, 9);
    sim.update_reachability();
    sim.quiesce();
    assert!(!sim.nodes[2].ipam.ring().shares().contains_key(&name(2)));
    sim.allocate(2, "obs");
    sim.quiesce();
    let got = sim.nodes[2].ipam.lookup(&Ident::new("obs").unwrap());
    assert_eq!(got.len(), 1);
    assert_eq!(sim.nodes[0].ipam.ring(), sim.nodes[2].ipam.ring());
    assert!(sim.nodes[2].ipam.ring().shares()[&name(2)] >= 1);
}

#[test]
fn running_out_of_space_borrows_from_a_peer_even_through_a_relay() {
    // 0 — 1 — 2 in a line: 0 and 2 only hear each other through 1.
    let mut sim = Sim::new(3, 3, Init::Seed(vec![name(0), name(2)]), "10.32.0.0/28");
    sim.nodes[1].ipam = Ipam::new(config(1, Init::Observer, "10.32.0.0/28"), None, 5);
    let line = |sim: &mut Sim| {
        for (a, b) in [(0, 1), (1, 0), (1, 2), (2, 1)] {
            sim.gossip(a, b);
        }
    };
    // Reachability is end to end (routes through 1).
    sim.update_reachability();
    for n in 0..7 {
        sim.allocate(0, &format!("p{n}"));
    }
    // Peer 0 owns 10.32.0.0/29: 7 usable, then it must borrow from peer 2.
    sim.allocate(0, "p7");
    assert!(sim.nodes[0].ipam.has_pending());
    for _ in 0..20 {
        line(&mut sim);
        sim.advance(Duration::from_millis(100));
        sim.drain();
    }
    assert!(
        !sim.nodes[0].ipam.has_pending(),
        "{}",
        sim.nodes[0].ipam.status()
    );
    let a = sim.nodes[0].ipam.lookup(&Ident::new("p7").unwrap())[0];
    assert!(a.addr >= u32::from(Ipv4Addr::new(10, 32, 0, 8)), "{a}");
    sim.check_unique();
}

#[test]
fn claims_move_an_address_from_its_owner() {
    let mut sim = Sim::new(4, 2, Init::Seed(vec![name(0), name(1)]), "10.32.0.0/24");
    let want = Ipv4Addr::new(10, 32, 0, 200);
    let now = sim.now;
    assert!(sim.nodes[0]
        .ipam
        .claim(1, Ident::new("m").unwrap(), want, 24, now)
        .is_none());
    sim.quiesce();
    assert_eq!(
        sim.nodes[0].ipam.lookup(&Ident::new("m").unwrap())[0].to_string(),
        "10.32.0.200/24"
    );
    assert_eq!(
        sim.nodes[1].ipam.ring().owner(u64::from(u32::from(want))),
        Some(name(0))
    );
    // The owner refuses an address in use there.
    sim.allocate(1, "x");
    let held = sim.nodes[1].ipam.lookup(&Ident::new("x").unwrap())[0];
    let now = sim.now;
    assert!(sim.nodes[0]
        .ipam
        .claim(
            2,
            Ident::new("y").unwrap(),
            Ipv4Addr::from(held.addr),
            24,
            now
        )
        .is_none());
    let mut result = None;
    for _ in 0..10 {
        sim.gossip(0, 1);
        sim.gossip(1, 0);
        sim.advance(Duration::from_millis(100));
        while let Some((op, r)) = sim.nodes[0].ipam.poll_completion() {
            if op == 2 {
                result = Some(r);
            }
        }
    }
    assert!(
        matches!(result, Some(Err(IpamError::ClaimDenied { .. }))),
        "{result:?}"
    );
}

#[test]
fn bad_requests_change_nothing() {
    let mut sim = Sim::new(5, 1, Init::Seed(vec![name(0)]), "10.32.0.0/24");
    let before = sim.nodes[0].ipam.gossip_state();
    let now = sim.now;
    let ipam = &mut sim.nodes[0].ipam;
    let outside: Subnet = "10.33.0.0/24".parse().unwrap();
    assert!(matches!(
        ipam.allocate(1, Ident::new("a").unwrap(), Some(outside), now),
        Some(Err(IpamError::OutsideRange { .. }))
    ));
    assert!(matches!(
        ipam.claim(
            2,
            Ident::new("a").unwrap(),
            Ipv4Addr::new(10, 32, 0, 0),
            24,
            now
        ),
        Some(Err(IpamError::Reserved { .. }))
    ));
    assert!(matches!(
        ipam.rmpeer("nobody", now),
        Err(IpamError::UnknownPeer(_))
    ));
    assert!(matches!(
        ipam.rmpeer(&name(0).to_string(), now),
        Err(IpamError::RemoveSelf)
    ));
    assert!(ipam.on_gossip(name(1), b"\x07garbage", now).is_err());
    assert!(ipam.space().is_empty());
    assert_eq!(ipam.gossip_state(), before);
}

#[test]
fn rmpeer_refuses_reachable_peers_and_hands_space_to_one_heir() {
    let mut sim = Sim::new(6, 3, Init::Seed((0..3).map(name).collect()), "10.32.0.0/24");
    sim.quiesce();
    let now = sim.now;
    let e = sim.nodes[0].ipam.rmpeer("host2", now).unwrap_err();
    assert!(matches!(e, IpamError::PeerReachable(_)), "{e}");
    sim.nodes[2].alive = false;
    sim.update_reachability();
    let r0 = sim.nodes[0].ipam.rmpeer("host2", now).unwrap();
    let r1 = sim.nodes[1].ipam.rmpeer(&name(2).to_string(), now).unwrap();
    assert_eq!(r0.heirs, r1.heirs);
    assert_eq!(r0.addresses, 64);
    sim.quiesce();
    assert_eq!(sim.nodes[0].ipam.ring(), sim.nodes[1].ipam.ring());
    assert!(!sim.nodes[0].ipam.ring().shares().contains_key(&name(2)));
    // Its space is allocatable: fill the whole range from the two survivors.
    for n in 0..254 {
        sim.allocate(n % 2, &format!("f{n}"));
        if n % 16 == 0 {
            sim.quiesce();
        }
    }
    sim.quiesce();
    sim.check_unique();
    let total: usize = (0..2).map(|i| sim.nodes[i].ipam.space().len()).sum();
    assert_eq!(total, 254);
}

#[test]
fn gossip_state_round_trips() {
    let sim = Sim::new(7, 2, Init::Consensus(2), "10.32.0.0/12");
    let g = sim.nodes[0].ipam.gossip_state();
    assert_eq!(GossipState::decode(&g.encode()).unwrap(), g);
}

#[test]
fn independently_seeded_rings_settle_on_one_without_dropping_anyone() {
    let mut sim = Sim::new(8, 2, Init::Seed(vec![name(0)]), "10.32.0.0/24");
    sim.nodes[1].ipam = Ipam::new(
        config(1, Init::Seed(vec![name(1)]), "10.32.0.0/24"),
        None,
        3,
    );
    sim.update_reachability();
    sim.allocate(0, "a");
    sim.allocate(1, "b");
    assert_ne!(sim.nodes[0].ipam.ring(), sim.nodes[1].ipam.ring());
    sim.quiesce();
    // Both keep gossiping (no error closes anything) and agree on the ring
    // with the lower seed list.
    assert_eq!(sim.nodes[0].ipam.ring(), sim.nodes[1].ipam.ring());
    assert_eq!(sim.nodes[1].ipam.ring().seeds, vec![name(0)]);
    // The losing side still serves new allocations, from donated space.
    sim.allocate(1, "c");
    sim.quiesce();
    let c = sim.nodes[1].ipam.lookup(&Ident::new("c").unwrap());
    assert_eq!(c.len(), 1);
    assert_eq!(
        sim.nodes[1].ipam.ring().owner(u64::from(c[0].addr)),
        Some(name(1))
    );
}

#[test]
fn consensus_completes_on_change_driven_gossip_alone() {
    let mut sim = Sim::new(9, 5, Init::Consensus(5), "10.32.0.0/12");
    // Electors learn of each other from the first gossip.
    sim.push_dirty();
    sim.allocate(3, "a");
    let sent = sim.push_dirty();
    assert!(
        !sim.nodes[3].ipam.has_pending(),
        "{}",
        sim.nodes[3].ipam.status()
    );
    for n in &sim.nodes {
        assert_eq!(n.ipam.ring().shares().len(), 5);
    }
    // A handful of rounds, not a storm.
    assert!(sent < 200, "{sent} messages");
}
