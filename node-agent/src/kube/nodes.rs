// SPDX-License-Identifier: Apache-2.0
//! What the agent reads from Node objects: each Node's peer address, the consensus size for
//! the first IPAM split, and the `NetworkUnavailable` condition it writes back.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::Node;
use serde_json::json;

/// The address a Node's agent listens on: its first InternalIP (IPv4 preferred), else its
/// first ExternalIP, with the mesh port. `None` for a Node without usable addresses (it is
/// not dialled; its agent will dial us).
pub fn peer_addr(node: &Node, port: u16) -> Option<SocketAddr> {
    let addresses = node.status.as_ref()?.addresses.as_ref()?;
    let of_kind = |kind: &str| -> Vec<IpAddr> {
        addresses
            .iter()
            .filter(|a| a.type_ == kind)
            .filter_map(|a| a.address.parse().ok())
            .collect()
    };
    ["InternalIP", "ExternalIP"].iter().find_map(|kind| {
        let ips = of_kind(kind);
        ips.iter()
            .find(|ip| ip.is_ipv4())
            .or_else(|| ips.first())
            .map(|ip| SocketAddr::new(*ip, port))
    })
}

/// The peer addresses of every Node but `me`, sorted.
pub fn peer_addrs<'a>(
    nodes: impl IntoIterator<Item = &'a Node>,
    me: &str,
    port: u16,
) -> Vec<SocketAddr> {
    let set: BTreeSet<SocketAddr> = nodes
        .into_iter()
        .filter(|n| n.metadata.name.as_deref() != Some(me))
        .filter_map(|n| peer_addr(n, port))
        .collect();
    set.into_iter().collect()
}

/// The names of `nodes`.
pub fn names<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> BTreeSet<String> {
    nodes
        .into_iter()
        .filter_map(|n| n.metadata.name.clone())
        .collect()
}

/// Whether Node `me` already says its network is available because of us.
pub fn network_available(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions.iter().any(|c| {
                c.type_ == "NetworkUnavailable"
                    && c.status == "False"
                    && c.reason.as_deref() == Some(REASON)
            })
        })
}

/// Reason of the condition the agent sets.
pub const REASON: &str = "WeaveIsUp";

/// The strategic-merge patch of a Node's status that sets `NetworkUnavailable=False` (the
/// conditions list merges by `type`, so other conditions are untouched). `now` is RFC 3339.
pub fn network_available_patch(now: &str) -> serde_json::Value {
    json!({
        "status": {
            "conditions": [{
                "type": "NetworkUnavailable",
                "status": "False",
                "reason": REASON,
                "message": "weave is running on this node",
                "lastTransitionTime": now,
                "lastHeartbeatTime": now,
            }]
        }
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{NodeAddress, NodeCondition, NodeStatus};
    use kube::api::ObjectMeta;

    use super::*;

    fn node(name: &str, addresses: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            status: Some(NodeStatus {
                addresses: Some(
                    addresses
                        .iter()
                        .map(|(kind, ip)| NodeAddress {
                            type_: (*kind).into(),
                            address: (*ip).into(),
                        })
                        .collect(),
                ),
                ..NodeStatus::default()
            }),
            ..Node::default()
        }
    }

    #[test]
    fn internal_ipv4_first_then_external() {
        let n = node(
            "a",
            &[
                ("Hostname", "a"),
                ("InternalIP", "fd00::1"),
                ("InternalIP", "10.0.0.1"),
            ],
        );
        assert_eq!(
            peer_addr(&n, 6783),
            Some("10.0.0.1:6783".parse().expect("addr"))
        );
        let n = node("b", &[("ExternalIP", "192.0.2.7")]);
        assert_eq!(
            peer_addr(&n, 6783),
            Some("192.0.2.7:6783".parse().expect("addr"))
        );
        let n = node("c", &[("InternalIP", "fd00::2")]);
        assert_eq!(
            peer_addr(&n, 7000),
            Some("[fd00::2]:7000".parse().expect("addr"))
        );
        assert_eq!(peer_addr(&node("d", &[("Hostname", "d")]), 6783), None);
        assert_eq!(peer_addr(&Node::default(), 6783), None);
    }

    #[test]
    fn peers_are_every_other_node() {
        let nodes = [
            node("n1", &[("InternalIP", "10.0.0.1")]),
            node("n2", &[("InternalIP", "10.0.0.2")]),
            node("n3", &[("InternalIP", "10.0.0.3")]),
        ];
        let addrs = peer_addrs(&nodes, "n2", 6783);
        assert_eq!(
            addrs,
            [
                "10.0.0.1:6783".parse().expect("a"),
                "10.0.0.3:6783".parse().expect("b")
            ]
        );
        assert_eq!(names(&nodes).len(), 3);
    }

    #[test]
    fn condition_patch_and_check_agree() {
        let patch = network_available_patch("2026-01-01T00:00:00Z");
        let condition: NodeCondition =
            serde_json::from_value(patch["status"]["conditions"][0].clone())
                .expect("a NodeCondition");
        let mut n = node("n1", &[]);
        assert!(!network_available(&n));
        n.status.as_mut().expect("status").conditions = Some(vec![condition]);
        assert!(network_available(&n));
    }
}
