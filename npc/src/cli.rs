// SPDX-License-Identifier: Apache-2.0
//! Command-line flags of `weave-npc`, each also read from a `WEAVE_*` environment variable,
//! validated once into a [`Config`]; subcommands in `cli/`: `explain` ([`explain`]) and
//! `hold` ([`hold`]).

pub mod explain;
pub mod hold;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::compile::NodeConfig;
pub use crate::config::Config;

/// `weave-npc`: enforces Kubernetes NetworkPolicy and ClusterNetworkPolicy on this node with
/// nftables.
#[derive(Debug, Parser)]
#[command(name = "weave-npc", version)]
pub struct Cli {
    /// A one-shot command instead of the controller.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Kubeconfig file; without it the in-cluster service account (or `$KUBECONFIG`) is used.
    #[arg(long, env = "WEAVE_KUBECONFIG", global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// Name of this node: pods whose `spec.nodeName` matches are enforced here.
    #[arg(long, env = "WEAVE_NODE_NAME", default_value = "")]
    pub node_name: String,
    /// Prometheus metrics address; `off` disables it.
    #[arg(long, env = "WEAVE_NPC_METRICS_ADDR", default_value = ":6781")]
    pub metrics_addr: String,
    /// Prefix of the host-side veth names of pods on the bridge.
    #[arg(
        long,
        env = "WEAVE_POD_PORT_PREFIX",
        default_value = "vethwepl",
        global = true
    )]
    pub pod_port_prefix: String,
    /// nflog group that dropped connections are logged to.
    #[arg(long, env = "WEAVE_NPC_LOG_GROUP", default_value_t = 86)]
    pub log_group: u16,
    /// Drop log entries per second per pod and direction.
    #[arg(long, env = "WEAVE_NPC_LOG_RATE", default_value_t = 10)]
    pub log_rate: u32,
    /// Seconds between full reconciles, which repair drift of our tables.
    #[arg(long, env = "WEAVE_NPC_RESYNC_SECS", default_value_t = 60)]
    pub resync_secs: u64,
    /// Path of the `nft` program.
    #[arg(long, env = "WEAVE_NFT", default_value = "nft", global = true)]
    pub nft: PathBuf,
    /// Seconds one `nft` transaction may take before it is killed (and retried later).
    #[arg(long, env = "WEAVE_NFT_TIMEOUT_SECS", default_value_t = 30)]
    pub nft_timeout_secs: u64,
    /// Read the nflog group and log one line per dropped connection attempt.
    #[arg(long, env = "WEAVE_NPC_DROP_LOG", default_value_t = true, action = clap::ArgAction::Set)]
    pub drop_log: bool,
    /// The node agent's API socket, asked every 2 s which addresses it handed out: containers
    /// it wired outside Kubernetes (nerdctl, `weave attach`, other CNI runtimes) may then use
    /// their pod ports. Empty: only pods may.
    #[arg(long, env = "WEAVE_API_SOCKET", default_value = weave_api::DEFAULT_API_SOCKET)]
    pub api_socket: PathBuf,
    /// Remove everything weave-npc created (its two `weave-npc` tables) and exit.
    #[arg(long)]
    pub cleanup: bool,
    /// Log filter (`info`, `debug`, or an EnvFilter directive); `RUST_LOG` wins when set.
    #[arg(long, env = "WEAVE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Log format: `text` or `json` (one JSON object per line), as weaver's.
    #[arg(long, env = "WEAVE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The one-shot commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Explains which policies allow or deny a connection (read from the API, evaluated as
    /// the ruleset is compiled).
    Explain(explain::Args),
    /// Closes every pod port of this node until weave-npc's first ruleset replaces the hold
    /// (does nothing when weave-npc's tables exist); run before any pod is wired after a boot.
    Hold,
}

impl Cli {
    /// Validates the flags.
    pub fn config(&self) -> Result<Config, String> {
        if self.node_name.is_empty() {
            return Err("--node-name (or WEAVE_NODE_NAME) is required".into());
        }
        if self.resync_secs == 0 {
            return Err("--resync-secs must be positive".into());
        }
        if self.nft_timeout_secs == 0 {
            return Err("--nft-timeout-secs must be positive".into());
        }
        let metrics_addr = match self.metrics_addr.as_str() {
            "off" | "" => None,
            s => Some(parse_listen(s)?),
        };
        Ok(Config {
            kubeconfig: self.kubeconfig.clone(),
            node: NodeConfig {
                node_name: self.node_name.clone(),
                pod_port_prefix: self.pod_port_prefix.clone(),
                log_group: self.log_group,
                log_rate: self.log_rate,
            },
            metrics_addr,
            resync: Duration::from_secs(self.resync_secs),
            nft: self.nft.clone(),
            nft_limit: Duration::from_secs(self.nft_timeout_secs),
            drop_log: self.drop_log,
            api_socket: (!self.api_socket.as_os_str().is_empty()).then(|| self.api_socket.clone()),
        })
    }
}

/// Parses `host:port` or `:port` (all addresses).
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_owned()
    };
    full.parse()
        .map_err(|_| format!("invalid listen address {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_validation() {
        let cli = Cli::parse_from(["weave-npc", "--node-name", "n1"]);
        let config = cli.config().expect("valid");
        assert_eq!(
            config.metrics_addr,
            Some("0.0.0.0:6781".parse().expect("addr"))
        );
        assert_eq!(config.node.node_name, "n1");
        assert_eq!(config.node.log_group, 86);
        let cli = Cli::parse_from(["weave-npc"]);
        assert!(cli.config().is_err(), "node name is required");
        let cli = Cli::parse_from(["weave-npc", "--node-name", "n", "--metrics-addr", "off"]);
        assert_eq!(cli.config().expect("valid").metrics_addr, None);
        assert!(config.drop_log, "the drop log is on by default");
        let cli = Cli::parse_from(["weave-npc", "--node-name", "n", "--drop-log", "false"]);
        assert!(!cli.config().expect("valid").drop_log);
        let cli = Cli::parse_from(["weave-npc", "--node-name", "n", "--nft-timeout-secs", "0"]);
        assert!(cli.config().is_err(), "a zero time limit is refused");
        let cli = Cli::parse_from(["weave-npc", "explain", "x/a", "y/b", "80/TCP"]);
        assert!(matches!(cli.command, Some(Command::Explain(_))));
    }
}
