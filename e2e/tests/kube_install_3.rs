// SPDX-License-Identifier: Apache-2.0
//! weave installed on the real 3-node cluster with `kubectl apply -f
//! manifests/weave-daemonset.yaml`, as a user would:
//!
//! - every node turns Ready within 60 s; the ServiceAccount holds exactly the rules the
//!   manifest grants, and neither container meets a 403;
//! - pods on different nodes reach each other over TCP, UDP and ICMP with their own
//!   addresses; a ClusterIP Service whose backend is on another node answers; a hostPort is
//!   reached from a machine outside the cluster through the node's address; pods reach an
//!   address outside the pod network, which sees the node's address;
//! - a NetworkPolicy (default deny plus one allow) holds between pods on different nodes;
//! - `kubectl rollout restart daemonset/weave-net` while a pod talks to a pod on another
//!   node: traffic resumes, no address is handed out twice, and the gap is reported;
//! - `kubectl weave status` (the plugin, found by kubectl on PATH) shows all nodes with two
//!   established connections each and IPAM shares summing to the range, as text and JSON; a
//!   user without access to pods/proxy gets one clear line;
//! - uninstalling leaves every node as it was: no weave devices, nftables tables, CNI files,
//!   state or run directories.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use weave_e2e::cluster::{Cluster, ClusterOptions, Cni};
use weave_e2e::kube::{self, apply, connects, exec, http_get, pings, pods, wait_pods_ready, Pod};
use weave_e2e::wait_until;

const NODES: usize = 3;

#[test]
fn kube_install_3() -> Result<()> {
    let cluster = Cluster::up(ClusterOptions {
        nodes: NODES,
        cni: Cni::None,
        ..ClusterOptions::default()
    })?;
    let took = kube::install_manifest(&cluster, Duration::from_secs(60))?;
    eprintln!(
        "kube_install_3: all {NODES} nodes Ready {:.1} s after kubectl apply",
        took.as_secs_f64()
    );
    network_unavailable_is_cleared(&cluster)?;
    registry_heals_when_deleted(&cluster)?;
    service_account_holds_exactly_the_manifests_rules(&cluster)?;

    let agnhost = cluster.image("agnhost")?.to_owned();
    let web = start_workload(&cluster, &agnhost)?;
    pods_reach_each_other(&cluster, &web)?;
    service_reaches_a_backend_on_another_node(&cluster, &web)?;
    host_port_is_reached_from_outside(&cluster)?;
    pods_reach_outside_as_their_node(&cluster, &web)?;
    network_policy_holds_across_nodes(&cluster, &agnhost)?;
    rolling_restart_keeps_addresses(&cluster, &web)?;
    no_permission_was_refused(&cluster)?;
    kubectl_weave_shows_every_node(&cluster)?;
    uninstall_leaves_nodes_clean(&cluster)?;
    Ok(())
}

/// The agent sets NetworkUnavailable=False on its Node.
fn network_unavailable_is_cleared(cluster: &Cluster) -> Result<()> {
    wait_until(
        Duration::from_secs(30),
        "NetworkUnavailable=False on every node",
        || {
            let found = cluster.node_conditions("NetworkUnavailable")?;
            Ok(
                (found.len() == NODES && found.iter().all(|(_, status, _)| status == "False"))
                    .then_some(()),
            )
        },
    )
}

/// The peer registry lists every agent; deleted by mistake, it is written again by the live
/// agents (else their next restart would take them for reclaimed peers).
fn registry_heals_when_deleted(cluster: &Cluster) -> Result<()> {
    let listed = || -> Result<usize> {
        let doc = kube::peer_registry(cluster)?;
        Ok(doc["peers"].as_array().map_or(0, Vec::len))
    };
    ensure!(listed()? == NODES, "the registry does not list every agent");
    cluster.kubectl(&["-n", kube::NAMESPACE, "delete", "configmap", "weave-net"])?;
    wait_until(
        Duration::from_secs(60),
        "the agents to list themselves again",
        || Ok(listed().ok().filter(|n| *n == NODES).map(drop)),
    )
}

/// `kubectl auth can-i --list` for the ServiceAccount shows exactly the manifest's rules for
/// the resources weave touches, cluster-wide and in kube-system.
fn service_account_holds_exactly_the_manifests_rules(cluster: &Cluster) -> Result<()> {
    let subject = "system:serviceaccount:kube-system:weave-net";
    let ours = [
        "nodes",
        "nodes/status",
        "pods",
        "namespaces",
        "networkpolicies.networking.k8s.io",
        "clusternetworkpolicies.policy.networking.k8s.io",
        "events.events.k8s.io",
        "configmaps",
    ];
    let rules = |namespace: &str| -> Result<BTreeSet<String>> {
        let out =
            cluster.kubectl(&["auth", "can-i", "--list", "--as", subject, "-n", namespace])?;
        Ok(out
            .lines()
            .skip(1)
            .filter_map(|line| {
                let cols: Vec<&str> = line.split_whitespace().collect();
                let resource = *cols.first()?;
                ours.contains(&resource).then(|| cols.join(" "))
            })
            .collect())
    };
    let cluster_wide: BTreeSet<String> = [
        "clusternetworkpolicies.policy.networking.k8s.io [] [] [list watch]",
        "events.events.k8s.io [] [] [create patch]",
        "namespaces [] [] [list watch]",
        "networkpolicies.networking.k8s.io [] [] [list watch]",
        "nodes [] [] [list watch]",
        "nodes/status [] [] [patch]",
        "pods [] [] [list watch]",
    ]
    .map(String::from)
    .into();
    assert_eq!(rules("default")?, cluster_wide);
    let mut in_kube_system = cluster_wide.clone();
    in_kube_system.insert("configmaps [] [] [create]".into());
    in_kube_system.insert("configmaps [] [weave-net] [get update]".into());
    assert_eq!(rules("kube-system")?, in_kube_system);
    Ok(())
}

/// `kubectl weave status` through kubectl's plugin lookup, with the admin's kubeconfig.
fn kubectl_weave(cluster: &Cluster, args: &[&str]) -> Result<std::process::Output> {
    let path = std::env::join_paths(std::iter::once(weave_e2e::bin_dir()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))?;
    let kubectl = cluster.kubectl_cmd().get_program().to_owned();
    Command::new(kubectl)
        .env("KUBECONFIG", cluster.kubeconfig())
        .env("PATH", path)
        .arg("weave")
        .args(args)
        .output()
        .context("run kubectl weave")
}

/// The cluster-wide view of `kubectl weave status`: every node, its connections to the two
/// others established, the IPAM shares summing to the whole range and agreed by all nodes;
/// a user without RBAC on pods/proxy is told what is missing.
fn kubectl_weave_shows_every_node(cluster: &Cluster) -> Result<()> {
    weave_e2e::bin("kubectl-weave")?;
    let mut last = String::new();
    let settled = wait_until(
        Duration::from_secs(60),
        "kubectl weave to show settled nodes",
        || {
            let out = kubectl_weave(cluster, &["status", "-o", "json"])?;
            last = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let Ok(json) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
                return Ok(None);
            };
            let Some(nodes) = json["nodes"].as_array() else {
                return Ok(None);
            };
            let settled = nodes.len() == NODES
                && json["ipam_agrees"] == true
                && nodes.iter().all(|n| {
                    let r = &n["report"];
                    let established = r["connections"].as_array().map_or(0, |c| {
                        c.iter().filter(|c| c["state"] == "established").count()
                    });
                    let total = r["ipam"]["total"].as_u64().unwrap_or(0);
                    let owned: u64 = r["ipam"]["owners"].as_array().map_or(0, |o| {
                        o.iter().filter_map(|o| o["addresses"].as_u64()).sum()
                    });
                    established == NODES - 1 && total > 0 && owned == total
                });
            Ok(settled.then_some(()))
        },
    );
    settled.with_context(|| format!("last output of kubectl weave status -o json:\n{last}"))?;

    let out = kubectl_weave(cluster, &["status"])?;
    let text = String::from_utf8(out.stdout)?;
    ensure!(
        out.status.success(),
        "kubectl weave status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let node_rows = text
        .lines()
        .filter(|l| l.contains(&format!("{}/{} established", NODES - 1, NODES - 1)))
        .count();
    ensure!(
        node_rows == NODES,
        "expected {NODES} nodes with all connections established:\n{text}"
    );
    ensure!(text.contains("every node sees the same owners"), "{text}");
    eprintln!("kubectl weave status:\n{text}");

    let out = kubectl_weave(cluster, &["status", "connections", "--node", "node-1"])?;
    let text = String::from_utf8(out.stdout)?;
    let rows: Vec<&str> = text.lines().skip(1).collect();
    ensure!(
        rows.len() == NODES - 1
            && rows
                .iter()
                .all(|r| r.starts_with("node-1 ") && r.contains("established")),
        "connections of node-1:\n{text}"
    );

    let out = kubectl_weave(
        cluster,
        &["status", "--as", "system:serviceaccount:net:default"],
    )?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success(),
        "a user without RBAC was shown the status"
    );
    ensure!(
        err.contains("forbidden: kubectl weave needs list on pods and get on pods/proxy"),
        "unclear error for a user without RBAC: {err}"
    );
    Ok(())
}

/// Namespace `net`: one agnhost per node (Deployment `web`), and `pinned` on node-2 with a
/// hostPort and a Service of its own.
fn start_workload(cluster: &Cluster, agnhost: &str) -> Result<Vec<Pod>> {
    apply(
        cluster,
        &format!(
            r#"
apiVersion: v1
kind: Namespace
metadata: {{ name: net }}
---
apiVersion: v1
kind: Pod
metadata: {{ name: pinned, namespace: net, labels: {{ app: pinned }} }}
spec:
  nodeName: node-2
  containers:
  - name: web
    image: "{agnhost}"
    args: [netexec, --http-port=8080]
    ports: [{{ containerPort: 8080, hostPort: 18080 }}]
---
apiVersion: v1
kind: Service
metadata: {{ name: pinned, namespace: net }}
spec:
  selector: {{ app: pinned }}
  ports: [{{ port: 80, targetPort: 8080 }}]
"#
        ),
    )?;
    kube::deploy_spread(
        cluster,
        "web",
        "net",
        NODES,
        "netexec, --http-port=8080, --udp-port=8081",
        true,
    )?;
    wait_pods_ready(cluster, "net", "app=pinned", Duration::from_secs(120))?;
    let web = pods(cluster, "net", "app=web")?;
    let nodes: BTreeSet<&str> = web.iter().map(|p| p.node.as_str()).collect();
    ensure!(nodes.len() == NODES, "web pods not on every node: {web:?}");
    let range: ipnet::Ipv4Net = "10.32.0.0/12".parse()?;
    for pod in &web {
        ensure!(
            range.contains(&pod.ip.parse::<std::net::Ipv4Addr>()?),
            "{} has {} outside weave's range",
            pod.name,
            pod.ip
        );
    }
    Ok(web)
}

/// Every pod reaches every other, over TCP, UDP and ICMP, and sees its peer's pod address.
fn pods_reach_each_other(cluster: &Cluster, web: &[Pod]) -> Result<()> {
    for from in web {
        for to in web.iter().filter(|p| p.name != from.name) {
            ensure!(
                connects(cluster, from, &format!("{}:8080", to.ip), "tcp"),
                "TCP {} → {}",
                from.name,
                to.name
            );
            ensure!(
                connects(cluster, from, &format!("{}:8081", to.ip), "udp"),
                "UDP {} → {}",
                from.name,
                to.name
            );
            ensure!(
                pings(cluster, from, &to.ip),
                "ICMP {} → {}",
                from.name,
                to.name
            );
            let seen = http_get(cluster, from, &to.ip, 8080, "/clientip")?;
            ensure!(
                seen.starts_with(&format!("{}:", from.ip)),
                "{} saw {} as {seen}, not by its pod address {}",
                to.name,
                from.name,
                from.ip
            );
        }
    }
    Ok(())
}

/// The `pinned` Service (its only backend on node-2) answers from pods on the other nodes.
fn service_reaches_a_backend_on_another_node(cluster: &Cluster, web: &[Pod]) -> Result<()> {
    let ip = cluster.kubectl(&[
        "-n",
        "net",
        "get",
        "service",
        "pinned",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ])?;
    for from in web.iter().filter(|p| p.node != "node-2") {
        let answer = wait_until(
            Duration::from_secs(30),
            &format!("the Service from {}", from.name),
            || Ok(http_get(cluster, from, &ip, 80, "/hostname").ok()),
        )?;
        ensure!(answer == "pinned", "the Service answered {answer:?}");
    }
    Ok(())
}

/// The outside machine reaches `pinned` through node-2's address and hostPort 18080.
fn host_port_is_reached_from_outside(cluster: &Cluster) -> Result<()> {
    let node_ip = cluster.node_ip(2).to_string();
    let answer = wait_until(Duration::from_secs(30), "the hostPort from outside", || {
        let out = Command::new("ip")
            .args(["netns", "exec", cluster.outside_netns(), "sh", "-c"])
            .arg(format!(
                "printf 'GET /hostname HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {node_ip} 18080"
            ))
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        Ok(text
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.trim().to_owned()))
    })?;
    ensure!(answer == "pinned", "the hostPort answered {answer:?}");
    Ok(())
}

/// A server on the outside machine sees each pod's traffic coming from the pod's node.
fn pods_reach_outside_as_their_node(cluster: &Cluster, web: &[Pod]) -> Result<()> {
    let outside = cluster.outside_ip().to_string();
    let server = OutsideServer::start(cluster.outside_netns(), &outside, 9090)?;
    for from in web {
        let seen = wait_until(
            Duration::from_secs(20),
            &format!("{} to reach outside", from.name),
            || {
                let out = exec(
                    cluster,
                    from,
                    &["sh", "-c", &format!("nc -w 3 {outside} 9090 </dev/null")],
                );
                Ok(out
                    .ok()
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty()))
            },
        )?;
        let node_ip = cluster.node_ip(from.node_index()?).to_string();
        ensure!(
            seen == node_ip,
            "outside saw {} as {seen}, not its node {node_ip}",
            from.name
        );
        ensure!(
            pings(cluster, from, &outside),
            "{} cannot ping outside",
            from.name
        );
    }
    drop(server);
    Ok(())
}

/// Default deny into `server` (node-2) plus an allow from pods labelled `access=yes`: the
/// labelled client (node-1) still connects, the other (node-3) no longer does.
fn network_policy_holds_across_nodes(cluster: &Cluster, agnhost: &str) -> Result<()> {
    let pod = |name: &str, node: &str, labels: &str, args: &str| {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{ name: {name}, namespace: np, labels: {{ {labels} }} }}\nspec:\n  nodeName: {node}\n  containers: [{{ name: c, image: \"{agnhost}\", args: [{args}] }}]\n"
        )
    };
    let manifest = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{ name: np }}\n{}{}{}",
        pod(
            "server",
            "node-2",
            "role: server",
            "netexec, --http-port=8080"
        ),
        pod("client-a", "node-1", "access: \"yes\"", "pause"),
        pod("client-b", "node-3", "access: \"no\"", "pause"),
    );
    apply(cluster, &manifest)?;
    for name in ["server", "client-a", "client-b"] {
        cluster.kubectl(&[
            "-n",
            "np",
            "wait",
            "--for=condition=Ready",
            &format!("pod/{name}"),
            "--timeout=120s",
        ])?;
    }
    let all = pods(cluster, "np", "")?;
    let find = |name: &str| all.iter().find(|p| p.name == name).cloned().context("pod");
    let (server, a, b) = (find("server")?, find("client-a")?, find("client-b")?);
    let target = format!("{}:8080", server.ip);
    ensure!(
        connects(cluster, &a, &target, "tcp") && connects(cluster, &b, &target, "tcp"),
        "open before any policy"
    );
    apply(
        cluster,
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: { name: deny-all, namespace: np }
spec: { podSelector: {}, policyTypes: [Ingress] }
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: { name: allow-access, namespace: np }
spec:
  podSelector: { matchLabels: { role: server } }
  ingress:
  - from: [{ podSelector: { matchLabels: { access: "yes" } } }]
    ports: [{ port: 8080 }]
"#,
    )?;
    wait_until(Duration::from_secs(30), "client-b to be denied", || {
        Ok((!connects(cluster, &b, &target, "tcp")).then_some(()))
    })?;
    ensure!(
        connects(cluster, &a, &target, "tcp"),
        "client-a (allowed) was denied"
    );
    Ok(())
}

/// A prober on node-1 connects to a web pod on node-2 every 200 ms while the DaemonSet
/// restarts node by node; traffic resumes, and new pods get addresses no pod holds.
fn rolling_restart_keeps_addresses(cluster: &Cluster, web: &[Pod]) -> Result<()> {
    let target = web
        .iter()
        .find(|p| p.node == "node-2")
        .context("a web pod on node-2")?;
    kube::start_prober(
        cluster,
        "net",
        "prober",
        "node-1",
        &format!("{}:8080", target.ip),
    )?;
    let log = kube::restart_under_probe(cluster, "net", "prober")?;
    let (gap, failures) = kube::longest_gap(&log);
    eprintln!("kube_install_3: rolling restart: longest traffic gap {gap:.1} s ({failures} failed probes of {})", log.lines().count());
    // No address is handed out twice after the agents restarted from their state.
    cluster.kubectl(&["-n", "net", "scale", "deployment/web", "--replicas=9"])?;
    kube::rollout(cluster, "net", "deployment/web")?;
    let all = pods(cluster, "net", "")?;
    let addresses: BTreeSet<&str> = all.iter().map(|p| p.ip.as_str()).collect();
    ensure!(
        addresses.len() == all.len(),
        "an address is held twice: {all:?}"
    );
    for old in web {
        let now = all
            .iter()
            .find(|p| p.name == old.name)
            .context("old pod still there")?;
        ensure!(now.ip == old.ip, "{} changed address", old.name);
    }
    Ok(())
}

/// Neither container logged a refusal by the API server.
fn no_permission_was_refused(cluster: &Cluster) -> Result<()> {
    for container in ["weave", "weave-npc", "install-cni"] {
        let logs = cluster.kubectl(&[
            "-n",
            kube::NAMESPACE,
            "logs",
            "-l",
            "app.kubernetes.io/name=weave",
            "-c",
            container,
            "--tail=-1",
        ])?;
        ensure!(
            !logs.to_lowercase().contains("forbidden"),
            "{container} was refused something: {logs}"
        );
    }
    Ok(())
}

/// After the documented uninstall, no node holds anything of weave's.
fn uninstall_leaves_nodes_clean(cluster: &Cluster) -> Result<()> {
    for namespace in ["net", "np"] {
        cluster.kubectl(&[
            "delete",
            "namespace",
            namespace,
            "--wait=true",
            "--timeout=120s",
        ])?;
    }
    let manifest = kube::manifest().display().to_string();
    cluster.kubectl(&["delete", "-f", &manifest, "--wait=true", "--timeout=120s"])?;
    kube::run_uninstall(cluster)?;
    for i in 1..=NODES {
        let left = kube::leftovers_on_node(cluster, i)?;
        ensure!(left.is_empty(), "node-{i} keeps {left:?}");
    }
    Ok(())
}

/// A TCP server on the outside machine that writes each client's address back to it.
struct OutsideServer(Child);

impl OutsideServer {
    fn start(netns: &str, ip: &str, port: u16) -> Result<OutsideServer> {
        let script = format!(
            "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('{ip}',{port}))\ns.listen(16)\nwhile True:\n c,a=s.accept()\n c.sendall((a[0]+'\\n').encode())\n c.close()\n"
        );
        let child = Command::new("ip")
            .args(["netns", "exec", netns, "python3", "-c", &script])
            .stdout(Stdio::null())
            .spawn()
            .context("start the outside server")?;
        Ok(OutsideServer(child))
    }
}

impl Drop for OutsideServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
