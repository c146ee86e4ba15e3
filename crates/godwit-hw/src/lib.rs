//! The hardware component under the security monitor, behind the [`Hardware`] trait.
//!
//! There is no TEE hardware on our machines, so the backends here emulate one faithfully:
//! a device secret that never leaves the component, a manufacturer-certified device key,
//! DICE-style derivation of the SM's attestation key and of sealing keys from the device
//! secret and the SM's measurement, a trusted monotonic timer that no host-facing API can
//! set, and a random boot epoch held only in memory and new at every power cycle.
//!
//! * [`SoftHardware`] is the backend a host runs: its timer is the OS monotonic clock, its
//!   randomness the OS random source, its identity a directory written at provisioning.
//! * [`SimHardware`] is for tests and the simulator: a seeded random source and a timer
//!   that only the holder of its [`SimClock`] handle (the test) can advance.
//!
//! A TPM 2.0, Keystone or SGX backend implements the same trait; nothing above it changes.
//!
//! Contract: this crate (with the untrusted host) is the only one that reads the OS clock
//! or the OS random source; the workspace's clippy configuration forbids it elsewhere.

mod cert;
mod identity;
mod kdf;
mod nv;
mod sim;
mod soft;
mod time;

use ed25519_dalek::{Signature, Signer, SigningKey};
use godwit_wire::{HostId, Measurement};

pub use cert::{
    CertChain, ChainError, DeviceCertificate, ManufacturerRoot, SmCertificate, VerifiedChain,
};
pub use ed25519_dalek::{Signature as AttestationSignature, VerifyingKey};
pub use identity::{DeviceIdentity, IdentityError, Manufacturer, advance_boot_count};
pub use nv::{NvCounter, NvError};
pub use sim::{SimClock, SimHardware};
pub use soft::SoftHardware;
pub use time::{BootEpoch, TimeError, TrustedInstant};

use kdf::{Secret32, derive};

/// What the security monitor may ask of the hardware component it runs on.
///
/// Every method answers from inside the component: no host input reaches it, so the host
/// can neither move the timer nor learn a key.
pub trait Hardware: Send + Sync + 'static {
    /// The host this device was provisioned as (from its certificate).
    fn host(&self) -> &HostId;
    /// The chain manufacturer → device → SM attestation key, for this boot's SM.
    fn cert_chain(&self) -> &CertChain;
    /// The measurement of the SM this component booted.
    fn sm_measurement(&self) -> Measurement;
    /// Signs `message` with the SM's attestation key.
    fn sign_attestation(&self, message: &[u8]) -> Signature;
    /// Reads the trusted timer (claim 13).
    fn now(&self) -> TrustedInstant;
    /// This power cycle's epoch (claims 7, 14).
    fn boot_epoch(&self) -> BootEpoch;
    /// The sealing key for an enclave: KDF(device secret, SM measurement, enclave
    /// measurement).
    fn sealing_key(&self, enclave: &Measurement) -> SealingKey;
    /// The component's non-volatile monotonic counter (e.g. a TPM NV counter), which the
    /// SM uses to tell its files on the host's disk from older copies of them.
    fn nv_counter(&self) -> &NvCounter;
    /// Fills `out` from the component's random source.
    fn fill_random(&self, out: &mut [u8]);
}

/// Fills `out` from the OS random source: the emulated component's entropy.
pub(crate) fn os_random(out: &mut [u8]) {
    // Invariant: the OS random source is available on every supported platform; a
    // component without entropy could not create a key or run a protocol, so this is
    // fatal by design.
    #[allow(clippy::disallowed_methods)] // the component's own entropy source
    getrandom::fill(out).expect("the OS random source is unavailable");
}

/// A 32-byte symmetric key for sealing one enclave's data on this platform. Wiped on drop;
/// deliberately neither `Debug` nor `Display`.
pub struct SealingKey(Secret32);

impl SealingKey {
    /// The key bytes, for the sealing cipher.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// What both backends hold after boot: keys derived for this SM, never the device secret
/// itself (as in DICE, the unique device secret is out of reach once the SM runs).
struct BootedSm {
    host: HostId,
    cdi: Secret32,
    sm_key: SigningKey,
    chain: CertChain,
    epoch: BootEpoch,
}

impl BootedSm {
    fn boot(identity: DeviceIdentity, sm_measurement: Measurement, epoch: BootEpoch) -> Self {
        let cdi = derive(&identity.secret, "cdi", &[&sm_measurement.0]);
        let sm_key = SigningKey::from_bytes(&derive(&cdi, "sm attestation", &[]));
        let device_key = identity::device_signing_key(&identity.secret);
        let sm_cert = SmCertificate::issue(&device_key, sm_measurement, sm_key.verifying_key());
        Self {
            host: identity.cert.host.clone(),
            cdi,
            sm_key,
            chain: CertChain {
                device: identity.cert,
                sm: sm_cert,
            },
            epoch,
        }
    }

    fn sign(&self, message: &[u8]) -> Signature {
        self.sm_key.sign(message)
    }

    fn sealing_key(&self, enclave: &Measurement) -> SealingKey {
        SealingKey(derive(&self.cdi, "sealing", &[&enclave.0]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn identity(m: &Manufacturer, host: &str, secret: u8) -> DeviceIdentity {
        m.provision_from_secret(HostId::new(host).unwrap(), [secret; 32].into())
    }

    #[test]
    fn dice_keys_differ_when_the_sm_measurement_differs() {
        let m = Manufacturer::from_seed([1; 32]);
        let id = identity(&m, "host1", 7);
        let real = Measurement([0xaa; 32]);
        let modified = Measurement([0xab; 32]);
        let (a, _) = SimHardware::new(id.clone(), real, 1);
        let (b, _) = SimHardware::new(id.clone(), modified, 1);
        let (a2, _) = SimHardware::new(id, real, 2);
        // Another measurement: another attestation key and other sealing keys.
        assert_ne!(a.cert_chain().sm.sm_key, b.cert_chain().sm.sm_key);
        let e = Measurement([5; 32]);
        assert_ne!(a.sealing_key(&e).as_bytes(), b.sealing_key(&e).as_bytes());
        // The same SM on the same device after a reboot: same keys, new boot epoch.
        assert_eq!(a.cert_chain().sm.sm_key, a2.cert_chain().sm.sm_key);
        assert_eq!(a.sealing_key(&e).as_bytes(), a2.sealing_key(&e).as_bytes());
        assert_ne!(a.boot_epoch(), a2.boot_epoch());
        // A signature by the modified SM does not verify under the real SM's key.
        let sig = b.sign_attestation(b"transcript");
        assert!(
            a.cert_chain()
                .sm
                .sm_key
                .verify_strict(b"transcript", &sig)
                .is_err()
        );
        assert!(
            b.cert_chain()
                .sm
                .sm_key
                .verify_strict(b"transcript", &sig)
                .is_ok()
        );
    }

    #[test]
    fn sealing_keys_are_per_enclave_and_per_device() {
        let m = Manufacturer::from_seed([1; 32]);
        let sm = Measurement([0xaa; 32]);
        let (a, _) = SimHardware::new(identity(&m, "a", 1), sm, 1);
        let (b, _) = SimHardware::new(identity(&m, "b", 2), sm, 1);
        let e1 = Measurement([1; 32]);
        let e2 = Measurement([2; 32]);
        assert_ne!(a.sealing_key(&e1).as_bytes(), a.sealing_key(&e2).as_bytes());
        assert_ne!(a.sealing_key(&e1).as_bytes(), b.sealing_key(&e1).as_bytes());
    }

    #[test]
    fn chain_verifies_only_under_its_root() {
        let m = Manufacturer::from_seed([1; 32]);
        let other = Manufacturer::from_seed([2; 32]);
        let (hw, _) = SimHardware::new(identity(&m, "host1", 3), Measurement([9; 32]), 1);
        let v = hw.cert_chain().verify(&[m.root()]).unwrap();
        assert_eq!(v.host.as_str(), "host1");
        assert_eq!(v.sm_measurement, Measurement([9; 32]));
        assert!(matches!(
            hw.cert_chain().verify(&[other.root()]),
            Err(ChainError::UntrustedRoot { .. })
        ));
        // A chain whose SM certificate claims another measurement.
        let mut forged = hw.cert_chain().clone();
        forged.sm.sm_measurement = Measurement([8; 32]);
        assert_eq!(forged.verify(&[m.root()]), Err(ChainError::SmSignature));
        // A device certificate renamed to another host.
        let mut renamed = hw.cert_chain().clone();
        renamed.device.host = HostId::new("host2").unwrap();
        assert_eq!(
            renamed.verify(&[m.root()]),
            Err(ChainError::DeviceSignature)
        );
    }

    #[test]
    fn timestamps_across_boot_epochs_are_refused() {
        let m = Manufacturer::from_seed([1; 32]);
        let id = identity(&m, "host1", 3);
        let (before, clock) = SimHardware::new(id.clone(), Measurement([9; 32]), 1);
        let t0 = before.now();
        clock.advance(Duration::from_millis(5));
        assert_eq!(
            before.now().duration_since(t0),
            Ok(Duration::from_millis(5))
        );
        // Power cycle: same identity, new epoch; the old reading no longer counts.
        let (after, _) = SimHardware::new(id, Measurement([9; 32]), 2);
        assert!(matches!(
            after.now().duration_since(t0),
            Err(TimeError::EpochMismatch(..))
        ));
    }

    #[test]
    fn soft_hardware_timer_is_monotonic_and_epochs_are_fresh() {
        let m = Manufacturer::from_seed([1; 32]);
        let id = identity(&m, "host1", 3);
        let a = SoftHardware::boot(id.clone(), Measurement([9; 32]));
        let b = SoftHardware::boot(id, Measurement([9; 32]));
        assert_ne!(a.boot_epoch(), b.boot_epoch());
        let t0 = a.now();
        let t1 = a.now();
        assert_eq!(t1.is_at_or_after(t0), Ok(true));
        assert!(t1.duration_since(b.now()).is_err());
        let mut r1 = [0u8; 32];
        let mut r2 = [0u8; 32];
        a.fill_random(&mut r1);
        a.fill_random(&mut r2);
        assert_ne!(r1, r2);
    }
}
