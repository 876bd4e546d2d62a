// SPDX-License-Identifier: Apache-2.0
//! The Helm chart on the real 3-node cluster:
//!
//! - bad settings (a range with host bits, a range overlapping the nodes' network, a
//!   password Secret that does not exist): the install-cni init container fails with one
//!   clear line, every node stays NotReady, and nothing is installed on any node;
//! - `helm install` with non-default values (another range, a password from a Secret): nodes
//!   Ready, pods get addresses of that range and talk across nodes over encrypted paths;
//! - `helm upgrade` to a new image tag: every agent runs the new image, pods keep their
//!   addresses and their connectivity;
//! - `helm uninstall` plus the uninstall manifest: nodes as before.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use weave_e2e::cluster::images::{WEAVE_IMAGE, WEAVE_REPOSITORY};
use weave_e2e::cluster::{Cluster, ClusterOptions, Cni};
use weave_e2e::kube::{self, connects, pods};
use weave_e2e::wait_until;

const NODES: usize = 3;

#[test]
fn kube_helm_3() -> Result<()> {
    let cluster = Cluster::up(ClusterOptions {
        nodes: NODES,
        cni: Cni::None,
        ..ClusterOptions::default()
    })?;
    let helm = |args: &[&str]| -> Result<String> {
        let chart = kube::chart().display().to_string();
        let mut full: Vec<&str> = Vec::new();
        for a in args {
            full.push(if *a == "CHART" { chart.as_str() } else { a });
        }
        weave_e2e::cluster::run_tool(&cluster, "helm", &full)
    };

    for (values, expected) in [
        ("ipam.range=10.32.0.1/12", "--ipalloc-range"),
        ("ipam.range=10.250.0.0/16", "overlaps with route"),
        ("password.secretName=missing", "--password-file"),
    ] {
        helm(&[
            "install",
            "weave",
            "CHART",
            "-n",
            kube::NAMESPACE,
            "--set",
            values,
        ])?;
        refused_with_one_line(&cluster, expected)?;
        helm(&["uninstall", "weave", "-n", kube::NAMESPACE, "--wait"])?;
    }

    let password = format!("{:032x}", rand::random::<u128>());
    cluster.kubectl_with_input(
        &[
            "-n",
            kube::NAMESPACE,
            "create",
            "secret",
            "generic",
            "weave-passwd",
            "--from-file=weave-passwd=/dev/stdin",
        ],
        &password,
    )?;
    helm(&[
        "install",
        "weave",
        "CHART",
        "-n",
        kube::NAMESPACE,
        "--set",
        "ipam.range=10.100.0.0/16",
        "--set",
        "password.secretName=weave-passwd",
        "--wait",
        "--timeout=180s",
    ])?;
    cluster.wait_ready(Duration::from_secs(60))?;
    let status = kube::weave(&cluster, 1, &["status"])?;
    ensure!(status.contains("Encryption:     enabled"), "{status}");
    ensure!(status.contains("Range:          10.100.0.0/16"), "{status}");
    let before = workload(&cluster)?;
    let range: ipnet::Ipv4Net = "10.100.0.0/16".parse()?;
    for pod in &before {
        ensure!(
            range.contains(&pod.ip.parse::<std::net::Ipv4Addr>()?),
            "{} got {}",
            pod.name,
            pod.ip
        );
    }
    all_talk(&cluster, &before)?;

    let next = format!("{WEAVE_REPOSITORY}:{}-next", env!("CARGO_PKG_VERSION"));
    cluster.tag_image(WEAVE_IMAGE, &next)?;
    let tag = next.rsplit_once(':').map(|(_, t)| t).context("tag")?;
    helm(&[
        "upgrade",
        "weave",
        "CHART",
        "-n",
        kube::NAMESPACE,
        "--reuse-values",
        "--set",
        &format!("image.tag={tag}"),
        "--wait",
        "--timeout=300s",
    ])?;
    kube::rollout(&cluster, kube::NAMESPACE, "daemonset/weave-net")?;
    let images = cluster.kubectl(&[
        "-n",
        kube::NAMESPACE,
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/name=weave",
        "-o",
        "jsonpath={range .items[*]}{.spec.containers[0].image}{\"\\n\"}{end}",
    ])?;
    ensure!(
        images.lines().count() == NODES && images.lines().all(|i| i == next),
        "after the upgrade: {images}"
    );
    let after = pods(&cluster, "default", "app=web")?;
    ensure!(
        after == before,
        "pods changed across the upgrade: {before:?} → {after:?}"
    );
    all_talk(&cluster, &after)?;

    cluster.kubectl(&["delete", "deployment", "web", "--wait=true"])?;
    wait_until(Duration::from_secs(60), "the pods to go", || {
        Ok(pods(&cluster, "default", "app=web")?
            .is_empty()
            .then_some(()))
    })?;
    helm(&["uninstall", "weave", "-n", kube::NAMESPACE, "--wait"])?;
    kube::run_uninstall(&cluster)?;
    for i in 1..=NODES {
        let left = kube::leftovers_on_node(&cluster, i)?;
        ensure!(left.is_empty(), "node-{i} keeps {left:?}");
    }
    Ok(())
}

/// The init container fails on every node with one log line containing `expected`; no node is
/// Ready and none holds anything of weave's.
fn refused_with_one_line(cluster: &Cluster, expected: &str) -> Result<()> {
    let lines = wait_until(
        Duration::from_secs(90),
        &format!("install-cni to refuse ({expected})"),
        || {
            let weave = pods(cluster, kube::NAMESPACE, "app.kubernetes.io/name=weave")?;
            if weave.len() != NODES {
                return Ok(None);
            }
            let mut all = Vec::new();
            for pod in &weave {
                let Ok(log) = cluster.kubectl(&[
                    "-n",
                    kube::NAMESPACE,
                    "logs",
                    &pod.name,
                    "-c",
                    "install-cni",
                ]) else {
                    return Ok(None);
                };
                if log.trim().is_empty() {
                    return Ok(None);
                }
                all.push(log);
            }
            Ok(Some(all))
        },
    )?;
    for log in lines {
        ensure!(log.trim().lines().count() == 1, "more than one line: {log}");
        ensure!(
            log.contains(expected),
            "the refusal does not say {expected:?}: {log}"
        );
    }
    for (node, status, _) in cluster.node_conditions("Ready")? {
        ensure!(
            status != "True",
            "{node} turned Ready with a refused setting"
        );
    }
    for i in 1..=NODES {
        // The kubelet creates the hostPath volumes' directories before any container runs;
        // they stay empty.
        let mut left = kube::leftovers_on_node(cluster, i)?;
        for dir in ["/var/lib/weave", "/run/weave"] {
            let path = cluster.node_path(i, dir)?;
            if std::fs::read_dir(&path).is_ok_and(|mut d| d.next().is_none()) {
                left.retain(|l| l != dir);
            }
        }
        ensure!(
            left.is_empty(),
            "node-{i} holds {left:?} after a refused setting"
        );
    }
    Ok(())
}

/// Three agnhost pods spread over the nodes.
fn workload(cluster: &Cluster) -> Result<Vec<kube::Pod>> {
    kube::deploy_spread(
        cluster,
        "web",
        "default",
        NODES,
        "netexec, --http-port=8080",
        true,
    )?;
    let mut found = pods(cluster, "default", "app=web")?;
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

/// Every pod reaches every other over TCP.
fn all_talk(cluster: &Cluster, web: &[kube::Pod]) -> Result<()> {
    for from in web {
        for to in web.iter().filter(|p| p.name != from.name) {
            let target = format!("{}:8080", to.ip);
            wait_until(
                Duration::from_secs(30),
                &format!("{} → {}", from.name, to.name),
                || Ok(connects(cluster, from, &target, "tcp").then_some(())),
            )?;
        }
    }
    Ok(())
}
