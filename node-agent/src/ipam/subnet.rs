// SPDX-License-Identifier: Apache-2.0
//! IPv4 networks as IPAM sees them: the allocation range (the "universe")
//! and the subnets carved out of it.
//!
//! Addresses are handled as integers; ends are `u64` so that a range reaching
//! 255.255.255.255 needs no special case. A subnet's host range leaves out its
//! first and last address (RFC 1122 network and broadcast addresses).

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use weave_api::net::{parse_net_v4, Ipv4Net};

/// Smallest subnet IPAM allocates in: 4 addresses, two of them usable.
pub const MIN_PREFIX_SIZE: u8 = 30;

/// An IPv4 network with all host bits zero, at least 4 addresses wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Subnet {
    net: u32,
    prefix: u8,
}

impl Subnet {
    /// The network `addr/prefix`; fails unless the host bits are zero and the
    /// prefix is 1..=30.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, String> {
        if prefix == 0 || prefix > MIN_PREFIX_SIZE {
            return Err(format!(
                "invalid subnet {addr}/{prefix}: prefix length must be 1..={MIN_PREFIX_SIZE} (at least 4 addresses)"
            ));
        }
        let net = u32::from(addr);
        let mask = mask(prefix);
        if net & !mask != 0 {
            return Err(format!(
                "invalid subnet {addr}/{prefix}: bits after the prefix are not zero (did you mean {}/{prefix}?)",
                Ipv4Addr::from(net & mask)
            ));
        }
        Ok(Self { net, prefix })
    }

    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.net)
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// First address, as an integer.
    pub fn start(&self) -> u64 {
        u64::from(self.net)
    }

    /// One past the last address.
    pub fn end(&self) -> u64 {
        self.start() + self.size()
    }

    /// Number of addresses.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    /// The usable host addresses `[start+1, end-1)`.
    pub fn host_range(&self) -> (u64, u64) {
        (self.start() + 1, self.end() - 1)
    }

    /// Whether `addr` lies inside.
    pub fn contains(&self, addr: u64) -> bool {
        (self.start()..self.end()).contains(&addr)
    }

    /// Whether `other` lies entirely inside.
    pub fn covers(&self, other: &Subnet) -> bool {
        self.start() <= other.start() && other.end() <= self.end()
    }

    /// Whether the two share any address.
    pub fn overlaps(&self, other: &Subnet) -> bool {
        self.start() < other.end() && other.start() < self.end()
    }
}

/// The netmask of a prefix length (1..=32).
fn mask(prefix: u8) -> u32 {
    u32::MAX << (32 - u32::from(prefix))
}

/// Whether the network `addr/prefix` (any prefix 0..=32, host bits ignored)
/// shares an address with `subnet`; used to compare against host routes.
pub fn overlaps_route(subnet: &Subnet, addr: Ipv4Addr, prefix: u8) -> bool {
    let prefix = prefix.min(32);
    let start = if prefix == 0 {
        0
    } else {
        u64::from(u32::from(addr) & mask(prefix))
    };
    let end = start + (1u64 << (32 - u32::from(prefix)));
    subnet.start() < end && start < subnet.end()
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr(), self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::try_from(parse_net_v4(s, "subnet")?)
    }
}

impl TryFrom<Ipv4Net> for Subnet {
    type Error = String;

    /// The network `net`; fails unless its host bits are zero and its
    /// prefix is 1..=30.
    fn try_from(net: Ipv4Net) -> Result<Self, Self::Error> {
        Self::new(net.addr(), net.prefix_len())
    }
}

impl From<Subnet> for Ipv4Net {
    fn from(s: Subnet) -> Self {
        Ipv4Net::new(s.addr(), s.prefix).expect("a subnet's prefix is at most 30")
    }
}

impl Serialize for Subnet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            (self.net, self.prefix).serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Subnet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            let (net, prefix) = <(u32, u8)>::deserialize(d)?;
            Self::new(Ipv4Addr::from(net), prefix).map_err(serde::de::Error::custom)
        }
    }
}

/// Converts an in-range integer back to an address.
pub fn ip(addr: u64) -> Ipv4Addr {
    Ipv4Addr::from(u32::try_from(addr).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_bounds() {
        let s: Subnet = "10.32.0.0/12".parse().unwrap();
        assert_eq!(s.to_string(), "10.32.0.0/12");
        assert_eq!(s.size(), 1 << 20);
        assert_eq!(s.host_range(), (s.start() + 1, s.end() - 1));
        assert!(s.contains(u64::from(u32::from(Ipv4Addr::new(10, 47, 255, 255)))));
        assert!(!s.contains(u64::from(u32::from(Ipv4Addr::new(10, 48, 0, 0)))));
        let top: Subnet = "255.255.255.252/30".parse().unwrap();
        assert_eq!(top.end(), 1 << 32);
    }

    #[test]
    fn bad_subnets_say_why() {
        let e = "10.32.0.1/12".parse::<Subnet>().unwrap_err();
        assert!(
            e.contains("bits after the prefix") && e.contains("10.32.0.0/12"),
            "{e}"
        );
        let e = "10.0.0.0/31".parse::<Subnet>().unwrap_err();
        assert!(e.contains("at least 4"), "{e}");
        for bad in [
            "",
            "10.0.0.0",
            "10.0.0.0/x",
            "fd00::/64",
            "10.0.0.0/0",
            "300.0.0.0/8",
        ] {
            assert!(bad.parse::<Subnet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn overlap_and_cover() {
        let u: Subnet = "10.32.0.0/12".parse().unwrap();
        let a: Subnet = "10.40.0.0/16".parse().unwrap();
        let b: Subnet = "10.48.0.0/16".parse().unwrap();
        assert!(u.covers(&a) && u.overlaps(&a) && !u.overlaps(&b) && !u.covers(&b));
        assert!(overlaps_route(&u, Ipv4Addr::new(10, 0, 0, 0), 8));
        assert!(overlaps_route(&u, Ipv4Addr::new(10, 33, 4, 5), 32));
        assert!(!overlaps_route(&u, Ipv4Addr::new(10, 250, 0, 0), 24));
        assert!(overlaps_route(&u, Ipv4Addr::UNSPECIFIED, 0));
    }

    #[test]
    fn serde_both_ways() {
        let s: Subnet = "10.2.3.0/24".parse().unwrap();
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(j, "\"10.2.3.0/24\"");
        assert_eq!(serde_json::from_str::<Subnet>(&j).unwrap(), s);
        assert!(serde_json::from_str::<Subnet>("\"10.2.3.1/24\"").is_err());
    }
}
