// SPDX-License-Identifier: Apache-2.0
//! The first process of every machine of the real cluster: it makes the machine's private
//! filesystem view, then reaps orphans until it is killed.
//!
//! A machine is started as `nsenter --net=/run/netns/NS unshare --pid --fork --kill-child
//! --mount-proc weave-cluster node-init DIR`: a network namespace of the test bed, a new PID
//! namespace whose init is this process (when it dies the kernel kills everything in the
//! namespace, which is how a machine is switched off), and a new mount namespace, private
//! (nothing mounted here is seen outside, nothing mounted outside later is seen here), with a
//! `/proc` of its own. containerd, the kubelet and kube-proxy then join all three with nsenter.
//!
//! What this process mounts, all inside the machine only (`plan`):
//! - `/sys` again, so that it shows the machine's network devices, with the host's cgroup
//!   hierarchies moved back under it unchanged;
//! - overlays on `/etc`, `/opt` and `/var` whose upper layers are in the machine's directory,
//!   so that the CNI and kubelet directories can exist per machine without creating anything
//!   on the host;
//! - the machine's own directories over `/run`, `/etc/cni/net.d`, `/opt/cni/bin`,
//!   `/var/lib/{kubelet,containerd,cni}` and `/var/log/{pods,containers}` (real directories,
//!   not overlays: containerd's overlayfs snapshots cannot live on an overlay), and its own
//!   `/etc/machine-id`; `/var/lib/weave` is a plain directory of the `/var` overlay, as on a
//!   real machine (so that uninstalling can remove it);
//! - files over the global sysctls the kubelet would otherwise set on the whole machine
//!   (`vm.overcommit_memory`, `kernel.panic`, …), holding the values it wants, so that it
//!   finds them set and writes nothing;
//! - finally `/` is made recursively shared, as the kubelet expects for mount propagation.
//!
//! When everything is mounted it creates `DIR/ready`; a failure is printed and ends the
//! process (and with it the machine) before `ready` exists.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Global sysctls the kubelet checks at start and sets when they differ, with the values it
/// wants (kubelet `setupKernelTunables`). Faked per machine so the host keeps its own.
pub(crate) const KUBELET_SYSCTLS: &[(&str, &str)] = &[
    ("vm/overcommit_memory", "1"),
    ("vm/panic_on_oom", "0"),
    ("kernel/panic", "10"),
    ("kernel/panic_on_oops", "1"),
    ("kernel/keys/root_maxkeys", "1000000"),
    ("kernel/keys/root_maxbytes", "25000000"),
];

/// Where host path `path` of the machine whose directory is `dir` is stored on the host: in
/// the directory bound over it, else in the upper layer of its overlay (`None` if neither:
/// the path is the host's own).
pub(crate) fn backing_path(dir: &Path, path: &Path) -> Option<PathBuf> {
    for (name, target) in BINDS {
        if let Ok(rest) = path.strip_prefix(target) {
            return Some(dir.join(name).join(rest));
        }
    }
    OVERLAYS.iter().find_map(|target| {
        let rest = path.strip_prefix(target).ok()?;
        Some(
            dir.join(format!("{}.upper", target.trim_start_matches('/')))
                .join(rest),
        )
    })
}

/// Directories of the machine's directory bound over paths of its filesystem view.
const BINDS: &[(&str, &str)] = &[
    ("run", "/run"),
    ("cni-conf", "/etc/cni/net.d"),
    ("cni-bin", "/opt/cni/bin"),
    ("kubelet", "/var/lib/kubelet"),
    ("containerd", "/var/lib/containerd"),
    ("cni-state", "/var/lib/cni"),
    ("pod-logs", "/var/log/pods"),
    ("container-logs", "/var/log/containers"),
];

/// Host directories that get a per-machine overlay.
const OVERLAYS: &[&str] = &["/etc", "/opt", "/var"];

/// Host paths under which a machine's directory must not lie (they are overlaid or replaced
/// inside the machine).
pub(crate) const RESERVED_ROOTS: &[&str] = &["/etc", "/opt", "/var", "/run", "/proc", "/sys"];

/// One step of making the machine's filesystem view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Create a directory (and its parents).
    Mkdir(PathBuf),
    /// Write a file (creating it).
    Write(PathBuf, String),
    /// Mount sysfs at `/sys` again, keeping the cgroup hierarchies: recursive bind of
    /// `/sys/fs/cgroup` to the holding directory, lazy unmount of `/sys`, new sysfs, move the
    /// hierarchies back.
    Sysfs {
        /// Where the cgroup hierarchies wait while `/sys` is replaced.
        hold: PathBuf,
    },
    /// Overlay `target` with upper and work directories.
    Overlay {
        /// The overlaid directory (also the lower layer).
        target: PathBuf,
        /// Upper layer.
        upper: PathBuf,
        /// overlayfs work directory.
        work: PathBuf,
    },
    /// Bind `source` (file or directory) over `target`.
    Bind {
        /// What is shown.
        source: PathBuf,
        /// Where.
        target: PathBuf,
    },
    /// Make `/` and everything below it shared.
    ShareRoot,
}

/// The steps that make the view of the machine whose directory is `dir`, in order.
pub(crate) fn plan(dir: &Path, machine_id: &str) -> Vec<Step> {
    let mut steps = vec![Step::Sysfs {
        hold: dir.join("cgroup.hold"),
    }];
    for target in OVERLAYS {
        let name = target.trim_start_matches('/');
        let upper = dir.join(format!("{name}.upper"));
        let work = dir.join(format!("{name}.work"));
        steps.push(Step::Mkdir(upper.clone()));
        steps.push(Step::Mkdir(work.clone()));
        steps.push(Step::Overlay {
            target: PathBuf::from(target),
            upper,
            work,
        });
    }
    for (name, target) in BINDS {
        let source = dir.join(name);
        steps.push(Step::Mkdir(source.clone()));
        steps.push(Step::Mkdir(PathBuf::from(target)));
        steps.push(Step::Bind {
            source,
            target: PathBuf::from(target),
        });
    }
    let id_file = dir.join("machine-id");
    steps.push(Step::Write(id_file.clone(), format!("{machine_id}\n")));
    steps.push(Step::Bind {
        source: id_file,
        target: PathBuf::from("/etc/machine-id"),
    });
    for (name, value) in KUBELET_SYSCTLS {
        let file = dir.join("sysctl").join(name.replace('/', "."));
        steps.push(Step::Mkdir(dir.join("sysctl")));
        steps.push(Step::Write(file.clone(), format!("{value}\n")));
        steps.push(Step::Bind {
            source: file,
            target: Path::new("/proc/sys").join(name),
        });
    }
    steps.push(Step::ShareRoot);
    steps
}

/// Runs the machine's init: mounts `plan`, creates `dir/ready`, then reaps children until
/// killed. Only returns on failure.
pub fn run(dir: &Path, machine_id: &str) -> Result<()> {
    if std::process::id() != 1 {
        bail!("node-init must be the first process of a new PID namespace (run it through unshare --pid --fork)");
    }
    // SIGCHLD is taken with sigwait below; blocked before anything is started.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGCHLD);
    signals.thread_block().context("block SIGCHLD")?;
    for step in plan(dir, machine_id) {
        apply(&step).with_context(|| format!("node-init: {step:?}"))?;
    }
    let ready = dir.join("ready");
    std::fs::write(&ready, "").with_context(|| format!("write {}", ready.display()))?;
    loop {
        reap()?;
        signals.wait().context("wait for SIGCHLD")?;
    }
}

/// Reaps every child that has ended.
fn reap() -> Result<()> {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return Ok(()),
            Ok(_) | Err(Errno::EINTR) => {}
            Err(err) => return Err(err).context("waitpid"),
        }
    }
}

/// Carries out one step.
fn apply(step: &Step) -> Result<()> {
    match step {
        Step::Mkdir(path) => std::fs::create_dir_all(path)?,
        Step::Write(path, text) => std::fs::write(path, text)?,
        Step::Sysfs { hold } => {
            std::fs::create_dir_all(hold)?;
            let cgroup = Path::new("/sys/fs/cgroup");
            mount(
                Some(cgroup),
                hold,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )?;
            umount2("/sys", MntFlags::MNT_DETACH)?;
            mount(
                Some("sysfs"),
                "/sys",
                Some("sysfs"),
                MsFlags::empty(),
                None::<&str>,
            )?;
            mount(
                Some(hold.as_path()),
                cgroup,
                None::<&str>,
                MsFlags::MS_MOVE,
                None::<&str>,
            )?;
        }
        Step::Overlay {
            target,
            upper,
            work,
        } => {
            let options = format!(
                "lowerdir={},upperdir={},workdir={}",
                target.display(),
                upper.display(),
                work.display()
            );
            mount(
                Some("overlay"),
                target,
                Some("overlay"),
                MsFlags::empty(),
                Some(options.as_str()),
            )?;
        }
        Step::Bind { source, target } => {
            mount(
                Some(source),
                target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )?;
        }
        Step::ShareRoot => {
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_SHARED | MsFlags::MS_REC,
                None::<&str>,
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_mounts_overlays_before_binding_into_them() {
        let steps = plan(Path::new("/c/nodes/node-1"), "0123");
        let position = |wanted: &Step| {
            steps
                .iter()
                .position(|s| s == wanted)
                .unwrap_or_else(|| panic!("{wanted:?} missing from {steps:#?}"))
        };
        let var = position(&Step::Overlay {
            target: "/var".into(),
            upper: "/c/nodes/node-1/var.upper".into(),
            work: "/c/nodes/node-1/var.work".into(),
        });
        let kubelet = position(&Step::Bind {
            source: "/c/nodes/node-1/kubelet".into(),
            target: "/var/lib/kubelet".into(),
        });
        assert!(var < kubelet);
        assert_eq!(
            steps.first(),
            Some(&Step::Sysfs {
                hold: "/c/nodes/node-1/cgroup.hold".into()
            })
        );
        assert_eq!(steps.last(), Some(&Step::ShareRoot));
    }

    #[test]
    fn every_kubelet_sysctl_is_covered_with_its_wanted_value() {
        let steps = plan(Path::new("/d"), "x");
        for (name, value) in KUBELET_SYSCTLS {
            let file = Path::new("/d/sysctl").join(name.replace('/', "."));
            assert!(
                steps.contains(&Step::Write(file.clone(), format!("{value}\n"))),
                "{name}"
            );
            assert!(steps.contains(&Step::Bind {
                source: file,
                target: Path::new("/proc/sys").join(name),
            }));
        }
    }

    #[test]
    fn paths_map_to_their_backing_store() {
        let d = Path::new("/c/n1");
        assert_eq!(
            backing_path(d, Path::new("/var/lib/kubelet/pods")),
            Some("/c/n1/kubelet/pods".into())
        );
        assert_eq!(
            backing_path(d, Path::new("/var/lib/weave")),
            Some("/c/n1/var.upper/lib/weave".into())
        );
        assert_eq!(
            backing_path(d, Path::new("/run/weave")),
            Some("/c/n1/run/weave".into())
        );
        assert_eq!(backing_path(d, Path::new("/usr/bin")), None);
    }

    #[test]
    fn machine_id_is_the_machines_own() {
        let steps = plan(Path::new("/d"), "abc");
        assert!(steps.contains(&Step::Write("/d/machine-id".into(), "abc\n".into())));
        assert!(steps.contains(&Step::Bind {
            source: "/d/machine-id".into(),
            target: "/etc/machine-id".into(),
        }));
    }
}
