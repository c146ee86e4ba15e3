//! Tests of the store's storage: openraft's conformance suite, and sealing on disk.

mod conformance;
mod sealing;
