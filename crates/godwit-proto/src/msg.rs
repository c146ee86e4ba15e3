//! The migration protocol's messages, carried in the attested channel's data records, and
//! the abort reasons that travel in them.

use std::fmt;

use godwit_wire::{EnclaveId, GlobalValue, Manifest, Measurement};
use serde::{Deserialize, Serialize};

use crate::MigrationId;
use crate::ledger::LedgerRefusal;
use crate::timing::DeadlineTerms;

/// Largest message accepted: one record's payload.
pub const MESSAGE_BYTES_MAX: usize = 4 * 1024 * 1024 + 4096;
/// Bulk data (module bytes, memory pages) per message. Records this large cost less CPU per
/// byte than 1 MiB ones (fewer hand-overs and wake-ups per GiB) and keep a connection's
/// buffers to a few MiB; docs/benchmarks.md has the measurements.
pub const CHUNK_BYTES_MAX: usize = 4 * 1024 * 1024;
const _: () = assert!(CHUNK_BYTES_MAX + 256 <= MESSAGE_BYTES_MAX);

/// What the sender announces before anything is paused (claim 4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prepare {
    /// The migration.
    pub migration: MigrationId,
    /// The instance.
    pub enclave: EnclaveId,
    /// Its measurement (module + manifest).
    pub app: Measurement,
    /// Its manifest.
    pub manifest: Manifest,
    /// The module's size.
    pub module_bytes: u64,
    /// Its memory D.
    pub memory_bytes: u64,
    /// Its sealed slots S (an upper bound: E runs until READY and may change them).
    pub sealed_slots: u32,
    /// Their total plaintext size (an upper bound, likewise).
    pub sealed_bytes: u64,
    /// Its monotonic counters.
    pub counters: u32,
    /// The ledger epoch it is held at.
    pub epoch: u64,
    /// Its incarnation in the ledger (the receiver seals under it).
    pub incarnation: u64,
    /// The store the sender's ledger belongs to (the hash of its founders): the receiver
    /// takes part only if its ledger is the same store's.
    pub cluster: [u8; 32],
}

impl Prepare {
    /// Everything the transfer carries.
    pub fn total_bytes(&self) -> u64 {
        self.module_bytes + self.memory_bytes + self.sealed_bytes
    }
}

/// The state sent last: everything outside memory and sealed slots, and the digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalState {
    /// Mutable globals, in module order.
    pub globals: Vec<GlobalValue>,
    /// Monotonic counters.
    pub counters: Vec<(String, u64)>,
    /// Sealed slots sent (at most the number announced in PREPARE).
    pub sealed_slots: u32,
    /// The transfer digest (see [`crate::transfer_digest`]).
    pub digest: [u8; 32],
}

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message<'a> {
    /// Sender → receiver: the enclave to be moved.
    Prepare(Box<Prepare>),
    /// Receiver → sender: it can take it; its preparation took `prepare_us` on its
    /// trusted timer (so the sender can subtract it from the round trip).
    Ready {
        /// The migration.
        migration: MigrationId,
        /// Receiver's preparation time, µs.
        prepare_us: u64,
        /// The receiver already holds the module of this measurement (compiled, checked
        /// against `app`): no MODULE messages follow, and its instance is ready for pages.
        module_cached: bool,
    },
    /// Receiver → sender: it cannot.
    Refuse {
        /// The migration.
        migration: MigrationId,
        /// Why.
        reason: RefuseReason,
    },
    /// Sender → receiver: BEGIN is recorded; data follows. Carries the network delay the
    /// sender measured, for the receiver's per-chunk deadlines.
    Transfer {
        /// The migration.
        migration: MigrationId,
        /// Measured network delay, µs.
        network_delay_us: u64,
    },
    /// Module bytes at `offset`.
    Module {
        /// The migration.
        migration: MigrationId,
        /// Where these bytes go.
        offset: u64,
        /// The bytes.
        #[serde(borrow, with = "serde_bytes")]
        bytes: &'a [u8],
    },
    /// Memory pages at `offset` (page-aligned); pages never sent are zero.
    Memory {
        /// The migration.
        migration: MigrationId,
        /// Where these bytes go.
        offset: u64,
        /// Whole pages.
        #[serde(borrow, with = "serde_bytes")]
        bytes: &'a [u8],
    },
    /// One sealed slot's plaintext (unsealed at the source, re-sealed at the destination).
    Sealed {
        /// The migration.
        migration: MigrationId,
        /// The slot.
        slot: String,
        /// Its version at the source.
        version: u64,
        /// The incarnation that sealed that version.
        incarnation: u64,
        /// Its content.
        #[serde(borrow, with = "serde_bytes")]
        data: &'a [u8],
    },
    /// The last data message.
    Final {
        /// The migration.
        migration: MigrationId,
        /// Globals, counters, digest.
        state: Box<FinalState>,
    },
    /// Receiver → sender: COMMIT is recorded at `epoch`.
    Committed {
        /// The migration.
        migration: MigrationId,
        /// The new epoch.
        epoch: u64,
    },
    /// Either way: this side gives the migration up.
    Abort {
        /// The migration.
        migration: MigrationId,
        /// Why.
        reason: AbortReason,
    },
}

impl<'a> Message<'a> {
    /// Decodes a message from a record's payload, borrowing bulk bytes.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, godwit_wire::DecodeError> {
        godwit_wire::decode_borrowed(bytes, MESSAGE_BYTES_MAX)
    }

    /// The migration the message belongs to.
    pub fn migration(&self) -> MigrationId {
        match self {
            Self::Prepare(p) => p.migration,
            Self::Ready { migration, .. }
            | Self::Refuse { migration, .. }
            | Self::Transfer { migration, .. }
            | Self::Module { migration, .. }
            | Self::Memory { migration, .. }
            | Self::Sealed { migration, .. }
            | Self::Final { migration, .. }
            | Self::Committed { migration, .. }
            | Self::Abort { migration, .. } => *migration,
        }
    }

    /// The message's kind, for errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Prepare(_) => "PREPARE",
            Self::Ready { .. } => "READY",
            Self::Refuse { .. } => "REFUSE",
            Self::Transfer { .. } => "TRANSFER",
            Self::Module { .. } => "MODULE",
            Self::Memory { .. } => "MEMORY",
            Self::Sealed { .. } => "SEALED",
            Self::Final { .. } => "FINAL",
            Self::Committed { .. } => "COMMITTED",
            Self::Abort { .. } => "ABORT",
        }
    }
}

/// Why a receiver refused a PREPARE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RefuseReason {
    /// The manifest says `migratable = false`.
    NotMigratable,
    /// The receiver already has `present` instances (running or reserved) of a manifest
    /// allowing `limit`.
    InstanceLimit {
        /// The manifest's limit.
        limit: u32,
        /// Instances present or reserved.
        present: u32,
    },
    /// More memory than the receiver has room for.
    TooLarge {
        /// Bytes asked.
        bytes: u64,
        /// Bytes available.
        available: u64,
    },
    /// The receiver already holds this instance.
    AlreadyPresent,
    /// The PREPARE is inconsistent (sizes over limits, manifest invalid).
    Invalid(String),
    /// The receiver's SM has just started and the ledger has not recorded its boot yet:
    /// it takes part in migrations only after that (so that the announcement of a later
    /// restart can settle every migration this boot took part in).
    Starting,
    /// The ledger refused the receiver's boot: its boot count is not above the recorded
    /// one (the host rolled the component's boot count back). It takes part in nothing.
    StaleBoot,
    /// The receiver belongs to another store: its COMMIT would be decided by another
    /// ledger than the sender's.
    ForeignStore,
}

impl RefuseReason {
    /// A stable code for scripts.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotMigratable => "not_migratable",
            Self::InstanceLimit { .. } => "instance_limit",
            Self::TooLarge { .. } => "too_large",
            Self::AlreadyPresent => "already_present",
            Self::Invalid(_) => "invalid_prepare",
            Self::Starting => "receiver_starting",
            Self::StaleBoot => "receiver_stale_boot",
            Self::ForeignStore => "foreign_store",
        }
    }
}

impl fmt::Display for RefuseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotMigratable => f.write_str("the manifest does not allow migration"),
            Self::InstanceLimit { limit, present } => write!(
                f,
                "the receiver already has {present} instance(s) of an application limited to {limit} per host"
            ),
            Self::TooLarge { bytes, available } => {
                write!(
                    f,
                    "{bytes} bytes asked, {available} available at the receiver"
                )
            }
            Self::AlreadyPresent => f.write_str("the receiver already holds this enclave"),
            Self::Invalid(why) => write!(f, "invalid PREPARE: {why}"),
            Self::Starting => f.write_str(
                "the receiver has just started and its boot is not recorded yet; try again shortly",
            ),
            Self::StaleBoot => f.write_str(
                "the store refused the receiver's boot: its component's boot count went back (a rolled-back boot count)",
            ),
            Self::ForeignStore => f.write_str(
                "the receiver belongs to another store than the sender (another set of founders)",
            ),
        }
    }
}

/// Which wait a deadline belonged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Wait {
    /// The sender, for READY.
    Ready,
    /// The receiver, for the transfer to start.
    Transfer,
    /// The receiver, for the next data message.
    Chunk,
    /// The sender, for the data to be sent and the decision to come back.
    Decision,
}

impl fmt::Display for Wait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ready => "READY",
            Self::Transfer => "the transfer to start",
            Self::Chunk => "the next data chunk",
            Self::Decision => "the transfer and its decision",
        })
    }
}

/// Why a migration was given up. Travels in ABORT messages and shows in the CLI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AbortReason {
    /// A deadline passed on the trusted timer.
    Timeout {
        /// The wait.
        wait: Wait,
        /// The deadline's terms.
        terms: DeadlineTerms,
    },
    /// The receiver refused the PREPARE.
    Refused(RefuseReason),
    /// The peer gave the migration up.
    Peer(Box<AbortReason>),
    /// The connection to the peer ended.
    ConnectionLost,
    /// The ledger refused a write.
    Store(LedgerRefusal),
    /// The store did not answer a write in time.
    StoreUnavailable(String),
    /// The data did not match what was announced or what arrived (a protocol violation).
    Protocol(String),
    /// The received module does not match the announced measurement.
    MeasurementMismatch,
    /// The digest of what arrived differs from what was sent.
    DigestMismatch,
    /// The enclave could not be rebuilt or its state collected.
    State(String),
    /// The peer's attestation failed or the channel broke before the migration started.
    Attestation(String),
    /// The host asked to stop.
    Cancelled,
    /// The host could not connect to the peer at all.
    Unreachable(String),
}

impl AbortReason {
    /// A stable code for scripts and logs.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Timeout {
                wait: Wait::Ready, ..
            } => "timeout_ready",
            Self::Timeout {
                wait: Wait::Transfer,
                ..
            } => "timeout_transfer_start",
            Self::Timeout {
                wait: Wait::Chunk, ..
            } => "timeout_chunk",
            Self::Timeout {
                wait: Wait::Decision,
                ..
            } => "timeout_decision",
            Self::Refused(r) => r.code(),
            Self::Peer(_) => "peer_aborted",
            Self::ConnectionLost => "connection_lost",
            Self::Store(_) => "store_refused",
            Self::StoreUnavailable(_) => "store_unavailable",
            Self::Protocol(_) => "protocol_violation",
            Self::MeasurementMismatch => "measurement_mismatch",
            Self::DigestMismatch => "digest_mismatch",
            Self::State(_) => "state_error",
            Self::Attestation(_) => "attestation_failed",
            Self::Cancelled => "cancelled",
            Self::Unreachable(_) => "peer_unreachable",
        }
    }
}

impl fmt::Display for AbortReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout { wait, terms } => {
                write!(f, "timed out waiting for {wait}: deadline {terms}")
            }
            Self::Refused(r) => write!(f, "refused by the receiver: {r}"),
            Self::Peer(r) => write!(f, "the peer aborted: {r}"),
            Self::ConnectionLost => f.write_str("the connection to the peer was lost"),
            Self::Store(r) => write!(f, "the store refused: {r}"),
            Self::StoreUnavailable(why) => write!(f, "the store did not answer: {why}"),
            Self::Protocol(why) => write!(f, "protocol violation: {why}"),
            Self::MeasurementMismatch => {
                f.write_str("the module does not match the announced measurement")
            }
            Self::DigestMismatch => f.write_str("the transfer digest does not match"),
            Self::State(why) => write!(f, "enclave state: {why}"),
            Self::Attestation(why) => write!(f, "attestation: {why}"),
            Self::Cancelled => f.write_str("cancelled"),
            Self::Unreachable(why) => write!(f, "cannot reach the peer: {why}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bulk bytes are written as one length-prefixed run (not element by element), and the
    /// encoding is the same postcard gives a plain sequence of bytes.
    #[test]
    fn bulk_bytes_encode_as_one_run_and_round_trip() {
        let data = vec![7u8; 5000];
        let msg = Message::Memory {
            migration: MigrationId([1; 16]),
            offset: 4096,
            bytes: &data,
        };
        let enc = godwit_wire::encode(&msg);
        let as_seq = godwit_wire::encode(&(5u8, MigrationId([1; 16]), 4096u64, data.clone()));
        assert_eq!(enc, as_seq, "same wire format as a sequence of u8");
        assert_eq!(Message::decode(&enc).unwrap(), msg);
    }
}
