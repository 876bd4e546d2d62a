// SPDX-License-Identifier: Apache-2.0
//! Prometheus metrics (`GET /metrics` on `--metrics-addr`, default :6782),
//! rendered from the same [`Report`] that `weave report` prints, so the two
//! never disagree.

use std::fmt::Write;

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
    let _ = writeln!(
        out,
        "# HELP weave_control_bytes_total Bytes on control connections.\n# TYPE weave_control_bytes_total counter"
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
    let _ = writeln!(
        out,
        "# HELP weave_protocol_errors_total Control connections closed for a protocol error.\n# TYPE weave_protocol_errors_total counter\nweave_protocol_errors_total {}",
        r.stats.protocol_errors
    );
    let _ = writeln!(
        out,
        "# HELP weave_auth_failures_total Handshakes refused: wrong password, or only one side has one.\n# TYPE weave_auth_failures_total counter\nweave_auth_failures_total {}",
        r.stats.auth_failures
    );
    let _ = writeln!(
        out,
        "# HELP weave_decrypt_failures_total Sealed control frames that did not decrypt.\n# TYPE weave_decrypt_failures_total counter\nweave_decrypt_failures_total {}",
        r.stats.decrypt_failures
    );
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
        let _ = writeln!(out, "# HELP weave_sleeve_mtu Overlay MTU.\n# TYPE weave_sleeve_mtu gauge\nweave_sleeve_mtu {}", s.mtu);
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
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for c in &r.connections {
                let Some(peer) = &c.peer else { continue };
                let (rx, tx) = values(c);
                let _ = writeln!(out, "{name}{{peer=\"{peer}\",direction=\"in\"}} {rx}");
                let _ = writeln!(out, "{name}{{peer=\"{peer}\",direction=\"out\"}} {tx}");
            }
        }
        let _ = writeln!(
            out,
            "# HELP weave_sleeve_drops_total Frames and datagrams dropped, by reason.\n# TYPE weave_sleeve_drops_total counter"
        );
        for (reason, n) in &s.drops {
            let _ = writeln!(out, "weave_sleeve_drops_total{{reason=\"{reason}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP weave_sleeve_injected_total Frames from peers handed to the local bridge.\n# TYPE weave_sleeve_injected_total counter\nweave_sleeve_injected_total {}",
            s.injected
        );
    }
    out
}

/// Writes the HELP and TYPE lines of a metric family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use weave_api::*;

    #[test]
    fn renders_families_and_labels() {
        let r = Report {
            version: "0".into(),
            protocol: "1..1".into(),
            peer: LocalPeer {
                name: "02:00:00:00:00:01".into(),
                nickname: "h1".into(),
                uid: 1,
                version: 1,
            },
            peers: vec![],
            connections: vec![],
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
                drops: [("malformed".to_string(), 2)].into_iter().collect(),
            }),
        };
        let text = render(&r);
        assert!(
            text.contains("# TYPE weave_peers gauge\nweave_peers 0\n"),
            "{text}"
        );
        assert!(text.contains("weave_connections{state=\"established\"} 0\n"));
        assert!(text.contains("weave_control_bytes_total{direction=\"out\"} 7\n"));
        assert!(text.contains("weave_sleeve_drops_total{reason=\"malformed\"} 2\n"));
        assert!(text.contains("weave_sleeve_mtu 1436\n"));
        assert!(text.contains("weave_auth_failures_total 0\n"));
    }
}
