// SPDX-License-Identifier: Apache-2.0
//! [`Sleeve`]: what the packet threads, the control task and the report
//! share: the two devices (TAP port and UDP socket), the switch and path
//! tables, the hand-over between the two threads, and the counters; plus the system calls every side uses to send (to a
//! peer, sealed or not, in one datagram or in a run of segments) and to
//! inject into the bridge.
//!
//! Invariants: tables are behind short-held mutexes and never locked across
//! a system call that can block; counters only grow; the overlay view is
//! replaced whole, never edited in place.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::IoSlice;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};

use tokio::time::Instant;
use tracing::{debug, info};
use weave_platform::Tap;

use crate::mesh::overlay::{Neighbour, OverlayView};
use crate::mesh::PeerName;
use crate::sleeve::path::Paths;
use crate::sleeve::sealer::Sealer;
use crate::sleeve::switch::{DropReason, Switch, Verdict};
use crate::sleeve::{mtu, offload};

/// The virtio-net header of a frame that needs nothing done.
const PLAIN_VNET_HDR: [u8; offload::LEN] = [0; offload::LEN];

/// Datagram-level drop reasons beyond the switch's.
/// How long a learnt path MTU holds (the kernel's own default,
/// `net.ipv4.route.mtu_expires`); a path still narrow is learnt again.
pub(super) const PATH_MTU_EXPIRY: std::time::Duration = std::time::Duration::from_secs(600);

pub(super) const DROP_MALFORMED: &str = "malformed";
pub(super) const DROP_UNKNOWN_SENDER: &str = "unknown_sender";
pub(super) const DROP_NO_PATH: &str = "no_path";
pub(super) const DROP_OVERSIZED: &str = "oversized";
pub(super) const DROP_SEND_FAILED: &str = "send_failed";
pub(super) const DROP_INJECT_FAILED: &str = "inject_failed";
pub(super) const DROP_FRAGMENT_DUPLICATE: &str = "fragment_duplicate";
pub(super) const DROP_FRAGMENTS_INCOMPLETE: &str = "fragments_incomplete";

/// Traffic counters of one neighbour.
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerCounters {
    /// Frames received from it.
    pub frames_in: u64,
    /// Frames sent to it.
    pub frames_out: u64,
    /// Datagram bytes received from it.
    pub bytes_in: u64,
    /// Datagram bytes sent to it.
    pub bytes_out: u64,
}

/// The running sleeve: devices, tables and counters, shared by the packet
/// threads, the control task and the report.
pub struct Sleeve {
    pub(super) local: PeerName,
    pub(super) mtu: u32,
    pub(super) bridge: String,
    pub(super) view: RwLock<Arc<OverlayView>>,
    /// Peers the kernel's fast path carries (see `sleeve::switch`).
    pub(super) kernel: RwLock<Arc<BTreeSet<PeerName>>>,
    pub(super) switch: Mutex<Switch>,
    pub(super) paths: Mutex<Paths>,
    pub(super) socket: UdpSocket,
    pub(super) tap: Tap,
    pub(super) tap_index: u32,
    pub(super) stop: AtomicBool,
    pub(super) peers: Mutex<HashMap<PeerName, PeerCounters>>,
    pub(super) drops: Mutex<BTreeMap<&'static str, u64>>,
    /// The drops of `drops` that a neighbour sent or that were going to
    /// it, by neighbour and reason (gone neighbours are forgotten).
    pub(super) peer_drops: Mutex<HashMap<PeerName, BTreeMap<&'static str, u64>>>,
    pub(super) injected: AtomicU64,
    /// Sessions per neighbour when a password is set.
    pub(super) sealer: Option<Sealer>,
    /// Whether `UDP_SEGMENT` works here (cleared at the first refusal).
    pub(super) udp_gso: AtomicBool,
    /// Overlay MTUs of underlay paths narrower than the devices said (the
    /// kernel refused a datagram as larger than the path MTU), by address,
    /// with when they were learnt; `narrowed` says whether there are any.
    pub(super) path_mtus: Mutex<HashMap<SocketAddr, (u32, Instant)>>,
    pub(super) narrowed: AtomicBool,
    /// Whether the TAP port took the offloads.
    pub(super) offload: bool,
    /// Super-frames sent and received.
    pub(super) superframes_out: AtomicU64,
    pub(super) superframes_in: AtomicU64,
    /// Number of the next large frame sent in fragments.
    pub(super) next_fragment_id: AtomicU32,
    /// Whether the TAP thread serves the TAP port (the I/O thread is
    /// busy); when it is false the I/O thread polls the TAP port itself.
    pub(super) tap_helper: AtomicBool,
    /// Set if the TAP thread stopped for an error: it is not called in again.
    pub(super) helper_failed: AtomicBool,
    /// The TAP thread waits here while it is not needed.
    pub(super) helper_wait: (Mutex<()>, Condvar),
    /// The TAP thread writes a byte here when it hands the TAP port back,
    /// so that the I/O thread polls it again at once.
    pub(super) handback: (UnixDatagram, UnixDatagram),
}

impl std::fmt::Debug for Sleeve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sleeve")
            .field("local", &self.local)
            .field("mtu", &self.mtu)
            .finish()
    }
}

impl Sleeve {
    /// The overlay MTU (pods and bridge).
    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    /// The bridge name.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// Counters of a neighbour.
    pub fn peer_counters(&self, peer: &PeerName) -> PeerCounters {
        lock(&self.peers).get(peer).copied().unwrap_or_default()
    }

    /// Drops by reason.
    pub fn drops(&self) -> BTreeMap<&'static str, u64> {
        lock(&self.drops).clone()
    }

    /// The drops a neighbour sent or that were going to it, by reason.
    pub fn peer_drops(&self, peer: &PeerName) -> BTreeMap<&'static str, u64> {
        lock(&self.peer_drops)
            .get(peer)
            .cloned()
            .unwrap_or_default()
    }

    /// The overlay MTU the sleeve carries whole to neighbour `peer`: the
    /// sleeve's, or narrower when the underlay path to it was learnt
    /// narrower within `PATH_MTU_EXPIRY`.
    pub fn peer_mtu(&self, peer: &PeerName) -> u32 {
        self.path_mtu(peer, Instant::now()).unwrap_or(self.mtu)
    }

    /// Forgets the counters of peers that are no longer neighbours, so
    /// that what is kept (and reported per peer) stays bounded by the mesh.
    pub(super) fn forget_peers(&self, neighbours: &BTreeMap<PeerName, Neighbour>) {
        lock(&self.peers).retain(|p, _| neighbours.contains_key(p));
        lock(&self.peer_drops).retain(|p, _| neighbours.contains_key(p));
    }

    /// Frames handed to the local bridge.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    /// Whether the TAP port took checksum and segmentation offload.
    pub fn offload(&self) -> bool {
        self.offload
    }

    /// Whether fragments go out with UDP segmentation offload (until the
    /// kernel first refuses it).
    pub fn udp_gso(&self) -> bool {
        self.udp_gso.load(Ordering::Relaxed)
    }

    /// Super-frames sent and received whole.
    pub fn superframes(&self) -> (u64, u64) {
        (
            self.superframes_out.load(Ordering::Relaxed),
            self.superframes_in.load(Ordering::Relaxed),
        )
    }

    /// Whether datagrams are sealed.
    pub fn encrypted(&self) -> bool {
        self.sealer.is_some()
    }

    /// Sets the peers the kernel's fast path carries: flooded frames go
    /// to them through the VXLAN device, not the sleeve.
    pub fn set_kernel_peers(&self, peers: BTreeSet<PeerName>) {
        let mut k = self
            .kernel
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if **k != peers {
            *k = Arc::new(peers);
        }
    }

    /// The peers the kernel's fast path carries.
    pub fn kernel_peers(&self) -> Arc<BTreeSet<PeerName>> {
        self.kernel
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Ifindex of the TAP port (looked up when the sleeve was set up).
    pub fn tap_index(&self) -> u32 {
        self.tap_index
    }

    /// Counts a drop whose neighbour is not known (a local frame, or a
    /// datagram from an address no neighbour has).
    pub(super) fn drop_frame(&self, reason: &'static str) {
        *lock(&self.drops).entry(reason).or_insert(0) += 1;
    }

    /// Counts a drop of what neighbour `peer` sent or what was going to
    /// it; `None` when it is not known.
    pub(super) fn drop_for(&self, peer: Option<PeerName>, reason: &'static str) {
        self.drop_frame(reason);
        if let Some(peer) = peer {
            *lock(&self.peer_drops)
                .entry(peer)
                .or_default()
                .entry(reason)
                .or_insert(0) += 1;
        }
    }

    /// Counts a switching decision that dropped the frame (dropping a
    /// frame meant for this host only is no drop); `from` is the neighbour
    /// it came from, `None` for a local frame.
    pub(super) fn record_verdict(&self, v: Verdict, from: Option<PeerName>) {
        if let Verdict::Drop(reason) = v {
            if !matches!(reason, DropReason::Local | DropReason::Kernel) {
                self.drop_for(from, reason.as_str());
            }
        }
    }

    /// Counts what went to neighbour `next`.
    pub(super) fn count_out(&self, next: PeerName, frames: u64, bytes: usize) {
        let mut peers = lock(&self.peers);
        let c = peers.entry(next).or_default();
        c.frames_out += frames;
        c.bytes_out += bytes as u64;
    }

    /// Counts what came from neighbour `hop`.
    pub(super) fn count_in(&self, hop: PeerName, frames: u64, bytes: usize) {
        let mut peers = lock(&self.peers);
        let c = peers.entry(hop).or_default();
        c.frames_in += frames;
        c.bytes_in += bytes as u64;
    }

    /// Writes a frame from neighbour `from` into the bridge: `frame` whole
    /// (offload header included) or, with `plain`, a complete frame behind
    /// a header that asks for nothing. Counts it, or its failure.
    pub(super) fn inject(&self, frame: &[u8], plain: bool, from: PeerName) {
        let written = if plain {
            self.tap
                .write_parts(&[IoSlice::new(&PLAIN_VNET_HDR), IoSlice::new(frame)])
        } else {
            self.tap.write(frame)
        };
        match written {
            Ok(_) => {
                self.injected.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => self.drop_for(Some(from), DROP_INJECT_FAILED),
        }
    }

    /// Writes a complete frame (nothing left to offload) into the bridge,
    /// uncounted (an answer made here, such as an ICMP error).
    pub(super) fn inject_plain(&self, frame: &[u8]) -> std::io::Result<usize> {
        self.tap
            .write_parts(&[IoSlice::new(&PLAIN_VNET_HDR), IoSlice::new(frame)])
    }

    /// The kernel refused a datagram to `addr` as larger than the path MTU
    /// it knows (a route's `mtu`, or an ICMP "fragmentation needed" from a
    /// router on the way): asks it for that MTU and keeps the overlay MTU
    /// the path carries whole ([`mtu::path_overlay_mtu`]), so DF senders
    /// behind the bridge are told to shrink ([`Sleeve::path_mtu`]).
    pub(super) fn learn_path_mtu(&self, addr: SocketAddr) {
        use nix::sys::socket::{getsockopt, sockopt};
        if !addr.is_ipv4() {
            return;
        }
        let probe = UdpSocket::bind(("0.0.0.0", 0)).and_then(|s| {
            s.connect(addr)?;
            Ok(s)
        });
        let path = match probe.map(|s| getsockopt(&s, sockopt::IpMtu)) {
            Ok(Ok(m)) => u32::try_from(m).unwrap_or(u32::MAX),
            Ok(Err(e)) => {
                debug!(%addr, error = %e, "cannot read the path MTU");
                return;
            }
            Err(e) => {
                debug!(%addr, error = %e, "cannot read the path MTU");
                return;
            }
        };
        let overlay = mtu::path_overlay_mtu(path, mtu::overhead(self.encrypted()), self.mtu);
        let before = lock(&self.path_mtus).insert(addr, (overlay, Instant::now()));
        self.narrowed.store(true, Ordering::Relaxed);
        if before.map(|b| b.0) != Some(overlay) {
            info!(%addr, path_mtu = path, overlay_mtu = overlay, "the underlay path to a peer is narrower than its devices: DF senders are told to shrink");
        }
    }

    /// The overlay MTU the path to neighbour `peer` carries whole, when it
    /// was learnt narrower than the sleeve's within [`PATH_MTU_EXPIRY`].
    pub(super) fn path_mtu(&self, peer: &PeerName, now: Instant) -> Option<u32> {
        if !self.narrowed.load(Ordering::Relaxed) {
            return None;
        }
        let addr = lock(&self.paths).addr(peer)?;
        let mut mtus = lock(&self.path_mtus);
        match mtus.get(&addr) {
            Some((m, at)) if now.saturating_duration_since(*at) < PATH_MTU_EXPIRY => {
                (*m < self.mtu).then_some(*m)
            }
            Some(_) => {
                mtus.remove(&addr);
                None
            }
            None => None,
        }
    }

    /// Sends `count` datagrams laid end to end in `buf`, all `seg` bytes
    /// long but the last, to `addr`: with one `sendmsg` and `UDP_SEGMENT`
    /// where the kernel allows it, else one by one. Returns the bytes sent.
    pub(super) fn send_segments(
        &self,
        buf: &[u8],
        seg: usize,
        count: usize,
        addr: SocketAddr,
    ) -> std::io::Result<usize> {
        use nix::errno::Errno;
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, SockaddrStorage};
        use std::os::fd::AsRawFd;
        if count > 1 && self.udp_gso.load(Ordering::Relaxed) {
            if let Ok(size) = u16::try_from(seg) {
                let dst = SockaddrStorage::from(addr);
                let iov = [IoSlice::new(buf)];
                let cmsg = [ControlMessage::UdpGsoSegments(&size)];
                match sendmsg(
                    self.socket.as_raw_fd(),
                    &iov,
                    &cmsg,
                    MsgFlags::empty(),
                    Some(&dst),
                ) {
                    Ok(n) => return Ok(n),
                    // A segment is larger than the path MTU the kernel knows
                    // (unlike a single datagram, it does not fragment them):
                    // learn the path's MTU, then send one by one, which the
                    // kernel fragments, so nothing is lost.
                    Err(Errno::EMSGSIZE) => self.learn_path_mtu(addr),
                    Err(
                        e @ (Errno::EIO | Errno::EINVAL | Errno::ENOPROTOOPT | Errno::EOPNOTSUPP),
                    ) => {
                        if self.udp_gso.swap(false, Ordering::Relaxed) {
                            info!(error = %e, "UDP segmentation offload unavailable; sending fragments one by one");
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let mut sent = 0;
        for d in buf.chunks(seg.max(1)) {
            sent += self.socket.send_to(d, addr)?;
        }
        Ok(sent)
    }

    /// Sends a plain datagram to neighbour `peer` at `addr`, sealed when
    /// encryption is on; `scratch` holds the sealed copy. Returns the bytes
    /// sent.
    pub(super) fn send_to_peer(
        &self,
        peer: &PeerName,
        plain: &[u8],
        addr: SocketAddr,
        scratch: &mut Vec<u8>,
    ) -> std::io::Result<usize> {
        let data = self
            .wire_form(peer, plain, scratch, Instant::now())
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "no sleeve session with the peer",
                )
            })?;
        self.socket.send_to(data, addr)
    }

    /// What goes on the wire for the plain datagram `plain` to neighbour
    /// `peer`: `plain` itself, or its sealed copy in `scratch` when
    /// encryption is on (`None` without a session with the peer).
    pub(super) fn wire_form<'a>(
        &self,
        peer: &PeerName,
        plain: &'a [u8],
        scratch: &'a mut Vec<u8>,
        now: Instant,
    ) -> Option<&'a [u8]> {
        match &self.sealer {
            Some(sealer) => sealer
                .seal(peer, plain, scratch, now)
                .then_some(&scratch[..]),
            None => Some(plain),
        }
    }

    /// The mesh's latest view.
    pub(super) fn current_view(&self) -> Arc<OverlayView> {
        self.view
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Locks a mutex, taking the data even if a packet thread panicked with it
/// held (the counters and tables stay usable).
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
