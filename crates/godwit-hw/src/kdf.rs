//! The component's key derivations (DICE-style), all HKDF-SHA-256 (RFC 5869).
//!
//! ```text
//! device secret (UDS) ──HKDF "device identity"──────────────▶ device key (Ed25519)
//!        │
//!        └──HKDF "cdi" + SM measurement──▶ CDI ──"sm attestation"──▶ SM attestation key
//!                                           └────"sealing" + enclave measurement──▶ sealing key
//! ```
//!
//! A different SM measurement yields a different CDI, hence a different attestation key and
//! different sealing keys: a modified SM can neither sign as the real one nor unseal its data.

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

const SALT: &[u8] = b"godwit dice v1";

/// A 32-byte secret that is wiped when dropped.
pub(crate) type Secret32 = Zeroizing<[u8; 32]>;

/// Derives a 32-byte secret from `ikm` for `label`, binding each context part with its
/// length so parts cannot be shifted into one another.
pub(crate) fn derive(ikm: &[u8; 32], label: &str, context: &[&[u8]]) -> Secret32 {
    let hk = Hkdf::<Sha256>::new(Some(SALT), ikm);
    let mut info: Vec<u8> = Vec::with_capacity(64);
    info.extend_from_slice(&(label.len() as u32).to_le_bytes());
    info.extend_from_slice(label.as_bytes());
    for part in context {
        info.extend_from_slice(&(part.len() as u32).to_le_bytes());
        info.extend_from_slice(part);
    }
    let mut out = Zeroizing::new([0u8; 32]);
    // Invariant: 32 bytes is far below HKDF-SHA-256's 255 * 32 byte output limit.
    hk.expand(&info, out.as_mut())
        .expect("32 bytes is a valid HKDF-SHA-256 output length");
    out
}
