// SPDX-License-Identifier: Apache-2.0
//! `weave-net`, the network plugin, over the real kernel and agent: ADD and
//! DEL build their handles and run the executor (`exec.rs`) on the plan of
//! `plan.rs`, so that they are unit-tested with fakes; CHECK compares the
//! namespace with `prevResult`, STATUS and GC ask the agent. ADD wires with
//! [`weave_platform::wiring`] (the same code as `weave attach`); DEL undoes
//! it even with the pod, the interface or the agent gone.
//!
//! The gateway of a pod is the bridge's address in the pod's subnet, as on
//! Weave Net: the agent gives the bridge an address from IPAM (id
//! `weave:expose:PEER:SUBNET`) the first time a pod of that subnet is
//! added, which also gives the host a route to its pods (needed for
//! hostPorts), and answers it from then on.

use std::path::Path;

use tracing::{debug, info, instrument};
use weave_api::net::IpNet;
use weave_platform::wiring;
use weave_platform::{LinuxNetlink, Netlink};

use crate::agent::SocketAgent;
use crate::config::NetConf;
use crate::env::Invocation;
use crate::error::{Error, Result};
use crate::exec;
pub use crate::plan::host_ifname;
use crate::plan::DelPlan;
use crate::result::{CniResult, PrevResult};

/// A current-thread runtime for the netlink sockets (STYLE §1: no
/// multi-thread runtime in the plugin).
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|source| Error::Internal {
            op: "start the tokio runtime".into(),
            source,
        })
}

/// ADD: returns the result to print.
#[instrument(skip_all, fields(id))]
pub fn add(inv: &Invocation, conf: &NetConf) -> Result<CniResult> {
    let id = conf.ipam_id(&inv.container_id, &inv.ifname);
    tracing::Span::current().record("id", id.as_str());
    let netns = inv
        .netns
        .as_deref()
        .ok_or_else(|| Error::Env("CNI_NETNS is not set".into()))?;
    if !netns.exists() {
        return Err(Error::Env(format!(
            "CNI_NETNS {} does not exist",
            netns.display()
        )));
    }
    let agent = SocketAgent::new(&conf.socket);
    runtime()?.block_on(async {
        // Handles are made inside the runtime: their connection tasks run on it.
        let host = LinuxNetlink::new()?;
        let pod = LinuxNetlink::in_netns(netns)?;
        exec::add(&host, &pod, &agent, inv, conf, netns).await
    })
}

/// DEL: removes the veth (by name, whatever the namespace's state) and
/// releases the address, spooling the release if the agent is down. Every
/// step runs; the errors are reported together.
#[instrument(skip_all, fields(id))]
pub fn del(inv: &Invocation, conf: &NetConf) -> Result<()> {
    let plan = DelPlan::new(inv, conf);
    tracing::Span::current().record("id", plan.id.as_str());
    let agent = SocketAgent::new(&conf.socket);
    match runtime() {
        Ok(rt) => rt.block_on(async {
            exec::del(LinuxNetlink::new().map_err(Error::from), &agent, &plan).await
        }),
        Err(e) => exec::finish_del(&agent, &plan, vec![e]),
    }
}

/// CHECK: the pod interface, its addresses, MTU and routes as `prevResult`
/// lists them, the host end, and the reservation in IPAM.
#[instrument(skip_all)]
pub fn check(inv: &Invocation, conf: &NetConf) -> Result<()> {
    let prev = PrevResult::for_check(conf)?
        .ok_or_else(|| Error::Config("CHECK needs a prevResult".into()))?;
    let id = conf.ipam_id(&inv.container_id, &inv.ifname);
    let netns = inv
        .netns
        .as_deref()
        .ok_or_else(|| Error::Env("CNI_NETNS is not set".into()))?;
    let mut diff = Vec::new();
    let sandbox = netns.display().to_string();
    let pod_if = prev
        .interfaces
        .iter()
        .position(|i| i.name == inv.ifname && i.sandbox.as_deref() == Some(sandbox.as_str()));
    if pod_if.is_none() {
        diff.push(format!(
            "prevResult lists no interface {} in {sandbox}",
            inv.ifname
        ));
    }
    let want_addrs: Vec<IpNet> = prev
        .ips
        .iter()
        .filter(|ip| ip.interface.is_none() || ip.interface == pod_if)
        .filter_map(|ip| ip.address.parse().ok())
        .collect();
    let rt = runtime()?;
    rt.block_on(check_links(
        netns,
        &inv.ifname,
        &host_ifname(&id),
        &prev,
        pod_if,
        &want_addrs,
        &mut diff,
    ))?;
    let agent = SocketAgent::new(&conf.socket);
    let held = agent.lookup(&id)?;
    for a in &want_addrs {
        if !held.contains(a) {
            diff.push(format!("weaver holds no reservation of {a} for {id}"));
        }
    }
    if diff.is_empty() {
        Ok(())
    } else {
        Err(Error::Check {
            id,
            differences: diff,
        })
    }
}

async fn check_links(
    netns: &Path,
    ifname: &str,
    host_if: &str,
    prev: &PrevResult,
    pod_if: Option<usize>,
    want_addrs: &[IpNet],
    diff: &mut Vec<String>,
) -> Result<()> {
    let host = LinuxNetlink::new()?;
    if host.link_index(host_if).await?.is_none() {
        diff.push(format!("host interface {host_if} is missing"));
    }
    if !netns.exists() {
        diff.push(format!("network namespace {} is gone", netns.display()));
        return Ok(());
    }
    let pod = LinuxNetlink::in_netns(netns)?;
    let Some(index) = pod.link_index(ifname).await? else {
        diff.push(format!("interface {ifname} is missing"));
        return Ok(());
    };
    let have = pod.addrs(index).await?;
    for a in want_addrs {
        if !have.contains(&(a.addr(), a.prefix_len())) {
            diff.push(format!("interface {ifname} lacks address {a}"));
        }
    }
    if let Some(want) = pod_if.and_then(|i| prev.interfaces[i].mtu) {
        let mtu = pod.link_mtu_by_index(index).await?;
        if mtu != Some(want) {
            diff.push(format!("interface {ifname} has MTU {mtu:?}, not {want}"));
        }
    }
    let routes = pod.routes_v4().await?;
    for r in &prev.routes {
        let Ok(dst) = r.dst.parse::<IpNet>() else {
            diff.push(format!("prevResult route {} is not a network", r.dst));
            continue;
        };
        if dst.addr().is_ipv6() {
            continue;
        }
        let gw: Option<std::net::IpAddr> = r.gw.as_deref().and_then(|g| g.parse().ok());
        let found = routes.iter().any(|have| {
            have.dst == dst.addr()
                && have.prefix_len == dst.prefix_len()
                && (gw.is_none() || have.gateway == gw)
        });
        if !found {
            diff.push(format!(
                "route to {} via {} is missing",
                r.dst,
                r.gw.as_deref().unwrap_or("-")
            ));
        }
    }
    Ok(())
}

/// STATUS: the agent answers and its IPAM can allocate now.
pub fn status(conf: &NetConf) -> Result<()> {
    let agent = SocketAgent::new(&conf.socket);
    match agent.ipam() {
        Ok(r) if r.ready => Ok(()),
        Ok(r) => Err(Error::NotReady(format!("IPAM is {}", r.status))),
        Err(e) => Err(Error::NotReady(e.to_string())),
    }
}

/// GC: releases the addresses of this network's attachments that are not
/// in `cni.dev/valid-attachments` and removes their host veths.
#[instrument(skip_all)]
pub fn gc(conf: &NetConf, remove_links: bool) -> Result<()> {
    let keep: Vec<String> = conf
        .valid_attachments
        .iter()
        .flatten()
        .map(|a| conf.ipam_id(&a.container_id, &a.ifname))
        .collect();
    let agent = SocketAgent::new(&conf.socket);
    if let Err(e) = crate::agent::Agent::drain_spool(&agent) {
        debug!(error = %e, "spool not drained");
    }
    let released = agent.gc(&conf.gc_prefix(), keep)?;
    info!(released = released.len(), "garbage collected");
    if !remove_links || released.is_empty() {
        return Ok(());
    }
    let rt = runtime()?;
    rt.block_on(async {
        let host = LinuxNetlink::new()?;
        let mut errors = Vec::new();
        for id in &released {
            if let Err(source) = wiring::unwire(&host, &host_ifname(id)).await {
                errors.push(Error::Wiring {
                    id: id.clone(),
                    source,
                });
            }
        }
        match errors.len() {
            0 => Ok(()),
            _ => Err(Error::Many(errors)),
        }
    })
}
