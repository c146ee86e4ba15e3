//! The key schedule (claim 11): HKDF-SHA-256 (RFC 5869) from the DH secret to K, and from
//! K to one encryption key and one authentication key per direction.
//!
//! ```text
//! dh = X25519(e_i, e_r)
//! HS = HKDF-Extract(salt = "godwit handshake v1", dh)
//! fk_r = HKDF-Expand(HS, "responder finished"),  fk_i = HKDF-Expand(HS, "initiator finished")
//! K    = HKDF-Expand(HS, "godwit K" ‖ transcript hash)
//! k_enc[d]  = HKDF-Expand(K, "godwit record enc " ‖ d),   d ∈ {i2r, r2i}
//! k_auth[d] = HKDF-Expand(K, "godwit record auth " ‖ d)
//! ```

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

/// A 32-byte secret wiped on drop.
pub(crate) type Secret = Zeroizing<[u8; 32]>;

/// Which way traffic flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the side that dialled to the side that answered.
    InitiatorToResponder,
    /// The other way.
    ResponderToInitiator,
}

impl Direction {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::InitiatorToResponder => "i2r",
            Self::ResponderToInitiator => "r2i",
        }
    }
}

/// The two keys protecting one direction of a channel. Neither `Debug` nor `Display`.
pub(crate) struct DirectionKeys {
    pub(crate) enc: Secret,
    pub(crate) auth: Secret,
}

fn expand(hk: &Hkdf<Sha256>, info: &[&[u8]]) -> Secret {
    let mut out = Zeroizing::new([0u8; 32]);
    // Invariant: 32 bytes is a valid HKDF-SHA-256 output length.
    hk.expand_multi_info(info, out.as_mut())
        .expect("32 bytes is a valid HKDF-SHA-256 output length");
    out
}

/// The handshake secret and what derives from it.
pub(crate) struct HandshakeSecret(Hkdf<Sha256>);

impl HandshakeSecret {
    pub(crate) fn extract(dh: &[u8; 32]) -> Self {
        Self(Hkdf::new(Some(b"godwit handshake v1"), dh))
    }

    pub(crate) fn finished_key(&self, responder: bool) -> Secret {
        let label: &[u8] = if responder {
            b"responder finished"
        } else {
            b"initiator finished"
        };
        expand(&self.0, &[label])
    }

    /// K, bound to the whole handshake transcript.
    pub(crate) fn shared_key(&self, transcript: &[u8; 32]) -> SharedKey {
        SharedKey(expand(&self.0, &[b"godwit K", transcript]))
    }
}

/// The shared key K both SMs hold after the handshake.
pub(crate) struct SharedKey(Secret);

impl SharedKey {
    /// The encryption and authentication keys for one direction, under distinct labels.
    pub(crate) fn direction(&self, d: Direction) -> DirectionKeys {
        // Invariant: K is 32 bytes, a valid HKDF-SHA-256 PRK.
        let hk = Hkdf::<Sha256>::from_prk(self.0.as_ref()).expect("K is a 32-byte PRK");
        DirectionKeys {
            enc: expand(&hk, &[b"godwit record enc ", d.label().as_bytes()]),
            auth: expand(&hk, &[b"godwit record auth ", d.label().as_bytes()]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_derived_key_is_distinct() {
        let hs = HandshakeSecret::extract(&[7; 32]);
        let k = hs.shared_key(&[1; 32]);
        let a = k.direction(Direction::InitiatorToResponder);
        let b = k.direction(Direction::ResponderToInitiator);
        let keys = [
            &a.enc,
            &a.auth,
            &b.enc,
            &b.auth,
            &hs.finished_key(true),
            &hs.finished_key(false),
        ];
        for (i, x) in keys.iter().enumerate() {
            for y in &keys[i + 1..] {
                assert_ne!(x.as_ref(), y.as_ref());
            }
        }
        // K depends on the transcript.
        let k2 = hs.shared_key(&[2; 32]);
        assert_ne!(*k2.direction(Direction::InitiatorToResponder).enc, *a.enc);
    }
}
