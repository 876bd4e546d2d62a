// SPDX-License-Identifier: Apache-2.0
//! The services endpoints of the local API: `GET /services`, `POST /services/export`,
//! `/services/import`, `/services/rebind` and `/services/remove`.
//!
//! The handlers settle what needs this host (the bridge's address an export masquerades
//! with, the weave address an import listens on, whether a process already has the port)
//! and hand one change to the services task, which checks it against the other services,
//! applies it in one nftables transaction and persists it. A refused request changes
//! nothing: 400 for a malformed or impossible service, 409 for a clash with what exists.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use tokio::sync::oneshot;
use weave_api::net::Ipv4Net;
use weave_api::{
    Service, ServiceAddRequest, ServiceFront, ServiceKind, ServiceProto, ServicesReply,
};
use weave_platform::Netlink as _;

use super::{bridge, cni, error, host_netlink, ipam, parse, Api, ApiError, ServicesInfo};
use crate::services::{Change, ChangeError, Request, ServiceError};

/// `GET /services`.
pub(crate) async fn list(State(api): State<Api>) -> Result<Json<ServicesReply>, ApiError> {
    let services = current(&api).await?;
    Ok(Json(ServicesReply {
        services,
        changed: None,
    }))
}

/// `POST /services/export`.
pub(crate) async fn export(
    State(api): State<Api>,
    body: Bytes,
) -> Result<Json<ServicesReply>, ApiError> {
    let req: ServiceAddRequest = parse(&body)?;
    let info = info(&api)?;
    let target = *req.target.ip();
    // The target answers to this host's address in its subnet: expose the default subnet if
    // that is where the target is, else the operator must have exposed its subnet.
    let in_default = api
        .default_subnet
        .filter(|d| Ipv4Net::from(*d).contains(&target));
    if let Some(d) = in_default {
        let b = bridge(&api)?.name.clone();
        cni::gateway(&api, &b, d).await?;
    } else if info.range.contains(u64::from(u32::from(target)))
        && bridge_address_for(&api, target).await?.is_none()
    {
        return Err(error(
            StatusCode::CONFLICT,
            format!("this host has no address in the subnet of {target}; run weave expose net:CIDR for that subnet first"),
        ));
    }
    add(&api, ServiceKind::Export, req).await
}

/// `POST /services/import`.
pub(crate) async fn import(
    State(api): State<Api>,
    body: Bytes,
) -> Result<Json<ServicesReply>, ApiError> {
    let mut req: ServiceAddRequest = parse(&body)?;
    let b = bridge(&api)?.name.clone();
    req.address = match req.address {
        None => {
            let subnet = api.default_subnet.ok_or_else(ipam::disabled)?;
            match cni::gateway(&api, &b, subnet).await? {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            }
        }
        Some(a) => {
            if !bridge_has(&api, a).await? {
                return Err(error(
                    StatusCode::CONFLICT,
                    format!("{a} is not an address of this host's bridge {b}; leave --address out to use the exposed one, or weave expose its subnet"),
                ));
            }
            Some(a)
        }
    };
    add(&api, ServiceKind::Import, req).await
}

/// `POST /services/rebind`.
pub(crate) async fn rebind(
    State(api): State<Api>,
    body: Bytes,
) -> Result<Json<ServicesReply>, ApiError> {
    let req: ServiceAddRequest = parse(&body)?;
    change(
        &api,
        Change::Rebind {
            proto: req.proto,
            address: req.address,
            port: req.port,
            target: req.target,
        },
    )
    .await
}

/// `POST /services/remove`.
pub(crate) async fn remove(
    State(api): State<Api>,
    body: Bytes,
) -> Result<Json<ServicesReply>, ApiError> {
    let req: ServiceFront = parse(&body)?;
    change(
        &api,
        Change::Remove {
            proto: req.proto,
            address: req.address,
            port: req.port,
        },
    )
    .await
}

/// Every service (none when services do not run).
pub(crate) async fn current(api: &Api) -> Result<Vec<Service>, ApiError> {
    if api.services.is_none() {
        return Ok(Vec::new());
    }
    let (services, _) = ask(api, None).await?;
    Ok(services)
}

/// Adds a service of `kind`, refusing a front port some process of this host listens on.
async fn add(
    api: &Api,
    kind: ServiceKind,
    req: ServiceAddRequest,
) -> Result<Json<ServicesReply>, ApiError> {
    let service = Service {
        kind,
        proto: req.proto,
        address: req.address,
        port: req.port,
        target: req.target,
    };
    if req.port != 0 {
        if let Some(why) = port_taken(req.proto, req.address, req.port) {
            return Err(error(
                StatusCode::CONFLICT,
                format!(
                    "{} port {} is in use on this host ({why}); a service there would hide it",
                    req.proto, req.port
                ),
            ));
        }
    }
    change(api, Change::Add(service)).await
}

/// Whether a process of this host has `proto` `port` (on `address`, or any address):
/// binding it is refused.
fn port_taken(proto: ServiceProto, address: Option<Ipv4Addr>, port: u16) -> Option<String> {
    let at = SocketAddr::from((address.unwrap_or(Ipv4Addr::UNSPECIFIED), port));
    let bound = match proto {
        ServiceProto::Tcp => std::net::TcpListener::bind(at).map(drop),
        ServiceProto::Udp => std::net::UdpSocket::bind(at).map(drop),
    };
    match bound {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Some(e.to_string()),
        _ => None,
    }
}

async fn change(api: &Api, change: Change) -> Result<Json<ServicesReply>, ApiError> {
    let (services, changed) = ask(api, Some(change)).await?;
    Ok(Json(ServicesReply { services, changed }))
}

/// Sends one request to the services task.
async fn ask(
    api: &Api,
    change: Option<Change>,
) -> Result<(Vec<Service>, Option<Service>), ApiError> {
    let tx = &info(api)?.requests;
    let stopping = || {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "services are shutting down",
        )
    };
    let (reply, rx) = oneshot::channel();
    tx.send(Request { change, reply })
        .await
        .map_err(|_| stopping())?;
    rx.await.map_err(|_| stopping())?.map_err(|e| match e {
        ChangeError::Refused(
            r @ (ServiceError::Clash { .. }
            | ServiceError::Unknown(_)
            | ServiceError::Ambiguous { .. }),
        ) => error(StatusCode::CONFLICT, r.to_string()),
        ChangeError::Refused(r) => error(StatusCode::BAD_REQUEST, r.to_string()),
        ChangeError::Failed(f) => error(StatusCode::INTERNAL_SERVER_ERROR, f),
    })
}

fn info(api: &Api) -> Result<&ServicesInfo, ApiError> {
    api.services.as_ref().ok_or_else(|| {
        error(
            StatusCode::CONFLICT,
            "services need the bridge and IP address management (weaver runs with --bridge off or --ipalloc-range off)",
        )
    })
}

/// The bridge's IPv4 addresses with their prefix lengths.
async fn bridge_addrs(api: &Api) -> Result<Vec<(Ipv4Addr, u8)>, ApiError> {
    let b = bridge(api)?.name.clone();
    let failed = |e: weave_platform::Error| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            weave_api::error_chain(&e),
        )
    };
    let host = host_netlink()?;
    let Some(index) = host.link_index(&b).await.map_err(failed)? else {
        return Ok(Vec::new());
    };
    Ok(host
        .addrs(index)
        .await
        .map_err(failed)?
        .into_iter()
        .filter_map(|(a, len)| match a {
            IpAddr::V4(v4) => Some((v4, len)),
            IpAddr::V6(_) => None,
        })
        .collect())
}

/// Whether `a` is on the bridge.
async fn bridge_has(api: &Api, a: Ipv4Addr) -> Result<bool, ApiError> {
    Ok(bridge_addrs(api).await?.iter().any(|(b, _)| *b == a))
}

/// The bridge's address whose subnet holds `target`, if any.
async fn bridge_address_for(api: &Api, target: Ipv4Addr) -> Result<Option<Ipv4Addr>, ApiError> {
    Ok(bridge_addrs(api).await?.into_iter().find_map(|(a, len)| {
        Ipv4Net::new(a, len)
            .ok()
            .filter(|n| n.trunc().contains(&target))
            .map(|_| a)
    }))
}
