// SPDX-License-Identifier: Apache-2.0
//! The kernel fast path without I/O: which connections the kernel's VXLAN
//! device carries, and what its forwarding entries must be.
//!
//! - [`heartbeat`]: the frames that prove a VXLAN path, padded to a full
//!   overlay frame, and their acknowledgements (wire format);
//! - [`advert`]: what a peer tells each neighbour over the gossip port: can
//!   it run the fast path, on which port and VNI, and which MACs live on its
//!   bridge (wire format);
//! - [`choice`]: the state of every connection (fast path, or the sleeve and
//!   why), driven by heartbeats, adverts and time, with hysteresis both ways
//!   and a hold that keeps the kernel forwarding while a peer's agent
//!   restarts;
//! - [`plan`]: the forwarding entries that follow from the choice (desired
//!   state), and the operations that turn the installed entries into them.
//!
//! Everything here decides; nothing does a system call. The device, the
//! socket that carries heartbeats and the netlink calls live in
//! `router::fastdp`.
//!
//! How the ports of the `weave` bridge share the work (the invariants the
//! plan and the sleeve keep between them):
//!
//! - the VXLAN port and the sleeve's TAP port are *isolated*: the bridge
//!   never forwards between them, so nothing loops from one overlay into the
//!   other, and a frame that arrived from one overlay is never sent out of
//!   the other;
//! - the VXLAN port does not learn; its MACs are pinned (static, sticky
//!   entries) from the adverts of the peers the kernel carries, each with a
//!   VXLAN entry naming the peer's address. Unicast between such peers never
//!   reaches user space;
//! - broadcast, multicast and unknown unicast reach each host exactly once:
//!   the VXLAN device's flood list holds exactly the peers it carries, and
//!   the sleeve sends its copies only to the others (`sleeve::switch`);
//! - peers without a direct fast path (sleeve, relayed) are reached through
//!   the TAP port, where the bridge keeps learning as before.

pub mod advert;
pub mod choice;
pub mod heartbeat;
pub mod plan;
#[cfg(test)]
mod tests;

use std::fmt;

/// The VXLAN network identifier of weave's fast path (any 24-bit value
/// works; every peer uses this one and says so in its advert).
pub const VNI: u32 = 0x0077_6576;
/// The default UDP port of the fast path.
pub const DEFAULT_PORT: u16 = 6784;
/// Bytes VXLAN adds around an inner frame's payload: outer IPv4 (20), UDP
/// (8), VXLAN (8) and the inner Ethernet header (14).
pub const VXLAN_OVERHEAD: u32 = 50;

/// How a connection carries pod traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The kernel's VXLAN device, directly between the two hosts.
    Fastdp,
    /// The user-space sleeve, for the reason given.
    Sleeve(Reason),
}

impl Mode {
    /// `fastdp` or `sleeve`, as reports and metrics label it.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Fastdp => "fastdp",
            Mode::Sleeve(_) => "sleeve",
        }
    }

    /// Why the sleeve carries the connection.
    pub fn reason(self) -> Option<Reason> {
        match self {
            Mode::Fastdp => None,
            Mode::Sleeve(r) => Some(r),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mode::Fastdp => f.write_str("fastdp"),
            Mode::Sleeve(r) => write!(f, "sleeve ({r})"),
        }
    }
}

/// Why a connection is on the sleeve. Each has a code for the wire (a peer
/// tells its own reason in adverts and heartbeats) and a label for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// This agent runs with `--no-fastdp`.
    Disabled,
    /// A mesh password is set and the kernel cannot encrypt the fast path.
    Encryption,
    /// The VXLAN device could not be made here (no kernel support, port
    /// taken).
    NoDevice,
    /// The peer runs without the fast path, or has not said it has one.
    PeerWithout,
    /// The peer's underlay address is IPv6, which the fast path does not use.
    Ipv6Underlay,
    /// The peer uses another VNI or no encapsulation in common.
    Incompatible,
    /// Heartbeats have only just started.
    Probing,
    /// Full-size heartbeats get no answer.
    HeartbeatTimeout,
    /// Small heartbeats are answered, full-size ones are not: the path
    /// cannot carry a full overlay frame.
    Mtu,
    /// Our heartbeats get through, the peer's do not (it says why in its
    /// own status).
    PeerHeartbeats,
}

impl Reason {
    /// Every reason, for metrics that list them all.
    pub const ALL: [Reason; 10] = [
        Reason::Disabled,
        Reason::Encryption,
        Reason::NoDevice,
        Reason::PeerWithout,
        Reason::Ipv6Underlay,
        Reason::Incompatible,
        Reason::Probing,
        Reason::HeartbeatTimeout,
        Reason::Mtu,
        Reason::PeerHeartbeats,
    ];

    /// Label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Reason::Disabled => "disabled",
            Reason::Encryption => "encryption",
            Reason::NoDevice => "no_device",
            Reason::PeerWithout => "peer_without_fastdp",
            Reason::Ipv6Underlay => "ipv6_underlay",
            Reason::Incompatible => "incompatible",
            Reason::Probing => "probing",
            Reason::HeartbeatTimeout => "heartbeat_timeout",
            Reason::Mtu => "mtu",
            Reason::PeerHeartbeats => "peer_heartbeats",
        }
    }

    /// Code on the wire (`PROTOCOL.md` §12.4); 0 means no reason.
    pub fn code(self) -> u8 {
        match self {
            Reason::Disabled => 1,
            Reason::Encryption => 2,
            Reason::NoDevice => 3,
            Reason::PeerWithout => 4,
            Reason::Ipv6Underlay => 5,
            Reason::Incompatible => 6,
            Reason::Probing => 7,
            Reason::HeartbeatTimeout => 8,
            Reason::Mtu => 9,
            Reason::PeerHeartbeats => 10,
        }
    }

    /// The reason of a wire code; `None` for 0 and codes of newer versions.
    pub fn from_code(code: u8) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.code() == code)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Disabled => "fastdp disabled",
            Reason::Encryption => "encryption: kernel cannot encrypt",
            Reason::NoDevice => "no VXLAN device here",
            Reason::PeerWithout => "peer without fastdp",
            Reason::Ipv6Underlay => "IPv6 underlay",
            Reason::Incompatible => "no common encapsulation",
            Reason::Probing => "probing",
            Reason::HeartbeatTimeout => "heartbeat timeout",
            Reason::Mtu => "MTU: full-size frames do not cross",
            Reason::PeerHeartbeats => "peer's heartbeats do not cross",
        })
    }
}

/// An encapsulation a peer can use for the fast path, most preferred
/// first in adverts. Only plain VXLAN exists on this kernel; an encrypting
/// one (VXLAN over WireGuard, or ESP in transport mode) gets a new code and
/// is chosen when both peers list it, and required when a password is set
/// (`PROTOCOL.md` §12.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Encap {
    /// VXLAN over UDP, in clear.
    Vxlan,
}

impl Encap {
    /// Code on the wire.
    pub fn code(self) -> u8 {
        match self {
            Encap::Vxlan => 1,
        }
    }

    /// The encapsulation of a wire code; `None` for codes of newer versions.
    pub fn from_code(code: u8) -> Option<Encap> {
        match code {
            1 => Some(Encap::Vxlan),
            _ => None,
        }
    }

    /// Whether it protects pod traffic on the underlay (needed with a mesh
    /// password).
    pub fn encrypts(self) -> bool {
        match self {
            Encap::Vxlan => false,
        }
    }
}

/// Where a peer's fast path listens: its underlay address and UDP port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Remote {
    /// Underlay address.
    pub ip: std::net::IpAddr,
    /// UDP port.
    pub port: u16,
}

impl fmt::Display for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", std::net::SocketAddr::new(self.ip, self.port))
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn reason_codes_round_trip_and_are_distinct() {
        let mut codes = std::collections::BTreeSet::new();
        for r in Reason::ALL {
            assert_eq!(Reason::from_code(r.code()), Some(r));
            assert!(codes.insert(r.code()), "{r:?} reuses a code");
            assert!(!r.label().contains(' '));
        }
        assert_eq!(Reason::from_code(0), None);
        assert_eq!(Reason::from_code(200), None);
        assert_eq!(
            Mode::Sleeve(Reason::Encryption).to_string(),
            "sleeve (encryption: kernel cannot encrypt)"
        );
    }
}
