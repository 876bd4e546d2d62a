// SPDX-License-Identifier: Apache-2.0
//! NetworkPolicy end to end on one node: the real `weave-npc` watches the API stub and
//! programs real nftables; real TCP and UDP between nine pods (namespaces x, y, z × pods a, b,
//! c, ports 80 and 81) are checked as a full 9×9 matrix after every step. Expectations are
//! written from the NetworkPolicy API reference and the upstream e2e scenarios, not from
//! weave-npc's code.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::json;
use weave_e2e::npc::{is, scenarios, PolicyBed, Probe, TestPod, NPC};
use weave_e2e::{bin, wait_until};

#[test]
fn policy_scenarios() -> Result<()> {
    scenarios(&PolicyBed::new()?)
}

#[test]
fn bad_input_restarts_and_api_outage() -> Result<()> {
    let pb = PolicyBed::new()?;
    let host = pb.bed.host(1);

    // Invalid policies are reported and skipped; a valid one in the same namespace works,
    // and the pods an invalid policy selects stay isolated (never open by accident).
    pb.apply_policy(
        "x",
        "bad-proto",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"ports": [{"protocol": "ICMP"}]}]}),
    );
    pb.apply_policy(
        "x",
        "bad-cidr",
        json!({"podSelector": {"matchLabels": {"pod": "b"}},
               "ingress": [{"from": [{"ipBlock": {"cidr": "10.32.0.0/33"}}]}]}),
    );
    pb.apply_policy(
        "x",
        "bad-selector",
        json!({"podSelector": {"matchExpressions": [{"key": "pod", "operator": "Near"}]}}),
    );
    pb.apply_policy(
        "x",
        "c-from-y",
        json!({"podSelector": {"matchLabels": {"pod": "c"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
    );
    let expect = |from: &TestPod, to: &TestPod, _: Probe| {
        !(is(to, "x", "a") || is(to, "x", "b")) && (!is(to, "x", "c") || from.namespace == "y")
    };
    pb.wait_matrix("invalid policies isolate, valid one allows", expect)?;
    let metrics = pb.metrics()?;
    for bad in ["x/bad-proto", "x/bad-cidr", "x/bad-selector"] {
        ensure!(
            metrics.contains(&format!("weavenpc_policy_rejected{{policy=\"{bad}\"")),
            "{bad} not reported in metrics:\n{metrics}"
        );
    }
    ensure!(
        host.log(NPC).contains("policy rejected"),
        "rejections are logged"
    );
    ensure!(
        metrics.contains(
            "weavenpc_blocked_packets_total{namespace=\"x\",pod=\"a\",direction=\"ingress\"}"
        ) && !metrics.contains(
            "weavenpc_blocked_packets_total{namespace=\"x\",pod=\"a\",direction=\"ingress\"} 0\n"
        ),
        "drops to x/a are counted:\n{metrics}"
    );

    // The API goes away; rules stay in force; changes made meanwhile arrive afterwards.
    pb.stub.set_down(true);
    pb.wait_matrix("rules stay while the API is down", expect)?;
    pb.delete_policy("x", "bad-proto");
    pb.delete_policy("x", "bad-cidr");
    pb.stub.set_down(false);
    pb.wait_matrix("changes made during the outage arrive", |from, to, _| {
        !is(to, "x", "c") || from.namespace == "y"
    })?;

    // Crash: the ruleset stays in force without weave-npc; a restart takes over seamlessly.
    host.kill(NPC)?;
    let after_crash =
        |from: &TestPod, to: &TestPod, _: Probe| !is(to, "x", "c") || from.namespace == "y";
    pb.wait_matrix("rules survive a crash", after_crash)?;
    pb.delete_policy("x", "c-from-y");
    pb.apply_policy(
        "y",
        "deny",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    );
    let lists_before = pb.stub.requests(weave_e2e::kube_stub::Kind::Pod, false);
    let args: Vec<String> = [
        "--kubeconfig",
        &host.dir().join("kubeconfig").display().to_string(),
        "--node-name",
        "h1",
        "--metrics-addr",
        "off",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    host.spawn(NPC, &bin(NPC)?, &args, &[])?;
    pb.wait_matrix("restarted weave-npc applies what changed", |_, to, _| {
        to.namespace != "y"
    })?;
    ensure!(
        pb.stub.requests(weave_e2e::kube_stub::Kind::Pod, false) > lists_before,
        "the restart relisted pods"
    );

    // --cleanup removes our two tables and nothing else.
    host.stop(NPC)?;
    host.run("nft", &["add", "table", "inet", "someone-else"])?;
    host.run(bin(NPC)?.to_str().context("utf-8 path")?, &["--cleanup"])?;
    let tables = host.run("nft", &["list", "tables"])?;
    ensure!(!tables.contains("weave-npc"), "cleanup left: {tables}");
    ensure!(
        tables.contains("someone-else"),
        "cleanup removed a foreign table: {tables}"
    );
    wait_until(Duration::from_secs(10), "traffic after cleanup", || {
        Ok(pb
            .matrix()?
            .iter()
            .flatten()
            .flatten()
            .all(|b| *b)
            .then_some(()))
    })?;
    Ok(())
}
