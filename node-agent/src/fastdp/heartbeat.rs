// SPDX-License-Identifier: Apache-2.0
//! The fast path's heartbeat frames (`PROTOCOL.md` §12.2): Ethernet frames
//! sent by the agent straight into its VXLAN device, addressed to the peer's
//! bridge MAC (its peer name), so they take exactly the path pod frames
//! take, outer "don't fragment" bit included.
//!
//! A heartbeat is either *full* (padded to a whole overlay frame, so an
//! answer proves the path carries the largest frame a pod sends) or *small*
//! (60 bytes; an answer to small ones without answers to full ones means the
//! path's MTU is too small). An acknowledgement echoes the sequence number,
//! the size class and the length received, and is small itself.
//!
//! A frame counts only with the connection UID of the control connection to
//! its sender: the UID is random per connection and known only to the two
//! ends, so pods, which can put frames on the bridge, cannot forge answers.

use super::Reason;
use crate::mesh::PeerName;

/// EtherType of heartbeat frames (IEEE 802 local experimental 1).
pub const ETHERTYPE: u16 = 0x88b5;
/// Version of the frame format.
pub const VERSION: u8 = 1;
/// Length of the header up to and including the length field.
pub const HEADER_LEN: usize = 32;
/// Length of small heartbeats and acknowledgements: the Ethernet minimum.
pub const SMALL_LEN: usize = 60;

/// Frame kinds.
const KIND_HEARTBEAT: u8 = 1;
const KIND_ACK: u8 = 2;
/// Flag: the sender's full-size heartbeats to the receiver are answered.
const FLAG_TX_OK: u8 = 0x01;
/// Flag: the heartbeat (or the one acknowledged) is full-size.
const FLAG_FULL: u8 = 0x02;

/// A decoded heartbeat or acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// Receiver (the frame's destination MAC).
    pub to: PeerName,
    /// Sender (the frame's source MAC).
    pub from: PeerName,
    /// Heartbeat or acknowledgement.
    pub kind: Kind,
    /// The sender's full-size heartbeats to the receiver are answered.
    pub tx_ok: bool,
    /// Why the sender considers the connection on the sleeve, if it does.
    pub reason: Option<Reason>,
    /// UID of the control connection between the two.
    pub conn_uid: u64,
    /// Sequence number (an acknowledgement echoes the heartbeat's).
    pub seq: u32,
    /// Full-size (a heartbeat) or acknowledging a full-size one (an ack).
    pub full: bool,
    /// Length of the heartbeat: its own for a heartbeat, the one received
    /// for an acknowledgement.
    pub len: u16,
}

/// Heartbeat or acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Asks for an acknowledgement.
    Heartbeat,
    /// Answers a heartbeat.
    Ack,
}

/// Why a frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than the header or the Ethernet minimum.
    #[error("frame of {0} bytes is too short")]
    Short(usize),
    /// Not our EtherType.
    #[error("ethertype {0:#06x} is not the heartbeat's")]
    EtherType(u16),
    /// A format version this agent does not know.
    #[error("heartbeat version {0} unknown")]
    Version(u8),
    /// Neither heartbeat nor acknowledgement.
    #[error("frame kind {0} unknown")]
    Kind(u8),
    /// A heartbeat whose length field is not its length (padded or cut on
    /// the way: it proves nothing about the path).
    #[error("heartbeat says {said} bytes, {got} arrived")]
    Length {
        /// What the length field says.
        said: u16,
        /// What arrived.
        got: usize,
    },
}

impl Frame {
    /// The frame on the wire: a heartbeat is `len` bytes long (at least
    /// [`SMALL_LEN`]), padded with zeros; an acknowledgement is
    /// [`SMALL_LEN`] bytes and carries `len` as the length it saw.
    pub fn encode(&self) -> Vec<u8> {
        let size = match self.kind {
            Kind::Heartbeat => usize::from(self.len).max(SMALL_LEN),
            Kind::Ack => SMALL_LEN,
        };
        let mut f = Vec::with_capacity(size);
        f.extend_from_slice(&self.to.to_bytes());
        f.extend_from_slice(&self.from.to_bytes());
        f.extend_from_slice(&ETHERTYPE.to_be_bytes());
        f.push(VERSION);
        f.push(match self.kind {
            Kind::Heartbeat => KIND_HEARTBEAT,
            Kind::Ack => KIND_ACK,
        });
        let mut flags = 0;
        if self.tx_ok {
            flags |= FLAG_TX_OK;
        }
        if self.full {
            flags |= FLAG_FULL;
        }
        f.push(flags);
        f.push(self.reason.map_or(0, Reason::code));
        f.extend_from_slice(&self.conn_uid.to_be_bytes());
        f.extend_from_slice(&self.seq.to_be_bytes());
        let len = match self.kind {
            Kind::Heartbeat => u16::try_from(size).unwrap_or(u16::MAX),
            Kind::Ack => self.len,
        };
        f.extend_from_slice(&len.to_be_bytes());
        f.resize(size, 0);
        f
    }

    /// Decodes a frame as it arrived (Ethernet header included).
    pub fn decode(f: &[u8]) -> Result<Frame, DecodeError> {
        if f.len() < HEADER_LEN {
            return Err(DecodeError::Short(f.len()));
        }
        let ethertype = u16::from_be_bytes([f[12], f[13]]);
        if ethertype != ETHERTYPE {
            return Err(DecodeError::EtherType(ethertype));
        }
        if f[14] != VERSION {
            return Err(DecodeError::Version(f[14]));
        }
        let kind = match f[15] {
            KIND_HEARTBEAT => Kind::Heartbeat,
            KIND_ACK => Kind::Ack,
            k => return Err(DecodeError::Kind(k)),
        };
        let mac = |at: usize| {
            let mut m = [0u8; 6];
            m.copy_from_slice(&f[at..at + 6]);
            PeerName::from_bytes(m)
        };
        let mut uid = [0u8; 8];
        uid.copy_from_slice(&f[18..26]);
        let len = u16::from_be_bytes([f[30], f[31]]);
        if kind == Kind::Heartbeat && usize::from(len) != f.len() {
            return Err(DecodeError::Length {
                said: len,
                got: f.len(),
            });
        }
        Ok(Frame {
            to: mac(0),
            from: mac(6),
            kind,
            tx_ok: f[16] & FLAG_TX_OK != 0,
            full: f[16] & FLAG_FULL != 0,
            reason: Reason::from_code(f[17]),
            conn_uid: u64::from_be_bytes(uid),
            seq: u32::from_be_bytes([f[26], f[27], f[28], f[29]]),
            len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(i: u8) -> PeerName {
        PeerName::from_bytes([2, 0, 0, 0, 0, i])
    }

    /// A small heartbeat, byte by byte.
    #[test]
    fn heartbeat_wire_bytes() {
        let hb = Frame {
            to: n(2),
            from: n(1),
            kind: Kind::Heartbeat,
            tx_ok: true,
            reason: Some(Reason::Mtu),
            conn_uid: 0x0102_0304_0506_0708,
            seq: 9,
            full: false,
            len: 60,
        };
        let mut want = vec![
            0x02, 0, 0, 0, 0, 2, // destination: the receiver's peer name
            0x02, 0, 0, 0, 0, 1, // source: the sender's peer name
            0x88, 0xb5, // EtherType: IEEE 802 local experimental 1
            1,    // version
            1,    // kind: heartbeat
            0x01, // flags: tx_ok, not full-size
            9,    // the sender's reason: MTU
            1, 2, 3, 4, 5, 6, 7, 8, // connection UID
            0, 0, 0, 9, // sequence number
            0, 60, // length of the whole frame
        ];
        want.resize(60, 0); // zero padding
        assert_eq!(hb.encode(), want);
        assert_eq!(Frame::decode(&want), Ok(hb));
    }

    /// A full-size heartbeat from 1 to 2.
    fn full() -> Frame {
        Frame {
            to: n(2),
            from: n(1),
            kind: Kind::Heartbeat,
            tx_ok: false,
            reason: None,
            conn_uid: 77,
            seq: 1,
            full: true,
            len: 1450,
        }
    }

    #[test]
    fn full_heartbeats_and_acks_round_trip() {
        let hb = full();
        let bytes = hb.encode();
        assert_eq!(bytes.len(), 1450);
        assert_eq!(Frame::decode(&bytes), Ok(hb));
        let ack = Frame {
            to: n(1),
            from: n(2),
            kind: Kind::Ack,
            tx_ok: true,
            ..full()
        };
        let bytes = ack.encode();
        assert_eq!(bytes.len(), SMALL_LEN);
        assert_eq!(Frame::decode(&bytes), Ok(ack));
    }

    #[test]
    fn cut_padded_and_foreign_frames_are_refused() {
        let hb = full().encode();
        assert_eq!(
            Frame::decode(&hb[..1400]),
            Err(DecodeError::Length {
                said: 1450,
                got: 1400
            })
        );
        let mut padded = hb.clone();
        padded.push(0);
        assert!(Frame::decode(&padded).is_err());
        assert_eq!(Frame::decode(&hb[..20]), Err(DecodeError::Short(20)));
        let mut other = hb.clone();
        other[12] = 0x08;
        assert!(matches!(
            Frame::decode(&other),
            Err(DecodeError::EtherType(_))
        ));
        let mut version = hb.clone();
        version[14] = 9;
        assert_eq!(Frame::decode(&version), Err(DecodeError::Version(9)));
        let mut kind = hb;
        kind[15] = 7;
        assert_eq!(Frame::decode(&kind), Err(DecodeError::Kind(7)));
    }
}
