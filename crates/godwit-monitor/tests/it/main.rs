//! Integration tests of the security monitor on simulated hardware.

mod lifecycle;
mod migration;
mod recovery;
mod sealing;
mod support;
mod world;
