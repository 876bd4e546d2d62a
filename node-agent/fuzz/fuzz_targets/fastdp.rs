// SPDX-License-Identifier: Apache-2.0
//! Fuzz target: the fast path's heartbeat frames (as they arrive from the
//! VXLAN device) and adverts (as they arrive on its gossip channel), fed to
//! a choice with one neighbour.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    weave_node_agent::fuzz::fastdp(data);
});
