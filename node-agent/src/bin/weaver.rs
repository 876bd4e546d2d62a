// SPDX-License-Identifier: Apache-2.0
//! `weaver`: parses flags, sets up logging, runs the agent until SIGTERM/SIGINT.

use clap::Parser;
use tokio_util::sync::CancellationToken;
use weave_node_agent::cli::{init_tracing, weaver::Cli};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log_level, cli.log_format);
    let config = match cli.into_config() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    // Before any thread starts: see `weave_platform::malloc`.
    weave_platform::malloc::limit_arenas(2);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let cancel = CancellationToken::new();
        let signals = cancel.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("signal received; shutting down");
            signals.cancel();
        });
        weave_node_agent::run(config, cancel).await
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{}", weave_api::error_chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending::<()>().await,
    }
}
