// SPDX-License-Identifier: Apache-2.0
//! The weaveDNS endpoints of the local API (`/dns/...`, `/expose`).
//!
//! Names are qualified into the domain and checked, ids and addresses
//! parsed, before anything reaches the DNS task: a bad request gets a 400
//! and changes nothing.

use std::net::IpAddr;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use weave_api::{
    DnsAddRequest, DnsChangeReply, DnsLookupReply, DnsLookupRequest, DnsRemoveRequest, DnsReport,
    ExposeReply, ExposeRequest,
};

use super::names::{call, handle, holder, qualify, register, status, stopping};
use super::{bridge, cni, error, ipam, parse, Api, ApiError};
use crate::dns::zone::Holder;
use crate::dns::Request;

pub(crate) async fn report(State(api): State<Api>) -> Result<Json<DnsReport>, ApiError> {
    handle(&api)?;
    status(&api, false).await.map(Json).ok_or_else(stopping)
}

pub(crate) async fn entries(State(api): State<Api>) -> Result<Json<DnsReport>, ApiError> {
    handle(&api)?;
    status(&api, true).await.map(Json).ok_or_else(stopping)
}

pub(crate) async fn add(
    State(api): State<Api>,
    body: Bytes,
) -> Result<Json<DnsChangeReply>, ApiError> {
    let req: DnsAddRequest = parse(&body)?;
    let name = qualify(&api, &req.name)?;
    let holder = holder(req.id.as_deref())?;
    if req.addresses.is_empty() {
        return Err(error(StatusCode::BAD_REQUEST, "no addresses given"));
    }
    let changed = register(&api, name, req.addresses, holder).await?;
    Ok(Json(DnsChangeReply {
        changed: changed as u64,
    }))
}

pub(crate) async fn remove(
    State(api): State<Api>,
    body: Bytes,
) -> Result<Json<DnsChangeReply>, ApiError> {
    let req: DnsRemoveRequest = parse(&body)?;
    if req.name.is_none() && req.addresses.is_empty() && req.id.is_none() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "say what to remove: a name, addresses or an id",
        ));
    }
    let name = req.name.as_deref().map(|n| qualify(&api, n)).transpose()?;
    let holder = req.id.as_deref().map(|h| holder(Some(h))).transpose()?;
    let removed = call(&api, |reply| Request::Remove {
        name,
        addrs: req.addresses,
        holder,
        reply,
    })
    .await?;
    Ok(Json(DnsChangeReply {
        changed: removed as u64,
    }))
}

pub(crate) async fn lookup(
    State(api): State<Api>,
    body: Bytes,
) -> Result<Json<DnsLookupReply>, ApiError> {
    let req: DnsLookupRequest = parse(&body)?;
    let name = qualify(&api, &req.name)?;
    let addresses =
        crate::dns::table::read(&handle(&api)?.table, |t| t.lookup(&name)).unwrap_or_default();
    Ok(Json(DnsLookupReply {
        name: name.to_string(),
        addresses,
    }))
}

/// `POST /expose`: the bridge's address in a subnet (given to it from IPAM
/// if it has none there), optionally named in DNS (holder `weave:expose`).
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
