// SPDX-License-Identifier: Apache-2.0
//! Waiting for a child process with a time limit.
//!
//! A `pidfd` refers to the child without reaping it, so the process ID stays ours until
//! [`Child::wait`] reaps it: killing after a timeout can never hit a process that reused the
//! ID. `poll` on the pidfd wakes the moment the child exits, so no time is lost to polling
//! intervals.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, ExitStatus};
use std::time::Duration;

/// Waits for `child` to exit for at most `limit`; on timeout kills it (SIGKILL), reaps it and
/// returns `Ok(None)`.
pub fn wait_with_limit(child: &mut Child, limit: Duration) -> io::Result<Option<ExitStatus>> {
    let pid = libc::pid_t::try_from(child.id())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "process ID out of range"))?;
    // SAFETY: pidfd_open takes a process ID and flags by value and returns a new descriptor
    // or -1; it touches no memory of ours.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    let raw = i32::try_from(raw)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "pidfd out of range"))?;
    // SAFETY: `raw` is a descriptor the kernel just created for us and nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // A signal interrupting the wait restarts it with the whole limit: the limit bounds a
    // stuck child, it is not a precise deadline.
    let ms = i32::try_from(limit.as_millis()).unwrap_or(i32::MAX);
    loop {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid pollfd, borrowed mutably for the call only, and the
        // count passed is 1.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n > 0 {
            return child.wait().map(Some);
        }
        // Timed out: the child is not reaped yet, so its ID is still ours to signal.
        child.kill()?;
        child.wait()?;
        return Ok(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn a_quick_child_is_waited_for_and_a_slow_one_killed() {
        let mut quick = Command::new("true").spawn().expect("spawn true");
        let status = wait_with_limit(&mut quick, Duration::from_secs(10)).expect("wait");
        assert!(status.is_some_and(|s| s.success()));
        let mut slow = Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let status = wait_with_limit(&mut slow, Duration::from_millis(100)).expect("wait");
        assert!(status.is_none(), "the slow child timed out");
        // It was killed and reaped: its pidfd can no longer be opened.
        let pid = libc::pid_t::try_from(slow.id()).expect("pid");
        // SAFETY: as in `wait_with_limit`.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        assert!(raw < 0, "the child is gone");
    }
}
