// SPDX-License-Identifier: Apache-2.0
//! The mesh's part of `weave report`: the local peer, every known peer
//! with the connections it announces, the local connections and attempts,
//! targets, routes and counters. Reads only.

use tokio::time::Instant;

use super::secure::Crypto;
use super::{ConnState, Mesh};
use crate::mesh::connmaker::TargetState;
use crate::mesh::peer::PeerName;

impl Mesh {
    /// A snapshot for the local API.
    pub fn report(&self, now: Instant) -> weave_api::Report {
        use weave_api::{
            ConnectionReport, ConnectionState, PeerConnection, PeerReport, RouteReport,
        };
        let local = self.topo.local();
        let nick = |n: &PeerName| {
            self.topo
                .get(n)
                .map(|r| r.nickname.clone())
                .unwrap_or_default()
        };
        let peers = self
            .topo
            .records()
            .map(|r| PeerReport {
                name: r.name.to_string(),
                nickname: r.nickname.clone(),
                uid: r.uid.get(),
                version: r.version,
                reachable: !self.unreachable.contains_key(&r.name),
                connections: r
                    .conns
                    .iter()
                    .map(|(n, c)| PeerConnection {
                        name: n.to_string(),
                        nickname: nick(n),
                        address: c.addr.to_string(),
                        outbound: c.outbound,
                        established: c.established,
                    })
                    .collect(),
            })
            .collect();
        let mut connections: Vec<ConnectionReport> = self
            .conns
            .values()
            .map(|c| {
                let (peer, nickname, state, info) = match &c.state {
                    ConnState::Established(r) if r.confirmed => (
                        Some(r.name.to_string()),
                        Some(r.nickname.clone()),
                        ConnectionState::Established,
                        String::new(),
                    ),
                    ConnState::Established(r) => (
                        Some(r.name.to_string()),
                        Some(r.nickname.clone()),
                        ConnectionState::Pending,
                        "waiting for the UDP path".to_string(),
                    ),
                    ConnState::Dialing => {
                        (None, None, ConnectionState::Pending, "connecting".into())
                    }
                    ConnState::Handshaking { .. } => {
                        (None, None, ConnectionState::Pending, "handshaking".into())
                    }
                };
                ConnectionReport {
                    peer,
                    nickname,
                    address: c.remote.to_string(),
                    state,
                    outbound: c.outbound,
                    mode: self.cfg.overlay.then(|| "sleeve".to_string()),
                    mode_reason: None,
                    encrypted: matches!(c.crypto, Crypto::Sealed { .. }),
                    info,
                    bytes_in: c.bytes_in,
                    bytes_out: c.bytes_out,
                    mtu: None,
                    frames_in: 0,
                    frames_out: 0,
                    data_bytes_in: 0,
                    data_bytes_out: 0,
                    drops: Default::default(),
                }
            })
            .collect();
        for (addr, t) in self.maker.targets() {
            if let TargetState::Waiting(at) = t.state {
                let Some(err) = &t.last_error else { continue };
                connections.push(ConnectionReport {
                    peer: None,
                    nickname: None,
                    address: addr.to_string(),
                    state: ConnectionState::Failed,
                    outbound: true,
                    mode: None,
                    mode_reason: None,
                    encrypted: false,
                    info: format!(
                        "{err}, retry in {:.1}s",
                        at.saturating_duration_since(now).as_secs_f64()
                    ),
                    bytes_in: 0,
                    bytes_out: 0,
                    mtu: None,
                    frames_in: 0,
                    frames_out: 0,
                    data_bytes_in: 0,
                    data_bytes_out: 0,
                    drops: Default::default(),
                });
            }
        }
        weave_api::Report {
            ipam: None,
            dns: None,
            version: env!("CARGO_PKG_VERSION").to_string(),
            protocol: format!("{v}..{v}", v = self.cfg.version()),
            peer: weave_api::LocalPeer {
                name: local.name.to_string(),
                nickname: local.nickname.clone(),
                uid: local.uid.get(),
                version: local.version,
            },
            peers,
            connections,
            targets: self
                .maker
                .direct()
                .iter()
                .map(ToString::to_string)
                .collect(),
            routes: self
                .routes
                .unicast
                .iter()
                .map(|(d, v)| RouteReport {
                    destination: d.to_string(),
                    via: v.to_string(),
                })
                .collect(),
            stats: weave_api::MeshStats {
                bytes_in: self.stats.bytes_in,
                bytes_out: self.stats.bytes_out,
                gossip_in: self.stats.gossip_in,
                gossip_out: self.stats.gossip_out,
                protocol_errors: self.stats.protocol_errors,
                auth_failures: self.stats.auth_failures,
                decrypt_failures: self.stats.decrypt_failures,
            },
            sleeve: None,
            fastdp: None,
        }
    }
}
