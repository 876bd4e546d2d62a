// SPDX-License-Identifier: Apache-2.0
//! Fuzz target: nfnetlink_log datagrams as weave-npc's drop log reads them (netlink headers,
//! attributes, the logged packet's IPv4 and transport headers).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    for entry in weave_platform::nflog::parse(data).into_iter().flatten() {
        // Everything read must be usable: the prefix is text, ports only with a packet.
        let _ = entry.prefix.len();
        if let Some(p) = entry.packet {
            let _ = p.protocol_name();
        }
    }
});
