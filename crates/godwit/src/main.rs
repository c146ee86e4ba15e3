//! `godwit`: the command-line tool. Runs the demo, the host daemon, and the client
//! commands the hypervisor or operator uses.

// Printing is this binary's job.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod bench;
mod bench_qemu;
mod bench_store;
mod bench_suite;
mod client;
mod demo;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use client::ConfigArg;

/// Secure migration of running enclaves between hosts.
#[derive(Parser)]
#[command(name = "godwit", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the demonstration with no set-up: a cluster in this process, a migration.
    Demo(demo::DemoArgs),
    /// Lay out or change a cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Run one host: its SM, its store member, its control API.
    Node {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Create an enclave; prints its id as the last line.
    Deploy {
        #[command(flatten)]
        config: ConfigArg,
        /// The module (.wasm or .wat).
        #[arg(long)]
        module: PathBuf,
        /// Its manifest (.toml).
        #[arg(long)]
        manifest: PathBuf,
        /// Instead of a new enclave, start a fresh instance of this lost one (on the host
        /// that holds its sealed data), with its recorded sealed versions and counters.
        #[arg(long, value_name = "ENCLAVE")]
        adopt: Option<String>,
    },
    /// Run an ecall and print its result; fails if this host does not run the enclave.
    Call {
        #[command(flatten)]
        config: ConfigArg,
        /// The enclave id.
        enclave: String,
        /// The ecall.
        function: String,
        /// The argument.
        #[arg(long, default_value = "")]
        arg: String,
        /// How long to wait for a result the SM withholds until the store records the
        /// enclave's state, in milliseconds.
        #[arg(long, default_value_t = 30_000)]
        wait_ms: u64,
    },
    /// Migrate an enclave to another host; exit 0 on COMMIT.
    Migrate {
        #[command(flatten)]
        config: ConfigArg,
        /// The enclave id.
        enclave: String,
        /// The destination host.
        #[arg(long)]
        to: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Destroy an enclave.
    Destroy {
        #[command(flatten)]
        config: ConfigArg,
        /// The enclave id.
        enclave: String,
    },
    /// Show hosts (up, leader) and enclaves (owner, epoch, state).
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print this host's counters (migrations by outcome, bytes, store writes) in the
    /// Prometheus text format.
    Metrics {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Migrate every enclave off a host.
    Drain {
        #[command(flatten)]
        config: ConfigArg,
        /// The host to empty.
        host: String,
    },
    /// Measure migrations, store commits and ecalls beside the machine's own limits.
    Bench(bench::BenchArgs),
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Write a manufacturer root, one hardware identity and one config per host.
    Init {
        /// The directory to create.
        #[arg(long)]
        dir: PathBuf,
        /// How many hosts.
        #[arg(long, default_value_t = 3)]
        hosts: usize,
        /// Host K listens on 127.0.0.1:(base-port + K).
        #[arg(long, default_value_t = 7100)]
        base_port: u16,
    },
    /// Provision one more host in a cluster directory and ask the running store to add
    /// it; then start it with `godwit node` (the asked host's SM keeps trying to attest it
    /// for five minutes; it joins as a learner, then a voter).
    Add {
        /// The cluster directory (from `cluster init`).
        #[arg(long)]
        dir: PathBuf,
        /// The running host to ask (default: the first in the directory).
        #[arg(long)]
        via: Option<String>,
    },
    /// Ask the store to add a host provisioned elsewhere, listening at ADDR (this host's
    /// SM attests it first).
    Admit {
        #[command(flatten)]
        config: ConfigArg,
        /// The host to add.
        host: String,
        /// Where its SM listens.
        addr: String,
    },
    /// Remove a host from the store's membership (drain it first: what it still runs is
    /// recorded lost).
    Remove {
        #[command(flatten)]
        config: ConfigArg,
        /// The host to remove.
        host: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo narrates on stdout and expects refusals; the daemon logs its work.
    let default_filter = match cli.command {
        Command::Demo(_) => "error",
        Command::Node { .. } => "info",
        Command::Bench(_) => "warn",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GODWIT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Cluster(ClusterCommand::Init {
            dir,
            hosts,
            base_port,
        }) => client::cluster_init(&dir, hosts, base_port),
        Command::Cluster(ClusterCommand::Add { dir, via }) => client::cluster_add(&dir, via),
        Command::Cluster(ClusterCommand::Admit { config, host, addr }) => {
            client::cluster_admit(&config.config, host, addr)
        }
        Command::Cluster(ClusterCommand::Remove { config, host }) => {
            client::cluster_remove(&config.config, host)
        }
        Command::Node { config } => client::node(&config.config),
        Command::Deploy {
            config,
            module,
            manifest,
            adopt,
        } => client::deploy(&config.config, &module, &manifest, adopt),
        Command::Call {
            config,
            enclave,
            function,
            arg,
            wait_ms,
        } => client::call(&config.config, enclave, function, arg, wait_ms),
        Command::Migrate {
            config,
            enclave,
            to,
            json,
        } => client::migrate(&config.config, enclave, to, json),
        Command::Destroy { config, enclave } => client::destroy(&config.config, enclave),
        Command::Status { config, json } => client::status(&config.config, json),
        Command::Metrics { config } => client::metrics(&config.config),
        Command::Drain { config, host } => client::drain(&config.config, host),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("godwit: {e:#}");
            ExitCode::FAILURE
        }
    }
}
