// SPDX-License-Identifier: Apache-2.0
//! The validated settings of a running controller, built once from the flags by
//! [`crate::cli::Cli::config`]. Kept apart from `cli` so that the controller depends on its
//! settings only, not on the command line (whose one-shot commands use the controller).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::compile::NodeConfig;

/// Validated settings of a running controller.
#[derive(Debug, Clone)]
pub struct Config {
    /// Kubeconfig, or `None` to infer.
    pub kubeconfig: Option<PathBuf>,
    /// What compile needs to know about the node.
    pub node: NodeConfig,
    /// Metrics listener, if any.
    pub metrics_addr: Option<SocketAddr>,
    /// Period of the full reconcile.
    pub resync: Duration,
    /// The `nft` program.
    pub nft: PathBuf,
    /// Time limit of one nft transaction.
    pub nft_limit: Duration,
    /// Whether to log dropped connections.
    pub drop_log: bool,
    /// The node agent's API socket, for the addresses it handed out (`None`: pods only).
    pub api_socket: Option<PathBuf>,
}
