// SPDX-License-Identifier: Apache-2.0
//! Draining the CNI plugin's release spool: when `weave-net` or
//! `weave-ipam` runs DEL while the agent is down, it records the IPAM id as
//! a file in `cni-release/` beside the API socket and succeeds. This task
//! releases those ids once the agent is up (at start, then every
//! [`DRAIN_INTERVAL`]), so that no address leaks; the plugin drains the
//! spool too on its next call. The file is unlinked before the release, so
//! of two drainers only one releases an entry.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::ipam::allocator::Request;
use crate::ipam::space::Ident;
use crate::Result;

/// Name of the spool directory beside the API socket (the plugin's
/// `agent::SPOOL_DIR`).
pub const SPOOL_DIR: &str = "cni-release";
/// How often the spool is looked at after the first drain.
pub const DRAIN_INTERVAL: Duration = Duration::from_secs(10);

/// The drain task.
#[derive(Debug)]
pub struct ReleaseSpool {
    dir: PathBuf,
    ipam: mpsc::Sender<Request>,
}

impl ReleaseSpool {
    /// Drains `dir` into the allocator behind `ipam`.
    pub fn new(dir: PathBuf, ipam: mpsc::Sender<Request>) -> Self {
        Self { dir, ipam }
    }

    /// Drains now and every [`DRAIN_INTERVAL`] until `cancel` fires.
    pub async fn run(self, cancel: CancellationToken) -> Result<()> {
        loop {
            self.drain().await;
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                () = tokio::time::sleep(DRAIN_INTERVAL) => {}
            }
        }
    }

    /// Releases every spooled id; returns how many.
    pub async fn drain(&self) -> usize {
        let Ok(mut entries) = tokio::fs::read_dir(&self.dir).await else {
            return 0;
        };
        let mut released = 0;
        while let Ok(Some(entry)) = entries.next_entry().await {
            let path = entry.path();
            let Ok(text) = tokio::fs::read_to_string(&path).await else {
                continue;
            };
            if tokio::fs::remove_file(&path).await.is_err() {
                continue;
            }
            let ident = match Ident::new(text.trim()) {
                Ok(i) => i,
                Err(e) => {
                    warn!(file = %path.display(), error = %e, "bad spooled release dropped");
                    continue;
                }
            };
            let (reply, rx) = oneshot::channel();
            let req = Request::Release {
                ident: ident.clone(),
                addr: None,
                reply,
            };
            if self.ipam.send(req).await.is_err() {
                // Stopping: put it back for the next start.
                let _ = tokio::fs::write(&path, text).await;
                return released;
            }
            match rx.await {
                Ok(out) => {
                    info!(id = %ident, addresses = out.len(), "spooled CNI release done");
                    released += 1;
                }
                Err(_) => {
                    let _ = tokio::fs::write(&path, text).await;
                    return released;
                }
            }
        }
        if released > 0 {
            debug!(released, "release spool drained");
        }
        released
    }
}
