// SPDX-License-Identifier: Apache-2.0
//! weaveDNS across three hosts, asked with `dig` from inside pods: a name
//! attached on one host resolves on the others, same-named containers on
//! three hosts share the answers, PTR/AAAA/TCP/truncation behave, names
//! outside the domain go to an upstream (dnsmasq in host 1) and fail fast
//! when it dies, and a removed peer's names go.

#![allow(clippy::disallowed_types)] // wall-clock timing of real processes

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use weave_e2e::weave::{
    attach_allocated, in_pod, peer_addr, start_weaver, wait_for_mesh, weave, WEAVER,
};
use weave_e2e::{wait_until, TestBed, Topology};

const DNSMASQ: &str = "dnsmasq";

/// `dig` in pod `ns` against `server`; the answer section's values, one a line.
fn dig_short(ns: &str, server: &str, args: &[&str]) -> Result<Vec<String>> {
    let at = format!("@{server}");
    let mut all = vec![at.as_str(), "+short", "+tries=1", "+time=2"];
    all.extend_from_slice(args);
    Ok(in_pod(ns, "dig", &all)?
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect())
}

/// Full `dig` output (header, flags, sections).
fn dig_full(ns: &str, server: &str, args: &[&str]) -> Result<String> {
    let at = format!("@{server}");
    let mut all = vec![at.as_str(), "+tries=1", "+time=3"];
    all.extend_from_slice(args);
    in_pod(ns, "dig", &all)
}

fn set(v: &[String]) -> BTreeSet<String> {
    v.iter().cloned().collect()
}

/// Waits until `ns` gets exactly `want` for `name` from `server`; returns
/// how long that took.
fn wait_answer(ns: &str, server: &str, name: &str, want: &BTreeSet<String>) -> Result<Duration> {
    let start = Instant::now();
    wait_until(
        Duration::from_secs(10),
        &format!("{ns} to see {name} = {want:?}"),
        || Ok((set(&dig_short(ns, server, &[name])?) == *want).then_some(())),
    )?;
    Ok(start.elapsed())
}

#[test]
fn names_resolve_across_hosts_with_load_balancing_and_forwarding() -> Result<()> {
    let bed = TestBed::new(Topology::Segment(3))?;
    let h1 = bed.host(1);
    // The upstream: dnsmasq in host 1 on its underlay address, answering
    // one name of its own.
    let up = h1.addr().to_string();
    let conf = bed.run_dir().join("upstream-resolv.conf");
    std::fs::write(&conf, format!("nameserver {up}\n"))?;
    h1.spawn(
        DNSMASQ,
        Path::new("/usr/sbin/dnsmasq"),
        &[
            "--keep-in-foreground".into(),
            "--conf-file=/dev/null".into(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--bind-interfaces".into(),
            format!("--listen-address={up}"),
            "--except-interface=lo".into(),
            "--pid-file=".into(),
            "--user=root".into(),
            "--address=/outside.test/192.0.2.7".into(),
        ],
        &[],
    )?;
    let conf_s = conf.display().to_string();
    let flags = [
        "--ipalloc-init",
        "consensus=3",
        "--resolv-conf",
        conf_s.as_str(),
        "--dns-ttl",
        "1",
        "--dns-upstream-timeout",
        "500ms",
    ];
    start_weaver(h1, &[], &flags)?;
    start_weaver(bed.host(2), &[peer_addr(h1)], &flags)?;
    start_weaver(bed.host(3), &[peer_addr(h1)], &flags)?;
    for h in bed.hosts() {
        wait_for_mesh(h, &["h1", "h2", "h3"], 2, Duration::from_secs(30))?;
    }
    // Each host's bridge gets an address (named after the host), where
    // weaveDNS answers its pods.
    let mut gw = BTreeMap::new();
    for h in 1..=3 {
        let out = weave(bed.host(h), &["expose", "-h", &format!("host{h}")])?;
        let addr = out.trim().split('/').next().unwrap_or_default().to_string();
        addr.parse::<std::net::Ipv4Addr>()
            .with_context(|| format!("weave expose printed {out:?}"))?;
        gw.insert(h, addr);
    }
    let mut client = BTreeMap::new();
    for h in 1..=3 {
        let (ns, _) = attach_allocated(&bed, h, "client", &[])?;
        client.insert(h, ns);
    }
    // The DNS server is up on each bridge address.
    for h in 1..=3 {
        wait_until(
            Duration::from_secs(10),
            &format!("weaveDNS on {}", gw[&h]),
            || {
                Ok(
                    (dig_short(&client[&h], &gw[&h], &[&format!("host{h}.weave.local")]).ok()
                        == Some(vec![gw[&h].clone()]))
                    .then_some(()),
                )
            },
        )?;
    }

    // A name attached on h1 resolves from h2 and h3 within 1 s.
    let (_, web1) = attach_allocated(&bed, 1, "web1", &["--name", "web"])?;
    let one = BTreeSet::from([web1.clone()]);
    for h in [2, 3] {
        let took = wait_answer(&client[&h], &gw[&h], "web.weave.local", &one)?;
        eprintln!("h1's name seen on h{h} after {took:?}");
        assert!(took < Duration::from_secs(1), "h{h} took {took:?}");
    }

    // Three containers of one name on three hosts: all three in every
    // answer, each first about a third of 300 times.
    let (_, web2) = attach_allocated(&bed, 2, "web2", &["--name", "web"])?;
    let (_, web3) = attach_allocated(&bed, 3, "web3", &["--name", "WEB.weave.local"])?;
    let three = BTreeSet::from([web1.clone(), web2.clone(), web3.clone()]);
    for h in 1..=3 {
        wait_answer(&client[&h], &gw[&h], "web.weave.local", &three)?;
    }
    let batch = bed.run_dir().join("queries");
    std::fs::write(&batch, "web.weave.local A\n".repeat(300))?;
    let out = in_pod(
        &client[&2],
        "dig",
        &[
            &format!("@{}", gw[&2]),
            "+short",
            "-f",
            batch.to_str().context("utf-8 path")?,
        ],
    )?;
    let lines: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 900, "300 answers of three records");
    let mut first: BTreeMap<&str, u32> = BTreeMap::new();
    for answer in lines.chunks(3) {
        let got: BTreeSet<String> = answer.iter().map(|s| s.to_string()).collect();
        assert_eq!(got, three);
        *first.entry(answer[0]).or_default() += 1;
    }
    eprintln!("first address of 300 answers: {first:?}");
    for a in &three {
        let n = first.get(a.as_str()).copied().unwrap_or(0);
        assert!((60..=140).contains(&n), "{a} first {n} times of 300");
    }

    // Case-insensitive, PTR, AAAA of an A-only name, TCP, NXDOMAIN.
    assert_eq!(
        set(&dig_short(&client[&1], &gw[&1], &["WeB.WEAVE.local"])?),
        three
    );
    assert_eq!(
        dig_short(&client[&1], &gw[&1], &["-x", &web2])?,
        vec!["web.weave.local.".to_string()]
    );
    let aaaa = dig_full(&client[&1], &gw[&1], &["AAAA", "web.weave.local"])?;
    assert!(
        aaaa.contains("status: NOERROR") && aaaa.contains("ANSWER: 0"),
        "{aaaa}"
    );
    assert_eq!(
        set(&dig_short(
            &client[&3],
            &gw[&3],
            &["+tcp", "web.weave.local"]
        )?),
        three
    );
    let nx = dig_full(&client[&1], &gw[&1], &["nobody.weave.local"])?;
    assert!(nx.contains("status: NXDOMAIN"), "{nx}");

    // A large answer: truncated over UDP without EDNS, whole over TCP.
    let many: Vec<String> = (1..=120)
        .map(|i| format!("10.99.{}.{}", i / 200, i % 200 + 1))
        .collect();
    let mut args = vec!["dns-add", "-h", "many"];
    args.extend(many.iter().map(String::as_str));
    weave(h1, &args)?;
    wait_until(Duration::from_secs(5), "many on h2", || {
        Ok(
            (dig_short(&client[&2], &gw[&2], &["+tcp", "many.weave.local"])?.len() == 120)
                .then_some(()),
        )
    })?;
    let udp = dig_full(
        &client[&2],
        &gw[&2],
        &["+noedns", "+ignore", "many.weave.local"],
    )?;
    assert!(udp.contains(" tc"), "truncated: {udp}");
    // Bad input changes nothing.
    assert!(weave(h1, &["dns-add", "-h", "bad name", "10.99.0.1"]).is_err());
    assert!(weave(h1, &["dns-add", "-h", "x.other.domain", "10.99.0.1"]).is_err());
    assert!(weave(h1, &["dns-add", "-h", "x", "not-an-ip"]).is_err());
    assert_eq!(weave(h1, &["dns-lookup", "many"])?.lines().count(), 120);
    weave(h1, &["dns-remove", "-h", "many"])?;
    wait_answer(&client[&3], &gw[&3], "many.weave.local", &BTreeSet::new())?;
    let status = weave(h1, &["status", "dns"])?;
    assert!(status.contains("web.weave.local."), "{status}");

    // Names outside the domain go upstream; a dead upstream is SERVFAIL
    // quickly, not a hang.
    assert_eq!(
        dig_short(&client[&2], &gw[&2], &["www.outside.test"])?,
        vec!["192.0.2.7".to_string()]
    );
    h1.kill(DNSMASQ)?;
    let start = Instant::now();
    let fail = dig_full(&client[&2], &gw[&2], &["www.outside.test"])?;
    let took = start.elapsed();
    assert!(fail.contains("status: SERVFAIL"), "{fail}");
    assert!(took < Duration::from_secs(2), "SERVFAIL after {took:?}");

    // h3 is killed and removed for good: its names go everywhere.
    bed.host(3).kill(WEAVER)?;
    // Refused while h1 still sees h3's connection up: retried until h3 is
    // gone from its view.
    wait_until(Duration::from_secs(20), "rmpeer h3", || {
        Ok(weave(h1, &["rmpeer", "h3"]).ok())
    })?;
    let two = BTreeSet::from([web1.clone(), web2.clone()]);
    for h in [1, 2] {
        wait_answer(&client[&h], &gw[&h], "web.weave.local", &two)?;
    }
    // Detach on h1: gone on h2 within 1 s.
    weave(h1, &["detach", &format!("{}-web1", h1.netns())])?;
    let took = wait_answer(
        &client[&2],
        &gw[&2],
        "web.weave.local",
        &BTreeSet::from([web2]),
    )?;
    eprintln!("detach seen on h2 after {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    if dig_short(&client[&1], &gw[&1], &["-x", &web1])? != Vec::<String>::new() {
        bail!("PTR of a detached address still answered");
    }

    // Every running agent's metrics page (h3's was stopped above), after pod traffic and
    // DNS queries, passes a real Prometheus parser and the catalogue.
    for h in bed
        .hosts()
        .iter()
        .filter(|h| h.is_running(weave_e2e::weave::WEAVER))
    {
        let page = weave_e2e::metrics::fetch(h.netns(), "127.0.0.1:6782".parse()?)?;
        weave_e2e::metrics::check(&page).with_context(|| format!("metrics of {}", h.name()))?;
    }
    Ok(())
}

/// With a mesh password (DNS gossip rides the encrypted control channel):
/// h3 is cut off from h1 and h2, names are registered on both sides of the
/// cut, each side sees only its own; after the heal every host knows all.
#[test]
fn names_registered_during_a_partition_are_known_everywhere_after_the_heal() -> Result<()> {
    let bed = TestBed::new(Topology::Segment(3))?;
    let h1 = bed.host(1);
    let mut flags: Vec<String> = ["--ipalloc-init", "consensus=3", "--dns-ttl", "1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let pw = bed.run_dir().join("password");
    std::fs::write(&pw, "correct horse battery staple")?;
    flags.extend(["--password-file".to_string(), pw.display().to_string()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    start_weaver(h1, &[], &flags)?;
    start_weaver(bed.host(2), &[peer_addr(h1)], &flags)?;
    start_weaver(
        bed.host(3),
        &[peer_addr(h1), peer_addr(bed.host(2))],
        &flags,
    )?;
    for h in bed.hosts() {
        wait_for_mesh(h, &["h1", "h2", "h3"], 2, Duration::from_secs(30))?;
    }
    let report = weave_e2e::weave::report(h1)?;
    assert!(
        report.connections.iter().all(|c| c.encrypted),
        "control connections are encrypted"
    );
    let mut gw = BTreeMap::new();
    let mut client = BTreeMap::new();
    for h in 1..=3 {
        let out = weave(bed.host(h), &["expose"])?;
        gw.insert(
            h,
            out.trim().split('/').next().unwrap_or_default().to_string(),
        );
        client.insert(h, attach_allocated(&bed, h, "client", &[])?.0);
    }
    bed.cut(1, 3)?;
    bed.cut(2, 3)?;
    weave(h1, &["dns-add", "-h", "left", "10.99.0.1"])?;
    weave(bed.host(3), &["dns-add", "-h", "right", "10.99.0.3"])?;
    let left = BTreeSet::from(["10.99.0.1".to_string()]);
    let right = BTreeSet::from(["10.99.0.3".to_string()]);
    wait_answer(&client[&2], &gw[&2], "left.weave.local", &left)?;
    wait_answer(&client[&3], &gw[&3], "right.weave.local", &right)?;
    assert!(dig_short(&client[&3], &gw[&3], &["left.weave.local"])?.is_empty());
    assert!(dig_short(&client[&1], &gw[&1], &["right.weave.local"])?.is_empty());
    bed.restore(1, 3)?;
    bed.restore(2, 3)?;
    for h in bed.hosts() {
        wait_for_mesh(h, &["h1", "h2", "h3"], 2, Duration::from_secs(60))?;
    }
    for h in 1..=3 {
        wait_answer(&client[&h], &gw[&h], "left.weave.local", &left)?;
        wait_answer(&client[&h], &gw[&h], "right.weave.local", &right)?;
    }
    Ok(())
}
