// SPDX-License-Identifier: Apache-2.0
//! weaveDNS figures, against dnsmasq serving the same names in the same
//! run, each server pinned to one core (cpu 0) and `dnsperf` on another
//! (cpu 1), all in one namespace host:
//!
//! - throughput: `dnsperf` for 5 s with 100 queries outstanding, qps;
//! - latency: `dnsperf -v` at a fixed 2,000 qps for 5 s, p50/p99 of each
//!   query's latency as dnsperf reports it;
//! - for 10,000 local names (`nNNNN.weave.local`), and for names forwarded
//!   to dnsmasq as upstream, against asking dnsmasq directly;
//! - agent RSS with 10,000 entries, against an agent with `--no-dns`.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use weave_api::{DnsAddRequest, DnsLookupReply, DnsLookupRequest};
use weave_e2e::weave::{start_weaver, WEAVER};
use weave_e2e::{wait_until, Host, TestBed, Topology};

use crate::{client, proc_status_kib};

const NAMES: u32 = 10_000;
const DNSMASQ: &str = "dnsmasq";
const PORT: u16 = 5353;

fn addr_of(i: u32) -> String {
    format!("10.40.{}.{}", i / 250, i % 250 + 1)
}

struct Perf {
    qps: f64,
    p50: Duration,
    p99: Duration,
}

/// `dnsperf` on cpu 1 against `server:port` with the queries in `data`.
fn dnsperf(h: &Host, server: &str, port: u16, data: &Path) -> Result<Perf> {
    let data = data.to_str().context("utf-8 path")?;
    let port = port.to_string();
    let base = [
        "-c", "1", "dnsperf", "-s", server, "-p", &port, "-d", data, "-l", "5",
    ];
    let mut args = base.to_vec();
    args.extend(["-q", "100"]);
    let out = h.run("taskset", &args)?;
    let qps: f64 = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Queries per second:"))
        .context("dnsperf printed no qps")?
        .trim()
        .parse()?;
    let lost = out
        .lines()
        .find(|l| l.trim().starts_with("Queries lost:"))
        .unwrap_or("");
    if !lost.contains(" 0 (") {
        eprintln!("dnsperf {server}:{port}: {}", lost.trim());
    }
    let mut args = base.to_vec();
    args.extend(["-q", "10", "-Q", "2000", "-v"]);
    let out = h.run("taskset", &args)?;
    // `> NOERROR n1.weave.local A 0.000123`
    let mut lat: Vec<Duration> = out
        .lines()
        .filter(|l| l.starts_with("> "))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(Duration::from_secs_f64)
        .collect();
    if lat.len() < 1000 {
        bail!("dnsperf -v reported {} latencies", lat.len());
    }
    lat.sort();
    Ok(Perf {
        qps,
        p50: crate::percentile(&lat, 50),
        p99: crate::percentile(&lat, 99),
    })
}

fn pin(h: &Host, name: &str, all_threads: bool) -> Result<()> {
    let pid = h
        .pid(name)
        .with_context(|| format!("{name} runs"))?
        .to_string();
    let mut args = vec!["-p", "-c", "0", pid.as_str()];
    if all_threads {
        args.insert(0, "-a");
    }
    h.run("taskset", &args)?;
    Ok(())
}

fn row(what: &str, p: &Perf) {
    println!(
        "| {what} | {:.0} | {:.3} ms | {:.3} ms |",
        p.qps,
        p.p50.as_secs_f64() * 1e3,
        p.p99.as_secs_f64() * 1e3
    );
}

pub(crate) fn bench() -> Result<()> {
    println!();
    println!("# weave bench: weaveDNS against dnsmasq (one core each, dnsperf on another)");
    println!();
    let bed = TestBed::new(Topology::Segment(2))?;
    let (h1, h2) = (bed.host(1), bed.host(2));
    let ip = h1.addr().to_string();
    let dir = bed.run_dir();
    // dnsmasq: the same names from a hosts file, and a zone of its own for
    // forwarded names.
    let hosts: String = (0..NAMES)
        .map(|i| format!("{} n{i}.weave.local\n", addr_of(i)))
        .collect();
    std::fs::write(dir.join("hosts"), hosts)?;
    let resolv = dir.join("resolv.conf");
    std::fs::write(&resolv, format!("nameserver {ip}\n"))?;
    h1.spawn(
        DNSMASQ,
        Path::new("/usr/sbin/dnsmasq"),
        &[
            "--keep-in-foreground".into(),
            "--conf-file=/dev/null".into(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            format!("--addn-hosts={}", dir.join("hosts").display()),
            "--bind-interfaces".into(),
            format!("--listen-address={ip}"),
            "--except-interface=lo".into(),
            "--pid-file=".into(),
            "--user=root".into(),
            "--cache-size=10000".into(),
            "--local-ttl=1".into(),
            "--address=/outside.test/192.0.2.7".into(),
        ],
        &[],
    )?;
    let listen = format!("{ip}:{PORT}");
    let resolv_s = resolv.display().to_string();
    start_weaver(
        h1,
        &[],
        &["--dns-listen-address", &listen, "--resolv-conf", &resolv_s],
    )?;
    start_weaver(h2, &[], &["--no-dns"])?;
    std::thread::sleep(Duration::from_secs(2));
    let rss = |h: &Host| -> Result<u64> {
        proc_status_kib(h.pid(WEAVER).context("weaver runs")?, "VmRSS")
    };
    let rss_none = rss(h2)?;
    let rss_empty = rss(h1)?;
    let c = client(h1);
    for i in 0..NAMES {
        let _: serde_json::Value = c.post_json(
            "/dns/add",
            &DnsAddRequest {
                name: format!("n{i}"),
                addresses: vec![addr_of(i).parse()?],
                id: Some(format!("bench-{i}")),
            },
        )?;
    }
    wait_until(Duration::from_secs(10), "the last name", || {
        let r: DnsLookupReply = c.post_json(
            "/dns/lookup",
            &DnsLookupRequest {
                name: format!("n{}", NAMES - 1),
            },
        )?;
        Ok((!r.addresses.is_empty()).then_some(()))
    })?;
    std::thread::sleep(Duration::from_secs(2));
    let rss_full = rss(h1)?;
    pin(h1, WEAVER, true)?;
    pin(h1, DNSMASQ, false)?;
    let local = dir.join("local.txt");
    std::fs::write(
        &local,
        (0..NAMES)
            .map(|i| format!("n{i}.weave.local A\n"))
            .collect::<String>(),
    )?;
    let fwd = dir.join("forwarded.txt");
    std::fs::write(
        &fwd,
        (0..NAMES)
            .map(|i| format!("w{i}.outside.test A\n"))
            .collect::<String>(),
    )?;
    let weave_local = dnsperf(h1, &ip, PORT, &local)?;
    let dnsmasq_local = dnsperf(h1, &ip, 53, &local)?;
    let weave_fwd = dnsperf(h1, &ip, PORT, &fwd)?;
    let direct = dnsperf(h1, &ip, 53, &fwd)?;
    println!("| server, names | qps (100 outstanding) | p50 at 2,000 qps | p99 at 2,000 qps |");
    println!("|---|---|---|---|");
    row("weaveDNS, 10,000 local names", &weave_local);
    row("dnsmasq, the same names", &dnsmasq_local);
    row("weaveDNS, forwarded to dnsmasq", &weave_fwd);
    row("dnsmasq asked directly", &direct);
    println!();
    println!(
        "local names: weaveDNS qps {:.2}× dnsmasq's (goal ≥ 1), p99 {:.3} ms (goal ≤ 1 ms)",
        weave_local.qps / dnsmasq_local.qps,
        weave_local.p99.as_secs_f64() * 1e3
    );
    println!(
        "forwarding adds p50 {:+.3} ms, p99 {:+.3} ms over asking the upstream directly (goal ≤ 0.2 ms)",
        (weave_fwd.p50.as_secs_f64() - direct.p50.as_secs_f64()) * 1e3,
        (weave_fwd.p99.as_secs_f64() - direct.p99.as_secs_f64()) * 1e3
    );
    println!(
        "agent RSS: --no-dns {:.1} MiB, DNS with no entries {:.1} MiB, with {NAMES} entries {:.1} MiB: {:+.1} MiB over --no-dns (goal ≤ 8 MiB)",
        rss_none as f64 / 1024.0,
        rss_empty as f64 / 1024.0,
        rss_full as f64 / 1024.0,
        (rss_full as f64 - rss_none as f64) / 1024.0
    );
    Ok(())
}
