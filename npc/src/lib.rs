// SPDX-License-Identifier: Apache-2.0
//! weave-npc: the Kubernetes NetworkPolicy controller of the weave network.
//!
//! It watches Pods, Namespaces, Nodes, `networking.k8s.io/v1` NetworkPolicies and
//! `policy.networking.k8s.io` ClusterNetworkPolicies ([`controller`]), compiles the whole
//! state into one nftables ruleset in a pure function ([`compile()`]), follows changes
//! incrementally, and applies the result atomically in its own tables through the `Firewall`
//! seam of `weave-platform`.
//!
//! Modules: [`selector`] (label selectors), [`policy`] and [`cluster_policy`] (validated
//! models), [`mod@compile`], [`explain`] (why a connection is allowed or denied),
//! [`droplog`] (the nflog reader), [`controller`] (reflectors, debounce, apply),
//! [`metrics`], [`config`] (validated settings), [`cli`] (flags and one-shot commands).

pub mod attached;
pub mod cli;
pub mod cluster_policy;
pub mod compile;
pub mod config;
pub mod controller;
pub mod droplog;
mod error;
pub mod explain;
pub mod metrics;
pub mod policy;
pub mod selector;

pub use compile::{compile, Compiled, NodeConfig, Objects, Snapshot};
pub use controller::run;
pub use error::{Error, Result};
pub use weave_platform::firewall::{Firewall, NftFirewall};
