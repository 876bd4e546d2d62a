// SPDX-License-Identifier: Apache-2.0
//! The CNI plugins of weave (spec 1.1, also speaking 0.3.0–1.0.0):
//! `weave-net`, the network plugin, and `weave-ipam`, the IPAM-only plugin.
//! Both binaries call [`main`] with their [`Plugin`]; everything else is in
//! the library so that tests and the fuzz target can drive it.
//!
//! - [`mod@env`]: the `CNI_*` variables; [`config`]: the stdin config;
//! - [`plan`]: ADD and DEL as plans, without I/O; [`exec`]: carrying a plan
//!   out, generic over the `Netlink` seam and the [`agent::Agent`];
//! - [`net`] and [`ipam`]: the verbs of each plugin;
//! - [`agent`]: requests to `weaver` and the release spool;
//! - [`result`]: the success result in each version's shape;
//! - [`error`]: errors and their CNI codes.
//!
//! Contract with the runtime: only the result (or the error document) goes
//! to stdout, logs go to stderr, the exit status is 0 on success.

pub mod agent;
pub mod config;
pub mod env;
pub mod error;
pub mod exec;
pub mod ipam;
pub mod log;
pub mod net;
pub mod plan;
pub mod result;

use std::io::Read;
use std::process::ExitCode;

use serde_json::{json, Value};

use config::{NetConf, SUPPORTED_VERSIONS};
use env::{Command, Invocation};
pub use error::{Error, Result};

/// Which of the two plugins runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plugin {
    /// `weave-net`: interfaces and addresses.
    Net,
    /// `weave-ipam`: addresses only.
    Ipam,
}

impl Plugin {
    /// The binary's name, for logs.
    pub fn name(self) -> &'static str {
        match self {
            Plugin::Net => "weave-net",
            Plugin::Ipam => "weave-ipam",
        }
    }
}

/// The entry point of both binaries: reads the environment and stdin, runs
/// the verb and prints its reply.
pub fn main(plugin: Plugin) -> ExitCode {
    log::init(plugin.name());
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => run(plugin, |k| std::env::var(k).ok(), &stdin),
        Err(e) => Err(Error::Stdin(e)),
    };
    let version = config::requested_version(&stdin)
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| "1.1.0".to_string());
    match outcome {
        Ok(Some(doc)) => {
            reply(&doc);
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(code = e.code(), "{e}");
            reply(&e.to_json(&version));
            ExitCode::FAILURE
        }
    }
}

/// Runs one invocation: `getenv` reads the `CNI_*` variables, `stdin` is
/// the config. Returns the document to print on success (`None` for verbs
/// whose success is silent: DEL, CHECK, STATUS, GC).
pub fn run(
    plugin: Plugin,
    getenv: impl Fn(&str) -> Option<String>,
    stdin: &[u8],
) -> Result<Option<Value>> {
    let inv = Invocation::parse(getenv, plugin == Plugin::Net)?;
    if inv.command == Command::Version {
        let requested = config::requested_version(stdin).unwrap_or_else(|| "1.1.0".into());
        return Ok(Some(json!({
            "cniVersion": requested,
            "supportedVersions": SUPPORTED_VERSIONS,
        })));
    }
    let conf = NetConf::parse(stdin)?;
    if matches!(inv.command, Command::Status | Command::Gc)
        && conf.version < config::Version::V1_1_0
    {
        return Err(Error::Version(format!(
            "{:?} needs cniVersion 1.1.0, not {}",
            inv.command, conf.cni_version
        )));
    }
    match (plugin, inv.command) {
        (_, Command::Version) => Ok(None),
        (Plugin::Net, Command::Add) => Ok(Some(
            net::add(&inv, &conf)?.to_json(&conf.cni_version, conf.version),
        )),
        (Plugin::Ipam, Command::Add) => Ok(Some(
            ipam::add(&inv, &conf)?.to_json(&conf.cni_version, conf.version),
        )),
        (Plugin::Net, Command::Del) => net::del(&inv, &conf).map(|()| None),
        (Plugin::Ipam, Command::Del) => ipam::del(&inv, &conf).map(|()| None),
        (Plugin::Net, Command::Check) => net::check(&inv, &conf).map(|()| None),
        (Plugin::Ipam, Command::Check) => ipam::check(&inv, &conf).map(|()| None),
        (_, Command::Status) => net::status(&conf).map(|()| None),
        (plugin, Command::Gc) => net::gc(&conf, plugin == Plugin::Net).map(|()| None),
    }
}

/// Prints the one document a call answers with.
// The plugin's single reply function: stdout is the CNI result channel.
#[allow(clippy::print_stdout)]
fn reply(doc: &Value) {
    println!("{doc}");
}

/// Decodes and validates a network config as ADD would; for the fuzz
/// target (it must never panic, whatever the bytes).
pub fn fuzz_config(data: &[u8]) {
    if let Ok(conf) = NetConf::parse(data) {
        let _ = conf.ipam_id("c", "eth0");
        let _ = serde_json::to_string(
            &result::CniResult::default().to_json(&conf.cni_version, conf.version),
        );
    }
    let _ = config::requested_version(data);
}
