// SPDX-License-Identifier: Apache-2.0
//! `weave-bench fastdp`: the kernel fast path, pod to pod across two hosts,
//! against raw veth (host to host over the underlay) and against a plain
//! kernel VXLAN the benchmark sets up without weave (a bridge, a VXLAN
//! device with the other host as remote, a pod on a veth, MTU 1450): the
//! same shape as weave's fast path, so the ratio is what weave costs.
//!
//! Two host pairs run side by side, one with weave, one with the plain
//! setup; every round measures all three modes back to back, alternating
//! the order, and ratios are taken per round (the machine is shared and
//! noisy: read the medians and the spread). Then: `weaver`'s CPU during a
//! fast-path transfer, the time to fall back when UDP 6784 is blocked and
//! to come back when it is unblocked, and pings lost while an agent is
//! killed and restarted.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use weave_e2e::weave::{modes, report, start_weaver, wait_for_mode, WEAVER};
use weave_e2e::{wait_until, Host, TestBed, Topology};

use super::dataplane::{measure, start_sleeve, weaver_cpu_per_gb, Figures};

/// Rounds of the interleaved comparison.
const ROUNDS: usize = 5;

/// Builds the plain reference on a fresh pair of hosts: in each, bridge
/// `brref`, VXLAN `vxref` (VNI 42, port 4789, the other host as remote) on
/// it, and a pod at `10.9.0.<i>/24` with MTU 1450. Returns the pods.
fn plain_vxlan(bed: &TestBed) -> Result<(String, String)> {
    let mut pods = Vec::new();
    for (i, other) in [(1, 2), (2, 1)] {
        let h = bed.host(i);
        let remote = bed.host(other).addr().to_string();
        for args in [
            vec!["link", "add", "brref", "type", "bridge"],
            vec![
                "link", "add", "vxref", "type", "vxlan", "id", "42", "remote", &remote, "dstport",
                "4789", "dev", "ul0",
            ],
            vec!["link", "set", "vxref", "master", "brref", "up"],
            vec!["link", "set", "brref", "up"],
        ] {
            h.run("ip", &args)?;
        }
        let pod = bed.add_pod_netns(i, "ref")?;
        h.run(
            "ip",
            &[
                "link", "add", "vethref", "mtu", "1450", "type", "veth", "peer", "name", "eth0",
                "mtu", "1450", "netns", &pod,
            ],
        )?;
        h.run("ip", &["link", "set", "vethref", "master", "brref", "up"])?;
        let addr = format!("10.9.0.{i}/24");
        for args in [
            vec!["addr", "add", addr.as_str(), "dev", "eth0"],
            vec!["link", "set", "eth0", "up"],
            vec!["link", "set", "lo", "up"],
        ] {
            let out = Command::new("ip")
                .args(["netns", "exec", &pod, "ip"])
                .args(&args)
                .output()?;
            anyhow::ensure!(out.status.success(), "{args:?} in {pod}");
        }
        pods.push(pod);
    }
    let (a, b) = (pods[0].clone(), pods[1].clone());
    wait_until(
        Duration::from_secs(10),
        "the plain VXLAN pods to talk",
        || Ok(weave_e2e::weave::pings(&a, "10.9.0.2").then_some(())),
    )?;
    Ok((a, b))
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

/// Waits until both hosts report `mode` for each other; returns the time.
fn time_to_mode(h1: &Host, h2: &Host, mode: &str) -> Result<Duration> {
    let t0 = Instant::now();
    wait_until(Duration::from_secs(60), &format!("both on {mode}"), || {
        let ok = [(h1, "h2"), (h2, "h1")]
            .iter()
            .all(|(h, p)| report(h).is_ok_and(|r| modes(&r).get(*p).is_some_and(|m| m.0 == mode)));
        Ok(ok.then_some(()))
    })?;
    Ok(t0.elapsed())
}

fn nft(h: &Host, script: &str) -> Result<()> {
    h.run_with_input("nft", &["-f", "-"], script)?;
    Ok(())
}

pub(crate) fn bench() -> Result<()> {
    let weave_bed = TestBed::new(Topology::Segment(2))?;
    let (a, b) = start_sleeve(&weave_bed, &[])?;
    let (h1, h2) = (weave_bed.host(1), weave_bed.host(2));
    wait_for_mode(h1, &["h2"], "fastdp", Duration::from_secs(30))?;
    wait_for_mode(h2, &["h1"], "fastdp", Duration::from_secs(30))?;
    let ref_bed = TestBed::new(Topology::Segment(2))?;
    let (ra, rb) = plain_vxlan(&ref_bed)?;

    let mut rows: Vec<[Figures; 3]> = Vec::new();
    for round in 0..ROUNDS {
        let mut f = [Figures::default(); 3];
        let order: [usize; 3] = if round % 2 == 0 { [0, 1, 2] } else { [2, 1, 0] };
        for m in order {
            f[m] = match m {
                0 => measure(h1.netns(), h2.netns(), &h2.addr().to_string())?,
                1 => measure(&ra, &rb, "10.9.0.2")?,
                _ => measure(&a, &b, "10.2.1.2")?,
            };
        }
        rows.push(f);
    }
    let cpu = weaver_cpu_per_gb(&[h1, h2], &a, &b, "10.2.1.2")?;
    println!();
    println!(
        "# weave bench: fast datapath, 2 hosts, {ROUNDS} interleaved rounds (median, min … max)"
    );
    println!();
    println!("| mode | TCP 1 stream | TCP 4 streams | UDP 64 B | ping RTT |");
    println!("|---|---|---|---|---|");
    type Pick = fn(&Figures) -> f64;
    let picks: [(&str, Pick, f64, &str); 4] = [
        ("TCP 1", |f| f.tcp1_gbps, 1.0, "Gbit/s"),
        ("TCP 4", |f| f.tcp4_gbps, 1.0, "Gbit/s"),
        ("UDP 64", |f| f.udp64_pps, 1e-3, "kpps"),
        ("RTT", |f| f.rtt_us, 1.0, "µs"),
    ];
    for (m, name) in [
        "veth (native)",
        "plain kernel VXLAN + bridge",
        "weave fastdp",
    ]
    .iter()
    .enumerate()
    {
        let cells: Vec<String> = picks
            .iter()
            .map(|(_, pick, scale, unit)| {
                let (med, lo, hi) = median(rows.iter().map(|r| pick(&r[m]) * scale).collect());
                format!("{med:.2} {unit} ({lo:.2} … {hi:.2})")
            })
            .collect();
        println!("| {name} | {} |", cells.join(" | "));
    }
    println!();
    println!("| ratio, per round | fastdp ÷ plain VXLAN | fastdp ÷ veth | goal |");
    println!("|---|---|---|---|");
    for (what, pick, _, _) in &picks[..3] {
        let (r, lo, hi) = median(rows.iter().map(|r| pick(&r[2]) / pick(&r[1])).collect());
        let (v, ..) = median(rows.iter().map(|r| pick(&r[2]) / pick(&r[0])).collect());
        println!("| {what} | {r:.3} ({lo:.3} … {hi:.3}) | {v:.3} | ≥ 0.95× plain |");
    }
    let (d, lo, hi) = median(rows.iter().map(|r| r[2].rtt_us - r[1].rtt_us).collect());
    println!("| RTT added over plain VXLAN | {d:+.1} µs ({lo:+.1} … {hi:+.1}) | | ≤ +5 µs |");
    println!();
    println!("weaver CPU during a fast-path TCP transfer: {cpu:.4} s per GB (both agents)");

    // fallback and re-upgrade: UDP 6784 blocked both ways on h1, then not
    let mut falls = Vec::new();
    let mut backs = Vec::new();
    for _ in 0..3 {
        let ip2 = h2.addr();
        nft(
            h1,
            &format!("table inet bench_fastdp {{\n chain in {{ type filter hook input priority 0; ip saddr {ip2} udp dport 6784 drop; }}\n chain out {{ type filter hook output priority 0; ip daddr {ip2} udp dport 6784 drop; }}\n}}\n"),
        )?;
        falls.push(time_to_mode(h1, h2, "sleeve")?);
        h1.run("nft", &["delete", "table", "inet", "bench_fastdp"])?;
        backs.push(time_to_mode(h1, h2, "fastdp")?);
    }
    let secs = |v: &[Duration]| {
        v.iter()
            .map(|d| format!("{:.2} s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "fallback after UDP 6784 is blocked: {} (goal ≤ 2 s)",
        secs(&falls)
    );
    println!(
        "back to fastdp after it is unblocked: {} (goal ≤ 10 s)",
        secs(&backs)
    );

    // pings lost while h1's agent is killed and restarted
    let ping = Command::new("ip")
        .args([
            "netns", "exec", &a, "ping", "-q", "-i", "0.005", "-c", "4000", "10.2.1.2",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .context("start ping")?;
    wait_until(Duration::from_secs(10), "the ping flood to run", || {
        let out = Command::new("ip")
            .args(["netns", "exec", &a, "ip", "neigh", "show", "10.2.1.2"])
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .contains("REACHABLE")
            .then_some(()))
    })?;
    let t0 = Instant::now();
    h1.kill(WEAVER)?;
    start_weaver(h1, &[], &[])?;
    let restarted = t0.elapsed();
    let out = ping.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let summary = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or("no ping summary");
    println!(
        "kill -9 and restart of an agent ({:.2} s until its API answered) during 4000 pings at 5 ms: {summary} (goal: 0 lost)",
        restarted.as_secs_f64()
    );
    Ok(())
}
