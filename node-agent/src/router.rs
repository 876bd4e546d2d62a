// SPDX-License-Identifier: Apache-2.0
//! The socket layer of the mesh: a TCP listener, one reader and one writer
//! task per connection, and an actor task that owns the [`Mesh`] and is the
//! only one to touch it.
//!
//! Everything the actor learns arrives on its own inbox: accepted sockets,
//! dial results, bytes and closes from the connection tasks; [`ApiCommand`]s
//! from the local API; [`PathEvent`]s from the sleeve; gossip bodies that
//! subsystems queued on the [`GossipPort`]. Everything the mesh decides comes
//! back as [`Action`]s that the actor carries out; gossip for a subsystem
//! goes to the inbox its channel registered. The router knows no subsystem:
//! it multiplexes channels. The actor never blocks: writes go through a
//! bounded queue per connection, and a peer that lets its queue fill up is
//! disconnected rather than allowed to stall everybody else.
//!
//! Invariants: only the actor touches the mesh; a connection's bytes reach
//! the mesh in order; nothing the actor does blocks it.

pub mod fastdp;
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

use crate::mesh::gossip::{GossipPort, GossipTo, Outgoing};
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
pub enum ApiCommand {
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
    api: mpsc::Receiver<ApiCommand>,
    gossip: GossipPort,
    paths: Option<mpsc::Receiver<PathEvent>>,
    views: Option<watch::Sender<Arc<OverlayView>>>,
    sleeve: Option<Arc<sleeve::Sleeve>>,
    fastdp: Option<Arc<fastdp::Fastdp>>,
}

impl Router {
    /// A router around `mesh`, listening on `listener`, taking API commands
    /// from `api` and the gossip of the subsystems registered on `gossip`.
    pub fn new(
        mesh: Mesh,
        listener: TcpListener,
        api: mpsc::Receiver<ApiCommand>,
        gossip: GossipPort,
    ) -> Self {
        Self {
            mesh,
            listener,
            api,
            gossip,
            paths: None,
            views: None,
            sleeve: None,
            fastdp: None,
        }
    }

    /// Adds the fast path's modes and figures to reports.
    pub fn with_fastdp(mut self, fastdp: Arc<fastdp::Fastdp>) -> Self {
        self.fastdp = Some(fastdp);
        self
    }

    /// Publishes the mesh's overlay views to the sleeve on `views`, takes
    /// the sleeve's path events from `paths`, and adds the sleeve's figures
    /// to reports.
    pub fn with_sleeve(
        mut self,
        views: watch::Sender<Arc<OverlayView>>,
        paths: mpsc::Receiver<PathEvent>,
        sleeve: Arc<sleeve::Sleeve>,
    ) -> Self {
        self.views = Some(views);
        self.paths = Some(paths);
        self.sleeve = Some(sleeve);
        self
    }

    /// Runs until `cancel` fires.
    pub async fn run(self, cancel: CancellationToken) -> crate::Result<()> {
        let Self {
            mut mesh,
            listener,
            mut api,
            mut gossip,
            paths,
            views,
            sleeve,
            fastdp,
        } = self;
        // Without a sleeve nobody sends path events: a receiver whose sender
        // is dropped at once yields `None` and its branch is disabled.
        let mut paths = paths.unwrap_or_else(|| mpsc::channel(1).1);
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
        apply(&mut mesh, &mut links, &events_tx, &mut gossip);
        loop {
            let deadline = mesh.poll_timeout();
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep_until(deadline) => mesh.tick(Instant::now()),
                Some(cmd) = api.recv() => on_api(&mut mesh, cmd, sleeve.as_deref(), fastdp.as_deref()),
                Some(ev) = paths.recv() => on_path(&mut mesh, ev),
                Some(out) = gossip.outgoing() => send_gossip(&mut mesh, out),
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
            // Everything else the subsystems queued goes out in this turn.
            while let Some(out) = gossip.try_outgoing() {
                send_gossip(&mut mesh, out);
            }
            apply(&mut mesh, &mut links, &events_tx, &mut gossip);
            if !gossip.is_empty() {
                gossip.set_reachable(&mesh.reachable_peers());
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

fn on_api(
    mesh: &mut Mesh,
    cmd: ApiCommand,
    sleeve: Option<&sleeve::Sleeve>,
    fastdp: Option<&fastdp::Fastdp>,
) {
    let now = Instant::now();
    match cmd {
        ApiCommand::Report(reply) => {
            let mut report = mesh.report(now);
            if let Some(s) = sleeve {
                add_sleeve_figures(&mut report, s);
            }
            if let Some(f) = fastdp {
                add_fastdp_figures(&mut report, f);
            }
            let _ = reply.send(report);
        }
        ApiCommand::Connect {
            addrs,
            replace,
            reply,
        } => {
            mesh.connect(&addrs, replace, now);
            let _ = reply.send(mesh.maker().direct());
        }
        ApiCommand::Forget { addrs, reply } => {
            mesh.forget(&addrs, now);
            let _ = reply.send(mesh.maker().direct());
        }
    }
}

fn on_path(mesh: &mut Mesh, ev: PathEvent) {
    let now = Instant::now();
    match ev {
        PathEvent::Established(peer, uid) => mesh.overlay_established(peer, uid, now),
        PathEvent::Failed(peer, uid) => mesh.overlay_failed(peer, uid, now),
    }
}

fn send_gossip(mesh: &mut Mesh, out: Outgoing) {
    let Outgoing { channel, to, body } = out;
    match to {
        GossipTo::Conn(conn) => mesh.send_channel(conn, channel.0, body),
        GossipTo::Fanout => mesh.fanout_channel(channel.0, body, None),
        GossipTo::Random => mesh.random_channel(channel.0, body),
    }
}

fn add_sleeve_figures(report: &mut weave_api::Report, s: &sleeve::Sleeve) {
    for c in &mut report.connections {
        let Some(peer) = c.peer.as_deref().and_then(|p| p.parse::<PeerName>().ok()) else {
            continue;
        };
        let counters = s.peer_counters(&peer);
        c.mtu = Some(s.peer_mtu(&peer));
        c.drops = s
            .peer_drops(&peer)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
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

fn add_fastdp_figures(report: &mut weave_api::Report, f: &fastdp::Fastdp) {
    use std::sync::atomic::Ordering;
    let status = f.status();
    let mut carried = 0;
    for c in &mut report.connections {
        let Some(peer) = c.peer.as_deref().and_then(|p| p.parse::<PeerName>().ok()) else {
            continue;
        };
        if c.mode.is_none() {
            continue;
        }
        let mode = f.mode(&peer);
        if mode == crate::fastdp::Mode::Fastdp {
            carried += 1;
            // full-size frames were seen to cross: the overlay MTU
            c.mtu = Some(f.mtu());
        }
        c.mode = Some(mode.name().to_string());
        c.mode_reason = mode.reason().map(|r| r.to_string());
    }
    let frame = |i: usize| f.frames[i].load(Ordering::Relaxed);
    report.fastdp = Some(weave_api::FastdpReport {
        device: f.ifindex().map(|_| fastdp::VXLAN_NAME.to_string()),
        ifindex: f.ifindex(),
        port: f.port(),
        vni: crate::fastdp::VNI,
        unavailable: f.unavailable().map(|r| r.to_string()),
        connections: carried,
        held: status.held,
        flood_entries: status.entries.0,
        remote_entries: status.entries.1,
        pinned_macs: status.entries.2,
        local_macs: status.local_macs,
        heartbeats_out: frame(0),
        heartbeats_in: frame(1),
        acks_in: frame(2),
        ignored_in: frame(3),
        mode_changes: f.mode_changes.load(Ordering::Relaxed),
        fdb_errors: f.fdb_errors.load(Ordering::Relaxed),
    });
}

/// Carries out everything the mesh queued.
fn apply(
    mesh: &mut Mesh,
    links: &mut HashMap<ConnId, Link>,
    events: &mpsc::Sender<Event>,
    gossip: &mut GossipPort,
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
            } => {
                // Anti-entropy repairs what is dropped when a subsystem lags.
                gossip.deliver(conn, peer, channel, body);
            }
            Action::NeighbourUp { conn, peer } => gossip.neighbour_up(conn, peer),
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
        apply(mesh, links, events, gossip);
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
