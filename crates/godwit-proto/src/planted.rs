//! Deliberate bugs, compiled only with the `planted-bugs` feature and switched on only by
//! a test, for its own thread. They exist to show that the simulator (`godwit-sim`) catches
//! the kind of mistake it is there to catch.

use std::cell::Cell;

thread_local! {
    static RESUME_BEFORE_ABORT: Cell<bool> = const { Cell::new(false) };
    static ANY_INCARNATION: Cell<bool> = const { Cell::new(false) };
    static ACT_ON_PROPOSAL: Cell<bool> = const { Cell::new(false) };
    static ADOPT_WITHOUT_WAIT: Cell<bool> = const { Cell::new(false) };
    static RELEASE_FAILURE_EARLY: Cell<bool> = const { Cell::new(false) };
}

/// Makes SMs on this thread act on the outcome a write would have if it applied now, as
/// soon as they propose it, instead of on what their own log applies (the first wave's
/// daemon-handed outcome, in another form).
pub fn set_act_on_proposal(on: bool) {
    ACT_ON_PROPOSAL.with(|c| c.set(on));
}

/// Whether [`set_act_on_proposal`] is on for this thread.
pub fn act_on_proposal() -> bool {
    ACT_ON_PROPOSAL.with(Cell::get)
}

/// Makes SMs on this thread run an adopted instance as soon as the adoption applies,
/// without waiting out the last owner's lease.
pub fn set_adopt_without_wait(on: bool) {
    ADOPT_WITHOUT_WAIT.with(|c| c.set(on));
}

/// Whether [`set_adopt_without_wait`] is on for this thread.
pub fn adopt_without_wait() -> bool {
    ADOPT_WITHOUT_WAIT.with(Cell::get)
}

/// Makes SMs on this thread release an enclave's failure at once, even when the call
/// changed durable state the ledger has not recorded yet.
pub fn set_release_failure_early(on: bool) {
    RELEASE_FAILURE_EARLY.with(|c| c.set(on));
}

/// Whether [`set_release_failure_early`] is on for this thread.
pub fn release_failure_early() -> bool {
    RELEASE_FAILURE_EARLY.with(Cell::get)
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
