// SPDX-License-Identifier: Apache-2.0
//! Encryption with a mesh password: pods talk across hosts and through a
//! relay; a capture on the underlay never shows their bytes (and does
//! without a password, so the check can fail); peers with a wrong password
//! or none never join; replayed and bit-flipped datagrams are dropped and
//! counted; a password rotation A → A+B → B never partitions the mesh.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use weave_api::Report;
use weave_e2e::weave::{
    attach_pod, in_pod, modes, peer_addr, peer_nicknames, pings, report, start_weaver,
    wait_for_mesh, weave, WEAVER,
};
use weave_e2e::{wait_until, Host, TestBed, Topology};

const WAIT: Duration = Duration::from_secs(20);
/// Sent between pods; must never appear on the underlay when encrypted.
const MARKER: &str = "WEAVE-MARKER-7f3a9c-DO-NOT-LEAK";
/// Process name of the capture.
const TCPDUMP: &str = "tcpdump";

/// Writes `text` as the password file of `host` and returns the flags that
/// use it.
fn password_flags(host: &Host, text: &str) -> Result<Vec<String>> {
    let path = host.dir().join("password");
    std::fs::write(&path, text).context("write password file")?;
    Ok(vec![
        "--password-file".to_string(),
        path.display().to_string(),
    ])
}

/// Starts weaver on `host` with `password` (none if `None`).
fn start(host: &Host, peers: &[String], password: Option<&str>) -> Result<()> {
    let flags = match password {
        Some(p) => password_flags(host, p)?,
        None => Vec::new(),
    };
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    start_weaver(host, peers, &flags)
}

fn wait_ping(ns: &str, ip: &str) -> Result<()> {
    wait_until(WAIT, &format!("{ns} to ping {ip}"), || {
        Ok(pings(ns, ip).then_some(()))
    })
    .with_context(|| {
        // the agents' logs of the bed the pod belongs to
        let prefix = ns.split('-').next().unwrap_or_default();
        (1..=3)
            .map(|i| {
                let log = std::env::temp_dir()
                    .join(prefix)
                    .join(format!("h{i}"))
                    .join("weaver.log");
                let text = std::fs::read_to_string(log).unwrap_or_default();
                format!("--- h{i}:\n{}", weave_e2e::weave::tail(&text, 25))
            })
            .collect::<Vec<_>>()
            .join("\n")
    })
}

/// Starts tcpdump in `host` writing to a file; waits until it listens.
fn capture(host: &Host, iface: &str, filter: &str) -> Result<PathBuf> {
    let file = host.dir().join("capture.pcap");
    let _ = std::fs::remove_file(&file);
    // -Z root: keep writing into the test's directory, which only root may;
    // --immediate-mode: hand each packet over at once, so that none is still
    // in the kernel ring when tcpdump is stopped.
    let mut args: Vec<String> = [
        "-Z",
        "root",
        "--immediate-mode",
        "-i",
        iface,
        "-U",
        "-n",
        "-s",
        "0",
        "-w",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(file.display().to_string());
    args.extend(filter.split_whitespace().map(str::to_string));
    host.spawn(TCPDUMP, std::path::Path::new("tcpdump"), &args, &[])?;
    wait_until(Duration::from_secs(10), "tcpdump to listen", || {
        Ok(host.log(TCPDUMP).contains("listening on").then_some(()))
    })?;
    Ok(file)
}

/// Drop counters of the sleeve by reason.
fn drops(r: &Report, reason: &str) -> u64 {
    r.sleeve
        .as_ref()
        .and_then(|s| s.drops.get(reason).copied())
        .unwrap_or(0)
}

/// Chain h1-h2-h3: pods on h1 and h3 exchange the marker through h2 while
/// h2 captures both links. Returns whether the marker was on the wire.
fn marker_on_the_underlay(password: Option<&str>) -> Result<bool> {
    let bed = TestBed::new(Topology::Links {
        hosts: 3,
        links: vec![(1, 2), (2, 3)],
    })?;
    let (h1, h2, h3) = (bed.host(1), bed.host(2), bed.host(3));
    start(h2, &[], password)?;
    start(h1, &["10.251.0.2".into()], password)?;
    start(h3, &["10.251.1.2".into()], password)?;
    let all = ["h1", "h2", "h3"];
    wait_for_mesh(h1, &all, 1, WAIT)?;
    wait_for_mesh(h2, &all, 2, WAIT)?;
    wait_for_mesh(h3, &all, 1, WAIT)?;
    let r2 = report(h2)?;
    let encrypted = r2.connections.iter().filter(|c| c.encrypted).count();
    ensure!(
        encrypted == if password.is_some() { 2 } else { 0 },
        "h2 reports {encrypted} encrypted connections: {:?}",
        r2.connections
    );
    let table = weave(h2, &["status", "connections"])?;
    let want = if password.is_some() { "true" } else { "false" };
    ensure!(
        table.contains("ENCRYPTED") && table.contains(want),
        "{table}"
    );
    if password.is_some() {
        // the kernel here cannot encrypt, so the fast path never carries pod traffic
        let m = modes(&r2);
        ensure!(
            m.len() == 2
                && m.values().all(|(mode, why)| mode == "sleeve"
                    && why.as_deref() == Some("encryption: kernel cannot encrypt")),
            "{m:?}"
        );
        ensure!(
            table.contains("sleeve (encryption: kernel cannot encrypt)"),
            "{table}"
        );
        ensure!(
            h2.run("ip", &["link", "show", "vxlan-weave"]).is_err(),
            "a VXLAN device exists although a password is set"
        );
    }

    let a = attach_pod(&bed, 1, "a", "10.2.1.1/24")?;
    let c = attach_pod(&bed, 3, "c", "10.2.1.3/24")?;
    wait_ping(&a, "10.2.1.3")?;
    let pcap = capture(h2, "any", "")?;
    // UDP and TCP from h1's pod to h3's pod through h2's sleeve
    let c_ns = c.clone();
    let server = std::thread::spawn(move || {
        in_pod(
            &c_ns,
            "python3",
            &["-c", "import socket\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('10.2.1.3',5005));s.listen(1);s.settimeout(20)\nc,_=s.accept();c.settimeout(20);d=b''\nwhile True:\n  x=c.recv(65536)\n  if not x: break\n  d+=x\nprint(len(d))"],
        )
    });
    in_pod(
        &a,
        "python3",
        &["-c", &format!("import socket,time\nm=b'{MARKER}'*20\nu=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor i in range(5): u.sendto(m,('10.2.1.3',5006))\nfor i in range(100):\n  try:\n    s=socket.create_connection(('10.2.1.3',5005),timeout=2);break\n  except OSError: time.sleep(0.05)\ns.sendall(m*10);s.close()")],
    )?;
    let got = server.join().expect("server thread")?;
    ensure!(
        got.trim() == (MARKER.len() * 200).to_string(),
        "h3's pod received {got} bytes"
    );
    wait_ping(&a, "10.2.1.3")?;
    h2.stop(TCPDUMP)?;
    let bytes = std::fs::read(&pcap).context("read capture")?;
    ensure!(
        bytes.len() > 10_000,
        "capture holds {} bytes; tcpdump said:\n{}",
        bytes.len(),
        h2.log(TCPDUMP)
    );
    let seen = bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes());
    Ok(seen)
}

#[test]
fn encrypted_chain_relays_and_hides_pod_traffic() -> Result<()> {
    ensure!(
        !marker_on_the_underlay(Some("correct horse battery staple"))?,
        "the marker crossed the underlay in clear despite the password"
    );
    Ok(())
}

#[test]
fn without_a_password_the_capture_sees_pod_traffic() -> Result<()> {
    ensure!(
        marker_on_the_underlay(None)?,
        "the capture never saw the marker: the check above could not fail"
    );
    Ok(())
}

/// Lines of `host`'s agent log containing `needle`.
fn log_lines(host: &Host, needle: &str) -> usize {
    host.log(WEAVER)
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

#[test]
fn wrong_or_missing_password_never_joins() -> Result<()> {
    let bed = TestBed::new(Topology::Segment(3))?;
    let (h1, h2, h3) = (bed.host(1), bed.host(2), bed.host(3));
    start(h1, &[], Some("alpha"))?;
    start(h2, &[peer_addr(h1)], Some("alpha"))?;
    wait_for_mesh(h1, &["h1", "h2"], 1, WAIT)?;

    // a wrong password: refused on both sides with one clear line each
    start(h3, &[peer_addr(h1), peer_addr(h2)], Some("beta"))?;
    let h3_addr = h3.addr().to_string();
    wait_until(WAIT, "both sides to log the refused handshake", || {
        Ok(
            (log_lines(h1, &format!("authentication failed with {h3_addr}")) >= 1
                && log_lines(h3, &format!("authentication failed with {}", h1.addr())) >= 1)
                .then_some(()),
        )
    })?;
    let r1 = report(h1)?;
    ensure!(r1.stats.auth_failures >= 1, "{:?}", r1.stats);
    ensure!(
        peer_nicknames(&r1) == ["h1", "h2"].map(String::from).into(),
        "h1 sees {:?}",
        peer_nicknames(&r1)
    );
    let r3 = report(h3)?;
    ensure!(r3.peers.len() == 1, "h3 joined: {:?}", r3.peers);
    ensure!(r3.stats.auth_failures >= 1);
    wait_until(WAIT, "the refusal to show in h3's connection table", || {
        let status = weave(h3, &["status", "connections"])?;
        Ok(status.contains("authentication failed").then_some(()))
    })?;

    // no password at all: refused too, and named as such
    h3.kill(WEAVER)?;
    start(h3, &[peer_addr(h1), peer_addr(h2)], None)?;
    wait_until(WAIT, "the missing password to be reported", || {
        Ok((log_lines(h1, "the peer has no password") >= 1
            && log_lines(h3, "the peer requires encryption") >= 1)
            .then_some(()))
    })?;
    let r3 = report(h3)?;
    ensure!(r3.peers.len() == 1, "h3 joined: {:?}", r3.peers);

    // the others are unaffected, and the refusals back off instead of
    // flooding the log (at most a few attempts per second of test)
    let r1 = wait_for_mesh(h1, &["h1", "h2"], 1, WAIT)?;
    ensure!(r1
        .connections
        .iter()
        .all(|c| c.encrypted || c.peer.is_none()));
    let refused = log_lines(h1, "authentication failed with");
    ensure!(
        (2..=12).contains(&refused),
        "h1 logged {refused} refusals:\n{}",
        h1.log(WEAVER)
    );
    let metrics = h1.run(
        "bash",
        &["-c", "exec 3<>/dev/tcp/127.0.0.1/6782 && printf 'GET /metrics HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n' >&3 && timeout 5 cat <&3"],
    )?;
    ensure!(
        metrics.contains("weave_auth_failures_total")
            && !metrics.contains("weave_auth_failures_total 0\n"),
        "{metrics}"
    );
    let a = attach_pod(&bed, 1, "a", "10.2.1.1/24")?;
    attach_pod(&bed, 2, "b", "10.2.1.2/24")?;
    wait_ping(&a, "10.2.1.2")?;
    Ok(())
}

#[test]
fn replayed_and_flipped_datagrams_are_dropped() -> Result<()> {
    let bed = TestBed::new(Topology::Segment(2))?;
    let (h1, h2) = (bed.host(1), bed.host(2));
    start(h1, &[], Some("gamma"))?;
    start(h2, &[peer_addr(h1)], Some("gamma"))?;
    wait_for_mesh(h1, &["h1", "h2"], 1, WAIT)?;
    let a = attach_pod(&bed, 1, "a", "10.2.1.1/24")?;
    let b = attach_pod(&bed, 2, "b", "10.2.1.2/24")?;
    wait_ping(&b, "10.2.1.1")?;

    // capture what h2 sends to h1's sleeve, with pod traffic in it
    let filter = format!("udp and src host {} and dst port 6783", h2.addr());
    let pcap = capture(h2, "ul0", &filter)?;
    for _ in 0..10 {
        ensure!(pings(&b, "10.2.1.1"));
    }
    h2.stop(TCPDUMP)?;
    let before = report(h1)?;
    // re-send every captured datagram as is, then once more with bits
    // flipped in the counter (so the replay window lets it through to the
    // decryption) and in the sealed part; from h2's address, as h2 would
    let script = format!(
        r#"
import socket, struct
data = open('{pcap}', 'rb').read()
pos, out = 24, []
while pos + 16 <= len(data):
    caplen = struct.unpack('<I', data[pos+8:pos+12])[0]
    pkt = data[pos+16:pos+16+caplen]
    pos += 16 + caplen
    ihl = (pkt[14] & 0x0f) * 4
    out.append(pkt[14+ihl+8:])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('{src}', 0))
for p in out:
    s.sendto(p, ('{dst}', 6783))
for p in out:
    q = bytearray(p)
    q[12] ^= 0x80
    q[len(q) // 2] ^= 0x04
    s.sendto(bytes(q), ('{dst}', 6783))
print(len(out))
"#,
        pcap = pcap.display(),
        src = h2.addr(),
        dst = h1.addr()
    );
    let sent: u64 = h2
        .run("python3", &["-c", &script])?
        .trim()
        .parse()
        .context("datagram count")?;
    ensure!(
        sent >= 8,
        "only {sent} datagrams captured; tcpdump said:\n{}",
        h2.log(TCPDUMP)
    );
    let after = wait_until(WAIT, "replays and bit flips to be counted", || {
        let r = report(h1)?;
        let replays = drops(&r, "replay") - drops(&before, "replay");
        let flipped = drops(&r, "decrypt_failed") - drops(&before, "decrypt_failed");
        Ok((replays >= sent && flipped >= sent).then_some(r))
    })?;
    ensure!(
        after.sleeve.as_ref().map_or(0, |s| s.injected) >= 5,
        "pod traffic arrived"
    );
    // traffic keeps flowing on the same connection
    wait_ping(&a, "10.2.1.2")?;
    wait_ping(&b, "10.2.1.1")?;
    ensure!(established_with_encryption(&report(h1)?) == 1);
    Ok(())
}

/// Established connections that are encrypted.
fn established_with_encryption(r: &Report) -> usize {
    r.connections
        .iter()
        .filter(|c| c.encrypted && c.state == weave_api::ConnectionState::Established)
        .count()
}

#[test]
fn password_rotation_never_partitions_the_mesh() -> Result<()> {
    let bed = TestBed::new(Topology::Segment(3))?;
    let hosts = [bed.host(1), bed.host(2), bed.host(3)];
    let all = ["h1", "h2", "h3"];
    for (i, h) in hosts.iter().enumerate() {
        let peers: Vec<String> = hosts[..i].iter().map(|p| peer_addr(p)).collect();
        start(h, &peers, Some("password-A"))?;
    }
    let mut pods = Vec::new();
    for i in 1..=3 {
        pods.push(attach_pod(&bed, i, "p", &format!("10.2.1.{i}/24"))?);
    }
    for h in hosts {
        wait_for_mesh(h, &all, 2, WAIT)?;
    }
    wait_ping(&pods[0], "10.2.1.3")?;
    // step 1: every host learns B and prefers it, still accepting A;
    // step 2: every host drops A. One host at a time, as a rollout would.
    for password in ["password-B\npassword-A\n", "password-B\n"] {
        for (i, h) in hosts.iter().enumerate() {
            h.kill(WEAVER)?;
            // the two other hosts keep talking while this one restarts
            let (j, k) = ((i + 1) % 3, (i + 2) % 3);
            wait_ping(&pods[j], &format!("10.2.1.{}", k + 1))?;
            let peers: Vec<String> = hosts
                .iter()
                .enumerate()
                .filter(|(x, _)| *x != i)
                .map(|(_, p)| peer_addr(p))
                .collect();
            start(h, &peers, Some(password))?;
            for h in hosts {
                wait_for_mesh(h, &all, 2, WAIT)?;
            }
            for (x, ns) in pods.iter().enumerate() {
                wait_ping(ns, &format!("10.2.1.{}", (x + 1) % 3 + 1))?;
            }
        }
    }
    for h in hosts {
        ensure!(established_with_encryption(&report(h)?) == 2);
        ensure!(
            report(h)?.stats.auth_failures == 0,
            "{} refused a peer",
            h.name()
        );
    }
    Ok(())
}
