//! A seeded, deterministic simulation of a godwit cluster.
//!
//! It runs the real sans-IO code: each host is a [`godwit_monitor::Monitor`] on
//! [`godwit_hw::SimHardware`], speaking
//! the real handshake, record layer and migration protocol. Around them the simulator
//! plays everything untrusted or unreliable:
//!
//! - a **network** that delays, drops, duplicates, reorders and corrupts frames, partitions
//!   hosts from each other (or one host from the store), and refuses or resets
//!   connections;
//! - the **store**: no stand-in: each SM runs its real store member (raft-rs inside the
//!   SM), whose traffic crosses the simulated network and whose sealed records go to the
//!   host's simulated disk, which takes time to sync and loses unsynced records in a crash;
//! - the **hosts**: their trusted timers drift apart and fire late; they crash at any
//!   moment (memory lost, disk kept) and restart with a new boot epoch;
//! - **hostile daemons** on up to a minority of the hosts (`world/hostile.rs`): they call
//!   their SM's entry points at will, with replayed, reflected or made-up frames, early
//!   durability claims, withheld wake-ups, older store records and blobs, rolled-back
//!   boot counts, kills at the worst moment, removals of other hosts and adoptions of their
//!   enclaves, and requests out of order;
//! - an **operator**: deploys enclaves up to and past their limits, calls them, migrates
//!   them, drains hosts, cancels migrations, and adopts enclaves recorded lost.
//!
//! One `u64` seed decides every choice. After every step, the invariants (`invariants.rs`) are checked; a
//! violation stops the run and names the seed that reproduces it. A run is a safety phase
//! under chaos, then a liveness phase: faults stop, partitions heal, hosts come back, and
//! every migration must resolve and every enclave end up running on exactly one host or
//! recorded lost with its sealed data intact.

mod invariants;
mod world;

use std::fmt;

pub use world::Plant;

/// What a run does besides its seed.
#[derive(Debug, Clone)]
pub struct Options {
    /// Hosts (3 to 7); chosen by the seed when `None`.
    pub hosts: Option<usize>,
    /// Virtual time under chaos, ms.
    pub chaos_ms: u64,
    /// Virtual time allowed after healing for everything to resolve, ms.
    pub heal_ms: u64,
    /// A deliberate bug to switch on for this run (it must be caught).
    pub plant: Option<Plant>,
    /// Print every traced step as it happens (to stderr).
    pub verbose: bool,
    /// Capture the SMs' log lines (debug and up) and scan them for secrets after every
    /// step (off when the caller shows the logs itself).
    pub scan_logs: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            hosts: None,
            chaos_ms: 8_000,
            heal_ms: 60_000,
            plant: None,
            verbose: false,
            scan_logs: true,
        }
    }
}

impl Options {
    /// The command line that repeats a run of `seed` with these options.
    pub fn command(&self, seed: u64) -> String {
        let mut c = format!("cargo run --release -p godwit-sim -- --seed {seed}");
        let d = Self::default();
        if let Some(h) = self.hosts {
            c += &format!(" --hosts {h}");
        }
        if self.chaos_ms != d.chaos_ms {
            c += &format!(" --chaos-ms {}", self.chaos_ms);
        }
        if self.heal_ms != d.heal_ms {
            c += &format!(" --heal-ms {}", self.heal_ms);
        }
        if let Some(p) = self.plant {
            c += &format!(" --plant {p}");
        }
        c
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Hosts simulated.
    pub hosts: usize,
    /// Steps (deliveries, timer firings, operator actions).
    pub steps: u64,
    /// Enclaves registered.
    pub enclaves: u64,
    /// Deploys refused by an instance limit.
    pub limit_refusals: u64,
    /// Migrations started / committed / aborted.
    pub migrations: (u64, u64, u64),
    /// Host crashes.
    pub crashes: u64,
    /// Ticks whose results were released.
    pub ticks: u64,
    /// Enclaves recorded lost, then adopted and found intact.
    pub adopted: u64,
    /// Frames and store writes scanned for plaintext secrets.
    pub scanned: u64,
    /// Older blobs the lying host handed back in place of newer ones.
    pub replays: u64,
    /// Boots under a boot count the component had used before.
    pub rollbacks: u64,
    /// Boots where the host handed its SM older, partial or altered store records.
    pub stale_records: u64,
    /// Hosts whose daemon was hostile.
    pub hostile: usize,
    /// Calls a hostile daemon made to its SM's entry points beyond an honest daemon's
    /// (replayed, reflected and garbage frames; durability claimed early; wake-ups
    /// withheld; removals; adoptions elsewhere; operator requests out of order).
    pub attacks: u64,
    /// Members a hostile host removed from the store (each added back after the chaos).
    pub removals: u64,
}

impl Summary {
    /// Adds another run's counts (hosts excepted) to these.
    pub fn add(&mut self, other: &Summary) {
        self.steps += other.steps;
        self.enclaves += other.enclaves;
        self.limit_refusals += other.limit_refusals;
        self.migrations.0 += other.migrations.0;
        self.migrations.1 += other.migrations.1;
        self.migrations.2 += other.migrations.2;
        self.crashes += other.crashes;
        self.ticks += other.ticks;
        self.adopted += other.adopted;
        self.scanned += other.scanned;
        self.replays += other.replays;
        self.stale_records += other.stale_records;
        self.rollbacks += other.rollbacks;
        self.hostile += other.hostile;
        self.attacks += other.attacks;
        self.removals += other.removals;
    }
}

impl fmt::Display for Summary {
    /// Everything but the number of hosts.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} steps, {} enclaves ({} deploys refused at a limit), migrations {} started / {} committed / {} aborted, {} crashes, {} boots under a rolled-back count, {} boots on stale store records, {} older blobs handed back, {} hostile daemons making {} attacks ({} members removed), {} ticks, {} adopted, {} messages scanned",
            self.steps,
            self.enclaves,
            self.limit_refusals,
            self.migrations.0,
            self.migrations.1,
            self.migrations.2,
            self.crashes,
            self.rollbacks,
            self.stale_records,
            self.replays,
            self.hostile,
            self.attacks,
            self.removals,
            self.ticks,
            self.adopted,
            self.scanned
        )
    }
}

/// An invariant that did not hold.
#[derive(Debug, Clone)]
pub struct Violation {
    /// The seed.
    pub seed: u64,
    /// The step at which it was seen.
    pub step: u64,
    /// Virtual time, ms.
    pub at_ms: f64,
    /// What went wrong.
    pub what: String,
    /// The last things that happened, oldest first.
    pub trace: Vec<String>,
    /// The command that reproduces it.
    pub command: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {}: violation at step {} ({:.3} ms virtual): {}",
            self.seed, self.step, self.at_ms, self.what
        )?;
        writeln!(f, "last steps:")?;
        for t in &self.trace {
            writeln!(f, "  {t}")?;
        }
        write!(f, "reproduce with: {}", self.command)
    }
}

/// Runs one seed.
pub fn run(seed: u64, options: &Options) -> Result<Summary, Box<Violation>> {
    world::World::run(seed, options)
}
