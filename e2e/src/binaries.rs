// SPDX-License-Identifier: Apache-2.0
//! Finding the project's binaries (`weaver`, `weave-npc`, `weave-net`, …) for the test bed.
//!
//! Cargo exposes no other package's binaries to this crate's tests, so they are looked up in
//! a directory: `$E2E_BIN_DIR` when set (CI, or a release build), else the workspace's
//! `target/debug`. Nothing is built from here; a missing binary is a clear error.

use std::path::PathBuf;

use anyhow::{bail, Result};

/// Environment variable naming the directory that holds the project's binaries.
pub const BIN_DIR_ENV: &str = "E2E_BIN_DIR";

/// The directory holding the project's binaries: `$E2E_BIN_DIR`, else `<workspace>/target/debug`.
pub fn bin_dir() -> PathBuf {
    match std::env::var_os(BIN_DIR_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug"),
    }
}

/// The path of the project binary `name` (for example `bin("weaver")`).
///
/// Fails with a hint when the file is missing, since cargo does not build other packages'
/// binaries for this crate's tests.
pub fn bin(name: &str) -> Result<PathBuf> {
    let dir = bin_dir();
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "binary {name} not found at {}: build it first with cargo build \
             (or point {BIN_DIR_ENV} at the directory holding it)",
            path.display()
        );
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binary_says_how_to_fix_it() {
        let err = bin("no-such-binary-e2e").expect_err("the binary does not exist");
        let text = err.to_string();
        assert!(text.contains("no-such-binary-e2e"), "{text}");
        assert!(text.contains("cargo build"), "{text}");
    }
}
