// SPDX-License-Identifier: Apache-2.0
//! Long-running processes started inside a host namespace, tracked by name.
//!
//! Each process is started through a launcher command that enters the host's namespaces and
//! execs the program: `ip netns exec NS program args…` for test bed hosts, `nsenter …` for the
//! machines of the real cluster. A launcher that execs keeps the child's pid the program's; one
//! that forks (nsenter into a PID namespace) stays in the same process group as the program. It runs in its own process group (pgid = pid), which keeps
//! a terminal's Ctrl-C from reaching it before the test bed has cleaned up, and lets a kill
//! take any helpers it forked along with it.
//!
//! Invariant: a tracked child is reaped only by [`kill_child`], right after its group was
//! signalled. Until then an exited child stays a zombie, which keeps its pid and pgid
//! reserved, so signalling them can never hit a process we did not start. Liveness checks
//! therefore use `waitid(WNOWAIT)`, which looks without reaping.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::command::command_line;
use crate::wait::wait_until;

/// How long [`ProcessTable::stop`] waits after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// The processes of one host, by name.
#[derive(Debug)]
pub(crate) struct ProcessTable {
    /// Host name, for messages.
    host: String,
    /// Command and arguments that enter the host and exec the program given after them.
    launcher: Vec<OsString>,
    /// Directory holding `<name>.log`.
    dir: PathBuf,
    /// Tracked children, or `None` once the test bed is torn down (so nothing new starts).
    /// Entries stay after they exit or are killed, until replaced.
    procs: Mutex<Option<BTreeMap<String, Tracked>>>,
}

/// One tracked child.
#[derive(Debug)]
struct Tracked {
    /// The launcher child (the program itself once the launcher has exec'd it).
    child: Child,
    /// Set once the child has been reaped.
    reaped: bool,
}

impl ProcessTable {
    /// An empty table for host `host` running processes in `netns`, logging into `dir`.
    pub(crate) fn new(host: &str, netns: &str, dir: &Path) -> Self {
        let launcher = ["ip", "netns", "exec", netns].map(OsString::from).to_vec();
        Self::with_launcher(host, launcher, dir)
    }

    /// An empty table for host `host` whose processes are started as `launcher… program
    /// args…`, logging into `dir`.
    pub(crate) fn with_launcher(host: &str, launcher: Vec<OsString>, dir: &Path) -> Self {
        Self {
            host: host.to_owned(),
            launcher,
            dir: dir.to_owned(),
            procs: Mutex::new(Some(BTreeMap::new())),
        }
    }

    /// Path of the log file of process `name`.
    pub(crate) fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    /// Starts `program args…` in the namespace as process `name`, appending its stdout and
    /// stderr to `<dir>/<name>.log`. A name may be reused once its previous process has ended.
    pub(crate) fn spawn(
        &self,
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
    ) -> Result<()> {
        check_name(name)?;
        if program.components().count() > 1 && !program.is_file() {
            bail!(
                "{}: cannot start {name}: {} does not exist",
                self.host,
                program.display()
            );
        }
        let mut guard = self.lock();
        let Some(procs) = guard.as_mut() else {
            bail!(
                "{}: cannot start {name}: the test bed is torn down",
                self.host
            );
        };
        if let Some(old) = procs.get_mut(name) {
            if is_alive(old)? {
                bail!(
                    "{}: a process named {name} is already running (pid {})",
                    self.host,
                    old.child.id()
                );
            }
            // Reap the old zombie before forgetting it.
            kill_child(old)?;
        }
        let log_path = self.log_path(name);
        let log = open_log(&log_path)?;
        let log_err = log
            .try_clone()
            .with_context(|| format!("duplicate handle of {}", log_path.display()))?;
        let (launcher, launcher_args) = self
            .launcher
            .split_first()
            .context("a process table has a launcher")?;
        let mut cmd = Command::new(launcher);
        cmd.args(launcher_args)
            .arg(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("{}: start `{}`", self.host, command_line(&cmd)))?;
        procs.insert(
            name.to_owned(),
            Tracked {
                child,
                reaped: false,
            },
        );
        Ok(())
    }

    /// SIGKILLs process `name` (and its process group) and reaps it. Killing a process that
    /// already ended is fine; an unknown name is an error.
    pub(crate) fn kill(&self, name: &str) -> Result<()> {
        let mut procs = self.lock();
        let tracked = procs
            .as_mut()
            .and_then(|procs| procs.get_mut(name))
            .with_context(|| format!("{}: no process named {name}", self.host))?;
        kill_child(tracked)
    }

    /// Sends SIGTERM to process `name`, waits up to 10 s for it to exit, then SIGKILLs
    /// whatever is left of its process group and reaps it.
    pub(crate) fn stop(&self, name: &str) -> Result<()> {
        {
            let mut procs = self.lock();
            let tracked = procs
                .as_mut()
                .and_then(|procs| procs.get_mut(name))
                .with_context(|| format!("{}: no process named {name}", self.host))?;
            if !is_alive(tracked)? {
                return kill_child(tracked);
            }
            match kill(pid_of(&tracked.child)?, Signal::SIGTERM) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(err) => {
                    return Err(err).with_context(|| format!("{}: SIGTERM {name}", self.host))
                }
            }
        }
        // The lock is released between polls so a signal-time cleanup is never held up.
        let exited = wait_until(STOP_GRACE, &format!("{name} to exit"), || {
            Ok((!self.is_running(name)).then_some(()))
        });
        let mut procs = self.lock();
        let tracked = procs
            .as_mut()
            .and_then(|procs| procs.get_mut(name))
            .with_context(|| format!("{}: no process named {name}", self.host))?;
        kill_child(tracked)?;
        if exited.is_err() {
            eprintln!(
                "{}: {name} ignored SIGTERM for {STOP_GRACE:?}; killed it",
                self.host
            );
        }
        Ok(())
    }

    /// Whether process `name` is tracked and has not exited.
    pub(crate) fn is_running(&self, name: &str) -> bool {
        let mut procs = self.lock();
        procs
            .as_mut()
            .and_then(|procs| procs.get_mut(name))
            .is_some_and(|tracked| is_alive(tracked).unwrap_or(false))
    }

    /// Pid of process `name` while it runs.
    pub(crate) fn pid(&self, name: &str) -> Option<u32> {
        let mut procs = self.lock();
        let tracked = procs.as_mut()?.get_mut(name)?;
        is_alive(tracked)
            .unwrap_or(false)
            .then(|| tracked.child.id())
    }

    /// Kills and reaps every tracked process and refuses new ones from now on, carrying on
    /// past failures; returns the failures. Idempotent.
    pub(crate) fn kill_all(&self) -> Vec<anyhow::Error> {
        let Some(mut procs) = self.lock().take() else {
            return Vec::new();
        };
        procs
            .iter_mut()
            .filter_map(|(name, tracked)| {
                kill_child(tracked)
                    .with_context(|| format!("{}: kill {name}", self.host))
                    .err()
            })
            .collect()
    }

    /// Locks the table; a panic elsewhere must not stop cleanup, so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, Option<BTreeMap<String, Tracked>>> {
        self.procs.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Process names become file names (`<name>.log`), so keep them to a safe alphabet.
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !ok {
        bail!("bad process name {name:?}: use letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

/// Opens (creating) a log file for appending.
fn open_log(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("open log {}", path.display()))
}

/// The child's pid as a nix `Pid`.
fn pid_of(child: &Child) -> Result<Pid> {
    let raw = i32::try_from(child.id()).context("pid does not fit in pid_t")?;
    Ok(Pid::from_raw(raw))
}

/// Whether the child is still running, without reaping it (see the module invariant).
fn is_alive(tracked: &Tracked) -> Result<bool> {
    if tracked.reaped {
        return Ok(false);
    }
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match waitid(Id::Pid(pid_of(&tracked.child)?), flags) {
        Ok(WaitStatus::StillAlive) => Ok(true),
        Ok(_) => Ok(false),
        // Someone else reaped it (cannot happen through this module): it is gone.
        Err(Errno::ECHILD) => Ok(false),
        Err(err) => Err(err).context("waitid"),
    }
}

/// SIGKILLs the child's process group and reaps the child. Idempotent.
fn kill_child(tracked: &mut Tracked) -> Result<()> {
    if tracked.reaped {
        return Ok(());
    }
    // Not reaped yet, so the pgid (= the child's pid) still belongs to our child.
    match killpg(pid_of(&tracked.child)?, Signal::SIGKILL) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(err) => return Err(err).context("SIGKILL process group"),
    }
    tracked.child.wait().context("reap child")?;
    tracked.reaped = true;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_names_are_file_safe() {
        for good in ["weaver", "npc-2", "a_b.c"] {
            check_name(good).expect("valid name");
        }
        for bad in ["", "../x", "a/b", ".hidden", "a b"] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
