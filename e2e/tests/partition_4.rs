// SPDX-License-Identifier: Apache-2.0
//! Four hosts split into two halves and healed: each side drops the other's
//! peers during the cut, and the full topology comes back afterwards, even
//! for peers whose only configured address is on the other side.

use std::time::Duration;

use anyhow::Result;
use weave_e2e::weave::{attach_pod, peer_addr, pings, start_weaver, wait_for_mesh};
use weave_e2e::{wait_until, TestBed, Topology};

#[test]
fn partition_and_heal() -> Result<()> {
    let bed = TestBed::new(Topology::Segment(4))?;
    start_weaver(bed.host(1), &[], &[])?;
    for i in 2..=4 {
        start_weaver(bed.host(i), &[peer_addr(bed.host(1))], &[])?;
    }
    let all = ["h1", "h2", "h3", "h4"];
    for h in bed.hosts() {
        wait_for_mesh(h, &all, 3, Duration::from_secs(20))?;
    }
    let p1 = attach_pod(&bed, 1, "p", "10.2.1.1/24")?;
    let p2 = attach_pod(&bed, 2, "p", "10.2.1.2/24")?;
    let p4 = attach_pod(&bed, 4, "p", "10.2.1.4/24")?;
    wait_until(
        Duration::from_secs(10),
        "pods across the future cut to talk",
        || Ok(pings(&p1, "10.2.1.4").then_some(())),
    )?;
    for (a, b) in [(1, 3), (1, 4), (2, 3), (2, 4)] {
        bed.cut(a, b)?;
    }
    assert!(!pings(&p1, "10.2.1.4"), "traffic crosses the cut");
    assert!(pings(&p1, "10.2.1.2"), "traffic within a half stops");
    assert!(pings(&p2, "10.2.1.1"), "traffic within a half stops");
    // read timeout (6 s) plus the grace before unreachable peers are dropped (3 s)
    for (i, side) in [
        (1, ["h1", "h2"]),
        (2, ["h1", "h2"]),
        (3, ["h3", "h4"]),
        (4, ["h3", "h4"]),
    ] {
        wait_for_mesh(bed.host(i), &side, 1, Duration::from_secs(30))?;
    }
    for (a, b) in [(1, 3), (1, 4), (2, 3), (2, 4)] {
        bed.restore(a, b)?;
    }
    for h in bed.hosts() {
        wait_for_mesh(h, &all, 3, Duration::from_secs(60))?;
    }
    wait_until(
        Duration::from_secs(10),
        "traffic across the healed cut",
        || Ok(pings(&p4, "10.2.1.1").then_some(())),
    )?;
    Ok(())
}
