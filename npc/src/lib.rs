// SPDX-License-Identifier: Apache-2.0
//! weave-npc: the Kubernetes NetworkPolicy controller of the weave network.
//!
//! It watches Pods, Namespaces and `networking.k8s.io/v1` NetworkPolicies ([`controller`]),
//! compiles the whole state into one nftables ruleset in a pure function ([`compile()`]) and
//! applies it atomically in its own tables through the `Firewall` seam of `weave-platform`.
//!
//! Modules: [`selector`] (label selectors), [`policy`] (validated model), [`mod@compile`],
//! [`controller`] (reflectors, debounce, apply), [`metrics`], [`cli`] (flags).

pub mod cli;
pub mod compile;
pub mod controller;
mod error;
pub mod metrics;
pub mod policy;
pub mod selector;

pub use compile::{compile, Compiled, NodeConfig, Snapshot};
pub use controller::run;
pub use error::{Error, Result};
pub use weave_platform::firewall::{Firewall, NftFirewall};
