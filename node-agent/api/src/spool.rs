// SPDX-License-Identifier: Apache-2.0
//! The CNI release spool, the one contract between the CNI plugins and the
//! agent outside the API: a DEL that cannot reach the agent records the
//! IPAM id it had to release as a file in `cni-release/` beside the agent's
//! socket (`/run/weave/cni-release/` by default) and succeeds. Whoever next
//! talks to the agent (the next plugin call, or the agent itself at start
//! and periodically) drains it.
//!
//! Invariants: one file per id, named after the id (`/`, which ids never
//! hold, would be `_`), holding the id; an entry is unlinked before it is
//! released, so of several drainers exactly one releases it; an entry
//! whose release fails transiently is recorded again.

use std::io;
use std::path::{Path, PathBuf};

/// Name of the spool directory, beside the API socket.
pub const DIR: &str = "cni-release";

/// A spool directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    /// The spool of the agent listening on `socket`: `cni-release/` in the
    /// socket's directory.
    pub fn beside(socket: &Path) -> Spool {
        Spool {
            dir: socket.parent().unwrap_or_else(|| Path::new("/")).join(DIR),
        }
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Records a pending release of `id`.
    pub fn record(&self, id: &str) -> io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        std::fs::write(self.dir.join(file_name(id)), id.as_bytes())
    }

    /// Removes `id` from the spool; true if it was there. An ADD that
    /// reuses an id calls this first, so that a later drain cannot release
    /// the fresh address.
    pub fn forget(&self, id: &str) -> bool {
        std::fs::remove_file(self.dir.join(file_name(id))).is_ok()
    }

    /// Takes every spooled id out of the spool (each file is unlinked
    /// before its id is returned; a file another drainer took first is
    /// skipped). The caller releases them and records back any whose
    /// release must be retried.
    pub fn take_all(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut taken = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(id) = std::fs::read_to_string(&path) else {
                continue;
            };
            if std::fs::remove_file(&path).is_ok() {
                taken.push(id.trim().to_string());
            }
        }
        taken
    }
}

/// File name of a spooled id: the id itself, which holds no `/` (container
/// IDs, network names and interface names exclude it).
pub fn file_name(id: &str) -> String {
    id.replace('/', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_recorded_taken_once_and_forgotten() {
        let root = std::env::temp_dir().join(format!("weave-spool-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let spool = Spool::beside(&root.join("weave.sock"));
        assert_eq!(spool.dir(), root.join("cni-release"));
        assert!(
            spool.take_all().is_empty(),
            "no directory is an empty spool"
        );
        spool.record("cni:weave:a:eth0").unwrap();
        spool.record("cni:weave:b:eth0").unwrap();
        spool.record("cni:weave:c:eth0").unwrap();
        assert!(spool.forget("cni:weave:c:eth0"));
        assert!(!spool.forget("cni:weave:c:eth0"));
        let mut taken = spool.take_all();
        taken.sort();
        assert_eq!(taken, vec!["cni:weave:a:eth0", "cni:weave:b:eth0"]);
        assert!(spool.take_all().is_empty(), "taken once");
        assert_eq!(file_name("a/b"), "a_b");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
