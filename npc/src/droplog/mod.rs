// SPDX-License-Identifier: Apache-2.0
//! The drop log: reads the nflog group the accounting chains log to and writes one
//! structured line per dropped connection attempt, naming both ends (pods as
//! `namespace/name`), the protocol and ports, and what dropped it (the ClusterNetworkPolicy
//! rule, or the NetworkPolicies isolating the pod with none allowing), as [`explain`] finds
//! it on the current compiled state.
//!
//! Bounds: the kernel logs at most `--log-rate` entries per second per pod and direction
//! (the accounting chain's `limit`), so a flood costs a bounded amount whatever its size;
//! the per-pod counters still count every packet. Retransmissions of one attempt (a TCP SYN
//! sent again, the same 5-tuple) are logged once: recently logged flows are remembered in a
//! table of at most [`FLOWS`] entries for [`FLOW_TTL`].
//!
//! `weave_platform::nflog` opens the socket and parses the datagrams (fuzzed); [`run`] owns
//! the socket thread and the logging task.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::compile::Compiled;
use crate::explain::{explain, Endpoint, Reason};
use crate::metrics::Metrics;
use crate::policy::Protocol;
use weave_platform::nflog::{self, Entry, Packet};

/// Flows remembered to log each attempt once.
pub const FLOWS: usize = 4096;
/// How long a logged flow is remembered.
pub const FLOW_TTL: Duration = Duration::from_secs(30);
/// Bytes of each packet the kernel copies: IPv4 header with options and the ports.
const COPY: u32 = 128;
/// The prefix every accounting chain logs with.
const PREFIX: &str = "weave-npc ";

/// One drop log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropLine {
    /// `ingress` or `egress`: where it was dropped.
    pub direction: String,
    /// The local pod whose accounting chain dropped it (`namespace/name`).
    pub pod: String,
    /// Source (`namespace/name (ip)` or an address).
    pub src: String,
    /// Destination.
    pub dst: String,
    /// Protocol name.
    pub protocol: String,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// What dropped it.
    pub by: String,
    /// Policies to count the drop against (metrics label values).
    pub policies: Vec<String>,
}

/// Turns log entries into lines, once per flow.
#[derive(Debug, Default)]
pub struct DropLog {
    /// Recently logged flows and when.
    seen: HashMap<Packet, Instant>,
    /// The same, oldest first.
    order: VecDeque<(Packet, Instant)>,
}

impl DropLog {
    /// The line for `entry` at `now`, or `None` when it is not ours or repeats a flow logged
    /// less than [`FLOW_TTL`] ago.
    pub fn line(&mut self, entry: &Entry, now: Instant, compiled: &Compiled) -> Option<DropLine> {
        let rest = entry.prefix.strip_prefix(PREFIX)?;
        let mut words = rest.split_whitespace();
        let direction = words.next()?.to_owned();
        let pod = words.nth(1)?.trim_end_matches(':').to_owned();
        let packet = entry.packet?;
        self.expire(now);
        if self.seen.contains_key(&packet) {
            return None;
        }
        if self.order.len() >= FLOWS {
            if let Some((old, _)) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.seen.insert(packet, now);
        self.order.push_back((packet, now));
        let src = Endpoint::at(compiled, packet.src);
        let dst = Endpoint::at(compiled, packet.dst);
        let (by, policies) = match policy_protocol(&packet) {
            Some(proto) => {
                let e = explain(compiled, src.clone(), dst.clone(), proto, packet.dport);
                let d = if direction == "egress" {
                    &e.egress
                } else {
                    &e.ingress
                };
                if d.allowed {
                    (
                        "a policy that has changed since (now allowed)".into(),
                        Vec::new(),
                    )
                } else {
                    let policies = match &d.reason {
                        Reason::Cluster { policy, .. } => {
                            vec![format!("ClusterNetworkPolicy/{policy}")]
                        }
                        Reason::NetworkPolicy { isolating, .. } => isolating.clone(),
                        _ => Vec::new(),
                    };
                    (d.by(), policies)
                }
            }
            None => {
                let isolating = dst
                    .pod()
                    .filter(|_| direction == "ingress")
                    .or(src.pod().filter(|_| direction == "egress"))
                    .map(|p| {
                        compiled
                            .isolating(p, direction == "ingress")
                            .iter()
                            .map(|p| p.key())
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default();
                (
                    format!(
                        "no policy allows {} (isolated by {})",
                        packet.protocol_name(),
                        isolating.join(", ")
                    ),
                    isolating,
                )
            }
        };
        Some(DropLine {
            direction,
            pod,
            src: src.to_string(),
            dst: dst.to_string(),
            protocol: packet.protocol_name(),
            sport: packet.sport,
            dport: packet.dport,
            by,
            policies,
        })
    }

    /// Forgets flows older than [`FLOW_TTL`].
    fn expire(&mut self, now: Instant) {
        while let Some((packet, at)) = self.order.front().copied() {
            if now.duration_since(at) < FLOW_TTL {
                break;
            }
            self.order.pop_front();
            if self.seen.get(&packet) == Some(&at) {
                self.seen.remove(&packet);
            }
        }
    }
}

/// The transport protocol of `packet` as policy names it, if it is one.
fn policy_protocol(packet: &Packet) -> Option<Protocol> {
    match packet.protocol {
        6 => Some(Protocol::Tcp),
        17 => Some(Protocol::Udp),
        132 => Some(Protocol::Sctp),
        _ => None,
    }
}

/// Reads nflog `group` until `cancel`, logging a line per dropped connection attempt. A
/// socket that cannot be bound (another reader, no capability) is reported once and the
/// drop log stays off; enforcement is unaffected.
pub async fn run(
    group: u16,
    compiled: Arc<RwLock<Option<Compiled>>>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let socket = match weave_platform::nflog::NflogSocket::bind(group, COPY) {
        Ok(s) => s,
        Err(err) => {
            warn!(group, error = %err, "cannot read the nflog group; drops are counted but not logged");
            return;
        }
    };
    // Wake up now and then, so that the thread sees the receiver gone after a shutdown.
    if let Err(err) = socket.set_read_timeout(Duration::from_secs(1)) {
        warn!(group, error = %err, "set the nflog socket's timeout");
    }
    info!(group, "logging dropped connections");
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(256);
    let lost = Arc::clone(&metrics);
    // recv blocks for at most a second; the thread ends when the receiver is gone.
    let spawned = std::thread::Builder::new()
        .name("nflog".into())
        .spawn(move || {
            let mut buf = vec![0u8; 65536];
            loop {
                match socket.recv(&mut buf) {
                    Ok(n) => match tx.try_send(buf[..n].to_vec()) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => lost.drop_log_lost(1),
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    },
                    // The socket buffer overflowed: entries were lost.
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => lost.drop_log_lost(1),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if tx.is_closed() {
                            return;
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "nflog socket failed; drops are no longer logged");
                        return;
                    }
                }
            }
        });
    if let Err(err) = spawned {
        warn!(error = %err, "start the nflog reader");
        return;
    }
    let mut log = DropLog::default();
    loop {
        let datagram = tokio::select! {
            () = cancel.cancelled() => return,
            d = rx.recv() => match d { Some(d) => d, None => return },
        };
        for entry in nflog::parse(&datagram) {
            let Ok(entry) = entry else {
                metrics.drop_log_malformed();
                continue;
            };
            let line = {
                let guard = compiled
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let Some(c) = guard.as_ref() else { continue };
                log.line(&entry, Instant::now(), c)
            };
            match line {
                Some(l) => {
                    info!(
                        target: "weave_npc::drop",
                        direction = %l.direction,
                        src = %l.src,
                        dst = %l.dst,
                        protocol = %l.protocol,
                        sport = l.sport,
                        dport = l.dport,
                        policy = %l.by,
                        "connection denied"
                    );
                    metrics.drop_logged(&l.direction, &l.policies);
                }
                None => metrics.drop_log_repeated(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{compile, NodeConfig, Snapshot};
    use serde_json::json;
    use std::net::Ipv4Addr;

    fn compiled() -> Compiled {
        let mut s = Snapshot::default();
        s.namespaces
            .push(serde_json::from_value(json!({"metadata": {"name": "x"}})).expect("ns"));
        for (name, ip) in [("a", "10.32.0.1"), ("b", "10.32.0.2")] {
            s.pods.push(
                serde_json::from_value(
                    json!({"metadata": {"name": name, "namespace": "x", "labels": {"pod": name}},
                    "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
                    "status": {"phase": "Running", "podIP": ip}}),
                )
                .expect("pod"),
            );
        }
        s.policies.push(
            serde_json::from_value(json!({"metadata": {"name": "deny", "namespace": "x"},
                "spec": {"podSelector": {"matchLabels": {"pod": "b"}}, "policyTypes": ["Ingress"]}}))
            .expect("policy"),
        );
        compile(
            &s,
            &NodeConfig {
                node_name: "n1".into(),
                ..NodeConfig::default()
            },
        )
    }

    fn entry(prefix: &str, sport: u16) -> Entry {
        Entry {
            group: 86,
            prefix: prefix.into(),
            packet: Some(Packet {
                src: Ipv4Addr::new(10, 32, 0, 1),
                dst: Ipv4Addr::new(10, 32, 0, 2),
                protocol: 6,
                sport,
                dport: 80,
            }),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_line_per_flow_naming_pods_and_policy() {
        let c = compiled();
        let mut log = DropLog::default();
        let now = Instant::now();
        let e = entry("weave-npc ingress denied x/b: ", 40000);
        let line = log.line(&e, now, &c).expect("a line");
        assert_eq!(line.src, "x/a (10.32.0.1)");
        assert_eq!(line.dst, "x/b (10.32.0.2)");
        assert_eq!(line.by, "NetworkPolicy default deny (x/deny)");
        assert_eq!(line.policies, ["x/deny"]);
        assert_eq!(
            (line.direction.as_str(), line.pod.as_str()),
            ("ingress", "x/b")
        );
        // The retransmitted SYN is not logged again; another flow is.
        assert!(log.line(&e, now + Duration::from_secs(1), &c).is_none());
        assert!(log
            .line(&entry("weave-npc ingress denied x/b: ", 40001), now, &c)
            .is_some());
        // After the TTL the flow is logged again.
        assert!(log
            .line(&e, now + FLOW_TTL + Duration::from_secs(1), &c)
            .is_some());
        // Not ours.
        assert!(log.line(&entry("someone else: ", 1), now, &c).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_flow_table_is_bounded() {
        let c = compiled();
        let mut log = DropLog::default();
        let now = Instant::now();
        for port in 0..(FLOWS + 100) {
            let sport = u16::try_from(port % 65536).expect("port");
            let _ = log.line(&entry("weave-npc ingress denied x/b: ", sport), now, &c);
        }
        assert!(log.seen.len() <= FLOWS && log.order.len() <= FLOWS);
    }
}
