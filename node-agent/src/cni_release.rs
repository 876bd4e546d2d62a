// SPDX-License-Identifier: Apache-2.0
//! Draining the CNI plugins' release spool ([`weave_api::spool`], which
//! holds the contract): when `weave-net` or `weave-ipam` runs DEL while the
//! agent is down, it records the IPAM id in `cni-release/` beside the API
//! socket and succeeds. This task releases those ids once the agent is up
//! (at start, then every [`DRAIN_INTERVAL`]), so that no address leaks; the
//! plugin drains the spool too on its next call. An entry is unlinked
//! before its release, so of two drainers only one releases it.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use weave_api::spool::Spool;

use crate::ipam::allocator::Request;
use crate::ipam::space::Ident;
use crate::Result;

/// How often the spool is looked at after the first drain.
pub const DRAIN_INTERVAL: Duration = Duration::from_secs(10);

/// The drain task.
#[derive(Debug)]
pub struct ReleaseSpool {
    spool: Spool,
    ipam: mpsc::Sender<Request>,
}

impl ReleaseSpool {
    /// Drains `spool` into the allocator behind `ipam`.
    pub fn new(spool: Spool, ipam: mpsc::Sender<Request>) -> Self {
        Self { spool, ipam }
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
        let spool = self.spool.clone();
        let Ok(taken) = tokio::task::spawn_blocking(move || spool.take_all()).await else {
            return 0;
        };
        let mut released = 0;
        let mut taken = taken.into_iter();
        while let Some(text) = taken.next() {
            let ident = match Ident::new(&text) {
                Ok(i) => i,
                Err(e) => {
                    warn!(id = %text, error = %e, "bad spooled release dropped");
                    continue;
                }
            };
            let (reply, rx) = oneshot::channel();
            let req = Request::Release {
                ident: ident.clone(),
                addr: None,
                reply,
            };
            let done = match self.ipam.send(req).await {
                Ok(()) => rx.await.ok(),
                Err(_) => None,
            };
            match done {
                Some(out) => {
                    info!(id = %ident, addresses = out.len(), "spooled CNI release done");
                    released += 1;
                }
                None => {
                    // Stopping: put it and the rest back for the next start.
                    let back: Vec<String> = std::iter::once(text).chain(taken).collect();
                    self.put_back(back).await;
                    return released;
                }
            }
        }
        if released > 0 {
            debug!(released, "release spool drained");
        }
        released
    }

    async fn put_back(&self, ids: Vec<String>) {
        let spool = self.spool.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for id in ids {
                if let Err(e) = spool.record(&id) {
                    warn!(%id, error = %e, "spooled release lost");
                }
            }
        })
        .await;
    }
}
