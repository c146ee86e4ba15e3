//! The simulated backend: deterministic from a seed, with a timer only the test advances.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ed25519_dalek::Signature;
use godwit_wire::{HostId, Measurement};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

use crate::{
    BootEpoch, BootedSm, CertChain, DeviceIdentity, Hardware, NvCounter, SealingKey, TrustedInstant,
};

/// Advances one [`SimHardware`]'s trusted timer. Held by the test or simulator, never by
/// simulated host code, which therefore cannot move trusted time.
#[derive(Clone)]
pub struct SimClock(Arc<AtomicU64>);

impl SimClock {
    /// Moves the timer forward by `d`.
    pub fn advance(&self, d: Duration) {
        let add = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.0.fetch_add(add, Ordering::SeqCst);
    }

    /// Nanoseconds since this component booted.
    pub fn nanos(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A hardware component for tests and the simulator. Every random choice (boot epoch,
/// nonces, keys) comes from a ChaCha20 stream seeded by the caller.
pub struct SimHardware {
    sm: BootedSm,
    clock: Arc<AtomicU64>,
    rng: Mutex<ChaCha20Rng>,
    nv: NvCounter,
}

impl SimHardware {
    /// Boots a simulated component; `seed` decides its boot epoch and random stream, so a
    /// simulated reboot uses a new seed. Returns the component and its clock handle.
    pub fn new(
        identity: DeviceIdentity,
        sm_measurement: Measurement,
        seed: u64,
    ) -> (Self, SimClock) {
        Self::booted(identity, sm_measurement, seed, 0)
    }

    /// As [`SimHardware::new`], as the component's `count`th boot.
    pub fn booted(
        identity: DeviceIdentity,
        sm_measurement: Measurement,
        seed: u64,
        count: u64,
    ) -> (Self, SimClock) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut random = [0u8; 8];
        rng.fill_bytes(&mut random);
        let clock = Arc::new(AtomicU64::new(0));
        let hw = Self {
            sm: BootedSm::boot(identity, sm_measurement, BootEpoch::new(count, random)),
            clock: Arc::clone(&clock),
            rng: Mutex::new(rng),
            nv: NvCounter::volatile(),
        };
        (hw, SimClock(clock))
    }

    /// The component with `nv` as its monotonic counter (a simulated reboot keeps it).
    pub fn with_nv_counter(mut self, nv: NvCounter) -> Self {
        self.nv = nv;
        self
    }
}

impl Hardware for SimHardware {
    fn host(&self) -> &HostId {
        &self.sm.host
    }

    fn cert_chain(&self) -> &CertChain {
        &self.sm.chain
    }

    fn sm_measurement(&self) -> Measurement {
        self.sm.chain.sm.sm_measurement
    }

    fn sign_attestation(&self, message: &[u8]) -> Signature {
        self.sm.sign(message)
    }

    fn now(&self) -> TrustedInstant {
        TrustedInstant::new(self.sm.epoch, self.clock.load(Ordering::SeqCst))
    }

    fn boot_epoch(&self) -> BootEpoch {
        self.sm.epoch
    }

    fn sealing_key(&self, enclave: &Measurement) -> SealingKey {
        self.sm.sealing_key(enclave)
    }

    fn nv_counter(&self) -> &NvCounter {
        &self.nv
    }

    fn fill_random(&self, out: &mut [u8]) {
        // A poisoned lock means another thread panicked mid-draw; the stream is still a
        // valid ChaCha20 state, so keep using it.
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        rng.fill_bytes(out);
    }
}
