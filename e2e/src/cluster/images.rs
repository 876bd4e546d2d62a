// SPDX-License-Identifier: Apache-2.0
//! The images every node of the real cluster imports: the pause (sandbox) image, the upstream
//! e2e suite's agnhost, and weave's own, each under the exact name its users ask for.
//!
//! - `registry.k8s.io/pause:<v>`: upstream `pause.c` built static, as upstream's image is.
//! - `registry.k8s.io/e2e-test-images/agnhost:<v>`: upstream agnhost built from
//!   `k8s.io/kubernetes/test/images/agnhost`, tagged as the e2e suite names it, with Debian's
//!   static busybox for the shell tools the suite runs in it (upstream adds Alpine packages).
//! - [`WEAVE_IMAGE`]: weave's binaries (agent, CLI, policy controller, CNI plugins), the
//!   reference `portmap` and `loopback` plugins (installed on nodes that have none), `nft` for
//!   the policy controller, busybox for a shell, and the shared libraries they load, as `ldd`
//!   lists them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::image::ImageSpec;
use super::tools::Tools;
use crate::command::run;

/// Repository of weave's image; the tag is the workspace version.
pub const WEAVE_REPOSITORY: &str = "ghcr.io/weave-rs/weave";

/// weave's image reference, as the manifests name it.
pub const WEAVE_IMAGE: &str = concat!("ghcr.io/weave-rs/weave:", env!("CARGO_PKG_VERSION"));

/// weave's programs in the image (all in `/usr/bin`).
pub const WEAVE_PROGRAMS: &[&str] = &["weaver", "weave", "weave-npc", "weave-net", "weave-ipam"];

/// Debian's static busybox.
const BUSYBOX: &str = "/bin/busybox";

/// The pause image from the tools.
pub(crate) fn pause(tools: &Tools) -> Result<ImageSpec> {
    let version = tools.version("pause")?;
    let mut spec = ImageSpec::new(&format!("registry.k8s.io/pause:{version}"), &["/pause"]);
    spec.user = Some("65535:65535".into());
    spec.file("/pause", &tools.bin("pause"), 0o755);
    Ok(spec)
}

/// The agnhost image from the tools.
pub(crate) fn agnhost(tools: &Tools) -> Result<ImageSpec> {
    let version = tools.version("agnhost")?;
    let reference = format!("registry.k8s.io/e2e-test-images/agnhost:{version}");
    let mut spec = ImageSpec::new(&reference, &["/agnhost"]);
    spec.file("/agnhost", &tools.bin("agnhost"), 0o755);
    add_base(&mut spec)?;
    Ok(spec)
}

/// weave's image from the binaries in `bin_dir`, stripped of debug information into
/// `work` first, with the reference `portmap` and `loopback` plugins its conflist needs on
/// nodes that lack them.
pub(crate) fn weave(bin_dir: &Path, work: &Path, tools: &Tools) -> Result<ImageSpec> {
    let mut spec = ImageSpec::new(WEAVE_IMAGE, &["/usr/bin/weaver"]);
    std::fs::create_dir_all(work).with_context(|| format!("create {}", work.display()))?;
    let mut programs: Vec<PathBuf> = Vec::new();
    for name in WEAVE_PROGRAMS {
        let source = bin_dir.join(name);
        if !source.is_file() {
            bail!(
                "{} not found: build weave's binaries first (cargo build --bins)",
                source.display()
            );
        }
        let stripped = work.join(name);
        run(Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(&stripped)
            .arg(&source))?;
        spec.file(&format!("/usr/bin/{name}"), &stripped, 0o755);
        programs.push(stripped);
    }
    for helper in ["portmap", "loopback"] {
        spec.file(
            &format!("/usr/bin/{helper}"),
            &tools.cni_dir().join(helper),
            0o755,
        );
    }
    let nft = PathBuf::from("/usr/sbin/nft");
    spec.file("/usr/sbin/nft", &nft, 0o755);
    programs.push(nft);
    for library in shared_libraries(&programs)? {
        let path = library.display().to_string();
        spec.file(&path, &library, 0o755);
    }
    add_base(&mut spec)?;
    Ok(spec)
}

/// busybox with its applets in `/bin`, `/tmp`, and the account files tools expect.
fn add_base(spec: &mut ImageSpec) -> Result<()> {
    let busybox = Path::new(BUSYBOX);
    if !busybox.is_file() {
        bail!("{BUSYBOX} not found: install Debian's busybox-static (make k8s-tools does)");
    }
    spec.file("/bin/busybox", busybox, 0o755);
    let applets = run(Command::new(busybox).arg("--list"))?;
    for applet in applets
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox")
    {
        let path = format!("/bin/{applet}");
        spec.files
            .entry(path)
            .or_insert(super::image::Content::Symlink {
                target: "busybox".into(),
            });
    }
    spec.dir("/tmp", 0o1777);
    spec.bytes(
        "/etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        0o644,
    );
    spec.bytes("/etc/group", b"root:x:0:\nnogroup:x:65534:\n", 0o644);
    Ok(())
}

/// Every shared library (and the dynamic loader) that `programs` load, by absolute path.
fn shared_libraries(programs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut found = std::collections::BTreeSet::new();
    for program in programs {
        let out = run(Command::new("ldd").arg(program))?;
        found.extend(parse_ldd(&out));
    }
    Ok(found.into_iter().collect())
}

/// The absolute library paths in `ldd` output.
fn parse_ldd(out: &str) -> Vec<PathBuf> {
    out.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_libraries_and_the_loader() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        let paths: Vec<String> = parse_ldd(out)
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        assert_eq!(
            paths,
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
    }

    #[test]
    fn weave_image_is_pinned_to_the_workspace_version() {
        let (_, tag) = super::super::image::split_reference(WEAVE_IMAGE).expect("pinned");
        assert_eq!(tag, env!("CARGO_PKG_VERSION"));
        assert!(WEAVE_IMAGE.starts_with(WEAVE_REPOSITORY));
    }
}
