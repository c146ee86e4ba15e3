//! `godwit-model`: checks godwit's migration commit rule exhaustively and prints what it
//! found.
//!
//! ```sh
//! cargo run --release -p godwit-model                  # every variant: 1 crash, removal
//! cargo run --release -p godwit-model -- --variant real --migrations 2   # ~5·10^7 states
//! cargo run --release -p godwit-model -- --crashes 0 --no-removal --lossy
//! ```

use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use godwit_model::{Bounds, GodwitModel, Variant, check, find_counterexample, model, trace};
use stateright::Model;

/// Model-checks the migration commit rule (stateright, breadth first).
#[derive(Parser)]
#[command(name = "godwit-model")]
struct Args {
    /// The rule to check; all of them by default.
    #[arg(long)]
    variant: Option<VariantArg>,
    /// SM crashes in a run (each restart is the SM's next boot).
    #[arg(long, default_value_t = 1)]
    crashes: u8,
    /// Migrations the operator asks for in a run.
    #[arg(long, default_value_t = 1)]
    migrations: u8,
    /// Never remove a host from the store.
    #[arg(long)]
    no_removal: bool,
    /// A network that also loses messages (it always duplicates and reorders). Loss adds
    /// no behaviour the safety properties can see, and many states.
    #[arg(long)]
    lossy: bool,
    /// Explore paths of at most this many steps (for measuring growth).
    #[arg(long)]
    depth: Option<usize>,
    /// Checker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

#[derive(Clone, Copy, ValueEnum)]
enum VariantArg {
    Real,
    NoBootBinding,
    NoLeaseWait,
}

impl From<VariantArg> for Variant {
    fn from(v: VariantArg) -> Self {
        match v {
            VariantArg::Real => Variant::Real,
            VariantArg::NoBootBinding => Variant::NoBootBinding,
            VariantArg::NoLeaseWait => Variant::NoLeaseWait,
        }
    }
}

#[allow(
    clippy::print_stdout,
    clippy::disallowed_methods,
    reason = "a command-line tool: it prints its findings and times the checker by the wall clock"
)]
fn run(variant: Variant, bounds: Bounds, threads: usize, depth: Option<usize>) -> bool {
    let m: GodwitModel = model(variant, bounds);
    let properties = m.properties();
    println!(
        "== {}: {} crash(es), {} migration(s), removal {}, {} network",
        variant.name(),
        bounds.crashes,
        bounds.migrations,
        if bounds.removal { "on" } else { "off" },
        if bounds.lossy { "lossy" } else { "lossless" },
    );
    let start = std::time::Instant::now();
    let report = if variant == Variant::Real {
        check(m, threads, depth)
    } else {
        find_counterexample(&m, threads)
    };
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{} states generated, {} unique, depth {}, {secs:.1} s",
        report.states, report.unique, report.depth,
    );
    let mut holds = true;
    for p in &properties {
        let found = report.discoveries.get(p.name);
        let failure = p.expectation.discovery_is_failure();
        match (found, failure) {
            (None, true) if report.done && variant == Variant::Real => {
                println!("  holds: {}", p.name)
            }
            (None, true) => println!("  not violated before the search stopped: {}", p.name),
            (None, false) if variant != Variant::Real => {}
            (None, false) => {
                holds = false;
                println!("  NO WITNESS: {}", p.name);
            }
            (Some(_), false) if variant != Variant::Real => {}
            (Some(path), false) => {
                println!(
                    "  witness ({} steps): {}",
                    path.clone().into_actions().len(),
                    p.name
                )
            }
            (Some(path), true) => {
                holds = false;
                println!("  VIOLATED: {}", p.name);
                print!("{}", trace(variant, path));
            }
        }
    }
    holds
}

fn main() -> ExitCode {
    let args = Args::parse();
    let bounds = Bounds {
        crashes: args.crashes,
        migrations: args.migrations,
        removal: !args.no_removal,
        lossy: args.lossy,
    };
    let variants = match args.variant {
        Some(v) => vec![v.into()],
        None => Variant::ALL.to_vec(),
    };
    let mut as_expected = true;
    for v in variants {
        // The real rule must hold; each variant must be caught.
        as_expected &= run(v, bounds, args.threads, args.depth) == (v == Variant::Real);
    }
    if as_expected {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
