// SPDX-License-Identifier: Apache-2.0
//! Heap held by weaveDNS's records, counted by a global allocator that
//! tracks live bytes: 10,000 names registered on one peer fit a bound, and
//! removing them (and purging their tombstones) gives the memory back.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use weave_node_agent::dns::name::DnsName;
use weave_node_agent::dns::table::Table;
use weave_node_agent::dns::zone::{Holder, Key, Zone, TOMBSTONE_AGE};
use weave_node_agent::mesh::PeerName;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: `p` came from `System.alloc` with this layout.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

const NAMES: u32 = 10_000;
/// What 10,000 records may hold, zone and lookup table together. With
/// names copied three times and each index entry's vector sized for four,
/// they held 4.85 MB; shared names and vectors sized for one give 3.25 MB.
const BOUND: isize = 4 << 20;

/// The only test in this binary, so no other thread allocates meanwhile.
#[test]
fn ten_thousand_records_fit_the_bound_and_removal_gives_the_memory_back() {
    let start = Instant::now();
    let mut zone = Zone::new(PeerName::from_u64(1), None, start);
    let mut table = Table::default();
    let base = live();
    for i in 0..NAMES {
        let key = Key {
            name: DnsName::parse(&format!("n{i}.weave.local")).unwrap(),
            addr: Ipv4Addr::from(0x0a00_0000 + i),
            holder: Holder::new(&format!("bench-{i}")).unwrap(),
        };
        assert!(zone.add(key).unwrap());
    }
    table.apply(zone.take_transitions());
    drop(zone.take_delta());
    let held = live() - base;
    eprintln!("{NAMES} records hold {held} bytes");
    assert!(
        held <= BOUND,
        "{NAMES} records hold {held} bytes, more than {BOUND}"
    );
    assert_eq!(table.len(), NAMES as usize);

    let gone = zone.remove(|_| true, start);
    assert_eq!(gone.len(), NAMES as usize);
    drop(gone);
    table.apply(zone.take_transitions());
    drop(zone.take_delta());
    assert!(table.is_empty());
    zone.purge(start + TOMBSTONE_AGE + Duration::from_secs(1));
    drop(zone.take_delta());
    assert_eq!(zone.tombstones(), 0);
    let left = live() - base;
    eprintln!("after removal and purge: {left} bytes");
    assert!(
        left <= 64 << 10,
        "{left} bytes left after every record went"
    );
}
