// SPDX-License-Identifier: Apache-2.0
//! The upstream binaries of the real cluster, built by `e2e/k8s/build.sh`.
//!
//! The build script pins every component in the Go modules beside it and builds them once per
//! version set into a cache outside the work tree; it prints the directory. This module finds
//! that directory (from `$WEAVE_K8S_TOOLS`, else by running the script, which returns at once
//! when the set is already built) and names the files in it. Nothing here downloads or builds
//! anything itself.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::command::run;

/// Environment variable naming a tools directory built by `e2e/k8s/build.sh`.
pub const TOOLS_ENV: &str = "WEAVE_K8S_TOOLS";

/// Binaries every cluster needs, checked when the directory is found.
const REQUIRED: &[&str] = &[
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "kubectl",
    "containerd",
    "containerd-shim-runc-v2",
    "ctr",
    "runc",
    "crictl",
    "helm",
    "pause",
    "agnhost",
];

/// A built tools directory: `bin/` (programs) and `cni/` (reference CNI plugins).
#[derive(Debug, Clone)]
pub struct Tools {
    /// The directory the build script printed.
    dir: PathBuf,
}

impl Tools {
    /// The tools directory from `$WEAVE_K8S_TOOLS`, else from running `e2e/k8s/build.sh`
    /// (which builds the set first if this machine has not yet).
    pub fn locate() -> Result<Tools> {
        let dir = match std::env::var_os(TOOLS_ENV) {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => {
                let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s/build.sh");
                let out = run(Command::new("bash").arg(&script))
                    .context("build the Kubernetes tools (e2e/k8s/build.sh)")?;
                PathBuf::from(out.lines().last().unwrap_or_default().trim())
            }
        };
        Tools::at(&dir)
    }

    /// The tools in `dir`, checked for every required binary.
    pub fn at(dir: &Path) -> Result<Tools> {
        let tools = Tools {
            dir: dir.to_owned(),
        };
        let missing: Vec<&str> = REQUIRED
            .iter()
            .copied()
            .filter(|name| !tools.bin(name).is_file())
            .collect();
        if !missing.is_empty() {
            bail!(
                "{} is not a complete Kubernetes tools directory (missing {}): build it with \
                 `make k8s-tools` or point {TOOLS_ENV} at one",
                dir.display(),
                missing.join(", ")
            );
        }
        Ok(tools)
    }

    /// The directory itself.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of program `name` (`kubectl`, `etcd`, …).
    pub fn bin(&self, name: &str) -> PathBuf {
        self.dir.join("bin").join(name)
    }

    /// The directory of the reference CNI plugins (`bridge`, `host-local`, `portmap`,
    /// `loopback`).
    pub fn cni_dir(&self) -> PathBuf {
        self.dir.join("cni")
    }

    /// The version of component `name` recorded by the build (`kubernetes`, `pause`,
    /// `agnhost`).
    pub fn version(&self, name: &str) -> Result<String> {
        let path = self.dir.join("versions");
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        text.lines()
            .find_map(|line| {
                let (key, value) = line.split_once(' ')?;
                (key == name).then(|| value.trim().to_owned())
            })
            .with_context(|| format!("{} names no version of {name}", path.display()))
    }
}

/// Environment variable naming the nerdctl built by `e2e/nerdctl/build.sh`.
pub const NERDCTL_ENV: &str = "WEAVE_NERDCTL";

/// nerdctl, built apart from the Kubernetes set (so that its pin does not change that set's
/// key): from `$WEAVE_NERDCTL`, else by running `e2e/nerdctl/build.sh`, which returns at once
/// when it is built.
pub fn nerdctl() -> Result<PathBuf> {
    let path = match std::env::var_os(NERDCTL_ENV) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("nerdctl/build.sh");
            let out = run(Command::new("bash").arg(&script))
                .context("build nerdctl (e2e/nerdctl/build.sh)")?;
            Path::new(out.lines().last().unwrap_or_default().trim()).join("bin/nerdctl")
        }
    };
    if !path.is_file() {
        bail!(
            "{} is not nerdctl: build it with `make k8s-tools` or point {NERDCTL_ENV} at one",
            path.display()
        );
    }
    Ok(path)
}

/// Bytes of every file in the tools directory.
pub fn tools_size(tools: &Tools) -> Result<u64> {
    fn walk(dir: &Path) -> Result<u64> {
        let mut total = 0;
        for entry in std::fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))? {
            let entry = entry?;
            let kind = entry.file_type()?;
            total += if kind.is_dir() {
                walk(&entry.path())?
            } else {
                entry.metadata()?.len()
            };
        }
        Ok(total)
    }
    walk(tools.dir())
}
