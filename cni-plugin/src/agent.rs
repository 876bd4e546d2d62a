// SPDX-License-Identifier: Apache-2.0
//! Talking to the local `weaver`: [`Agent`], the few requests ADD and DEL
//! make (behind a trait, so the executor is tested with a fake agent), and
//! [`SocketAgent`], the real one: one small JSON request per call over its
//! Unix socket (the blocking client of `weave-api`, no HTTP stack).
//!
//! The release spool keeps DEL from leaking addresses while the agent is
//! down: a release that cannot reach the agent is recorded in the spool
//! ([`weave_api::spool`], which holds the contract shared with the agent)
//! and DEL succeeds; whoever next talks to the agent drains it.
//! [`Agent::release_or_spool`] and [`Agent::drain_spool`] are written once,
//! here, over the trait's primitives.

use std::path::Path;
use std::time::Duration;

use weave_api::net::{IpNet, Ipv4Net};
use weave_api::spool::Spool;
use weave_api::{
    AddressesReply, AllocateRequest, Client, CniAddReply, CniAddRequest, Endpoint, GcReply,
    GcRequest, IpamReport, LookupRequest, ReleaseRequest,
};

use crate::error::{Error, Result};

/// How long the agent may wait for space (consensus) on ADD; kubelet's
/// sandbox deadline is minutes, so waiting beats failing.
pub const ALLOCATE_TIMEOUT_MS: u64 = 60_000;
/// Socket timeout: a little longer than the allocation may wait.
const IO_TIMEOUT: Duration = Duration::from_secs(65);

/// What ADD and DEL ask of the agent.
pub trait Agent {
    /// ADD's one request: an address, the bridge, the MTU and the gateway.
    fn add(&self, req: &CniAddRequest) -> Result<CniAddReply>;

    /// Releases every address of `id`; releasing nothing succeeds.
    fn release(&self, id: &str) -> Result<()>;

    /// The release spool beside the agent's socket.
    fn spool(&self) -> &Spool;

    /// Removes `id` from the spool, if it is there: an ADD reusing the id
    /// must not have its fresh address released by a later drain.
    fn unspool(&self, id: &str) -> bool {
        self.spool().forget(id)
    }

    /// Releases `id`, or records it in the spool if the agent cannot be
    /// asked now. Errors only when neither works.
    fn release_or_spool(&self, id: &str) -> Result<()> {
        match self.release(id) {
            Ok(()) => Ok(()),
            Err(e) if e.is_transient() => {
                tracing::warn!(%id, error = %e, "agent unavailable: release spooled");
                self.spool().record(id).map_err(|source| Error::Internal {
                    op: format!("record {id} in {}", self.spool().dir().display()),
                    source,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Releases every spooled id. Returns how many were released; stops at
    /// the first transient failure, putting that id and the rest back.
    fn drain_spool(&self) -> Result<usize> {
        let mut released = 0;
        let mut taken = self.spool().take_all().into_iter();
        while let Some(id) = taken.next() {
            match self.release(&id) {
                Ok(()) => {
                    tracing::info!(%id, "spooled release done");
                    released += 1;
                }
                Err(e) if e.is_transient() => {
                    for back in std::iter::once(id).chain(taken) {
                        self.spool()
                            .record(&back)
                            .map_err(|source| Error::Internal {
                                op: format!("record {back} in {}", self.spool().dir().display()),
                                source,
                            })?;
                    }
                    return Err(e);
                }
                Err(e) => tracing::warn!(%id, error = %e, "spooled release refused; dropped"),
            }
        }
        Ok(released)
    }
}

/// The agent behind one API socket.
#[derive(Debug, Clone)]
pub struct SocketAgent {
    client: Client,
    spool: Spool,
}

impl SocketAgent {
    /// The agent listening on `socket`; its spool is `cni-release/` beside it.
    pub fn new(socket: &Path) -> SocketAgent {
        SocketAgent {
            client: Client::new(vec![Endpoint::Unix(socket.to_path_buf())])
                .with_timeout(IO_TIMEOUT),
            spool: Spool::beside(socket),
        }
    }

    /// An address for `id` (idempotent: the same id gets the same address).
    pub fn allocate(&self, id: &str, subnet: Option<Ipv4Net>) -> Result<Vec<IpNet>> {
        let reply: AddressesReply = self
            .client
            .post_json(
                "/ipam/allocate",
                &AllocateRequest {
                    id: id.to_string(),
                    subnet,
                    timeout_ms: Some(ALLOCATE_TIMEOUT_MS),
                },
            )
            .map_err(|e| Error::from_agent(&format!("allocate an address for {id}"), e))?;
        Ok(reply.addresses)
    }

    /// The addresses `id` holds.
    pub fn lookup(&self, id: &str) -> Result<Vec<IpNet>> {
        let reply: AddressesReply = self
            .client
            .post_json("/ipam/lookup", &LookupRequest { id: id.to_string() })
            .map_err(|e| Error::from_agent(&format!("look up the addresses of {id}"), e))?;
        Ok(reply.addresses)
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
}

impl Agent for SocketAgent {
    fn add(&self, req: &CniAddRequest) -> Result<CniAddReply> {
        self.client
            .post_json("/cni/add", req)
            .map_err(|e| Error::from_agent(&format!("allocate an address for {}", req.id), e))
    }

    fn release(&self, id: &str) -> Result<()> {
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

    fn spool(&self) -> &Spool {
        &self.spool
    }
}
