// SPDX-License-Identifier: Apache-2.0
//! `make bench`: measures the mesh control plane with the real `weaver` in
//! namespace hosts and prints figures (and their ratio to the goals of the
//! foundation issue). Results go to BENCHMARKS.md by hand, with the command.
//!
//! - convergence: time from the start of the last agent until every agent
//!   reports the full topology (N peers, each with N-1 established links);
//!   each of N = 3, 10, 25 is run three times;
//! - idle RSS of each `weaver` in a 10-host mesh, 5 s after convergence;
//! - control bytes sent per peer per second at steady state (10 and 25
//!   hosts), over a 20 s window: heartbeats plus anti-entropy gossip;
//! - the data plane (`dataplane.rs`): iperf3 and ping between two hosts over
//!   raw veth (the native reference), kernel VXLAN and the sleeve;
//! - the kernel fast path (`fastdp.rs`): pod to pod against raw veth and a
//!   plain kernel VXLAN set up without weave, interleaved; weaver CPU,
//!   fallback and re-upgrade times, pings lost across an agent restart;
//! - IPAM (`ipam.rs`): allocation latency, first allocation of a fresh
//!   consensus, size of the gossiped state;
//! - network policy (`npc.rs`): compile + apply time, API-to-rules latency and
//!   throughput with 1,000 policies;
//! - the CNI plugin (`cni.rs`): ADD/DEL latency of `weave-net` against the
//!   reference bridge + host-local plugins.
//!
//! - weaveDNS (`dns.rs`): dnsperf qps and latency against dnsmasq serving
//!   the same names, for local and forwarded names; agent RSS with 10,000
//!   entries.
//!
//! - services (`services.rs`): iperf3 TCP through a `weave service export` and an import
//!   against direct pod traffic over the same mesh, interleaved; time from the command to
//!   traffic flowing.
//!
//! - the real cluster (`cluster.rs`): tools build time and size, 3-node start to
//!   registered and to Ready, memory at rest per machine.
//!
//! - weave on the real cluster (`kube.rs`): pod start latency against the reference CNI,
//!   DaemonSet install time, agent and weave-npc memory, traffic gap of a rolling restart.
//!
//! `weave-bench mesh`, `dataplane`, `fastdp`, `ipam`, `npc`, `cni`, `dns`, `services`, `cluster` or `kube`
//! runs one part;
//! `weave-bench rtt` only the data plane's ping RTT, over several rounds;
//! `weave-bench wakeup` what a thread wake-up costs on this machine.

// A benchmark prints its results, and measures wall-clock time.
#![allow(
    clippy::print_stdout,
    clippy::disallowed_types,
    clippy::disallowed_methods
)]

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use weave_api::{Client, ConnectionState, Endpoint, Report};
use weave_e2e::weave::{api_socket, peer_addr, start_weaver, state_dir, WEAVER};
use weave_e2e::{bin, Host, TestBed, Topology};

mod cluster;
mod cni;
mod dataplane;
mod dns;
mod fastdp;
mod ipam;
mod kube;
mod npc;
mod services;
mod wakeup;

fn client(h: &Host) -> Client {
    // The API socket is a file: the bench (in the root namespace) reaches
    // each host's agent through it directly, faster than running the CLI.
    Client::new(vec![Endpoint::Unix(api_socket(h))]).with_timeout(Duration::from_secs(5))
}

fn full(r: &Report, n: usize) -> bool {
    r.peers.len() == n
        && r.connections
            .iter()
            .filter(|c| c.state == ConnectionState::Established)
            .count()
            == n - 1
        && r.peers
            .iter()
            .all(|p| p.connections.iter().filter(|c| c.established).count() == n - 1)
}

struct Run {
    bed: TestBed,
    converge: Duration,
}

fn form_mesh(n: usize) -> Result<Run> {
    let bed = TestBed::new(Topology::Segment(n))?;
    let h1 = bed.host(1);
    start_weaver(h1, &[], &[])?;
    let weaver = bin("weaver")?;
    for h in &bed.hosts()[1..] {
        let args: Vec<String> = [
            "--nickname",
            h.name(),
            "--state-dir",
            &state_dir(h).display().to_string(),
            "--api-socket",
            &api_socket(h).display().to_string(),
            "--log-level",
            "warn",
            &peer_addr(h1),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        h.spawn(WEAVER, &weaver, &args, &[])?;
    }
    let t0 = Instant::now();
    let clients: Vec<Client> = bed.hosts().iter().map(client).collect();
    let deadline = t0 + Duration::from_secs(60);
    loop {
        let done = clients.iter().all(|c| {
            c.get_json::<Report>("/report")
                .map(|r| full(&r, n))
                .unwrap_or(false)
        });
        if done {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{n} hosts did not converge within 60 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(Run {
        converge: t0.elapsed(),
        bed,
    })
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`).
pub(crate) fn proc_status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .with_context(|| format!("{field} in /proc/{pid}/status"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .with_context(|| format!("{field} value"))?
        .parse()?)
}

fn bytes_out(bed: &TestBed) -> Result<u64> {
    let mut sum = 0;
    for h in bed.hosts() {
        sum += client(h).get_json::<Report>("/report")?.stats.bytes_out;
    }
    Ok(sum)
}

/// The `pct`-th percentile of samples sorted in ascending order.
pub(crate) fn percentile(sorted: &[Duration], pct: usize) -> Duration {
    sorted[(sorted.len() - 1) * pct / 100]
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let what = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    if what == "all" || what == "mesh" {
        mesh_bench()?;
    }
    if what == "all" || what == "dataplane" {
        dataplane::bench()?;
    }
    if what == "all" || what == "fastdp" {
        fastdp::bench()?;
    }
    if what == "all" || what == "wakeup" {
        wakeup::bench()?;
    }
    if what == "rtt" {
        let args: Vec<String> = std::env::args().skip(2).collect();
        let sets: Vec<String> = args.iter().filter(|a| *a != "--hold").cloned().collect();
        dataplane::rtt_bench(&sets, args.iter().any(|a| a == "--hold"))?;
    }
    if what == "all" || what == "ipam" {
        ipam::bench()?;
    }
    if what == "all" || what == "npc" {
        npc::bench()?;
    }
    if what == "all" || what == "cni" {
        cni::bench()?;
    }
    if what == "all" || what == "dns" {
        dns::bench()?;
    }
    if what == "all" || what == "services" {
        services::bench()?;
    }
    if what == "all" || what == "cluster" {
        cluster::bench()?;
    }
    if what == "all" || what == "kube" {
        kube::bench()?;
    }
    Ok(())
}

fn mesh_bench() -> Result<()> {
    println!(
        "# weave bench: mesh control plane ({} binaries)",
        weave_e2e::bin_dir().display()
    );
    println!();
    println!("| hosts | convergence median | max | goal (25 hosts) |");
    println!("|---|---|---|---|");
    let mut kept = Vec::new();
    for n in [3, 10, 25] {
        let mut times = Vec::new();
        for round in 0..3 {
            let run = form_mesh(n)?;
            times.push(run.converge);
            if round == 2 && n != 3 {
                kept.push((n, run.bed));
            }
        }
        let max = *times.iter().max().expect("three runs");
        let med = median(times);
        let goal = if n == 25 {
            format!("≤ 2 s: {:.2}× of goal", med.as_secs_f64() / 2.0)
        } else {
            String::new()
        };
        println!(
            "| {n} | {:.0} ms | {:.0} ms | {goal} |",
            med.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3
        );
    }
    println!();
    for (n, bed) in &kept {
        std::thread::sleep(Duration::from_secs(5));
        if *n == 10 {
            let mut rss: Vec<u64> = Vec::new();
            for h in bed.hosts() {
                rss.push(proc_status_kib(
                    h.pid(WEAVER).context("weaver runs")?,
                    "VmRSS",
                )?);
            }
            rss.sort_unstable();
            let max = *rss.last().expect("ten hosts");
            println!(
                "idle RSS per weaver, 10-host mesh: median {:.1} MiB, max {:.1} MiB (goal ≤ 16 MiB: max is {:.2}× of goal)",
                rss[rss.len() / 2] as f64 / 1024.0,
                max as f64 / 1024.0,
                max as f64 / 1024.0 / 16.0
            );
        }
        let window = Duration::from_secs(20);
        let before = bytes_out(bed)?;
        std::thread::sleep(window);
        let after = bytes_out(bed)?;
        let per_peer = (after - before) as f64 / *n as f64 / window.as_secs_f64();
        println!(
            "steady-state control bytes sent per peer per second, {n} hosts: {per_peer:.0} B/s"
        );
    }
    Ok(())
}
