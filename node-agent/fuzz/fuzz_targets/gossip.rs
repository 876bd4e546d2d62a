// SPDX-License-Identifier: Apache-2.0
//! Fuzz target: topology gossip bodies (update and digest decoders).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    weave_node_agent::fuzz::gossip(data);
});
