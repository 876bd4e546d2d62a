// SPDX-License-Identifier: Apache-2.0
//! Installing weave's CNI files on a node (`weave setup-cni`, the DaemonSet's init container)
//! and removing everything weave made on a node (`weave reset`, the uninstall manifest).
//!
//! Installation writes each file next to its final name and renames it into place, so a
//! container runtime reading the directories never sees half a binary or half a conflist.
//! Files that weave adds only when the node lacks them (the reference `portmap` and `loopback`
//! plugins the conflist needs) are recorded in the state directory, so that reset removes
//! exactly what weave added and nothing the node had before.
//!
//! Reset carries on past failures and reports all of them; it refuses while pods are attached
//! to the bridge unless forced (their network would vanish under them).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// weave's plugins, always installed (replacing older versions).
pub const PLUGINS: &[&str] = &["weave-net", "weave-ipam"];
/// Reference plugins the conflist needs, installed only where the node has none.
pub const HELPERS: &[&str] = &["portmap", "loopback"];
/// The conflist's file name.
pub const CONFLIST_NAME: &str = "10-weave.conflist";
/// The conflist weave installs (cniVersion 1.1.0: containerd polls STATUS, CRI-O sends GC).
pub const CONFLIST: &str = include_str!("../../manifests/10-weave.conflist");
/// Record of helper plugins weave added, in the state directory.
const RECORD: &str = "cni-installed.json";
/// Files of the state directory that reset removes.
const STATE_FILES: &[&str] = &[
    crate::state::PEER_NAME_FILE,
    crate::ipam::persist::FILE,
    crate::services::FILE,
    crate::dns::service::STATE_FILE,
    crate::state::ATTACHMENTS_FILE,
    "kube-registered",
    RECORD,
];

/// Where things are, on the node (the uninstall and init containers mount the host's
/// directories at the same paths).
#[derive(Debug, Clone)]
pub struct Paths {
    /// Where the plugins are copied from (the image's `/usr/bin`).
    pub source_dir: PathBuf,
    /// The runtime's plugin directory.
    pub bin_dir: PathBuf,
    /// The runtime's configuration directory.
    pub conf_dir: PathBuf,
    /// The agent's state directory.
    pub state_dir: PathBuf,
    /// The agent's run directory (API socket, release spool).
    pub run_dir: PathBuf,
}

/// Errors of installation and reset.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On what.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// A plugin to install is missing from the source directory.
    #[error("{0} not found: the image is incomplete")]
    Missing(PathBuf),
    /// Reset found pods still attached.
    #[error(
        "pods are still attached to bridge {bridge} ({ports}); stop them first or use --force"
    )]
    PodsAttached {
        /// The bridge.
        bridge: String,
        /// Its ports.
        ports: String,
    },
}

/// What weave added to the node besides its own plugins.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    /// Helper plugins added to the plugin directory.
    helpers: BTreeSet<String>,
}

/// Installs the plugins and the conflist; returns the names of the files written.
pub fn setup_cni(paths: &Paths) -> Result<Vec<String>, InstallError> {
    let mut written = Vec::new();
    if let Some(missing) = PLUGINS
        .iter()
        .map(|name| paths.source_dir.join(name))
        .find(|source| !source.is_file())
    {
        return Err(InstallError::Missing(missing));
    }
    create_dir(&paths.bin_dir)?;
    create_dir(&paths.conf_dir)?;
    create_dir(&paths.state_dir)?;
    for name in PLUGINS {
        let data = read(&paths.source_dir.join(name))?;
        write_atomic(&paths.bin_dir.join(name), &data, 0o755)?;
        written.push((*name).to_owned());
    }
    let record_path = paths.state_dir.join(RECORD);
    let mut record: Record = std::fs::read(&record_path)
        .ok()
        .and_then(|d| serde_json::from_slice(&d).ok())
        .unwrap_or_default();
    for name in HELPERS {
        let target = paths.bin_dir.join(name);
        let source = paths.source_dir.join(name);
        // Ours to refresh if we added it; the node's own otherwise.
        if (target.exists() && !record.helpers.contains(*name)) || !source.is_file() {
            continue;
        }
        write_atomic(&target, &read(&source)?, 0o755)?;
        record.helpers.insert((*name).to_owned());
        written.push((*name).to_owned());
    }
    let record_text = serde_json::to_vec(&record).expect("the record serialises");
    write_atomic(&record_path, &record_text, 0o644)?;
    let conflist = paths.conf_dir.join(CONFLIST_NAME);
    if std::fs::read_to_string(&conflist).ok().as_deref() != Some(CONFLIST) {
        write_atomic(&conflist, CONFLIST.as_bytes(), 0o644)?;
        written.push(CONFLIST_NAME.to_owned());
    }
    Ok(written)
}

/// Removes weave's CNI files, state and run directories (the file-system half of reset);
/// returns what was removed and every failure.
pub fn remove_files(paths: &Paths) -> (Vec<PathBuf>, Vec<InstallError>) {
    let record: Record = std::fs::read(paths.state_dir.join(RECORD))
        .ok()
        .and_then(|d| serde_json::from_slice(&d).ok())
        .unwrap_or_default();
    let mut targets: Vec<PathBuf> = PLUGINS.iter().map(|p| paths.bin_dir.join(p)).collect();
    targets.extend(record.helpers.iter().map(|h| paths.bin_dir.join(h)));
    targets.push(paths.conf_dir.join(CONFLIST_NAME));
    targets.extend(STATE_FILES.iter().map(|f| paths.state_dir.join(f)));
    let mut removed = Vec::new();
    let mut errors = Vec::new();
    for path in targets {
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => errors.push(InstallError::Io {
                what: "remove",
                path,
                source,
            }),
        }
    }
    match std::fs::remove_dir_all(&paths.run_dir) {
        Ok(()) => removed.push(paths.run_dir.clone()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => errors.push(InstallError::Io {
            what: "remove",
            path: paths.run_dir.clone(),
            source,
        }),
    }
    // The state directory itself goes too, unless it holds something that is not ours.
    if std::fs::remove_dir(&paths.state_dir).is_ok() {
        removed.push(paths.state_dir.clone());
    }
    (removed, errors)
}

/// The ports of bridge `bridge` other than weave's own devices (the sleeve's TAP, the fast
/// datapath's VXLAN device), from sysfs (empty when the bridge does not exist).
pub fn attached_ports(bridge: &str) -> Vec<String> {
    let dir = Path::new("/sys/class/net").join(bridge).join("brif");
    let mut ports: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|p| p != crate::router::sleeve::TAP_NAME && p != crate::router::fastdp::VXLAN_NAME)
        .collect();
    ports.sort();
    ports
}

/// Refuses a reset while pods are attached, unless `force`.
pub fn check_detached(bridge: &str, force: bool) -> Result<(), InstallError> {
    let ports = attached_ports(bridge);
    if ports.is_empty() || force {
        return Ok(());
    }
    Err(InstallError::PodsAttached {
        bridge: bridge.to_owned(),
        ports: ports.join(", "),
    })
}

/// Creates a directory and its parents.
fn create_dir(path: &Path) -> Result<(), InstallError> {
    std::fs::create_dir_all(path).map_err(|source| InstallError::Io {
        what: "create",
        path: path.to_owned(),
        source,
    })
}

/// Reads a whole file.
fn read(path: &Path) -> Result<Vec<u8>, InstallError> {
    std::fs::read(path).map_err(|source| InstallError::Io {
        what: "read",
        path: path.to_owned(),
        source,
    })
}

/// Writes `data` to `path` atomically and durably, with permission bits `mode`.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), InstallError> {
    crate::atomic_file::write_durable_mode(path, data, mode).map_err(|source| InstallError::Io {
        what: "write",
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn paths(root: &Path) -> Paths {
        Paths {
            source_dir: root.join("image"),
            bin_dir: root.join("opt/cni/bin"),
            conf_dir: root.join("etc/cni/net.d"),
            state_dir: root.join("var/lib/weave"),
            run_dir: root.join("run/weave"),
        }
    }

    fn root(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("weave-install-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("image")).expect("image dir");
        for f in ["weave-net", "weave-ipam", "portmap", "loopback"] {
            std::fs::write(dir.join("image").join(f), format!("binary {f}")).expect("source file");
        }
        dir
    }

    #[test]
    fn install_then_reset_leaves_the_node_as_before() {
        let dir = root("cycle");
        let p = paths(&dir);
        // The node has its own loopback, which must survive.
        std::fs::create_dir_all(&p.bin_dir).expect("bin dir");
        std::fs::write(p.bin_dir.join("loopback"), "the node's own").expect("node's loopback");
        let written = setup_cni(&p).expect("install");
        assert_eq!(
            written,
            ["weave-net", "weave-ipam", "portmap", CONFLIST_NAME]
        );
        assert_eq!(
            std::fs::read_to_string(p.bin_dir.join("loopback")).expect("kept"),
            "the node's own"
        );
        let mode = std::fs::metadata(p.bin_dir.join("weave-net"))
            .expect("installed")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(
            std::fs::read_to_string(p.conf_dir.join(CONFLIST_NAME)).expect("conflist"),
            CONFLIST
        );
        // Again: the conflist is unchanged, our portmap is refreshed, no temporary files.
        let again = setup_cni(&p).expect("install again");
        assert_eq!(again, ["weave-net", "weave-ipam", "portmap"]);
        let leftovers: Vec<_> = std::fs::read_dir(&p.bin_dir)
            .expect("list")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        std::fs::create_dir_all(&p.run_dir).expect("run dir");
        std::fs::write(p.state_dir.join("peer-name"), "aa:bb:cc:dd:ee:ff").expect("state");
        // Every file the agent keeps there (found on a real node: `dns.json` and
        // `attachments.json` once kept the directory alive).
        for f in [
            crate::ipam::persist::FILE,
            crate::services::FILE,
            crate::dns::service::STATE_FILE,
            crate::state::ATTACHMENTS_FILE,
        ] {
            std::fs::write(p.state_dir.join(f), "{}").expect("state");
        }
        let (removed, errors) = remove_files(&p);
        assert!(errors.is_empty(), "{errors:?}");
        assert!(removed.contains(&p.state_dir));
        let mut left: Vec<String> = std::fs::read_dir(&p.bin_dir)
            .expect("list")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["loopback"]);
        assert!(std::fs::read_dir(&p.conf_dir)
            .expect("list")
            .next()
            .is_none());
        assert!(!p.run_dir.exists() && !p.state_dir.exists());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn an_incomplete_image_installs_nothing() {
        let dir = root("incomplete");
        std::fs::remove_file(dir.join("image/weave-ipam")).expect("remove");
        let p = paths(&dir);
        let err = setup_cni(&p).expect_err("weave-ipam is missing");
        assert!(err.to_string().contains("weave-ipam not found"), "{err}");
        assert!(!p.conf_dir.join(CONFLIST_NAME).exists());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn the_shipped_conflist_asks_for_status_polling() {
        let doc: serde_json::Value = serde_json::from_str(CONFLIST).expect("JSON");
        assert_eq!(doc["cniVersion"], "1.1.0");
        assert_eq!(doc["plugins"][0]["type"], "weave-net");
    }
}
