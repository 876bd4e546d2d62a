// SPDX-License-Identifier: Apache-2.0
//! `weave-npc explain SRC DST PORT[/PROTO]`: reads pods, namespaces, nodes and policies from
//! the API once, compiles them as the controller does and prints which policies allow or
//! deny the connection at each end, and why ([`crate::explain`]).
//!
//! SRC and DST are `namespace/name` of a pod or an IPv4 address; the port defaults to TCP.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DynamicObject, ListParams};
use kube::Client;

use crate::compile::{compile, Compiled, NodeConfig, Snapshot};
use crate::controller::{cluster_policies_served, cluster_policy_resource, typed_cluster_policy};
use crate::explain::{explain, Endpoint, Explanation};
use crate::policy::Protocol;

/// Arguments of `explain`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Source: `namespace/pod` or an IPv4 address.
    pub src: String,
    /// Destination: `namespace/pod` or an IPv4 address.
    pub dst: String,
    /// Destination port and protocol: `80`, `80/TCP`, `53/UDP`, `9/SCTP`.
    pub port: String,
}

/// Parses `PORT[/PROTO]`.
pub fn parse_port(s: &str) -> Result<(u16, Protocol), String> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "TCP"));
    let number: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("invalid port {port:?}: a number from 1 to 65535"))?;
    let protocol = Protocol::parse(&proto.to_uppercase())
        .ok_or_else(|| format!("invalid protocol {proto:?}: TCP, UDP or SCTP"))?;
    Ok((number, protocol))
}

/// Resolves `SRC`/`DST` against the compiled state.
pub fn endpoint(compiled: &Compiled, s: &str) -> Result<Endpoint, String> {
    if let Ok(ip) = s.parse::<Ipv4Addr>() {
        return Ok(Endpoint::at(compiled, ip));
    }
    let (namespace, name) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is neither namespace/pod nor an IPv4 address"))?;
    compiled
        .pod(namespace, name)
        .map(|p| Endpoint::Pod(p.clone()))
        .ok_or_else(|| format!("no running pod {namespace}/{name} with an IPv4 address"))
}

/// Explains `args` on the state in `snapshot`.
pub fn explain_snapshot(snapshot: &Snapshot, args: &Args) -> Result<Explanation, String> {
    let (port, protocol) = parse_port(&args.port)?;
    let compiled = compile(snapshot, &NodeConfig::default());
    let src = endpoint(&compiled, &args.src)?;
    let dst = endpoint(&compiled, &args.dst)?;
    Ok(explain(&compiled, src, dst, protocol, port))
}

/// Reads the API and prints the explanation.
pub async fn run(client: Client, args: &Args) -> anyhow::Result<String> {
    // Bad arguments fail before anything is read.
    parse_port(&args.port).map_err(anyhow::Error::msg)?;
    let lp = ListParams::default();
    let mut snapshot = Snapshot {
        pods: Api::<Pod>::all(client.clone()).list(&lp).await?.items,
        namespaces: Api::<Namespace>::all(client.clone()).list(&lp).await?.items,
        policies: Api::<NetworkPolicy>::all(client.clone())
            .list(&lp)
            .await?
            .items,
        nodes: Api::<Node>::all(client.clone()).list(&lp).await?.items,
        cluster_policies: Vec::new(),
    };
    if cluster_policies_served(&client).await {
        let api = Api::<DynamicObject>::all_with(client.clone(), &cluster_policy_resource());
        snapshot.cluster_policies = api
            .list(&lp)
            .await?
            .items
            .iter()
            .filter_map(typed_cluster_policy)
            .collect();
    }
    let explanation = explain_snapshot(&snapshot, args).map_err(anyhow::Error::msg)?;
    Ok(explanation.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_protocols() {
        assert_eq!(parse_port("80"), Ok((80, Protocol::Tcp)));
        assert_eq!(parse_port("53/udp"), Ok((53, Protocol::Udp)));
        assert_eq!(parse_port("9/SCTP"), Ok((9, Protocol::Sctp)));
        for bad in ["0", "70000", "http", "80/ICMP", "80/"] {
            assert!(parse_port(bad).is_err(), "{bad} accepted");
        }
    }
}
