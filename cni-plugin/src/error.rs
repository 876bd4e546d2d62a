// SPDX-License-Identifier: Apache-2.0
//! The plugin's one error type and its CNI error codes (spec §"Error"):
//! every variant maps to the code a runtime expects, and [`Error::to_json`]
//! is the document printed on stdout before a non-zero exit.

use serde_json::{json, Value};

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// CNI error code: incompatible CNI version.
pub const CODE_VERSION: u32 = 1;
/// CNI error code: invalid or missing environment variables.
pub const CODE_ENV: u32 = 4;
/// CNI error code: I/O failure (reading stdin).
pub const CODE_IO: u32 = 5;
/// CNI error code: failed to decode content.
pub const CODE_DECODE: u32 = 6;
/// CNI error code: invalid network config.
pub const CODE_CONFIG: u32 = 7;
/// CNI error code: try again later.
pub const CODE_TRY_AGAIN: u32 = 11;
/// CNI error code: the plugin cannot service ADD (STATUS).
pub const CODE_NOT_AVAILABLE: u32 = 50;
/// Plugin-specific code: CHECK found the attachment differing from
/// `prevResult`.
pub const CODE_CHECK: u32 = 100;
/// Plugin-specific code: the interface name is taken in the namespace by
/// something this plugin did not create.
pub const CODE_IF_EXISTS: u32 = 101;
/// The code libcni's helpers use for an internal error.
pub const CODE_INTERNAL: u32 = 999;

/// What can go wrong in a plugin call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config's `cniVersion` (or the verb for it) is not supported.
    #[error("{0}")]
    Version(String),
    /// A required environment variable is missing or unusable.
    #[error("{0}")]
    Env(String),
    /// Reading stdin failed.
    #[error("read network config from stdin")]
    Stdin(#[source] std::io::Error),
    /// The config is not the JSON we expect.
    #[error("decode network config: {0}")]
    Decode(#[source] serde_json::Error),
    /// The config decodes but is not valid.
    #[error("invalid network config: {0}")]
    Config(String),
    /// The agent did not answer (not running, restarting).
    #[error("weaver is not reachable, try again later: {0}")]
    AgentDown(#[source] weave_api::Error),
    /// The agent answered but could not serve the request now.
    #[error("weaver cannot serve the request now, try again later: {0}")]
    AgentBusy(#[source] weave_api::Error),
    /// The agent refused the request.
    #[error("{what}: {source}")]
    Agent {
        /// What was being asked.
        what: String,
        /// The refusal.
        #[source]
        source: weave_api::Error,
    },
    /// STATUS: the plugin cannot serve ADD now.
    #[error("weave is not ready: {0}")]
    NotReady(String),
    /// CHECK: what differs from `prevResult`.
    #[error("check of {id} failed: {}", .differences.join("; "))]
    Check {
        /// The attachment checked.
        id: String,
        /// One line per difference.
        differences: Vec<String>,
    },
    /// ADD: `CNI_IFNAME` exists in the namespace and is not ours.
    #[error("interface {ifname} already exists in network namespace {netns}")]
    IfnameTaken {
        /// The interface name.
        ifname: String,
        /// The namespace.
        netns: String,
    },
    /// Wiring the namespace failed.
    #[error("wire {id}: {source}")]
    Wiring {
        /// The attachment.
        id: String,
        /// The failure.
        #[source]
        source: weave_platform::wiring::WiringError,
    },
    /// A kernel operation outside wiring failed.
    #[error(transparent)]
    Platform(#[from] weave_platform::Error),
    /// Something of the plugin's own (runtime, spool directory) failed.
    #[error("{op}: {source}")]
    Internal {
        /// What was being done.
        op: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Several independent steps of a teardown failed (DEL, GC).
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Many(Vec<Error>),
}

impl Error {
    /// The CNI error code of this error.
    pub fn code(&self) -> u32 {
        match self {
            Self::Version(_) => CODE_VERSION,
            Self::Env(_) => CODE_ENV,
            Self::Stdin(_) => CODE_IO,
            Self::Decode(_) => CODE_DECODE,
            Self::Config(_) => CODE_CONFIG,
            Self::AgentDown(_) | Self::AgentBusy(_) => CODE_TRY_AGAIN,
            Self::NotReady(_) => CODE_NOT_AVAILABLE,
            Self::Check { .. } => CODE_CHECK,
            Self::IfnameTaken { .. } => CODE_IF_EXISTS,
            Self::Many(errors) => errors.first().map_or(CODE_INTERNAL, Error::code),
            Self::Agent { .. }
            | Self::Wiring { .. }
            | Self::Platform(_)
            | Self::Internal { .. } => CODE_INTERNAL,
        }
    }

    /// Classifies an agent client error: unreachable and "busy" answers are
    /// transient (code 11), 400 is a config the agent refuses (code 7),
    /// anything else is internal.
    pub fn from_agent(what: &str, e: weave_api::Error) -> Self {
        match &e {
            weave_api::Error::Connect { .. } | weave_api::Error::Io { .. } => Self::AgentDown(e),
            weave_api::Error::Status {
                status: 503 | 504, ..
            } => Self::AgentBusy(e),
            weave_api::Error::Status { status: 400, .. } => Self::Config(format!("{what}: {e}")),
            _ => Self::Agent {
                what: what.to_string(),
                source: e,
            },
        }
    }

    /// Whether the agent could not be asked at all (a release must wait in
    /// the spool).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::AgentDown(_) | Self::AgentBusy(_))
    }

    /// The CNI error document (`msg` is this error, `details` its causes).
    pub fn to_json(&self, cni_version: &str) -> Value {
        let details = weave_api::causes(self);
        json!({
            "cniVersion": cni_version,
            "code": self.code(),
            "msg": self.to_string(),
            "details": details.join(": "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_spec() {
        assert_eq!(Error::Version("x".into()).code(), 1);
        assert_eq!(Error::Env("x".into()).code(), 4);
        assert_eq!(Error::Config("x".into()).code(), 7);
        assert_eq!(Error::NotReady("x".into()).code(), 50);
        let down = weave_api::Error::Connect {
            tried: "unix:/nowhere".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        let e = Error::from_agent("allocate", down);
        assert_eq!(e.code(), 11);
        assert!(e.is_transient());
        let refused = weave_api::Error::Status {
            what: "POST /ipam/allocate".into(),
            status: 400,
            message: "outside the allocation range".into(),
        };
        assert_eq!(Error::from_agent("allocate", refused).code(), 7);
        let doc = Error::Env("CNI_IFNAME is missing".into()).to_json("1.0.0");
        assert_eq!(doc["code"], 4);
        assert_eq!(doc["cniVersion"], "1.0.0");
        assert_eq!(doc["msg"], "CNI_IFNAME is missing");
    }
}
