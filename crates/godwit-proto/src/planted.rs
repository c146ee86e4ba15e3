//! Deliberate bugs, compiled only with the `planted-bugs` feature and switched on only by
//! a test, for its own thread. They exist to show that the simulator (`godwit-sim`) catches
//! the kind of mistake it is there to catch.

use std::cell::Cell;

thread_local! {
    static RESUME_BEFORE_ABORT: Cell<bool> = const { Cell::new(false) };
    static ANY_INCARNATION: Cell<bool> = const { Cell::new(false) };
}

/// Makes SMs on this thread open a sealed blob of the right version whatever incarnation
/// sealed it: a version sealed by a lost incarnation and never recorded passes for the
/// one a later incarnation sealed under the same number.
pub fn set_any_incarnation(on: bool) {
    ANY_INCARNATION.with(|c| c.set(on));
}

/// Whether [`set_any_incarnation`] is on for this thread.
pub fn any_incarnation() -> bool {
    ANY_INCARNATION.with(Cell::get)
}

/// Makes senders on this thread resume a paused enclave as soon as they give a migration
/// up, before the store has recorded ABORT (the receiver may have committed meanwhile).
pub fn set_resume_before_abort(on: bool) {
    RESUME_BEFORE_ABORT.with(|c| c.set(on));
}

pub(crate) fn resume_before_abort() -> bool {
    RESUME_BEFORE_ABORT.with(Cell::get)
}
