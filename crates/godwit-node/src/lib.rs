//! The godwit host daemon (`godwit node`): the untrusted host around one SM.
//!
//! It dials and accepts TCP connections between SMs (length-delimited frames whose content
//! the SM seals), stores sealed blobs and the store member's sealed files on disk, sleeps
//! until the SM's next deadline (the SM reads its trusted timer itself when woken), runs
//! the store member (openraft, whose RPCs travel inside the SMs' channels), and serves the
//! local control API for the hypervisor and operator.

pub mod cluster;
pub mod config;
pub mod control;
mod disk;
mod metrics;
mod node;
mod raftnet;
mod serve;

pub use config::{ConfigError, NodeConfig};
pub use disk::DirBlobStore;
pub use node::{FRAME_BYTES_MAX, Node, NodeError};

/// Whether `bytes` decode as a store message from a peer SM, exactly as the daemon decodes
/// them (for fuzzing: bad input is an error, never a panic).
pub fn store_message_decodes(bytes: &[u8]) -> bool {
    raftnet::decode_store_message(bytes).is_ok()
}
