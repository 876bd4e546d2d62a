// SPDX-License-Identifier: Apache-2.0
//! Pending operations: allocations and claims that cannot complete at once
//! (no ring yet, no space, a claim of another owner's address) wait here
//! and are retried after each change until they complete, or are cancelled
//! when the caller goes away.
//!
//! Invariant: an operation completes exactly once, with an address handed
//! out by this peer from its own share, or with an error.

use tokio::time::Instant;
use tracing::debug;

use super::gossip::Ask;
use super::space::{Allocation, Ident};
use super::subnet::{ip, Subnet};
use super::{Ipam, IpamError, OpId, Waiting};
use crate::mesh::PeerName;

#[derive(Debug, Clone)]
pub(super) enum OpKind {
    Allocate { ident: Ident, subnet: Subnet },
    Claim { ident: Ident, alloc: Allocation },
}

#[derive(Debug, Clone)]
pub(super) struct Pending {
    pub(super) id: OpId,
    pub(super) kind: OpKind,
}

impl Ipam {
    /// Allocates an address of `subnet` (the default one when `None`) for
    /// `ident`. `Some` is the answer now; `None` means the answer comes later
    /// from [`Self::poll_completion`] under `op`.
    pub fn allocate(
        &mut self,
        op: OpId,
        ident: Ident,
        subnet: Option<Subnet>,
        now: Instant,
    ) -> Option<Result<Allocation, IpamError>> {
        let subnet = match self.subnet(subnet) {
            Ok(s) => s,
            Err(e) => return Some(Err(e)),
        };
        self.submit(op, OpKind::Allocate { ident, subnet }, now)
    }

    /// Claims `addr` in `subnet` for `ident` (restarts, fixed addresses,
    /// moved containers). Addresses outside the range are only recorded.
    pub fn claim(
        &mut self,
        op: OpId,
        ident: Ident,
        addr: std::net::Ipv4Addr,
        prefix: u8,
        now: Instant,
    ) -> Option<Result<Allocation, IpamError>> {
        let a = u32::from(addr);
        let net = std::net::Ipv4Addr::from(a & (u32::MAX << (32 - u32::from(prefix.clamp(1, 30)))));
        let subnet = match Subnet::new(net, prefix) {
            Ok(s) => s,
            Err(e) => return Some(Err(IpamError::Gossip(e))),
        };
        let (lo, hi) = subnet.host_range();
        if !(lo..hi).contains(&u64::from(a)) {
            return Some(Err(IpamError::Reserved { addr, subnet }));
        }
        self.submit(
            op,
            OpKind::Claim {
                ident,
                alloc: Allocation { addr: a, subnet },
            },
            now,
        )
    }

    pub(super) fn submit(
        &mut self,
        op: OpId,
        kind: OpKind,
        now: Instant,
    ) -> Option<Result<Allocation, IpamError>> {
        self.pending.push(Pending { id: op, kind });
        self.step(now);
        let pos = self.completions.iter().position(|(id, _)| *id == op)?;
        self.completions.remove(pos).map(|(_, r)| r)
    }

    /// Withdraws a request that is still waiting.
    pub fn cancel(&mut self, op: OpId) {
        self.pending.retain(|p| p.id != op);
    }

    /// Whether any request waits.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// A finished request.
    pub fn poll_completion(&mut self) -> Option<(OpId, Result<Allocation, IpamError>)> {
        self.completions.pop_front()
    }

    pub(super) fn run_pending(&mut self, now: Instant) {
        let me = self.cfg.name;
        let mut need_space: Option<Subnet> = None;
        let mut need_claim: Option<(u32, PeerName)> = None;
        let mut unreachable_owner = false;
        let pending = std::mem::take(&mut self.pending);
        for p in pending {
            let done = match &p.kind {
                OpKind::Allocate { ident, subnet } => {
                    self.try_allocate(ident, *subnet, &mut need_space)
                }
                OpKind::Claim { ident, alloc } => {
                    self.try_claim(ident, *alloc, &mut need_claim, &mut unreachable_owner)
                }
            };
            match done {
                Some(r) => {
                    if r.is_ok() {
                        self.persist_dirty = true;
                    }
                    self.completions.push_back((p.id, r));
                }
                None => self.pending.push(p),
            }
        }
        self.waiting = Waiting::Nothing;
        if self.peers[&me].ask.is_some() || self.ring.is_empty() {
            return;
        }
        let ask = if let Some((addr, owner)) = need_claim {
            Some(Ask {
                id: 0,
                donor: owner,
                start: addr,
                end: u64::from(addr) + 1,
                single: true,
            })
        } else if let Some(subnet) = need_space {
            let (lo, hi) = subnet.host_range();
            match self.choose_donor(lo, hi, now) {
                Some(donor) => Some(Ask {
                    id: 0,
                    donor,
                    start: u32::try_from(lo).expect("host addresses are below 2^32"),
                    end: hi,
                    single: false,
                }),
                None => {
                    self.waiting = if self.owners_in(lo, hi).is_empty() {
                        Waiting::Space
                    } else {
                        Waiting::UnreachableOwners
                    };
                    None
                }
            }
        } else {
            None
        };
        let _ = unreachable_owner;
        if let Some(mut ask) = ask {
            self.waiting = Waiting::Space;
            ask.id = self.next_ask_id();
            debug!(donor = %ask.donor, from = %ip(u64::from(ask.start)), single = ask.single, "asking for IP space");
            let mine = self
                .peers
                .get_mut(&me)
                .expect("own record is always present");
            mine.ask = Some(ask);
            mine.version += 1;
            self.ask_sent = Some(now);
            self.gossip_dirty = true;
        }
    }

    pub(super) fn try_allocate(
        &mut self,
        ident: &Ident,
        subnet: Subnet,
        need_space: &mut Option<Subnet>,
    ) -> Option<Result<Allocation, IpamError>> {
        if let Some(a) = self.space.find_in(ident, &subnet) {
            return Some(Ok(a));
        }
        if let Some(by) = self.removed.get(&self.cfg.name) {
            return Some(Err(IpamError::Removed { by: by.to_string() }));
        }
        if self.ring.is_empty() {
            return None;
        }
        let owned = self.ring.ranges_of(self.cfg.name);
        if let Some(a) = self.space.allocate(ident, subnet, &owned) {
            debug!(id = %ident, address = %a, "allocated");
            return Some(Ok(a));
        }
        need_space.get_or_insert(subnet);
        None
    }

    pub(super) fn try_claim(
        &mut self,
        ident: &Ident,
        alloc: Allocation,
        need_claim: &mut Option<(u32, PeerName)>,
        unreachable_owner: &mut bool,
    ) -> Option<Result<Allocation, IpamError>> {
        let addr = ip(u64::from(alloc.addr));
        match self.space.holder(alloc.addr) {
            Some(h) if h == ident => return Some(Ok(alloc)),
            Some(h) => {
                return Some(Err(IpamError::InUse {
                    addr,
                    holder: h.to_string(),
                }))
            }
            None => {}
        }
        if !self.cfg.universe.contains(u64::from(alloc.addr)) {
            // Outside the range: nobody else allocates it; just record it.
            let _ = self.space.claim(ident, alloc);
            return Some(Ok(alloc));
        }
        if let Some(by) = self.removed.get(&self.cfg.name) {
            return Some(Err(IpamError::Removed { by: by.to_string() }));
        }
        let owner = self.ring.owner(u64::from(alloc.addr))?;
        if owner == self.cfg.name {
            self.claim_denied.remove(&alloc.addr);
            let _ = self.space.claim(ident, alloc);
            debug!(id = %ident, address = %alloc, "claimed");
            return Some(Ok(alloc));
        }
        if let Some(denier) = self.claim_denied.remove(&alloc.addr) {
            return Some(Err(IpamError::ClaimDenied {
                addr,
                owner: denier.to_string(),
            }));
        }
        if self.removed.contains_key(&owner) {
            // Its heir takes over shortly; ask again then.
            return None;
        }
        if !self.reachable.contains(&owner) {
            *unreachable_owner = true;
            return Some(Err(IpamError::OwnerUnreachable {
                addr,
                owner: owner.to_string(),
            }));
        }
        need_claim.get_or_insert((alloc.addr, owner));
        None
    }
}
