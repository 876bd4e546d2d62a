// SPDX-License-Identifier: Apache-2.0
//! IPAM under partition: both halves keep allocating from their own shares;
//! after the heal no address is duplicated and every pod reaches every
//! other.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Result;
use weave_e2e::weave::{attach_allocated, ipam, peer_addr, pings, start_weaver, wait_for_mesh};
use weave_e2e::{wait_until, TestBed, Topology};

#[test]
fn both_halves_allocate_and_nothing_collides_after_the_heal() -> Result<()> {
    let bed = TestBed::new(Topology::Segment(4))?;
    let flags = ["--ipalloc-init", "consensus=4"];
    let h1 = bed.host(1);
    start_weaver(h1, &[], &flags)?;
    for h in 2..=4 {
        start_weaver(bed.host(h), &[peer_addr(h1)], &flags)?;
    }
    let all = ["h1", "h2", "h3", "h4"];
    for h in bed.hosts() {
        wait_for_mesh(h, &all, 3, Duration::from_secs(30))?;
    }
    let mut pods = Vec::new();
    for h in 1..=4 {
        pods.push((h, attach_allocated(&bed, h, "first", &[])?));
    }
    wait_until(
        Duration::from_secs(20),
        "every host to know the ring",
        || {
            Ok(bed
                .hosts()
                .iter()
                .all(|h| ipam(h).is_ok_and(|r| r.status == "ready"))
                .then_some(()))
        },
    )?;

    // {h1, h2} | {h3, h4}
    for a in [1, 2] {
        for b in [3, 4] {
            bed.cut(a, b)?;
        }
    }
    wait_for_mesh(h1, &["h1", "h2"], 1, Duration::from_secs(30))?;
    wait_for_mesh(bed.host(3), &["h3", "h4"], 1, Duration::from_secs(30))?;
    for h in 1..=4 {
        for p in 0..5 {
            pods.push((h, attach_allocated(&bed, h, &format!("cut{p}"), &[])?));
        }
    }
    for a in [1, 2] {
        for b in [3, 4] {
            bed.restore(a, b)?;
        }
    }
    for h in bed.hosts() {
        wait_for_mesh(h, &all, 3, Duration::from_secs(40))?;
    }
    let addrs: BTreeSet<&str> = pods.iter().map(|(_, (_, a))| a.as_str()).collect();
    assert_eq!(addrs.len(), pods.len(), "no duplicate addresses: {pods:?}");
    // Pods allocated during the cut reach each other across the old divide.
    let left: Vec<_> = pods.iter().filter(|(h, _)| *h <= 2).collect();
    let right: Vec<_> = pods.iter().filter(|(h, _)| *h > 2).collect();
    for (l, r) in left.iter().zip(right.iter()) {
        let (ns, _) = &l.1;
        let (_, ip) = &r.1;
        wait_until(
            Duration::from_secs(15),
            &format!("{ns} to reach {ip}"),
            || Ok(pings(ns, ip).then_some(())),
        )?;
    }
    Ok(())
}
