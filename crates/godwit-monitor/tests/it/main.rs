//! Integration tests of the security monitor on simulated hardware.

mod lifecycle;
mod sealing;
mod support;
