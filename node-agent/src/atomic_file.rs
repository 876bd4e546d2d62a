// SPDX-License-Identifier: Apache-2.0
//! Replacing a file atomically: the data goes to a temporary file beside
//! it, which is then renamed over it, so a crash at any instant leaves
//! either the old or the new content, never a torn file.
//! [`write_durable`] also fsyncs file and directory before returning;
//! [`replace`] leaves that to a later [`sync`], for state rewritten often
//! (IPAM) where a power loss may lose the last changes but never corrupt.
//! Used by the peer name (`state.rs`), the IPAM state (`ipam/persist.rs`),
//! the Kubernetes registration marker (`kube`) and the CNI files weave
//! installs (`install.rs`).

use std::fs;
use std::io::Write;
use std::path::Path;

/// Replaces `path` with `data` atomically and durably.
pub fn write_durable(path: &Path, data: &[u8]) -> std::io::Result<()> {
    write_file(path, data, true, None)?;
    sync_dir(path)
}

/// Like [`write_durable`], the new file getting permission bits `mode` before it appears
/// (an executable is never seen without its execute bits).
pub fn write_durable_mode(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    write_file(path, data, true, Some(mode))?;
    sync_dir(path)
}

/// Replaces `path` with `data` atomically but without waiting for the disk:
/// a crash of the process at any instant leaves the old or the new content;
/// a power loss may lose the change until [`sync`] has run.
pub fn replace(path: &Path, data: &[u8]) -> std::io::Result<()> {
    write_file(path, data, false, None)
}

/// Makes the current content of `path` (and its name) durable.
pub fn sync(path: &Path) -> std::io::Result<()> {
    fs::File::open(path)?.sync_all()?;
    sync_dir(path)
}

fn write_file(path: &Path, data: &[u8], durable: bool, mode: Option<u32>) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state")
    ));
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(data)?;
        if let Some(mode) = mode {
            use std::os::unix::fs::PermissionsExt as _;
            f.set_permissions(fs::Permissions::from_mode(mode))?;
        }
        if durable {
            f.sync_all()?;
        }
    }
    fs::rename(&tmp, path)
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    fs::File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaced_whole_and_no_temporary_left() {
        let dir = std::env::temp_dir().join(format!("weave-atomic-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        write_durable(&path, b"one").unwrap();
        replace(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        sync(&path).unwrap();
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
