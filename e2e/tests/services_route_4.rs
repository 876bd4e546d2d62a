// SPDX-License-Identifier: Apache-2.0
//! Routing services between two weave networks with the same allocation range: network A
//! is h1 and h2, network B is h3 and h4, each a mesh of its own (neither is told of the
//! other's peers), and the only link between them is h2–h3. A container on h1 and a
//! container on h4 have the same address, 10.32.9.9, each in its own network.
//!
//! B exports its container's service at h3:2211 (`weave service export` on h3), A imports
//! h3:2211 at h2's weave address:3322 (`weave service import` on h2): the container on h1
//! connects to h2's weave address and reaches the container on h4, which sees h3's weave
//! address of network B as its peer. UDP goes the same way with `--udp`. Removing either
//! half of the chain breaks it.

#![allow(clippy::disallowed_types)] // wall-clock timing of real processes

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use weave_e2e::echo::{ask, ask_udp, serve, serve_udp, wait_answer, wait_answer_udp};
use weave_e2e::weave::{attach_pod, start_weaver, wait_for_mesh, weave};
use weave_e2e::{TestBed, Topology};

/// Link k between hosts a and b has addresses `10.251.k.a` and `10.251.k.b`: link 0 is
/// network A's, link 1 network B's, link 2 the border.
const LINKS: [(usize, usize); 3] = [(1, 2), (3, 4), (2, 3)];

/// The address both containers have, each in its own network.
const SAME: &str = "10.32.9.9";

/// Host `h`'s address on link `k`.
fn link_addr(k: u8, h: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 251, k, h)
}

#[test]
fn import_on_one_network_chained_to_export_on_another_with_the_same_range() -> Result<()> {
    let bed = TestBed::new(Topology::Links {
        hosts: 4,
        links: LINKS.to_vec(),
    })?;
    let (h1, h2, h3, h4) = (bed.host(1), bed.host(2), bed.host(3), bed.host(4));
    start_weaver(h1, &[], &[])?;
    start_weaver(h2, &[format!("{}:6783", link_addr(0, 1))], &[])?;
    start_weaver(h4, &[], &[])?;
    start_weaver(h3, &[format!("{}:6783", link_addr(1, 4))], &[])?;
    for (h, net) in [(h1, ["h1", "h2"]), (h2, ["h1", "h2"])] {
        wait_for_mesh(h, &net, 1, Duration::from_secs(30))?;
    }
    for (h, net) in [(h3, ["h3", "h4"]), (h4, ["h3", "h4"])] {
        wait_for_mesh(h, &net, 1, Duration::from_secs(30))?;
    }
    for h in [h1, h2, h3, h4] {
        let range = weave_e2e::weave::ipam(h)?.range;
        assert_eq!(range.to_string(), "10.32.0.0/12", "{}", h.name());
    }
    let cidr = format!("{SAME}/12");
    let a = attach_pod(&bed, 1, "a", &cidr)?;
    let b = attach_pod(&bed, 4, "b", &cidr)?;
    serve(&b, 4422, "b")?;
    serve_udp(&b, 4422, "b")?;

    // B: h3 exports b's port at 2211 on its addresses, so h2 reaches b.
    let target = format!("{SAME}:4422");
    let out = weave(h3, &["service", "export", "2211", &target])?;
    assert_eq!(out.trim(), format!("export tcp :2211 -> {target}"));
    weave(h3, &["service", "export", "--udp", "2211", &target])?;
    let x3 = weave(h3, &["expose"])?
        .trim()
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let border = SocketAddrV4::new(link_addr(2, 3), 2211);
    assert_eq!(wait_answer(h2.netns(), border, "b")?, format!("b {x3}"));

    // A: h2 imports h3:2211 at its weave address:3322, for every container of A.
    let started = Instant::now();
    let out = weave(h2, &["service", "import", "3322", &border.to_string()])?;
    let front: SocketAddrV4 = out
        .split_whitespace()
        .nth(2)
        .with_context(|| format!("weave service import printed {out:?}"))?
        .parse()
        .with_context(|| format!("front in {out:?}"))?;
    weave(
        h2,
        &["service", "import", "--udp", "3322", &border.to_string()],
    )?;
    let got = wait_answer(&a, front, "b")?;
    eprintln!(
        "routing: a reaches b {:?} after the import",
        started.elapsed()
    );
    assert_eq!(got, format!("b {x3}"), "b sees h3's weave address");
    assert_eq!(wait_answer_udp(&a, front, "b")?, format!("b {x3}"));
    // a's own address is b's: without the chain, a reaching 10.32.9.9 reaches itself.
    let own = SocketAddrV4::new(SAME.parse()?, 4422);
    assert!(ask(&a, own).is_err(), "a reaches b's address directly");

    // Each half of the chain is needed.
    weave(h3, &["service", "remove", "2211"])?;
    weave(h3, &["service", "remove", "--udp", "2211"])?;
    assert!(
        ask(&a, front).is_err(),
        "the chain works without the export"
    );
    assert!(
        ask_udp(&a, front).is_err(),
        "the chain works without the export"
    );
    weave(h3, &["service", "export", "2211", &target])?;
    assert_eq!(wait_answer(&a, front, "b")?, format!("b {x3}"));
    weave(h2, &["service", "remove", "3322"])?;
    assert!(
        ask(&a, front).is_err(),
        "the chain works without the import"
    );
    Ok(())
}
