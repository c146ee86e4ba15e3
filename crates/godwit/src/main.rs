//! `godwit`: the command-line tool. Runs the demo and (as the host) the daemon and its
//! client commands.

// Printing is this binary's job.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod bench;
mod demo;

use clap::{Parser, Subcommand};

/// Secure migration of running enclaves between hosts.
#[derive(Parser)]
#[command(name = "godwit", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the demonstration with no set-up: deploy, call, seal, refuse past the limit.
    Demo(demo::DemoArgs),
    /// Measure throughput beside the machine's own limits.
    Bench(bench::BenchArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The demo narrates on stdout and expects refusals; other commands log warnings.
    let default_filter = match cli.command {
        Command::Demo(_) => "error",
        Command::Bench(_) => "warn",
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
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("godwit: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
