// SPDX-License-Identifier: Apache-2.0
//! weave on the real 3-node cluster, against the reference bridge + host-local CNI in the
//! same cluster:
//!
//! - pod start latency: a Deployment of 30 agnhost pods spread over the nodes; for each pod,
//!   the time from its first appearance in a watch to its Ready condition, p50 and p99;
//!   with weave (on a cluster that had no network), then, weave uninstalled, with the
//!   reference CNI, then with weave again;
//! - DaemonSet install: `kubectl apply` of the manifest to every node Ready;
//! - agent and weave-npc resident memory on each node, with the 30 pods running;
//! - the longest traffic gap between two pods on different nodes while the DaemonSet does a
//!   rolling restart.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use weave_e2e::cluster::{Cluster, ClusterOptions, Cni};
use weave_e2e::kube::{self, pods};

use crate::percentile;

/// Pods per start-latency round.
const PODS: usize = 30;

pub(crate) fn bench() -> Result<()> {
    println!("# weave bench: weave on the real cluster (3 nodes)");
    println!();
    let cluster = Cluster::up(ClusterOptions {
        nodes: 3,
        cni: Cni::None,
        ..ClusterOptions::default()
    })?;
    let install = kube::install_manifest(&cluster, Duration::from_secs(180))?;
    kube::rollout(&cluster, kube::NAMESPACE, "daemonset/weave-net")?;
    let mut weave = start_latency(&cluster)?;
    deploy(&cluster, PODS)?;
    let rss = memory(&cluster)?;
    let gap = restart_gap(&cluster)?;
    cluster.kubectl(&["delete", "pod", "prober", "--wait=true"])?;
    remove_bench(&cluster)?;
    // The reference network, then weave again: each CNI runs once early and once late in the
    // cluster's life, so neither profits from going second.
    cluster.kubectl(&[
        "delete",
        "-f",
        &kube::manifest().display().to_string(),
        "--wait=true",
    ])?;
    kube::run_uninstall(&cluster)?;
    cluster.install_reference_cni()?;
    cluster.wait_ready(Duration::from_secs(120))?;
    let mut reference = start_latency(&cluster)?;
    remove_bench(&cluster)?;
    cluster.remove_reference_cni()?;
    kube::install_manifest(&cluster, Duration::from_secs(180))?;
    kube::rollout(&cluster, kube::NAMESPACE, "daemonset/weave-net")?;
    weave.extend(start_latency(&cluster)?);
    weave.sort();
    reference.sort();
    println!("| pod start, create → Ready ({PODS} pods a round; weave: 2 rounds, reference: 1) | p50 | p99 |");
    println!("|---|---|---|");
    for (name, times) in [
        ("reference bridge + host-local", &reference),
        ("weave", &weave),
    ] {
        println!(
            "| {name} | {:.0} ms | {:.0} ms |",
            percentile(times, 50).as_secs_f64() * 1e3,
            percentile(times, 99).as_secs_f64() * 1e3
        );
    }
    println!(
        "| weave ÷ reference | {:.2}× | {:.2}× |",
        percentile(&weave, 50).as_secs_f64() / percentile(&reference, 50).as_secs_f64(),
        percentile(&weave, 99).as_secs_f64() / percentile(&reference, 99).as_secs_f64()
    );
    println!();
    println!(
        "DaemonSet install, `kubectl apply` → every node Ready: {:.1} s",
        install.as_secs_f64()
    );
    println!();
    println!("| node | weaver RSS | weave-npc RSS |");
    println!("|---|---|---|");
    for line in rss {
        println!("{line}");
    }
    println!();
    println!("rolling restart of the DaemonSet: longest gap in pod-to-pod traffic across nodes {gap:.1} s (probe every 0.2 s)");
    Ok(())
}

/// The agent's and weave-npc's resident memory on each node, as table rows.
fn memory(cluster: &Cluster) -> Result<Vec<String>> {
    (1..=3)
        .map(|i| {
            let mib = |comm: &str| -> Result<String> {
                let sizes = cluster.process_rss(i, comm)?;
                Ok(sizes
                    .iter()
                    .map(|b| format!("{:.1} MiB", *b as f64 / 1048576.0))
                    .collect::<Vec<_>>()
                    .join(", "))
            };
            Ok(format!(
                "| node-{i} | {} | {} |",
                mib("weaver")?,
                mib("weave-npc")?
            ))
        })
        .collect()
}

/// Starts a Deployment of `PODS` pods and returns each pod's create → Ready time; deletes it
/// afterwards.
fn start_latency(cluster: &Cluster) -> Result<Vec<Duration>> {
    let mut watch = cluster
        .kubectl_cmd()
        .args(["get", "pods", "-l", "app=bench", "--watch", "--output-watch-events", "-o"])
        .arg("jsonpath={.type} {.object.metadata.name} {.object.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("start kubectl --watch")?;
    let stdout = watch.stdout.take().context("watch stdout")?;
    let reader = std::thread::spawn(move || {
        let mut first: BTreeMap<String, Instant> = BTreeMap::new();
        let mut ready: BTreeMap<String, Instant> = BTreeMap::new();
        for line in BufReader::new(stdout)
            .lines()
            .map_while(std::result::Result::ok)
        {
            let now = Instant::now();
            let mut words = line.split_whitespace();
            let (Some(_), Some(name)) = (words.next(), words.next()) else {
                continue;
            };
            first.entry(name.to_owned()).or_insert(now);
            if words.next() == Some("True") {
                ready.entry(name.to_owned()).or_insert(now);
                if ready.len() == PODS {
                    break;
                }
            }
        }
        ready
            .iter()
            .filter_map(|(name, at)| Some(at.duration_since(*first.get(name)?)))
            .collect::<Vec<Duration>>()
    });
    deploy(cluster, PODS)?;
    let mut times = reader
        .join()
        .map_err(|_| anyhow::anyhow!("watch reader panicked"))?;
    times.sort();
    let _ = watch.kill();
    let _ = watch.wait();
    remove_bench(cluster)?;
    Ok(times)
}

/// Deletes the `bench` Deployment and waits until its pods are gone.
fn remove_bench(cluster: &Cluster) -> Result<()> {
    cluster.kubectl(&[
        "delete",
        "deployment",
        "bench",
        "--ignore-not-found",
        "--wait=true",
    ])?;
    weave_e2e::wait_until(Duration::from_secs(120), "the bench pods to go", || {
        Ok(pods(cluster, "default", "app=bench")?
            .is_empty()
            .then_some(()))
    })
}

/// A Deployment `bench` of `n` agnhost pods spread over the nodes, rolled out.
fn deploy(cluster: &Cluster, n: usize) -> Result<()> {
    kube::deploy_spread(
        cluster,
        "bench",
        "default",
        n,
        "netexec, --http-port=8080",
        true,
    )
}

/// The longest gap in a prober's traffic (node-1 → a pod on node-2) across a rolling restart.
fn restart_gap(cluster: &Cluster) -> Result<f64> {
    let target = pods(cluster, "default", "app=bench")?
        .into_iter()
        .find(|p| p.node == "node-2")
        .context("a bench pod on node-2")?;
    kube::start_prober(
        cluster,
        "default",
        "prober",
        "node-1",
        &format!("{}:8080", target.ip),
    )?;
    let log = kube::restart_under_probe(cluster, "default", "prober")?;
    Ok(kube::longest_gap(&log).0)
}
