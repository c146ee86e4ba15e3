//! The SM's side of the enclave ABI for one instance: sealing with rollback protection,
//! monotonic counters, trusted time, hardware randomness.

use std::collections::BTreeMap;
use std::sync::Arc;

use godwit_enclave::{AbiError, Services};
use godwit_hw::{Hardware, SealingKey};
use godwit_wire::{EnclaveId, Measurement};

use crate::host::{BlobStore, HostError};
use crate::seal::{self, BlobHeader, SealError};

/// Most sealed slots one instance may use.
pub const SLOTS_MAX: usize = 64;
/// Most monotonic counters one instance may create.
pub const COUNTERS_MAX: usize = 64;
/// Most versions of one slot sealed and not yet recorded by the store: a slot's blobs on
/// the host's disk stay bounded while the store is away.
pub const UNRECORDED_SEALS_MAX: u64 = 1024;

/// What the SM remembers of one sealed slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    /// The newest version sealed: the only one `unseal` accepts.
    pub(crate) version: u64,
    /// The incarnation that sealed it: an adopted instance's recorded versions were sealed
    /// by the lost one before it.
    pub(crate) incarnation: u64,
    /// Its plaintext size.
    pub(crate) len: usize,
    /// The newest version the store has recorded; older blobs can go.
    pub(crate) recorded: u64,
}

impl Slot {
    /// The versions this instance may have on the host's disk: the recorded one, and the
    /// ones it sealed since.
    fn held(&self) -> impl Iterator<Item = u64> {
        std::iter::once(self.recorded)
            .filter(|v| *v > 0)
            .chain(self.recorded + 1..=self.version)
    }

    fn expected(&self) -> seal::Expected {
        seal::Expected {
            version: self.version,
            incarnation: self.incarnation,
        }
    }
}

/// The host's name for one version of a slot's blob. Every version is its own blob, kept
/// until the store records a newer one: an instance started again from the store's record
/// then finds exactly the version recorded, consistent with the recorded counters.
pub(crate) fn blob_name(slot: &str, version: u64) -> String {
    format!("{slot}@{version}")
}

/// Per-instance state the SM keeps beside the enclave: its sealing key, the newest version
/// sealed into each slot, and its monotonic counters.
pub struct InstanceServices {
    pub(crate) id: EnclaveId,
    pub(crate) app: Measurement,
    /// The ledger's incarnation of this instance: every seal is bound to it.
    pub(crate) incarnation: u64,
    key: SealingKey,
    /// Per slot: the newest version sealed (the rollback reference) and its plaintext size.
    pub(crate) slots: BTreeMap<String, Slot>,
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
        incarnation: u64,
        hw: Arc<dyn Hardware>,
        blobs: Arc<dyn BlobStore>,
    ) -> Self {
        Self {
            id,
            app,
            incarnation,
            key: hw.sealing_key(&app),
            slots: BTreeMap::new(),
            counters: BTreeMap::new(),
            hw,
            blobs,
            last_refusal: None,
        }
    }

    /// Seals `data` as the next version of `slot` and hands the blob to the host. The
    /// version advances only once the host accepted the blob.
    pub(crate) fn seal_slot(&mut self, slot: &str, data: &[u8]) -> Result<(), AbiError> {
        let current = self.slots.get(slot).copied();
        if current.is_none() && self.slots.len() >= SLOTS_MAX {
            return Err(AbiError::Limit);
        }
        let (version, recorded) = match current {
            Some(s) => (s.version.checked_add(1).ok_or(AbiError::Limit)?, s.recorded),
            None => (1, 0),
        };
        if version - recorded > UNRECORDED_SEALS_MAX {
            tracing::warn!(enclave = %self.id, slot, "too many seals the store has not recorded");
            return Err(AbiError::Limit);
        }
        self.put_sealed(slot, version, self.incarnation, data)
            .map_err(|e| {
                tracing::warn!(enclave = %self.id, slot, error = %e, "host refused a sealed blob");
                AbiError::HostUnavailable
            })?;
        self.slots.insert(
            slot.to_owned(),
            Slot {
                version,
                incarnation: self.incarnation,
                len: data.len(),
                recorded,
            },
        );
        Ok(())
    }

    /// Seals `data` as version `version` of `slot` from incarnation `incarnation`, under a
    /// fresh nonce, and hands the blob to the host.
    fn put_sealed(
        &self,
        slot: &str,
        version: u64,
        incarnation: u64,
        data: &[u8],
    ) -> Result<(), HostError> {
        let header = BlobHeader {
            format: seal::FORMAT,
            enclave: self.id,
            app: self.app,
            slot: slot.to_owned(),
            version,
            incarnation,
        };
        let mut nonce = [0u8; 12];
        self.hw.fill_random(&mut nonce);
        let blob = seal::seal(&self.key, &header, nonce, data);
        self.blobs.put(self.id, &blob_name(slot, version), &blob)
    }

    /// Seals a migrated slot at exactly the version and incarnation it had at the source:
    /// a migrated instance keeps its version numbers, so they never go back across hosts.
    pub(crate) fn reseal_slot(&mut self, s: &godwit_proto::SealedSlot) -> Result<(), SealError> {
        let slot = s.slot.as_str();
        valid_name(slot.as_bytes())
            .map_err(|_| SealError::Malformed(format!("slot name {slot:?}")))?;
        if s.data.len() > godwit_enclave::SEAL_BYTES_MAX
            || (self.slots.len() >= SLOTS_MAX && !self.slots.contains_key(slot))
        {
            return Err(SealError::Malformed("sealed data over the limits".into()));
        }
        self.put_sealed(slot, s.version, s.incarnation, &s.data)
            .map_err(|_| SealError::Missing)?;
        // COMMIT records these versions before the instance runs here.
        self.slots.insert(
            slot.to_owned(),
            Slot {
                version: s.version,
                incarnation: s.incarnation,
                len: s.data.len(),
                recorded: s.version,
            },
        );
        Ok(())
    }

    /// Sets the counters carried by a migration.
    pub(crate) fn set_counters(&mut self, counters: &[(String, u64)]) -> Result<(), String> {
        if counters.len() > COUNTERS_MAX {
            return Err(format!(
                "{} counters, at most {COUNTERS_MAX}",
                counters.len()
            ));
        }
        for (name, value) in counters {
            valid_name(name.as_bytes()).map_err(|_| format!("counter name {name:?}"))?;
            self.counters.insert(name.clone(), *value);
        }
        Ok(())
    }

    /// The counters, for a migration.
    pub(crate) fn counters(&self) -> Vec<(String, u64)> {
        self.counters.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Every sealed slot, opened. Fails on the first blob that does not open, so a
    /// migration never carries data the SM could not verify.
    pub(crate) fn unseal_all(
        &mut self,
    ) -> Result<Vec<godwit_proto::SealedSlot>, (String, SealError)> {
        let slots: Vec<(String, Slot)> = self.slots.iter().map(|(s, v)| (s.clone(), *v)).collect();
        slots
            .into_iter()
            .map(|(slot, known)| match self.unseal_slot(&slot) {
                Ok(data) => Ok(godwit_proto::SealedSlot {
                    slot,
                    version: known.version,
                    incarnation: known.incarnation,
                    data: zeroize::Zeroizing::new(data),
                }),
                Err(e) => Err((slot, e)),
            })
            .collect()
    }

    /// Deletes every blob this instance may still have on the host's storage: each slot's
    /// versions from the recorded one to the newest.
    pub(crate) fn delete_blobs(&self) {
        for (slot, s) in &self.slots {
            for version in s.held() {
                self.delete_blob(slot, version);
            }
        }
    }

    fn delete_blob(&self, slot: &str, version: u64) {
        if let Err(e) = self.blobs.delete(self.id, &blob_name(slot, version)) {
            tracing::warn!(enclave = %self.id, slot, version, error = %e, "host failed to delete a sealed blob");
        }
    }

    /// The store recorded `d`: versions older than the recorded ones are no longer needed.
    pub(crate) fn recorded(&mut self, d: &godwit_proto::DurableState) {
        let mut stale = Vec::new();
        for (slot, v) in &d.sealed {
            if let Some(s) = self.slots.get_mut(slot)
                && v.version > s.recorded
                && v.version <= s.version
            {
                stale.extend(
                    s.held()
                        .filter(|old| *old < v.version)
                        .map(|old| (slot.clone(), old)),
                );
                s.recorded = v.version;
            }
        }
        for (slot, version) in stale {
            self.delete_blob(&slot, version);
        }
    }

    /// Fetches `slot`'s newest blob from the host and opens it, refusing anything but
    /// exactly the newest version this SM sealed (or, for an adopted instance, recorded),
    /// from the incarnation that sealed it.
    pub(crate) fn unseal_slot(&mut self, slot: &str) -> Result<Vec<u8>, SealError> {
        let known = *self.slots.get(slot).ok_or(SealError::NotSealed)?;
        let blob = self
            .blobs
            .get(self.id, &blob_name(slot, known.version))
            .ok()
            .flatten()
            .ok_or(SealError::Missing)?;
        let data = seal::open(&self.key, self.id, self.app, slot, known.expected(), &blob)?;
        if let Some(s) = self.slots.get_mut(slot) {
            s.len = data.len();
        }
        Ok(data)
    }

    /// What must survive a restart: sealed versions and counters.
    pub(crate) fn durable(&self) -> godwit_proto::DurableState {
        godwit_proto::DurableState {
            sealed: self
                .slots
                .iter()
                .map(|(k, s)| {
                    let v = godwit_proto::SlotVersion {
                        version: s.version,
                        incarnation: s.incarnation,
                        len: s.len as u64,
                    };
                    (k.clone(), v)
                })
                .collect(),
            counters: self.counters.clone(),
        }
    }

    /// Takes the durable state the store recorded for an adopted instance, which is
    /// `incarnation`: exactly the recorded versions (sealed by earlier incarnations),
    /// consistent with the recorded counters. The lost instance may have sealed newer
    /// versions the store never heard of (their results were never released); they carry
    /// its incarnation, so they are never opened, and this instance's own seals, under its
    /// new incarnation, may reuse their numbers without ever being mistaken for them.
    pub(crate) fn adopt_durable(&mut self, d: &godwit_proto::DurableState, incarnation: u64) {
        self.incarnation = incarnation;
        for (slot, v) in &d.sealed {
            let slot_state = Slot {
                version: v.version,
                incarnation: v.incarnation,
                len: usize::try_from(v.len).unwrap_or(usize::MAX),
                recorded: v.version,
            };
            self.slots.insert(slot.clone(), slot_state);
        }
        self.counters
            .extend(d.counters.iter().map(|(k, v)| (k.clone(), *v)));
    }
}

impl Services for InstanceServices {
    fn seal(&mut self, slot: &[u8], data: &[u8]) -> Result<(), AbiError> {
        let slot = valid_name(slot)?;
        self.seal_slot(slot, data)
    }

    fn unseal(&mut self, slot: &[u8]) -> Result<Vec<u8>, AbiError> {
        let slot = valid_name(slot)?;
        if !self.slots.contains_key(slot) {
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
