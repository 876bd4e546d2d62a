// SPDX-License-Identifier: Apache-2.0
//! `make demo`: four hosts in network namespaces, partially connected
//! (h4 reaches only h3), running the real `weaver`. Shows the mesh forming,
//! multi-hop routes, pods on h1 and h4 talking through h3, a partition and
//! its healing, then cleans up.
//! `weave-demo --hold` keeps the hosts until Ctrl-C.

// The demo talks to a person on stdout.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use anyhow::Result;
use weave_e2e::weave::{start_weaver, wait_for_mesh, weave};
use weave_e2e::{TestBed, Topology};

fn main() -> Result<()> {
    let hold = std::env::args().any(|a| a == "--hold");
    println!("== building 4 hosts: links h1-h2, h1-h3, h2-h3, h3-h4 (h4 reaches only h3)");
    let bed = TestBed::new(Topology::Links {
        hosts: 4,
        links: vec![(1, 2), (1, 3), (2, 3), (3, 4)],
    })?;
    for h in bed.hosts() {
        println!(
            "   {} = netns {} addresses {:?}",
            h.name(),
            h.netns(),
            h.addrs()
        );
    }
    // h1 founds the mesh; h2 knows h1 and h3, h3 knows h1, h4 knows only h3
    // (link k has addresses 10.251.k.<host>).
    start_weaver(bed.host(1), &[], &[])?;
    start_weaver(
        bed.host(2),
        &["10.251.0.1".into(), "10.251.2.3".into()],
        &[],
    )?;
    start_weaver(bed.host(3), &["10.251.1.1".into()], &[])?;
    start_weaver(bed.host(4), &["10.251.3.3".into()], &[])?;
    let all = ["h1", "h2", "h3", "h4"];
    for (i, conns) in [(1, 2), (2, 2), (3, 3), (4, 1)] {
        wait_for_mesh(bed.host(i), &all, conns, Duration::from_secs(30))?;
    }
    let h1 = bed.host(1);
    show(h1, &["status"])?;
    show(h1, &["status", "connections"])?;
    show(h1, &["status", "peers"])?;
    show(h1, &["status", "routes"])?;

    println!("== pods: one on h1, one on h4, plugged into the same virtual switch");
    let a = weave_e2e::weave::attach_pod(&bed, 1, "a", "10.2.1.1/24")?;
    weave_e2e::weave::attach_pod(&bed, 4, "d", "10.2.1.4/24")?;
    weave_e2e::wait_until(Duration::from_secs(10), "the pods to talk", || {
        Ok(weave_e2e::weave::pings(&a, "10.2.1.4").then_some(()))
    })?;
    println!("$ ping -c 3 10.2.1.4   # in pod a on h1; h4 is reached through h3");
    print!(
        "{}",
        weave_e2e::weave::in_pod(&a, "ping", &["-c", "3", "-i", "0.2", "10.2.1.4"])?
    );
    println!();

    println!("== cutting h3-h4: h4 is on its own");
    bed.cut(3, 4)?;
    wait_for_mesh(h1, &["h1", "h2", "h3"], 2, Duration::from_secs(30))?;
    show(h1, &["status"])?;
    println!("== restoring h3-h4: the mesh heals by itself");
    bed.restore(3, 4)?;
    wait_for_mesh(h1, &all, 2, Duration::from_secs(60))?;
    show(h1, &["status", "routes"])?;
    weave_e2e::wait_until(Duration::from_secs(10), "the pods to talk again", || {
        Ok(weave_e2e::weave::pings(&a, "10.2.1.4").then_some(()))
    })?;
    println!("pod a on h1 reaches 10.2.1.4 on h4 again");

    if hold {
        println!(
            "== holding; try: ip netns exec {} {} --api-socket {} status",
            h1.netns(),
            weave_e2e::bin("weave")?.display(),
            weave_e2e::weave::api_socket(h1).display()
        );
        println!("== press Ctrl-C to clean up");
        loop {
            std::thread::park();
        }
    }
    println!("== cleaning up");
    drop(bed);
    println!("== done");
    Ok(())
}

fn show(host: &weave_e2e::Host, args: &[&str]) -> Result<()> {
    println!("$ weave {}   # on {}", args.join(" "), host.name());
    print!("{}", weave(host, args)?);
    println!();
    Ok(())
}
