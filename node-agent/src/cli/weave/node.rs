// SPDX-License-Identifier: Apache-2.0
//! `weave setup-cni` and `weave reset`: the commands that change the node itself rather than
//! talk to the agent.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};
use clap::Parser as _;
use weave_platform::Netlink as _;

use crate::install::{self, Paths};

/// Prefix of every nftables table weave creates (`weave-npc`, …).
const TABLE_PREFIX: &str = "weave";

/// Checks the agent's settings as `weaver` would read them from the WEAVE_* environment,
/// including the allocation range against this node's routes; returns its state directory.
pub(super) fn check_agent_settings() -> anyhow::Result<PathBuf> {
    let cli = crate::cli::weaver::Cli::try_parse_from(["weaver"])
        .map_err(|e| anyhow::anyhow!("{}", e.to_string().trim()))
        .context("the agent's settings (WEAVE_* environment)")?;
    let config = cli
        .into_config()
        .map_err(anyhow::Error::msg)
        .context("the agent's settings (WEAVE_* environment)")?;
    if let Some(ipam) = &config.ipam {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let netlink = weave_platform::LinuxNetlink::new()?;
            crate::ipam::allocator::check_overlap(&netlink, &ipam.range, config.bridge.as_deref())
                .await
        })?;
    }
    Ok(config.state_dir)
}

/// Removes what weave made on this node, carrying on past failures; fails at the end if
/// anything could not be removed.
pub(super) fn reset(
    paths: &Paths,
    bridge: &str,
    force: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    install::check_detached(bridge, force)?;
    let mut failures: Vec<String> = Vec::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let links = runtime.block_on(async {
        let netlink = weave_platform::LinuxNetlink::new()?;
        let mut removed = Vec::new();
        for name in [
            crate::router::sleeve::TAP_NAME,
            crate::router::fastdp::VXLAN_NAME,
            bridge,
        ] {
            if netlink.link_index(name).await?.is_some() {
                netlink.delete_link(name).await?;
                removed.push(name.to_owned());
            }
        }
        Ok::<_, weave_platform::Error>(removed)
    });
    match links {
        Ok(removed) if !removed.is_empty() => {
            writeln!(out, "removed devices: {}", removed.join(" "))?
        }
        Ok(_) => {}
        Err(e) => failures.push(format!("devices: {e}")),
    }
    match remove_tables() {
        Ok(tables) if !tables.is_empty() => {
            writeln!(out, "removed nftables tables: {}", tables.join(", "))?
        }
        Ok(_) => {}
        Err(e) => failures.push(format!("nftables: {e:#}")),
    }
    let (removed, errors) = install::remove_files(paths);
    for path in removed {
        writeln!(out, "removed {}", path.display())?;
    }
    failures.extend(errors.iter().map(ToString::to_string));
    if !failures.is_empty() {
        bail!(
            "reset left {} thing(s) behind: {}",
            failures.len(),
            failures.join("; ")
        );
    }
    Ok(())
}

/// Deletes every nftables table whose name starts with `weave`; returns them as
/// `family name`.
fn remove_tables() -> anyhow::Result<Vec<String>> {
    let listing = nft(&["list", "tables"])?;
    let mut removed = Vec::new();
    for line in listing.lines() {
        let mut words = line.split_whitespace();
        let (Some("table"), Some(family), Some(name)) = (words.next(), words.next(), words.next())
        else {
            continue;
        };
        if name.starts_with(TABLE_PREFIX) {
            nft(&["delete", "table", family, name])?;
            removed.push(format!("{family} {name}"));
        }
    }
    Ok(removed)
}

/// Runs `nft ARGS…`; returns stdout.
fn nft(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("nft").args(args).output().context("run nft")?;
    if !output.status.success() {
        bail!(
            "nft {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
