// SPDX-License-Identifier: Apache-2.0
//! The `Firewall` seam (STYLE §2): nftables side effects go through [`Firewall`].
//!
//! Callers compute a complete `nftables` JSON document first and hand it over as one
//! transaction, which the kernel applies atomically or not at all: a JSON document
//! (`nftables` crate) or a script in nft's native syntax. [`NftFirewall`] runs `nft -j -f -`
//! or `nft -f -` (blocking: call it from `spawn_blocking` or a dedicated thread);
//! `FakeFirewall` (feature `fake`) records what was applied, for unit tests.
//!
//! Only the tables a caller names are ever listed or changed; this module never flushes the
//! whole ruleset.

use std::path::PathBuf;

use nftables::schema::{NfListObject, NfObject, Nftables};
use nftables::types::NfFamily;

/// What can go wrong talking to nftables.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// `nft` refused the transaction or could not be run.
    #[error("{op}")]
    Nft {
        /// What was being done, e.g. `apply 120 nftables commands`.
        op: String,
        /// The failure reported by the nftables helper.
        #[source]
        source: nftables::helper::NftablesError,
    },
    /// `nft -f -` could not be run or fed.
    #[error("{op}")]
    Spawn {
        /// What was being done, e.g. `apply an nftables script of 120 lines`.
        op: String,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
    /// `nft` did not finish within its time limit and was killed.
    #[error("{op}: nft did not finish within {limit:?} and was killed")]
    TimedOut {
        /// What was being done.
        op: String,
        /// The limit.
        limit: std::time::Duration,
    },
    /// `nft -f -` refused the script.
    #[error("{op}: nft said: {stderr}")]
    Refused {
        /// What was being done.
        op: String,
        /// What `nft` printed on stderr.
        stderr: String,
    },
}

/// A named counter's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterValue {
    /// Counter name.
    pub name: String,
    /// Packets counted.
    pub packets: u64,
}

/// Applies nftables transactions and reads counters back.
pub trait Firewall: Send + Sync {
    /// Applies `doc` as one atomic transaction.
    fn apply(&self, doc: &Nftables<'_>) -> Result<(), FirewallError>;

    /// Applies `script`, commands in nft's native syntax (`nft -f`), as one atomic
    /// transaction. nft parses this much faster than JSON for large rulesets.
    fn apply_script(&self, script: &str) -> Result<(), FirewallError>;

    /// The named counters of table `table` in `family`; empty when the table is absent.
    fn counters(&self, family: NfFamily, table: &str) -> Result<Vec<CounterValue>, FirewallError>;
}

/// How long one `nft -f -` may run by default before it is killed.
pub const DEFAULT_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The real thing: the `nft` program with JSON input.
#[derive(Debug, Clone)]
pub struct NftFirewall {
    /// Path of `nft` (`nft` from `$PATH` by default).
    program: PathBuf,
    /// How long one script may take.
    limit: std::time::Duration,
}

impl Default for NftFirewall {
    fn default() -> Self {
        Self {
            program: PathBuf::from("nft"),
            limit: DEFAULT_LIMIT,
        }
    }
}

impl NftFirewall {
    /// Uses the `nft` program at `program`.
    pub fn with_program(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            limit: DEFAULT_LIMIT,
        }
    }

    /// Kills `nft -f -` (the transaction is then not applied) when it runs longer than `limit`.
    #[must_use]
    pub fn with_limit(mut self, limit: std::time::Duration) -> Self {
        self.limit = limit;
        self
    }
}

impl Firewall for NftFirewall {
    fn apply(&self, doc: &Nftables<'_>) -> Result<(), FirewallError> {
        if doc.objects.is_empty() {
            return Ok(());
        }
        nftables::helper::apply_ruleset_with_args(
            doc,
            Some(&self.program),
            std::iter::empty::<&str>(),
        )
        .map_err(|source| FirewallError::Nft {
            op: format!("apply {} nftables commands", doc.objects.len()),
            source,
        })
    }

    fn apply_script(&self, script: &str) -> Result<(), FirewallError> {
        use std::io::{Read as _, Write as _};
        use std::process::{Command, Stdio};
        if script.trim().is_empty() {
            return Ok(());
        }
        let op = || {
            format!(
                "apply an nftables script of {} lines",
                script.lines().count()
            )
        };
        let mut child = Command::new(&self.program)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| FirewallError::Spawn { op: op(), source })?;
        let (stdin, stderr) = (child.stdin.take(), child.stderr.take());
        // Feed the script and collect stderr on a thread of their own, so that neither pipe
        // can block the wait for the child.
        let (status, fed) = std::thread::scope(|scope| {
            let feeder = scope.spawn(|| {
                let written = stdin.map_or(Ok(()), |mut stdin| stdin.write_all(script.as_bytes()));
                let mut err = String::new();
                if let Some(mut stderr) = stderr {
                    let _ = stderr.read_to_string(&mut err);
                }
                (written, err)
            });
            let status = crate::child::wait_with_limit(&mut child, self.limit);
            (status, feeder.join())
        });
        let status = status.map_err(|source| FirewallError::Spawn { op: op(), source })?;
        let (written, stderr) = fed.unwrap_or_else(|_| (Ok(()), String::new()));
        let Some(status) = status else {
            return Err(FirewallError::TimedOut {
                op: op(),
                limit: self.limit,
            });
        };
        if !status.success() {
            return Err(FirewallError::Refused {
                op: op(),
                stderr: stderr.trim().to_owned(),
            });
        }
        written.map_err(|source| FirewallError::Spawn { op: op(), source })
    }

    fn counters(&self, family: NfFamily, table: &str) -> Result<Vec<CounterValue>, FirewallError> {
        let family_name = match family {
            NfFamily::IP => "ip",
            NfFamily::IP6 => "ip6",
            NfFamily::INet => "inet",
            NfFamily::ARP => "arp",
            NfFamily::Bridge => "bridge",
            NfFamily::NetDev => "netdev",
        };
        let args = ["list", "counters", "table", family_name, table];
        let listed = nftables::helper::get_current_ruleset_with_args(Some(&self.program), args);
        let doc = match listed {
            Ok(doc) => doc,
            // A missing table is "no counters", not a failure.
            Err(nftables::helper::NftablesError::NftFailed { stderr, .. })
                if stderr.contains("No such file") =>
            {
                return Ok(Vec::new())
            }
            Err(source) => {
                return Err(FirewallError::Nft {
                    op: format!("list counters of table {family_name} {table}"),
                    source,
                })
            }
        };
        Ok(doc
            .objects
            .iter()
            .filter_map(|o| match o {
                NfObject::ListObject(NfListObject::Counter(c)) => Some(CounterValue {
                    name: c.name.to_string(),
                    packets: u64::from(c.packets.unwrap_or(0)),
                }),
                _ => None,
            })
            .collect())
    }
}

/// An in-memory firewall that records every applied transaction as text: JSON documents as
/// their JSON, scripts as they are (feature `fake`).
#[cfg(feature = "fake")]
#[derive(Debug, Default)]
pub struct FakeFirewall {
    /// Applied transactions (JSON documents or scripts), oldest first.
    applied: std::sync::Mutex<Vec<String>>,
}

#[cfg(feature = "fake")]
impl FakeFirewall {
    /// Every transaction applied so far, as text.
    pub fn applied(&self) -> Vec<String> {
        self.applied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

#[cfg(feature = "fake")]
impl Firewall for FakeFirewall {
    fn apply(&self, doc: &Nftables<'_>) -> Result<(), FirewallError> {
        let json = serde_json::to_string(doc).expect("nftables documents always serialise");
        self.applied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(json);
        Ok(())
    }

    fn apply_script(&self, script: &str) -> Result<(), FirewallError> {
        self.applied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(script.to_owned());
        Ok(())
    }

    fn counters(
        &self,
        _family: NfFamily,
        _table: &str,
    ) -> Result<Vec<CounterValue>, FirewallError> {
        Ok(Vec::new())
    }
}
