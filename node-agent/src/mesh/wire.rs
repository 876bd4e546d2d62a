// SPDX-License-Identifier: Apache-2.0
//! Byte layout of the control connection (TCP 6783): the version header, the
//! length-prefixed frames and the messages inside them. `PROTOCOL.md` is the
//! normative description; this module must match it byte for byte.
//!
//! Everything here is pure: the [`Decoder`] takes bytes as they arrive and
//! yields whole frames, refusing oversized or malformed input with a
//! [`WireError`] that names the problem. It never panics on any input (the
//! fuzz target `handshake` checks this).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::peer::{PeerName, PeerUid};

/// Protocol name sent first on every connection.
pub const PROTOCOL_NAME: &[u8; 5] = b"weave";
/// Lowest protocol version this build speaks.
pub const MIN_VERSION: u8 = 1;
/// Highest protocol version this build speaks.
pub const MAX_VERSION: u8 = 2;
/// The version of a peer without a password: plain frames.
pub const PLAIN_VERSION: u8 = 1;
/// The version of a peer with a password: a Noise handshake, then sealed
/// frames (`PROTOCOL.md` §9). A peer speaks exactly one of the two, so a
/// mismatch shows as "no common version" and is reported as such.
pub const SEALED_VERSION: u8 = 2;
/// Size of the version header: name, min version, max version.
pub const HEADER_LEN: usize = 7;
/// Largest frame body accepted (tag and payload); anything larger closes the
/// connection before the body is buffered.
pub const MAX_FRAME: usize = 4 << 20;
/// Longest nickname sent; longer ones are cut at a character boundary.
pub const MAX_NICKNAME: usize = 64;

/// Message tags (first byte of a frame body).
mod tag {
    pub(super) const HELLO: u8 = 1;
    pub(super) const HEARTBEAT: u8 = 2;
    pub(super) const GOSSIP: u8 = 3;
    pub(super) const CLOSE: u8 = 4;
    pub(super) const HANDSHAKE: u8 = 5;
}

/// Why bytes from a peer were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The first bytes were not `weave`.
    #[error("not the weave protocol (first bytes {0:02x?})")]
    NotWeave(Vec<u8>),
    /// No version is common to both sides.
    #[error("no common protocol version: ours {ours_min}..{ours_max}, theirs {theirs_min}..{theirs_max}")]
    Version {
        /// Our lowest version.
        ours_min: u8,
        /// Our highest version.
        ours_max: u8,
        /// Their lowest version.
        theirs_min: u8,
        /// Their highest version.
        theirs_max: u8,
    },
    /// A frame announced a length above [`MAX_FRAME`] or of zero.
    #[error("frame length {0} outside 1..={MAX_FRAME}")]
    FrameLength(usize),
    /// A frame started with a tag this version does not know.
    #[error("unknown message tag {0}")]
    UnknownTag(u8),
    /// A message ended before one of its fields.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// A message had bytes left after its last field.
    #[error("{0} has {1} trailing bytes")]
    Trailing(&'static str, usize),
    /// A field held a value outside its range.
    #[error("invalid {0}")]
    Invalid(&'static str),
}

/// A control message (a frame body after the version header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// First message of each side: who we are.
    Hello(Hello),
    /// Keeps the connection alive; carries nothing.
    Heartbeat,
    /// Gossip of one channel; bodies of unknown channels are ignored.
    Gossip {
        /// Channel number (0 = topology).
        channel: u8,
        /// Channel-specific body.
        body: Vec<u8>,
    },
    /// The sender is closing the connection, and says why.
    Close {
        /// Human-readable reason.
        reason: String,
    },
    /// A Noise handshake message (version 2, before any sealed frame).
    Handshake(Vec<u8>),
}

/// Identity a peer announces on a new connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Peer name.
    pub name: PeerName,
    /// Incarnation UID (never zero).
    pub uid: PeerUid,
    /// Random per-connection value; XOR of both sides' values is the
    /// connection's UID, identical at both ends.
    pub conn_id: u64,
    /// TCP port the sender listens on, so that peers can be told how to reach it.
    pub listen_port: u16,
    /// Nickname (UTF-8, at most [`MAX_NICKNAME`] bytes).
    pub nickname: String,
}

/// What the decoder produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The peer's version header; the value is the negotiated version.
    Header(u8),
    /// A message.
    Message(Message),
}

/// A frame before its body is interpreted (a sealed body must be opened
/// first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawFrame {
    /// The peer's version header; the value is the negotiated version.
    Header(u8),
    /// A frame body and its length prefix.
    Body {
        /// The length prefix as received.
        len: u32,
        /// The bytes after it.
        body: Vec<u8>,
    },
}

/// Incremental decoder for one connection.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    pos: usize,
    peer_header: Option<[u8; HEADER_LEN]>,
    version: u8,
    max_frame: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder for a peer without a password, expecting the version
    /// header first.
    pub fn new() -> Self {
        Self::for_version(PLAIN_VERSION)
    }

    /// A decoder for a peer that speaks only `version` (sealed frames are
    /// longer by their authentication tag).
    pub fn for_version(version: u8) -> Self {
        let tag = if version == SEALED_VERSION { 16 } else { 0 };
        Self {
            buf: Vec::new(),
            pos: 0,
            peer_header: None,
            version,
            max_frame: MAX_FRAME + tag,
        }
    }

    /// The version header the peer sent, once it arrived.
    pub fn peer_header(&self) -> Option<[u8; HEADER_LEN]> {
        self.peer_header
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 64 * 1024 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Bytes held but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next complete frame, `None` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, WireError> {
        Ok(match self.next_raw()? {
            None => None,
            Some(RawFrame::Header(v)) => Some(Frame::Header(v)),
            Some(RawFrame::Body { body, .. }) => Some(Frame::Message(Message::decode(&body)?)),
        })
    }

    /// The next complete frame with its body undecoded, `None` if more
    /// bytes are needed.
    pub fn next_raw(&mut self) -> Result<Option<RawFrame>, WireError> {
        let avail = &self.buf[self.pos..];
        if self.peer_header.is_none() {
            // Check the name as soon as its first bytes arrive, so that a wrong
            // protocol is refused without waiting for seven bytes.
            let n = avail.len().min(PROTOCOL_NAME.len());
            if avail[..n] != PROTOCOL_NAME[..n] {
                return Err(WireError::NotWeave(avail[..n].to_vec()));
            }
            if avail.len() < HEADER_LEN {
                return Ok(None);
            }
            let version = negotiate_range(self.version, self.version, avail[5], avail[6])?;
            let mut header = [0u8; HEADER_LEN];
            header.copy_from_slice(&avail[..HEADER_LEN]);
            self.pos += HEADER_LEN;
            self.peer_header = Some(header);
            return Ok(Some(RawFrame::Header(version)));
        }
        if avail.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
        if len == 0 || len > self.max_frame {
            return Err(WireError::FrameLength(len));
        }
        if avail.len() < 4 + len {
            return Ok(None);
        }
        let body = avail[4..4 + len].to_vec();
        self.pos += 4 + len;
        let len = u32::try_from(len).expect("frame length checked against max_frame");
        Ok(Some(RawFrame::Body { len, body }))
    }
}

/// The version both sides speak, given the peer's range, for a peer that
/// speaks every version this build knows.
pub fn negotiate(theirs_min: u8, theirs_max: u8) -> Result<u8, WireError> {
    negotiate_range(MIN_VERSION, MAX_VERSION, theirs_min, theirs_max)
}

/// The version both sides speak, given both ranges.
pub fn negotiate_range(
    ours_min: u8,
    ours_max: u8,
    theirs_min: u8,
    theirs_max: u8,
) -> Result<u8, WireError> {
    let version = ours_max.min(theirs_max);
    if theirs_min > theirs_max || ours_min.max(theirs_min) > version {
        return Err(WireError::Version {
            ours_min,
            ours_max,
            theirs_min,
            theirs_max,
        });
    }
    Ok(version)
}

/// The version header of a peer without a password.
pub fn header() -> [u8; HEADER_LEN] {
    header_for(PLAIN_VERSION)
}

/// The version header announcing exactly `version`.
pub fn header_for(version: u8) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..5].copy_from_slice(PROTOCOL_NAME);
    h[5] = version;
    h[6] = version;
    h
}

impl Message {
    /// The message as a whole frame: 4-byte big-endian length, tag, payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; 4];
        match self {
            Self::Hello(h) => {
                out.push(tag::HELLO);
                out.extend_from_slice(&h.name.to_bytes());
                out.extend_from_slice(&h.uid.get().to_be_bytes());
                out.extend_from_slice(&h.conn_id.to_be_bytes());
                out.extend_from_slice(&h.listen_port.to_be_bytes());
                put_str8(&mut out, truncate(&h.nickname, MAX_NICKNAME));
            }
            Self::Heartbeat => out.push(tag::HEARTBEAT),
            Self::Gossip { channel, body } => {
                out.push(tag::GOSSIP);
                out.push(*channel);
                out.extend_from_slice(body);
            }
            Self::Close { reason } => {
                out.push(tag::CLOSE);
                out.extend_from_slice(truncate(reason, 1024).as_bytes());
            }
            Self::Handshake(data) => {
                out.push(tag::HANDSHAKE);
                out.extend_from_slice(data);
            }
        }
        let len = u32::try_from(out.len() - 4).unwrap_or(u32::MAX);
        out[..4].copy_from_slice(&len.to_be_bytes());
        out
    }

    /// Decodes a frame body (tag and payload, without the length prefix).
    pub fn decode(body: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body, "message");
        let tag = r.u8()?;
        let msg = match tag {
            tag::HELLO => {
                let mut r = Reader::new(r.rest(), "hello");
                let name = r.name()?;
                let uid = r.u64()?;
                if uid == 0 {
                    return Err(WireError::Invalid("hello uid 0"));
                }
                let conn_id = r.u64()?;
                let listen_port = r.u16()?;
                if listen_port == 0 {
                    return Err(WireError::Invalid("hello listen port 0"));
                }
                let nickname = r.str8()?;
                r.finish()?;
                Self::Hello(Hello {
                    name,
                    uid: PeerUid::new(uid),
                    conn_id,
                    listen_port,
                    nickname,
                })
            }
            tag::HEARTBEAT => {
                let r = Reader::new(r.rest(), "heartbeat");
                r.finish()?;
                Self::Heartbeat
            }
            tag::GOSSIP => {
                let channel = r.u8()?;
                Self::Gossip {
                    channel,
                    body: r.rest().to_vec(),
                }
            }
            tag::CLOSE => Self::Close {
                reason: String::from_utf8_lossy(r.rest()).into_owned(),
            },
            tag::HANDSHAKE => Self::Handshake(r.rest().to_vec()),
            other => return Err(WireError::UnknownTag(other)),
        };
        Ok(msg)
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Appends a string with a one-byte length prefix (cut to 255 bytes).
pub(crate) fn put_str8(out: &mut Vec<u8>, s: &str) {
    let s = truncate(s, 255);
    out.push(u8::try_from(s.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(s.as_bytes());
}

/// Appends a socket address: family (4 or 6), address bytes, port.
pub(crate) fn put_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// Bounds-checked cursor over a message; every read names what it was
/// reading when input runs out.
pub(crate) struct Reader<'a> {
    data: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8], what: &'static str) -> Self {
        Self { data, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.data.len() < n {
            return Err(WireError::Truncated(self.what));
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, WireError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    pub(crate) fn name(&mut self) -> Result<PeerName, WireError> {
        let b = self.take(6)?;
        let mut a = [0u8; 6];
        a.copy_from_slice(b);
        Ok(PeerName::from_bytes(a))
    }

    pub(crate) fn str8(&mut self) -> Result<String, WireError> {
        let n = usize::from(self.u8()?);
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| WireError::Invalid("string is not UTF-8"))
    }

    pub(crate) fn addr(&mut self) -> Result<SocketAddr, WireError> {
        let ip = match self.u8()? {
            4 => {
                let b = self.take(4)?;
                IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
            }
            6 => {
                let b = self.take(16)?;
                let mut a = [0u8; 16];
                a.copy_from_slice(b);
                IpAddr::V6(Ipv6Addr::from(a))
            }
            _ => return Err(WireError::Invalid("address family")),
        };
        Ok(SocketAddr::new(ip, self.u16()?))
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }

    pub(crate) fn finish(self) -> Result<(), WireError> {
        if self.data.is_empty() {
            Ok(())
        } else {
            Err(WireError::Trailing(self.what, self.data.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            name: "02:00:00:00:00:01".parse().unwrap(),
            uid: PeerUid::new(0x0102_0304_0506_0708),
            conn_id: 0x1122_3344_5566_7788,
            listen_port: 6783,
            nickname: "h1".into(),
        }
    }

    #[test]
    fn hello_wire_bytes() {
        let bytes = Message::Hello(hello()).encode();
        #[rustfmt::skip]
        let expected: &[u8] = &[
            0, 0, 0, 28,                              // frame length: tag + 27 payload bytes
            1,                                        // tag: hello
            0x02, 0, 0, 0, 0, 0x01,                   // peer name
            1, 2, 3, 4, 5, 6, 7, 8,                   // uid
            0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, // connection id
            0x1a, 0x7f,                               // listen port 6783
            2, b'h', b'1',                            // nickname
        ];
        assert_eq!(bytes, expected);
        assert_eq!(
            Message::decode(&bytes[4..]).unwrap(),
            Message::Hello(hello())
        );
    }

    #[test]
    fn decoder_handles_split_input() {
        let mut stream = header().to_vec();
        stream.extend(Message::Hello(hello()).encode());
        stream.extend(Message::Heartbeat.encode());
        let mut d = Decoder::new();
        let mut frames = Vec::new();
        for b in &stream {
            d.push(std::slice::from_ref(b));
            while let Some(f) = d.next_frame().unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(
            frames,
            vec![
                Frame::Header(1),
                Frame::Message(Message::Hello(hello())),
                Frame::Message(Message::Heartbeat)
            ]
        );
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn refuses_other_protocols_early() {
        let mut d = Decoder::new();
        d.push(b"GET");
        assert!(matches!(d.next_frame(), Err(WireError::NotWeave(_))));
    }

    #[test]
    fn refuses_unknown_versions() {
        let mut d = Decoder::new();
        d.push(b"weave\x07\x09");
        assert_eq!(
            d.next_frame(),
            Err(WireError::Version {
                ours_min: 1,
                ours_max: 1,
                theirs_min: 7,
                theirs_max: 9
            })
        );
        assert!(negotiate(0, 5).is_ok());
        assert!(negotiate(3, 2).is_err());
    }

    #[test]
    fn refuses_oversized_frames_before_buffering() {
        let mut d = Decoder::new();
        d.push(&header());
        assert!(d.next_frame().unwrap().is_some());
        d.push(&[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(d.next_frame(), Err(WireError::FrameLength(0xffff_ffff)));
    }

    #[test]
    fn refuses_malformed_messages() {
        assert_eq!(Message::decode(&[9]), Err(WireError::UnknownTag(9)));
        assert_eq!(
            Message::decode(&[2, 0]),
            Err(WireError::Trailing("heartbeat", 1))
        );
        let mut h = Message::Hello(hello()).encode();
        h.push(0);
        assert_eq!(
            Message::decode(&h[4..]),
            Err(WireError::Trailing("hello", 1))
        );
        assert_eq!(
            Message::decode(&h[4..10]),
            Err(WireError::Truncated("hello"))
        );
    }

    #[test]
    fn long_nicknames_are_cut_on_a_char_boundary() {
        let mut h = hello();
        h.nickname = "é".repeat(40);
        let bytes = Message::Hello(h).encode();
        let Message::Hello(back) = Message::decode(&bytes[4..]).unwrap() else {
            panic!("not a hello");
        };
        assert_eq!(back.nickname, "é".repeat(32));
    }
}
