//! Integration tests of the enclave runtime, with an in-memory stand-in for the SM's
//! services (the real ones are the monitor's, tested there).

mod loading;
mod snapshots;
mod support;
