// SPDX-License-Identifier: Apache-2.0
//! The `weave` command: talks to the local agent over its API and prints
//! what it says. It finds the agent on `--api-socket`/`WEAVE_API_SOCKET`
//! first and falls back to `--http-addr`/`WEAVE_HTTP_ADDR`.

mod node;
mod service;
mod status;

pub use service::{render_services, ServiceCommand};

pub(crate) use status::table;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use weave_api::net::{parse_addr_v4, parse_net_v4, IpNet, Ipv4Net};
use weave_api::{
    AddressesReply, AllocateRequest, AttachReply, AttachRequest, ClaimRequest, Client,
    ConnectRequest, DetachRequest, DnsAddRequest, DnsChangeReply, DnsLookupReply, DnsLookupRequest,
    DnsRemoveRequest, Endpoint, ExposeReply, ExposeRequest, ForgetRequest, HideReply, HideRequest,
    LookupRequest, PsReply, ReleaseRequest, Report, RmPeerReply, RmPeerRequest, TargetsReply,
    VersionReply,
};

pub use status::{
    render_connections, render_dns, render_ipam, render_peers, render_ps, render_routes,
    render_status,
};

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
    /// Everything the agent knows, as JSON; or the mesh as a Graphviz graph
    /// (`weave report --format dot | dot -Tsvg > mesh.svg`).
    Report {
        /// Output format.
        #[arg(long, value_enum, default_value = "json")]
        format: ReportFormat,
    },
    /// What is attached to this peer's network: the bridge (`weave:expose`),
    /// then each pod or container as `ID MAC ADDRESS...`, read inside its
    /// namespace (`-` when the MAC cannot be read there).
    Ps {
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: PsFormat,
    },
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
    /// Wire a network namespace to the weave bridge: `weave attach [ADDR...] NETNS`
    /// (NETNS is a path, or a name under /run/netns). ADDR is `net:default`
    /// (the default), `net:CIDR` (allocate in that subnet) or a fixed
    /// `[ip:]10.2.1.4/24`.
    Attach {
        /// IPAM identifier of the attachment; default `netns:PATH`.
        #[arg(long)]
        id: Option<String>,
        /// Register the attachment's addresses in weaveDNS under NAME (a label, or a name
        /// in the domain); removed again at detach.
        #[arg(long, short = 'n', conflicts_with = "name_from_netns")]
        name: Option<String>,
        /// Register it under the namespace's name (the last part of its path).
        #[arg(long)]
        name_from_netns: bool,
        /// Addresses, then the namespace.
        #[arg(required = true, num_args = 1..)]
        args: Vec<String>,
    },
    /// Undo `weave attach` and release its addresses.
    Detach {
        /// IPAM identifier used at attach.
        #[arg(long)]
        id: Option<String>,
        /// The namespace (path or name under /run/netns).
        netns: String,
    },
    /// Give the bridge an address in a subnet, so that this host reaches containers (and
    /// they reach weaveDNS); optionally name it in weaveDNS.
    #[command(disable_help_flag = true)]
    Expose {
        /// Print help.
        #[arg(long, action = clap::ArgAction::Help)]
        help: Option<bool>,
        /// `net:CIDR` or CIDR of a subnet inside the range (an address from IPAM), or a
        /// fixed `ADDR/CIDR` (host bits set, claimed in IPAM when inside the range); the
        /// default subnet if absent.
        #[arg(value_parser = parse_where)]
        subnet: Option<Where>,
        /// A DNS name for the host's address.
        #[arg(long, short = 'h')]
        hostname: Option<String>,
    },
    /// Take the bridge's address in a subnet away again (undoes `weave expose`: address,
    /// route, IPAM allocation, weaveDNS names). Pods of this host in the subnet use it as
    /// their gateway, so it refuses while pods are attached, unless --force.
    Hide {
        /// `net:CIDR` or CIDR of a subnet (its address goes), or a fixed `ADDR/CIDR` given
        /// to expose (exactly that address goes); the default subnet if absent.
        #[arg(value_parser = parse_where)]
        subnet: Option<Where>,
        /// Hide even while pods are attached to the bridge (they lose their gateway).
        #[arg(long)]
        force: bool,
        /// The bridge.
        #[arg(long, env = "WEAVE_BRIDGE", default_value = "weave")]
        bridge: String,
    },
    /// Export and import services: `weave service export|import|rebind|remove|list`.
    Service {
        /// What to do.
        #[command(subcommand)]
        command: ServiceCommand,
    },
    /// Register NAME for addresses in weaveDNS: `weave dns-add [IP...] [--id ID] -h NAME`.
    #[command(name = "dns-add", disable_help_flag = true)]
    DnsAdd {
        /// Print help.
        #[arg(long, action = clap::ArgAction::Help)]
        help: Option<bool>,
        /// Who holds the records (a container or attachment id); `weave:extern` if absent.
        #[arg(long)]
        id: Option<String>,
        /// The name (a label, or a name in the domain).
        #[arg(long = "hostname", short = 'h', visible_alias = "name")]
        name: String,
        /// IPv4 addresses.
        #[arg(required = true, value_parser = |s: &str| parse_addr_v4(s, "address"))]
        addresses: Vec<Ipv4Addr>,
    },
    /// Remove this peer's weaveDNS records matching every selector given.
    #[command(name = "dns-remove", disable_help_flag = true)]
    DnsRemove {
        /// Print help.
        #[arg(long, action = clap::ArgAction::Help)]
        help: Option<bool>,
        /// Only records held by this id.
        #[arg(long)]
        id: Option<String>,
        /// Only records of this name.
        #[arg(long = "hostname", short = 'h', visible_alias = "name")]
        name: Option<String>,
        /// Only records of these addresses.
        #[arg(value_parser = |s: &str| parse_addr_v4(s, "address"))]
        addresses: Vec<Ipv4Addr>,
    },
    /// The addresses weaveDNS knows for NAME, one a line.
    #[command(name = "dns-lookup")]
    DnsLookup {
        /// The name.
        name: String,
    },
    /// Hand the IP space of a peer that is gone for good to live peers.
    Rmpeer {
        /// Peer name or nickname.
        peer: String,
    },
    /// Allocate, claim, release or look up addresses directly.
    Ipam {
        /// What to do.
        #[command(subcommand)]
        command: IpamCommand,
    },
    /// Versions of this command and of the agent.
    Version,
    /// Install weave's CNI plugins and conflist on this node (the DaemonSet's init
    /// container). First checks the agent's settings from its WEAVE_* environment, so a bad
    /// setting installs nothing.
    SetupCni {
        /// Where weave-net, weave-ipam (and the reference portmap and loopback) are taken from.
        #[arg(long, default_value = "/usr/bin")]
        source_dir: PathBuf,
        /// The runtime's plugin directory.
        #[arg(long, default_value = "/opt/cni/bin")]
        bin_dir: PathBuf,
        /// The runtime's configuration directory.
        #[arg(long, default_value = "/etc/cni/net.d")]
        conf_dir: PathBuf,
        /// Skip checking the agent's settings.
        #[arg(long)]
        no_check: bool,
    },
    /// Remove everything weave made on this node: bridge and TAP devices, nftables tables,
    /// CNI plugins and conflist, state and run directories. Stop the agent first.
    Reset {
        /// Reset even while pods are attached to the bridge (they lose their network).
        #[arg(long)]
        force: bool,
        /// The bridge.
        #[arg(long, env = "WEAVE_BRIDGE", default_value = "weave")]
        bridge: String,
        /// The runtime's plugin directory.
        #[arg(long, default_value = "/opt/cni/bin")]
        bin_dir: PathBuf,
        /// The runtime's configuration directory.
        #[arg(long, default_value = "/etc/cni/net.d")]
        conf_dir: PathBuf,
        /// The agent's state directory.
        #[arg(long, env = "WEAVE_STATE_DIR", default_value = "/var/lib/weave")]
        state_dir: PathBuf,
        /// The agent's run directory (its API socket's directory).
        #[arg(long, default_value = "/run/weave")]
        run_dir: PathBuf,
    },
}

/// Subcommands of `weave ipam`.
#[derive(Debug, Subcommand)]
pub enum IpamCommand {
    /// An address for ID (the same one again if it has one).
    Allocate {
        /// Identifier.
        id: String,
        /// `net:CIDR` or CIDR of a subnet inside the range; default subnet if absent.
        #[arg(value_parser = parse_subnet)]
        subnet: Option<Ipv4Net>,
    },
    /// A specific address (10.32.0.9/12) for ID.
    Claim {
        /// Identifier.
        id: String,
        /// Address with prefix.
        #[arg(value_parser = |s: &str| parse_net_v4(s, "address"))]
        address: Ipv4Net,
    },
    /// Give back one address of ID, or all of them.
    Release {
        /// Identifier.
        id: String,
        /// One address; all if absent.
        #[arg(value_parser = |s: &str| parse_addr_v4(s, "address"))]
        address: Option<Ipv4Addr>,
    },
    /// The addresses of ID.
    Lookup {
        /// Identifier.
        id: String,
    },
}

/// A subnet argument, `net:CIDR` or `CIDR`.
fn parse_subnet(s: &str) -> Result<Ipv4Net, String> {
    parse_net_v4(s.trim_start_matches("net:"), "subnet")
}

/// What `weave expose`/`hide` is about: a subnet (its address comes from IPAM) or a fixed
/// address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Where {
    /// `net:CIDR`, or a CIDR without host bits.
    Subnet(Ipv4Net),
    /// `ADDR/CIDR` with host bits set.
    Address(Ipv4Net),
}

impl Where {
    /// The request fields: `(subnet, address)`.
    fn fields(w: Option<Self>) -> (Option<Ipv4Net>, Option<Ipv4Net>) {
        match w {
            None => (None, None),
            Some(Self::Subnet(n)) => (Some(n), None),
            Some(Self::Address(a)) => (None, Some(a)),
        }
    }
}

fn parse_where(s: &str) -> Result<Where, String> {
    if s.starts_with("net:") {
        let n = parse_subnet(s)?;
        if n.trunc() != n {
            return Err(format!(
                "subnet {n} has bits set after the prefix (did you mean net:{}, or the fixed address {n} without net:?)",
                n.trunc()
            ));
        }
        return Ok(Where::Subnet(n));
    }
    let n = parse_net_v4(s, "address")?;
    Ok(if n.trunc() == n {
        Where::Subnet(n)
    } else {
        Where::Address(n)
    })
}

/// A list of addresses as the CLI prints it: space-separated.
fn joined(addrs: &[IpNet]) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A namespace argument: a path as given, or a name under /run/netns.
fn netns_path(arg: &str) -> String {
    if arg.contains('/') {
        arg.to_string()
    } else {
        format!("/run/netns/{arg}")
    }
}

/// The DNS name of a namespace attached by path: its file name, which must
/// be a valid label.
fn netns_name(path: &str) -> anyhow::Result<String> {
    let name = path.rsplit('/').next().unwrap_or_default();
    if name.is_empty() || name.contains('.') {
        anyhow::bail!("cannot infer a DNS name from the namespace {path:?}; give --name");
    }
    Ok(name.to_string())
}

/// Formats of `weave report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    /// The whole report as JSON.
    Json,
    /// Peers and connections as a Graphviz graph.
    Dot,
}

/// Output formats of `weave ps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PsFormat {
    /// A line per attachment.
    Text,
    /// The agent's answer as JSON.
    Json,
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
    /// Each peer's share of the IP allocation range.
    Ipam,
    /// weaveDNS: settings, counters and every live record.
    Dns,
    /// Exported and imported services.
    Services,
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
                Some(StatusWhat::Ipam) => match &report.ipam {
                    Some(ipam) => render_ipam(ipam),
                    None => "IP address management is off\n".to_string(),
                },
                Some(StatusWhat::Dns) => match report.dns {
                    Some(_) => render_dns(&client.get_json("/dns/entries")?),
                    None => "weaveDNS is off\n".to_string(),
                },
                Some(StatusWhat::Services) => {
                    let r: weave_api::ServicesReply = client.get_json("/services")?;
                    render_services(&r.services)
                }
            };
            out.write_all(text.as_bytes())?;
        }
        Command::Ps { format } => {
            let ps: PsReply = client.get_json("/ps")?;
            match format {
                PsFormat::Text => out.write_all(render_ps(&ps).as_bytes())?,
                PsFormat::Json => {
                    serde_json::to_writer_pretty(&mut *out, &ps)?;
                    writeln!(out)?;
                }
            }
        }
        Command::Report { format } => {
            let report: Report = client.get_json("/report")?;
            match format {
                ReportFormat::Json => {
                    serde_json::to_writer_pretty(&mut *out, &report)?;
                    writeln!(out)?;
                }
                ReportFormat::Dot => out.write_all(status::render_dot(&report).as_bytes())?,
            }
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
        Command::Attach {
            id,
            name,
            name_from_netns,
            mut args,
        } => {
            let netns = netns_path(&args.pop().unwrap_or_default());
            let dns_name = match (name, name_from_netns) {
                (Some(n), _) => Some(n),
                (None, true) => Some(netns_name(&netns)?),
                (None, false) => None,
            };
            let reply: AttachReply = client.post_json(
                "/attach",
                &AttachRequest {
                    netns,
                    cidrs: args,
                    id,
                    dns_name,
                },
            )?;
            writeln!(out, "{}", joined(&reply.cidrs))?;
        }
        Command::Detach { id, netns } => {
            let _: serde_json::Value = client.post_json(
                "/detach",
                &DetachRequest {
                    netns: netns_path(&netns),
                    id,
                },
            )?;
        }
        Command::Expose {
            subnet, hostname, ..
        } => {
            let (subnet, address) = Where::fields(subnet);
            let reply: ExposeReply = client.post_json(
                "/expose",
                &ExposeRequest {
                    subnet,
                    address,
                    dns_name: hostname,
                },
            )?;
            writeln!(out, "{}", reply.address)?;
        }
        Command::Hide {
            subnet,
            force,
            bridge,
        } => {
            crate::install::check_detached(&bridge, force)?;
            let (subnet, address) = Where::fields(subnet);
            let reply: HideReply = client.post_json("/hide", &HideRequest { subnet, address })?;
            match reply.address {
                Some(a) => writeln!(out, "{a}")?,
                None => writeln!(out, "not exposed")?,
            }
        }
        Command::Service { command } => service::run(&client, command, out)?,
        Command::DnsAdd {
            id,
            name,
            addresses,
            ..
        } => {
            let r: DnsChangeReply = client.post_json(
                "/dns/add",
                &DnsAddRequest {
                    name,
                    addresses,
                    id,
                },
            )?;
            writeln!(out, "added {} records", r.changed)?;
        }
        Command::DnsRemove {
            id,
            name,
            addresses,
            ..
        } => {
            if id.is_none() && name.is_none() && addresses.is_empty() {
                anyhow::bail!("say what to remove: addresses, --hostname or --id");
            }
            let r: DnsChangeReply = client.post_json(
                "/dns/remove",
                &DnsRemoveRequest {
                    name,
                    addresses,
                    id,
                },
            )?;
            writeln!(out, "removed {} records", r.changed)?;
        }
        Command::DnsLookup { name } => {
            let r: DnsLookupReply = client.post_json("/dns/lookup", &DnsLookupRequest { name })?;
            if r.addresses.is_empty() {
                anyhow::bail!("{} is not known", r.name);
            }
            for a in r.addresses {
                writeln!(out, "{a}")?;
            }
        }
        Command::Rmpeer { peer } => {
            let r: RmPeerReply = client.post_json("/ipam/rmpeer", &RmPeerRequest { peer })?;
            writeln!(
                out,
                "removed {}: {} addresses go to {}",
                r.peer,
                r.addresses,
                if r.heirs.is_empty() {
                    "nobody (it owned none)".to_string()
                } else {
                    r.heirs.join(", ")
                }
            )?;
        }
        Command::Ipam { command } => {
            let reply: AddressesReply = match command {
                IpamCommand::Allocate { id, subnet } => client.post_json(
                    "/ipam/allocate",
                    &AllocateRequest {
                        id,
                        subnet,
                        timeout_ms: None,
                    },
                )?,
                IpamCommand::Claim { id, address } => client.post_json(
                    "/ipam/claim",
                    &ClaimRequest {
                        id,
                        address,
                        timeout_ms: None,
                    },
                )?,
                IpamCommand::Release { id, address } => {
                    client.post_json("/ipam/release", &ReleaseRequest { id, address })?
                }
                IpamCommand::Lookup { id } => {
                    client.post_json("/ipam/lookup", &LookupRequest { id })?
                }
            };
            writeln!(out, "{}", joined(&reply.addresses))?;
        }
        Command::SetupCni {
            source_dir,
            bin_dir,
            conf_dir,
            no_check,
        } => {
            let state_dir = if no_check {
                PathBuf::from("/var/lib/weave")
            } else {
                node::check_agent_settings()?
            };
            let paths = crate::install::Paths {
                source_dir,
                bin_dir,
                conf_dir,
                state_dir,
                run_dir: PathBuf::new(),
            };
            let written = crate::install::setup_cni(&paths)?;
            writeln!(out, "installed: {}", written.join(" "))?;
        }
        Command::Reset {
            force,
            bridge,
            bin_dir,
            conf_dir,
            state_dir,
            run_dir,
        } => {
            let paths = crate::install::Paths {
                source_dir: PathBuf::new(),
                bin_dir,
                conf_dir,
                state_dir,
                run_dir,
            };
            node::reset(&paths, &bridge, force, out)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `weave expose`/`hide` tell a subnet (from IPAM) from a fixed address by `net:` or by
    /// host bits.
    #[test]
    fn expose_argument() {
        let net = |s: &str| s.parse::<Ipv4Net>().expect("net");
        assert_eq!(
            parse_where("net:10.32.0.0/12"),
            Ok(Where::Subnet(net("10.32.0.0/12")))
        );
        assert_eq!(
            parse_where("10.40.0.0/16"),
            Ok(Where::Subnet(net("10.40.0.0/16")))
        );
        assert_eq!(
            parse_where("10.2.1.1/24"),
            Ok(Where::Address(net("10.2.1.1/24")))
        );
        assert!(
            parse_where("net:10.2.1.1/24").is_err(),
            "net: with host bits"
        );
        assert!(parse_where("10.2.1.1").is_err(), "no prefix");
        assert_eq!(
            Where::fields(Some(Where::Address(net("10.2.1.1/24")))),
            (None, Some(net("10.2.1.1/24")))
        );
    }
}
