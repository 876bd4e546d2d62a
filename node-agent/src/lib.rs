// SPDX-License-Identifier: Apache-2.0
//! `weaver`, the per-node agent of the weave network, as a library: the
//! binaries only parse flags and call [`run`]; tests drive the same code.

pub mod mesh;

/// Fuzzing entry points: each takes arbitrary bytes and must never panic.
pub mod fuzz {
    use crate::mesh::topology::TopologyGossip;
    use crate::mesh::wire::{Decoder, Message};

    /// Feeds bytes to a fresh connection decoder, as if they came from a peer.
    pub fn handshake(data: &[u8]) {
        let mut d = Decoder::new();
        d.push(data);
        while let Ok(Some(_)) = d.next_frame() {}
        let _ = Message::decode(data);
    }

    /// Decodes a topology gossip body and re-encodes what decodes.
    pub fn gossip(data: &[u8]) {
        if let Ok(g) = TopologyGossip::decode(data) {
            let again = TopologyGossip::decode(&g.encode()).expect("re-encoded gossip decodes");
            assert_eq!(g, again, "gossip round trip");
        }
    }
}
