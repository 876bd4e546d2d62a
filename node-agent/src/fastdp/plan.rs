// SPDX-License-Identifier: Apache-2.0
//! The forwarding entries the fast path needs, computed from the choice
//! ([`desired`]), read back from the kernel ([`Installed::read`]) and
//! compared ([`diff`]): desired state, diff, apply (STYLE §2).
//!
//! Three kinds of entries, all on the VXLAN device:
//!
//! - *remote* entries of the device itself (`bridge fdb … self`): a peer's
//!   bridge MAC (its peer name: where heartbeats go) for every candidate,
//!   and every MAC of a carried peer, each naming the peer's address;
//! - the *flood list*: all-zero MAC entries, one per carried peer, where
//!   broadcast, multicast and unknown unicast go;
//! - *pinned* bridge entries (`bridge fdb … master static sticky`) for the
//!   same MACs, so the bridge sends them to the VXLAN port and nothing it
//!   learns from the sleeve's TAP port moves them.
//!
//! A MAC claimed by two carried peers (a pod that moved and whose old host
//! has not noticed yet) goes to the latest claim. MACs that are on this
//! host's own bridge are never pinned elsewhere.

use std::collections::{BTreeMap, BTreeSet};

use tokio::time::Instant;
use weave_platform::{BridgeFdbState, FdbEntry, FdbTarget, Mac};

use super::choice::Carrier;
use super::Remote;
use crate::mesh::PeerName;

/// The all-zero MAC: the key of the flood list.
const ZERO: Mac = [0; 6];

/// Entries the fast path wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// The flood list.
    pub flood: BTreeSet<Remote>,
    /// Remote entries of single MACs.
    pub remotes: BTreeMap<Mac, Remote>,
    /// MACs pinned to the VXLAN port in the bridge.
    pub pinned: BTreeSet<Mac>,
}

/// Entries found in the kernel, and the MACs on the local bridge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Installed {
    /// The flood list.
    pub flood: BTreeSet<Remote>,
    /// Remote entries of single MACs.
    pub remotes: BTreeMap<Mac, Remote>,
    /// MACs pinned to the VXLAN port.
    pub pinned: BTreeSet<Mac>,
    /// MACs the bridge learned on its other ports (the local pods'), except
    /// the sleeve's TAP port.
    pub local: BTreeSet<Mac>,
}

/// The devices entries belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// Ifindex of the bridge.
    pub bridge: u32,
    /// Ifindex of the VXLAN device.
    pub vxlan: u32,
    /// Ifindex of the sleeve's TAP port, if it runs.
    pub tap: Option<u32>,
    /// The VXLAN device's own UDP port (remote entries without a port use it).
    pub port: u16,
}

/// A change to the kernel's entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Add or replace the remote entry of a MAC.
    SetRemote(Mac, Remote),
    /// Add a destination to the flood list.
    AddFlood(Remote),
    /// Pin a MAC to the VXLAN port.
    Pin(Mac),
    /// Remove a pinned MAC.
    Unpin(Mac),
    /// Remove the remote entry of a MAC.
    DelRemote(Mac, Remote),
    /// Remove a destination from the flood list.
    DelFlood(Remote),
}

/// What the kernel must hold: a heartbeat entry for every candidate, and for
/// every carrier its flood entry, its bridge MAC and its pods' MACs.
pub fn desired(
    local: PeerName,
    candidates: &[(PeerName, Remote)],
    carriers: &[Carrier],
    local_macs: &BTreeSet<Mac>,
) -> Desired {
    let mut d = Desired::default();
    for (name, remote) in candidates {
        d.remotes.insert(name.to_bytes(), *remote);
    }
    let mut owner: BTreeMap<Mac, (Instant, Remote)> = BTreeMap::new();
    for c in carriers {
        d.flood.insert(c.remote);
        if let Some(name) = c.name {
            d.remotes.insert(name.to_bytes(), c.remote);
            d.pinned.insert(name.to_bytes());
        }
        for (mac, since) in &c.macs {
            if local_macs.contains(mac) || *mac == local.to_bytes() || *mac == ZERO {
                continue;
            }
            let claim = (*since, c.remote);
            owner
                .entry(*mac)
                .and_modify(|o| *o = (*o).max(claim))
                .or_insert(claim);
        }
    }
    for (mac, (_, remote)) in owner {
        d.remotes.entry(mac).or_insert(remote);
        d.pinned.insert(mac);
    }
    d
}

impl Installed {
    /// Sorts dumped entries: those of our VXLAN device, our pins, and the
    /// MACs learned on the local pods' ports.
    pub fn read(entries: &[FdbEntry], ports: Ports) -> Installed {
        let mut out = Installed::default();
        for e in entries {
            match e.target {
                FdbTarget::Remote { dst, port } if e.ifindex == ports.vxlan => {
                    let remote = Remote {
                        ip: dst,
                        port: port.unwrap_or(ports.port),
                    };
                    if e.mac == ZERO {
                        out.flood.insert(remote);
                    } else {
                        out.remotes.insert(e.mac, remote);
                    }
                }
                FdbTarget::Bridge { bridge, state } if bridge == ports.bridge => {
                    let pinned = matches!(state, BridgeFdbState::Static | BridgeFdbState::Sticky);
                    if e.ifindex == ports.vxlan && pinned {
                        out.pinned.insert(e.mac);
                    } else if state == BridgeFdbState::Learned
                        && e.ifindex != ports.vxlan
                        && Some(e.ifindex) != ports.tap
                    {
                        out.local.insert(e.mac);
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// What a restarted agent holds: each flood destination with the pinned
    /// MACs that point to it.
    pub fn adoptable(&self) -> BTreeMap<Remote, BTreeSet<Mac>> {
        let mut out: BTreeMap<Remote, BTreeSet<Mac>> =
            self.flood.iter().map(|r| (*r, BTreeSet::new())).collect();
        for (mac, remote) in &self.remotes {
            if self.pinned.contains(mac) {
                if let Some(macs) = out.get_mut(remote) {
                    macs.insert(*mac);
                }
            }
        }
        out
    }
}

/// The operations that turn `installed` into `desired`: additions first
/// (a MAC's remote entry before its pin), removals after (its pin first), so
/// that a frame the bridge sends to the VXLAN port always has somewhere to
/// go.
pub fn diff(installed: &Installed, desired: &Desired) -> Vec<Op> {
    let mut ops = Vec::new();
    for (mac, remote) in &desired.remotes {
        if installed.remotes.get(mac) != Some(remote) {
            ops.push(Op::SetRemote(*mac, *remote));
        }
    }
    for r in desired.flood.difference(&installed.flood) {
        ops.push(Op::AddFlood(*r));
    }
    for m in desired.pinned.difference(&installed.pinned) {
        ops.push(Op::Pin(*m));
    }
    for m in installed.pinned.difference(&desired.pinned) {
        ops.push(Op::Unpin(*m));
    }
    for (mac, remote) in &installed.remotes {
        if !desired.remotes.contains_key(mac) {
            ops.push(Op::DelRemote(*mac, *remote));
        }
    }
    for r in installed.flood.difference(&desired.flood) {
        ops.push(Op::DelFlood(*r));
    }
    ops
}

impl Op {
    /// The kernel entry this operation adds or deletes, and whether it adds.
    pub fn entry(self, ports: Ports) -> (FdbEntry, bool) {
        let remote = |mac: Mac, r: Remote| FdbEntry {
            mac,
            ifindex: ports.vxlan,
            target: FdbTarget::Remote {
                dst: r.ip,
                port: (r.port != ports.port).then_some(r.port),
            },
        };
        let pin = |mac: Mac| FdbEntry {
            mac,
            ifindex: ports.vxlan,
            target: FdbTarget::Bridge {
                bridge: ports.bridge,
                state: BridgeFdbState::Sticky,
            },
        };
        match self {
            Op::SetRemote(m, r) => (remote(m, r), true),
            Op::AddFlood(r) => (remote(ZERO, r), true),
            Op::Pin(m) => (pin(m), true),
            Op::Unpin(m) => (pin(m), false),
            Op::DelRemote(m, r) => (remote(m, r), false),
            Op::DelFlood(r) => (remote(ZERO, r), false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(i: u8) -> PeerName {
        PeerName::from_bytes([2, 0, 0, 0, 0, i])
    }

    fn r(i: u8) -> Remote {
        Remote {
            ip: std::net::IpAddr::from([10, 0, 0, i]),
            port: 6784,
        }
    }

    const PORTS: Ports = Ports {
        bridge: 2,
        vxlan: 3,
        tap: Some(4),
        port: 6784,
    };

    #[test]
    fn carriers_get_flood_pins_and_remotes_candidates_only_heartbeat_entries() {
        let t = Instant::now();
        let pod2: Mac = [0x0a, 0, 0, 0, 2, 1];
        let local_pod: Mac = [0x0a, 0, 0, 0, 1, 1];
        let carriers = [Carrier {
            name: Some(n(2)),
            remote: r(2),
            macs: vec![(pod2, t), (local_pod, t)],
        }];
        let local = BTreeSet::from([local_pod]);
        let d = desired(n(1), &[(n(2), r(2)), (n(3), r(3))], &carriers, &local);
        assert_eq!(d.flood, BTreeSet::from([r(2)]));
        assert_eq!(
            d.remotes,
            BTreeMap::from([
                (n(2).to_bytes(), r(2)),
                (n(3).to_bytes(), r(3)),
                (pod2, r(2))
            ])
        );
        assert_eq!(
            d.pinned,
            BTreeSet::from([n(2).to_bytes(), pod2]),
            "a local pod's MAC is never pinned elsewhere; a candidate's name only when carried"
        );
    }

    #[test]
    fn the_latest_claim_of_a_moved_mac_wins() {
        let t = Instant::now();
        let moved: Mac = [0x0a, 0, 0, 0, 9, 9];
        let carriers = [
            Carrier {
                name: Some(n(2)),
                remote: r(2),
                macs: vec![(moved, t)],
            },
            Carrier {
                name: Some(n(3)),
                remote: r(3),
                macs: vec![(moved, t + std::time::Duration::from_secs(1))],
            },
        ];
        let d = desired(n(1), &[], &carriers, &BTreeSet::new());
        assert_eq!(d.remotes.get(&moved), Some(&r(3)));
    }

    #[test]
    fn read_diff_and_apply_reaches_the_desired_state() {
        let t = Instant::now();
        let pod2: Mac = [0x0a, 0, 0, 0, 2, 1];
        let stale: Mac = [0x0a, 0, 0, 0, 2, 9];
        let entries = [
            // flood to a peer that is no longer carried
            FdbEntry {
                mac: ZERO,
                ifindex: 3,
                target: FdbTarget::Remote {
                    dst: r(4).ip,
                    port: None,
                },
            },
            // a stale pin and its remote entry
            FdbEntry {
                mac: stale,
                ifindex: 3,
                target: FdbTarget::Remote {
                    dst: r(4).ip,
                    port: None,
                },
            },
            FdbEntry {
                mac: stale,
                ifindex: 3,
                target: FdbTarget::Bridge {
                    bridge: 2,
                    state: BridgeFdbState::Sticky,
                },
            },
            // a local pod, learned on its port; one learned on the TAP port
            FdbEntry {
                mac: [0x0a, 0, 0, 0, 1, 1],
                ifindex: 7,
                target: FdbTarget::Bridge {
                    bridge: 2,
                    state: BridgeFdbState::Learned,
                },
            },
            FdbEntry {
                mac: [0x0a, 0, 0, 0, 5, 5],
                ifindex: 4,
                target: FdbTarget::Bridge {
                    bridge: 2,
                    state: BridgeFdbState::Learned,
                },
            },
        ];
        let installed = Installed::read(&entries, PORTS);
        assert_eq!(installed.local, BTreeSet::from([[0x0a, 0, 0, 0, 1, 1]]));
        assert_eq!(
            installed.adoptable(),
            BTreeMap::from([(r(4), BTreeSet::from([stale]))])
        );
        let carriers = [Carrier {
            name: Some(n(2)),
            remote: r(2),
            macs: vec![(pod2, t)],
        }];
        let d = desired(n(1), &[(n(2), r(2))], &carriers, &installed.local);
        let ops = diff(&installed, &d);
        // additions before removals, a remote entry before its pin
        let first_unpin = ops.iter().position(|o| matches!(o, Op::Unpin(_))).unwrap();
        let last_add = ops
            .iter()
            .rposition(|o| matches!(o, Op::SetRemote(..) | Op::AddFlood(_) | Op::Pin(_)))
            .unwrap();
        assert!(last_add < first_unpin, "{ops:?}");
        // applying the ops to the installed state yields the desired one
        let mut after = installed.clone();
        for op in &ops {
            match *op {
                Op::SetRemote(m, r) => {
                    after.remotes.insert(m, r);
                }
                Op::AddFlood(r) => {
                    after.flood.insert(r);
                }
                Op::Pin(m) => {
                    after.pinned.insert(m);
                }
                Op::Unpin(m) => {
                    after.pinned.remove(&m);
                }
                Op::DelRemote(m, _) => {
                    after.remotes.remove(&m);
                }
                Op::DelFlood(r) => {
                    after.flood.remove(&r);
                }
            }
        }
        assert_eq!(
            (&after.flood, &after.remotes, &after.pinned),
            (&d.flood, &d.remotes, &d.pinned)
        );
        assert!(diff(&after, &d).is_empty(), "nothing left to do");
        // the device's own port is written without a port
        let (e, add) = Op::AddFlood(r(2)).entry(PORTS);
        assert!(add);
        assert_eq!(
            e.target,
            FdbTarget::Remote {
                dst: r(2).ip,
                port: None
            }
        );
    }
}
