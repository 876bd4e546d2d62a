// SPDX-License-Identifier: Apache-2.0
//! Privileged tests of `weave-platform` against the real kernel.
//!
//! Every test makes its own network namespaces ([`TestNetns`]: a parked
//! thread that called `unshare(CLONE_NEWNET)`, named by its
//! `/proc/PID/task/TID/ns/net`) and works only inside them through `open_in`
//! and `LinuxNetlink::in_netns`; nothing touches the host's links, addresses,
//! routes or sysctls. A namespace dies with its thread, so nothing is left
//! behind even when a test panics or the process is killed, and nothing ever
//! appears in `ip netns list`. Without root (CAP_SYS_ADMIN + CAP_NET_ADMIN)
//! every test fails loudly; none is skipped.

use std::{
    io,
    net::IpAddr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::mpsc,
    thread::{self, JoinHandle},
    time::Duration,
};

use nix::{
    sched::{unshare, CloneFlags},
    unistd::gettid,
};
use rtnetlink::packet_route::link::{
    InfoBridgePort, InfoPortData, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use weave_platform::{
    interface_in, open_in, read_sysctl, write_sysctl, AsyncPacketSocket, AsyncTap, BridgeFdbState,
    BridgePortFlags, Error, FdbEntry, FdbTarget, LinuxNetlink, Netlink, PacketSocket, Route, Tap,
    VxlanSpec,
};

/// Upper bound for waiting on the kernel (frames, replies).
const WAIT: Duration = Duration::from_secs(10);

/// A fresh network namespace, alive while this guard is.
struct TestNetns {
    path: PathBuf,
    stop: Option<mpsc::Sender<()>>,
    holder: Option<JoinHandle<()>>,
}

impl TestNetns {
    fn new() -> TestNetns {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let holder = thread::Builder::new()
            .name("test-netns".into())
            .spawn(move || {
                let entered = unshare(CloneFlags::CLONE_NEWNET).map(|()| gettid());
                let ok = entered.is_ok();
                let _ = ready_tx.send(entered);
                if ok {
                    // Park until the guard drops the sender.
                    let _ = stop_rx.recv();
                }
            })
            .expect("spawn namespace holder thread");
        let tid = ready_rx
            .recv()
            .expect("namespace holder reports back")
            .unwrap_or_else(|errno| {
                panic!(
                    "privileged tests need root (CAP_SYS_ADMIN and CAP_NET_ADMIN): \
                     unshare(CLONE_NEWNET) failed: {errno}"
                )
            });
        let path = PathBuf::from(format!("/proc/{}/task/{tid}/ns/net", std::process::id()));
        TestNetns {
            path,
            stop: Some(stop_tx),
            holder: Some(holder),
        }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn netlink(&self) -> LinuxNetlink {
        LinuxNetlink::in_netns(&self.path).expect("netlink handle in test namespace")
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(holder) = self.holder.take() {
            let _ = holder.join();
        }
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// Reads a link's full netlink description inside `ns` with a plain
/// rtnetlink connection, to check what `LinuxNetlink` set.
async fn raw_link(ns: &TestNetns, name: &str) -> LinkMessage {
    use futures_util::TryStreamExt;
    let rt = tokio::runtime::Handle::current();
    let (conn, handle, _) = open_in(ns.path(), move || {
        let _entered = rt.enter();
        rtnetlink::new_connection()
    })
    .expect("raw netlink connection in test namespace");
    tokio::spawn(conn);
    handle
        .link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_next()
        .await
        .expect("get link")
        .expect("link exists")
}

fn master_of(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(m) => Some(*m),
        _ => None,
    })
}

fn hairpin_of(link: &LinkMessage) -> Option<bool> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::PortData(InfoPortData::BridgePort(opts)) => {
                opts.iter().find_map(|o| match o {
                    InfoBridgePort::HairpinMode(on) => Some(*on),
                    _ => None,
                })
            }
            _ => None,
        }),
        _ => None,
    })
}

#[tokio::test]
async fn ensure_bridge_is_idempotent_and_sets_mtu_and_up() {
    let ns = TestNetns::new();
    let nl = ns.netlink();

    let first = nl
        .ensure_bridge("wvbr0", 1400)
        .await
        .expect("create bridge");
    let again = nl
        .ensure_bridge("wvbr0", 1376)
        .await
        .expect("bridge exists");
    assert_eq!(first, again);
    assert_eq!(nl.link_index("wvbr0").await.expect("lookup"), Some(first));
    assert_eq!(nl.link_mtu("wvbr0").await.expect("lookup"), Some(1376));
    assert_eq!(nl.link_index("wvnone").await.expect("lookup"), None);
    assert_eq!(nl.link_mtu("wvnone").await.expect("lookup"), None);
    let link = raw_link(&ns, "wvbr0").await;
    assert!(link.header.flags.contains(LinkFlags::Up), "bridge is up");

    // A link of another kind under the bridge's name is not reused.
    nl.create_veth("wvveth0", "wvveth1", ns.path(), 1500)
        .await
        .expect("veth");
    let err = nl
        .ensure_bridge("wvveth0", 1500)
        .await
        .expect_err("veth is not a bridge");
    assert!(matches!(err, Error::LinkKindMismatch { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn veth_peer_is_created_in_the_other_namespace() {
    let host = TestNetns::new();
    let pod = TestNetns::new();
    let (host_nl, pod_nl) = (host.netlink(), pod.netlink());

    let idx = host_nl
        .create_veth("wvh0", "wvp0", pod.path(), 1400)
        .await
        .expect("create veth");
    assert_eq!(host_nl.link_index("wvh0").await.expect("lookup"), Some(idx));
    assert_eq!(
        host_nl.link_index("wvp0").await.expect("lookup"),
        None,
        "peer left the host"
    );
    assert!(
        pod_nl.link_index("wvp0").await.expect("lookup").is_some(),
        "peer in pod"
    );
    assert_eq!(pod_nl.link_mtu("wvp0").await.expect("lookup"), Some(1400));
    assert_eq!(host_nl.link_mtu("wvh0").await.expect("lookup"), Some(1400));

    let retried = host_nl
        .create_veth("wvh0", "wvp0", pod.path(), 1400)
        .await
        .expect("retried create finds the veth");
    assert_eq!(retried, idx);

    host_nl.delete_link("wvh0").await.expect("delete");
    host_nl
        .delete_link("wvh0")
        .await
        .expect("delete again is success");
    assert_eq!(host_nl.link_index("wvh0").await.expect("lookup"), None);
    assert_eq!(
        pod_nl.link_index("wvp0").await.expect("lookup"),
        None,
        "peer went too"
    );
}

#[tokio::test]
async fn interface_in_reads_mac_and_addresses_inside_the_namespace() {
    let host = TestNetns::new();
    let pod = TestNetns::new();
    let (host_nl, pod_nl) = (host.netlink(), pod.netlink());
    host_nl
        .create_veth("wvh1", "wvp1", pod.path(), 1400)
        .await
        .expect("create veth");
    let idx = pod_nl
        .link_index("wvp1")
        .await
        .expect("lookup")
        .expect("peer in pod");
    pod_nl
        .set_mac(idx, [0x0a, 0x58, 10, 32, 0, 9])
        .await
        .expect("set mac");
    pod_nl.set_up(idx).await.expect("up");
    pod_nl
        .add_addr(idx, ip("10.32.0.9"), 12)
        .await
        .expect("v4 address");
    pod_nl
        .add_addr(idx, ip("fd00::9"), 64)
        .await
        .expect("v6 address");

    let seen = interface_in(pod.path(), "wvp1")
        .expect("read inside")
        .expect("interface found");
    assert_eq!(seen.mac.as_deref(), Some("0a:58:0a:20:00:09"));
    assert_eq!(seen.addrs[0], (ip("10.32.0.9"), 12));
    assert!(seen.addrs.contains(&(ip("fd00::9"), 64)), "{seen:?}");
    assert_eq!(
        interface_in(pod.path(), "nope0").expect("read inside"),
        None,
        "an interface that is not there"
    );
    assert_eq!(
        interface_in(host.path(), "wvp1").expect("read inside"),
        None,
        "the peer is not in the host namespace"
    );
    assert!(interface_in(Path::new("/nonexistent/weave-ns"), "wvp1").is_err());
}

#[tokio::test]
async fn addresses_and_routes() {
    let ns = TestNetns::new();
    let nl = ns.netlink();
    let br = nl.ensure_bridge("wvbr0", 1500).await.expect("bridge");

    nl.add_addr(br, ip("10.99.0.1"), 24)
        .await
        .expect("add address");
    nl.add_addr(br, ip("10.99.0.1"), 24)
        .await
        .expect("add address again");
    nl.add_addr(br, ip("fd99::1"), 64)
        .await
        .expect("add v6 address");
    let addrs = nl.addrs(br).await.expect("list addresses");
    assert!(addrs.contains(&(ip("10.99.0.1"), 24)), "{addrs:?}");
    assert!(addrs.contains(&(ip("fd99::1"), 64)), "{addrs:?}");

    nl.add_route(ip("10.98.0.0"), 16, None, br)
        .await
        .expect("on-link route");
    nl.add_route(ip("10.98.0.0"), 16, None, br)
        .await
        .expect("route again");
    nl.add_route(ip("10.97.0.0"), 16, Some(ip("10.99.0.254")), br)
        .await
        .expect("route via gateway");
    nl.add_route(ip("fd98::"), 64, None, br)
        .await
        .expect("v6 route");

    let routes = nl.routes_v4().await.expect("list routes");
    for want in [
        Route {
            dst: ip("10.99.0.0"),
            prefix_len: 24,
            gateway: None,
            oif: Some(br),
        },
        Route {
            dst: ip("10.98.0.0"),
            prefix_len: 16,
            gateway: None,
            oif: Some(br),
        },
        Route {
            dst: ip("10.97.0.0"),
            prefix_len: 16,
            gateway: Some(ip("10.99.0.254")),
            oif: Some(br),
        },
    ] {
        assert!(routes.contains(&want), "{want:?} missing from {routes:?}");
    }
    assert!(routes.iter().all(|r| r.dst.is_ipv4()), "{routes:?}");

    let err = nl
        .add_route(ip("10.96.0.1"), 16, None, br)
        .await
        .expect_err("host bits");
    assert!(matches!(err, Error::InvalidPrefix { .. }), "{err}");

    nl.del_addr(br, ip("10.99.0.1"), 24)
        .await
        .expect("delete address");
    nl.del_addr(br, ip("10.99.0.1"), 24)
        .await
        .expect("delete a missing address");
    let addrs = nl.addrs(br).await.expect("list addresses");
    assert!(!addrs.contains(&(ip("10.99.0.1"), 24)), "{addrs:?}");
    assert!(addrs.contains(&(ip("fd99::1"), 64)), "{addrs:?}");
    let routes = nl.routes_v4().await.expect("list routes");
    assert!(
        !routes.iter().any(|r| r.dst == ip("10.99.0.0")),
        "the connected route goes with the address: {routes:?}"
    );
}

#[tokio::test]
async fn bridge_port_master_hairpin_and_mac() {
    let ns = TestNetns::new();
    let nl = ns.netlink();
    let br = nl.ensure_bridge("wvbr0", 1500).await.expect("bridge");
    let port = nl
        .create_veth("wvport0", "wvport1", ns.path(), 1500)
        .await
        .expect("veth");

    nl.set_master(port, br).await.expect("attach");
    nl.set_hairpin(port, true).await.expect("hairpin on");
    nl.set_up(port).await.expect("up");
    let link = raw_link(&ns, "wvport0").await;
    assert_eq!(master_of(&link), Some(br));
    assert_eq!(hairpin_of(&link), Some(true));
    assert!(link.header.flags.contains(LinkFlags::Up));

    nl.set_hairpin(port, false).await.expect("hairpin off");
    assert_eq!(hairpin_of(&raw_link(&ns, "wvport0").await), Some(false));

    nl.set_mtu(port, 1400).await.expect("mtu");
    assert_eq!(nl.link_mtu("wvport0").await.expect("lookup"), Some(1400));

    let mac = [0x02, 0x77, 0x76, 0x00, 0x00, 0x01];
    nl.set_mac(br, mac).await.expect("set mac");
    assert_eq!(nl.link_mac(br).await.expect("get mac"), Some(mac));
    assert_eq!(nl.link_mac(9999).await.expect("get mac"), None);

    nl.delete_link("wvbr0").await.expect("delete bridge");
    assert_eq!(master_of(&raw_link(&ns, "wvport0").await), None);
}

/// The fake promises the kernel's errnos for the mistakes callers can make;
/// this checks the kernel agrees.
#[tokio::test]
async fn kernel_errnos_match_the_fake() {
    let ns = TestNetns::new();
    let nl = ns.netlink();
    let br = nl.ensure_bridge("wvbr0", 1500).await.expect("bridge");
    let down = nl
        .create_veth("wvdown0", "wvdown1", ns.path(), 1500)
        .await
        .expect("veth");
    let lo = nl.link_index("lo").await.expect("lookup").expect("lo");
    nl.add_addr(br, ip("10.99.0.1"), 24).await.expect("address");

    let errno = |r: weave_platform::Result<()>| r.expect_err("kernel refuses").errno();
    assert_eq!(errno(nl.set_up(9999).await), Some(libc::ENODEV));
    assert_eq!(
        errno(nl.add_addr(9999, ip("10.1.0.1"), 24).await),
        Some(libc::ENODEV)
    );
    assert_eq!(errno(nl.set_mtu(br, 10).await), Some(libc::EINVAL));
    assert_eq!(
        errno(nl.add_route(ip("10.1.0.0"), 16, None, down).await),
        Some(libc::ENETDOWN)
    );
    assert_eq!(
        errno(
            nl.add_route(ip("10.1.0.0"), 16, Some(ip("172.31.0.1")), br)
                .await
        ),
        Some(libc::ENETUNREACH)
    );
    assert_eq!(errno(nl.set_master(down, 9999).await), Some(libc::EINVAL));
    assert_eq!(errno(nl.set_master(down, lo).await), Some(libc::EOPNOTSUPP));
    assert_eq!(
        errno(nl.set_hairpin(down, true).await),
        Some(libc::EOPNOTSUPP)
    );
    assert_eq!(
        errno(nl.set_mac(br, [0x01, 0, 0x5e, 0, 0, 1]).await),
        Some(libc::EADDRNOTAVAIL)
    );
    let err = nl
        .create_veth("wvother0", "wvdown1", ns.path(), 1500)
        .await
        .expect_err("peer name taken");
    assert_eq!(err.errno(), Some(libc::EEXIST));
}

/// An ARP request for `target` from `sender_mac`/`sender_ip`, broadcast.
fn arp_request(sender_mac: [u8; 6], sender_ip: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]); // destination: broadcast
    f.extend_from_slice(&sender_mac); // source
    f.extend_from_slice(&[0x08, 0x06]); // EtherType ARP
    f.extend_from_slice(&[0x00, 0x01]); // HTYPE Ethernet
    f.extend_from_slice(&[0x08, 0x00]); // PTYPE IPv4
    f.extend_from_slice(&[6, 4]); // HLEN, PLEN
    f.extend_from_slice(&[0x00, 0x01]); // OPER request
    f.extend_from_slice(&sender_mac); // SHA
    f.extend_from_slice(&sender_ip); // SPA
    f.extend_from_slice(&[0; 6]); // THA
    f.extend_from_slice(&target); // TPA
    f
}

/// Puts a TAP on a bridge that has 10.99.0.1, sends an ARP request for it
/// into the TAP and waits for the kernel's reply to come out of the TAP.
async fn tap_arp_roundtrip(vnet_hdr: bool) {
    // Frames through a vnet_hdr TAP carry a virtio_net_hdr first (10 bytes
    // by default); all-zero means "no offloads".
    let hdr_len = if vnet_hdr { 10 } else { 0 };
    let ns = TestNetns::new();
    let nl = ns.netlink();
    let br = nl.ensure_bridge("wvbr0", 1500).await.expect("bridge");
    nl.add_addr(br, ip("10.99.0.1"), 24).await.expect("address");

    let tap = open_in(ns.path(), move || {
        Tap::create("wvtap0", vnet_hdr).map_err(io::Error::other)
    })
    .expect("create tap in test namespace");
    assert_eq!(tap.name(), "wvtap0");
    let tap_idx = nl
        .link_index("wvtap0")
        .await
        .expect("lookup")
        .expect("tap exists in its namespace");
    nl.set_master(tap_idx, br).await.expect("attach tap");
    nl.set_up(tap_idx).await.expect("tap up");
    // Read only now: a bridge without an explicit MAC takes its lowest port's.
    let bridge_mac = nl
        .link_mac(br)
        .await
        .expect("mac")
        .expect("bridge has a mac");

    let tap = AsyncTap::new(tap).expect("register tap");
    assert_eq!(tap.name(), "wvtap0");

    let me = [0x02, 0x77, 0x76, 0x00, 0x00, 0x02];
    let mut frame = vec![0u8; hdr_len];
    frame.extend(arp_request(me, [10, 99, 0, 2], [10, 99, 0, 1]));
    let sent = tap.send(&frame).await.expect("write frame");
    assert_eq!(sent, frame.len());

    let reply = tokio::time::timeout(WAIT, async {
        let mut buf = vec![0u8; 65536];
        loop {
            let n = tap.recv(&mut buf).await.expect("read frame");
            let f = &buf[hdr_len.min(n)..n];
            // An ARP reply (EtherType 0x0806, OPER 2) addressed to us; the
            // bridge also sends IPv6 noise (MLD, router solicitations).
            if f.len() >= 42
                && f[12..14] == [0x08, 0x06]
                && f[20..22] == [0x00, 0x02]
                && f[0..6] == me
            {
                return f.to_vec();
            }
        }
    })
    .await
    .expect("an ARP reply comes out of the tap in time");
    assert_eq!(reply[6..12], bridge_mac, "reply comes from the bridge");
    assert_eq!(
        reply[22..28],
        bridge_mac,
        "sender hardware address is the bridge's"
    );
    assert_eq!(reply[28..32], [10, 99, 0, 1], "sender IP is the bridge's");
    assert_eq!(reply[38..42], [10, 99, 0, 2], "target IP is ours");

    drop(tap);
    assert_eq!(
        nl.link_index("wvtap0").await.expect("lookup"),
        None,
        "a non-persistent tap disappears with its descriptor"
    );
}

#[tokio::test]
async fn tap_exchanges_frames_with_the_bridge() {
    tap_arp_roundtrip(false).await;
}

#[tokio::test]
async fn tap_with_vnet_hdr_prefixes_frames() {
    tap_arp_roundtrip(true).await;
}

#[test]
fn sysctl_writes_stay_in_their_namespace() {
    let ns = TestNetns::new();
    let key = "net.ipv4.ip_forward";
    let host_before = read_sysctl(key).expect("read host value");
    let flipped = if host_before == "1" { "0" } else { "1" };

    let inside = open_in(ns.path(), move || {
        write_sysctl(key, flipped).map_err(io::Error::other)?;
        read_sysctl(key).map_err(io::Error::other)
    })
    .expect("write and read sysctl in test namespace");
    assert_eq!(inside, flipped);
    assert_eq!(
        read_sysctl(key).expect("read host value"),
        host_before,
        "host untouched"
    );

    let err = open_in(ns.path(), || {
        write_sysctl("net.weave.no_such_key", "1").map_err(io::Error::other)
    })
    .expect_err("no such sysctl");
    assert!(
        err.to_string().contains("run in network namespace"),
        "{err}"
    );
}

#[test]
fn open_in_runs_in_the_target_namespace() {
    let ns = TestNetns::new();
    // The namespace's inode seen from inside equals the file we named.
    let target = std::fs::metadata(ns.path()).expect("stat netns").ino();
    let seen = open_in(ns.path(), || {
        Ok(std::fs::metadata("/proc/thread-self/ns/net")?.ino())
    })
    .expect("run in namespace");
    let host = std::fs::metadata("/proc/thread-self/ns/net")
        .expect("stat own netns")
        .ino();
    assert_eq!(seen, target);
    assert_ne!(seen, host, "the calling thread did not move");
}

fn port_flag(link: &LinkMessage, pick: fn(&InfoBridgePort) -> Option<bool>) -> Option<bool> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::PortData(InfoPortData::BridgePort(opts)) => opts.iter().find_map(pick),
            _ => None,
        }),
        _ => None,
    })
}

/// The VXLAN device, bridge-port flags and forwarding entries against the
/// kernel: what `fdb_entries` lists is what was added, replaced, deleted.
#[tokio::test]
async fn vxlan_device_port_flags_and_fdb_entries() {
    let ns = TestNetns::new();
    let nl = ns.netlink();
    let br = nl.ensure_bridge("wvbr0", 1500).await.expect("bridge");
    let spec = VxlanSpec {
        vni: 0x77_6576,
        port: 6784,
        mtu: 1436,
    };
    let vx = nl.ensure_vxlan("wvvx0", spec).await.expect("create vxlan");
    assert!(!vx.adopted);
    let again = nl
        .ensure_vxlan("wvvx0", VxlanSpec { mtu: 1400, ..spec })
        .await
        .expect("adopt vxlan");
    assert_eq!(
        (again.index, again.adopted),
        (vx.index, true),
        "same device"
    );
    assert_eq!(nl.link_mtu("wvvx0").await.expect("mtu"), Some(1400));
    nl.set_master(vx.index, br).await.expect("attach");
    nl.set_bridge_port(
        vx.index,
        BridgePortFlags {
            isolated: Some(true),
            learning: Some(false),
        },
    )
    .await
    .expect("port flags");
    let link = raw_link(&ns, "wvvx0").await;
    assert_eq!(
        port_flag(&link, |o| match o {
            InfoBridgePort::Isolated(v) => Some(*v),
            _ => None,
        }),
        Some(true)
    );
    assert_eq!(
        port_flag(&link, |o| match o {
            InfoBridgePort::Learning(v) => Some(*v),
            _ => None,
        }),
        Some(false)
    );

    let remote = |mac: [u8; 6], dst: &str, port: Option<u16>| FdbEntry {
        mac,
        ifindex: vx.index,
        target: FdbTarget::Remote { dst: ip(dst), port },
    };
    let pod = [0x0a, 0, 0, 0, 2, 1];
    let pin = FdbEntry {
        mac: pod,
        ifindex: vx.index,
        target: FdbTarget::Bridge {
            bridge: br,
            state: BridgeFdbState::Sticky,
        },
    };
    let wanted = [
        remote([0; 6], "10.98.0.2", None),
        remote([0; 6], "10.98.0.3", Some(7000)),
        remote(pod, "10.98.0.2", None),
        pin,
    ];
    for e in &wanted {
        nl.fdb_add(e).await.expect("add entry");
        nl.fdb_add(e).await.expect("adding twice is success");
    }
    let ours = |all: Vec<FdbEntry>| -> std::collections::BTreeSet<FdbEntry> {
        // the bridge's own (local) entry for the port's address is the kernel's
        all.into_iter()
            .filter(|e| {
                e.ifindex == vx.index
                    && !matches!(
                        e.target,
                        FdbTarget::Bridge {
                            state: BridgeFdbState::Local,
                            ..
                        }
                    )
            })
            .collect()
    };
    assert_eq!(
        ours(nl.fdb_entries().await.expect("dump")),
        wanted.iter().copied().collect()
    );
    // a new destination replaces a MAC's; the flood list adds up
    let moved = remote(pod, "10.98.0.3", Some(7000));
    nl.fdb_add(&moved).await.expect("replace");
    let now = ours(nl.fdb_entries().await.expect("dump"));
    assert!(now.contains(&moved) && !now.contains(&wanted[2]), "{now:?}");
    for e in [&wanted[0], &moved, &pin] {
        nl.fdb_del(e).await.expect("delete");
        nl.fdb_del(e)
            .await
            .expect("deleting what is gone is success");
    }
    assert_eq!(
        ours(nl.fdb_entries().await.expect("dump")),
        [wanted[1]].into_iter().collect()
    );
    let learned = FdbEntry {
        target: FdbTarget::Bridge {
            bridge: br,
            state: BridgeFdbState::Learned,
        },
        ..pin
    };
    assert!(matches!(
        nl.fdb_add(&learned).await,
        Err(Error::InvalidFdb { .. })
    ));

    // other settings replace the device; another kind of link is refused
    let replaced = nl
        .ensure_vxlan("wvvx0", VxlanSpec { vni: 9, ..spec })
        .await
        .expect("replace vxlan");
    assert!(!replaced.adopted);
    nl.create_veth("wvveth0", "wvveth1", ns.path(), 1500)
        .await
        .expect("veth");
    assert!(matches!(
        nl.ensure_vxlan("wvveth0", spec).await,
        Err(Error::LinkKindMismatch { .. })
    ));
}

/// Two namespaces joined by a veth, each with a bridge whose MAC is its
/// name and a VXLAN port: a frame sent into one VXLAN device, addressed to
/// the other bridge's MAC, reaches a packet socket on the other bridge; a
/// path whose MTU is too small for a full frame loses the full one only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_cross_a_real_vxlan_path_to_the_far_bridge() {
    const ETHERTYPE: u16 = 0x88b5;
    let (a, b) = (TestNetns::new(), TestNetns::new());
    let (na, nb) = (a.netlink(), b.netlink());
    na.create_veth("wvul0", "wvul0", b.path(), 1500)
        .await
        .expect("underlay veth");
    let mac = |i: u8| [0x02, 0x77, 0x76, 0, 0, i];
    let mut vx = Vec::new();
    for (i, nl) in [&na, &nb].into_iter().enumerate() {
        let i = u8::try_from(i + 1).expect("two");
        let ul = nl.link_index("wvul0").await.expect("lookup").expect("ul");
        nl.add_addr(ul, ip(&format!("10.98.0.{i}")), 24)
            .await
            .expect("address");
        nl.set_up(ul).await.expect("up");
        let br = nl.ensure_bridge("wvbr0", 1436).await.expect("bridge");
        nl.set_mac(br, mac(i)).await.expect("bridge mac");
        let spec = VxlanSpec {
            vni: 0x77_6576,
            port: 6784,
            mtu: 1436,
        };
        let v = nl.ensure_vxlan("wvvx0", spec).await.expect("vxlan").index;
        nl.set_master(v, br).await.expect("attach");
        let other = 3 - i;
        nl.fdb_add(&FdbEntry {
            mac: mac(other),
            ifindex: v,
            target: FdbTarget::Remote {
                dst: ip(&format!("10.98.0.{other}")),
                port: None,
            },
        })
        .await
        .expect("remote entry");
        vx.push((v, br));
    }
    let (vx_a, _) = vx[0];
    let (_, br_b) = vx[1];
    let rx = open_in(b.path(), move || {
        PacketSocket::bind(br_b, ETHERTYPE).map_err(io::Error::other)
    })
    .expect("socket on b's bridge");
    let rx = AsyncPacketSocket::new(rx).expect("register");
    let tx = open_in(a.path(), move || {
        PacketSocket::sender(vx_a).map_err(io::Error::other)
    })
    .expect("socket on a's vxlan");
    let frame = |len: usize| {
        let mut f = mac(2).to_vec();
        f.extend_from_slice(&mac(1));
        f.extend_from_slice(&ETHERTYPE.to_be_bytes());
        f.resize(len, 0x5a);
        f
    };
    let rx = &rx;
    let receive = |want: usize| async move {
        let mut buf = vec![0u8; 65536];
        loop {
            let n = rx.recv(&mut buf).await.expect("recv");
            if n == want {
                return;
            }
        }
    };
    // A full overlay frame: MTU + Ethernet header, 1500 bytes outside.
    tx.send_to(vx_a, &frame(1450)).expect("send full frame");
    tokio::time::timeout(WAIT, receive(1450))
        .await
        .expect("the full frame crosses");
    // The path to b shrinks to 1400: the outer header says "don't
    // fragment", so full frames are lost and small ones still cross. (Not
    // `mtu lock`: on a locked route the kernel clears DF on tunnel
    // packets, `iptunnel_xmit`, and fragments them.)
    let ul = "wvul0";
    open_in(a.path(), move || {
        let out = std::process::Command::new("ip")
            .args(["route", "replace", "10.98.0.2/32", "dev", ul, "mtu", "1400"])
            .output()?;
        if out.status.success() {
            Ok(())
        } else {
            Err(io::Error::other(
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ))
        }
    })
    .expect("route mtu inside the test namespace");
    let _ = tx.send_to(vx_a, &frame(1450));
    tx.send_to(vx_a, &frame(60)).expect("send small frame");
    let first = tokio::time::timeout(WAIT, async {
        let mut buf = vec![0u8; 65536];
        rx.recv(&mut buf).await.expect("recv")
    })
    .await
    .expect("a frame arrives");
    assert_eq!(first, 60, "only the small frame crossed");
}

/// A veth end is operationally up only once its peer is up too and the
/// kernel's link watch has run; a missing link never comes up.
#[tokio::test]
async fn wait_oper_up_follows_the_link_watch() {
    let ns = TestNetns::new();
    let nl = ns.netlink();
    let a = nl
        .create_veth("wvop0", "wvop1", ns.path(), 1500)
        .await
        .expect("veth");
    let b = nl.link_index("wvop1").await.expect("lookup").expect("peer");
    nl.set_up(a).await.expect("up");
    let short = Duration::from_millis(300);
    assert!(
        !nl.wait_oper_up(a, short).await.expect("wait"),
        "no carrier while the peer is down"
    );
    nl.set_up(b).await.expect("up");
    assert!(nl.wait_oper_up(a, WAIT).await.expect("wait"));
    assert!(nl.wait_oper_up(b, WAIT).await.expect("wait"));
    assert!(!nl
        .wait_oper_up(b + 1000, short)
        .await
        .expect("no such link"));
}

/// A pod's announcement leaves its interface as a gratuitous ARP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcements_leave_the_pod_interface() {
    let ns = TestNetns::new();
    let nl = ns.netlink();
    let pod = nl
        .create_veth("wvpod0", "wvpod1", ns.path(), 1500)
        .await
        .expect("veth");
    let peer = nl
        .link_index("wvpod1")
        .await
        .expect("lookup")
        .expect("peer");
    nl.set_up(pod).await.expect("up");
    nl.set_up(peer).await.expect("up");
    let rx = open_in(ns.path(), move || {
        PacketSocket::bind(peer, 0x0806).map_err(io::Error::other)
    })
    .expect("arp socket");
    let rx = AsyncPacketSocket::new(rx).expect("register");
    let mac = nl.link_mac(pod).await.expect("mac").expect("mac");
    nl.announce(pod, mac, &[ip("10.32.0.9")])
        .await
        .expect("announce");
    let got = tokio::time::timeout(WAIT, async {
        let mut buf = vec![0u8; 2048];
        let n = rx.recv(&mut buf).await.expect("recv");
        buf.truncate(n);
        buf
    })
    .await
    .expect("the announcement arrives");
    assert_eq!(&got[..6], &[0xff; 6]);
    assert_eq!(&got[22..28], &mac);
    assert_eq!(&got[28..32], &[10, 32, 0, 9]);
    assert_eq!(
        &got[38..42],
        &[10, 32, 0, 9],
        "gratuitous: target is itself"
    );
}

#[test]
fn nflog_socket_receives_logged_packets() {
    use weave_platform::nflog::{parse, NflogSocket};
    let ns = TestNetns::new();
    let group = 7;
    let socket = open_in(ns.path(), move || NflogSocket::bind(group, 128))
        .expect("bind nflog group in the test namespace");
    socket.set_read_timeout(WAIT).expect("receive timeout");
    // A second reader of the same group is refused.
    let second = open_in(ns.path(), move || NflogSocket::bind(group, 128));
    assert!(second.is_err(), "a group has one reader");
    let netns = ns.path().display().to_string();
    let rules = "add table inet t\nadd chain inet t out { type filter hook output priority 0; }\nadd rule inet t out udp dport 9999 log prefix \"weave-test: \" group 7\n";
    let lo = std::process::Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .args(["ip", "link", "set", "lo", "up"])
        .status()
        .expect("run nsenter ip");
    assert!(lo.success(), "bring lo up");
    let mut nft = std::process::Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .args(["nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("run nsenter nft");
    {
        use std::io::Write as _;
        let mut stdin = nft.stdin.take().expect("stdin");
        stdin.write_all(rules.as_bytes()).expect("feed nft");
    }
    assert!(
        nft.wait().expect("wait for nft").success(),
        "nft refused the rules"
    );
    open_in(ns.path(), || {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
        udp.send_to(b"hello", "127.0.0.1:9999")?;
        Ok(())
    })
    .expect("send a logged datagram");
    let mut buf = vec![0u8; 65536];
    let n = socket.recv(&mut buf).expect("receive the log entry");
    let entries = parse(&buf[..n]);
    let entry = entries
        .iter()
        .find_map(|e| e.as_ref().ok())
        .unwrap_or_else(|| panic!("no entry in {entries:?}"));
    assert_eq!(entry.group, group);
    assert_eq!(entry.prefix, "weave-test: ");
    let packet = entry.packet.expect("packet headers");
    assert_eq!((packet.protocol, packet.dport), (17, 9999));
    assert_eq!(packet.dst, std::net::Ipv4Addr::LOCALHOST);
}
