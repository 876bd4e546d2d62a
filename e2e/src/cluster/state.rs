// SPDX-License-Identifier: Apache-2.0
//! What a running cluster leaves in its directory so that `weave-cluster down --dir DIR` can
//! stop it, or clean up after it if the process that ran it is gone.
//!
//! `state.json` names the process running the cluster, its namespaces and its cgroup roots.
//! `down` asks a running cluster to stop (SIGTERM, then waits: the cluster tears itself down);
//! if nothing runs, it removes what is named there itself. The machines' processes need no
//! help: they die with the process that started them (see [`super::machine`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;

use super::cgroup;
use crate::command::ip;
use crate::wait::wait_until;
use crate::TestBed;

/// The cluster program's name (its binary in the project's bin directory).
pub const CLUSTER_BIN: &str = "weave-cluster";

/// The state file in the cluster directory.
const STATE_FILE: &str = "state.json";
/// A file whose presence keeps the directory at teardown (after a failure, for its logs).
const KEEP_FILE: &str = "KEEP";
/// How long `down` waits for a running cluster to tear itself down.
const DOWN_TIMEOUT: Duration = Duration::from_secs(120);

/// Writes `state.json` for the cluster of `bed` with `nodes` nodes into `dir`.
pub(crate) fn write(dir: &Path, prefix: &str, bed: &TestBed, nodes: usize) -> Result<()> {
    let mut namespaces: Vec<String> = bed.hosts().iter().map(|h| h.netns().to_owned()).collect();
    namespaces.extend(bed.underlay_netns().map(str::to_owned));
    let cgroup_roots: Vec<String> = (1..=nodes)
        .map(|i| super::cgroup_root_name(prefix, &format!("node-{i}")))
        .collect();
    let pid = std::process::id();
    let state = json!({
        "pid": pid,
        "start_time": start_time(pid)?,
        "prefix": prefix,
        "namespaces": namespaces,
        "cgroup_roots": cgroup_roots,
        "run_dir": bed.run_dir(),
    });
    let path = dir.join(STATE_FILE);
    std::fs::write(&path, format!("{state:#}\n"))
        .with_context(|| format!("write {}", path.display()))
}

/// Marks the directory to be kept at teardown; returns a note for the user.
pub(crate) fn keep_dir(dir: &Path) -> String {
    match std::fs::write(dir.join(KEEP_FILE), "") {
        Ok(()) => "remove it by hand when done".into(),
        Err(err) => format!("could not mark it kept: {err}"),
    }
}

/// Removes the cluster directory `dirs[0]` and the other `dirs` (the test bed's run
/// directory) unless the cluster directory was marked kept. Returns failures.
pub(crate) fn remove_dirs(dirs: &[PathBuf]) -> Vec<anyhow::Error> {
    if dirs.first().is_some_and(|dir| dir.join(KEEP_FILE).exists()) {
        return Vec::new();
    }
    dirs.iter()
        .filter_map(|dir| match std::fs::remove_dir_all(dir) {
            Ok(()) => None,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
            Err(err) => Some(anyhow::Error::new(err).context(format!("remove {}", dir.display()))),
        })
        .collect()
}

/// Stops the cluster whose directory is `dir`: asks its process to tear down and waits, or,
/// when that process is gone, removes its cgroups, namespaces and directory.
pub fn down(dir: &Path) -> Result<()> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "read {} (is {} a cluster directory?)",
            path.display(),
            dir.display()
        )
    })?;
    let state: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
    let pid = state["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .context("state has a pid")?;
    let started = state["start_time"]
        .as_u64()
        .context("state has a start time")?;
    // The same pid with the same start time is the same process (a pid alone may be reused).
    let alive = || start_time(pid).is_ok_and(|t| t == started);
    if alive() {
        let raw = i32::try_from(pid).context("pid fits pid_t")?;
        kill(Pid::from_raw(raw), Signal::SIGTERM)
            .with_context(|| format!("signal cluster process {pid}"))?;
        return wait_until(
            DOWN_TIMEOUT,
            &format!("cluster process {pid} to tear down"),
            || Ok((!alive()).then_some(())),
        );
    }
    let mut errors: Vec<anyhow::Error> = Vec::new();
    for root in strings(&state["cgroup_roots"]) {
        errors.extend(cgroup::remove_root(&root));
    }
    for netns in strings(&state["namespaces"]).iter().rev() {
        if Path::new("/run/netns").join(netns).exists() {
            if let Err(err) = ip(&["netns", "del", netns]) {
                errors.push(err);
            }
        }
    }
    let mut dirs = vec![dir.to_owned()];
    dirs.extend(state["run_dir"].as_str().map(PathBuf::from));
    errors.extend(remove_dirs(&dirs));
    if let Some(first) = errors.first() {
        bail!(
            "cleanup of {} left {} error(s), first: {first:#}",
            dir.display(),
            errors.len()
        );
    }
    Ok(())
}

/// When process `pid` started (clock ticks after boot, field 22 of `/proc/PID/stat`).
fn start_time(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    // The command name (field 2) may hold spaces and parentheses; fields after it do not.
    let after_name = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("stat has a name")?;
    after_name
        .split_whitespace()
        .nth(19)
        .and_then(|field| field.parse().ok())
        .with_context(|| format!("{path} has no start time"))
}

/// The strings of a JSON array.
fn strings(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
