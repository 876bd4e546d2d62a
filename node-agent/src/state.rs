// SPDX-License-Identifier: Apache-2.0
//! What survives a restart, in `--state-dir`, besides IPAM's own file
//! (`ipam/persist.rs`): the peer name, written durably before first use
//! with [`crate::atomic_file`], so a crash never leaves a torn name.

use std::fs;
use std::path::Path;

use rand::Rng;

use crate::atomic_file;
use crate::mesh::PeerName;
use crate::{Error, Result};

/// File holding the peer name, inside the state directory.
pub const PEER_NAME_FILE: &str = "peer-name";

/// File holding where each attachment lives (for `weave ps`), inside the state directory.
pub const ATTACHMENTS_FILE: &str = "attachments.json";

/// The peer name: `explicit` if given (and then persisted), else the
/// persisted one, else a fresh random one (persisted).
pub fn load_or_create_peer_name(
    dir: &Path,
    explicit: Option<PeerName>,
    rng: &mut impl Rng,
) -> Result<PeerName> {
    let err = |source| Error::StateDir {
        path: dir.to_path_buf(),
        source,
    };
    fs::create_dir_all(dir).map_err(err)?;
    let path = dir.join(PEER_NAME_FILE);
    let stored = match fs::read_to_string(&path) {
        Ok(text) => Some(
            text.trim()
                .parse::<PeerName>()
                .map_err(|_| Error::PeerNameFile {
                    path: path.clone(),
                    content: text.trim().chars().take(64).collect(),
                })?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(err(e)),
    };
    let name = match (explicit, stored) {
        (Some(n), _) => n,
        (None, Some(n)) => return Ok(n),
        (None, None) => PeerName::random(rng),
    };
    if stored != Some(name) {
        atomic_file::write_durable(&path, format!("{name}\n").as_bytes()).map_err(err)?;
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn tempdir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("weave-state-test-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn name_is_created_once_and_kept() {
        let dir = tempdir("keep");
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let a = load_or_create_peer_name(&dir, None, &mut rng).unwrap();
        let b = load_or_create_peer_name(&dir, None, &mut rng).unwrap();
        assert_eq!(a, b);
        let explicit: PeerName = "02:00:00:00:00:42".parse().unwrap();
        assert_eq!(
            load_or_create_peer_name(&dir, Some(explicit), &mut rng).unwrap(),
            explicit
        );
        assert_eq!(
            load_or_create_peer_name(&dir, None, &mut rng).unwrap(),
            explicit
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_name_file_is_a_clear_error() {
        let dir = tempdir("corrupt");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(PEER_NAME_FILE), "not a name").unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let err = load_or_create_peer_name(&dir, None, &mut rng).unwrap_err();
        assert!(err.to_string().contains("not a peer name"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
