// SPDX-License-Identifier: Apache-2.0
//! The lookup table the DNS server answers from: live names → addresses and
//! addresses → names, kept up to date from the zone's live-set transitions.
//!
//! Shared between the DNS task (the only writer, in short sections) and the
//! server's query handlers (readers) behind a `RwLock`: a change touches
//! one name, so it costs a few hash-map operations rather than a rebuilt
//! snapshot, which matters with 10,000 records and a burst of
//! registrations. Two holders of the same address under one name count
//! once in answers. A name has few addresses and an address few names, so
//! each keeps them in a small sorted vector with a holder count (a
//! `BTreeMap` would allocate a node of eleven slots for each).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, PoisonError, RwLock};

use super::name::DnsName;
use super::zone::Transition;

/// Live names and addresses.
#[derive(Debug, Default)]
pub struct Table {
    names: HashMap<DnsName, Counted<Ipv4Addr>>,
    addrs: HashMap<Ipv4Addr, Counted<DnsName>>,
}

/// Values in ascending order, each with the number of records holding it.
type Counted<T> = Vec<(T, u32)>;

fn hold<T: Ord>(set: &mut Counted<T>, v: T) {
    match set.binary_search_by(|(x, _)| x.cmp(&v)) {
        Ok(i) => set[i].1 += 1,
        Err(i) => set.insert(i, (v, 1)),
    }
}

/// The table as shared between the DNS task and the server.
pub type SharedTable = Arc<RwLock<Table>>;

impl Table {
    /// Applies records going live and away.
    pub fn apply(&mut self, transitions: Vec<Transition>) {
        for (key, live) in transitions {
            if live {
                // Most names have one address and most addresses one name:
                // room for one (a plain `Vec` starts with four).
                hold(
                    self.names
                        .entry(key.name.clone())
                        .or_insert_with(|| Vec::with_capacity(1)),
                    key.addr,
                );
                hold(
                    self.addrs
                        .entry(key.addr)
                        .or_insert_with(|| Vec::with_capacity(1)),
                    key.name,
                );
            } else {
                release(&mut self.names, &key.name, &key.addr);
                release(&mut self.addrs, &key.addr, &key.name);
            }
        }
        shrink(&mut self.names);
        shrink(&mut self.addrs);
    }

    /// Addresses of `name`, ascending; `None` when the name is unknown.
    pub fn lookup(&self, name: &DnsName) -> Option<Vec<Ipv4Addr>> {
        self.names
            .get(name)
            .map(|m| m.iter().map(|(a, _)| *a).collect())
    }

    /// Whether `name` has records.
    pub fn contains(&self, name: &DnsName) -> bool {
        self.names.contains_key(name)
    }

    /// The name of `addr` for PTR answers: the first in sorted order when
    /// several share it.
    pub fn name_of(&self, addr: Ipv4Addr) -> Option<DnsName> {
        self.addrs
            .get(&addr)
            .and_then(|m| m.first().map(|(n, _)| n.clone()))
    }

    /// Names with records.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether no name has records.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// Reads the shared table, ignoring poisoning (a panicked writer leaves
/// counts that are still consistent per operation).
pub fn read<T>(table: &SharedTable, f: impl FnOnce(&Table) -> T) -> T {
    f(&table.read().unwrap_or_else(PoisonError::into_inner))
}

/// Applies transitions to the shared table in one short write section.
pub fn apply(table: &SharedTable, transitions: Vec<Transition>) {
    if transitions.is_empty() {
        return;
    }
    table
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .apply(transitions);
}

/// Gives back a map's room once three quarters of it stand empty, so a
/// burst of names does not hold its memory after they go (rehashing then
/// costs O(len), paid at most once per halving).
fn shrink<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 4 * map.len() + 64 {
        map.shrink_to_fit();
    }
}

fn release<A: std::hash::Hash + Eq, B: Ord>(map: &mut HashMap<A, Counted<B>>, a: &A, b: &B) {
    let Some(inner) = map.get_mut(a) else { return };
    if let Ok(i) = inner.binary_search_by(|(x, _)| x.cmp(b)) {
        inner[i].1 -= 1;
        if inner[i].1 == 0 {
            inner.remove(i);
        }
    }
    if inner.is_empty() {
        map.remove(a);
    } else if inner.capacity() > 2 * inner.len() + 4 {
        inner.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::zone::{Holder, Key};

    fn key(name: &str, addr: [u8; 4], holder: &str) -> Key {
        Key {
            name: DnsName::parse(name).unwrap(),
            addr: addr.into(),
            holder: Holder::new(holder).unwrap(),
        }
    }

    #[test]
    fn shared_addresses_count_once_and_go_with_the_last_holder() {
        let mut t = Table::default();
        let web = DnsName::parse("web.weave.local").unwrap();
        t.apply(vec![
            (key("web.weave.local", [10, 0, 0, 1], "a"), true),
            (key("web.weave.local", [10, 0, 0, 1], "b"), true),
            (key("web.weave.local", [10, 0, 0, 2], "c"), true),
            (key("db.weave.local", [10, 0, 0, 1], "a"), true),
        ]);
        assert_eq!(
            t.lookup(&web).unwrap(),
            vec![Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)]
        );
        assert_eq!(
            t.name_of([10, 0, 0, 1].into()).unwrap().as_str(),
            "db.weave.local."
        );
        t.apply(vec![(key("web.weave.local", [10, 0, 0, 1], "a"), false)]);
        assert_eq!(t.lookup(&web).unwrap().len(), 2);
        t.apply(vec![
            (key("web.weave.local", [10, 0, 0, 1], "b"), false),
            (key("web.weave.local", [10, 0, 0, 2], "c"), false),
        ]);
        assert_eq!(t.lookup(&web), None);
        assert_eq!(t.len(), 1);
        t.apply(vec![(key("db.weave.local", [10, 0, 0, 1], "a"), false)]);
        assert!(t.is_empty());
        assert_eq!(t.name_of([10, 0, 0, 1].into()), None);
    }
}
