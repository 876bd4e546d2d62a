// SPDX-License-Identifier: Apache-2.0
//! Helpers for tests of weave on the real cluster: installing it from the manifest, finding
//! pods, running probes inside them, and asking a node's agent.
//!
//! Probes run in pods with `kubectl exec` and the agnhost image (`/agnhost connect` for TCP
//! and UDP, busybox `ping` and `nc`), exactly as the upstream e2e suite checks connectivity.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::cluster::Cluster;

/// The namespace weave installs into.
pub const NAMESPACE: &str = "kube-system";

/// The manifest users apply.
pub fn manifest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/weave-daemonset.yaml")
}

/// The uninstall manifest.
pub fn uninstall_manifest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/weave-uninstall.yaml")
}

/// The chart.
pub fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/weave")
}

/// A pod: namespace, name, node, address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Node it runs on.
    pub node: String,
    /// Its address (empty until it has one).
    pub ip: String,
}

impl Pod {
    /// The 1-based index of its node (`node-2` → 2).
    pub fn node_index(&self) -> Result<usize> {
        self.node
            .strip_prefix("node-")
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("{} runs on {}, not a node-N", self.name, self.node))
    }
}

/// Applies the manifest and waits until every node is Ready; returns how long that took.
// Wall-clock time of a real install, reported by tests and the bench; nothing waits on it.
#[allow(clippy::disallowed_types)]
pub fn install_manifest(cluster: &Cluster, timeout: Duration) -> Result<Duration> {
    let start = std::time::Instant::now();
    cluster.kubectl(&["apply", "-f", &manifest().display().to_string()])?;
    cluster.wait_ready(timeout)?;
    Ok(start.elapsed())
}

/// The ClusterNetworkPolicy CRD shipped for kubectl.
pub fn cluster_policy_crd() -> PathBuf {
    manifest().with_file_name("clusternetworkpolicy-crd.yaml")
}

/// Installs the ClusterNetworkPolicy CRD, then weave from its manifest, and waits until weave
/// runs on every node.
pub fn install_with_cluster_policies(cluster: &Cluster, timeout: Duration) -> Result<()> {
    cluster.kubectl(&["apply", "-f", &cluster_policy_crd().display().to_string()])?;
    install_manifest(cluster, timeout)?;
    rollout(cluster, NAMESPACE, "daemonset/weave-net")
}

/// The pods in `namespace` matching label `selector`.
pub fn pods(cluster: &Cluster, namespace: &str, selector: &str) -> Result<Vec<Pod>> {
    let out = cluster.kubectl(&["-n", namespace, "get", "pods", "-l", selector, "-o", "json"])?;
    let list: Value = serde_json::from_str(&out)?;
    list["items"]
        .as_array()
        .context("pod list has items")?
        .iter()
        .map(|pod| {
            let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            Ok(Pod {
                namespace: text(&pod["metadata"]["namespace"]),
                name: text(&pod["metadata"]["name"]),
                node: text(&pod["spec"]["nodeName"]),
                ip: text(&pod["status"]["podIP"]),
            })
        })
        .collect()
}

/// The weave pod on node `i`.
pub fn weave_pod(cluster: &Cluster, i: usize) -> Result<Pod> {
    let node = format!("node-{i}");
    pods(cluster, NAMESPACE, "app.kubernetes.io/name=weave")?
        .into_iter()
        .find(|p| p.node == node)
        .with_context(|| format!("no weave pod on {node}"))
}

/// `weave ARGS…` in the agent's container on node `i`.
pub fn weave(cluster: &Cluster, i: usize, args: &[&str]) -> Result<String> {
    let pod = weave_pod(cluster, i)?;
    let mut full = vec![
        "-n", NAMESPACE, "exec", &pod.name, "-c", "weave", "--", "weave",
    ];
    full.extend_from_slice(args);
    cluster.kubectl(&full)
}

/// `COMMAND…` inside `pod`; returns stdout.
pub fn exec(cluster: &Cluster, pod: &Pod, command: &[&str]) -> Result<String> {
    let mut args = vec![
        "-n",
        pod.namespace.as_str(),
        "exec",
        pod.name.as_str(),
        "--",
    ];
    args.extend_from_slice(command);
    cluster.kubectl(&args)
}

/// Whether `from` reaches `target` (`IP:PORT`) over `protocol` (`tcp` or `udp`, answered by
/// agnhost netexec) within 3 s.
pub fn connects(cluster: &Cluster, from: &Pod, target: &str, protocol: &str) -> bool {
    let protocol = format!("--protocol={protocol}");
    exec(
        cluster,
        from,
        &["/agnhost", "connect", target, "--timeout=3s", &protocol],
    )
    .is_ok()
}

/// Whether `from` gets an answer to one ping of `ip` within 2 s.
pub fn pings(cluster: &Cluster, from: &Pod, ip: &str) -> bool {
    exec(cluster, from, &["ping", "-c", "1", "-W", "2", ip]).is_ok()
}

/// The body of `GET path` on `host:port`, asked from inside `from` with busybox nc.
pub fn http_get(
    cluster: &Cluster,
    from: &Pod,
    host: &str,
    port: u16,
    path: &str,
) -> Result<String> {
    let request = format!("printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {host} {port}");
    let response = exec(cluster, from, &["sh", "-c", &request])?;
    match response.split_once("\r\n\r\n") {
        Some((head, body))
            if head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200") =>
        {
            Ok(body.trim().to_owned())
        }
        _ => bail!("unexpected answer from {host}:{port}{path}: {response:?}"),
    }
}

/// A Deployment `name` in `namespace` of `replicas` agnhost pods (`image`) running `args`
/// (agnhost subcommand and flags, YAML flow list items), labelled `app: NAME`, spread over
/// the nodes by hostname: never more than one apart when `strict`, as evenly as the
/// scheduler can otherwise.
pub fn spread_deployment(
    name: &str,
    namespace: &str,
    replicas: usize,
    image: &str,
    args: &str,
    strict: bool,
) -> String {
    let when = if strict {
        "DoNotSchedule"
    } else {
        "ScheduleAnyway"
    };
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{ name: {name}, namespace: {namespace} }}
spec:
  replicas: {replicas}
  selector: {{ matchLabels: {{ app: {name} }} }}
  template:
    metadata: {{ labels: {{ app: {name} }} }}
    spec:
      terminationGracePeriodSeconds: 1
      topologySpreadConstraints:
      - {{ maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: {when}, labelSelector: {{ matchLabels: {{ app: {name} }} }} }}
      containers:
      - {{ name: c, image: "{image}", args: [{args}] }}
"#
    )
}

/// Applies [`spread_deployment`] and waits for its rollout.
pub fn deploy_spread(
    cluster: &Cluster,
    name: &str,
    namespace: &str,
    replicas: usize,
    args: &str,
    strict: bool,
) -> Result<()> {
    let image = cluster.image("agnhost")?;
    apply(
        cluster,
        &spread_deployment(name, namespace, replicas, image, args, strict),
    )?;
    rollout(cluster, namespace, &format!("deployment/{name}"))
}

/// Waits (up to 5 minutes) for the rollout of `what` (`deployment/web`) in `namespace`.
pub fn rollout(cluster: &Cluster, namespace: &str, what: &str) -> Result<()> {
    cluster
        .kubectl(&["-n", namespace, "rollout", "status", what, "--timeout=300s"])
        .map(drop)
}

/// Applies a manifest given as text.
pub fn apply(cluster: &Cluster, manifest: &str) -> Result<()> {
    cluster
        .kubectl_with_input(&["apply", "-f", "-"], manifest)
        .map(drop)
}

/// Waits until every pod matching `selector` in `namespace` is Ready.
pub fn wait_pods_ready(
    cluster: &Cluster,
    namespace: &str,
    selector: &str,
    timeout: Duration,
) -> Result<()> {
    cluster.kubectl(&[
        "-n",
        namespace,
        "wait",
        "--for=condition=Ready",
        "pod",
        "-l",
        selector,
        &format!("--timeout={}s", timeout.as_secs()),
    ])?;
    Ok(())
}

/// The agents' peer registry (ConfigMap `weave-net`, key `peers`) as JSON.
pub fn peer_registry(cluster: &Cluster) -> Result<serde_json::Value> {
    let text = cluster.kubectl(&[
        "-n",
        NAMESPACE,
        "get",
        "configmap",
        "weave-net",
        "-o",
        "jsonpath={.data.peers}",
    ])?;
    Ok(serde_json::from_str(&text)?)
}

/// Each peer's share of the range as node `i`'s agent reports it: `name(nickname) N IPs`
/// lines without the per-peer usage (which only the owner knows exactly), sorted.
pub fn ipam_shares(cluster: &Cluster, i: usize) -> Result<Vec<String>> {
    let out = weave(cluster, i, &["status", "ipam"])?;
    let mut shares: Vec<String> = out
        .lines()
        .filter(|l| l.contains(" IPs "))
        .map(|l| {
            l.split(" IPs ")
                .next()
                .unwrap_or_default()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    shares.sort();
    Ok(shares)
}

/// What of weave is left on node `i`: devices, nftables tables, CNI files, state and run
/// directories (empty after a clean uninstall, and before any install).
pub fn leftovers_on_node(cluster: &Cluster, i: usize) -> Result<Vec<String>> {
    let mut left = Vec::new();
    let links = cluster.node_cmd(i, "ip").args(["-o", "link"]).output()?;
    for line in String::from_utf8_lossy(&links.stdout).lines() {
        let name = line.split(": ").nth(1).unwrap_or_default();
        if name.starts_with("weave") || name.starts_with("vethwe") {
            left.push(format!("device {name}"));
        }
    }
    let tables = cluster
        .node_cmd(i, "nft")
        .args(["list", "tables"])
        .output()?;
    for line in String::from_utf8_lossy(&tables.stdout).lines() {
        if line
            .split_whitespace()
            .nth(2)
            .is_some_and(|t| t.starts_with("weave"))
        {
            left.push(line.to_owned());
        }
    }
    for dir in ["/opt/cni/bin", "/etc/cni/net.d"] {
        let path = cluster.node_path(i, dir)?;
        for entry in std::fs::read_dir(&path).with_context(|| format!("list {}", path.display()))? {
            left.push(format!("{dir}/{}", entry?.file_name().to_string_lossy()));
        }
    }
    for dir in ["/var/lib/weave", "/run/weave"] {
        if cluster.node_path(i, dir)?.exists() {
            left.push(dir.to_owned());
        }
    }
    Ok(left)
}

/// Runs the documented uninstall after the objects are gone (`kubectl delete -f` or `helm
/// uninstall`): the uninstall DaemonSet until it is ready, then its deletion, then the peer
/// registry's.
pub fn run_uninstall(cluster: &Cluster) -> Result<()> {
    let uninstall = uninstall_manifest().display().to_string();
    cluster.kubectl(&["apply", "-f", &uninstall])?;
    cluster.kubectl(&[
        "-n",
        NAMESPACE,
        "rollout",
        "status",
        "daemonset/weave-uninstall",
        "--timeout=120s",
    ])?;
    cluster.kubectl(&["delete", "-f", &uninstall, "--wait=true", "--timeout=120s"])?;
    cluster.kubectl(&[
        "-n",
        NAMESPACE,
        "delete",
        "configmap",
        "weave-net",
        "--ignore-not-found",
    ])?;
    Ok(())
}

/// Starts pod `name` in `namespace` on `node` that connects to `target` (`IP:PORT`, TCP)
/// every 200 ms and logs `UPTIME ok|fail` per try; returns when it runs.
pub fn start_prober(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    node: &str,
    target: &str,
) -> Result<()> {
    let agnhost = cluster.image("agnhost")?;
    apply(
        cluster,
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{ name: {name}, namespace: {namespace} }}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: "{agnhost}"
    command: [sh, -c, "while :; do t=$(cut -d' ' -f1 /proc/uptime); if /agnhost connect {target} --timeout=1s; then echo \"$t ok\"; else echo \"$t fail\"; fi; usleep 200000; done"]
"#
        ),
    )?;
    cluster.kubectl(&[
        "-n",
        namespace,
        "wait",
        "--for=condition=Ready",
        &format!("pod/{name}"),
        "--timeout=120s",
    ])?;
    Ok(())
}

/// From a prober's log: the longest time between two successful tries with only failures
/// between, in seconds, and the number of failed tries.
pub fn longest_gap(log: &str) -> (f64, usize) {
    let mut last_ok: Option<f64> = None;
    let mut longest: f64 = 0.0;
    let mut failures = 0;
    for line in log.lines() {
        let Some((t, outcome)) = line.split_once(' ') else {
            continue;
        };
        let Ok(t) = t.parse::<f64>() else { continue };
        if outcome != "ok" {
            failures += 1;
            continue;
        }
        if let Some(previous) = last_ok {
            longest = longest.max(t - previous);
        }
        last_ok = Some(t);
    }
    (longest, failures)
}

/// Restarts the DaemonSet (`kubectl rollout restart`) and waits for the rollout and for
/// prober `name` to succeed three times in a row; returns the prober's whole log.
pub fn restart_under_probe(cluster: &Cluster, namespace: &str, name: &str) -> Result<String> {
    cluster.kubectl(&["-n", NAMESPACE, "rollout", "restart", "daemonset/weave-net"])?;
    cluster.kubectl(&[
        "-n",
        NAMESPACE,
        "rollout",
        "status",
        "daemonset/weave-net",
        "--timeout=300s",
    ])?;
    crate::wait_until(
        std::time::Duration::from_secs(30),
        "the prober's traffic to flow again",
        || {
            let log = cluster.kubectl(&["-n", namespace, "logs", name, "--tail=3"])?;
            Ok((log.lines().count() == 3 && log.lines().all(|l| l.ends_with(" ok"))).then_some(()))
        },
    )?;
    cluster.kubectl(&["-n", namespace, "logs", name])
}
