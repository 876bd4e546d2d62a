// SPDX-License-Identifier: Apache-2.0
//! Privileged tests of the test bed itself, with real traffic (ping) between its hosts.
//!
//! They need root and fail loudly without it (`TestBed::new` refuses), never skip. Everything
//! they touch lives in namespaces the test bed creates; each test checks that nothing of its
//! own is left behind where that is the point.

use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use weave_e2e::{wait_until, Host, TestBed, Topology};

/// Long enough for a veth or bridge port to come up and ARP to resolve, on a loaded machine.
const REACH_TIMEOUT: Duration = Duration::from_secs(10);

/// One ping from `from` to `to` with a one-second timeout; true if it was answered.
fn ping(from: &Host, to: Ipv4Addr) -> bool {
    from.cmd("ping")
        .args(["-c1", "-W1", &to.to_string()])
        .output()
        .expect("run ping (is iputils-ping installed?)")
        .status
        .success()
}

/// Waits until `from` gets an answer from `to`.
fn reaches(from: &Host, to: Ipv4Addr) -> Result<()> {
    wait_until(
        REACH_TIMEOUT,
        &format!("{} to reach {to}", from.name()),
        || Ok(ping(from, to).then_some(())),
    )
}

/// Asserts that a ping from `from` to `to` goes unanswered.
fn assert_unreachable(from: &Host, to: Ipv4Addr) {
    assert!(!ping(from, to), "{} unexpectedly reached {to}", from.name());
}

/// Names in `ip netns list` that start with `<prefix>-`.
fn namespaces_of(prefix: &str) -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("run ip netns list");
    assert!(out.status.success(), "ip netns list failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(&format!("{prefix}-")))
        .map(str::to_owned)
        .collect()
}

#[test]
fn segment_hosts_reach_each_other() -> Result<()> {
    let bed = TestBed::new(Topology::Segment(3))?;
    assert_eq!(bed.hosts().len(), 3);
    assert_eq!(bed.host(2).addr(), Ipv4Addr::new(10, 250, 0, 2));
    assert_eq!(bed.host(3).name(), "h3");
    for from in bed.hosts() {
        for to in bed.hosts() {
            if from.name() != to.name() {
                reaches(from, to.addr())?;
            }
        }
    }
    Ok(())
}

#[test]
fn links_do_not_forward() -> Result<()> {
    let bed = TestBed::new(Topology::Links {
        hosts: 3,
        links: vec![(1, 2), (2, 3)],
    })?;
    let (h1, h2, h3) = (bed.host(1), bed.host(2), bed.host(3));
    assert_eq!(h1.addrs(), [Ipv4Addr::new(10, 251, 0, 1)]);
    assert_eq!(
        h2.addrs(),
        [Ipv4Addr::new(10, 251, 0, 2), Ipv4Addr::new(10, 251, 1, 2)]
    );
    assert_eq!(h3.addrs(), [Ipv4Addr::new(10, 251, 1, 3)]);
    reaches(h1, Ipv4Addr::new(10, 251, 0, 2))?;
    reaches(h2, Ipv4Addr::new(10, 251, 1, 3))?;
    reaches(h3, Ipv4Addr::new(10, 251, 1, 2))?;

    // Give h1 and h3 routes through h2, so only h2's refusal to forward keeps them apart.
    h1.run(
        "ip",
        &["route", "add", "10.251.1.0/24", "via", "10.251.0.2"],
    )?;
    h3.run(
        "ip",
        &["route", "add", "10.251.0.0/24", "via", "10.251.1.2"],
    )?;
    assert_eq!(
        h2.run("cat", &["/proc/sys/net/ipv4/ip_forward"])?.trim(),
        "0"
    );
    assert_unreachable(h1, h3.addr());

    // A cut works on point-to-point links as well.
    bed.cut(1, 2)?;
    assert_unreachable(h1, h2.addr());
    bed.restore(1, 2)?;
    reaches(h1, h2.addr())?;
    Ok(())
}

#[test]
fn cut_and_restore() -> Result<()> {
    let bed = TestBed::new(Topology::Segment(3))?;
    let (h1, h2, h3) = (bed.host(1), bed.host(2), bed.host(3));
    reaches(h1, h2.addr())?;
    reaches(h1, h3.addr())?;

    bed.cut(1, 2)?;
    bed.cut(2, 1)?; // idempotent, either order
    assert_unreachable(h1, h2.addr());
    assert_unreachable(h2, h1.addr());
    reaches(h1, h3.addr())?;
    reaches(h2, h3.addr())?;

    bed.restore(1, 2)?;
    bed.restore(1, 2)?; // idempotent
    reaches(h1, h2.addr())?;
    reaches(h2, h1.addr())?;

    assert!(bed.cut(1, 1).is_err(), "a host cannot be cut from itself");
    assert!(bed.cut(1, 4).is_err(), "there is no host 4");
    Ok(())
}

#[test]
fn packet_loss() -> Result<()> {
    let bed = TestBed::new(Topology::Segment(2))?;
    let (h1, h2) = (bed.host(1), bed.host(2));
    reaches(h1, h2.addr())?;
    bed.set_loss(2, 100)?;
    assert_unreachable(h1, h2.addr());
    // Loss and cuts share one table: changing one keeps the other.
    bed.cut(1, 2)?;
    bed.restore(1, 2)?;
    assert_unreachable(h1, h2.addr());
    bed.set_loss(2, 0)?;
    reaches(h1, h2.addr())?;
    assert!(bed.set_loss(2, 101).is_err(), "101 % is not a percentage");
    Ok(())
}

#[test]
fn spawn_kill_stop_and_log() -> Result<()> {
    let bed = TestBed::new(Topology::Segment(1))?;
    let h1 = bed.host(1);
    h1.spawn("sleeper", Path::new("/bin/sleep"), &["1000".into()], &[])?;
    assert!(h1.is_running("sleeper"));
    let pid = h1.pid("sleeper").expect("a running process has a pid");

    // The process runs in the host's namespace (once `ip netns exec` has entered it).
    let ns_inode = std::fs::metadata(format!("/run/netns/{}", h1.netns()))?.ino();
    let expected = format!("net:[{ns_inode}]");
    wait_until(Duration::from_secs(5), "sleeper in h1's namespace", || {
        let link = std::fs::read_link(format!("/proc/{pid}/ns/net"))?;
        Ok((link.to_string_lossy() == expected).then_some(()))
    })?;

    assert!(
        h1.spawn("sleeper", Path::new("/bin/sleep"), &["1".into()], &[])
            .is_err(),
        "a running name cannot be reused"
    );
    h1.kill("sleeper")?;
    assert!(!h1.is_running("sleeper"));
    assert_eq!(h1.pid("sleeper"), None);
    h1.kill("sleeper")?; // killing an ended process is fine
    assert!(h1.kill("nobody").is_err(), "unknown names are errors");

    // Output and environment reach the log; SIGTERM stops a well-behaved process.
    h1.spawn(
        "talker",
        Path::new("/bin/sh"),
        &["-c".into(), "echo hello $GREETEE; exec sleep 1000".into()],
        &[("GREETEE".into(), "world".into())],
    )?;
    wait_until(Duration::from_secs(5), "talker's log line", || {
        Ok(h1.log("talker").contains("hello world").then_some(()))
    })?;
    h1.stop("talker")?;
    assert!(!h1.is_running("talker"));
    assert_eq!(h1.log("nobody"), "");
    Ok(())
}

#[test]
fn drop_removes_everything() -> Result<()> {
    let bed = TestBed::new(Topology::Segment(2))?;
    let prefix = bed.prefix().to_owned();
    let run_dir = bed.run_dir().to_owned();
    let pod = bed.add_pod_netns(1, "pod-a")?;
    assert_eq!(pod, format!("{prefix}-h1-pod-a"));
    bed.host(2)
        .spawn("sleeper", Path::new("/bin/sleep"), &["1000".into()], &[])?;
    let pid = bed.host(2).pid("sleeper").expect("running");
    let mut names = namespaces_of(&prefix);
    names.sort();
    let mut expected = vec![
        format!("{prefix}-h1"),
        pod,
        format!("{prefix}-h2"),
        format!("{prefix}-ul"),
    ];
    expected.sort();
    assert_eq!(names, expected);
    assert!(run_dir.join("h1").is_dir() && run_dir.join("h2").is_dir());

    drop(bed);
    assert_eq!(namespaces_of(&prefix), Vec::<String>::new());
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "pid {pid}");
    assert!(!run_dir.exists(), "{} was not removed", run_dir.display());
    Ok(())
}

#[test]
fn panic_removes_namespaces_and_keeps_logs() {
    let result = std::panic::catch_unwind(|| {
        let bed = TestBed::new(Topology::Links {
            hosts: 2,
            links: vec![(1, 2)],
        })
        .expect("build test bed");
        let info = (bed.prefix().to_owned(), bed.run_dir().to_owned());
        std::panic::panic_any(info);
    });
    let payload = result.expect_err("the closure panics");
    let (prefix, run_dir) = payload
        .downcast_ref::<(String, std::path::PathBuf)>()
        .expect("the payload is the bed's prefix and run dir")
        .clone();
    assert_eq!(namespaces_of(&prefix), Vec::<String>::new());
    assert!(run_dir.join("h1").is_dir(), "logs are kept after a panic");
    std::fs::remove_dir_all(&run_dir).expect("remove the kept run dir");
}

#[test]
fn bad_requests_change_nothing() -> Result<()> {
    assert!(TestBed::new(Topology::Segment(0)).is_err());
    let bed = TestBed::new(Topology::Segment(1))?;
    assert!(bed.add_pod_netns(2, "p").is_err(), "no host 2");
    assert!(bed.add_pod_netns(1, "a/b").is_err(), "bad pod name");
    assert!(bed
        .host(1)
        .spawn("../x", Path::new("/bin/true"), &[], &[])
        .is_err());
    let missing = std::panic::catch_unwind(|| bed.host(9).name().to_owned());
    assert!(missing.is_err(), "host(9) panics");
    assert_eq!(namespaces_of(bed.prefix()).len(), 2);
    Ok(())
}

#[test]
fn hosts_are_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Host>();
    assert_send_sync::<TestBed>();
}
