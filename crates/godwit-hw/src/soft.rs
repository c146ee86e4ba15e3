//! The software backend a host runs.

use std::time::Instant;

use ed25519_dalek::Signature;
use godwit_wire::{HostId, Measurement};

use crate::{
    BootEpoch, BootedSm, CertChain, DeviceIdentity, Hardware, NvCounter, SealingKey, TrustedInstant,
};

/// The emulated hardware component of a real host.
///
/// Timer: the OS monotonic clock (`CLOCK_MONOTONIC`), which no API can set or step; the
/// emulation trusts the kernel for it as a real part trusts its oscillator. Randomness: the
/// OS random source. Boot epoch: drawn afresh at every [`SoftHardware::boot`], never stored.
pub struct SoftHardware {
    sm: BootedSm,
    start: Instant,
    nv: NvCounter,
}

impl SoftHardware {
    /// Powers the component on with a provisioned identity and measures the SM it boots.
    pub fn boot(identity: DeviceIdentity, sm_measurement: Measurement) -> Self {
        Self::boot_counted(identity, sm_measurement, 0)
    }

    /// As [`SoftHardware::boot`], as the `count`th boot of this component (see
    /// [`crate::advance_boot_count`]).
    pub fn boot_counted(identity: DeviceIdentity, sm_measurement: Measurement, count: u64) -> Self {
        let mut random = [0u8; 8];
        crate::os_random(&mut random);
        Self {
            sm: BootedSm::boot(identity, sm_measurement, BootEpoch::new(count, random)),
            #[allow(clippy::disallowed_methods)] // the hardware timer itself
            start: Instant::now(),
            nv: NvCounter::volatile(),
        }
    }

    /// The component with `nv` as its monotonic counter (see [`NvCounter::open`]).
    pub fn with_nv_counter(mut self, nv: NvCounter) -> Self {
        self.nv = nv;
        self
    }
}

impl Hardware for SoftHardware {
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
        let nanos = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        TrustedInstant::new(self.sm.epoch, nanos)
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
        crate::os_random(out);
    }
}
