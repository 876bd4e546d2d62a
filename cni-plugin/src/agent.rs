// SPDX-License-Identifier: Apache-2.0
//! Talking to the local `weaver`: one small JSON request per call over its
//! Unix socket (the blocking client of `weave-api`, no HTTP stack), and the
//! release spool that keeps DEL from leaking addresses while the agent is
//! down.
//!
//! Spool: a DEL that cannot reach the agent records the IPAM id as an empty
//! file named after it in `cni-release/` next to the agent's socket
//! (`/run/weave/cni-release/` by default) and succeeds. Whoever next talks to
//! the agent (the next plugin call, or the agent itself at start and
//! periodically) drains it: unlink first, so only one drainer releases an
//! entry, then release; an entry whose release fails transiently is written
//! back.

use std::path::{Path, PathBuf};
use std::time::Duration;

use weave_api::{
    AddressesReply, AllocateRequest, Client, Endpoint, GcReply, GcRequest, IpamReport,
    LookupRequest, ReleaseRequest, Report,
};
use weave_platform::wiring::Cidr;

use crate::error::{Error, Result};

/// How long the agent may wait for space (consensus) on ADD; kubelet's
/// sandbox deadline is minutes, so waiting beats failing.
const ALLOCATE_TIMEOUT_MS: u64 = 60_000;
/// Socket timeout: a little longer than the allocation may wait.
const IO_TIMEOUT: Duration = Duration::from_secs(65);
/// Name of the spool directory, next to the socket.
pub const SPOOL_DIR: &str = "cni-release";

/// The agent behind one API socket.
#[derive(Debug, Clone)]
pub struct Agent {
    client: Client,
    spool: PathBuf,
}

impl Agent {
    /// The agent listening on `socket`; its spool is `cni-release/` beside it.
    pub fn new(socket: &Path) -> Agent {
        let spool = socket
            .parent()
            .unwrap_or_else(|| Path::new("/"))
            .join(SPOOL_DIR);
        Agent {
            client: Client::new(vec![Endpoint::Unix(socket.to_path_buf())])
                .with_timeout(IO_TIMEOUT),
            spool,
        }
    }

    /// The spool directory.
    pub fn spool_dir(&self) -> &Path {
        &self.spool
    }

    /// An address for `id` (idempotent: the same id gets the same address).
    pub fn allocate(&self, id: &str, subnet: Option<Cidr>) -> Result<Vec<Cidr>> {
        let reply: AddressesReply = self
            .client
            .post_json(
                "/ipam/allocate",
                &AllocateRequest {
                    id: id.to_string(),
                    subnet: subnet.map(|s| s.to_string()),
                    timeout_ms: Some(ALLOCATE_TIMEOUT_MS),
                },
            )
            .map_err(|e| Error::from_agent(&format!("allocate an address for {id}"), e))?;
        parse_addresses(&reply)
    }

    /// The addresses `id` holds.
    pub fn lookup(&self, id: &str) -> Result<Vec<Cidr>> {
        let reply: AddressesReply = self
            .client
            .post_json("/ipam/lookup", &LookupRequest { id: id.to_string() })
            .map_err(|e| Error::from_agent(&format!("look up the addresses of {id}"), e))?;
        parse_addresses(&reply)
    }

    /// Releases every address of `id`; releasing nothing succeeds.
    pub fn release(&self, id: &str) -> Result<()> {
        let _: AddressesReply = self
            .client
            .post_json(
                "/ipam/release",
                &ReleaseRequest {
                    id: id.to_string(),
                    address: None,
                },
            )
            .map_err(|e| Error::from_agent(&format!("release the addresses of {id}"), e))?;
        Ok(())
    }

    /// Releases `id`, or records it in the spool if the agent cannot be
    /// asked now. Errors only when neither works.
    pub fn release_or_spool(&self, id: &str) -> Result<()> {
        match self.release(id) {
            Ok(()) => Ok(()),
            Err(e) if e.is_transient() => {
                tracing::warn!(%id, error = %e, "agent unavailable: release spooled");
                self.spool(id)
            }
            Err(e) => Err(e),
        }
    }

    /// Releases every id of `prefix` not in `keep`; returns the released ids.
    pub fn gc(&self, prefix: &str, keep: Vec<String>) -> Result<Vec<String>> {
        let reply: GcReply = self
            .client
            .post_json(
                "/ipam/gc",
                &GcRequest {
                    prefix: prefix.to_string(),
                    keep,
                },
            )
            .map_err(|e| Error::from_agent("collect stale addresses", e))?;
        Ok(reply.released)
    }

    /// The IPAM state (STATUS).
    pub fn ipam(&self) -> Result<IpamReport> {
        self.client
            .get_json("/ipam")
            .map_err(|e| Error::from_agent("read the IPAM state", e))
    }

    /// The agent's report (bridge name, overlay MTU, peer name).
    pub fn report(&self) -> Result<Report> {
        self.client
            .get_json("/report")
            .map_err(|e| Error::from_agent("read the agent's report", e))
    }

    /// Records a pending release of `id`.
    pub fn spool(&self, id: &str) -> Result<()> {
        let fail = |op: String| move |source| Error::Internal { op, source };
        std::fs::create_dir_all(&self.spool)
            .map_err(fail(format!("create {}", self.spool.display())))?;
        let path = self.spool.join(spool_name(id));
        std::fs::write(&path, id.as_bytes()).map_err(fail(format!("write {}", path.display())))
    }

    /// Releases every spooled id (`keep` is never released: an ADD about to
    /// reuse it). Returns how many were released; stops at the first
    /// transient failure, leaving the rest for later.
    pub fn drain_spool(&self) -> Result<usize> {
        let Ok(entries) = std::fs::read_dir(&self.spool) else {
            return Ok(0);
        };
        let mut released = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(id) = std::fs::read_to_string(&path) else {
                continue;
            };
            // Unlink first: of several drainers only one succeeds, and only
            // that one releases.
            if std::fs::remove_file(&path).is_err() {
                continue;
            }
            match self.release(&id) {
                Ok(()) => {
                    tracing::info!(%id, "spooled release done");
                    released += 1;
                }
                Err(e) if e.is_transient() => {
                    self.spool(&id)?;
                    return Err(e);
                }
                Err(e) => tracing::warn!(%id, error = %e, "spooled release refused; dropped"),
            }
        }
        Ok(released)
    }

    /// Removes `id` from the spool, if it is there: an ADD reusing the id
    /// must not have its fresh address released by a later drain.
    pub fn unspool(&self, id: &str) -> bool {
        std::fs::remove_file(self.spool.join(spool_name(id))).is_ok()
    }
}

/// File name of a spooled id: the id itself, which holds no `/` (container
/// IDs, network names and interface names exclude it).
fn spool_name(id: &str) -> String {
    id.replace('/', "_")
}

fn parse_addresses(reply: &AddressesReply) -> Result<Vec<Cidr>> {
    reply
        .addresses
        .iter()
        .map(|a| {
            a.parse::<Cidr>().map_err(|e| Error::Internal {
                op: format!("read the address weaver gave {}", reply.id),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })
        })
        .collect()
}
