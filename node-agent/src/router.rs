// SPDX-License-Identifier: Apache-2.0
//! The socket layer of the mesh: a TCP listener, one reader and one writer
//! task per connection, and an actor task that owns the [`Mesh`] and is the
//! only one to touch it.
//!
//! Everything the actor learns (accepted sockets, dial results, bytes,
//! closes, API commands) arrives on channels; everything the mesh decides
//! comes back as [`Action`]s that the actor carries out. The actor never
//! blocks: writes go through a bounded queue per connection, and a peer that
//! lets its queue fill up is disconnected rather than allowed to stall
//! everybody else.

pub mod sleeve;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::ipam::allocator::MeshEvent;
use crate::mesh::core::CHANNEL_IPAM;
use crate::mesh::overlay::OverlayView;
use crate::mesh::{Action, ConnId, Mesh, PeerName};
use crate::sleeve::path::PathEvent;

/// Frames queued per connection before the peer counts as stuck.
const SEND_QUEUE: usize = 1024;
/// How long a dial may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Read buffer per connection.
const READ_CHUNK: usize = 64 * 1024;

/// A request from the local API to the router.
#[derive(Debug)]
pub enum Command {
    /// Send back a report.
    Report(oneshot::Sender<weave_api::Report>),
    /// Add targets (optionally replacing the direct set); replies with the targets after.
    Connect {
        /// Addresses to connect to.
        addrs: Vec<SocketAddr>,
        /// Replace the direct target set.
        replace: bool,
        /// Reply channel.
        reply: oneshot::Sender<Vec<SocketAddr>>,
    },
    /// Forget targets; replies with the targets after.
    Forget {
        /// Addresses to forget.
        addrs: Vec<SocketAddr>,
        /// Reply channel.
        reply: oneshot::Sender<Vec<SocketAddr>>,
    },
    /// The data plane verified or lost the path to a neighbour.
    Path(PathEvent),
    /// Send gossip of an application channel.
    Gossip {
        /// The channel.
        channel: u8,
        /// To whom.
        to: GossipTo,
        /// The body.
        body: Vec<u8>,
    },
}

/// Recipients of application gossip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GossipTo {
    /// One connection.
    Conn(ConnId),
    /// A random subset of neighbours.
    Fanout,
    /// One random neighbour (anti-entropy).
    Random,
}

/// What connection tasks tell the actor.
#[derive(Debug)]
enum Event {
    Accepted(TcpStream, SocketAddr),
    Dialled(ConnId, std::io::Result<TcpStream>),
    Bytes(ConnId, Vec<u8>),
    Closed(ConnId, String),
}

/// The live half of a connection as the actor sees it.
struct Link {
    tx: mpsc::Sender<Vec<u8>>,
    reader: AbortHandle,
}

/// The router: owns the mesh and its sockets.
pub struct Router {
    mesh: Mesh,
    listener: TcpListener,
    commands: mpsc::Receiver<Command>,
    views: Option<watch::Sender<Arc<OverlayView>>>,
    sleeve: Option<Arc<sleeve::Shared>>,
    ipam: Option<mpsc::Sender<MeshEvent>>,
}

impl Router {
    /// A router around `mesh`, listening on `listener`, taking API commands
    /// from `commands`.
    pub fn new(mesh: Mesh, listener: TcpListener, commands: mpsc::Receiver<Command>) -> Self {
        Self {
            mesh,
            listener,
            commands,
            views: None,
            sleeve: None,
            ipam: None,
        }
    }

    /// Hands IPAM gossip, new neighbours and reachability to `ipam`.
    pub fn with_ipam(mut self, ipam: mpsc::Sender<MeshEvent>) -> Self {
        self.ipam = Some(ipam);
        self
    }

    /// Publishes the mesh's overlay views to the sleeve on `views`, and adds
    /// the sleeve's figures to reports.
    pub fn with_sleeve(
        mut self,
        views: watch::Sender<Arc<OverlayView>>,
        sleeve: Arc<sleeve::Shared>,
    ) -> Self {
        self.views = Some(views);
        self.sleeve = Some(sleeve);
        self
    }

    /// Runs until `cancel` fires.
    pub async fn run(self, cancel: CancellationToken) -> crate::Result<()> {
        let Self {
            mut mesh,
            listener,
            mut commands,
            views,
            sleeve,
            ipam,
        } = self;
        let mut reachable = std::collections::BTreeSet::new();
        let (events_tx, mut events) = mpsc::channel::<Event>(1024);
        let accept_tx = events_tx.clone();
        let accept_cancel = cancel.clone();
        let acceptor = tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = accept_cancel.cancelled() => return,
                    res = listener.accept() => match res {
                        Ok((stream, addr)) => {
                            if accept_tx.send(Event::Accepted(stream, addr)).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    },
                }
            }
        });
        let mut links: HashMap<ConnId, Link> = HashMap::new();
        apply(&mut mesh, &mut links, &events_tx, ipam.as_ref());
        loop {
            let deadline = mesh.poll_timeout();
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep_until(deadline) => mesh.tick(Instant::now()),
                Some(cmd) = commands.recv() => on_command(&mut mesh, cmd, sleeve.as_deref()),
                Some(ev) = events.recv() => {
                    let now = Instant::now();
                    match ev {
                        Event::Accepted(stream, addr) => {
                            if let Some(id) = mesh.accepted(addr, now) {
                                links.insert(id, start_link(id, stream, &events_tx));
                            }
                        }
                        Event::Dialled(id, res) => {
                            match res {
                                // The mesh may have given up on this attempt
                                // meanwhile (handshake timeout): then the socket
                                // is dropped here.
                                Ok(stream) if mesh.has_conn(id) => {
                                    links.insert(id, start_link(id, stream, &events_tx));
                                    mesh.dialled(id, now);
                                }
                                Ok(_) => {}
                                Err(e) => mesh.dial_failed(id, &e.to_string(), now),
                            }
                        }
                        Event::Bytes(id, data) => mesh.received(id, &data, now),
                        Event::Closed(id, reason) => {
                            if let Some(link) = links.remove(&id) {
                                link.reader.abort();
                            }
                            mesh.closed(id, &reason, now);
                        }
                    }
                }
            }
            apply(&mut mesh, &mut links, &events_tx, ipam.as_ref());
            if let Some(ipam) = &ipam {
                let now_reachable = mesh.reachable_peers();
                if now_reachable != reachable {
                    reachable.clone_from(&now_reachable);
                    if ipam.try_send(MeshEvent::Reachable(now_reachable)).is_err() {
                        // Retried on the next change; the set is small.
                        reachable.clear();
                    }
                }
            }
            if let Some(views) = &views {
                let view = mesh.overlay_view();
                if !Arc::ptr_eq(view, &views.borrow()) {
                    views.send_replace(view.clone());
                }
            }
        }
        acceptor.abort();
        for (_, link) in links.drain() {
            link.reader.abort();
        }
        info!("router stopped");
        Ok(())
    }
}

fn on_command(mesh: &mut Mesh, cmd: Command, sleeve: Option<&sleeve::Shared>) {
    let now = Instant::now();
    match cmd {
        Command::Report(reply) => {
            let mut report = mesh.report(now);
            if let Some(s) = sleeve {
                add_sleeve_figures(&mut report, s);
            }
            let _ = reply.send(report);
        }
        Command::Path(PathEvent::Established(peer, uid)) => {
            mesh.overlay_established(peer, uid, now)
        }
        Command::Path(PathEvent::Failed(peer, uid)) => mesh.overlay_failed(peer, uid, now),
        Command::Connect {
            addrs,
            replace,
            reply,
        } => {
            mesh.connect(&addrs, replace, now);
            let _ = reply.send(mesh.maker().direct());
        }
        Command::Forget { addrs, reply } => {
            mesh.forget(&addrs, now);
            let _ = reply.send(mesh.maker().direct());
        }
        Command::Gossip { channel, to, body } => match to {
            GossipTo::Conn(conn) => mesh.send_channel(conn, channel, body),
            GossipTo::Fanout => mesh.fanout_channel(channel, body, None),
            GossipTo::Random => mesh.random_channel(channel, body),
        },
    }
}

fn add_sleeve_figures(report: &mut weave_api::Report, s: &sleeve::Shared) {
    for c in &mut report.connections {
        let Some(peer) = c.peer.as_deref().and_then(|p| p.parse::<PeerName>().ok()) else {
            continue;
        };
        let counters = s.peer_counters(&peer);
        c.mtu = Some(s.mtu());
        c.frames_in = counters.frames_in;
        c.frames_out = counters.frames_out;
        c.data_bytes_in = counters.bytes_in;
        c.data_bytes_out = counters.bytes_out;
    }
    report.sleeve = Some(weave_api::SleeveReport {
        bridge: s.bridge().to_string(),
        mtu: s.mtu(),
        injected: s.injected(),
        offload: s.offload(),
        udp_gso: s.udp_gso(),
        superframes_out: s.superframes().0,
        superframes_in: s.superframes().1,
        drops: s
            .drops()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    });
}

/// Carries out everything the mesh queued.
fn apply(
    mesh: &mut Mesh,
    links: &mut HashMap<ConnId, Link>,
    events: &mpsc::Sender<Event>,
    ipam: Option<&mpsc::Sender<MeshEvent>>,
) {
    let mut stuck = Vec::new();
    while let Some(action) = mesh.poll_action() {
        match action {
            Action::Dial { conn, addr } => {
                let events = events.clone();
                tokio::spawn(async move {
                    let res =
                        match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(addr)).await {
                            Ok(res) => res,
                            Err(_) => Err(std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                "connect timed out",
                            )),
                        };
                    let _ = events.send(Event::Dialled(conn, res)).await;
                });
            }
            Action::Send { conn, data } => {
                if let Some(link) = links.get(&conn) {
                    if link.tx.try_send(data).is_err() {
                        stuck.push(conn);
                    }
                }
            }
            Action::Close { conn } => {
                // Dropping the sender lets the writer flush what is queued
                // (the Close message) and then shut the socket.
                if let Some(link) = links.remove(&conn) {
                    link.reader.abort();
                }
            }
            Action::Deliver {
                conn,
                peer,
                channel,
                body,
            } => match (channel, ipam) {
                (CHANNEL_IPAM, Some(ipam)) => {
                    // Anti-entropy repairs what is dropped when IPAM lags.
                    let _ = ipam.try_send(MeshEvent::Gossip { conn, peer, body });
                }
                _ => debug!(%peer, channel, "ignoring gossip on an unhandled channel"),
            },
            Action::NeighbourUp { conn, .. } => {
                if let Some(ipam) = ipam {
                    let _ = ipam.try_send(MeshEvent::NeighbourUp { conn });
                }
            }
        }
    }
    for conn in stuck {
        warn!(conn = conn.0, "peer is not reading; closing connection");
        if let Some(link) = links.remove(&conn) {
            link.reader.abort();
        }
        mesh.closed(conn, "send queue full", Instant::now());
    }
    if mesh.poll_action().is_some() {
        // Closing may have queued more work (gossip about the lost link).
        apply(mesh, links, events, ipam);
    }
}

fn start_link(id: ConnId, stream: TcpStream, events: &mpsc::Sender<Event>) -> Link {
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::channel(SEND_QUEUE);
    let reader = tokio::spawn(read_loop(id, rd, events.clone())).abort_handle();
    tokio::spawn(write_loop(id, wr, rx, events.clone()));
    Link { tx, reader }
}

async fn read_loop(id: ConnId, mut rd: OwnedReadHalf, events: mpsc::Sender<Event>) {
    let mut buf = vec![0u8; READ_CHUNK];
    let reason = loop {
        match rd.read(&mut buf).await {
            Ok(0) => break "connection closed by peer".to_string(),
            Ok(n) => {
                if events
                    .send(Event::Bytes(id, buf[..n].to_vec()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => break format!("read: {e}"),
        }
    };
    let _ = events.send(Event::Closed(id, reason)).await;
}

async fn write_loop(
    id: ConnId,
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Vec<u8>>,
    events: mpsc::Sender<Event>,
) {
    while let Some(data) = rx.recv().await {
        if let Err(e) = wr.write_all(&data).await {
            debug!(conn = id.0, error = %e, "write failed");
            let _ = events.send(Event::Closed(id, format!("write: {e}"))).await;
            return;
        }
    }
    let _ = wr.shutdown().await;
}
