//! Sealed blobs: enclave data encrypted for the host to store.
//!
//! A blob is `header ‖ nonce ‖ AES-256-GCM(sealing key, nonce, data, aad = header)`. The
//! sealing key is KDF(device secret, SM measurement, enclave measurement), so a blob opens
//! only on the platform and under the SM and application that sealed it; the header names
//! the instance, the slot and a version, and is authenticated as associated data, so a blob
//! cannot be moved to another instance or slot, and an older version is recognised as a
//! rollback against the newest version the SM recorded.

use godwit_hw::SealingKey;
use godwit_wire::{EnclaveId, Measurement};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use serde::{Deserialize, Serialize};

/// Blob format version.
pub const FORMAT: u8 = 2;
/// Largest encoded header accepted.
const HEADER_BYTES_MAX: usize = 256;
/// Largest blob accepted from the host: the largest sealable payload plus overhead.
pub const BLOB_BYTES_MAX: usize = godwit_enclave::SEAL_BYTES_MAX + 512;

/// What a blob is bound to, in clear and authenticated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobHeader {
    /// Format version.
    pub format: u8,
    /// The instance that sealed it.
    pub enclave: EnclaveId,
    /// The application's measurement.
    pub app: Measurement,
    /// The slot within the instance.
    pub slot: String,
    /// The SM's version number for this slot; strictly increasing per seal.
    pub version: u64,
    /// The incarnation of the instance that sealed it, as the ledger numbers them.
    pub incarnation: u64,
}

/// Which blob of a slot the SM expects back: exactly this version, sealed by exactly this
/// incarnation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    /// The newest version.
    pub version: u64,
    /// The incarnation that sealed it.
    pub incarnation: u64,
}

/// Why a blob was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The bytes are not a blob.
    #[error("not a sealed blob: {0}")]
    Malformed(String),
    /// The blob belongs to another instance, application or slot.
    #[error("blob sealed for {found}, expected {expected}")]
    WrongBinding {
        /// What the SM asked for.
        expected: String,
        /// What the header names.
        found: String,
    },
    /// Decryption failed: altered, or sealed on another platform or by another SM.
    #[error("blob failed authentication (altered, or sealed on another platform or SM)")]
    Authentication,
    /// An older version than the newest the SM sealed.
    #[error(
        "blob version {presented} is older than the newest sealed version {newest}: rollback refused"
    )]
    Rollback {
        /// The version the host presented.
        presented: u64,
        /// The newest version the SM sealed.
        newest: u64,
    },
    /// Nothing was ever sealed into the slot.
    #[error("nothing was sealed into this slot")]
    NotSealed,
    /// The host has no blob (or could not read one) for a slot the SM sealed.
    #[error("the host returned no blob for a sealed slot")]
    Missing,
    /// A version the SM never sealed.
    #[error("blob version {presented} was never sealed (newest is {newest})")]
    UnknownVersion {
        /// The version presented.
        presented: u64,
        /// The newest version the SM sealed.
        newest: u64,
    },
    /// The right version, sealed by another incarnation of the instance: one that was lost
    /// before the store recorded it.
    #[error(
        "blob version {version} was sealed by incarnation {presented}, not {expected}: a seal of a lost incarnation the store never recorded, refused"
    )]
    OtherIncarnation {
        /// The version.
        version: u64,
        /// The incarnation that sealed the blob presented.
        presented: u64,
        /// The incarnation that sealed the version the SM expects.
        expected: u64,
    },
}

fn aead_key(key: &SealingKey) -> LessSafeKey {
    // Invariant: the sealing key is exactly 32 bytes, AES-256's key length.
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key.as_bytes()).expect("32-byte AES-256 key"))
}

/// Seals `data` under `header`, with a fresh random `nonce` from the hardware.
pub fn seal(key: &SealingKey, header: &BlobHeader, nonce: [u8; NONCE_LEN], data: &[u8]) -> Vec<u8> {
    let header_bytes = godwit_wire::encode(header);
    let mut out = Vec::with_capacity(2 + header_bytes.len() + NONCE_LEN + data.len() + 16);
    // Invariant: headers are bounded far below 64 KiB (slot names are at most 64 bytes).
    let header_len = u16::try_from(header_bytes.len()).expect("header fits u16");
    out.extend_from_slice(&header_len.to_le_bytes());
    out.extend_from_slice(&header_bytes);
    out.extend_from_slice(&nonce);
    let body_start = out.len();
    out.extend_from_slice(data);
    let mut body = out.split_off(body_start);
    // Invariant: ring only fails to seal inputs longer than GCM's 64 GiB limit.
    aead_key(key)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&header_bytes),
            &mut body,
        )
        .expect("payload within AES-GCM's length limit");
    out.extend_from_slice(&body);
    out
}

/// Reads a blob's header without opening it.
pub fn header(blob: &[u8]) -> Result<(BlobHeader, usize), SealError> {
    if blob.len() > BLOB_BYTES_MAX {
        return Err(SealError::Malformed(format!(
            "{} bytes is too long",
            blob.len()
        )));
    }
    let len_bytes: [u8; 2] = blob
        .get(..2)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| SealError::Malformed("truncated".into()))?;
    let header_len = usize::from(u16::from_le_bytes(len_bytes));
    let header_bytes = blob
        .get(2..2 + header_len)
        .ok_or_else(|| SealError::Malformed("truncated header".into()))?;
    let header: BlobHeader = godwit_wire::decode(header_bytes, HEADER_BYTES_MAX)
        .map_err(|e| SealError::Malformed(e.to_string()))?;
    if header.format != FORMAT {
        return Err(SealError::Malformed(format!(
            "unknown format {}",
            header.format
        )));
    }
    Ok((header, 2 + header_len))
}

/// Opens a blob the host handed back: checks its binding to (`enclave`, `app`, `slot`),
/// its authenticity, and that it is exactly the `expected` one: the newest version the SM
/// sealed, from the incarnation that sealed it.
pub fn open(
    key: &SealingKey,
    enclave: EnclaveId,
    app: Measurement,
    slot: &str,
    expected: Expected,
    blob: &[u8],
) -> Result<Vec<u8>, SealError> {
    let newest = expected.version;
    let (h, body_start) = header(blob)?;
    if h.enclave != enclave || h.app != app || h.slot != slot {
        return Err(SealError::WrongBinding {
            expected: format!("enclave {enclave} ({}) slot {slot:?}", app.short()),
            found: format!(
                "enclave {} ({}) slot {:?}",
                h.enclave,
                h.app.short(),
                h.slot
            ),
        });
    }
    let rest = &blob[body_start..];
    if rest.len() < NONCE_LEN + AES_256_GCM.tag_len() {
        return Err(SealError::Malformed("truncated body".into()));
    }
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Authentication)?;
    let mut body = ciphertext.to_vec();
    let plain_len = aead_key(key)
        .open_in_place(nonce, Aad::from(&blob[2..body_start]), &mut body)
        .map_err(|_| SealError::Authentication)?
        .len();
    // Versions are checked after authentication, so the numbers reported are genuine.
    if h.version < newest {
        return Err(SealError::Rollback {
            presented: h.version,
            newest,
        });
    }
    if h.version > newest {
        return Err(SealError::UnknownVersion {
            presented: h.version,
            newest,
        });
    }
    if h.incarnation != expected.incarnation && !planted!(any_incarnation) {
        return Err(SealError::OtherIncarnation {
            version: h.version,
            presented: h.incarnation,
            expected: expected.incarnation,
        });
    }
    body.truncate(plain_len);
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use godwit_hw::{Hardware, Manufacturer, SimHardware};
    use godwit_wire::HostId;

    fn hw(secret: u8, sm: u8) -> SimHardware {
        let m = Manufacturer::from_seed([1; 32]);
        let id = m.provision_from_secret(HostId::new("h").unwrap(), [secret; 32].into());
        SimHardware::new(id, Measurement([sm; 32]), 1).0
    }

    const APP: Measurement = Measurement([7; 32]);
    const E1: EnclaveId = EnclaveId([1; 16]);

    fn header(version: u64) -> BlobHeader {
        BlobHeader {
            format: FORMAT,
            enclave: E1,
            app: APP,
            slot: "s".into(),
            version,
            incarnation: 0,
        }
    }
    /// Version `version` of incarnation 0.
    fn v(version: u64) -> Expected {
        Expected {
            version,
            incarnation: 0,
        }
    }

    #[test]
    fn round_trip_and_every_refusal() {
        let hw = hw(1, 1);
        let key = hw.sealing_key(&APP);
        let v2 = seal(&key, &header(2), [3; 12], b"data");
        assert_eq!(open(&key, E1, APP, "s", v(2), &v2).unwrap(), b"data");
        // Ciphertext only: the plaintext does not appear in the blob.
        assert!(!v2.windows(4).any(|w| w == b"data"));
        // Older than the newest: rollback.
        let v1 = seal(&key, &header(1), [4; 12], b"old!");
        assert_eq!(
            open(&key, E1, APP, "s", v(2), &v1),
            Err(SealError::Rollback {
                presented: 1,
                newest: 2
            })
        );
        assert_eq!(
            open(&key, E1, APP, "s", v(1), &v2),
            Err(SealError::UnknownVersion {
                presented: 2,
                newest: 1
            })
        );
        // Another instance, slot or application.
        assert!(matches!(
            open(&key, EnclaveId([2; 16]), APP, "s", v(2), &v2),
            Err(SealError::WrongBinding { .. })
        ));
        assert!(matches!(
            open(&key, E1, APP, "t", v(2), &v2),
            Err(SealError::WrongBinding { .. })
        ));
        assert!(matches!(
            open(&key, E1, Measurement([8; 32]), "s", v(2), &v2),
            Err(SealError::WrongBinding { .. })
        ));
        // Any flipped bit, header included.
        for i in 0..v2.len() {
            let mut bad = v2.clone();
            bad[i] ^= 0x10;
            assert!(
                open(&key, E1, APP, "s", v(2), &bad).is_err(),
                "bit flip at {i} accepted"
            );
        }
        // A header edited to the expected version without the key: authentication fails.
        let mut h = header(1);
        let forged_from = seal(&key, &h, [5; 12], b"xx");
        h.version = 2;
        let mut forged = godwit_wire::encode(&h);
        let (_, body) = super::header(&forged_from).unwrap();
        let mut out = (forged.len() as u16).to_le_bytes().to_vec();
        out.append(&mut forged);
        out.extend_from_slice(&forged_from[body..]);
        assert_eq!(
            open(&key, E1, APP, "s", v(2), &out),
            Err(SealError::Authentication)
        );
        // The right version sealed by another incarnation (a lost one): refused.
        let mut other = header(2);
        other.incarnation = 1;
        let v2_next_life = seal(&key, &other, [6; 12], b"new!");
        let expected = Expected {
            version: 2,
            incarnation: 1,
        };
        assert_eq!(
            open(&key, E1, APP, "s", expected, &v2_next_life).unwrap(),
            b"new!"
        );
        assert_eq!(
            open(&key, E1, APP, "s", expected, &v2),
            Err(SealError::OtherIncarnation {
                version: 2,
                presented: 0,
                expected: 1
            })
        );
        // Truncations.
        for n in [0, 1, 2, 10, v2.len() - 1] {
            assert!(open(&key, E1, APP, "s", v(2), &v2[..n]).is_err());
        }
    }

    #[test]
    fn blobs_from_another_platform_or_sm_do_not_open() {
        let here = hw(1, 1);
        let other_device = hw(2, 1);
        let other_sm = hw(1, 2);
        for sealer in [&other_device, &other_sm] {
            let blob = seal(&sealer.sealing_key(&APP), &header(1), [3; 12], b"data");
            assert_eq!(
                open(&here.sealing_key(&APP), E1, APP, "s", v(1), &blob),
                Err(SealError::Authentication)
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_blobs_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let key = hw(1, 1).sealing_key(&APP);
            let _ = open(&key, E1, APP, "s", v(1), &bytes);
        }
    }
}
