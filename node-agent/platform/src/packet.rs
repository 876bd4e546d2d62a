// SPDX-License-Identifier: Apache-2.0
//! Raw Ethernet frames in and out of one link (`AF_PACKET`, `SOCK_RAW`):
//! the fast path's heartbeats, which must cross the VXLAN device itself, and
//! the announcements a pod makes from its own interface when it appears
//! (gratuitous ARP, unsolicited neighbour advertisement).
//!
//! A [`PacketSocket`] lives in the network namespace of the thread that made
//! it (use [`crate::netns::open_in`] for another one). It receives only
//! frames of its own EtherType that the kernel delivers to the link it is
//! bound to, so no other traffic is copied to user space; a socket made with
//! [`PacketSocket::sender`] receives nothing.
//!
//! `unsafe` here: `socket`, `bind` and `sendto` with a `sockaddr_ll`, which
//! neither std nor nix builds, and the tokio `AsyncFd` registration.
#![allow(unsafe_code)]

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::{unix::AsyncFd, Interest};

use crate::error::{Error, Result};

/// A MAC address (the same as `netlink::Mac`, which imports this module).
type Mac = [u8; 6];

/// Ethernet header length.
const ETH_HLEN: usize = 14;
/// EtherType of ARP.
const ETH_P_ARP: u16 = 0x0806;
/// EtherType of IPv6.
const ETH_P_IPV6: u16 = 0x86dd;

/// A raw Ethernet socket bound to one link.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// A socket bound to link `ifindex` that receives the frames of
    /// EtherType `ethertype` delivered there (non-blocking, close-on-exec).
    pub fn bind(ifindex: u32, ethertype: u16) -> Result<PacketSocket> {
        Self::open(ifindex, ethertype, || {
            format!("open packet socket for ethertype {ethertype:#06x} on link {ifindex}")
        })
    }

    /// A socket on link `ifindex` that only sends (protocol 0: the kernel
    /// hands it no frames).
    pub fn sender(ifindex: u32) -> Result<PacketSocket> {
        Self::open(ifindex, 0, || {
            format!("open packet socket on link {ifindex}")
        })
    }

    fn open(ifindex: u32, ethertype: u16, op: impl Fn() -> String) -> Result<PacketSocket> {
        // SAFETY: plain system call with integer arguments; the result is
        // checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                i32::from(ethertype.to_be()),
            )
        };
        if raw < 0 {
            return Err(Error::io(op(), io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a descriptor the kernel just gave us and nothing
        // else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let addr = sockaddr_ll(ifindex, ethertype, None)
            .ok_or_else(|| Error::io(op(), io::Error::from_raw_os_error(libc::ENODEV)))?;
        // SAFETY: `addr` is a fully initialised `sockaddr_ll` that outlives
        // the call, and its size is passed along.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::from_ref(&addr).cast(),
                sockaddr_ll_len(),
            )
        };
        if rc < 0 {
            return Err(Error::io(op(), io::Error::last_os_error()));
        }
        Ok(PacketSocket { fd })
    }

    /// Sends `frame` (Ethernet header included) out of link `ifindex`, to the
    /// destination MAC in its header. Fails with `WouldBlock` when the link's
    /// queue is full.
    pub fn send_to(&self, ifindex: u32, frame: &[u8]) -> io::Result<usize> {
        if frame.len() < ETH_HLEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a frame is at least an Ethernet header",
            ));
        }
        let mut dst = [0u8; 6];
        dst.copy_from_slice(&frame[..6]);
        let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
        let addr = sockaddr_ll(ifindex, ethertype, Some(dst))
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENODEV))?;
        // SAFETY: `frame` and `addr` are valid for the lengths passed and
        // outlive the call; the kernel only reads them.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                std::ptr::from_ref(&addr).cast(),
                sockaddr_ll_len(),
            )
        };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    /// Reads one frame into `buf` (a longer one is truncated); fails with
    /// `WouldBlock` when none is queued.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of its length for the call.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }
}

impl AsRawFd for PacketSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for PacketSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A [`PacketSocket`] driven by the tokio reactor.
#[derive(Debug)]
pub struct AsyncPacketSocket {
    inner: AsyncFd<PacketSocket>,
}

impl AsyncPacketSocket {
    /// Registers `socket` with the current tokio runtime (IO enabled).
    pub fn new(socket: PacketSocket) -> Result<AsyncPacketSocket> {
        let op = "register a packet socket with the tokio reactor";
        tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime { op: op.into() })?;
        // SAFETY: `PacketSocket` owns its descriptor, which stays open and
        // the same until the socket is dropped; `AsyncFd` deregisters before
        // dropping it and hands out only shared references.
        let registered = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) };
        registered
            .map(|inner| AsyncPacketSocket { inner })
            .map_err(|e| Error::io(op, e.into_parts().1))
    }

    /// Waits for a frame and reads it into `buf`.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner
            .async_io(Interest::READABLE, |s| s.recv(buf))
            .await
    }

    /// Sends a frame without waiting (see [`PacketSocket::send_to`]).
    pub fn send_to(&self, ifindex: u32, frame: &[u8]) -> io::Result<usize> {
        self.inner.get_ref().send_to(ifindex, frame)
    }
}

/// A `sockaddr_ll` for link `ifindex` and `ethertype`, with destination
/// `dst` when sending; `None` if the index does not fit the kernel's int.
fn sockaddr_ll(ifindex: u32, ethertype: u16, dst: Option<Mac>) -> Option<libc::sockaddr_ll> {
    let mut addr = libc::sockaddr_ll {
        sll_family: u16::try_from(libc::AF_PACKET).ok()?,
        sll_protocol: ethertype.to_be(),
        sll_ifindex: i32::try_from(ifindex).ok()?,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 0,
        sll_addr: [0; 8],
    };
    if let Some(mac) = dst {
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&mac);
    }
    Some(addr)
}

fn sockaddr_ll_len() -> libc::socklen_t {
    libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_ll>())
        .expect("a sockaddr_ll is 20 bytes")
}

/// The frame that announces `ip` from a link with MAC `mac`: a gratuitous
/// ARP request for IPv4 (sender and target address both `ip`, RFC 5227
/// §3), an unsolicited neighbour advertisement to all nodes with the
/// override flag for IPv6 (RFC 4861 §7.2.6).
pub fn announcement(mac: Mac, ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => gratuitous_arp(mac, v4),
        IpAddr::V6(v6) => unsolicited_na(mac, v6),
    }
}

fn gratuitous_arp(mac: Mac, ip: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]); // Ethernet, IPv4, request
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&ip.octets());
    f.resize(60, 0); // minimum Ethernet frame without FCS
    f
}

fn unsolicited_na(mac: Mac, ip: Ipv6Addr) -> Vec<u8> {
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let mut icmp = Vec::with_capacity(32);
    icmp.extend_from_slice(&[136, 0, 0, 0]); // neighbour advertisement
    icmp.extend_from_slice(&0x2000_0000u32.to_be_bytes()); // override
    icmp.extend_from_slice(&ip.octets());
    icmp.extend_from_slice(&[2, 1]); // target link-layer address, 8 bytes
    icmp.extend_from_slice(&mac);
    let len = u32::try_from(icmp.len()).expect("32 bytes");
    let mut sum = Vec::with_capacity(40 + icmp.len());
    sum.extend_from_slice(&ip.octets());
    sum.extend_from_slice(&all_nodes.octets());
    sum.extend_from_slice(&len.to_be_bytes());
    sum.extend_from_slice(&[0, 0, 0, 58]);
    sum.extend_from_slice(&icmp);
    let c = checksum(&sum);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut f = Vec::with_capacity(ETH_HLEN + 40 + icmp.len());
    f.extend_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&u16::try_from(icmp.len()).expect("32 bytes").to_be_bytes());
    f.extend_from_slice(&[58, 255]); // ICMPv6, hop limit 255 (RFC 4861 §7.1.2)
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&all_nodes.octets());
    f.extend_from_slice(&icmp);
    f
}

/// Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: Mac = [0x02, 0, 0, 0, 0, 7];

    #[test]
    fn gratuitous_arp_names_the_address_twice() {
        let f = announcement(MAC, "10.2.1.5".parse().expect("ip"));
        assert_eq!(f.len(), 60);
        assert_eq!(&f[..6], &[0xff; 6], "broadcast");
        assert_eq!(&f[6..12], &MAC);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1], "request");
        assert_eq!(&f[22..28], &MAC, "sender MAC");
        assert_eq!(&f[28..32], &[10, 2, 1, 5], "sender address");
        assert_eq!(&f[38..42], &[10, 2, 1, 5], "target address");
    }

    #[test]
    fn neighbour_advertisement_is_well_formed() {
        let ip: Ipv6Addr = "fd00::5".parse().expect("ip");
        let f = announcement(MAC, IpAddr::V6(ip));
        assert_eq!(&f[..6], &[0x33, 0x33, 0, 0, 0, 1], "all nodes");
        assert_eq!(&f[12..14], &[0x86, 0xdd]);
        let ip6 = &f[14..];
        assert_eq!(ip6[6], 58);
        assert_eq!(ip6[7], 255, "hop limit 255 or receivers drop it");
        let icmp = &ip6[40..];
        assert_eq!(u16::from_be_bytes([ip6[4], ip6[5]]) as usize, icmp.len());
        assert_eq!(icmp[0], 136);
        assert_eq!(icmp[4] & 0x20, 0x20, "override");
        assert_eq!(icmp[4] & 0x40, 0, "not solicited");
        assert_eq!(&icmp[8..24], &ip.octets());
        assert_eq!(&icmp[26..32], &MAC);
        // the checksum over the pseudo-header verifies to zero
        let mut sum = Vec::new();
        sum.extend_from_slice(&ip6[8..40]);
        sum.extend_from_slice(&u32::try_from(icmp.len()).expect("len").to_be_bytes());
        sum.extend_from_slice(&[0, 0, 0, 58]);
        sum.extend_from_slice(icmp);
        assert_eq!(checksum(&sum), 0);
    }

    #[test]
    fn short_frames_are_refused_before_any_system_call() {
        // No socket is needed to refuse: the check comes first.
        let err = sockaddr_ll(u32::MAX, 0, None);
        assert!(err.is_none(), "an index beyond the kernel's int is refused");
    }
}
