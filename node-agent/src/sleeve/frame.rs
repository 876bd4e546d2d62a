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
//!                             kind 5: origin(6) dst(6) id(4) total(4)
//!                                     chunk(2) index(2) piece
//! ```
//!
//! Kind 5 carries one piece of a frame too large for one datagram (a TCP
//! super-frame with its offload header, `sleeve::offload`); the receiver
//! puts the pieces together (`sleeve::reassembly`).
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
/// Bytes before the piece in a fragment datagram.
pub const FRAGMENT_HEADER_LEN: usize = HEADER_LEN + 24;
/// Largest frame sent in fragments: offload header, Ethernet header and a
/// 64 KB IP packet, with room to spare.
pub const MAX_LARGE: usize = 65536 + 128;
/// Most fragments one large frame may be cut into.
pub const MAX_FRAGMENTS: usize = 256;

/// Datagram kinds.
mod kind {
    pub(super) const FRAMES: u8 = 1;
    pub(super) const HEARTBEAT: u8 = 2;
    pub(super) const HEARTBEAT_ACK: u8 = 3;
    pub(super) const FRAGMENT: u8 = 5;
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
    /// A fragment whose numbers do not add up.
    #[error("malformed fragment")]
    Fragment,
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
    /// A piece of a large frame, relayed by `hop`.
    Fragment {
        /// The peer that sent this datagram (the last hop).
        hop: PeerName,
        /// The piece.
        fragment: Fragment<'a>,
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

/// One piece of a large frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment<'a> {
    /// The peer that captured the frame.
    pub origin: PeerName,
    /// The peer it is going to, or broadcast.
    pub dst: PeerName,
    /// Sender-chosen number shared by all pieces of the frame.
    pub id: u32,
    /// Length of the whole frame.
    pub total: u32,
    /// Length of every piece but the last.
    pub chunk: u16,
    /// Which piece this is, from 0.
    pub index: u16,
    /// The piece: bytes `index * chunk ..` of the frame.
    pub piece: &'a [u8],
}

impl Fragment<'_> {
    /// How many pieces the frame was cut into.
    pub fn count(&self) -> usize {
        (self.total as usize).div_ceil(usize::from(self.chunk))
    }

    /// Where the piece goes in the frame.
    pub fn offset(&self) -> usize {
        usize::from(self.index) * usize::from(self.chunk)
    }
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
        kind::FRAGMENT => decode_fragment(b).map(|fragment| Datagram::Fragment { hop, fragment }),
        k => Err(FrameError::Kind(k)),
    }
}

fn decode_fragment(b: &[u8]) -> Result<Fragment<'_>, FrameError> {
    if b.len() < FRAGMENT_HEADER_LEN {
        return Err(FrameError::Truncated);
    }
    let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let u16_at = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
    let f = Fragment {
        origin: name_at(b, HEADER_LEN),
        dst: name_at(b, HEADER_LEN + 6),
        id: u32_at(HEADER_LEN + 12),
        total: u32_at(HEADER_LEN + 16),
        chunk: u16_at(HEADER_LEN + 20),
        index: u16_at(HEADER_LEN + 22),
        piece: &b[FRAGMENT_HEADER_LEN..],
    };
    let total = f.total as usize;
    if f.chunk == 0 || total == 0 || usize::from(f.chunk) > total || total > MAX_LARGE {
        return Err(FrameError::Fragment);
    }
    let count = f.count();
    if count > MAX_FRAGMENTS || usize::from(f.index) >= count {
        return Err(FrameError::Fragment);
    }
    let want = usize::from(f.chunk).min(total - f.offset());
    if f.piece.len() != want {
        return Err(FrameError::Fragment);
    }
    Ok(f)
}

/// The piece size that cuts a frame of `total` bytes into datagrams of at
/// most `max_datagram` bytes, or `None` if that takes more than
/// [`MAX_FRAGMENTS`] pieces or the frame is empty or too large. A frame
/// that fits in one datagram is one piece.
pub fn chunk_for(total: usize, max_datagram: usize) -> Option<u16> {
    let room = max_datagram.checked_sub(FRAGMENT_HEADER_LEN)?;
    // Pieces of equal size (the last may be shorter), as few as fit.
    let count = total.div_ceil(room.max(1));
    if count == 0 || count > MAX_FRAGMENTS || total > MAX_LARGE {
        return None;
    }
    u16::try_from(total.div_ceil(count)).ok()
}

/// The pieces of `frame`, cut in `chunk`-byte pieces, as fragments from
/// `origin` to `dst` numbered `id`.
pub fn pieces<'a>(
    frame: &'a [u8],
    origin: PeerName,
    dst: PeerName,
    id: u32,
    chunk: u16,
) -> impl Iterator<Item = Fragment<'a>> {
    let total = u32::try_from(frame.len()).unwrap_or(u32::MAX);
    frame
        .chunks(usize::from(chunk.max(1)))
        .enumerate()
        .map(move |(i, piece)| Fragment {
            origin,
            dst,
            id,
            total,
            chunk,
            index: u16::try_from(i).unwrap_or(u16::MAX),
            piece,
        })
}

/// Writes `f` as a datagram from `hop` into `buf` (cleared first).
pub fn push_fragment(buf: &mut Vec<u8>, hop: PeerName, f: &Fragment<'_>) {
    buf.clear();
    buf.push(VERSION);
    buf.push(kind::FRAGMENT);
    buf.extend_from_slice(&hop.to_bytes());
    buf.extend_from_slice(&f.origin.to_bytes());
    buf.extend_from_slice(&f.dst.to_bytes());
    buf.extend_from_slice(&f.id.to_be_bytes());
    buf.extend_from_slice(&f.total.to_be_bytes());
    buf.extend_from_slice(&f.chunk.to_be_bytes());
    buf.extend_from_slice(&f.index.to_be_bytes());
    buf.extend_from_slice(f.piece);
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
    fn fragments_round_trip_and_cover_the_frame() {
        let frame: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let chunk = chunk_for(frame.len(), 1500).unwrap();
        // four pieces of equal size, each datagram within 1500 bytes
        assert_eq!(chunk, 1250);
        let mut rebuilt = vec![0u8; frame.len()];
        let mut buf = Vec::new();
        for f in pieces(&frame, n(3), n(2), 77, chunk) {
            push_fragment(&mut buf, n(1), &f);
            assert!(buf.len() <= 1500);
            let Datagram::Fragment { hop, fragment } = decode(&buf).unwrap() else {
                panic!("not a fragment")
            };
            assert_eq!((hop, fragment), (n(1), f));
            assert_eq!(fragment.count(), 4);
            rebuilt[fragment.offset()..fragment.offset() + fragment.piece.len()]
                .copy_from_slice(fragment.piece);
        }
        assert_eq!(rebuilt, frame);
        #[rustfmt::skip]
        let head: &[u8] = &[
            1, 5,                 // version, kind fragment
            2, 0, 0, 0, 0, 1,     // hop sender
            2, 0, 0, 0, 0, 3,     // origin
            2, 0, 0, 0, 0, 2,     // destination
            0, 0, 0, 77,          // id
            0, 0, 0x13, 0x88,     // total 5000
            0x04, 0xe2,           // chunk 1250
            0, 3,                 // index
        ];
        assert_eq!(&buf[..FRAGMENT_HEADER_LEN], head);
        // a frame that fits one datagram is one piece; too many pieces or
        // nothing at all is refused
        assert_eq!(chunk_for(1000, 1500), Some(1000));
        assert_eq!(chunk_for(MAX_LARGE, 100), None);
        assert_eq!(chunk_for(0, 1500), None);
    }

    #[test]
    fn fragments_that_do_not_add_up_are_refused() {
        let frame = vec![9u8; 3000];
        let f = pieces(&frame, n(3), n(2), 1, 1000).nth(1).unwrap();
        let mut good = Vec::new();
        push_fragment(&mut good, n(1), &f);
        assert!(decode(&good).is_ok());
        assert_eq!(decode(&good[..20]), Err(FrameError::Truncated));
        let bad = |patch: &dyn Fn(&mut Vec<u8>)| {
            let mut b = good.clone();
            patch(&mut b);
            decode(&b).map(|_| ())
        };
        // piece shorter than the chunk, index past the end, zero chunk,
        // chunk larger than the frame, total beyond the largest frame
        assert_eq!(bad(&|b| b.truncate(b.len() - 1)), Err(FrameError::Fragment));
        assert_eq!(bad(&|b| b[31] = 3), Err(FrameError::Fragment));
        assert_eq!(
            bad(&|b| b[28..30].copy_from_slice(&[0, 0])),
            Err(FrameError::Fragment)
        );
        assert_eq!(
            bad(&|b| b[24..28].copy_from_slice(&999u32.to_be_bytes())),
            Err(FrameError::Fragment)
        );
        assert_eq!(
            bad(&|b| b[24..28].copy_from_slice(&u32::MAX.to_be_bytes())),
            Err(FrameError::Fragment)
        );
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
