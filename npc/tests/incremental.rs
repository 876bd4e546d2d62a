// SPDX-License-Identifier: Apache-2.0
//! The incremental path against the pure one: a `Compiled` fed changes one by one must
//! render exactly what `compile` renders for the resulting snapshot, and the updates it
//! emits, applied to a strict model of the kernel (`kernel/`), must leave the same state as
//! a full rebuild.
//!
//! Random clusters and event sequences from a fixed-seed generator (no dependency): pods
//! come, go, are relabelled, readdressed and finish; namespaces are relabelled, deleted and
//! recreated; NetworkPolicies are added, changed and removed (pod, namespace and combined
//! selectors, named ports in both directions, ipBlock, several ports, egress to any
//! destination); ClusterNetworkPolicies of both tiers come and go.

mod kernel;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kernel::Kernel;
use serde_json::{json, Value};
use weave_npc::cluster_policy::ClusterNetworkPolicy;
use weave_npc::{compile, Compiled, NodeConfig, Snapshot};

/// xorshift64*, enough to shuffle events deterministically.
struct Rng(u64);

impl Rng {
    /// The next number below `n`.
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        usize::try_from(x >> 33).expect("31 bits fit") % n
    }
}

/// Namespace names.
const NAMESPACES: [&str; 4] = ["x", "y", "z", "w"];

/// Namespace `name` with labels chosen by `v`.
fn namespace(name: &str, v: usize) -> Namespace {
    let team = ["a", "b", "c"][v % 3];
    let env = if v % 2 == 0 { "prod" } else { "dev" };
    serde_json::from_value(
        json!({"metadata": {"name": name, "labels": {"team": team, "env": env}}}),
    )
    .expect("namespace")
}

/// Pod `ns/name` with address, node, labels and named ports chosen by `v`.
fn pod(ns: &str, name: &str, v: usize) -> Pod {
    let phase = if v % 17 == 16 { "Succeeded" } else { "Running" };
    let app = ["web", "db", "cache"][v % 3];
    let tier = ["front", "back"][(v / 3) % 2];
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "labels": {"app": app, "tier": tier}},
        "spec": {"nodeName": if v % 4 == 0 { "n2" } else { "n1" }, "containers": [{"name": "c", "ports": [
            {"name": "http", "containerPort": 8000 + (v % 3)},
            {"name": "dns", "containerPort": 53, "protocol": "UDP"}
        ]}]},
        // Only a few addresses, so pods share them now and then (stale pod and successor).
        "status": {"phase": phase, "podIP": format!("10.32.0.{}", 1 + v % 23)}
    }))
    .expect("pod")
}

/// The policies every case runs with.
fn policies() -> Vec<NetworkPolicy> {
    let specs: Vec<(&str, Value)> = vec![
        (
            "x",
            json!({"podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"tier": "front"}}},
                                  {"namespaceSelector": {"matchLabels": {"team": "b"}}}],
                         "ports": [{"port": "http"}, {"port": 80}, {"port": 443}]}]}),
        ),
        (
            "y",
            json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}]},
                                   "podSelector": {"matchLabels": {"app": "db"}}}]}],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "cache"}}},
                               {"namespaceSelector": {"matchLabels": {"team": "c"}}}],
                        "ports": [{"port": "dns", "protocol": "UDP"}, {"port": "http"}]}]}),
        ),
        (
            "z",
            json!({"podSelector": {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["db"]}]},
            "egress": [{"ports": [{"port": "http"}]},
                       {"to": [{"ipBlock": {"cidr": "10.32.0.0/16", "except": ["10.32.0.0/28", "10.32.0.16/30"]}}],
                        "ports": [{"port": "http"}, {"port": 30000, "endPort": 30010, "protocol": "UDP"}]}]}),
        ),
        (
            "w",
            json!({"podSelector": {"matchLabels": {"tier": "back"}}, "ingress": [{"from": [{"namespaceSelector": {}}]}]}),
        ),
        (
            "x",
            json!({"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Egress"]}),
        ),
        (
            "y",
            json!({"podSelector": {"matchLabels": {"tier": "front"}},
            "ingress": [{"ports": [{"port": 80}, {"port": 8000, "endPort": 8002}, {"port": "dns", "protocol": "UDP"}, {"protocol": "SCTP"}]}]}),
        ),
        (
            "z",
            json!({"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "db"}}}]}]}),
        ),
    ];
    specs
        .into_iter()
        .enumerate()
        .map(|(i, (ns, spec))| {
            serde_json::from_value(
                json!({"metadata": {"name": format!("p{i}"), "namespace": ns}, "spec": spec}),
            )
            .expect("policy")
        })
        .collect()
}

/// ClusterNetworkPolicies some cases run with.
fn cluster_policies() -> Vec<ClusterNetworkPolicy> {
    let specs = [
        json!({"tier": "Admin", "priority": 10, "subject": {"namespaces": {"matchLabels": {"env": "prod"}}},
               "ingress": [{"name": "deny-dev", "action": "Deny", "from": [{"namespaces": {"matchLabels": {"env": "dev"}}}]},
                           {"name": "pass-web", "action": "Pass", "from": [{"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "web"}}}}],
                            "protocols": [{"tcp": {"destinationPort": {"number": 80}}}, {"destinationNamedPort": "http"}]}],
               "egress": [{"name": "out", "action": "Accept", "to": [{"networks": ["10.32.0.0/28"]}]}]}),
        json!({"tier": "Baseline", "priority": 5, "subject": {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"tier": "back"}}}},
               "ingress": [{"action": "Deny", "from": [{"namespaces": {}}],
                            "protocols": [{"udp": {"destinationPort": {"range": {"start": 50, "end": 60}}}}, {"tcp": {}}]}]}),
    ];
    specs
        .into_iter()
        .enumerate()
        .map(|(i, spec)| {
            serde_json::from_value(json!({"metadata": {"name": format!("c{i}")}, "spec": spec}))
                .expect("cluster policy")
        })
        .collect()
}

/// One random change to `snap`, mirrored into `inc`.
fn step(rng: &mut Rng, snap: &mut Snapshot, inc: &mut Compiled) {
    match rng.below(14) {
        10 | 11 => {
            // A policy of the pool comes, goes or swaps its spec with another's.
            let pool = policies();
            let pick = pool[rng.below(pool.len())].clone();
            let name = pick.metadata.name.clone().unwrap_or_default();
            let ns = pick.metadata.namespace.clone().unwrap_or_default();
            let at = snap
                .policies
                .iter()
                .position(|p| p.metadata.name.as_deref() == Some(name.as_str()));
            match (at, rng.below(3)) {
                (Some(i), 0) => {
                    snap.policies.remove(i);
                    inc.remove_policy(&ns, &name);
                }
                (Some(i), 1) => {
                    let mut changed = pick.clone();
                    changed.spec = pool[rng.below(pool.len())].spec.clone();
                    inc.set_policy(&changed);
                    snap.policies[i] = changed;
                }
                (Some(_), _) => {}
                (None, _) => {
                    inc.set_policy(&pick);
                    snap.policies.push(pick);
                }
            }
        }
        12 => {
            // ClusterNetworkPolicies come and go.
            let all = cluster_policies();
            snap.cluster_policies = all.into_iter().filter(|_| rng.below(2) == 0).collect();
            inc.set_cluster_policies(&snap.cluster_policies);
        }
        13 => {
            // A local pod turns into a remote one under the same name, or back.
            if let Some(i) = (!snap.pods.is_empty()).then(|| rng.below(snap.pods.len())) {
                let mut p = snap.pods[i].clone();
                if let Some(spec) = p.spec.as_mut() {
                    spec.node_name = Some(
                        if spec.node_name.as_deref() == Some("n1") {
                            "n2"
                        } else {
                            "n1"
                        }
                        .into(),
                    );
                }
                inc.set_pod(&p);
                snap.pods[i] = p;
            }
        }
        0 => {
            // A namespace is relabelled, deleted or (re)created.
            let name = NAMESPACES[rng.below(NAMESPACES.len())];
            let at = snap
                .namespaces
                .iter()
                .position(|n| n.metadata.name.as_deref() == Some(name));
            if rng.below(4) == 0 {
                if let Some(i) = at {
                    snap.namespaces.remove(i);
                    inc.remove_namespace(name);
                    return;
                }
            }
            let ns = namespace(name, rng.below(6));
            inc.set_namespace(&ns);
            match at {
                Some(i) => snap.namespaces[i] = ns,
                None => snap.namespaces.push(ns),
            }
        }
        1 | 2 => {
            // A pod goes away.
            if snap.pods.is_empty() {
                return;
            }
            let p = snap.pods.remove(rng.below(snap.pods.len()));
            inc.remove_pod(
                p.metadata.namespace.as_deref().unwrap_or_default(),
                p.metadata.name.as_deref().unwrap_or_default(),
            );
        }
        _ => {
            // A pod appears or changes (labels, address, phase; its node never changes).
            let ns = NAMESPACES[rng.below(NAMESPACES.len())];
            let name = format!("p{}", rng.below(12));
            let at = snap.pods.iter().position(|p| {
                p.metadata.namespace.as_deref() == Some(ns)
                    && p.metadata.name.as_deref() == Some(name.as_str())
            });
            let mut v = rng.below(1000);
            if let Some(i) = at {
                // Keep the node: v % 4 decides it.
                let old_remote = snap.pods[i]
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_deref())
                    == Some("n2");
                v = v - v % 4 + if old_remote { 0 } else { 1 + v % 3 };
            }
            let p = pod(ns, &name, v);
            inc.set_pod(&p);
            match at {
                Some(i) => snap.pods[i] = p,
                None => snap.pods.push(p),
            }
        }
    }
}

#[test]
fn incremental_updates_match_a_full_compile() {
    let node = NodeConfig {
        node_name: "n1".into(),
        ..NodeConfig::default()
    };
    let mut local_pods_gone = 0;
    for seed in 1..=40u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut snap = Snapshot {
            pods: Vec::new(),
            namespaces: NAMESPACES[..3]
                .iter()
                .enumerate()
                .map(|(i, n)| namespace(n, i))
                .collect(),
            policies: policies(),
            cluster_policies: if seed % 2 == 0 {
                cluster_policies()
            } else {
                Vec::new()
            },
            nodes: Vec::new(),
        };
        for k in 0..15 {
            snap.pods.push(pod(NAMESPACES[k % 4], &format!("p{k}"), k));
        }
        let mut inc = compile(&snap, &node);
        let mut kernel = Kernel::from_full(&inc.full());
        for _ in 0..60 {
            for _ in 0..=rng.below(3) {
                step(&mut rng, &mut snap, &mut inc);
            }
            let fresh = compile(&snap, &node);
            assert_eq!(
                inc.full(),
                fresh.full(),
                "seed {seed}: the incremental state renders as a fresh compile"
            );
            let script = inc.update();
            assert!(
                !script.contains("table"),
                "seed {seed}: an update never touches tables: {script}"
            );
            kernel.apply(&script);
            if script.contains("delete chain") {
                local_pods_gone += 1;
            }
            assert_eq!(
                kernel,
                Kernel::from_full(&fresh.full()),
                "seed {seed}: kernel after the update equals a full rebuild"
            );
            for (set, elems) in fresh.set_contents() {
                assert_eq!(kernel.sets.get(&set), Some(&elems), "seed {seed}: {set:?}");
            }
        }
    }
    // Local pods going away (accounting chains removed) were among the updates.
    assert!(local_pods_gone > 0);
}

/// Node n1 with pod x/a (10.32.0.2) and the test policies, compiled.
fn pod_a_on_n1() -> Compiled {
    let node = NodeConfig {
        node_name: "n1".into(),
        ..NodeConfig::default()
    };
    let snap = Snapshot {
        pods: vec![pod("x", "a", 1)],
        namespaces: vec![namespace("x", 0)],
        policies: policies(),
        ..Snapshot::default()
    };
    compile(&snap, &node)
}

#[test]
fn a_new_local_pod_is_an_element_update() {
    let mut c = pod_a_on_n1();
    c.set_pod(&pod("x", "b", 5));
    let script = c.update();
    assert!(
        script.contains("add element bridge weave-npc local-pods { 10.32.0.6 }"),
        "{script}"
    );
    assert!(
        script.contains("add counter inet weave-npc ingress-denied/x/b"),
        "{script}"
    );
    assert!(!script.contains("delete table"), "{script}");
    assert!(
        script.contains("add element inet weave-npc ingress-denied-pods { 10.32.0.6 : jump ingress-denied/x/b }"),
        "{script}"
    );
    // Nothing changed since: an empty update.
    assert_eq!(c.update(), "");
    // The local pod goes away: elements and its accounting chains go, nothing else.
    c.remove_pod("x", "b");
    let script = c.update();
    assert!(
        script.contains("delete element inet weave-npc ingress-denied-pods { 10.32.0.6 }")
            && script.contains("delete chain inet weave-npc ingress-denied/x/b")
            && script.contains("delete element bridge weave-npc local-pods { 10.32.0.6 }"),
        "{script}"
    );
    assert!(!script.contains("table"), "{script}");
}

#[test]
fn long_pod_names_still_fit_nftables_limits() {
    let node = NodeConfig {
        node_name: "n1".into(),
        ..NodeConfig::default()
    };
    let long = "p".repeat(253);
    let snap = Snapshot {
        pods: vec![pod("x", &long, 1)],
        namespaces: vec![namespace("x", 0)],
        policies: policies(),
        ..Snapshot::default()
    };
    let script = compile(&snap, &node).full();
    for line in script.lines() {
        if let Some(prefix) = line.split("log prefix \"").nth(1) {
            let prefix = prefix.split('"').next().unwrap_or_default();
            assert!(prefix.len() <= 127, "{line}");
        }
        if let Some(name) = line.strip_prefix("add chain inet weave-npc ") {
            assert!(name.len() <= 255, "{line}");
        }
    }
    assert!(script.contains("add counter inet weave-npc ingress-denied/x/ppp"));
}

#[test]
fn addresses_the_agent_handed_out_join_the_guard_set_and_leave_it() {
    use std::collections::BTreeSet;
    use std::net::Ipv4Addr;
    let mut c = pod_a_on_n1();
    // The pod's own address (10.32.0.2) and a container outside Kubernetes (10.32.0.40).
    let pod_ip = Ipv4Addr::new(10, 32, 0, 2);
    let other = Ipv4Addr::new(10, 32, 0, 40);
    c.set_attached(&BTreeSet::from([pod_ip, other]));
    let script = c.update();
    assert!(
        script.contains("add element bridge weave-npc local-pods { 10.32.0.40 }"),
        "{script}"
    );
    assert!(
        !script.contains("10.32.0.2 "),
        "the pod's address is there already: {script}"
    );
    assert_eq!(c.update(), "");
    // The container goes; the pod stays although the agent no longer lists it.
    c.set_attached(&BTreeSet::new());
    let script = c.update();
    assert!(
        script.contains("delete element bridge weave-npc local-pods { 10.32.0.40 }"),
        "{script}"
    );
    assert!(!script.contains("10.32.0.2 "), "{script}");
    let full = c.full();
    assert!(
        full.contains("10.32.0.2") && !full.contains("10.32.0.40"),
        "{full}"
    );
}
