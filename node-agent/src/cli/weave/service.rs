// SPDX-License-Identifier: Apache-2.0
//! `weave service export|import|rebind|list|remove` and `weave status services`: one
//! command per service change, each one request to the agent, which applies it in one
//! nftables transaction and keeps it across restarts.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{bail, Context};
use clap::Subcommand;
use weave_api::{
    Client, DnsLookupReply, DnsLookupRequest, Service, ServiceAddRequest, ServiceFront,
    ServiceKind, ServiceProto, ServicesReply,
};

use super::table;

/// Subcommands of `weave service`.
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Make a container's service reachable from outside at PORT on this host's addresses
    /// (whether or not the container runs here): `weave service export 2211 a1:4422`.
    Export {
        /// UDP instead of TCP.
        #[arg(long)]
        udp: bool,
        /// Only on this address of the host (default: every address).
        #[arg(long, value_parser = |s: &str| weave_api::net::parse_addr_v4(s, "address"))]
        bind: Option<Ipv4Addr>,
        /// The port on this host.
        port: u16,
        /// The container's `IP:PORT`, or `NAME:PORT` with a weaveDNS name.
        target: String,
    },
    /// Make an outside `IP:PORT` that this host reaches available to every container at
    /// this host's weave address and PORT: `weave service import 3322 192.168.5.3:2211`.
    Import {
        /// UDP instead of TCP.
        #[arg(long)]
        udp: bool,
        /// The weave address containers connect to (default: this host's exposed address in
        /// the default subnet, exposed first if need be).
        #[arg(long, value_parser = |s: &str| weave_api::net::parse_addr_v4(s, "address"))]
        address: Option<Ipv4Addr>,
        /// The port containers connect to.
        port: u16,
        /// The outside `IP:PORT`.
        target: String,
    },
    /// Point an export or import at another target, in one transaction: new connections go
    /// there, open ones stay where they are.
    Rebind {
        /// UDP instead of TCP.
        #[arg(long)]
        udp: bool,
        /// The service: PORT, or ADDR:PORT when two share the port.
        front: String,
        /// The new target, `IP:PORT` (or `NAME:PORT` for an export).
        target: String,
    },
    /// Remove an export or import.
    Remove {
        /// UDP instead of TCP.
        #[arg(long)]
        udp: bool,
        /// The service: PORT, or ADDR:PORT when two share the port.
        front: String,
    },
    /// Every export and import of this host.
    List,
}

/// Runs `weave service …`.
pub(super) fn run(
    client: &Client,
    command: ServiceCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let reply: ServicesReply = match command {
        ServiceCommand::Export {
            udp,
            bind,
            port,
            target,
        } => {
            let target = resolve(client, &target)?;
            client.post_json(
                "/services/export",
                &ServiceAddRequest {
                    proto: proto(udp),
                    address: bind,
                    port,
                    target,
                },
            )?
        }
        ServiceCommand::Import {
            udp,
            address,
            port,
            target,
        } => client.post_json(
            "/services/import",
            &ServiceAddRequest {
                proto: proto(udp),
                address,
                port,
                target: parse_target(&target)?,
            },
        )?,
        ServiceCommand::Rebind { udp, front, target } => {
            let (address, port) = parse_front(&front)?;
            let target = resolve(client, &target)?;
            client.post_json(
                "/services/rebind",
                &ServiceAddRequest {
                    proto: proto(udp),
                    address,
                    port,
                    target,
                },
            )?
        }
        ServiceCommand::Remove { udp, front } => {
            let (address, port) = parse_front(&front)?;
            let reply: ServicesReply = client.post_json(
                "/services/remove",
                &ServiceFront {
                    proto: proto(udp),
                    address,
                    port,
                },
            )?;
            if let Some(s) = reply.changed {
                writeln!(out, "removed {}", crate::services::set::describe(&s))?;
            }
            return Ok(());
        }
        ServiceCommand::List => {
            let reply: ServicesReply = client.get_json("/services")?;
            out.write_all(render_services(&reply.services).as_bytes())?;
            return Ok(());
        }
    };
    if let Some(s) = reply.changed {
        writeln!(out, "{}", crate::services::set::describe(&s))?;
    }
    Ok(())
}

/// `weave status services` and `weave service list`: one service a line.
pub fn render_services(services: &[Service]) -> String {
    if services.is_empty() {
        return "no services (weave service export|import adds one)\n".to_string();
    }
    let mut rows = vec![vec![
        "KIND".to_string(),
        "PROTO".into(),
        "FRONT".into(),
        "TARGET".into(),
    ]];
    for s in services {
        let front = match (s.kind, s.address) {
            (_, Some(a)) => format!("{a}:{}", s.port),
            (ServiceKind::Export, None) => format!("*:{}", s.port),
            (ServiceKind::Import, None) => format!("?:{}", s.port),
        };
        rows.push(vec![
            s.kind.to_string(),
            s.proto.to_string(),
            front,
            s.target.to_string(),
        ]);
    }
    table(&rows)
}

fn proto(udp: bool) -> ServiceProto {
    if udp {
        ServiceProto::Udp
    } else {
        ServiceProto::Tcp
    }
}

/// `PORT` or `ADDR:PORT`.
fn parse_front(s: &str) -> anyhow::Result<(Option<Ipv4Addr>, u16)> {
    match s.rsplit_once(':') {
        Some((a, p)) => Ok((
            Some(
                a.parse()
                    .with_context(|| format!("malformed address {a:?} in {s:?}"))?,
            ),
            parse_port(p, s)?,
        )),
        None => Ok((None, parse_port(s, s)?)),
    }
}

fn parse_port(p: &str, whole: &str) -> anyhow::Result<u16> {
    match p.parse::<u16>() {
        Ok(n) if n != 0 => Ok(n),
        _ => bail!("malformed port {p:?} in {whole:?}: want 1 to 65535"),
    }
}

/// `IP:PORT`.
fn parse_target(s: &str) -> anyhow::Result<SocketAddrV4> {
    let Some((a, p)) = s.rsplit_once(':') else {
        bail!("malformed target {s:?}: want IP:PORT");
    };
    let ip: Ipv4Addr = a
        .parse()
        .with_context(|| format!("malformed target {s:?}: {a:?} is not an IPv4 address"))?;
    Ok(SocketAddrV4::new(ip, parse_port(p, s)?))
}

/// `IP:PORT`, or `NAME:PORT` looked up in weaveDNS (its first address).
fn resolve(client: &Client, s: &str) -> anyhow::Result<SocketAddrV4> {
    let Some((name, p)) = s.rsplit_once(':') else {
        bail!("malformed target {s:?}: want IP:PORT or NAME:PORT");
    };
    if name.parse::<Ipv4Addr>().is_ok() || name.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return parse_target(s);
    }
    let port = parse_port(p, s)?;
    let r: DnsLookupReply = client
        .post_json(
            "/dns/lookup",
            &DnsLookupRequest {
                name: name.to_string(),
            },
        )
        .with_context(|| format!("look up {name} in weaveDNS"))?;
    match r.addresses.first() {
        Some(a) => Ok(SocketAddrV4::new(*a, port)),
        None => bail!("{} is not known to weaveDNS", r.name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fronts_and_targets_parse_or_say_why_not() {
        assert_eq!(parse_front("2211").expect("port"), (None, 2211));
        assert_eq!(
            parse_front("10.32.0.1:3322").expect("address and port"),
            (Some(Ipv4Addr::new(10, 32, 0, 1)), 3322)
        );
        for (bad, want) in [
            ("0", "malformed port \"0\" in \"0\": want 1 to 65535"),
            (
                "70000",
                "malformed port \"70000\" in \"70000\": want 1 to 65535",
            ),
            (
                "10.32.0:1",
                "malformed address \"10.32.0\" in \"10.32.0:1\"",
            ),
        ] {
            let got = parse_front(bad).expect_err(bad).to_string();
            assert_eq!(got, want, "{bad}");
        }
        assert_eq!(
            parse_target("192.168.5.3:2211").expect("target"),
            "192.168.5.3:2211".parse().expect("addr")
        );
        assert_eq!(
            parse_target("192.168.5.3")
                .expect_err("no port")
                .to_string(),
            "malformed target \"192.168.5.3\": want IP:PORT"
        );
        assert_eq!(
            parse_target("host3:2211").expect_err("a name").to_string(),
            "malformed target \"host3:2211\": \"host3\" is not an IPv4 address"
        );
    }

    #[test]
    fn services_render_as_a_table() {
        let services = [
            Service {
                kind: ServiceKind::Export,
                proto: ServiceProto::Tcp,
                address: None,
                port: 2211,
                target: "10.32.0.5:4422".parse().expect("t"),
            },
            Service {
                kind: ServiceKind::Import,
                proto: ServiceProto::Udp,
                address: Some(Ipv4Addr::new(10, 32, 0, 1)),
                port: 53,
                target: "192.168.7.1:53".parse().expect("t"),
            },
        ];
        assert_eq!(
            render_services(&services),
            "KIND    PROTO  FRONT         TARGET\n\
             export  tcp    *:2211        10.32.0.5:4422\n\
             import  udp    10.32.0.1:53  192.168.7.1:53\n"
        );
        assert_eq!(
            render_services(&[]),
            "no services (weave service export|import adds one)\n"
        );
    }
}
