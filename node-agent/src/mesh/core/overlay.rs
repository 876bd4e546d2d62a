// SPDX-License-Identifier: Apache-2.0
//! The overlay view handed to the data plane: next hops, broadcast trees
//! and the neighbours with their addresses and sleeve keys, rebuilt when
//! routes or confirmations change; and the data plane's confirmations of
//! each connection's UDP path.
//!
//! Invariant: the view is replaced whole (a new `Arc`) whenever it changes,
//! so a reader never sees half an update.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::time::Instant;
use tracing::{info, warn};

use super::{ConnState, Mesh};
use crate::mesh::overlay::{Neighbour, OverlayView};
use crate::mesh::peer::PeerName;
use crate::mesh::routes::{broadcast_children, Graph};

impl Mesh {
    /// The latest snapshot for the data plane.
    pub fn overlay_view(&self) -> &Arc<OverlayView> {
        &self.overlay_view
    }

    /// The data plane verified the path to `peer` on connection `conn_uid`:
    /// the connection now counts as established and carries data.
    pub fn overlay_established(&mut self, peer: PeerName, conn_uid: u64, now: Instant) {
        self.set_confirmed(peer, conn_uid, true, now);
    }

    /// The data plane lost the path to `peer`: routes avoid the link (other
    /// peers may relay) until it is verified again.
    pub fn overlay_failed(&mut self, peer: PeerName, conn_uid: u64, now: Instant) {
        self.set_confirmed(peer, conn_uid, false, now);
    }

    pub(super) fn set_confirmed(&mut self, peer: PeerName, conn_uid: u64, ok: bool, now: Instant) {
        let found = self.conns.values_mut().find_map(|c| match &mut c.state {
            ConnState::Established(r) if r.name == peer && r.conn_uid == conn_uid => Some(r),
            _ => None,
        });
        let Some(r) = found else { return };
        if r.confirmed == ok {
            return;
        }
        r.confirmed = ok;
        if ok {
            info!(%peer, "data path established");
        } else {
            warn!(%peer, "data path lost; traffic is relayed through other peers where possible");
        }
        self.topology_changed(now);
        self.topo.update_local(|rec| {
            if let Some(c) = rec.conns.get_mut(&peer) {
                c.established = ok;
            }
        });
        self.push_records(&[self.cfg.name], None);
    }

    pub(super) fn update_overlay_view(&mut self) {
        // Broadcast trees cost a search per peer: only a data plane needs them.
        if !self.cfg.overlay {
            return;
        }
        let mut broadcast = BTreeMap::new();
        for rec in self.topo.records() {
            if !self.unreachable.contains_key(&rec.name) {
                broadcast.insert(
                    rec.name,
                    broadcast_children(&self.topo, Graph::Symmetric, rec.name),
                );
            }
        }
        let neighbours = self
            .conns
            .values()
            .filter_map(|c| match &c.state {
                ConnState::Established(r) => Some((
                    r.name,
                    Neighbour {
                        addr: r.listen_addr,
                        conn_uid: r.conn_uid,
                        keys: r.keys.clone(),
                    },
                )),
                _ => None,
            })
            .collect();
        let view = OverlayView {
            local: self.cfg.name,
            version: self.overlay_view.version + 1,
            unicast: self.routes.unicast.clone(),
            broadcast,
            neighbours,
        };
        let same = view.unicast == self.overlay_view.unicast
            && view.broadcast == self.overlay_view.broadcast
            && view.neighbours == self.overlay_view.neighbours;
        if !same {
            self.overlay_view = Arc::new(view);
        }
    }
}
