// SPDX-License-Identifier: Apache-2.0
//! A TCP forwarder from the host's loopback to the API server inside the control plane's
//! network namespace.
//!
//! The control plane lives in a namespace of the test bed, which the host cannot route to (the
//! root namespace's links and routes are never changed). Clients on the host (kubectl, helm,
//! tests) connect to `127.0.0.1:PORT` instead; each accepted connection gets a socket opened
//! inside the namespace and bytes are copied both ways by two threads until either side
//! closes. Dropping the forwarder closes the listener and every open connection.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::netns::in_netns;

/// How long opening the inner connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Open connections, by id: both ends, so that drop can shut them.
type Open = Arc<Mutex<HashMap<u64, (TcpStream, TcpStream)>>>;

/// A running forwarder.
#[derive(Debug)]
pub(crate) struct Forward {
    /// The listening address on the host.
    addr: SocketAddr,
    /// Set when the forwarder is dropped.
    stop: Arc<AtomicBool>,
    /// Open connections.
    open: Open,
    /// The accepting thread.
    acceptor: Option<JoinHandle<()>>,
}

impl Forward {
    /// Listens on a free port of `127.0.0.1` and forwards to `target` inside `netns`.
    pub(crate) fn start(netns: &str, target: SocketAddr) -> Result<Forward> {
        let listener = TcpListener::bind("127.0.0.1:0").context("listen on 127.0.0.1")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let open: Open = Arc::default();
        let acceptor = {
            let (stop, open, netns) = (Arc::clone(&stop), Arc::clone(&open), netns.to_owned());
            std::thread::Builder::new()
                .name("apiserver-forward".into())
                .spawn(move || accept_loop(&listener, &netns, target, &stop, &open))
                .context("start the forwarding thread")?
        };
        Ok(Forward {
            addr,
            stop,
            open,
            acceptor: Some(acceptor),
        })
    }

    /// Where clients connect.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the blocking accept so the thread sees `stop`.
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for (outer, inner) in self
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
        {
            let _ = outer.shutdown(Shutdown::Both);
            let _ = inner.shutdown(Shutdown::Both);
        }
    }
}

/// Accepts until stopped; each connection is served on threads of its own.
fn accept_loop(
    listener: &TcpListener,
    netns: &str,
    target: SocketAddr,
    stop: &AtomicBool,
    open: &Open,
) {
    static NEXT_ID: AtomicU64 = AtomicU64::new(0);
    for outer in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(outer) = outer else { continue };
        let netns = netns.to_owned();
        let open = Arc::clone(open);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let _ = std::thread::Builder::new()
            .name("apiserver-conn".into())
            .spawn(move || {
                let inner = in_netns(&netns, move || {
                    TcpStream::connect_timeout(&target, CONNECT_TIMEOUT).context("connect")
                });
                let Ok(inner) = inner else {
                    let _ = outer.shutdown(Shutdown::Both);
                    return;
                };
                serve(id, outer, inner, &open);
            });
    }
}

/// Copies both ways until both directions are done, then forgets the connection.
fn serve(id: u64, outer: TcpStream, inner: TcpStream, open: &Open) {
    let clones = (
        outer.try_clone(),
        inner.try_clone(),
        outer.try_clone(),
        inner.try_clone(),
    );
    let (Ok(outer_read), Ok(inner_write), Ok(outer_keep), Ok(inner_keep)) = clones else {
        return;
    };
    open.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(id, (outer_keep, inner_keep));
    let upstream = std::thread::spawn(move || pump(outer_read, inner_write));
    pump(inner, outer);
    let _ = upstream.join();
    open.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&id);
}

/// Copies `from` to `to` until end of stream or an error, then half-closes `to`.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
