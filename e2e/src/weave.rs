// SPDX-License-Identifier: Apache-2.0
//! Running the real `weaver` in a test-bed host and asking it questions
//! through the real `weave` CLI.
//!
//! Each host keeps its state directory and API socket under its own run
//! directory, so agents on different hosts never share files even though the
//! hosts share one file system.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use weave_api::{ConnectionState, Report};

use crate::{bin, wait_until, Host};

/// Process name of the agent in the test bed.
pub const WEAVER: &str = "weaver";

/// The API socket of the agent on `host`.
pub fn api_socket(host: &Host) -> PathBuf {
    host.dir().join("weave.sock")
}

/// The state directory of the agent on `host`.
pub fn state_dir(host: &Host) -> PathBuf {
    host.dir().join("state")
}

/// Starts `weaver` on `host`, connecting to `peers`, with `extra` flags;
/// waits until its API answers.
pub fn start_weaver(host: &Host, peers: &[String], extra: &[&str]) -> Result<()> {
    let mut args = vec![
        "--nickname".to_string(),
        host.name().to_string(),
        "--state-dir".to_string(),
        state_dir(host).display().to_string(),
        "--api-socket".to_string(),
        api_socket(host).display().to_string(),
        "--log-level".to_string(),
        "info,weave_node_agent=debug".to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(peers.iter().cloned());
    host.spawn(WEAVER, &bin("weaver")?, &args, &[])?;
    wait_until(
        Duration::from_secs(20),
        &format!("weaver API on {}", host.name()),
        || {
            if !host.is_running(WEAVER) {
                bail!("weaver on {} exited:\n{}", host.name(), host.log(WEAVER));
            }
            Ok(report(host).ok())
        },
    )?;
    Ok(())
}

/// Runs the `weave` CLI on `host` against its agent; returns stdout.
pub fn weave(host: &Host, args: &[&str]) -> Result<String> {
    let socket = api_socket(host);
    let mut all = vec![
        "--api-socket",
        socket.to_str().context("socket path is UTF-8")?,
    ];
    all.extend_from_slice(args);
    host.run(
        bin("weave")?.to_str().context("binary path is UTF-8")?,
        &all,
    )
}

/// `weave report` on `host`, parsed.
pub fn report(host: &Host) -> Result<Report> {
    let out = weave(host, &["report"])?;
    serde_json::from_str(&out).with_context(|| format!("parse weave report of {}", host.name()))
}

/// `weave ps --format json` on `host`.
pub fn ps(host: &Host) -> Result<weave_api::PsReply> {
    let out = weave(host, &["ps", "--format", "json"])?;
    serde_json::from_str(&out).with_context(|| format!("parse weave ps of {}", host.name()))
}

/// The MAC of `ifname` in the pod namespace `ns`, as `ip link` prints it.
pub fn pod_mac(ns: &str, ifname: &str) -> Result<String> {
    let out = in_pod(ns, "ip", &["-o", "link", "show", ifname])?;
    out.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .map(str::to_string)
        .with_context(|| format!("no MAC for {ifname} in {ns}: {out}"))
}

/// Nicknames of the reachable peers in `r`.
pub fn peer_nicknames(r: &Report) -> BTreeSet<String> {
    r.peers
        .iter()
        .filter(|p| p.reachable)
        .map(|p| p.nickname.clone())
        .collect()
}

/// Number of established connections in `r`.
pub fn established(r: &Report) -> usize {
    r.connections
        .iter()
        .filter(|c| c.state == ConnectionState::Established)
        .count()
}

/// Waits until `host` reports exactly the peers named in `nicknames` (the
/// unreachable ones no longer listed), `conns` established connections, and
/// a data-plane route to every other peer.
pub fn wait_for_mesh(
    host: &Host,
    nicknames: &[&str],
    conns: usize,
    timeout: Duration,
) -> Result<Report> {
    let want: BTreeSet<String> = nicknames.iter().map(|s| s.to_string()).collect();
    let what = format!(
        "{} to see peers {want:?} with {conns} established connections",
        host.name()
    );
    wait_until(timeout, &what, || {
        let r = report(host)?;
        let all: BTreeSet<String> = r.peers.iter().map(|p| p.nickname.clone()).collect();
        let routed = r.routes.len() + 1 == want.len();
        Ok((all == want && established(&r) == conns && routed).then_some(r))
    })
    .with_context(|| {
        format!(
            "agent log of {}:\n{}",
            host.name(),
            tail(&host.log(WEAVER), 40)
        )
    })
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `IP:6783` of `host`'s first underlay address.
pub fn peer_addr(host: &Host) -> String {
    format!("{}:6783", host.addr())
}

/// Creates a pod namespace `name` on host `h` of `bed` and attaches it to
/// the bridge with `cidr` through `weave attach`; returns the namespace name.
pub fn attach_pod(bed: &crate::TestBed, h: usize, name: &str, cidr: &str) -> Result<String> {
    let ns = bed.add_pod_netns(h, name)?;
    weave(bed.host(h), &["attach", cidr, &ns])?;
    Ok(ns)
}

/// Runs `program args` inside the pod namespace `ns` (from the root
/// namespace, through `ip netns exec`).
pub fn in_pod(ns: &str, program: &str, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, program])
        .args(args)
        .output()
        .with_context(|| format!("run {program} in {ns}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} in {ns} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `ns` gets an answer from `ip` within about a second.
pub fn pings(ns: &str, ip: &str) -> bool {
    in_pod(ns, "ping", &["-c", "1", "-W", "1", ip]).is_ok()
}

/// A client of the agent's API on `host`, through its Unix socket.
pub fn client(host: &Host) -> weave_api::Client {
    weave_api::Client::new(vec![weave_api::Endpoint::Unix(api_socket(host))])
        .with_timeout(Duration::from_secs(60))
}

/// Creates pod namespace `name` on host `h` and attaches it through
/// `weave attach` with addresses from IPAM (`specs` as `weave attach` takes
/// them; none means the default subnet). Returns the namespace and the
/// address it got (without prefix).
pub fn attach_allocated(
    bed: &crate::TestBed,
    h: usize,
    name: &str,
    specs: &[&str],
) -> Result<(String, String)> {
    let ns = bed.add_pod_netns(h, name)?;
    let mut args = vec!["attach"];
    args.extend_from_slice(specs);
    args.push(&ns);
    let out = weave(bed.host(h), &args)?;
    let cidr = out
        .split_whitespace()
        .next()
        .with_context(|| format!("weave attach printed no address for {name}"))?;
    let addr = cidr.split('/').next().unwrap_or(cidr).to_string();
    Ok((ns, addr))
}

/// The IPAM section of `host`'s report.
pub fn ipam(host: &Host) -> Result<weave_api::IpamReport> {
    report(host)?
        .ipam
        .with_context(|| format!("IPAM is off on {}", host.name()))
}

/// Each established connection's data-plane mode in `r`, by the peer's
/// nickname: `(mode, reason)`, the reason set when the sleeve carries it.
pub fn modes(r: &Report) -> std::collections::BTreeMap<String, (String, Option<String>)> {
    r.connections
        .iter()
        .filter(|c| c.state == ConnectionState::Established)
        .filter_map(|c| {
            Some((
                c.nickname.clone()?,
                (c.mode.clone()?, c.mode_reason.clone()),
            ))
        })
        .collect()
}

/// Waits until `host` reports `mode` (`fastdp` or `sleeve`) for its
/// connection to each peer in `peers` (nicknames); returns the report.
pub fn wait_for_mode(host: &Host, peers: &[&str], mode: &str, timeout: Duration) -> Result<Report> {
    let what = format!("{} to carry {peers:?} by {mode}", host.name());
    wait_until(timeout, &what, || {
        let r = report(host)?;
        let m = modes(&r);
        let all = peers
            .iter()
            .all(|p| m.get(*p).is_some_and(|(got, _)| got == mode));
        Ok(all.then_some(r))
    })
    .with_context(|| {
        format!(
            "modes on {}: {:?}\nagent log:\n{}",
            host.name(),
            report(host).map(|r| modes(&r)).unwrap_or_default(),
            tail(&host.log(WEAVER), 30)
        )
    })
}

/// Frames the sleeve exchanged with all peers of `host` (in + out).
pub fn sleeve_frames(host: &Host) -> Result<u64> {
    Ok(report(host)?
        .connections
        .iter()
        .map(|c| c.frames_in + c.frames_out)
        .sum())
}

/// Sends `bytes` zero bytes over TCP from pod `client` to pod `server`
/// (listening on `server_ip:5004` with `nc`), full-size segments with DF
/// set as Linux TCP sends them; fails unless all of them arrive within
/// `timeout`.
pub fn tcp_transfer(
    server: &str,
    server_ip: &str,
    client: &str,
    bytes: usize,
    timeout: Duration,
) -> Result<()> {
    let ns = server.to_owned();
    let secs = timeout.as_secs().max(1);
    let listener = std::thread::spawn(move || {
        in_pod(
            &ns,
            "bash",
            &["-c", &format!("timeout {secs} nc -l -N 5004 | wc -c")],
        )
    });
    wait_until(timeout, &format!("{bytes} bytes to cross"), || {
        Ok(in_pod(
            client,
            "bash",
            &[
                "-c",
                &format!("head -c {bytes} /dev/zero | nc -N -w 10 {server_ip} 5004"),
            ],
        )
        .ok())
    })?;
    let got = listener
        .join()
        .map_err(|_| anyhow::anyhow!("listener thread panicked"))??;
    if got.trim() != bytes.to_string() {
        bail!("{server} received {} of {bytes} bytes", got.trim());
    }
    Ok(())
}
