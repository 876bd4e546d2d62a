// SPDX-License-Identifier: Apache-2.0
//! [`Outbox`]: the sending end of a packet thread. It feeds frames to the
//! pure [`Batcher`] and sends the datagrams it hands back (sealed for their
//! neighbour when encryption is on), counting what went out and what was
//! dropped and why. Each thread that reads frames (the TAP side, the UDP
//! side relaying) owns one.
//!
//! Invariant: the datagram pending for a neighbour leaves before a large
//! frame to it, so frames to one neighbour keep their order.

use std::sync::atomic::Ordering;

use tokio::time::Instant;
use tracing::trace;

use super::state::{lock, Sleeve, DROP_NO_PATH, DROP_OVERSIZED, DROP_SEND_FAILED};
use crate::mesh::PeerName;
use crate::sleeve::batch::{Batcher, FragmentError, Ready, Runs};
use crate::sleeve::frame;
use crate::sleeve::mtu::underlay_payload;
use crate::sleeve::switch::Hop;

/// Batches frames per next hop, cuts large ones into fragments, and sends.
pub(super) struct Outbox {
    batcher: Batcher,
    /// The fragment datagrams of one large frame.
    runs: Runs,
    /// A sealed datagram.
    sealed: Vec<u8>,
}

impl Outbox {
    pub(super) fn new(sleeve_local: PeerName, mtu: u32) -> Self {
        Self {
            batcher: Batcher::new(sleeve_local, underlay_payload(mtu)),
            runs: Runs::default(),
            sealed: Vec::new(),
        }
    }

    /// Queues a frame (from `origin`) for `hop`; sends whatever it pushed
    /// out of the batch for that neighbour.
    pub(super) fn push(&mut self, sleeve: &Sleeve, hop: Hop, origin: PeerName, data: &[u8]) {
        match self.batcher.push(hop, origin, data) {
            Ok(None) => {}
            Ok(Some(full)) => self.send(sleeve, full),
            Err(_) => sleeve.drop_for(Some(hop.next), DROP_OVERSIZED),
        }
    }

    /// Sends a frame with its offload header (`payload`: virtio-net header
    /// and Ethernet frame, any size up to `frame::MAX_LARGE`) to `hop` in
    /// fragments, after whatever is pending for that next hop.
    pub(super) fn push_large(
        &mut self,
        sleeve: &Sleeve,
        hop: Hop,
        origin: PeerName,
        payload: &[u8],
    ) {
        if let Some(pending) = self.batcher.take(hop.next) {
            self.send(sleeve, pending);
        }
        if frame::chunk_for(payload.len(), self.batcher.max()).is_none() {
            sleeve.drop_for(Some(hop.next), DROP_OVERSIZED);
            return;
        }
        let Some(addr) = lock(&sleeve.paths).addr(&hop.next) else {
            sleeve.drop_for(Some(hop.next), DROP_NO_PATH);
            return;
        };
        let id = sleeve.next_fragment_id.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let sealed = &mut self.sealed;
        let wire = |plain: &[u8], out: &mut Vec<u8>| match sleeve
            .wire_form(&hop.next, plain, sealed, now)
        {
            Some(d) => {
                out.extend_from_slice(d);
                true
            }
            None => false,
        };
        match self
            .batcher
            .fragment(hop, origin, payload, id, wire, &mut self.runs)
        {
            Ok(()) => {}
            Err(FragmentError::Oversized) => {
                sleeve.drop_for(Some(hop.next), DROP_OVERSIZED);
                return;
            }
            Err(FragmentError::NoSession) => {
                sleeve.drop_for(Some(hop.next), DROP_SEND_FAILED);
                return;
            }
        }
        let mut sent = 0;
        for (bytes, segment, count) in self.runs.iter() {
            match sleeve.send_segments(bytes, segment, count, addr) {
                Ok(n) => sent += n,
                Err(e) => {
                    trace!(peer = %hop.next, error = %e, "send failed");
                    sleeve.drop_for(Some(hop.next), DROP_SEND_FAILED);
                    return;
                }
            }
        }
        sleeve.count_out(hop.next, 1, sent);
        sleeve.superframes_out.fetch_add(1, Ordering::Relaxed);
    }

    /// Sends every pending datagram (the end of a burst).
    pub(super) fn flush(&mut self, sleeve: &Sleeve) {
        while let Some(ready) = self.batcher.take_any() {
            self.send(sleeve, ready);
        }
    }

    fn send(&mut self, sleeve: &Sleeve, ready: Ready) {
        let addr = lock(&sleeve.paths).addr(&ready.next);
        match addr {
            Some(addr) => {
                match sleeve.send_to_peer(&ready.next, &ready.bytes, addr, &mut self.sealed) {
                    Ok(n) => sleeve.count_out(ready.next, ready.frames, n),
                    Err(e) => {
                        trace!(peer = %ready.next, error = %e, "send failed");
                        sleeve.drop_for(Some(ready.next), DROP_SEND_FAILED);
                    }
                }
            }
            None => sleeve.drop_for(Some(ready.next), DROP_NO_PATH),
        }
        self.batcher.recycle(ready);
    }
}
