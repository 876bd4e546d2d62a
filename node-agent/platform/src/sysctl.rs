// SPDX-License-Identifier: Apache-2.0
//! Reading and writing sysctls through `/proc/sys`.
//!
//! `/proc/sys/net` shows the network namespace of the thread that opens the
//! file, so these functions act on the calling thread's namespace; wrap them
//! in [`crate::netns::open_in`] to act on another one. Keys use `sysctl(8)`
//! syntax: dots separate path components and a `/` inside a component stands
//! for a literal dot (`net.ipv4.conf.eth0/100.rp_filter`).

use std::{fs, path::PathBuf};

use crate::error::{Error, Result};

/// Root of the sysctl tree.
const PROC_SYS: &str = "/proc/sys";

/// Writes `value` to the sysctl `key` (e.g. `net.ipv4.ip_forward`) in the
/// current thread's network namespace (use through
/// [`open_in`](crate::netns::open_in) for another one).
pub fn write_sysctl(key: &str, value: &str) -> Result<()> {
    let path = sysctl_path(key)?;
    fs::write(&path, value).map_err(|e| Error::io(format!("write sysctl {key} = {value}"), e))
}

/// Reads the sysctl `key`, without the trailing newline.
pub fn read_sysctl(key: &str) -> Result<String> {
    let path = sysctl_path(key)?;
    let mut value =
        fs::read_to_string(&path).map_err(|e| Error::io(format!("read sysctl {key}"), e))?;
    let trimmed = value.trim_end_matches('\n').len();
    value.truncate(trimmed);
    Ok(value)
}

/// Maps a key to its file under `/proc/sys`, refusing anything that could
/// leave that tree.
fn sysctl_path(key: &str) -> Result<PathBuf> {
    let invalid = || Error::InvalidSysctlKey {
        key: key.to_owned(),
    };
    let mut path = PathBuf::from(PROC_SYS);
    for component in key.split('.') {
        let component = component.replace('/', ".");
        if component.is_empty() || component == "." || component == ".." || component.contains('\0')
        {
            return Err(invalid());
        }
        path.push(component);
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_proc_sys_paths() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward").expect("valid key"),
            PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            sysctl_path("net.ipv4.conf.eth0/100.rp_filter").expect("valid key"),
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0.100/rp_filter")
        );
    }

    #[test]
    fn keys_cannot_escape_proc_sys() {
        for bad in ["", "net..ipv4", ".net", "net.", "net./", "net.//.x", "a\0b"] {
            assert!(
                matches!(sysctl_path(bad), Err(Error::InvalidSysctlKey { .. })),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn reading_a_missing_key_keeps_enoent() {
        let err = read_sysctl("net.weave.no_such_key").expect_err("no such sysctl");
        assert_eq!(err.errno(), Some(libc::ENOENT));
        assert_eq!(err.to_string(), "read sysctl net.weave.no_such_key");
    }
}
