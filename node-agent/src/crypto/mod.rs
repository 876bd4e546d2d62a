// SPDX-License-Identifier: Apache-2.0
//! Encryption of the mesh, without I/O: the shared password and the keys
//! derived from it, the handshake on the control connection
//! ([`handshake`], the Noise pattern `NNpsk0`), the AEAD framing of control
//! messages and sleeve datagrams ([`session`]) and the replay window of the
//! sleeve ([`replay`]). `PROTOCOL.md` §9 is the normative description and
//! gives the reasoning.
//!
//! Building blocks: X25519 (`x25519-dalek`), ChaCha20-Poly1305
//! (`chacha20poly1305`) and BLAKE2s (`blake2`), the RustCrypto crates that
//! `crypto_box` itself is built on. `crypto_box` offers only the NaCl box
//! construction (static keys, XSalsa20, no transcript hash, no KDF), which
//! would make us invent a key schedule; the Noise framework gives a
//! published one, and these crates are what it needs.
//!
//! Secrets live in [`Secret`], which wipes itself on drop and never prints.

pub mod handshake;
pub mod replay;
pub mod session;

use std::fmt;
use std::str::FromStr;

use zeroize::{Zeroize, ZeroizeOnDrop};

/// Argon2id salt for turning a password into a pre-shared key. Fixed, so
/// that every peer derives the same key without talking; it still makes
/// precomputed tables for other software useless.
const PSK_SALT: &[u8] = b"weave mesh psk v1 Noise_NNpsk0";
/// Argon2id memory cost in KiB: each guess of an offline attacker costs this
/// much memory (a captured handshake allows guessing offline).
const PSK_MEMORY_KIB: u32 = 19 * 1024;
/// Argon2id passes.
const PSK_PASSES: u32 = 2;
/// Most passwords accepted at once: the new one and the old one during a
/// rotation.
pub const MAX_PASSWORDS: usize = 2;

/// 32 bytes of key material that wipe themselves on drop and never print.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Secret([u8; 32]);

impl Secret {
    /// Wraps key bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The key bytes.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl PartialEq for Secret {
    /// Constant-time, so that comparing keys leaks nothing through timing.
    fn eq(&self, other: &Self) -> bool {
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl Eq for Secret {}

/// The sleeve keys of one neighbour, agreed in the handshake of the control
/// connection: one per direction.
#[derive(Debug, PartialEq, Eq)]
pub struct SleeveKeys {
    /// Datagrams we send to the neighbour.
    pub send: Secret,
    /// Datagrams we receive from it.
    pub recv: Secret,
}

/// The mesh password(s) as the operator gave them: the preferred one first,
/// optionally an old one still accepted during a rotation. `Debug` hides
/// the values.
#[derive(Clone, PartialEq, Eq)]
pub struct Passwords(Vec<String>);

impl fmt::Debug for Passwords {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Passwords({} hidden)", self.0.len())
    }
}

/// Why a password could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    /// Nothing but blank lines.
    #[error("the password is empty")]
    Empty,
    /// More lines than a rotation needs.
    #[error("at most {MAX_PASSWORDS} passwords (new, then old) are accepted, got {0}")]
    TooMany(usize),
    /// The key derivation refused its parameters.
    #[error("derive a key from the password: {0}")]
    Kdf(String),
}

impl FromStr for Passwords {
    type Err = PasswordError;

    /// One password per line (the preferred one first); surrounding
    /// whitespace and blank lines are ignored, so a trailing newline in a
    /// file does not change the password.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let list: Vec<String> = s
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        match list.len() {
            0 => Err(PasswordError::Empty),
            n if n > MAX_PASSWORDS => Err(PasswordError::TooMany(n)),
            _ => Ok(Self(list)),
        }
    }
}

impl Drop for Passwords {
    fn drop(&mut self) {
        for p in &mut self.0 {
            p.zeroize();
        }
    }
}

impl Passwords {
    /// How many passwords are held.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: an empty list is refused when parsing.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The pre-shared keys, in order of preference. Deliberately slow
    /// (Argon2id): run it once at start-up, off the async runtime.
    pub fn derive_psks(&self) -> Result<Vec<Secret>, PasswordError> {
        let params = argon2::Params::new(PSK_MEMORY_KIB, PSK_PASSES, 1, Some(32))
            .map_err(|e| PasswordError::Kdf(e.to_string()))?;
        let kdf = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        self.0
            .iter()
            .map(|p| {
                let mut out = [0u8; 32];
                kdf.hash_password_into(p.as_bytes(), PSK_SALT, &mut out)
                    .map_err(|e| PasswordError::Kdf(e.to_string()))?;
                Ok(Secret::new(out))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_parse_one_per_line_and_never_print() {
        let p: Passwords = "new-secret\r\n\n  old-secret  \n".parse().unwrap();
        assert_eq!(p.len(), 2);
        let shown = format!("{p:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert_eq!("".parse::<Passwords>(), Err(PasswordError::Empty));
        assert_eq!(" \n\n".parse::<Passwords>(), Err(PasswordError::Empty));
        assert_eq!(
            "a\nb\nc".parse::<Passwords>(),
            Err(PasswordError::TooMany(3))
        );
        let s = Secret::new([7; 32]);
        assert_eq!(format!("{s:?}"), "Secret(..)");
    }

    #[test]
    fn psks_are_stable_and_differ_per_password() {
        let a: Passwords = "alpha\nbeta".parse().unwrap();
        let b: Passwords = "alpha".parse().unwrap();
        let ka = a.derive_psks().unwrap();
        let kb = b.derive_psks().unwrap();
        assert_eq!(ka.len(), 2);
        assert_eq!(ka[0], kb[0]);
        assert_ne!(ka[0], ka[1]);
    }
}
