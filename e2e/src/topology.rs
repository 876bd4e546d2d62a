// SPDX-License-Identifier: Apache-2.0
//! How the test bed's hosts are joined, and the pure plan of names and addresses it implies.
//!
//! [`Topology`] is what a test asks for; [`Plan`] is every interface name and address that
//! follows from it, computed and validated before anything is created, so a bad topology
//! changes nothing. The addressing scheme is part of the API: tests compute addresses from it.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use anyhow::{bail, Result};

/// Largest host count: host indexes are the last octet of an underlay address.
const MAX_HOSTS: usize = 254;
/// Largest link count: a link's index is the third octet of its addresses.
const MAX_LINKS: usize = 256;

/// How the hosts of a test bed are connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// N hosts on one shared L2 segment: a bridge `br0` in its own namespace `<prefix>-ul`,
    /// each host attached by a veth named `ul0` inside the host, address `10.250.0.<i>/24`
    /// for host i (1-based).
    Segment(usize),
    /// N hosts joined only by the listed point-to-point links (pairs of 1-based host
    /// indexes). Link k (0-based index in the list) between a and b is a veth pair with
    /// interface names `l<b>` inside host a and `l<a>` inside host b, addresses
    /// `10.251.<k>.<a>/24` on a's end and `10.251.<k>.<b>/24` on b's end. Hosts do not
    /// forward between links, so in a chain 1-2, 2-3 host 1 cannot reach host 3.
    Links {
        /// Number of hosts.
        hosts: usize,
        /// Point-to-point links as pairs of 1-based host indexes.
        links: Vec<(usize, usize)>,
    },
}

/// Every name and address a topology implies.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Underlay interfaces of each host, host 1 first.
    pub(crate) hosts: Vec<Vec<Port>>,
    /// The veth pairs to create.
    pub(crate) wires: Vec<Wire>,
}

/// One underlay interface inside a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Port {
    /// Interface name inside the host (`ul0`, `l2`).
    pub(crate) ifname: String,
    /// Its address (always a /24).
    pub(crate) addr: Ipv4Addr,
}

/// Where the far end of a host's veth goes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Far {
    /// A port named `ifname` on the segment bridge `br0` in the underlay namespace.
    Bridge {
        /// Port name inside the underlay namespace.
        ifname: String,
    },
    /// Another host's port.
    Host {
        /// 1-based index of that host.
        host: usize,
        /// Its interface name and address.
        port: Port,
    },
}

/// One veth pair: the near end is a port of `host`, the far end is on the bridge or another host.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Wire {
    /// 1-based host index of the near end.
    pub(crate) host: usize,
    /// The near end.
    pub(crate) port: Port,
    /// The far end.
    pub(crate) far: Far,
}

/// Name of the segment bridge inside the underlay namespace.
pub(crate) const BRIDGE: &str = "br0";
/// Prefix length of every underlay address.
pub(crate) const PREFIX_LEN: u8 = 24;

impl Topology {
    /// Number of hosts.
    pub fn host_count(&self) -> usize {
        match self {
            Topology::Segment(n) => *n,
            Topology::Links { hosts, .. } => *hosts,
        }
    }

    /// Whether the topology has a shared segment (and so an underlay namespace with a bridge).
    pub(crate) fn has_segment(&self) -> bool {
        matches!(self, Topology::Segment(_))
    }

    /// Validates the topology and computes its names and addresses.
    pub(crate) fn plan(&self) -> Result<Plan> {
        let count = self.host_count();
        if count == 0 || count > MAX_HOSTS {
            bail!("a test bed needs 1 to {MAX_HOSTS} hosts, not {count}");
        }
        let mut hosts = vec![Vec::new(); count];
        let mut wires = Vec::new();
        match self {
            Topology::Segment(_) => {
                for (i, ports) in hosts.iter_mut().enumerate() {
                    let host = i + 1;
                    let port = Port {
                        ifname: "ul0".into(),
                        addr: Ipv4Addr::new(10, 250, 0, octet(host)),
                    };
                    ports.push(port.clone());
                    wires.push(Wire {
                        host,
                        port,
                        far: Far::Bridge {
                            ifname: format!("h{host}"),
                        },
                    });
                }
            }
            Topology::Links { links, .. } => {
                if links.len() > MAX_LINKS {
                    bail!("at most {MAX_LINKS} links, not {}", links.len());
                }
                let mut seen = BTreeSet::new();
                for (k, &(a, b)) in links.iter().enumerate() {
                    if a == 0 || b == 0 || a > count || b > count {
                        bail!("link {k} ({a}, {b}) names a host outside 1..={count}");
                    }
                    if a == b {
                        bail!("link {k} joins host {a} to itself");
                    }
                    if !seen.insert((a.min(b), a.max(b))) {
                        bail!("link {k} joins hosts {a} and {b} a second time");
                    }
                    let third = u8::try_from(k).expect("at most MAX_LINKS (256) links");
                    let near = Port {
                        ifname: format!("l{b}"),
                        addr: Ipv4Addr::new(10, 251, third, octet(a)),
                    };
                    let far = Port {
                        ifname: format!("l{a}"),
                        addr: Ipv4Addr::new(10, 251, third, octet(b)),
                    };
                    hosts[a - 1].push(near.clone());
                    hosts[b - 1].push(far.clone());
                    wires.push(Wire {
                        host: a,
                        port: near,
                        far: Far::Host { host: b, port: far },
                    });
                }
            }
        }
        Ok(Plan { hosts, wires })
    }
}

/// The last octet for a 1-based host index (validated against `MAX_HOSTS` by the caller).
fn octet(host: usize) -> u8 {
    u8::try_from(host).expect("host index checked against MAX_HOSTS (254)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(plan: &Plan, host: usize) -> Vec<String> {
        plan.hosts[host - 1]
            .iter()
            .map(|p| format!("{}={}", p.ifname, p.addr))
            .collect()
    }

    #[test]
    fn segment_addresses_hosts_by_index() {
        let plan = Topology::Segment(3).plan().expect("valid");
        assert_eq!(addrs(&plan, 1), ["ul0=10.250.0.1"]);
        assert_eq!(addrs(&plan, 3), ["ul0=10.250.0.3"]);
        assert_eq!(plan.wires.len(), 3);
        assert_eq!(
            plan.wires[1].far,
            Far::Bridge {
                ifname: "h2".into()
            }
        );
    }

    #[test]
    fn links_name_interfaces_after_the_peer() {
        let plan = Topology::Links {
            hosts: 3,
            links: vec![(1, 2), (2, 3)],
        }
        .plan()
        .expect("valid");
        assert_eq!(addrs(&plan, 1), ["l2=10.251.0.1"]);
        assert_eq!(addrs(&plan, 2), ["l1=10.251.0.2", "l3=10.251.1.2"]);
        assert_eq!(addrs(&plan, 3), ["l2=10.251.1.3"]);
    }

    #[test]
    fn bad_topologies_are_rejected() {
        for (topology, needle) in [
            (Topology::Segment(0), "1 to 254"),
            (Topology::Segment(255), "1 to 254"),
            (
                Topology::Links {
                    hosts: 2,
                    links: vec![(1, 3)],
                },
                "outside",
            ),
            (
                Topology::Links {
                    hosts: 2,
                    links: vec![(2, 2)],
                },
                "itself",
            ),
            (
                Topology::Links {
                    hosts: 2,
                    links: vec![(1, 2), (2, 1)],
                },
                "second time",
            ),
        ] {
            let err = topology.plan().expect_err("invalid topology");
            assert!(err.to_string().contains(needle), "{topology:?}: {err}");
        }
    }
}
