// SPDX-License-Identifier: Apache-2.0
//! `kubectl-weave`: the kubectl plugin (`kubectl weave status …`); see `cli::kubectl`.

use clap::Parser;
use weave_node_agent::cli::kubectl::{run, Cli};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&anyhow::Error::new(e)),
    };
    let mut out = std::io::stdout().lock();
    match runtime.block_on(run(cli, &mut out)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// Prints the error for the user and fails.
fn fail(e: &anyhow::Error) -> std::process::ExitCode {
    // The plugin's errors go to the user, not to a log.
    #[allow(clippy::print_stderr)]
    {
        eprintln!("kubectl weave: {e:#}");
    }
    std::process::ExitCode::FAILURE
}
