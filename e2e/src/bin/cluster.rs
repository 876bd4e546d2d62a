// SPDX-License-Identifier: Apache-2.0
//! `weave-cluster`: a real Kubernetes cluster (upstream control plane, kubelets, containerd)
//! on namespace machines of this host, for people (`make cluster`) and for scripts.
//!
//! `up` runs until SIGINT/SIGTERM or `weave-cluster down --dir DIR`, then removes everything it
//! made. `node-init` is the first process of every machine (started by `up`, not by people).

// The program talks to a person on stdout.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use weave_e2e::cluster::{self, Cluster, ClusterOptions, Cni};

/// A real Kubernetes cluster on network namespaces of this machine.
#[derive(Debug, Parser)]
#[command(name = "weave-cluster", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a cluster and hold it until SIGINT/SIGTERM or `down`.
    Up {
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Cluster directory (kubeconfig, bin/, logs); must not exist or be empty.
        #[arg(long)]
        dir: PathBuf,
        /// Pod network installed at start.
        #[arg(long, value_enum, default_value_t = CniArg::None)]
        cni: CniArg,
        /// Directory of weave's binaries for the weave image (default: the project's
        /// target/debug, or $E2E_BIN_DIR).
        #[arg(long)]
        weave_bin_dir: Option<PathBuf>,
    },
    /// Stop the cluster of DIR (or clean up after one whose process is gone).
    Down {
        /// Cluster directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Print the image references imported on the nodes, one a line.
    Images {
        /// Cluster directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// First process of a machine (internal).
    #[command(hide = true)]
    NodeInit {
        /// The machine's directory.
        dir: PathBuf,
        /// Its machine id.
        machine_id: String,
    },
}

/// Pod networks `up` can install.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum CniArg {
    /// None: nodes stay NotReady until a network is installed.
    None,
    /// The reference bridge + host-local + portmap plugins.
    Reference,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Up {
            nodes,
            dir,
            cni,
            weave_bin_dir,
        } => {
            let cni = match cni {
                CniArg::None => Cni::None,
                CniArg::Reference => Cni::Reference,
            };
            let cluster = Cluster::up(ClusterOptions {
                nodes,
                cni,
                dir: Some(dir),
                weave_bin_dir,
            })?;
            println!(
                "cluster up: {} nodes ({})",
                cluster.node_count(),
                cluster.node_names().join(", ")
            );
            println!("KUBECONFIG={}", cluster.kubeconfig().display());
            println!("kubectl, crictl, helm: {}/bin", cluster.dir().display());
            println!(
                "stop with Ctrl-C or: weave-cluster down --dir {}",
                cluster.dir().display()
            );
            // The test bed's signal handler tears the cluster down and exits; until then the
            // main thread (whose children the machines are) only waits.
            loop {
                std::thread::park();
            }
        }
        Command::Down { dir } => cluster::down(&dir),
        Command::Images { dir } => {
            let path = dir.join("images.txt");
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("read {}", path.display()))?;
            print!("{text}");
            Ok(())
        }
        Command::NodeInit { dir, machine_id } => cluster::node_init::run(&dir, &machine_id),
    }
}
