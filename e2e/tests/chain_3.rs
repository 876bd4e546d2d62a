// SPDX-License-Identifier: Apache-2.0
//! Chain h1-h2-h3 with no direct h1-h3 path: all three know each other and
//! h1's route to h3 goes through h2. Each link is on the kernel fast path;
//! h1's pods reach h3's through h2, whose sleeve relays what no kernel path
//! carries end to end; `weave report --format dot` draws that chain.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use weave_e2e::weave::{
    attach_pod, pings, report, start_weaver, wait_for_mesh, wait_for_mode, weave,
};
use weave_e2e::{run_with_input, wait_until, TestBed, Topology};

#[test]
fn chain_routes_through_the_middle() -> Result<()> {
    let bed = TestBed::new(Topology::Links {
        hosts: 3,
        links: vec![(1, 2), (2, 3)],
    })?;
    let (h1, h2, h3) = (bed.host(1), bed.host(2), bed.host(3));
    // h2's address on each link: link 0 is 1-2, link 1 is 2-3
    start_weaver(h2, &[], &[])?;
    start_weaver(h1, &["10.251.0.2".into()], &[])?;
    start_weaver(h3, &["10.251.1.2".into()], &[])?;
    let all = ["h1", "h2", "h3"];
    wait_for_mesh(h1, &all, 1, Duration::from_secs(20))?;
    wait_for_mesh(h2, &all, 2, Duration::from_secs(20))?;
    wait_for_mesh(h3, &all, 1, Duration::from_secs(20))?;
    wait_for_mode(h1, &["h2"], "fastdp", Duration::from_secs(20))?;
    wait_for_mode(h2, &["h1", "h3"], "fastdp", Duration::from_secs(20))?;
    wait_for_mode(h3, &["h2"], "fastdp", Duration::from_secs(20))?;
    let name = |h| -> Result<String> { Ok(report(h)?.peer.name) };
    let (n2, n3) = (name(h2)?, name(h3)?);
    let r1 = wait_until(Duration::from_secs(10), "h1 to route to h3", || {
        let r = report(h1)?;
        Ok(r.routes.iter().any(|x| x.destination == n3).then_some(r))
    })?;
    let via = r1
        .routes
        .iter()
        .find(|x| x.destination == n3)
        .map(|x| x.via.clone());
    assert_eq!(via, Some(n2.clone()), "h1's route to h3");
    // h1 learned h3's address from h2 and tries it, but cannot reach it: the
    // attempt shows as pending or failed, never established
    let r1 = report(h1)?;
    assert!(r1
        .connections
        .iter()
        .all(|c| c.peer.as_deref() != Some(n3.as_str())));

    // pods on h1 and h3 talk through h2's sleeve
    let a = attach_pod(&bed, 1, "a", "10.2.1.1/24")?;
    let c = attach_pod(&bed, 3, "c", "10.2.1.3/24")?;
    wait_until(Duration::from_secs(10), "a to ping c through h2", || {
        Ok(pings(&a, "10.2.1.3").then_some(()))
    })?;
    wait_until(Duration::from_secs(10), "c to ping a through h2", || {
        Ok(pings(&c, "10.2.1.1").then_some(()))
    })?;
    let relayed = report(h2)?
        .connections
        .iter()
        .map(|c| c.frames_out)
        .sum::<u64>();
    assert!(relayed >= 2, "h2 relayed {relayed} frames");

    // `weave report --format dot`, laid out by Graphviz: three peers, two links (h1-h2,
    // h2-h3), h1's own link coloured by its data-plane mode.
    let graph = weave(h1, &["report", "--format", "dot"])?;
    let plain = run_with_input(Command::new("dot").arg("-Tplain"), Some(&graph))
        .context("lay out with dot (Debian package graphviz; make deps installs it)")?;
    let count = |kind: &str| plain.lines().filter(|l| l.starts_with(kind)).count();
    assert_eq!(
        (count("node "), count("edge ")),
        (3, 2),
        "dot -Tplain of\n{graph}\n{plain}"
    );
    assert!(
        graph.contains("color=darkgreen") || graph.contains("color=blue"),
        "{graph}"
    );
    Ok(())
}
