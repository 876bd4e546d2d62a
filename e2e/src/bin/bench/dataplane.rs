// SPDX-License-Identifier: Apache-2.0
//! Data-plane benchmark: two hosts on one segment, measured four ways in
//! the same run so that ratios compare like with like:
//!
//! - `veth`: host to host over the underlay itself (the native reference);
//! - `vxlan`: a kernel VXLAN device in each host (the kernel's ceiling for
//!   an encapsulating overlay);
//! - `sleeve`: pod to pod through `weaver`'s sleeve;
//! - `sleeve, encrypted`: the same with a mesh password (every datagram
//!   sealed with ChaCha20-Poly1305).
//!
//! For each: iperf3 TCP with 1 and 4 streams, iperf3 UDP with 64-byte
//! payloads (received packets per second), and ping RTT. For the sleeve also
//! `weaver`'s CPU seconds per GB moved and its peak RSS.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use weave_e2e::weave::{attach_pod, in_pod, peer_addr, pings, start_weaver, wait_for_mesh, WEAVER};
use weave_e2e::{wait_until, Host, TestBed, Topology};

const SECONDS: &str = "5";

/// Figures of one mode.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Figures {
    pub(crate) tcp1_gbps: f64,
    pub(crate) tcp4_gbps: f64,
    pub(crate) udp64_pps: f64,
    pub(crate) rtt_us: f64,
}

/// Runs `args` in network namespace `ns`.
fn ns_cmd(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(args);
    c
}

/// An iperf3 server in `ns`, killed on drop.
pub(crate) struct Server(Child);

impl Server {
    pub(crate) fn start(ns: &str) -> Result<Self> {
        let child = ns_cmd(ns, &["iperf3", "-s", "-p", "5201"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start iperf3 server")?;
        Ok(Self(child))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn iperf(ns: &str, server_ip: &str, extra: &[&str]) -> Result<Value> {
    let mut args = vec!["iperf3", "-c", server_ip, "-p", "5201", "-t", SECONDS, "-J"];
    args.extend_from_slice(extra);
    // The server may need a moment to listen; iperf3 then reports an
    // "error" in its JSON (and does not always exit non-zero).
    wait_until(Duration::from_secs(10), "iperf3 to run", || {
        let out = ns_cmd(ns, &args).output()?;
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        Ok(
            (out.status.success() && v.get("error").is_none() && v.get("end").is_some())
                .then_some(v),
        )
    })
}

pub(crate) fn rtt_us(ns: &str, ip: &str) -> Result<f64> {
    let out = ns_cmd(ns, &["ping", "-q", "-c", "50", "-i", "0.01", ip]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // rtt min/avg/max/mdev = 0.030/0.045/0.090/0.010 ms
    let stats = text
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .with_context(|| format!("ping output: {text}"))?;
    let avg = stats
        .split('=')
        .nth(1)
        .and_then(|v| v.trim().split('/').nth(1))
        .context("ping avg")?;
    Ok(avg.parse::<f64>()? * 1000.0)
}

pub(crate) fn measure(client_ns: &str, server_ns: &str, server_ip: &str) -> Result<Figures> {
    let _server = Server::start(server_ns)?;
    let tcp1 = iperf(client_ns, server_ip, &[])?;
    let tcp4 = iperf(client_ns, server_ip, &["-P", "4"])?;
    let udp = iperf(client_ns, server_ip, &["-u", "-l", "64", "-b", "0"])?;
    let bps = |v: &Value| {
        v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0)
    };
    let sum = &udp["end"]["sum"];
    let packets =
        sum["packets"].as_f64().unwrap_or(0.0) - sum["lost_packets"].as_f64().unwrap_or(0.0);
    let secs = sum["seconds"].as_f64().unwrap_or(1.0);
    Ok(Figures {
        tcp1_gbps: bps(&tcp1) / 1e9,
        tcp4_gbps: bps(&tcp4) / 1e9,
        udp64_pps: packets / secs,
        rtt_us: rtt_us(client_ns, server_ip)?,
    })
}

fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit(')').next().context("stat format")?;
    let f: Vec<&str> = after.split_whitespace().collect();
    // fields after the command: state is index 0, utime 11, stime 12
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

/// Runs the data-plane benchmark and prints a table.
/// CPU seconds both agents spend per GB of one TCP stream from `client_ns`
/// to an iperf3 server in `server_ns`.
pub(crate) fn weaver_cpu_per_gb(
    hosts: &[&Host],
    client_ns: &str,
    server_ns: &str,
    server_ip: &str,
) -> Result<f64> {
    let pids = hosts
        .iter()
        .map(|h| {
            h.pid(WEAVER)
                .with_context(|| format!("weaver on {}", h.name()))
        })
        .collect::<Result<Vec<_>>>()?;
    let ticks = || pids.iter().map(|p| cpu_ticks(*p)).sum::<Result<u64>>();
    let before = ticks()?;
    let server = Server::start(server_ns)?;
    let tcp1 = iperf(client_ns, server_ip, &[])?;
    let after = ticks()?;
    drop(server);
    let bytes = tcp1["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0);
    let ticks_per_sec = 100.0; // USER_HZ on Linux
    Ok((after - before) as f64 / ticks_per_sec / (bytes / 1e9).max(1e-9))
}

pub(crate) fn bench() -> Result<()> {
    if Command::new("iperf3").arg("--version").output().is_err() {
        bail!("iperf3 is not installed (make deps installs it)");
    }
    let bed = TestBed::new(Topology::Segment(2))?;
    let (h1, h2) = (bed.host(1), bed.host(2));

    // veth: the underlay itself
    let veth = measure(h1.netns(), h2.netns(), &h2.addr().to_string())?;

    // kernel VXLAN between the two hosts
    for (h, other, ip) in [(h1, h2, "10.9.0.1/24"), (h2, h1, "10.9.0.2/24")] {
        let remote = other.addr().to_string();
        h.run(
            "ip",
            &[
                "link", "add", "vx0", "type", "vxlan", "id", "42", "remote", &remote, "dstport",
                "4789", "dev", "ul0",
            ],
        )?;
        h.run("ip", &["addr", "add", ip, "dev", "vx0"])?;
        h.run("ip", &["link", "set", "vx0", "up"])?;
    }
    let vxlan = measure(h1.netns(), h2.netns(), "10.9.0.2")?;

    // the sleeve, pod to pod (the fast path off: `weave-bench fastdp` measures it)
    let (a, b) = start_sleeve(&bed, &["--no-fastdp"])?;
    let pids = [
        h1.pid(WEAVER).context("weaver 1")?,
        h2.pid(WEAVER).context("weaver 2")?,
    ];
    let cpu_per_gb = weaver_cpu_per_gb(&[h1, h2], &a, &b, "10.2.1.2")?;
    let sleeve = measure(&a, &b, "10.2.1.2")?;
    let peak_rss = pids
        .iter()
        .map(|p| super::proc_status_kib(*p, "VmHWM"))
        .collect::<Result<Vec<_>>>()?;

    // recovery: a heal after a 10 s cut (control connections time out), and
    // a kill -9 plus restart of one agent; time until pods talk again
    let time_to_ping = |what: &str| -> Result<Duration> {
        let t0 = std::time::Instant::now();
        wait_until(Duration::from_secs(120), what, || {
            Ok(in_pod(&a, "ping", &["-c", "1", "-W", "1", "10.2.1.2"])
                .is_ok()
                .then_some(()))
        })?;
        Ok(t0.elapsed())
    };
    bed.cut(1, 2)?;
    std::thread::sleep(Duration::from_secs(10));
    bed.restore(1, 2)?;
    let heal = time_to_ping("pods to talk after the heal")?;
    h1.kill(WEAVER)?;
    start_weaver(h1, &[], &["--no-fastdp"])?;
    let restart = time_to_ping("pods to talk after the restart")?;

    // the encrypted sleeve: both agents restarted with a password; the
    // pods and the bridge stay as they are
    let password = ["--password", "bench-password-not-secret"];
    for h in [h1, h2] {
        h.kill(WEAVER)?;
    }
    start_weaver(h1, &[], &password)?;
    start_weaver(h2, &[peer_addr(h1)], &password)?;
    wait_for_mesh(h1, &["h1", "h2"], 1, Duration::from_secs(20))?;
    time_to_ping("pods to talk over the encrypted sleeve")?;
    let encrypted_cpu_per_gb = weaver_cpu_per_gb(&[h1, h2], &a, &b, "10.2.1.2")?;
    let encrypted = measure(&a, &b, "10.2.1.2")?;
    let mut sealed_drops = Vec::new();
    for h in [h1, h2] {
        if let Some(s) = weave_e2e::weave::report(h)?.sleeve {
            sealed_drops.push(format!("{}: {:?}", h.name(), s.drops));
        }
    }

    println!();
    println!("# weave bench: data plane, 2 hosts, iperf3 -t {SECONDS}");
    println!();
    println!("| mode | TCP 1 stream | TCP 4 streams | UDP 64 B | ping RTT |");
    println!("|---|---|---|---|---|");
    for (name, f) in [
        ("veth (native)", veth),
        ("kernel vxlan", vxlan),
        ("sleeve", sleeve),
        ("sleeve, encrypted", encrypted),
    ] {
        println!(
            "| {name} | {:.2} Gbit/s ({:.3}×) | {:.2} Gbit/s ({:.3}×) | {:.0} kpps ({:.3}×) | {:.0} µs (+{:.0} µs) |",
            f.tcp1_gbps,
            f.tcp1_gbps / veth.tcp1_gbps,
            f.tcp4_gbps,
            f.tcp4_gbps / veth.tcp4_gbps,
            f.udp64_pps / 1e3,
            f.udp64_pps / veth.udp64_pps,
            f.rtt_us,
            f.rtt_us - veth.rtt_us
        );
    }
    println!();
    println!(
        "weaver CPU: {cpu_per_gb:.2} s per GB (both ends, TCP 1 stream; encrypted {encrypted_cpu_per_gb:.2} s); peak RSS {:.1} / {:.1} MiB",
        peak_rss[0] as f64 / 1024.0,
        peak_rss[1] as f64 / 1024.0
    );
    println!(
        "recovery: traffic back {:.2} s after a 10 s cut is restored (goal ≤ 3 s), {:.2} s after a killed agent's API is up again (goal ≤ 2 s)",
        heal.as_secs_f64(),
        restart.as_secs_f64()
    );
    println!(
        "encrypted sleeve drops after its run: {}",
        sealed_drops.join("; ")
    );
    println!(
        "goals: sleeve TCP 1 stream ≥ 0.20× veth, UDP-64 ≥ 0.30× veth, RTT ≤ veth + 100 µs, peak RSS ≤ 32 MiB; encrypted sleeve TCP 1 stream ≥ 0.12× veth"
    );
    Ok(())
}

/// Starts `weaver` with `extra` flags on both hosts of `bed` and attaches
/// a pod to each (10.2.1.1 on h1, 10.2.1.2 on h2); returns their namespaces
/// once they talk.
pub(crate) fn start_sleeve(bed: &TestBed, extra: &[&str]) -> Result<(String, String)> {
    let h1 = bed.host(1);
    start_weaver(h1, &[], extra)?;
    start_weaver(bed.host(2), &[peer_addr(h1)], extra)?;
    wait_for_mesh(h1, &["h1", "h2"], 1, Duration::from_secs(20))?;
    let a = attach_pod(bed, 1, "a", "10.2.1.1/24")?;
    let b = attach_pod(bed, 2, "b", "10.2.1.2/24")?;
    wait_until(Duration::from_secs(10), "pods to talk", || {
        Ok(pings(&a, "10.2.1.2").then_some(()))
    })?;
    Ok((a, b))
}

/// `weave-bench rtt [FLAGS...]`: only the ping RTT, veth against the
/// sleeve, over several rounds (the sleeve's RTT depends much on whether
/// the VM's CPUs were asleep). Each argument is one set of extra `weaver`
/// flags (space-separated) measured on its own pair of hosts; rounds go
/// through the sets in turn so they see the same machine. With `--hold`
/// the hosts stay up until standard input closes.
pub(crate) fn rtt_bench(sets: &[String], hold: bool) -> Result<()> {
    let sets: Vec<String> = if sets.is_empty() {
        vec![String::new()]
    } else {
        sets.to_vec()
    };
    let mut beds = Vec::new();
    for set in &sets {
        let extra: Vec<&str> = set.split_whitespace().collect();
        let bed = TestBed::new(Topology::Segment(2))?;
        let (a, _) = start_sleeve(&bed, &extra)?;
        beds.push((bed, a));
    }
    const ROUNDS: usize = 9;
    // per set: (veth, sleeve, sleeve − veth) of each round
    let mut rounds = vec![Vec::new(); sets.len()];
    for _ in 0..ROUNDS {
        for ((bed, a), rounds) in beds.iter().zip(rounds.iter_mut()) {
            let veth = rtt_us(bed.host(1).netns(), &bed.host(2).addr().to_string())?;
            let sleeve = rtt_us(a, "10.2.1.2")?;
            rounds.push((veth, sleeve, sleeve - veth));
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    println!(
        "| weaver flags | veth | sleeve | sleeve − veth (median of {ROUNDS} rounds) | min … max |"
    );
    println!("|---|---|---|---|---|");
    for (set, r) in sets.iter().zip(rounds) {
        let (veth, ..) = median(r.iter().map(|x| x.0).collect());
        let (sleeve, ..) = median(r.iter().map(|x| x.1).collect());
        let (added, low, high) = median(r.iter().map(|x| x.2).collect());
        println!(
            "| {} | {veth:.0} µs | {sleeve:.0} µs | +{added:.0} µs | +{low:.0} … +{high:.0} µs |",
            if set.is_empty() { "(defaults)" } else { set },
        );
    }
    if hold {
        for (bed, _) in &beds {
            println!(
                "holding: hosts {} {}",
                bed.host(1).netns(),
                bed.host(2).netns()
            );
        }
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink)? > 0 {}
    }
    Ok(())
}
