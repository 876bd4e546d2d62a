// SPDX-License-Identifier: Apache-2.0
//! Golden tests of `compile`: each case compiles a snapshot (namespaces x, y, z with pods
//! a, b, c, the x pods local to node n1) plus representative policies, and compares the
//! full transaction with `tests/golden/<case>.nft`. Set `UPDATE_GOLDEN=1` to rewrite the
//! files after an intended change, then review the diff.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{json, Value};
use weave_npc::{compile, NodeConfig, Snapshot};

/// The cluster every case starts from. Pod `c` names its port 81 `serve-81` as everyone else,
/// but pod `x/b` serves `web` on 80 while `x/c` serves `web` on 81 (named ports differ per pod).
fn cluster() -> Snapshot {
    let mut pods = Vec::new();
    let mut namespaces = Vec::new();
    for (n, ns) in ["x", "y", "z"].iter().enumerate() {
        namespaces.push(
            serde_json::from_value::<Namespace>(json!({
                "metadata": {"name": ns, "labels": {"ns": ns, "kubernetes.io/metadata.name": ns}}
            }))
            .expect("namespace"),
        );
        for (m, pod) in ["a", "b", "c"].iter().enumerate() {
            let web = if *pod == "c" { 81 } else { 80 };
            pods.push(
                serde_json::from_value::<Pod>(json!({
                    "metadata": {"name": pod, "namespace": ns, "labels": {"pod": pod}},
                    "spec": {
                        "nodeName": if *ns == "x" { "n1" } else { "n2" },
                        "containers": [{"name": "c", "ports": [
                            {"name": "serve-80-tcp", "containerPort": 80},
                            {"name": "serve-81-udp", "containerPort": 81, "protocol": "UDP"},
                            {"name": "web", "containerPort": web}
                        ]}]
                    },
                    "status": {"phase": "Running", "podIP": format!("10.32.{}.{}", n + 1, m + 1)}
                }))
                .expect("pod"),
            );
        }
    }
    Snapshot {
        pods,
        namespaces,
        policies: Vec::new(),
    }
}

/// A policy in namespace `ns` named `name` with `spec`.
fn policy(ns: &str, name: &str, spec: Value) -> NetworkPolicy {
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns}, "spec": spec}))
        .expect("policy")
}

/// Compiles the cluster with `policies` and checks the result against the golden file.
fn check(case: &str, policies: Vec<NetworkPolicy>) -> Vec<String> {
    let mut snapshot = cluster();
    snapshot.policies = policies;
    let node = NodeConfig {
        node_name: "n1".into(),
        ..NodeConfig::default()
    };
    let compiled = compile(&snapshot, &node);
    let got = compiled.full();
    let rejected: Vec<String> = compiled
        .rejected
        .iter()
        .map(|r| format!("{}: {}", r.policy, r.reason))
        .collect();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{case}.nft"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &got).expect("write golden file");
        return rejected;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read {}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
    assert!(
        want == got,
        "compile output for {case} differs from {}; rerun with UPDATE_GOLDEN=1 and review the diff\n{got}",
        path.display()
    );
    rejected
}

#[test]
fn no_policies() {
    let _ = check("no_policies", vec![]);
}

#[test]
fn default_deny_ingress_and_egress() {
    let _ = check(
        "default_deny",
        vec![policy(
            "x",
            "deny-all",
            json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        )],
    );
}

#[test]
fn allow_from_namespace_and_pod_selectors() {
    let _ = check(
        "selectors",
        vec![policy(
            "x",
            "a-from",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"from": [
                    // AND: pods b in namespaces y.
                    {"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"pod": "b"}}},
                    // OR: every pod of z.
                    {"namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "In", "values": ["z"]}]}},
                    // OR: pods of the policy's namespace without label pod=c.
                    {"podSelector": {"matchExpressions": [{"key": "pod", "operator": "NotIn", "values": ["c"]}]}}
                ]}]
            }),
        )],
    );
}

#[test]
fn ip_block_with_except() {
    let _ = check(
        "ipblock",
        vec![policy(
            "x",
            "block",
            json!({
                "podSelector": {},
                "ingress": [{"from": [{"ipBlock": {"cidr": "10.32.0.0/16", "except": ["10.32.2.0/24"]}}],
                             "ports": [{"port": 80}]}]
            }),
        )],
    );
}

#[test]
fn named_ports_resolve_per_pod() {
    let _ = check(
        "named_ports",
        vec![policy(
            "x",
            "web",
            json!({
                "podSelector": {"matchExpressions": [{"key": "pod", "operator": "Exists"}]},
                "ingress": [{"ports": [{"port": "web"}, {"port": "serve-81-udp", "protocol": "UDP"}]}]
            }),
        )],
    );
}

#[test]
fn end_port_and_protocols() {
    let _ = check(
        "end_port",
        vec![policy(
            "x",
            "range",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"ports": [
                    {"port": 80, "endPort": 81, "protocol": "TCP"},
                    {"port": 81, "protocol": "UDP"},
                    {"protocol": "SCTP"}
                ]}]
            }),
        )],
    );
}

#[test]
fn egress_to_ports_defaults_policy_types() {
    let _ = check(
        "egress",
        vec![policy(
            "x",
            "to-y",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}], "ports": [{"port": 80}]},
                           {"to": [{"podSelector": {}}], "ports": [{"port": "web"}]}]
            }),
        )],
    );
}

#[test]
fn invalid_policies_are_rejected_alone() {
    let rejected = check(
        "invalid",
        vec![
            policy(
                "x",
                "bad-proto",
                json!({"podSelector": {"matchLabels": {"pod": "b"}}, "ingress": [{"ports": [{"protocol": "ICMP"}]}]}),
            ),
            policy(
                "x",
                "bad-cidr",
                json!({"podSelector": {"matchLabels": {"pod": "c"}}, "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.300/8"}}]}]}),
            ),
            policy(
                "x",
                "bad-selector",
                json!({"podSelector": {"matchExpressions": [{"key": "pod", "operator": "Near"}]}}),
            ),
            policy(
                "x",
                "good",
                json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{}]}),
            ),
        ],
    );
    assert_eq!(
        rejected,
        [
            "x/bad-cidr: egress rule 0: peer 0: invalid CIDR \"10.0.0.300/8\"",
            "x/bad-proto: ingress rule 0: port 0: unknown protocol \"ICMP\"",
            "x/bad-selector: podSelector: unknown selector operator \"Near\"",
        ]
    );
}

#[test]
fn churn_is_applied_incrementally_when_possible() {
    let node = NodeConfig {
        node_name: "n1".into(),
        ..NodeConfig::default()
    };
    let mut snapshot = cluster();
    snapshot.policies = vec![policy(
        "x",
        "from-y",
        json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
    )];
    let mut compiled = compile(&snapshot, &node);
    assert_eq!(compiled.update(), "", "no change, nothing to send");

    // A new local pod: sets change and its drop accounting is appended; no rebuild.
    let mut new_pod = snapshot.pods[0].clone();
    new_pod.metadata.name = Some("d".into());
    new_pod.status.as_mut().expect("status").pod_ip = Some("10.32.1.9".into());
    compiled.set_pod(&new_pod);
    let script = compiled.update();
    assert!(
        script.contains("add element bridge weave-npc local-pods { 10.32.1.9 }")
            && script.contains("add counter inet weave-npc ingress-denied/x/d"),
        "{script}"
    );
    assert!(!script.contains("delete"), "{script}");

    // A namespace relabelled so that its remote pods become peers: set elements only.
    let mut z = snapshot.namespaces[2].clone();
    z.metadata
        .labels
        .get_or_insert_default()
        .insert("ns".into(), "y".into());
    compiled.set_namespace(&z);
    let script = compiled.update();
    assert_eq!(
        script,
        "add element inet weave-npc peer1 { 10.32.3.1, 10.32.3.2, 10.32.3.3 }\n"
    );

    // A local pod gone: its elements and accounting chains go; no rebuild.
    compiled.remove_pod("x", "a");
    let script = compiled.update();
    assert!(
        script.contains("delete chain inet weave-npc egress-denied/x/a")
            && script.contains("delete element inet weave-npc egress-denied-pods { 10.32.1.1 }"),
        "{script}"
    );
    assert!(!script.contains("table"), "{script}");
}

#[test]
fn second_new_local_pod_is_programmed_too() {
    let node = NodeConfig {
        node_name: "n1".into(),
        ..NodeConfig::default()
    };
    let snapshot = cluster();
    let mut compiled = compile(&snapshot, &node);
    for (n, ip) in ["10.32.1.9", "10.32.1.10"].iter().enumerate() {
        let mut new_pod = snapshot.pods[0].clone();
        new_pod.metadata.name = Some(format!("new{n}"));
        new_pod.status.as_mut().expect("status").pod_ip = Some(ip.to_string());
        compiled.set_pod(&new_pod);
        let script = compiled.update();
        assert!(
            script.contains(&format!(
                "add element bridge weave-npc local-pods {{ {ip} }}"
            )),
            "pod {n}: {script}"
        );
    }
}
