// SPDX-License-Identifier: Apache-2.0
//! The weaveDNS registration helpers that attach, detach, the CNI ADD and IPAM
//! releases use, and the calls into the DNS task the `/dns` endpoints share.
//!
//! Names are qualified into the domain and checked, ids parsed, before anything
//! reaches the DNS task: a bad request gets a 400 and changes nothing.

use std::net::{IpAddr, Ipv4Addr};

use axum::http::StatusCode;
use tokio::sync::oneshot;
use tracing::warn;
use weave_api::{DnsReport, DnsSettings};

use super::{error, Api, ApiError};
use crate::dns::zone::Holder;
use crate::dns::{DnsHandle, DnsName, Request};

pub(super) fn disabled() -> ApiError {
    error(StatusCode::CONFLICT, "weaveDNS is off (--no-dns)")
}

pub(super) fn stopping() -> ApiError {
    error(StatusCode::SERVICE_UNAVAILABLE, "weaveDNS is shutting down")
}

pub(super) fn handle(api: &Api) -> Result<&DnsHandle, ApiError> {
    api.dns.as_ref().ok_or_else(disabled)
}

/// A name given by a client, qualified into the domain.
pub(crate) fn qualify(api: &Api, name: &str) -> Result<DnsName, ApiError> {
    handle(api)?
        .domain
        .qualify(name)
        .map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))
}

pub(super) fn holder(id: Option<&str>) -> Result<Holder, ApiError> {
    Holder::new(id.unwrap_or(Holder::EXTERN)).map_err(|e| error(StatusCode::BAD_REQUEST, e))
}

pub(super) async fn call<T>(
    api: &Api,
    make: impl FnOnce(oneshot::Sender<T>) -> Request,
) -> Result<T, ApiError> {
    let (reply, rx) = oneshot::channel();
    handle(api)?
        .requests
        .send(make(reply))
        .await
        .map_err(|_| stopping())?;
    rx.await.map_err(|_| stopping())
}

/// Registers `name` for `addrs` held by `holder`; returns how many records were new.
pub(crate) async fn register(
    api: &Api,
    name: DnsName,
    addrs: Vec<Ipv4Addr>,
    holder: Holder,
) -> Result<usize, ApiError> {
    call(api, |reply| Request::Add {
        name,
        addrs,
        holder,
        reply,
    })
    .await?
    .map_err(|e| error(StatusCode::CONFLICT, e.to_string()))
}

/// Removes every record held by `id` (detach, CNI DEL, IPAM release and
/// GC); best effort: without DNS, or with an id DNS would refuse, nothing.
pub(crate) async fn forget(api: &Api, id: &str) {
    let (Some(_), Ok(h)) = (&api.dns, Holder::new(id)) else {
        return;
    };
    let res = call(api, |reply| Request::Remove {
        name: None,
        addrs: Vec::new(),
        holder: Some(h),
        reply,
    })
    .await;
    if res.is_err() {
        warn!(%id, "DNS records of a released id could not be removed");
    }
}

/// The report, if DNS runs.
pub(crate) async fn status(api: &Api, entries: bool) -> Option<DnsReport> {
    api.dns.as_ref()?;
    call(api, |reply| Request::Report { entries, reply })
        .await
        .ok()
}

/// Resolver settings for a pod whose gateway is `gateway`.
pub(crate) fn settings(api: &Api, gateway: IpAddr) -> Option<DnsSettings> {
    api.dns.as_ref().map(|d| DnsSettings {
        nameserver: gateway,
        domain: d.domain.name().as_str().trim_end_matches('.').to_string(),
    })
}
