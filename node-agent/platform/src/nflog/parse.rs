// SPDX-License-Identifier: Apache-2.0
//! Parsing nfnetlink_log datagrams (untrusted bytes: anything may arrive on the socket, and
//! a truncated or malformed message must never panic or be misread).
//!
//! A datagram holds netlink messages back to back. Each `NFULNL_MSG_PACKET` message is a
//! 16-byte `nlmsghdr`, a 4-byte `nfgenmsg` (family, version, group), and netlink attributes
//! (2-byte length, 2-byte type, value, padded to 4). Of those we read the prefix the rule
//! logged with (`NFULA_PREFIX`) and the packet's first bytes (`NFULA_PAYLOAD`, from the
//! network header), from which [`Packet`] takes addresses, protocol and ports.

use std::net::Ipv4Addr;

/// `(NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET`.
const MSG_PACKET: u16 = 4 << 8;
/// `NLMSG_ERROR`, `NLMSG_DONE`, `NLMSG_NOOP`, `NLMSG_OVERRUN`: control messages, skipped.
const CONTROL_MAX: u16 = 0x0f;
/// `NFULA_PAYLOAD`.
const ATTR_PAYLOAD: u16 = 9;
/// `NFULA_PREFIX`.
const ATTR_PREFIX: u16 = 10;
/// The attribute type without the nested and byte-order flags.
const ATTR_TYPE_MASK: u16 = 0x3fff;

/// One logged packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The nflog group (the `nfgenmsg` resource ID).
    pub group: u16,
    /// The log prefix (without a trailing NUL).
    pub prefix: String,
    /// The packet, when its headers could be read.
    pub packet: Option<Packet>,
}

/// What a logged IPv4 packet says about its flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Packet {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// The transport protocol number (6 TCP, 17 UDP, 132 SCTP, 1 ICMP, …).
    pub protocol: u8,
    /// Source port (TCP, UDP, SCTP; 0 otherwise or in a later fragment).
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
}

impl Packet {
    /// The protocol's name for logs.
    pub fn protocol_name(&self) -> String {
        match self.protocol {
            1 => "ICMP".into(),
            6 => "TCP".into(),
            17 => "UDP".into(),
            132 => "SCTP".into(),
            n => format!("IP protocol {n}"),
        }
    }

    /// Parses the first bytes of an IPv4 packet; `None` if they are not one.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let first = *bytes.first()?;
        if first >> 4 != 4 {
            return None;
        }
        let ihl = usize::from(first & 0x0f) * 4;
        if ihl < 20 || bytes.len() < ihl {
            return None;
        }
        let protocol = bytes[9];
        let src = Ipv4Addr::new(bytes[12], bytes[13], bytes[14], bytes[15]);
        let dst = Ipv4Addr::new(bytes[16], bytes[17], bytes[18], bytes[19]);
        // Ports are in the first fragment only.
        let offset = u16::from_be_bytes([bytes[6], bytes[7]]) & 0x1fff;
        let (mut sport, mut dport) = (0, 0);
        if offset == 0 && matches!(protocol, 6 | 17 | 132) {
            if let Some(l4) = bytes.get(ihl..ihl + 4) {
                sport = u16::from_be_bytes([l4[0], l4[1]]);
                dport = u16::from_be_bytes([l4[2], l4[3]]);
            }
        }
        Some(Self {
            src,
            dst,
            protocol,
            sport,
            dport,
        })
    }
}

/// Why a message could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// A header or attribute runs past the end of the datagram.
    Truncated,
    /// A length field is smaller than its own header.
    BadLength,
}

/// Reads every packet entry of `datagram`. Control and other messages are skipped; reading
/// stops at the first malformed message (its error is the last item), since the lengths that
/// follow cannot be trusted.
pub fn parse(datagram: &[u8]) -> Vec<Result<Entry, ParseError>> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        let Some(header) = rest.get(..16) else {
            out.push(Err(ParseError::Truncated));
            break;
        };
        let len = u32::from_ne_bytes([header[0], header[1], header[2], header[3]]);
        let kind = u16::from_ne_bytes([header[4], header[5]]);
        let Ok(len) = usize::try_from(len) else {
            out.push(Err(ParseError::BadLength));
            break;
        };
        if len < 16 {
            out.push(Err(ParseError::BadLength));
            break;
        }
        let Some(message) = rest.get(..len) else {
            out.push(Err(ParseError::Truncated));
            break;
        };
        if kind == MSG_PACKET {
            out.push(packet_message(&message[16..]));
        } else if kind > CONTROL_MAX {
            // Another netfilter message: not ours to read.
        }
        // Messages are aligned to 4 bytes.
        let next = len.div_ceil(4) * 4;
        rest = rest.get(next..).unwrap_or_default();
    }
    out
}

/// Reads the body of one packet message (after `nlmsghdr`).
fn packet_message(body: &[u8]) -> Result<Entry, ParseError> {
    let generic = body.get(..4).ok_or(ParseError::Truncated)?;
    let group = u16::from_be_bytes([generic[2], generic[3]]);
    let mut attrs = &body[4..];
    let mut prefix = String::new();
    let mut packet = None;
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & ATTR_TYPE_MASK;
        if len < 4 {
            return Err(ParseError::BadLength);
        }
        let value = attrs.get(4..len).ok_or(ParseError::Truncated)?;
        match kind {
            ATTR_PREFIX => {
                let text = value.split(|b| *b == 0).next().unwrap_or_default();
                prefix = String::from_utf8_lossy(text).into_owned();
            }
            ATTR_PAYLOAD => packet = Packet::parse(value),
            _ => {}
        }
        let next = len.div_ceil(4) * 4;
        attrs = attrs.get(next..).unwrap_or_default();
    }
    Ok(Entry {
        group,
        prefix,
        packet,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One packet message of group 86 with prefix `weave-npc ingress denied x/a: ` and a
    /// TCP SYN from 10.32.0.2:40000 to 10.32.0.1:80.
    fn message() -> Vec<u8> {
        let mut attrs = Vec::new();
        // NFULA_PACKET_HDR: hw_protocol 0x0800, hook 2 (forward), pad.
        attrs.extend([8, 0, 1, 0, 0x08, 0x00, 2, 0]);
        // NFULA_PREFIX: 31 bytes of text and NUL = 32, + 4 header = 36.
        let prefix = b"weave-npc ingress denied x/a: \0";
        attrs.extend(u16::try_from(4 + prefix.len()).expect("len").to_ne_bytes());
        attrs.extend(ATTR_PREFIX.to_ne_bytes());
        attrs.extend(prefix);
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        // NFULA_PAYLOAD: 20-byte IPv4 header + first 4 bytes of TCP.
        let payload: [u8; 24] = [
            0x45, 0, 0, 60, // version 4, IHL 5, total length 60
            0, 1, 0x40, 0, // id, DF, fragment offset 0
            64, 6, 0, 0, // TTL, protocol TCP, checksum
            10, 32, 0, 2, // source
            10, 32, 0, 1, // destination
            0x9c, 0x40, 0, 80, // ports 40000 → 80
        ];
        attrs.extend(u16::try_from(4 + payload.len()).expect("len").to_ne_bytes());
        attrs.extend(ATTR_PAYLOAD.to_ne_bytes());
        attrs.extend(payload);
        let mut msg = Vec::new();
        msg.extend(
            u32::try_from(16 + 4 + attrs.len())
                .expect("len")
                .to_ne_bytes(),
        );
        msg.extend(MSG_PACKET.to_ne_bytes()); // type
        msg.extend(0u16.to_ne_bytes()); // flags
        msg.extend(0u32.to_ne_bytes()); // sequence
        msg.extend(0u32.to_ne_bytes()); // port ID
        msg.extend([2, 0]); // nfgenmsg: AF_INET, version 0
        msg.extend(86u16.to_be_bytes()); // group
        msg.extend(attrs);
        msg
    }

    #[test]
    fn a_packet_message_is_read() {
        let mut datagram = message();
        datagram.extend(message());
        let entries = parse(&datagram);
        assert_eq!(entries.len(), 2);
        let entry = entries[0].clone().expect("valid");
        assert_eq!(entry.group, 86);
        assert_eq!(entry.prefix, "weave-npc ingress denied x/a: ");
        let p = entry.packet.expect("packet");
        assert_eq!(p.src, Ipv4Addr::new(10, 32, 0, 2));
        assert_eq!(p.dst, Ipv4Addr::new(10, 32, 0, 1));
        assert_eq!((p.protocol, p.sport, p.dport), (6, 40000, 80));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let msg = message();
        assert!(parse(&[]).is_empty());
        for cut in 1..msg.len() {
            assert_eq!(
                parse(&msg[..cut]),
                vec![Err(ParseError::Truncated)],
                "cut at {cut}"
            );
        }
        let mut bad = msg.clone();
        bad[..4].copy_from_slice(&3u32.to_ne_bytes());
        assert_eq!(parse(&bad), vec![Err(ParseError::BadLength)]);
    }

    #[test]
    fn fragments_and_other_protocols_have_no_ports() {
        let mut ip = [0u8; 24];
        ip[0] = 0x45;
        ip[6] = 0x00;
        ip[7] = 0x10; // fragment offset 16
        ip[9] = 17;
        let p = Packet::parse(&ip).expect("ipv4");
        assert_eq!((p.sport, p.dport), (0, 0));
        ip[7] = 0;
        ip[9] = 1;
        assert_eq!(Packet::parse(&ip).expect("ipv4").protocol_name(), "ICMP");
        assert!(Packet::parse(&[0x60; 40]).is_none(), "IPv6 is not read");
        assert!(
            Packet::parse(&[0x46; 20]).is_none(),
            "options beyond the bytes"
        );
    }
}
