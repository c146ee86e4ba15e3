//! End-to-end tests of the `godwit` binary.

mod bench;
mod chaos;
mod cluster;
mod demo;
mod hostile;
mod malicious;
mod recovery;
mod rollback;
mod support;
