//! Attestation and channel tests on in-memory pairs: no sockets, no clock.

mod decoders;
mod handshake;
mod records;
mod support;
