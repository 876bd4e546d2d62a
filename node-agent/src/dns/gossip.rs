// SPDX-License-Identifier: Apache-2.0
//! The wire form of weaveDNS gossip (channel 2, `PROTOCOL.md` §11): a
//! versioned postcard encoding of per-origin record sets, used alike for
//! deltas, full state and answers. Decoding validates everything a peer
//! could get wrong (format, names, holders, bounds) before the zone sees it.

use std::net::Ipv4Addr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::name::DnsName;
use crate::mesh::PeerName;

/// Records (live and deleted) one origin may hold.
pub const MAX_PER_ORIGIN: usize = 16_384;
/// Origins kept.
pub const MAX_ORIGINS: usize = 1024;
/// Longest holder identifier, in bytes.
pub const MAX_HOLDER: usize = 128;
/// Highest version or floor a peer may send. An origin's clock grows by one
/// per local change, so this is never reached honestly; refusing more keeps
/// a faulty peer from pushing a clock to `u64::MAX`, where the next own
/// change could not be numbered.
pub const MAX_VERSION: u64 = 1 << 62;

/// Who registered a record on its origin: a container or attachment id,
/// `weave:extern` (`weave dns-add` without one), `weave:expose`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Holder(Arc<str>);

impl Holder {
    /// The holder of records added by hand.
    pub const EXTERN: &'static str = "weave:extern";
    /// The holder of the bridge's own names (`weave expose -h`).
    pub const EXPOSE: &'static str = "weave:expose";

    /// Validates: 1..=[`MAX_HOLDER`] printable ASCII bytes without spaces.
    pub fn new(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > MAX_HOLDER || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "invalid id {s:?}: 1 to {MAX_HOLDER} printable characters without spaces"
            ));
        }
        Ok(Self(s.into()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Holder {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl From<Holder> for String {
    fn from(h: Holder) -> Self {
        h.0.to_string()
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Version of the encoding.
pub const FORMAT: u8 = 1;
/// Entries per message when the full state is cut into messages: at most
/// about 400 bytes each, so a message stays far below the mesh's 4 MiB
/// frame limit.
pub const CHUNK_ENTRIES: usize = 4096;

/// Why gossip bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GossipError {
    /// Not postcard of the expected shape, or a name or holder that does
    /// not validate.
    #[error("undecodable DNS gossip: {0}")]
    Decode(String),
    /// Another version of the encoding.
    #[error("DNS gossip format {0} not supported (this peer speaks {FORMAT})")]
    Format(u8),
    /// More origins or entries than any honest peer sends.
    #[error("DNS gossip too large: {0}")]
    TooLarge(String),
}

/// One record as gossiped: its identity (name, address, holder) and the
/// origin's version of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireEntry {
    /// The name.
    pub name: DnsName,
    /// The address.
    pub addr: Ipv4Addr,
    /// Who registered it on the origin (container, `weave:extern`, …).
    pub holder: Holder,
    /// The origin's counter when it last changed.
    pub version: u64,
    /// Deleted (kept until the origin raises its floor past it).
    pub tombstone: bool,
}

/// The records of one origin peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginGossip {
    /// The peer that registered them; only it changes them.
    pub origin: PeerName,
    /// Every record of the origin at or below this version is gone: the
    /// origin purged its tombstones up to here and re-versioned its live
    /// records above it.
    pub floor: u64,
    /// Whether `entries` are all the sender knows of this origin (then the
    /// receiver can answer with what the sender lacks).
    pub complete: bool,
    /// Records, live and deleted.
    pub entries: Vec<WireEntry>,
}

/// A gossip message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsGossip {
    /// Encoding version ([`FORMAT`]).
    pub format: u8,
    /// Whether the message lists every origin the sender knows (a full
    /// state that fitted in one message).
    pub complete: bool,
    /// Per-origin records.
    pub origins: Vec<OriginGossip>,
}

impl DnsGossip {
    /// A message of `origins`.
    pub fn new(complete: bool, origins: Vec<OriginGossip>) -> Self {
        Self {
            format: FORMAT,
            complete,
            origins,
        }
    }

    /// Decodes and validates bytes from a peer.
    pub fn decode(bytes: &[u8]) -> Result<Self, GossipError> {
        // The format byte comes first in the encoding: refuse another
        // version with its own message before trying to read the rest.
        match bytes.first() {
            Some(&f) if f != FORMAT => return Err(GossipError::Format(f)),
            _ => {}
        }
        let g: DnsGossip =
            postcard::from_bytes(bytes).map_err(|e| GossipError::Decode(e.to_string()))?;
        if g.origins.len() > MAX_ORIGINS {
            return Err(GossipError::TooLarge(format!(
                "{} origins, at most {MAX_ORIGINS}",
                g.origins.len()
            )));
        }
        for o in &g.origins {
            let top = o.entries.iter().map(|e| e.version).chain([o.floor]).max();
            if let Some(v) = top.filter(|v| *v > MAX_VERSION) {
                return Err(GossipError::TooLarge(format!(
                    "version {v} of {}, at most {MAX_VERSION}",
                    o.origin
                )));
            }
            if o.entries.len() > MAX_PER_ORIGIN {
                return Err(GossipError::TooLarge(format!(
                    "{} records of {}, at most {MAX_PER_ORIGIN}",
                    o.entries.len(),
                    o.origin
                )));
            }
        }
        Ok(g)
    }

    /// Encodes for the wire.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("encoding to a Vec cannot fail")
    }

    /// Whether it carries nothing.
    pub fn is_empty(&self) -> bool {
        self.origins.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes of a one-record delta, field by field.
    #[test]
    fn wire_bytes() {
        let g = DnsGossip::new(
            false,
            vec![OriginGossip {
                origin: PeerName::from_u64(0x0200_0000_0001),
                floor: 3,
                complete: true,
                entries: vec![WireEntry {
                    name: DnsName::parse("a.w.").unwrap(),
                    addr: Ipv4Addr::new(10, 32, 0, 5),
                    holder: Holder::new("c1").unwrap(),
                    version: 300,
                    tombstone: false,
                }],
            }],
        );
        let bytes = g.encode();
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            1,                      // format
            0,                      // complete: false
            1,                      // one origin
            0x81, 0x80, 0x80, 0x80, 0x80, 0x40, // origin peer name (u64 varint 0x0200_0000_0001)
            3,                      // floor
            1,                      // complete: true
            1,                      // one entry
            4, b'a', b'.', b'w', b'.', // name, length-prefixed
            10, 32, 0, 5,           // address
            2, b'c', b'1',          // holder
            0xac, 0x02,             // version 300 (varint)
            0,                      // tombstone: false
        ];
        assert_eq!(bytes, want);
        assert_eq!(DnsGossip::decode(&bytes).unwrap(), g);
    }

    #[test]
    fn bad_bytes_are_refused_with_the_reason() {
        assert!(matches!(
            DnsGossip::decode(&[2, 0, 0]),
            Err(GossipError::Format(2))
        ));
        assert!(matches!(
            DnsGossip::decode(&[]),
            Err(GossipError::Decode(_))
        ));
        assert!(matches!(
            DnsGossip::decode(&[1, 0, 1, 1]),
            Err(GossipError::Decode(_))
        ));
        // A version past the bound, in an entry and as a floor.
        for (floor, version) in [(0, MAX_VERSION + 1), (u64::MAX, 1)] {
            let g = DnsGossip::new(
                false,
                vec![OriginGossip {
                    origin: PeerName::from_u64(2),
                    floor,
                    complete: false,
                    entries: vec![WireEntry {
                        name: DnsName::parse("a.w.").unwrap(),
                        addr: Ipv4Addr::new(10, 32, 0, 5),
                        holder: Holder::new("c1").unwrap(),
                        version,
                        tombstone: false,
                    }],
                }],
            );
            assert!(
                matches!(DnsGossip::decode(&g.encode()), Err(GossipError::TooLarge(ref m)) if m.contains("at most")),
                "{:?}",
                DnsGossip::decode(&g.encode())
            );
        }
        // A name with a space in it.
        let mut g = DnsGossip::new(false, vec![]).encode();
        g.truncate(2);
        g.extend([
            1, 1, 0, 0, 1, 3, b'a', b' ', b'.', 10, 0, 0, 1, 1, b'x', 1, 0,
        ]);
        assert!(
            matches!(DnsGossip::decode(&g), Err(GossipError::Decode(_))),
            "{:?}",
            DnsGossip::decode(&g)
        );
    }
}
