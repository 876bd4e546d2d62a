// SPDX-License-Identifier: Apache-2.0
//! An agent restart keeps its pods' addresses (they are persisted) and
//! hands new pods new ones.

use std::time::Duration;

use anyhow::Result;
use weave_e2e::weave::{
    attach_allocated, ipam, peer_addr, pings, start_weaver, wait_for_mesh, weave, WEAVER,
};
use weave_e2e::{wait_until, TestBed, Topology};

#[test]
fn restart_keeps_addresses_and_new_pods_get_new_ones() -> Result<()> {
    let bed = TestBed::new(Topology::Segment(2))?;
    let (h1, h2) = (bed.host(1), bed.host(2));
    let flags = ["--ipalloc-init", "consensus=2"];
    start_weaver(h1, &[], &flags)?;
    start_weaver(h2, &[peer_addr(h1)], &flags)?;
    for h in bed.hosts() {
        wait_for_mesh(h, &["h1", "h2"], 1, Duration::from_secs(30))?;
    }
    let (a, a_ip) = attach_allocated(&bed, 1, "a", &[])?;
    let mut before = Vec::new();
    for p in 0..3 {
        before.push(attach_allocated(&bed, 2, &format!("b{p}"), &[])?);
    }
    wait_until(
        Duration::from_secs(20),
        "h1's pod to reach h2's pods",
        || Ok(before.iter().all(|(_, ip)| pings(&a, ip)).then_some(())),
    )?;
    let ids: Vec<String> = before
        .iter()
        .map(|(ns, _)| format!("netns:/run/netns/{ns}"))
        .collect();

    h2.stop(WEAVER)?;
    start_weaver(h2, &[peer_addr(h1)], &flags)?;
    wait_for_mesh(h2, &["h1", "h2"], 1, Duration::from_secs(30))?;
    for ((_, ip), id) in before.iter().zip(&ids) {
        let got = weave(h2, &["ipam", "lookup", id])?;
        assert!(
            got.starts_with(&format!("{ip}/")),
            "{id}: {got} after restart, was {ip}"
        );
    }
    assert_eq!(ipam(h2)?.used, 3);
    // Existing pods keep working across the restart.
    wait_until(
        Duration::from_secs(20),
        "h1's pod to reach h2's pods",
        || Ok(before.iter().all(|(_, ip)| pings(&a, ip)).then_some(())),
    )?;
    let (c, c_ip) = attach_allocated(&bed, 2, "c", &[])?;
    assert!(
        before.iter().all(|(_, ip)| *ip != c_ip) && c_ip != a_ip,
        "{c_ip} is new"
    );
    assert!(pings(&c, &a_ip));
    Ok(())
}
