//! godwit's shared vocabulary: identifiers, measurements, enclave manifests, and the
//! bounded codec every byte from a peer or the host goes through.
//!
//! Contract: no I/O, no clock, no randomness. Every decoder is bounded in input size and
//! returns a typed error on bad input; none of them panics.

mod codec;
mod ids;
mod manifest;
mod state;

pub use codec::{DecodeError, decode, decode_borrowed, encode, encode_into};
pub use ids::{EnclaveId, HostId, HostIdError, Measurement};
pub use manifest::{Manifest, ManifestError};
pub use state::GlobalValue;
