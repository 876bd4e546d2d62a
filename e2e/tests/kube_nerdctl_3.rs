// SPDX-License-Identifier: Apache-2.0
//! A container started outside Kubernetes on weave's network: after weave is installed
//! on the real 3-node cluster, `nerdctl run --net weave` on node-1, against that node's own
//! containerd (namespace `k8s.io`, whose images the cluster imported) with the node's CNI
//! plugins and the conflist weave installed there:
//!
//! - the container gets an address from weave's range, which `weave ps` on node-1 lists under
//!   the container's ID;
//! - weave-npc learns its address from the agent's allocations (it is no pod) and lets it
//!   through the bridge guard: the container reaches a pod on node-2 over TCP, and pods on
//!   node-2 and node-1 reach it;
//! - `nerdctl rm -f` gives the address back (gone from `weave ps` and from IPAM's count) and
//!   leaves no veth on the node.
//!
//! nerdctl comes from `e2e/nerdctl/build.sh` (`$WEAVE_NERDCTL`). It runs inside node-1's
//! namespaces, so `/run/containerd/containerd.sock` and `/opt/cni/bin` are that node's; its
//! data root, its network configuration directory (a copy of the node's `10-weave.conflist`
//! labelled nerdctl's default network: nerdctl writes a lock beside the conflists it reads,
//! and would write a default `bridge` network there, which the node's own directory must not
//! get) and its containers' cgroups are the node's, removed with it.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use weave_e2e::cluster::{nerdctl, Cluster, ClusterOptions, Cni};
use weave_e2e::kube::{self, apply, pods, weave};
use weave_e2e::{run_with_input, wait_until};

const NODES: usize = 3;
/// The node nerdctl runs on.
const NODE: usize = 1;
/// The container's name.
const NAME: &str = "nerd";

#[test]
fn kube_nerdctl_3() -> Result<()> {
    let nerdctl_bin = nerdctl()?;
    let cluster = Cluster::up(ClusterOptions {
        nodes: NODES,
        cni: Cni::None,
        ..ClusterOptions::default()
    })?;
    kube::install_manifest(&cluster, Duration::from_secs(60))?;
    apply(
        &cluster,
        "apiVersion: v1\nkind: Namespace\nmetadata: { name: net }\n",
    )?;
    kube::deploy_spread(
        &cluster,
        "web",
        "net",
        NODES,
        "netexec, --http-port=8080",
        true,
    )?;
    let web = pods(&cluster, "net", "app=web")?;
    let remote = web
        .iter()
        .find(|p| p.node == "node-2")
        .context("a web pod on node-2")?;
    let agnhost = cluster.image("agnhost")?.to_owned();
    let nerd = Nerdctl::new(&cluster, nerdctl_bin)?;

    let veths_before = veths(&cluster)?;
    let used_before = ipam_used(&cluster)?;
    let id = nerd
        .run(&[
            "run",
            "-d",
            "--name",
            NAME,
            "--net",
            "weave",
            "--pull",
            "never",
            "--cgroup-parent",
            &format!("{}/nerdctl", cluster.node_cgroup_root(NODE)),
            &agnhost,
            "netexec",
            "--http-port=8080",
        ])?
        .trim()
        .to_owned();
    ensure!(!id.is_empty(), "nerdctl run printed no container ID");
    let ip = nerd
        .run(&[
            "inspect",
            "--format",
            "{{.NetworkSettings.IPAddress}}",
            NAME,
        ])?
        .trim()
        .to_owned();
    let range: ipnet::Ipv4Net = "10.32.0.0/12".parse()?;
    let addr: std::net::Ipv4Addr = ip
        .parse()
        .with_context(|| format!("the container's address {ip:?}"))?;
    ensure!(
        range.contains(&addr),
        "the container has {ip}, outside weave's range"
    );
    let listed = ps(&cluster)?;
    ensure!(
        listed
            .iter()
            .any(|(pid, addrs)| pid.contains(&id) && addrs.contains(&ip)),
        "weave ps on node-{NODE} does not list {id} with {ip}: {listed:?}"
    );

    // weave-npc guards every pod port of the bridge (`vethwepl*`, which the plugin names
    // every attachment's host end): IPv4 of an address that is neither a local pod nor one
    // the agent handed out is dropped there. The container is no pod; weave-npc learns its
    // address from the agent's allocations (asked every 2 s), and then it talks both ways.
    let local_web = web
        .iter()
        .find(|p| p.node == format!("node-{NODE}"))
        .context("a web pod on node-1")?;
    wait_until(
        Duration::from_secs(20),
        "the container's address in node-1's guard set",
        || {
            let out = cluster
                .node_cmd(NODE, "nft")
                .args(["list", "set", "bridge", "weave-npc", "local-pods"])
                .output()?;
            let set = String::from_utf8_lossy(&out.stdout).into_owned();
            Ok((set.contains(&local_web.ip) && set.contains(&ip)).then_some(()))
        },
    )?;
    let out = nerd.run(&[
        "exec",
        NAME,
        "/agnhost",
        "connect",
        &format!("{}:8080", remote.ip),
        "--timeout=5s",
    ]);
    ensure!(
        out.is_ok(),
        "the container does not reach {} on node-2: {out:?}",
        remote.name
    );
    ensure!(
        kube::connects(&cluster, remote, &format!("{ip}:8080"), "tcp"),
        "{} on node-2 does not reach the container at {ip}:8080",
        remote.name
    );
    ensure!(
        kube::pings(&cluster, local_web, &ip),
        "{} on node-1 does not reach the container at {ip}",
        local_web.name
    );

    // rm -f: no veth, no attachment, no address left
    nerd.run(&["rm", "-f", NAME])?;
    let left = nerd.run(&["ps", "-a", "-q"])?;
    ensure!(!left.contains(&id[..12]), "nerdctl still has {id}: {left}");
    let listed = ps(&cluster)?;
    ensure!(
        !listed
            .iter()
            .any(|(pid, addrs)| pid.contains(&id) || addrs.contains(&ip)),
        "weave ps still lists the container: {listed:?}"
    );
    ensure!(
        veths(&cluster)? == veths_before,
        "veths before {veths_before:?}, after rm {:?}",
        veths(&cluster)?
    );
    ensure!(
        ipam_used(&cluster)? == used_before,
        "the container's address was not given back"
    );
    Ok(())
}

/// nerdctl inside node-1, with every path it uses given explicitly.
struct Nerdctl<'a> {
    cluster: &'a Cluster,
    bin: std::path::PathBuf,
    global: Vec<String>,
}

impl<'a> Nerdctl<'a> {
    /// Prepares its data root and network configuration directory in node-1's directory.
    fn new(cluster: &'a Cluster, bin: std::path::PathBuf) -> Result<Nerdctl<'a>> {
        let dir = cluster.node_dir(NODE).join("nerdctl");
        let conf = dir.join("net.d");
        std::fs::create_dir_all(&conf)?;
        // nerdctl wants a default network and, lacking one, makes a `bridge` network with
        // the reference plugins, which a node with only weave has not got: weave's conflist
        // is labelled nerdctl's default, which libcni ignores.
        let installed = cluster.node_path(NODE, "/etc/cni/net.d/10-weave.conflist")?;
        let text = std::fs::read_to_string(&installed)
            .with_context(|| format!("read {}", installed.display()))?;
        let mut conflist: serde_json::Value = serde_json::from_str(&text)?;
        ensure!(
            conflist["name"] == "weave",
            "the network is not named weave: {text}"
        );
        conflist["nerdctlLabels"] = serde_json::json!({ "nerdctl/default-network": "true" });
        std::fs::write(
            conf.join("10-weave.conflist"),
            serde_json::to_string_pretty(&conflist)?,
        )?;
        let path = |p: &Path| p.display().to_string();
        let global = [
            "--address",
            "/run/containerd/containerd.sock",
            "--namespace",
            "k8s.io",
            "--data-root",
            &path(&dir.join("data")),
            "--cni-path",
            "/opt/cni/bin",
            "--cni-netconfpath",
            &path(&conf),
            "--cgroup-manager",
            "cgroupfs",
            "--snapshotter",
            "overlayfs",
            "--hosts-dir",
            &path(&dir.join("certs.d")),
        ]
        .map(str::to_owned)
        .to_vec();
        Ok(Nerdctl {
            cluster,
            bin,
            global,
        })
    }

    /// `nerdctl GLOBAL… ARGS…` on node-1; returns stdout.
    fn run(&self, args: &[&str]) -> Result<String> {
        let mut cmd: Command = self.cluster.node_cmd(NODE, &self.bin);
        cmd.args(&self.global).args(args);
        run_with_input(&mut cmd, None)
    }
}

/// `weave ps` on node-1: each attachment's ID and addresses.
fn ps(cluster: &Cluster) -> Result<Vec<(String, Vec<String>)>> {
    let out = weave(cluster, NODE, &["ps", "--format", "json"])?;
    let reply: weave_api::PsReply = serde_json::from_str(&out).context("parse weave ps")?;
    Ok(reply
        .entries
        .into_iter()
        .map(|e| {
            let addrs = e.addresses.iter().map(|a| a.addr().to_string()).collect();
            (e.id, addrs)
        })
        .collect())
}

/// The veths on node-1.
fn veths(cluster: &Cluster) -> Result<BTreeSet<String>> {
    let out = cluster
        .node_cmd(NODE, "ip")
        .args(["-o", "link", "show", "type", "veth"])
        .output()?;
    ensure!(out.status.success(), "ip link on node-{NODE}");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .collect())
}

/// Addresses node-1's agent has handed out.
fn ipam_used(cluster: &Cluster) -> Result<u64> {
    let out = weave(cluster, NODE, &["report"])?;
    let report: weave_api::Report = serde_json::from_str(&out).context("parse weave report")?;
    Ok(report.ipam.context("IPAM in the report")?.used)
}
