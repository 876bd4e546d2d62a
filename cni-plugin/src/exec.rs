// SPDX-License-Identifier: Apache-2.0
//! Carrying out ADD and DEL, generic over the [`Netlink`] seam and the
//! [`Agent`], so both run against `FakeNetlink` and a fake agent in the
//! unit tests below and against the kernel and `weaver` in production.
//!
//! ADD, in order: forget a spooled release of the id (an ADD reusing it
//! must keep its fresh address); refuse a `CNI_IFNAME` that exists and is
//! not the pod end of our own veth (before anything is allocated); one
//! request to the agent; the plan (`plan.rs`); the wiring. If planning or
//! wiring fails, ADD undoes itself (spec: a failed ADD leaves nothing):
//! the veth is deleted and the address released, or spooled.
//!
//! DEL: delete the host end by its derived name (a missing link is
//! success), release the id (or spool the release), then drain the spool.
//! Every step runs; their errors are reported together.

use std::path::Path;

use tracing::{debug, info, warn};
use weave_platform::wiring;
use weave_platform::Netlink;

use crate::agent::Agent;
use crate::config::NetConf;
use crate::env::Invocation;
use crate::error::{Error, Result};
use crate::plan::{self, AddPlan, DelPlan};
use crate::result::CniResult;

/// ADD of `inv` under `conf`: `host` is a handle on the host's namespace,
/// `pod` one on `netns`, the pod's. Returns the result to print.
pub async fn add<N: Netlink>(
    host: &N,
    pod: &N,
    agent: &impl Agent,
    inv: &Invocation,
    conf: &NetConf,
    netns: &Path,
) -> Result<CniResult> {
    let id = conf.ipam_id(&inv.container_id, &inv.ifname);
    agent.unspool(&id);
    let host_if = plan::host_ifname(&id);
    // Spec 1.1: an existing CNI_IFNAME is an error, unless it is the pod end
    // of our own veth (a repeated ADD returns the same result).
    if pod.link_index(&inv.ifname).await?.is_some() && host.link_index(&host_if).await?.is_none() {
        return Err(Error::IfnameTaken {
            ifname: inv.ifname.clone(),
            netns: netns.display().to_string(),
        });
    }
    let reply = agent.add(&plan::add_request(&id, conf, inv)?)?;
    let outcome = match AddPlan::new(inv, conf, netns, reply) {
        Ok(plan) => wire(host, pod, &plan).await,
        Err(e) => Err(e),
    };
    if let Err(e) = &outcome {
        // Spec: undo a failed ADD (the runtime's DEL would do it too).
        warn!(%id, error = %e, "add failed: undoing");
        let _ = wiring::unwire(host, &host_if).await;
        let _ = agent.release_or_spool(&id);
    }
    outcome
}

/// Wires what `plan` says and makes its result.
async fn wire<N: Netlink>(host: &N, pod: &N, plan: &AddPlan) -> Result<CniResult> {
    let routes = plan.pod_routes();
    let wired = wiring::wire(host, pod, &plan.wiring(&routes))
        .await
        .map_err(|source| Error::Wiring {
            id: plan.id.clone(),
            source,
        })?;
    info!(id = %plan.id, address = %plan.addrs[0], gateway = %plan.gateway, host_if = %plan.host_if, "pod attached");
    Ok(plan.result(&wired))
}

/// DEL: unwires through `host` (or records why there is no handle), then
/// releases; see [`finish_del`].
pub async fn del<N: Netlink>(host: Result<N>, agent: &impl Agent, plan: &DelPlan) -> Result<()> {
    let mut errors = Vec::new();
    match host {
        Ok(host) => {
            if let Err(source) = wiring::unwire(&host, &plan.host_if).await {
                errors.push(Error::Wiring {
                    id: plan.id.clone(),
                    source,
                });
            }
        }
        Err(e) => errors.push(e),
    }
    finish_del(agent, plan, errors)
}

/// The rest of DEL after the links, given the errors so far: releases the
/// id or spools the release, drains the spool, and reports every error.
pub fn finish_del(agent: &impl Agent, plan: &DelPlan, mut errors: Vec<Error>) -> Result<()> {
    match agent.release_or_spool(&plan.id) {
        Ok(()) => {
            if let Err(e) = agent.drain_spool() {
                debug!(error = %e, "spool not drained");
            }
        }
        Err(e) => errors.push(e),
    }
    info!(id = %plan.id, host_if = %plan.host_if, errors = errors.len(), "pod detached");
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => Err(Error::Many(errors)),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::path::PathBuf;

    use weave_api::spool::Spool;
    use weave_api::{CniAddReply, CniAddRequest};
    use weave_platform::fake::{FakeKind, FakeNetlink, FakeOp};

    use super::*;
    use crate::env::Command;

    /// An agent that answers from a script and records what it was asked.
    struct FakeAgent {
        /// Whether it is reachable (unreachable: transient errors).
        up: RefCell<bool>,
        /// What ADD gets.
        reply: CniAddReply,
        /// `add ID`, `release ID`, in order.
        calls: RefCell<Vec<String>>,
        spool: Spool,
        _dir: TempDir,
    }

    impl FakeAgent {
        fn new(tag: &str) -> FakeAgent {
            let dir = TempDir::new(tag);
            FakeAgent {
                up: RefCell::new(true),
                reply: CniAddReply {
                    id: ID.into(),
                    addresses: vec!["10.32.0.5/12".parse().unwrap()],
                    bridge: Some("weave".into()),
                    mtu: Some(1376),
                    gateway: Some("10.32.0.1".parse().unwrap()),
                    dns: None,
                },
                calls: RefCell::new(Vec::new()),
                spool: Spool::beside(&dir.0.join("weave.sock")),
                _dir: dir,
            }
        }

        fn calls(&self) -> Vec<String> {
            self.calls.borrow().clone()
        }

        fn down() -> Error {
            Error::AgentDown(weave_api::Error::Connect {
                tried: "unix:/fake".into(),
                source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
            })
        }
    }

    impl Agent for FakeAgent {
        fn add(&self, req: &CniAddRequest) -> Result<CniAddReply> {
            self.calls.borrow_mut().push(format!("add {}", req.id));
            if !*self.up.borrow() {
                return Err(Self::down());
            }
            Ok(self.reply.clone())
        }

        fn release(&self, id: &str) -> Result<()> {
            self.calls.borrow_mut().push(format!("release {id}"));
            if !*self.up.borrow() {
                return Err(Self::down());
            }
            Ok(())
        }

        fn spool(&self) -> &Spool {
            &self.spool
        }
    }

    /// A directory removed on drop; it also stands in for a namespace path
    /// (wiring checks that the path exists).
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let d =
                std::env::temp_dir().join(format!("weave-cni-exec-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            TempDir(d)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const ID: &str = "cni:weave:ctr1:eth0";

    fn inv() -> Invocation {
        Invocation {
            command: Command::Add,
            container_id: "ctr1".into(),
            netns: None,
            ifname: "eth0".into(),
            name: None,
        }
    }

    fn conf() -> NetConf {
        NetConf::parse(br#"{"cniVersion":"1.1.0","name":"weave","type":"weave-net"}"#).unwrap()
    }

    /// `ENETUNREACH`, as the kernel answers a route whose gateway is not
    /// on the link.
    const ENETUNREACH: i32 = 101;

    /// A fake agent, a namespace path that exists, a host with the `weave`
    /// bridge up, and a handle on the pod namespace.
    struct World {
        agent: FakeAgent,
        ns: PathBuf,
        host: FakeNetlink,
        pod: FakeNetlink,
    }

    impl World {
        async fn new(tag: &str) -> World {
            let agent = FakeAgent::new(tag);
            let ns = agent._dir.0.join("netns");
            std::fs::write(&ns, b"").unwrap();
            let host = FakeNetlink::new();
            let br = host.add_link("weave", FakeKind::Bridge, 1376);
            host.set_up(br).await.unwrap();
            let pod = host.in_netns(&ns);
            World {
                agent,
                ns,
                host,
                pod,
            }
        }

        async fn add(&self) -> Result<CniResult> {
            add(
                &self.host,
                &self.pod,
                &self.agent,
                &inv(),
                &conf(),
                &self.ns,
            )
            .await
        }
    }

    #[tokio::test]
    async fn add_asks_once_then_wires_the_plan_and_a_repeat_gives_the_same_result() {
        let w = World::new("add").await;
        let r = w.add().await.unwrap();
        assert_eq!(w.agent.calls(), vec![format!("add {ID}")]);
        let host_if = plan::host_ifname(ID);
        let veth = w.host.link(&host_if).expect("host end");
        assert_eq!(veth.master, w.host.link("weave").map(|b| b.index));
        assert!(veth.up && veth.hairpin && veth.mtu == 1376);
        let eth0 = w.pod.link("eth0").expect("pod end");
        assert_eq!(eth0.addrs, vec![("10.32.0.5".parse().unwrap(), 12)]);
        let default = w
            .pod
            .routes()
            .into_iter()
            .find(|r| r.prefix_len == 0)
            .expect("a default route");
        assert_eq!(default.gateway, Some("10.32.0.1".parse().unwrap()));
        assert_eq!(r.ips[0].address.to_string(), "10.32.0.5/12");
        assert_eq!(r.interfaces[0].name, host_if);
        assert_eq!(r.interfaces[1].mac, Some(crate::result::fmt_mac(eth0.mac)));
        let again = w.add().await.unwrap();
        assert_eq!(again, r, "a repeated ADD returns the same result");
    }

    #[tokio::test]
    async fn a_taken_ifname_is_refused_before_anything_is_allocated() {
        let w = World::new("taken").await;
        w.pod.add_link("eth0", FakeKind::Bridge, 1500);
        let e = w.add().await.unwrap_err();
        assert_eq!(e.code(), crate::error::CODE_IF_EXISTS, "{e}");
        assert!(w.agent.calls().is_empty(), "the agent was never asked");
    }

    #[tokio::test]
    async fn a_failed_wiring_is_undone_and_the_address_released() {
        let w = World::new("rollback").await;
        w.pod.fail_next(FakeOp::AddRoute, ENETUNREACH);
        let e = w.add().await.unwrap_err();
        assert!(e.to_string().contains("wire cni:weave:ctr1:eth0"), "{e}");
        assert_eq!(
            w.agent.calls(),
            vec![format!("add {ID}"), format!("release {ID}")]
        );
        assert!(
            w.host.link(&plan::host_ifname(ID)).is_none(),
            "veth removed"
        );
        assert!(w.pod.link("eth0").is_none(), "its pod end with it");
    }

    #[tokio::test]
    async fn a_plan_that_cannot_be_made_changes_nothing_but_gives_the_address_back() {
        let mut w = World::new("noplan").await;
        w.agent.reply.bridge = None;
        let links_before = w.host.links();
        let e = w.add().await.unwrap_err();
        assert_eq!(e.code(), crate::error::CODE_CONFIG, "{e}");
        assert_eq!(
            w.agent.calls(),
            vec![format!("add {ID}"), format!("release {ID}")]
        );
        assert_eq!(w.host.links(), links_before);
    }

    #[tokio::test]
    async fn add_with_the_agent_down_fails_transiently_and_spools_nothing() {
        let w = World::new("adddown").await;
        *w.agent.up.borrow_mut() = false;
        // A release spooled by an earlier DEL of this id is forgotten first.
        w.agent.spool.record(ID).unwrap();
        let e = w.add().await.unwrap_err();
        assert_eq!(e.code(), crate::error::CODE_TRY_AGAIN);
        assert!(w.agent.spool.take_all().is_empty());
        assert!(w.host.link(&plan::host_ifname(ID)).is_none());
    }

    #[tokio::test]
    async fn del_is_idempotent_and_spools_while_the_agent_is_down() {
        let w = World::new("del").await;
        w.add().await.unwrap();
        let plan = DelPlan::new(&inv(), &conf());
        del(Ok(w.host.clone()), &w.agent, &plan).await.unwrap();
        assert!(w.host.link(&plan.host_if).is_none());
        del(Ok(w.host.clone()), &w.agent, &plan).await.unwrap();
        // Agent down: the release waits in the spool and DEL succeeds.
        *w.agent.up.borrow_mut() = false;
        del(Ok(w.host.clone()), &w.agent, &plan).await.unwrap();
        assert_eq!(std::fs::read_dir(w.agent.spool.dir()).unwrap().count(), 1);
        // Back up: the next DEL (of anything) drains it.
        *w.agent.up.borrow_mut() = true;
        let other = DelPlan {
            id: "cni:weave:other:eth0".into(),
            host_if: plan::host_ifname("cni:weave:other:eth0"),
        };
        del(Ok(w.host.clone()), &w.agent, &other).await.unwrap();
        assert_eq!(std::fs::read_dir(w.agent.spool.dir()).unwrap().count(), 0);
        let calls = w.agent.calls();
        assert_eq!(
            calls.last().map(String::as_str),
            Some(format!("release {ID}").as_str())
        );
    }

    #[tokio::test]
    async fn del_without_a_netlink_handle_still_releases_and_reports() {
        let agent = FakeAgent::new("delnohandle");
        let plan = DelPlan::new(&inv(), &conf());
        let no_handle: Result<FakeNetlink> = Err(Error::Internal {
            op: "start the tokio runtime".into(),
            source: std::io::Error::other("no"),
        });
        let e = del(no_handle, &agent, &plan).await.unwrap_err();
        assert!(e.to_string().contains("start the tokio runtime"), "{e}");
        assert_eq!(agent.calls(), vec![format!("release {ID}")]);
    }
}
