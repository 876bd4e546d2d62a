// SPDX-License-Identifier: Apache-2.0
//! The sleeve's I/O: the `weave` bridge with a TAP port read by the agent,
//! and one UDP socket (port 6783) to the peers.
//!
//! Two dedicated threads move packets, so the async runtime never blocks on
//! them. The I/O thread waits on both devices: datagrams from peers
//! (injected into the bridge or relayed; up to `RECV_BATCH` per `recvmmsg`)
//! and frames leaving the bridge through the TAP port. Right after injecting
//! it reads the TAP port too: a pod's answer is often queued by then, and
//! with one waiter for both devices that answer wakes nobody (on a VM,
//! waking a thread on an idle vCPU is the largest part of the sleeve's
//! added latency). When the I/O thread is busy more than half the time, it
//! calls in the TAP thread, which then serves the TAP port on a core of its
//! own until the port has been idle for a while. Whichever thread reads
//! frames drains everything ready before it sends, batching the frames for
//! the same next hop into one datagram up to the underlay MTU. A tokio task
//! sends the path heartbeats, follows the mesh's [`OverlayView`] and
//! reports path changes back to the mesh.
//!
//! The TAP port takes checksum and TCP segmentation offload
//! (`sleeve::offload`): a pod's TCP stream leaves the bridge as super-frames
//! of up to 64 KB, which travel whole, cut into fragment datagrams sent with
//! one `sendmsg` each (UDP segmentation offload, `UDP_SEGMENT`), and enter
//! the peer's bridge whole again. That moves a 64 KB burst with a handful of
//! system calls instead of ninety, and the pods' stacks see large segments.
//!
//! With a password every datagram, heartbeats included, is sealed for the
//! neighbour it goes to ([`Sealer`]) and opened before anything reads it.
//!
//! The bridge outlives the agent: a restart recreates the TAP port and
//! re-adopts the bridge, so pods on the same host keep talking while the
//! agent is down.

use std::collections::{BTreeMap, HashMap};
use std::io::IoSlice;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, trace, warn};
use weave_platform::{Netlink, Tap};

use super::Command;
use crate::mesh::overlay::OverlayView;
use crate::mesh::PeerName;
use crate::sleeve::frame::{self, Datagram};
use crate::sleeve::offload::{self, VnetHdr};
use crate::sleeve::path::{PathEvent, Paths};
use crate::sleeve::reassembly::{Outcome, Reassembly};
use crate::sleeve::sealer::Sealer;
use crate::sleeve::switch::{DropReason, Hop, Switch, Verdict};

/// Name of the TAP port the agent attaches to the bridge.
pub const TAP_NAME: &str = "vethwe-sleeve";
/// Bytes of encapsulation between the underlay MTU and the overlay MTU:
/// IPv4 (20) + UDP (8) + datagram header (8) + frame header (14) + the
/// inner Ethernet header (14).
pub const OVERHEAD: u32 = 64;
/// Extra bytes of a sealed datagram: epoch, counter and tag, plus the
/// plain header repeated inside (`crypto::session`).
const SEALED_OVERHEAD: u32 = 36;
/// MTU of the TAP port: the largest the kernel allows.
const TAP_MTU: u32 = 65521;
/// Socket buffers: a default-sized receive buffer was where Weave Net's
/// sleeve lost packets.
const SOCKET_BUFFER: usize = 4 << 20;
/// At most this many frames are read before pending batches are sent.
const BURST: usize = 64;
/// The I/O thread calls in the TAP thread when it was busy more than half
/// of such a window.
const BUSY_WINDOW: Duration = Duration::from_millis(100);
/// The TAP thread hands the TAP port back after this long without frames.
const HELPER_IDLE_MS: u16 = 100;
/// Datagrams taken from the UDP socket in one system call (`recvmmsg`).
const RECV_BATCH: usize = 16;
/// Offloads the TAP port takes on: checksums and TCP super-frames.
const TAP_OFFLOADS: u32 = weave_platform::tap::offload::CSUM
    | weave_platform::tap::offload::TSO4
    | weave_platform::tap::offload::TSO6
    | weave_platform::tap::offload::TSO_ECN;
/// At most this many datagrams per `sendmsg` with `UDP_SEGMENT` (the
/// kernel's limit is 64 or more).
const GSO_MAX_SEGMENTS: usize = 64;
/// At most this many bytes per `sendmsg` with `UDP_SEGMENT` (one IP packet's
/// worth before the kernel cuts it).
const GSO_MAX_BYTES: usize = 65_000;
/// The virtio-net header of a frame that needs nothing done.
const PLAIN_VNET_HDR: [u8; offload::LEN] = [0; offload::LEN];

/// Datagram-level drop reasons beyond the switch's.
const DROP_MALFORMED: &str = "malformed";
const DROP_UNKNOWN_SENDER: &str = "unknown_sender";
const DROP_NO_PATH: &str = "no_path";
const DROP_OVERSIZED: &str = "oversized";
const DROP_SEND_FAILED: &str = "send_failed";
const DROP_FRAGMENT_DUPLICATE: &str = "fragment_duplicate";
const DROP_FRAGMENTS_INCOMPLETE: &str = "fragments_incomplete";

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

/// State shared by the packet threads, the control task and the report.
pub struct Shared {
    local: PeerName,
    mtu: u32,
    bridge: String,
    view: RwLock<Arc<OverlayView>>,
    switch: Mutex<Switch>,
    paths: Mutex<Paths>,
    socket: UdpSocket,
    tap: Tap,
    stop: AtomicBool,
    peers: Mutex<HashMap<PeerName, PeerCounters>>,
    drops: Mutex<BTreeMap<&'static str, u64>>,
    injected: AtomicU64,
    /// Sessions per neighbour when a password is set.
    sealer: Option<Sealer>,
    /// Whether `UDP_SEGMENT` works here (cleared at the first refusal).
    udp_gso: AtomicBool,
    /// Whether the TAP port took the offloads.
    offload: bool,
    /// Super-frames sent and received.
    superframes_out: AtomicU64,
    superframes_in: AtomicU64,
    /// Number of the next large frame sent in fragments.
    next_fragment_id: AtomicU32,
    /// The TAP port's reader, taken by whichever thread reads the port (it
    /// sends what it reads before letting go, so frames keep their order).
    tap_reader: Mutex<TapReader>,
    /// Whether the TAP thread serves the TAP port (the I/O thread is
    /// busy); when it is false the I/O thread polls the TAP port itself.
    tap_helper: AtomicBool,
    /// Set if the TAP thread stopped for an error: it is not called in again.
    helper_failed: AtomicBool,
    /// The TAP thread waits here while it is not needed.
    helper_wait: (Mutex<()>, Condvar),
    /// The TAP thread writes a byte here when it hands the TAP port back,
    /// so that the I/O thread polls it again at once.
    handback: (UnixDatagram, UnixDatagram),
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("local", &self.local)
            .field("mtu", &self.mtu)
            .finish()
    }
}

impl Shared {
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

    fn drop_frame(&self, reason: &'static str) {
        *lock(&self.drops).entry(reason).or_insert(0) += 1;
    }

    /// Writes a complete frame (nothing left to offload) into the bridge.
    fn inject_plain(&self, frame: &[u8]) -> std::io::Result<usize> {
        self.tap
            .write_parts(&[IoSlice::new(&PLAIN_VNET_HDR), IoSlice::new(frame)])
    }

    /// Sends `count` datagrams laid end to end in `buf`, all `seg` bytes
    /// long but the last, to `addr`: with one `sendmsg` and `UDP_SEGMENT`
    /// where the kernel allows it, else one by one. Returns the bytes sent.
    fn send_segments(
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

    /// Whether datagrams are sealed.
    pub fn encrypted(&self) -> bool {
        self.sealer.is_some()
    }

    /// Sends a plain datagram to neighbour `peer` at `addr`, sealed when
    /// encryption is on; `scratch` holds the sealed copy. Returns the bytes
    /// sent.
    fn send_to_peer(
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
    fn wire_form<'a>(
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

    fn current_view(&self) -> Arc<OverlayView> {
        self.view
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Locks a mutex, taking the data even if a packet thread panicked with it
/// held (the counters and tables stay usable).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Errors of setting up the sleeve.
#[derive(Debug, thiserror::Error)]
pub enum SleeveError {
    /// A netlink or TAP operation failed.
    #[error("set up the sleeve: {0}")]
    Platform(#[from] weave_platform::Error),
    /// The UDP socket could not be opened.
    #[error("open the sleeve UDP socket on {addr}")]
    Socket {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The MTU could not be determined.
    #[error("cannot derive the overlay MTU: {0}; set --mtu")]
    Mtu(String),
}

/// Settings of the sleeve.
#[derive(Debug, Clone)]
pub struct SleeveConfig {
    /// Bridge name.
    pub bridge: String,
    /// Overlay MTU; derived from the underlay when `None`.
    pub mtu: Option<u32>,
    /// UDP address to listen on (same port as the control connections).
    pub addr: SocketAddr,
    /// Seal every datagram (a mesh password is set).
    pub encrypted: bool,
}

/// Derives the overlay MTU: the underlay MTU of the default route's device
/// (else the smallest MTU among devices with IPv4 routes) minus [`OVERHEAD`].
async fn derive_mtu(
    netlink: &impl Netlink,
    bridge: &str,
    overhead: u32,
) -> Result<u32, SleeveError> {
    let routes = netlink.routes_v4().await?;
    let default = routes
        .iter()
        .find(|r| r.prefix_len == 0)
        .and_then(|r| r.oif);
    let bridge_index = netlink.link_index(bridge).await?;
    let mut candidates = Vec::new();
    for r in &routes {
        if let Some(oif) = r.oif {
            if Some(oif) != bridge_index && (default.is_none() || default == Some(oif)) {
                candidates.push(oif);
            }
        }
    }
    let mut best: Option<u32> = None;
    for oif in candidates {
        if let Some(m) = netlink.link_mtu_by_index(oif).await? {
            best = Some(best.map_or(m, |b| b.min(m)));
        }
    }
    let underlay =
        best.ok_or_else(|| SleeveError::Mtu("no IPv4 route to any peer network".into()))?;
    underlay
        .checked_sub(overhead)
        .filter(|m| *m >= 576)
        .ok_or_else(|| SleeveError::Mtu(format!("underlay MTU {underlay} is too small")))
}

/// Creates (or adopts) the bridge, attaches a fresh TAP port and opens the
/// UDP socket. Idempotent: a restarted agent finds the bridge as it was.
pub async fn setup(
    cfg: &SleeveConfig,
    local: PeerName,
    netlink: &impl Netlink,
) -> Result<Arc<Shared>, SleeveError> {
    let overhead = if cfg.encrypted {
        OVERHEAD + SEALED_OVERHEAD
    } else {
        OVERHEAD
    };
    let mtu = match cfg.mtu {
        Some(m) => m,
        None => derive_mtu(netlink, &cfg.bridge, overhead).await?,
    };
    let bridge = netlink.ensure_bridge(&cfg.bridge, mtu).await?;
    // The bridge's MAC is the peer name, so it stays stable whatever ports
    // come and go (a Linux bridge otherwise takes the lowest port MAC).
    netlink.set_mac(bridge, local.to_bytes()).await?;
    netlink.delete_link(TAP_NAME).await?;
    let tap = Tap::create(TAP_NAME, true)?;
    let offload = match tap.set_offload(TAP_OFFLOADS) {
        Ok(()) => true,
        Err(e) => {
            // Still correct without: every frame then arrives whole and
            // checksummed, only slower.
            warn!(error = %e, "TAP offloads unavailable; TCP crosses the sleeve in single frames");
            false
        }
    };
    let tap_index = netlink
        .link_index(TAP_NAME)
        .await?
        .ok_or_else(|| SleeveError::Mtu("the TAP device vanished after creation".into()))?;
    // The TAP port takes any frame the bridge hands it, so that a frame too
    // big for the overlay reaches us and gets an ICMP answer instead of
    // vanishing at the port (the bridge drops frames above a port's MTU).
    netlink.set_mtu(tap_index, TAP_MTU).await?;
    netlink.set_master(tap_index, bridge).await?;
    netlink.set_up(tap_index).await?;
    tap.set_nonblocking(true)?;
    let socket = UdpSocket::bind(cfg.addr).map_err(|source| SleeveError::Socket {
        addr: cfg.addr,
        source,
    })?;
    set_buffers(&socket);
    set_gro(&socket);
    let handback = UnixDatagram::pair()
        .and_then(|(a, b)| {
            a.set_nonblocking(true)?;
            b.set_nonblocking(true)?;
            Ok((a, b))
        })
        .map_err(|source| SleeveError::Socket {
            addr: cfg.addr,
            source,
        })?;
    info!(bridge = %cfg.bridge, mtu, udp = %cfg.addr, encrypted = cfg.encrypted, "sleeve ready");
    Ok(Arc::new(Shared {
        local,
        mtu,
        bridge: cfg.bridge.clone(),
        view: RwLock::new(Arc::new(OverlayView {
            local,
            ..OverlayView::default()
        })),
        switch: Mutex::new(Switch::new(local)),
        paths: Mutex::new(Paths::new(local)),
        socket,
        tap,
        stop: AtomicBool::new(false),
        peers: Mutex::new(HashMap::new()),
        drops: Mutex::new(BTreeMap::new()),
        injected: AtomicU64::new(0),
        sealer: cfg.encrypted.then(Sealer::new),
        udp_gso: AtomicBool::new(true),
        offload,
        superframes_out: AtomicU64::new(0),
        superframes_in: AtomicU64::new(0),
        next_fragment_id: AtomicU32::new(rand::random()),
        tap_reader: Mutex::new(TapReader::new(mtu)),
        tap_helper: AtomicBool::new(false),
        helper_failed: AtomicBool::new(false),
        helper_wait: (Mutex::new(()), Condvar::new()),
        handback,
    }))
}

/// Asks the kernel to hand over runs of datagrams from one sender as one
/// buffer (`UDP_GRO`), cut again by the receive loop; the fragments of a
/// super-frame then cross the socket in one piece instead of forty.
fn set_gro(socket: &UdpSocket) -> bool {
    use nix::sys::socket::{setsockopt, sockopt};
    match setsockopt(&socket.as_fd(), sockopt::UdpGroSegment, &true) {
        Ok(()) => true,
        Err(e) => {
            info!(error = %e, "UDP receive offload unavailable; datagrams are taken one by one");
            false
        }
    }
}

fn set_buffers(socket: &UdpSocket) {
    use nix::sys::socket::{setsockopt, sockopt};
    if let Err(e) = setsockopt(&socket.as_fd(), sockopt::RcvBuf, &SOCKET_BUFFER) {
        warn!(error = %e, "cannot enlarge the UDP receive buffer");
    }
    if let Err(e) = setsockopt(&socket.as_fd(), sockopt::SndBuf, &SOCKET_BUFFER) {
        warn!(error = %e, "cannot enlarge the UDP send buffer");
    }
}

/// Batches frames per next hop into datagrams no larger than the underlay
/// allows, and sends them.
struct Batcher {
    max: usize,
    pending: HashMap<PeerName, (Vec<u8>, u64)>,
    sealed: Vec<u8>,
    /// One fragment datagram before sealing.
    piece: Vec<u8>,
    /// Fragment datagrams laid end to end for one `sendmsg`.
    segments: Vec<u8>,
}

impl Batcher {
    fn new(mtu: u32) -> Self {
        // Underlay payload: overlay MTU + inner Ethernet + frame header + datagram header.
        Self {
            max: mtu as usize + 14 + frame::FRAME_HEADER_LEN + frame::HEADER_LEN,
            pending: HashMap::new(),
            sealed: Vec::new(),
            piece: Vec::new(),
            segments: Vec::new(),
        }
    }

    /// Sends a frame with its offload header (`payload`: virtio-net header
    /// and Ethernet frame, any size up to `frame::MAX_LARGE`) to `hop` in
    /// fragments, after whatever is pending for that next hop.
    fn push_large(&mut self, shared: &Shared, hop: Hop, origin: PeerName, payload: &[u8]) {
        self.flush_one(shared, hop.next);
        let Some(chunk) = frame::chunk_for(payload.len(), self.max) else {
            shared.drop_frame(DROP_OVERSIZED);
            return;
        };
        let Some(addr) = lock(&shared.paths).addr(&hop.next) else {
            shared.drop_frame(DROP_NO_PATH);
            return;
        };
        let id = shared.next_fragment_id.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let (mut seg, mut count, mut sent) = (0usize, 0usize, 0usize);
        self.segments.clear();
        for piece in frame::pieces(payload, origin, hop.dst, id, chunk) {
            frame::push_fragment(&mut self.piece, shared.local, &piece);
            let Some(datagram) = shared.wire_form(&hop.next, &self.piece, &mut self.sealed, now)
            else {
                shared.drop_frame(DROP_SEND_FAILED);
                return;
            };
            if count == GSO_MAX_SEGMENTS || self.segments.len() + datagram.len() > GSO_MAX_BYTES {
                match shared.send_segments(&self.segments, seg, count, addr) {
                    Ok(n) => sent += n,
                    Err(e) => {
                        trace!(peer = %hop.next, error = %e, "send failed");
                        shared.drop_frame(DROP_SEND_FAILED);
                        return;
                    }
                }
                self.segments.clear();
                count = 0;
            }
            if count == 0 {
                seg = datagram.len();
            }
            self.segments.extend_from_slice(datagram);
            count += 1;
        }
        match shared.send_segments(&self.segments, seg, count, addr) {
            Ok(n) => {
                let mut peers = lock(&shared.peers);
                let c = peers.entry(hop.next).or_default();
                c.frames_out += 1;
                c.bytes_out += (sent + n) as u64;
                shared.superframes_out.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                trace!(peer = %hop.next, error = %e, "send failed");
                shared.drop_frame(DROP_SEND_FAILED);
            }
        }
    }

    fn push(&mut self, shared: &Shared, hop: Hop, origin: PeerName, data: &[u8]) {
        if frame::HEADER_LEN + frame::FRAME_HEADER_LEN + data.len() > self.max {
            shared.drop_frame(DROP_OVERSIZED);
            return;
        }
        let full = self
            .pending
            .get(&hop.next)
            .is_some_and(|(buf, _)| buf.len() + frame::FRAME_HEADER_LEN + data.len() > self.max);
        if full {
            self.flush_one(shared, hop.next);
        }
        let (buf, count) = self
            .pending
            .entry(hop.next)
            .or_insert_with(|| (Vec::with_capacity(self.max), 0));
        if buf.is_empty() {
            frame::begin_frames(buf, shared.local);
        }
        frame::push_frame(buf, origin, hop.dst, data);
        *count += 1;
    }

    fn flush_one(&mut self, shared: &Shared, next: PeerName) {
        let Some((buf, count)) = self.pending.get_mut(&next) else {
            return;
        };
        if buf.is_empty() {
            return;
        }
        let addr = lock(&shared.paths).addr(&next);
        match addr {
            Some(addr) => match shared.send_to_peer(&next, buf, addr, &mut self.sealed) {
                Ok(n) => {
                    let mut peers = lock(&shared.peers);
                    let c = peers.entry(next).or_default();
                    c.frames_out += *count;
                    c.bytes_out += n as u64;
                }
                Err(e) => {
                    trace!(peer = %next, error = %e, "send failed");
                    shared.drop_frame(DROP_SEND_FAILED);
                }
            },
            None => shared.drop_frame(DROP_NO_PATH),
        }
        buf.clear();
        *count = 0;
    }

    fn flush(&mut self, shared: &Shared) {
        let peers: Vec<PeerName> = self.pending.keys().copied().collect();
        for p in peers {
            self.flush_one(shared, p);
        }
    }
}

fn record_verdict(shared: &Shared, v: Verdict) {
    if let Verdict::Drop(reason) = v {
        if reason != DropReason::Local {
            shared.drop_frame(reason.as_str());
        }
    }
}

/// What reads the TAP port: a buffer, the hops and batches of the frames
/// read. One at a time (behind a mutex in [`Shared`]), and it sends what it
/// reads before letting go, so frames leave in the order the bridge gave
/// them whichever thread reads.
struct TapReader {
    buf: Vec<u8>,
    hops: Vec<Hop>,
    batcher: Batcher,
}

impl TapReader {
    fn new(mtu: u32) -> Self {
        Self {
            buf: vec![0u8; frame::MAX_LARGE],
            hops: Vec::new(),
            batcher: Batcher::new(mtu),
        }
    }

    /// Reads and sends up to [`BURST`] frames; returns how many were read.
    fn drain(&mut self, shared: &Shared) -> usize {
        let TapReader { buf, hops, batcher } = self;
        let view = shared.current_view();
        let now = Instant::now();
        let mut read = 0;
        for _ in 0..BURST {
            let n = match shared.tap.read(buf) {
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
                    shared.drop_frame(DROP_MALFORMED);
                    continue;
                }
            };
            if hdr.is_gso() {
                // A TCP super-frame: it travels whole, header included.
                let verdict =
                    lock(&shared.switch).from_local(&buf[offload::LEN..n], &view, now, hops);
                record_verdict(shared, verdict);
                for hop in hops.iter() {
                    batcher.push_large(shared, *hop, shared.local, &buf[..n]);
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
                shared.drop_frame(DROP_MALFORMED);
                continue;
            }
            let data = &buf[offload::LEN..n];
            if data.len() > shared.mtu as usize + 14 {
                // A pod with a larger MTU than the overlay's: tell a DF sender
                // to shrink, rather than losing its packets silently.
                shared.drop_frame(DROP_OVERSIZED);
                let mtu = u16::try_from(shared.mtu).unwrap_or(u16::MAX);
                if let Some(icmp) = crate::sleeve::mtu::frag_needed(data, mtu) {
                    let _ = shared.inject_plain(&icmp);
                }
                continue;
            }
            let verdict = lock(&shared.switch).from_local(data, &view, now, hops);
            record_verdict(shared, verdict);
            for hop in hops.iter() {
                batcher.push(shared, *hop, shared.local, data);
            }
        }
        batcher.flush(shared);
        read
    }
}

/// The TAP thread: helps the I/O thread when that one is busy, by serving
/// the TAP port (frames leaving the bridge) on a core of its own; hands the
/// port back after `HELPER_IDLE_MS` without frames.
fn tap_loop(shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::Relaxed) {
        if !shared.tap_helper.load(Ordering::Acquire) {
            let (m, cv) = &shared.helper_wait;
            let guard = lock(m);
            let _ = cv.wait_timeout_while(guard, Duration::from_millis(200), |()| {
                !shared.tap_helper.load(Ordering::Acquire) && !shared.stop.load(Ordering::Relaxed)
            });
            continue;
        }
        let mut fds = [PollFd::new(shared.tap.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(HELPER_IDLE_MS)) {
            Ok(0) => hand_back(&shared),
            Ok(_) => {
                lock(&shared.tap_reader).drain(&shared);
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                warn!(error = %e, "poll on the TAP device failed; the I/O thread serves it alone");
                shared.helper_failed.store(true, Ordering::Release);
                hand_back(&shared);
                return;
            }
        }
    }
}

/// The TAP thread gives the TAP port back to the I/O thread, which polls it
/// again as soon as it sees the byte on the hand-back socket.
fn hand_back(shared: &Shared) {
    shared.tap_helper.store(false, Ordering::Release);
    let _ = shared.handback.1.send(&[1]);
}

/// How busy the I/O thread is, over windows of [`BUSY_WINDOW`].
struct Load {
    window_start: Instant,
    busy: Duration,
}

impl Load {
    fn new(now: Instant) -> Self {
        Self {
            window_start: now,
            busy: Duration::ZERO,
        }
    }

    /// Counts work from `work_started` to `now`; true when this closes a
    /// window that was busy more than half of the time.
    fn record(&mut self, work_started: Instant, now: Instant) -> bool {
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

/// Calls in the TAP thread (unless it serves already or failed); it then
/// serves the TAP port until the port has been idle for `HELPER_IDLE_MS`.
fn call_in_helper(shared: &Shared) {
    if shared.tap_helper.load(Ordering::Acquire) || shared.helper_failed.load(Ordering::Acquire) {
        return;
    }
    let (m, cv) = &shared.helper_wait;
    {
        let _guard = lock(m);
        shared.tap_helper.store(true, Ordering::Release);
    }
    cv.notify_one();
}

/// The I/O thread: datagrams from peers, and the TAP port unless the TAP
/// thread serves it.
fn udp_loop(shared: Arc<Shared>, events: mpsc::Sender<Command>) {
    use nix::sys::socket::{recvmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
    use std::io::IoSliceMut;
    use std::os::fd::AsRawFd;

    let mut bufs: Vec<Vec<u8>> = (0..RECV_BATCH).map(|_| vec![0u8; 65536]).collect();
    let mut rx = Receiver {
        opened: Vec::with_capacity(65536),
        scratch: Vec::new(),
        hops: Vec::new(),
        batcher: Batcher::new(shared.mtu),
        reassembly: Reassembly::new(),
    };
    let fd = shared.socket.as_raw_fd();
    let mut received = Vec::with_capacity(RECV_BATCH);
    let mut load = Load::new(Instant::now());
    while !shared.stop.load(Ordering::Relaxed) {
        // Waits for datagrams, for a hand-back from the TAP thread and,
        // unless the TAP thread serves it, for frames on the TAP port: one
        // waiter for both devices, so a pod's answer to an injected frame
        // wakes nobody (the thread that injected reads it).
        let helper = shared.tap_helper.load(Ordering::Acquire);
        let (udp_ready, tap_ready) = {
            let mut fds = [
                PollFd::new(shared.socket.as_fd(), PollFlags::POLLIN),
                PollFd::new(shared.handback.0.as_fd(), PollFlags::POLLIN),
                PollFd::new(shared.tap.as_fd(), PollFlags::POLLIN),
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
                while shared.handback.0.recv(&mut sink).is_ok() {}
            }
            (ready(&fds[0]), n == 3 && ready(&fds[2]))
        };
        let work_started = Instant::now();
        if tap_ready {
            lock(&shared.tap_reader).drain(&shared);
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
            let injected_before = shared.injected();
            for (buf, (n, src, segment)) in bufs.iter().zip(received.iter()) {
                let Some(src) = src else { continue };
                // Datagrams the kernel coalesced are laid end to end, all
                // `segment` bytes long but the last.
                for datagram in buf[..*n].chunks(segment.unwrap_or(*n).max(1)) {
                    rx.on_datagram(&shared, datagram, *src, &events);
                }
            }
            rx.batcher.flush(&shared);
            if shared.injected() != injected_before {
                // Whatever the pods answered while we injected goes out now,
                // unless the TAP thread is already at it.
                if let Ok(mut reader) = shared.tap_reader.try_lock() {
                    reader.drain(&shared);
                }
            }
        }
        if load.record(work_started, Instant::now()) {
            call_in_helper(&shared);
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

/// Buffers of the UDP thread.
struct Receiver {
    opened: Vec<u8>,
    scratch: Vec<u8>,
    hops: Vec<Hop>,
    batcher: Batcher,
    reassembly: Reassembly,
}

impl Receiver {
    /// Handles one datagram from `src`: opens it, answers heartbeats,
    /// injects frames for us and queues relayed ones.
    fn on_datagram(
        &mut self,
        shared: &Shared,
        data: &[u8],
        src: SocketAddr,
        events: &mpsc::Sender<Command>,
    ) {
        let now = Instant::now();
        let datagram = match &shared.sealer {
            Some(sealer) => match sealer.open(data, &mut self.opened) {
                Ok(plain) => plain,
                Err(e) => {
                    trace!(%src, error = %e, "dropping datagram");
                    shared.drop_frame(e.reason());
                    return;
                }
            },
            None => data,
        };
        match frame::decode(datagram) {
            Err(e) => {
                trace!(%src, error = %e, "dropping malformed datagram");
                shared.drop_frame(DROP_MALFORMED);
            }
            Ok(Datagram::Heartbeat { hop, to, conn_uid }) => {
                let answer = lock(&shared.paths).on_heartbeat(hop, to, conn_uid, src, now);
                match answer {
                    Some((ack, probe)) => {
                        let _ = shared.send_to_peer(&hop, &ack, src, &mut self.scratch);
                        if let Some(probe) = probe {
                            let _ = shared.send_to_peer(&hop, &probe, src, &mut self.scratch);
                        }
                    }
                    None => shared.drop_frame(DROP_UNKNOWN_SENDER),
                }
            }
            Ok(Datagram::HeartbeatAck { hop, to, conn_uid }) => {
                let event = lock(&shared.paths).on_ack(hop, to, conn_uid, src, now);
                if let Some(ev) = event {
                    let _ = events.blocking_send(Command::Path(ev));
                }
            }
            Ok(Datagram::Frames { hop, frames }) => {
                if !lock(&shared.paths).is_known_sender(&hop, src) {
                    shared.drop_frame(DROP_UNKNOWN_SENDER);
                    return;
                }
                let view = shared.current_view();
                let mut count = 0u64;
                for f in frames {
                    let f = match f {
                        Ok(f) => f,
                        Err(_) => {
                            shared.drop_frame(DROP_MALFORMED);
                            break;
                        }
                    };
                    count += 1;
                    let verdict = lock(&shared.switch).from_peer(
                        f.origin,
                        f.dst,
                        f.data,
                        &view,
                        now,
                        &mut self.hops,
                    );
                    record_verdict(shared, verdict);
                    if verdict == Verdict::InjectAndForward {
                        match shared.inject_plain(f.data) {
                            Ok(_) => {
                                shared.injected.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(_) => shared.drop_frame("inject_failed"),
                        }
                    }
                    for h in &self.hops {
                        self.batcher.push(shared, *h, f.origin, f.data);
                    }
                }
                let mut peers = lock(&shared.peers);
                let c = peers.entry(hop).or_default();
                c.frames_in += count;
                c.bytes_in += data.len() as u64;
            }
            Ok(Datagram::Fragment { hop, fragment }) => {
                if !lock(&shared.paths).is_known_sender(&hop, src) {
                    shared.drop_frame(DROP_UNKNOWN_SENDER);
                    return;
                }
                let completed = on_fragment(
                    &mut self.reassembly,
                    &mut self.batcher,
                    &mut self.hops,
                    shared,
                    hop,
                    &fragment,
                    now,
                );
                let mut peers = lock(&shared.peers);
                let c = peers.entry(hop).or_default();
                c.frames_in += u64::from(completed);
                c.bytes_in += data.len() as u64;
            }
        }
    }
}

/// Takes a piece of a large frame; once the frame is whole, injects and/or
/// relays it. Returns whether a frame was completed.
fn on_fragment(
    reassembly: &mut Reassembly,
    batcher: &mut Batcher,
    hops: &mut Vec<Hop>,
    shared: &Shared,
    hop: PeerName,
    fragment: &frame::Fragment<'_>,
    now: Instant,
) -> bool {
    let evicted = reassembly.evicted();
    let whole = match reassembly.take(hop, fragment) {
        Outcome::Complete(w) => w,
        Outcome::Kept => {
            if reassembly.evicted() != evicted {
                // A frame still missing pieces made room for this one.
                shared.drop_frame(DROP_FRAGMENTS_INCOMPLETE);
            }
            return false;
        }
        Outcome::Duplicate => {
            shared.drop_frame(DROP_FRAGMENT_DUPLICATE);
            return false;
        }
    };
    let valid = VnetHdr::parse(whole.data)
        .ok()
        .filter(|_| whole.data.len() >= offload::LEN + 14)
        .is_some_and(|h| h.validate(whole.data.len() - offload::LEN).is_ok());
    if !valid {
        shared.drop_frame(DROP_MALFORMED);
        return false;
    }
    shared.superframes_in.fetch_add(1, Ordering::Relaxed);
    let view = shared.current_view();
    let verdict = lock(&shared.switch).from_peer(
        whole.origin,
        whole.dst,
        &whole.data[offload::LEN..],
        &view,
        now,
        hops,
    );
    record_verdict(shared, verdict);
    if verdict == Verdict::InjectAndForward {
        match shared.tap.write(whole.data) {
            Ok(_) => {
                shared.injected.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => shared.drop_frame("inject_failed"),
        }
    }
    for h in hops.iter() {
        batcher.push_large(shared, *h, whole.origin, whole.data);
    }
    true
}

/// Sends queued heartbeats, each to the peer it names as its receiver.
fn send_heartbeats(
    shared: &Shared,
    out: &mut Vec<(SocketAddr, [u8; frame::HEARTBEAT_LEN])>,
    scratch: &mut Vec<u8>,
) {
    for (addr, hb) in out.drain(..) {
        let mut to = [0u8; 6];
        to.copy_from_slice(&hb[frame::HEADER_LEN..frame::HEADER_LEN + 6]);
        let _ = shared.send_to_peer(&PeerName::from_bytes(to), &hb, addr, scratch);
    }
}

/// Runs the sleeve until `cancel` fires: starts the packet threads, sends
/// heartbeats, follows the mesh's view and reports path changes.
pub async fn run(
    shared: Arc<Shared>,
    mut views: watch::Receiver<Arc<OverlayView>>,
    commands: mpsc::Sender<Command>,
    cancel: CancellationToken,
) -> crate::Result<()> {
    let threads = [
        {
            let s = shared.clone();
            std::thread::Builder::new()
                .name("sleeve-tap".into())
                .spawn(move || tap_loop(s))
        },
        {
            let s = shared.clone();
            let c = commands.clone();
            std::thread::Builder::new()
                .name("sleeve-io".into())
                .spawn(move || udp_loop(s, c))
        },
    ];
    if threads[0].is_err() {
        // The I/O thread then serves the TAP port alone, whatever its load.
        shared.helper_failed.store(true, Ordering::Release);
    }
    for t in &threads {
        if let Err(e) = t {
            warn!(error = %e, "cannot start a sleeve thread");
        }
    }
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut next_expire = Instant::now() + Duration::from_secs(60);
    let mut out = Vec::new();
    let mut events = Vec::new();
    let mut scratch = Vec::new();
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            changed = views.changed() => {
                if changed.is_err() {
                    break;
                }
                let view = views.borrow_and_update().clone();
                let now = Instant::now();
                if let Some(sealer) = &shared.sealer {
                    sealer.sync(&view.neighbours, now);
                }
                {
                    // New neighbours are probed at once, not at the next tick.
                    let mut paths = lock(&shared.paths);
                    paths.sync(&view.neighbours, now);
                    paths.tick(now, &mut out, &mut events);
                }
                send_heartbeats(&shared, &mut out, &mut scratch);
                *shared.view.write().unwrap_or_else(std::sync::PoisonError::into_inner) = view;
            }
            _ = tick.tick() => {
                let now = Instant::now();
                lock(&shared.paths).tick(now, &mut out, &mut events);
                send_heartbeats(&shared, &mut out, &mut scratch);
                for ev in events.drain(..) {
                    if let PathEvent::Failed(peer, _) = ev {
                        debug!(%peer, "UDP path failed");
                    }
                    let _ = commands.send(Command::Path(ev)).await;
                }
                if now >= next_expire {
                    next_expire = now + Duration::from_secs(60);
                    let view = shared.current_view();
                    lock(&shared.switch).expire(&view, now);
                }
            }
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    for t in threads.into_iter().flatten() {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    info!("sleeve stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use weave_platform::fake::{FakeKind, FakeNetlink};

    #[tokio::test]
    async fn mtu_comes_from_the_route_device() {
        let nl = FakeNetlink::new();
        let eth = nl.add_link("eth0", FakeKind::Device, 1500);
        nl.set_up(eth).await.unwrap();
        nl.add_addr(eth, "10.0.0.1".parse().unwrap(), 24)
            .await
            .unwrap();
        let jumbo = nl.add_link("eth1", FakeKind::Device, 9000);
        nl.set_up(jumbo).await.unwrap();
        nl.add_addr(jumbo, "10.1.0.1".parse().unwrap(), 24)
            .await
            .unwrap();
        // no default route: the smallest MTU among routed devices
        assert_eq!(derive_mtu(&nl, "weave", OVERHEAD).await.unwrap(), 1436);
        // a default route decides
        nl.add_route(
            "0.0.0.0".parse().unwrap(),
            0,
            Some("10.1.0.254".parse().unwrap()),
            jumbo,
        )
        .await
        .unwrap();
        assert_eq!(
            derive_mtu(&nl, "weave", OVERHEAD).await.unwrap(),
            9000 - OVERHEAD
        );
        assert_eq!(
            derive_mtu(&nl, "weave", OVERHEAD + SEALED_OVERHEAD)
                .await
                .unwrap(),
            9000 - 100
        );
        // nothing routed: a clear error asking for --mtu
        let empty = FakeNetlink::new();
        let err = derive_mtu(&empty, "weave", OVERHEAD).await.unwrap_err();
        assert!(err.to_string().contains("set --mtu"), "{err}");
    }

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

    #[test]
    fn sealed_overhead_matches_the_session_format() {
        assert_eq!(
            SEALED_OVERHEAD as usize,
            crate::crypto::session::SEALED_OVERHEAD
        );
    }
}
