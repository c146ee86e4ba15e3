//! Sealing of everything the store writes to the host's disk: log entries, the vote, the
//! committed log id, snapshots. AES-256-GCM under a key the hardware derives for this SM's
//! store (device secret + SM measurement), with the item's kind and index as associated
//! data, so the host can neither read an item, alter it, nor move it to another place.

use std::sync::Arc;

use godwit_hw::Hardware;
use godwit_wire::Measurement;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

/// Why a stored item was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stored {what} failed authentication: corrupted or not written by this SM")]
pub struct Corrupt {
    /// The item (e.g. "log entry 42", "vote").
    pub what: String,
}

/// Seals and opens the store's items with this SM's store key.
pub struct Sealer {
    key: LessSafeKey,
    hw: Arc<dyn Hardware>,
}

impl Sealer {
    /// The identity under which the hardware derives the store's key (the store is an
    /// SM-internal "enclave" for key derivation purposes).
    pub fn key_identity() -> Measurement {
        Measurement::of_parts("godwit store v1", &[])
    }

    /// The sealer of the SM running on `hw`.
    pub fn new(hw: Arc<dyn Hardware>) -> Self {
        let key = hw.sealing_key(&Self::key_identity());
        // Invariant: sealing keys are 32 bytes, AES-256's key length.
        let key =
            LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key.as_bytes()).expect("32-byte key"));
        Self { key, hw }
    }

    /// The component whose key this is.
    pub(crate) fn hardware(&self) -> &Arc<dyn Hardware> {
        &self.hw
    }

    /// `nonce ‖ ciphertext ‖ tag` of `value`, bound to `label`.
    pub fn seal(&self, label: &[u8], value: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        self.hw.fill_random(&mut nonce);
        let mut out = Vec::with_capacity(NONCE_LEN + value.len() + 16);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(value);
        let mut body = out.split_off(NONCE_LEN);
        // Invariant: ring fails only beyond GCM's 64 GiB message limit.
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(label),
                &mut body,
            )
            .expect("within AES-GCM's limit");
        out.extend_from_slice(&body);
        out
    }

    /// Opens what [`Sealer::seal`] produced for `label`.
    pub fn open(
        &self,
        label: &[u8],
        sealed: &[u8],
        what: impl FnOnce() -> String,
    ) -> Result<Vec<u8>, Corrupt> {
        self.try_open(label, sealed)
            .ok_or_else(|| Corrupt { what: what() })
    }

    fn try_open(&self, label: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN + 16 {
            return None;
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = body.to_vec();
        let len = self
            .key
            .open_in_place(nonce, Aad::from(label), &mut body)
            .ok()?
            .len();
        body.truncate(len);
        Some(body)
    }
}
