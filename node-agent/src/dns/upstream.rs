// SPDX-License-Identifier: Apache-2.0
//! Forwarding names outside the domain to the upstream servers of
//! `--resolv-conf`: the file is parsed into a list of servers (never our own
//! listening addresses, so we never ask ourselves), re-read when it
//! changes, and queries go to the servers in order, each with its own
//! deadline, from a fresh socket with a random ID and source port.
//!
//! Failures answer SERVFAIL quickly: a refused or unreachable server is
//! skipped at once, a silent one after `--dns-upstream-timeout`. At most
//! [`MAX_INFLIGHT`] forwards run at once; beyond that a query is answered
//! SERVFAIL at once instead of holding a socket (a flood of queries for a
//! silent upstream cannot pile up tasks and sockets). Upstream failures are
//! counted and logged at most once per [`LOG_EVERY`].

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use hickory_server::proto::op::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{watch, Semaphore};
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Forwards running at once.
pub const MAX_INFLIGHT: usize = 512;
/// Upstream failures are logged at most this often.
pub const LOG_EVERY: Duration = Duration::from_secs(10);
/// How often `--resolv-conf` is checked for changes.
pub const RESOLV_POLL: Duration = Duration::from_secs(1);
/// Servers used from the file (glibc reads three).
const MAX_SERVERS: usize = 3;

/// The upstream servers, as last read.
pub type Servers = Arc<Vec<SocketAddr>>;

/// Why a forward failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    /// `--resolv-conf` names no server (other than ourselves).
    #[error("no upstream DNS server in the resolver configuration")]
    NoUpstream,
    /// Too many forwards in flight.
    #[error("too many queries waiting for upstream servers")]
    Busy,
    /// Every server failed; the last error.
    #[error("upstream DNS servers failed: {0}")]
    Failed(String),
}

/// Parses `nameserver` lines of a resolv.conf, dropping `exclude` (our own
/// listening addresses) and servers past the third.
pub fn parse_resolv_conf(text: &str, exclude: &[SocketAddr]) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let l = l.split(['#', ';']).next().unwrap_or("");
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
        })
        // Link-local IPv6 with a zone (fe80::1%eth0) is not supported.
        .filter_map(|w| w.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .filter(|a| !is_ours(a, exclude))
        .take(MAX_SERVERS)
        .collect()
}

/// Whether `server` is one of our listening addresses `ours` (all loopback
/// addresses count when we listen on the unspecified address).
pub fn is_ours(server: &SocketAddr, ours: &[SocketAddr]) -> bool {
    ours.iter().any(|e| {
        e.port() == server.port()
            && (e.ip() == server.ip()
                || (e.ip().is_unspecified()
                    && (server.ip().is_loopback() || server.ip().is_unspecified())))
    })
}

/// Identity of a file version: re-read when any of it changes.
fn stamp(path: &Path) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// Reads `path` into a server list (empty when unreadable); our own
/// addresses are left out when forwarding, as they change.
fn read_servers(path: &Path) -> Vec<SocketAddr> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_resolv_conf(&text, &[]),
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot read the resolver configuration; names outside the domain will fail");
            Vec::new()
        }
    }
}

/// Follows `--resolv-conf`: reads it now, then re-reads it when it changes.
#[derive(Debug)]
pub struct ResolvWatch {
    path: PathBuf,
    tx: watch::Sender<Servers>,
}

impl ResolvWatch {
    /// Reads `path` once; the receiver follows later changes once [`Self::run`] runs.
    pub fn new(path: PathBuf) -> (Self, watch::Receiver<Servers>) {
        let servers = read_servers(&path);
        info!(path = %path.display(), upstream = ?servers, "DNS upstream servers");
        let (tx, rx) = watch::channel(Arc::new(servers));
        (Self { path, tx }, rx)
    }

    /// Polls the file every [`RESOLV_POLL`] until `cancel` fires. Reading a
    /// small file is fast: done on the runtime.
    pub async fn run(self, cancel: CancellationToken) -> crate::Result<()> {
        let mut last = stamp(&self.path);
        let mut tick = tokio::time::interval(RESOLV_POLL);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            let now = stamp(&self.path);
            if now == last {
                continue;
            }
            last = now;
            let servers = read_servers(&self.path);
            if **self.tx.borrow() != servers {
                info!(path = %self.path.display(), upstream = ?servers, "DNS upstream servers changed");
                self.tx.send_replace(Arc::new(servers));
            }
        }
    }
}

/// Logs a warning at most once per [`LOG_EVERY`], with the count of the
/// ones held back.
#[derive(Debug, Default)]
struct LogLimit {
    last: Mutex<Option<Instant>>,
    held: AtomicU64,
}

impl LogLimit {
    fn warn(&self, error: &ForwardError, qname: &str) {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if last.is_some_and(|t| now < t + LOG_EVERY) {
            self.held.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = Some(now);
        drop(last);
        let held = self.held.swap(0, Ordering::Relaxed);
        warn!(%error, name = qname, similar_failures_not_logged = held, "forwarding to upstream DNS failed");
    }
}

/// Sends queries to the upstream servers.
#[derive(Debug)]
pub struct Forwarder {
    servers: watch::Receiver<Servers>,
    ours: watch::Receiver<Servers>,
    timeout: Duration,
    inflight: Semaphore,
    failures: AtomicU64,
    log: LogLimit,
}

impl Forwarder {
    /// Forwards to the servers `servers` follows, waiting `timeout` for
    /// each, skipping our own listening addresses as `ours` follows them.
    pub fn new(
        servers: watch::Receiver<Servers>,
        ours: watch::Receiver<Servers>,
        timeout: Duration,
    ) -> Self {
        Self {
            servers,
            ours,
            timeout,
            inflight: Semaphore::new(MAX_INFLIGHT),
            failures: AtomicU64::new(0),
            log: LogLimit::default(),
        }
    }

    /// The servers used now (never one of our own addresses).
    pub fn servers(&self) -> Vec<SocketAddr> {
        let ours = self.ours.borrow().clone();
        self.servers
            .borrow()
            .iter()
            .filter(|s| !is_ours(s, &ours))
            .copied()
            .collect()
    }

    /// Forwards that failed.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Sends the raw query `query` (its ID is replaced) to the servers in
    /// turn, over TCP when `tcp`; returns the first answer. `max_size` is
    /// the largest UDP answer the client accepts.
    pub async fn forward(
        &self,
        query: &[u8],
        tcp: bool,
        max_size: u16,
        qname: &str,
    ) -> Result<Message, ForwardError> {
        let r = self.try_forward(query, tcp, max_size).await;
        if let Err(e) = &r {
            self.failures.fetch_add(1, Ordering::Relaxed);
            self.log.warn(e, qname);
        }
        r
    }

    async fn try_forward(
        &self,
        query: &[u8],
        tcp: bool,
        max_size: u16,
    ) -> Result<Message, ForwardError> {
        let servers = self.servers();
        if servers.is_empty() {
            return Err(ForwardError::NoUpstream);
        }
        let _permit = self
            .inflight
            .try_acquire()
            .map_err(|_| ForwardError::Busy)?;
        let mut last = String::new();
        for server in servers.iter() {
            let deadline = Instant::now() + self.timeout;
            let id: u16 = rand::random();
            let mut q = query.to_vec();
            if q.len() < 12 {
                return Err(ForwardError::Failed("query shorter than a header".into()));
            }
            q[..2].copy_from_slice(&id.to_be_bytes());
            let answer = if tcp {
                ask_tcp(*server, &q, deadline).await
            } else {
                ask_udp(*server, &q, id, max_size, deadline).await
            };
            match answer.and_then(|bytes| {
                Message::from_vec(&bytes)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
            }) {
                Ok(m) if m.metadata.id == id => return Ok(m),
                Ok(_) => last = format!("{server}: answer with another ID"),
                Err(e) => last = format!("{server}: {e}"),
            }
        }
        Err(ForwardError::Failed(last))
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "no answer in time")
}

async fn ask_udp(
    server: SocketAddr,
    query: &[u8],
    id: u16,
    max_size: u16,
    deadline: Instant,
) -> io::Result<Vec<u8>> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(local).await?;
    // Connected: only the server's datagrams arrive, and an ICMP port
    // unreachable fails the receive at once (ECONNREFUSED).
    sock.connect(server).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; usize::from(max_size.max(512))];
    loop {
        let n = timeout_at(deadline, sock.recv(&mut buf))
            .await
            .map_err(|_| timed_out())??;
        if n >= 12 && buf[..2] == id.to_be_bytes() {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn ask_tcp(server: SocketAddr, query: &[u8], deadline: Instant) -> io::Result<Vec<u8>> {
    let io = async {
        let mut s = TcpStream::connect(server).await?;
        let len = u16::try_from(query.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "query too long"))?;
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(query);
        s.write_all(&framed).await?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len).await?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut buf).await?;
        Ok(buf)
    };
    timeout_at(deadline, io).await.map_err(|_| timed_out())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_servers_skip_ourselves_and_junk() {
        let text = "# generated\nsearch example.com\nnameserver 10.0.0.2\nnameserver 10.32.0.1 # us\n\
                    nameserver fe80::1%eth0\nnameserver bogus\n  nameserver   fd00::53\nnameserver 127.0.0.1\n\
                    options ndots:2\nnameserver 10.0.0.3\nnameserver 10.0.0.4\n";
        let us: SocketAddr = "10.32.0.1:53".parse().unwrap();
        let got = parse_resolv_conf(text, &[us]);
        let want: Vec<SocketAddr> = ["10.0.0.2:53", "[fd00::53]:53", "127.0.0.1:53"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(got, want);
        // Listening on every address: loopback is us too.
        let any: SocketAddr = "0.0.0.0:53".parse().unwrap();
        let got = parse_resolv_conf("nameserver 127.0.0.1\nnameserver 10.0.0.2\n", &[any]);
        assert_eq!(got, vec!["10.0.0.2:53".parse::<SocketAddr>().unwrap()]);
        // Another port is not us.
        let other: SocketAddr = "10.0.0.2:5353".parse().unwrap();
        assert_eq!(parse_resolv_conf("nameserver 10.0.0.2", &[other]).len(), 1);
    }

    #[tokio::test]
    async fn no_server_and_a_refusing_server_fail_at_once() {
        let (_tx, rx) = watch::channel(Arc::new(Vec::new()));
        let (_otx, ours) = watch::channel(Arc::new(Vec::new()));
        let f = Forwarder::new(rx, ours.clone(), Duration::from_secs(5));
        let q = Message::query().to_vec().unwrap();
        assert_eq!(
            f.forward(&q, false, 512, "x.").await.unwrap_err(),
            ForwardError::NoUpstream
        );
        // A port nobody listens on, on loopback: refused, not a timeout.
        let idle = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = idle.local_addr().unwrap();
        drop(idle);
        let (_tx, rx) = watch::channel(Arc::new(vec![addr]));
        let f = Forwarder::new(rx.clone(), ours, Duration::from_secs(5));
        let start = Instant::now();
        let e = f.forward(&q, false, 512, "x.").await.unwrap_err();
        assert!(matches!(e, ForwardError::Failed(_)), "{e}");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "refusal is not a timeout"
        );
        assert_eq!(f.failures(), 1);
        // The same server as our own address is never asked.
        let (_otx, ours) = watch::channel(Arc::new(vec![addr]));
        let f = Forwarder::new(rx, ours, Duration::from_secs(5));
        assert_eq!(
            f.forward(&q, false, 512, "x.").await.unwrap_err(),
            ForwardError::NoUpstream
        );
    }
}
