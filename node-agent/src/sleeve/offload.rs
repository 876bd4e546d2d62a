// SPDX-License-Identifier: Apache-2.0
//! The virtio-net header the TAP port puts before every frame
//! (`IFF_VNET_HDR`), and what the sleeve does with it.
//!
//! With checksum and TCP segmentation offload switched on for the TAP port,
//! the kernel hands over a pod's TCP stream as super-frames of up to 64 KB
//! (one header, `gso_size` says how to cut it) whose checksum is left for
//! "the hardware" to finish (`NEEDS_CSUM`: the pseudo-header sum sits in the
//! checksum field, `csum_start`/`csum_offset` say where). The sleeve carries
//! super-frames whole, header included, to the peer whose TAP port takes
//! them the same way; the receiving pod's stack never sees them cut.
//! Ordinary frames lose the header: if their checksum is unfinished, it is
//! finished here ([`finish_checksum`]) so the frame is complete on the wire.
//!
//! Layout (the legacy 10-byte `struct virtio_net_hdr`, little-endian on the
//! hosts this runs on):
//!
//! ```text
//! 0 flags | 1 gso_type | 2 hdr_len | 4 gso_size | 6 csum_start | 8 csum_offset
//! ```

/// Bytes of the header before each frame on the TAP descriptor.
pub const LEN: usize = 10;
/// `flags`: the checksum from `csum_start` to the end is still to be done.
pub const F_NEEDS_CSUM: u8 = 1;
/// `flags`: the checksum was verified (only ever set on frames we inject).
pub const F_DATA_VALID: u8 = 2;
/// `gso_type`: not a super-frame.
pub const GSO_NONE: u8 = 0;
/// `gso_type`: TCP over IPv4.
pub const GSO_TCPV4: u8 = 1;
/// `gso_type`: TCP over IPv6.
pub const GSO_TCPV6: u8 = 4;
/// `gso_type` bit: the segments carry ECN (CWR handling).
pub const GSO_ECN: u8 = 0x80;

/// A parsed virtio-net header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnetHdr {
    /// `F_*` bits.
    pub flags: u8,
    /// `GSO_*` value.
    pub gso_type: u8,
    /// Length of the headers repeated in every segment.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where the checksummed range starts (from the Ethernet header).
    pub csum_start: u16,
    /// Where in that range the checksum field is.
    pub csum_offset: u16,
}

/// Why a header is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    /// Fewer than [`LEN`] bytes.
    #[error("offload header truncated")]
    Short,
    /// Flags or segmentation type this sleeve does not carry.
    #[error("unsupported offload flags {flags:#x} / type {gso_type:#x}")]
    Unsupported {
        /// The flags.
        flags: u8,
        /// The segmentation type.
        gso_type: u8,
    },
    /// The checksum field lies outside the frame.
    #[error("checksum position outside the frame")]
    Checksum,
    /// A super-frame without a segment size or headers.
    #[error("malformed segmentation fields")]
    Segmentation,
}

impl VnetHdr {
    /// Reads the header at the start of `b`.
    pub fn parse(b: &[u8]) -> Result<Self, OffloadError> {
        let b: &[u8; LEN] = b
            .get(..LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(OffloadError::Short)?;
        let le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Ok(Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
        })
    }

    /// The header's bytes.
    pub fn to_bytes(self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }

    /// Whether this describes a super-frame the kernel is to cut.
    pub fn is_gso(self) -> bool {
        self.gso_type & !GSO_ECN != GSO_NONE
    }

    /// Checks a header received from a peer against the frame it came with
    /// (`frame_len` bytes of Ethernet frame): only what our own TAP port
    /// produces is passed on to the kernel.
    pub fn validate(self, frame_len: usize) -> Result<(), OffloadError> {
        let unsupported = OffloadError::Unsupported {
            flags: self.flags,
            gso_type: self.gso_type,
        };
        if self.flags & !(F_NEEDS_CSUM | F_DATA_VALID) != 0 {
            return Err(unsupported);
        }
        if !matches!(self.gso_type & !GSO_ECN, GSO_NONE | GSO_TCPV4 | GSO_TCPV6) {
            return Err(unsupported);
        }
        if self.flags & F_NEEDS_CSUM != 0 {
            let end = usize::from(self.csum_start) + usize::from(self.csum_offset) + 2;
            if usize::from(self.csum_start) < 14 || end > frame_len {
                return Err(OffloadError::Checksum);
            }
        }
        if self.is_gso() {
            // A super-frame always needs its checksums done per segment.
            if self.flags & F_NEEDS_CSUM == 0
                || self.gso_size == 0
                || usize::from(self.hdr_len) > frame_len
            {
                return Err(OffloadError::Segmentation);
            }
        }
        Ok(())
    }
}

/// Finishes a checksum the sender's stack left to the device: the one's
/// complement sum over `frame[start..]` (which includes the pseudo-header
/// sum already in the field), folded, complemented and stored at
/// `start + offset`. Returns false, changing nothing, when the positions lie
/// outside the frame.
pub fn finish_checksum(frame: &mut [u8], start: usize, offset: usize) -> bool {
    let field = start + offset;
    if field + 2 > frame.len() || start > frame.len() {
        return false;
    }
    let sum = ones_complement_sum(&frame[start..]);
    frame[field..field + 2].copy_from_slice(&(!sum).to_be_bytes());
    true
}

/// The folded 16-bit one's complement sum of `data` read as big-endian
/// words (an odd last byte is padded with zero).
pub fn ones_complement_sum(data: &[u8]) -> u16 {
    // Eight bytes at a time into a 128-bit accumulator would be faster
    // still; 32-bit words into 64 bits are plenty for frames of 1.5 KB.
    let mut acc: u64 = 0;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        acc += u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
    }
    let rest = chunks.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    acc += u64::from(u32::from_be_bytes(tail));
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    u16::try_from(acc).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A UDP/IPv4 frame whose checksum is computed by the textbook method
    /// (pseudo-header + UDP header with zero checksum + data).
    fn udp_frame(payload: &[u8]) -> (Vec<u8>, u16) {
        let mut f = vec![0u8; 14];
        f[12] = 0x08;
        let total = 20 + 8 + payload.len();
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 2, 1, 1, 10, 2, 1, 2,
        ];
        ip[2..4].copy_from_slice(&u16::try_from(total).unwrap().to_be_bytes());
        f.extend_from_slice(&ip);
        let udp_len = u16::try_from(8 + payload.len()).unwrap();
        f.extend_from_slice(&[0x30, 0x39, 0x00, 0x35]);
        f.extend_from_slice(&udp_len.to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(payload);
        let mut pseudo = vec![10, 2, 1, 1, 10, 2, 1, 2, 0, 17];
        pseudo.extend_from_slice(&udp_len.to_be_bytes());
        pseudo.extend_from_slice(&f[34..]);
        let want = !ones_complement_sum(&pseudo);
        (f, want)
    }

    #[test]
    fn a_partial_checksum_is_finished_like_the_textbook_one() {
        for len in [0usize, 1, 7, 64, 1401] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 37 + 11).to_le_bytes()[0]).collect();
            let (mut frame, want) = udp_frame(&payload);
            // What a stack with checksum offload leaves in the field: the
            // pseudo-header sum, not complemented.
            let mut pseudo = vec![10, 2, 1, 1, 10, 2, 1, 2, 0, 17];
            pseudo.extend_from_slice(&frame[38..40]);
            frame[40..42].copy_from_slice(&ones_complement_sum(&pseudo).to_be_bytes());
            assert!(finish_checksum(&mut frame, 34, 6));
            assert_eq!(
                u16::from_be_bytes([frame[40], frame[41]]),
                want,
                "len {len}"
            );
        }
    }

    #[test]
    fn checksum_positions_outside_the_frame_change_nothing() {
        let mut frame = vec![7u8; 40];
        let before = frame.clone();
        assert!(!finish_checksum(&mut frame, 34, 6));
        assert!(!finish_checksum(&mut frame, 50, 0));
        assert_eq!(frame, before);
    }

    #[test]
    fn header_round_trips_and_validates() {
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4 | GSO_ECN,
            hdr_len: 66,
            gso_size: 1384,
            csum_start: 34,
            csum_offset: 16,
        };
        assert_eq!(VnetHdr::parse(&h.to_bytes()).unwrap(), h);
        assert!(h.is_gso());
        assert_eq!(h.validate(60_000), Ok(()));
        assert_eq!(h.validate(40), Err(OffloadError::Checksum));
        assert_eq!(
            VnetHdr { flags: 0, ..h }.validate(60_000),
            Err(OffloadError::Segmentation)
        );
        assert_eq!(
            VnetHdr { gso_size: 0, ..h }.validate(60_000),
            Err(OffloadError::Segmentation)
        );
        assert!(matches!(
            VnetHdr { gso_type: 3, ..h }.validate(60_000),
            Err(OffloadError::Unsupported { .. })
        ));
        assert!(matches!(
            VnetHdr { flags: 0x10, ..h }.validate(60_000),
            Err(OffloadError::Unsupported { .. })
        ));
        assert_eq!(VnetHdr::parse(&[0; 9]), Err(OffloadError::Short));
        assert!(!VnetHdr::default().is_gso());
        assert_eq!(VnetHdr::default().validate(14), Ok(()));
    }
}
