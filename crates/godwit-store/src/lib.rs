//! The crash-fault-tolerant migration store (claim 9), run by the SMs themselves: each SM
//! holds a member, raft-rs's sans-IO `RawNode` driven from inside the SM, which applies
//! the ownership ledger of `godwit-proto` in log order, and learns every outcome of its
//! own writes from its own applied log.
//!
//! Contract: no I/O, no clock, no threads. A member takes store messages from peer SMs
//! (authenticated by the SM's channels, and accepted only from the member they name),
//! the host's word that a record is durable, and wake-ups (it reads the trusted timer
//! itself); it gives back messages for peers, sealed records for the host's disk, and
//! outcomes. The host never hands it a vote, a commit index, an outcome or a membership in
//! the clear: it moves sealed bytes, and the member checks everything that comes back
//! (records: authentication, a chain, and the component's monotonic counter).

mod log;
mod member;
mod record;
mod state;
mod wire;

pub use log::MemLog;
pub use member::{
    ADDR_BYTES_MAX, LEASE, LEASE_MAX, LEASE_MIN, Member, MemberConfig, MembershipChange, Opened,
    Output, PROPOSAL_BYTES_MAX, PROPOSALS_MAX, RECORDS_AHEAD_MAX, StoreError, lease_drift,
};
pub use record::{OpenError, RECORD_BYTES_MAX, RECORDS_PER_BASE_MAX, StoreWrite};
pub use state::{MemberInfo, Replicated};
pub use wire::{NodeId, STORE_MESSAGE_BYTES_MAX, WireError, node_id};

/// Largest snapshot of the replicated state, from a peer or from disk.
pub const SNAPSHOT_BYTES_MAX: usize = 128 * 1024 * 1024;

/// A member takes a snapshot (and writes a base record) every this many applied entries.
pub const SNAPSHOT_EVERY_ENTRIES: u64 = 1000;

/// Whether `bytes` decode as a store message from `peer` for `me`, exactly as a member
/// decodes them (for fuzzing: bad input is an error, never a panic).
pub fn store_message_decodes(peer: &godwit_wire::HostId, me: NodeId, bytes: &[u8]) -> bool {
    wire::decode(peer, me, bytes).is_ok()
}

/// Whether `bytes` decode and check as the replicated state a snapshot carries (for
/// fuzzing: bad input is an error, never a panic).
pub fn snapshot_decodes(bytes: &[u8]) -> bool {
    Replicated::decode(bytes).is_ok()
}

#[cfg(test)]
mod tests;
