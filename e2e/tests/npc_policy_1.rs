// SPDX-License-Identifier: Apache-2.0
//! NetworkPolicy end to end on one node: the real `weave-npc` watches the API stub and
//! programs real nftables; real TCP and UDP between nine pods (namespaces x, y, z × pods a, b,
//! c, ports 80 and 81) are checked as a full 9×9 matrix after every step. Expectations are
//! written from the NetworkPolicy API reference and the upstream e2e scenarios, not from
//! weave-npc's code.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::json;
use weave_e2e::npc::{PolicyBed, Probe, Proto, TestPod, NPC};
use weave_e2e::{bin, wait_until};

/// TCP/80 only.
fn tcp80(p: Probe) -> bool {
    p.proto == Proto::Tcp && p.port == 80
}

/// Whether `p` is `ns/name`.
fn is(p: &TestPod, ns: &str, name: &str) -> bool {
    p.namespace == ns && p.name == name
}

#[test]
fn policy_scenarios() -> Result<()> {
    let pb = PolicyBed::new()?;

    // Default deny ingress in x: nothing reaches x pods; other namespaces are untouched.
    pb.apply_policy(
        "x",
        "deny",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    );
    pb.wait_matrix("default deny ingress in x", |_, to, _| to.namespace != "x")?;

    // The node itself still reaches its pods (kubelet probes).
    let xa = pb.pod("x", "a").ip;
    let host_ns = pb.bed.host(1).netns().to_owned();
    let from_node = weave_e2e::in_netns(&host_ns, move || {
        Ok(std::net::TcpStream::connect_timeout(&(xa, 80).into(), Duration::from_secs(1)).is_ok())
    })?;
    ensure!(
        from_node,
        "the node must reach its pods despite ingress policy"
    );

    // Allow from namespace y to x/a (policies add up).
    pb.apply_policy(
        "x",
        "a-from",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
    );
    pb.wait_matrix("x/a allows namespace y", |from, to, _| {
        to.namespace != "x" || (is(to, "x", "a") && from.namespace == "y")
    })?;

    // Namespace and pod selector in one peer: both must match.
    pb.apply_policy(
        "x",
        "a-from",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}},
                                      "podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    );
    pb.wait_matrix("x/a allows y/b only (AND)", |from, to, _| {
        to.namespace != "x" || (is(to, "x", "a") && is(from, "y", "b"))
    })?;

    // The same selectors as separate peers: either may match.
    pb.apply_policy(
        "x",
        "a-from",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}},
                                     {"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    );
    pb.wait_matrix("x/a allows y/* or x/b (OR)", |from, to, _| {
        to.namespace != "x" || (is(to, "x", "a") && (from.namespace == "y" || is(from, "x", "b")))
    })?;

    // ipBlock with except, TCP 80 only; matchExpressions select the target.
    pb.apply_policy(
        "x",
        "a-from",
        json!({"podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["a"]}]},
               "ingress": [{"from": [{"ipBlock": {"cidr": "10.32.0.0/24", "except": ["10.32.0.4/31"]}}],
                            "ports": [{"port": 80}]}]}),
    );
    pb.wait_matrix(
        "x/a allows 10.32.0.0/24 except y/a and y/b, TCP 80",
        |from, to, p| {
            to.namespace != "x"
                || (is(to, "x", "a") && tcp80(p) && !is(from, "y", "a") && !is(from, "y", "b"))
        },
    )?;

    // Named port `web`: 80 on x/a, 81 on x/c (resolved per destination pod).
    pb.delete_policy("x", "a-from");
    pb.apply_policy(
        "x",
        "web",
        json!({"podSelector": {"matchExpressions": [{"key": "pod", "operator": "NotIn", "values": ["b"]}]},
               "ingress": [{"ports": [{"port": "web"}]}]}),
    );
    pb.wait_matrix("named port web on x/a (80) and x/c (81)", |_, to, p| {
        to.namespace != "x"
            || (p.proto == Proto::Tcp
                && ((is(to, "x", "a") && p.port == 80) || (is(to, "x", "c") && p.port == 81)))
    })?;

    // endPort: x/b accepts TCP 80 to 81 from anywhere, no UDP.
    pb.delete_policy("x", "web");
    pb.apply_policy(
        "x",
        "range",
        json!({"podSelector": {"matchLabels": {"pod": "b"}},
               "ingress": [{"ports": [{"protocol": "TCP", "port": 80, "endPort": 81}]}]}),
    );
    pb.wait_matrix("x/b accepts TCP 80-81", |_, to, p| {
        to.namespace != "x" || (is(to, "x", "b") && p.proto == Proto::Tcp)
    })?;

    // Egress: y/a may only reach namespace z on TCP 80 and UDP 81. Without policyTypes the
    // API defaults to Ingress plus Egress, so y/a also accepts no ingress at all.
    pb.apply_policy(
        "y",
        "a-out",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}],
                           "ports": [{"port": 80}, {"protocol": "UDP", "port": 81}]}]}),
    );
    let ingress =
        |to: &TestPod, p: Probe| to.namespace != "x" || (is(to, "x", "b") && p.proto == Proto::Tcp);
    let egress = |from: &TestPod, to: &TestPod, p: Probe| {
        !is(to, "y", "a")
            && (!is(from, "y", "a")
                || (to.namespace == "z"
                    && ((p.proto == Proto::Tcp && p.port == 80)
                        || (p.proto == Proto::Udp && p.port == 81))))
    };
    pb.wait_matrix("y/a egress to z on TCP 80 / UDP 81", |from, to, p| {
        ingress(to, p) && egress(from, to, p)
    })?;

    // Policy deletion: x opens again; the egress policy stays.
    pb.delete_policy("x", "deny");
    pb.delete_policy("x", "range");
    pb.wait_matrix("x policies deleted", |from, to, p| egress(from, to, p))?;
    pb.delete_policy("y", "a-out");
    pb.wait_matrix("no policies", |_, _, _| true)?;

    // Namespace relabelled at runtime.
    pb.apply_policy(
        "x",
        "blue",
        json!({"podSelector": {},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "blue"}}}]}]}),
    );
    pb.wait_matrix("x only from team blue (none yet)", |_, to, _| {
        to.namespace != "x"
    })?;
    pb.label_namespace("y", &[("ns", "y"), ("team", "blue")]);
    pb.wait_matrix("y joins team blue", |from, to, _| {
        to.namespace != "x" || from.namespace == "y"
    })?;

    // Pod relabelled at runtime: z/c becomes a client, selected from every namespace.
    pb.apply_policy(
        "x",
        "clients",
        json!({"podSelector": {},
               "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "client"}}}]}]}),
    );
    pb.label_pod("z", "c", &[("pod", "c"), ("role", "client")]);
    pb.wait_matrix("z/c labelled client", |from, to, _| {
        to.namespace != "x" || from.namespace == "y" || is(from, "z", "c")
    })?;
    pb.label_pod("z", "c", &[("pod", "c")]);
    pb.label_namespace("y", &[("ns", "y")]);
    pb.wait_matrix("labels removed", |_, to, _| to.namespace != "x")?;

    // A pod the API has not announced yet is unreachable (never open by accident), and
    // becomes reachable once weave-npc has programmed its address.
    let new = pb.add_unpublished_pod("z", "d", std::net::Ipv4Addr::new(10, 32, 0, 20))?;
    let za = pb.pod("z", "a").clone();
    ensure!(
        !pb.tcp_reaches(&za, &new, 80)?,
        "an unknown pod must not be reachable"
    );
    ensure!(
        !pb.tcp_reaches(&new, &za, 80)?,
        "an unknown pod must not send"
    );
    pb.publish_pod(&new);
    wait_until(
        Duration::from_secs(10),
        "z/d reachable once published",
        || Ok((pb.tcp_reaches(&za, &new, 80)? && pb.tcp_reaches(&new, &za, 80)?).then_some(())),
    )?;
    Ok(())
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
