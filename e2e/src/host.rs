// SPDX-License-Identifier: Apache-2.0
//! One simulated machine of the test bed: a network namespace plus a run directory.
//!
//! A [`Host`] runs commands and long-running processes inside its namespace with
//! `ip netns exec`, so nothing it starts can touch the root namespace's network. It is
//! `Send + Sync`: tests may drive several hosts from several threads. The processes it starts
//! are owned by the [`TestBed`](crate::TestBed) and killed when it is dropped.

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use anyhow::Result;

use crate::command;
use crate::process::ProcessTable;
use crate::topology::Port;

/// A simulated machine: a network namespace with underlay interfaces and a run directory.
#[derive(Debug)]
pub struct Host {
    /// Short name, `h<i>`.
    name: String,
    /// Full namespace name, `<prefix>-h<i>`.
    netns: String,
    /// Underlay addresses, in the order of `ports`.
    addrs: Vec<Ipv4Addr>,
    /// Underlay interfaces (names and addresses).
    ports: Vec<Port>,
    /// Run directory of this host.
    dir: PathBuf,
    /// Long-running processes, shared with the test bed's teardown.
    processes: Arc<ProcessTable>,
}

impl Host {
    /// A host whose namespace and directory already exist.
    pub(crate) fn new(name: String, netns: String, ports: Vec<Port>, dir: PathBuf) -> Self {
        let processes = Arc::new(ProcessTable::new(&name, &netns, &dir));
        Self {
            addrs: ports.iter().map(|p| p.addr).collect(),
            name,
            netns,
            ports,
            dir,
            processes,
        }
    }

    /// The host's short name, `h1` for host 1.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The full name of the host's network namespace (as `ip netns list` shows it).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The host's first underlay address.
    ///
    /// # Panics
    /// If the host has no underlay interface (a host without links in [`Topology::Links`]).
    ///
    /// [`Topology::Links`]: crate::Topology::Links
    pub fn addr(&self) -> Ipv4Addr {
        *self
            .addrs
            .first()
            .unwrap_or_else(|| panic!("host {} has no underlay address", self.name))
    }

    /// All the host's underlay addresses, in the order of its interfaces.
    pub fn addrs(&self) -> &[Ipv4Addr] {
        &self.addrs
    }

    /// Names of the host's underlay interfaces (`ul0`, or `l<peer>` per link).
    pub fn underlay_ifaces(&self) -> impl Iterator<Item = &str> + '_ {
        self.ports.iter().map(|p| p.ifname.as_str())
    }

    /// The host's run directory, for state directories, sockets and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A command running `program` in this host: `ip netns exec <netns> program`. Add
    /// arguments, environment and stdio as with any [`Command`].
    pub fn cmd(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns]).arg(program);
        cmd
    }

    /// Runs `program args…` in this host to completion and returns its stdout; a non-zero
    /// exit is an error carrying the command line and stderr.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        command::run(self.cmd(program).args(args))
    }

    /// Like [`Host::run`], feeding `input` to the program's stdin (e.g. `nft -f -`).
    pub fn run_with_input(&self, program: &str, args: &[&str], input: &str) -> Result<String> {
        command::run_with_input(self.cmd(program).args(args), Some(input))
    }

    /// Starts a long-running process `name` in this host with `program args…` and `env`
    /// added to the environment; stdout and stderr are appended to `<dir>/<name>.log`. It
    /// runs in its own process group and is killed (SIGKILL) when the test bed is dropped.
    /// A name may be reused once its previous process has ended.
    pub fn spawn(
        &self,
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
    ) -> Result<()> {
        self.processes.spawn(name, program, args, env)
    }

    /// Kills process `name` (SIGKILL to its process group) and reaps it. Fine if it already
    /// ended; an error if no process of that name was ever started.
    pub fn kill(&self, name: &str) -> Result<()> {
        self.processes.kill(name)
    }

    /// Stops process `name` gracefully: SIGTERM, up to 10 s to exit, then SIGKILL.
    pub fn stop(&self, name: &str) -> Result<()> {
        self.processes.stop(name)
    }

    /// Whether process `name` was started and has not exited.
    pub fn is_running(&self, name: &str) -> bool {
        self.processes.is_running(name)
    }

    /// The pid of process `name` while it is running.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.processes.pid(name)
    }

    /// Path of the log file of process `name`, `<dir>/<name>.log`.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.processes.log_path(name)
    }

    /// Contents of the log of process `name` ("" if there is none yet).
    pub fn log(&self, name: &str) -> String {
        std::fs::read(self.log_path(name))
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// The process table, for the test bed's teardown.
    pub(crate) fn processes(&self) -> &Arc<ProcessTable> {
        &self.processes
    }
}
