// SPDX-License-Identifier: Apache-2.0
//! `POST /cni/add`: everything a CNI ADD needs, in one request, answered
//! from the API's own state (bridge, MTU, peer name, the gateways it
//! exposed) plus the one IPAM call that allocates the pod's address; the
//! router is never asked.
//!
//! The gateway of a pod subnet is the bridge's address in it, as on Weave
//! Net. The first ADD in a subnet finds it on the bridge, or gives the
//! bridge one from IPAM (id `weave:expose:PEER:SUBNET`, so concurrent ADDs
//! get the same address, and adding it twice is harmless); from then on the
//! address is remembered and no ADD allocates for the gateway again. The
//! gateway is settled before the pod's address is allocated, so a failure
//! there leaves no allocation behind.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Mutex, PoisonError};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use tracing::info;
use weave_api::net::Ipv4Net;
use weave_api::{CniAddReply, CniAddRequest};
use weave_platform::Netlink;

use super::ipam::{self, AddrSpec};
use super::{error, host_netlink, parse, Api, ApiError};
use crate::dns::zone::Holder;
use crate::ipam::space::Ident;
use crate::ipam::subnet::Subnet;

/// The gateways exposed so far, by bridge and subnet.
#[derive(Debug, Default)]
pub(crate) struct Gateways {
    known: Mutex<HashMap<(String, Subnet), IpAddr>>,
}

impl Gateways {
    fn get(&self, bridge: &str, subnet: Subnet) -> Option<IpAddr> {
        self.known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(bridge.to_string(), subnet))
            .copied()
    }

    /// Forgets the gateway of `subnet` (`weave hide` took it away).
    pub(crate) fn forget(&self, bridge: &str, subnet: Subnet) {
        self.known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(bridge.to_string(), subnet));
    }

    pub(super) fn insert(&self, bridge: &str, subnet: Subnet, gateway: IpAddr) {
        self.known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((bridge.to_string(), subnet), gateway);
    }
}

pub(crate) async fn add(
    State(api): State<Api>,
    body: Bytes,
) -> Result<Json<CniAddReply>, ApiError> {
    let req: CniAddRequest = parse(&body)?;
    let id = ipam::ident(&req.id)?;
    let subnet = match ipam::subnet(req.subnet)?.or(api.default_subnet) {
        Some(s) => s,
        None => return Err(ipam::disabled()),
    };
    let bridge = req
        .bridge
        .or_else(|| api.bridge.as_ref().map(|b| b.name.clone()));
    let gateway = match (&bridge, req.gateway) {
        (Some(b), true) => Some(self::gateway(&api, b, subnet).await?),
        _ => None,
    };
    let dns_name = req
        .dns_name
        .as_deref()
        .map(|n| super::names::qualify(&api, n))
        .transpose()?;
    let holder = dns_name
        .as_ref()
        .map(|_| Holder::new(id.as_str()).map_err(|e| error(StatusCode::BAD_REQUEST, e)))
        .transpose()?;
    // The pod's resolver is weaveDNS on its gateway, the bridge's address.
    let dns_gateway = match (&dns_name, gateway, &bridge) {
        (None, _, _) => None,
        (Some(_), Some(g), _) => Some(g),
        (Some(_), None, Some(b)) => Some(self::gateway(&api, b, subnet).await?),
        (Some(_), None, None) => None,
    };
    let spec = AddrSpec::Allocate(Some(subnet));
    let a = ipam::resolve(&api, &id, spec, ipam::timeout(req.timeout_ms)).await?;
    if let (Some(netns), Some(ifname)) = (&req.netns, &req.ifname) {
        api.attachments.record(id.as_str(), netns, ifname);
    }
    if let (Some(name), Some(holder)) = (dns_name, holder) {
        super::names::register(&api, name, vec![Ipv4Addr::from(a.addr)], holder).await?;
    }
    Ok(Json(CniAddReply {
        id: id.to_string(),
        addresses: vec![a.net()],
        bridge,
        mtu: api.bridge.as_ref().map(|b| b.mtu),
        gateway,
        dns: dns_gateway.and_then(|g| super::names::settings(&api, g)),
    }))
}

/// The IPAM identifier of the bridge's address in `subnet`.
pub(crate) fn expose_ident(api: &Api, subnet: Subnet) -> Result<Ident, ApiError> {
    Ident::new(&format!("{}:{}:{subnet}", weave_api::BRIDGE_ID, api.peer))
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e))
}

/// The bridge's address in `subnet`: remembered, else found on the bridge,
/// else given to it from IPAM (and weaveDNS told to listen there).
pub(crate) async fn gateway(api: &Api, bridge: &str, subnet: Subnet) -> Result<IpAddr, ApiError> {
    if let Some(gw) = api.gateways.get(bridge, subnet) {
        return Ok(gw);
    }
    let failed = |e: weave_platform::Error| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            weave_api::error_chain(&e),
        )
    };
    let host = host_netlink()?;
    let index = host
        .link_index(bridge)
        .await
        .map_err(failed)?
        .ok_or_else(|| {
            error(
                StatusCode::CONFLICT,
                format!("bridge {bridge} does not exist; is weaver running with a bridge?"),
            )
        })?;
    let net = Ipv4Net::from(subnet);
    for (a, len) in host.addrs(index).await.map_err(failed)? {
        if len == subnet.prefix() && matches!(a, IpAddr::V4(v4) if net.contains(&v4)) {
            api.gateways.insert(bridge, subnet, a);
            return Ok(a);
        }
    }
    let expose = expose_ident(api, subnet)?;
    let spec = AddrSpec::Allocate(Some(subnet));
    let got = ipam::resolve(api, &expose, spec, ipam::DEFAULT_TIMEOUT).await?;
    let gw = IpAddr::V4(Ipv4Addr::from(got.addr));
    host.add_addr(index, gw, subnet.prefix())
        .await
        .map_err(failed)?;
    info!(%bridge, address = %got, "bridge exposed in the pod subnet");
    api.gateways.insert(bridge, subnet, gw);
    if let Some(d) = &api.dns {
        d.rescan.notify_one();
    }
    Ok(gw)
}
