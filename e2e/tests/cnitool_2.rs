// SPDX-License-Identifier: Apache-2.0
//! weave under a runtime that is not Kubernetes: the upstream `cnitool` (a generic libcni
//! client, as the Mesos and ECS agents are) drives the plugins through the shipped conflist
//! (`manifests/10-weave.conflist`, weave-net chained with the reference portmap) on two
//! hosts of the namespace bed.
//!
//! - ADD gives each container an address of the pod range; the two containers on different
//!   hosts ping each other through the overlay; `weave ps` lists each with eth0's MAC and
//!   address;
//! - DEL leaves nothing: no interface in the container, no veth on the host's bridge, no
//!   address held by the agent, nothing in libcni's result cache, nothing in `weave ps`.
//!
//! Each host's conflist is the shipped one with only `socket` set, as an operator does whose
//! agent listens elsewhere than `/run/weave/weave.sock` (here, each test host's own agent).
//! libcni's cache (`/var/lib/cni`) is kept in the host's run directory: cnitool runs in a
//! private mount namespace with that directory bound over `/var/lib`, so nothing is written
//! to the machine's own `/var/lib`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use weave_e2e::cluster::Tools;
use weave_e2e::weave::{
    api_socket, in_pod, peer_addr, pings, pod_mac, ps, report, start_weaver, wait_for_mesh,
};
use weave_e2e::{bin_dir, wait_until, Host, TestBed, Topology};

/// The network name in the shipped conflist.
const NETWORK: &str = "weave";

/// cnitool's view of one host: its conflist directory, plugin path and cache.
struct Runtime {
    /// `NETCONFPATH`.
    conf_dir: PathBuf,
    /// Bound over `/var/lib` while cnitool runs; libcni caches results in `cni/` below.
    var_lib: PathBuf,
    /// `CNI_PATH`: weave's plugins, then the reference plugins.
    cni_path: String,
    /// The cnitool binary.
    cnitool: PathBuf,
}

impl Runtime {
    /// The shipped conflist for `host`'s agent, in a directory of the host's own.
    fn new(host: &Host, tools: &Tools) -> Result<Runtime> {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/10-weave.conflist");
        let mut conflist: Value = serde_json::from_str(&std::fs::read_to_string(&shipped)?)?;
        ensure!(
            conflist["name"] == NETWORK,
            "the shipped conflist names its network {}",
            conflist["name"]
        );
        conflist["plugins"][0]["socket"] = api_socket(host).display().to_string().into();
        let conf_dir = host.dir().join("cnitool/net.d");
        let var_lib = host.dir().join("cnitool/var-lib");
        std::fs::create_dir_all(&conf_dir)?;
        std::fs::create_dir_all(&var_lib)?;
        std::fs::write(
            conf_dir.join("10-weave.conflist"),
            serde_json::to_vec_pretty(&conflist)?,
        )?;
        let cni_path = std::env::join_paths([bin_dir(), tools.cni_dir()])?
            .into_string()
            .map_err(|p| anyhow::anyhow!("CNI_PATH is not UTF-8: {p:?}"))?;
        Ok(Runtime {
            conf_dir,
            var_lib,
            cni_path,
            cnitool: tools.bin("cnitool"),
        })
    }

    /// `cnitool add|del weave /run/netns/NS` on `host`; returns stdout.
    fn cnitool(&self, host: &Host, command: &str, netns: &str) -> Result<String> {
        // A private mount namespace (mounts made there vanish with it) with the cache dir
        // bound over /var/lib, then cnitool with the runtime's environment.
        let script = r#"mount --bind "$1" /var/lib && shift && exec "$@""#;
        let mut cmd = host.cmd("unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(&self.var_lib)
        .arg(&self.cnitool)
        .args([command, NETWORK, &format!("/run/netns/{netns}")])
        .env("NETCONFPATH", &self.conf_dir)
        .env("CNI_PATH", &self.cni_path)
        .env("CNI_IFNAME", "eth0");
        let out = cmd
            .output()
            .with_context(|| format!("run cnitool {command} on {}", host.name()))?;
        ensure!(
            out.status.success(),
            "cnitool {command} on {} failed: {}{}",
            host.name(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    /// Files libcni keeps for attachments (results and GC records).
    fn cached(&self) -> Result<Vec<String>> {
        let mut files = Vec::new();
        let mut dirs = vec![self.var_lib.join("cni")];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let path = entry?.path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    files.push(path.display().to_string());
                }
            }
        }
        Ok(files)
    }
}

/// The veths attached to `host`'s bridge.
fn bridge_ports(host: &Host) -> Result<Vec<String>> {
    let out = host.run("ip", &["-o", "link", "show", "type", "veth"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|name| name.trim().split('@').next().unwrap_or_default().to_owned())
        .filter(|name| name.starts_with("vethwe"))
        .collect())
}

#[test]
fn cnitool_drives_weave_through_the_shipped_conflist() -> Result<()> {
    let tools = Tools::locate()?;
    let bed = TestBed::new(Topology::Segment(2))?;
    let flags = ["--ipalloc-init", "consensus=2"];
    start_weaver(bed.host(1), &[], &flags)?;
    start_weaver(bed.host(2), &[peer_addr(bed.host(1))], &flags)?;
    for h in bed.hosts() {
        wait_for_mesh(h, &["h1", "h2"], 1, Duration::from_secs(20))?;
    }

    let mut containers = Vec::new();
    for h in 1..=2 {
        let host = bed.host(h);
        let runtime = Runtime::new(host, &tools)?;
        let netns = bed.add_pod_netns(h, "task")?;
        let out = runtime.cnitool(host, "add", &netns)?;
        let result: Value =
            serde_json::from_str(&out).with_context(|| format!("cnitool's result: {out}"))?;
        let cidr = result["ips"][0]["address"]
            .as_str()
            .context("an address in the result")?;
        let ip = cidr.split('/').next().unwrap_or(cidr).to_owned();
        ensure!(
            in_pod(&netns, "ip", &["-o", "addr", "show", "eth0"])?.contains(cidr),
            "eth0 of {netns} does not hold {cidr}"
        );
        ensure!(
            !runtime.cached()?.is_empty(),
            "libcni cached no result for {netns}"
        );
        // weave ps shows the container with eth0's MAC and address.
        let mac = pod_mac(&netns, "eth0")?;
        let entries = ps(host)?.entries;
        ensure!(
            entries.iter().any(|e| e.id.starts_with("cni:")
                && e.mac.as_deref() == Some(mac.as_str())
                && e.addresses.iter().any(|a| a.to_string() == cidr)),
            "weave ps on {} lacks {netns} ({mac}, {cidr}): {entries:?}",
            host.name()
        );
        // Besides the container's, the host holds its bridge's gateway address.
        let used = report(host)?.ipam.map_or(0, |i| i.used);
        containers.push((h, netns, ip, runtime, used));
    }
    for (_, from, _, _, _) in &containers {
        for (_, _, ip, _, _) in &containers {
            wait_until(
                Duration::from_secs(10),
                &format!("{from} to ping {ip}"),
                || Ok(pings(from, ip).then_some(())),
            )?;
        }
    }

    for (h, netns, ip, runtime, used_before) in &containers {
        let host = bed.host(*h);
        runtime.cnitool(host, "del", netns)?;
        let links = in_pod(netns, "ip", &["-o", "link", "show"])?;
        ensure!(!links.contains("eth0"), "eth0 left in {netns}:\n{links}");
        ensure!(
            bridge_ports(host)?.is_empty(),
            "veths left on {}: {:?}",
            host.name(),
            bridge_ports(host)?
        );
        let used = report(host)?.ipam.map_or(0, |i| i.used);
        ensure!(
            used + 1 == *used_before,
            "{} holds {used} address(es) after DEL of {ip}, {used_before} before",
            host.name()
        );
        ensure!(
            runtime.cached()?.is_empty(),
            "libcni cache left: {:?}",
            runtime.cached()?
        );
        let entries = ps(host)?.entries;
        ensure!(
            entries.iter().all(|e| !e.id.starts_with("cni:")),
            "weave ps on {} still lists a container after DEL: {entries:?}",
            host.name()
        );
        // A second DEL of the same container succeeds, as the spec requires.
        runtime.cnitool(host, "del", netns)?;
    }
    Ok(())
}
