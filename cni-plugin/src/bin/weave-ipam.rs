// SPDX-License-Identifier: Apache-2.0
//! `weave-ipam`: the CNI IPAM plugin, giving addresses from weaver's IPAM to
//! other plugins (`"ipam": {"type": "weave-ipam"}`).

fn main() -> std::process::ExitCode {
    weave_cni::main(weave_cni::Plugin::Ipam)
}
