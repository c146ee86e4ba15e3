//! Integration tests of the security monitor on simulated hardware.

mod lifecycle;
mod migration;
mod sealing;
mod support;
mod world;
