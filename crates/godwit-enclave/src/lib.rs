//! WebAssembly enclaves on wasmtime: loading and measuring applications, the enclave ABI
//! the SM provides, bounded ecalls, and page-granular snapshot and restore.
//!
//! Contract: no I/O and no clock. What an enclave may ask of the outside world goes through
//! the [`Services`] trait, which the security monitor implements; everything an enclave or
//! a module can do wrong comes back as an [`EnclaveError`], never a panic.
//!
//! An enclave is a module plus its [`Manifest`](godwit_wire::Manifest). At load time the
//! module is checked (imports only from the ABI, one 32-bit memory, no start function, no
//! instruction that changes tables or drops segments at run time) and rewritten to export
//! every mutable global, so that a snapshot captures the whole execution state: every
//! linear-memory page and every mutable global.

mod abi;
pub mod examples;
mod instance;
mod module;

pub use abi::{
    AbiError, LOG_BYTES_MAX, NAME_BYTES_MAX, RANDOM_BYTES_MAX, SEAL_BYTES_MAX, Services,
};
pub use instance::{Enclave, PAGE_BYTES, Restoring, Snapshot, WASM_PAGE_BYTES};
pub use module::{ALLOC_EXPORT, LoadedModule, MEMORY_EXPORT};

use godwit_wire::ManifestError;

/// Everything that can go wrong loading, calling or restoring an enclave.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnclaveError {
    /// The module is larger than the SM accepts.
    #[error("module of {len} bytes exceeds the limit of {max} bytes")]
    ModuleTooLarge {
        /// Bytes presented.
        len: usize,
        /// Bytes allowed.
        max: usize,
    },
    /// The manifest is invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The bytes are not a valid WebAssembly module.
    #[error("invalid module: {0}")]
    Invalid(String),
    /// The module uses something the SM cannot run or snapshot faithfully.
    #[error("unsupported: the module uses {0}")]
    Unsupported(String),
    /// The module imports something the ABI does not provide.
    #[error("unknown import {0}")]
    UnknownImport(String),
    /// An import or ABI export has the wrong type.
    #[error("{0} has the wrong signature")]
    WrongSignature(String),
    /// A required export is missing.
    #[error("the module does not export {0}")]
    MissingExport(String),
    /// Instantiation failed (e.g. initial memory above the manifest's limit).
    #[error("instantiation failed: {0}")]
    Instantiate(String),
    /// The module has no ecall of that name.
    #[error("no ecall named {0:?}")]
    NoSuchEcall(String),
    /// The argument exceeds the manifest's `max_arg_bytes`.
    #[error("argument of {len} bytes exceeds the manifest's limit of {max}")]
    ArgumentTooLarge {
        /// Bytes presented.
        len: usize,
        /// Bytes allowed.
        max: usize,
    },
    /// The result exceeds the manifest's `max_result_bytes`.
    #[error("result of {len} bytes exceeds the manifest's limit of {max}")]
    ResultTooLarge {
        /// Bytes returned.
        len: usize,
        /// Bytes allowed.
        max: usize,
    },
    /// The enclave pointed the SM outside its memory.
    #[error("the enclave returned a buffer outside its memory")]
    BadPointer,
    /// The ecall used up its fuel and was stopped.
    #[error("ecall stopped after using its fuel budget of {fuel}")]
    OutOfFuel {
        /// The budget it had.
        fuel: u64,
    },
    /// The ecall trapped.
    #[error("ecall trapped: {0}")]
    Trap(String),
    /// The ecall returned an error status.
    #[error("ecall failed with status {code}")]
    Failed {
        /// The negative status the enclave returned.
        code: i64,
    },
    /// State offered for a restore does not fit the module.
    #[error("state does not fit the module: {0}")]
    SnapshotMismatch(String),
    /// A memory size above the manifest's limit.
    #[error("memory of {requested} bytes exceeds the manifest's limit of {max}")]
    MemoryLimit {
        /// Bytes requested.
        requested: u64,
        /// Bytes allowed.
        max: u64,
    },
}

/// The WebAssembly engine enclaves run on: one per SM, shared by all instances.
pub struct Runtime {
    engine: wasmtime::Engine,
}

impl Runtime {
    /// An engine configured for enclaves: fuel metering on; threads, shared or 64-bit
    /// memories, multiple memories and GC off.
    pub fn new() -> Result<Self, EnclaveError> {
        let mut config = wasmtime::Config::new();
        config
            .consume_fuel(true)
            .wasm_multi_memory(false)
            .wasm_memory64(false)
            .wasm_custom_page_sizes(false);
        let engine = wasmtime::Engine::new(&config)
            .map_err(|e| EnclaveError::Instantiate(format!("{e:#}")))?;
        Ok(Self { engine })
    }
}

/// Reads a module from text or binary: WebAssembly text (`.wat`) is compiled to binary,
/// binary passes through. The measurement covers the binary.
pub fn module_from_source(bytes: &[u8]) -> Result<Vec<u8>, EnclaveError> {
    if bytes.starts_with(b"\0asm") {
        return Ok(bytes.to_vec());
    }
    wat::parse_bytes(bytes)
        .map(|b| b.into_owned())
        .map_err(|e| EnclaveError::Invalid(e.to_string()))
}
