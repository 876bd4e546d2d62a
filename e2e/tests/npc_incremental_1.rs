// SPDX-License-Identifier: Apache-2.0
//! weave-npc's incremental updates against real nftables: host 1 gets a full ruleset once
//! and then only the updates (`Compiled::update`) after each pod, namespace, NetworkPolicy
//! or ClusterNetworkPolicy change; host 2 gets a fresh full compile of the same snapshot
//! every time. After every step both kernels must hold the same tables, chains, rules, sets
//! and elements.
//!
//! Listings are compared as JSON without handles, with set elements sorted: objects (sets,
//! maps, chains, counters) as a set, since an update creates new ones after the old and a
//! rebuild in name order, and each chain's rules as a list, in order.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{ensure, Context, Result};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{json, Value};
use weave_e2e::{Host, TestBed, Topology};
use weave_npc::cluster_policy::ClusterNetworkPolicy;
use weave_npc::{compile, NodeConfig, Snapshot};

/// Namespace `name` labelled `ns=<label>`.
fn namespace(name: &str, label: &str) -> Namespace {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": {"ns": label}}}))
        .expect("namespace")
}

/// Pod `ns/name` on `node` with `ip` and `labels`, serving `web` on `web`.
fn pod(ns: &str, name: &str, node: &str, ip: &str, app: &str, web: u16) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [
            {"name": "web", "containerPort": web},
            {"name": "dns", "containerPort": 53, "protocol": "UDP"}
        ]}]},
        "status": {"phase": "Running", "podIP": ip}
    }))
    .expect("pod")
}

/// Policy `ns/name` with `spec`.
fn policy(ns: &str, name: &str, spec: Value) -> NetworkPolicy {
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns}, "spec": spec}))
        .expect("policy")
}

/// Applies `script` with `nft -f -` in `host`.
fn nft(host: &Host, script: &str) -> Result<()> {
    if script.is_empty() {
        return Ok(());
    }
    host.run_with_input("nft", &["-f", "-"], script)
        .with_context(|| format!("nft in {}:\n{script}", host.name()))?;
    Ok(())
}

/// Drops `handle` keys and sorts `elem` arrays, recursively.
fn normalise(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.remove("handle");
            for (key, inner) in map.iter_mut() {
                normalise(inner);
                if key == "elem" {
                    if let Value::Array(items) = inner {
                        items.sort_by_key(|i| i.to_string());
                    }
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalise),
        _ => {}
    }
}

/// What a listing holds: objects as a set, and each chain's rules in order.
type Listing = (BTreeSet<String>, BTreeMap<String, Vec<String>>);

/// Both weave-npc tables of `host`, normalised.
fn listing(host: &Host) -> Result<Listing> {
    let mut objects = BTreeSet::new();
    let mut rules: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for family in ["inet", "bridge"] {
        let out = host.run("nft", &["-j", "list", "table", family, "weave-npc"])?;
        let mut doc: Value = serde_json::from_str(&out)?;
        normalise(&mut doc);
        for object in doc["nftables"].as_array().context("nftables array")? {
            if object.get("metainfo").is_some() {
                continue;
            }
            match object["rule"]["chain"].as_str() {
                Some(chain) => rules
                    .entry(format!("{family} {chain}"))
                    .or_default()
                    .push(object.to_string()),
                None => {
                    objects.insert(object.to_string());
                }
            }
        }
    }
    Ok((objects, rules))
}

/// ClusterNetworkPolicy `name` with `spec`.
fn cluster_policy(name: &str, spec: Value) -> ClusterNetworkPolicy {
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec}))
        .expect("cluster policy")
}

#[test]
fn updates_match_a_rebuild_in_the_kernel() -> Result<()> {
    let bed = TestBed::new(Topology::Links {
        hosts: 2,
        links: Vec::new(),
    })?;
    let (incremental, rebuilt) = (bed.host(1), bed.host(2));
    let node = NodeConfig {
        node_name: "n1".into(),
        ..NodeConfig::default()
    };
    let mut snap = Snapshot {
        namespaces: vec![
            namespace("x", "x"),
            namespace("y", "y"),
            namespace("z", "z"),
        ],
        pods: vec![
            pod("x", "a", "n1", "10.32.1.1", "web", 80),
            pod("x", "b", "n1", "10.32.1.2", "db", 81),
            pod("y", "a", "n2", "10.32.2.1", "web", 80),
            pod("y", "b", "n2", "10.32.2.2", "cache", 80),
            pod("z", "a", "n2", "10.32.3.1", "web", 8080),
        ],
        policies: vec![
            policy(
                "x",
                "web",
                json!({"podSelector": {"matchLabels": {"app": "web"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "db"}}},
                                      {"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"app": "web"}}}],
                             "ports": [{"port": "web"}, {"port": 443}, {"port": 8000, "endPort": 8100}]}]}),
            ),
            policy(
                "x",
                "db",
                json!({"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress", "Egress"],
                "egress": [{"to": [{"namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "In", "values": ["y", "w"]}]}}],
                            "ports": [{"port": "web"}, {"port": "dns", "protocol": "UDP"}]},
                           {"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.32.0.0/16", "10.33.0.0/16"]}}]}]}),
            ),
        ],
        ..Snapshot::default()
    };
    let mut compiled = compile(&snap, &node);
    nft(incremental, &compiled.full())?;

    type Step = Box<dyn Fn(&mut Snapshot)>;
    let steps: Vec<(&str, Step)> = vec![
        (
            "new local pod",
            Box::new(|s| s.pods.push(pod("x", "c", "n1", "10.32.1.3", "web", 81))),
        ),
        (
            "new remote pod",
            Box::new(|s| s.pods.push(pod("y", "c", "n2", "10.32.2.3", "web", 9090))),
        ),
        (
            "remote pod relabelled",
            Box::new(|s| s.pods[3] = pod("y", "b", "n2", "10.32.2.2", "web", 80)),
        ),
        (
            "local pod relabelled",
            Box::new(|s| s.pods[1] = pod("x", "b", "n1", "10.32.1.2", "web", 81)),
        ),
        (
            "namespace relabelled",
            Box::new(|s| s.namespaces[2] = namespace("z", "w")),
        ),
        (
            "remote pod readdressed",
            Box::new(|s| s.pods[4] = pod("z", "a", "n2", "10.32.3.9", "web", 8080)),
        ),
        (
            "remote pod deleted",
            Box::new(|s| {
                s.pods.remove(2);
            }),
        ),
        (
            "namespace deleted",
            Box::new(|s| {
                s.namespaces.remove(1);
            }),
        ),
        (
            "local pod deleted (rebuild)",
            Box::new(|s| {
                s.pods.remove(0);
            }),
        ),
        (
            "another local pod",
            Box::new(|s| s.pods.push(pod("x", "d", "n1", "10.32.1.4", "db", 80))),
        ),
        (
            "policy changed: other ports and targets",
            Box::new(|s| {
                s.policies[0] = policy(
                    "x",
                    "web",
                    json!({"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "db"]}]},
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "cache"}}}],
                                 "ports": [{"port": 80}, {"port": 9000, "endPort": 9100}, {"port": "dns", "protocol": "UDP"}]}]}),
                );
            }),
        ),
        (
            "policy added",
            Box::new(|s| {
                s.policies.push(policy(
                    "x",
                    "deny",
                    json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
                ));
            }),
        ),
        (
            "cluster policies added",
            Box::new(|s| {
                s.cluster_policies = vec![
                    cluster_policy(
                        "admin",
                        json!({"tier": "Admin", "priority": 3, "subject": {"namespaces": {"matchLabels": {"ns": "x"}}},
                               "ingress": [{"name": "no-z", "action": "Deny", "from": [{"namespaces": {"matchLabels": {"ns": "w"}}}]},
                                           {"name": "pass", "action": "Pass", "from": [{"namespaces": {}}], "protocols": [{"destinationNamedPort": "web"}]}],
                               "egress": [{"name": "net", "action": "Accept", "to": [{"networks": ["10.96.0.0/12"]}]}]}),
                    ),
                    cluster_policy(
                        "base",
                        json!({"tier": "Baseline", "priority": 1, "subject": {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "web"}}}},
                               "ingress": [{"action": "Deny", "from": [{"namespaces": {}}], "protocols": [{"tcp": {"destinationPort": {"range": {"start": 1, "end": 1000}}}}]}]}),
                    ),
                ];
            }),
        ),
        (
            "policy removed",
            Box::new(|s| {
                s.policies.remove(1);
            }),
        ),
        (
            "a cluster policy removed",
            Box::new(|s| {
                s.cluster_policies.remove(0);
            }),
        ),
    ];
    for (what, change) in steps {
        let before: Vec<Pod> = snap.pods.clone();
        let before_ns: Vec<Namespace> = snap.namespaces.clone();
        let before_policies: Vec<NetworkPolicy> = snap.policies.clone();
        change(&mut snap);
        // Feed the differences, as the controller does.
        let key = |p: &Pod| (p.metadata.namespace.clone(), p.metadata.name.clone());
        for p in &before {
            if !snap.pods.iter().any(|q| key(q) == key(p)) {
                compiled.remove_pod(
                    p.metadata.namespace.as_deref().unwrap_or_default(),
                    p.metadata.name.as_deref().unwrap_or_default(),
                );
            }
        }
        for p in &snap.pods {
            compiled.set_pod(p);
        }
        for n in &before_ns {
            if !snap
                .namespaces
                .iter()
                .any(|m| m.metadata.name == n.metadata.name)
            {
                compiled.remove_namespace(n.metadata.name.as_deref().unwrap_or_default());
            }
        }
        for n in &snap.namespaces {
            compiled.set_namespace(n);
        }
        for p in &before_policies {
            if !snap
                .policies
                .iter()
                .any(|q| q.metadata.name == p.metadata.name)
            {
                compiled.remove_policy(
                    p.metadata.namespace.as_deref().unwrap_or_default(),
                    p.metadata.name.as_deref().unwrap_or_default(),
                );
            }
        }
        for p in &snap.policies {
            compiled.set_policy(p);
        }
        compiled.set_cluster_policies(&snap.cluster_policies);
        nft(incremental, &compiled.update()).with_context(|| what.to_owned())?;
        nft(rebuilt, &compile(&snap, &node).full())?;
        let (got, want) = (listing(incremental)?, listing(rebuilt)?);
        ensure!(
            got == want,
            "after {what}: kernel state differs\nincremental: {got:#?}\nrebuilt: {want:#?}"
        );
    }
    Ok(())
}
