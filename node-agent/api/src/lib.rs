// SPDX-License-Identifier: Apache-2.0
//! The local API of `weaver`: the JSON types it speaks (addresses typed
//! by [`net`]), a tiny blocking HTTP/1.1 client that
//! reaches it over a Unix socket or TCP, and the other contracts the agent
//! shares with its clients: the CNI release [`spool`], the Prometheus text
//! format of [`prometheus`] (also served by `weave-npc`) and the one-line
//! [`error_chain`].
//!
//! This crate is shared by the agent (server side), the `weave` CLI, the CNI
//! plugins and `weave-npc`; the plugins must stay small, so it depends on
//! serde, ipnet and thiserror only and brings its own minimal client instead
//! of an HTTP stack.

mod client;
mod error_chain;
pub mod net;
pub mod prometheus;
pub mod spool;
mod types;

pub use client::{Client, Endpoint, Error, Response};
pub use error_chain::{causes, error_chain};
pub use types::*;

/// Default path of the agent's Unix socket.
pub const DEFAULT_API_SOCKET: &str = "/run/weave/weave.sock";
/// Default TCP address of the agent's local HTTP API.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:6784";
