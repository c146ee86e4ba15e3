//! `godwit-sim`: runs seeds of the cluster simulation and reports the first violation.
//!
//! ```sh
//! cargo run --release -p godwit-sim -- --seeds 300        # seeds 0..300
//! cargo run --release -p godwit-sim -- --seed 1234        # one seed, with a summary
//! cargo run --release -p godwit-sim -- --seeds 100000 --from 5000   # a soak run
//! ```

use std::process::ExitCode;

use clap::Parser;
use godwit_sim::{Options, Plant, run};

/// Seeded simulation of godwit SMs under faults, with invariants checked at every step.
#[derive(Parser)]
#[command(name = "godwit-sim")]
struct Args {
    /// Run this many seeds, starting at --from.
    #[arg(long, default_value_t = 100, conflicts_with = "seed")]
    seeds: u64,
    /// The first seed of a sweep.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Run exactly this seed and print what it did.
    #[arg(long)]
    seed: Option<u64>,
    /// Hosts, 3 to 7 (default: chosen by each seed).
    #[arg(long, value_parser = clap::value_parser!(u64).range(3..=7))]
    hosts: Option<u64>,
    /// Virtual ms of chaos before healing.
    #[arg(long, default_value_t = Options::default().chaos_ms)]
    chaos_ms: u64,
    /// Virtual ms allowed after healing for every migration to resolve.
    #[arg(long, default_value_t = Options::default().heal_ms)]
    heal_ms: u64,
    /// Switch on a deliberate bug, to see it caught (resume-before-abort).
    #[arg(long)]
    plant: Option<Plant>,
    /// Print every traced step of the run (with --seed).
    #[arg(long)]
    verbose: bool,
    /// Also print the SMs' own log lines at this level and above (error, warn, info,
    /// debug; or a RUST_LOG-style filter).
    #[arg(long)]
    log: Option<String>,
}

#[allow(clippy::print_stdout, clippy::print_stderr)] // a command-line tool's output
fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(filter) = &args.log {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .without_time()
            .init();
    }
    let options = Options {
        hosts: args.hosts.map(|h| h as usize),
        chaos_ms: args.chaos_ms,
        heal_ms: args.heal_ms,
        plant: args.plant,
        verbose: args.verbose,
    };
    let seeds: Vec<u64> = match args.seed {
        Some(s) => vec![s],
        None => (args.from..args.from.saturating_add(args.seeds)).collect(),
    };
    let mut total = godwit_sim::Summary::default();
    for (k, &seed) in seeds.iter().enumerate() {
        match run(seed, &options) {
            Ok(summary) => {
                if args.seed.is_some() {
                    println!("seed {seed}: ok: {} hosts, {summary}", summary.hosts);
                }
                total.add(&summary);
            }
            Err(v) => {
                eprintln!("{v}");
                return ExitCode::FAILURE;
            }
        }
        if args.seed.is_none() && (k + 1) % 50 == 0 {
            eprintln!("{} seeds ok", k + 1);
        }
    }
    if args.seed.is_none() {
        println!("{} seeds ok; in total: {total}", seeds.len());
    }
    ExitCode::SUCCESS
}
