// SPDX-License-Identifier: Apache-2.0
//! Fuzz target: bytes arriving on a control connection (version header,
//! frames, hello, every message decoder).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    weave_node_agent::fuzz::handshake(data);
});
