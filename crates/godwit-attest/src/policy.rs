//! What a verifier accepts, and why it refuses.

use godwit_hw::{CertChain, ChainError, ManufacturerRoot, VerifyingKey};
use godwit_wire::{HostId, Measurement};

/// A verifier's policy: which manufacturers, SM builds and (optionally) hosts it trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Trusted manufacturer roots.
    pub roots: Vec<ManufacturerRoot>,
    /// SM measurements allowed to take part.
    pub allowed_sm: Vec<Measurement>,
    /// Hosts allowed to take part; `None` allows any host the roots certified.
    pub allowed_hosts: Option<Vec<HostId>>,
}

/// Why a peer was refused. Each variant names the check, what was expected and what was
/// presented, so an operator can see at once which side is misconfigured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The peer speaks another protocol version.
    #[error("protocol version: expected {expected}, presented {presented}")]
    Version {
        /// Ours.
        expected: u16,
        /// Theirs.
        presented: u16,
    },
    /// The device certificate's issuer is not a trusted root.
    #[error("manufacturer root: expected one of [{expected}], presented {presented}")]
    UntrustedRoot {
        /// The trusted roots, as hex.
        expected: String,
        /// The root the chain named.
        presented: String,
    },
    /// A certificate signature does not verify.
    #[error("certificate chain: {0}")]
    Chain(String),
    /// The SM's measurement is not allowed.
    #[error("SM measurement: expected one of [{expected}], presented {presented}")]
    SmNotAllowed {
        /// Allowed measurements, as hex.
        expected: String,
        /// The peer's.
        presented: Measurement,
    },
    /// The host is not allowed.
    #[error("host: expected one of [{expected}], presented {presented}")]
    HostNotAllowed {
        /// Allowed hosts.
        expected: String,
        /// The peer's.
        presented: HostId,
    },
    /// The peer is not the host this side meant to reach.
    #[error("peer identity: expected host {expected}, presented {presented}")]
    WrongPeer {
        /// The host dialled.
        expected: HostId,
        /// The host whose evidence came back.
        presented: HostId,
    },
    /// The peer presented this side's own device: messages reflected back to their sender.
    #[error("reflection: the peer presented this host's own device key")]
    Reflection,
    /// The signature over the transcript does not verify under the SM's attestation key.
    #[error("transcript signature does not verify under the peer's attestation key")]
    TranscriptSignature,
    /// The key-confirmation MAC is wrong: the peer does not hold the same K.
    #[error("key confirmation failed")]
    KeyConfirmation,
    /// The key exchange produced a non-contributory (all-zero) secret.
    #[error("key exchange: the peer's ephemeral key is of low order")]
    WeakKeyExchange,
}

/// The identity of a peer whose evidence verified under this side's policy, in a
/// handshake whose transcript its SM signed. Only the handshake creates one; code that
/// releases keys or enclave state takes it as proof that the checks ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedPeer {
    host: HostId,
    device_key: VerifyingKey,
    sm_measurement: Measurement,
}

impl VerifiedPeer {
    /// The peer's host (from its device certificate).
    pub fn host(&self) -> &HostId {
        &self.host
    }
    /// The peer's device identity key.
    pub fn device_key(&self) -> &VerifyingKey {
        &self.device_key
    }
    /// The peer SM's measurement.
    pub fn sm_measurement(&self) -> Measurement {
        self.sm_measurement
    }
}

fn list<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Policy {
    /// Checks a chain and the policy, and that the transcript signature verifies under the
    /// chain's attestation key. `expected_host` is the host this side dialled (initiator);
    /// `own_device` is this side's device key, to detect reflection.
    pub(crate) fn verify(
        &self,
        chain: &CertChain,
        signed: &[u8],
        signature: &godwit_hw::AttestationSignature,
        expected_host: Option<&HostId>,
        own_device: &VerifyingKey,
    ) -> Result<VerifiedPeer, Refusal> {
        let v = chain.verify(&self.roots).map_err(|e| match e {
            ChainError::UntrustedRoot { presented } => Refusal::UntrustedRoot {
                expected: list(
                    &self
                        .roots
                        .iter()
                        .map(ManufacturerRoot::to_hex)
                        .collect::<Vec<_>>(),
                ),
                presented,
            },
            other => Refusal::Chain(other.to_string()),
        })?;
        if v.device_key == *own_device {
            return Err(Refusal::Reflection);
        }
        if !self.allowed_sm.contains(&v.sm_measurement) {
            return Err(Refusal::SmNotAllowed {
                expected: list(&self.allowed_sm),
                presented: v.sm_measurement,
            });
        }
        if let Some(allowed) = &self.allowed_hosts
            && !allowed.contains(&v.host)
        {
            return Err(Refusal::HostNotAllowed {
                expected: list(allowed),
                presented: v.host,
            });
        }
        if let Some(expected) = expected_host
            && *expected != v.host
        {
            return Err(Refusal::WrongPeer {
                expected: expected.clone(),
                presented: v.host,
            });
        }
        v.sm_key
            .verify_strict(signed, signature)
            .map_err(|_| Refusal::TranscriptSignature)?;
        Ok(VerifiedPeer {
            host: v.host,
            device_key: v.device_key,
            sm_measurement: v.sm_measurement,
        })
    }
}
