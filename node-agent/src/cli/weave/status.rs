// SPDX-License-Identifier: Apache-2.0
//! Human-readable renderings of a [`Report`], as aligned tables.

use std::fmt::Write;

use weave_api::{ConnectionState, DnsReport, IpamReport, PsReply, Report};

/// Lays out rows in columns separated by two spaces; the last column is not padded.
pub(crate) fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn peer_label(report: &Report, name: &str) -> String {
    match report.peers.iter().find(|p| p.name == name) {
        Some(p) if !p.nickname.is_empty() => format!("{name}({})", p.nickname),
        _ => name.to_string(),
    }
}

/// `weave status`: a summary of the local peer.
pub fn render_status(r: &Report) -> String {
    let count = |s: ConnectionState| r.connections.iter().filter(|c| c.state == s).count();
    let links: usize = r
        .peers
        .iter()
        .map(|p| p.connections.iter().filter(|c| c.established).count())
        .sum();
    let unreachable = r.peers.iter().filter(|p| !p.reachable).count();
    let mut peers = format!(
        "{} (with {links} established connection{})",
        r.peers.len(),
        if links == 1 { "" } else { "s" }
    );
    if unreachable > 0 {
        let _ = write!(peers, ", {unreachable} unreachable");
    }
    let rows = vec![
        vec![
            "Version:".into(),
            format!("{} (protocol {})", r.version, r.protocol),
        ],
        vec![
            "Name:".into(),
            format!("{}({})", r.peer.name, r.peer.nickname),
        ],
        vec!["UID:".into(), r.peer.uid.to_string()],
        vec!["Peers:".into(), peers],
        vec![
            "Connections:".into(),
            format!(
                "{} ({} established, {} pending, {} failed)",
                r.connections.len(),
                count(ConnectionState::Established),
                count(ConnectionState::Pending),
                count(ConnectionState::Failed)
            ),
        ],
        vec!["Targets:".into(), r.targets.len().to_string()],
        vec![
            "Encryption:".into(),
            // Protocol version 2 is the sealed one (PROTOCOL.md §1).
            if r.protocol.starts_with('2') {
                "enabled (Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s)"
            } else {
                "disabled"
            }
            .into(),
        ],
    ];
    let mut rows = rows;
    if let Some(f) = &r.fastdp {
        let fastdp = match (&f.device, &f.unavailable) {
            (Some(dev), _) => format!(
                "{dev} on UDP {} ({} of {} connections)",
                f.port,
                f.connections,
                r.connections.iter().filter(|c| c.mode.is_some()).count()
            ),
            (None, Some(why)) => format!("off ({why})"),
            (None, None) => "off".into(),
        };
        rows.push(vec!["FastDP:".into(), fastdp]);
    }
    match &r.ipam {
        Some(ipam) => {
            rows.push(vec!["IPAM:".into(), ipam.status.clone()]);
            rows.push(vec!["Range:".into(), ipam.range.to_string()]);
            rows.push(vec![
                "DefaultSubnet:".into(),
                ipam.default_subnet.to_string(),
            ]);
        }
        None => rows.push(vec!["IPAM:".into(), "off".into()]),
    }
    if let Some(sleeve) = &r.sleeve {
        rows.push(vec![
            "Data plane:".into(),
            format!("bridge {}, overlay MTU {}", sleeve.bridge, sleeve.mtu),
        ]);
    }
    table(&rows)
}

/// `weave report --format dot`: the topology as a Graphviz graph (`| dot -Tsvg`).
///
/// Every peer is a node (the local one drawn bold, unreachable ones dashed and grey); every
/// pair of peers that announces a connection is one edge, solid once established, dashed
/// while not. The local peer's own connections are coloured by data-plane mode (fastdp blue,
/// sleeve green, control only grey) and labelled with mode and MTU; only the local peer
/// knows the mode of a connection, so other edges stay black.
pub(super) fn render_dot(r: &Report) -> String {
    let escape = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let quote = |s: &str| format!("\"{}\"", escape(s));
    let mut out = String::from("graph weave {\n  node [shape=box, fontname=\"monospace\"];\n");
    for p in &r.peers {
        let label = if p.nickname.is_empty() {
            escape(&p.name)
        } else {
            // Graphviz's own line break between the escaped parts.
            format!("{}\\n{}", escape(&p.nickname), escape(&p.name))
        };
        let mut attrs = vec![format!("label=\"{label}\"")];
        if p.name == r.peer.name {
            attrs.push("style=bold".into());
        } else if !p.reachable {
            attrs.push("style=dashed, color=grey".into());
        }
        let _ = writeln!(out, "  {} [{}];", quote(&p.name), attrs.join(", "));
    }
    // One edge per pair: established if either end says so.
    let mut edges: std::collections::BTreeMap<(&str, &str), bool> =
        std::collections::BTreeMap::new();
    for p in &r.peers {
        for c in &p.connections {
            let key = if p.name < c.name {
                (p.name.as_str(), c.name.as_str())
            } else {
                (c.name.as_str(), p.name.as_str())
            };
            *edges.entry(key).or_default() |= c.established;
        }
    }
    for ((a, b), established) in edges {
        let mut attrs = Vec::new();
        if !established {
            attrs.push("style=dashed".to_string());
        }
        let other = if a == r.peer.name {
            Some(b)
        } else if b == r.peer.name {
            Some(a)
        } else {
            None
        };
        let local = other.and_then(|o| r.connections.iter().find(|c| c.peer.as_deref() == Some(o)));
        if let Some(c) = local.filter(|c| c.state == ConnectionState::Established) {
            let mode = c.mode.as_deref().unwrap_or("control only");
            let color = match mode {
                "fastdp" => "blue",
                "sleeve" => "darkgreen",
                _ => "grey",
            };
            let label = match c.mtu {
                Some(mtu) => format!("{mode} {mtu}"),
                None => mode.to_string(),
            };
            attrs.push(format!("color={color}, label={}", quote(&label)));
        }
        let _ = write!(out, "  {} -- {}", quote(a), quote(b));
        if !attrs.is_empty() {
            let _ = write!(out, " [{}]", attrs.join(", "));
        }
        out.push_str(";\n");
    }
    out.push_str("}\n");
    out
}

/// `weave status ipam`: each peer's share of the range.
pub fn render_ipam(ipam: &IpamReport) -> String {
    let mut rows = Vec::new();
    for o in &ipam.owners {
        let label = if o.nickname.is_empty() {
            o.name.clone()
        } else {
            format!("{}({})", o.name, o.nickname)
        };
        let pct = if ipam.total == 0 {
            0.0
        } else {
            o.addresses as f64 * 100.0 / ipam.total as f64
        };
        let mut info = format!("{} IPs ({pct:.1}% of total)", o.addresses);
        if o.local {
            info.push_str(&format!(" ({} used, {} free)", ipam.used, o.free));
        } else {
            info.push_str(&format!(" ({} free)", o.free));
        }
        if !o.reachable {
            info.push_str(" - unreachable!");
        }
        rows.push(vec![label, info]);
    }
    let mut out = format!("{}\n", ipam.status);
    out.push_str(&table(&rows));
    if !ipam.removed.is_empty() {
        out.push_str(&format!("removed: {}\n", ipam.removed.join(", ")));
    }
    out
}

/// `weave status dns`: settings, counters and the live records.
/// `weave ps`: one line per attachment, `ID MAC ADDRESS...` as Weave Net
/// printed it (`-` when the MAC could not be read), the bridge first as
/// `weave:expose`.
pub fn render_ps(ps: &PsReply) -> String {
    let rows: Vec<Vec<String>> = ps
        .entries
        .iter()
        .map(|e| {
            let mut row = vec![e.id.clone(), e.mac.clone().unwrap_or_else(|| "-".into())];
            row.extend(e.addresses.iter().map(ToString::to_string));
            row
        })
        .collect();
    table(&rows)
}

/// `weave status dns`.
pub fn render_dns(d: &DnsReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "domain: {}  ttl: {}s", d.domain, d.ttl);
    let _ = writeln!(out, "listen: {}", d.listen.join(" "));
    let _ = writeln!(out, "upstream: {}", d.upstream.join(" "));
    let _ = writeln!(
        out,
        "entries: {} ({} local), records held: {}, tombstones: {}",
        d.entries, d.local_entries, d.records, d.tombstones
    );
    let _ = writeln!(
        out,
        "upstream failures: {}, refused gossip records: {}",
        d.upstream_failures, d.refused_records
    );
    for q in &d.queries {
        let _ = writeln!(out, "queries {} {}: {}", q.qtype, q.result, q.count);
    }
    let rows: Vec<Vec<String>> = d
        .records_list
        .iter()
        .map(|e| {
            vec![
                e.name.clone(),
                e.address.to_string(),
                e.id.clone(),
                e.origin.clone(),
            ]
        })
        .collect();
    out.push_str(&table(&rows));
    out
}

/// `weave status peers`: every peer and the connections it announces.
pub fn render_peers(r: &Report) -> String {
    let mut out = String::new();
    for p in &r.peers {
        let reach = if p.reachable { "" } else { " (unreachable)" };
        let _ = writeln!(out, "{}({}){reach}", p.name, p.nickname);
        let rows: Vec<Vec<String>> = p
            .connections
            .iter()
            .map(|c| {
                vec![
                    format!("   {}", if c.outbound { "->" } else { "<-" }),
                    c.address.clone(),
                    peer_label(r, &c.name),
                    if c.established {
                        "established"
                    } else {
                        "pending"
                    }
                    .into(),
                ]
            })
            .collect();
        out.push_str(&table(&rows));
    }
    out
}

/// `weave status connections`: the local peer's connections and attempts.
pub fn render_connections(r: &Report) -> String {
    if r.connections.is_empty() {
        return "no connections\n".into();
    }
    let mut rows = vec![vec![
        "".into(),
        "ADDRESS".into(),
        "STATE".into(),
        "PEER".into(),
        "MODE".into(),
        "ENCRYPTED".into(),
        "INFO".into(),
    ]];
    for c in &r.connections {
        rows.push(vec![
            if c.outbound { "->" } else { "<-" }.into(),
            c.address.clone(),
            c.state.as_str().into(),
            c.peer
                .as_deref()
                .map(|n| peer_label(r, n))
                .unwrap_or_default(),
            match (&c.mode, &c.mode_reason) {
                (Some(m), Some(why)) => format!("{m} ({why})"),
                (Some(m), None) => m.clone(),
                (None, _) => String::new(),
            },
            c.encrypted.to_string(),
            c.info.clone(),
        ]);
    }
    table(&rows)
}

/// `weave status routes`: next hop towards each peer.
pub fn render_routes(r: &Report) -> String {
    if r.routes.is_empty() {
        return "no routes\n".into();
    }
    let mut rows = vec![vec!["DESTINATION".into(), "VIA".into()]];
    for route in &r.routes {
        rows.push(vec![
            peer_label(r, &route.destination),
            peer_label(r, &route.via),
        ]);
    }
    table(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weave_api::*;

    fn report() -> Report {
        Report {
            version: "0.1.0".into(),
            protocol: "1..1".into(),
            peer: LocalPeer {
                name: "02:00:00:00:00:01".into(),
                nickname: "h1".into(),
                uid: 7,
                version: 3,
            },
            peers: vec![
                PeerReport {
                    name: "02:00:00:00:00:01".into(),
                    nickname: "h1".into(),
                    uid: 7,
                    version: 3,
                    reachable: true,
                    connections: vec![PeerConnection {
                        name: "02:00:00:00:00:02".into(),
                        nickname: "h2".into(),
                        address: "10.0.0.2:6783".into(),
                        outbound: true,
                        established: true,
                    }],
                },
                PeerReport {
                    name: "02:00:00:00:00:02".into(),
                    nickname: "h2".into(),
                    uid: 8,
                    version: 2,
                    reachable: true,
                    connections: vec![],
                },
            ],
            connections: vec![ConnectionReport {
                peer: Some("02:00:00:00:00:02".into()),
                nickname: Some("h2".into()),
                address: "10.0.0.2:6783".into(),
                state: ConnectionState::Established,
                outbound: true,
                mode: Some("sleeve".into()),
                mode_reason: Some("heartbeat timeout".into()),
                encrypted: false,
                info: String::new(),
                bytes_in: 1,
                bytes_out: 2,
                mtu: None,
                frames_in: 0,
                frames_out: 0,
                data_bytes_in: 0,
                data_bytes_out: 0,
                drops: Default::default(),
            }],
            targets: vec!["10.0.0.2:6783".into()],
            routes: vec![RouteReport {
                destination: "02:00:00:00:00:02".into(),
                via: "02:00:00:00:00:02".into(),
            }],
            stats: MeshStats::default(),
            sleeve: None,
            fastdp: Some(FastdpReport {
                device: None,
                unavailable: Some("fastdp disabled".into()),
                port: 6784,
                ..FastdpReport::default()
            }),
            dns: None,
            ipam: Some(IpamReport {
                status: "ready".into(),
                ready: true,
                range: "10.32.0.0/12".parse().unwrap(),
                default_subnet: "10.32.0.0/12".parse().unwrap(),
                total: 1 << 20,
                used: 3,
                pending: 0,
                owners: vec![
                    IpamOwner {
                        name: "02:00:00:00:00:01".into(),
                        nickname: "h1".into(),
                        addresses: 1 << 19,
                        free: (1 << 19) - 3,
                        local: true,
                        reachable: true,
                    },
                    IpamOwner {
                        name: "02:00:00:00:00:02".into(),
                        nickname: "h2".into(),
                        addresses: 1 << 19,
                        free: 1 << 19,
                        local: false,
                        reachable: false,
                    },
                ],
                removed: vec![],
                state_bytes: 0,
            }),
        }
    }

    #[test]
    fn ipam_shares() {
        let r = report();
        let s = render_ipam(r.ipam.as_ref().unwrap());
        assert_eq!(
            s,
            "ready\n\
             02:00:00:00:00:01(h1)  524288 IPs (50.0% of total) (3 used, 524285 free)\n\
             02:00:00:00:00:02(h2)  524288 IPs (50.0% of total) (524288 free) - unreachable!\n"
        );
        assert!(
            render_status(&r).contains("IPAM:           ready"),
            "{}",
            render_status(&r)
        );
    }

    #[test]
    fn status_summary() {
        assert_eq!(
            render_status(&report()),
            "Version:        0.1.0 (protocol 1..1)\n\
             Name:           02:00:00:00:00:01(h1)\n\
             UID:            7\n\
             Peers:          2 (with 1 established connection)\n\
             Connections:    1 (1 established, 0 pending, 0 failed)\n\
             Targets:        1\n\
             Encryption:     disabled\n\
             FastDP:         off (fastdp disabled)\n\
             IPAM:           ready\n\
             Range:          10.32.0.0/12\n\
             DefaultSubnet:  10.32.0.0/12\n"
        );
        let mut r = report();
        r.ipam = None;
        r.sleeve = Some(SleeveReport {
            bridge: "weave".into(),
            mtu: 1376,
            ..SleeveReport::default()
        });
        let s = render_status(&r);
        assert!(
            s.ends_with("IPAM:         off\nData plane:   bridge weave, overlay MTU 1376\n"),
            "{s}"
        );
    }

    #[test]
    fn dot_draws_peers_and_connections() {
        let mut r = report();
        r.connections[0].mode = Some("sleeve".into());
        r.connections[0].mtu = Some(1376);
        r.peers[1].reachable = false;
        r.peers[1].nickname = "h\"2".into();
        assert_eq!(
            render_dot(&r),
            "graph weave {\n  node [shape=box, fontname=\"monospace\"];\n  \
             \"02:00:00:00:00:01\" [label=\"h1\\n02:00:00:00:00:01\", style=bold];\n  \
             \"02:00:00:00:00:02\" [label=\"h\\\"2\\n02:00:00:00:00:02\", style=dashed, color=grey];\n  \
             \"02:00:00:00:00:01\" -- \"02:00:00:00:00:02\" [color=darkgreen, label=\"sleeve 1376\"];\n}\n"
        );
    }

    #[test]
    fn fastdp_line() {
        let s = render_status(&report());
        assert!(s.contains("FastDP:         off (fastdp disabled)"), "{s}");
        let mut on = report();
        on.fastdp = Some(FastdpReport {
            device: Some("vxlan-weave".into()),
            port: 6784,
            connections: 1,
            ..FastdpReport::default()
        });
        let s = render_status(&on);
        assert!(
            s.contains("FastDP:         vxlan-weave on UDP 6784 (1 of 1 connections)"),
            "{s}"
        );
    }

    #[test]
    fn tables_are_aligned() {
        let s = render_connections(&report());
        assert_eq!(
            s,
            "    ADDRESS        STATE        PEER                   MODE                        ENCRYPTED  INFO\n\
             ->  10.0.0.2:6783  established  02:00:00:00:00:02(h2)  sleeve (heartbeat timeout)  false\n"
        );
        let p = render_peers(&report());
        assert!(
            p.starts_with(
                "02:00:00:00:00:01(h1)\n   ->  10.0.0.2:6783  02:00:00:00:00:02(h2)  established\n"
            ),
            "{p}"
        );
        assert!(render_routes(&report()).contains("02:00:00:00:00:02(h2)  02:00:00:00:00:02(h2)"));
    }

    #[test]
    fn dns_status_lists_counters_and_records() {
        let d = DnsReport {
            domain: "weave.local.".into(),
            listen: vec!["10.32.0.1:53".into()],
            upstream: vec!["10.0.0.2:53".into()],
            ttl: 1,
            local_entries: 1,
            entries: 2,
            records: 3,
            tombstones: 1,
            queries: vec![DnsQueryCount {
                qtype: "A".into(),
                result: "answer".into(),
                count: 4,
            }],
            upstream_failures: 0,
            refused_records: 0,
            records_list: vec![DnsEntry {
                name: "web.weave.local.".into(),
                address: "10.32.0.5".parse().unwrap(),
                id: "netns:/run/netns/a".into(),
                origin: "02:00:00:00:00:01(h1)".into(),
                version: 3,
            }],
        };
        let text = render_dns(&d);
        assert!(
            text.starts_with("domain: weave.local.  ttl: 1s\nlisten: 10.32.0.1:53\n"),
            "{text}"
        );
        assert!(
            text.contains("entries: 2 (1 local), records held: 3, tombstones: 1\n"),
            "{text}"
        );
        assert!(text.contains("queries A answer: 4\n"), "{text}");
        assert!(text.contains("web.weave.local."), "{text}");
        assert!(text.contains("10.32.0.5"), "{text}");
    }

    #[test]
    fn ps_lines_are_id_mac_addresses() {
        let entry = |id: &str, mac: Option<&str>, addrs: &[&str]| weave_api::PsEntry {
            id: id.into(),
            mac: mac.map(Into::into),
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            netns: None,
            ifname: None,
        };
        let ps = PsReply {
            entries: vec![
                entry("weave:expose", Some("7a:1f:00:00:00:01"), &["10.32.0.1/12"]),
                entry(
                    "cni:weave:5d8c:eth0",
                    Some("0a:58:0a:20:00:05"),
                    &["10.32.0.5/12", "fd00::5/64"],
                ),
                entry("netns:/run/netns/gone", None, &["10.32.0.9/12"]),
            ],
        };
        assert_eq!(
            render_ps(&ps),
            "weave:expose           7a:1f:00:00:00:01  10.32.0.1/12\n\
             cni:weave:5d8c:eth0    0a:58:0a:20:00:05  10.32.0.5/12  fd00::5/64\n\
             netns:/run/netns/gone  -                  10.32.0.9/12\n"
        );
    }
}
