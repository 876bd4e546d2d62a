// SPDX-License-Identifier: Apache-2.0
//! Command-line front ends: the flags of `weaver` and the subcommands of
//! `weave`. The binaries in `src/bin/` only call into here.

pub mod kubectl;
pub mod weave;
pub mod weaver;

use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Sets up `tracing` on stderr: `RUST_LOG` if set, else `level`. Unless
/// the filter names it, hickory-server logs warnings only: at info it logs
/// every DNS query.
pub fn init_tracing(level: &str, format: LogFormat) {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    if !std::env::var("RUST_LOG")
        .unwrap_or_else(|_| level.to_string())
        .contains("hickory")
    {
        filter = filter.add_directive(
            "hickory_server=warn"
                .parse()
                .expect("a valid static directive"),
        );
    }
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
