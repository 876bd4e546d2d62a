// SPDX-License-Identifier: Apache-2.0
//! IPAM across three hosts: 90 pods attached without addresses get unique
//! ones and reach each other; a host that is gone for good is removed with
//! `weave rmpeer` (from two hosts at once) and its space becomes usable.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{bail, Result};
use weave_api::{AddressesReply, AllocateRequest};
use weave_e2e::weave::{
    attach_allocated, client, ipam, peer_addr, pings, start_weaver, wait_for_mesh, weave, WEAVER,
};
use weave_e2e::{wait_until, TestBed, Topology};

const PODS: usize = 30;

fn start_three(bed: &TestBed, extra: &[&str]) -> Result<()> {
    let (h1, h2, h3) = (bed.host(1), bed.host(2), bed.host(3));
    start_weaver(h1, &[], extra)?;
    start_weaver(h2, &[peer_addr(h1)], extra)?;
    start_weaver(h3, &[peer_addr(h1)], extra)?;
    for h in bed.hosts() {
        wait_for_mesh(h, &["h1", "h2", "h3"], 2, Duration::from_secs(30))?;
    }
    Ok(())
}

#[test]
fn ninety_pods_get_unique_addresses_and_reach_each_other() -> Result<()> {
    let bed = TestBed::new(Topology::Segment(3))?;
    start_three(&bed, &["--ipalloc-init", "consensus=3"])?;
    // Attach on all three hosts at once: the first allocations also run the
    // consensus that splits the range.
    let pods: Vec<Vec<(String, String)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (1..=3)
            .map(|h| {
                let bed = &bed;
                s.spawn(move || {
                    (0..PODS)
                        .map(|p| attach_allocated(bed, h, &format!("p{p}"), &[]))
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("attach thread"))
            .collect::<Result<Vec<_>>>()
    })?;
    let addrs: BTreeSet<&str> = pods.iter().flatten().map(|(_, a)| a.as_str()).collect();
    assert_eq!(addrs.len(), 3 * PODS, "addresses are unique: {addrs:?}");
    for a in &addrs {
        assert!(
            a.starts_with("10.3") || a.starts_with("10.4"),
            "{a} is in 10.32.0.0/12"
        );
    }
    // Every pod reaches the pod with the same index on each other host.
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|h| {
                let pods = &pods;
                s.spawn(move || {
                    let mut bad = Vec::new();
                    for (p, (ns, _)) in pods[h].iter().enumerate() {
                        for other in (0..3).filter(|o| *o != h) {
                            let (_, addr) = &pods[other][p];
                            let ok = (0..3).any(|_| pings(ns, addr));
                            if !ok {
                                bad.push(format!("{ns} -> {addr}"));
                            }
                        }
                    }
                    bad
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("ping thread"))
            .collect()
    });
    assert!(failures.is_empty(), "unreachable: {failures:?}");
    // Each host owns a share and reports its 30 pods.
    for h in bed.hosts() {
        let r = ipam(h)?;
        assert_eq!(r.status, "ready");
        assert_eq!(r.used, PODS as u64, "{}", h.name());
        assert_eq!(r.owners.iter().filter(|o| o.addresses > 0).count(), 3);
    }
    let table = weave(bed.host(1), &["status", "ipam"])?;
    assert!(
        table.contains("h1") && table.contains("h2") && table.contains("h3"),
        "{table}"
    );
    Ok(())
}

/// Allocates on `host` until it times out; returns the addresses.
fn allocate_all(bed: &TestBed, h: usize, tag: &str) -> Result<Vec<String>> {
    let c = client(bed.host(h));
    let mut out = Vec::new();
    for n in 0.. {
        let req = AllocateRequest {
            id: format!("{tag}-{n}"),
            subnet: None,
            timeout_ms: Some(4000),
        };
        match c.post_json::<_, AddressesReply>("/ipam/allocate", &req) {
            Ok(r) => out.extend(r.addresses.iter().map(ToString::to_string)),
            Err(e) if e.to_string().contains("timed out") => break,
            Err(e) => bail!("allocate on h{h}: {e}"),
        }
        if n > 100 {
            bail!("h{h} allocated more than the range holds");
        }
    }
    Ok(out)
}

#[test]
fn rmpeer_from_two_hosts_hands_over_space_once() -> Result<()> {
    let bed = TestBed::new(Topology::Segment(3))?;
    // 64 addresses, 62 usable: small enough to exhaust.
    start_three(
        &bed,
        &[
            "--ipalloc-range",
            "10.40.0.0/26",
            "--ipalloc-init",
            "consensus=3",
        ],
    )?;
    let (h1, h2, h3) = (bed.host(1), bed.host(2), bed.host(3));
    // Form the ring, then lose h3 for good.
    weave(h3, &["ipam", "allocate", "first"])?;
    wait_until(Duration::from_secs(20), "all hosts to own space", || {
        Ok(bed
            .hosts()
            .iter()
            .all(|h| {
                ipam(h).is_ok_and(|r| r.owners.iter().filter(|o| o.addresses > 0).count() == 3)
            })
            .then_some(()))
    })?;
    let e = weave(h1, &["rmpeer", "h3"]).unwrap_err();
    assert!(e.to_string().contains("reachable"), "{e}");
    h3.kill(WEAVER)?;
    for h in [h1, h2] {
        wait_for_mesh(h, &["h1", "h2"], 1, Duration::from_secs(30))?;
    }
    // Both survivors remove it at the same moment.
    let outs: Vec<Result<String>> = std::thread::scope(|s| {
        let a = s.spawn(|| weave(h1, &["rmpeer", "h3"]));
        let b = s.spawn(|| weave(h2, &["rmpeer", "h3"]));
        vec![a.join().expect("rmpeer h1"), b.join().expect("rmpeer h2")]
    });
    for o in outs {
        let o = o?;
        assert!(
            o.contains("removed") && o.contains("addresses go to"),
            "{o}"
        );
    }
    wait_until(
        Duration::from_secs(20),
        "h3's space to be inherited",
        || {
            Ok([h1, h2]
                .iter()
                .all(|h| {
                    ipam(h).is_ok_and(|r| {
                        r.removed.len() == 1
                            && r.owners
                                .iter()
                                .all(|o| o.nickname != "h3" || o.addresses == 0)
                    })
                })
                .then_some(()))
        },
    )?;
    // Now the two survivors exhaust the whole range between them, at once.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| allocate_all(&bed, 1, "a"));
        let b = s.spawn(|| allocate_all(&bed, 2, "b"));
        (a.join().expect("h1"), b.join().expect("h2"))
    });
    let (a, b) = (a?, b?);
    let all: BTreeSet<&String> = a.iter().chain(b.iter()).collect();
    assert_eq!(all.len(), a.len() + b.len(), "no duplicates: {a:?} {b:?}");
    assert_eq!(all.len(), 62, "the whole range, h3's share included");
    Ok(())
}
