// SPDX-License-Identifier: Apache-2.0
//! The UDP side: the I/O thread ([`io_loop`]), which waits on both devices.
//!
//! Datagrams from peers (up to [`RECV_BATCH`] per `recvmmsg`, runs of
//! coalesced ones cut apart again) go to the [`DatagramHandler`]: opened
//! when sealed, heartbeats answered, frames for this host injected into the
//! bridge and frames for others relayed, pieces of large frames put back
//! together first. Unless the TAP thread serves it, the TAP port is read
//! here too, and right after injecting: a pod's answer is often queued by
//! then, and with one waiter for both devices that answer wakes nobody (on
//! a VM, waking a thread on an idle vCPU is the largest part of the
//! sleeve's added latency). The thread records how busy it is and calls in
//! the TAP thread when it is busy more than half the time (`tap.rs`).

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, trace};

use super::outbox::Outbox;
use super::state::{
    lock, Sleeve, DROP_FRAGMENTS_INCOMPLETE, DROP_FRAGMENT_DUPLICATE, DROP_MALFORMED,
    DROP_UNKNOWN_SENDER,
};
use super::tap::{call_in_helper, Load, SharedReader};
use crate::mesh::PeerName;
use crate::sleeve::frame::{self, Datagram};
use crate::sleeve::offload::{self, VnetHdr};
use crate::sleeve::path::PathEvent;
use crate::sleeve::reassembly::{Outcome, Reassembly};
use crate::sleeve::switch::{Hop, Verdict};

/// Datagrams taken from the UDP socket in one system call (`recvmmsg`).
const RECV_BATCH: usize = 16;

/// What the I/O thread keeps to handle datagrams from peers.
struct DatagramHandler {
    /// The plain form of a sealed datagram (borrowed while its frames are
    /// handled).
    opened: Vec<u8>,
    scratch: Vec<u8>,
    frames: Forwarding,
}

/// Where the frames of a datagram go: injected, relayed, or kept until a
/// large frame is whole.
struct Forwarding {
    hops: Vec<Hop>,
    outbox: Outbox,
    reassembly: Reassembly,
}

/// The I/O thread: datagrams from peers, and the TAP port unless the TAP
/// thread serves it. Path events go to the router on `paths`.
pub(super) fn io_loop(sleeve: Arc<Sleeve>, reader: SharedReader, paths: mpsc::Sender<PathEvent>) {
    use nix::sys::socket::{recvmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
    use std::io::IoSliceMut;
    use std::os::fd::AsRawFd;

    let mut bufs: Vec<Vec<u8>> = (0..RECV_BATCH).map(|_| vec![0u8; 65536]).collect();
    let mut rx = DatagramHandler {
        opened: Vec::with_capacity(65536),
        scratch: Vec::new(),
        frames: Forwarding {
            hops: Vec::new(),
            outbox: Outbox::new(sleeve.local, sleeve.mtu),
            reassembly: Reassembly::new(),
        },
    };
    let fd = sleeve.socket.as_raw_fd();
    let mut received = Vec::with_capacity(RECV_BATCH);
    let mut load = Load::new(Instant::now());
    while !sleeve.stop.load(Ordering::Relaxed) {
        // Waits for datagrams, for a hand-back from the TAP thread and,
        // unless the TAP thread serves it, for frames on the TAP port: one
        // waiter for both devices, so a pod's answer to an injected frame
        // wakes nobody (the thread that injected reads it).
        let helper = sleeve.tap_helper.load(Ordering::Acquire);
        let (udp_ready, tap_ready) = {
            let mut fds = [
                PollFd::new(sleeve.socket.as_fd(), PollFlags::POLLIN),
                PollFd::new(sleeve.handback.0.as_fd(), PollFlags::POLLIN),
                PollFd::new(sleeve.tap.as_fd(), PollFlags::POLLIN),
            ];
            let n = if helper { 2 } else { 3 };
            match poll(&mut fds[..n], PollTimeout::from(200u16)) {
                Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                Ok(_) => {}
                Err(e) => {
                    debug!(error = %e, "poll in the sleeve's I/O thread failed");
                    continue;
                }
            }
            let ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
            if ready(&fds[1]) {
                let mut sink = [0u8; 16];
                while sleeve.handback.0.recv(&mut sink).is_ok() {}
            }
            (ready(&fds[0]), n == 3 && ready(&fds[2]))
        };
        let work_started = Instant::now();
        if tap_ready {
            lock(&reader).drain(&sleeve);
        }
        'udp: {
            if !udp_ready {
                break 'udp;
            }
            // Everything queued, up to RECV_BATCH datagrams, in one call.
            received.clear();
            // Room for the `UDP_GRO` control message (an int) of each datagram.
            // Made afresh for every call: the kernel shrinks each header's
            // control length to what it wrote, and nix does not reset it.
            let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(
                RECV_BATCH,
                Some(nix::cmsg_space!(i32)),
            );
            {
                let mut iovs: Vec<[IoSliceMut<'_>; 1]> = bufs
                    .iter_mut()
                    .map(|b| [IoSliceMut::new(&mut b[..])])
                    .collect();
                match recvmmsg(
                    fd,
                    &mut headers,
                    iovs.iter_mut(),
                    MsgFlags::MSG_DONTWAIT,
                    None,
                ) {
                    Ok(msgs) => received.extend(msgs.map(|m| {
                        (
                            m.bytes,
                            m.address.and_then(|a| std_addr(&a)),
                            gro_segment(&m),
                        )
                    })),
                    Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => break 'udp,
                    Err(e) => {
                        debug!(error = %e, "UDP receive failed");
                        break 'udp;
                    }
                }
            }
            let injected_before = sleeve.injected();
            for (buf, (n, src, segment)) in bufs.iter().zip(received.iter()) {
                let Some(src) = src else { continue };
                // Datagrams the kernel coalesced are laid end to end, all
                // `segment` bytes long but the last.
                for datagram in buf[..*n].chunks(segment.unwrap_or(*n).max(1)) {
                    rx.on_datagram(&sleeve, datagram, *src, &paths);
                }
            }
            rx.frames.outbox.flush(&sleeve);
            if sleeve.injected() != injected_before {
                // Whatever the pods answered while we injected goes out now,
                // unless the TAP thread is already at it.
                if let Ok(mut reader) = reader.try_lock() {
                    reader.drain(&sleeve);
                }
            }
        }
        if load.record(work_started, Instant::now()) {
            call_in_helper(&sleeve);
        }
    }
}

/// The segment size of a buffer of coalesced datagrams, if it is one.
fn gro_segment<S>(m: &nix::sys::socket::RecvMsg<'_, '_, S>) -> Option<usize> {
    use nix::sys::socket::ControlMessageOwned;
    m.cmsgs().ok()?.find_map(|c| match c {
        ControlMessageOwned::UdpGroSegments(size) => usize::try_from(size).ok().filter(|s| *s > 0),
        _ => None,
    })
}

/// A socket address from what `recvmmsg` reports.
fn std_addr(a: &nix::sys::socket::SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

impl DatagramHandler {
    /// Handles one datagram from `src`: opens it, answers heartbeats,
    /// injects frames for us and queues relayed ones.
    fn on_datagram(
        &mut self,
        sleeve: &Sleeve,
        data: &[u8],
        src: SocketAddr,
        paths: &mpsc::Sender<PathEvent>,
    ) {
        let now = Instant::now();
        // A datagram refused before it names a verified sender counts
        // against the neighbour at its source address, if there is one.
        let sender = || lock(&sleeve.paths).sender_at(src);
        let datagram = match &sleeve.sealer {
            Some(sealer) => match sealer.open(data, &mut self.opened) {
                Ok(plain) => plain,
                Err(e) => {
                    trace!(%src, error = %e, "dropping datagram");
                    sleeve.drop_for(sender(), e.reason());
                    return;
                }
            },
            None => data,
        };
        match frame::decode(datagram) {
            Err(e) => {
                trace!(%src, error = %e, "dropping malformed datagram");
                sleeve.drop_for(sender(), DROP_MALFORMED);
            }
            Ok(Datagram::Heartbeat { hop, to, conn_uid }) => {
                let answer = lock(&sleeve.paths).on_heartbeat(hop, to, conn_uid, src, now);
                match answer {
                    Some((ack, probe)) => {
                        let _ = sleeve.send_to_peer(&hop, &ack, src, &mut self.scratch);
                        if let Some(probe) = probe {
                            let _ = sleeve.send_to_peer(&hop, &probe, src, &mut self.scratch);
                        }
                    }
                    None => sleeve.drop_for(sender(), DROP_UNKNOWN_SENDER),
                }
            }
            Ok(Datagram::HeartbeatAck { hop, to, conn_uid }) => {
                let event = lock(&sleeve.paths).on_ack(hop, to, conn_uid, src, now);
                if let Some(ev) = event {
                    let _ = paths.blocking_send(ev);
                }
            }
            Ok(Datagram::Frames { hop, frames }) => {
                if !lock(&sleeve.paths).is_known_sender(&hop, src) {
                    sleeve.drop_for(sender(), DROP_UNKNOWN_SENDER);
                    return;
                }
                let view = sleeve.current_view();
                let Forwarding { hops, outbox, .. } = &mut self.frames;
                let mut count = 0u64;
                for f in frames {
                    let f = match f {
                        Ok(f) => f,
                        Err(_) => {
                            sleeve.drop_for(Some(hop), DROP_MALFORMED);
                            break;
                        }
                    };
                    count += 1;
                    let verdict =
                        lock(&sleeve.switch).from_peer(f.origin, f.dst, f.data, &view, now, hops);
                    sleeve.record_verdict(verdict, Some(hop));
                    if verdict == Verdict::InjectAndForward {
                        sleeve.inject(f.data, true, hop);
                    }
                    for h in hops.iter() {
                        outbox.push(sleeve, *h, f.origin, f.data);
                    }
                }
                sleeve.count_in(hop, count, data.len());
            }
            Ok(Datagram::Fragment { hop, fragment }) => {
                if !lock(&sleeve.paths).is_known_sender(&hop, src) {
                    sleeve.drop_for(sender(), DROP_UNKNOWN_SENDER);
                    return;
                }
                let completed = self.frames.on_fragment(sleeve, hop, &fragment, now);
                sleeve.count_in(hop, u64::from(completed), data.len());
            }
        }
    }
}

impl Forwarding {
    /// Takes a piece of a large frame; once the frame is whole, injects
    /// and/or relays it. Returns whether a frame was completed.
    fn on_fragment(
        &mut self,
        sleeve: &Sleeve,
        hop: PeerName,
        fragment: &frame::Fragment<'_>,
        now: Instant,
    ) -> bool {
        let evicted = self.reassembly.evicted();
        let whole = match self.reassembly.take(hop, fragment) {
            Outcome::Complete(w) => w,
            Outcome::Kept => {
                if self.reassembly.evicted() != evicted {
                    // A frame still missing pieces made room for this one.
                    sleeve.drop_for(Some(hop), DROP_FRAGMENTS_INCOMPLETE);
                }
                return false;
            }
            Outcome::Duplicate => {
                sleeve.drop_for(Some(hop), DROP_FRAGMENT_DUPLICATE);
                return false;
            }
        };
        let valid = VnetHdr::parse(whole.data)
            .ok()
            .filter(|_| whole.data.len() >= offload::LEN + 14)
            .is_some_and(|h| h.validate(whole.data.len() - offload::LEN).is_ok());
        if !valid {
            sleeve.drop_for(Some(hop), DROP_MALFORMED);
            return false;
        }
        sleeve.superframes_in.fetch_add(1, Ordering::Relaxed);
        let view = sleeve.current_view();
        let verdict = lock(&sleeve.switch).from_peer(
            whole.origin,
            whole.dst,
            &whole.data[offload::LEN..],
            &view,
            now,
            &mut self.hops,
        );
        sleeve.record_verdict(verdict, Some(hop));
        if verdict == Verdict::InjectAndForward {
            sleeve.inject(whole.data, false, hop);
        }
        for h in &self.hops {
            self.outbox.push_large(sleeve, *h, whole.origin, whole.data);
        }
        true
    }
}
