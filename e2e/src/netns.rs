// SPDX-License-Identifier: Apache-2.0
//! Running a closure inside a named network namespace, on a thread of its own.
//!
//! The closure runs on a fresh thread that joins `/run/netns/<name>` with `setns` and then
//! ends, so no other thread (and never the test's own) changes namespace. Sockets opened by
//! the closure keep that namespace for their whole life and may be returned and used from
//! any thread, which is how the test bed serves and probes inside pods without helper
//! processes.

use std::fs::File;

use anyhow::{anyhow, Context, Result};
use nix::sched::{setns, CloneFlags};

/// Runs `f` on a new thread inside network namespace `name` and returns its result.
pub fn in_netns<T, F>(name: &str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let path = format!("/run/netns/{name}");
    let file = File::open(&path).with_context(|| format!("open {path}"))?;
    std::thread::spawn(move || {
        setns(&file, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns {path}"))?;
        f()
    })
    .join()
    .map_err(|_| anyhow!("thread in namespace {name} panicked"))?
}
