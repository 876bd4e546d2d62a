// SPDX-License-Identifier: Apache-2.0
//! `weave-conformance` (`make conformance`): the upstream suites against weave on a fresh
//! 3-node real cluster (weave from its manifest, with the ClusterNetworkPolicy CRD), and a
//! results file with every test's outcome and, for each that cannot pass here, why
//! (`weave_e2e::conformance::EXPECTED`).
//!
//! Suites: `netpol` (the Kubernetes e2e tests focused on `Netpol|NetworkPolicy`),
//! `sig-network` (`[sig-network] … [Conformance]`), `cluster-network-policy` (sig-network's
//! network-policy-api suite, standard and experimental features). Exits non-zero when a test
//! fails that is not expected to.

// The program reports to a person on stdout.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use weave_e2e::cluster::{Cluster, ClusterOptions, Cni};
use weave_e2e::conformance::{self, Outcome};
use weave_e2e::kube;

/// Runs the upstream conformance suites against weave and writes the results.
#[derive(Debug, Parser)]
#[command(name = "weave-conformance", version)]
struct Cli {
    /// Suites to run, comma-separated: netpol, sig-network, cluster-network-policy.
    #[arg(long, default_value = "netpol,sig-network,cluster-network-policy")]
    suites: String,
    /// The results file (Markdown).
    #[arg(long, default_value = "e2e/conformance/RESULTS.md")]
    out: PathBuf,
    /// Parallel ginkgo processes (the machines have 2 cores).
    #[arg(long, default_value_t = 2)]
    parallel: usize,
    /// Where logs and reports go (kept); a temporary directory when absent.
    #[arg(long)]
    logs: Option<PathBuf>,
}

// Wall-clock time of each suite, for the results file.
#[allow(clippy::disallowed_types)]
fn main() -> Result<()> {
    let cli = Cli::parse();
    let suites: Vec<&str> = cli.suites.split(',').map(str::trim).collect();
    for s in &suites {
        if !["netpol", "sig-network", "cluster-network-policy"].contains(s) {
            bail!("unknown suite {s:?}: netpol, sig-network or cluster-network-policy");
        }
    }
    let logs = cli.logs.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("weave-conformance-{}", std::process::id()))
    });
    std::fs::create_dir_all(&logs).with_context(|| format!("create {}", logs.display()))?;
    let cluster = Cluster::up(ClusterOptions {
        nodes: 3,
        cni: Cni::None,
        ..ClusterOptions::default()
    })?;
    kube::install_with_cluster_policies(&cluster, Duration::from_secs(180))?;
    let mut sections = Vec::new();
    let mut all: Vec<Outcome> = Vec::new();
    for suite in suites {
        let start = std::time::Instant::now();
        let dir = logs.join(suite);
        let outcomes = match suite {
            "netpol" => {
                conformance::run_e2e(&cluster, "Netpol|NetworkPolicy", "", cli.parallel, &dir)?
            }
            "sig-network" => conformance::run_e2e(
                &cluster,
                r"\[sig-network\].*\[Conformance\]",
                "",
                cli.parallel,
                &dir,
            )?,
            _ => conformance::run_cluster_policy_suite(
                &cluster,
                "ClusterNetworkPolicy,ClusterNetworkPolicyNamedPorts,ClusterNetworkPolicyEgressNodePeers",
                &dir,
            )?,
        };
        let minutes = start.elapsed().as_secs_f64() / 60.0;
        println!(
            "{suite}: {} tests in {minutes:.1} min, {} unexpected failures (logs in {})",
            outcomes.len(),
            conformance::unexpected(&outcomes).len(),
            dir.display()
        );
        sections.push(conformance::report(
            &format!("{suite} ({minutes:.0} min, {} parallel)", cli.parallel),
            &outcomes,
        ));
        all.extend(outcomes);
    }
    let versions = std::fs::read_to_string(cluster.tools().dir().join("versions"))
        .unwrap_or_default()
        .lines()
        .collect::<Vec<_>>()
        .join(", ");
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let text = format!(
        "# Conformance results\n\nWritten by `make conformance` (`weave-conformance`): a fresh 3-node real cluster, weave \
         from `manifests/weave-daemonset.yaml` with `manifests/clusternetworkpolicy-crd.yaml`. Date {date}, commit \
         {commit}; {versions}. Tests that cannot pass here name the reason (`e2e/src/conformance.rs`, `EXPECTED`); \
         any other failure is marked UNEXPECTED.\n\n{}",
        sections.join("\n")
    );
    if let Some(parent) = cli.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&cli.out, text).with_context(|| format!("write {}", cli.out.display()))?;
    println!("results in {}", cli.out.display());
    let bad = conformance::unexpected(&all);
    if !bad.is_empty() {
        for o in &bad {
            println!("UNEXPECTED {}: {} {}", o.status.name(), o.name, o.message);
        }
        bail!("{} tests failed unexpectedly", bad.len());
    }
    Ok(())
}
