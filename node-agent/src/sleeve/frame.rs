// SPDX-License-Identifier: Apache-2.0
//! Byte layout of sleeve datagrams (UDP 6783). `PROTOCOL.md` §8 is the
//! normative description.
//!
//! A datagram carries either a batch of Ethernet frames or a path heartbeat:
//!
//! ```text
//! 0      1      2            8
//! | ver  | kind | hop sender |  kind 1: { origin(6) dst(6) len(2) frame(len) }+
//!                             kind 2/3: receiver(6) connection uid(8)
//! ```
//!
//! Decoding never panics and never allocates per frame: [`Frames`] iterates
//! over borrowed slices of the datagram.

use crate::mesh::PeerName;

/// Version byte of every datagram.
pub const VERSION: u8 = 1;
/// Bytes before the first frame of a frames datagram.
pub const HEADER_LEN: usize = 8;
/// Bytes before each frame: origin, destination, length.
pub const FRAME_HEADER_LEN: usize = 14;
/// Size of a heartbeat or heartbeat ack.
pub const HEARTBEAT_LEN: usize = HEADER_LEN + 14;
/// Largest Ethernet frame carried (fits the 16-bit length).
pub const MAX_FRAME: usize = 65535;

/// Datagram kinds.
mod kind {
    pub(super) const FRAMES: u8 = 1;
    pub(super) const HEARTBEAT: u8 = 2;
    pub(super) const HEARTBEAT_ACK: u8 = 3;
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Shorter than the header.
    #[error("datagram shorter than its header")]
    Short,
    /// Unknown version byte.
    #[error("unknown sleeve version {0}")]
    Version(u8),
    /// Unknown kind byte.
    #[error("unknown datagram kind {0}")]
    Kind(u8),
    /// A frame header or frame runs past the end.
    #[error("truncated frame")]
    Truncated,
    /// A frame is shorter than an Ethernet header.
    #[error("frame shorter than an Ethernet header")]
    Runt,
    /// A heartbeat of the wrong size.
    #[error("malformed heartbeat")]
    Heartbeat,
}

/// A decoded datagram, borrowing from the receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datagram<'a> {
    /// Frames relayed by `hop`.
    Frames {
        /// The peer that sent this datagram (the last hop).
        hop: PeerName,
        /// The frames, undecoded.
        frames: Frames<'a>,
    },
    /// A path probe from `hop` to `to` on connection `conn_uid`.
    Heartbeat {
        /// Sender.
        hop: PeerName,
        /// Intended receiver.
        to: PeerName,
        /// UID of the control connection both share.
        conn_uid: u64,
    },
    /// The answer to a heartbeat.
    HeartbeatAck {
        /// Sender of the ack.
        hop: PeerName,
        /// Intended receiver.
        to: PeerName,
        /// UID of the control connection both share.
        conn_uid: u64,
    },
}

/// One carried frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The peer that captured the frame from its bridge.
    pub origin: PeerName,
    /// The peer it is going to (for broadcasts: the receiving neighbour).
    pub dst: PeerName,
    /// The Ethernet frame (header and payload, no FCS).
    pub data: &'a [u8],
}

/// Iterator over the frames of a datagram; stops at the first malformed one
/// and reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frames<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Frame<'a>, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        if self.rest.len() < FRAME_HEADER_LEN {
            self.rest = &[];
            return Some(Err(FrameError::Truncated));
        }
        let origin = name_at(self.rest, 0);
        let dst = name_at(self.rest, 6);
        let len = usize::from(u16::from_be_bytes([self.rest[12], self.rest[13]]));
        let Some(data) = self.rest.get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + len) else {
            self.rest = &[];
            return Some(Err(FrameError::Truncated));
        };
        self.rest = &self.rest[FRAME_HEADER_LEN + len..];
        if len < 14 {
            return Some(Err(FrameError::Runt));
        }
        Some(Ok(Frame { origin, dst, data }))
    }
}

fn name_at(b: &[u8], at: usize) -> PeerName {
    let mut n = [0u8; 6];
    n.copy_from_slice(&b[at..at + 6]);
    PeerName::from_bytes(n)
}

/// Decodes a datagram.
pub fn decode(b: &[u8]) -> Result<Datagram<'_>, FrameError> {
    if b.len() < HEADER_LEN {
        return Err(FrameError::Short);
    }
    if b[0] != VERSION {
        return Err(FrameError::Version(b[0]));
    }
    let hop = name_at(b, 2);
    match b[1] {
        kind::FRAMES => Ok(Datagram::Frames {
            hop,
            frames: Frames {
                rest: &b[HEADER_LEN..],
            },
        }),
        k @ (kind::HEARTBEAT | kind::HEARTBEAT_ACK) => {
            if b.len() != HEARTBEAT_LEN {
                return Err(FrameError::Heartbeat);
            }
            let to = name_at(b, HEADER_LEN);
            let mut uid = [0u8; 8];
            uid.copy_from_slice(&b[HEADER_LEN + 6..]);
            let conn_uid = u64::from_be_bytes(uid);
            Ok(if k == kind::HEARTBEAT {
                Datagram::Heartbeat { hop, to, conn_uid }
            } else {
                Datagram::HeartbeatAck { hop, to, conn_uid }
            })
        }
        k => Err(FrameError::Kind(k)),
    }
}

/// Starts a frames datagram from `hop` in `buf` (cleared first).
pub fn begin_frames(buf: &mut Vec<u8>, hop: PeerName) {
    buf.clear();
    buf.push(VERSION);
    buf.push(kind::FRAMES);
    buf.extend_from_slice(&hop.to_bytes());
}

/// Appends one frame to a datagram begun with [`begin_frames`].
pub fn push_frame(buf: &mut Vec<u8>, origin: PeerName, dst: PeerName, frame: &[u8]) {
    debug_assert!(frame.len() <= MAX_FRAME);
    buf.extend_from_slice(&origin.to_bytes());
    buf.extend_from_slice(&dst.to_bytes());
    buf.extend_from_slice(&u16::try_from(frame.len()).unwrap_or(u16::MAX).to_be_bytes());
    buf.extend_from_slice(frame);
}

/// A heartbeat (or, with `ack`, its answer).
pub fn heartbeat(hop: PeerName, to: PeerName, conn_uid: u64, ack: bool) -> [u8; HEARTBEAT_LEN] {
    let mut b = [0u8; HEARTBEAT_LEN];
    b[0] = VERSION;
    b[1] = if ack {
        kind::HEARTBEAT_ACK
    } else {
        kind::HEARTBEAT
    };
    b[2..8].copy_from_slice(&hop.to_bytes());
    b[8..14].copy_from_slice(&to.to_bytes());
    b[14..22].copy_from_slice(&conn_uid.to_be_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(i: u8) -> PeerName {
        PeerName::from_bytes([2, 0, 0, 0, 0, i])
    }

    #[test]
    fn frames_wire_bytes() {
        let frame = [0xffu8; 14];
        let mut buf = Vec::new();
        begin_frames(&mut buf, n(1));
        push_frame(&mut buf, n(3), n(2), &frame);
        #[rustfmt::skip]
        let head: &[u8] = &[
            1, 1,                 // version, kind frames
            2, 0, 0, 0, 0, 1,     // hop sender
            2, 0, 0, 0, 0, 3,     // origin
            2, 0, 0, 0, 0, 2,     // destination
            0, 14,                // frame length
        ];
        assert_eq!(&buf[..22], head);
        let Datagram::Frames { hop, frames } = decode(&buf).unwrap() else {
            panic!()
        };
        assert_eq!(hop, n(1));
        let all: Vec<_> = frames.collect();
        assert_eq!(
            all,
            vec![Ok(Frame {
                origin: n(3),
                dst: n(2),
                data: &frame
            })]
        );
    }

    #[test]
    fn heartbeats_round_trip() {
        let hb = heartbeat(n(1), n(2), 0xabcd, false);
        assert_eq!(
            decode(&hb).unwrap(),
            Datagram::Heartbeat {
                hop: n(1),
                to: n(2),
                conn_uid: 0xabcd
            }
        );
        let ack = heartbeat(n(2), n(1), 7, true);
        assert_eq!(
            decode(&ack).unwrap(),
            Datagram::HeartbeatAck {
                hop: n(2),
                to: n(1),
                conn_uid: 7
            }
        );
        assert_eq!(decode(&hb[..20]), Err(FrameError::Heartbeat));
    }

    #[test]
    fn garbage_is_refused() {
        assert_eq!(decode(&[1, 1, 0]), Err(FrameError::Short));
        assert_eq!(decode(&[9; 30]), Err(FrameError::Version(9)));
        assert_eq!(decode(&[1, 7, 0, 0, 0, 0, 0, 0]), Err(FrameError::Kind(7)));
        let mut buf = Vec::new();
        begin_frames(&mut buf, n(1));
        push_frame(&mut buf, n(3), n(2), &[0u8; 20]);
        buf.truncate(buf.len() - 1);
        let Datagram::Frames { frames, .. } = decode(&buf).unwrap() else {
            panic!()
        };
        assert_eq!(frames.collect::<Vec<_>>(), vec![Err(FrameError::Truncated)]);
        let mut runt = Vec::new();
        begin_frames(&mut runt, n(1));
        push_frame(&mut runt, n(3), n(2), &[0u8; 4]);
        let Datagram::Frames { frames, .. } = decode(&runt).unwrap() else {
            panic!()
        };
        assert_eq!(frames.collect::<Vec<_>>(), vec![Err(FrameError::Runt)]);
    }
}
