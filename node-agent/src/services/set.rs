// SPDX-License-Identifier: Apache-2.0
//! [`ServiceSet`]: the exported and imported services of this host, and the checks every
//! change passes before anything is applied.
//!
//! A service is known by its front: protocol, port and (for a bound export, and for every
//! import) address. Two fronts clash when they share protocol and port and either has no
//! address or both have the same one, since the kernel could not tell which rule a packet
//! meant. A change that fails a check leaves the set as it was.

use std::net::{Ipv4Addr, SocketAddrV4};

use weave_api::{Service, ServiceKind, ServiceProto};

use crate::ipam::subnet::Subnet;

/// Why a change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// Port 0 in a front or target.
    #[error("port 0 is not a service port")]
    PortZero,
    /// A target address that cannot be a destination.
    #[error("target {0} is not a unicast address")]
    BadTarget(Ipv4Addr),
    /// A front address that cannot be one of this host's.
    #[error("front address {0} is not a unicast address")]
    BadFront(Ipv4Addr),
    /// An export whose target is not a weave address.
    #[error("an export's target must be a weave address (in {range}), not {target}; to reach an outside address from containers, import it")]
    ExportOutside {
        /// The target.
        target: Ipv4Addr,
        /// The allocation range.
        range: Subnet,
    },
    /// An import whose target is a weave address.
    #[error("an import's target must be outside the weave network ({range}), not {target}; to reach a weave address from outside, export it")]
    ImportInside {
        /// The target.
        target: Ipv4Addr,
        /// The allocation range.
        range: Subnet,
    },
    /// An import whose front is not a weave address.
    #[error(
        "an import's address must be a weave address of this host (in {range}), not {address}"
    )]
    ImportFront {
        /// The front address.
        address: Ipv4Addr,
        /// The allocation range.
        range: Subnet,
    },
    /// A service pointing at its own front.
    #[error("{0} would point at itself")]
    Loop(String),
    /// The front clashes with a service that exists.
    #[error("{proto} port {port} is already used by {existing}")]
    Clash {
        /// Protocol.
        proto: ServiceProto,
        /// Port.
        port: u16,
        /// The service holding it.
        existing: String,
    },
    /// No service has the front.
    #[error("no service on {0}")]
    Unknown(String),
    /// Several services share the port and no address was given.
    #[error("several services use {proto} port {port} ({list}); give the address")]
    Ambiguous {
        /// Protocol.
        proto: ServiceProto,
        /// Port.
        port: u16,
        /// The candidates.
        list: String,
    },
}

/// The services of this host, in front order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceSet {
    services: Vec<Service>,
}

impl ServiceSet {
    /// A set of `services` as they were persisted, checked as if added one by one.
    pub fn from_services(range: Subnet, services: Vec<Service>) -> Result<Self, ServiceError> {
        let mut set = Self::default();
        for s in services {
            set.add(range, s)?;
        }
        Ok(set)
    }

    /// Every service, in front order.
    pub fn services(&self) -> &[Service] {
        &self.services
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// Adds `s` after checking it against `range` (the weave network) and the services there
    /// are.
    pub fn add(&mut self, range: Subnet, s: Service) -> Result<(), ServiceError> {
        check(range, &s)?;
        if let Some(existing) = self.services.iter().find(|e| clashes(e, &s)) {
            return Err(ServiceError::Clash {
                proto: s.proto,
                port: s.port,
                existing: describe(existing),
            });
        }
        self.services.push(s);
        self.services.sort();
        Ok(())
    }

    /// The service at `proto`/`address`/`port` (the address may be left out when one
    /// service has the port).
    pub fn find(
        &self,
        proto: ServiceProto,
        address: Option<Ipv4Addr>,
        port: u16,
    ) -> Result<Service, ServiceError> {
        let matching: Vec<&Service> = self
            .services
            .iter()
            .filter(|s| {
                s.proto == proto && s.port == port && (address.is_none() || s.address == address)
            })
            .collect();
        match matching.as_slice() {
            [one] => Ok(**one),
            [] => Err(ServiceError::Unknown(front(proto, address, port))),
            many => Err(ServiceError::Ambiguous {
                proto,
                port,
                list: many
                    .iter()
                    .map(|s| describe(s))
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Points the service `old` at `target` instead; returns the new service.
    pub fn rebind(
        &mut self,
        range: Subnet,
        old: Service,
        target: SocketAddrV4,
    ) -> Result<Service, ServiceError> {
        let new = Service { target, ..old };
        check(range, &new)?;
        let slot = self
            .services
            .iter_mut()
            .find(|s| **s == old)
            .ok_or_else(|| ServiceError::Unknown(describe(&old)))?;
        *slot = new;
        self.services.sort();
        Ok(new)
    }

    /// Removes the service `s`.
    pub fn remove(&mut self, s: &Service) -> Result<(), ServiceError> {
        let before = self.services.len();
        self.services.retain(|e| e != s);
        if self.services.len() == before {
            return Err(ServiceError::Unknown(describe(s)));
        }
        Ok(())
    }
}

/// `export tcp :2211 -> 10.32.0.5:4422`, as `weave service list` prints it.
pub fn describe(s: &Service) -> String {
    format!(
        "{} {} -> {}",
        s.kind,
        front(s.proto, s.address, s.port),
        s.target
    )
}

/// `tcp 10.32.0.1:3322`, `tcp :2211`.
pub fn front(proto: ServiceProto, address: Option<Ipv4Addr>, port: u16) -> String {
    match address {
        Some(a) => format!("{proto} {a}:{port}"),
        None => format!("{proto} :{port}"),
    }
}

/// Whether an address can be a service's front or target.
fn unicast(a: Ipv4Addr) -> bool {
    !(a.is_unspecified() || a.is_multicast() || a.is_broadcast() || a.is_loopback())
}

/// The checks of one service on its own.
fn check(range: Subnet, s: &Service) -> Result<(), ServiceError> {
    if s.port == 0 || s.target.port() == 0 {
        return Err(ServiceError::PortZero);
    }
    let target = *s.target.ip();
    if !unicast(target) {
        return Err(ServiceError::BadTarget(target));
    }
    if let Some(a) = s.address.filter(|a| !unicast(*a)) {
        return Err(ServiceError::BadFront(a));
    }
    let inside = |a: Ipv4Addr| range.contains(u64::from(u32::from(a)));
    match s.kind {
        ServiceKind::Export if !inside(target) => {
            return Err(ServiceError::ExportOutside { target, range })
        }
        ServiceKind::Import if inside(target) => {
            return Err(ServiceError::ImportInside { target, range })
        }
        ServiceKind::Import => match s.address {
            Some(address) if inside(address) => {}
            Some(address) => return Err(ServiceError::ImportFront { address, range }),
            None => {
                return Err(ServiceError::ImportFront {
                    address: Ipv4Addr::UNSPECIFIED,
                    range,
                })
            }
        },
        ServiceKind::Export => {}
    }
    if s.address == Some(target) && s.port == s.target.port() {
        return Err(ServiceError::Loop(describe(s)));
    }
    Ok(())
}

/// Whether the kernel could not tell `a`'s packets from `b`'s.
fn clashes(a: &Service, b: &Service) -> bool {
    a.proto == b.proto
        && a.port == b.port
        && match (a.address, b.address) {
            (Some(x), Some(y)) => x == y,
            _ => true,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range() -> Subnet {
        "10.32.0.0/12".parse().expect("range")
    }

    fn export(port: u16, address: Option<&str>, target: &str) -> Service {
        Service {
            kind: ServiceKind::Export,
            proto: ServiceProto::Tcp,
            address: address.map(|a| a.parse().expect("address")),
            port,
            target: target.parse().expect("target"),
        }
    }

    fn import(address: &str, port: u16, target: &str) -> Service {
        Service {
            kind: ServiceKind::Import,
            address: Some(address.parse().expect("address")),
            ..export(port, None, target)
        }
    }

    #[test]
    fn clashing_fronts_are_refused_and_change_nothing() {
        let mut set = ServiceSet::default();
        set.add(range(), export(2211, None, "10.32.0.5:4422"))
            .expect("first");
        let before = set.clone();
        for s in [
            export(2211, None, "10.32.0.6:4422"),
            export(2211, Some("192.168.1.2"), "10.32.0.6:4422"),
            import("10.32.0.1", 2211, "192.168.1.9:22"),
        ] {
            let err = set.add(range(), s).expect_err("clash");
            assert_eq!(
                err.to_string(),
                "tcp port 2211 is already used by export tcp :2211 -> 10.32.0.5:4422"
            );
            assert_eq!(set, before);
        }
        let udp = Service {
            proto: ServiceProto::Udp,
            ..export(2211, None, "10.32.0.6:4422")
        };
        set.add(range(), udp)
            .expect("another protocol is another front");
    }

    #[test]
    fn bound_fronts_share_a_port_when_their_addresses_differ() {
        let mut set = ServiceSet::default();
        set.add(range(), export(80, Some("192.168.1.2"), "10.32.0.5:80"))
            .expect("first");
        set.add(range(), import("10.32.0.1", 80, "192.168.7.7:8080"))
            .expect("second address");
        let err = set
            .find(ServiceProto::Tcp, None, 80)
            .expect_err("two on the port");
        assert!(
            err.to_string()
                .starts_with("several services use tcp port 80 ("),
            "{err}"
        );
        let found = set
            .find(ServiceProto::Tcp, Some("10.32.0.1".parse().expect("a")), 80)
            .expect("by address");
        assert_eq!(found.kind, ServiceKind::Import);
    }

    #[test]
    fn targets_and_fronts_are_checked() {
        let mut set = ServiceSet::default();
        let cases = [
            (export(0, None, "10.32.0.5:1"), "port 0 is not a service port"),
            (export(1, None, "10.32.0.5:0"), "port 0 is not a service port"),
            (export(1, None, "224.0.0.1:1"), "target 224.0.0.1 is not a unicast address"),
            (
                export(1, Some("127.0.0.1"), "10.32.0.5:1"),
                "front address 127.0.0.1 is not a unicast address",
            ),
            (
                export(1, None, "192.168.1.1:1"),
                "an export's target must be a weave address (in 10.32.0.0/12), not 192.168.1.1; to reach an outside address from containers, import it",
            ),
            (
                import("10.32.0.1", 1, "10.32.0.9:1"),
                "an import's target must be outside the weave network (10.32.0.0/12), not 10.32.0.9; to reach a weave address from outside, export it",
            ),
            (
                import("192.168.1.2", 1, "192.168.1.9:1"),
                "an import's address must be a weave address of this host (in 10.32.0.0/12), not 192.168.1.2",
            ),
            (
                export(7, Some("10.32.0.1"), "10.32.0.1:7"),
                "export tcp 10.32.0.1:7 -> 10.32.0.1:7 would point at itself",
            ),
        ];
        for (s, want) in cases {
            assert_eq!(set.add(range(), s).expect_err(want).to_string(), want);
        }
        assert!(set.is_empty());
    }

    #[test]
    fn rebind_replaces_the_target_and_checks_it() {
        let mut set = ServiceSet::default();
        let s = import("10.32.0.1", 3322, "192.168.5.3:2211");
        set.add(range(), s).expect("add");
        let err = set
            .rebind(range(), s, "10.32.0.7:2211".parse().expect("t"))
            .expect_err("inside");
        assert!(matches!(err, ServiceError::ImportInside { .. }), "{err}");
        assert_eq!(set.services(), &[s]);
        let new = set
            .rebind(range(), s, "192.168.5.4:2211".parse().expect("t"))
            .expect("rebind");
        assert_eq!(set.services(), &[new]);
        assert_eq!(new.target.to_string(), "192.168.5.4:2211");
        set.remove(&new).expect("remove");
        assert_eq!(
            set.remove(&new).expect_err("gone").to_string(),
            "no service on import tcp 10.32.0.1:3322 -> 192.168.5.4:2211"
        );
    }
}
