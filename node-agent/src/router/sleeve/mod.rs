// SPDX-License-Identifier: Apache-2.0
//! The sleeve's I/O: the `weave` bridge with a TAP port read by the agent,
//! and one UDP socket (port 6783) to the peers. Every decision (where a
//! frame goes, how frames are batched and cut, which MTU, when a path is
//! up) is made by the sans-IO parts in [`crate::sleeve`]; this module holds
//! the threads and system calls around them, one file per side:
//!
//! - `setup.rs`: the bridge, the TAP port and the UDP socket ([`setup`]);
//! - `state.rs`: [`Sleeve`], what the threads, the control task and the
//!   report share (devices, tables, counters), and the sending and
//!   injecting system calls;
//! - `udp.rs`: the I/O thread, which waits on both devices: datagrams from
//!   peers (injected into the bridge or relayed) and, unless the TAP thread
//!   serves it, the TAP port;
//! - `tap.rs`: the TAP side: the reader of the TAP port, and the TAP thread
//!   that takes the port over while the I/O thread is busy;
//! - `outbox.rs`: the sending end each reading side owns (batches, fragments);
//! - here: [`run`], the control task: it starts both threads, sends the path
//!   heartbeats, follows the mesh's [`OverlayView`] and reports path changes
//!   to the router.
//!
//! Two dedicated threads move packets, so the async runtime never blocks on
//! them. With one waiter for both devices a pod's immediate answer to an
//! injected frame wakes nobody: the I/O thread reads it right after
//! injecting (on a VM, waking a thread on an idle vCPU is the largest part
//! of the sleeve's added latency). Whichever thread reads frames drains
//! everything ready before it sends, batching the frames for the same next
//! hop into one datagram up to the underlay MTU.
//!
//! The TAP port takes checksum and TCP segmentation offload
//! (`sleeve::offload`): a pod's TCP stream leaves the bridge as super-frames
//! of up to 64 KB, which travel whole, cut into fragment datagrams sent with
//! one `sendmsg` each (UDP segmentation offload, `UDP_SEGMENT`), and enter
//! the peer's bridge whole again. That moves a 64 KB burst with a handful of
//! system calls instead of ninety, and the pods' stacks see large segments.
//!
//! With a password every datagram, heartbeats included, is sealed for the
//! neighbour it goes to (`sleeve::sealer`) and opened before anything reads
//! it.
//!
//! The bridge outlives the agent: a restart recreates the TAP port and
//! re-adopts the bridge, so pods on the same host keep talking while the
//! agent is down.

mod outbox;
mod setup;
mod state;
mod tap;
mod udp;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use self::setup::{setup, SleeveConfig, SleeveError, TAP_NAME};
use self::state::lock;
pub use self::state::{PeerCounters, Sleeve};
use crate::mesh::overlay::OverlayView;
use crate::mesh::PeerName;
use crate::sleeve::frame;
use crate::sleeve::path::PathEvent;

/// Sends queued heartbeats, each to the peer it names as its receiver.
fn send_heartbeats(
    sleeve: &Sleeve,
    out: &mut Vec<(SocketAddr, [u8; frame::HEARTBEAT_LEN])>,
    scratch: &mut Vec<u8>,
) {
    for (addr, hb) in out.drain(..) {
        let mut to = [0u8; 6];
        to.copy_from_slice(&hb[frame::HEADER_LEN..frame::HEADER_LEN + 6]);
        let _ = sleeve.send_to_peer(&PeerName::from_bytes(to), &hb, addr, scratch);
    }
}

/// Runs the sleeve until `cancel` fires: starts the packet threads, sends
/// heartbeats, follows the mesh's view and reports path changes.
pub async fn run(
    shared: Arc<Sleeve>,
    mut views: watch::Receiver<Arc<OverlayView>>,
    paths: mpsc::Sender<PathEvent>,
    cancel: CancellationToken,
) -> crate::Result<()> {
    // Whichever thread reads the TAP port holds its reader, and sends what
    // it read before letting go, so frames keep their order.
    let reader = tap::TapReader::shared(&shared);
    let threads = [
        {
            let (s, r) = (shared.clone(), reader.clone());
            std::thread::Builder::new()
                .name("sleeve-tap".into())
                .spawn(move || tap::tap_loop(s, r))
        },
        {
            let (s, r) = (shared.clone(), reader.clone());
            let c = paths.clone();
            std::thread::Builder::new()
                .name("sleeve-io".into())
                .spawn(move || udp::io_loop(s, r, c))
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
                shared.forget_peers(&view.neighbours);
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
                    let _ = paths.send(ev).await;
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
