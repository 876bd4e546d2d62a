// SPDX-License-Identifier: Apache-2.0
//! The handshake of an encrypted control connection: the Noise pattern
//! `Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s` (Noise specification revision
//! 34, §7.5 and §9), written out by hand and checked against the `snow`
//! implementation in the tests.
//!
//! ```text
//! NNpsk0:
//!   -> psk, e      (initiator = the dialling side)
//!   <- e, ee
//! ```
//!
//! Both sides hold a pre-shared key derived from the mesh password. The
//! first message proves the initiator knows it (its empty payload is sealed
//! under a key mixed from the PSK), the second proves the responder knows it
//! and adds the ephemeral Diffie-Hellman result, so the session keys depend
//! on both fresh ephemeral keys (forward secrecy) and on the PSK (mutual
//! authentication, no man in the middle without the password). The prologue
//! binds both version headers into the transcript, so a downgrade changes
//! the keys and fails.
//!
//! Password rotation: the initiator sends one first message per password it
//! holds (preferred first), each with its own ephemeral key; the responder
//! takes the first it can open with any of its passwords and says which in
//! its answer. Trying costs no Diffie-Hellman (the first message needs none).
//!
//! The responder's handshake ends when it sends its message, but a replayed
//! first message would also get that far; the caller must count the peer as
//! authenticated only once the first transport message from it decrypts.

use blake2::{Blake2s256, Digest};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::ChaCha20Poly1305;
use rand::{CryptoRng, RngCore};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroize;

use super::Secret;

/// The Noise protocol name, hashed into the initial state.
pub const PROTOCOL_NAME: &[u8] = b"Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
/// Input for deriving the sleeve keys from the final chaining key.
const SLEEVE_LABEL: &[u8] = b"weave sleeve v1";
/// Length of one first message: ephemeral public key and the tag of the
/// empty payload.
pub const OFFER_LEN: usize = 32 + 16;
/// Length of the responder's message: offer index, ephemeral key, tag.
pub const ANSWER_LEN: usize = 1 + 32 + 16;
/// BLAKE2s block size, for HMAC.
const BLOCK: usize = 64;

/// Why a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// A message had the wrong size or count.
    #[error("malformed handshake message")]
    Malformed,
    /// No offer opened with any of our passwords, or the answer did not.
    #[error("the peer does not know our password")]
    Authentication,
    /// The peer's ephemeral key is a low-order point.
    #[error("weak ephemeral key from the peer")]
    WeakKey,
}

/// Keys of one connection after a successful handshake.
#[derive(Debug)]
pub struct SessionKeys {
    /// Control messages we send.
    pub send: Secret,
    /// Control messages we receive.
    pub recv: Secret,
    /// Sleeve datagrams we send to this peer.
    pub sleeve_send: Secret,
    /// Sleeve datagrams we receive from this peer.
    pub sleeve_recv: Secret,
    /// Which of our passwords the peer shares (0 = the preferred one).
    pub psk_index: usize,
}

/// The Noise symmetric state: chaining key, transcript hash, cipher key.
#[derive(Clone)]
struct Symmetric {
    ck: [u8; 32],
    h: [u8; 32],
    k: [u8; 32],
    n: u64,
}

impl Drop for Symmetric {
    fn drop(&mut self) {
        self.ck.zeroize();
        self.k.zeroize();
    }
}

impl Symmetric {
    /// `InitializeSymmetric` (the name is longer than 32 bytes, so it is
    /// hashed) followed by `MixHash(prologue)`.
    fn new(prologue: &[u8]) -> Self {
        let h: [u8; 32] = Blake2s256::digest(PROTOCOL_NAME).into();
        let mut s = Self {
            ck: h,
            h,
            k: [0; 32],
            n: 0,
        };
        s.mix_hash(prologue);
        s
    }

    fn mix_hash(&mut self, data: &[u8]) {
        let mut d = Blake2s256::new();
        d.update(self.h);
        d.update(data);
        self.h = d.finalize().into();
    }

    fn mix_key(&mut self, ikm: &[u8]) {
        let (ck, k) = hkdf2(&self.ck, ikm);
        self.ck = ck;
        self.k = k;
        self.n = 0;
    }

    fn mix_key_and_hash(&mut self, ikm: &[u8]) {
        let (ck, th, k) = hkdf3(&self.ck, ikm);
        self.ck = ck;
        self.mix_hash(&th);
        self.k = k;
        self.n = 0;
    }

    fn encrypt_and_hash(&mut self, plain: &[u8]) -> Vec<u8> {
        let ct = aead_seal(&self.k, self.n, &self.h, plain);
        self.n += 1;
        self.mix_hash(&ct);
        ct
    }

    fn decrypt_and_hash(&mut self, ct: &[u8]) -> Result<Vec<u8>, HandshakeError> {
        let plain =
            aead_open(&self.k, self.n, &self.h, ct).ok_or(HandshakeError::Authentication)?;
        self.n += 1;
        self.mix_hash(ct);
        Ok(plain)
    }

    /// `Split`, plus the sleeve keys from the same chaining key with another
    /// input: (initiator→responder, responder→initiator) for each.
    fn split(&self) -> (Secret, Secret, Secret, Secret) {
        let (c1, c2) = hkdf2(&self.ck, &[]);
        let (s1, s2) = hkdf2(&self.ck, SLEEVE_LABEL);
        (
            Secret::new(c1),
            Secret::new(c2),
            Secret::new(s1),
            Secret::new(s2),
        )
    }
}

/// The dialling side, between sending its offers and reading the answer.
pub struct Initiator {
    offers: Vec<(Symmetric, StaticSecret)>,
}

impl std::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Initiator({} offers)", self.offers.len())
    }
}

impl Initiator {
    /// Starts a handshake with one offer per key in `psks` (preferred
    /// first); returns the state and the first message.
    pub fn start(
        psks: &[Secret],
        prologue: &[u8],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> (Self, Vec<u8>) {
        let mut msg = vec![u8::try_from(psks.len()).unwrap_or(u8::MAX)];
        let mut offers = Vec::with_capacity(psks.len());
        for psk in psks.iter().take(usize::from(u8::MAX)) {
            let mut s = Symmetric::new(prologue);
            s.mix_key_and_hash(psk.expose());
            let e = StaticSecret::random_from_rng(&mut *rng);
            let e_pub = PublicKey::from(&e);
            s.mix_hash(e_pub.as_bytes());
            s.mix_key(e_pub.as_bytes());
            msg.extend_from_slice(e_pub.as_bytes());
            msg.extend_from_slice(&s.encrypt_and_hash(&[]));
            offers.push((s, e));
        }
        (Self { offers }, msg)
    }

    /// Reads the responder's answer and returns the session keys (the
    /// offer index the responder chose is our password index).
    pub fn finish(self, answer: &[u8]) -> Result<SessionKeys, HandshakeError> {
        if answer.len() != ANSWER_LEN {
            return Err(HandshakeError::Malformed);
        }
        let index = usize::from(answer[0]);
        let (mut s, e) = self
            .offers
            .into_iter()
            .nth(index)
            .ok_or(HandshakeError::Malformed)?;
        let re = public_key(&answer[1..33]);
        s.mix_hash(re.as_bytes());
        s.mix_key(re.as_bytes());
        let dh = e.diffie_hellman(&re);
        if !dh.was_contributory() {
            return Err(HandshakeError::WeakKey);
        }
        s.mix_key(dh.as_bytes());
        let payload = s.decrypt_and_hash(&answer[33..])?;
        if !payload.is_empty() {
            return Err(HandshakeError::Malformed);
        }
        let (c1, c2, s1, s2) = s.split();
        Ok(SessionKeys {
            send: c1,
            recv: c2,
            sleeve_send: s1,
            sleeve_recv: s2,
            psk_index: index,
        })
    }
}

/// The accepting side: opens the first offer it can with any of `psks` and
/// returns its answer and the session keys.
pub fn respond(
    psks: &[Secret],
    prologue: &[u8],
    offers: &[u8],
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<(Vec<u8>, SessionKeys), HandshakeError> {
    let (&count, body) = offers.split_first().ok_or(HandshakeError::Malformed)?;
    let count = usize::from(count);
    if count == 0 || body.len() != count * OFFER_LEN {
        return Err(HandshakeError::Malformed);
    }
    let base = Symmetric::new(prologue);
    for (index, offer) in body.chunks_exact(OFFER_LEN).enumerate() {
        for (psk_index, psk) in psks.iter().enumerate() {
            let mut s = base.clone();
            s.mix_key_and_hash(psk.expose());
            s.mix_hash(&offer[..32]);
            s.mix_key(&offer[..32]);
            let Ok(payload) = s.decrypt_and_hash(&offer[32..]) else {
                continue;
            };
            if !payload.is_empty() {
                return Err(HandshakeError::Malformed);
            }
            let re = public_key(&offer[..32]);
            let e = StaticSecret::random_from_rng(&mut *rng);
            let e_pub = PublicKey::from(&e);
            let mut answer = vec![u8::try_from(index).unwrap_or(u8::MAX)];
            answer.extend_from_slice(e_pub.as_bytes());
            s.mix_hash(e_pub.as_bytes());
            s.mix_key(e_pub.as_bytes());
            let dh = e.diffie_hellman(&re);
            if !dh.was_contributory() {
                return Err(HandshakeError::WeakKey);
            }
            s.mix_key(dh.as_bytes());
            answer.extend_from_slice(&s.encrypt_and_hash(&[]));
            let (c1, c2, s1, s2) = s.split();
            return Ok((
                answer,
                SessionKeys {
                    send: c2,
                    recv: c1,
                    sleeve_send: s2,
                    sleeve_recv: s1,
                    psk_index,
                },
            ));
        }
    }
    Err(HandshakeError::Authentication)
}

fn public_key(b: &[u8]) -> PublicKey {
    let mut k = [0u8; 32];
    k.copy_from_slice(&b[..32]);
    PublicKey::from(k)
}

/// The Noise nonce for ChaCha20-Poly1305: 32 zero bits, then the counter
/// little-endian.
fn noise_nonce(n: u64) -> chacha20poly1305::Nonce {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&n.to_le_bytes());
    nonce.into()
}

/// `ENCRYPT(k, n, ad, plaintext)` of the Noise ChaChaPoly cipher.
pub(crate) fn aead_seal(k: &[u8; 32], n: u64, ad: &[u8], plain: &[u8]) -> Vec<u8> {
    ChaCha20Poly1305::new(k.into())
        .encrypt(
            &noise_nonce(n),
            Payload {
                msg: plain,
                aad: ad,
            },
        )
        .expect("ChaCha20-Poly1305 encrypts any input below 256 GiB")
}

/// `DECRYPT(k, n, ad, ciphertext)`; `None` when the tag does not verify.
pub(crate) fn aead_open(k: &[u8; 32], n: u64, ad: &[u8], ct: &[u8]) -> Option<Vec<u8>> {
    ChaCha20Poly1305::new(k.into())
        .decrypt(&noise_nonce(n), Payload { msg: ct, aad: ad })
        .ok()
}

/// HMAC-BLAKE2s (RFC 2104 with a 64-byte block).
fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut ipad = [0x36u8; BLOCK];
    let mut opad = [0x5cu8; BLOCK];
    for (i, b) in key.iter().enumerate() {
        ipad[i] ^= b;
        opad[i] ^= b;
    }
    let mut inner = Blake2s256::new();
    inner.update(ipad);
    for p in parts {
        inner.update(p);
    }
    let inner = inner.finalize();
    let mut outer = Blake2s256::new();
    outer.update(opad);
    outer.update(inner);
    ipad.zeroize();
    opad.zeroize();
    outer.finalize().into()
}

/// The Noise `HKDF` with two outputs.
pub(crate) fn hkdf2(ck: &[u8; 32], ikm: &[u8]) -> ([u8; 32], [u8; 32]) {
    let mut temp = hmac(ck, &[ikm]);
    let o1 = hmac(&temp, &[&[1]]);
    let o2 = hmac(&temp, &[&o1, &[2]]);
    temp.zeroize();
    (o1, o2)
}

/// The Noise `HKDF` with three outputs.
fn hkdf3(ck: &[u8; 32], ikm: &[u8]) -> ([u8; 32], [u8; 32], [u8; 32]) {
    let mut temp = hmac(ck, &[ikm]);
    let o1 = hmac(&temp, &[&[1]]);
    let o2 = hmac(&temp, &[&o1, &[2]]);
    let o3 = hmac(&temp, &[&o2, &[3]]);
    temp.zeroize();
    (o1, o2, o3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;

    const PROLOGUE: &[u8] = b"weave\x02\x02weave\x02\x02";

    fn psk(b: u8) -> Secret {
        Secret::new([b; 32])
    }

    #[test]
    fn both_sides_derive_mirrored_keys() {
        let (init, offers) = Initiator::start(&[psk(1)], PROLOGUE, &mut OsRng);
        assert_eq!(offers.len(), 1 + OFFER_LEN);
        let (answer, r) = respond(&[psk(1)], PROLOGUE, &offers, &mut OsRng).unwrap();
        assert_eq!(answer.len(), ANSWER_LEN);
        let i = init.finish(&answer).unwrap();
        assert_eq!(i.send, r.recv);
        assert_eq!(i.recv, r.send);
        assert_eq!(i.sleeve_send, r.sleeve_recv);
        assert_eq!(i.sleeve_recv, r.sleeve_send);
        assert_ne!(i.send, i.recv);
        assert_ne!(i.send, i.sleeve_send);
        // fresh ephemeral keys every time: forward secrecy per connection
        let (init2, offers2) = Initiator::start(&[psk(1)], PROLOGUE, &mut OsRng);
        let (answer2, _) = respond(&[psk(1)], PROLOGUE, &offers2, &mut OsRng).unwrap();
        assert_ne!(init2.finish(&answer2).unwrap().send, i.send);
    }

    #[test]
    fn wrong_password_or_prologue_fails() {
        let (_, offers) = Initiator::start(&[psk(1)], PROLOGUE, &mut OsRng);
        assert_eq!(
            respond(&[psk(2)], PROLOGUE, &offers, &mut OsRng).unwrap_err(),
            HandshakeError::Authentication
        );
        // a downgraded header changes the transcript
        assert_eq!(
            respond(
                &[psk(1)],
                b"weave\x01\x02weave\x02\x02",
                &offers,
                &mut OsRng
            )
            .unwrap_err(),
            HandshakeError::Authentication
        );
        // a forged answer (right size, wrong key) fails at the initiator
        let (init, _) = Initiator::start(&[psk(1)], PROLOGUE, &mut OsRng);
        let mut forged = vec![0u8; ANSWER_LEN];
        forged[1] = 9;
        assert!(init.finish(&forged).is_err());
    }

    #[test]
    fn bit_flips_are_refused() {
        let (init, offers) = Initiator::start(&[psk(1)], PROLOGUE, &mut OsRng);
        for i in 1..offers.len() {
            let mut bad = offers.clone();
            bad[i] ^= 0x10;
            assert!(
                respond(&[psk(1)], PROLOGUE, &bad, &mut OsRng).is_err(),
                "{i}"
            );
        }
        let (answer, _) = respond(&[psk(1)], PROLOGUE, &offers, &mut OsRng).unwrap();
        let mut bad = answer.clone();
        bad[40] ^= 1;
        assert!(init.finish(&bad).is_err());
    }

    #[test]
    fn rotation_prefers_the_first_shared_password() {
        let (a, b) = (psk(0xa), psk(0xb));
        // new peer (B, A) dials an old one (A): A is used
        let (init, offers) = Initiator::start(&[b.clone(), a.clone()], PROLOGUE, &mut OsRng);
        assert_eq!(offers.len(), 1 + 2 * OFFER_LEN);
        let (answer, r) = respond(std::slice::from_ref(&a), PROLOGUE, &offers, &mut OsRng).unwrap();
        assert_eq!(answer[0], 1);
        assert_eq!(r.psk_index, 0);
        assert_eq!(init.finish(&answer).unwrap().send, r.recv);
        // both hold (B, A): B wins
        let (init, offers) = Initiator::start(&[b.clone(), a.clone()], PROLOGUE, &mut OsRng);
        let (answer, r) = respond(&[b.clone(), a.clone()], PROLOGUE, &offers, &mut OsRng).unwrap();
        assert_eq!((answer[0], r.psk_index), (0, 0));
        assert_eq!(init.finish(&answer).unwrap().psk_index, 0);
        // old peer (A) dials a finished one (B): refused
        let (_, offers) = Initiator::start(&[a], PROLOGUE, &mut OsRng);
        assert!(respond(&[b], PROLOGUE, &offers, &mut OsRng).is_err());
    }

    #[test]
    fn malformed_messages_are_refused() {
        for bad in [&[][..], &[0][..], &[1, 2, 3][..], &[2; 49][..]] {
            assert_eq!(
                respond(&[psk(1)], PROLOGUE, bad, &mut OsRng).unwrap_err(),
                HandshakeError::Malformed
            );
        }
        let (init, _) = Initiator::start(&[psk(1)], PROLOGUE, &mut OsRng);
        assert_eq!(init.finish(&[0; 3]).unwrap_err(), HandshakeError::Malformed);
    }

    /// Our hand-written pattern interoperates with `snow`, an independent
    /// Noise implementation, in both roles: the same messages, the same keys.
    #[test]
    fn interoperates_with_snow() {
        let params: snow::params::NoiseParams =
            "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s".parse().unwrap();
        let key = psk(0x42);
        let mut buf = [0u8; 1024];
        let mut out = [0u8; 1024];

        // we initiate, snow responds
        let (init, offers) = Initiator::start(std::slice::from_ref(&key), PROLOGUE, &mut OsRng);
        let mut resp = snow::Builder::new(params.clone())
            .prologue(PROLOGUE)
            .psk(0, key.expose())
            .build_responder()
            .unwrap();
        resp.read_message(&offers[1..], &mut buf).unwrap();
        let n = resp.write_message(&[], &mut out).unwrap();
        let mut answer = vec![0u8];
        answer.extend_from_slice(&out[..n]);
        let keys = init.finish(&answer).unwrap();
        let mut resp = resp.into_transport_mode().unwrap();
        let ct = aead_seal(keys.send.expose(), 0, &[], b"hello snow");
        let n = resp.read_message(&ct, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello snow");
        let n = resp.write_message(b"hello weave", &mut out).unwrap();
        assert_eq!(
            aead_open(keys.recv.expose(), 0, &[], &out[..n]).unwrap(),
            b"hello weave"
        );

        // snow initiates, we respond
        let mut init = snow::Builder::new(params)
            .prologue(PROLOGUE)
            .psk(0, key.expose())
            .build_initiator()
            .unwrap();
        let n = init.write_message(&[], &mut out).unwrap();
        let mut offers = vec![1u8];
        offers.extend_from_slice(&out[..n]);
        let (answer, keys) = respond(&[key], PROLOGUE, &offers, &mut OsRng).unwrap();
        init.read_message(&answer[1..], &mut buf).unwrap();
        let mut init = init.into_transport_mode().unwrap();
        let n = init.write_message(b"ping", &mut out).unwrap();
        assert_eq!(
            aead_open(keys.recv.expose(), 0, &[], &out[..n]).unwrap(),
            b"ping"
        );
    }
}
