// SPDX-License-Identifier: Apache-2.0
//! The gossip port: how subsystems (IPAM today, weaveDNS next) gossip over
//! the mesh without the mesh or the router knowing them, in the spirit of
//! weaveworks/mesh's `Gossiper`.
//!
//! A subsystem registers a [`Channel`] with the [`GossipPort`] before the
//! router starts and gets a [`Registration`]: its own typed inbox of
//! [`GossipEvent`]s (gossip received on its channel, new neighbours to send
//! its state to, the set of reachable peers) and a [`GossipSender`] that
//! queues bodies for the mesh to send on its channel. The router owns the
//! port and only multiplexes: it hands each delivery to the inbox of its
//! channel and each queued body to the mesh.
//!
//! Invariants: a subsystem sees exactly the gossip of its own channel; gossip
//! of a channel nobody registered is dropped and counted, never delivered;
//! the topology channel belongs to the mesh and cannot be registered. Sends
//! and deliveries never block the router: gossip is repeated by
//! anti-entropy, so a message dropped because a queue is full is repaired
//! later. This module holds in-process queues only, no sockets.

use std::collections::{BTreeMap, BTreeSet};

use tokio::sync::mpsc;
use tracing::debug;

use super::core::{ConnId, CHANNEL_TOPOLOGY};
use super::peer::PeerName;

/// Events queued per subsystem before the router drops gossip for it.
const INBOX: usize = 4096;
/// Bodies queued by all subsystems before a send is refused.
const OUTGOING: usize = 1024;

/// A gossip channel: the byte that says which subsystem a gossip message
/// belongs to (`PROTOCOL.md`, gossip message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Channel(pub u8);

impl Channel {
    /// The topology, handled by the mesh itself.
    pub const TOPOLOGY: Channel = Channel(CHANNEL_TOPOLOGY);
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What a subsystem's inbox receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GossipEvent {
    /// Gossip on the subsystem's channel from a neighbour.
    Received {
        /// The connection it came on (to answer on).
        conn: ConnId,
        /// The neighbour that sent it.
        from: PeerName,
        /// The body, for the subsystem to decode.
        body: Vec<u8>,
    },
    /// A connection was established: send the neighbour your state.
    NeighbourUp {
        /// The new connection.
        conn: ConnId,
        /// The neighbour.
        peer: PeerName,
    },
    /// The peers reachable over established links (not us) changed.
    Reachable(BTreeSet<PeerName>),
}

/// Recipients of a gossip body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GossipTo {
    /// One connection (an answer, or a new neighbour).
    Conn(ConnId),
    /// A random subset of neighbours, as many as topology gossip uses.
    Fanout,
    /// One random neighbour (anti-entropy).
    Random,
}

/// A body a subsystem queued for the mesh to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The subsystem's channel.
    pub channel: Channel,
    /// To whom.
    pub to: GossipTo,
    /// The body.
    pub body: Vec<u8>,
}

/// A subsystem's handle for sending gossip on its channel.
#[derive(Debug, Clone)]
pub struct GossipSender {
    channel: Channel,
    tx: mpsc::Sender<Outgoing>,
}

impl GossipSender {
    /// The channel this handle sends on.
    pub fn channel(&self) -> Channel {
        self.channel
    }

    /// Queues `body` for `to`; false if the router is busy or gone (the
    /// body is dropped: anti-entropy repeats it).
    pub fn send(&self, to: GossipTo, body: Vec<u8>) -> bool {
        let out = Outgoing {
            channel: self.channel,
            to,
            body,
        };
        self.tx.try_send(out).is_ok()
    }
}

/// What a subsystem gets for its channel.
#[derive(Debug)]
pub struct Registration {
    /// Gossip, neighbours and reachability for this subsystem only.
    pub inbox: mpsc::Receiver<GossipEvent>,
    /// Sends on this subsystem's channel.
    pub sender: GossipSender,
}

/// Why a channel cannot be registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// The mesh's own channel.
    #[error("gossip channel {0} is the topology's")]
    Reserved(Channel),
    /// Somebody registered it already.
    #[error("gossip channel {0} is registered twice")]
    Taken(Channel),
}

/// Counters of the port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Gossip on a channel nobody registered (dropped).
    pub unknown_channel: u64,
    /// Events dropped because a subsystem's inbox was full.
    pub inbox_full: u64,
}

/// The router's side of the port: the inbox of every registered channel
/// and the queue of bodies to send.
#[derive(Debug)]
pub struct GossipPort {
    inboxes: BTreeMap<Channel, mpsc::Sender<GossipEvent>>,
    out_tx: mpsc::Sender<Outgoing>,
    out_rx: mpsc::Receiver<Outgoing>,
    /// The reachable set the inboxes last heard about.
    reachable: BTreeSet<PeerName>,
    stats: PortStats,
}

impl Default for GossipPort {
    fn default() -> Self {
        Self::new()
    }
}

impl GossipPort {
    /// A port with no channel registered.
    pub fn new() -> Self {
        let (out_tx, out_rx) = mpsc::channel(OUTGOING);
        Self {
            inboxes: BTreeMap::new(),
            out_tx,
            out_rx,
            reachable: BTreeSet::new(),
            stats: PortStats::default(),
        }
    }

    /// Registers a subsystem on `channel`.
    pub fn register(&mut self, channel: Channel) -> Result<Registration, PortError> {
        if channel == Channel::TOPOLOGY {
            return Err(PortError::Reserved(channel));
        }
        if self.inboxes.contains_key(&channel) {
            return Err(PortError::Taken(channel));
        }
        let (tx, inbox) = mpsc::channel(INBOX);
        self.inboxes.insert(channel, tx);
        Ok(Registration {
            inbox,
            sender: GossipSender {
                channel,
                tx: self.out_tx.clone(),
            },
        })
    }

    /// Whether any subsystem registered.
    pub fn is_empty(&self) -> bool {
        self.inboxes.is_empty()
    }

    /// Counters.
    pub fn stats(&self) -> PortStats {
        self.stats
    }

    /// Hands gossip received on `channel` to its subsystem; drops and
    /// counts gossip of an unknown channel. Returns whether it was queued.
    pub fn deliver(&mut self, conn: ConnId, from: PeerName, channel: u8, body: Vec<u8>) -> bool {
        let channel = Channel(channel);
        let Some(inbox) = self.inboxes.get(&channel) else {
            self.stats.unknown_channel += 1;
            debug!(peer = %from, %channel, "gossip on a channel nobody registered dropped");
            return false;
        };
        let queued = inbox
            .try_send(GossipEvent::Received { conn, from, body })
            .is_ok();
        if !queued {
            self.stats.inbox_full += 1;
        }
        queued
    }

    /// Tells every subsystem about a new neighbour.
    pub fn neighbour_up(&mut self, conn: ConnId, peer: PeerName) {
        for inbox in self.inboxes.values() {
            if inbox
                .try_send(GossipEvent::NeighbourUp { conn, peer })
                .is_err()
            {
                self.stats.inbox_full += 1;
            }
        }
    }

    /// Tells every subsystem the reachable set if it changed since the last
    /// time; a set that could not be queued everywhere is sent again at the
    /// next call.
    pub fn set_reachable(&mut self, now: &BTreeSet<PeerName>) {
        if *now == self.reachable || self.inboxes.is_empty() {
            return;
        }
        let mut all = true;
        for inbox in self.inboxes.values() {
            all &= inbox.try_send(GossipEvent::Reachable(now.clone())).is_ok();
        }
        if all {
            self.reachable.clone_from(now);
        } else {
            self.stats.inbox_full += 1;
            self.reachable.clear();
        }
    }

    /// The next body a subsystem queued (cancel-safe; pending forever when
    /// nothing is queued, since the port holds a sender itself).
    pub async fn outgoing(&mut self) -> Option<Outgoing> {
        self.out_rx.recv().await
    }

    /// A body queued already, if any.
    pub fn try_outgoing(&mut self) -> Option<Outgoing> {
        self.out_rx.try_recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u64) -> PeerName {
        PeerName::from_u64(n)
    }

    fn drain(inbox: &mut mpsc::Receiver<GossipEvent>) -> Vec<GossipEvent> {
        let mut out = Vec::new();
        while let Ok(ev) = inbox.try_recv() {
            out.push(ev);
        }
        out
    }

    #[test]
    fn each_subsystem_receives_exactly_its_channel() {
        let mut port = GossipPort::new();
        let mut ipam = port.register(Channel(1)).expect("free channel");
        let mut dns = port.register(Channel(2)).expect("free channel");
        assert!(port.deliver(ConnId(7), peer(1), 1, b"ipam-1".to_vec()));
        assert!(port.deliver(ConnId(8), peer(2), 2, b"dns-1".to_vec()));
        assert!(port.deliver(ConnId(7), peer(1), 1, b"ipam-2".to_vec()));
        assert_eq!(
            drain(&mut ipam.inbox),
            vec![
                GossipEvent::Received {
                    conn: ConnId(7),
                    from: peer(1),
                    body: b"ipam-1".to_vec()
                },
                GossipEvent::Received {
                    conn: ConnId(7),
                    from: peer(1),
                    body: b"ipam-2".to_vec()
                },
            ]
        );
        assert_eq!(
            drain(&mut dns.inbox),
            vec![GossipEvent::Received {
                conn: ConnId(8),
                from: peer(2),
                body: b"dns-1".to_vec()
            }]
        );
        assert_eq!(port.stats(), PortStats::default());
    }

    #[test]
    fn an_unknown_channel_is_dropped_and_counted() {
        let mut port = GossipPort::new();
        let mut ipam = port.register(Channel(1)).expect("free channel");
        assert!(!port.deliver(ConnId(1), peer(1), 9, b"who?".to_vec()));
        assert!(!port.deliver(ConnId(1), peer(1), 9, b"who?".to_vec()));
        assert_eq!(port.stats().unknown_channel, 2);
        assert!(drain(&mut ipam.inbox).is_empty(), "nothing leaks elsewhere");
    }

    #[test]
    fn the_topology_channel_and_a_taken_one_cannot_be_registered() {
        let mut port = GossipPort::new();
        assert_eq!(
            port.register(Channel::TOPOLOGY).err(),
            Some(PortError::Reserved(Channel(0)))
        );
        let _ipam = port.register(Channel(1)).expect("free channel");
        assert_eq!(
            port.register(Channel(1)).err(),
            Some(PortError::Taken(Channel(1)))
        );
    }

    #[test]
    fn neighbours_and_reachability_go_to_everybody_once() {
        let mut port = GossipPort::new();
        let mut a = port.register(Channel(1)).expect("free channel");
        let mut b = port.register(Channel(2)).expect("free channel");
        port.neighbour_up(ConnId(3), peer(3));
        let set: BTreeSet<PeerName> = [peer(3)].into();
        port.set_reachable(&set);
        port.set_reachable(&set);
        let want = vec![
            GossipEvent::NeighbourUp {
                conn: ConnId(3),
                peer: peer(3),
            },
            GossipEvent::Reachable(set.clone()),
        ];
        assert_eq!(drain(&mut a.inbox), want);
        assert_eq!(drain(&mut b.inbox), want);
        port.set_reachable(&BTreeSet::new());
        assert_eq!(
            drain(&mut a.inbox),
            vec![GossipEvent::Reachable(BTreeSet::new())]
        );
    }

    #[test]
    fn a_full_inbox_drops_and_the_reachable_set_is_retried() {
        let mut port = GossipPort::new();
        let mut a = port.register(Channel(1)).expect("free channel");
        for i in 0..INBOX {
            assert!(port.deliver(ConnId(1), peer(1), 1, vec![u8::try_from(i % 256).unwrap()]));
        }
        assert!(!port.deliver(ConnId(1), peer(1), 1, vec![]));
        let set: BTreeSet<PeerName> = [peer(4)].into();
        port.set_reachable(&set);
        assert_eq!(port.stats().inbox_full, 2);
        assert_eq!(drain(&mut a.inbox).len(), INBOX);
        port.set_reachable(&set);
        assert_eq!(drain(&mut a.inbox), vec![GossipEvent::Reachable(set)]);
    }

    #[tokio::test]
    async fn senders_queue_bodies_with_their_channel() {
        let mut port = GossipPort::new();
        let a = port.register(Channel(1)).expect("free channel");
        let b = port.register(Channel(5)).expect("free channel");
        assert!(a.sender.send(GossipTo::Fanout, b"x".to_vec()));
        assert!(b.sender.send(GossipTo::Conn(ConnId(2)), b"y".to_vec()));
        assert_eq!(
            port.outgoing().await,
            Some(Outgoing {
                channel: Channel(1),
                to: GossipTo::Fanout,
                body: b"x".to_vec()
            })
        );
        assert_eq!(
            port.try_outgoing(),
            Some(Outgoing {
                channel: Channel(5),
                to: GossipTo::Conn(ConnId(2)),
                body: b"y".to_vec()
            })
        );
        assert_eq!(port.try_outgoing(), None);
    }
}
