// SPDX-License-Identifier: Apache-2.0
//! The weaveDNS endpoints of the local API (`/dns/...`).
//!
//! Names are qualified into the domain and checked, ids and addresses
//! parsed, before anything reaches the DNS task: a bad request gets a 400
//! and changes nothing.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use weave_api::{
    DnsAddRequest, DnsChangeReply, DnsLookupReply, DnsLookupRequest, DnsRemoveRequest, DnsReport,
};

use super::names::{call, handle, holder, qualify, register, status, stopping};
use super::{error, parse, Api, ApiError};
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
