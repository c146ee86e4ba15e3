//! Identifiers that cross the wire and the CLI.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A SHA-256 measurement: of an enclave (module + manifest) or of a security monitor.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Measurement(pub [u8; 32]);

impl Measurement {
    /// Hashes `parts` under a domain-separation `label`; each part is length-prefixed so
    /// that moving bytes between parts changes the result.
    pub fn of_parts(label: &str, parts: &[&[u8]]) -> Self {
        let mut h = Sha256::new();
        h.update((label.len() as u64).to_le_bytes());
        h.update(label.as_bytes());
        for part in parts {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        Self(h.finalize().into())
    }

    /// The first eight hex digits, for logs and tables.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Display for Measurement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Measurement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Measurement({})", self.short())
    }
}

impl FromStr for Measurement {
    type Err = hex::FromHexError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)?;
        Ok(Self(out))
    }
}

/// An enclave instance. Chosen at random by the SM that creates the instance; it stays the
/// same when the instance migrates, so the store can follow one instance across hosts.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EnclaveId(pub [u8; 16]);

impl fmt::Display for EnclaveId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for EnclaveId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EnclaveId({})", hex::encode(&self.0[..4]))
    }
}

impl FromStr for EnclaveId {
    type Err = hex::FromHexError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 16];
        hex::decode_to_slice(s, &mut out)?;
        Ok(Self(out))
    }
}

/// A host's name in the cluster, e.g. `host1`. Bound into the host's device certificate at
/// provisioning, so a host cannot claim another's name.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct HostId(String);

/// Why a string is not a host id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HostIdError {
    /// Empty or longer than [`HostId::LEN_MAX`].
    #[error("host id must be 1 to {max} characters, got {len}", max = HostId::LEN_MAX)]
    Length {
        /// Characters presented.
        len: usize,
    },
    /// A character outside `[A-Za-z0-9._-]`.
    #[error("host id may contain only letters, digits, '.', '_' and '-'")]
    Character,
}

impl HostId {
    /// Longest host id accepted.
    pub const LEN_MAX: usize = 64;

    /// Validates and wraps a host id.
    pub fn new(s: impl Into<String>) -> Result<Self, HostIdError> {
        let s = s.into();
        if s.is_empty() || s.len() > Self::LEN_MAX {
            return Err(HostIdError::Length { len: s.len() });
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(HostIdError::Character);
        }
        Ok(Self(s))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for HostId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HostId::new(s).map_err(serde::de::Error::custom)
    }
}

impl FromStr for HostId {
    type Err = HostIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HostId::new(s)
    }
}

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode, encode};

    #[test]
    fn measurement_parts_are_length_prefixed() {
        let a = Measurement::of_parts("t", &[b"ab", b"c"]);
        let b = Measurement::of_parts("t", &[b"a", b"bc"]);
        let c = Measurement::of_parts("u", &[b"ab", b"c"]);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, Measurement::of_parts("t", &[b"ab", b"c"]));
    }

    #[test]
    fn ids_round_trip_through_text() {
        let m = Measurement([7; 32]);
        assert_eq!(m.to_string().parse::<Measurement>().unwrap(), m);
        let e = EnclaveId([9; 16]);
        assert_eq!(e.to_string().parse::<EnclaveId>().unwrap(), e);
        assert!("zz".parse::<EnclaveId>().is_err());
    }

    #[test]
    fn host_ids_are_validated_also_when_decoded() {
        assert!(HostId::new("host1").is_ok());
        assert_eq!(HostId::new(""), Err(HostIdError::Length { len: 0 }));
        assert_eq!(HostId::new("a/b"), Err(HostIdError::Character));
        let bad = encode(&"../etc".to_string());
        assert!(decode::<HostId>(&bad, 100).is_err());
    }
}
