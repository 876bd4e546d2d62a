// SPDX-License-Identifier: Apache-2.0
//! An nfnetlink_log socket: packets that an nftables `log group N` statement logs arrive on
//! it as netlink datagrams (`NFULNL_MSG_PACKET`), which the caller parses.
//!
//! [`NflogSocket::bind`] opens a `NETLINK_NETFILTER` socket in the current network namespace,
//! binds it to one group and asks for the first bytes of each packet (enough for the IP and
//! transport headers), with a short flush timeout so that entries arrive promptly. Only one
//! socket can read a group; a second bind fails with `EBUSY`. Reads block: call
//! [`NflogSocket::recv`] from a thread of its own, and read what it returns with [`parse`]
//! (pure, fuzzed: `node-agent/fuzz`, target `nflog`).
#![allow(unsafe_code)]

mod parse;

pub use self::parse::{parse, Entry, Packet, ParseError};

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `NFNL_SUBSYS_ULOG`.
const SUBSYS_ULOG: u16 = 4;
/// `NFULNL_MSG_CONFIG`.
const MSG_CONFIG: u16 = 1;
/// `NFULA_CFG_CMD`.
const CFG_CMD: u16 = 1;
/// `NFULA_CFG_MODE`.
const CFG_MODE: u16 = 2;
/// `NFULA_CFG_TIMEOUT` (hundredths of a second before a batch is flushed).
const CFG_TIMEOUT: u16 = 4;
/// `NFULA_CFG_QTHRESH` (entries per batch).
const CFG_QTHRESH: u16 = 5;
/// `NFULNL_CFG_CMD_BIND`.
const CMD_BIND: u8 = 1;
/// `NFULNL_COPY_PACKET`.
const COPY_PACKET: u8 = 2;
/// `NETLINK_NETFILTER`.
const NETLINK_NETFILTER: i32 = 12;

/// A socket reading one nflog group.
#[derive(Debug)]
pub struct NflogSocket {
    /// The netlink socket.
    fd: OwnedFd,
    /// The group.
    group: u16,
}

impl NflogSocket {
    /// Opens a socket in the current network namespace, bound to `group`, copying `copy`
    /// bytes of each packet (from its network header).
    pub fn bind(group: u16, copy: u32) -> io::Result<Self> {
        // SAFETY: socket() takes integers and returns a new descriptor or -1.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor just created for us and owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_nl is plain data; all zero is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = u16::try_from(libc::AF_NETLINK).unwrap_or_default();
        let len = u32::try_from(std::mem::size_of::<libc::sockaddr_nl>()).unwrap_or_default();
        // SAFETY: `addr` is a valid sockaddr_nl of `len` bytes, borrowed for the call only.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::from_ref(&addr).cast::<libc::sockaddr>(),
                len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let socket = Self { fd, group };
        socket.config(1, &[(CFG_CMD, vec![CMD_BIND])])?;
        let mut mode = copy.to_be_bytes().to_vec();
        mode.extend([COPY_PACKET, 0]);
        socket.config(
            2,
            &[
                (CFG_MODE, mode),
                (CFG_TIMEOUT, 10_u32.to_be_bytes().to_vec()),
                (CFG_QTHRESH, 32_u32.to_be_bytes().to_vec()),
            ],
        )?;
        Ok(socket)
    }

    /// Makes [`recv`](Self::recv) fail with `WouldBlock` after `timeout` without a datagram.
    pub fn set_read_timeout(&self, timeout: std::time::Duration) -> io::Result<()> {
        let tv = libc::timeval {
            tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_usec: libc::suseconds_t::from(timeout.subsec_micros()),
        };
        let len = u32::try_from(std::mem::size_of::<libc::timeval>()).unwrap_or_default();
        // SAFETY: `tv` is a valid timeval of `len` bytes, borrowed for the call only.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::from_ref(&tv).cast::<libc::c_void>(),
                len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The group this socket reads.
    pub fn group(&self) -> u16 {
        self.group
    }

    /// Receives one datagram (one or more netlink messages) into `buf`; returns its length.
    /// `ENOBUFS` means entries were lost because the socket's buffer was full.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the call.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast::<libc::c_void>(),
                    buf.len(),
                    0,
                )
            };
            if n >= 0 {
                return Ok(usize::try_from(n).unwrap_or_default());
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    /// Sends one `NFULNL_MSG_CONFIG` with `attrs` and waits for its acknowledgement.
    fn config(&self, seq: u32, attrs: &[(u16, Vec<u8>)]) -> io::Result<()> {
        let mut msg = Vec::with_capacity(64);
        msg.extend([0u8; 4]); // length, set below
        msg.extend(((SUBSYS_ULOG << 8) | MSG_CONFIG).to_ne_bytes());
        let flags = u16::try_from(libc::NLM_F_REQUEST | libc::NLM_F_ACK).unwrap_or_default();
        msg.extend(flags.to_ne_bytes());
        msg.extend(seq.to_ne_bytes());
        msg.extend(0u32.to_ne_bytes()); // port ID: the kernel's
                                        // nfgenmsg: family AF_UNSPEC, version NFNETLINK_V0, resource ID = group (big endian).
        msg.extend([0u8, 0u8]);
        msg.extend(self.group.to_be_bytes());
        for (kind, value) in attrs {
            let len = u16::try_from(4 + value.len())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "attribute too long"))?;
            msg.extend(len.to_ne_bytes());
            msg.extend(kind.to_ne_bytes());
            msg.extend(value);
            while msg.len() % 4 != 0 {
                msg.push(0);
            }
        }
        let total = u32::try_from(msg.len()).unwrap_or_default();
        msg[..4].copy_from_slice(&total.to_ne_bytes());
        // SAFETY: `msg` is valid for reads of `msg.len()` bytes for the call.
        let sent = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast::<libc::c_void>(),
                msg.len(),
                0,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = [0u8; 256];
        let n = self.recv(&mut buf)?;
        // An NLMSG_ERROR (type 2) carries the errno (negated, 0 = success) after the header.
        let ack = buf.get(..n).unwrap_or_default();
        let kind = ack.get(4..6).map(|b| u16::from_ne_bytes([b[0], b[1]]));
        let code = ack
            .get(16..20)
            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
        match (kind, code) {
            (Some(2), Some(0)) => Ok(()),
            (Some(2), Some(errno)) => Err(io::Error::from_raw_os_error(-errno)),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "unexpected answer to an nflog configuration request",
            )),
        }
    }
}
