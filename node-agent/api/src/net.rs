// SPDX-License-Identifier: Apache-2.0
//! Addresses on the wire: [`IpNet`] values (an address with the prefix
//! length of its network, `10.32.0.5/12`; host bits allowed, `0.0.0.0/0`
//! fine) that travel as the strings they print as, so the JSON of the API
//! reads as before. Every CIDR string of the workspace is parsed here, by
//! `ipnet`'s parser, once, at the edge; what a value must satisfy beyond
//! being a CIDR (no host bits, a prefix range, IPv4 only) is checked by
//! whoever uses it.
//!
//! The `serde` helpers name the field in their errors (`invalid subnet
//! "x": …`), so a bad request says what was wrong in our words.

use std::net::{IpAddr, Ipv4Addr};

pub use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Deserializer};

/// Parses `ADDRESS/PREFIX` (`10.32.0.5/12`, `fd00::1/64`, `0.0.0.0/0`);
/// `what` names the value in the error.
pub fn parse_net(s: &str, what: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .map_err(|_| format!("invalid {what} {s:?}: expected ADDRESS/PREFIX like 10.32.0.5/12"))
}

/// Parses an IPv4 `ADDRESS/PREFIX`; `what` names the value in the error.
pub fn parse_net_v4(s: &str, what: &str) -> Result<Ipv4Net, String> {
    match parse_net(s, what)? {
        IpNet::V4(n) => Ok(n),
        IpNet::V6(_) => Err(format!(
            "invalid {what} {s:?}: expected IPv4ADDRESS/PREFIX like 10.32.0.5/12"
        )),
    }
}

/// Parses an IPv4 address given bare or with a prefix length
/// (`10.32.0.9`, `10.32.0.9/12`); the prefix is ignored.
pub fn parse_addr_v4(s: &str, what: &str) -> Result<Ipv4Addr, String> {
    let bad = || format!("invalid {what} {s:?}: expected an IPv4 address like 10.32.0.9");
    match s.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => Ok(a),
        Ok(IpAddr::V6(_)) => Err(bad()),
        Err(_) => parse_net_v4(s, what).map(|n| n.addr()).map_err(|_| bad()),
    }
}

/// Whether `net` has no bits set after its prefix (a network, not an
/// address in one); the error says which network was meant.
pub fn check_network(net: IpNet, what: &str) -> Result<IpNet, String> {
    if net.trunc() == net {
        Ok(net)
    } else {
        Err(format!(
            "{what} {net} has bits set after the prefix (did you mean {}?)",
            net.trunc()
        ))
    }
}

/// `deserialize_with` for an optional IPv4 subnet (`"subnet"` in errors).
pub fn opt_subnet_v4<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Ipv4Net>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| parse_net_v4(&s, "subnet").map_err(serde::de::Error::custom))
        .transpose()
}

/// `deserialize_with` for an IPv4 address with prefix (`"address"` in
/// errors).
pub fn net_v4<'de, D: Deserializer<'de>>(d: D) -> Result<Ipv4Net, D::Error> {
    let s = String::deserialize(d)?;
    parse_net_v4(&s, "address").map_err(serde::de::Error::custom)
}

/// `deserialize_with` for an optional IPv4 address with prefix (`"address"` in errors).
pub fn opt_net_v4<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Ipv4Net>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| parse_net_v4(&s, "address").map_err(serde::de::Error::custom))
        .transpose()
}

/// `deserialize_with` for an optional IPv4 address, bare or with a prefix
/// (`"address"` in errors).
pub fn opt_addr_v4<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Ipv4Addr>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| parse_addr_v4(&s, "address").map_err(serde::de::Error::custom))
        .transpose()
}

/// `deserialize_with` for a list of IPv4 addresses, bare or with a prefix
/// (`"address"` in errors).
pub fn addrs_v4<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Ipv4Addr>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| parse_addr_v4(s, "address").map_err(serde::de::Error::custom))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_parser_for_addresses_networks_and_default_routes() {
        let a = parse_net("10.2.1.4/24", "address").unwrap();
        assert_eq!(a.to_string(), "10.2.1.4/24");
        assert_eq!(a.trunc().to_string(), "10.2.1.0/24");
        let default = parse_net("0.0.0.0/0", "dst").unwrap();
        assert_eq!(default.prefix_len(), 0);
        assert!(default.contains(&"10.1.2.3".parse::<IpAddr>().unwrap()));
        assert_eq!(parse_net("::/0", "dst").unwrap().prefix_len(), 0);
        for bad in ["10.2.1.4", "10.2.1.4/33", "x/24", "fd00::1/129", ""] {
            let e = parse_net(bad, "address").unwrap_err();
            assert!(e.starts_with("invalid address"), "{bad}: {e}");
        }
        assert!(parse_net_v4("fd00::1/64", "subnet").is_err());
    }

    #[test]
    fn bare_or_prefixed_addresses() {
        let want: Ipv4Addr = "10.32.0.9".parse().unwrap();
        assert_eq!(parse_addr_v4("10.32.0.9", "address"), Ok(want));
        assert_eq!(parse_addr_v4("10.32.0.9/12", "address"), Ok(want));
        for bad in ["ten", "fd00::1", "10.32.0.9/40"] {
            assert!(parse_addr_v4(bad, "address").is_err(), "{bad}");
        }
    }

    #[test]
    fn networks_have_no_host_bits() {
        let n = parse_net("10.32.5.0/24", "subnet").unwrap();
        assert_eq!(check_network(n, "subnet"), Ok(n));
        let e = check_network(parse_net("10.32.5.1/24", "subnet").unwrap(), "subnet");
        assert!(e.unwrap_err().contains("did you mean 10.32.5.0/24"));
        let default = parse_net("0.0.0.0/0", "dst").unwrap();
        assert_eq!(check_network(default, "dst"), Ok(default));
    }

    #[test]
    fn values_travel_as_strings() {
        let n: IpNet = "10.32.0.5/12".parse().unwrap();
        assert_eq!(serde_json::to_string(&n).unwrap(), "\"10.32.0.5/12\"");
        assert_eq!(
            serde_json::from_str::<IpNet>("\"10.32.0.5/12\"").unwrap(),
            n
        );
    }
}
