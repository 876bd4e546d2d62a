// SPDX-License-Identifier: Apache-2.0
//! Fuzz target: sleeve datagrams (frames, heartbeats) as they arrive on UDP.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    weave_node_agent::fuzz::sleeve(data);
});
