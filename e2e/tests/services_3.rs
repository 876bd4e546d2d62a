// SPDX-License-Identifier: Apache-2.0
//! The services guide's scenarios, one command each, on three mesh hosts and three outside
//! hosts that are not in the mesh: h4 reaches only h2, h5 and h6 are reachable only from
//! h1.
//!
//! - expose/hide: h2's own processes reach pods on h1 and h3 once exposed (twice: the same
//!   address), and no longer once hidden; a fixed `ADDR/CIDR` (outside the range, and inside
//!   it, claimed in IPAM) is hidden exactly, twice a no-op, and a pod's address is neither
//!   claimed nor freed;
//! - export: h4 → h2:2211 → the container a1 on h1, port 4422 (the container sees h2's
//!   weave address as the peer);
//! - import: a container on h2 → h1's weave address:3322 → a service on h5:2211 that h2
//!   cannot reach;
//! - rebind: the import moved to h6 with one command while a client loop connects over and
//!   over: at most the in-flight connection fails, and no connection reaches h5 afterwards;
//! - UDP: `--udp` exports and imports on the same ports carry datagrams both ways (the
//!   echo names the peer the server saw); a TCP front does not answer UDP and a UDP-only
//!   front does not answer TCP;
//! - bad input is refused and changes no rule; a kube-proxy-style `ip nat` table of the
//!   test's own keeps working beside ours;
//! - an agent restart keeps it all (h1's table is deleted while its agent is down and comes
//!   back from the state file); `weave reset` leaves no table, address or bridge behind and
//!   the test's own table in place.

#![allow(clippy::disallowed_types)] // wall-clock timing of real processes

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use weave_e2e::echo::{ask, ask_udp, connect, serve, serve_udp, wait_answer, wait_answer_udp};
use weave_e2e::weave::{attach_allocated, start_weaver, state_dir, wait_for_mesh, weave, WEAVER};
use weave_e2e::{in_netns, wait_until, Host, TestBed, Topology};

/// Link k between hosts a and b has addresses `10.251.k.a` and `10.251.k.b`.
const LINKS: [(usize, usize); 6] = [(1, 2), (1, 3), (2, 3), (2, 4), (1, 5), (1, 6)];

/// Host `h`'s address on link `k`.
fn link_addr(k: u8, h: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 251, k, h)
}

/// `weave ARGS` on `h`, which must fail with a message containing `want`.
fn refused(h: &Host, args: &[&str], want: &str) -> Result<()> {
    match weave(h, args) {
        Ok(out) => bail!("weave {} succeeded: {out}", args.join(" ")),
        Err(e) => {
            let msg = format!("{e:#}");
            if !msg.contains(want) {
                bail!("weave {} failed without {want:?}: {msg}", args.join(" "));
            }
            Ok(())
        }
    }
}

/// Our services table on `h`, as nft lists it (empty if absent).
fn table(h: &Host) -> String {
    h.run("nft", &["list", "table", "ip", "weave-services"])
        .unwrap_or_default()
}

/// The IPv4 addresses on `h`'s weave bridge, `ip -o -4 addr` lines.
fn bridge_addrs(h: &Host) -> String {
    h.run("ip", &["-o", "-4", "addr", "show", "dev", "weave"])
        .unwrap_or_default()
}

#[test]
fn export_import_rebind_expose_hide_restart_reset() -> Result<()> {
    let bed = TestBed::new(Topology::Links {
        hosts: 6,
        links: LINKS.to_vec(),
    })?;
    let (h1, h2, h3, h4) = (bed.host(1), bed.host(2), bed.host(3), bed.host(4));
    let peer = |k: u8, h: u8| format!("{}:6783", link_addr(k, h));
    let peers: [Vec<String>; 3] = [vec![], vec![peer(0, 1)], vec![peer(1, 1), peer(2, 2)]];
    for (i, p) in peers.iter().enumerate() {
        start_weaver(bed.host(i + 1), p, &[])?;
    }
    for h in [h1, h2, h3] {
        wait_for_mesh(h, &["h1", "h2", "h3"], 2, Duration::from_secs(30))?;
    }
    let (a1, a1_ip) = attach_allocated(&bed, 1, "a1", &[])?;
    let (c3, c3_ip) = attach_allocated(&bed, 3, "c3", &[])?;
    let a1_ip: Ipv4Addr = a1_ip.parse()?;
    let c3_ip: Ipv4Addr = c3_ip.parse()?;
    serve(&a1, 4422, "a1")?;
    serve(&c3, 4422, "c3")?;

    // expose / hide on h2.
    assert!(
        ask(h2.netns(), SocketAddrV4::new(a1_ip, 4422)).is_err(),
        "h2 reaches a pod before it is exposed"
    );
    let exposed = weave(h2, &["expose"])?.trim().to_string();
    assert_eq!(
        weave(h2, &["expose"])?.trim(),
        exposed,
        "expose is idempotent"
    );
    let x2 = exposed.split('/').next().unwrap_or_default().to_string();
    for (ip, tag) in [(a1_ip, "a1"), (c3_ip, "c3")] {
        let got = wait_answer(h2.netns(), SocketAddrV4::new(ip, 4422), tag)?;
        assert_eq!(got, format!("{tag} {x2}"), "h2's own address is seen");
    }
    assert_eq!(weave(h2, &["hide"])?.trim(), exposed);
    assert!(!bridge_addrs(h2).contains(&x2), "{}", bridge_addrs(h2));
    assert!(ask(h2.netns(), SocketAddrV4::new(a1_ip, 4422)).is_err());
    assert_eq!(weave(h2, &["hide"])?.trim(), "not exposed");
    // A fixed address, outside the range and inside it (claimed in IPAM): hide takes exactly
    // it; hiding again is a no-op. An address a pod of h1 has cannot be claimed, and a hide
    // of it on h1 (where it is not on the bridge) takes nothing and frees nothing.
    for fixed in ["10.2.1.1/24", "10.32.200.1/12"] {
        assert_eq!(weave(h2, &["expose", fixed])?.trim(), fixed);
        assert_eq!(weave(h2, &["expose", fixed])?.trim(), fixed, "idempotent");
        assert!(bridge_addrs(h2).contains(fixed), "{}", bridge_addrs(h2));
        if fixed.starts_with("10.32.") {
            let got = wait_answer(h2.netns(), SocketAddrV4::new(a1_ip, 4422), "a1")?;
            assert_eq!(got, "a1 10.32.200.1");
            refused(h2, &["expose", "10.32.200.2/12"], "weave hide it first")?;
        }
        assert_eq!(weave(h2, &["hide", fixed])?.trim(), fixed);
        assert!(!bridge_addrs(h2).contains(fixed), "{}", bridge_addrs(h2));
        assert_eq!(weave(h2, &["hide", fixed])?.trim(), "not exposed");
    }
    assert!(bridge_addrs(h2).is_empty(), "{}", bridge_addrs(h2));
    let a1_cidr = format!("{a1_ip}/12");
    refused(h2, &["expose", &a1_cidr], "in use")?;
    let used = weave_e2e::weave::ipam(h1)?.used;
    assert_eq!(
        weave(h1, &["hide", "--force", &a1_cidr])?.trim(),
        "not exposed"
    );
    assert_eq!(
        weave_e2e::weave::ipam(h1)?.used,
        used,
        "hide freed a pod's address"
    );

    // A kube-proxy-style table of our own: h4 → h2:5555 → a1:4422.
    let theirs = format!(
        "table ip nat {{\n\
         chain PREROUTING {{ type nat hook prerouting priority dstnat; tcp dport 5555 dnat to {a1_ip}:4422; }}\n\
         chain POSTROUTING {{ type nat hook postrouting priority srcnat; meta l4proto tcp ct original proto-dst 5555 masquerade; }}\n\
         }}\n"
    );
    h2.run_with_input("nft", &["-f", "-"], &theirs)?;

    // export: outside (h4) → h2:2211 → a1 on h1.
    let a1_target = format!("{a1_ip}:4422");
    let out = weave(h2, &["service", "export", "2211", &a1_target])?;
    assert_eq!(out.trim(), format!("export tcp :2211 -> {a1_target}"));
    let x2 = weave(h2, &["expose"])?
        .trim()
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let h2_outside = SocketAddrV4::new(link_addr(3, 2), 2211);
    assert_eq!(
        wait_answer(h4.netns(), h2_outside, "a1")?,
        format!("a1 {x2}")
    );
    let theirs_port = SocketAddrV4::new(link_addr(3, 2), 5555);
    assert!(wait_answer(h4.netns(), theirs_port, "a1").is_ok());

    // import: a2 on h2 → h1's weave address:3322 → h5:2211, which h2 cannot reach.
    let h5_service = SocketAddrV4::new(link_addr(4, 5), 2211);
    let h6_service = SocketAddrV4::new(link_addr(5, 6), 2211);
    serve(bed.host(5).netns(), 2211, "h5")?;
    serve(bed.host(6).netns(), 2211, "h6")?;
    let (a2, _) = attach_allocated(&bed, 2, "a2", &[])?;
    assert!(ask(&a2, h5_service).is_err(), "a2 reaches h5 directly");
    let started = Instant::now();
    let out = weave(h1, &["service", "import", "3322", &h5_service.to_string()])?;
    let front = out
        .split_whitespace()
        .nth(2)
        .with_context(|| format!("weave service import printed {out:?}"))?;
    let front: SocketAddrV4 = front.parse().with_context(|| format!("front in {out:?}"))?;
    assert_eq!(front.port(), 3322);
    let got = wait_answer(&a2, front, "h5")?;
    eprintln!(
        "import: traffic flows {:?} after weave service import",
        started.elapsed()
    );
    assert_eq!(got, format!("h5 {}", link_addr(4, 1)), "h5 sees h1");

    // UDP. A TCP front carries no UDP: nothing listens on h2:2211/udp or h1's 3322/udp, so
    // the datagram meets a port unreachable (or nothing) and no echo comes back.
    serve_udp(&a1, 4422, "a1")?;
    serve_udp(bed.host(5).netns(), 2211, "h5")?;
    assert!(
        ask_udp(h4.netns(), h2_outside).is_err(),
        "the TCP export answers UDP"
    );
    assert!(ask_udp(&a2, front).is_err(), "the TCP import answers UDP");
    // Export and import with --udp on the same ports: datagrams both ways, TCP unchanged.
    let out = weave(h2, &["service", "export", "--udp", "2211", &a1_target])?;
    assert_eq!(out.trim(), format!("export udp :2211 -> {a1_target}"));
    assert_eq!(
        wait_answer_udp(h4.netns(), h2_outside, "a1")?,
        format!("a1 {x2}"),
        "a1 sees h2's weave address over UDP"
    );
    assert_eq!(ask(h4.netns(), h2_outside)?, format!("a1 {x2}"));
    let out = weave(
        h1,
        &[
            "service",
            "import",
            "--udp",
            "3322",
            &h5_service.to_string(),
        ],
    )?;
    assert_eq!(out.trim(), format!("import udp {front} -> {h5_service}"));
    assert_eq!(
        wait_answer_udp(&a2, front, "h5")?,
        format!("h5 {}", link_addr(4, 1)),
        "h5 sees h1 over UDP"
    );
    assert_eq!(ask(&a2, front)?, format!("h5 {}", link_addr(4, 1)));
    // A UDP-only front does not answer TCP.
    let udp_only_export = SocketAddrV4::new(link_addr(3, 2), 2212);
    let udp_only_import = SocketAddrV4::new(*front.ip(), 3325);
    weave(h2, &["service", "export", "--udp", "2212", &a1_target])?;
    weave(
        h1,
        &[
            "service",
            "import",
            "--udp",
            "3325",
            &h5_service.to_string(),
        ],
    )?;
    wait_answer_udp(h4.netns(), udp_only_export, "a1")?;
    wait_answer_udp(&a2, udp_only_import, "h5")?;
    assert!(
        ask(h4.netns(), udp_only_export).is_err(),
        "the UDP export answers TCP"
    );
    assert!(
        ask(&a2, udp_only_import).is_err(),
        "the UDP import answers TCP"
    );
    // Removed: no UDP rule left, the TCP services still answer.
    for (h, port) in [(h2, "2211"), (h2, "2212"), (h1, "3322"), (h1, "3325")] {
        let out = weave(h, &["service", "remove", "--udp", port])?;
        assert!(
            out.starts_with("removed ") && out.contains(" udp "),
            "{out}"
        );
    }
    assert!(!table(h1).contains("udp") && !table(h2).contains("udp"));
    assert!(ask_udp(h4.netns(), h2_outside).is_err());
    assert!(ask_udp(&a2, front).is_err());
    assert_eq!(ask(h4.netns(), h2_outside)?, format!("a1 {x2}"));

    // Bad input: refused, no rule changed.
    let (t1, t2) = (table(h1), table(h2));
    refused(
        h2,
        &["service", "export", "2211", &a1_target],
        "already used by export tcp :2211",
    )?;
    let _busy = in_netns(h2.netns(), || Ok(TcpListener::bind("0.0.0.0:2299")?))?;
    refused(
        h2,
        &["service", "export", "2299", &a1_target],
        "tcp port 2299 is in use on this host",
    )?;
    refused(
        h1,
        &["service", "import", "3323", &a1_target],
        "must be outside the weave network",
    )?;
    refused(
        h1,
        &["service", "import", "3323", "300.1.2.3:80"],
        "is not an IPv4 address",
    )?;
    refused(
        h1,
        &[
            "service",
            "import",
            "--address",
            "10.251.4.1",
            "3323",
            "10.251.4.5:1",
        ],
        "is not an address of this host's bridge",
    )?;
    refused(
        h1,
        &["service", "remove", "9999"],
        "no service on tcp :9999",
    )?;
    refused(h1, &["hide", "--force"], "remove them first")?;
    assert_eq!(
        (table(h1), table(h2)),
        (t1, t2),
        "refused requests changed rules"
    );

    // rebind: one command, while a client loop connects over and over.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let looping = {
        let (stop, answered, a2) = (Arc::clone(&stop), Arc::clone(&answered), a2.clone());
        std::thread::spawn(move || {
            in_netns(&a2, move || {
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match connect(front) {
                        Ok(a) => {
                            seen.push(a);
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => seen.push(format!("failed: {e:#}")),
                    }
                    // Pacing of the client, not synchronisation.
                    #[allow(clippy::disallowed_methods)]
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(seen)
            })
        })
    };
    wait_until(
        Duration::from_secs(10),
        "the client loop's first answers",
        || Ok((answered.load(Ordering::Relaxed) >= 3).then_some(())),
    )?;
    let out = weave(h1, &["service", "rebind", "3322", &h6_service.to_string()])?;
    assert_eq!(out.trim(), format!("import tcp {front} -> {h6_service}"));
    wait_answer(&a2, front, "h6")?;
    let after = answered.load(Ordering::Relaxed) + 20;
    wait_until(
        Duration::from_secs(10),
        "20 more answers to the client loop",
        || Ok((answered.load(Ordering::Relaxed) >= after).then_some(())),
    )?;
    stop.store(true, Ordering::Relaxed);
    let seen = looping
        .join()
        .map_err(|_| anyhow::anyhow!("client loop panicked"))??;
    let failed = seen.iter().filter(|s| s.starts_with("failed")).count();
    let first_h6 = seen.iter().position(|s| s.starts_with("h6"));
    let h5_after = first_h6.map_or(0, |i| {
        seen[i..].iter().filter(|s| s.starts_with("h5")).count()
    });
    eprintln!("rebind: {} connections, {failed} failed", seen.len());
    assert!(failed <= 1, "{failed} connections failed: {seen:?}");
    assert!(first_h6.is_some() && h5_after == 0, "{seen:?}");
    assert!(seen.iter().any(|s| s.starts_with("h5")), "{seen:?}");

    // status
    let listed = weave(h1, &["status", "services"])?;
    assert!(
        listed.contains(&format!("import  tcp    {front}")),
        "{listed}"
    );
    assert!(listed.contains(&h6_service.to_string()), "{listed}");
    assert_eq!(weave(h1, &["service", "list"])?, listed);

    // Restart h1 and h2; h1's table is deleted meanwhile and must come back from the file.
    for h in [h1, h2] {
        h.stop(WEAVER)?;
    }
    h1.run("nft", &["delete", "table", "ip", "weave-services"])?;
    start_weaver(h1, &peers[0], &[])?;
    start_weaver(h2, &peers[1], &[])?;
    for h in [h1, h2, h3] {
        wait_for_mesh(h, &["h1", "h2", "h3"], 2, Duration::from_secs(30))?;
    }
    assert_eq!(weave(h1, &["service", "list"])?, listed);
    assert_eq!(
        weave(h2, &["expose"])?.trim().split('/').next(),
        Some(x2.as_str())
    );
    assert_eq!(
        wait_answer(&a2, front, "h6")?,
        format!("h6 {}", link_addr(5, 1))
    );
    assert_eq!(
        wait_answer(h4.netns(), h2_outside, "a1")?,
        format!("a1 {x2}")
    );

    // remove, then reset.
    assert_eq!(
        weave(h2, &["service", "remove", "2211"])?.trim(),
        format!("removed export tcp :2211 -> {a1_target}")
    );
    assert!(table(h2).is_empty(), "{}", table(h2));
    for (i, h) in [h1, h2, h3].into_iter().enumerate() {
        h.stop(WEAVER)?;
        let dir = h.dir();
        let (bin, conf, run) = (
            dir.join("cni-bin").display().to_string(),
            dir.join("cni-conf").display().to_string(),
            dir.join("reset-run").display().to_string(),
        );
        let state = state_dir(h).display().to_string();
        weave(
            h,
            &[
                "reset",
                "--force",
                "--bin-dir",
                &bin,
                "--conf-dir",
                &conf,
                "--state-dir",
                &state,
                "--run-dir",
                &run,
            ],
        )
        .with_context(|| format!("reset h{}", i + 1))?;
        let tables = h.run("nft", &["list", "tables"])?;
        assert!(!tables.contains("weave"), "h{}: {tables}", i + 1);
        assert!(bridge_addrs(h).is_empty(), "h{}", i + 1);
        let addrs = h.run("ip", &["-o", "-4", "addr"])?;
        assert!(!addrs.contains(" 10.32."), "h{}: {addrs}", i + 1);
    }
    assert!(h2.run("nft", &["list", "tables"])?.contains("table ip nat"));
    Ok(())
}
