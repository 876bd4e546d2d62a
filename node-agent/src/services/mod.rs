// SPDX-License-Identifier: Apache-2.0
//! Services: export (the outside reaches a weave address through any of this host's
//! addresses and a port) and import (containers reach an outside address through a weave
//! address of this host), re-pointed with rebind, as Weave Net users once wrote by hand with
//! iptables DNAT rules.
//!
//! One task owns the [`ServiceSet`]. A change is checked ([`set`]), rendered ([`rules`],
//! pure), applied as one nftables transaction on our own table `ip weave-services` (never
//! another), and only then persisted in the state directory, so what is on disk was in force;
//! a refused or failed change leaves table, file and set as they were. At start the persisted
//! set is applied again; the table is re-applied every minute to repair drift, and stays when
//! the agent stops (services keep working across restarts); `weave reset` removes it.

pub mod rules;
pub mod set;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use weave_api::{Service, ServiceProto};
use weave_platform::firewall::Firewall;

use crate::ipam::subnet::Subnet;
pub use set::{ServiceError, ServiceSet};

/// The state file, in the state directory.
pub const FILE: &str = "services.json";
/// How often the table is re-applied.
const RESYNC: Duration = Duration::from_secs(60);

/// What the services task needs to know.
#[derive(Debug, Clone)]
pub struct ServicesConfig {
    /// The pod range: export targets are inside, import targets outside.
    pub range: Subnet,
    /// The bridge pods attach to.
    pub bridge: String,
    /// Where the set is persisted.
    pub state_dir: PathBuf,
}

/// A change to the set.
#[derive(Debug, Clone)]
pub enum Change {
    /// Add a service.
    Add(Service),
    /// Point the service at a front to another target.
    Rebind {
        /// Protocol of the front.
        proto: ServiceProto,
        /// Address of the front, when two share the port.
        address: Option<Ipv4Addr>,
        /// Port of the front.
        port: u16,
        /// The new target.
        target: SocketAddrV4,
    },
    /// Remove the service at a front.
    Remove {
        /// Protocol of the front.
        proto: ServiceProto,
        /// Address of the front, when two share the port.
        address: Option<Ipv4Addr>,
        /// Port of the front.
        port: u16,
    },
}

/// Why a change did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The change was refused by the checks.
    #[error(transparent)]
    Refused(#[from] ServiceError),
    /// The rules could not be applied or persisted (the old ones stay in force).
    #[error("{0}")]
    Failed(String),
}

/// What a request gets back: every service, and the one it changed.
pub type Outcome = Result<(Vec<Service>, Option<Service>), ChangeError>;

/// A request to the services task: a change, or none to just list.
#[derive(Debug)]
pub struct Request {
    /// The change.
    pub change: Option<Change>,
    /// Where the outcome goes.
    pub reply: oneshot::Sender<Outcome>,
}

/// The persisted form.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Persisted {
    services: Vec<Service>,
}

/// The state file could not be used at start.
#[derive(Debug, thiserror::Error)]
#[error("services state {path}: {reason}")]
pub struct LoadError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

/// The task that owns the set.
pub struct ServicesTask {
    cfg: ServicesConfig,
    set: ServiceSet,
    firewall: Arc<dyn Firewall>,
    requests: mpsc::Receiver<Request>,
}

impl ServicesTask {
    /// Loads the persisted set (none if there is no file) and returns the task and its
    /// request channel.
    pub fn load(
        cfg: ServicesConfig,
        firewall: Arc<dyn Firewall>,
    ) -> Result<(Self, mpsc::Sender<Request>), LoadError> {
        let path = cfg.state_dir.join(FILE);
        let fail = |reason: String| LoadError {
            path: path.clone(),
            reason,
        };
        let persisted: Persisted = match std::fs::read(&path) {
            Ok(data) => serde_json::from_slice(&data).map_err(|e| fail(e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Persisted::default(),
            Err(e) => return Err(fail(e.to_string())),
        };
        let set = ServiceSet::from_services(cfg.range, persisted.services)
            .map_err(|e| fail(e.to_string()))?;
        // Requests are a person typing commands: a small bound is plenty.
        let (tx, requests) = mpsc::channel(16);
        Ok((
            Self {
                cfg,
                set,
                firewall,
                requests,
            },
            tx,
        ))
    }

    /// Applies the set now, then serves requests and re-applies every minute until `cancel`.
    pub async fn run(mut self, cancel: CancellationToken) -> crate::Result<()> {
        let mut tick = tokio::time::interval(RESYNC);
        let mut in_force = false;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                _ = tick.tick() => {
                    let script = rules::ruleset(&self.cfg.bridge, self.set.services());
                    match self.apply(script).await {
                        Ok(()) if !in_force => {
                            in_force = true;
                            info!(services = self.set.services().len(), table = rules::TABLE, "service rules applied");
                        }
                        Ok(()) => {}
                        Err(e) => warn!(error = %e, "cannot apply the service rules; retrying"),
                    }
                }
                req = self.requests.recv() => {
                    let Some(req) = req else { return Ok(()) };
                    let outcome = match req.change {
                        Some(change) => self.change(change).await,
                        None => Ok((self.set.services().to_vec(), None)),
                    };
                    let _ = req.reply.send(outcome);
                }
            }
        }
    }

    /// Checks, applies and persists one change.
    async fn change(&mut self, change: Change) -> Outcome {
        let range = self.cfg.range;
        let mut next = self.set.clone();
        let changed = match change {
            Change::Add(s) => {
                next.add(range, s)?;
                s
            }
            Change::Rebind {
                proto,
                address,
                port,
                target,
            } => {
                let old = next.find(proto, address, port)?;
                next.rebind(range, old, target)?
            }
            Change::Remove {
                proto,
                address,
                port,
            } => {
                let old = next.find(proto, address, port)?;
                next.remove(&old)?;
                old
            }
        };
        self.apply(rules::ruleset(&self.cfg.bridge, next.services()))
            .await
            .map_err(ChangeError::Failed)?;
        if let Err(e) = self.persist(&next) {
            // What is on disk must be what is in force: put the old rules back.
            let old = rules::ruleset(&self.cfg.bridge, self.set.services());
            if let Err(back) = self.apply(old).await {
                warn!(error = %back, "cannot restore the service rules after a failed save");
            }
            return Err(ChangeError::Failed(e));
        }
        info!(service = %set::describe(&changed), services = next.services().len(), "services changed");
        self.set = next;
        Ok((self.set.services().to_vec(), Some(changed)))
    }

    /// Sends `script` to nft off the runtime threads.
    async fn apply(&self, script: String) -> Result<(), String> {
        let fw = Arc::clone(&self.firewall);
        match tokio::task::spawn_blocking(move || fw.apply_script(&script)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!(
                "apply table ip {}: {}",
                rules::TABLE,
                weave_api::error_chain(&e)
            )),
            Err(e) => Err(format!("apply table ip {}: {e}", rules::TABLE)),
        }
    }

    /// Writes the set to the state file, durably.
    fn persist(&self, set: &ServiceSet) -> Result<(), String> {
        let path = self.cfg.state_dir.join(FILE);
        let file = Persisted {
            services: set.services().to_vec(),
        };
        let mut data = serde_json::to_vec_pretty(&file).expect("plain data always encodes");
        data.push(b'\n');
        crate::atomic_file::write_durable(&path, &data)
            .map_err(|e| format!("save {}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weave_api::ServiceKind;
    use weave_platform::firewall::{FakeFirewall, FirewallError};

    /// A firewall whose every transaction fails, as nft does on a bad script.
    struct Refusing;

    impl Firewall for Refusing {
        fn apply(&self, _: &nftables::schema::Nftables<'_>) -> Result<(), FirewallError> {
            unreachable!("services apply scripts")
        }
        fn apply_script(&self, _: &str) -> Result<(), FirewallError> {
            Err(FirewallError::Refused {
                op: "apply a script".into(),
                stderr: "Error: refused".into(),
            })
        }
        fn counters(
            &self,
            _: nftables::types::NfFamily,
            _: &str,
        ) -> Result<Vec<weave_platform::firewall::CounterValue>, FirewallError> {
            Ok(Vec::new())
        }
    }

    /// A fresh state directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let d =
                std::env::temp_dir().join(format!("weave-services-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).expect("create the state directory");
            Self(d)
        }

        fn path(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn cfg(dir: &std::path::Path) -> ServicesConfig {
        ServicesConfig {
            range: "10.32.0.0/12".parse().expect("range"),
            bridge: "weave".into(),
            state_dir: dir.to_path_buf(),
        }
    }

    fn import(target: &str) -> Service {
        Service {
            kind: ServiceKind::Import,
            proto: ServiceProto::Tcp,
            address: Some("10.32.0.1".parse().expect("address")),
            port: 3322,
            target: target.parse().expect("target"),
        }
    }

    #[tokio::test]
    async fn changes_are_applied_then_persisted_and_reloaded() {
        let dir = TempDir::new("reload");
        let fw = Arc::new(FakeFirewall::default());
        let (mut task, _tx) = ServicesTask::load(cfg(dir.path()), fw.clone()).expect("load");
        let s = import("192.168.5.3:2211");
        task.change(Change::Add(s)).await.expect("add");
        let (all, changed) = task
            .change(Change::Rebind {
                proto: ServiceProto::Tcp,
                address: None,
                port: 3322,
                target: "192.168.5.4:2211".parse().expect("target"),
            })
            .await
            .expect("rebind");
        assert_eq!(
            changed.map(|c| c.target.to_string()).as_deref(),
            Some("192.168.5.4:2211")
        );
        let applied = fw.applied();
        assert_eq!(applied.len(), 2, "one transaction per change");
        assert!(
            applied[1].contains("dnat to 192.168.5.4:2211"),
            "{}",
            applied[1]
        );
        assert!(!applied[1].contains("192.168.5.3"), "{}", applied[1]);

        // A restart finds the same set.
        let (again, _) = ServicesTask::load(cfg(dir.path()), fw.clone()).expect("reload");
        assert_eq!(again.set.services(), all.as_slice());

        task.change(Change::Remove {
            proto: ServiceProto::Tcp,
            address: Some("10.32.0.1".parse().expect("a")),
            port: 3322,
        })
        .await
        .expect("remove");
        assert_eq!(
            fw.applied().last().map(String::as_str),
            Some("table ip weave-services {}\ndelete table ip weave-services\n")
        );
    }

    #[tokio::test]
    async fn a_failed_apply_changes_nothing() {
        let dir = TempDir::new("failed");
        let fw = Arc::new(FakeFirewall::default());
        let (mut task, _tx) = ServicesTask::load(cfg(dir.path()), fw).expect("load");
        task.change(Change::Add(import("192.168.5.3:2211")))
            .await
            .expect("add");
        let before = std::fs::read(dir.path().join(FILE)).expect("state file");
        task.firewall = Arc::new(Refusing);
        let err = task
            .change(Change::Rebind {
                proto: ServiceProto::Tcp,
                address: None,
                port: 3322,
                target: "192.168.5.4:2211".parse().expect("target"),
            })
            .await
            .expect_err("nft refuses");
        assert!(err.to_string().contains("Error: refused"), "{err}");
        assert_eq!(task.set.services(), &[import("192.168.5.3:2211")]);
        assert_eq!(
            std::fs::read(dir.path().join(FILE)).expect("state file"),
            before
        );
    }

    #[test]
    fn a_corrupt_state_file_is_an_error_at_start() {
        let dir = TempDir::new("corrupt");
        std::fs::write(
            dir.path().join(FILE),
            b"{\"services\": [{\"kind\": \"sideways\"}]}",
        )
        .expect("write");
        let err = ServicesTask::load(cfg(dir.path()), Arc::new(FakeFirewall::default()))
            .err()
            .expect("refused");
        assert!(err.to_string().contains("services.json"), "{err}");
    }
}
