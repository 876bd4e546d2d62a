// SPDX-License-Identifier: Apache-2.0
//! Unit tests of the fake: its idempotency rules and kernel-like errors.

use std::{net::IpAddr, path::Path};

use super::*;
use crate::{Error, Netlink, Route};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

#[tokio::test]
async fn ensure_bridge_is_idempotent_and_updates_mtu() {
    let nl = FakeNetlink::new();
    let first = nl.ensure_bridge("weave", 1376).await.expect("create");
    let again = nl.ensure_bridge("weave", 1400).await.expect("exists");
    assert_eq!(first, again);
    let br = nl.link("weave").expect("bridge exists");
    assert_eq!((br.kind, br.mtu, br.up), (FakeKind::Bridge, 1400, true));
    assert_eq!(nl.link_mtu("weave").await.expect("mtu"), Some(1400));
    assert_eq!(nl.link_mtu_by_index(first).await.expect("mtu"), Some(1400));
    assert_eq!(nl.link_mtu_by_index(9999).await.expect("mtu"), None);
    assert_eq!(nl.link_index("weave").await.expect("index"), Some(first));
    assert_eq!(nl.link_index("nope").await.expect("index"), None);
    assert_eq!(nl.links().len(), 2, "lo and the bridge");
}

#[tokio::test]
async fn ensure_bridge_refuses_a_link_of_another_kind() {
    let nl = FakeNetlink::new();
    nl.add_link("weave", FakeKind::Device, 1500);
    let err = nl
        .ensure_bridge("weave", 1376)
        .await
        .expect_err("not a bridge");
    assert!(matches!(err, Error::LinkKindMismatch { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "ensure bridge weave: link weave exists but is a device, not a bridge"
    );
}

#[tokio::test]
async fn bad_arguments_fail_before_any_change() {
    let nl = FakeNetlink::new();
    assert!(matches!(
        nl.ensure_bridge("a-name-that-is-too-long", 1500).await,
        Err(Error::InvalidName { .. })
    ));
    let err = nl
        .ensure_bridge("weave", 10)
        .await
        .expect_err("mtu too small");
    assert_eq!(err.errno(), Some(libc::EINVAL));
    assert!(nl.link("weave").is_none());
    assert!(matches!(
        nl.add_addr(1, ip("10.0.0.1"), 33).await,
        Err(Error::InvalidPrefix { .. })
    ));
    assert!(matches!(
        nl.add_route(ip("10.0.0.1"), 24, None, 1).await,
        Err(Error::InvalidPrefix { .. })
    ));
}

#[tokio::test]
async fn unknown_indexes_fail_with_enodev() {
    let nl = FakeNetlink::new();
    for res in [
        nl.set_up(99).await,
        nl.set_mtu(99, 1500).await,
        nl.set_master(99, 1).await,
        nl.set_mac(99, [2, 0, 0, 0, 0, 1]).await,
        nl.add_addr(99, ip("10.0.0.1"), 24).await,
    ] {
        assert_eq!(res.expect_err("no link 99").errno(), Some(libc::ENODEV));
    }
    assert_eq!(nl.link_mac(99).await.expect("lookup"), None);
    assert_eq!(nl.addrs(99).await.expect("dump"), vec![]);
}

#[tokio::test]
async fn veth_peer_lands_in_the_target_namespace() {
    let host = FakeNetlink::new();
    let pod_ns = Path::new("/var/run/netns/pod1");
    let idx = host
        .create_veth("vethwepl1", "eth0", pod_ns, 1376)
        .await
        .expect("create");
    let again = host
        .create_veth("vethwepl1", "eth0", pod_ns, 1376)
        .await
        .expect("retry");
    assert_eq!(idx, again, "a retried ADD finds its own veth");

    let pod = host.in_netns(pod_ns);
    let peer = pod.link("eth0").expect("peer in pod namespace");
    assert_eq!(
        (peer.kind, peer.mtu, peer.up),
        (FakeKind::Veth, 1376, false)
    );
    assert_eq!(
        peer.peer.as_ref().map(|p| p.name.as_str()),
        Some("vethwepl1")
    );
    assert!(
        host.link("eth0").is_none(),
        "peer is not in the host namespace"
    );
    assert_eq!(
        host.link("vethwepl1").and_then(|l| l.peer),
        Some(FakePeer {
            name: "eth0".into(),
            netns: pod_ns.to_owned()
        })
    );

    // Another host veth whose peer name clashes inside the pod: EEXIST.
    let err = host
        .create_veth("vethwepl2", "eth0", pod_ns, 1376)
        .await
        .expect_err("peer name taken");
    assert_eq!(err.errno(), Some(libc::EEXIST));
    assert!(host.link("vethwepl2").is_none());
}

#[tokio::test]
async fn deleting_one_veth_end_or_the_namespace_removes_both() {
    let host = FakeNetlink::new();
    let pod_ns = Path::new("/var/run/netns/pod1");
    let pod = host.in_netns(pod_ns);
    host.create_veth("vethwepl1", "eth0", pod_ns, 1500)
        .await
        .expect("create");
    host.delete_link("vethwepl1").await.expect("delete");
    host.delete_link("vethwepl1")
        .await
        .expect("delete is idempotent");
    assert!(pod.link("eth0").is_none());

    host.create_veth("vethwepl1", "eth0", pod_ns, 1500)
        .await
        .expect("create");
    host.remove_netns(pod_ns);
    assert!(
        host.link("vethwepl1").is_none(),
        "host end goes with the netns"
    );
}

#[tokio::test]
async fn bridge_ports_master_and_hairpin() {
    let nl = FakeNetlink::new();
    let br = nl.ensure_bridge("weave", 1376).await.expect("bridge");
    let port = nl
        .create_veth("vethwe-bridge", "vethwe-pcap", Path::new(HOST_NETNS), 1376)
        .await
        .expect("veth");
    let err = nl
        .set_hairpin(port, true)
        .await
        .expect_err("not a port yet");
    assert_eq!(err.errno(), Some(libc::EOPNOTSUPP));
    let lo = nl
        .link_index("lo")
        .await
        .expect("lookup")
        .expect("lo exists");
    let err = nl
        .set_master(port, lo)
        .await
        .expect_err("lo is not a bridge");
    assert_eq!(err.errno(), Some(libc::EOPNOTSUPP));
    assert_eq!(
        nl.set_master(port, 999)
            .await
            .expect_err("no master")
            .errno(),
        Some(libc::EINVAL)
    );

    nl.set_master(port, br).await.expect("attach");
    nl.set_hairpin(port, true).await.expect("hairpin");
    let link = nl.link_by_index(port).expect("port");
    assert_eq!((link.master, link.hairpin), (Some(br), true));

    nl.delete_link("weave").await.expect("delete bridge");
    assert_eq!(nl.link_by_index(port).expect("port").master, None);
}

#[tokio::test]
async fn addresses_are_idempotent_and_make_connected_routes_when_up() {
    let nl = FakeNetlink::new();
    let eth = nl
        .create_veth("eth0", "peer0", Path::new("/netns/other"), 1500)
        .await
        .expect("veth");
    nl.add_addr(eth, ip("10.32.0.1"), 12).await.expect("add");
    nl.add_addr(eth, ip("10.32.0.1"), 12)
        .await
        .expect("add again");
    nl.add_addr(eth, ip("fd00::1"), 64).await.expect("add v6");
    assert_eq!(
        nl.addrs(eth).await.expect("list"),
        vec![(ip("10.32.0.1"), 12), (ip("fd00::1"), 64)]
    );
    nl.del_addr(eth, ip("fd00::1"), 64).await.expect("delete");
    nl.del_addr(eth, ip("fd00::1"), 64)
        .await
        .expect("delete a missing address");
    nl.add_addr(eth, ip("fd00::1"), 64)
        .await
        .expect("add v6 again");
    assert_eq!(
        nl.routes_v4().await.expect("routes"),
        vec![],
        "link is down"
    );

    nl.set_up(eth).await.expect("up");
    assert_eq!(
        nl.routes_v4().await.expect("routes"),
        vec![Route {
            dst: ip("10.32.0.0"),
            prefix_len: 12,
            gateway: None,
            oif: Some(eth)
        }]
    );
}

#[tokio::test]
async fn routes_need_an_up_link_and_a_reachable_gateway() {
    let nl = FakeNetlink::new();
    let eth = nl.add_link("eth0", FakeKind::Device, 1500);
    let br = nl.ensure_bridge("weave", 1376).await.expect("bridge");
    let down = nl
        .create_veth("veth0", "veth1", Path::new(HOST_NETNS), 1500)
        .await
        .expect("veth");
    nl.add_addr(eth, ip("192.168.1.10"), 24)
        .await
        .expect("addr");

    let err = nl
        .add_route(ip("10.40.0.0"), 16, None, down)
        .await
        .expect_err("link down");
    assert_eq!(err.errno(), Some(libc::ENETDOWN));
    let err = nl
        .add_route(ip("10.40.0.0"), 16, Some(ip("172.16.0.1")), eth)
        .await
        .expect_err("gateway off-link");
    assert_eq!(err.errno(), Some(libc::ENETUNREACH));
    assert_eq!(
        err.to_string(),
        format!("add route 10.40.0.0/16 via 172.16.0.1 dev {eth}")
    );

    nl.add_route(ip("0.0.0.0"), 0, Some(ip("192.168.1.1")), eth)
        .await
        .expect("default");
    nl.add_route(ip("10.32.0.0"), 12, None, br)
        .await
        .expect("on-link");
    // EEXIST is success, even for a different gateway: callers diff first.
    nl.add_route(ip("10.32.0.0"), 12, None, br)
        .await
        .expect("again");
    nl.add_route(ip("0.0.0.0"), 0, Some(ip("192.168.1.2")), eth)
        .await
        .expect("same prefix");

    let routes = nl.routes_v4().await.expect("routes");
    assert_eq!(routes.len(), 3, "{routes:?}");
    assert!(routes.contains(&Route {
        dst: ip("0.0.0.0"),
        prefix_len: 0,
        gateway: Some(ip("192.168.1.1")),
        oif: Some(eth)
    }));

    nl.delete_link("weave").await.expect("delete");
    assert_eq!(
        nl.routes_v4().await.expect("routes").len(),
        2,
        "routes go with their link"
    );
    assert_eq!(nl.routes().len(), 2);
}

#[tokio::test]
async fn mac_addresses() {
    let nl = FakeNetlink::new();
    let br = nl.ensure_bridge("weave", 1500).await.expect("bridge");
    let mac = nl
        .link_mac(br)
        .await
        .expect("mac")
        .expect("bridge has a mac");
    assert_eq!(mac[0] & 0b11, 0b10, "locally administered unicast");
    nl.set_mac(br, [0x02, 1, 2, 3, 4, 5]).await.expect("set");
    assert_eq!(
        nl.link_mac(br).await.expect("mac"),
        Some([0x02, 1, 2, 3, 4, 5])
    );
    let err = nl
        .set_mac(br, [0x01, 0, 0x5e, 0, 0, 1])
        .await
        .expect_err("multicast");
    assert_eq!(err.errno(), Some(libc::EADDRNOTAVAIL));
}

#[tokio::test]
async fn injected_failures_hit_the_next_call_only() {
    let nl = FakeNetlink::new();
    let pod = nl.in_netns(Path::new("/netns/pod"));
    nl.fail_next(FakeOp::DeleteLink, libc::EBUSY);
    let err = pod.delete_link("eth0").await.expect_err("injected");
    assert_eq!(err.errno(), Some(libc::EBUSY));
    assert_eq!(err.to_string(), "delete link eth0");
    pod.delete_link("eth0").await.expect("next call succeeds");
}
