// SPDX-License-Identifier: Apache-2.0
//! Five hosts on one segment, each agent told only h1's address: everyone
//! learns everyone through gossip and connects to all.

use std::time::Duration;

use std::os::unix::fs::PermissionsExt;

use anyhow::Result;
use weave_e2e::weave::{api_socket, peer_addr, report, start_weaver, wait_for_mesh, weave};
use weave_e2e::{wait_until, TestBed, Topology};

#[test]
fn five_hosts_form_a_full_mesh_from_one_address() -> Result<()> {
    let bed = TestBed::new(Topology::Segment(5))?;
    let h1 = bed.host(1);
    start_weaver(h1, &[], &[])?;
    for i in 2..=5 {
        start_weaver(bed.host(i), &[peer_addr(h1)], &[])?;
    }
    let all = ["h1", "h2", "h3", "h4", "h5"];
    for h in bed.hosts() {
        wait_for_mesh(h, &all, 4, Duration::from_secs(20))?;
        // eventually every peer announces four established connections and
        // every route is direct (until the last records arrive, a route may
        // briefly go through a third peer)
        wait_until(
            Duration::from_secs(10),
            "a full mesh of direct routes",
            || {
                let r = report(h)?;
                let full = r
                    .peers
                    .iter()
                    .all(|p| p.connections.iter().filter(|c| c.established).count() == 4);
                let direct = r.routes.len() == 4 && r.routes.iter().all(|x| x.destination == x.via);
                Ok((full && direct).then_some(()))
            },
        )?;
    }
    let mode = std::fs::metadata(api_socket(h1))?.permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "API socket is private to root");
    let status = weave(h1, &["status"])?;
    assert!(
        status.contains("Peers:          5 (with 20 established connections)"),
        "{status}"
    );
    let conns = weave(h1, &["status", "connections"])?;
    assert_eq!(
        conns.lines().filter(|l| l.contains("established")).count(),
        4,
        "{conns}"
    );
    let peers = weave(h1, &["status", "peers"])?;
    assert_eq!(
        peers
            .lines()
            .filter(|l| l.contains("(h") && !l.starts_with(' '))
            .count(),
        5,
        "{peers}"
    );
    Ok(())
}
