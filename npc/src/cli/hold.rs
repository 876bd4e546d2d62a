// SPDX-License-Identifier: Apache-2.0
//! `weave-npc hold`: run by the DaemonSet's first init container, before the agent can wire
//! any pod. After a boot the node has no nftables rules, so a pod wired before weave-npc's
//! first sync would be open to everything; the hold ruleset (the bridge table with no known
//! local pod, [`crate::compile::hold`]) closes every pod port until weave-npc replaces it
//! with the complete ruleset. When weave-npc's tables exist (a restart without a reboot),
//! they stay as they are.

use std::path::PathBuf;

/// Installs the hold ruleset with `nft` at `program`; returns what it did, for the log.
pub async fn run(program: PathBuf, pod_port_prefix: &str) -> crate::Result<&'static str> {
    let installed = crate::controller::hold(program, pod_port_prefix).await?;
    Ok(if installed {
        "pod ports closed until weave-npc's first ruleset"
    } else {
        "weave-npc's ruleset is in force; left as it is"
    })
}
