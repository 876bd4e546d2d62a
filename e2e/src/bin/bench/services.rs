// SPDX-License-Identifier: Apache-2.0
//! `weave-bench services`: iperf3 TCP (one stream) through a `weave service export` and a
//! `weave service import` against direct pod-to-pod traffic over the same mesh, interleaved
//! in the same run; and the time from each `weave service …` command to the first answer.
//!
//! Three hosts joined by links: h1 and h2 form the mesh (fast path), h3 is outside and
//! reaches only h2. Pod a on h1, pod b on h2.
//!
//! - direct, h2 → h1: b → a, the reference of the export (the mesh in the same direction);
//! - export: h3 → h2:5201 (DNAT, masquerade) → a on h1;
//! - direct, h1 → h2: a → b, the reference of the import;
//! - import: a → h2's weave address:5202 (DNAT, masquerade) → h3:5201.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use weave_e2e::weave::{attach_allocated, start_weaver, wait_for_mesh, weave};
use weave_e2e::{wait_until, TestBed, Topology};

use super::dataplane::{iperf, Server};

/// Rounds of the interleaved comparison.
const ROUNDS: usize = 3;

/// iperf3 TCP, one stream, from `client_ns` to an iperf3 server in `server_ns` reached at
/// `addr`; Gbit/s.
fn tcp1(client_ns: &str, server_ns: &str, addr: &str, port: &str) -> Result<f64> {
    let _server = Server::start(server_ns)?;
    // The last -p wins: the front's port (the server listens on 5201).
    let v = iperf(client_ns, addr, &["-p", port])?;
    Ok(v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e9)
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

pub(crate) fn bench() -> Result<()> {
    let links = vec![(1, 2), (2, 3)];
    let bed = TestBed::new(Topology::Links { hosts: 3, links })?;
    let (h1, h2, h3) = (bed.host(1), bed.host(2), bed.host(3));
    start_weaver(h1, &[], &[])?;
    start_weaver(h2, &["10.251.0.1:6783".to_string()], &[])?;
    wait_for_mesh(h2, &["h1", "h2"], 1, Duration::from_secs(30))?;
    let (a, a_ip) = attach_allocated(&bed, 1, "a", &[])?;
    let (b, b_ip) = attach_allocated(&bed, 2, "b", &[])?;
    wait_until(Duration::from_secs(10), "pods to talk", || {
        Ok(weave_e2e::weave::pings(&b, &a_ip).then_some(()))
    })?;
    let h3_addr = "10.251.1.3";
    let h2_outside = "10.251.1.2";

    // Time to traffic: the server listens before the command, the client retries.
    let export_t = {
        let _s = Server::start(&a)?;
        let t0 = Instant::now();
        weave(h2, &["service", "export", "5201", &format!("{a_ip}:5201")])?;
        wait_for_port(h3.netns(), h2_outside, "5201")?;
        t0.elapsed()
    };
    let (import_t, front) = {
        let _s = Server::start(h3.netns())?;
        let t0 = Instant::now();
        let out = weave(
            h2,
            // 5202: the unbound export holds 5201 on all of h2's addresses, the weave one too.
            &["service", "import", "5202", &format!("{h3_addr}:5201")],
        )?;
        let front = out
            .split_whitespace()
            .nth(2)
            .and_then(|f| f.split(':').next())
            .with_context(|| format!("weave service import printed {out:?}"))?
            .to_string();
        wait_for_port(&a, &front, "5202")?;
        (t0.elapsed(), front)
    };

    // [direct h2→h1, export, direct h1→h2, import] per round, order alternating.
    let mut rows: Vec<[f64; 4]> = Vec::new();
    for round in 0..ROUNDS {
        let mut r = [0.0; 4];
        let order: [usize; 4] = if round % 2 == 0 {
            [0, 1, 2, 3]
        } else {
            [3, 2, 1, 0]
        };
        for m in order {
            r[m] = match m {
                0 => tcp1(&b, &a, &a_ip, "5201")?,
                1 => tcp1(h3.netns(), &a, h2_outside, "5201")?,
                2 => tcp1(&a, &b, &b_ip, "5201")?,
                _ => tcp1(&a, h3.netns(), &front, "5202")?,
            };
        }
        rows.push(r);
    }
    println!();
    println!(
        "# weave bench: services (export and import through the DNAT path against direct pod traffic), {ROUNDS} interleaved rounds, iperf3 TCP 1 stream (median, min … max)"
    );
    println!();
    println!("| path | Gbit/s | ratio to direct, per round |");
    println!("|---|---|---|");
    for (m, name, reference) in [
        (0, "direct pod → pod, h2 → h1", None),
        (1, "export: outside h3 → h2:5201 → pod on h1", Some(0)),
        (2, "direct pod → pod, h1 → h2", None),
        (
            3,
            "import: pod on h1 → h2's weave address:5202 → outside h3:5201",
            Some(2),
        ),
    ] {
        let (g, lo, hi) = median(rows.iter().map(|r| r[m]).collect());
        let ratio = match reference {
            Some(base) => {
                let (r, rlo, rhi) = median(rows.iter().map(|r| r[m] / r[base]).collect());
                format!("{r:.3} ({rlo:.3} … {rhi:.3})")
            }
            None => "reference".to_string(),
        };
        println!("| {name} | {g:.2} ({lo:.2} … {hi:.2}) | {ratio} |");
    }
    println!();
    println!(
        "time from the command to traffic flowing (CLI included): export {:.0} ms, import {:.0} ms",
        export_t.as_secs_f64() * 1e3,
        import_t.as_secs_f64() * 1e3
    );
    Ok(())
}

/// Waits until `ns` connects to `port` at `addr`.
fn wait_for_port(ns: &str, addr: &str, port: &str) -> Result<()> {
    wait_until(
        Duration::from_secs(20),
        "traffic through the service",
        || {
            let out = std::process::Command::new("ip")
                .args(["netns", "exec", ns, "nc", "-z", "-w", "1", addr, port])
                .output()?;
            Ok(out.status.success().then_some(()))
        },
    )
}
