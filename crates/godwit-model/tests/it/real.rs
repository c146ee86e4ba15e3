//! The real rule holds, and its liveness witnesses exist.

use godwit_model::{
    ABORT_RESUMES, ADOPTED_RUNS, AT_MOST_ONE_ANSWERING, Bounds, CAN_COMMIT, RUNNING_IS_OWNER,
    Report, Variant, check, model, trace,
};

use crate::THREADS;

/// Checks every reachable state within `bounds`: no counterexample, and a witness for
/// each of `witnesses`.
fn holds(bounds: Bounds, witnesses: &[&str]) -> Report {
    let report = check(model(Variant::Real, bounds), THREADS, None);
    assert!(report.done, "the search covered every reachable state");
    for property in [AT_MOST_ONE_ANSWERING, RUNNING_IS_OWNER] {
        if let Some(path) = report.discoveries.get(property) {
            panic!("{property} fails:\n{}", trace(Variant::Real, path));
        }
    }
    for witness in witnesses {
        assert!(
            report.discoveries.contains_key(witness),
            "no path shows that {witness}"
        );
    }
    report
}

#[test]
fn a_crash_at_any_step_of_a_migration_keeps_one_copy() {
    let report = holds(Bounds::TEST, &[CAN_COMMIT, ABORT_RESUMES, ADOPTED_RUNS]);
    // The figure docs/testing.md quotes; a much smaller count means the model lost
    // behaviours.
    assert!(report.unique > 250_000, "{} states", report.unique);
}

#[test]
fn a_removed_owner_and_two_migrations_keep_one_copy() {
    let bounds = Bounds {
        crashes: 0,
        migrations: 2,
        removal: true,
        lossy: false,
    };
    let report = holds(bounds, &[CAN_COMMIT, ABORT_RESUMES, ADOPTED_RUNS]);
    assert!(report.unique > 10_000, "{} states", report.unique);
}

#[test]
fn a_lossy_network_keeps_one_copy() {
    let bounds = Bounds {
        crashes: 0,
        migrations: 1,
        removal: false,
        lossy: true,
    };
    // Nothing is lost without a crash or a removal, so nothing is adopted.
    let report = holds(bounds, &[CAN_COMMIT, ABORT_RESUMES]);
    assert!(report.unique > 30_000, "{} states", report.unique);
}
