// SPDX-License-Identifier: Apache-2.0
//! `kill -9` of an agent and a restart: it comes back with the same peer
//! name and a new UID, and the others take it back; `weave ps` shows an
//! attached namespace with its real MAC before and after.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use weave_e2e::weave::{
    attach_allocated, peer_addr, pod_mac, ps, report, start_weaver, wait_for_mesh, weave, WEAVER,
};
use weave_e2e::{wait_until, TestBed, Topology};

#[test]
fn killed_agent_rejoins_with_same_name_and_new_uid() -> Result<()> {
    let bed = TestBed::new(Topology::Segment(3))?;
    let (h1, h2, h3) = (bed.host(1), bed.host(2), bed.host(3));
    start_weaver(h1, &[], &[])?;
    start_weaver(h2, &[peer_addr(h1)], &[])?;
    start_weaver(h3, &[peer_addr(h1)], &[])?;
    let all = ["h1", "h2", "h3"];
    for h in bed.hosts() {
        wait_for_mesh(h, &all, 2, Duration::from_secs(20))?;
    }
    let (ns, addr) = attach_allocated(&bed, 2, "ps", &[])?;
    let mac = pod_mac(&ns, "ethwe0")?;
    let listed = |when: &str| -> Result<()> {
        let entries = ps(h2)?.entries;
        ensure!(
            entries.first().map(|e| e.id.as_str()) == Some("weave:expose"),
            "{when}: the bridge first: {entries:?}"
        );
        let e = entries
            .iter()
            .find(|e| e.netns.as_deref().is_some_and(|n| n.ends_with(&ns)))
            .with_context(|| format!("{when}: {ns} not in weave ps: {entries:?}"))?;
        ensure!(
            e.mac.as_deref() == Some(mac.as_str()),
            "{when}: {e:?}, MAC {mac}"
        );
        ensure!(
            e.addresses.iter().any(|a| a.addr().to_string() == addr),
            "{when}: {e:?} lacks {addr}"
        );
        let text = weave(h2, &["ps"])?;
        ensure!(
            text.lines().any(|l| l.contains(&mac) && l.contains(&addr)),
            "{when}: weave ps prints {text}"
        );
        Ok(())
    };
    listed("attached")?;
    let before = report(h2)?.peer;
    h2.kill(WEAVER)?;
    // the others notice (connection reset) and drop it
    wait_for_mesh(h1, &["h1", "h3"], 1, Duration::from_secs(30))?;
    start_weaver(h2, &[peer_addr(h1)], &[])?;
    for h in bed.hosts() {
        wait_for_mesh(h, &all, 2, Duration::from_secs(30))?;
    }
    let after = report(h2)?.peer;
    assert_eq!(after.name, before.name, "peer name survives a restart");
    assert_ne!(after.uid, before.uid, "each start is a new incarnation");
    // the others hold the new incarnation's record
    wait_until(Duration::from_secs(10), "h3 to hold h2's new UID", || {
        let r = report(h3)?;
        Ok(r.peers
            .iter()
            .any(|p| p.name == after.name && p.uid == after.uid)
            .then_some(()))
    })?;
    listed("after the restart")?;
    weave(h2, &["detach", &ns])?;
    let left = ps(h2)?.entries;
    ensure!(
        left.iter().all(|e| e.id == "weave:expose"),
        "detached, yet weave ps lists {left:?}"
    );
    Ok(())
}
