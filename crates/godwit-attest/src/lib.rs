//! Mutual attestation between security monitors, the shared key K, the key schedule and
//! the protected record channel (claims 1 and 11).
//!
//! Contract (sans-IO): no sockets, no threads, no clock. Handshake phases take bytes and
//! return bytes; randomness and signatures come from the [`Hardware`](godwit_hw::Hardware);
//! deadlines are the caller's business, on the trusted timer. Every parse is bounded and
//! returns a typed error; nothing a peer sends can panic the SM, and any refusal leaves no
//! half-open session: a handshake phase is consumed by `receive`, and a channel that refused
//! a record neither sends nor accepts again.
//!
//! Flow: [`Initiator::start`] → ClientHello → [`Responder::respond`] → ServerHello →
//! [`AwaitServerHello::receive`] → ClientFinish → [`AwaitClientFinish::receive`]; each side
//! then turns its [`Session`] into a [`Channel`]. See docs/protocol.md.

mod handshake;
mod keys;
mod policy;
mod record;

pub use handshake::{
    AwaitClientFinish, AwaitServerHello, HANDSHAKE_MESSAGE_BYTES_MAX, HandshakeMessage, Initiator,
    PROTOCOL_VERSION, Responder, Session,
};
pub use keys::Direction;
pub use policy::{Policy, Refusal, VerifiedPeer};
pub use record::{
    Channel, HEADER_BYTES, MAC_BYTES, Opened, RECORD_OVERHEAD_BYTES, RECORD_PAYLOAD_BYTES_MAX,
    Receiver, RecordBuf, RecordType, SESSION_BYTES_MAX, SESSION_RECORDS_MAX, Sender, TAG_BYTES,
};

use godwit_wire::DecodeError;

/// Which side of the handshake an SM played.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// It dialled.
    Initiator,
    /// It answered.
    Responder,
}

/// Everything that can go wrong in a handshake or on a channel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// The peer was refused by this side's policy or checks.
    #[error("attestation refused: {0}")]
    Refused(#[from] Refusal),
    /// A handshake message could not be decoded.
    #[error("malformed handshake message: {0}")]
    Decode(#[from] DecodeError),
    /// A well-formed message of the wrong kind for this phase.
    #[error("expected {expected}, received {got}")]
    UnexpectedMessage {
        /// What this phase waits for.
        expected: &'static str,
        /// What arrived.
        got: &'static str,
    },
    /// A record's MAC or AEAD check failed: altered, forged, reflected or under other keys.
    #[error("record failed authentication")]
    BadRecord,
    /// A record out of sequence: replayed (earlier), or after a dropped or reordered one.
    #[error(
        "record sequence {presented}, expected {expected}: replayed, reordered or dropped record"
    )]
    UnexpectedSequence {
        /// The next sequence number this side accepts.
        expected: u64,
        /// The one presented.
        presented: u64,
    },
    /// A record or stream ended early.
    #[error("truncated: the stream ended before an authenticated close")]
    Truncated,
    /// A record that is not well formed.
    #[error("malformed record: {0}")]
    MalformedRecord(String),
    /// A record longer than allowed.
    #[error("record payload of {len} bytes exceeds the limit of {max}")]
    RecordTooLarge {
        /// Bytes presented.
        len: usize,
        /// Bytes allowed.
        max: usize,
    },
    /// The session reached its record or byte limit and must be replaced by a new handshake.
    #[error("session limit reached: a new handshake is needed")]
    SessionExhausted,
    /// This direction was closed in order.
    #[error("session closed")]
    SessionClosed,
    /// The session failed earlier and will not send or accept again.
    #[error("session failed earlier; it neither sends nor accepts again")]
    SessionFailed,
}
