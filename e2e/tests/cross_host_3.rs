// SPDX-License-Identifier: Apache-2.0
//! Three hosts, two pods each, attached with static addresses in
//! 10.2.1.0/24: one virtual switch across hosts.

use std::time::Duration;

use anyhow::Result;
use weave_e2e::weave::{attach_pod, peer_addr, pings, start_weaver, wait_for_mesh};
use weave_e2e::{wait_until, TestBed, Topology};

#[test]
fn pods_on_three_hosts_reach_each_other() -> Result<()> {
    let bed = TestBed::new(Topology::Segment(3))?;
    start_weaver(bed.host(1), &[], &[])?;
    start_weaver(bed.host(2), &[peer_addr(bed.host(1))], &[])?;
    start_weaver(bed.host(3), &[peer_addr(bed.host(1))], &[])?;
    for h in bed.hosts() {
        wait_for_mesh(h, &["h1", "h2", "h3"], 2, Duration::from_secs(20))?;
    }
    let mut pods = Vec::new();
    for h in 1..=3 {
        for p in 1..=2 {
            let ip = format!("10.2.1.{}", h * 10 + p);
            let ns = attach_pod(&bed, h, &format!("p{p}"), &format!("{ip}/24"))?;
            pods.push((ns, ip));
        }
    }
    for (ns, _) in &pods {
        for (_, ip) in &pods {
            wait_until(
                Duration::from_secs(10),
                &format!("{ns} to ping {ip}"),
                || Ok(pings(ns, ip).then_some(())),
            )?;
        }
    }
    Ok(())
}
