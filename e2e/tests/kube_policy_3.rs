// SPDX-License-Identifier: Apache-2.0
//! Policy on the real 3-node cluster, weave installed from its manifest with the
//! ClusterNetworkPolicy CRD:
//!
//! - a focused subset of the upstream NetworkPolicy e2e tests passes (the whole suite runs
//!   with `make conformance`, results in `e2e/conformance/RESULTS.md`);
//! - ClusterNetworkPolicy tiers across nodes: an Admin Deny beats a namespace's allow, a Pass
//!   hands the decision back to the NetworkPolicies, a Baseline Deny applies only to pods no
//!   NetworkPolicy isolates;
//! - a connection an Admin rule denies gives one drop log line on the destination's node
//!   naming both pods and the rule, and `weave-npc explain` (run in the weave-npc container)
//!   says the same;
//! - kubelet probes keep passing under default deny of ingress and egress;
//! - a policy change is enforced on every node: the time from `kubectl apply` to the changed
//!   rule being in each node's ruleset, p50 and p99 over 20 changes, is printed
//!   (BENCHMARKS.md).

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use weave_e2e::cluster::{Cluster, ClusterOptions, Cni};
use weave_e2e::conformance::{self, Status};
use weave_e2e::kube::{self, apply, connects, pods, Pod};
use weave_e2e::wait_until;

/// The upstream tests run here (a subset of the `Netpol` focus: ingress, egress, named
/// ports, ipBlock except).
const UPSTREAM: &str = "Netpol NetworkPolicy between server and client (should support a 'default-deny-ingress' policy|should allow ingress access on one named port|should deny egress from pods based on PodSelector|should enforce except clause while egress access to server in CIDR block)";

#[test]
fn kube_policy_3() -> Result<()> {
    let cluster = Cluster::up(ClusterOptions {
        nodes: 3,
        cni: Cni::None,
        ..ClusterOptions::default()
    })?;
    kube::install_with_cluster_policies(&cluster, Duration::from_secs(120))?;
    upstream_subset(&cluster)?;
    let agnhost = cluster.image("agnhost")?.to_owned();
    cluster_policy_tiers(&cluster, &agnhost)?;
    probes_pass_under_default_deny(&cluster, &agnhost)?;
    policy_change_latency(&cluster)?;
    Ok(())
}

/// The upstream subset passes, every test of it.
fn upstream_subset(cluster: &Cluster) -> Result<()> {
    let dir = cluster.dir().join("conformance-subset");
    let outcomes = conformance::run_e2e(cluster, UPSTREAM, "", 2, &dir)?;
    for o in &outcomes {
        eprintln!(
            "kube_policy_3: {} {} ({:.0} s)",
            o.status.name(),
            o.name,
            o.seconds
        );
    }
    ensure!(
        outcomes.len() == 4,
        "expected 4 upstream tests, ran {outcomes:#?}"
    );
    ensure!(
        outcomes.iter().all(|o| o.status == Status::Passed),
        "upstream tests failed (log in {}): {outcomes:#?}",
        dir.display()
    );
    Ok(())
}

/// Pods `server` (tiers-a, node-2, serving `web` on 8080) and `server` in tiers-c (node-3),
/// clients in tiers-b (node-1) and tiers-c (node-3).
fn tier_workload(cluster: &Cluster, agnhost: &str) -> Result<(Pod, Pod, Pod, Pod)> {
    let mut manifest = String::new();
    for (ns, team) in [("tiers-a", "a"), ("tiers-b", "b"), ("tiers-c", "c")] {
        manifest.push_str(&format!(
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{ name: {ns}, labels: {{ team: {team} }} }}\n"
        ));
    }
    let pod = |ns: &str, name: &str, node: &str, args: &str| {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{ name: {name}, namespace: {ns}, labels: {{ role: {name} }} }}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 1\n  containers: [{{ name: c, image: \"{agnhost}\", args: [{args}], ports: [{{ name: web, containerPort: 8080 }}] }}]\n"
        )
    };
    manifest.push_str(&pod(
        "tiers-a",
        "server",
        "node-2",
        "netexec, --http-port=8080",
    ));
    manifest.push_str(&pod(
        "tiers-c",
        "server",
        "node-3",
        "netexec, --http-port=8080",
    ));
    manifest.push_str(&pod("tiers-b", "client", "node-1", "pause"));
    manifest.push_str(&pod("tiers-c", "client", "node-3", "pause"));
    apply(cluster, &manifest)?;
    for ns in ["tiers-a", "tiers-b", "tiers-c"] {
        kube::wait_pods_ready(cluster, ns, "role", Duration::from_secs(120))?;
    }
    let find = |ns: &str, name: &str| -> Result<Pod> {
        pods(cluster, ns, "role")?
            .into_iter()
            .find(|p| p.name == name)
            .with_context(|| format!("pod {ns}/{name}"))
    };
    Ok((
        find("tiers-a", "server")?,
        find("tiers-c", "server")?,
        find("tiers-b", "client")?,
        find("tiers-c", "client")?,
    ))
}

/// Waits until `from` reaches `to:8080` exactly when `allowed`.
fn expect(cluster: &Cluster, from: &Pod, to: &Pod, allowed: bool, what: &str) -> Result<()> {
    let target = format!("{}:8080", to.ip);
    wait_until(Duration::from_secs(60), what, || {
        Ok((connects(cluster, from, &target, "tcp") == allowed).then_some(()))
    })
}

/// Admin beats NetworkPolicy, Pass delegates, Baseline only where nothing isolates.
fn cluster_policy_tiers(cluster: &Cluster, agnhost: &str) -> Result<()> {
    let (server_a, server_c, client_b, client_c) = tier_workload(cluster, agnhost)?;
    // tiers-a allows ingress from tiers-b only.
    apply(
        cluster,
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: { name: from-b, namespace: tiers-a }
spec:
  podSelector: {}
  ingress: [{ from: [{ namespaceSelector: { matchLabels: { team: b } } }] }]
"#,
    )?;
    expect(cluster, &client_b, &server_a, true, "the namespace allow")?;
    expect(cluster, &client_c, &server_a, false, "the namespace deny")?;

    // An Admin Deny from tiers-b beats the namespace's allow.
    let admin_deny = r#"
apiVersion: policy.networking.k8s.io/v1beta1
kind: ClusterNetworkPolicy
metadata: { name: admin }
spec:
  tier: Admin
  priority: 10
  subject: { namespaces: { matchLabels: { team: a } } }
  ingress:
  - { name: deny-b, action: Deny, from: [{ namespaces: { matchLabels: { team: b } } }] }
"#;
    apply(cluster, admin_deny)?;
    expect(cluster, &client_b, &server_a, false, "the Admin Deny")?;
    drop_log_and_explain(cluster, &client_b, &server_a)?;

    // A Pass for tiers-b, before a Deny of everyone: tiers-b is decided by the
    // NetworkPolicy (allowed), tiers-c by the Deny.
    apply(
        cluster,
        r#"
apiVersion: policy.networking.k8s.io/v1beta1
kind: ClusterNetworkPolicy
metadata: { name: admin }
spec:
  tier: Admin
  priority: 10
  subject: { namespaces: { matchLabels: { team: a } } }
  ingress:
  - { name: pass-b, action: Pass, from: [{ namespaces: { matchLabels: { team: b } } }] }
  - { name: deny-all, action: Deny, from: [{ namespaces: {} }] }
"#,
    )?;
    expect(
        cluster,
        &client_b,
        &server_a,
        true,
        "Pass hands tiers-b to the NetworkPolicy",
    )?;
    expect(
        cluster,
        &client_c,
        &server_a,
        false,
        "the Admin Deny of everyone else",
    )?;
    cluster.kubectl(&["delete", "clusternetworkpolicy", "admin"])?;

    // A Baseline Deny of everything for tiers-a and tiers-c: tiers-a is isolated by its
    // NetworkPolicy, so the Baseline does not apply there; tiers-c is not, so it does.
    apply(
        cluster,
        r#"
apiVersion: policy.networking.k8s.io/v1beta1
kind: ClusterNetworkPolicy
metadata: { name: baseline }
spec:
  tier: Baseline
  priority: 1
  subject: { namespaces: { matchExpressions: [{ key: team, operator: In, values: [a, c] }] } }
  ingress:
  - { name: deny-all, action: Deny, from: [{ namespaces: {} }] }
"#,
    )?;
    expect(
        cluster,
        &client_b,
        &server_c,
        false,
        "the Baseline where nothing isolates",
    )?;
    expect(
        cluster,
        &client_b,
        &server_a,
        true,
        "no Baseline where a NetworkPolicy isolates",
    )?;
    cluster.kubectl(&["delete", "clusternetworkpolicy", "baseline"])?;
    expect(
        cluster,
        &client_b,
        &server_c,
        true,
        "open again without the Baseline",
    )?;
    Ok(())
}

/// One denied attempt: one drop log line on the server's node naming both pods and the
/// Admin rule; `weave-npc explain` names the same rule.
fn drop_log_and_explain(cluster: &Cluster, client: &Pod, server: &Pod) -> Result<()> {
    let npc = kube::weave_pod(cluster, server.node_index()?)?;
    let log = |since: &str| -> Result<Vec<String>> {
        let text = cluster.kubectl(&[
            "-n",
            kube::NAMESPACE,
            "logs",
            &npc.name,
            "-c",
            "weave-npc",
            &format!("--since-time={since}"),
        ])?;
        Ok(text
            .lines()
            .filter(|l| {
                l.contains("connection denied")
                    && l.contains(&format!("src={}/{} (", client.namespace, client.name))
                    && l.contains("dport=8080")
            })
            .map(str::to_owned)
            .collect())
    };
    let since = now_rfc3339();
    // agnhost connect with 3 s retransmits its SYN: still one line.
    let _ = connects(cluster, client, &format!("{}:8080", server.ip), "tcp");
    let lines = wait_until(Duration::from_secs(30), "the drop log line", || {
        let l = log(&since)?;
        Ok((!l.is_empty()).then_some(l))
    })?;
    ensure!(lines.len() == 1, "one attempt, one line: {lines:#?}");
    let want = format!("dst={}/{} ({})", server.namespace, server.name, server.ip);
    ensure!(
        lines[0].contains(&want)
            && lines[0].contains("policy=ClusterNetworkPolicy admin (Admin) rule deny-b"),
        "{}",
        lines[0]
    );
    let explained = cluster.kubectl(&[
        "-n",
        kube::NAMESPACE,
        "exec",
        &npc.name,
        "-c",
        "weave-npc",
        "--",
        "weave-npc",
        "explain",
        &format!("{}/{}", client.namespace, client.name),
        &format!("{}/{}", server.namespace, server.name),
        "8080/TCP",
    ])?;
    ensure!(
        explained.contains("denied by ClusterNetworkPolicy admin (Admin tier), rule deny-b: Deny")
            && explained.contains("verdict: denied"),
        "{explained}"
    );
    Ok(())
}

/// The current UTC time in RFC 3339, for `kubectl logs --since-time`.
fn now_rfc3339() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Pods with readiness and liveness probes every second stay ready and unrestarted while a
/// default deny of ingress and egress isolates them (the kubelet's probes come from the
/// node, which policy never blocks); the deny itself is in force.
fn probes_pass_under_default_deny(cluster: &Cluster, agnhost: &str) -> Result<()> {
    apply(
        cluster,
        &format!(
            r#"
apiVersion: v1
kind: Namespace
metadata: {{ name: probes }}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{ name: probed, namespace: probes }}
spec:
  replicas: 3
  selector: {{ matchLabels: {{ app: probed }} }}
  template:
    metadata: {{ labels: {{ app: probed }} }}
    spec:
      topologySpreadConstraints:
      - {{ maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {{ matchLabels: {{ app: probed }} }} }}
      containers:
      - name: c
        image: "{agnhost}"
        args: [netexec, --http-port=8080]
        readinessProbe: {{ httpGet: {{ path: /healthz, port: 8080 }}, periodSeconds: 1, failureThreshold: 1 }}
        livenessProbe: {{ httpGet: {{ path: /healthz, port: 8080 }}, periodSeconds: 1, failureThreshold: 2 }}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{ name: deny-all, namespace: probes }}
spec: {{ podSelector: {{}}, policyTypes: [Ingress, Egress] }}
"#
        ),
    )?;
    cluster.kubectl(&[
        "-n",
        "probes",
        "rollout",
        "status",
        "deployment/probed",
        "--timeout=120s",
    ])?;
    let probed = pods(cluster, "probes", "app=probed")?;
    let clients = pods(cluster, "tiers-b", "role")?;
    let client = clients.first().context("a client")?;
    // The deny is in force: nothing else reaches the pods.
    for p in &probed {
        expect(cluster, client, p, false, "the default deny")?;
    }
    // Ten more probes reach every pod (netexec logs each), through the deny.
    let healthz = |p: &Pod| -> Result<usize> {
        let log = cluster.kubectl(&["-n", "probes", "logs", &p.name])?;
        Ok(log.matches("GET /healthz").count())
    };
    for p in &probed {
        let before = healthz(p)?;
        wait_until(Duration::from_secs(60), "ten more probes", || {
            Ok((healthz(p)? >= before + 10).then_some(()))
        })?;
    }
    let out = cluster.kubectl(&[
        "-n",
        "probes",
        "get",
        "pods",
        "-o",
        "jsonpath={range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status} {.status.containerStatuses[0].restartCount}{\"\\n\"}{end}",
    ])?;
    ensure!(
        out.lines().count() == 3 && out.lines().all(|l| l == "True 0"),
        "probed pods not ready or restarted under default deny: {out}"
    );
    Ok(())
}

/// Changes the allowed port of a policy selecting the `probed` pods (one on each node) 20
/// times and measures, from the start of `kubectl apply`, when the new rule is in weave-npc's
/// ruleset on every node (each node polled by its own thread with `nft`, so the resolution
/// is one `nft` listing). Prints p50 and p99 (the largest of 20) of the slowest node, and
/// the time `kubectl apply` itself took, which is part of every figure.
// Wall-clock figures reported by the test; the waits are on conditions.
#[allow(clippy::disallowed_types)]
fn policy_change_latency(cluster: &Cluster) -> Result<()> {
    const ROUNDS: u16 = 20;
    let mut slowest = Vec::new();
    let mut kubectl = Vec::new();
    for round in 0..ROUNDS {
        let port = 20_000 + round;
        let manifest = format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{ name: latency, namespace: probes }}\nspec:\n  podSelector: {{ matchLabels: {{ app: probed }} }}\n  ingress: [{{ ports: [{{ port: {port} }}] }}]\n"
        );
        // nft lists `meta l4proto tcp th dport` as `tcp dport`.
        let rule = format!("dport {port} accept");
        let start = std::time::Instant::now();
        let per_node = std::thread::scope(|scope| -> Result<Vec<f64>> {
            let watchers: Vec<_> = (1..=3)
                .map(|i| {
                    let rule = &rule;
                    scope.spawn(move || -> Result<f64> {
                        wait_until(
                            Duration::from_secs(30),
                            "the changed rule on a node",
                            || {
                                let out = cluster
                                    .node_cmd(i, "nft")
                                    .args(["list", "table", "inet", "weave-npc"])
                                    .output()?;
                                Ok(String::from_utf8_lossy(&out.stdout)
                                    .contains(rule.as_str())
                                    .then(|| start.elapsed().as_secs_f64()))
                            },
                        )
                    })
                })
                .collect();
            apply(cluster, &manifest)?;
            kubectl.push(start.elapsed().as_secs_f64());
            watchers
                .into_iter()
                .map(|w| w.join().map_err(|_| anyhow::anyhow!("watcher panicked"))?)
                .collect()
        })?;
        slowest.push(per_node.into_iter().fold(0.0, f64::max));
    }
    let ms = |v: &mut Vec<f64>, q: usize| {
        v.sort_by(f64::total_cmp);
        v[(v.len() - 1) * q / 100] * 1000.0
    };
    eprintln!(
        "kube_policy_3: policy change to enforcement on all 3 nodes over {ROUNDS} changes: p50 {:.0} ms, p99 {:.0} ms (kubectl apply itself: p50 {:.0} ms)",
        ms(&mut slowest, 50),
        ms(&mut slowest, 100),
        ms(&mut kubectl, 50)
    );
    cluster.kubectl(&["-n", "probes", "delete", "networkpolicy", "latency"])?;
    Ok(())
}
