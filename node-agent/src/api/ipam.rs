// SPDX-License-Identifier: Apache-2.0
//! The IPAM endpoints of the local API (`/ipam/...`) and the address specs
//! of `weave attach` (`net:CIDR`, `ip:CIDR`, …).
//!
//! Handlers validate everything before anything reaches the allocator, so a
//! bad request gets a 400 and changes nothing.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use tokio::sync::oneshot;
use weave_api::net::{parse_net, IpNet, Ipv4Net};
use weave_api::{
    AddressesReply, AllocateRequest, AllocationsReply, ClaimRequest, GcReply, GcRequest,
    IpamReport, LookupRequest, ReleaseRequest, RmPeerReply, RmPeerRequest,
};

use super::{error, parse, Api, ApiError};
use crate::ipam::allocator::Request;
use crate::ipam::space::{Allocation, Ident};
use crate::ipam::subnet::Subnet;
use crate::ipam::IpamError;

/// Wait for space at most this long unless the request says otherwise.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait a request may ask for.
const MAX_TIMEOUT: Duration = Duration::from_secs(600);

/// One entry of `weave attach`'s address list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AddrSpec {
    /// Allocate in this subnet (`None`: the default subnet).
    Allocate(Option<Subnet>),
    /// This fixed address (claimed in IPAM when it is IPv4).
    Fixed(IpNet),
}

impl AddrSpec {
    /// Parses `net:default`, `net:CIDR`, `ip:CIDR` or `CIDR`; a fixed
    /// address needs a prefix length of at least 1 (it names the pod's
    /// network).
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        if s == "net:default" {
            return Ok(Self::Allocate(None));
        }
        if let Some(net) = s.strip_prefix("net:") {
            return net.parse::<Subnet>().map(|n| Self::Allocate(Some(n)));
        }
        let c = parse_net(s.strip_prefix("ip:").unwrap_or(s), "CIDR")?;
        if c.prefix_len() == 0 {
            return Err(format!(
                "invalid CIDR {s:?}: prefix length must be 1..={}",
                c.max_prefix_len()
            ));
        }
        Ok(Self::Fixed(c))
    }
}

/// The subnet of a request, checked: host bits zero, 4 addresses or more.
pub(crate) fn subnet(net: Option<Ipv4Net>) -> Result<Option<Subnet>, ApiError> {
    net.map(|n| Subnet::try_from(n).map_err(|e| error(StatusCode::BAD_REQUEST, e)))
        .transpose()
}

pub(crate) fn ident(s: &str) -> Result<Ident, ApiError> {
    Ident::new(s).map_err(|e| error(StatusCode::BAD_REQUEST, e))
}

pub(crate) fn timeout(ms: Option<u64>) -> Duration {
    ms.map_or(DEFAULT_TIMEOUT, Duration::from_millis)
        .min(MAX_TIMEOUT)
}

/// Maps IPAM errors to HTTP statuses.
pub(crate) fn ipam_error(e: IpamError) -> ApiError {
    let status = match e {
        IpamError::OutsideRange { .. }
        | IpamError::Reserved { .. }
        | IpamError::AmbiguousPeer(_)
        | IpamError::RemoveSelf
        | IpamError::Gossip(_) => StatusCode::BAD_REQUEST,
        IpamError::UnknownPeer(_) => StatusCode::NOT_FOUND,
        IpamError::InUse { .. }
        | IpamError::ClaimDenied { .. }
        | IpamError::Removed { .. }
        | IpamError::PeerReachable(_) => StatusCode::CONFLICT,
        IpamError::OwnerUnreachable { .. } | IpamError::Cancelled => {
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    error(status, e.to_string())
}

pub(crate) fn disabled() -> ApiError {
    error(
        StatusCode::CONFLICT,
        "IP address management is off (--ipalloc-range off)",
    )
}

fn stopping() -> ApiError {
    error(StatusCode::SERVICE_UNAVAILABLE, "IPAM is shutting down")
}

/// Sends a request to the allocator and waits for the answer, at most `wait`.
pub(crate) async fn call<T>(
    api: &Api,
    wait: Duration,
    make: impl FnOnce(oneshot::Sender<T>) -> Request,
) -> Result<T, ApiError> {
    let tx = api.ipam.as_ref().ok_or_else(disabled)?;
    let (reply, rx) = oneshot::channel();
    tx.send(make(reply)).await.map_err(|_| stopping())?;
    match tokio::time::timeout(wait, rx).await {
        Ok(r) => r.map_err(|_| stopping()),
        Err(_) => {
            // Dropping `rx` withdraws the request; say why it waited.
            let status = status(api).await.map(|r| r.status).unwrap_or_default();
            Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("timed out after {wait:?}: IPAM {status}"),
            ))
        }
    }
}

/// The IPAM report, if IPAM runs.
pub(crate) async fn status(api: &Api) -> Option<IpamReport> {
    let tx = api.ipam.as_ref()?;
    let (reply, rx) = oneshot::channel();
    tx.send(Request::Report { reply }).await.ok()?;
    rx.await.ok()
}

/// Allocates or claims what `spec` asks for.
pub(crate) async fn resolve(
    api: &Api,
    id: &Ident,
    spec: AddrSpec,
    wait: Duration,
) -> Result<Allocation, ApiError> {
    let r = match spec {
        AddrSpec::Allocate(subnet) => {
            call(api, wait, |reply| Request::Allocate {
                ident: id.clone(),
                subnet,
                reply,
            })
            .await?
        }
        AddrSpec::Fixed(cidr) => {
            let (IpAddr::V4(addr), prefix) = (cidr.addr(), cidr.prefix_len()) else {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    format!("{cidr} is not an IPv4 address; IPAM handles IPv4 only"),
                ));
            };
            call(api, wait, |reply| Request::Claim {
                ident: id.clone(),
                addr,
                prefix,
                reply,
            })
            .await?
        }
    };
    r.map_err(ipam_error)
}

fn addresses(id: &Ident, list: &[Allocation]) -> Json<AddressesReply> {
    Json(AddressesReply {
        id: id.to_string(),
        addresses: list.iter().map(Allocation::net).collect(),
    })
}

/// `GET /ipam/allocations`: every allocation of this peer, by identifier.
pub(crate) async fn allocations(
    State(api): State<Api>,
) -> Result<Json<AllocationsReply>, ApiError> {
    if api.ipam.is_none() {
        return Err(disabled());
    }
    let held = call(&api, DEFAULT_TIMEOUT, |reply| Request::List { reply }).await?;
    let entries = held
        .iter()
        .map(|(id, list)| addresses(id, list).0)
        .collect();
    Ok(Json(AllocationsReply { entries }))
}

pub(crate) async fn report(State(api): State<Api>) -> Result<Json<IpamReport>, ApiError> {
    if api.ipam.is_none() {
        return Err(disabled());
    }
    status(&api).await.map(Json).ok_or_else(stopping)
}

pub(crate) async fn allocate(
    State(api): State<Api>,
    body: Bytes,
) -> Result<Json<AddressesReply>, ApiError> {
    let req: AllocateRequest = parse(&body)?;
    let id = ident(&req.id)?;
    let subnet = subnet(req.subnet)?;
    let a = resolve(
        &api,
        &id,
        AddrSpec::Allocate(subnet),
        timeout(req.timeout_ms),
    )
    .await?;
    Ok(addresses(&id, &[a]))
}

pub(crate) async fn claim(
    State(api): State<Api>,
    body: Bytes,
) -> Result<Json<AddressesReply>, ApiError> {
    let req: ClaimRequest = parse(&body)?;
    let id = ident(&req.id)?;
    if !(1..=30).contains(&req.address.prefix_len()) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!(
                "invalid address {:?}: prefix length must be 1..=30",
                req.address.to_string()
            ),
        ));
    }
    let fixed = AddrSpec::Fixed(req.address.into());
    let a = resolve(&api, &id, fixed, timeout(req.timeout_ms)).await?;
    Ok(addresses(&id, &[a]))
}

pub(crate) async fn release(
    State(api): State<Api>,
    body: Bytes,
) -> Result<Json<AddressesReply>, ApiError> {
    let req: ReleaseRequest = parse(&body)?;
    let id = ident(&req.id)?;
    let released = call(&api, DEFAULT_TIMEOUT, |reply| Request::Release {
        ident: id.clone(),
        addr: req.address,
        reply,
    })
    .await?;
    if req.address.is_none() {
        // The id is gone (CNI DEL): so are its names and its place.
        super::names::forget(&api, id.as_str()).await;
        api.attachments.forget([id.as_str()]);
    }
    Ok(addresses(&id, &released))
}

pub(crate) async fn lookup(
    State(api): State<Api>,
    body: Bytes,
) -> Result<Json<AddressesReply>, ApiError> {
    let req: LookupRequest = parse(&body)?;
    let id = ident(&req.id)?;
    let list = call(&api, DEFAULT_TIMEOUT, |reply| Request::Lookup {
        ident: id.clone(),
        reply,
    })
    .await?;
    Ok(addresses(&id, &list))
}

pub(crate) async fn gc(State(api): State<Api>, body: Bytes) -> Result<Json<GcReply>, ApiError> {
    let req: GcRequest = parse(&body)?;
    if req.prefix.is_empty() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "gc needs a non-empty id prefix (e.g. \"cni:\") so that it cannot release everything",
        ));
    }
    let keep: BTreeSet<String> = req.keep.into_iter().collect();
    let released = call(&api, DEFAULT_TIMEOUT, |reply| Request::Gc {
        prefix: req.prefix,
        keep,
        reply,
    })
    .await?;
    for id in &released {
        super::names::forget(&api, id.as_str()).await;
    }
    api.attachments.forget(released.iter().map(Ident::as_str));
    Ok(Json(GcReply {
        released: released.iter().map(ToString::to_string).collect(),
    }))
}

pub(crate) async fn rmpeer(
    State(api): State<Api>,
    body: Bytes,
) -> Result<Json<RmPeerReply>, ApiError> {
    let req: RmPeerRequest = parse(&body)?;
    if req.peer.trim().is_empty() {
        return Err(error(StatusCode::BAD_REQUEST, "no peer given"));
    }
    let r = call(&api, DEFAULT_TIMEOUT, |reply| Request::RmPeer {
        peer: req.peer,
        reply,
    })
    .await?
    .map_err(ipam_error)?;
    Ok(Json(RmPeerReply {
        peer: r.peer.to_string(),
        addresses: r.addresses,
        heirs: r.heirs.iter().map(ToString::to_string).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_specs() {
        assert_eq!(
            AddrSpec::parse("net:default").unwrap(),
            AddrSpec::Allocate(None)
        );
        assert_eq!(
            AddrSpec::parse("net:10.2.3.0/24").unwrap(),
            AddrSpec::Allocate(Some("10.2.3.0/24".parse().unwrap()))
        );
        let fixed = AddrSpec::Fixed("10.2.3.4/24".parse().unwrap());
        assert!(AddrSpec::parse("10.2.3.4/0").is_err());
        assert_eq!(AddrSpec::parse("ip:10.2.3.4/24").unwrap(), fixed);
        assert_eq!(AddrSpec::parse("10.2.3.4/24").unwrap(), fixed);
        assert!(AddrSpec::parse("fd00::1/64").is_ok());
        for bad in ["net:10.2.3.4/24", "net:", "ip:10.2.3.4", "10.2.3.4/33", "x"] {
            assert!(AddrSpec::parse(bad).is_err(), "{bad}");
        }
    }
}
