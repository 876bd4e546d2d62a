// SPDX-License-Identifier: Apache-2.0
//! What a test bed owns, how it is removed, and removal of every live test bed on a signal.
//!
//! [`Owned`] lists, by name, each namespace a test bed created (recorded only after its
//! creation succeeded, so a name someone else holds is never deleted) and each host's process
//! table, plus cleanup steps for what else a user of the bed made (the real cluster's
//! cgroups). [`Owned::teardown`] kills processes first (a namespace lives on while a process
//! is inside it), then runs the cleanup steps, newest first, then deletes namespaces newest
//! first (pods, hosts, underlay). It is idempotent and carries on past failures, returning all
//! of them.
//!
//! Live test beds are registered process-wide; a SIGINT/SIGTERM/SIGHUP handler (installed on
//! first use) tears them all down and exits with status 130, so Ctrl-C during a test run leaves
//! no namespaces or processes behind. A process killed with SIGKILL cannot clean up.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use crate::command::ip;
use crate::process::ProcessTable;

/// Exit status after a signal-triggered cleanup (the shell convention for SIGINT).
const SIGNAL_EXIT_STATUS: i32 = 130;

/// Test beds currently alive in this process.
static LIVE: Mutex<Vec<Arc<Owned>>> = Mutex::new(Vec::new());

/// Set once the signal handler has been installed (or found taken), once per process.
static HANDLER: OnceLock<()> = OnceLock::new();

/// Everything one test bed must remove, by name.
pub(crate) struct Owned {
    /// The test bed's prefix, for messages.
    prefix: String,
    /// The run directory (logs, state), kept after a signal so logs can be read.
    run_dir: PathBuf,
    /// Namespaces created so far, oldest first; `None` once torn down, so that a thread
    /// still building cannot add a namespace after a signal-time teardown.
    namespaces: Mutex<Option<Vec<String>>>,
    /// Process tables of the hosts.
    processes: Mutex<Vec<Arc<ProcessTable>>>,
    /// Cleanup steps run once after the processes are gone, newest first.
    cleanups: Mutex<Vec<Cleanup>>,
}

impl std::fmt::Debug for Owned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Owned")
            .field("prefix", &self.prefix)
            .field("run_dir", &self.run_dir)
            .field("namespaces", &self.namespaces)
            .field("processes", &self.processes)
            .field("cleanups", &lock(&self.cleanups).len())
            .finish()
    }
}

/// A cleanup step: removes something by name and returns every failure.
pub(crate) type Cleanup = Box<dyn FnOnce() -> Vec<anyhow::Error> + Send>;

impl Owned {
    /// Nothing owned yet.
    pub(crate) fn new(prefix: &str, run_dir: PathBuf) -> Self {
        Self {
            prefix: prefix.to_owned(),
            run_dir,
            namespaces: Mutex::new(Some(Vec::new())),
            processes: Mutex::new(Vec::new()),
            cleanups: Mutex::new(Vec::new()),
        }
    }

    /// Creates namespace `name` (`ip netns add`) with loopback up, and takes ownership of it.
    pub(crate) fn add_netns(&self, name: &str) -> anyhow::Result<()> {
        {
            // Held across `ip netns add` so a concurrent teardown either sees the name or
            // has already closed the list.
            let mut namespaces = lock(&self.namespaces);
            let Some(namespaces) = namespaces.as_mut() else {
                anyhow::bail!("test bed {} is torn down", self.prefix);
            };
            ip(&["netns", "add", name])?;
            namespaces.push(name.to_owned());
        }
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// Takes ownership of a host's process table.
    pub(crate) fn add_processes(&self, table: Arc<ProcessTable>) {
        lock(&self.processes).push(table);
    }

    /// Adds a cleanup step, run once by [`Owned::teardown`] after every process is killed.
    pub(crate) fn add_cleanup(&self, cleanup: Cleanup) {
        lock(&self.cleanups).push(cleanup);
    }

    /// Kills every process, runs the cleanup steps, then deletes every namespace, newest
    /// first. Idempotent; returns every failure after trying everything.
    pub(crate) fn teardown(&self) -> Vec<anyhow::Error> {
        let mut errors = Vec::new();
        for table in lock(&self.processes).iter() {
            errors.extend(table.kill_all());
        }
        let cleanups = std::mem::take(&mut *lock(&self.cleanups));
        for cleanup in cleanups.into_iter().rev() {
            errors.extend(cleanup());
        }
        let namespaces = lock(&self.namespaces).take().unwrap_or_default();
        for name in namespaces.iter().rev() {
            if let Err(err) = ip(&["netns", "del", name]) {
                errors.push(err);
            }
        }
        errors
    }
}

/// Registers a live test bed and makes sure the signal handler is installed.
pub(crate) fn register(owned: &Arc<Owned>) {
    install_handler();
    lock(&LIVE).push(Arc::clone(owned));
}

/// Forgets a test bed (it is being dropped and cleans up itself).
pub(crate) fn unregister(owned: &Arc<Owned>) {
    lock(&LIVE).retain(|live| !Arc::ptr_eq(live, owned));
}

/// Tears down every live test bed in this process: their processes and namespaces (run
/// directories are kept for their logs). Returns how many test beds were torn down.
///
/// The test bed calls this from its own SIGINT/SIGTERM handler; a program that installs its
/// own handler (so the test bed's cannot be installed) should call it from there.
pub fn teardown_all() -> usize {
    let live = std::mem::take(&mut *lock(&LIVE));
    for owned in &live {
        let mut lines: Vec<String> = owned
            .teardown()
            .iter()
            .map(|err| format!("test bed {}: cleanup: {err:#}", owned.prefix))
            .collect();
        lines.push(format!(
            "test bed {}: torn down; logs kept in {}",
            owned.prefix,
            owned.run_dir.display()
        ));
        // Straight to stderr: `eprintln!` output may be captured by the test harness, and
        // the process is about to exit.
        let _ = writeln!(std::io::stderr(), "{}", lines.join("\n"));
    }
    live.len()
}

/// Prints teardown failures (there is nobody to return them to in `Drop` or a signal handler).
pub(crate) fn report(owned: &Owned, errors: Vec<anyhow::Error>) {
    for err in errors {
        eprintln!("test bed {}: cleanup: {err:#}", owned.prefix);
    }
}

/// Installs the SIGINT/SIGTERM/SIGHUP handler once. If the process already has a handler
/// (installed through `ctrlc` by someone else), that one stays and should call
/// [`teardown_all`].
fn install_handler() {
    HANDLER.get_or_init(|| {
        let installed = ctrlc::set_handler(|| {
            let count = teardown_all();
            let _ = writeln!(
                std::io::stderr(),
                "interrupted: tore down {count} test bed(s)"
            );
            std::process::exit(SIGNAL_EXIT_STATUS);
        });
        if let Err(err) = installed {
            // Cleanup on drop still works; only interruption is not covered.
            eprintln!("test bed: no signal cleanup handler ({err}); call teardown_all from yours");
        }
    });
}

/// Locks `mutex`, ignoring poisoning: cleanup must run even after a panic elsewhere.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
