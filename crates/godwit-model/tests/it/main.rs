//! The model check in `cargo test`: godwit's rule holds at the test bound and its
//! liveness witnesses exist; each variant that drops part of the rule is caught, with
//! the property it breaks. `cargo run --release -p godwit-model` checks larger bounds.

mod real;
mod variants;

/// Checker threads (the build machine has two cores).
const THREADS: usize = 2;
