// SPDX-License-Identifier: Apache-2.0
//! Setting the sleeve up, before the mesh starts: the bridge is created or
//! adopted (its MAC is the peer name), a fresh TAP port with offloads is
//! attached to it, and the UDP socket is opened with large buffers and
//! receive offload. The overlay MTU is the one given, or the one
//! `sleeve::mtu` chooses from the routes and device MTUs read here.
//!
//! Idempotent: a restarted agent finds the bridge as it was, so pods on the
//! same host keep talking while the agent is down.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::sync::{Arc, Condvar, Mutex, RwLock};

use tracing::{info, warn};
use weave_platform::{BridgePortFlags, Netlink, Tap};

use super::state::Sleeve;
use crate::mesh::overlay::OverlayView;
use crate::mesh::PeerName;
use crate::sleeve::mtu::{self, MtuError};
use crate::sleeve::path::Paths;
use crate::sleeve::sealer::Sealer;
use crate::sleeve::switch::Switch;

/// Name of the TAP port the agent attaches to the bridge.
pub const TAP_NAME: &str = "vethwe-sleeve";
/// MTU of the TAP port: the largest the kernel allows.
const TAP_MTU: u32 = 65521;
/// Socket buffers: a default-sized receive buffer was where Weave Net's
/// sleeve lost packets.
const SOCKET_BUFFER: usize = 4 << 20;
/// Offloads the TAP port takes on: checksums and TCP super-frames.
const TAP_OFFLOADS: u32 = weave_platform::tap::offload::CSUM
    | weave_platform::tap::offload::TSO4
    | weave_platform::tap::offload::TSO6
    | weave_platform::tap::offload::TSO_ECN;

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

impl From<MtuError> for SleeveError {
    fn from(e: MtuError) -> Self {
        SleeveError::Mtu(e.to_string())
    }
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

/// Reads the routes and the MTUs of the devices that carry them, and lets
/// [`mtu::overlay_mtu`] choose.
async fn derive_mtu(
    netlink: &impl Netlink,
    bridge: &str,
    overhead: u32,
) -> Result<u32, SleeveError> {
    let routes = netlink.routes_v4().await?;
    let bridge_index = netlink.link_index(bridge).await?;
    let mut underlay = Vec::new();
    for oif in mtu::underlay_devices(&routes, bridge_index) {
        if let Some(m) = netlink.link_mtu_by_index(oif).await? {
            underlay.push(m);
        }
    }
    Ok(mtu::overlay_mtu(underlay, overhead)?)
}

/// Creates (or adopts) the bridge, attaches a fresh TAP port and opens the
/// UDP socket. Idempotent: a restarted agent finds the bridge as it was.
pub async fn setup(
    cfg: &SleeveConfig,
    local: PeerName,
    netlink: &impl Netlink,
) -> Result<Arc<Sleeve>, SleeveError> {
    let mtu = match cfg.mtu {
        Some(m) => m,
        None => derive_mtu(netlink, &cfg.bridge, mtu::overhead(cfg.encrypted)).await?,
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
    // Isolated from the fast path's VXLAN port: the bridge never passes a
    // frame from one overlay to the other (no loops, one copy per host).
    netlink
        .set_bridge_port(
            tap_index,
            BridgePortFlags {
                isolated: Some(true),
                learning: None,
            },
        )
        .await?;
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
    Ok(Arc::new(Sleeve {
        local,
        mtu,
        bridge: cfg.bridge.clone(),
        view: RwLock::new(Arc::new(OverlayView {
            local,
            ..OverlayView::default()
        })),
        kernel: RwLock::new(Arc::default()),
        switch: Mutex::new(Switch::new(local)),
        paths: Mutex::new(Paths::new(local)),
        socket,
        tap,
        tap_index,
        stop: AtomicBool::new(false),
        peers: Mutex::new(HashMap::new()),
        drops: Mutex::new(BTreeMap::new()),
        peer_drops: Mutex::new(HashMap::new()),
        injected: AtomicU64::new(0),
        sealer: cfg.encrypted.then(Sealer::new),
        udp_gso: AtomicBool::new(true),
        path_mtus: Mutex::new(HashMap::new()),
        narrowed: AtomicBool::new(false),
        offload,
        superframes_out: AtomicU64::new(0),
        superframes_in: AtomicU64::new(0),
        next_fragment_id: AtomicU32::new(rand::random()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sleeve::mtu::OVERHEAD;
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
            derive_mtu(&nl, "weave", mtu::overhead(true)).await.unwrap(),
            9000 - 100
        );
        // nothing routed: a clear error asking for --mtu
        let empty = FakeNetlink::new();
        let err = derive_mtu(&empty, "weave", OVERHEAD).await.unwrap_err();
        assert!(err.to_string().contains("set --mtu"), "{err}");
    }
}
