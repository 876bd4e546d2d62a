// SPDX-License-Identifier: Apache-2.0
//! The zone alone, then a simulation of several peers exchanging its
//! gossip in random order with losses, duplicates, purges and partitions.

use std::collections::{BTreeMap, BTreeSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

fn p(n: usize) -> PeerName {
    PeerName::from_u64(0x0200_0000_0000 + n as u64)
}

fn key(name: &str, addr: [u8; 4], holder: &str) -> Key {
    Key {
        name: DnsName::parse(&format!("{name}.weave.local")).unwrap(),
        addr: addr.into(),
        holder: Holder::new(holder).unwrap(),
    }
}

/// Live records as (origin, key).
fn live(z: &Zone) -> BTreeSet<(PeerName, Key)> {
    z.live().map(|(p, k, _)| (p, k.clone())).collect()
}

/// Sends `g` through the wire encoding, as the mesh would.
fn wire(g: &DnsGossip) -> DnsGossip {
    DnsGossip::decode(&g.encode()).unwrap()
}

#[test]
fn add_remove_and_the_delta_carry_versions_of_the_origin() {
    let now = Instant::now();
    let mut a = Zone::new(p(1), None, now);
    assert_eq!(a.add(key("web", [10, 0, 0, 1], "c1")), Ok(true));
    assert_eq!(
        a.add(key("web", [10, 0, 0, 1], "c1")),
        Ok(false),
        "a repeat changes nothing"
    );
    assert_eq!(a.add(key("web", [10, 0, 0, 2], "c2")), Ok(true));
    assert_eq!(a.clock(), 2);
    assert_eq!(
        a.take_transitions(),
        vec![
            (key("web", [10, 0, 0, 1], "c1"), true),
            (key("web", [10, 0, 0, 2], "c2"), true)
        ]
    );
    let d = a.take_delta().unwrap();
    assert_eq!(d.origins.len(), 1);
    assert_eq!(
        d.origins[0]
            .entries
            .iter()
            .map(|e| e.version)
            .collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert!(a.take_delta().is_none(), "the delta is taken once");

    let gone = a.remove(|k| k.holder.as_str() == "c1", now);
    assert_eq!(gone, vec![key("web", [10, 0, 0, 1], "c1")]);
    assert_eq!(a.tombstones(), 1);
    assert_eq!(a.own_live(), 1);
    assert_eq!(a.total(), 2, "the tombstone is held");
    let d = a.take_delta().unwrap();
    assert!(d.origins[0].entries[0].tombstone);
    assert_eq!(d.origins[0].entries[0].version, 3);
    assert_eq!(
        a.take_transitions(),
        vec![(key("web", [10, 0, 0, 1], "c1"), false)]
    );

    // Removing what is not there does nothing.
    assert!(a.remove(|k| k.holder.as_str() == "nobody", now).is_empty());
    assert!(a.take_delta().is_none());
}

#[test]
fn merge_is_idempotent_and_order_does_not_matter() {
    let now = Instant::now();
    let mut a = Zone::new(p(1), None, now);
    a.add(key("web", [10, 0, 0, 1], "c1")).unwrap();
    let d1 = wire(&a.take_delta().unwrap());
    a.remove(|_| true, now);
    let d2 = wire(&a.take_delta().unwrap());
    a.add(key("db", [10, 0, 0, 9], "c9")).unwrap();
    let d3 = wire(&a.take_delta().unwrap());

    let mut orders = vec![
        vec![&d1, &d2, &d3],
        vec![&d3, &d2, &d1],
        vec![&d2, &d1, &d3, &d1, &d2],
    ];
    let mut results = Vec::new();
    for order in orders.drain(..) {
        let mut b = Zone::new(p(2), None, now);
        for d in order {
            b.merge(d);
        }
        results.push(live(&b));
    }
    assert_eq!(results[0], live(&a));
    assert!(results.iter().all(|r| *r == results[0]), "{results:?}");
    // Merging its own full state again changes nothing.
    let mut b = Zone::new(p(2), None, now);
    for g in a.full_state() {
        b.merge(&g);
    }
    b.take_delta();
    for g in b.full_state() {
        assert!(!b.merge(&g).changed);
    }
}

#[test]
fn a_purged_tombstone_does_not_come_back_from_a_stale_copy() {
    let t0 = Instant::now();
    let mut a = Zone::new(p(1), None, t0);
    a.add(key("web", [10, 0, 0, 1], "c1")).unwrap();
    a.add(key("keep", [10, 0, 0, 2], "c2")).unwrap();
    // c peer saw the record live and then was partitioned away.
    let mut c = Zone::new(p(3), None, t0);
    for g in a.full_state() {
        c.merge(&wire(&g));
    }
    a.take_delta();
    a.remove(|k| k.holder.as_str() == "c1", t0);
    a.take_delta();
    assert_eq!(a.next_purge(), Some(t0 + TOMBSTONE_AGE));
    a.purge(t0 + TOMBSTONE_AGE - Duration::from_secs(1));
    assert_eq!(a.tombstones(), 1, "not yet");
    a.purge(t0 + TOMBSTONE_AGE);
    assert_eq!(a.tombstones(), 0);
    assert_eq!(a.total(), 1);
    let d = a.take_delta().unwrap();
    assert_eq!(d.origins[0].floor, 3, "floor past the tombstone");
    assert!(
        d.origins[0].entries.iter().all(|e| e.version > 3),
        "live records re-versioned"
    );
    // The stale copy from c comes back after the heal: ignored by a, and c
    // drops it on hearing a's state.
    for g in c.full_state() {
        a.merge(&wire(&g));
    }
    assert_eq!(live(&a).len(), 1);
    for g in a.full_state() {
        c.merge(&wire(&g));
    }
    assert_eq!(live(&c), live(&a));
}

#[test]
fn an_origin_that_lost_its_state_moves_past_versions_it_no_longer_knows() {
    let now = Instant::now();
    let mut a = Zone::new(p(1), None, now);
    a.add(key("web", [10, 0, 0, 1], "c1")).unwrap();
    a.add(key("old", [10, 0, 0, 3], "c3")).unwrap();
    let mut b = Zone::new(p(2), None, now);
    for g in a.full_state() {
        b.merge(&wire(&g));
    }
    // a restarts without its state file and registers web again.
    let mut a = Zone::new(p(1), None, now);
    a.add(key("web", [10, 0, 0, 1], "c1")).unwrap();
    a.take_delta();
    for g in b.full_state() {
        a.merge(&wire(&g));
    }
    assert_eq!(a.stats().self_repairs, 1);
    assert!(a.clock() > 2);
    // After a's answer b holds exactly what a holds: old is gone.
    let d = a.take_delta().unwrap();
    b.merge(&wire(&d));
    assert_eq!(live(&b), live(&a));
    assert_eq!(live(&a).len(), 1);
}

#[test]
fn removed_peers_lose_their_records_and_their_gossip_is_ignored() {
    let now = Instant::now();
    let mut a = Zone::new(p(1), None, now);
    let mut b = Zone::new(p(2), None, now);
    b.add(key("web", [10, 0, 0, 7], "c1")).unwrap();
    let full = b.full_state();
    for g in &full {
        a.merge(g);
    }
    a.take_transitions();
    assert_eq!(live(&a).len(), 1);
    a.set_removed(&BTreeSet::from([p(2), p(1)]));
    assert!(live(&a).is_empty());
    assert_eq!(
        a.take_transitions(),
        vec![(key("web", [10, 0, 0, 7], "c1"), false)]
    );
    for g in &full {
        assert!(!a.merge(g).changed);
    }
    assert!(live(&a).is_empty());
}

#[test]
fn restored_own_state_keeps_versions_and_tombstones() {
    let now = Instant::now();
    let mut a = Zone::new(p(1), None, now);
    a.add(key("web", [10, 0, 0, 1], "c1")).unwrap();
    a.add(key("db", [10, 0, 0, 2], "c2")).unwrap();
    a.remove(|k| k.holder.as_str() == "c2", now);
    let saved = a.own_state();
    let r = Zone::new(p(1), Some(saved.clone()), now);
    assert_eq!(r.clock(), a.clock());
    assert_eq!(live(&r), live(&a));
    assert_eq!(r.tombstones(), 1);
    assert_eq!(r.own_state(), saved);
}

#[test]
fn a_full_peer_refuses_registrations_and_counts_refused_gossip() {
    let now = Instant::now();
    let mut a = Zone::new(p(1), None, now);
    for i in 0..MAX_PER_ORIGIN {
        let o = (u32::try_from(i).unwrap() + 1).to_be_bytes();
        a.add(key("n", o, "h")).unwrap();
    }
    assert_eq!(a.add(key("n", [1, 1, 1, 1], "x")), Err(ZoneError::Full));
    // A repeat is still fine.
    assert_eq!(a.add(key("n", [0, 0, 0, 1], "h")), Ok(false));
    // The full state is cut into complete-per-chunk messages that rebuild it.
    let full = a.full_state();
    assert_eq!(full.len(), MAX_PER_ORIGIN.div_ceil(CHUNK_ENTRIES));
    let mut b = Zone::new(p(2), None, now);
    for g in &full {
        b.merge(&wire(g));
    }
    assert_eq!(live(&b).len(), MAX_PER_ORIGIN);
    // One more record of that origin is refused by b.
    let mut extra = full[0].clone();
    extra.origins[0].entries.truncate(1);
    extra.origins[0].entries[0].addr = Ipv4Addr::new(9, 9, 9, 9);
    extra.origins[0].entries[0].version = 1 << 40;
    b.merge(&extra);
    assert_eq!(b.stats().refused, 1);
    assert_eq!(live(&b).len(), MAX_PER_ORIGIN);
}

/// A peer of the simulation and what it knows must be true of its own records.
struct SimPeer {
    zone: Zone,
    truth: BTreeSet<Key>,
}

/// Several peers register and remove names, purge tombstones as time goes
/// by, and gossip deltas, replies and full states over links that drop,
/// duplicate and reorder messages and sometimes are cut. After the last
/// change and a round of full states over healed links, every peer holds
/// exactly the live records each origin holds, whatever the seed.
#[test]
fn simulation_converges_to_what_each_origin_holds() {
    for seed in 0..40u64 {
        simulate(seed);
    }
}

fn simulate(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = rng.gen_range(2..=5usize);
    let mut now = Instant::now();
    let mut peers: Vec<SimPeer> = (0..n)
        .map(|i| SimPeer {
            zone: Zone::new(p(i), None, now),
            truth: BTreeSet::new(),
        })
        .collect();
    // In flight: (to, from, message).
    let mut flight: Vec<(usize, usize, DnsGossip)> = Vec::new();
    let mut cut: BTreeSet<(usize, usize)> = BTreeSet::new();
    let names = ["web", "db", "api"];
    for _ in 0..600 {
        let i = rng.gen_range(0..n);
        match rng.gen_range(0..10) {
            0..=2 => {
                let k = key(
                    names[rng.gen_range(0..names.len())],
                    [10, 0, u8::try_from(i).unwrap(), rng.gen_range(1..4)],
                    ["c1", "c2"][rng.gen_range(0..2)],
                );
                peers[i].zone.add(k.clone()).unwrap();
                peers[i].truth.insert(k);
            }
            3 => {
                let name = names[rng.gen_range(0..names.len())];
                let gone = peers[i]
                    .zone
                    .remove(|k| k.name.as_str().starts_with(name), now);
                for k in gone {
                    peers[i].truth.remove(&k);
                }
            }
            4 => {
                now += Duration::from_secs(rng.gen_range(0..40));
                for sp in &mut peers {
                    sp.zone.purge(now);
                }
            }
            5 => {
                // Full state to one random neighbour.
                let j = rng.gen_range(0..n);
                if j != i {
                    for g in peers[i].zone.full_state() {
                        flight.push((j, i, g));
                    }
                }
            }
            6 => {
                let a = rng.gen_range(0..n);
                let b = rng.gen_range(0..n);
                if !cut.remove(&(a, b)) {
                    cut.insert((a, b));
                    cut.insert((b, a));
                } else {
                    cut.remove(&(b, a));
                }
            }
            _ => {
                // Deliver (or drop, or duplicate) a message in flight.
                if !flight.is_empty() {
                    let at = rng.gen_range(0..flight.len());
                    let (to, from, g) = if rng.gen_bool(0.2) {
                        flight[at].clone()
                    } else {
                        flight.swap_remove(at)
                    };
                    if !cut.contains(&(from, to)) && !rng.gen_bool(0.1) {
                        let out = peers[to].zone.merge(&wire(&g));
                        if let Some(r) = out.reply {
                            flight.push((from, to, r));
                        }
                    }
                }
            }
        }
        // Deltas go to every neighbour.
        for (from, sp) in peers.iter_mut().enumerate() {
            sp.zone.take_transitions();
            if let Some(d) = sp.zone.take_delta() {
                for to in 0..n {
                    if to != from {
                        flight.push((to, from, d.clone()));
                    }
                }
            }
        }
    }
    // Heal: deliver everything still in flight, then full states among all
    // until nothing changes.
    for (to, _, g) in std::mem::take(&mut flight) {
        peers[to].zone.merge(&wire(&g));
    }
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds < 10, "seed {seed}: no convergence");
        let mut changed = false;
        for from in 0..n {
            let full = peers[from].zone.full_state();
            for to in 0..n {
                if to == from {
                    continue;
                }
                for g in &full {
                    let out = peers[to].zone.merge(&wire(g));
                    changed |= out.changed;
                    if let Some(r) = out.reply {
                        changed |= peers[from].zone.merge(&wire(&r)).changed;
                    }
                }
            }
        }
        for sp in &mut peers {
            changed |= sp.zone.take_delta().is_some();
        }
        if !changed {
            break;
        }
    }
    let want: BTreeSet<(PeerName, Key)> = peers
        .iter()
        .enumerate()
        .flat_map(|(i, sp)| sp.truth.iter().map(move |k| (p(i), k.clone())))
        .collect();
    for (i, sp) in peers.iter().enumerate() {
        assert_eq!(live(&sp.zone), want, "seed {seed}: peer {i}");
        let own: BTreeMap<_, _> = sp
            .zone
            .live()
            .filter(|(o, _, _)| *o == p(i))
            .map(|(_, k, v)| (k.clone(), v))
            .collect();
        assert_eq!(own.len(), sp.truth.len());
    }
}
