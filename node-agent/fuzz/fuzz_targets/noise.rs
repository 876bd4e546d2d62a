// SPDX-License-Identifier: Apache-2.0
//! Fuzz target: Noise handshake messages (offers and answers) and sealed
//! control frames and sleeve datagrams, as a peer without the password
//! could send them.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    weave_node_agent::fuzz::noise(data);
});
