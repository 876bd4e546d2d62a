// SPDX-License-Identifier: Apache-2.0
//! Golden tests of `compile`: each case compiles a snapshot (namespaces x, y, z with pods
//! a, b, c, the x pods local to node n1) plus representative policies, and compares the
//! full transaction with `tests/golden/<case>.nft`. Set `UPDATE_GOLDEN=1` to rewrite the
//! files after an intended change, then review the diff.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{json, Value};
use weave_npc::cluster_policy::ClusterNetworkPolicy;
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
        ..Snapshot::default()
    }
}

/// A policy in namespace `ns` named `name` with `spec`.
fn policy(ns: &str, name: &str, spec: Value) -> NetworkPolicy {
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns}, "spec": spec}))
        .expect("policy")
}

/// A ClusterNetworkPolicy named `name` with `spec`.
fn cluster_policy(name: &str, spec: Value) -> ClusterNetworkPolicy {
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec}))
        .expect("cluster policy")
}

/// Compiles the cluster with `policies` and checks the result against the golden file.
fn check(case: &str, policies: Vec<NetworkPolicy>) -> Vec<String> {
    check_with(case, policies, Vec::new())
}

/// Compares `got` with golden file `case` (or rewrites it).
fn golden(case: &str, got: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{case}.nft"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, got).expect("write golden file");
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read {}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
    assert!(
        want == got,
        "compile output for {case} differs from {}; rerun with UPDATE_GOLDEN=1 and review the diff\n{got}",
        path.display()
    );
}

/// Compiles the cluster with NetworkPolicies and ClusterNetworkPolicies, checks the result
/// against the golden file and returns the rejections.
fn check_with(
    case: &str,
    policies: Vec<NetworkPolicy>,
    cluster_policies: Vec<ClusterNetworkPolicy>,
) -> Vec<String> {
    let mut snapshot = cluster();
    snapshot.policies = policies;
    snapshot.cluster_policies = cluster_policies;
    let node = NodeConfig {
        node_name: "n1".into(),
        ..NodeConfig::default()
    };
    let compiled = compile(&snapshot, &node);
    let got = compiled.full();
    let rejected: Vec<String> = compiled
        .rejected()
        .iter()
        .map(|r| format!("{}: {}", r.policy, r.reason))
        .collect();
    golden(case, &got);
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
    assert!(
        script.starts_with("add element inet weave-npc peer-")
            && script.ends_with(" { 10.32.3.1, 10.32.3.2, 10.32.3.3 }\n")
            && script.lines().count() == 1,
        "{script}"
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

#[test]
fn several_ports_share_one_interval_set() {
    let _ = check(
        "port_set",
        vec![policy(
            "x",
            "web",
            json!({
                "podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}],
                             "ports": [{"port": 80}, {"port": 443}, {"port": 8000, "endPort": 8080},
                                       {"port": 8080, "endPort": 8090}, {"port": 53, "protocol": "UDP"},
                                       {"port": "web"}]}]
            }),
        )],
    );
}

#[test]
fn cluster_policies_in_both_tiers() {
    let rejected = check_with(
        "cluster",
        vec![policy(
            "x",
            "allow-y",
            json!({"podSelector": {"matchLabels": {"pod": "b"}},
                   "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
        )],
        vec![
            cluster_policy(
                "admin",
                json!({"tier": "Admin", "priority": 10,
                       "subject": {"namespaces": {"matchLabels": {"ns": "x"}}},
                       "ingress": [{"name": "deny-z", "action": "Deny", "from": [{"namespaces": {"matchLabels": {"ns": "z"}}}]},
                                   {"name": "pass-y-web", "action": "Pass",
                                    "from": [{"pods": {"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {}}}],
                                    "protocols": [{"destinationNamedPort": "web"}]}],
                       "egress": [{"name": "dns", "action": "Accept", "to": [{"networks": ["10.96.0.10/32", "fd00::/8"]}],
                                   "protocols": [{"udp": {"destinationPort": {"number": 53}}}, {"tcp": {"destinationPort": {"number": 53}}}]}]}),
            ),
            cluster_policy(
                "baseline",
                json!({"tier": "Baseline", "priority": 1,
                       "subject": {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "c"}}}},
                       "ingress": [{"name": "deny-all", "action": "Deny", "from": [{"namespaces": {}}]}]}),
            ),
            cluster_policy(
                "broken",
                json!({"tier": "Admin", "priority": 1, "subject": {"namespaces": {}},
                       "egress": [{"action": "Deny", "to": [{"domainNames": ["example.com"]}]}]}),
            ),
        ],
    );
    assert_eq!(
        rejected,
        ["ClusterNetworkPolicy/broken: egress rule 0: peer 0: domainNames are not supported"]
    );
}

#[test]
fn huge_policies_are_refused_and_fail_closed() {
    let peers: Vec<Value> = (0..100)
        .map(|i| json!({"ipBlock": {"cidr": format!("192.168.{i}.0/24")}}))
        .collect();
    let ports: Vec<Value> = (0..11)
        .map(|i| json!({"port": "p".to_owned() + &i.to_string()}))
        .collect();
    let mut snapshot = cluster();
    snapshot.policies = vec![
        policy(
            "x",
            "huge",
            json!({"podSelector": {"matchLabels": {"pod": "a"}},
                   "ingress": (0..11).map(|_| json!({"from": peers, "ports": ports})).collect::<Vec<_>>()}),
        ),
        policy(
            "x",
            "fine",
            json!({"podSelector": {"matchLabels": {"pod": "b"}}, "ingress": [{}]}),
        ),
    ];
    let node = NodeConfig {
        node_name: "n1".into(),
        ..NodeConfig::default()
    };
    let compiled = compile(&snapshot, &node);
    let rejected = compiled.rejected();
    assert_eq!(rejected.len(), 1);
    assert!(
        rejected[0].reason.contains("compiles to 1100 rules")
            && rejected[0].reason.contains("limit of 1000"),
        "{rejected:?}"
    );
    let script = compiled.full();
    // x/a stays isolated with nothing allowed: its policy chain exists and is empty.
    assert!(
        script.contains("add chain inet weave-npc ingress-policy/x/huge"),
        "{script}"
    );
    assert!(
        !script.contains("add rule inet weave-npc ingress-policy/x/huge"),
        "{script}"
    );
    assert!(
        script.contains("add rule inet weave-npc ingress-policy/x/fine accept"),
        "{script}"
    );
    assert!(
        script.lines().count() < 200,
        "nothing of the huge policy was compiled"
    );
}

#[test]
fn a_policy_change_is_an_update_of_its_chains() {
    let node = NodeConfig {
        node_name: "n1".into(),
        ..NodeConfig::default()
    };
    let mut snapshot = cluster();
    snapshot.policies = vec![
        policy(
            "x",
            "deny",
            json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
        ),
        policy(
            "x",
            "web",
            json!({"podSelector": {"matchLabels": {"pod": "a"}},
                                  "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}], "ports": [{"port": 80}]}]}),
        ),
    ];
    let mut compiled = compile(&snapshot, &node);
    // The allowed port changes, and the policy now also selects x/c.
    compiled.set_policy(&policy(
        "x",
        "web",
        json!({"podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["a", "c"]}]},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}], "ports": [{"port": 81}]}]}),
    ));
    // And a new egress policy comes.
    compiled.set_policy(&policy(
        "x",
        "out",
        json!({"podSelector": {"matchLabels": {"pod": "b"}}, "policyTypes": ["Egress"],
               "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}]}]}),
    ));
    golden("policy_update", &compiled.update());
    assert_eq!(compiled.update(), "", "applied: nothing left to send");
    compiled.remove_policy("x", "out");
    golden("policy_removal", &compiled.update());
}
