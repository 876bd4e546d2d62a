// SPDX-License-Identifier: Apache-2.0
//! CNI plugin figures: ADD and DEL latency of `weave-net` (including the
//! IPAM round trip to `weaver`) over 200 sequential pods and 50 in
//! parallel, and the same for the reference `bridge` + `host-local` plugins
//! (Debian's containernetworking-plugins) in the same run, with ratios.
//!
//! Each call is a fresh process started with `nsenter --net=HOST` from the
//! bench (so the host namespace, never the root one), timed from spawn to
//! exit; both plugins pay the same exec cost.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use weave_e2e::cni::{cni_path, netns_path, plugin_path};
use weave_e2e::weave::{api_socket, start_weaver};
use weave_e2e::{Host, TestBed, Topology};

use crate::percentile;

const SEQUENTIAL: usize = 200;
const PARALLEL: usize = 50;

struct Plugin {
    label: &'static str,
    conf: Value,
}

fn call(host: &Host, p: &Plugin, command: &str, id: &str, ns: &str) -> Result<Duration> {
    let kind = p.conf["type"].as_str().context("type")?;
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", host.netns()))
        .arg(plugin_path(kind)?)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns_path(ns))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_ARGS", "")
        .env("CNI_PATH", cni_path())
        .env("WEAVE_CNI_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let stdin = p.conf.to_string();
    let t = Instant::now();
    let mut child = cmd.spawn().context("start the plugin")?;
    child
        .stdin
        .take()
        .context("stdin piped")?
        .write_all(stdin.as_bytes())?;
    let out = child.wait_with_output()?;
    let took = t.elapsed();
    if !out.status.success() {
        bail!(
            "{} {command} {id}: {}{}",
            p.label,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(took)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[derive(Default)]
struct Figures {
    add_seq: Vec<Duration>,
    del_seq: Vec<Duration>,
    add_par: Vec<Duration>,
    del_par: Vec<Duration>,
    add_par_wall: Duration,
    del_par_wall: Duration,
}

fn measure(bed: &TestBed, p: &Plugin, tag: &str) -> Result<Figures> {
    let h1 = bed.host(1);
    let mut f = Figures::default();
    let warm = bed.add_pod_netns(1, &format!("{tag}warm"))?;
    call(h1, p, "ADD", &format!("{tag}-warm"), &warm)?;
    call(h1, p, "DEL", &format!("{tag}-warm"), &warm)?;
    let pods: Vec<String> = (0..SEQUENTIAL)
        .map(|i| bed.add_pod_netns(1, &format!("{tag}s{i}")))
        .collect::<Result<_>>()?;
    for (i, ns) in pods.iter().enumerate() {
        f.add_seq
            .push(call(h1, p, "ADD", &format!("{tag}-s{i}"), ns)?);
    }
    for (i, ns) in pods.iter().enumerate() {
        f.del_seq
            .push(call(h1, p, "DEL", &format!("{tag}-s{i}"), ns)?);
    }
    let pods: Vec<String> = (0..PARALLEL)
        .map(|i| bed.add_pod_netns(1, &format!("{tag}p{i}")))
        .collect::<Result<_>>()?;
    for (verb, lat, wall) in [
        ("ADD", &mut f.add_par, &mut f.add_par_wall),
        ("DEL", &mut f.del_par, &mut f.del_par_wall),
    ] {
        let t = Instant::now();
        let got: Vec<Duration> = std::thread::scope(|s| {
            let hs: Vec<_> = pods
                .iter()
                .enumerate()
                .map(|(i, ns)| s.spawn(move || call(h1, p, verb, &format!("{tag}-p{i}"), ns)))
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("plugin thread"))
                .collect::<Result<_>>()
        })?;
        *wall = t.elapsed();
        *lat = got;
    }
    for v in [
        &mut f.add_seq,
        &mut f.del_seq,
        &mut f.add_par,
        &mut f.del_par,
    ] {
        v.sort();
    }
    Ok(f)
}

pub(crate) fn bench() -> Result<()> {
    println!();
    println!("# weave bench: CNI plugin");
    println!();
    let bed = TestBed::new(Topology::Segment(1))?;
    let h1 = bed.host(1);
    start_weaver(h1, &[], &["--ipalloc-init", "consensus=1"])?;
    let weave = Plugin {
        label: "weave-net",
        conf: json!({"cniVersion": "1.0.0", "name": "weave", "type": "weave-net",
                     "socket": api_socket(h1)}),
    };
    let reference = Plugin {
        label: "bridge+host-local",
        conf: json!({"cniVersion": "1.0.0", "name": "ref", "type": "bridge", "bridge": "cni0",
                     "isGateway": true,
                     "ipam": {"type": "host-local", "subnet": "10.99.0.0/16",
                              "dataDir": h1.dir().join("host-local")}}),
    };
    let w = measure(&bed, &weave, "w")?;
    let r = measure(&bed, &reference, "r")?;
    println!("| measure | weave-net | bridge+host-local (reference) | ratio | goal |");
    println!("|---|---|---|---|---|");
    let row = |what: &str, a: Duration, b: Duration, goal: &str| {
        println!(
            "| {what} | {:.2} ms | {:.2} ms | {:.2}× | {goal} |",
            ms(a),
            ms(b),
            a.as_secs_f64() / b.as_secs_f64()
        );
    };
    let samples: [(&str, &[Duration], &[Duration], &str); 4] = [
        ("ADD", &w.add_seq, &r.add_seq, "200 sequential"),
        ("DEL", &w.del_seq, &r.del_seq, "200 sequential"),
        ("ADD", &w.add_par, &r.add_par, "50 parallel"),
        ("DEL", &w.del_par, &r.del_par, "50 parallel"),
    ];
    for (op, ours, theirs, how) in samples {
        for pct in [50, 99] {
            let goal = match (op, how, pct) {
                ("ADD", "200 sequential", 50) => "≤ 10 ms",
                ("ADD", "200 sequential", 99) => "≤ 30 ms",
                _ => "",
            };
            row(
                &format!("{op} p{pct}, {how}"),
                percentile(ours, pct),
                percentile(theirs, pct),
                goal,
            );
        }
    }
    row(
        "50 parallel ADDs, wall clock",
        w.add_par_wall,
        r.add_par_wall,
        "≤ 350 ms",
    );
    row(
        "50 parallel DELs, wall clock",
        w.del_par_wall,
        r.del_par_wall,
        "",
    );
    Ok(())
}
