// SPDX-License-Identifier: Apache-2.0
//! Tiny TCP and UDP servers that name the peer they saw, run from threads of the test
//! process inside a namespace, and their clients: enough to tell which server answered and
//! which address a NAT rule gave the client.

use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::{in_netns, wait_until};

/// Serves TCP on `port` in namespace `ns` from a thread of this process: each connection is
/// answered with `tag` and the peer's address, then closed.
pub fn serve(ns: &str, port: u16, tag: &'static str) -> Result<()> {
    let listener = in_netns(ns, move || {
        TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("bind {port}"))
    })?;
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let peer = conn
                .peer_addr()
                .map(|p| p.ip().to_string())
                .unwrap_or_default();
            let _ = writeln!(conn, "{tag} {peer}");
        }
    });
    Ok(())
}

/// Connects from namespace `ns` to `dst` and returns what the server said.
pub fn ask(ns: &str, dst: SocketAddrV4) -> Result<String> {
    in_netns(ns, move || connect(dst))
}

/// Connects from the calling thread's namespace to `dst` and returns what the server said.
pub fn connect(dst: SocketAddrV4) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&SocketAddr::V4(dst), Duration::from_secs(2))
        .with_context(|| format!("connect to {dst}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .with_context(|| format!("read from {dst}"))?;
    Ok(out.trim().to_string())
}

/// Waits until `ns` gets an answer from `dst` that starts with `tag`; returns it.
pub fn wait_answer(ns: &str, dst: SocketAddrV4, tag: &str) -> Result<String> {
    wait_until(
        Duration::from_secs(15),
        &format!("{ns} to get {tag:?} from {dst}"),
        || Ok(ask(ns, dst).ok().filter(|a| a.starts_with(tag))),
    )
}

/// Serves UDP on `port` in namespace `ns` from a thread of this process: each datagram is
/// answered with `tag` and the sender's address.
pub fn serve_udp(ns: &str, port: u16, tag: &'static str) -> Result<()> {
    let sock = in_netns(ns, move || {
        UdpSocket::bind(("0.0.0.0", port)).with_context(|| format!("bind udp {port}"))
    })?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((_, peer)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(format!("{tag} {}", peer.ip()).as_bytes(), peer);
        }
    });
    Ok(())
}

/// Sends one datagram from a fresh socket (a new source port, so no earlier conntrack entry
/// applies) in namespace `ns` to `dst`; returns the answer. An ICMP port unreachable is an
/// error (`ECONNREFUSED` on the connected socket), as is no answer within a second.
pub fn ask_udp(ns: &str, dst: SocketAddrV4) -> Result<String> {
    in_netns(ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect(dst)?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        s.send(b"hello")?;
        let mut buf = [0u8; 1500];
        let n = s
            .recv(&mut buf)
            .with_context(|| format!("udp answer from {dst}"))?;
        Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
    })
}

/// Waits until `ns` gets a UDP answer from `dst` that starts with `tag`; returns it.
pub fn wait_answer_udp(ns: &str, dst: SocketAddrV4, tag: &str) -> Result<String> {
    wait_until(
        Duration::from_secs(15),
        &format!("{ns} to get {tag:?} from udp {dst}"),
        || Ok(ask_udp(ns, dst).ok().filter(|a| a.starts_with(tag))),
    )
}
