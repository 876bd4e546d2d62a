// SPDX-License-Identifier: Apache-2.0
//! Running `ip`, `nft` and other tools to completion.
//!
//! Every kernel change the test bed makes goes through a command run here, so a failure always
//! reports the full command line, its exit status and what it printed on stderr. Nothing here
//! picks a namespace: callers build commands that name the namespace themselves
//! (`ip -n NS …`, `ip netns exec NS …`), which keeps the root namespace out of reach.

use std::ffi::OsStr;
use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Runs `cmd` to completion and returns its stdout; a non-zero exit is an error carrying the
/// command line and stderr.
pub(crate) fn run(cmd: &mut Command) -> Result<String> {
    run_with_input(cmd, None)
}

/// Like `run`, feeding `input` to the command's stdin (for `nft -f -`); returns stdout, or an
/// error with the command line and stderr.
pub fn run_with_input(cmd: &mut Command, input: Option<&str>) -> Result<String> {
    let line = command_line(cmd);
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("start `{line}`"))?;
    if let Some(input) = input {
        let mut stdin = child
            .stdin
            .take()
            .context("stdin was requested as a pipe")?;
        stdin
            .write_all(input.as_bytes())
            .with_context(|| format!("write stdin of `{line}`"))?;
        // Dropping stdin closes the pipe so the command sees end of input.
    }
    let output = child
        .wait_with_output()
        .with_context(|| format!("wait for `{line}`"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let mut message = format!("`{line}` failed ({})", output.status);
        for (label, text) in [("stderr", stderr.trim()), ("stdout", stdout.trim())] {
            if !text.is_empty() {
                message.push_str(&format!("\n{label}: {text}"));
            }
        }
        bail!(message);
    }
    Ok(stdout)
}

/// Runs `ip ARGS…` (callers pass `-n NS` or `netns …` themselves).
pub(crate) fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}

/// The command as one would type it in a shell, for error messages.
pub(crate) fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(quote)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Quotes a word only when a shell would need it, so plain commands stay readable.
fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+%@".contains(c));
    if plain {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_quotes_only_when_needed() {
        let mut cmd = Command::new("ip");
        cmd.args(["-n", "wv1-h1", "addr", "add", "10.250.0.1/24", "it's here"]);
        assert_eq!(
            command_line(&cmd),
            r"ip -n wv1-h1 addr add 10.250.0.1/24 'it'\''s here'"
        );
    }

    #[test]
    fn failure_names_command_and_stderr() {
        let err = run(Command::new("sh").args(["-c", "echo oops >&2; exit 3"]))
            .expect_err("the command exits 3");
        let text = format!("{err:#}");
        assert!(text.contains("sh -c"), "{text}");
        assert!(text.contains("oops"), "{text}");
        assert!(text.contains("exit status: 3"), "{text}");
    }

    #[test]
    fn input_reaches_stdin() {
        let out = run_with_input(&mut Command::new("cat"), Some("hello")).expect("cat echoes");
        assert_eq!(out, "hello");
    }
}
