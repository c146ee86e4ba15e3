//! The simulator in `cargo test`: a bounded sweep must hold every invariant, runs must be
//! reproducible from their seed, and a planted bug must be caught. `.ci/run` also runs the
//! 300-seed release sweep; `cargo run --release -p godwit-sim -- --seeds N` runs longer.

use godwit_sim::{Options, Plant, run};

#[test]
fn a_bounded_sweep_holds_every_invariant() {
    let options = Options::default();
    for seed in 0..24 {
        if let Err(v) = run(seed, &options) {
            panic!("{v}");
        }
    }
}

#[test]
fn a_seed_decides_everything() {
    let options = Options::default();
    let first = run(7, &options).expect("seed 7 passes");
    let again = run(7, &options).expect("seed 7 passes");
    assert_eq!(first, again);
    assert!(first.migrations.0 > 0 && first.steps > 100, "{first}");
}

#[test]
fn the_planted_bug_resuming_before_abort_is_caught() {
    let options = Options {
        plant: Some(Plant::ResumeBeforeAbort),
        ..Options::default()
    };
    let caught = (0..20).find_map(|seed| run(seed, &options).err());
    let v = caught.expect("the simulator catches a sender that resumes before ABORT is recorded");
    assert!(
        v.what.contains("runs") && v.what.contains("ledger"),
        "a copy running without the ledger's licence: {}",
        v.what
    );
    assert!(
        v.command.ends_with("--plant resume-before-abort"),
        "{}",
        v.command
    );
    // Without the bug, the same seed passes.
    assert!(run(v.seed, &Options::default()).is_ok());
}

#[test]
fn the_planted_bug_reusing_a_blob_version_after_adoption_is_caught() {
    // The bug needs an adoption, a seal by the adopted instance and the host's replay of
    // the lost one's blob, all while the host still lies; an adopted instance waits out the
    // last owner's lease first, so the chaos lasts longer than by default.
    let options = Options {
        plant: Some(Plant::AnyIncarnation),
        chaos_ms: 16_000,
        ..Options::default()
    };
    let caught = (0..24).find_map(|seed| run(seed, &options).err());
    let v = caught.expect(
        "the simulator catches an SM that opens a lost incarnation's blob of a reused version",
    );
    assert!(
        v.what.contains("not the one released"),
        "a sealed state that was never released: {}",
        v.what
    );
    assert!(
        v.command.ends_with("--plant any-incarnation"),
        "{}",
        v.command
    );
    let honest = Options {
        plant: None,
        ..options
    };
    assert!(run(v.seed, &honest).is_ok());
}

/// Runs seeds `0..seeds` with `plant` on until one is caught; checks the violation names
/// `what`, the command repeats the plant, and the same seed passes without it.
fn caught(plant: Plant, options: Options, seeds: u64, what: &str) {
    let planted = Options {
        plant: Some(plant),
        ..options.clone()
    };
    let v = (0..seeds)
        .find_map(|seed| run(seed, &planted).err())
        .unwrap_or_else(|| panic!("the simulator catches {plant} within {seeds} seeds"));
    assert!(
        v.what.contains(what),
        "{plant}: expected {what:?}, got: {}",
        v.what
    );
    assert!(
        v.command.ends_with(&format!("--plant {plant}")),
        "{}",
        v.command
    );
    assert!(
        run(v.seed, &options).is_ok(),
        "seed {} passes without {plant}",
        v.seed
    );
}

#[test]
fn the_planted_bug_acting_on_an_outcome_not_applied_is_caught() {
    // The SM takes a write's outcome as soon as it proposes it: a copy runs that the
    // ledger never licensed.
    caught(
        Plant::ActOnProposal,
        Options::default(),
        8,
        "but its ledger says",
    );
}

#[test]
fn the_planted_bug_adopting_without_waiting_out_the_lease_is_caught() {
    // A hostile host removes a host running an enclave, cuts it off from the store and
    // adopts the enclave on itself: without the wait, two copies run while the removed
    // host still holds its lease.
    caught(
        Plant::AdoptWithoutWait,
        Options::default(),
        24,
        "each holding its store lease",
    );
}

#[test]
fn the_planted_bug_releasing_a_failure_before_it_is_recorded_is_caught() {
    // A failed tick names the count it reached; released before the ledger has it, a
    // crash or a refused update takes the count back and it is released again.
    caught(
        Plant::ReleaseFailureEarly,
        Options::default(),
        24,
        "behind the released tick",
    );
}
