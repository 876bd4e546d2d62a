// SPDX-License-Identifier: Apache-2.0
//! The multi-host test bed: hosts as network namespaces joined by an underlay.
//!
//! [`TestBed::new`] builds a [`Topology`] out of namespaces named with a fresh per-run prefix
//! (`wv` + 6 hex digits): `<prefix>-h<i>` per host, `<prefix>-ul` for a shared segment,
//! `<prefix>-h<i>-<pod>` per pod. Veths are created with their peer directly in the target
//! namespace, so nothing ever appears in the root namespace, whose links, addresses, routes,
//! sysctls and nftables are never changed. The bed owns every namespace and process it made
//! and removes them when dropped, when the test panics, and on SIGINT/SIGTERM.
//!
//! Faults (cuts between hosts, packet loss) are nftables rules in each affected host's own
//! `inet e2e_testbed` table, recompiled whole on each change (see [`crate::faults`]).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{bail, Context, Result};

use crate::command::{ip, run_with_input};
use crate::faults::{ruleset, Faults};
use crate::host::Host;
use crate::teardown::{self, Owned};
use crate::topology::{Far, Topology, BRIDGE, PREFIX_LEN};

/// Where `ip netns` keeps namespace names.
const NETNS_DIR: &str = "/run/netns";
/// Tries at finding an unused prefix before giving up.
const PREFIX_TRIES: usize = 16;

/// Hosts in network namespaces joined by an underlay, owning everything it created.
///
/// Dropping it kills every process it started (and reaps it), deletes its pod, host and
/// underlay namespaces, and removes its run directory, unless the thread is panicking: then
/// the directory is kept and its path printed so the logs can be read.
#[derive(Debug)]
pub struct TestBed {
    /// Per-run prefix of every namespace name.
    prefix: String,
    /// Root of the run directory (one subdirectory per host).
    run_dir: PathBuf,
    /// What was asked for.
    topology: Topology,
    /// Hosts, host 1 first.
    hosts: Vec<Host>,
    /// Namespace of the segment bridge, for [`Topology::Segment`].
    underlay: Option<String>,
    /// Everything to remove, shared with the signal handler.
    owned: Arc<Owned>,
    /// Requested faults; the lock also serialises `nft` transactions.
    faults: Mutex<Faults>,
}

impl TestBed {
    /// Builds `topology`: namespaces, veths, bridge, addresses, loopback up in every host,
    /// and a run directory `<temp dir>/<prefix>/` with one subdirectory per host.
    ///
    /// Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN); fails, never skips, without it. A failure
    /// half way removes whatever was already created.
    pub fn new(topology: Topology) -> Result<TestBed> {
        if !nix::unistd::geteuid().is_root() {
            bail!(
                "the test bed needs root (it creates network namespaces, veths and nftables \
                 tables); run the tests as root"
            );
        }
        let plan = topology.plan()?;
        let prefix = pick_prefix()?;
        let run_dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir(&run_dir)
            .with_context(|| format!("create run directory {}", run_dir.display()))?;
        let owned = Arc::new(Owned::new(&prefix, run_dir.clone()));
        teardown::register(&owned);
        // From here on, an early return drops `bed`, which removes what was made so far.
        let mut bed = TestBed {
            prefix,
            run_dir,
            topology,
            hosts: Vec::new(),
            underlay: None,
            owned,
            faults: Mutex::new(Faults::default()),
        };
        if bed.topology.has_segment() {
            let ul = format!("{}-ul", bed.prefix);
            bed.owned.add_netns(&ul)?;
            bed.underlay = Some(ul.clone());
            ip(&["-n", &ul, "link", "add", BRIDGE, "type", "bridge"])?;
            ip(&["-n", &ul, "link", "set", BRIDGE, "up"])?;
        }
        for (i, ports) in plan.hosts.into_iter().enumerate() {
            let name = format!("h{}", i + 1);
            let netns = format!("{}-{name}", bed.prefix);
            let dir = bed.run_dir.join(&name);
            std::fs::create_dir(&dir)
                .with_context(|| format!("create host directory {}", dir.display()))?;
            bed.owned.add_netns(&netns)?;
            let host = Host::new(name, netns, ports, dir);
            bed.owned.add_processes(Arc::clone(host.processes()));
            bed.hosts.push(host);
        }
        for wire in &plan.wires {
            let near = bed.host(wire.host).netns().to_owned();
            let near_if = wire.port.ifname.as_str();
            let (far_ns, far_if) = match &wire.far {
                Far::Bridge { ifname } => (
                    bed.underlay.clone().context("a segment has an underlay")?,
                    ifname.as_str(),
                ),
                Far::Host { host, port } => {
                    (bed.host(*host).netns().to_owned(), port.ifname.as_str())
                }
            };
            // The peer is created directly in its namespace, never in the root one.
            ip(&[
                "-n", &near, "link", "add", near_if, "type", "veth", "peer", "name", far_if,
                "netns", &far_ns,
            ])?;
            configure(&near, near_if, wire.port.addr)?;
            match &wire.far {
                Far::Bridge { ifname } => {
                    ip(&["-n", &far_ns, "link", "set", ifname, "master", BRIDGE])?;
                    ip(&["-n", &far_ns, "link", "set", ifname, "up"])?;
                }
                Far::Host { port, .. } => configure(&far_ns, &port.ifname, port.addr)?,
            }
        }
        Ok(bed)
    }

    /// The per-run prefix of every namespace name (`wv` + 6 hex digits).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The run directory, `<temp dir>/<prefix>/`.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The topology this bed was built from.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// All hosts, host 1 first.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Host `i` (1-based).
    ///
    /// # Panics
    /// If there is no host `i`.
    pub fn host(&self, i: usize) -> &Host {
        let n = self.hosts.len();
        match i.checked_sub(1).and_then(|k| self.hosts.get(k)) {
            Some(host) => host,
            None => panic!("no host {i}: hosts are numbered 1..={n}"),
        }
    }

    /// What the bed owns, for users that add processes and cleanup steps of their own.
    pub(crate) fn owned(&self) -> &Arc<Owned> {
        &self.owned
    }

    /// Namespace holding the segment bridge `br0`, for [`Topology::Segment`].
    pub fn underlay_netns(&self) -> Option<&str> {
        self.underlay.as_deref()
    }

    /// Stops all traffic between hosts `a` and `b`, both ways, whatever the topology: each
    /// of the two drops packets from and to every underlay address of the other (nftables
    /// table `inet e2e_testbed`, input and output hooks). Idempotent.
    pub fn cut(&self, a: usize, b: usize) -> Result<()> {
        self.check_pair(a, b)?;
        self.change_faults(&[a, b], |faults| faults.cut(a, b))
    }

    /// Undoes [`cut(a, b)`](Self::cut). Idempotent.
    pub fn restore(&self, a: usize, b: usize) -> Result<()> {
        self.check_pair(a, b)?;
        self.change_faults(&[a, b], |faults| faults.restore(a, b))
    }

    /// Drops `percent` (0..=100) of the packets entering host `h` from its underlay
    /// interfaces (`numgen random mod 100 < N drop` in the `inet e2e_testbed` table); 0
    /// removes the rule.
    pub fn set_loss(&self, h: usize, percent: u8) -> Result<()> {
        self.check_host(h)?;
        if percent > 100 {
            bail!("loss must be a percentage (0..=100), not {percent}");
        }
        self.change_faults(&[h], |faults| faults.set_loss(h, percent))
    }

    /// Creates a pod namespace `<prefix>-h<host>-<name>` with only loopback up (nothing else
    /// is wired), owned by the test bed and deleted when it is dropped. Returns its name.
    pub fn add_pod_netns(&self, host: usize, name: &str) -> Result<String> {
        self.check_host(host)?;
        let ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok {
            bail!("bad pod name {name:?}: use letters, digits, '-' and '_'");
        }
        let netns = format!("{}-{name}", self.host(host).netns());
        self.owned.add_netns(&netns)?;
        Ok(netns)
    }

    /// Records a change of faults and reapplies the tables of `hosts`.
    fn change_faults(&self, hosts: &[usize], change: impl FnOnce(&mut Faults)) -> Result<()> {
        let mut faults = self.faults.lock().unwrap_or_else(PoisonError::into_inner);
        change(&mut faults);
        for &h in hosts {
            let host = self.host(h);
            let blocked: Vec<Ipv4Addr> = faults
                .cut_peers(h)
                .flat_map(|peer| self.host(peer).addrs().iter().copied())
                .collect();
            let ifaces: Vec<String> = host.underlay_ifaces().map(str::to_owned).collect();
            let script = ruleset(&blocked, &ifaces, faults.loss(h));
            run_with_input(host.cmd("nft").args(["-f", "-"]), Some(&script))
                .with_context(|| format!("apply faults on {}", host.name()))?;
        }
        Ok(())
    }

    /// Checks that `h` names a host.
    fn check_host(&self, h: usize) -> Result<()> {
        let n = self.hosts.len();
        if h == 0 || h > n {
            bail!("no host {h}: hosts are numbered 1..={n}");
        }
        Ok(())
    }

    /// Checks that `a` and `b` name two different hosts.
    fn check_pair(&self, a: usize, b: usize) -> Result<()> {
        self.check_host(a)?;
        self.check_host(b)?;
        if a == b {
            bail!("cannot cut host {a} from itself");
        }
        Ok(())
    }
}

impl Drop for TestBed {
    fn drop(&mut self) {
        teardown::unregister(&self.owned);
        teardown::report(&self.owned, self.owned.teardown());
        if std::thread::panicking() {
            eprintln!(
                "test bed {}: keeping {} for its logs",
                self.prefix,
                self.run_dir.display()
            );
        } else if let Err(err) = std::fs::remove_dir_all(&self.run_dir).or_else(|err| {
            (err.kind() == std::io::ErrorKind::NotFound)
                .then_some(())
                .ok_or(err)
        }) {
            eprintln!(
                "test bed {}: remove {}: {err}",
                self.prefix,
                self.run_dir.display()
            );
        }
    }
}

/// Gives interface `ifname` in `netns` its underlay address and brings it up.
fn configure(netns: &str, ifname: &str, addr: Ipv4Addr) -> Result<()> {
    let cidr = format!("{addr}/{PREFIX_LEN}");
    ip(&["-n", netns, "addr", "add", &cidr, "dev", ifname])?;
    ip(&["-n", netns, "link", "set", ifname, "up"])?;
    Ok(())
}

/// A prefix (`wv` + 6 random hex digits) that no namespace or run directory uses yet.
///
/// Names stay short so that derived names are readable; `ip netns add` refusing an existing
/// name is the final guard against a race with another run.
fn pick_prefix() -> Result<String> {
    for _ in 0..PREFIX_TRIES {
        let prefix = format!("wv{:06x}", rand::random::<u32>() & 0x00ff_ffff);
        let taken_ns = std::fs::read_dir(NETNS_DIR).is_ok_and(|entries| {
            entries.flatten().any(|entry| {
                entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{prefix}-"))
            })
        });
        if !taken_ns && !std::env::temp_dir().join(&prefix).exists() {
            return Ok(prefix);
        }
    }
    bail!("no unused test bed prefix after {PREFIX_TRIES} tries")
}
