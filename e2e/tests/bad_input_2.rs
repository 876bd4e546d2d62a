// SPDX-License-Identifier: Apache-2.0
//! Garbage, a wrong protocol version, an oversized frame and a malformed
//! hello on port 6783, and malformed API requests: each is refused with a
//! clear log line or a 4xx answer, and the agent keeps working.

use std::time::Duration;

use anyhow::Result;
use weave_e2e::weave::{peer_addr, report, start_weaver, wait_for_mesh, WEAVER};
use weave_e2e::{wait_until, Host, TestBed, Topology};

/// Sends `bytes` (a printf format) to `addr:port` from inside `host` and
/// returns whatever comes back before the peer closes.
fn send_raw(host: &Host, addr: &str, port: u16, printf: &str) -> Result<String> {
    let script = format!(
        "exec 3<>/dev/tcp/{addr}/{port} && printf '{printf}' >&3 && timeout 5 cat <&3 || true"
    );
    host.run("bash", &["-c", &script])
}

#[test]
fn bad_input_is_refused_and_harmless() -> Result<()> {
    let bed = TestBed::new(Topology::Segment(2))?;
    let (h1, h2) = (bed.host(1), bed.host(2));
    start_weaver(h1, &[], &[])?;
    let target = h1.addr().to_string();

    // not our protocol: refused at the first bytes
    send_raw(h2, &target, 6783, "GET / HTTP/1.1\\r\\n\\r\\n")?;
    // a version we do not speak
    let reply = send_raw(h2, &target, 6783, "weave\\x09\\x09")?;
    assert!(
        reply.starts_with("weave"),
        "we still say who we are: {reply:?}"
    );
    // a frame length far above the cap
    send_raw(h2, &target, 6783, "weave\\x01\\x01\\xff\\xff\\xff\\xff")?;
    // a hello with a zero UID
    let mut hello = b"weave\x01\x01".to_vec();
    hello.extend_from_slice(&26u32.to_be_bytes()); // frame length
    hello.push(1); // tag: hello
    hello.extend_from_slice(&[2, 0, 0, 0, 0, 9]); // peer name
    hello.extend_from_slice(&[0; 8]); // uid 0: invalid
    hello.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1]); // connection id
    hello.extend_from_slice(&6783u16.to_be_bytes()); // listen port
    hello.push(0); // empty nickname
    let printf: String = hello.iter().map(|b| format!("\\x{b:02x}")).collect();
    send_raw(h2, &target, 6783, &printf)?;
    let r = wait_until(
        Duration::from_secs(10),
        "four protocol errors counted",
        || {
            let r = report(h1)?;
            Ok((r.stats.protocol_errors >= 4).then_some(r))
        },
    )
    .map_err(|e| e.context(h1.log(WEAVER)))?;
    assert!(
        r.connections.is_empty(),
        "bad connections are gone: {:?}",
        r.connections
    );
    let log = h1.log(WEAVER);
    for needle in [
        "not the weave protocol",
        "no common protocol version",
        "frame length 4294967295 outside",
        "invalid hello uid 0",
    ] {
        assert!(log.contains(needle), "log lacks {needle:?}:\n{log}");
    }

    // malformed API requests: 4xx with a JSON error, no change
    for (req, status) in [
        ("POST /connect HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 5\\r\\nConnection: close\\r\\n\\r\\n{bad}", "400"),
        ("POST /connect HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 17\\r\\nConnection: close\\r\\n\\r\\n{\"peers\":[\"1.2\"]}", "400"),
        ("POST /connect HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 12\\r\\nConnection: close\\r\\n\\r\\n{\"peers\":[]}", "400"),
        ("POST /forget HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 2\\r\\nConnection: close\\r\\n\\r\\n[]", "400"),
        ("GET /nope HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n", "404"),
    ] {
        let reply = send_raw(h1, "127.0.0.1", 6784, req)?;
        let first = reply.lines().next().unwrap_or_default();
        assert!(first.contains(status), "{req} -> {first}");
        assert!(reply.contains("\"error\""), "{reply}");
    }
    assert!(report(h1)?.targets.is_empty(), "nothing changed");

    // still fully working: a real peer joins
    start_weaver(h2, &[peer_addr(h1)], &[])?;
    wait_for_mesh(h1, &["h1", "h2"], 1, Duration::from_secs(20))?;
    assert!(h1.is_running(WEAVER));
    Ok(())
}
