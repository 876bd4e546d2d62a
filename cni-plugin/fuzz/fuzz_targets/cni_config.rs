// SPDX-License-Identifier: Apache-2.0
//! Fuzz target: the CNI network config on stdin (decode, validate, render a
//! result in the requested version's shape).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    weave_cni::fuzz_config(data);
});
