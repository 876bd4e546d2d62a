// SPDX-License-Identifier: Apache-2.0
//! The encrypted side of a connection (`PROTOCOL.md` §9): the Noise
//! handshake that runs before the Hello when the mesh has a password, the
//! keys it leaves behind, and the one clear refusal when it fails.
//!
//! The dialler starts once it has the acceptor's version header (both
//! headers form the prologue); the acceptor answers; then each side sends
//! its Hello sealed. A refused handshake is logged once, counted, and told
//! to the peer in a plain `Close`, and the dialler backs off as after any
//! failed attempt.

use std::sync::Arc;

use tokio::time::Instant;
use tracing::{debug, warn};

use super::{ConnId, Mesh};
use crate::crypto::handshake::{self, Initiator};
use crate::crypto::session::{ControlOpener, ControlSealer};
use crate::crypto::SleeveKeys;
use crate::mesh::wire::{self, Message, WireError};

/// Start of the reason of a `Close` after a refused handshake; the peer
/// reports it as an authentication failure too.
pub(super) const AUTH_FAILED: &str = "authentication failed";

/// Where a connection stands with encryption.
#[derive(Debug)]
pub(super) enum Crypto {
    /// No password: plain frames.
    Plain,
    /// Waiting for the handshake to start (the peer's header, or its offers).
    Pending,
    /// We dialled and sent our offers; waiting for the answer.
    Offered(Initiator),
    /// Keys agreed: every frame is sealed.
    Sealed {
        sealer: ControlSealer,
        opener: ControlOpener,
        sleeve: Arc<SleeveKeys>,
    },
}

impl Mesh {
    /// Our prologue: both version headers, the dialler's first.
    fn prologue(&self, id: ConnId) -> Vec<u8> {
        let c = &self.conns[&id];
        let ours = wire::header_for(self.cfg.version());
        let theirs = c.decoder.peer_header().unwrap_or(ours);
        let (first, second) = if c.outbound {
            (ours, theirs)
        } else {
            (theirs, ours)
        };
        [first, second].concat()
    }

    /// The dialling side starts the handshake once it has the peer's header.
    pub(super) fn offer(&mut self, id: ConnId) {
        let prologue = self.prologue(id);
        let (init, offers) = Initiator::start(&self.cfg.psks, &prologue, &mut rand::rngs::OsRng);
        if let Some(c) = self.conns.get_mut(&id) {
            c.crypto = Crypto::Offered(init);
        }
        self.send(id, Message::Handshake(offers).encode());
    }

    pub(super) fn on_handshake(&mut self, id: ConnId, msg: &[u8], now: Instant) {
        let prologue = self.prologue(id);
        let c = self
            .conns
            .get_mut(&id)
            .expect("caller checked the connection exists");
        let keys = match std::mem::replace(&mut c.crypto, Crypto::Pending) {
            Crypto::Offered(init) => init.finish(msg),
            _ => match handshake::respond(&self.cfg.psks, &prologue, msg, &mut rand::rngs::OsRng) {
                Ok((answer, keys)) => {
                    self.send(id, Message::Handshake(answer).encode());
                    Ok(keys)
                }
                Err(e) => Err(e),
            },
        };
        let keys = match keys {
            Ok(k) => k,
            Err(e) => return self.auth_failed(id, &e.to_string(), now),
        };
        if keys.psk_index > 0 {
            debug!(remote = %self.conns[&id].remote, "peer knows only our old password");
        }
        let c = self
            .conns
            .get_mut(&id)
            .expect("caller checked the connection exists");
        c.crypto = Crypto::Sealed {
            sealer: ControlSealer::new(keys.send, now),
            opener: ControlOpener::new(keys.recv),
            sleeve: Arc::new(SleeveKeys {
                send: keys.sleeve_send,
                recv: keys.sleeve_recv,
            }),
        };
        self.send_hello(id);
    }

    /// One clear line per refused handshake (the dialler backs off, so
    /// there is no flood), a counter, and a plain `Close` telling the peer.
    pub(super) fn auth_failed(&mut self, id: ConnId, why: &str, now: Instant) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        self.stats.auth_failures += 1;
        let remote = c.remote;
        // Whatever follows, nothing is sealed on this connection.
        c.crypto = Crypto::Pending;
        warn!(%remote, reason = %why, "authentication failed with {remote}");
        self.close(id, &format!("{AUTH_FAILED}: {why}"), now);
    }

    /// A version error that really means one side has a password and the
    /// other none; the reason to report, if so.
    pub(super) fn encryption_mismatch(&self, e: &WireError) -> Option<&'static str> {
        if let WireError::Version {
            theirs_min,
            theirs_max,
            ..
        } = *e
        {
            let ours = self.cfg.version();
            let other = if ours == wire::PLAIN_VERSION {
                wire::SEALED_VERSION
            } else {
                wire::PLAIN_VERSION
            };
            if (theirs_min..=theirs_max).contains(&other) {
                let why = if ours == wire::PLAIN_VERSION {
                    "the peer requires encryption and we have no password"
                } else {
                    "the peer has no password and we require encryption"
                };
                return Some(why);
            }
        }
        None
    }
}

#[cfg(test)]
impl super::Conn {
    pub(super) fn crypto_keys(&self) -> Option<&SleeveKeys> {
        match &self.crypto {
            Crypto::Sealed { sleeve, .. } => Some(sleeve),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::super::tests::{mesh, pump};
    use super::super::*;
    use super::*;
    use crate::crypto::Secret;

    /// Mesh `i` with the given pre-shared keys and a long nickname that is
    /// easy to look for on the wire.
    fn sealed_mesh(i: u8, psks: &[u8], now: Instant) -> Mesh {
        let name = PeerName::from_bytes([2, 0, 0, 0, 0, i]);
        let mut cfg = MeshConfig::new(name, format!("nickname-in-clear-{i}"), 6783);
        cfg.psks = psks.iter().map(|b| Secret::new([*b; 32])).collect();
        Mesh::new(cfg, PeerUid::new(u64::from(i)), u64::from(i), now)
    }

    /// a dials b; returns both connection ids and the bytes exchanged.
    fn dial(a: &mut Mesh, b: &mut Mesh, now: Instant) -> (ConnId, ConnId, Vec<u8>) {
        let b_addr = SocketAddr::from(([10, 0, 0, 2], 6783));
        a.connect(&[b_addr], false, now);
        let Some(Action::Dial { conn: a_id, .. }) = a.poll_action() else {
            panic!("expected a dial");
        };
        let b_id = b
            .accepted(SocketAddr::from(([10, 0, 0, 1], 40000)), now)
            .unwrap();
        a.dialled(a_id, now);
        let wire = pump(a, a_id, b, b_id, now);
        (a_id, b_id, wire)
    }

    #[test]
    fn sealed_peers_connect_and_nothing_readable_crosses() {
        let now = Instant::now();
        let mut a = sealed_mesh(1, &[7], now);
        let mut b = sealed_mesh(2, &[7], now);
        let (a_id, b_id, wire) = dial(&mut a, &mut b, now);
        assert!(wire.starts_with(b"weave\x02\x02"));
        for nick in [&b"nickname-in-clear-1"[..], b"nickname-in-clear-2"] {
            assert!(!wire.windows(nick.len()).any(|w| w == nick));
        }
        let r = a.report(now);
        assert_eq!(r.protocol, "2..2");
        assert_eq!(r.connections.len(), 1);
        assert!(r.connections[0].encrypted);
        assert_eq!(r.connections[0].peer, Some(b.name().to_string()));
        assert_eq!(
            b.report(now).connections[0].state,
            weave_api::ConnectionState::Established
        );
        // the sleeve keys of both ends mirror each other
        a.tick(now + REFRESH_DELAY);
        b.tick(now + REFRESH_DELAY);
        let ka = a.conns[&a_id].crypto_keys().unwrap();
        let kb = b.conns[&b_id].crypto_keys().unwrap();
        assert_eq!(ka.send, kb.recv);
        assert_eq!(ka.recv, kb.send);
        // keys rotate every two minutes and the connection carries on
        let mut t = now;
        for _ in 0..130 {
            t += Duration::from_secs(1);
            a.tick(t);
            b.tick(t);
            pump(&mut a, a_id, &mut b, b_id, t);
        }
        assert!(a.has_conn(a_id) && b.has_conn(b_id));
        assert_eq!(a.stats().decrypt_failures + b.stats().decrypt_failures, 0);
        // a flipped bit in a sealed frame ends the connection, counted
        let mut frame = Message::Heartbeat.encode();
        if let Crypto::Sealed { sealer, .. } = &mut a.conns.get_mut(&a_id).unwrap().crypto {
            frame = sealer.seal(&frame[4..]);
        }
        frame[6] ^= 1;
        b.received(b_id, &frame, t);
        assert!(!b.has_conn(b_id));
        assert_eq!(b.stats().decrypt_failures, 1);
    }

    #[test]
    fn rotation_passwords_interoperate() {
        let now = Instant::now();
        // (B, A) dials (A); (A) dials (B, A)
        for (x, y) in [(&[0xb, 0xa][..], &[0xa][..]), (&[0xa][..], &[0xb, 0xa][..])] {
            let mut a = sealed_mesh(1, x, now);
            let mut b = sealed_mesh(2, y, now);
            dial(&mut a, &mut b, now);
            assert!(a.report(now).connections[0].encrypted);
            assert_eq!(b.stats().auth_failures, 0);
        }
    }

    #[test]
    fn wrong_or_missing_password_is_refused_on_both_sides() {
        let now = Instant::now();
        let plain = |i| mesh(i, now);
        let cases: [(Mesh, Mesh, &str); 3] = [
            (
                sealed_mesh(1, &[1], now),
                sealed_mesh(2, &[2], now),
                "refused our password",
            ),
            (sealed_mesh(1, &[1], now), plain(2), "no password"),
            (plain(1), sealed_mesh(2, &[2], now), "requires encryption"),
        ];
        for (mut a, mut b, why) in cases {
            let (a_id, b_id, wire) = dial(&mut a, &mut b, now);
            assert!(!a.has_conn(a_id) && !b.has_conn(b_id), "{why}");
            assert_eq!(a.stats().auth_failures, 1, "{why}");
            assert_eq!(b.stats().auth_failures, 1, "{why}");
            assert_eq!(a.stats().protocol_errors + b.stats().protocol_errors, 0);
            assert_eq!(a.topology().len(), 1);
            // the dialler backs off, and says why
            let r = a.report(now);
            let failed = r
                .connections
                .iter()
                .find(|c| c.state == weave_api::ConnectionState::Failed)
                .unwrap_or_else(|| panic!("{why}: {:?}", r.connections));
            assert!(
                failed.info.contains("authentication failed"),
                "{}",
                failed.info
            );
            assert!(
                a.poll_timeout() >= now + Duration::from_millis(500),
                "{why}"
            );
            // a sealed hello never crossed to a peer that failed
            let nick = b"nickname-in-clear-1";
            assert!(!wire.windows(nick.len()).any(|w| w == nick), "{why}");
        }
    }
}
