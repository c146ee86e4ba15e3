//! The attestation certificate chain: manufacturer root → device key → SM attestation key.
//!
//! Certificates are postcard-encoded structures signed with Ed25519 (RFC 8032, strict
//! verification). Each signature covers a domain-separation label and every field of the
//! certificate, so a signature made for one purpose can never be presented for another.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use godwit_wire::{HostId, Measurement};
use serde::{Deserialize, Serialize};

/// A manufacturer's root public key: the trust anchor a verifier's policy lists.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManufacturerRoot(pub VerifyingKey);

impl ManufacturerRoot {
    /// The key as hex, as written into configs and shown in refusals.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0.as_bytes())
    }

    /// Parses a root key from hex.
    pub fn from_hex(s: &str) -> Result<Self, ChainError> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| ChainError::MalformedKey)?;
        VerifyingKey::from_bytes(&bytes)
            .map(Self)
            .map_err(|_| ChainError::MalformedKey)
    }
}

impl std::fmt::Debug for ManufacturerRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ManufacturerRoot({})", &self.to_hex()[..8])
    }
}

/// The device's identity certificate, signed by the manufacturer at provisioning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCertificate {
    /// The host this device was provisioned as.
    pub host: HostId,
    /// The device's public identity key.
    pub device_key: VerifyingKey,
    /// The manufacturer root that signed this certificate.
    pub issuer: ManufacturerRoot,
    /// The manufacturer's signature over (label, host, device key).
    pub signature: Signature,
}

/// The SM's attestation certificate, signed by the device key when the SM boots: it binds
/// the SM's DICE-derived attestation key to the SM's measurement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmCertificate {
    /// The measurement of the SM that booted on the device.
    pub sm_measurement: Measurement,
    /// The attestation key derived for exactly that measurement.
    pub sm_key: VerifyingKey,
    /// The device key's signature over (label, measurement, attestation key).
    pub signature: Signature,
}

/// The whole chain an SM presents as its evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertChain {
    /// Manufacturer → device.
    pub device: DeviceCertificate,
    /// Device → SM.
    pub sm: SmCertificate,
}

/// What a verified chain establishes. Created only by [`CertChain::verify`]
/// (`non_exhaustive` keeps other crates from building one).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifiedChain {
    /// The host the device was provisioned as.
    pub host: HostId,
    /// The device's identity key.
    pub device_key: VerifyingKey,
    /// The SM's measurement.
    pub sm_measurement: Measurement,
    /// The SM's attestation key: the key that must sign the handshake transcript.
    pub sm_key: VerifyingKey,
}

/// Why a certificate chain was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// The device certificate names an issuer that is not among the trusted roots.
    #[error("device certificate issued by untrusted manufacturer root {presented}")]
    UntrustedRoot {
        /// The issuer the chain named, as hex.
        presented: String,
    },
    /// The manufacturer's signature over the device certificate does not verify.
    #[error("manufacturer signature on the device certificate does not verify")]
    DeviceSignature,
    /// The device's signature over the SM certificate does not verify.
    #[error("device signature on the SM certificate does not verify")]
    SmSignature,
    /// A key given as text is not a valid Ed25519 public key.
    #[error("not a valid Ed25519 public key")]
    MalformedKey,
}

const DEVICE_LABEL: &str = "godwit device certificate v1";
const SM_LABEL: &str = "godwit sm certificate v1";

fn device_tbs(host: &HostId, device_key: &VerifyingKey) -> Vec<u8> {
    godwit_wire::encode(&(DEVICE_LABEL, host, device_key))
}

fn sm_tbs(sm_measurement: &Measurement, sm_key: &VerifyingKey) -> Vec<u8> {
    godwit_wire::encode(&(SM_LABEL, sm_measurement, sm_key))
}

impl DeviceCertificate {
    pub(crate) fn issue(issuer: &SigningKey, host: HostId, device_key: VerifyingKey) -> Self {
        let signature = issuer.sign(&device_tbs(&host, &device_key));
        Self {
            host,
            device_key,
            issuer: ManufacturerRoot(issuer.verifying_key()),
            signature,
        }
    }
}

impl SmCertificate {
    pub(crate) fn issue(
        device: &SigningKey,
        sm_measurement: Measurement,
        sm_key: VerifyingKey,
    ) -> Self {
        let signature = device.sign(&sm_tbs(&sm_measurement, &sm_key));
        Self {
            sm_measurement,
            sm_key,
            signature,
        }
    }
}

impl CertChain {
    /// Largest encoded chain accepted from a peer.
    pub const ENCODED_BYTES_MAX: usize = 1024;

    /// Verifies the chain against the trusted `roots`: the issuer is trusted, the
    /// manufacturer signed the device certificate, the device signed the SM certificate.
    /// Policy on the SM measurement and host is the verifier's business, not the chain's.
    pub fn verify(&self, roots: &[ManufacturerRoot]) -> Result<VerifiedChain, ChainError> {
        let issuer = self.device.issuer;
        if !roots.contains(&issuer) {
            return Err(ChainError::UntrustedRoot {
                presented: issuer.to_hex(),
            });
        }
        issuer
            .0
            .verify_strict(
                &device_tbs(&self.device.host, &self.device.device_key),
                &self.device.signature,
            )
            .map_err(|_| ChainError::DeviceSignature)?;
        self.device
            .device_key
            .verify_strict(
                &sm_tbs(&self.sm.sm_measurement, &self.sm.sm_key),
                &self.sm.signature,
            )
            .map_err(|_| ChainError::SmSignature)?;
        Ok(VerifiedChain {
            host: self.device.host.clone(),
            device_key: self.device.device_key,
            sm_measurement: self.sm.sm_measurement,
            sm_key: self.sm.sm_key,
        })
    }
}
