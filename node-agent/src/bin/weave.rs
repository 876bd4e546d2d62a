// SPDX-License-Identifier: Apache-2.0
//! `weave`: the command-line client of the local agent.

use clap::Parser;
use weave_node_agent::cli::weave::{run, Cli};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let mut out = std::io::stdout().lock();
    match run(cli, &mut out) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The CLI's errors go to the user, not to a log.
            #[allow(clippy::print_stderr)]
            {
                eprintln!("weave: {e:#}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}
