// SPDX-License-Identifier: Apache-2.0
//! A deleted Node's address space is reclaimed by exactly one live peer, coordinated through
//! the peer registry in the API, on the real 4-node cluster:
//!
//! - node-4 is switched off and its Node deleted: within 30 s its peer leaves the registry,
//!   exactly one agent reclaims it, every live agent's `weave status ipam` agrees, and new
//!   pods still get addresses nobody holds;
//! - node-4 comes back (its machine restarts with its disk, its kubelet registers the Node
//!   again): its agent finds its old peer reclaimed, starts as a new peer, and all four agree
//!   on the owners with no address held twice;
//! - node-2 and node-3 are switched off and deleted in one command: node-1 reclaims both.

use std::collections::BTreeSet;
use std::time::Duration;
// Reclaim times are reported for the log; nothing waits on the clock.
#[allow(clippy::disallowed_types)]
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use weave_e2e::cluster::{Cluster, ClusterOptions, Cni};
use weave_e2e::kube::{self, pods};
use weave_e2e::wait_until;

const NODES: usize = 4;
/// What the issue allows for a reclaim.
const RECLAIM_WITHIN: Duration = Duration::from_secs(30);

#[test]
#[allow(clippy::disallowed_types)]
fn kube_reclaim_4() -> Result<()> {
    let mut cluster = Cluster::up(ClusterOptions {
        nodes: NODES,
        cni: Cni::None,
        ..ClusterOptions::default()
    })?;
    kube::install_manifest(&cluster, Duration::from_secs(90))?;
    kube::deploy_spread(&cluster, "web", "default", 8, "pause", false)?;
    let peers = registry(&cluster)?;
    ensure!(peers.len() == NODES, "registry: {peers:?}");
    let peer_of = |node: &str| {
        peers
            .iter()
            .find(|(_, n)| n == node)
            .map(|(p, _)| p.clone())
            .context("peer")
    };

    let dead = peer_of("node-4")?;
    let took = delete_nodes(&cluster, &[4])?;
    wait_reclaimed(&cluster, std::slice::from_ref(&dead), &[1, 2, 3])?;
    eprintln!(
        "kube_reclaim_4: node-4 reclaimed {:.1} s after its Node was deleted",
        took.elapsed().as_secs_f64()
    );
    ensure!(
        reclaimers(&cluster, &dead, &[1, 2, 3])? == 1,
        "{dead} was not reclaimed exactly once"
    );
    unique_addresses(&cluster, 12)?;

    cluster.restart_node(4)?;
    let back = wait_until(
        Duration::from_secs(120),
        "node-4's agent to register again",
        || {
            Ok(registry(&cluster)?
                .into_iter()
                .find(|(_, node)| node == "node-4")
                .map(|(peer, _)| peer))
        },
    )?;
    ensure!(
        back != dead,
        "node-4's agent came back as the reclaimed peer {dead}"
    );
    kube::rollout(&cluster, kube::NAMESPACE, "daemonset/weave-net")?;
    wait_until(RECLAIM_WITHIN, "all four agents to agree", || {
        let views: Vec<Vec<String>> = (1..=NODES)
            .map(|i| kube::ipam_shares(&cluster, i))
            .collect::<Result<_>>()?;
        Ok(views.windows(2).all(|w| w[0] == w[1]).then_some(()))
    })?;
    unique_addresses(&cluster, 16)?;
    cluster.stop_node(4)?;
    cluster.kubectl(&["delete", "node", "node-4"])?;
    wait_reclaimed(&cluster, std::slice::from_ref(&back), &[1, 2, 3])?;

    let dead: Vec<String> = vec![peer_of("node-2")?, peer_of("node-3")?];
    let took = delete_nodes(&cluster, &[2, 3])?;
    wait_reclaimed(&cluster, &dead, &[1])?;
    eprintln!(
        "kube_reclaim_4: node-2 and node-3 reclaimed {:.1} s after their Nodes were deleted",
        took.elapsed().as_secs_f64()
    );
    for peer in &dead {
        ensure!(
            reclaimers(&cluster, peer, &[1])? == 1,
            "{peer} was not reclaimed exactly once"
        );
    }
    let shares = kube::ipam_shares(&cluster, 1)?;
    ensure!(
        shares.len() == 1,
        "node-1 alone should own the whole range: {shares:?}"
    );
    unique_addresses(&cluster, 6)?;
    Ok(())
}

/// The peer registry: (peer, node) pairs.
fn registry(cluster: &Cluster) -> Result<Vec<(String, String)>> {
    let doc = kube::peer_registry(cluster)?;
    Ok(doc["peers"]
        .as_array()
        .context("registry has peers")?
        .iter()
        .map(|e| {
            (
                e["peer"].as_str().unwrap_or_default().to_owned(),
                e["node"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect())
}

/// Switches nodes off and deletes their Node objects in one command; returns when the
/// deletion was done.
#[allow(clippy::disallowed_types)]
fn delete_nodes(cluster: &Cluster, nodes: &[usize]) -> Result<Instant> {
    for &i in nodes {
        cluster.stop_node(i)?;
    }
    let names: Vec<String> = nodes.iter().map(|i| format!("node-{i}")).collect();
    let mut args = vec!["delete", "node"];
    args.extend(names.iter().map(String::as_str));
    cluster.kubectl(&args)?;
    Ok(Instant::now())
}

/// Waits until `dead` peers left the registry and every live node's agent reports the same
/// owners, none of them dead.
fn wait_reclaimed(cluster: &Cluster, dead: &[String], live: &[usize]) -> Result<()> {
    wait_until(RECLAIM_WITHIN, &format!("{dead:?} to be reclaimed"), || {
        let listed = registry(cluster)?;
        if listed.iter().any(|(p, _)| dead.contains(p)) {
            return Ok(None);
        }
        let views: Vec<Vec<String>> = live
            .iter()
            .map(|&i| kube::ipam_shares(cluster, i))
            .collect::<Result<_>>()?;
        let agree = views.windows(2).all(|w| w[0] == w[1]);
        let clean = views
            .iter()
            .flatten()
            .all(|line| !dead.iter().any(|d| line.starts_with(d.as_str())));
        Ok((agree && clean).then_some(()))
    })
}

/// How many live agents logged reclaiming `peer`.
fn reclaimers(cluster: &Cluster, peer: &str, live: &[usize]) -> Result<usize> {
    let mut count = 0;
    for &i in live {
        let pod = kube::weave_pod(cluster, i)?;
        let logs = cluster.kubectl(&["-n", kube::NAMESPACE, "logs", &pod.name, "-c", "weave"])?;
        count += logs
            .lines()
            .filter(|l| l.contains("peer reclaimed") && l.contains(peer))
            .count();
    }
    Ok(count)
}

/// Scales `web` to `replicas` and checks that no two pods share an address.
fn unique_addresses(cluster: &Cluster, replicas: usize) -> Result<()> {
    cluster.kubectl(&["scale", "deployment/web", &format!("--replicas={replicas}")])?;
    wait_until(Duration::from_secs(120), "the scaled pods to run", || {
        let running: Vec<_> = pods(cluster, "default", "app=web")?
            .into_iter()
            .filter(|p| !p.ip.is_empty())
            .collect();
        let on_live = running.len() >= replicas;
        Ok(on_live.then_some(()))
    })?;
    let all: Vec<_> = pods(cluster, "default", "app=web")?
        .into_iter()
        .filter(|p| !p.ip.is_empty())
        .collect();
    let addresses: BTreeSet<&str> = all.iter().map(|p| p.ip.as_str()).collect();
    ensure!(
        addresses.len() == all.len(),
        "an address is held twice: {all:?}"
    );
    Ok(())
}
