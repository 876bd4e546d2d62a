// SPDX-License-Identifier: Apache-2.0
//! TAP devices: the sleeve's port on the `weave` bridge.
//!
//! A [`Tap`] is created with the `TUNSETIFF` ioctl on `/dev/net/tun` in the
//! network namespace of the *calling thread* (use [`crate::netns::open_in`] to
//! make one elsewhere). It is not persistent: the kernel removes the device
//! when the last file descriptor closes, so a crashed agent leaves nothing
//! behind. Each `read` returns one Ethernet frame and each `write` sends one
//! (`IFF_NO_PI`: no packet-information prefix). With `vnet_hdr`, every frame
//! is preceded by a `struct virtio_net_hdr` (10 bytes by default).
//!
//! [`AsyncTap`] registers a `Tap` with the tokio reactor. Since tokio 1.54,
//! `AsyncFd` registration is `unsafe` (the caller vouches that the descriptor
//! stays open and the same), and only this crate may use `unsafe`, so the
//! wrapper lives here rather than in the sleeve.
//!
//! This module holds the crate's only `unsafe`: the ioctl call and that
//! registration.
#![allow(unsafe_code)]

use std::{
    fs::{File, OpenOptions},
    io::{self, Read, Write},
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use tokio::io::{unix::AsyncFd, Interest};

use crate::error::{Error, Result};

/// The clone device every TUN/TAP is created from.
const TUN_DEVICE: &str = "/dev/net/tun";

/// `TUNSETOFFLOAD`, `_IOW('T', 208, unsigned int)`: which offloads the
/// reader of the device handles (its argument is the flags themselves).
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;

/// Offloads a TAP reader may take on (`TUN_F_*` of `<linux/if_tun.h>`).
pub mod offload {
    /// Frames may come with the checksum left to do (`TUN_F_CSUM`).
    pub const CSUM: u32 = 0x01;
    /// TCP over IPv4 super-frames (`TUN_F_TSO4`).
    pub const TSO4: u32 = 0x02;
    /// TCP over IPv6 super-frames (`TUN_F_TSO6`).
    pub const TSO6: u32 = 0x04;
    /// Super-frames with ECN (`TUN_F_TSO_ECN`).
    pub const TSO_ECN: u32 = 0x08;
}

/// A TAP device (`IFF_TAP | IFF_NO_PI`, optionally `IFF_VNET_HDR`).
///
/// Implements [`AsRawFd`] and [`AsFd`] for polling; for async code use
/// [`AsyncTap`], which does the (now `unsafe`) `AsyncFd` registration.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Creates a TAP device called `name` in the calling thread's network
    /// namespace. `name` must be a valid interface name of at most 15 bytes.
    /// The device starts down; bring it up (and attach it) over netlink.
    pub fn create(name: &str, vnet_hdr: bool) -> Result<Tap> {
        crate::netlink::validate_ifname(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(TUN_DEVICE)
            .map_err(|e| Error::io(format!("create tap {name}: open {TUN_DEVICE}"), e))?;

        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI;
        if vnet_hdr {
            flags |= libc::IFF_VNET_HDR;
        }
        let mut req = libc::ifreq {
            ifr_name: [0; libc::IFNAMSIZ],
            ifr_ifru: libc::__c_anonymous_ifr_ifru {
                ifru_flags: libc::c_short::try_from(flags).expect(
                    "IFF_TAP | IFF_NO_PI | IFF_VNET_HDR is 0x5002, which fits in ifr_flags",
                ),
            },
        };
        // validate_ifname guarantees at most IFNAMSIZ - 1 bytes and no NUL, so
        // the name stays NUL-terminated.
        for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }

        // SAFETY: `file` is an open descriptor of /dev/net/tun for the whole
        // call, and TUNSETIFF reads and writes exactly one `struct ifreq`,
        // which `req` is (libc's definition of the kernel struct), borrowed
        // mutably for the call only.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if rc < 0 {
            return Err(Error::io(
                format!("create tap {name}: ioctl TUNSETIFF"),
                io::Error::last_os_error(),
            ));
        }

        // The kernel writes back the name it used (the same unless the caller
        // passed a `%d` template, which validate_ifname does not forbid).
        let actual: Vec<u8> = req
            .ifr_name
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        let name = String::from_utf8(actual).unwrap_or_else(|_| name.to_owned());
        Ok(Tap { file, name })
    }

    /// The device's interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Tells the kernel which offloads the reader handles ([`offload`]
    /// flags). With `CSUM | TSO4`, say, the bridge hands over TCP
    /// super-frames unsegmented and checksums unfinished, described by the
    /// virtio-net header (the device must have been created with
    /// `vnet_hdr`).
    pub fn set_offload(&self, flags: u32) -> Result<()> {
        // SAFETY: `file` is an open /dev/net/tun descriptor attached to a
        // device; TUNSETOFFLOAD takes its argument by value and touches no
        // memory of ours.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                TUNSETOFFLOAD as _,
                libc::c_ulong::from(flags),
            )
        };
        if rc < 0 {
            return Err(Error::io(
                format!("set offloads {flags:#x} on tap {}", self.name),
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Switches the descriptor between blocking and non-blocking mode
    /// (non-blocking is needed under `tokio::io::unix::AsyncFd`).
    pub fn set_nonblocking(&self, on: bool) -> Result<()> {
        let op = || format!("set tap {} non-blocking {on}", self.name);
        let bits = fcntl(&self.file, FcntlArg::F_GETFL).map_err(|e| Error::io(op(), e.into()))?;
        let mut flags = OFlag::from_bits_retain(bits);
        flags.set(OFlag::O_NONBLOCK, on);
        fcntl(&self.file, FcntlArg::F_SETFL(flags)).map_err(|e| Error::io(op(), e.into()))?;
        Ok(())
    }

    /// Reads one frame into `buf` and returns its length. `buf` should hold
    /// the link MTU plus 14 bytes of Ethernet header (plus the virtio header
    /// with `vnet_hdr`); a longer frame is truncated.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one whole frame and returns the number of bytes taken.
    pub fn write(&self, frame: &[u8]) -> io::Result<usize> {
        (&self.file).write(frame)
    }

    /// Writes one frame given in parts (say, a virtio-net header and the
    /// Ethernet frame) with one `writev`.
    pub fn write_parts(&self, parts: &[io::IoSlice<'_>]) -> io::Result<usize> {
        (&self.file).write_vectored(parts)
    }
}

/// A [`Tap`] driven by the tokio reactor: `recv`/`send` wait for readiness
/// instead of blocking the thread. Each call still moves exactly one frame.
#[derive(Debug)]
pub struct AsyncTap {
    inner: AsyncFd<Tap>,
}

impl AsyncTap {
    /// Switches `tap` to non-blocking mode and registers it with the current
    /// tokio runtime (which must have IO enabled).
    pub fn new(tap: Tap) -> Result<AsyncTap> {
        let op = || format!("register tap {} with the tokio reactor", tap.name);
        tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime { op: op() })?;
        tap.set_nonblocking(true)?;
        // SAFETY: `Tap` owns its `File`, so the descriptor is valid and open
        // until the `Tap` is dropped, which `AsyncFd` does only after
        // deregistering it (on drop or `into_inner`). `Tap::as_raw_fd` always
        // returns that same descriptor: nothing can replace the `File`, and
        // `AsyncTap` hands out only shared references to the `Tap`.
        let registered = unsafe {
            AsyncFd::register_with_interest(tap, Interest::READABLE | Interest::WRITABLE)
        };
        match registered {
            Ok(inner) => Ok(AsyncTap { inner }),
            Err(e) => {
                let (tap, cause) = e.into_parts();
                Err(Error::io(
                    format!("register tap {} with the tokio reactor", tap.name),
                    cause,
                ))
            }
        }
    }

    /// The device's interface name.
    pub fn name(&self) -> &str {
        self.inner.get_ref().name()
    }

    /// The underlying TAP (non-blocking).
    pub fn get_ref(&self) -> &Tap {
        self.inner.get_ref()
    }

    /// Waits for a frame and reads it into `buf`; returns its length.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner
            .async_io(Interest::READABLE, |tap| tap.read(buf))
            .await
    }

    /// Waits until the device takes a frame and writes `frame` whole.
    pub async fn send(&self, frame: &[u8]) -> io::Result<usize> {
        self.inner
            .async_io(Interest::WRITABLE, |tap| tap.write(frame))
            .await
    }

    /// Deregisters from the reactor and returns the (still non-blocking) TAP.
    pub fn into_inner(self) -> Tap {
        self.inner.into_inner()
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlong_name_is_refused_before_touching_the_kernel() {
        let err = Tap::create("weave-sleeve-tap0", false).expect_err("17 bytes is too long");
        assert!(matches!(err, Error::InvalidName { .. }), "{err}");
        assert!(err.to_string().contains("15 bytes"), "{err}");
    }
}
