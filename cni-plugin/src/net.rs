// SPDX-License-Identifier: Apache-2.0
//! `weave-net`, the network plugin: ADD asks the agent for an address and
//! wires the pod with [`weave_platform::wiring`] (the same code as
//! `weave attach`), DEL undoes it even with the pod, the interface or the
//! agent gone, CHECK compares the namespace with `prevResult`, STATUS and GC
//! ask the agent.
//!
//! Names are derived from the IPAM id `cni:NETWORK:CONTAINERID:IFNAME`
//! alone (the host end is `vethwepl` + 7 hex digits of its hash), so DEL
//! needs neither the namespace nor `prevResult` to find what to remove.
//!
//! The gateway of a pod is the bridge's address in the pod's subnet, as on
//! Weave Net: the first ADD in a subnet gives the bridge an address from
//! IPAM (id `weave:expose:PEER:SUBNET`), which also gives the host a route
//! to its pods (needed for hostPorts).

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use tracing::{debug, info, instrument, warn};
use weave_platform::wiring::{self, Cidr, PodRoute, PodWiring};
use weave_platform::{LinuxNetlink, Netlink};

use crate::agent::Agent;
use crate::config::NetConf;
use crate::env::Invocation;
use crate::error::{Error, Result};
use crate::result::{fmt_mac, CniResult, Interface, IpConfig, PrevResult, RouteOut};

/// Hex digits of the host-side veth name (`vethwepl` + 7 = 15 bytes).
const HOST_IF_DIGITS: usize = 7;

/// Host end of the veth of IPAM id `id`.
pub fn host_ifname(id: &str) -> String {
    wiring::host_ifname(id, HOST_IF_DIGITS)
}

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
    let agent = Agent::new(&conf.socket);
    agent.unspool(&id);
    let host_if = host_ifname(&id);
    let rt = runtime()?;
    // Handles are made inside the runtime's context; their connection tasks
    // run whenever `block_on` does.
    let _entered = rt.enter();
    let host = LinuxNetlink::new()?;
    let pod = LinuxNetlink::in_netns(netns)?;
    // Spec 1.1: an existing CNI_IFNAME is an error, unless it is the pod end
    // of our own veth (a repeated ADD returns the same result).
    rt.block_on(async {
        if pod.link_index(&inv.ifname).await?.is_some()
            && host.link_index(&host_if).await?.is_none()
        {
            return Err(Error::IfnameTaken {
                ifname: inv.ifname.clone(),
                netns: netns.display().to_string(),
            });
        }
        Ok(())
    })?;
    // The allocation and the agent's report are independent: ask both at
    // once (blocking calls, outside the runtime) to save a round trip.
    let (addrs, report) = std::thread::scope(|s| {
        let report = s.spawn(|| agent.report());
        let addrs = agent.allocate(&id, conf.subnet);
        let report = report.join().unwrap_or_else(|_| {
            Err(Error::Internal {
                op: "ask weaver for its report".into(),
                source: std::io::Error::other("thread panicked"),
            })
        });
        (addrs, report)
    });
    let addrs = addrs?;
    rt.block_on(async {
        let built = async {
            let report = report?;
            let sleeve = report.sleeve.as_ref();
            let bridge = conf
                .bridge
                .clone()
                .or_else(|| sleeve.map(|s| s.bridge.clone()))
                .ok_or_else(|| {
                    Error::Config("weaver runs without a bridge (--bridge off)".into())
                })?;
            let mtu = conf.mtu.or(sleeve.map(|s| s.mtu)).unwrap_or(1376);
            let addr = *addrs.first().ok_or_else(|| Error::Internal {
                op: format!("allocate an address for {id}"),
                source: std::io::Error::other("weaver returned no address"),
            })?;
            let gateway = match conf.gateway {
                Some(gw) => gw,
                None => expose(&host, &agent, &bridge, &report.peer.name, addr).await?,
            };
            let routes: Vec<RouteOut> = match &conf.routes {
                Some(routes) => routes
                    .iter()
                    .map(|r| RouteOut {
                        dst: r.dst,
                        gw: Some(r.gw.unwrap_or(gateway)),
                    })
                    .collect(),
                None => vec![RouteOut {
                    dst: Cidr {
                        addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                        prefix_len: 0,
                    },
                    gw: Some(gateway),
                }],
            };
            let pod_routes: Vec<PodRoute> = routes
                .iter()
                .map(|r| PodRoute {
                    dst: r.dst.addr,
                    prefix_len: r.dst.prefix_len,
                    gateway: r.gw,
                })
                .collect();
            let wired = wiring::wire(
                &host,
                &pod,
                &PodWiring {
                    bridge: &bridge,
                    host_if: &host_if,
                    pod_if: &inv.ifname,
                    netns,
                    mtu,
                    addrs: &addrs,
                    routes: &pod_routes,
                    hairpin: conf.hairpin,
                },
            )
            .await
            .map_err(|source| Error::Wiring {
                id: id.clone(),
                source,
            })?;
            info!(%id, %addr, %gateway, host_if, "pod attached");
            Ok(CniResult {
                interfaces: vec![
                    Interface {
                        name: host_if.clone(),
                        mac: wired.host_mac.map(fmt_mac),
                        sandbox: None,
                        mtu: Some(mtu),
                    },
                    Interface {
                        name: inv.ifname.clone(),
                        mac: wired.pod_mac.map(fmt_mac),
                        sandbox: Some(netns.display().to_string()),
                        mtu: Some(mtu),
                    },
                ],
                ips: addrs
                    .iter()
                    .map(|a| IpConfig {
                        address: *a,
                        gateway: Some(gateway),
                        interface: Some(1),
                    })
                    .collect(),
                routes,
                dns: conf.dns.clone(),
            })
        }
        .await;
        if let Err(e) = &built {
            // Spec: undo a failed ADD (the runtime's DEL would do it too).
            warn!(%id, error = %e, "add failed: undoing");
            let _ = wiring::unwire(&host, &host_if).await;
            let _ = agent.release_or_spool(&id);
        }
        built
    })
}

/// The bridge's address in `addr`'s subnet, giving the bridge one from
/// IPAM if it has none yet. Concurrent ADDs agree: the expose id is the same
/// for all of them, IPAM hands out the same address for it, and adding an
/// address twice is success.
async fn expose(
    host: &LinuxNetlink,
    agent: &Agent,
    bridge: &str,
    peer: &str,
    addr: Cidr,
) -> Result<IpAddr> {
    let index = host
        .link_index(bridge)
        .await?
        .ok_or_else(|| Error::Wiring {
            id: format!("bridge {bridge}"),
            source: wiring::WiringError::NoBridge(bridge.to_string()),
        })?;
    let subnet = addr.network();
    for (a, len) in host.addrs(index).await? {
        if len == subnet.prefix_len && subnet.contains(a) {
            return Ok(a);
        }
    }
    let expose_id = format!("weave:expose:{peer}:{subnet}");
    let got = agent.allocate(&expose_id, Some(subnet))?;
    let gw = got.first().ok_or_else(|| Error::Internal {
        op: format!("allocate a bridge address in {subnet}"),
        source: std::io::Error::other("weaver returned no address"),
    })?;
    host.add_addr(index, gw.addr, gw.prefix_len).await?;
    info!(%bridge, address = %gw, "bridge exposed in the pod subnet");
    Ok(gw.addr)
}

/// DEL: removes the veth (by name, whatever the namespace's state) and
/// releases the address, spooling the release if the agent is down. Every
/// step runs; the errors are reported together.
#[instrument(skip_all, fields(id))]
pub fn del(inv: &Invocation, conf: &NetConf) -> Result<()> {
    let id = conf.ipam_id(&inv.container_id, &inv.ifname);
    tracing::Span::current().record("id", id.as_str());
    let mut errors = Vec::new();
    let host_if = host_ifname(&id);
    match runtime() {
        Ok(rt) => {
            let removed = rt.block_on(async {
                let host = LinuxNetlink::new()?;
                wiring::unwire(&host, &host_if)
                    .await
                    .map_err(|source| Error::Wiring {
                        id: id.clone(),
                        source,
                    })
            });
            if let Err(e) = removed {
                errors.push(e);
            }
        }
        Err(e) => errors.push(e),
    }
    let agent = Agent::new(&conf.socket);
    match agent.release_or_spool(&id) {
        Ok(()) => {
            if let Err(e) = agent.drain_spool() {
                debug!(error = %e, "spool not drained");
            }
        }
        Err(e) => errors.push(e),
    }
    info!(%id, host_if, errors = errors.len(), "pod detached");
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => Err(Error::Many(errors)),
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
    let want_addrs: Vec<Cidr> = prev
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
    let agent = Agent::new(&conf.socket);
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
    want_addrs: &[Cidr],
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
        if !have.contains(&(a.addr, a.prefix_len)) {
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
        let Ok(dst) = parse_dst(&r.dst) else {
            diff.push(format!("prevResult route {} is not a network", r.dst));
            continue;
        };
        if dst.addr.is_ipv6() {
            continue;
        }
        let gw: Option<IpAddr> = r.gw.as_deref().and_then(|g| g.parse().ok());
        let found = routes.iter().any(|have| {
            have.dst == dst.addr
                && have.prefix_len == dst.prefix_len
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

fn parse_dst(s: &str) -> Result<Cidr, String> {
    match s {
        "0.0.0.0/0" => Ok(Cidr {
            addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            prefix_len: 0,
        }),
        other => other.parse(),
    }
}

/// STATUS: the agent answers and its IPAM can allocate now.
pub fn status(conf: &NetConf) -> Result<()> {
    let agent = Agent::new(&conf.socket);
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
    let agent = Agent::new(&conf.socket);
    if let Err(e) = agent.drain_spool() {
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
