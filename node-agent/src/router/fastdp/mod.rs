// SPDX-License-Identifier: Apache-2.0
//! The fast path's I/O: the VXLAN device on the bridge (`setup.rs`), and
//! [`run`], the task around the sans-IO [`Choice`] (`crate::fastdp`).
//!
//! The task owns a packet socket on the bridge for heartbeat frames (they
//! arrive from the VXLAN port addressed to the bridge's MAC, the peer name;
//! no other traffic reaches user space), its registration on the gossip
//! port (adverts to and from each neighbour), and a netlink handle. It
//! feeds the choice with the mesh's neighbours, adverts, frames and time,
//! sends the heartbeats it returns through the VXLAN device, and after
//! every change (and once a second, which also finds the pods' MACs on the
//! bridge) makes the kernel's forwarding entries what
//! `fastdp::plan` says: read, diff, apply.
//!
//! The sleeve is told which peers the kernel carries (it sends them no
//! copies of flooded frames) in the order that never loses a frame: a peer
//! leaving the kernel is withdrawn from that set before its entries go, a
//! peer joining it is added after its entries are in place. In between, a
//! flood may reach a peer twice, never not at all.
//!
//! Invariant: nothing here removes an entry because the agent is starting
//! or stopping; entries follow decisions only, so the kernel keeps
//! forwarding across restarts.

mod setup;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use weave_platform::{AsyncPacketSocket, Mac, Netlink, PacketSocket};

pub use self::setup::{setup, FastdpConfig, VXLAN_NAME};
use crate::fastdp::advert::{Advert, MAX_MACS};
use crate::fastdp::choice::{Action, Choice, Received, Settings, Timing};
use crate::fastdp::heartbeat::ETHERTYPE;
use crate::fastdp::plan::{self, Installed, Ports};
use crate::fastdp::{Encap, Mode, Reason, VNI};
use crate::mesh::gossip::{GossipEvent, GossipTo, Registration};
use crate::mesh::overlay::OverlayView;
use crate::mesh::{ConnId, PeerName};
use crate::router::sleeve::Sleeve;

/// How often the bridge's entries are read (the pods' MACs found, drift
/// repaired).
const SCAN: Duration = Duration::from_secs(1);
/// How often the advert is repeated to every neighbour.
const READVERTISE: Duration = Duration::from_secs(10);

/// The fast path as the report sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// Each neighbour's mode.
    pub modes: BTreeMap<PeerName, Mode>,
    /// Addresses whose entries are kept without a connection.
    pub held: Vec<String>,
    /// Flood-list entries, remote MAC entries and pinned MACs installed.
    pub entries: (usize, usize, usize),
    /// MACs on the local bridge (announced to neighbours).
    pub local_macs: usize,
}

/// The fast path, shared by its task and the report.
#[derive(Debug)]
pub struct Fastdp {
    local: PeerName,
    port: u16,
    mtu: u32,
    available: Result<Ports, Reason>,
    status: Mutex<Status>,
    /// Heartbeats sent, heartbeats answered, answers received, frames ignored.
    pub(crate) frames: [AtomicU64; 4],
    /// Changes between the fast path and the sleeve.
    pub(crate) mode_changes: AtomicU64,
    /// Forwarding-entry changes that failed.
    pub(crate) fdb_errors: AtomicU64,
}

impl Fastdp {
    fn new(local: PeerName, port: u16, mtu: u32, available: Result<Ports, Reason>) -> Self {
        Self {
            local,
            port,
            mtu,
            available,
            status: Mutex::new(Status::default()),
            frames: Default::default(),
            mode_changes: AtomicU64::new(0),
            fdb_errors: AtomicU64::new(0),
        }
    }

    /// Why the fast path does not run here, if it does not.
    pub fn unavailable(&self) -> Option<Reason> {
        self.available.err()
    }

    /// Ifindex of the VXLAN device, when it runs.
    pub fn ifindex(&self) -> Option<u32> {
        self.available.ok().map(|p| p.vxlan)
    }

    /// The overlay MTU it carries (the pods'; full-size heartbeats prove
    /// a connection's path carries it before the fast path takes it).
    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    /// Its UDP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A copy of the status.
    pub fn status(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The mode of the connection to `peer`: what the choice says, or,
    /// before it has seen the connection, the local reason.
    pub fn mode(&self, peer: &PeerName) -> Mode {
        if let Err(r) = self.available {
            return Mode::Sleeve(r);
        }
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .modes
            .get(peer)
            .copied()
            .unwrap_or(Mode::Sleeve(Reason::Probing))
    }

    fn set_status(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.status.lock().unwrap_or_else(PoisonError::into_inner));
    }

    fn count(&self, i: usize) {
        self.frames[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// The loop's state besides the choice.
struct Driver<N> {
    shared: Arc<Fastdp>,
    sleeve: Arc<Sleeve>,
    netlink: N,
    reg: Registration,
    socket: Option<AsyncPacketSocket>,
    /// Connections of the neighbours, to send adverts on.
    conns: BTreeMap<PeerName, ConnId>,
    /// MACs on the local bridge, as last advertised.
    local_macs: BTreeSet<Mac>,
}

/// Runs the fast path until `cancel` fires. Without a device it still
/// answers neighbours with an advert saying why, so they show the reason.
pub async fn run(
    shared: Arc<Fastdp>,
    sleeve: Arc<Sleeve>,
    reg: Registration,
    mut views: watch::Receiver<Arc<OverlayView>>,
    netlink: impl Netlink,
    cancel: CancellationToken,
) -> crate::Result<()> {
    let now = Instant::now();
    let settings = Settings {
        local: shared.local,
        available: shared.available.map(|p| p.port),
        encrypted: sleeve.encrypted(),
        full_len: u16::try_from(shared.mtu + 14).unwrap_or(u16::MAX),
        timing: Timing::default(),
    };
    let mut choice = Choice::new(settings, now);
    let socket = match shared.available {
        Ok(ports) => {
            let s = PacketSocket::bind(ports.bridge, ETHERTYPE)?;
            Some(AsyncPacketSocket::new(s)?)
        }
        Err(_) => None,
    };
    let mut d = Driver {
        shared,
        sleeve,
        netlink,
        reg,
        socket,
        conns: BTreeMap::new(),
        local_macs: BTreeSet::new(),
    };
    if let Ok(ports) = d.shared.available {
        // Whatever a previous agent left carries pod traffic right now:
        // hold it until the connections confirm or refute it.
        match d.netlink.fdb_entries().await {
            Ok(entries) => {
                let found = Installed::read(&entries, ports);
                let adopted = found.adoptable();
                if !adopted.is_empty() {
                    info!(
                        peers = adopted.len(),
                        "adopted the fast path's forwarding entries"
                    );
                }
                d.local_macs = found.local.clone();
                choice.adopt(adopted, now);
            }
            Err(e) => warn!(error = %e, "cannot read the forwarding entries"),
        }
    }
    let mut scan = tokio::time::interval(SCAN);
    let mut readvertise = tokio::time::interval(READVERTISE);
    let mut buf = vec![0u8; 65536];
    loop {
        let wake = choice.poll_timeout();
        let mut rescan = false;
        tokio::select! {
            () = cancel.cancelled() => break,
            changed = views.changed() => {
                if changed.is_err() {
                    break;
                }
                let view = views.borrow_and_update().clone();
                choice.sync(&view.neighbours, Instant::now());
            }
            ev = d.reg.inbox.recv() => match ev {
                Some(ev) => d.on_gossip(ev, &mut choice),
                None => break,
            },
            n = recv(d.socket.as_ref(), &mut buf) => match n {
                Ok(n) => {
                    let got = choice.on_frame(&buf[..n], Instant::now());
                    d.shared.count(match got {
                        Received::Heartbeat => 1,
                        Received::Ack => 2,
                        Received::Ignored => 3,
                    });
                }
                Err(e) => debug!(error = %e, "heartbeat socket"),
            },
            () = tokio::time::sleep_until(wake) => choice.tick(Instant::now()),
            _ = scan.tick() => rescan = true,
            _ = readvertise.tick() => {
                let conns: Vec<ConnId> = d.conns.values().copied().collect();
                for conn in conns {
                    d.advertise(conn);
                }
            }
        }
        if choice.take_dirty() || rescan {
            d.reconcile(&choice).await;
        }
        d.act(&mut choice);
    }
    info!("fast datapath stopped; its entries stay for the next agent");
    Ok(())
}

/// Waits for a heartbeat frame, forever when there is no socket.
async fn recv(socket: Option<&AsyncPacketSocket>, buf: &mut [u8]) -> std::io::Result<usize> {
    match socket {
        Some(s) => s.recv(buf).await,
        None => std::future::pending().await,
    }
}

impl<N: Netlink> Driver<N> {
    /// The advert of this peer.
    fn advert(&self) -> Advert {
        Advert {
            available: self.shared.available.map(|_| ()).map_err(Some),
            vni: VNI,
            port: self.shared.port,
            encaps: if self.shared.available.is_ok() {
                vec![Encap::Vxlan]
            } else {
                Vec::new()
            },
            macs: self.local_macs.iter().take(MAX_MACS).copied().collect(),
        }
    }

    fn advertise(&self, conn: ConnId) {
        // A full queue drops it; the next repetition repairs that.
        let _ = self
            .reg
            .sender
            .send(GossipTo::Conn(conn), self.advert().encode());
    }

    fn on_gossip(&mut self, ev: GossipEvent, choice: &mut Choice) {
        match ev {
            GossipEvent::NeighbourUp { conn, peer } => {
                self.conns.insert(peer, conn);
                self.advertise(conn);
            }
            GossipEvent::Received { conn, from, body } => match Advert::decode(&body) {
                Ok(advert) => {
                    self.conns.insert(from, conn);
                    choice.on_advert(from, advert, Instant::now());
                }
                Err(e) => debug!(peer = %from, error = %e, "dropping a fast-path advert"),
            },
            GossipEvent::Reachable(reachable) => {
                self.conns.retain(|p, _| reachable.contains(p));
            }
        }
    }

    /// Carries out what the choice decided: heartbeats out, changes logged.
    fn act(&mut self, choice: &mut Choice) {
        while let Some(action) = choice.poll_action() {
            match action {
                Action::Send(frame) => {
                    if let (Some(s), Ok(ports)) = (&self.socket, self.shared.available) {
                        match s.send_to(ports.vxlan, &frame) {
                            Ok(_) => self.shared.count(0),
                            Err(e) => debug!(error = %e, "cannot send a heartbeat"),
                        }
                    }
                }
                Action::Changed { peer, from, to } => {
                    let switched = from.is_some_and(|f| f.name() != to.name());
                    if switched {
                        self.shared.mode_changes.fetch_add(1, Ordering::Relaxed);
                        info!(%peer, from = %from.map(|m| m.to_string()).unwrap_or_default(), to = %to, "connection mode changed");
                    } else {
                        debug!(%peer, mode = %to, "connection mode");
                    }
                }
                Action::Held { peer, remote } => {
                    info!(%peer, %remote, "connection closed; the kernel keeps forwarding to it for now");
                }
                Action::Released { peer, remote } => {
                    info!(peer = ?peer.map(|p| p.to_string()), %remote, "held fast path released");
                }
            }
        }
        let modes = choice.modes();
        let held = choice
            .held()
            .into_iter()
            .map(|(p, r)| match p {
                Some(p) => format!("{p}@{r}"),
                None => r.to_string(),
            })
            .collect();
        self.shared.set_status(|s| {
            s.modes = modes;
            s.held = held;
        });
    }

    /// Reads the kernel's entries, finds the pods' MACs, and applies what
    /// the plan wants; tells the sleeve which peers the kernel carries.
    async fn reconcile(&mut self, choice: &Choice) {
        let kernel = choice.kernel_peers();
        let before = self.sleeve.kernel_peers();
        // Peers leaving the kernel: the sleeve floods to them from now on.
        self.sleeve
            .set_kernel_peers(before.intersection(&kernel).copied().collect());
        let Ok(ports) = self.shared.available else {
            return;
        };
        let entries = match self.netlink.fdb_entries().await {
            Ok(e) => e,
            Err(e) => {
                warn!(error = %e, "cannot read the forwarding entries");
                return;
            }
        };
        let installed = Installed::read(&entries, ports);
        if installed.local != self.local_macs {
            debug!(macs = installed.local.len(), "local MACs changed");
            self.local_macs = installed.local.clone();
            let conns: Vec<ConnId> = self.conns.values().copied().collect();
            for conn in conns {
                self.advertise(conn);
            }
        }
        let now = Instant::now();
        let want = plan::desired(
            self.shared.local,
            &choice.candidates(now),
            &choice.carriers(),
            &installed.local,
        );
        for op in plan::diff(&installed, &want) {
            let (entry, add) = op.entry(ports);
            let done = if add {
                self.netlink.fdb_add(&entry).await
            } else {
                self.netlink.fdb_del(&entry).await
            };
            match done {
                Ok(()) => debug!(?op, "forwarding entry"),
                Err(e) => {
                    self.shared.fdb_errors.fetch_add(1, Ordering::Relaxed);
                    warn!(?op, error = %e, "cannot change a forwarding entry");
                }
            }
        }
        // Peers joining the kernel: their entries are in place now.
        self.sleeve.set_kernel_peers(kernel);
        let local = self.local_macs.len();
        self.shared.set_status(|s| {
            s.entries = (want.flood.len(), want.remotes.len(), want.pinned.len());
            s.local_macs = local;
        });
    }
}
