//! The migration protocol, sans-IO: the messages two SMs exchange over their attested
//! channel, the ownership ledger the store runs, the timeout model, and the sender's and
//! receiver's state machines.
//!
//! Contract: no tokio, no sockets, no clock and no OS randomness. Inputs are messages,
//! store replies and readings of the trusted timer; outputs are effects the SM carries
//! out. This is what lets tests and the simulator drive thousands of schedules
//! deterministically.

pub mod ledger;
pub mod msg;
#[cfg(feature = "planted-bugs")]
pub mod planted;
pub mod recv;
pub mod send;
pub mod timing;

use std::fmt;

use godwit_hw::TrustedInstant;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use ledger::{
    Boot, Decision, DurableState, EnclaveRecord, LEDGER_RECORDS_MAX, Ledger, LedgerOp,
    LedgerOutcome, LedgerRefusal, RecordState, SlotVersion,
};
pub use msg::{
    AbortReason, CHUNK_BYTES_MAX, FinalState, MESSAGE_BYTES_MAX, Message, Prepare, RefuseReason,
    Wait,
};
pub use recv::{Incoming, Received, RecvEffect, RecvOutcome};
pub use send::{Outgoing, SendEffect, SendOutcome, SendPlan};
pub use timing::{Deadline, DeadlineTerms, TimeoutConfig};

/// One sealed slot in transit. The plaintext exists only inside SMs and is wiped on drop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSlot {
    /// The slot's name.
    pub slot: String,
    /// Its version at the source.
    pub version: u64,
    /// The incarnation that sealed that version.
    pub incarnation: u64,
    /// Its plaintext.
    pub data: zeroize::Zeroizing<Vec<u8>>,
}

/// Page granularity of memory transfer.
pub const PAGE_BYTES: usize = 4096;

/// One migration attempt, chosen at random by the sending SM.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MigrationId(pub [u8; 16]);

impl fmt::Display for MigrationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for MigrationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MigrationId({})", hex::encode(&self.0[..4]))
    }
}

/// The store's answer to a write: the ledger's outcome, or no answer in time (the write
/// may or may not have been applied).
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // one per store write, moved once; boxing buys nothing
pub enum StoreReply {
    /// The ledger applied or refused the write.
    Outcome(LedgerOutcome),
    /// No answer: unknown whether the write was applied.
    Unavailable(String),
}

/// The transfer digest: a hash of the channel's MAC chain value after the last data
/// record. The chain authenticates every record's header and GCM tag back to the
/// handshake, and each tag commits to its ciphertext and hence its plaintext, so equal
/// digests mean the receiver holds exactly the record stream the sender produced, at no
/// per-byte cost beyond the channel's own.
pub fn transfer_digest(migration: MigrationId, chain: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"godwit transfer digest v1");
    h.update(migration.0);
    h.update(chain);
    h.finalize().into()
}

/// When the steps of a migration happened, on the sender's trusted timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepTimes {
    /// PREPARE sent.
    pub prepared: TrustedInstant,
    /// READY received.
    pub ready: Option<TrustedInstant>,
    /// E paused and its state collected.
    pub paused: Option<TrustedInstant>,
    /// BEGIN recorded.
    pub begun: Option<TrustedInstant>,
    /// FINAL sent.
    pub sent: Option<TrustedInstant>,
    /// The decision known.
    pub decided: Option<TrustedInstant>,
}

impl StepTimes {
    fn started(now: TrustedInstant) -> Self {
        Self {
            prepared: now,
            ready: None,
            paused: None,
            begun: None,
            sent: None,
            decided: None,
        }
    }
}
