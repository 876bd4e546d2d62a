// SPDX-License-Identifier: Apache-2.0
//! The local API of `weaver`: the JSON types it speaks and a tiny blocking
//! HTTP/1.1 client that reaches it over a Unix socket or TCP.
//!
//! This crate is shared by the agent (server side), the `weave` CLI and, later,
//! the CNI plugin, which must stay small: so it depends on serde only and
//! brings its own minimal client instead of an HTTP stack.

mod client;
mod types;

pub use client::{Client, Endpoint, Error, Response};
pub use types::*;

/// Default path of the agent's Unix socket.
pub const DEFAULT_API_SOCKET: &str = "/run/weave/weave.sock";
/// Default TCP address of the agent's local HTTP API.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:6784";
