// SPDX-License-Identifier: Apache-2.0
//! The crate's one error type.
//!
//! Every variant says what was being done to what. Causes from the kernel are
//! kept as `#[source]` (an [`std::io::Error`] or an [`rtnetlink::Error`]) so the
//! errno stays matchable: use [`Error::errno`] rather than parsing messages.

use std::{io, net::IpAddr, path::PathBuf};

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong while changing the kernel's network state.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A netlink request was refused by the kernel or could not be sent; the
    /// kernel's errno, if any, is in `source` (see [`Error::errno`]).
    #[error("{op}")]
    Netlink {
        /// What was being done, e.g. `add address 10.32.0.1/12 to link 7`.
        op: String,
        /// The netlink failure.
        #[source]
        source: rtnetlink::Error,
    },
    /// A netlink dump kept being interrupted by concurrent changes
    /// (`NLM_F_DUMP_INTR`) and never completed consistently.
    #[error("{op}: dump interrupted {attempts} times in a row")]
    DumpInterrupted {
        /// What was being dumped, e.g. `list routes`.
        op: String,
        /// How many times it was tried.
        attempts: u32,
    },
    /// A system call or file operation failed.
    #[error("{op}")]
    Io {
        /// What was being done, e.g. `write sysctl net.ipv4.ip_forward`.
        op: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// An interface name the kernel would reject (empty, longer than 15 bytes,
    /// or containing `/`, `:`, whitespace or NUL).
    #[error("invalid interface name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// An address or route prefix that does not make sense (prefix length
    /// beyond the family's width, host bits set in a route destination,
    /// gateway of the other family).
    #[error("invalid prefix {addr}/{prefix_len}: {reason}")]
    InvalidPrefix {
        /// The address or destination.
        addr: IpAddr,
        /// The prefix length given with it.
        prefix_len: u8,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// A sysctl key that does not name a file under `/proc/sys`.
    #[error("invalid sysctl key {key:?}")]
    InvalidSysctlKey {
        /// The rejected key.
        key: String,
    },
    /// A link with the wanted name exists but is of another kind, so it is not
    /// ours to reuse.
    #[error("{op}: link {name} exists but is a {found}, not a {expected}")]
    LinkKindMismatch {
        /// What was being done.
        op: String,
        /// The link's name.
        name: String,
        /// The kind that was wanted (`bridge`, `veth`).
        expected: &'static str,
        /// The kind the existing link has.
        found: String,
    },
    /// A link that was just created, or must exist, is not there.
    #[error("{op}: link {name} not found")]
    LinkNotFound {
        /// What was being done.
        op: String,
        /// The missing link's name.
        name: String,
    },
    /// A forwarding entry that cannot be added (a learned or local bridge
    /// entry, a remote entry without a unicast destination or port).
    #[error("invalid fdb entry {entry}: {reason}")]
    InvalidFdb {
        /// The entry as `bridge fdb` would show it.
        entry: String,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// VXLAN settings the kernel would refuse.
    #[error("{op}: {reason}")]
    InvalidVxlan {
        /// What was being done.
        op: String,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// A netlink handle was asked for outside a tokio runtime, so there is
    /// nothing to drive its connection.
    #[error("{op}: not called from within a tokio runtime")]
    NoRuntime {
        /// What was being done.
        op: String,
    },
    /// The thread that entered a network namespace panicked.
    #[error("run in network namespace {}: thread panicked", path.display())]
    NetnsThreadPanicked {
        /// The namespace's path.
        path: PathBuf,
    },
}

impl Error {
    /// The kernel's errno behind this error (a positive `libc::E*` value), if
    /// there is one: `err.errno() == Some(libc::ENODEV)`.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Netlink { source, .. } => netlink_errno(source),
            Error::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// Wraps a netlink failure with what was being done.
    pub(crate) fn netlink(op: impl Into<String>, source: rtnetlink::Error) -> Self {
        Error::Netlink {
            op: op.into(),
            source,
        }
    }

    /// Wraps an OS failure with what was being done.
    pub(crate) fn io(op: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            op: op.into(),
            source,
        }
    }
}

/// The positive errno carried by a netlink error message, if any.
pub(crate) fn netlink_errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|code| code.get().abs()),
        _ => None,
    }
}

/// A netlink error carrying `errno`, as the kernel would send it. The fake
/// uses it so callers see the same errors from both implementations.
#[cfg(any(test, feature = "fake"))]
pub(crate) fn netlink_error(errno: i32) -> rtnetlink::Error {
    let mut msg = rtnetlink::packet_core::ErrorMessage::default();
    msg.code = std::num::NonZeroI32::new(-errno.abs());
    rtnetlink::Error::NetlinkError(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_is_matchable_through_netlink_and_io() {
        let err = Error::netlink("delete link weave", netlink_error(libc::ENODEV));
        assert_eq!(err.errno(), Some(libc::ENODEV));
        assert_eq!(err.to_string(), "delete link weave");

        let err = Error::io(
            "open /dev/net/tun",
            io::Error::from_raw_os_error(libc::EPERM),
        );
        assert_eq!(err.errno(), Some(libc::EPERM));

        let err = Error::InvalidSysctlKey { key: "..".into() };
        assert_eq!(err.errno(), None);
    }
}
