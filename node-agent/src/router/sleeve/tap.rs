// SPDX-License-Identifier: Apache-2.0
//! The TAP side: frames leaving the bridge through the TAP port.
//!
//! [`TapReader`] reads a burst of frames, asks the switch where each goes
//! and hands them to its [`Outbox`]; one thread at a time holds it (both
//! threads share it behind a mutex) and sends what it read before letting
//! go, so frames leave in the order the bridge gave them whichever thread
//! reads. Usually the I/O thread (`udp.rs`) reads the port itself, waiting
//! on both devices at once; when that thread is busy more than half of a
//! [`BUSY_WINDOW`] (see [`Load`]), it calls in the TAP thread
//! ([`tap_loop`]), which serves the port on a core of its own until the
//! port has been idle for [`HELPER_IDLE_MS`] and then hands it back.

use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tokio::time::Instant;
use tracing::warn;

use super::outbox::Outbox;
use super::state::{lock, Sleeve, DROP_MALFORMED, DROP_OVERSIZED};
use crate::sleeve::offload::{self, VnetHdr};
use crate::sleeve::switch::Hop;
use crate::sleeve::{frame, mtu};

/// At most this many frames are read before pending batches are sent.
const BURST: usize = 64;
/// The I/O thread calls in the TAP thread when it was busy more than half
/// of such a window.
pub(super) const BUSY_WINDOW: Duration = Duration::from_millis(100);
/// The TAP thread hands the TAP port back after this long without frames.
pub(super) const HELPER_IDLE_MS: u16 = 100;

/// The TAP port's reader, shared by both threads behind a mutex: a buffer,
/// the hops and the outbox of the frames read.
pub(super) type SharedReader = Arc<Mutex<TapReader>>;

/// What reads the TAP port: a buffer, the hops and the outbox of the
/// frames read.
pub(super) struct TapReader {
    buf: Vec<u8>,
    hops: Vec<Hop>,
    outbox: Outbox,
}

impl TapReader {
    /// The reader of `sleeve`'s TAP port, to share between the threads.
    pub(super) fn shared(sleeve: &Sleeve) -> SharedReader {
        Arc::new(Mutex::new(Self {
            buf: vec![0u8; frame::MAX_LARGE],
            hops: Vec::new(),
            outbox: Outbox::new(sleeve.local, sleeve.mtu),
        }))
    }

    /// Reads and sends up to [`BURST`] frames; returns how many were read.
    pub(super) fn drain(&mut self, sleeve: &Sleeve) -> usize {
        let TapReader { buf, hops, outbox } = self;
        let view = sleeve.current_view();
        let kernel = sleeve.kernel_peers();
        let now = Instant::now();
        let mut read = 0;
        for _ in 0..BURST {
            let n = match sleeve.tap.read(buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    warn!(error = %e, "read from the TAP device failed");
                    break;
                }
            };
            read += 1;
            let hdr = match VnetHdr::parse(&buf[..n]) {
                Ok(h) if n >= offload::LEN + 14 => h,
                _ => {
                    sleeve.drop_frame(DROP_MALFORMED);
                    continue;
                }
            };
            if hdr.is_gso() {
                // A TCP super-frame: it travels whole, header included.
                let verdict = lock(&sleeve.switch).from_local(
                    &buf[offload::LEN..n],
                    &view,
                    &kernel,
                    now,
                    hops,
                );
                sleeve.record_verdict(verdict, None);
                for hop in hops.iter() {
                    let segment = mtu::packet_len(n - offload::LEN, hdr.hdr_len, hdr.gso_size);
                    shrink_if_narrow(sleeve, hop, &buf[offload::LEN..n], segment, now);
                    outbox.push_large(sleeve, *hop, sleeve.local, &buf[..n]);
                }
                continue;
            }
            if hdr.flags & offload::F_NEEDS_CSUM != 0
                && !offload::finish_checksum(
                    &mut buf[offload::LEN..n],
                    usize::from(hdr.csum_start),
                    usize::from(hdr.csum_offset),
                )
            {
                sleeve.drop_frame(DROP_MALFORMED);
                continue;
            }
            let data = &buf[offload::LEN..n];
            if data.len() > sleeve.mtu as usize + 14 {
                // A pod with a larger MTU than the overlay's: tell a DF sender
                // to shrink, rather than losing its packets silently.
                sleeve.drop_frame(DROP_OVERSIZED);
                let overlay = u16::try_from(sleeve.mtu).unwrap_or(u16::MAX);
                if let Some(icmp) = mtu::frag_needed(data, overlay) {
                    let _ = sleeve.inject_plain(&icmp);
                }
                continue;
            }
            let verdict = lock(&sleeve.switch).from_local(data, &view, &kernel, now, hops);
            sleeve.record_verdict(verdict, None);
            for hop in hops.iter() {
                shrink_if_narrow(sleeve, hop, data, mtu::packet_len(data.len(), 0, 0), now);
                outbox.push(sleeve, *hop, sleeve.local, data);
            }
        }
        outbox.flush(sleeve);
        read
    }
}

/// A frame whose packets (`packet` bytes each) are larger than the path to
/// `hop` carries whole: a DF sender gets "fragmentation needed" with that
/// path's overlay MTU. The frame still goes (the kernel fragments the
/// datagrams), so nothing is lost while the sender adapts.
fn shrink_if_narrow(sleeve: &Sleeve, hop: &Hop, frame: &[u8], packet: usize, now: Instant) {
    let Some(limit) = sleeve.path_mtu(&hop.next, now) else {
        return;
    };
    if packet > limit as usize {
        let limit = u16::try_from(limit).unwrap_or(u16::MAX);
        if let Some(icmp) = mtu::frag_needed(frame, limit) {
            let _ = sleeve.inject_plain(&icmp);
        }
    }
}

/// The TAP thread: helps the I/O thread when that one is busy, by serving
/// the TAP port (frames leaving the bridge) on a core of its own; hands the
/// port back after `HELPER_IDLE_MS` without frames.
pub(super) fn tap_loop(sleeve: Arc<Sleeve>, reader: SharedReader) {
    while !sleeve.stop.load(Ordering::Relaxed) {
        if !sleeve.tap_helper.load(Ordering::Acquire) {
            let (m, cv) = &sleeve.helper_wait;
            let guard = lock(m);
            let _ = cv.wait_timeout_while(guard, Duration::from_millis(200), |()| {
                !sleeve.tap_helper.load(Ordering::Acquire) && !sleeve.stop.load(Ordering::Relaxed)
            });
            continue;
        }
        let mut fds = [PollFd::new(sleeve.tap.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(HELPER_IDLE_MS)) {
            Ok(0) => hand_back(&sleeve),
            Ok(_) => {
                lock(&reader).drain(&sleeve);
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                warn!(error = %e, "poll on the TAP device failed; the I/O thread serves it alone");
                sleeve.helper_failed.store(true, Ordering::Release);
                hand_back(&sleeve);
                return;
            }
        }
    }
}

/// The TAP thread gives the TAP port back to the I/O thread, which polls it
/// again as soon as it sees the byte on the hand-back socket.
fn hand_back(sleeve: &Sleeve) {
    sleeve.tap_helper.store(false, Ordering::Release);
    let _ = sleeve.handback.1.send(&[1]);
}

/// Calls in the TAP thread (unless it serves already or failed); it then
/// serves the TAP port until the port has been idle for `HELPER_IDLE_MS`.
pub(super) fn call_in_helper(sleeve: &Sleeve) {
    if sleeve.tap_helper.load(Ordering::Acquire) || sleeve.helper_failed.load(Ordering::Acquire) {
        return;
    }
    let (m, cv) = &sleeve.helper_wait;
    {
        let _guard = lock(m);
        sleeve.tap_helper.store(true, Ordering::Release);
    }
    cv.notify_one();
}

/// How busy the I/O thread is, over windows of [`BUSY_WINDOW`].
pub(super) struct Load {
    window_start: Instant,
    busy: Duration,
}

impl Load {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            window_start: now,
            busy: Duration::ZERO,
        }
    }

    /// Counts work from `work_started` to `now`; true when this closes a
    /// window that was busy more than half of the time.
    pub(super) fn record(&mut self, work_started: Instant, now: Instant) -> bool {
        self.busy += now.saturating_duration_since(work_started);
        if now.saturating_duration_since(self.window_start) < BUSY_WINDOW {
            return false;
        }
        let busy = self.busy * 2 > BUSY_WINDOW;
        self.window_start = now;
        self.busy = Duration::ZERO;
        busy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_helper_is_called_in_only_after_a_busy_window() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut load = Load::new(t0);
        // 40 ms of work in a 100 ms window: not busy enough.
        assert!(!load.record(t0, t0 + ms(40)));
        assert!(!load.record(t0 + ms(99), t0 + ms(100)));
        // 60 ms of work in the next window: call it in, once.
        assert!(!load.record(t0 + ms(100), t0 + ms(160)));
        assert!(load.record(t0 + ms(200), t0 + ms(201)));
        // A fresh window starts empty.
        assert!(!load.record(t0 + ms(301), t0 + ms(302)));
    }
}
