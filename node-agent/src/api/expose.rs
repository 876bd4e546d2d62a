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
//! With a fixed address (`10.2.1.1/24`, host bits set) expose puts exactly that address on
//! the bridge instead, claimed in IPAM under the same identifier (inside the range no pod gets
//! it then, and a claim refused because a pod has it refuses the expose; outside it IPAM only
//! records it), and refuses
//! while the bridge has another address in that network.
//!
//! Hide takes the address, its route, its IPAM allocation and its weaveDNS names away. It is
//! refused while a service needs the address (an import's front, an export's masquerading
//! source), so that it never leaves a rule pointing nowhere. Given a fixed address it removes
//! exactly that one and releases exactly that address of the expose identifier (nothing when
//! the identifier does not hold it: an address outside the range, or one IPAM gave someone
//! else); hiding again finds nothing and changes nothing.

use std::net::{IpAddr, Ipv4Addr};

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
use crate::ipam::subnet::Subnet;

/// What expose and hide are about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// The bridge's address in a subnet, from IPAM.
    Subnet(Subnet),
    /// A fixed address in its network.
    Fixed(Ipv4Addr, Subnet),
}

impl Target {
    /// From a request's `subnet` and `address`: at most one of them; the default subnet when
    /// neither.
    fn of(api: &Api, subnet: Option<Ipv4Net>, address: Option<Ipv4Net>) -> Result<Self, ApiError> {
        match (subnet, address) {
            (Some(_), Some(_)) => Err(error(
                StatusCode::BAD_REQUEST,
                "give a subnet or an address, not both",
            )),
            (None, Some(a)) => {
                let net = Subnet::new(a.network(), a.prefix_len())
                    .map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
                let (first, last) = net.host_range();
                if !(first..last).contains(&u64::from(u32::from(a.addr()))) {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        format!("{a} is the network or broadcast address of {net}, not a host's"),
                    ));
                }
                Ok(Self::Fixed(a.addr(), net))
            }
            (s, None) => match ipam::subnet(s)?.or(api.default_subnet) {
                Some(s) => Ok(Self::Subnet(s)),
                None => Err(ipam::disabled()),
            },
        }
    }

    fn subnet(self) -> Subnet {
        match self {
            Self::Subnet(s) | Self::Fixed(_, s) => s,
        }
    }

    /// The bridge address (of those in `addrs`) that hide removes: the fixed address if the
    /// bridge has it with its network's prefix, else the bridge's address in the subnet.
    fn on_bridge(self, addrs: &[(IpAddr, u8)]) -> Option<Ipv4Addr> {
        let subnet = self.subnet();
        let net = Ipv4Net::from(subnet);
        addrs.iter().find_map(|&(a, len)| match (a, self) {
            (IpAddr::V4(v4), Self::Fixed(want, _)) if v4 == want && len == subnet.prefix() => {
                Some(v4)
            }
            (IpAddr::V4(v4), Self::Subnet(_)) if len == subnet.prefix() && net.contains(&v4) => {
                Some(v4)
            }
            _ => None,
        })
    }

    /// What hide gives back to IPAM from the expose identifier: the fixed address alone, or
    /// (`None`) all it holds in the subnet.
    fn release(self) -> Option<Ipv4Addr> {
        match self {
            Self::Subnet(_) => None,
            Self::Fixed(a, _) => Some(a),
        }
    }
}

/// What expose does with a fixed address, given the bridge's addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FixedPlan {
    /// The bridge has it already: nothing to do.
    Present,
    /// Claim (when in the range) and add it.
    Add,
    /// The bridge has another address in the network.
    Conflict(Ipv4Addr),
}

fn fixed_plan(addr: Ipv4Addr, subnet: Subnet, addrs: &[(IpAddr, u8)]) -> FixedPlan {
    let net = Ipv4Net::from(subnet);
    let mut plan = FixedPlan::Add;
    for &(a, len) in addrs {
        match a {
            IpAddr::V4(v4) if v4 == addr && len == subnet.prefix() => return FixedPlan::Present,
            IpAddr::V4(v4) if len == subnet.prefix() && net.contains(&v4) => {
                plan = FixedPlan::Conflict(v4);
            }
            _ => {}
        }
    }
    plan
}

fn netlink_failed(e: weave_platform::Error) -> ApiError {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        weave_api::error_chain(&e),
    )
}

/// Puts the fixed `addr` on bridge `b`: claimed in IPAM under the expose identifier when IPAM
/// runs (an address outside the range is only recorded; one in it is asked of its owner and
/// refused if a pod has it), then added; a failed add gives the claim back.
async fn expose_fixed(api: &Api, b: &str, addr: Ipv4Addr, subnet: Subnet) -> Result<(), ApiError> {
    let host = host_netlink()?;
    let index = host
        .link_index(b)
        .await
        .map_err(netlink_failed)?
        .ok_or_else(|| {
            error(
                StatusCode::CONFLICT,
                format!("bridge {b} does not exist; is weaver running with a bridge?"),
            )
        })?;
    let addrs = host.addrs(index).await.map_err(netlink_failed)?;
    match fixed_plan(addr, subnet, &addrs) {
        FixedPlan::Present => return Ok(()),
        FixedPlan::Conflict(other) => {
            return Err(error(
                StatusCode::CONFLICT,
                format!(
                    "the bridge already has {other}/{} in {subnet}; weave hide it first",
                    subnet.prefix()
                ),
            ))
        }
        FixedPlan::Add => {}
    }
    let ident = cni::expose_ident(api, subnet)?;
    let claimed = if api.ipam.is_some() {
        let cidr = weave_api::net::IpNet::new(IpAddr::V4(addr), subnet.prefix())
            .map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))?;
        let spec = ipam::AddrSpec::Fixed(cidr);
        ipam::resolve(api, &ident, spec, ipam::DEFAULT_TIMEOUT).await?;
        true
    } else {
        false
    };
    if let Err(e) = host
        .add_addr(index, IpAddr::V4(addr), subnet.prefix())
        .await
    {
        if claimed {
            let _ = ipam::call(api, ipam::DEFAULT_TIMEOUT, |reply| IpamRequest::Release {
                ident,
                addr: Some(addr),
                reply,
            })
            .await;
        }
        return Err(netlink_failed(e));
    }
    info!(bridge = %b, address = %addr, prefix = subnet.prefix(), claimed, "bridge exposed at a fixed address");
    api.gateways.insert(b, subnet, IpAddr::V4(addr));
    Ok(())
}

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
    let target = Target::of(&api, req.subnet, req.address)?;
    let subnet = target.subnet();
    let b = bridge(&api)?.name.clone();
    let gw = match target {
        Target::Subnet(_) => cni::gateway(&api, &b, subnet).await?,
        Target::Fixed(addr, _) => {
            expose_fixed(&api, &b, addr, subnet).await?;
            IpAddr::V4(addr)
        }
    };
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
    let target = Target::of(&api, req.subnet, req.address)?;
    let subnet = target.subnet();
    let b = bridge(&api)?.name.clone();
    let failed = netlink_failed;
    let host = host_netlink()?;
    let Some(index) = host.link_index(&b).await.map_err(failed)? else {
        return Ok(Json(HideReply { address: None }));
    };
    let net = Ipv4Net::from(subnet);
    let found = target.on_bridge(&host.addrs(index).await.map_err(failed)?);
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
    if found.is_some() || matches!(target, Target::Subnet(_)) {
        api.gateways.forget(&b, subnet);
    }
    if api.ipam.is_some() {
        let ident = cni::expose_ident(&api, subnet)?;
        ipam::call(&api, ipam::DEFAULT_TIMEOUT, |reply| IpamRequest::Release {
            ident,
            addr: target.release(),
            reply,
        })
        .await?;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet(s: &str) -> Subnet {
        Subnet::try_from(s.parse::<Ipv4Net>().expect("net")).expect("subnet")
    }

    fn v4(s: &str) -> Ipv4Addr {
        s.parse().expect("address")
    }

    fn on(list: &[(&str, u8)]) -> Vec<(IpAddr, u8)> {
        list.iter()
            .map(|(a, l)| (a.parse().expect("address"), *l))
            .collect()
    }

    /// Hide of a fixed address takes exactly it (not another address of the same network,
    /// not the same address with another prefix) and gives IPAM back exactly it; hiding
    /// again finds nothing.
    #[test]
    fn hide_of_a_fixed_address_takes_exactly_it() {
        let fixed = Target::Fixed(v4("10.32.0.77"), subnet("10.32.0.0/12"));
        let bridge = on(&[("10.32.0.1", 12), ("10.32.0.77", 12), ("10.40.0.1", 16)]);
        assert_eq!(fixed.on_bridge(&bridge), Some(v4("10.32.0.77")));
        assert_eq!(fixed.release(), Some(v4("10.32.0.77")));
        let after = on(&[("10.32.0.1", 12), ("10.40.0.1", 16)]);
        assert_eq!(fixed.on_bridge(&after), None, "a second hide is a no-op");
        assert_eq!(fixed.on_bridge(&on(&[("10.32.0.77", 24)])), None);
        // Outside the range: the same, and releasing an address the expose identifier does
        // not hold frees nothing (Space::release by address).
        let outside = Target::Fixed(v4("10.2.1.1"), subnet("10.2.1.0/24"));
        assert_eq!(
            outside.on_bridge(&on(&[("10.2.1.1", 24)])),
            Some(v4("10.2.1.1"))
        );
        assert_eq!(outside.on_bridge(&on(&[("10.2.1.2", 24)])), None);
        // A subnet's hide takes the bridge's address in it and everything IPAM gave it.
        let sub = Target::Subnet(subnet("10.32.0.0/12"));
        assert_eq!(sub.on_bridge(&bridge), Some(v4("10.32.0.1")));
        assert_eq!(sub.release(), None);
    }

    #[test]
    fn expose_of_a_fixed_address() {
        let net = subnet("10.2.1.0/24");
        let a = v4("10.2.1.1");
        assert_eq!(
            fixed_plan(a, net, &on(&[("10.32.0.1", 12)])),
            FixedPlan::Add
        );
        assert_eq!(
            fixed_plan(a, net, &on(&[("10.2.1.1", 24)])),
            FixedPlan::Present
        );
        assert_eq!(
            fixed_plan(a, net, &on(&[("10.2.1.9", 24)])),
            FixedPlan::Conflict(v4("10.2.1.9"))
        );
        // The same address with another prefix is another network's.
        assert_eq!(fixed_plan(a, net, &on(&[("10.2.1.1", 16)])), FixedPlan::Add);
    }
}
