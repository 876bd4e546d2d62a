// SPDX-License-Identifier: Apache-2.0
//! Multi-host test bed for weave: hosts are network namespaces joined by an underlay (a bridge
//! or point-to-point veths) that run the real binaries, with cuts and packet loss injected by
//! nftables. Everything is created inside namespaces named with a per-run prefix and removed
//! on drop, on panic and on Ctrl-C; the root namespace is never changed.
//!
//! Tests using it need root and fail (never skip) without it.

mod binaries;
pub mod cluster;
pub mod cni;
mod command;
pub mod conformance;
pub mod echo;
mod faults;
mod host;
pub mod kube;
pub mod kube_stub;
pub mod metrics;
mod netns;
pub mod npc;
mod process;
mod teardown;
mod testbed;
mod topology;
mod wait;
pub mod weave;

pub use binaries::{bin, bin_dir, BIN_DIR_ENV};
pub use command::run_with_input;
pub use host::Host;
pub use netns::in_netns;
pub use teardown::teardown_all;
pub use testbed::TestBed;
pub use topology::Topology;
pub use wait::wait_until;
