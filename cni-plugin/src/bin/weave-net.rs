// SPDX-License-Identifier: Apache-2.0
//! `weave-net`: the CNI network plugin. Input: `CNI_*` environment and the
//! network config on stdin; output: the result on stdout.

fn main() -> std::process::ExitCode {
    weave_cni::main(weave_cni::Plugin::Net)
}
