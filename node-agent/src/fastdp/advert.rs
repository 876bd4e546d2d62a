// SPDX-License-Identifier: Apache-2.0
//! What a peer tells each neighbour about its fast path, on gossip channel
//! [`CHANNEL`] (`PROTOCOL.md` §12.1): whether it can run one (and why not),
//! its VNI, UDP port and encapsulations, and the MACs that live on its
//! bridge (learned on its pods' ports).
//!
//! Adverts go only to direct neighbours and are never relayed: a peer's
//! MACs are believed from that peer alone (a neighbour cannot speak for a
//! third peer), and only direct neighbours can carry pod traffic in the
//! kernel anyway. The latest advert from a neighbour replaces its previous
//! one. A peer repeats its advert when anything in it changes and every few
//! seconds, so a lost message is repaired.

use super::{Encap, Reason};
use crate::mesh::gossip::Channel;
use weave_platform::Mac;

/// The gossip channel of the fast path.
pub const CHANNEL: Channel = Channel(3);
/// Most MACs one advert may carry (a bound on what a peer makes us
/// program; MACs beyond it are not announced and reach their pods by
/// flooding instead).
pub const MAX_MACS: usize = 1024;
/// Most encapsulations one advert may list.
const MAX_ENCAPS: usize = 16;
/// Message type of an advert.
const TYPE_ADVERT: u8 = 1;
/// Version of the advert format.
const VERSION: u8 = 1;
/// Flag: the fast path runs on the sender.
const FLAG_AVAILABLE: u8 = 0x01;

/// A peer's fast-path advert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    /// `Ok` if the sender runs a fast path, else why not.
    pub available: Result<(), Option<Reason>>,
    /// Its VNI.
    pub vni: u32,
    /// Its UDP port.
    pub port: u16,
    /// Encapsulations it can use, most preferred first (unknown codes are
    /// skipped when decoding).
    pub encaps: Vec<Encap>,
    /// MACs on its bridge, at most [`MAX_MACS`].
    pub macs: Vec<Mac>,
}

/// Why an advert was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// It ends before its fields do.
    #[error("advert truncated")]
    Truncated,
    /// Not an advert, or a version this agent does not know.
    #[error("fast-path message type {0}, version {1} unknown")]
    Unknown(u8, u8),
    /// More MACs or encapsulations than allowed.
    #[error("advert lists {0} entries, more than allowed")]
    TooMany(usize),
    /// A MAC that is a group address or all zeros.
    #[error("advert lists a MAC that is not unicast")]
    BadMac,
}

impl Advert {
    /// The advert on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let encaps = &self.encaps[..self.encaps.len().min(MAX_ENCAPS)];
        let macs = &self.macs[..self.macs.len().min(MAX_MACS)];
        let mut out = Vec::with_capacity(13 + encaps.len() + 6 * macs.len());
        out.push(TYPE_ADVERT);
        out.push(VERSION);
        match self.available {
            Ok(()) => {
                out.push(FLAG_AVAILABLE);
                out.push(0);
            }
            Err(reason) => {
                out.push(0);
                out.push(reason.map_or(0, Reason::code));
            }
        }
        out.extend_from_slice(&self.vni.to_be_bytes());
        out.extend_from_slice(&self.port.to_be_bytes());
        out.push(u8::try_from(encaps.len()).unwrap_or(u8::MAX));
        out.extend(encaps.iter().map(|e| e.code()));
        out.extend_from_slice(&u16::try_from(macs.len()).unwrap_or(u16::MAX).to_be_bytes());
        for m in macs {
            out.extend_from_slice(m);
        }
        out
    }

    /// Decodes an advert; bytes after the last field are ignored (room for
    /// later versions to add fields).
    pub fn decode(b: &[u8]) -> Result<Advert, DecodeError> {
        let mut r = Reader(b);
        let (kind, version) = (r.u8()?, r.u8()?);
        if kind != TYPE_ADVERT || version != VERSION {
            return Err(DecodeError::Unknown(kind, version));
        }
        let flags = r.u8()?;
        let reason = r.u8()?;
        let available = if flags & FLAG_AVAILABLE != 0 {
            Ok(())
        } else {
            Err(Reason::from_code(reason))
        };
        let vni = u32::from_be_bytes(r.take()?);
        let port = u16::from_be_bytes(r.take()?);
        let n = usize::from(r.u8()?);
        if n > MAX_ENCAPS {
            return Err(DecodeError::TooMany(n));
        }
        let encaps = r
            .bytes(n)?
            .iter()
            .filter_map(|c| Encap::from_code(*c))
            .collect();
        let m = usize::from(u16::from_be_bytes(r.take()?));
        if m > MAX_MACS {
            return Err(DecodeError::TooMany(m));
        }
        let mut macs = Vec::with_capacity(m);
        for _ in 0..m {
            let mac: Mac = r.take()?;
            if mac[0] & 1 == 1 || mac == [0; 6] {
                return Err(DecodeError::BadMac);
            }
            macs.push(mac);
        }
        Ok(Advert {
            available,
            vni,
            port,
            encaps,
            macs,
        })
    }
}

/// A cursor over the bytes of an advert.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.bytes(1)?[0])
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advert_wire_bytes() {
        let a = Advert {
            available: Ok(()),
            vni: super::super::VNI,
            port: 6784,
            encaps: vec![Encap::Vxlan],
            macs: vec![[0x0a, 0, 0, 0, 0, 1], [0x0a, 0, 0, 0, 0, 2]],
        };
        let want = vec![
            1, // message type: advert
            1, // version
            1, // flags: the fast path runs here
            0, // reason it does not (none)
            0x00, 0x77, 0x65, 0x76, // VNI
            0x1a, 0x80, // UDP port 6784
            1,    // one encapsulation
            1,    // plain VXLAN
            0, 2, // two MACs
            0x0a, 0, 0, 0, 0, 1, // first MAC
            0x0a, 0, 0, 0, 0, 2, // second MAC
        ];
        assert_eq!(a.encode(), want);
        assert_eq!(Advert::decode(&want), Ok(a));
    }

    #[test]
    fn unavailable_adverts_carry_their_reason_and_later_fields_are_ignored() {
        let a = Advert {
            available: Err(Some(Reason::Encryption)),
            vni: 5,
            port: 6784,
            encaps: vec![],
            macs: vec![],
        };
        let mut bytes = a.encode();
        bytes.extend_from_slice(&[9, 9, 9]);
        assert_eq!(Advert::decode(&bytes), Ok(a));
        // an unknown encapsulation is skipped, not an error
        let mut newer = Advert {
            available: Ok(()),
            vni: 5,
            port: 1,
            encaps: vec![Encap::Vxlan],
            macs: vec![],
        }
        .encode();
        newer[10] = 2; // two encapsulations: an unknown one (42) first
        newer.insert(11, 42);
        assert_eq!(
            Advert::decode(&newer).map(|a| a.encaps),
            Ok(vec![Encap::Vxlan])
        );
    }

    #[test]
    fn bad_adverts_are_refused() {
        let good = Advert {
            available: Ok(()),
            vni: 5,
            port: 6784,
            encaps: vec![Encap::Vxlan],
            macs: vec![[0x0a, 0, 0, 0, 0, 1]],
        }
        .encode();
        for cut in 0..good.len() {
            assert_eq!(
                Advert::decode(&good[..cut]),
                Err(DecodeError::Truncated),
                "{cut}"
            );
        }
        let mut group = good.clone();
        group[14] = 0x01; // first octet of the MAC: group bit
        assert_eq!(Advert::decode(&group), Err(DecodeError::BadMac));
        let mut too_many = good.clone();
        too_many[12..14].copy_from_slice(&u16::try_from(MAX_MACS + 1).unwrap().to_be_bytes());
        assert_eq!(
            Advert::decode(&too_many),
            Err(DecodeError::TooMany(MAX_MACS + 1))
        );
        let mut version = good;
        version[1] = 2;
        assert_eq!(Advert::decode(&version), Err(DecodeError::Unknown(1, 2)));
    }
}
