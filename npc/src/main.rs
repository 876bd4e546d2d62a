// SPDX-License-Identifier: Apache-2.0
//! `weave-npc`: parses flags, sets up logging and runs [`weave_npc::run`] until SIGTERM or
//! SIGINT. `--cleanup` removes our tables and exits; `explain` and `hold` are one-shot
//! commands (`cli/`).

use anyhow::{anyhow, Context};
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use weave_npc::cli::{self, Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cli.log_level))
        .context("parse --log-level")?;
    // Colours only on a terminal: `kubectl logs` and files get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if cli.log_format == cli::LogFormat::Json {
        builder.json().init();
    } else {
        builder.init();
    }
    match &cli.command {
        Some(Command::Explain(args)) => {
            let client = weave_npc::controller::client_from(cli.kubeconfig.as_deref()).await?;
            let text = cli::explain::run(client, args).await?;
            // The command's output is its answer (stdout), logs go to stderr.
            #[allow(clippy::print_stdout)]
            {
                println!("{text}");
            }
            return Ok(());
        }
        Some(Command::Hold) => {
            let what = cli::hold::run(cli.nft.clone(), &cli.pod_port_prefix).await?;
            tracing::info!("{what}");
            return Ok(());
        }
        None => {}
    }
    if cli.cleanup {
        weave_npc::controller::cleanup(cli.nft.clone()).await?;
        tracing::info!("removed the weave-npc tables");
        return Ok(());
    }
    let config = cli.config().map_err(|e| anyhow!(e))?;
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(err) => {
                    tracing::error!(error = %err, "install SIGTERM handler");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down; the ruleset stays in force");
        trigger.cancel();
    });
    weave_npc::run(config, cancel).await?;
    Ok(())
}
