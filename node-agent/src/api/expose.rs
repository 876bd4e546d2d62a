// SPDX-License-Identifier: Apache-2.0
//! `POST /expose` and `POST /hide`: this host on the weave network, and off it again.
//!
//! Expose gives the bridge an address in a subnet (the one a CNI ADD would give it as the
//! pods' gateway: found on the bridge, else from IPAM under `weave:expose:PEER:SUBNET`), so
//! the connected route makes every container of the subnet, on any host, reachable from this
//! host and this host from them; optionally it names the address in weaveDNS (holder
//! `weave:expose`). The address stays on the bridge and in IPAM's persisted state when the
//! agent restarts, so exposing again is a no-op that prints the same address.
//!
//! Hide takes the address, its route, its IPAM allocation and its weaveDNS names away. It is
//! refused while a service needs the address (an import's front, an export's masquerading
//! source), so that it never leaves a rule pointing nowhere.

use std::net::IpAddr;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use tracing::{info, warn};
use weave_api::net::Ipv4Net;
use weave_api::{ExposeReply, ExposeRequest, HideReply, HideRequest, ServiceKind};
use weave_platform::Netlink as _;

use super::names::{call, holder, qualify, register};
use super::{bridge, cni, error, host_netlink, ipam, parse, Api, ApiError};
use crate::dns::zone::Holder;
use crate::ipam::allocator::Request as IpamRequest;

/// `POST /expose`.
pub(crate) async fn expose(
    State(api): State<Api>,
    body: Bytes,
) -> Result<Json<ExposeReply>, ApiError> {
    let req: ExposeRequest = parse(&body)?;
    let name = req
        .dns_name
        .as_deref()
        .map(|n| qualify(&api, n))
        .transpose()?;
    let subnet = match ipam::subnet(req.subnet)?.or(api.default_subnet) {
        Some(s) => s,
        None => return Err(ipam::disabled()),
    };
    let b = bridge(&api)?.name.clone();
    let gw = cni::gateway(&api, &b, subnet).await?;
    if let Some(d) = &api.dns {
        d.rescan.notify_one();
    }
    if let (Some(name), IpAddr::V4(v4)) = (name, gw) {
        register(&api, name, vec![v4], holder(Some(Holder::EXPOSE))?).await?;
    }
    let address = weave_api::net::IpNet::new(gw, subnet.prefix())
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(ExposeReply { address }))
}

/// `POST /hide`.
pub(crate) async fn hide(State(api): State<Api>, body: Bytes) -> Result<Json<HideReply>, ApiError> {
    let req: HideRequest = parse(&body)?;
    let subnet = match ipam::subnet(req.subnet)?.or(api.default_subnet) {
        Some(s) => s,
        None => return Err(ipam::disabled()),
    };
    let b = bridge(&api)?.name.clone();
    let failed = |e: weave_platform::Error| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            weave_api::error_chain(&e),
        )
    };
    let host = host_netlink()?;
    let Some(index) = host.link_index(&b).await.map_err(failed)? else {
        return Ok(Json(HideReply { address: None }));
    };
    let net = Ipv4Net::from(subnet);
    let found = host
        .addrs(index)
        .await
        .map_err(failed)?
        .into_iter()
        .find_map(|(a, len)| match a {
            IpAddr::V4(v4) if len == subnet.prefix() && net.contains(&v4) => Some(v4),
            _ => None,
        });
    if let Some(addr) = found {
        let users: Vec<String> = super::services::current(&api)
            .await?
            .iter()
            .filter(|s| match s.kind {
                ServiceKind::Import => s.address == Some(addr),
                ServiceKind::Export => net.contains(s.target.ip()),
            })
            .map(crate::services::set::describe)
            .collect();
        if !users.is_empty() {
            return Err(error(
                StatusCode::CONFLICT,
                format!(
                    "{addr} is used by {}; remove them first (weave service remove)",
                    users.join(", ")
                ),
            ));
        }
        host.del_addr(index, IpAddr::V4(addr), subnet.prefix())
            .await
            .map_err(failed)?;
    }
    api.gateways.forget(&b, subnet);
    let ident = cni::expose_ident(&api, subnet)?;
    ipam::call(&api, ipam::DEFAULT_TIMEOUT, |reply| IpamRequest::Release {
        ident,
        addr: None,
        reply,
    })
    .await?;
    if let (Some(d), Some(addr)) = (&api.dns, found) {
        let exposed = holder(Some(Holder::EXPOSE))?;
        let removed = call(&api, |reply| crate::dns::Request::Remove {
            name: None,
            addrs: vec![addr],
            holder: Some(exposed),
            reply,
        })
        .await;
        if removed.is_err() {
            warn!(%addr, "the exposed address's DNS names could not be removed");
        }
        d.rescan.notify_one();
    }
    let address = found
        .map(|a| weave_api::net::IpNet::new(IpAddr::V4(a), subnet.prefix()))
        .transpose()
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    if let Some(a) = &address {
        info!(bridge = %b, address = %a, "host hidden from the weave network");
    }
    Ok(Json(HideReply { address }))
}
