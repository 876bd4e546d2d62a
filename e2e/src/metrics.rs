// SPDX-License-Identifier: Apache-2.0
//! Prometheus pages of weaver and weave-npc, fetched inside a namespace and checked with a
//! real text-format parser (`.ci/check-metrics`: the prometheus_client parser, lint rules
//! and the catalogue `docs/METRICS.md`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::in_netns;

/// The body of `GET /metrics` on `addr`, asked from inside namespace `netns`.
pub fn fetch(netns: &str, addr: SocketAddr) -> Result<String> {
    let response = in_netns(netns, move || {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .with_context(|| format!("connect to {addr}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: metrics\r\n\r\n")?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        Ok(text)
    })?;
    body(&response)
}

/// The body of an HTTP/1.0 response, which must be 200.
pub fn body(response: &str) -> Result<String> {
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("an HTTP response with a header")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!(
            "metrics answered {}",
            head.lines().next().unwrap_or_default()
        );
    }
    Ok(body.to_owned())
}

/// Checks a metrics page: it parses, every family has HELP and TYPE, counters end in
/// `_total`, names start with `weave_`/`weavenpc_` and are in the catalogue.
pub fn check(text: &str) -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cmd = Command::new("python3");
    cmd.arg(root.join(".ci/check-metrics"))
        .arg(root.join("docs/METRICS.md"));
    crate::command::run_with_input(&mut cmd, Some(text))
        .with_context(|| format!("the metrics page fails the check (--- page ---\n{text})"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_refuses_what_prometheus_would() {
        let good = "# HELP weave_peers Peers.\n# TYPE weave_peers gauge\nweave_peers 3\n";
        check(good).expect("a catalogued, well-formed page passes");
        for (bad, why) in [
            ("weave_peers{state=\"x\" 3\n", "does not parse"),
            ("# TYPE weave_peers gauge\nweave_peers 3\n", "no HELP"),
            (
                "# HELP weave_nope x\n# TYPE weave_nope gauge\nweave_nope 1\n",
                "missing from the catalogue",
            ),
            (
                "# HELP other_peers x\n# TYPE other_peers gauge\nother_peers 1\n",
                "not named weave_",
            ),
            ("", "no metrics at all"),
        ] {
            let err = format!("{:#}", check(bad).expect_err(bad));
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn only_a_200_has_a_page() {
        assert_eq!(
            body("HTTP/1.1 200 OK\r\nA: b\r\n\r\nx 1\n").unwrap(),
            "x 1\n"
        );
        assert!(body("HTTP/1.1 404 Not Found\r\n\r\nnope").is_err());
    }
}
