//! The one place bytes from outside become typed values.

use serde::{Serialize, de::DeserializeOwned};

/// Why bytes could not be decoded. Every variant is something a peer or the host can cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input is longer than the decoder accepts for this type.
    #[error("input of {len} bytes exceeds the limit of {max} bytes")]
    TooLong {
        /// Bytes presented.
        len: usize,
        /// Bytes allowed.
        max: usize,
    },
    /// The bytes are not a valid encoding of the expected type.
    #[error("malformed encoding: {0}")]
    Malformed(String),
    /// A valid value was followed by unexpected bytes.
    #[error("{0} trailing bytes after a complete value")]
    TrailingBytes(usize),
}

/// Decodes `bytes` as a `T`, refusing inputs longer than `max_bytes` and trailing bytes.
///
/// Allocation is bounded by the input length: length prefixes larger than the remaining
/// input fail instead of reserving memory.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], max_bytes: usize) -> Result<T, DecodeError> {
    if bytes.len() > max_bytes {
        return Err(DecodeError::TooLong {
            len: bytes.len(),
            max: max_bytes,
        });
    }
    let (value, rest) =
        postcard::take_from_bytes(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    Ok(value)
}

/// As [`decode`], for types that borrow from the input (e.g. `&[u8]` payloads), so bulk
/// data is not copied.
pub fn decode_borrowed<'a, T: serde::Deserialize<'a>>(
    bytes: &'a [u8],
    max_bytes: usize,
) -> Result<T, DecodeError> {
    if bytes.len() > max_bytes {
        return Err(DecodeError::TooLong {
            len: bytes.len(),
            max: max_bytes,
        });
    }
    let (value, rest) =
        postcard::take_from_bytes(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    Ok(value)
}

/// Encodes `value` into `out`, returning the bytes written; fails if `out` is too short.
pub fn encode_into<T: Serialize>(value: &T, out: &mut [u8]) -> Result<usize, DecodeError> {
    postcard::to_slice(value, out)
        .map(|written| written.len())
        .map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// Encodes a value with the same encoding [`decode`] reads.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Invariant: postcard serialisation into a Vec only fails for types serde cannot
    // represent (e.g. maps with non-string keys in some formats); none of ours are such.
    postcard::to_stdvec(value).expect("postcard encoding of a godwit type cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn refuses_overlong_and_trailing_input() {
        let bytes = encode(&(7u32, vec![1u8, 2, 3]));
        assert_eq!(
            decode::<(u32, Vec<u8>)>(&bytes, 3),
            Err(DecodeError::TooLong { len: 5, max: 3 })
        );
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            decode::<(u32, Vec<u8>)>(&longer, 64),
            Err(DecodeError::TrailingBytes(1))
        );
        assert_eq!(decode::<(u32, Vec<u8>)>(&bytes, 64), Ok((7, vec![1, 2, 3])));
    }

    #[test]
    fn huge_length_prefix_fails_without_allocating() {
        // A varint length of ~2^63 followed by nothing.
        let bytes = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
        assert!(matches!(
            decode::<Vec<u8>>(&bytes, 64),
            Err(DecodeError::Malformed(_))
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<(u64, String, Vec<u8>, Option<[u8; 32]>)>(&bytes, 512);
        }
    }
}
