// SPDX-License-Identifier: Apache-2.0
//! `weave-bench npc`: NetworkPolicy figures.
//!
//! - compile + apply: a synthetic cluster (50 namespaces, pods spread over 50 nodes, this
//!   node holding every 50th pod) with 100 or 1,000 policies over 1,000 or 5,000 pods is
//!   compiled with `weave_npc::compile` and applied with real `nft` inside a test-bed host;
//!   also the incremental update after one pod is relabelled (the pod fed to the kept
//!   `Compiled`, element changes sent). Median of 3.
//! - latency: the real `weave-npc` watches the API stub holding such a cluster; a new local
//!   pod is published and the time until its address is in the kernel's `local-pods` set
//!   (from then on it is reachable) is measured by polling `nft`, 40 times.
//! - throughput: iperf3 between two pods on the bridge with no policy and with 1,000
//!   policies installed (the server selected by every one of them), as a ratio; the two
//!   modes are measured back to back in alternating order over 9 rounds; the median of the
//!   rounds' ratios is the figure (medians and best runs are shown too).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{json, Value};
use weave_e2e::kube_stub::Kind;
use weave_e2e::npc::{PolicyBed, NODE};
use weave_e2e::{TestBed, Topology};
use weave_npc::{compile, NodeConfig, Snapshot};

/// Namespaces of the synthetic cluster.
const NAMESPACES: usize = 50;
/// One pod in this many is on the benchmarked node.
const NODES: usize = 50;

/// Namespace `i` as JSON.
fn namespace(i: usize) -> Value {
    json!({"metadata": {"name": format!("ns{i}"), "labels": {"team": format!("t{}", i % 5)}}})
}

/// Pod `k` as JSON; every `NODES`th pod is on `node`.
fn pod(k: usize, node: &str) -> Value {
    let ip =
        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 33, 0, 0)) + u32::try_from(k).unwrap_or(0) + 1);
    let role = ["client", "server", "db"][k % 3];
    json!({
        "metadata": {"name": format!("pod{k}"), "namespace": format!("ns{}", k % NAMESPACES),
                     "labels": {"app": format!("app{}", k % 20), "role": role}},
        "spec": {"nodeName": if k % NODES == 0 { node.to_string() } else { format!("node{}", k % NODES) },
                 "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080 + (k % 3)}]}]},
        "status": {"phase": "Running", "podIP": ip.to_string()}
    })
}

/// Policy `i` as JSON: a representative mix of selectors, named ports, ranges and blocks.
fn policy(i: usize) -> Value {
    let mut spec = json!({
        "podSelector": {"matchLabels": {"app": format!("app{}", i % 20)}},
        "ingress": [
            {"from": [{"podSelector": {"matchLabels": {"role": "client"}}},
                      {"namespaceSelector": {"matchLabels": {"team": format!("t{}", i % 5)}},
                       "podSelector": {"matchExpressions": [{"key": "role", "operator": "In", "values": ["db", "server"]}]}}],
             "ports": [{"port": 80}, {"port": "http"}]}
        ]
    });
    if i % 4 == 0 {
        spec["egress"] = json!([{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.32.0.0/16"]}}],
                                 "ports": [{"port": 443}, {"port": 30000, "endPort": 32767, "protocol": "UDP"}]}]);
    }
    if i % 10 == 0 {
        spec["ingress"][0]["from"] = json!([{"namespaceSelector": {}}]);
    }
    json!({"metadata": {"name": format!("pol{i}"), "namespace": format!("ns{}", i % NAMESPACES)}, "spec": spec})
}

/// The synthetic snapshot.
fn snapshot(policies: usize, pods: usize) -> Result<Snapshot> {
    Ok(Snapshot {
        pods: (0..pods)
            .map(|k| serde_json::from_value::<Pod>(pod(k, "local")))
            .collect::<Result<_, _>>()?,
        namespaces: (0..NAMESPACES)
            .map(|i| serde_json::from_value::<Namespace>(namespace(i)))
            .collect::<Result<_, _>>()?,
        policies: (0..policies)
            .map(|i| serde_json::from_value::<NetworkPolicy>(policy(i)))
            .collect::<Result<_, _>>()?,
        ..Snapshot::default()
    })
}

/// Applies a script with `nft -f -` in `host`.
fn nft_apply(bed: &TestBed, script: &str) -> Result<()> {
    bed.host(1).run_with_input("nft", &["-f", "-"], script)?;
    Ok(())
}

/// Median of three runs of `f`.
fn median3(mut f: impl FnMut() -> Result<Duration>) -> Result<Duration> {
    let mut v = [f()?, f()?, f()?];
    v.sort();
    Ok(v[1])
}

/// Milliseconds.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs all three parts.
pub(crate) fn bench() -> Result<()> {
    println!("# weave bench: network policy (weave-npc)");
    println!();
    // `NPC_BENCH_PARTS=compile,latency,throughput` (default all) picks parts; the older
    // `NPC_BENCH_SKIP_COMPILE` still skips the first.
    let parts =
        std::env::var("NPC_BENCH_PARTS").unwrap_or_else(|_| "compile,latency,throughput".into());
    let want = |part: &str| parts.split(',').any(|p| p.trim() == part);
    if want("compile") && std::env::var_os("NPC_BENCH_SKIP_COMPILE").is_none() {
        compile_apply()?;
    }
    if want("latency") {
        latency()?;
    }
    if want("throughput") {
        throughput()?;
    }
    Ok(())
}

/// Compile and apply times.
fn compile_apply() -> Result<()> {
    let bed = TestBed::new(Topology::Links {
        hosts: 1,
        links: Vec::new(),
    })?;
    let node = NodeConfig {
        node_name: "local".into(),
        ..NodeConfig::default()
    };
    println!("| policies | pods | rules | compile | full apply (nft) | compile + apply (goal ≤ 100 ms) | pod update (incremental + nft) | policy change (incremental + nft, goal ≤ 20 ms) |");
    println!("|---|---|---|---|---|---|---|---|");
    for (policies, pods) in [(100, 1000), (1000, 1000), (100, 5000), (1000, 5000)] {
        let mut snap = snapshot(policies, pods)?;
        let mut rules = 0;
        let compile_time = median3(|| {
            let t = Instant::now();
            let c = compile(&snap, &node);
            rules = c.rule_count();
            Ok(t.elapsed())
        })?;
        let mut applied = compile(&snap, &node);
        if let Some(dir) = std::env::var_os("NPC_BENCH_DUMP") {
            let path = std::path::Path::new(&dir).join(format!("{policies}x{pods}.json"));
            std::fs::write(path.with_extension("nft"), applied.full())?;
        }
        let apply_time = median3(|| {
            let t = Instant::now();
            nft_apply(&bed, &applied.full())?;
            Ok(t.elapsed())
        })?;
        let mut flip = 0usize;
        let update_time = median3(|| {
            // Relabel a remote pod (k = 1 is on another node): only sets change.
            flip += 1;
            let role = if flip % 2 == 1 { "db" } else { "client" };
            snap.pods[1]
                .metadata
                .labels
                .get_or_insert_default()
                .insert("role".into(), role.into());
            let t = Instant::now();
            applied.set_pod(&snap.pods[1]);
            let script = applied.update();
            nft_apply(&bed, &script)?;
            Ok(t.elapsed())
        })?;
        // One policy changes its allowed port (and back): its chain and the chains of the
        // local pods it selects are rewritten; nothing else.
        let mut port = 0u16;
        let mut changed = snap.policies[7].clone();
        let policy_time = median3(|| {
            port = if port == 8443 { 9443 } else { 8443 };
            let mut spec = serde_json::to_value(&changed.spec)?;
            spec["ingress"][0]["ports"] = json!([{"port": port}]);
            changed.spec = serde_json::from_value(spec)?;
            let t = Instant::now();
            applied.set_policy(&changed);
            let script = applied.update();
            nft_apply(&bed, &script)?;
            Ok(t.elapsed())
        })?;
        let total = compile_time + apply_time;
        let goal = |d: Duration, g: f64| {
            if policies == 1000 && pods == 5000 {
                format!(" ({:.2}× of goal)", ms(d) / g)
            } else {
                String::new()
            }
        };
        println!(
            "| {policies} | {pods} | {rules} | {:.0} ms | {:.0} ms | {:.0} ms{} | {:.0} ms | {:.0} ms{} |",
            ms(compile_time),
            ms(apply_time),
            ms(total),
            goal(total, 100.0),
            ms(update_time),
            ms(policy_time),
            goal(policy_time, 20.0),
        );
    }
    println!();
    Ok(())
}

/// Latency from a pod appearing in the API to its address being programmed.
fn latency() -> Result<()> {
    let pb = PolicyBed::new()?;
    for (policies, pods) in [(100, 1000), (1000, 5000)] {
        for i in 0..NAMESPACES {
            pb.stub.apply(Kind::Namespace, namespace(i));
        }
        for k in 0..pods {
            pb.stub.apply(Kind::Pod, pod(k, "elsewhere"));
        }
        for i in 0..policies {
            pb.stub.apply(Kind::NetworkPolicy, policy(i));
        }
        let host = pb.bed.host(1);
        // Sample 0 is a warm-up, not counted: it waits until weave-npc has caught up with
        // the bulk load above, so the samples measure a new pod in a settled cluster.
        let mut samples = Vec::new();
        for n in 0..41u32 {
            let ip = Ipv4Addr::new(
                10,
                34,
                u8::try_from(policies / 100).unwrap_or(0),
                u8::try_from(n + 1).unwrap_or(0),
            );
            let mut p = pod(100_000 + n as usize, NODE);
            p["metadata"]["name"] = json!(format!("new{policies}-{n}"));
            p["status"]["podIP"] = json!(ip.to_string());
            p["spec"]["nodeName"] = json!(NODE);
            let t = Instant::now();
            pb.stub.apply(Kind::Pod, p);
            let limit = if n == 0 { 120 } else { 30 };
            loop {
                let set = host.run("nft", &["list", "set", "bridge", "weave-npc", "local-pods"])?;
                if set.contains(&ip.to_string()) {
                    break;
                }
                if t.elapsed() > Duration::from_secs(limit) {
                    let log = host.log(weave_e2e::npc::NPC);
                    let tail: Vec<&str> = log.lines().rev().take(15).collect();
                    anyhow::bail!(
                        "{ip} not programmed within {limit} s; set: {set}\nweave-npc log, newest first:\n{}",
                        tail.join("\n")
                    );
                }
            }
            if n > 0 {
                samples.push(t.elapsed());
            }
        }
        samples.sort();
        let p50 = samples[samples.len() / 2];
        let p99 = samples[samples.len() * 99 / 100];
        println!(
            "latency API → rules live for a new local pod, {policies} policies / {pods} pods: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (goal p99 ≤ 100 ms: {:.2}× of goal)",
            ms(p50),
            ms(p99),
            ms(*samples.last().context("samples")?),
            ms(p99) / 100.0
        );
    }
    println!();
    Ok(())
}

/// iperf3 throughput between x/a and x/b, 0 vs 1,000 policies.
fn throughput() -> Result<()> {
    let pb = PolicyBed::new()?;
    let server = pb.pod("x", "b").clone();
    let client = pb.pod("x", "a").clone();
    let host = pb.bed.host(1);
    host.spawn(
        "iperf3",
        std::path::Path::new("ip"),
        &[
            "netns".into(),
            "exec".into(),
            server.netns.clone(),
            "iperf3".into(),
            "-s".into(),
            "-p".into(),
            "5201".into(),
        ],
        &[],
    )?;
    let run = || -> Result<f64> {
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &client.netns,
                "iperf3",
                "-c",
                &server.ip.to_string(),
                "-p",
                "5201",
                "-t",
                "3",
                "-J",
            ])
            .output()?;
        ensure!(
            out.status.success(),
            "iperf3: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout)?;
        v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .context("iperf3 result")
    };
    weave_e2e::wait_until(Duration::from_secs(10), "iperf3 server", || Ok(run().ok()))?;
    // Both modes interleaved, ROUNDS runs each, so slow phases of this shared machine hit
    // both alike; also reported as medians and as best runs (other load only ever slows a
    // run down). The policies are installed and removed through the API each round, and
    // weave-npc runs throughout.
    const ROUNDS: usize = 9;
    let rules = || -> Result<f64> {
        Ok(pb
            .metrics()?
            .lines()
            .find_map(|l| l.strip_prefix("weavenpc_rules "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0))
    };
    let remove = || -> Result<()> {
        for i in 0..1000 {
            pb.delete_policy("x", &format!("p{i}"));
        }
        weave_e2e::wait_until(Duration::from_secs(60), "policies removed", || {
            Ok((rules()? < 100.0).then_some(()))
        })?;
        weave_e2e::wait_until(Duration::from_secs(10), "client reaches", || Ok(run().ok()))
            .map(|_| ())
    };
    let install = || -> Result<()> {
        // 1,000 policies all selecting the server (namespace x), each allowing TCP 5201 from
        // a different label, the last one matching the client: the worst case for a linear chain.
        for i in 0..1000 {
            pb.apply_policy("x", &format!("p{i}"), json!({
                "podSelector": {"matchLabels": {"pod": "b"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": if i == 999 { "a".to_string() } else { format!("nobody{i}") }}}}],
                             "ports": [{"port": 5201}]}]
            }));
        }
        weave_e2e::wait_until(Duration::from_secs(60), "1,000 policies applied", || {
            Ok((rules()? >= 1000.0).then_some(()))
        })?;
        weave_e2e::wait_until(Duration::from_secs(10), "client allowed", || Ok(run().ok()))
            .map(|_| ())
    };
    // Each round measures both modes back to back, in alternating order (none then with,
    // with then none, ...), so drift in the machine's load cancels; its ratio is one sample.
    let mut none = Vec::new();
    let mut with = Vec::new();
    let mut ratios = Vec::new();
    for round in 0..ROUNDS {
        let (n, w) = if round % 2 == 0 {
            let n = run()?;
            install()?;
            (n, run()?)
        } else {
            let w = run()?;
            remove()?;
            (run()?, w)
        };
        none.push(n);
        with.push(w);
        ratios.push(w / n);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (none_m, with_m) = (median(&mut none), median(&mut with));
    let ratio_m = median(&mut ratios);
    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let (none_b, with_b) = (best(&none), best(&with));
    let gbit = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{:.2}", x / 1e9))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "pod-to-pod TCP throughput (iperf3 3 s, same node, {ROUNDS} interleaved rounds): no policy median {:.2} Gbit/s, best {:.2} [{}]; 1,000 policies median {:.2} Gbit/s, best {:.2} [{}]; median of the rounds' ratios {:.3}, ratio of medians {:.3}, of bests {:.3} (goal ≥ 0.95)",
        none_m / 1e9,
        none_b / 1e9,
        gbit(&none),
        with_m / 1e9,
        with_b / 1e9,
        gbit(&with),
        ratio_m,
        with_m / none_m,
        with_b / none_b
    );
    Ok(())
}
