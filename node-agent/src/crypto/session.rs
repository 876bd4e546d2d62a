// SPDX-License-Identifier: Apache-2.0
//! Transport encryption after the handshake: control frames on TCP and
//! sleeve datagrams on UDP, each direction with its own key.
//!
//! **Control frames** keep the 4-byte length prefix in clear (it is the
//! associated data, so it cannot be changed) and carry the sealed frame
//! body. Nonces are an implicit counter per direction, as in Noise
//! transport messages: TCP neither loses nor reorders, so any replay, drop
//! or reorder fails decryption and ends the connection. The sender replaces
//! its key with `REKEY(k)` (Noise §11.3) after [`CONTROL_REKEY_MESSAGES`]
//! messages or [`REKEY_INTERVAL`], announcing it with a sealed one-byte
//! message (tag [`REKEY_TAG`]) that this layer consumes.
//!
//! **Sleeve datagrams** are sealed whole (header included) into
//!
//! ```text
//! | ver 1 | kind 4 | sender (6) | epoch (4) | counter (8) | AEAD(inner datagram) | tag (16) |
//! ```
//!
//! with the first 20 bytes as associated data and `epoch ‖ counter` as the
//! 96-bit nonce. Each epoch's key comes from the previous one by a one-way
//! step, so old keys cannot be recomputed from new ones; the sender moves to
//! the next epoch after [`REKEY_INTERVAL`] or [`SLEEVE_REKEY_DATAGRAMS`]
//! datagrams, long before the counter could wrap. The receiver keeps the
//! current and the previous epoch (for datagrams still in flight) and a
//! replay window per epoch.

use std::time::Duration;

use tokio::time::Instant;
use zeroize::Zeroize;

use super::handshake::{aead_open, aead_seal, hkdf2};
use super::replay::ReplayWindow;
use super::Secret;

/// Message tag of a rekey announcement on the control connection.
pub const REKEY_TAG: u8 = 6;
/// Keys are replaced at least this often.
pub const REKEY_INTERVAL: Duration = Duration::from_secs(120);
/// A control direction rekeys after this many messages.
pub const CONTROL_REKEY_MESSAGES: u64 = 1 << 24;
/// A sleeve direction moves to the next epoch after this many datagrams.
pub const SLEEVE_REKEY_DATAGRAMS: u64 = 1 << 32;
/// Datagram kind of a sealed sleeve datagram.
pub const KIND_SEALED: u8 = 4;
/// Bytes before the ciphertext of a sealed datagram.
pub const SEALED_HEADER_LEN: usize = 20;
/// Authentication tag length.
pub const TAG_LEN: usize = 16;
/// How much longer a sealed datagram is than the one inside it.
pub const SEALED_OVERHEAD: usize = SEALED_HEADER_LEN + TAG_LEN;
/// How many epochs the receiver follows a sender ahead in one step (all
/// datagrams of an epoch may have been lost).
const MAX_EPOCH_SKIP: u32 = 4;
/// Input of the one-way step from one sleeve epoch key to the next.
const EPOCH_LABEL: &[u8] = b"weave sleeve epoch";

/// Why a frame or datagram was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The tag did not verify (wrong key, altered bytes, replay on TCP).
    #[error("decryption failed")]
    Decrypt,
    /// A sleeve counter seen before, or older than the window.
    #[error("replayed datagram")]
    Replay,
    /// A sleeve epoch we no longer (or not yet) hold a key for.
    #[error("datagram of an unknown key epoch")]
    Epoch,
    /// Too short to be a sealed message.
    #[error("truncated sealed message")]
    Truncated,
}

/// Seals control frames in one direction.
#[derive(Debug)]
pub struct ControlSealer {
    key: Secret,
    n: u64,
    rekey_at: Instant,
}

impl ControlSealer {
    /// A sealer with the handshake's key for our direction.
    pub fn new(key: Secret, now: Instant) -> Self {
        Self {
            key,
            n: 0,
            rekey_at: now + REKEY_INTERVAL,
        }
    }

    /// Seals a frame body (tag and payload) into a whole frame: length
    /// prefix, then ciphertext. Rekeys first (and emits the announcement)
    /// when the message budget of the key is spent.
    pub fn seal(&mut self, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + body.len() + TAG_LEN);
        if self.n >= CONTROL_REKEY_MESSAGES {
            self.rekey_into(&mut out);
        }
        self.seal_into(body, &mut out);
        out
    }

    /// When the key is older than [`REKEY_INTERVAL`]: the sealed rekey
    /// announcement to send; the key is replaced after it.
    pub fn rekey_if_due(&mut self, now: Instant) -> Option<Vec<u8>> {
        if now < self.rekey_at {
            return None;
        }
        self.rekey_at = now + REKEY_INTERVAL;
        let mut out = Vec::new();
        self.rekey_into(&mut out);
        Some(out)
    }

    fn rekey_into(&mut self, out: &mut Vec<u8>) {
        self.seal_into(&[REKEY_TAG], out);
        self.key = rekey(&self.key);
        self.n = 0;
    }

    fn seal_into(&mut self, body: &[u8], out: &mut Vec<u8>) {
        let len = u32::try_from(body.len() + TAG_LEN).unwrap_or(u32::MAX);
        let prefix = len.to_be_bytes();
        out.extend_from_slice(&prefix);
        out.extend_from_slice(&aead_seal(self.key.expose(), self.n, &prefix, body));
        self.n += 1;
    }
}

/// Opens control frames in one direction.
#[derive(Debug)]
pub struct ControlOpener {
    key: Secret,
    n: u64,
}

impl ControlOpener {
    /// An opener with the handshake's key for the peer's direction.
    pub fn new(key: Secret) -> Self {
        Self { key, n: 0 }
    }

    /// Opens the sealed body of a frame whose length prefix was `len`.
    /// `Ok(None)`: a rekey announcement, handled here.
    pub fn open(&mut self, len: u32, sealed: &[u8]) -> Result<Option<Vec<u8>>, SessionError> {
        let body = aead_open(self.key.expose(), self.n, &len.to_be_bytes(), sealed)
            .ok_or(SessionError::Decrypt)?;
        self.n += 1;
        if body == [REKEY_TAG] {
            self.key = rekey(&self.key);
            self.n = 0;
            return Ok(None);
        }
        Ok(Some(body))
    }
}

/// Noise `REKEY(k)`: the first 32 bytes of encrypting 32 zero bytes under
/// the maximum nonce.
fn rekey(k: &Secret) -> Secret {
    let mut out = aead_seal(k.expose(), u64::MAX, &[], &[0; 32]);
    let mut key = [0u8; 32];
    key.copy_from_slice(&out[..32]);
    out.zeroize();
    Secret::new(key)
}

/// The key of the epoch after the one keyed by `k`.
fn next_epoch(k: &Secret) -> Secret {
    let (a, mut unused) = hkdf2(k.expose(), EPOCH_LABEL);
    unused.zeroize();
    Secret::new(a)
}

fn sleeve_nonce(epoch: u32, counter: u64) -> ring::aead::Nonce {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&epoch.to_be_bytes());
    n[4..].copy_from_slice(&counter.to_be_bytes());
    ring::aead::Nonce::assume_unique_for_key(n)
}

/// ChaCha20-Poly1305 (RFC 8439) for sleeve datagrams, from `ring`, whose
/// assembly implementation is two to three times faster on bulk data than
/// the portable one the control path uses; the bytes on the wire are the
/// same. Nonces are unique by construction: (epoch, counter) never repeats
/// under one key.
struct SleeveCipher(ring::aead::LessSafeKey);

impl SleeveCipher {
    fn new(key: &Secret) -> Self {
        let unbound = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, key.expose())
            .expect("a 32-byte key is a valid ChaCha20-Poly1305 key");
        Self(ring::aead::LessSafeKey::new(unbound))
    }

    fn seal(&self, nonce: ring::aead::Nonce, aad: &[u8], body: &mut [u8]) -> [u8; TAG_LEN] {
        let tag = self
            .0
            .seal_in_place_separate_tag(nonce, ring::aead::Aad::from(aad), body)
            .expect("ChaCha20-Poly1305 seals any datagram shorter than 256 GB");
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    fn open(
        &self,
        nonce: ring::aead::Nonce,
        aad: &[u8],
        body: &mut [u8],
        tag: &[u8],
    ) -> Result<(), SessionError> {
        let tag = ring::aead::Tag::try_from(tag).map_err(|_| SessionError::Truncated)?;
        self.0
            .open_in_place_separate_tag(nonce, ring::aead::Aad::from(aad), tag, body, 0..)
            .map(|_| ())
            .map_err(|_| SessionError::Decrypt)
    }
}

/// Seals sleeve datagrams to one neighbour.
pub struct SleeveTx {
    key: Secret,
    cipher: SleeveCipher,
    epoch: u32,
    counter: u64,
    epoch_start: Instant,
    interval: Duration,
    budget: u64,
}

impl std::fmt::Debug for SleeveTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SleeveTx")
            .field("epoch", &self.epoch)
            .field("counter", &self.counter)
            .finish()
    }
}

impl SleeveTx {
    /// A sender with the handshake's sleeve key for our direction.
    pub fn new(key: Secret, now: Instant) -> Self {
        Self::with_limits(key, now, REKEY_INTERVAL, SLEEVE_REKEY_DATAGRAMS)
    }

    /// A sender that moves to the next epoch after `interval` or `budget`
    /// datagrams (tests use small values).
    pub fn with_limits(key: Secret, now: Instant, interval: Duration, budget: u64) -> Self {
        Self {
            cipher: SleeveCipher::new(&key),
            key,
            epoch: 0,
            counter: 0,
            epoch_start: now,
            interval,
            budget,
        }
    }

    /// The current key epoch.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Seals the datagram `plain` (whose first 8 bytes are the plain
    /// header: version, kind, sender) into `out`, replacing its contents.
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>, now: Instant) {
        if self.counter >= self.budget || now >= self.epoch_start + self.interval {
            self.key = next_epoch(&self.key);
            self.cipher = SleeveCipher::new(&self.key);
            self.epoch = self.epoch.saturating_add(1);
            self.counter = 0;
            self.epoch_start = now;
        }
        out.clear();
        // The plain header (version, kind, sender) with the kind replaced.
        out.extend_from_slice(plain.get(..8).unwrap_or(&[1, 0, 0, 0, 0, 0, 0, 0]));
        out[1] = KIND_SEALED;
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.counter.to_be_bytes());
        out.extend_from_slice(plain);
        let (head, body) = out.split_at_mut(SEALED_HEADER_LEN);
        let tag = self
            .cipher
            .seal(sleeve_nonce(self.epoch, self.counter), head, body);
        out.extend_from_slice(&tag);
        self.counter += 1;
    }
}

struct RxEpoch {
    epoch: u32,
    cipher: SleeveCipher,
    window: ReplayWindow,
}

/// Opens sleeve datagrams from one neighbour.
pub struct SleeveRx {
    key: Secret,
    current: RxEpoch,
    previous: Option<RxEpoch>,
}

impl std::fmt::Debug for SleeveRx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SleeveRx")
            .field("epoch", &self.current.epoch)
            .finish()
    }
}

impl SleeveRx {
    /// A receiver with the handshake's sleeve key for the peer's direction.
    pub fn new(key: Secret) -> Self {
        Self {
            current: RxEpoch {
                epoch: 0,
                cipher: SleeveCipher::new(&key),
                window: ReplayWindow::new(),
            },
            key,
            previous: None,
        }
    }

    /// Opens a sealed datagram into `out` (replacing its contents) and
    /// returns the inner datagram.
    pub fn open<'a>(
        &mut self,
        sealed: &[u8],
        out: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], SessionError> {
        if sealed.len() < SEALED_OVERHEAD {
            return Err(SessionError::Truncated);
        }
        let (head, rest) = sealed.split_at(SEALED_HEADER_LEN);
        let epoch = u32::from_be_bytes([head[8], head[9], head[10], head[11]]);
        let mut c = [0u8; 8];
        c.copy_from_slice(&head[12..20]);
        let counter = u64::from_be_bytes(c);
        let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
        let nonce = sleeve_nonce(epoch, counter);
        out.clear();
        out.extend_from_slice(ct);

        let known = if epoch == self.current.epoch {
            Some(&mut self.current)
        } else {
            self.previous.as_mut().filter(|p| p.epoch == epoch)
        };
        if let Some(rx) = known {
            if !rx.window.check(counter) {
                return Err(SessionError::Replay);
            }
            rx.cipher.open(nonce, head, out, tag)?;
            rx.window.commit(counter);
            return Ok(out);
        }
        // A later epoch: derive its key, and move to it only if the
        // datagram really opens with it.
        let ahead = epoch.wrapping_sub(self.current.epoch);
        if epoch < self.current.epoch || ahead > MAX_EPOCH_SKIP {
            return Err(SessionError::Epoch);
        }
        let mut key = self.key.clone();
        for _ in 0..ahead {
            key = next_epoch(&key);
        }
        let cipher = SleeveCipher::new(&key);
        cipher.open(nonce, head, out, tag)?;
        let mut window = ReplayWindow::new();
        window.commit(counter);
        let old = std::mem::replace(
            &mut self.current,
            RxEpoch {
                epoch,
                cipher,
                window,
            },
        );
        self.previous = Some(old);
        self.key = key;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(now: Instant) -> (ControlSealer, ControlOpener) {
        let k = Secret::new([3; 32]);
        (ControlSealer::new(k.clone(), now), ControlOpener::new(k))
    }

    fn open_frame(o: &mut ControlOpener, frame: &[u8]) -> Result<Option<Vec<u8>>, SessionError> {
        let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
        assert_eq!(len as usize, frame.len() - 4);
        o.open(len, &frame[4..])
    }

    #[test]
    fn control_frames_round_trip_and_detect_tampering() {
        let now = Instant::now();
        let (mut s, mut o) = pair(now);
        let f1 = s.seal(b"\x02");
        let f2 = s.seal(b"\x03\x00hello");
        assert_eq!(f1.len(), 4 + 1 + TAG_LEN);
        assert_eq!(open_frame(&mut o, &f1).unwrap().unwrap(), b"\x02");
        // a replay of the first frame no longer opens (implicit counter)
        assert_eq!(open_frame(&mut o, &f1), Err(SessionError::Decrypt));
        let (mut s, mut o) = pair(now);
        let _ = s.seal(b"\x02");
        let f2b = s.seal(b"\x03\x00hello");
        assert_eq!(f2, f2b, "same key and counter, same bytes");
        // skipping a frame fails: reordering or dropping is detected
        assert_eq!(open_frame(&mut o, &f2b), Err(SessionError::Decrypt));
        // a changed length prefix fails
        let (mut s, mut o) = pair(now);
        let mut f = s.seal(b"\x02");
        f[3] ^= 1;
        assert!(o
            .open(u32::from_be_bytes([f[0], f[1], f[2], f[3]]), &f[4..])
            .is_err());
    }

    #[test]
    fn control_rekey_is_announced_and_followed() {
        let now = Instant::now();
        let (mut s, mut o) = pair(now);
        assert!(s.rekey_if_due(now).is_none());
        let announce = s.rekey_if_due(now + REKEY_INTERVAL).unwrap();
        let after = s.seal(b"\x02");
        assert_eq!(open_frame(&mut o, &announce), Ok(None));
        assert_eq!(open_frame(&mut o, &after).unwrap().unwrap(), b"\x02");
        // the new key differs from the old one
        let (_, mut stale) = pair(now);
        assert!(open_frame(&mut stale, &after).is_err());
        // the message budget forces a rekey inside seal
        // (both counters jump ahead, as if 2^24 frames had passed)
        s.n = CONTROL_REKEY_MESSAGES;
        o.n = CONTROL_REKEY_MESSAGES;
        let both = s.seal(b"\x02");
        let first_len = 4 + 1 + TAG_LEN;
        assert_eq!(open_frame(&mut o, &both[..first_len]), Ok(None));
        assert_eq!(
            open_frame(&mut o, &both[first_len..]).unwrap().unwrap(),
            b"\x02"
        );
    }

    fn plain() -> Vec<u8> {
        let mut p = vec![1, 1, 2, 0, 0, 0, 0, 1];
        p.extend_from_slice(b"frame bytes of some length");
        p
    }

    #[test]
    fn sleeve_datagrams_are_plain_rfc8439_on_the_wire() {
        // What ring seals, the portable implementation opens: the switch
        // of implementation changed no byte on the wire.
        use chacha20poly1305::aead::{AeadInPlace, KeyInit};
        let now = Instant::now();
        let key = Secret::new([9; 32]);
        let mut tx = SleeveTx::new(key.clone(), now);
        let plain: Vec<u8> = (0..1500u32).map(|i| i.to_le_bytes()[0]).collect();
        let mut sealed = Vec::new();
        tx.seal(&plain, &mut sealed, now);
        tx.seal(&plain, &mut sealed, now);
        let (head, rest) = sealed.split_at(SEALED_HEADER_LEN);
        let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&1u64.to_be_bytes());
        let mut body = ct.to_vec();
        chacha20poly1305::ChaCha20Poly1305::new(key.expose().into())
            .decrypt_in_place_detached(&nonce.into(), head, &mut body, tag.into())
            .expect("opens with the portable implementation");
        assert_eq!(body, plain);
    }

    #[test]
    fn sleeve_round_trip_replay_and_bit_flips() {
        let now = Instant::now();
        let k = Secret::new([9; 32]);
        let mut tx = SleeveTx::new(k.clone(), now);
        let mut rx = SleeveRx::new(k);
        let (mut sealed, mut out) = (Vec::new(), Vec::new());
        tx.seal(&plain(), &mut sealed, now);
        assert_eq!(sealed.len(), plain().len() + SEALED_OVERHEAD);
        assert_eq!(&sealed[..8], &[1, KIND_SEALED, 2, 0, 0, 0, 0, 1]);
        assert!(!sealed.windows(5).any(|w| w == b"frame"));
        assert_eq!(rx.open(&sealed, &mut out).unwrap(), &plain()[..]);
        assert_eq!(rx.open(&sealed, &mut out), Err(SessionError::Replay));
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(rx.open(&bad, &mut out).is_err(), "byte {i}");
        }
        // a flipped datagram did not consume its counter: the real one opens
        let mut next = Vec::new();
        tx.seal(&plain(), &mut next, now);
        let mut flipped = next.clone();
        flipped[30] ^= 0x80;
        assert_eq!(rx.open(&flipped, &mut out), Err(SessionError::Decrypt));
        assert!(rx.open(&next, &mut out).is_ok());
        assert_eq!(rx.open(&[0; 10], &mut out), Err(SessionError::Truncated));
    }

    #[test]
    fn sleeve_epochs_rotate_and_late_datagrams_still_open() {
        let now = Instant::now();
        let k = Secret::new([5; 32]);
        let mut tx = SleeveTx::with_limits(k.clone(), now, Duration::from_secs(60), 3);
        let mut rx = SleeveRx::new(k);
        let mut out = Vec::new();
        let mut sealed = Vec::new();
        for _ in 0..10 {
            let mut s = Vec::new();
            tx.seal(&plain(), &mut s, now);
            sealed.push(s);
        }
        assert_eq!(tx.epoch(), 3);
        // in order, with epoch 1 lost apart from its last datagram, and
        // datagram 8 (epoch 2) arriving after the first of epoch 3
        for (i, s) in sealed.iter().enumerate() {
            if (3..5).contains(&i) || i == 8 {
                continue;
            }
            assert!(rx.open(s, &mut out).is_ok(), "datagram {i}");
        }
        // the late datagram of the previous epoch still opens, once
        assert!(rx.open(&sealed[8], &mut out).is_ok());
        assert_eq!(rx.open(&sealed[8], &mut out), Err(SessionError::Replay));
        // two epochs back is gone
        assert_eq!(rx.open(&sealed[3], &mut out), Err(SessionError::Epoch));
        let mut late = Vec::new();
        // time alone also rotates
        let before = tx.epoch();
        tx.seal(&plain(), &mut late, now + Duration::from_secs(61));
        assert_eq!(tx.epoch(), before + 1);
        assert!(rx.open(&late, &mut out).is_ok());
        // an epoch far ahead or long gone is refused without a key
        let mut far = late.clone();
        far[8..12].copy_from_slice(&100u32.to_be_bytes());
        assert_eq!(rx.open(&far, &mut out), Err(SessionError::Epoch));
        far[8..12].copy_from_slice(&0u32.to_be_bytes());
        assert_eq!(rx.open(&far, &mut out), Err(SessionError::Epoch));
    }
}
