// SPDX-License-Identifier: Apache-2.0
//! Fuzz target: sleeve datagrams (frames, fragments, heartbeats) as they
//! arrive on UDP, fragments through the reassembly pool.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    weave_node_agent::fuzz::sleeve(data);
});
