// SPDX-License-Identifier: Apache-2.0
//! The READMEs' flag tables (`weaver`'s in README.md, `weave-npc`'s in npc/README.md) and
//! the binaries' `--help` name the same flags with the same
//! environment variables: adding a flag to `weaver` or `weave-npc` without documenting it
//! (or documenting one that does not exist, or under another variable) fails here.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use weave_e2e::bin;

/// A flag (`--port`) or positional argument (`PEERS`) and its environment variable.
type Flag = (String, Option<String>);

/// The first `WEAVE_…` variable name in `text`.
fn env_name(text: &str) -> Option<String> {
    let start = text.find("WEAVE_")?;
    let name: String = text[start..]
        .chars()
        .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
        .collect();
    Some(name)
}

/// The flags of `binary --help` (clap's long help), without `--help` and `--version`.
fn from_help(binary: &str) -> Result<BTreeSet<Flag>> {
    let out = Command::new(bin(binary)?).arg("--help").output()?;
    let help = String::from_utf8(out.stdout)?;
    let mut flags = BTreeSet::new();
    let mut current: Option<Flag> = None;
    for line in help.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let starts_flag = indent <= 6
            && (trimmed.starts_with("--") || trimmed.starts_with("-") || trimmed.starts_with('['));
        if starts_flag && indent > 0 {
            flags.extend(current.take());
            let name = if let Some(long) = trimmed.split_whitespace().find(|w| w.starts_with("--"))
            {
                long.trim_end_matches(',').to_owned()
            } else {
                // `[PEERS]...`
                trimmed
                    .trim_start_matches('[')
                    .split(']')
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            };
            current = Some((name, env_name(trimmed)));
        } else if let Some((_, env)) = current.as_mut() {
            if env.is_none() {
                *env = env_name(trimmed);
            }
        }
    }
    flags.extend(current);
    flags.retain(|(name, _)| name != "--help" && name != "--version");
    if flags.is_empty() {
        bail!("no flags found in {binary} --help:\n{help}");
    }
    Ok(flags)
}

/// The rows of the README table that follows the line starting with `heading`.
fn from_readme(readme: &str, heading: &str) -> Result<BTreeSet<Flag>> {
    let start = readme
        .lines()
        .position(|l| l.starts_with(heading))
        .with_context(|| format!("README has no line starting with {heading:?}"))?;
    let mut flags = BTreeSet::new();
    for line in readme
        .lines()
        .skip(start)
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
    {
        // The flag is the first cell; its variable is in the first cell (`weaver`'s table)
        // or the second (`weave-npc`'s).
        let cells: Vec<&str> = line.split('|').collect();
        let first = cells.get(1).copied().unwrap_or_default();
        let name = first
            .split('`')
            .nth(1)
            .unwrap_or_default()
            .trim_end_matches("...")
            .to_owned();
        let env = env_name(first).or_else(|| cells.get(2).and_then(|c| env_name(c)));
        flags.insert((name, env));
    }
    Ok(flags)
}

/// Both directions of the comparison, with what differs.
fn compare(binary: &str, readme: &str, heading: &str) -> Result<()> {
    let readme = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(readme),
    )?;
    let help = from_help(binary)?;
    let documented = from_readme(&readme, heading)?;
    let undocumented: Vec<_> = help.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&help).collect();
    if !undocumented.is_empty() || !stale.is_empty() {
        bail!(
            "README table after {heading:?} and `{binary} --help` differ:\n  \
             in --help, not in the README (flag, env): {undocumented:?}\n  \
             in the README, not in --help: {stale:?}"
        );
    }
    Ok(())
}

#[test]
fn weaver_flags_match_the_readme() -> Result<()> {
    compare("weaver", "README.md", "`weaver` flags")
}

#[test]
fn weave_npc_flags_match_the_readme() -> Result<()> {
    compare("weave-npc", "npc/README.md", "| flag | env | default |")
}

#[test]
fn the_parsers_see_a_difference() -> Result<()> {
    // A table row removed or an env var changed is caught: the comparison is not vacuous.
    let readme = "`weaver` flags:\n\n| flag | default | meaning |\n|---|---|---|\n\
                  | `--port` [`WEAVE_PORT`] | 6783 | x |\n| `PEERS...` [`WEAVE_PEERS`] | none | y |\n";
    let flags = from_readme(readme, "`weaver` flags")?;
    let expected: BTreeSet<Flag> = [
        ("--port".to_owned(), Some("WEAVE_PORT".to_owned())),
        ("PEERS".to_owned(), Some("WEAVE_PEERS".to_owned())),
    ]
    .into();
    assert_eq!(flags, expected);
    let help = from_help("weaver")?;
    assert!(
        help.contains(&("--port".to_owned(), Some("WEAVE_PORT".to_owned()))),
        "{help:?}"
    );
    assert!(
        help.contains(&("PEERS".to_owned(), Some("WEAVE_PEERS".to_owned()))),
        "{help:?}"
    );
    Ok(())
}
