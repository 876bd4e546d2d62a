// SPDX-License-Identifier: Apache-2.0
//! What the data plane needs from the mesh, as one immutable snapshot: the
//! unicast next hops, the broadcast tree children per source, and the
//! neighbours with their UDP addresses and connection UIDs. The mesh makes a
//! new snapshot whenever any of it changes; the data plane swaps it in
//! without locking the mesh.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use std::sync::Arc;

use super::PeerName;
use crate::crypto::SleeveKeys;

/// A neighbour reachable over an established control connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    /// Where its sleeve listens (its IP as we see it, its announced port).
    pub addr: SocketAddr,
    /// UID of the control connection, shared by both ends; heartbeats carry it.
    pub conn_uid: u64,
    /// Sleeve keys from that connection's handshake; `None` without a password.
    pub keys: Option<Arc<SleeveKeys>>,
}

/// Snapshot of routes and neighbours for the data plane.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverlayView {
    /// The local peer.
    pub local: PeerName,
    /// Increases with every new snapshot.
    pub version: u64,
    /// Destination → neighbour to send to.
    pub unicast: BTreeMap<PeerName, PeerName>,
    /// Source → the neighbours we pass its broadcasts to.
    pub broadcast: BTreeMap<PeerName, Vec<PeerName>>,
    /// Neighbours with an established control connection.
    pub neighbours: BTreeMap<PeerName, Neighbour>,
}

impl OverlayView {
    /// Next hop towards `dest`.
    pub fn next_hop(&self, dest: &PeerName) -> Option<PeerName> {
        self.unicast.get(dest).copied()
    }

    /// Our children in `source`'s broadcast tree.
    pub fn broadcast_children(&self, source: &PeerName) -> &[PeerName] {
        self.broadcast.get(source).map_or(&[], Vec::as_slice)
    }
}
