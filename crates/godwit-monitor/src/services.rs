//! The SM's side of the enclave ABI for one instance: sealing with rollback protection,
//! monotonic counters, trusted time, hardware randomness.

use std::collections::BTreeMap;
use std::sync::Arc;

use godwit_enclave::{AbiError, Services};
use godwit_hw::{Hardware, SealingKey};
use godwit_wire::{EnclaveId, Measurement};

use crate::host::BlobStore;
use crate::seal::{self, BlobHeader, SealError};

/// Most sealed slots one instance may use.
pub const SLOTS_MAX: usize = 64;
/// Most monotonic counters one instance may create.
pub const COUNTERS_MAX: usize = 64;

/// Per-instance state the SM keeps beside the enclave: its sealing key, the newest version
/// sealed into each slot, and its monotonic counters.
pub struct InstanceServices {
    pub(crate) id: EnclaveId,
    pub(crate) app: Measurement,
    key: SealingKey,
    /// Newest version sealed per slot: the rollback reference.
    pub(crate) versions: BTreeMap<String, u64>,
    pub(crate) counters: BTreeMap<String, u64>,
    hw: Arc<dyn Hardware>,
    blobs: Arc<dyn BlobStore>,
    /// The last refusal of a blob the host handed back, for the operator.
    pub(crate) last_refusal: Option<SealError>,
}

/// Checks a slot or counter name: 1–64 characters of `[A-Za-z0-9._-]`.
pub(crate) fn valid_name(name: &[u8]) -> Result<&str, AbiError> {
    let ok = !name.is_empty()
        && name.len() <= godwit_enclave::NAME_BYTES_MAX
        && name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !ok {
        return Err(AbiError::Invalid);
    }
    // Invariant: ASCII checked just above.
    Ok(std::str::from_utf8(name).expect("ASCII is UTF-8"))
}

impl InstanceServices {
    pub(crate) fn new(
        id: EnclaveId,
        app: Measurement,
        hw: Arc<dyn Hardware>,
        blobs: Arc<dyn BlobStore>,
    ) -> Self {
        Self {
            id,
            app,
            key: hw.sealing_key(&app),
            versions: BTreeMap::new(),
            counters: BTreeMap::new(),
            hw,
            blobs,
            last_refusal: None,
        }
    }

    /// Seals `data` as the next version of `slot` and hands the blob to the host. The
    /// version advances only once the host accepted the blob.
    pub(crate) fn seal_slot(&mut self, slot: &str, data: &[u8]) -> Result<(), AbiError> {
        let current = self.versions.get(slot).copied();
        if current.is_none() && self.versions.len() >= SLOTS_MAX {
            return Err(AbiError::Limit);
        }
        let version = current.unwrap_or(0).checked_add(1).ok_or(AbiError::Limit)?;
        let header = BlobHeader {
            format: 1,
            enclave: self.id,
            app: self.app,
            slot: slot.to_owned(),
            version,
        };
        let mut nonce = [0u8; 12];
        self.hw.fill_random(&mut nonce);
        let blob = seal::seal(&self.key, &header, nonce, data);
        self.blobs.put(self.id, slot, &blob).map_err(|e| {
            tracing::warn!(enclave = %self.id, slot, error = %e, "host refused a sealed blob");
            AbiError::HostUnavailable
        })?;
        self.versions.insert(slot.to_owned(), version);
        Ok(())
    }

    /// Fetches `slot`'s blob from the host and opens it, refusing anything but the newest
    /// version this SM sealed.
    pub(crate) fn unseal_slot(&mut self, slot: &str) -> Result<Vec<u8>, SealError> {
        let newest = *self.versions.get(slot).ok_or(SealError::NotSealed)?;
        let blob = self
            .blobs
            .get(self.id, slot)
            .ok()
            .flatten()
            .ok_or(SealError::Missing)?;
        seal::open(&self.key, self.id, self.app, slot, newest, &blob)
    }
}

impl Services for InstanceServices {
    fn seal(&mut self, slot: &[u8], data: &[u8]) -> Result<(), AbiError> {
        let slot = valid_name(slot)?;
        self.seal_slot(slot, data)
    }

    fn unseal(&mut self, slot: &[u8]) -> Result<Vec<u8>, AbiError> {
        let slot = valid_name(slot)?;
        if !self.versions.contains_key(slot) {
            return Err(AbiError::NotFound);
        }
        self.unseal_slot(slot).map_err(|e| {
            tracing::warn!(enclave = %self.id, slot, error = %e, "refused a sealed blob from the host");
            self.last_refusal = Some(e);
            AbiError::Integrity
        })
    }

    fn counter_create(&mut self, name: &[u8]) -> Result<(), AbiError> {
        let name = valid_name(name)?;
        if self.counters.contains_key(name) {
            return Err(AbiError::Exists);
        }
        if self.counters.len() >= COUNTERS_MAX {
            return Err(AbiError::Limit);
        }
        self.counters.insert(name.to_owned(), 0);
        Ok(())
    }

    fn counter_increment(&mut self, name: &[u8]) -> Result<u64, AbiError> {
        let c = self
            .counters
            .get_mut(valid_name(name)?)
            .ok_or(AbiError::NotFound)?;
        // Counters are reported to enclaves as non-negative i64 values.
        if *c >= i64::MAX as u64 {
            return Err(AbiError::Limit);
        }
        *c += 1;
        Ok(*c)
    }

    fn counter_read(&mut self, name: &[u8]) -> Result<u64, AbiError> {
        self.counters
            .get(valid_name(name)?)
            .copied()
            .ok_or(AbiError::NotFound)
    }

    fn time_ms(&mut self) -> u64 {
        self.hw.now().nanos_since_boot() / 1_000_000
    }

    fn random(&mut self, out: &mut [u8]) {
        self.hw.fill_random(out);
    }

    fn log(&mut self, line: &[u8]) {
        tracing::info!(target: "enclave", enclave = %self.id, "{}", String::from_utf8_lossy(line));
    }
}
