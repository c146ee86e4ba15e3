//! The attested handshake between two SMs: SIGMA-style mutual authentication ("SIGn and
//! MAc", Krawczyk, CRYPTO 2003) with X25519 ephemeral keys, Ed25519 signatures by the SMs'
//! DICE-certified attestation keys, and HMAC-SHA-256 key confirmation, as in TLS 1.3's
//! CertificateVerify/Finished pair (RFC 8446 §4.4). Three messages, one and a half round
//! trips:
//!
//! ```text
//! initiator                                              responder
//!   ClientHello { version, n_i, e_i }            ──▶
//!                                                ◀──   ServerHello { n_r, e_r, chain_r,
//!                                                        sig_r(transcript), confirm_r }
//!   ClientFinish { chain_i, sig_i(transcript),   ──▶
//!                  confirm_i }
//! ```
//!
//! Every signature and confirmation covers the running transcript hash of everything sent
//! before it, including both nonces and both ephemeral keys, so evidence is fresh and bound
//! to this exchange. Signatures carry the signer's role, so neither side's messages can be
//! reflected to it as the other's; a peer presenting this side's own device is refused.
//!
//! The types are one per phase: [`Initiator::start`] gives an [`AwaitServerHello`], whose
//! `receive` gives the [`Session`]; [`Responder::respond`] gives an
//! [`AwaitClientFinish`], whose `receive` gives the [`Session`]. No phase can be skipped.

use std::sync::Arc;

use godwit_hw::{AttestationSignature, CertChain, Hardware, VerifyingKey};
use godwit_wire::{HostId, decode, encode};
use ring::hmac;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};

use crate::keys::{HandshakeSecret, SharedKey};
use crate::policy::{Policy, Refusal, VerifiedPeer};
use crate::{AttestError, Channel, Role};

/// The protocol version this SM speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// Largest handshake message accepted from a peer.
pub const HANDSHAKE_MESSAGE_BYTES_MAX: usize = 4096;

const RESPONDER_SIGNATURE_LABEL: &[u8] = b"godwit attestation v1: responder";
const INITIATOR_SIGNATURE_LABEL: &[u8] = b"godwit attestation v1: initiator";

/// The messages of the handshake, as they travel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HandshakeMessage {
    /// Initiator → responder.
    ClientHello {
        /// [`PROTOCOL_VERSION`].
        version: u16,
        /// Fresh random nonce.
        nonce: [u8; 32],
        /// Ephemeral X25519 public key.
        ephemeral: [u8; 32],
    },
    /// Responder → initiator.
    ServerHello {
        /// Fresh random nonce.
        nonce: [u8; 32],
        /// Ephemeral X25519 public key.
        ephemeral: [u8; 32],
        /// The responder's evidence.
        chain: Box<CertChain>,
        /// Its attestation key's signature over the transcript.
        signature: AttestationSignature,
        /// HMAC(fk_r, transcript): proof it holds the handshake secret.
        confirm: [u8; 32],
    },
    /// Initiator → responder.
    ClientFinish {
        /// The initiator's evidence.
        chain: Box<CertChain>,
        /// Its attestation key's signature over the transcript.
        signature: AttestationSignature,
        /// HMAC(fk_i, transcript).
        confirm: [u8; 32],
    },
}

impl HandshakeMessage {
    /// Decodes a handshake message from a peer (bounded, typed errors).
    pub fn decode(bytes: &[u8]) -> Result<Self, AttestError> {
        Ok(decode(bytes, HANDSHAKE_MESSAGE_BYTES_MAX)?)
    }

    fn name(&self) -> &'static str {
        match self {
            Self::ClientHello { .. } => "ClientHello",
            Self::ServerHello { .. } => "ServerHello",
            Self::ClientFinish { .. } => "ClientFinish",
        }
    }
}

/// The running transcript hash: every field that crossed the wire, in order, each
/// length-prefixed and labelled.
#[derive(Clone)]
struct Transcript(Sha256);

impl Transcript {
    fn new() -> Self {
        let mut h = Sha256::new();
        h.update(b"godwit handshake transcript v1");
        Self(h)
    }

    fn append(&mut self, label: &str, bytes: &[u8]) {
        self.0.update((label.len() as u64).to_le_bytes());
        self.0.update(label.as_bytes());
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    fn hash(&self) -> [u8; 32] {
        self.0.clone().finalize().into()
    }
}

fn signed_message(label: &[u8], transcript: &Transcript) -> Vec<u8> {
    [label, &transcript.hash()].concat()
}

fn confirm_tag(key: &[u8; 32], transcript: &Transcript) -> [u8; 32] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), &transcript.hash());
    // Invariant: HMAC-SHA-256 tags are 32 bytes.
    tag.as_ref()
        .try_into()
        .expect("HMAC-SHA-256 tag is 32 bytes")
}

fn check_confirm(
    key: &[u8; 32],
    transcript: &Transcript,
    presented: &[u8; 32],
) -> Result<(), Refusal> {
    hmac::verify(
        &hmac::Key::new(hmac::HMAC_SHA256, key),
        &transcript.hash(),
        presented,
    )
    .map_err(|_| Refusal::KeyConfirmation)
}

fn fresh_ephemeral(hw: &dyn Hardware) -> (StaticSecret, [u8; 32]) {
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    hw.fill_random(seed.as_mut());
    let secret = StaticSecret::from(*seed);
    let public = PublicKey::from(&secret).to_bytes();
    (secret, public)
}

fn key_exchange(secret: &StaticSecret, peer: [u8; 32]) -> Result<HandshakeSecret, Refusal> {
    let shared = secret.diffie_hellman(&PublicKey::from(peer));
    if !shared.was_contributory() {
        return Err(Refusal::WeakKeyExchange);
    }
    Ok(HandshakeSecret::extract(shared.as_bytes()))
}

fn server_hello_body(nonce: &[u8; 32], ephemeral: &[u8; 32], chain: &CertChain) -> Vec<u8> {
    encode(&(nonce, ephemeral, chain))
}

/// The result of a completed handshake: the peer's verified identity and K.
pub struct Session {
    peer: VerifiedPeer,
    role: Role,
    key: SharedKey,
    transcript: [u8; 32],
}

impl Session {
    /// The verified peer.
    pub fn peer(&self) -> &VerifiedPeer {
        &self.peer
    }

    /// Which side of the handshake this was.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The transcript hash, which both sides share; it starts each direction's MAC chain.
    pub fn transcript_hash(&self) -> [u8; 32] {
        self.transcript
    }

    /// Derives the channel's keys from K (K is wiped when the session drops).
    pub fn into_channel(self) -> Channel {
        Channel::new(self.peer, self.role, &self.key, self.transcript)
    }
}

/// The side that dials.
pub struct Initiator;

/// The initiator, waiting for the responder's ServerHello.
pub struct AwaitServerHello {
    hw: Arc<dyn Hardware>,
    policy: Arc<Policy>,
    expected_peer: HostId,
    secret: StaticSecret,
    transcript: Transcript,
}

impl Initiator {
    /// Starts a handshake with `expected_peer`; returns the next phase and the ClientHello
    /// to send.
    pub fn start(
        hw: Arc<dyn Hardware>,
        policy: Arc<Policy>,
        expected_peer: HostId,
    ) -> (AwaitServerHello, Vec<u8>) {
        let mut nonce = [0u8; 32];
        hw.fill_random(&mut nonce);
        let (secret, ephemeral) = fresh_ephemeral(hw.as_ref());
        let hello = encode(&HandshakeMessage::ClientHello {
            version: PROTOCOL_VERSION,
            nonce,
            ephemeral,
        });
        let mut transcript = Transcript::new();
        transcript.append("client hello", &hello);
        let next = AwaitServerHello {
            hw,
            policy,
            expected_peer,
            secret,
            transcript,
        };
        (next, hello)
    }
}

impl AwaitServerHello {
    /// Verifies the responder's ServerHello; returns the session and the ClientFinish to
    /// send.
    pub fn receive(self, bytes: &[u8]) -> Result<(Session, Vec<u8>), AttestError> {
        let HandshakeMessage::ServerHello {
            nonce,
            ephemeral,
            chain,
            signature,
            confirm,
        } = HandshakeMessage::decode(bytes)?
        else {
            return Err(unexpected("ServerHello", bytes));
        };
        let Self {
            hw,
            policy,
            expected_peer,
            secret,
            mut transcript,
        } = self;
        let hs = key_exchange(&secret, ephemeral)?;
        transcript.append(
            "server hello",
            &server_hello_body(&nonce, &ephemeral, &chain),
        );
        let own_device = hw.cert_chain().device.device_key;
        let peer = policy.verify(
            &chain,
            &signed_message(RESPONDER_SIGNATURE_LABEL, &transcript),
            &signature,
            Some(&expected_peer),
            &own_device,
        )?;
        transcript.append("responder signature", &signature.to_bytes());
        check_confirm(&hs.finished_key(true), &transcript, &confirm)?;
        transcript.append("responder confirm", &confirm);

        let own_chain = hw.cert_chain().clone();
        transcript.append("initiator chain", &encode(&own_chain));
        let own_signature =
            hw.sign_attestation(&signed_message(INITIATOR_SIGNATURE_LABEL, &transcript));
        transcript.append("initiator signature", &own_signature.to_bytes());
        let own_confirm = confirm_tag(&hs.finished_key(false), &transcript);
        transcript.append("initiator confirm", &own_confirm);
        let finish = encode(&HandshakeMessage::ClientFinish {
            chain: Box::new(own_chain),
            signature: own_signature,
            confirm: own_confirm,
        });
        let session = finish_session(peer, Role::Initiator, &hs, &transcript);
        Ok((session, finish))
    }
}

fn finish_session(
    peer: VerifiedPeer,
    role: Role,
    hs: &HandshakeSecret,
    transcript: &Transcript,
) -> Session {
    let hash = transcript.hash();
    Session {
        peer,
        role,
        key: hs.shared_key(&hash),
        transcript: hash,
    }
}

fn unexpected(expected: &'static str, bytes: &[u8]) -> AttestError {
    let got = HandshakeMessage::decode(bytes).map_or("garbage", |m| m.name());
    AttestError::UnexpectedMessage { expected, got }
}

/// The side that answers.
pub struct Responder;

/// The responder, waiting for the initiator's ClientFinish.
pub struct AwaitClientFinish {
    policy: Arc<Policy>,
    own_device: VerifyingKey,
    hs: HandshakeSecret,
    transcript: Transcript,
}

impl Responder {
    /// Answers a ClientHello; returns the next phase and the ServerHello to send.
    pub fn respond(
        hw: Arc<dyn Hardware>,
        policy: Arc<Policy>,
        bytes: &[u8],
    ) -> Result<(AwaitClientFinish, Vec<u8>), AttestError> {
        let HandshakeMessage::ClientHello {
            version,
            ephemeral: peer_ephemeral,
            ..
        } = HandshakeMessage::decode(bytes)?
        else {
            return Err(unexpected("ClientHello", bytes));
        };
        if version != PROTOCOL_VERSION {
            return Err(Refusal::Version {
                expected: PROTOCOL_VERSION,
                presented: version,
            }
            .into());
        }
        let mut transcript = Transcript::new();
        // The exact bytes received: re-encoding could differ from what the initiator hashed.
        transcript.append("client hello", bytes);
        let mut nonce = [0u8; 32];
        hw.fill_random(&mut nonce);
        let (secret, ephemeral) = fresh_ephemeral(hw.as_ref());
        let hs = key_exchange(&secret, peer_ephemeral)?;
        let chain = hw.cert_chain().clone();
        transcript.append(
            "server hello",
            &server_hello_body(&nonce, &ephemeral, &chain),
        );
        let signature =
            hw.sign_attestation(&signed_message(RESPONDER_SIGNATURE_LABEL, &transcript));
        transcript.append("responder signature", &signature.to_bytes());
        let confirm = confirm_tag(&hs.finished_key(true), &transcript);
        transcript.append("responder confirm", &confirm);
        let hello = encode(&HandshakeMessage::ServerHello {
            nonce,
            ephemeral,
            chain: Box::new(chain),
            signature,
            confirm,
        });
        let next = AwaitClientFinish {
            policy,
            own_device: hw.cert_chain().device.device_key,
            hs,
            transcript,
        };
        Ok((next, hello))
    }
}

impl AwaitClientFinish {
    /// Verifies the initiator's ClientFinish and completes the handshake.
    pub fn receive(self, bytes: &[u8]) -> Result<Session, AttestError> {
        let HandshakeMessage::ClientFinish {
            chain,
            signature,
            confirm,
        } = HandshakeMessage::decode(bytes)?
        else {
            return Err(unexpected("ClientFinish", bytes));
        };
        let Self {
            policy,
            own_device,
            hs,
            mut transcript,
        } = self;
        transcript.append("initiator chain", &encode(&*chain));
        let peer = policy.verify(
            &chain,
            &signed_message(INITIATOR_SIGNATURE_LABEL, &transcript),
            &signature,
            None,
            &own_device,
        )?;
        transcript.append("initiator signature", &signature.to_bytes());
        check_confirm(&hs.finished_key(false), &transcript, &confirm)?;
        transcript.append("initiator confirm", &confirm);
        Ok(finish_session(peer, Role::Responder, &hs, &transcript))
    }
}
