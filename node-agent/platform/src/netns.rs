// SPDX-License-Identifier: Apache-2.0
//! Running code inside another network namespace.
//!
//! `setns(2)` changes the namespace of the calling *thread* only, and a
//! thread that has switched is unsafe to hand back to a pool: so
//! [`open_in`] does the work on a fresh OS thread that enters the namespace,
//! runs the closure and exits. Sockets (netlink, UDP, TAP file descriptors)
//! keep the namespace they were created in, so the closure opens what it
//! needs there and returns it for use from any thread (containers/netavark
//! does the same). Never call `setns` on a tokio worker thread, and never
//! hold a namespace across `.await`.

use std::{
    fs::File,
    io,
    net::IpAddr,
    path::{Path, PathBuf},
    thread,
};

use nix::sched::{setns, CloneFlags};

use crate::error::{Error, Result};

/// Runs `f` on a fresh OS thread that has entered the network namespace at
/// `path` (`setns(CLONE_NEWNET)`), and returns its result.
///
/// Sockets created inside `f` stay in that namespace after `f` returns. The
/// calling thread blocks until `f` is done, so keep `f` short (open what is
/// needed and return it); from async code that must not block, call this
/// through `tokio::task::spawn_blocking`.
///
/// `path` is a namespace file such as `/run/netns/NAME` or
/// `/proc/PID/ns/net`.
pub fn open_in<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T> {
    // Open before spawning so a missing namespace is reported without
    // starting a thread, and so the file outlives nothing it should not.
    let ns = File::open(path)
        .map_err(|e| Error::io(format!("open network namespace {}", path.display()), e))?;
    let owned: PathBuf = path.to_owned();
    let worker = thread::Builder::new()
        .name("weave-netns".into())
        .spawn(move || -> Result<T> {
            setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|errno| {
                Error::io(
                    format!("enter network namespace {}", owned.display()),
                    io::Error::from(errno),
                )
            })?;
            // This thread now belongs to the target namespace until it exits,
            // which is right after `f`: nothing else ever runs on it.
            f().map_err(|e| Error::io(format!("run in network namespace {}", owned.display()), e))
        })
        .map_err(|e| Error::io("spawn network namespace thread", e))?;
    worker.join().map_err(|_| Error::NetnsThreadPanicked {
        path: path.to_owned(),
    })?
}

/// An interface as seen inside its namespace: for `weave ps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceView {
    /// Hardware address, as iproute2 prints it (`None` for interfaces without one).
    pub mac: Option<String>,
    /// Addresses with their prefix lengths, IPv4 first, in the kernel's order.
    pub addrs: Vec<(IpAddr, u8)>,
}

/// Reads the MAC and addresses of `ifname` inside the namespace at `path`;
/// `None` when no such interface is there. Blocks (see [`open_in`]).
pub fn interface_in(path: &Path, ifname: &str) -> Result<Option<InterfaceView>> {
    let ifname = ifname.to_owned();
    open_in(path, move || {
        let mut found = false;
        let mut view = InterfaceView {
            mac: None,
            addrs: Vec::new(),
        };
        for ifa in nix::ifaddrs::getifaddrs().map_err(io::Error::from)? {
            if ifa.interface_name != ifname {
                continue;
            }
            found = true;
            let Some(a) = ifa.address else { continue };
            if let Some(link) = a.as_link_addr() {
                view.mac = link.addr().map(crate::fmt_mac);
            } else if let Some(v4) = a.as_sockaddr_in() {
                let len = ifa.netmask.as_ref().and_then(|m| m.as_sockaddr_in());
                let len = len.map_or(32, |m| {
                    u8::try_from(u32::from(m.ip()).count_ones()).unwrap_or(32)
                });
                view.addrs.push((IpAddr::V4(v4.ip()), len));
            } else if let Some(v6) = a.as_sockaddr_in6() {
                let len = ifa.netmask.as_ref().and_then(|m| m.as_sockaddr_in6());
                let len = len.map_or(128, |m| {
                    u8::try_from(u128::from(m.ip()).count_ones()).unwrap_or(128)
                });
                view.addrs.push((IpAddr::V6(v6.ip()), len));
            }
        }
        view.addrs.sort_by_key(|(a, _)| a.is_ipv6());
        Ok(found.then_some(view))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_namespace_is_a_clear_error() {
        let path = Path::new("/nonexistent/weave-netns");
        let err = open_in(path, || Ok(())).expect_err("path does not exist");
        assert_eq!(err.errno(), Some(libc::ENOENT));
        assert!(
            err.to_string().contains("/nonexistent/weave-netns"),
            "{err}"
        );
    }

    #[test]
    fn own_namespace_runs_the_closure_and_returns_its_value() {
        // Entering the namespace we are already in needs CAP_SYS_ADMIN, so
        // accept EPERM on unprivileged machines: the point is the plumbing.
        match open_in(Path::new("/proc/self/ns/net"), || Ok(42)) {
            Ok(v) => assert_eq!(v, 42),
            Err(e) => assert_eq!(e.errno(), Some(libc::EPERM), "{e}"),
        }
    }

    #[test]
    fn closure_errors_keep_their_errno() {
        let res = open_in(Path::new("/proc/self/ns/net"), || -> io::Result<()> {
            Err(io::Error::from_raw_os_error(libc::EBUSY))
        });
        let err = res.expect_err("closure fails or setns is refused");
        assert!(
            matches!(err.errno(), Some(libc::EBUSY | libc::EPERM)),
            "{err}"
        );
    }
}
