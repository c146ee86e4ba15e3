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
