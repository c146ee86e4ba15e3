//! What the SM asks of the untrusted host: storage for sealed blobs.
//!
//! The host may lose, alter, replay or swap anything it stores; the SM authenticates and
//! version-checks everything it reads back (see [`crate::seal`]). A host that refuses to
//! store only denies service, which is out of scope.

use std::collections::BTreeMap;
use std::sync::Mutex;

use godwit_wire::EnclaveId;

/// The host failed to store or fetch a blob.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("host storage: {0}")]
pub struct HostError(pub String);

/// Storage of sealed blobs, provided by the host. Keys are (instance, slot); slot names are
/// 1–64 characters of `[A-Za-z0-9._-]`, safe as file names.
pub trait BlobStore: Send + Sync {
    /// Stores (or replaces) a blob.
    fn put(&self, enclave: EnclaveId, slot: &str, blob: &[u8]) -> Result<(), HostError>;
    /// Fetches a blob, `None` if there is none.
    fn get(&self, enclave: EnclaveId, slot: &str) -> Result<Option<Vec<u8>>, HostError>;
    /// Deletes a blob (absent blobs are not an error).
    fn delete(&self, enclave: EnclaveId, slot: &str) -> Result<(), HostError>;
}

/// Blobs held in memory: for tests, the simulator and the in-process demo.
#[derive(Default)]
pub struct MemoryBlobStore {
    blobs: Mutex<BTreeMap<(EnclaveId, String), Vec<u8>>>,
}

impl MemoryBlobStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(EnclaveId, String), Vec<u8>>> {
        // The map stays consistent even if a holder panicked: every operation is one insert
        // or remove.
        self.blobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every stored blob's key, for inspection by tests.
    pub fn keys(&self) -> Vec<(EnclaveId, String)> {
        self.lock().keys().cloned().collect()
    }
}

impl BlobStore for MemoryBlobStore {
    fn put(&self, enclave: EnclaveId, slot: &str, blob: &[u8]) -> Result<(), HostError> {
        self.lock()
            .insert((enclave, slot.to_owned()), blob.to_vec());
        Ok(())
    }

    fn get(&self, enclave: EnclaveId, slot: &str) -> Result<Option<Vec<u8>>, HostError> {
        Ok(self.lock().get(&(enclave, slot.to_owned())).cloned())
    }

    fn delete(&self, enclave: EnclaveId, slot: &str) -> Result<(), HostError> {
        self.lock().remove(&(enclave, slot.to_owned()));
        Ok(())
    }
}
