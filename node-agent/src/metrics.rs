// SPDX-License-Identifier: Apache-2.0
//! Prometheus metrics (`GET /metrics` on `--metrics-addr`, default :6782),
//! rendered from the same [`Report`] that `weave report` prints, so the two
//! never disagree.

use std::fmt::Write;

use weave_api::prometheus::family;
use weave_api::{ConnectionReport, ConnectionState, Report};

/// Renders `r` in the Prometheus text exposition format (version 0.0.4).
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "weave_peers",
        "gauge",
        "Peers in the local view of the topology.",
    );
    let _ = writeln!(out, "weave_peers {}", r.peers.len());
    family(
        &mut out,
        "weave_connections",
        "gauge",
        "Connections of the local peer by state.",
    );
    for state in [
        ConnectionState::Established,
        ConnectionState::Pending,
        ConnectionState::Failed,
    ] {
        let n = r.connections.iter().filter(|c| c.state == state).count();
        let _ = writeln!(out, "weave_connections{{state=\"{}\"}} {n}", state.as_str());
    }
    family(
        &mut out,
        "weave_control_bytes_total",
        "counter",
        "Bytes on control connections.",
    );
    let _ = writeln!(
        out,
        "weave_control_bytes_total{{direction=\"in\"}} {}",
        r.stats.bytes_in
    );
    let _ = writeln!(
        out,
        "weave_control_bytes_total{{direction=\"out\"}} {}",
        r.stats.bytes_out
    );
    let counters = [
        (
            "weave_protocol_errors_total",
            "Control connections closed for a protocol error.",
            r.stats.protocol_errors,
        ),
        (
            "weave_auth_failures_total",
            "Handshakes refused: wrong password, or only one side has one.",
            r.stats.auth_failures,
        ),
        (
            "weave_decrypt_failures_total",
            "Sealed control frames that did not decrypt.",
            r.stats.decrypt_failures,
        ),
    ];
    for (name, help, value) in counters {
        family(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {value}");
    }
    family(
        &mut out,
        "weave_connections_encrypted",
        "gauge",
        "Connections whose frames are sealed.",
    );
    let _ = writeln!(
        out,
        "weave_connections_encrypted {}",
        r.connections.iter().filter(|c| c.encrypted).count()
    );
    if let Some(s) = &r.sleeve {
        family(&mut out, "weave_sleeve_mtu", "gauge", "Overlay MTU.");
        let _ = writeln!(out, "weave_sleeve_mtu {}", s.mtu);
        family(
            &mut out,
            "weave_connection_mtu",
            "gauge",
            "Overlay MTU each connection carries whole (narrower where the underlay path is).",
        );
        for c in &r.connections {
            if let (Some(peer), Some(mtu)) = (&c.peer, c.mtu) {
                let _ = writeln!(out, "weave_connection_mtu{{peer=\"{peer}\"}} {mtu}");
            }
        }
        type Pair = fn(&ConnectionReport) -> (u64, u64);
        let per_peer: [(&str, &str, Pair); 2] = [
            (
                "weave_sleeve_frames_total",
                "Frames exchanged with each peer.",
                |c| (c.frames_in, c.frames_out),
            ),
            (
                "weave_sleeve_bytes_total",
                "Datagram bytes exchanged with each peer.",
                |c| (c.data_bytes_in, c.data_bytes_out),
            ),
        ];
        for (name, help, values) in per_peer {
            family(&mut out, name, "counter", help);
            for c in &r.connections {
                let Some(peer) = &c.peer else { continue };
                let (rx, tx) = values(c);
                let _ = writeln!(out, "{name}{{peer=\"{peer}\",direction=\"in\"}} {rx}");
                let _ = writeln!(out, "{name}{{peer=\"{peer}\",direction=\"out\"}} {tx}");
            }
        }
        family(
            &mut out,
            "weave_sleeve_drops_total",
            "counter",
            "Frames and datagrams dropped, by reason.",
        );
        for (reason, n) in &s.drops {
            let _ = writeln!(out, "weave_sleeve_drops_total{{reason=\"{reason}\"}} {n}");
        }
        family(
            &mut out,
            "weave_sleeve_peer_drops_total",
            "counter",
            "The drops of weave_sleeve_drops_total that came from or were going to a connected peer, by peer and reason.",
        );
        for c in &r.connections {
            let Some(peer) = &c.peer else { continue };
            for (reason, n) in &c.drops {
                let _ = writeln!(
                    out,
                    "weave_sleeve_peer_drops_total{{peer=\"{peer}\",reason=\"{reason}\"}} {n}"
                );
            }
        }
        family(
            &mut out,
            "weave_sleeve_injected_total",
            "counter",
            "Frames from peers handed to the local bridge.",
        );
        let _ = writeln!(out, "weave_sleeve_injected_total {}", s.injected);
        family(
            &mut out,
            "weave_sleeve_superframes_total",
            "counter",
            "TCP super-frames carried whole in fragment datagrams.",
        );
        let _ = writeln!(
            out,
            "weave_sleeve_superframes_total{{direction=\"in\"}} {}\nweave_sleeve_superframes_total{{direction=\"out\"}} {}",
            s.superframes_in, s.superframes_out
        );
    }
    if let Some(dns) = &r.dns {
        render_dns(&mut out, dns);
    }
    if let Some(f) = &r.fastdp {
        render_fastdp(&mut out, r, f);
    }
    if let Some(ipam) = &r.ipam {
        render_ipam(&mut out, ipam);
    }
    out
}

/// weaveDNS: records, queries by type and result, upstream failures.
fn render_dns(out: &mut String, dns: &weave_api::DnsReport) {
    family(
        out,
        "weave_dns_entries",
        "gauge",
        "Live weaveDNS records by origin (local: registered on this peer).",
    );
    let _ = writeln!(
        out,
        "weave_dns_entries{{origin=\"local\"}} {}",
        dns.local_entries
    );
    let _ = writeln!(out, "weave_dns_entries{{origin=\"all\"}} {}", dns.entries);
    family(
        out,
        "weave_dns_queries_total",
        "counter",
        "DNS queries by type and result.",
    );
    for q in &dns.queries {
        let _ = writeln!(
            out,
            "weave_dns_queries_total{{type=\"{}\",result=\"{}\"}} {}",
            q.qtype, q.result, q.count
        );
    }
    family(
        out,
        "weave_dns_upstream_failures_total",
        "counter",
        "Queries forwarded upstream that got no answer.",
    );
    let _ = writeln!(
        out,
        "weave_dns_upstream_failures_total {}",
        dns.upstream_failures
    );
    family(
        out,
        "weave_dns_refused_records_total",
        "counter",
        "Gossiped records refused because a bound was reached.",
    );
    let _ = writeln!(
        out,
        "weave_dns_refused_records_total {}",
        dns.refused_records
    );
}

/// The fast path: each connection's mode (with the reason when it is the
/// sleeve), heartbeats, mode changes and forwarding entries.
fn render_fastdp(out: &mut String, r: &Report, f: &weave_api::FastdpReport) {
    family(
        out,
        "weave_connection_mode",
        "gauge",
        "Mode of each established connection (fastdp or sleeve) and why it is the sleeve.",
    );
    for c in &r.connections {
        let (Some(peer), Some(mode)) = (&c.peer, &c.mode) else {
            continue;
        };
        let reason = c.mode_reason.as_deref().unwrap_or("");
        let _ = writeln!(
            out,
            "weave_connection_mode{{peer=\"{peer}\",mode=\"{mode}\",reason=\"{}\"}} 1",
            reason.replace('\\', "\\\\").replace('"', "\\\"")
        );
    }
    family(
        out,
        "weave_fastdp_connections",
        "gauge",
        "Connections the kernel fast path carries.",
    );
    let _ = writeln!(out, "weave_fastdp_connections {}", f.connections);
    family(
        out,
        "weave_fastdp_heartbeats_total",
        "counter",
        "Fast-path heartbeats sent (out) and answered (in), answers received (ack), frames ignored.",
    );
    for (kind, n) in [
        ("out", f.heartbeats_out),
        ("in", f.heartbeats_in),
        ("ack", f.acks_in),
        ("ignored", f.ignored_in),
    ] {
        let _ = writeln!(out, "weave_fastdp_heartbeats_total{{kind=\"{kind}\"}} {n}");
    }
    for (name, help, value) in [
        (
            "weave_fastdp_mode_changes_total",
            "Changes of a connection between the fast path and the sleeve.",
            f.mode_changes,
        ),
        (
            "weave_fastdp_fdb_errors_total",
            "Forwarding-entry changes the kernel refused.",
            f.fdb_errors,
        ),
    ] {
        family(out, name, "counter", help);
        let _ = writeln!(out, "{name} {value}");
    }
    family(
        out,
        "weave_fastdp_entries",
        "gauge",
        "Forwarding entries of the fast path, by kind.",
    );
    for (kind, n) in [
        ("flood", f.flood_entries),
        ("remote", f.remote_entries),
        ("pinned", f.pinned_macs),
        ("local_macs", f.local_macs),
    ] {
        let _ = writeln!(out, "weave_fastdp_entries{{kind=\"{kind}\"}} {n}");
    }
}

/// IPAM gauges, named as Weave Net named them where they mean the same.
fn render_ipam(out: &mut String, ipam: &weave_api::IpamReport) {
    family(
        out,
        "weave_ips",
        "gauge",
        "Addresses handed out by this peer.",
    );
    let _ = writeln!(out, "weave_ips{{state=\"local-used\"}} {}", ipam.used);
    family(
        out,
        "weave_max_ips",
        "gauge",
        "Addresses in the allocation range.",
    );
    let _ = writeln!(out, "weave_max_ips {}", ipam.total);
    if let Some(me) = ipam.owners.iter().find(|o| o.local) {
        family(
            out,
            "weave_ipam_owned_ips",
            "gauge",
            "Addresses of the range this peer owns (its share), and how many of them are free.",
        );
        let _ = writeln!(
            out,
            "weave_ipam_owned_ips{{state=\"owned\"}} {}",
            me.addresses
        );
        let _ = writeln!(out, "weave_ipam_owned_ips{{state=\"free\"}} {}", me.free);
    }
    let unreachable: Vec<_> = ipam
        .owners
        .iter()
        .filter(|o| !o.reachable && o.addresses > 0)
        .collect();
    family(
        out,
        "weave_ipam_unreachable_count",
        "gauge",
        "Peers owning space that are unreachable.",
    );
    let _ = writeln!(out, "weave_ipam_unreachable_count {}", unreachable.len());
    family(
        out,
        "weave_ipam_unreachable_percentage",
        "gauge",
        "Share of the range owned by unreachable peers.",
    );
    let owned: u64 = unreachable.iter().map(|o| o.addresses).sum();
    let pct = if ipam.total == 0 {
        0.0
    } else {
        owned as f64 * 100.0 / ipam.total as f64
    };
    let _ = writeln!(out, "weave_ipam_unreachable_percentage {pct}");
    family(
        out,
        "weave_ipam_pending_allocates",
        "gauge",
        "Allocations waiting for consensus or space.",
    );
    let _ = writeln!(out, "weave_ipam_pending_allocates {}", ipam.pending);
    family(
        out,
        "weave_ipam_ready",
        "gauge",
        "1 when an allocation can proceed now.",
    );
    let _ = writeln!(out, "weave_ipam_ready {}", u8::from(ipam.ready));
}

#[cfg(test)]
mod tests {
    use super::*;
    use weave_api::*;

    /// A report with one established connection, a sleeve, the fast path, IPAM and DNS.
    fn sample() -> Report {
        Report {
            version: "0".into(),
            protocol: "1..1".into(),
            peer: LocalPeer {
                name: "02:00:00:00:00:01".into(),
                nickname: "h1".into(),
                uid: 1,
                version: 1,
            },
            peers: vec![],
            connections: vec![ConnectionReport {
                peer: Some("02:00:00:00:00:02".into()),
                nickname: Some("h2".into()),
                address: "10.0.0.2:6783".into(),
                state: ConnectionState::Established,
                outbound: true,
                mode: Some("sleeve".into()),
                mode_reason: Some("encryption: kernel cannot \"encrypt\"".into()),
                encrypted: true,
                info: String::new(),
                bytes_in: 0,
                bytes_out: 0,
                mtu: Some(1400),
                frames_in: 0,
                frames_out: 0,
                data_bytes_in: 0,
                data_bytes_out: 0,
                drops: [("malformed".to_string(), 1)].into_iter().collect(),
            }],
            targets: vec![],
            routes: vec![],
            stats: MeshStats {
                bytes_in: 5,
                bytes_out: 7,
                ..MeshStats::default()
            },
            sleeve: Some(SleeveReport {
                bridge: "weave".into(),
                mtu: 1436,
                injected: 3,
                superframes_in: 4,
                superframes_out: 5,
                offload: true,
                udp_gso: true,
                drops: [("malformed".to_string(), 2)].into_iter().collect(),
            }),
            fastdp: Some(FastdpReport {
                mode_changes: 3,
                heartbeats_out: 9,
                pinned_macs: 2,
                ..FastdpReport::default()
            }),
            ipam: Some(IpamReport {
                status: "ready".into(),
                ready: true,
                range: "10.32.0.0/12".parse().unwrap(),
                default_subnet: "10.32.0.0/12".parse().unwrap(),
                total: 1 << 20,
                used: 4,
                pending: 0,
                owners: vec![
                    IpamOwner {
                        name: "02:00:00:00:00:02".into(),
                        nickname: "h2".into(),
                        addresses: 1 << 19,
                        free: 0,
                        local: false,
                        reachable: false,
                    },
                    IpamOwner {
                        name: "02:00:00:00:00:01".into(),
                        nickname: "h1".into(),
                        addresses: 1 << 19,
                        free: (1 << 19) - 4,
                        local: true,
                        reachable: true,
                    },
                ],
                removed: vec![],
                state_bytes: 0,
            }),
            dns: Some(DnsReport {
                local_entries: 2,
                entries: 5,
                queries: vec![DnsQueryCount {
                    qtype: "A".into(),
                    result: "answer".into(),
                    count: 9,
                }],
                upstream_failures: 1,
                ..DnsReport::default()
            }),
        }
    }

    #[test]
    fn renders_families_and_labels() {
        let r = sample();
        let text = render(&r);
        assert!(
            text.contains("weave_dns_entries{origin=\"all\"} 5\n"),
            "{text}"
        );
        assert!(text.contains("weave_dns_queries_total{type=\"A\",result=\"answer\"} 9\n"));
        assert!(text.contains("weave_dns_upstream_failures_total 1\n"));
        assert!(
            text.contains("# TYPE weave_peers gauge\nweave_peers 0\n"),
            "{text}"
        );
        assert!(text.contains("weave_connections{state=\"established\"} 1\n"));
        assert!(
            text.contains("weave_connection_mode{peer=\"02:00:00:00:00:02\",mode=\"sleeve\",reason=\"encryption: kernel cannot \\\"encrypt\\\"\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("weave_fastdp_mode_changes_total 3\n"));
        assert!(text.contains("weave_fastdp_heartbeats_total{kind=\"out\"} 9\n"));
        assert!(text.contains("weave_fastdp_entries{kind=\"pinned\"} 2\n"));
        assert!(text.contains("weave_control_bytes_total{direction=\"out\"} 7\n"));
        assert!(text.contains("weave_sleeve_drops_total{reason=\"malformed\"} 2\n"));
        assert!(text.contains("weave_sleeve_mtu 1436\n"));
        assert!(text.contains(
            "# TYPE weave_connection_mtu gauge\nweave_connection_mtu{peer=\"02:00:00:00:00:02\"} 1400\n"
        ));
        assert!(
            text.contains("# TYPE weave_sleeve_peer_drops_total counter\nweave_sleeve_peer_drops_total{peer=\"02:00:00:00:00:02\",reason=\"malformed\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("weave_ipam_owned_ips{state=\"owned\"} 524288\n"));
        assert!(text.contains("weave_ipam_owned_ips{state=\"free\"} 524284\n"));
        assert!(text.contains("weave_sleeve_superframes_total{direction=\"in\"} 4\n"));
        assert!(text.contains("weave_sleeve_superframes_total{direction=\"out\"} 5\n"));
        assert!(
            text.contains("weave_ips{state=\"local-used\"} 4\n"),
            "{text}"
        );
        assert!(text.contains("weave_ipam_unreachable_count 1\n"));
        assert!(
            text.contains("weave_ipam_unreachable_percentage 50\n"),
            "{text}"
        );
        assert!(text.contains("weave_auth_failures_total 0\n"));
    }

    #[test]
    fn per_peer_series_follow_the_connections() {
        let mut r = sample();
        let mut fast = r.connections[0].clone();
        fast.peer = Some("02:00:00:00:00:03".into());
        fast.mode = Some("fastdp".into());
        fast.mtu = Some(1376);
        fast.drops = [("no_path".to_string(), 4), ("send_failed".to_string(), 5)]
            .into_iter()
            .collect();
        let mut failed = r.connections[0].clone();
        failed.peer = None;
        failed.state = ConnectionState::Failed;
        failed.mtu = None;
        r.connections.extend([fast, failed]);
        let text = render(&r);
        let series = |name: &str| -> Vec<&str> {
            text.lines()
                .filter(|l| l.starts_with(&format!("{name}{{")))
                .collect()
        };
        assert_eq!(
            series("weave_connection_mtu"),
            [
                "weave_connection_mtu{peer=\"02:00:00:00:00:02\"} 1400",
                "weave_connection_mtu{peer=\"02:00:00:00:00:03\"} 1376",
            ],
            "one series per connected peer, none for a connection without one"
        );
        assert_eq!(
            series("weave_sleeve_peer_drops_total"),
            [
                "weave_sleeve_peer_drops_total{peer=\"02:00:00:00:00:02\",reason=\"malformed\"} 1",
                "weave_sleeve_peer_drops_total{peer=\"02:00:00:00:00:03\",reason=\"no_path\"} 4",
                "weave_sleeve_peer_drops_total{peer=\"02:00:00:00:00:03\",reason=\"send_failed\"} 5",
            ]
        );
        // the global counter stays the whole
        assert_eq!(
            series("weave_sleeve_drops_total"),
            ["weave_sleeve_drops_total{reason=\"malformed\"} 2"]
        );
        // a peer that left has no series any more
        r.connections.truncate(1);
        let text = render(&r);
        assert!(!text.contains("02:00:00:00:00:03"), "{text}");
        assert!(text.contains("# TYPE weave_sleeve_peer_drops_total counter\n"));
    }
}
