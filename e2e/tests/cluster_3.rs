// SPDX-License-Identifier: Apache-2.0
//! The real cluster itself: three nodes of upstream Kubernetes on namespace machines.
//!
//! One cluster serves every check (it takes about a minute to start): nodes are NotReady
//! without a pod network and turn Ready with the reference CNI; a Deployment of agnhost spreads
//! over every node, `kubectl exec` and `kubectl logs` work, a ClusterIP Service is reached
//! through kube-proxy (also with `internalTrafficPolicy: Local`, which only a node-local
//! backend can answer); RBAC holds for a ServiceAccount's own token; a hostNetwork DaemonSet
//! runs one pod per node in that node's network namespace. After the cluster is dropped no
//! namespace, cgroup, process or file of it is left.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;
use weave_e2e::cluster::{Cluster, ClusterOptions, Cni};
use weave_e2e::kube::{http_get, pods, Pod};
use weave_e2e::wait_until;

const NODES: usize = 3;

#[test]
fn cluster_3() -> Result<()> {
    step("start");
    let cluster = Cluster::up(ClusterOptions {
        nodes: NODES,
        cni: Cni::None,
        ..ClusterOptions::default()
    })?;
    let prefix = cluster.bed().prefix().to_owned();
    let dir = cluster.dir().to_owned();

    step("up");
    components_report_their_versions(&cluster)?;
    nodes_wait_for_a_network(&cluster)?;
    step("NotReady without a network");
    cluster.install_reference_cni()?;
    cluster.wait_ready(Duration::from_secs(120))?;
    step("Ready with the reference CNI");

    let agnhost = cluster.image("agnhost")?.to_owned();
    let pods = deployment_spreads_over_every_node(&cluster, &agnhost)?;
    step("deployment on every node");
    exec_and_logs_work(&cluster, &pods)?;
    step("exec and logs");
    services_reach_backends(&cluster, &pods)?;
    step("services");
    rbac_holds_for_a_service_account(&cluster)?;
    step("RBAC");
    host_network_daemonset_runs_in_node_namespaces(&cluster, &agnhost)?;
    step("hostNetwork daemonset");

    drop(cluster);
    step("teardown");
    let left = leftovers(&prefix, &dir)?;
    assert!(left.is_empty(), "left behind after teardown: {left:#?}");
    Ok(())
}

/// A start that fails half way (weave's binaries are missing, found only after the control
/// plane runs) says so, names the cluster, and leaves nothing behind; so does a directory
/// where the machines would overlay the host.
#[test]
fn a_failed_start_leaves_nothing() -> Result<()> {
    let empty = std::env::temp_dir().join(format!("wv-no-binaries-{}", std::process::id()));
    std::fs::create_dir_all(&empty)?;
    let dir = std::env::temp_dir().join(format!("wv-failed-cluster-{}", std::process::id()));
    let err = Cluster::up(ClusterOptions {
        nodes: 1,
        cni: Cni::None,
        dir: Some(dir.clone()),
        weave_bin_dir: Some(empty.clone()),
    })
    .expect_err("the weave image cannot be built");
    let text = format!("{err:#}");
    assert!(
        text.contains("weaver") && text.contains("not found"),
        "{text}"
    );
    let prefix = text
        .split_whitespace()
        .map(|w| w.trim_end_matches(':'))
        .find(|w| w.starts_with("wv") && w.len() == 8)
        .context("the error names the cluster")?;
    let left = leftovers(prefix, &dir)?;
    assert!(
        left.is_empty(),
        "left behind after a failed start: {left:#?}"
    );
    std::fs::remove_dir(&empty)?;
    let err = Cluster::up(ClusterOptions {
        nodes: 1,
        dir: Some("/var/tmp/wv-cluster-under-var".into()),
        ..ClusterOptions::default()
    })
    .expect_err("a directory under /var is refused");
    assert!(
        format!("{err:#}").contains("must not be under /var"),
        "{err:#}"
    );
    assert!(!std::path::Path::new("/var/tmp/wv-cluster-under-var").exists());
    Ok(())
}

/// Prints a progress line with the time since the first one.
// Wall-clock progress for the CI log; nothing waits on it.
#[allow(clippy::disallowed_types)]
fn step(what: &str) {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(std::time::Instant::now);
    eprintln!("cluster_3: {what} ({:.1} s)", start.elapsed().as_secs_f64());
}

/// The API server and every kubelet report the pinned release (the build stamps versions),
/// the cluster's helm runs, and `weave-cluster images` lists what the nodes imported.
fn components_report_their_versions(cluster: &Cluster) -> Result<()> {
    let version: Value = serde_json::from_str(&cluster.kubectl(&["version", "-o", "json"])?)?;
    let release = cluster.tools().version("kubernetes")?;
    assert_eq!(
        version["serverVersion"]["gitVersion"],
        release.as_str(),
        "{version}"
    );
    let nodes: Value = serde_json::from_str(&cluster.kubectl(&["get", "nodes", "-o", "json"])?)?;
    for node in nodes["items"].as_array().context("nodes")? {
        assert_eq!(
            node["status"]["nodeInfo"]["kubeletVersion"],
            release.as_str()
        );
    }
    let helm = std::process::Command::new(cluster.dir().join("bin/helm"))
        .args(["version", "--short"])
        .output()?;
    assert!(
        String::from_utf8_lossy(&helm.stdout).starts_with("v4."),
        "{helm:?}"
    );
    let listed = std::process::Command::new(weave_e2e::bin("weave-cluster")?)
        .args(["images", "--dir"])
        .arg(cluster.dir())
        .output()?;
    let listed: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(listed, cluster.images());
    for image in cluster.images() {
        let on_node = cluster.crictl(1, &["inspecti", image])?;
        assert!(
            on_node.contains(image.as_str()),
            "{image} not on node-1: {on_node}"
        );
    }
    Ok(())
}

/// Without a CNI configuration every node is NotReady for the runtime's network.
fn nodes_wait_for_a_network(cluster: &Cluster) -> Result<()> {
    let conditions = wait_until(
        Duration::from_secs(60),
        "every node to report Ready",
        || {
            let found = cluster.node_conditions("Ready")?;
            Ok((found.len() == NODES).then_some(found))
        },
    )?;
    for (node, status, message) in conditions {
        assert_eq!(
            status, "False",
            "{node} is Ready without a network: {message}"
        );
        assert!(
            message.contains("NetworkPluginNotReady"),
            "{node} is NotReady for another reason: {message}"
        );
    }
    Ok(())
}

/// Six agnhost replicas, spread by hostname, run on every node with an address of that node's
/// subnet.
fn deployment_spreads_over_every_node(cluster: &Cluster, agnhost: &str) -> Result<Vec<Pod>> {
    let manifest = format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{ name: web, labels: {{ app: web }} }}
spec:
  replicas: 6
  selector: {{ matchLabels: {{ app: web }} }}
  template:
    metadata: {{ labels: {{ app: web }} }}
    spec:
      topologySpreadConstraints:
      - maxSkew: 1
        topologyKey: kubernetes.io/hostname
        whenUnsatisfiable: DoNotSchedule
        labelSelector: {{ matchLabels: {{ app: web }} }}
      containers:
      - name: web
        image: {agnhost}
        args: ["netexec", "--http-port=8080"]
        readinessProbe: {{ httpGet: {{ path: /healthz, port: 8080 }}, periodSeconds: 2 }}
"#
    );
    cluster.kubectl_with_input(&["apply", "-f", "-"], &manifest)?;
    cluster.kubectl(&["rollout", "status", "deployment/web", "--timeout=180s"])?;
    let pods = pods(cluster, "default", "app=web")?;
    assert_eq!(pods.len(), 6, "{pods:?}");
    let nodes: BTreeSet<&str> = pods.iter().map(|p| p.node.as_str()).collect();
    assert_eq!(nodes.len(), NODES, "pods are not on every node: {pods:?}");
    for pod in &pods {
        let index: usize = pod.node.trim_start_matches("node-").parse()?;
        assert!(
            pod.ip.starts_with(&format!("10.32.{index}.")),
            "{} on {} has {} outside the node's subnet",
            pod.name,
            pod.node,
            pod.ip
        );
    }
    Ok(pods)
}

/// `kubectl exec` runs in the container; `kubectl logs` shows what it printed.
fn exec_and_logs_work(cluster: &Cluster, pods: &[Pod]) -> Result<()> {
    for pod in pods {
        let hostname = cluster.kubectl(&["exec", &pod.name, "--", "hostname"])?;
        assert_eq!(hostname.trim(), pod.name);
        let logs = cluster.kubectl(&["logs", &pod.name])?;
        assert!(
            logs.contains("Started HTTP server on port 8080"),
            "{}: {logs}",
            pod.name
        );
    }
    Ok(())
}

/// From a pod on every node, the Service answers with one of its pods; with
/// `internalTrafficPolicy: Local` it answers with a pod on the asking pod's own node.
fn services_reach_backends(cluster: &Cluster, pods: &[Pod]) -> Result<()> {
    let manifest = r#"
apiVersion: v1
kind: Service
metadata: { name: web }
spec:
  selector: { app: web }
  ports: [{ port: 80, targetPort: 8080 }]
---
apiVersion: v1
kind: Service
metadata: { name: web-local }
spec:
  selector: { app: web }
  internalTrafficPolicy: Local
  ports: [{ port: 80, targetPort: 8080 }]
"#;
    cluster.kubectl_with_input(&["apply", "-f", "-"], manifest)?;
    let names: BTreeSet<&str> = pods.iter().map(|p| p.name.as_str()).collect();
    for service in ["web", "web-local"] {
        let ip = cluster.kubectl(&[
            "get",
            "service",
            service,
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])?;
        for client in one_pod_per_node(pods) {
            let answer = wait_until(
                Duration::from_secs(30),
                &format!("{service} from {}", client.name),
                || Ok(Some(http_get(cluster, &client, &ip, 80, "/hostname")?)),
            )?;
            assert!(
                names.contains(answer.as_str()),
                "{service} answered {answer:?}, not one of {names:?}"
            );
            if service == "web-local" {
                let backend = pods
                    .iter()
                    .find(|p| p.name == answer)
                    .context("backend is a pod")?;
                assert_eq!(
                    backend.node, client.node,
                    "a Local service answered from another node's pod"
                );
            }
        }
    }
    Ok(())
}

/// A ServiceAccount without a binding cannot list Nodes, with its own token as with
/// impersonation; after a ClusterRoleBinding it can.
fn rbac_holds_for_a_service_account(cluster: &Cluster) -> Result<()> {
    cluster.kubectl(&["create", "serviceaccount", "probe"])?;
    let subject = "system:serviceaccount:default:probe";
    let can_i = || -> Result<String> {
        // `auth can-i` exits 1 for "no", so read its output either way.
        let out = cluster
            .kubectl_cmd()
            .args(["auth", "can-i", "list", "nodes", "--as", subject])
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let token = cluster.kubectl(&["create", "token", "probe"])?;
    let with_token = |args: &[&str]| {
        std::process::Command::new(cluster.tools().bin("kubectl"))
            .args(["--kubeconfig", "/dev/null", "--server", &cluster.server()])
            .arg("--certificate-authority")
            .arg(cluster.ca())
            .args(["--token", token.trim()])
            .args(args)
            .output()
    };
    assert_eq!(can_i()?, "no");
    let denied = with_token(&["get", "nodes"])?;
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(
        !denied.status.success() && stderr.contains("Forbidden"),
        "listing nodes was not refused: {stderr}"
    );
    cluster.kubectl(&[
        "create",
        "clusterrole",
        "node-reader",
        "--verb=list,get",
        "--resource=nodes",
    ])?;
    cluster.kubectl(&[
        "create",
        "clusterrolebinding",
        "probe-reads-nodes",
        "--clusterrole=node-reader",
        "--serviceaccount=default:probe",
    ])?;
    wait_until(
        Duration::from_secs(30),
        "the binding to take effect",
        || Ok((can_i()? == "yes").then_some(())),
    )?;
    let allowed = with_token(&["get", "nodes", "-o", "name"])?;
    let listed = String::from_utf8_lossy(&allowed.stdout);
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    assert_eq!(listed.lines().count(), NODES, "{listed}");
    Ok(())
}

/// A hostNetwork DaemonSet has one pod per node, each in that node's network namespace.
fn host_network_daemonset_runs_in_node_namespaces(cluster: &Cluster, agnhost: &str) -> Result<()> {
    let manifest = format!(
        r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {{ name: hostnet }}
spec:
  selector: {{ matchLabels: {{ app: hostnet }} }}
  template:
    metadata: {{ labels: {{ app: hostnet }} }}
    spec:
      hostNetwork: true
      containers:
      - name: pause
        image: {agnhost}
        args: ["pause"]
"#
    );
    cluster.kubectl_with_input(&["apply", "-f", "-"], &manifest)?;
    cluster.kubectl(&["rollout", "status", "daemonset/hostnet", "--timeout=120s"])?;
    let pods = pods(cluster, "default", "app=hostnet")?;
    assert_eq!(pods.len(), NODES, "{pods:?}");
    for pod in &pods {
        let index: usize = pod.node.trim_start_matches("node-").parse()?;
        let inode =
            std::fs::metadata(Path::new("/run/netns").join(cluster.node_netns(index)))?.ino();
        let seen = cluster.kubectl(&["exec", &pod.name, "--", "readlink", "/proc/self/ns/net"])?;
        assert_eq!(
            seen.trim(),
            format!("net:[{inode}]"),
            "{} is not in {}'s namespace",
            pod.name,
            pod.node
        );
        assert_eq!(pod.ip, cluster.node_ip(index).to_string());
    }
    Ok(())
}

/// The first pod on each node.
fn one_pod_per_node(pods: &[Pod]) -> Vec<Pod> {
    let mut seen = BTreeSet::new();
    pods.iter()
        .filter(|p| seen.insert(p.node.clone()))
        .cloned()
        .collect()
}

/// Whatever of cluster `prefix` is still on the machine: namespaces, cgroups, processes whose
/// command line names its directory, and the directory itself.
fn leftovers(prefix: &str, dir: &Path) -> Result<Vec<String>> {
    let mut left = Vec::new();
    for entry in std::fs::read_dir("/run/netns")? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) {
            left.push(format!("namespace {name}"));
        }
    }
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup")? {
        let hierarchy = hierarchy?.path();
        for entry in std::fs::read_dir(&hierarchy)
            .into_iter()
            .flatten()
            .flatten()
        {
            if entry.file_name().to_string_lossy().starts_with(prefix) {
                left.push(format!("cgroup {}", entry.path().display()));
            }
        }
    }
    let dir_text = dir.display().to_string();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&dir_text) {
            left.push(format!(
                "process {}: {cmdline}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    if dir.exists() {
        left.push(format!("directory {}", dir.display()));
    }
    Ok(left)
}
