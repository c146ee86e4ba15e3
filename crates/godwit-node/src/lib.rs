//! The godwit host daemon (`godwit node`): the untrusted host around one SM.
//!
//! It dials and accepts TCP connections between SMs (length-delimited frames whose content
//! the SM seals), stores sealed blobs and the sealed records of the SM's store member on
//! disk, sleeps until the SM's next deadline (the SM reads its trusted timer itself when
//! woken), and serves the local control API for the hypervisor and operator. It runs no
//! consensus: the store member is inside the SM.

pub mod cluster;
pub mod config;
pub mod control;
mod disk;
#[cfg(feature = "hostile")]
mod hostile;
mod metrics;
mod node;
mod records;
mod serve;

pub use config::{ConfigError, NodeConfig, StoreConfig};
pub use disk::DirBlobStore;
pub use node::{FRAME_BYTES_MAX, Node, NodeError};
