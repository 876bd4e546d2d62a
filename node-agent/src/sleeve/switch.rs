// SPDX-License-Identifier: Apache-2.0
//! The virtual switch: where each Ethernet frame goes.
//!
//! MAC addresses are learned from traffic only (never gossiped): a frame
//! captured from the local bridge teaches "this MAC is here", a frame from a
//! peer teaches "this MAC is behind its origin peer". A MAC seen somewhere
//! else simply moves, which is what makes a container that reappears on
//! another host reachable again as soon as it sends anything.
//!
//! Unicast goes along the data-plane routes, relayed hop by hop. Broadcast,
//! multicast and unknown unicast are flooded along the origin's broadcast
//! tree (carried with the [`BROADCAST`] destination), so each peer gets
//! exactly one copy and nothing loops. Pure: no I/O, time is passed in.
//!
//! When the kernel's fast path carries some neighbours (`kernel`), the
//! bridge's VXLAN port has already flooded a local frame to them, and the
//! bridge never passes frames between its VXLAN and TAP ports: the sleeve
//! then sends one copy to each *other* reachable peer, addressed to it along
//! its unicast route, so that every peer still gets exactly one. A frame for
//! a MAC behind a kernel-carried peer reaches the TAP port only when the
//! bridge flooded it (its own entries send such MACs to the VXLAN port), so
//! the sleeve drops it: the kernel delivered it.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use crate::mesh::overlay::OverlayView;
use crate::mesh::PeerName;

/// Destination of flooded frames. Real peer names never have the multicast
/// bit set, so this cannot name a peer.
pub const BROADCAST: PeerName = PeerName::BROADCAST;
/// How long a learned MAC is kept without traffic.
pub const MAC_MAX_AGE: Duration = Duration::from_secs(10 * 60);

/// An Ethernet address.
pub type Mac = [u8; 6];

/// What to do with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Drop it, for this reason.
    Drop(DropReason),
    /// Send it to the listed hops only (see the `hops` output).
    Forward,
    /// Hand it to the local bridge, and send it to the listed hops too.
    InjectAndForward,
}

/// Why a frame was dropped (each is a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Too short to be Ethernet.
    Runt,
    /// Spanning-tree and other link-local control frames.
    LinkLocal,
    /// Addressed to a MAC on this host: the bridge delivers it itself.
    Local,
    /// No route to the destination peer (unreachable or unknown).
    NoRoute,
    /// A frame that came back to the peer that captured it.
    Loop,
    /// For a peer the kernel's fast path carries, which delivered it.
    Kernel,
}

impl DropReason {
    /// Label for metrics and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Runt => "runt",
            Self::LinkLocal => "link_local",
            Self::Local => "local_destination",
            Self::NoRoute => "no_route",
            Self::Loop => "loop",
            Self::Kernel => "kernel_carried",
        }
    }
}

/// A hop to send a frame to: the neighbour, and the destination field to
/// put in the frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hop {
    /// Neighbour to send to.
    pub next: PeerName,
    /// Destination peer, or [`BROADCAST`].
    pub dst: PeerName,
}

#[derive(Debug, Clone, Copy)]
struct MacEntry {
    peer: PeerName,
    seen: Instant,
}

/// The MAC table and forwarding rules of one peer.
#[derive(Debug)]
pub struct Switch {
    local: PeerName,
    macs: HashMap<Mac, MacEntry>,
}

fn dst_mac(frame: &[u8]) -> Mac {
    let mut m = [0u8; 6];
    m.copy_from_slice(&frame[..6]);
    m
}

fn src_mac(frame: &[u8]) -> Mac {
    let mut m = [0u8; 6];
    m.copy_from_slice(&frame[6..12]);
    m
}

fn is_group(mac: &Mac) -> bool {
    mac[0] & 1 == 1
}

impl Switch {
    /// A switch for the local peer.
    pub fn new(local: PeerName) -> Self {
        Self {
            local,
            macs: HashMap::new(),
        }
    }

    /// Where a MAC was last seen.
    pub fn lookup(&self, mac: &Mac) -> Option<PeerName> {
        self.macs.get(mac).map(|e| e.peer)
    }

    /// Number of learned MACs.
    pub fn len(&self) -> usize {
        self.macs.len()
    }

    /// Whether no MAC is known.
    pub fn is_empty(&self) -> bool {
        self.macs.is_empty()
    }

    fn learn(&mut self, mac: Mac, peer: PeerName, now: Instant) {
        if is_group(&mac) {
            return;
        }
        self.macs.insert(mac, MacEntry { peer, seen: now });
    }

    /// A frame captured from the local bridge. Fills `hops`. `kernel` are
    /// the peers the kernel's fast path carries (see the module docs).
    pub fn from_local(
        &mut self,
        frame: &[u8],
        view: &OverlayView,
        kernel: &BTreeSet<PeerName>,
        now: Instant,
        hops: &mut Vec<Hop>,
    ) -> Verdict {
        hops.clear();
        if frame.len() < 14 {
            return Verdict::Drop(DropReason::Runt);
        }
        let dst = dst_mac(frame);
        if dst[..5] == [0x01, 0x80, 0xc2, 0x00, 0x00] && dst[5] <= 0x0f {
            return Verdict::Drop(DropReason::LinkLocal);
        }
        self.learn(src_mac(frame), self.local, now);
        match self.macs.get(&dst).map(|e| e.peer) {
            Some(p) if !is_group(&dst) && p == self.local => Verdict::Drop(DropReason::Local),
            Some(p) if !is_group(&dst) && kernel.contains(&p) => Verdict::Drop(DropReason::Kernel),
            Some(p) if !is_group(&dst) => match view.next_hop(&p) {
                Some(next) => {
                    hops.push(Hop { next, dst: p });
                    Verdict::Forward
                }
                None => Verdict::Drop(DropReason::NoRoute),
            },
            _ if kernel.is_empty() => {
                hops.extend(
                    view.broadcast_children(&self.local)
                        .iter()
                        .map(|&next| Hop {
                            next,
                            dst: BROADCAST,
                        }),
                );
                Verdict::Forward
            }
            _ => {
                hops.extend(
                    view.unicast
                        .iter()
                        .filter(|(dst, _)| !kernel.contains(dst) && **dst != self.local)
                        .map(|(dst, next)| Hop {
                            next: *next,
                            dst: *dst,
                        }),
                );
                Verdict::Forward
            }
        }
    }

    /// A frame received from a peer: captured by `origin`, headed for `dst`.
    /// Fills `hops` with where it must be relayed.
    pub fn from_peer(
        &mut self,
        origin: PeerName,
        dst: PeerName,
        frame: &[u8],
        view: &OverlayView,
        now: Instant,
        hops: &mut Vec<Hop>,
    ) -> Verdict {
        hops.clear();
        if frame.len() < 14 {
            return Verdict::Drop(DropReason::Runt);
        }
        if origin == self.local {
            return Verdict::Drop(DropReason::Loop);
        }
        self.learn(src_mac(frame), origin, now);
        if dst == BROADCAST {
            hops.extend(view.broadcast_children(&origin).iter().map(|&next| Hop {
                next,
                dst: BROADCAST,
            }));
            return Verdict::InjectAndForward;
        }
        if dst == self.local {
            return Verdict::InjectAndForward;
        }
        match view.next_hop(&dst) {
            Some(next) => {
                hops.push(Hop { next, dst });
                Verdict::Forward
            }
            None => Verdict::Drop(DropReason::NoRoute),
        }
    }

    /// Forgets MACs not seen for [`MAC_MAX_AGE`] and those behind peers
    /// that are gone from the view.
    pub fn expire(&mut self, view: &OverlayView, now: Instant) {
        let local = self.local;
        self.macs.retain(|_, e| {
            now.saturating_duration_since(e.seen) < MAC_MAX_AGE
                && (e.peer == local || view.next_hop(&e.peer).is_some())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn n(i: u8) -> PeerName {
        PeerName::from_bytes([2, 0, 0, 0, 0, i])
    }

    fn frame(dst: Mac, src: Mac) -> Vec<u8> {
        let mut f = dst.to_vec();
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&[0u8; 46]);
        f
    }

    /// View of peer 1 in the chain 1-2-3 (3 reached via 2).
    fn view() -> OverlayView {
        OverlayView {
            local: n(1),
            unicast: BTreeMap::from([(n(2), n(2)), (n(3), n(2))]),
            broadcast: BTreeMap::from([(n(1), vec![n(2)]), (n(2), vec![]), (n(3), vec![])]),
            ..OverlayView::default()
        }
    }

    const NONE: BTreeSet<PeerName> = BTreeSet::new();
    const A: Mac = [0x0a, 0, 0, 0, 0, 1];
    const C: Mac = [0x0a, 0, 0, 0, 0, 3];
    const BCAST: Mac = [0xff; 6];

    #[test]
    fn unknown_and_broadcast_flood_along_our_tree() {
        let mut sw = Switch::new(n(1));
        let now = Instant::now();
        let mut hops = Vec::new();
        for dst in [BCAST, C] {
            assert_eq!(
                sw.from_local(&frame(dst, A), &view(), &NONE, now, &mut hops),
                Verdict::Forward
            );
            assert_eq!(
                hops,
                vec![Hop {
                    next: n(2),
                    dst: BROADCAST
                }]
            );
        }
        assert_eq!(sw.lookup(&A), Some(n(1)));
    }

    #[test]
    fn learned_unicast_goes_via_next_hop() {
        let mut sw = Switch::new(n(1));
        let now = Instant::now();
        let mut hops = Vec::new();
        // C answers from peer 3, relayed by 2
        assert_eq!(
            sw.from_peer(n(3), n(1), &frame(A, C), &view(), now, &mut hops),
            Verdict::InjectAndForward
        );
        assert!(hops.is_empty());
        assert_eq!(
            sw.from_local(&frame(C, A), &view(), &NONE, now, &mut hops),
            Verdict::Forward
        );
        assert_eq!(
            hops,
            vec![Hop {
                next: n(2),
                dst: n(3)
            }]
        );
    }

    #[test]
    fn transit_frames_are_relayed_and_loops_dropped() {
        let mut sw = Switch::new(n(1));
        let now = Instant::now();
        let mut hops = Vec::new();
        assert_eq!(
            sw.from_peer(n(2), n(3), &frame(C, A), &view(), now, &mut hops),
            Verdict::Forward
        );
        assert_eq!(
            hops,
            vec![Hop {
                next: n(2),
                dst: n(3)
            }]
        );
        assert_eq!(
            sw.from_peer(n(1), n(3), &frame(C, A), &view(), now, &mut hops),
            Verdict::Drop(DropReason::Loop)
        );
        assert_eq!(
            sw.from_peer(n(2), n(9), &frame(C, A), &view(), now, &mut hops),
            Verdict::Drop(DropReason::NoRoute)
        );
    }

    #[test]
    fn broadcasts_from_peers_are_injected_and_passed_down_the_tree() {
        let mut v = view();
        v.broadcast.insert(n(3), vec![n(2)]);
        let mut sw = Switch::new(n(1));
        let mut hops = Vec::new();
        let verdict = sw.from_peer(
            n(3),
            BROADCAST,
            &frame(BCAST, C),
            &v,
            Instant::now(),
            &mut hops,
        );
        assert_eq!(verdict, Verdict::InjectAndForward);
        assert_eq!(
            hops,
            vec![Hop {
                next: n(2),
                dst: BROADCAST
            }]
        );
    }

    #[test]
    fn macs_move_and_expire() {
        let mut sw = Switch::new(n(1));
        let now = Instant::now();
        let mut hops = Vec::new();
        sw.from_peer(n(3), n(1), &frame(A, C), &view(), now, &mut hops);
        assert_eq!(sw.lookup(&C), Some(n(3)));
        sw.from_peer(n(2), n(1), &frame(A, C), &view(), now, &mut hops);
        assert_eq!(sw.lookup(&C), Some(n(2)), "moved to peer 2");
        sw.from_local(&frame(BCAST, C), &view(), &NONE, now, &mut hops);
        assert_eq!(sw.lookup(&C), Some(n(1)), "moved here");
        assert_eq!(
            sw.from_local(&frame(C, A), &view(), &NONE, now, &mut hops),
            Verdict::Drop(DropReason::Local)
        );
        sw.expire(&view(), now + MAC_MAX_AGE);
        assert!(sw.is_empty());
    }

    /// Peer 1 in a mesh of four: 2 on the fast path, 3 by the sleeve, 4
    /// relayed through 3.
    fn mixed() -> OverlayView {
        OverlayView {
            local: n(1),
            unicast: BTreeMap::from([(n(2), n(2)), (n(3), n(3)), (n(4), n(3))]),
            broadcast: BTreeMap::from([(n(1), vec![n(2), n(3)])]),
            ..OverlayView::default()
        }
    }

    #[test]
    fn with_kernel_peers_floods_go_once_to_each_other_peer() {
        let mut sw = Switch::new(n(1));
        let kernel = BTreeSet::from([n(2)]);
        let now = Instant::now();
        let mut hops = Vec::new();
        let v = sw.from_local(&frame(BCAST, A), &mixed(), &kernel, now, &mut hops);
        assert_eq!(v, Verdict::Forward);
        assert_eq!(
            hops,
            vec![
                Hop {
                    next: n(3),
                    dst: n(3)
                },
                Hop {
                    next: n(3),
                    dst: n(4)
                }
            ],
            "none to the kernel-carried peer, one addressed copy to each other"
        );
        // each copy is injected only where it is addressed, relayed elsewhere
        let mut relay = Switch::new(n(3));
        let at3 = OverlayView {
            local: n(3),
            unicast: BTreeMap::from([(n(1), n(1)), (n(4), n(4))]),
            ..OverlayView::default()
        };
        assert_eq!(
            relay.from_peer(n(1), n(4), &frame(BCAST, A), &at3, now, &mut hops),
            Verdict::Forward
        );
        assert_eq!(
            relay.from_peer(n(1), n(3), &frame(BCAST, A), &at3, now, &mut hops),
            Verdict::InjectAndForward
        );
        assert!(hops.is_empty());
        // a MAC behind the kernel-carried peer: the kernel delivered it
        sw.from_peer(n(2), n(1), &frame(A, C), &mixed(), now, &mut hops);
        assert_eq!(
            sw.from_local(&frame(C, A), &mixed(), &kernel, now, &mut hops),
            Verdict::Drop(DropReason::Kernel)
        );
        assert!(hops.is_empty());
    }

    #[test]
    fn control_frames_and_runts_are_dropped() {
        let mut sw = Switch::new(n(1));
        let mut hops = Vec::new();
        let stp = frame([0x01, 0x80, 0xc2, 0, 0, 0], A);
        assert_eq!(
            sw.from_local(&stp, &view(), &NONE, Instant::now(), &mut hops),
            Verdict::Drop(DropReason::LinkLocal)
        );
        assert_eq!(
            sw.from_local(&[0u8; 10], &view(), &NONE, Instant::now(), &mut hops),
            Verdict::Drop(DropReason::Runt)
        );
    }
}
