// SPDX-License-Identifier: Apache-2.0
//! One machine of the real cluster: a test bed host (network namespace) plus a PID and mount
//! namespace of its own, held by [`super::node_init`], and the processes started inside it.
//!
//! The holder is started as `setpriv --pdeathsig KILL nsenter --net=… unshare --pid --fork
//! --kill-child --mount-proc weave-cluster node-init DIR`. Each link of that chain dies with
//! the one before it: if the program driving the cluster dies, even by SIGKILL, the holder
//! gets SIGKILL, its init gets SIGKILL, and the kernel kills every process of the machine.
//! Daemons join the holder's namespaces with `nsenter`, so they see the machine's `/run`,
//! `/var/lib/kubelet`, CNI directories and `/proc`, and nothing of other machines.

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::process::ProcessTable;
use crate::teardown::Owned;
use crate::wait::wait_until;
use crate::Host;

/// How long a holder may take to mount the machine's view.
const INIT_TIMEOUT: Duration = Duration::from_secs(30);

/// A machine: namespaces, a directory, and processes inside.
#[derive(Debug)]
pub(crate) struct Machine {
    /// Machine name (`node-1`, `control-plane`).
    name: String,
    /// The test bed namespace.
    netns: String,
    /// Underlay address.
    ip: Ipv4Addr,
    /// The machine's directory (mounted over its private paths).
    dir: PathBuf,
    /// Pid of the holder (`unshare`), whose namespaces the daemons join.
    holder_pid: u32,
    /// The daemons.
    processes: Arc<ProcessTable>,
    /// The holder (`init`).
    holder: Arc<ProcessTable>,
}

impl Machine {
    /// Starts machine `name` on test bed host `host`, with its directory `dir` (created) and
    /// `machine_id`; `init` is the `weave-cluster` binary. Everything started is owned by
    /// `owned`. Returns once the machine's filesystem view is mounted.
    pub(crate) fn start(
        owned: &Owned,
        host: &Host,
        name: &str,
        dir: &Path,
        machine_id: &str,
        init: &Path,
    ) -> Result<Machine> {
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).with_context(|| format!("create {}", logs.display()))?;
        let netns_file = format!("--net=/run/netns/{}", host.netns());
        let launcher: Vec<OsString> = [
            "setpriv",
            "--pdeathsig",
            "KILL",
            "--",
            "nsenter",
            &netns_file,
            "--",
            "unshare",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "--propagation",
            "private",
            "--",
        ]
        .map(OsString::from)
        .to_vec();
        let holder = Arc::new(ProcessTable::with_launcher(name, launcher, &logs));
        owned.add_processes(Arc::clone(&holder));
        let dir_arg = dir.display().to_string();
        holder.spawn(
            "init",
            init,
            &["node-init".into(), dir_arg, machine_id.into()],
            &[],
        )?;
        let ready = dir.join("ready");
        wait_until(
            INIT_TIMEOUT,
            &format!("{name} to mount its filesystem view"),
            || {
                if ready.exists() {
                    return Ok(Some(()));
                }
                if !holder.is_running("init") {
                    let log = std::fs::read_to_string(holder.log_path("init")).unwrap_or_default();
                    bail!("{name}: node-init ended: {}", log.trim());
                }
                Ok(None)
            },
        )?;
        let holder_pid = holder
            .pid("init")
            .with_context(|| format!("{name}: the holder ended"))?;
        let launcher: Vec<OsString> = [
            "nsenter".to_owned(),
            format!("--mount=/proc/{holder_pid}/ns/mnt"),
            format!("--pid=/proc/{holder_pid}/ns/pid_for_children"),
            netns_file,
            "--".to_owned(),
        ]
        .map(OsString::from)
        .to_vec();
        let processes = Arc::new(ProcessTable::with_launcher(name, launcher, &logs));
        owned.add_processes(Arc::clone(&processes));
        Ok(Machine {
            name: name.to_owned(),
            netns: host.netns().to_owned(),
            ip: host.addr(),
            dir: dir.to_owned(),
            holder_pid,
            processes,
            holder,
        })
    }

    /// The machine's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Its network namespace.
    pub(crate) fn netns(&self) -> &str {
        &self.netns
    }

    /// Its underlay address.
    pub(crate) fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// Its directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts daemon `name` inside the machine (log in `logs/<name>.log`).
    pub(crate) fn spawn(
        &self,
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
    ) -> Result<()> {
        self.processes.spawn(name, program, args, env)
    }

    /// Whether daemon `name` runs.
    pub(crate) fn is_running(&self, name: &str) -> bool {
        self.processes.is_running(name)
    }

    /// The log file of daemon `name`.
    pub(crate) fn log_path(&self, name: &str) -> PathBuf {
        self.processes.log_path(name)
    }

    /// Switches the machine off: its init is killed, and with it (by the kernel) every
    /// process of its PID namespace. Its network namespace and files stay.
    pub(crate) fn stop(&self) -> Result<()> {
        self.holder.kill("init")
    }

    /// Resident memory of every process of the machine, in bytes: its daemons (its PID
    /// namespace) and its pods (their own PID namespaces, in `cgroup_root`).
    pub(crate) fn rss(&self, cgroup_root: &str) -> Result<u64> {
        Ok(self.processes_rss(cgroup_root, |_| true)?.into_iter().sum())
    }

    /// Resident memory of each process of the machine (daemon or pod) named `comm`, in bytes.
    pub(crate) fn rss_of(&self, cgroup_root: &str, comm: &str) -> Result<Vec<u64>> {
        self.processes_rss(cgroup_root, |name| name == comm)
    }

    /// Resident memory of each process of the machine whose command name passes `keep`:
    /// processes of its PID namespace, and processes in its cgroup root (pods' containers,
    /// which have PID namespaces of their own).
    fn processes_rss(&self, cgroup_root: &str, keep: impl Fn(&str) -> bool) -> Result<Vec<u64>> {
        let in_root = format!("/{cgroup_root}/");
        let ns = std::fs::read_link(format!("/proc/{}/ns/pid_for_children", self.holder_pid))
            .with_context(|| format!("{}: read the PID namespace of its holder", self.name))?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let dir = entry.path();
            let ours = std::fs::read_link(dir.join("ns/pid")).ok().as_ref() == Some(&ns)
                || std::fs::read_to_string(dir.join("cgroup")).is_ok_and(|c| c.contains(&in_root));
            if !ours {
                continue;
            }
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            if !keep(comm.trim()) {
                continue;
            }
            let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
            let kib: u64 = status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
                .unwrap_or(0);
            found.push(kib * 1024);
        }
        Ok(found)
    }

    /// A command running `program` inside the machine (its mount, PID and network
    /// namespaces), for one-off commands.
    pub(crate) fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--mount=/proc/{}/ns/mnt", self.holder_pid))
            .arg(format!(
                "--pid=/proc/{}/ns/pid_for_children",
                self.holder_pid
            ))
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg("--")
            .arg(program);
        cmd
    }
}
