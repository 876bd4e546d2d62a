// SPDX-License-Identifier: Apache-2.0
//! `weave-ipam`, the IPAM-only plugin: another plugin (the reference
//! `bridge`, `macvlan`, …) names it in its `ipam.type` and runs it with the
//! same environment and config. ADD returns the abbreviated IPAM result
//! (addresses and routes, no interfaces), DEL releases (spooling while the
//! agent is down), CHECK verifies the reservation, GC and STATUS are those
//! of `weave-net` without the links.

use tracing::{info, instrument};
use weave_api::net::IpNet;

use crate::agent::{Agent, SocketAgent};
use crate::config::NetConf;
use crate::env::Invocation;
use crate::error::{Error, Result};
use crate::result::{CniResult, IpConfig, PrevResult, RouteOut};

/// ADD: an address from weaver's IPAM for this attachment.
#[instrument(skip_all)]
pub fn add(inv: &Invocation, conf: &NetConf) -> Result<CniResult> {
    let id = conf.ipam_id(&inv.container_id, &inv.ifname);
    let agent = SocketAgent::new(&conf.socket);
    agent.unspool(&id);
    let addrs = agent.allocate(&id, conf.subnet)?;
    info!(%id, addresses = ?addrs.iter().map(ToString::to_string).collect::<Vec<_>>(), "allocated");
    let routes = conf
        .routes
        .iter()
        .flatten()
        .map(|r| RouteOut {
            dst: r.dst,
            gw: r.gw.or(conf.gateway),
        })
        .collect::<Vec<_>>();
    let routes = if routes.is_empty() {
        match conf.gateway {
            Some(gw) => vec![RouteOut {
                dst: crate::plan::default_route(gw),
                gw: Some(gw),
            }],
            None => Vec::new(),
        }
    } else {
        routes
    };
    Ok(CniResult {
        interfaces: Vec::new(),
        ips: addrs
            .into_iter()
            .map(|address| IpConfig {
                address,
                gateway: conf.gateway,
                interface: None,
            })
            .collect(),
        routes,
        dns: conf.dns.clone(),
    })
}

/// DEL: releases the attachment's addresses, or spools the release.
#[instrument(skip_all)]
pub fn del(inv: &Invocation, conf: &NetConf) -> Result<()> {
    let id = conf.ipam_id(&inv.container_id, &inv.ifname);
    let agent = SocketAgent::new(&conf.socket);
    agent.release_or_spool(&id)?;
    let _ = agent.drain_spool();
    info!(%id, "released");
    Ok(())
}

/// CHECK: every address of `prevResult` is still reserved for this
/// attachment.
pub fn check(inv: &Invocation, conf: &NetConf) -> Result<()> {
    let prev = PrevResult::for_check(conf)?.unwrap_or_default();
    let id = conf.ipam_id(&inv.container_id, &inv.ifname);
    let held = SocketAgent::new(&conf.socket).lookup(&id)?;
    let mut differences = Vec::new();
    if held.is_empty() {
        differences.push(format!("weaver holds no address for {id}"));
    }
    for ip in &prev.ips {
        if let Ok(a) = ip.address.parse::<IpNet>() {
            if !held.contains(&a) {
                differences.push(format!("{a} is not reserved for {id}"));
            }
        }
    }
    if differences.is_empty() {
        Ok(())
    } else {
        Err(Error::Check { id, differences })
    }
}
