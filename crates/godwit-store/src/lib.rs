//! The crash-fault-tolerant migration store (claim 9): the ownership ledger of
//! `godwit-proto`, replicated by openraft among the SMs of the cluster.
//!
//! Contract: this crate provides the storage side of a member — the Raft log, vote and
//! snapshots on the host's disk, every item sealed by the SM ([`Sealer`]) so that the host
//! can neither read nor alter them, and a member refuses to start on items that do not
//! authenticate — and the state machine that applies ledger writes in log order. The
//! network side (Raft RPCs over the SMs' attested channels) lives in the host daemon.

// openraft's storage traits fix the (large) error type of every storage function.
#![allow(clippy::result_large_err)]

mod log;
mod seal;
mod sm;
mod storage;

use std::io::Cursor;
use std::sync::Arc;

use godwit_proto::{LedgerOp, LedgerOutcome};

pub use log::LogStore;
pub use seal::{Corrupt, Sealer};
pub use sm::{LedgerView, SNAPSHOT_BYTES_MAX, SmData, StateMachine};
pub use storage::{OpenError, Storage};

/// A member's id in the Raft group (one per host).
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The store's Raft types: entries are ledger writes, responses are ledger outcomes.
    pub TypeConfig:
        D = LedgerOp,
        R = LedgerOutcome,
);

/// A Raft member running the ledger.
pub type Raft = openraft::Raft<TypeConfig>;

/// Opens a member's storage at `path`: the log store and the state machine. Fails if any
/// stored item does not authenticate under this SM's key.
pub fn open(path: &std::path::Path, sealer: Sealer) -> Result<(LogStore, StateMachine), OpenError> {
    members_of(Storage::open(path, sealer)?)
}

/// As [`open`], for a member that starts over with an empty store and rejoins from its
/// peers (its previous file was refused).
pub fn open_empty(
    path: &std::path::Path,
    sealer: Sealer,
) -> Result<(LogStore, StateMachine), OpenError> {
    members_of(Storage::open_empty(path, sealer)?)
}

fn members_of(st: Arc<Storage>) -> Result<(LogStore, StateMachine), OpenError> {
    let sm = StateMachine::open(Arc::clone(&st)).map_err(|e| {
        OpenError::Corrupt(Corrupt {
            what: format!("snapshot: {e}"),
        })
    })?;
    Ok((LogStore::new(st), sm))
}

/// The Raft settings of the store: short heartbeats and elections (a loopback or LAN
/// cluster), snapshots every 1000 entries.
pub fn raft_config() -> openraft::Config {
    openraft::Config {
        cluster_name: "godwit".into(),
        heartbeat_interval: 100,
        election_timeout_min: 400,
        election_timeout_max: 800,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(1000),
        max_in_snapshot_log_to_keep: 500,
        ..Default::default()
    }
}
