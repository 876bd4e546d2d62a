// SPDX-License-Identifier: Apache-2.0
//! Sleeve encryption per neighbour: which keys seal datagrams to each
//! neighbour and open datagrams from it, following the mesh's view.
//!
//! Keys come from the handshake of the control connection a neighbour is
//! reached through (one pair per connection UID); a new connection starts
//! new sessions, a gone one drops them. Sending and receiving run on
//! different threads, so each direction has its own lock. Encryption is hop
//! by hop: a relay opens with the key of the neighbour it heard from and
//! seals again for the next one.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::time::Instant;

use crate::crypto::session::{SessionError, SleeveRx, SleeveTx, KIND_SEALED};
use crate::mesh::overlay::Neighbour;
use crate::mesh::PeerName;

/// Why a datagram was not opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// A plain datagram where only sealed ones are accepted.
    #[error("unencrypted datagram")]
    Unencrypted,
    /// No session with the claimed sender.
    #[error("unknown sender")]
    UnknownSender,
    /// The session refused it.
    #[error(transparent)]
    Session(#[from] SessionError),
}

impl OpenError {
    /// The drop counter this error counts under.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Unencrypted => "unencrypted",
            Self::UnknownSender => "unknown_sender",
            Self::Session(SessionError::Replay) => "replay",
            Self::Session(SessionError::Epoch) => "stale_epoch",
            Self::Session(SessionError::Decrypt) => "decrypt_failed",
            Self::Session(SessionError::Truncated) => "malformed",
        }
    }
}

/// Sleeve sessions of every neighbour.
#[derive(Debug, Default)]
pub struct Sealer {
    tx: Mutex<HashMap<PeerName, (u64, SleeveTx)>>,
    rx: Mutex<HashMap<PeerName, (u64, SleeveRx)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Sealer {
    /// No sessions yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Follows the neighbour set: sessions for new connections, none for
    /// gone ones.
    pub fn sync(&self, neighbours: &BTreeMap<PeerName, Neighbour>, now: Instant) {
        let current = |p: &PeerName, uid: u64| {
            neighbours
                .get(p)
                .is_some_and(|n| n.conn_uid == uid && n.keys.is_some())
        };
        let mut tx = lock(&self.tx);
        let mut rx = lock(&self.rx);
        tx.retain(|p, (uid, _)| current(p, *uid));
        rx.retain(|p, (uid, _)| current(p, *uid));
        for (peer, n) in neighbours {
            let Some(keys) = &n.keys else { continue };
            tx.entry(*peer)
                .or_insert_with(|| (n.conn_uid, SleeveTx::new(keys.send.clone(), now)));
            rx.entry(*peer)
                .or_insert_with(|| (n.conn_uid, SleeveRx::new(keys.recv.clone())));
        }
    }

    /// Seals a plain datagram for neighbour `peer` into `out`; false when
    /// there is no session with it.
    pub fn seal(&self, peer: &PeerName, plain: &[u8], out: &mut Vec<u8>, now: Instant) -> bool {
        match lock(&self.tx).get_mut(peer) {
            Some((_, tx)) => {
                tx.seal(plain, out, now);
                true
            }
            None => false,
        }
    }

    /// Opens a received datagram into `out` and returns the plain datagram
    /// inside, whose sender is checked against the sealed header.
    pub fn open<'a>(&self, sealed: &[u8], out: &'a mut Vec<u8>) -> Result<&'a [u8], OpenError> {
        if sealed.len() < 8 || sealed[1] != KIND_SEALED {
            return Err(OpenError::Unencrypted);
        }
        let mut name = [0u8; 6];
        name.copy_from_slice(&sealed[2..8]);
        let peer = PeerName::from_bytes(name);
        let mut rx = lock(&self.rx);
        let (_, session) = rx.get_mut(&peer).ok_or(OpenError::UnknownSender)?;
        let plain = session.open(sealed, out)?;
        // The inner header names the same sender (the outer one is
        // authenticated too; this keeps a confused peer from lying twice).
        if plain.get(2..8) != Some(&sealed[2..8]) {
            return Err(OpenError::Session(SessionError::Decrypt));
        }
        Ok(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Secret, SleeveKeys};
    use std::sync::Arc;

    fn n(i: u8) -> PeerName {
        PeerName::from_bytes([2, 0, 0, 0, 0, i])
    }

    fn view(peer: u8, uid: u64, send: u8, recv: u8) -> BTreeMap<PeerName, Neighbour> {
        BTreeMap::from([(
            n(peer),
            Neighbour {
                addr: ([10, 0, 0, peer], 6783).into(),
                conn_uid: uid,
                keys: Some(Arc::new(SleeveKeys {
                    send: Secret::new([send; 32]),
                    recv: Secret::new([recv; 32]),
                })),
            },
        )])
    }

    fn datagram(from: u8) -> Vec<u8> {
        let mut d = vec![1, 2, 2, 0, 0, 0, 0, from, 2, 0, 0, 0, 0, 9];
        d.extend_from_slice(&7u64.to_be_bytes());
        d
    }

    #[test]
    fn peers_with_matching_keys_talk_and_others_do_not() {
        let now = Instant::now();
        let (a, b) = (Sealer::new(), Sealer::new());
        a.sync(&view(2, 1, 0xab, 0xba), now);
        b.sync(&view(1, 1, 0xba, 0xab), now);
        let (mut sealed, mut out) = (Vec::new(), Vec::new());
        assert!(a.seal(&n(2), &datagram(1), &mut sealed, now));
        assert_eq!(b.open(&sealed, &mut out).unwrap(), &datagram(1)[..]);
        assert_eq!(
            b.open(&sealed, &mut out),
            Err(OpenError::Session(SessionError::Replay))
        );
        assert_eq!(b.open(&datagram(1), &mut out), Err(OpenError::Unencrypted));
        // a's datagram claims to come from peer 1, which a is not to c
        let c = Sealer::new();
        c.sync(&view(9, 1, 1, 2), now);
        assert_eq!(c.open(&sealed, &mut out), Err(OpenError::UnknownSender));
        assert!(!a.seal(&n(3), &datagram(1), &mut sealed, now));
        // a new connection brings new keys; old datagrams no longer open
        a.seal(&n(2), &datagram(1), &mut sealed, now);
        b.sync(&view(1, 2, 0x11, 0x22), now);
        assert_eq!(
            b.open(&sealed, &mut out),
            Err(OpenError::Session(SessionError::Decrypt))
        );
        // a neighbour that is gone has no session
        b.sync(&BTreeMap::new(), now);
        assert_eq!(b.open(&sealed, &mut out), Err(OpenError::UnknownSender));
    }

    #[test]
    fn a_lying_inner_sender_is_refused() {
        let now = Instant::now();
        let (a, b) = (Sealer::new(), Sealer::new());
        a.sync(&view(2, 1, 5, 6), now);
        b.sync(&view(1, 1, 6, 5), now);
        let mut d = datagram(1);
        let (mut sealed, mut out) = (Vec::new(), Vec::new());
        a.seal(&n(2), &d, &mut sealed, now);
        d[7] = 3;
        let mut lying = Vec::new();
        a.seal(&n(2), &d, &mut lying, now);
        lying[2..8].copy_from_slice(&sealed[2..8]);
        assert!(b.open(&lying, &mut out).is_err());
    }
}
