// SPDX-License-Identifier: Apache-2.0
//! IPAM figures: allocation latency through the local API, time to the
//! first allocation of a fresh 3-peer consensus, and the size of the
//! gossiped IPAM state at 10 and 25 peers.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use weave_api::{AddressesReply, AllocateRequest, IpamReport, ReleaseRequest, Report};
use weave_e2e::weave::{peer_addr, start_weaver, wait_for_mesh};
use weave_e2e::{TestBed, Topology};

use crate::{client, percentile};

fn allocate(c: &weave_api::Client, id: &str) -> Result<AddressesReply> {
    Ok(c.post_json(
        "/ipam/allocate",
        &AllocateRequest {
            id: id.to_string(),
            subnet: None,
            timeout_ms: Some(60_000),
        },
    )?)
}

/// The `pct`th percentile (0..=100) of sorted samples.
fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// Starts `n` agents with `consensus=n`, each given h1.
fn cluster(n: usize) -> Result<TestBed> {
    let bed = TestBed::new(Topology::Segment(n))?;
    let init = format!("consensus={n}");
    let flags = ["--ipalloc-init", init.as_str()];
    start_weaver(bed.host(1), &[], &flags)?;
    for h in &bed.hosts()[1..] {
        start_weaver(h, &[peer_addr(bed.host(1))], &flags)?;
    }
    let names: Vec<String> = (1..=n).map(|i| format!("h{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    for h in bed.hosts() {
        wait_for_mesh(h, &names, n - 1, Duration::from_secs(90))?;
    }
    Ok(bed)
}

pub(crate) fn bench() -> Result<()> {
    println!();
    println!("# weave bench: IPAM");
    println!();
    // Latency: one agent whose ring exists, sequential allocate + release.
    let bed = cluster(1)?;
    let c = client(bed.host(1));
    allocate(&c, "warm-up")?;
    let mut alloc = Vec::new();
    let mut free = Vec::new();
    for i in 0..500 {
        let id = format!("lat-{i}");
        let t = Instant::now();
        allocate(&c, &id)?;
        alloc.push(t.elapsed());
        let t = Instant::now();
        let _: AddressesReply =
            c.post_json("/ipam/release", &ReleaseRequest { id, address: None })?;
        free.push(t.elapsed());
    }
    alloc.sort();
    free.sort();
    let p50 = percentile(&alloc, 50);
    println!(
        "allocate through the API (500 sequential, state file replaced before each reply): p50 {} p99 {} (goal p50 ≤ 1 ms: {:.2}× of goal); release p50 {} p99 {}",
        ms(p50),
        ms(percentile(&alloc, 99)),
        p50.as_secs_f64() * 1e3,
        ms(percentile(&free, 50)),
        ms(percentile(&free, 99)),
    );
    drop(bed);

    // First allocation of a fresh 3-peer consensus.
    let mut firsts = Vec::new();
    for _ in 0..3 {
        let bed = cluster(3)?;
        let t = Instant::now();
        allocate(&client(bed.host(2)), "first")?;
        firsts.push(t.elapsed());
    }
    firsts.sort();
    println!(
        "first allocation in a fresh 3-peer consensus (mesh formed, nothing allocated yet): median {} (runs: {})",
        ms(firsts[1]),
        firsts.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(", ")
    );

    // State size once every peer owns a share and holds an address.
    for n in [10, 25] {
        let bed = cluster(n)?;
        let t = Instant::now();
        let slow = |h| client(h).with_timeout(Duration::from_secs(90));
        allocate(&slow(bed.host(1)), "one")?;
        let first = t.elapsed();
        for h in &bed.hosts()[1..] {
            allocate(&slow(h), "one")?;
        }
        println!(
            "{n} peers: first allocation (consensus) {}, all {n} allocated after {}",
            ms(first),
            ms(t.elapsed())
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        let report = loop {
            let r: Report = client(bed.host(1)).get_json("/report")?;
            let ipam: IpamReport = r.ipam.context("IPAM runs")?;
            if ipam.owners.iter().filter(|o| o.addresses > 0).count() == n {
                break ipam;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{n} peers did not all get a share"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        println!(
            "IPAM gossip state, {n} peers each owning a share: {} bytes per message",
            report.state_bytes
        );
    }
    Ok(())
}
