// SPDX-License-Identifier: Apache-2.0
//! MTU arithmetic of the sleeve, without I/O: which overlay MTU an underlay
//! allows ([`overlay_mtu`], from the devices [`underlay_devices`] picks),
//! how large a datagram that makes ([`underlay_payload`]), and what to do
//! with a frame too large for the overlay: an IPv4 packet with "don't
//! fragment" gets an ICMP "fragmentation needed" back ([`frag_needed`], RFC
//! 792, RFC 1191), so its sender lowers its path MTU instead of retrying
//! into a black hole. The ICMP message pretends to come from the packet's
//! destination, which is what makes the sender's kernel cache the smaller
//! MTU for that destination.
//!
//! Invariant: an overlay MTU chosen here plus [`overhead`] never exceeds the
//! underlay MTU it came from, and is never below the IPv4 minimum of 576.

use weave_platform::Route;

use super::frame;
use crate::crypto::session::SEALED_OVERHEAD;

/// Ethernet header length.
const ETH: usize = 14;
/// Bytes of encapsulation between the underlay MTU and the overlay MTU:
/// IPv4 (20) + UDP (8) + datagram header (8) + frame header (14) + the
/// inner Ethernet header (14).
pub const OVERHEAD: u32 = 64;
/// The smallest overlay MTU worth running (every IPv4 host must take 576).
pub const MIN_MTU: u32 = 576;

/// Why no overlay MTU could be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MtuError {
    /// No device carries IPv4 routes.
    #[error("no IPv4 route to any peer network")]
    NoRoute,
    /// The underlay leaves less than [`MIN_MTU`].
    #[error("underlay MTU {0} is too small")]
    TooSmall(u32),
}

/// Bytes between the underlay MTU and the overlay MTU: [`OVERHEAD`], plus
/// the sealed datagram's epoch, counter and tag with a password
/// (`crypto::session`).
pub fn overhead(encrypted: bool) -> u32 {
    if encrypted {
        // 36 bytes: the conversion cannot fail.
        OVERHEAD + u32::try_from(SEALED_OVERHEAD).unwrap_or(0)
    } else {
        OVERHEAD
    }
}

/// The devices whose MTU bounds the overlay: the default route's device if
/// there is a default route, else every device with an IPv4 route; never
/// the `bridge` (the overlay itself).
pub fn underlay_devices(routes: &[Route], bridge: Option<u32>) -> Vec<u32> {
    let default = routes
        .iter()
        .find(|r| r.prefix_len == 0)
        .and_then(|r| r.oif);
    let mut out: Vec<u32> = routes
        .iter()
        .filter_map(|r| r.oif)
        .filter(|oif| Some(*oif) != bridge && (default.is_none() || default == Some(*oif)))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// The overlay MTU under devices of MTUs `underlay` (the smallest counts):
/// that minus `overhead`.
pub fn overlay_mtu(
    underlay: impl IntoIterator<Item = u32>,
    overhead: u32,
) -> Result<u32, MtuError> {
    let smallest = underlay.into_iter().min().ok_or(MtuError::NoRoute)?;
    smallest
        .checked_sub(overhead)
        .filter(|m| *m >= MIN_MTU)
        .ok_or(MtuError::TooSmall(smallest))
}

/// The overlay MTU a path of underlay MTU `path_mtu` carries without IP
/// fragments (`path_mtu` minus `overhead`), never below [`MIN_MTU`] (the
/// kernel fragments what a narrower path cannot carry whole) nor above
/// `overlay` (the MTU the sleeve was set up with).
pub fn path_overlay_mtu(path_mtu: u32, overhead: u32, overlay: u32) -> u32 {
    path_mtu
        .saturating_sub(overhead)
        .clamp(MIN_MTU, overlay.max(MIN_MTU))
}

/// Length of the IPv4 packets a frame puts on the overlay: its own for a
/// plain frame, each segment's (`hdr_len` headers, Ethernet included, plus
/// `gso_size` payload) for a super-frame (`gso_size` > 0).
pub fn packet_len(frame_len: usize, hdr_len: u16, gso_size: u16) -> usize {
    if gso_size == 0 {
        frame_len.saturating_sub(ETH)
    } else {
        (usize::from(hdr_len) + usize::from(gso_size))
            .saturating_sub(ETH)
            .min(frame_len.saturating_sub(ETH))
    }
}

/// The largest plain datagram of an overlay MTU: one whole frame (overlay
/// MTU plus its Ethernet header) behind the datagram and frame headers.
pub fn underlay_payload(mtu: u32) -> usize {
    mtu as usize + ETH + frame::FRAME_HEADER_LEN + frame::HEADER_LEN
}

/// Internet checksum (RFC 1071) of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(u16::try_from(sum).unwrap_or(u16::MAX))
}

/// If `frame` is an IPv4 packet with DF set, the Ethernet frame of an ICMP
/// "fragmentation needed" (type 3, code 4) advertising `mtu`, addressed back
/// to its sender. `None` for anything else.
pub fn frag_needed(frame: &[u8], mtu: u16) -> Option<Vec<u8>> {
    if frame.len() < ETH + 20 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[ETH..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ihl < 20 || ip.len() < ihl {
        return None;
    }
    let df = ip[6] & 0x40 != 0;
    let first_fragment = u16::from_be_bytes([ip[6] & 0x1f, ip[7]]) == 0;
    // Never answer an ICMP error with an ICMP error (RFC 1122 3.2.2).
    let icmp_error = ip[9] == 1
        && ip
            .get(ihl)
            .is_some_and(|t| matches!(t, 3 | 4 | 5 | 11 | 12));
    if !df || !first_fragment || icmp_error {
        return None;
    }
    let quoted = &ip[..(ihl + 8).min(ip.len())];
    let total = 20 + 8 + quoted.len();
    let mut out = Vec::with_capacity(ETH + total);
    out.extend_from_slice(&frame[6..12]); // back to the sender's MAC
    out.extend_from_slice(&frame[0..6]);
    out.extend_from_slice(&[0x08, 0x00]);
    let mut hdr = [0u8; 20];
    hdr[0] = 0x45;
    hdr[2..4].copy_from_slice(&u16::try_from(total).unwrap_or(u16::MAX).to_be_bytes());
    hdr[8] = 64; // TTL
    hdr[9] = 1; // ICMP
    hdr[12..16].copy_from_slice(&ip[16..20]); // from the original destination
    hdr[16..20].copy_from_slice(&ip[12..16]); // to the original source
    let c = checksum(&hdr);
    hdr[10..12].copy_from_slice(&c.to_be_bytes());
    out.extend_from_slice(&hdr);
    let mut icmp = vec![3u8, 4, 0, 0, 0, 0];
    icmp.extend_from_slice(&mtu.to_be_bytes());
    icmp.extend_from_slice(quoted);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    out.extend_from_slice(&icmp);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(dst: [u8; 4], prefix_len: u8, oif: u32) -> Route {
        Route {
            dst: std::net::IpAddr::from(dst),
            prefix_len,
            gateway: None,
            oif: Some(oif),
        }
    }

    #[test]
    fn the_default_route_device_decides_else_every_routed_one() {
        let routes = [route([10, 0, 0, 0], 24, 2), route([10, 1, 0, 0], 24, 3)];
        assert_eq!(underlay_devices(&routes, None), vec![2, 3]);
        assert_eq!(
            underlay_devices(&routes, Some(3)),
            vec![2],
            "never the bridge"
        );
        let with_default = [routes[0], routes[1], route([0, 0, 0, 0], 0, 3)];
        assert_eq!(underlay_devices(&with_default, None), vec![3]);
        assert!(underlay_devices(&[], None).is_empty());
    }

    #[test]
    fn the_smallest_underlay_minus_the_overhead() {
        assert_eq!(overlay_mtu([1500, 9000], OVERHEAD), Ok(1436));
        assert_eq!(overlay_mtu([9000], overhead(true)), Ok(9000 - 100));
        assert_eq!(overlay_mtu([], OVERHEAD), Err(MtuError::NoRoute));
        assert_eq!(overlay_mtu([640], OVERHEAD), Ok(576));
        assert_eq!(overlay_mtu([639], OVERHEAD), Err(MtuError::TooSmall(639)));
        assert_eq!(overlay_mtu([10], OVERHEAD), Err(MtuError::TooSmall(10)));
    }

    #[test]
    fn the_encrypted_overhead_is_the_sealed_datagram_format() {
        assert_eq!(
            (overhead(true) - overhead(false)) as usize,
            crate::crypto::session::SEALED_OVERHEAD
        );
        assert_eq!(overhead(false), OVERHEAD);
    }

    #[test]
    fn a_full_frame_fits_the_underlay() {
        // 1436 + 64 = 1500: the datagram (payload of IPv4 + UDP) is 1472.
        assert_eq!(underlay_payload(1436), 1500 - 20 - 8);
    }

    #[test]
    fn a_narrower_path_lowers_the_overlay_mtu_by_the_same_overhead() {
        // a path of 1400 carries sleeve datagrams of 1400: frames of 1336
        assert_eq!(path_overlay_mtu(1400, OVERHEAD, 1436), 1336);
        assert_eq!(underlay_payload(1336) + 28, 1400);
        assert_eq!(path_overlay_mtu(1400, overhead(true), 1400), 1300);
        assert_eq!(path_overlay_mtu(9000, OVERHEAD, 1436), 1436, "never above");
        assert_eq!(
            path_overlay_mtu(600, OVERHEAD, 1436),
            MIN_MTU,
            "never below"
        );
    }

    #[test]
    fn super_frames_count_by_segment() {
        assert_eq!(packet_len(1450, 0, 0), 1436);
        // 66 bytes of headers (Ethernet, IPv4, TCP with options), 1384 payload
        assert_eq!(packet_len(65000, 66, 1384), 1436);
        assert_eq!(packet_len(500, 66, 1384), 486, "one short segment");
    }

    fn ipv4_frame(df: bool, len: usize) -> Vec<u8> {
        let mut f = vec![0x0a, 0, 0, 0, 0, 2, 0x0a, 0, 0, 0, 0, 1, 0x08, 0x00];
        let mut ip = vec![0u8; len];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
        ip[6] = if df { 0x40 } else { 0 };
        ip[8] = 64;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&[10, 2, 1, 1]);
        ip[16..20].copy_from_slice(&[10, 2, 1, 2]);
        f.extend_from_slice(&ip);
        f
    }

    #[test]
    fn df_packets_get_frag_needed_back() {
        let f = ipv4_frame(true, 2000);
        let icmp = frag_needed(&f, 1436).unwrap();
        assert_eq!(&icmp[0..6], &f[6..12], "to the sender's MAC");
        let ip = &icmp[14..];
        assert_eq!(&ip[12..16], &[10, 2, 1, 2], "from the destination");
        assert_eq!(&ip[16..20], &[10, 2, 1, 1], "to the source");
        assert_eq!(checksum(&ip[..20]), 0, "valid IP checksum");
        let body = &ip[20..];
        assert_eq!((body[0], body[1]), (3, 4));
        assert_eq!(u16::from_be_bytes([body[6], body[7]]), 1436);
        assert_eq!(checksum(body), 0, "valid ICMP checksum");
        assert_eq!(&body[8..], &f[14..14 + 28], "quotes header and 8 bytes");
    }

    #[test]
    fn other_frames_get_nothing() {
        assert!(frag_needed(&ipv4_frame(false, 2000), 1436).is_none());
        let mut arp = ipv4_frame(true, 100);
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert!(frag_needed(&arp, 1436).is_none());
        assert!(frag_needed(&[0u8; 20], 1436).is_none());
        let mut icmp_err = ipv4_frame(true, 100);
        icmp_err[14 + 9] = 1;
        icmp_err[14 + 20] = 3;
        assert!(frag_needed(&icmp_err, 1436).is_none());
    }
}
