// SPDX-License-Identifier: Apache-2.0
//! Errors of the agent library.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Errors of `weaver`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The state directory could not be created or written.
    #[error("state directory {path}")]
    StateDir {
        /// The path involved.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The persisted peer name is unreadable.
    #[error("peer name file {path} holds {content:?}, not a peer name; fix or delete it")]
    PeerNameFile {
        /// The file.
        path: PathBuf,
        /// What it holds.
        content: String,
    },
    /// A listening socket could not be opened.
    #[error("listen for {what} on {addr}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The API Unix socket could not be set up.
    #[error("API socket {path}: {reason}")]
    ApiSocket {
        /// The socket path.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The sleeve data plane could not be set up.
    #[error(transparent)]
    Sleeve(#[from] crate::router::sleeve::SleeveError),
    /// A kernel operation failed.
    #[error(transparent)]
    Platform(#[from] weave_platform::Error),
    /// The IPAM state file is unusable.
    #[error(transparent)]
    IpamState(#[from] crate::ipam::persist::PersistError),
    /// The allocation range collides with a route of the host.
    #[error("IP allocation range {range} overlaps with route {route} on this host; pick another --ipalloc-range and set it on all hosts")]
    RangeOverlap {
        /// The range.
        range: String,
        /// The route.
        route: String,
    },
    /// The services state file is unusable.
    #[error(transparent)]
    ServicesState(#[from] crate::services::LoadError),
    /// The mesh password could not be turned into keys.
    #[error("derive keys from the mesh password: {0}")]
    Password(String),
    /// The Kubernetes side failed at start.
    #[error(transparent)]
    Kube(#[from] Box<crate::kube::KubeError>),
    /// A server task failed.
    #[error("serve {what}")]
    Serve {
        /// Which server.
        what: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Result with the crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
