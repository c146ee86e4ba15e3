//! Each part of the rule is needed: without it, the checker finds a counterexample.

use godwit_model::{
    AT_MOST_ONE_ANSWERING, Bounds, RUNNING_IS_OWNER, Variant, find_counterexample, model, trace,
};

use crate::THREADS;

/// A crash, a removal and a migration: enough for either variant to go wrong.
const BOUNDS: Bounds = Bounds {
    crashes: 1,
    migrations: 1,
    removal: true,
    lossy: false,
};

/// The trace of the shortest counterexample of `variant`, which must break `property`
/// (and not the other one).
fn caught(variant: Variant, property: &str) -> String {
    let report = find_counterexample(&model(variant, BOUNDS), THREADS);
    let path = report
        .discoveries
        .get(property)
        .unwrap_or_else(|| panic!("{variant:?}: no counterexample to {property}"));
    for other in [AT_MOST_ONE_ANSWERING, RUNNING_IS_OWNER] {
        assert!(
            other == property || !report.discoveries.contains_key(other),
            "{variant:?} breaks {other} first"
        );
    }
    trace(variant, path)
}

#[test]
fn without_the_lease_wait_two_copies_answer() {
    let t = caught(Variant::NoLeaseWait, AT_MOST_ONE_ANSWERING);
    // The removed owner answers on under its old lease while the adopter already runs.
    assert!(t.contains("removes a from the store"), "{t}");
    assert!(t.contains("answer to boot 1's ADOPT: Applied"), "{t}");
    assert!(t.contains("ends with 2 SM(s) answering"), "{t}");
}

#[test]
fn without_boot_binding_a_restarted_sm_runs_a_copy_the_ledger_gives_its_earlier_boot() {
    let t = caught(Variant::NoBootBinding, RUNNING_IS_OWNER);
    // The new boot took the answer to its earlier boot's ADOPT as its own.
    assert!(t.contains("b restarts as boot 2"), "{t}");
    assert!(t.contains("answer to boot 1's ADOPT"), "{t}");
    assert!(t.contains("owner b/boot 1"), "{t}");
}
