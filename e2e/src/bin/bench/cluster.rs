// SPDX-License-Identifier: Apache-2.0
//! The real cluster's costs: the upstream tools (build time and size, as the build recorded
//! them), a 3-node cluster's start (to registered, and to Ready once the reference CNI is in),
//! and its memory at rest, per machine.

use std::time::{Duration, Instant};

use anyhow::Result;
use weave_e2e::cluster::{Cluster, ClusterOptions, Cni, Tools};

/// How long the cluster is left alone before its memory is read.
const SETTLE: Duration = Duration::from_secs(30);

pub(crate) fn bench() -> Result<()> {
    let tools = Tools::locate()?;
    println!(
        "# weave bench: real cluster (tools {})",
        tools.dir().display()
    );
    println!();
    let seconds = std::fs::read_to_string(tools.dir().join("build-seconds")).unwrap_or_default();
    let size = weave_e2e::cluster::tools_size(&tools)?;
    println!(
        "tools: built in {} s (the build that made this set; cold only if the Go caches were empty), {:.0} MiB",
        seconds.trim(),
        size as f64 / 1048576.0
    );
    println!();
    println!("| round | up to 3 nodes registered | + reference CNI to all Ready |");
    println!("|---|---|---|");
    let mut kept = None;
    for round in 1..=3 {
        let start = Instant::now();
        let cluster = Cluster::up(ClusterOptions {
            nodes: 3,
            cni: Cni::None,
            ..ClusterOptions::default()
        })?;
        let registered = start.elapsed();
        cluster.install_reference_cni()?;
        cluster.wait_ready(Duration::from_secs(120))?;
        let ready = start.elapsed();
        println!(
            "| {round} | {:.1} s | {:.1} s |",
            registered.as_secs_f64(),
            ready.as_secs_f64()
        );
        kept = Some(cluster);
    }
    let Some(cluster) = kept else { return Ok(()) };
    std::thread::sleep(SETTLE);
    println!();
    println!(
        "memory at rest ({} s after Ready, no pods), resident:",
        SETTLE.as_secs()
    );
    println!();
    println!("| machine | RSS |");
    println!("|---|---|");
    let mut total = 0;
    for (name, bytes) in cluster.memory()? {
        total += bytes;
        println!("| {name} | {:.0} MiB |", bytes as f64 / 1048576.0);
    }
    println!("| total | {:.0} MiB |", total as f64 / 1048576.0);
    Ok(())
}
