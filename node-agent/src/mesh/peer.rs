// SPDX-License-Identifier: Apache-2.0
//! Identity of a peer: its 48-bit name, printed like a MAC address, and the
//! random UID of one incarnation (one process start).
//!
//! The name is stable across restarts (it is persisted in the state directory);
//! the UID is not, which is how peers tell a restart from a duplicate.

use std::fmt;
use std::str::FromStr;

use rand::Rng;

/// A 48-bit peer name, `aa:bb:cc:dd:ee:ff` in text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerName(u64);

/// Names are 48 bits wide.
const NAME_MASK: u64 = 0xffff_ffff_ffff;

impl PeerName {
    /// `ff:ff:ff:ff:ff:ff`: never a real peer (real names are unicast MACs);
    /// the sleeve uses it as the destination of flooded frames.
    pub const BROADCAST: PeerName = PeerName(NAME_MASK);

    /// A name from its 6 bytes, most significant first.
    pub fn from_bytes(b: [u8; 6]) -> Self {
        let mut v = 0u64;
        for byte in b {
            v = (v << 8) | u64::from(byte);
        }
        Self(v)
    }

    /// The 6 bytes of the name, most significant first.
    pub fn to_bytes(self) -> [u8; 6] {
        let b = self.0.to_be_bytes();
        [b[2], b[3], b[4], b[5], b[6], b[7]]
    }

    /// A random name with the MAC "locally administered" bit set and the
    /// multicast bit clear, so it is also usable as a unicast MAC address.
    pub fn random(rng: &mut impl Rng) -> Self {
        let mut b: [u8; 6] = rng.gen();
        b[0] = (b[0] & !0x01) | 0x02;
        Self::from_bytes(b)
    }

    /// The name as an integer (48 significant bits).
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// A name from an integer; bits above 48 are dropped.
    pub fn from_u64(v: u64) -> Self {
        Self(v & NAME_MASK)
    }
}

impl fmt::Display for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.to_bytes();
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// Error of parsing a peer name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid peer name {0:?}: expected six hex bytes like aa:bb:cc:dd:ee:ff")]
pub struct ParsePeerNameError(String);

impl FromStr for PeerName {
    type Err = ParsePeerNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParsePeerNameError(s.to_string());
        let mut bytes = [0u8; 6];
        let mut parts = s.split(':');
        for slot in &mut bytes {
            let part = parts.next().ok_or_else(err)?;
            if part.is_empty() || part.len() > 2 {
                return Err(err());
            }
            *slot = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(Self::from_bytes(bytes))
    }
}

/// Text (`aa:bb:…`) in human-readable formats such as the state file, a
/// plain integer in compact binary ones such as IPAM gossip.
impl serde::Serialize for PeerName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            s.serialize_u64(self.0)
        }
    }
}

impl<'de> serde::Deserialize<'de> for PeerName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            let v = u64::deserialize(d)?;
            if v > NAME_MASK {
                return Err(serde::de::Error::custom("peer name wider than 48 bits"));
            }
            Ok(Self(v))
        }
    }
}

/// Random non-zero identifier of one incarnation of a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerUid(u64);

impl PeerUid {
    /// A fresh random UID (never zero).
    pub fn random(rng: &mut impl Rng) -> Self {
        Self(rng.gen_range(1..=u64::MAX))
    }

    /// The UID from its wire value.
    pub fn new(v: u64) -> Self {
        Self(v)
    }

    /// The UID as an integer.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for PeerUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn name_round_trips_through_text_and_bytes() {
        let n: PeerName = "0a:bb:0c:dd:ee:ff".parse().unwrap();
        assert_eq!(n.to_string(), "0a:bb:0c:dd:ee:ff");
        assert_eq!(n.to_bytes(), [0x0a, 0xbb, 0x0c, 0xdd, 0xee, 0xff]);
        assert_eq!(PeerName::from_bytes(n.to_bytes()), n);
        assert_eq!(
            "a:b:c:d:e:f".parse::<PeerName>().unwrap().to_string(),
            "0a:0b:0c:0d:0e:0f"
        );
    }

    #[test]
    fn bad_names_are_rejected() {
        for bad in [
            "",
            "aa:bb:cc:dd:ee",
            "aa:bb:cc:dd:ee:ff:00",
            "aa:bb:cc:dd:ee:gg",
            "aaa:bb:cc:dd:ee:f",
            "aa::cc:dd:ee:ff",
        ] {
            assert!(bad.parse::<PeerName>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn random_name_is_unicast_and_local() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..100 {
            let b = PeerName::random(&mut rng).to_bytes();
            assert_eq!(b[0] & 0x01, 0);
            assert_eq!(b[0] & 0x02, 0x02);
            assert_ne!(PeerUid::random(&mut rng).get(), 0);
        }
    }
}
