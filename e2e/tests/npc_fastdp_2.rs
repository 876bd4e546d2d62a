// SPDX-License-Identifier: Apache-2.0
//! NetworkPolicy across two hosts whose pods talk over the kernel fast path: the real
//! `weaver` on both (their connection on fastdp), a `weave-npc` on each node, nine pods
//! alternating between the nodes, and the same scenarios as `npc_policy_1.rs` checked as a
//! full 9×9 matrix after every step. Policy is enforced where traffic enters a pod's port,
//! whichever bridge port (VXLAN or the sleeve's TAP) it came through; the sleeve carries
//! nothing once the pods are wired.

use anyhow::{ensure, Result};
use weave_e2e::npc::{scenarios, PolicyBed};
use weave_e2e::weave::{modes, report, sleeve_frames};

#[test]
fn policy_scenarios_across_fastdp_hosts() -> Result<()> {
    let pb = PolicyBed::across_fastdp_hosts()?;
    ensure!(
        pb.pods.iter().any(|p| p.host == 1) && pb.pods.iter().any(|p| p.host == 2),
        "pods on both nodes"
    );
    // Pods wired before their MACs were advertised and pinned may have
    // reached each other through the sleeve for a moment; from here on it
    // carries nothing.
    let before = [
        sleeve_frames(pb.bed.host(1))?,
        sleeve_frames(pb.bed.host(2))?,
    ];
    scenarios(&pb)?;
    for (h, peer) in [(1, "h2"), (2, "h1")] {
        let host = pb.bed.host(h);
        let m = modes(&report(host)?);
        ensure!(
            m.get(peer).map(|x| x.0.as_str()) == Some("fastdp"),
            "{}: {m:?}",
            host.name()
        );
        let after = sleeve_frames(host)?;
        ensure!(
            after == before[h - 1],
            "the sleeve carried pod traffic on {}: {} frames before the scenarios, {after} after",
            host.name(),
            before[h - 1]
        );
    }
    Ok(())
}
