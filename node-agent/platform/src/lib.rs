// SPDX-License-Identifier: Apache-2.0
//! The OS seam of weave (STYLE §2): every kernel side effect of the data plane
//! and the CNI plugin goes through this crate.
//!
//! - [`netlink`]: the [`Netlink`] trait (links, addresses, routes) and
//!   [`LinuxNetlink`], its rtnetlink implementation;
//! - [`netns`]: [`open_in`] runs a closure on a thread inside another network
//!   namespace, so sockets can be opened there;
//! - [`tap`]: [`Tap`], the sleeve's TAP device, and [`AsyncTap`], the same
//!   driven by the tokio reactor;
//! - [`packet`]: [`PacketSocket`], raw Ethernet frames on one link (the fast
//!   path's heartbeats, a pod's announcements);
//! - [`sysctl`]: [`read_sysctl`] / [`write_sysctl`];
//! - [`child`]: waiting for a child process with a time limit (pidfd);
//! - [`nflog`]: an nfnetlink_log socket bound to one group (raw datagrams out);
//! - `firewall` (feature `nft`): the `Firewall` trait, `NftFirewall` and, with
//!   `fake` too, `FakeFirewall`;
//! - [`wiring`]: [`wiring::wire`] / [`wiring::unwire`], a pod namespace's
//!   veth pair, addresses and routes (shared by `weave attach` and the CNI
//!   plugin);
//! - `fake` (feature `fake`): `FakeNetlink`, an in-memory [`Netlink`] with the
//!   same idempotency rules, for unit tests that must not need root.
//!
//! This is the only crate of the workspace allowed `unsafe`, and only in
//! [`tap`] (the `TUNSETIFF` ioctl and the tokio `AsyncFd` registration),
//! [`packet`] (`sockaddr_ll` system calls and the same registration), [`child`]
//! (`pidfd_open`, `poll`) and [`nflog`] (the netlink socket calls).

pub mod child;
mod error;
#[cfg(feature = "fake")]
pub mod fake;
#[cfg(feature = "nft")]
pub mod firewall;
pub mod malloc;
pub mod netlink;
pub mod netns;
pub mod nflog;
pub mod packet;
pub mod sysctl;
pub mod tap;
pub mod wiring;

pub use error::{Error, Result};
#[cfg(feature = "fake")]
pub use fake::FakeNetlink;
pub use netlink::{
    BridgeFdbState, BridgePortFlags, FdbEntry, FdbTarget, LinuxNetlink, Mac, Netlink, Route,
    VxlanLink, VxlanSpec,
};
pub use netns::{interface_in, open_in, InterfaceView};
pub use packet::{AsyncPacketSocket, PacketSocket};

/// A MAC address as iproute2 prints it.
pub fn fmt_mac(mac: [u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}
pub use sysctl::{read_sysctl, write_sysctl};
pub use tap::{AsyncTap, Tap};
