// SPDX-License-Identifier: Apache-2.0
//! Per-node cgroup roots, made in every cgroup hierarchy the host has mounted and removed with
//! everything the kubelet and runc created below them.
//!
//! The host's cgroup mounts are never changed: a root is a directory `/<name>` made inside each
//! mounted hierarchy (v1 controllers, named hierarchies and the unified one), so the kubelet
//! finds its `cgroupRoot` wherever it looks. A new v1 cpuset cgroup starts with no CPUs and no
//! memory nodes, so those are copied from the parent. Removal goes depth first and waits for
//! processes that are still exiting (a cgroup with tasks cannot be removed).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::wait::wait_until;

/// How long removal waits for the last tasks of a cgroup to exit.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(60);

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hierarchy {
    /// Mount point (`/sys/fs/cgroup/cpu`).
    pub(crate) mount: PathBuf,
    /// Whether it carries the v1 cpuset controller.
    pub(crate) cpuset: bool,
}

/// The cgroup hierarchies mounted in this process's mount namespace, from `mountinfo` text.
pub(crate) fn hierarchies(mountinfo: &str) -> Vec<Hierarchy> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (mount_part, super_part) = line.split_once(" - ")?;
            let mount = mount_part.split(' ').nth(4)?;
            let mut fields = super_part.split(' ');
            let fstype = fields.next()?;
            let options = fields.nth(1).unwrap_or_default();
            matches!(fstype, "cgroup" | "cgroup2").then(|| Hierarchy {
                mount: PathBuf::from(mount),
                cpuset: fstype == "cgroup" && options.split(',').any(|o| o == "cpuset"),
            })
        })
        .collect()
}

/// The hierarchies of this process.
pub(crate) fn mounted() -> Result<Vec<Hierarchy>> {
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").context("read /proc/self/mountinfo")?;
    let found = hierarchies(&text);
    if found.is_empty() {
        bail!("no cgroup hierarchy is mounted");
    }
    Ok(found)
}

/// Creates cgroup `/name` in every hierarchy. `name` is one plain path component.
pub(crate) fn create_root(name: &str) -> Result<()> {
    check_name(name)?;
    for hierarchy in mounted()? {
        let dir = hierarchy.mount.join(name);
        std::fs::create_dir(&dir).with_context(|| format!("create cgroup {}", dir.display()))?;
        if hierarchy.cpuset {
            for file in ["cpuset.cpus", "cpuset.mems"] {
                let value = std::fs::read_to_string(hierarchy.mount.join(file))
                    .with_context(|| format!("read {file} of {}", hierarchy.mount.display()))?;
                std::fs::write(dir.join(file), value.trim())
                    .with_context(|| format!("write {file} of {}", dir.display()))?;
            }
        }
    }
    Ok(())
}

/// Removes cgroup `/name` and everything below it from every hierarchy, waiting for exiting
/// tasks; carries on past failures and returns them all. A root that does not exist is fine.
pub(crate) fn remove_root(name: &str) -> Vec<anyhow::Error> {
    if let Err(err) = check_name(name) {
        return vec![err];
    }
    let hierarchies = match mounted() {
        Ok(found) => found,
        Err(err) => return vec![err],
    };
    hierarchies
        .iter()
        .filter_map(|hierarchy| {
            let root = hierarchy.mount.join(name);
            wait_until(
                REMOVE_TIMEOUT,
                &format!("cgroup {} to empty", root.display()),
                || Ok(remove_tree(&root).is_ok().then_some(())),
            )
            .and_then(|()| remove_tree(&root))
            .err()
        })
        .collect()
}

/// Removes a cgroup directory tree, children first. A missing directory is fine.
fn remove_tree(dir: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err).with_context(|| format!("list {}", dir.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("list {}", dir.display()))?;
        if entry.file_type()?.is_dir() {
            remove_tree(&entry.path())?;
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err).with_context(|| format!("remove cgroup {}", dir.display())),
    }
}

/// A cgroup root name is one path component of a safe alphabet.
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        bail!("bad cgroup root name {name:?}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_v1_named_and_unified_hierarchies() {
        let text = "\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        let found = hierarchies(text);
        let mounts: Vec<_> = found
            .iter()
            .map(|h| h.mount.display().to_string())
            .collect();
        assert_eq!(
            mounts,
            [
                "/sys/fs/cgroup/cpu",
                "/sys/fs/cgroup/cpuset",
                "/sys/fs/cgroup/systemd",
                "/sys/fs/cgroup/unified"
            ]
        );
        assert_eq!(found.iter().filter(|h| h.cpuset).count(), 1);
        assert!(found[1].cpuset);
    }

    #[test]
    fn names_must_be_one_component() {
        for bad in ["", "..", "a/b", ".x", "a b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        check_name("wv1a2b3c-node-1").expect("plain name");
    }
}
