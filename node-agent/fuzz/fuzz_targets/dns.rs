// SPDX-License-Identifier: Apache-2.0
//! Fuzz target: weaveDNS gossip (decode, validate, merge into a peer).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    weave_node_agent::fuzz::dns_gossip(data);
});
