// SPDX-License-Identifier: Apache-2.0
//! The sleeve across three hosts on one segment: TCP and UDP transfers,
//! ARP, broadcast, multicast, isolation through subnets, a 10 MB transfer
//! with full-size DF packets (also over an underlay path narrower than its
//! links), agent restarts, and garbage on the UDP port.
//! The agents run with `--no-fastdp`, so the sleeve carries everything
//! (`fastdp_3.rs` covers the kernel path and the mix).

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use weave_e2e::weave::{
    attach_pod, in_pod, peer_addr, pings, report, start_weaver, tcp_transfer, wait_for_mesh, WEAVER,
};
use weave_e2e::{wait_until, Host, TestBed, Topology};

const WAIT: Duration = Duration::from_secs(20);

/// The sleeve only.
const SLEEVE: &[&str] = &["--no-fastdp"];

/// Three hosts with a full mesh; pods `p1`, `p2` on each host at
/// 10.2.1.<host*10+pod>/24.
fn bed_with_pods() -> Result<(TestBed, Vec<(String, String)>)> {
    let bed = TestBed::new(Topology::Segment(3))?;
    start_weaver(bed.host(1), &[], SLEEVE)?;
    for i in 2..=3 {
        start_weaver(bed.host(i), &[peer_addr(bed.host(1))], SLEEVE)?;
    }
    for h in bed.hosts() {
        wait_for_mesh(h, &["h1", "h2", "h3"], 2, WAIT)?;
    }
    let mut pods = Vec::new();
    for h in 1..=3 {
        for p in 1..=2 {
            let ip = format!("10.2.1.{}", h * 10 + p);
            pods.push((
                attach_pod(&bed, h, &format!("p{p}"), &format!("{ip}/24"))?,
                ip,
            ));
        }
    }
    Ok((bed, pods))
}

fn wait_ping(ns: &str, ip: &str) -> Result<()> {
    wait_until(WAIT, &format!("{ns} to ping {ip}"), || {
        Ok(pings(ns, ip).then_some(()))
    })
}

/// A python3 one-liner runner inside a pod.
fn py(ns: &str, code: &str) -> Result<String> {
    in_pod(ns, "python3", &["-c", code])
}

#[test]
fn transfers_arp_broadcast_and_multicast() -> Result<()> {
    let (bed, pods) = bed_with_pods()?;
    let (a, a_ip) = &pods[0]; // h1
    let (c, c_ip) = &pods[4]; // h3
    wait_ping(a, c_ip)?;
    // ARP resolved the remote pod's MAC to the one it really has
    let neigh = in_pod(a, "ip", &["neigh", "show", c_ip])?;
    let c_mac = in_pod(c, "cat", &["/sys/class/net/ethwe0/address"])?;
    ensure!(
        neigh.contains(c_mac.trim()),
        "ARP entry {neigh:?} lacks {c_mac:?}"
    );

    // TCP: 1 MB from h3 to h1 and its checksum
    let server = format!(
        "import socket,hashlib\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('{a_ip}',5001));s.listen(1);s.settimeout(20)\nc,_=s.accept();h=hashlib.sha256();n=0\nwhile True:\n  d=c.recv(65536)\n  if not d: break\n  h.update(d);n+=len(d)\nprint(n,h.hexdigest())"
    );
    let a_ns = a.clone();
    let srv = std::thread::spawn(move || py(&a_ns, &server));
    let client = format!(
        "import socket,time,hashlib\nd=bytes(range(256))*4096\nfor i in range(100):\n  try:\n    s=socket.create_connection(('{a_ip}',5001),timeout=2);break\n  except OSError: time.sleep(0.05)\ns.sendall(d);s.close();print(len(d),hashlib.sha256(d).hexdigest())"
    );
    let sent = py(c, &client)?;
    let got = srv.join().expect("server thread")?;
    ensure!(
        sent.trim() == got.trim(),
        "TCP payload differs: sent {sent} got {got}"
    );

    // UDP: datagrams from h1 to h3 arrive intact
    let udp_server = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(('{c_ip}',5002));s.settimeout(10)\nn=0\nwhile n<50:\n  d,_=s.recvfrom(2000)\n  if d==b'x'*1000: n+=1\nprint(n)"
    );
    let c_ns = c.clone();
    let usrv = std::thread::spawn(move || py(&c_ns, &udp_server));
    let udp_client = format!(
        "import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor i in range(400):\n  s.sendto(b'x'*1000,('{c_ip}',5002));time.sleep(0.005)"
    );
    py(a, &udp_client)?;
    ensure!(usrv.join().expect("udp thread")?.trim() == "50");

    // broadcast: a ping to the subnet broadcast is answered by every other pod
    for (ns, _) in &pods {
        in_pod(
            ns,
            "sysctl",
            &["-qw", "net.ipv4.icmp_echo_ignore_broadcasts=0"],
        )?;
    }
    let answers = wait_until(WAIT, "every pod to answer a broadcast ping", || {
        let out = in_pod(a, "ping", &["-b", "-c", "2", "-W", "1", "10.2.1.255"])
            .unwrap_or_else(|e| e.to_string());
        let from: std::collections::BTreeSet<String> = pods
            .iter()
            .filter(|(_, ip)| ip != a_ip && out.contains(&format!("from {ip}:")))
            .map(|(_, ip)| ip.clone())
            .collect();
        Ok((from.len() == pods.len() - 1).then_some(from))
    })?;
    ensure!(answers.len() == 5);

    // multicast: every receiver gets each datagram exactly once
    let recv = "import socket,struct\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('',5003))\ns.setsockopt(socket.IPPROTO_IP,socket.IP_ADD_MEMBERSHIP,struct.pack('4s4s',socket.inet_aton('239.1.2.3'),socket.inet_aton('0.0.0.0')));s.settimeout(3)\nseen=[]\ntry:\n  while True:\n    d,_=s.recvfrom(100);seen.append(d)\nexcept socket.timeout: pass\nprint(len(seen),len(set(seen)))";
    let receivers: Vec<_> = pods[1..]
        .iter()
        .map(|(ns, _)| {
            let ns = ns.clone();
            std::thread::spawn(move || py(&ns, recv))
        })
        .collect();
    let send = "import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.setsockopt(socket.IPPROTO_IP,socket.IP_MULTICAST_TTL,2)\ntime.sleep(1)\nfor i in range(20):\n  s.sendto(b'm%d'%i,('239.1.2.3',5003));time.sleep(0.02)";
    py(a, send)?;
    for r in receivers {
        let out = r.join().expect("receiver thread")?;
        ensure!(
            out.trim() == "20 20",
            "multicast receiver saw {out:?}, want 20 distinct datagrams, no duplicates"
        );
    }
    drop(bed);
    Ok(())
}

#[test]
fn big_df_transfer_and_subnet_isolation() -> Result<()> {
    let (bed, pods) = bed_with_pods()?;
    let (a, a_ip) = &pods[0];
    let (b, _) = &pods[2]; // h2
    wait_ping(b, a_ip)?;
    // 10 MB with full-size segments (Linux TCP sets DF on every segment)
    tcp_transfer(a, a_ip, b, 10_000_000, WAIT)?;
    // the stream crossed as TCP super-frames, not frame by frame
    let rx = report(bed.host(1))?.sleeve.context("sleeve report")?;
    let tx = report(bed.host(2))?.sleeve.context("sleeve report")?;
    ensure!(
        rx.offload && tx.offload,
        "TAP offloads off: {rx:?} / {tx:?}"
    );
    ensure!(
        tx.superframes_out > 0 && rx.superframes_in > 0,
        "no super-frames crossed: sent {}, received {}",
        tx.superframes_out,
        rx.superframes_in
    );
    // the largest packet with DF that fits the overlay MTU crosses, one byte more is refused
    let mtu = report(bed.host(1))?.sleeve.context("sleeve report")?.mtu;
    let payload = (mtu - 28).to_string();
    in_pod(
        b,
        "ping",
        &["-c", "1", "-W", "2", "-M", "do", "-s", &payload, a_ip],
    )?;
    ensure!(in_pod(
        b,
        "ping",
        &[
            "-c",
            "1",
            "-W",
            "2",
            "-M",
            "do",
            "-s",
            &(mtu - 27).to_string(),
            a_ip
        ]
    )
    .is_err());

    // a pod whose link MTU is larger than the overlay's gets told, by ICMP
    // "fragmentation needed", instead of losing its big DF packets
    let host_if = bed
        .host(2)
        .run("ip", &["-o", "link", "show", "master", "weave"])?
        .lines()
        .find_map(|l| {
            l.split(": ")
                .nth(1)
                .filter(|n| n.starts_with("vethwepl"))
                .map(|n| n.split('@').next().unwrap_or(n).to_string())
        })
        .context("pod port on h2")?;
    bed.host(2)
        .run("ip", &["link", "set", &host_if, "mtu", "9000"])?;
    in_pod(b, "ip", &["link", "set", "ethwe0", "mtu", "9000"])?;
    let out = in_pod(
        b,
        "ping",
        &["-c", "2", "-W", "1", "-M", "do", "-s", "3000", a_ip],
    )
    .unwrap_or_else(|e| e.to_string());
    ensure!(
        out.contains(&format!("mtu = {mtu}")) || out.contains(&format!("mtu={mtu}")),
        "no frag-needed seen: {out}"
    );
    let drops = report(bed.host(2))?.sleeve.context("sleeve report")?.drops;
    ensure!(
        drops.get("oversized").copied().unwrap_or(0) >= 1,
        "{drops:?}"
    );

    // isolation through subnets: 10.2.2.0/24 pods reach each other, not 10.2.1.0/24
    let x = attach_pod(&bed, 1, "x", "10.2.2.1/24")?;
    let y = attach_pod(&bed, 3, "y", "10.2.2.3/24")?;
    wait_ping(&x, "10.2.2.3")?;
    wait_ping(&y, "10.2.2.1")?;
    for (_, ip) in &pods {
        ensure!(!pings(&x, ip), "10.2.2.1 reached {ip} across subnets");
    }
    Ok(())
}

/// Sends the bytes of `printf` as one UDP datagram from `from` to `ip:6783`.
/// The underlay path between two hosts carries 1400 bytes though their
/// links say 1500 (a route's unlocked MTU, as a router on the way would
/// have taught the kernel): the sleeve learns the narrower path when the
/// kernel refuses its datagrams, tells the pods' TCP to shrink, and a
/// 10 MB transfer with DF crosses (before, every super-frame was dropped
/// as unsendable and the transfer stalled after about 1.4 MB).
#[test]
fn a_narrow_underlay_path_is_learnt_and_no_black_hole() -> Result<()> {
    let bed = TestBed::new(Topology::Segment(2))?;
    let (h1, h2) = (bed.host(1), bed.host(2));
    for (h, other) in [(h1, h2), (h2, h1)] {
        let dst = format!("{}/32", other.addr());
        h.run(
            "ip",
            &["route", "replace", &dst, "dev", "ul0", "mtu", "1400"],
        )?;
    }
    start_weaver(h1, &[], SLEEVE)?;
    start_weaver(h2, &[peer_addr(h1)], SLEEVE)?;
    for h in [h1, h2] {
        wait_for_mesh(h, &["h1", "h2"], 1, WAIT)?;
    }
    let a = attach_pod(&bed, 1, "a", "10.2.1.1/24")?;
    let b = attach_pod(&bed, 2, "b", "10.2.1.2/24")?;
    wait_ping(&b, "10.2.1.1")?;
    tcp_transfer(&a, "10.2.1.1", &b, 10_000_000, Duration::from_secs(60))?;
    // b's TCP was told the narrower path: its cached path MTU to a is
    // 1400 minus the sleeve's 64 bytes
    let route = in_pod(&b, "ip", &["route", "get", "10.2.1.1"])?;
    ensure!(route.contains("mtu 1336"), "b's route to a: {route}");
    ensure!(
        h2.log(WEAVER).contains("narrower than its devices"),
        "the agent says what it learnt"
    );
    // and reports it as the MTU of its connection to h1
    let h1_name = report(h1)?.peer.name;
    let series = format!("weave_connection_mtu{{peer=\"{h1_name}\"}} 1336\n");
    let page = metrics(h2)?;
    ensure!(page.contains(&series), "no {series:?} in {page}");
    Ok(())
}

/// `host`'s agent's metrics page, checked by the Prometheus parser.
fn metrics(host: &Host) -> Result<String> {
    let page = weave_e2e::metrics::fetch(host.netns(), "127.0.0.1:6782".parse()?)?;
    weave_e2e::metrics::check(&page)?;
    Ok(page)
}

/// The value of the series `series` (name and labels as rendered) on a
/// metrics page; 0 when it is absent.
fn sample(page: &str, series: &str) -> u64 {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

fn send_udp(from: &Host, ip: &str, printf: &str) -> Result<()> {
    from.run(
        "bash",
        &["-c", &format!("printf '{printf}' > /dev/udp/{ip}/6783")],
    )?;
    Ok(())
}

#[test]
fn restarts_and_garbage_do_not_stop_traffic() -> Result<()> {
    let (bed, pods) = bed_with_pods()?;
    let (a1, _) = &pods[0];
    let (_, a2_ip) = &pods[1];
    let (_, b1_ip) = &pods[2];
    wait_ping(a1, b1_ip)?;

    // garbage, a bad version, a truncated frame and a forged sender
    let h1_ip = bed.host(1).addr().to_string();
    send_udp(bed.host(2), &h1_ip, "hello there")?;
    send_udp(
        bed.host(2),
        &h1_ip,
        "\\x09\\x01\\x02\\x00\\x00\\x00\\x00\\x01",
    )?;
    send_udp(
        bed.host(2),
        &h1_ip,
        "\\x01\\x01\\x02\\x00\\x00\\x00\\x00\\x02\\x02\\x00",
    )?;
    send_udp(bed.host(2), &h1_ip, "\\x01\\x01\\x06\\x06\\x06\\x06\\x06\\x06\\x06\\x06\\x06\\x06\\x06\\x06\\x06\\x06\\x06\\x06\\x06\\x06\\x00\\x0e\\xff\\xff\\xff\\xff\\xff\\xff\\x00\\x00\\x00\\x00\\x00\\x00\\x08\\x00")?;
    let drops = wait_until(WAIT, "garbage to be counted", || {
        let d = report(bed.host(1))?.sleeve.context("sleeve report")?.drops;
        let total = d.get("malformed").copied().unwrap_or(0)
            + d.get("unknown_sender").copied().unwrap_or(0);
        Ok((total >= 3).then_some(d))
    })?;
    ensure!(
        drops.get("unknown_sender").copied().unwrap_or(0) >= 1,
        "{drops:?}"
    );
    // the same counters on the Prometheus endpoint
    let metrics = metrics(bed.host(1))?;
    ensure!(
        metrics.contains("weave_sleeve_drops_total{reason=\"unknown_sender\"}"),
        "{metrics}"
    );
    ensure!(
        metrics.contains("weave_connections{state=\"established\"} 2"),
        "{metrics}"
    );
    // ... and per peer: every connection's MTU (the overlay's, on these full
    // paths), and the garbage put down to h2, which sent it from its own
    // address, none to h3
    let r1 = report(bed.host(1))?;
    let overlay = r1.sleeve.as_ref().context("sleeve report")?.mtu;
    let peer = |i: usize| -> Result<String> { Ok(report(bed.host(i))?.peer.name) };
    let (h2, h3) = (peer(2)?, peer(3)?);
    for p in [&h2, &h3] {
        let series = format!("weave_connection_mtu{{peer=\"{p}\"}} {overlay}\n");
        ensure!(metrics.contains(&series), "no {series:?} in {metrics}");
    }
    let from_h2 = sample(
        &metrics,
        &format!("weave_sleeve_peer_drops_total{{peer=\"{h2}\",reason=\"malformed\"}}"),
    );
    ensure!(from_h2 >= 1, "no malformed drop put down to h2: {metrics}");
    ensure!(
        from_h2 <= sample(&metrics, "weave_sleeve_drops_total{reason=\"malformed\"}"),
        "a part larger than the whole: {metrics}"
    );
    ensure!(
        !metrics.contains(&format!("weave_sleeve_peer_drops_total{{peer=\"{h3}\"")),
        "h3 sent no garbage: {metrics}"
    );
    let c2 = r1
        .connections
        .iter()
        .find(|c| c.peer.as_deref() == Some(h2.as_str()))
        .context("h1's connection to h2")?;
    ensure!(c2.drops.get("malformed") == Some(&from_h2), "{c2:?}");
    wait_ping(a1, b1_ip)?;

    // kill -9 of h1's agent: pods on h1 keep talking to each other
    bed.host(1).kill(WEAVER)?;
    for _ in 0..5 {
        ensure!(
            pings(a1, a2_ip),
            "same-host traffic stopped while the agent is down"
        );
    }
    start_weaver(bed.host(1), &[], SLEEVE)?;
    wait_ping(a1, b1_ip)?;
    let h1: &Host = bed.host(1);
    wait_for_mesh(h1, &["h1", "h2", "h3"], 2, WAIT)?;
    Ok(())
}
