// SPDX-License-Identifier: Apache-2.0
//! The addresses this peer has handed out, and the search for a free one.
//!
//! Which addresses the peer *owns* is the ring's business; this module only
//! records allocations and finds a free address inside given owned ranges.
//! The search is next-fit (it continues after the last address handed out in
//! that subnet), so a released address is not reused at once: a stale
//! connection aimed at a deleted pod does not reach its successor.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::subnet::{ip, Subnet};

/// Longest identifier accepted.
pub const MAX_IDENT: usize = 253;

/// Who an address belongs to: a CNI container/interface, a `weave attach`
/// namespace, or any other caller-chosen name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Ident(String);

impl Ident {
    /// Validates an identifier: 1..=253 printable ASCII characters, no spaces.
    pub fn new(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > MAX_IDENT {
            return Err(format!(
                "invalid id {:?}: must be 1..={MAX_IDENT} characters",
                s.chars().take(40).collect::<String>()
            ));
        }
        if !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "invalid id {:?}: only printable ASCII without spaces",
                s.chars().take(40).collect::<String>()
            ));
        }
        Ok(Self(s.to_string()))
    }

    /// The identifier.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One address handed out, with the subnet it was handed out in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// The address (an integer; see [`ip`]).
    pub addr: u32,
    /// The subnet; its prefix length is the one the pod gets.
    pub subnet: Subnet,
}

impl Allocation {
    /// The address with its subnet's prefix length, as the API sends it.
    pub fn net(&self) -> weave_api::net::IpNet {
        let subnet: weave_api::net::Ipv4Net = self.subnet.into();
        weave_api::net::Ipv4Net::new(ip(u64::from(self.addr)), subnet.prefix_len())
            .expect("a subnet's prefix is at most 30")
            .into()
    }
}

impl fmt::Display for Allocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", ip(u64::from(self.addr)), self.subnet.prefix())
    }
}

/// Allocations of this peer.
#[derive(Debug, Clone, Default)]
pub struct Space {
    by_addr: BTreeMap<u32, Ident>,
    by_ident: BTreeMap<Ident, Vec<Allocation>>,
    cursor: BTreeMap<Subnet, u64>,
}

impl Space {
    /// Allocations of `ident`.
    pub fn lookup(&self, ident: &Ident) -> &[Allocation] {
        self.by_ident.get(ident).map_or(&[], Vec::as_slice)
    }

    /// The allocation of `ident` inside `subnet`, if any.
    pub fn find_in(&self, ident: &Ident, subnet: &Subnet) -> Option<Allocation> {
        self.lookup(ident)
            .iter()
            .find(|a| a.subnet == *subnet)
            .copied()
    }

    /// Who holds `addr`.
    pub fn holder(&self, addr: u32) -> Option<&Ident> {
        self.by_addr.get(&addr)
    }

    /// Number of addresses handed out.
    pub fn len(&self) -> usize {
        self.by_addr.len()
    }

    /// Whether nothing is handed out.
    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }

    /// Addresses handed out inside `[start, end)`.
    pub fn used_in(&self, start: u64, end: u64) -> u64 {
        let (Ok(s), e) = (u32::try_from(start), u32::try_from(end)) else {
            return 0;
        };
        match e {
            Ok(e) => self.by_addr.range(s..e).count() as u64,
            Err(_) => self.by_addr.range(s..).count() as u64,
        }
    }

    /// Every allocation, in address order.
    pub fn iter(&self) -> impl Iterator<Item = (&Ident, Allocation)> + '_ {
        self.by_ident
            .iter()
            .flat_map(|(id, list)| list.iter().map(move |a| (id, *a)))
    }

    /// Identifiers holding addresses.
    pub fn idents(&self) -> impl Iterator<Item = &Ident> + '_ {
        self.by_ident.keys()
    }

    /// Hands `ident` a free address of `subnet` inside `owned` (sorted,
    /// disjoint ranges), searching on from the last one handed out there.
    pub fn allocate(
        &mut self,
        ident: &Ident,
        subnet: Subnet,
        owned: &[(u64, u64)],
    ) -> Option<Allocation> {
        let (lo, hi) = subnet.host_range();
        let cursor = self.cursor.get(&subnet).copied().unwrap_or(lo);
        let candidates: Vec<(u64, u64)> = owned
            .iter()
            .map(|(s, e)| ((*s).max(lo), (*e).min(hi)))
            .filter(|(s, e)| s < e)
            .collect();
        let after = candidates
            .iter()
            .map(|(s, e)| ((*s).max(cursor), *e))
            .filter(|(s, e)| s < e);
        let before = candidates
            .iter()
            .map(|(s, e)| (*s, (*e).min(cursor)))
            .filter(|(s, e)| s < e);
        let addr = after
            .chain(before)
            .find_map(|(s, e)| self.first_free(s, e))?;
        let a = u32::try_from(addr).expect("host addresses are below 2^32");
        let alloc = Allocation { addr: a, subnet };
        self.insert(ident, alloc);
        self.cursor.insert(subnet, addr + 1);
        Some(alloc)
    }

    /// Records `alloc` for `ident`; fails with the holder if another
    /// identifier holds the address.
    pub fn claim(&mut self, ident: &Ident, alloc: Allocation) -> Result<(), Ident> {
        match self.by_addr.get(&alloc.addr) {
            Some(holder) if holder == ident => Ok(()),
            Some(holder) => Err(holder.clone()),
            None => {
                self.insert(ident, alloc);
                Ok(())
            }
        }
    }

    /// Releases `addr` of `ident`, or all its addresses when `addr` is `None`;
    /// returns what was released.
    pub fn release(&mut self, ident: &Ident, addr: Option<u32>) -> Vec<Allocation> {
        let Some(list) = self.by_ident.get_mut(ident) else {
            return Vec::new();
        };
        let released: Vec<Allocation> = match addr {
            Some(a) => {
                let pos = list.iter().position(|x| x.addr == a);
                pos.map(|i| vec![list.remove(i)]).unwrap_or_default()
            }
            None => std::mem::take(list),
        };
        if list.is_empty() {
            self.by_ident.remove(ident);
        }
        for r in &released {
            self.by_addr.remove(&r.addr);
        }
        released
    }

    fn insert(&mut self, ident: &Ident, alloc: Allocation) {
        self.by_addr.insert(alloc.addr, ident.clone());
        self.by_ident.entry(ident.clone()).or_default().push(alloc);
    }

    /// Lowest address of `[start, end)` nobody holds.
    fn first_free(&self, start: u64, end: u64) -> Option<u64> {
        let s = u32::try_from(start).ok()?;
        let mut candidate = start;
        for used in self.by_addr.range(s..).map(|(a, _)| u64::from(*a)) {
            if used != candidate || candidate >= end {
                break;
            }
            candidate += 1;
        }
        (candidate < end).then_some(candidate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Ident {
        Ident::new(s).unwrap()
    }

    #[test]
    fn next_fit_skips_taken_and_does_not_reuse_at_once() {
        let subnet: Subnet = "10.0.0.0/29".parse().unwrap();
        let owned = [(subnet.start(), subnet.end())];
        let mut s = Space::default();
        let a = s.allocate(&id("a"), subnet, &owned).unwrap();
        let b = s.allocate(&id("b"), subnet, &owned).unwrap();
        assert_eq!(a.to_string(), "10.0.0.1/29");
        assert_eq!(b.to_string(), "10.0.0.2/29");
        s.release(&id("a"), None);
        let c = s.allocate(&id("c"), subnet, &owned).unwrap();
        assert_eq!(c.to_string(), "10.0.0.3/29");
        for n in ["d", "e", "f"] {
            s.allocate(&id(n), subnet, &owned).unwrap();
        }
        assert_eq!(s.lookup(&id("f"))[0].to_string(), "10.0.0.6/29");
        // .1 was freed: the search wraps round to it; .7 (broadcast) is never used.
        let g = s.allocate(&id("g"), subnet, &owned).unwrap();
        assert_eq!(g.to_string(), "10.0.0.1/29");
        assert!(s.allocate(&id("h"), subnet, &owned).is_none());
        assert_eq!(s.used_in(subnet.start(), subnet.end()), 6);
    }

    #[test]
    fn only_owned_addresses_are_used() {
        let subnet: Subnet = "10.0.0.0/24".parse().unwrap();
        let owned = [(subnet.start() + 100, subnet.start() + 102)];
        let mut s = Space::default();
        assert_eq!(
            s.allocate(&id("a"), subnet, &owned).unwrap().to_string(),
            "10.0.0.100/24"
        );
        s.allocate(&id("b"), subnet, &owned).unwrap();
        assert!(s.allocate(&id("c"), subnet, &owned).is_none());
    }

    #[test]
    fn claims_conflict_with_other_holders_only() {
        let subnet: Subnet = "10.0.0.0/24".parse().unwrap();
        let alloc = Allocation {
            addr: u32::try_from(subnet.start() + 5).unwrap(),
            subnet,
        };
        let mut s = Space::default();
        s.claim(&id("a"), alloc).unwrap();
        s.claim(&id("a"), alloc).unwrap();
        assert_eq!(s.claim(&id("b"), alloc), Err(id("a")));
        assert_eq!(s.release(&id("a"), Some(alloc.addr)), vec![alloc]);
        assert!(s.is_empty() && s.lookup(&id("a")).is_empty());
    }

    #[test]
    fn idents_are_validated() {
        assert!(Ident::new("").is_err());
        assert!(Ident::new("a b").is_err());
        assert!(Ident::new(&"x".repeat(300)).is_err());
        assert!(Ident::new("cni:0123abcd:eth0").is_ok());
    }
}
