// SPDX-License-Identifier: Apache-2.0
//! IPAM state on disk: `STATE_DIR/ipam.json`, replaced atomically (temporary
//! file, rename) on every change, before the change is acknowledged, so a
//! crash of the agent at any instant leaves the old or the new state, both
//! readable. Waiting for the disk on every change would cost each allocation
//! milliseconds, so the file is made durable (fsync of file and directory)
//! at most a second later, by [`sync`]. A power loss can therefore lose the
//! last second of changes: the ring is held by every peer and comes back by
//! gossip, and the allocations lost belong to pods that did not survive the
//! power loss either (the CNI GC releases what the runtime no longer lists).
//!
//! A file that belongs to another peer name or another allocation range is
//! refused with an error rather than silently dropped: dropping it could hand
//! out addresses that running pods still use.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ring::Ring;
use super::space::{Allocation, Ident};
use super::subnet::Subnet;
use crate::mesh::PeerName;

/// File name inside the state directory.
pub const FILE: &str = "ipam.json";
/// Version of the file format.
pub const FORMAT: u32 = 1;

/// What IPAM keeps across restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Persisted {
    /// File format ([`FORMAT`]).
    pub format: u32,
    /// The peer the state belongs to.
    pub peer: PeerName,
    /// The allocation range.
    pub range: Subnet,
    /// Version of the peer's gossiped record.
    pub version: u64,
    /// The ring.
    pub ring: Ring,
    /// Removed peers.
    pub removed: BTreeMap<PeerName, PeerName>,
    /// Allocations of this peer.
    pub allocations: Vec<(Ident, Allocation)>,
}

/// The JSON shape, readable with `jq`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    format: u32,
    peer: PeerName,
    range: Subnet,
    version: u64,
    seeds: Vec<PeerName>,
    tokens: Vec<FileToken>,
    removed: BTreeMap<PeerName, PeerName>,
    allocations: Vec<FileAllocation>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToken {
    start: Ipv4Addr,
    owner: PeerName,
    version: u64,
    #[serde(default)]
    takeover: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAllocation {
    id: Ident,
    address: Ipv4Addr,
    subnet: Subnet,
}

/// Why the file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// Reading or writing failed.
    #[error("IPAM state {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The content is not valid.
    #[error("IPAM state {path} is unreadable: {reason}; move it away to start afresh (running pods may then lose their addresses)")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The file is for another peer or range.
    #[error("IPAM state {path} {reason}; move it away to start afresh (running pods may then lose their addresses)")]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// What differs.
        reason: String,
    },
}

impl Persisted {
    /// Encodes as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        let file = File {
            format: self.format,
            peer: self.peer,
            range: self.range,
            version: self.version,
            seeds: self.ring.seeds.clone(),
            tokens: self
                .ring
                .tokens
                .iter()
                .map(|(t, e)| FileToken {
                    start: Ipv4Addr::from(*t),
                    owner: e.owner,
                    version: e.version,
                    takeover: e.takeover,
                })
                .collect(),
            removed: self.removed.clone(),
            allocations: self
                .allocations
                .iter()
                .map(|(id, a)| FileAllocation {
                    id: id.clone(),
                    address: Ipv4Addr::from(a.addr),
                    subnet: a.subnet,
                })
                .collect(),
        };
        let mut out = serde_json::to_vec_pretty(&file).expect("plain data always encodes");
        out.push(b'\n');
        out
    }

    /// Decodes JSON written by [`Self::to_json`] and checks it.
    pub fn from_json(data: &[u8]) -> Result<Self, String> {
        let f: File = serde_json::from_slice(data).map_err(|e| e.to_string())?;
        if f.format != FORMAT {
            return Err(format!(
                "format {} is not supported (expected {FORMAT})",
                f.format
            ));
        }
        let ring = Ring {
            universe: f.range,
            seeds: f.seeds,
            tokens: f
                .tokens
                .into_iter()
                .map(|t| {
                    (
                        u32::from(t.start),
                        super::ring::Entry {
                            owner: t.owner,
                            version: t.version,
                            takeover: t.takeover,
                        },
                    )
                })
                .collect(),
        };
        ring.validate().map_err(|e| e.to_string())?;
        let mut allocations = Vec::with_capacity(f.allocations.len());
        for a in f.allocations {
            if !a.subnet.contains(u64::from(u32::from(a.address))) {
                return Err(format!(
                    "address {} is outside its subnet {}",
                    a.address, a.subnet
                ));
            }
            allocations.push((
                a.id,
                Allocation {
                    addr: u32::from(a.address),
                    subnet: a.subnet,
                },
            ));
        }
        Ok(Self {
            format: f.format,
            peer: f.peer,
            range: f.range,
            version: f.version,
            ring,
            removed: f.removed,
            allocations,
        })
    }
}

/// Loads the state of `peer` for `range` from `dir`; `None` when there is
/// no file yet.
pub fn load(dir: &Path, peer: PeerName, range: Subnet) -> Result<Option<Persisted>, PersistError> {
    let path = dir.join(FILE);
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(PersistError::Io { path, source }),
    };
    let p = Persisted::from_json(&data).map_err(|reason| PersistError::Corrupt {
        path: path.clone(),
        reason,
    })?;
    if p.peer != peer {
        return Err(PersistError::Mismatch {
            path,
            reason: format!("belongs to peer {}, but this peer is {peer}", p.peer),
        });
    }
    if p.range != range {
        return Err(PersistError::Mismatch {
            path,
            reason: format!(
                "is for allocation range {}, but --ipalloc-range is {range}",
                p.range
            ),
        });
    }
    Ok(Some(p))
}

/// Writes the state atomically (durable only after [`sync`]).
pub fn save(dir: &Path, state: &Persisted) -> Result<(), PersistError> {
    let path = dir.join(FILE);
    crate::atomic_file::replace(&path, &state.to_json())
        .map_err(|source| PersistError::Io { path, source })
}

/// Makes the last [`save`] durable.
pub fn sync(dir: &Path) -> Result<(), PersistError> {
    let path = dir.join(FILE);
    crate::atomic_file::sync(&path).map_err(|source| PersistError::Io { path, source })
}

impl fmt::Display for Persisted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} tokens, {} allocations",
            self.ring.tokens.len(),
            self.allocations.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Persisted {
        let mut ring = Ring::new("10.32.0.0/12".parse().unwrap());
        ring.claim_for_peers(&[PeerName::from_u64(1), PeerName::from_u64(2)]);
        let subnet: Subnet = "10.32.0.0/12".parse().unwrap();
        Persisted {
            format: FORMAT,
            peer: PeerName::from_u64(1),
            range: subnet,
            version: 7,
            ring,
            removed: [(PeerName::from_u64(3), PeerName::from_u64(1))].into(),
            allocations: vec![(
                Ident::new("cni:abc:eth0").unwrap(),
                Allocation {
                    addr: u32::from(Ipv4Addr::new(10, 32, 0, 5)),
                    subnet,
                },
            )],
        }
    }

    #[test]
    fn round_trips_and_is_readable() {
        let p = sample();
        let json = p.to_json();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(
            text.contains("\"10.32.0.5\"") && text.contains("00:00:00:00:00:01"),
            "{text}"
        );
        assert_eq!(Persisted::from_json(&json).unwrap(), p);
    }

    #[test]
    fn wrong_peer_or_range_is_refused_and_corruption_is_reported() {
        let dir = std::env::temp_dir().join(format!("weave-ipam-persist-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let p = sample();
        assert!(load(&dir, p.peer, p.range).unwrap().is_none());
        save(&dir, &p).unwrap();
        assert_eq!(load(&dir, p.peer, p.range).unwrap(), Some(p.clone()));
        let e = load(&dir, PeerName::from_u64(9), p.range).unwrap_err();
        assert!(e.to_string().contains("belongs to peer"), "{e}");
        let e = load(&dir, p.peer, "10.0.0.0/8".parse().unwrap()).unwrap_err();
        assert!(e.to_string().contains("--ipalloc-range"), "{e}");
        std::fs::write(dir.join(FILE), b"{\"format\":1,").unwrap();
        let e = load(&dir, p.peer, p.range).unwrap_err();
        assert!(e.to_string().contains("unreadable"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
