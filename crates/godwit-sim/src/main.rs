//! `godwit-sim`: runs seeds of the cluster simulation and reports the first violation.
//!
//! ```sh
//! cargo run --release -p godwit-sim -- --seeds 300        # seeds 0..300
//! cargo run --release -p godwit-sim -- --seed 1234        # one seed, with a summary
//! cargo run --release -p godwit-sim -- --seeds 20000 --from 5000 --jobs 2  # a soak range
//! ```

use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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
    /// Switch on a deliberate bug, to see it caught (resume-before-abort,
    /// any-incarnation, act-on-proposal, adopt-without-wait, release-failure-early).
    #[arg(long)]
    plant: Option<Plant>,
    /// Seeds run at once, on this many threads (each seed stays deterministic).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    jobs: u64,
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
        scan_logs: args.log.is_none(),
    };
    if let Some(seed) = args.seed {
        return match run(seed, &options) {
            Ok(summary) => {
                println!("seed {seed}: ok: {} hosts, {summary}", summary.hosts);
                ExitCode::SUCCESS
            }
            Err(v) => {
                eprintln!("{v}");
                ExitCode::FAILURE
            }
        };
    }
    let end = args.from.saturating_add(args.seeds);
    let next = AtomicU64::new(args.from);
    let done = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let total = Mutex::new(godwit_sim::Summary::default());
    let failed: Mutex<Option<Box<godwit_sim::Violation>>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..args.jobs {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end {
                        return;
                    }
                    match run(seed, &options) {
                        Ok(summary) => {
                            total
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .add(&summary);
                            let k = done.fetch_add(1, Ordering::Relaxed) + 1;
                            if k.is_multiple_of(50) {
                                eprintln!("{k} seeds ok");
                            }
                        }
                        Err(v) => {
                            stop.store(true, Ordering::Relaxed);
                            let mut f = failed.lock().unwrap_or_else(|p| p.into_inner());
                            // The lowest failing seed, whatever thread found it first.
                            if f.as_ref().is_none_or(|w| v.seed < w.seed) {
                                *f = Some(v);
                            }
                            return;
                        }
                    }
                }
            });
        }
    });
    if let Some(v) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        eprintln!("{v}");
        return ExitCode::FAILURE;
    }
    let total = total.into_inner().unwrap_or_else(|p| p.into_inner());
    println!("{} seeds ok; in total: {total}", args.seeds);
    ExitCode::SUCCESS
}
