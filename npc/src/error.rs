// SPDX-License-Identifier: Apache-2.0
//! The crate's error type.

use std::net::SocketAddr;
use std::path::PathBuf;

use weave_platform::firewall::FirewallError;

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can stop weave-npc.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The kubeconfig file could not be read or used.
    #[error("load kubeconfig {path}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// Neither a kubeconfig nor the in-cluster service account could configure the client.
    #[error("infer the Kubernetes client configuration")]
    InferConfig(#[source] kube::config::InferConfigError),
    /// The Kubernetes client could not be built.
    #[error("build the Kubernetes client")]
    Client(#[source] kube::Error),
    /// An nftables transaction failed.
    #[error("apply the nftables ruleset")]
    Firewall(#[from] FirewallError),
    /// A blocking task panicked or was cancelled.
    #[error("run {what} on the blocking pool")]
    Join {
        /// What was running.
        what: &'static str,
        /// The join failure.
        #[source]
        source: tokio::task::JoinError,
    },
    /// The metrics listener could not be bound.
    #[error("bind metrics listener {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Serving metrics failed.
    #[error("serve metrics")]
    Serve(#[source] std::io::Error),
    /// A watch ended for good (its store writer was dropped).
    #[error("the {kind} watch ended")]
    WatchEnded {
        /// Pods, namespaces or networkpolicies.
        kind: &'static str,
    },
}
