// SPDX-License-Identifier: Apache-2.0
//! The mesh control plane, without I/O: peer identity, the wire format of the
//! control connection, the gossiped topology, routes, the connection maker
//! and the state machine that ties them together, plus the gossip port
//! through which other subsystems gossip on channels of their own. The
//! socket loops that drive it live in [`crate::router`].

pub mod connmaker;
pub mod core;
pub mod gossip;
pub mod overlay;
pub mod peer;
pub mod routes;
pub mod topology;
pub mod wire;

pub use self::core::{Action, ConnId, Mesh, MeshConfig};
pub use self::peer::{PeerName, PeerUid};
