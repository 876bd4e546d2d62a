// SPDX-License-Identifier: Apache-2.0
//! The `weave` command: talks to the local agent over its API and prints
//! what it says. It finds the agent on `--api-socket`/`WEAVE_API_SOCKET`
//! first and falls back to `--http-addr`/`WEAVE_HTTP_ADDR`.

mod status;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use weave_api::{
    AttachReply, AttachRequest, Client, ConnectRequest, DetachRequest, Endpoint, ForgetRequest,
    Report, TargetsReply, VersionReply,
};

pub use status::{render_connections, render_peers, render_routes, render_status};

/// weave: inspect and steer the local weave agent.
#[derive(Debug, Parser)]
#[command(name = "weave", version, about)]
pub struct Cli {
    /// The agent's Unix socket.
    #[arg(long, global = true, env = "WEAVE_API_SOCKET", default_value = weave_api::DEFAULT_API_SOCKET)]
    pub api_socket: PathBuf,
    /// The agent's HTTP address, tried when the socket does not answer.
    #[arg(long, global = true, env = "WEAVE_HTTP_ADDR", default_value = weave_api::DEFAULT_HTTP_ADDR)]
    pub http_addr: SocketAddr,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands of `weave`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Summary of the local peer; or its peers, connections or routes.
    Status {
        /// What to show.
        #[arg(value_enum)]
        what: Option<StatusWhat>,
    },
    /// Everything the agent knows, as JSON.
    Report,
    /// Connect to more peers (IP, IP:PORT or `[IPv6]:PORT`).
    Connect {
        /// Replace the whole set of targets instead of adding to it.
        #[arg(long)]
        replace: bool,
        /// Peer addresses.
        #[arg(required = true)]
        peers: Vec<String>,
    },
    /// Stop reconnecting to peers; live connections stay up until they end.
    Forget {
        /// Peer addresses.
        #[arg(required = true)]
        peers: Vec<String>,
    },
    /// Wire a network namespace to the weave bridge: `weave attach CIDR... NETNS`
    /// (NETNS is a path, or a name under /run/netns).
    Attach {
        /// Addresses with prefix (10.2.1.4/24), then the namespace.
        #[arg(required = true, num_args = 2..)]
        args: Vec<String>,
    },
    /// Undo `weave attach`.
    Detach {
        /// The namespace (path or name under /run/netns).
        netns: String,
    },
    /// Versions of this command and of the agent.
    Version,
}

/// A namespace argument: a path as given, or a name under /run/netns.
fn netns_path(arg: &str) -> String {
    if arg.contains('/') {
        arg.to_string()
    } else {
        format!("/run/netns/{arg}")
    }
}

/// Parts of `weave status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusWhat {
    /// Every peer and the connections it announces.
    Peers,
    /// The local peer's connections and attempts.
    Connections,
    /// Next hop towards each peer.
    Routes,
}

/// Runs the command, writing its output to `out`.
pub fn run(cli: Cli, out: &mut impl Write) -> anyhow::Result<()> {
    let client = Client::new(vec![
        Endpoint::Unix(cli.api_socket),
        Endpoint::Tcp(cli.http_addr),
    ]);
    match cli.command {
        Command::Status { what } => {
            let report: Report = client.get_json("/report")?;
            let text = match what {
                None => render_status(&report),
                Some(StatusWhat::Peers) => render_peers(&report),
                Some(StatusWhat::Connections) => render_connections(&report),
                Some(StatusWhat::Routes) => render_routes(&report),
            };
            out.write_all(text.as_bytes())?;
        }
        Command::Report => {
            let report: Report = client.get_json("/report")?;
            serde_json::to_writer_pretty(&mut *out, &report)?;
            writeln!(out)?;
        }
        Command::Connect { replace, peers } => {
            let reply: TargetsReply =
                client.post_json("/connect", &ConnectRequest { peers, replace })?;
            writeln!(out, "targets: {}", reply.targets.join(" "))?;
        }
        Command::Forget { peers } => {
            let reply: TargetsReply = client.post_json("/forget", &ForgetRequest { peers })?;
            writeln!(out, "targets: {}", reply.targets.join(" "))?;
        }
        Command::Attach { mut args } => {
            let netns = netns_path(&args.pop().unwrap_or_default());
            let reply: AttachReply =
                client.post_json("/attach", &AttachRequest { netns, cidrs: args })?;
            writeln!(out, "{}", reply.cidrs.join(" "))?;
        }
        Command::Detach { netns } => {
            let _: serde_json::Value = client.post_json(
                "/detach",
                &DetachRequest {
                    netns: netns_path(&netns),
                },
            )?;
        }
        Command::Version => {
            writeln!(out, "weave {}", env!("CARGO_PKG_VERSION"))?;
            match client.get_json::<VersionReply>("/version") {
                Ok(v) => writeln!(out, "weaver {} (protocol {})", v.version, v.protocol)?,
                Err(e) => writeln!(out, "weaver: not reachable ({e})")?,
            }
        }
    }
    Ok(())
}
