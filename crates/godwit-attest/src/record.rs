//! The protected record channel (claim 11): one key encrypts, another authenticates.
//!
//! Each direction has its own `k_enc` and `k_auth`. A record is
//!
//! ```text
//! header (13 bytes: type u8 ‖ seq u64 BE ‖ len u32 BE)
//! ‖ ciphertext (len bytes) ‖ gcm_tag (16) ‖ mac (16)
//!
//! ciphertext, gcm_tag = AES-256-GCM(k_enc, nonce = 0^32 ‖ seq, payload, aad = header)
//! mac_n = HMAC-SHA-256-128(k_auth, mac_{n-1} ‖ header ‖ gcm_tag),
//! mac_{-1} = SHA-256(label ‖ direction ‖ transcript hash) truncated to 128 bits
//! ```
//!
//! The payload is protected by an AEAD (RFC 5116, AES-256-GCM per NIST SP 800-38D) under
//! the encryption key; a separately keyed MAC under the authentication key chains every
//! record's header, sequence number and GCM tag — which commits to the ciphertext — back to
//! the handshake transcript. The receiver checks the MAC chain first and then the AEAD, and
//! both must pass: swapping the keys fails both. Sequence numbers are explicit so that a
//! replayed, reordered or dropped record is refused with a precise reason; a stream that
//! ends without an authenticated `Close` record is refused as truncated. Rationale and
//! measurements: docs/protocol.md.
//!
//! Any refusal fails the whole session: neither half sends or accepts again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, Tag, UnboundKey};
use ring::hmac;
use sha2::{Digest, Sha256};

use crate::keys::{Direction, DirectionKeys, SharedKey};
use crate::policy::VerifiedPeer;
use crate::{AttestError, Role};

/// Header bytes: type (1), sequence number (8), payload length (4).
pub const HEADER_BYTES: usize = 13;
/// AES-GCM tag bytes.
pub const TAG_BYTES: usize = 16;
/// MAC bytes: HMAC-SHA-256 truncated to 128 bits (as RFC 4868 does for IPsec). The MAC
/// input (chain 16 + header 13 + tag 16 = 45 bytes) then fits one SHA-256 block.
pub const MAC_BYTES: usize = 16;
/// Bytes a record adds to its payload.
pub const RECORD_OVERHEAD_BYTES: usize = HEADER_BYTES + TAG_BYTES + MAC_BYTES;
/// Largest payload of one record.
pub const RECORD_PAYLOAD_BYTES_MAX: usize = 4 * 1024 * 1024 + 4096;
/// Records one session may carry per direction before it must be closed and a new
/// handshake made (the GCM nonce is the 64-bit sequence number; this keeps far from it).
pub const SESSION_RECORDS_MAX: u64 = 1 << 32;
/// Bytes one session may carry per direction: 2^38 (256 GiB), within the usage limits for
/// AES-GCM with one key (cf. RFC 8446 §5.5).
pub const SESSION_BYTES_MAX: u64 = 1 << 38;

/// What a record carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordType {
    /// Application data.
    Data = 1,
    /// The orderly end of this direction.
    Close = 2,
}

impl RecordType {
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Data),
            2 => Some(Self::Close),
            _ => None,
        }
    }
}

/// A reusable buffer holding one record: fill the payload, seal, send the bytes.
#[derive(Default)]
pub struct RecordBuf {
    buf: Vec<u8>,
    payload_len: usize,
}

impl RecordBuf {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// A buffer reusing `buf`'s allocation (e.g. from a pool): a record of the size it last
    /// held costs no allocation or zeroing.
    pub fn from_vec(buf: Vec<u8>) -> Self {
        Self {
            buf,
            payload_len: 0,
        }
    }

    /// The record's bytes, giving up the buffer.
    pub fn into_vec(mut self) -> Vec<u8> {
        self.buf.truncate(self.payload_len + RECORD_OVERHEAD_BYTES);
        self.buf
    }

    /// Sizes the buffer for a `len`-byte payload and returns the payload area to fill.
    /// Reusing the buffer for records of the same size costs no allocation or zeroing.
    pub fn payload_mut(&mut self, len: usize) -> &mut [u8] {
        // Only ever grow: a reused buffer keeps its length, so it is not zeroed again.
        if self.buf.len() < len + RECORD_OVERHEAD_BYTES {
            self.buf.resize(len + RECORD_OVERHEAD_BYTES, 0);
        }
        self.payload_len = len;
        &mut self.buf[HEADER_BYTES..HEADER_BYTES + len]
    }

    fn record_len(&self) -> usize {
        self.payload_len + RECORD_OVERHEAD_BYTES
    }

    /// Shortens the payload to `len` bytes (after encoding into a larger area).
    pub fn truncate_payload(&mut self, len: usize) {
        assert!(len <= self.payload_len, "truncate_payload can only shorten");
        self.payload_len = len;
    }

    /// The sealed record, ready to send.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.record_len()]
    }

    /// The record's bytes, for opening in place (e.g. after reading into this buffer).
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        let len = self.record_len();
        &mut self.buf[..len]
    }

    /// The whole allocation, longer than the record, for a pool: reusing it for a record of
    /// at most its length costs no zeroing.
    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }
}

/// What an opened record held.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened<'a> {
    /// Application data (decrypted in place).
    Data(&'a [u8]),
    /// The peer closed its direction in order.
    Close,
}

/// Shared by both halves of a channel: once set, neither half works again.
#[derive(Default)]
struct Poison(AtomicBool);

impl Poison {
    fn check(&self) -> Result<(), AttestError> {
        if self.0.load(Ordering::Acquire) {
            Err(AttestError::SessionFailed)
        } else {
            Ok(())
        }
    }

    fn fail<T>(&self, e: AttestError) -> Result<T, AttestError> {
        self.0.store(true, Ordering::Release);
        Err(e)
    }
}

/// Per-direction state common to both halves.
struct DirectionState {
    enc: LessSafeKey,
    auth: hmac::Key,
    seq: u64,
    bytes: u64,
    chain: [u8; MAC_BYTES],
    closed: bool,
}

impl DirectionState {
    fn new(keys: &DirectionKeys, d: Direction, transcript: [u8; 32]) -> Self {
        // Invariant: k_enc is 32 bytes, AES-256's key length.
        let enc = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, keys.enc.as_ref()).expect("32-byte AES-256 key"),
        );
        let mut h = Sha256::new();
        h.update(b"godwit record chain v1 ");
        h.update(d.label().as_bytes());
        h.update(transcript);
        let mut chain = [0u8; MAC_BYTES];
        chain.copy_from_slice(&h.finalize()[..MAC_BYTES]);
        Self {
            enc,
            auth: hmac::Key::new(hmac::HMAC_SHA256, keys.auth.as_ref()),
            seq: 0,
            bytes: 0,
            chain,
            closed: false,
        }
    }

    fn nonce(&self) -> Nonce {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&self.seq.to_be_bytes());
        Nonce::assume_unique_for_key(n)
    }

    /// HMAC-SHA-256-128 over the chain value, the header and the GCM tag.
    fn mac(&self, header: &[u8], tag: &[u8]) -> [u8; MAC_BYTES] {
        let mut input = [0u8; MAC_BYTES + HEADER_BYTES + TAG_BYTES];
        input[..MAC_BYTES].copy_from_slice(&self.chain);
        input[MAC_BYTES..MAC_BYTES + HEADER_BYTES].copy_from_slice(header);
        input[MAC_BYTES + HEADER_BYTES..].copy_from_slice(tag);
        let full = hmac::sign(&self.auth, &input);
        let mut mac = [0u8; MAC_BYTES];
        mac.copy_from_slice(&full.as_ref()[..MAC_BYTES]);
        mac
    }

    fn advance(&mut self, len: usize, mac: [u8; MAC_BYTES]) {
        self.seq += 1;
        self.bytes += len as u64;
        self.chain = mac;
    }
}

fn header(ty: RecordType, seq: u64, len: usize) -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    h[0] = ty as u8;
    h[1..9].copy_from_slice(&seq.to_be_bytes());
    // Invariant: callers bound `len` by RECORD_PAYLOAD_BYTES_MAX, far below 4 GiB.
    h[9..].copy_from_slice(&u32::try_from(len).expect("bounded payload").to_be_bytes());
    h
}

/// The sending half of a channel.
pub struct Sender {
    dir: DirectionState,
    poison: Arc<Poison>,
}

impl Sender {
    /// Seals the payload already written into `rec` as a record of type `ty`.
    pub fn seal(&mut self, ty: RecordType, rec: &mut RecordBuf) -> Result<(), AttestError> {
        self.poison.check()?;
        if self.dir.closed {
            return Err(AttestError::SessionClosed);
        }
        let len = rec.payload_len;
        if len > RECORD_PAYLOAD_BYTES_MAX {
            return Err(AttestError::RecordTooLarge {
                len,
                max: RECORD_PAYLOAD_BYTES_MAX,
            });
        }
        if self.dir.seq >= SESSION_RECORDS_MAX || self.dir.bytes + len as u64 > SESSION_BYTES_MAX {
            return self.poison.fail(AttestError::SessionExhausted);
        }
        let h = header(ty, self.dir.seq, len);
        let (head, rest) = rec.buf[..len + RECORD_OVERHEAD_BYTES].split_at_mut(HEADER_BYTES);
        head.copy_from_slice(&h);
        let (payload, trailer) = rest.split_at_mut(len);
        // Invariant: ring fails only for inputs beyond GCM's 64 GiB limit; payloads are
        // bounded above.
        let tag = self
            .dir
            .enc
            .seal_in_place_separate_tag(self.dir.nonce(), Aad::from(&h), payload)
            .expect("payload within AES-GCM's limit");
        trailer[..TAG_BYTES].copy_from_slice(tag.as_ref());
        let mac = self.dir.mac(&h, tag.as_ref());
        trailer[TAG_BYTES..].copy_from_slice(&mac);
        self.dir.advance(len, mac);
        if ty == RecordType::Close {
            self.dir.closed = true;
        }
        Ok(())
    }

    /// Seals a copy of `payload` as a data record (for small control messages).
    pub fn seal_bytes(&mut self, payload: &[u8]) -> Result<Vec<u8>, AttestError> {
        let mut rec = RecordBuf::new();
        rec.payload_mut(payload.len()).copy_from_slice(payload);
        self.seal(RecordType::Data, &mut rec)?;
        Ok(rec.into_vec())
    }

    /// Seals the `Close` record; the sender refuses everything after it.
    pub fn close(&mut self) -> Result<Vec<u8>, AttestError> {
        let mut rec = RecordBuf::new();
        rec.payload_mut(0);
        self.seal(RecordType::Close, &mut rec)?;
        Ok(rec.into_vec())
    }

    /// Records sealed so far.
    pub fn records_sent(&self) -> u64 {
        self.dir.seq
    }

    /// The MAC chain value after the last record sealed: it authenticates every record so
    /// far, back to the handshake (the transfer digest is made from it).
    pub fn chain(&self) -> &[u8] {
        &self.dir.chain
    }
}

/// The receiving half of a channel.
pub struct Receiver {
    dir: DirectionState,
    poison: Arc<Poison>,
}

impl Receiver {
    /// The full length of the record whose header is `h`, so a stream reader knows how many
    /// bytes to read. Refuses unknown types and oversize lengths before any allocation.
    pub fn record_len(h: &[u8; HEADER_BYTES]) -> Result<usize, AttestError> {
        if RecordType::from_byte(h[0]).is_none() {
            return Err(AttestError::MalformedRecord(format!(
                "unknown record type {}",
                h[0]
            )));
        }
        let len = u32::from_be_bytes([h[9], h[10], h[11], h[12]]) as usize;
        if len > RECORD_PAYLOAD_BYTES_MAX {
            return Err(AttestError::RecordTooLarge {
                len,
                max: RECORD_PAYLOAD_BYTES_MAX,
            });
        }
        Ok(len + RECORD_OVERHEAD_BYTES)
    }

    /// Authenticates and decrypts one whole record in place.
    pub fn open<'a>(&mut self, record: &'a mut [u8]) -> Result<Opened<'a>, AttestError> {
        self.poison.check()?;
        if self.dir.closed {
            return self.poison.fail(AttestError::SessionClosed);
        }
        match self.open_checked(record) {
            Ok((ty, len)) => {
                if ty == RecordType::Close {
                    self.dir.closed = true;
                    return Ok(Opened::Close);
                }
                Ok(Opened::Data(&record[HEADER_BYTES..HEADER_BYTES + len]))
            }
            Err(e) => self.poison.fail(e),
        }
    }

    fn open_checked(&mut self, record: &mut [u8]) -> Result<(RecordType, usize), AttestError> {
        let h: [u8; HEADER_BYTES] = record
            .get(..HEADER_BYTES)
            .and_then(|h| h.try_into().ok())
            .ok_or(AttestError::Truncated)?;
        let total = Self::record_len(&h)?;
        if record.len() != total {
            return Err(if record.len() < total {
                AttestError::Truncated
            } else {
                AttestError::MalformedRecord(format!(
                    "{} bytes for a record of {total}",
                    record.len()
                ))
            });
        }
        let seq = u64::from_be_bytes(h[1..9].try_into().expect("8 bytes"));
        if seq != self.dir.seq {
            return Err(AttestError::UnexpectedSequence {
                expected: self.dir.seq,
                presented: seq,
            });
        }
        let len = total - RECORD_OVERHEAD_BYTES;
        let (body, trailer) = record[HEADER_BYTES..].split_at_mut(len);
        let (tag, mac) = trailer.split_at(TAG_BYTES);
        let expected_mac = self.dir.mac(&h, tag);
        if !constant_time_eq(&expected_mac, mac) {
            return Err(AttestError::BadRecord);
        }
        let tag = Tag::try_from(tag).map_err(|_| AttestError::BadRecord)?;
        self.dir
            .enc
            .open_in_place_separate_tag(self.dir.nonce(), Aad::from(&h), tag, body, 0..)
            .map_err(|_| AttestError::BadRecord)?;
        self.dir.advance(len, expected_mac);
        // Invariant: `record_len` accepted the type byte.
        Ok((RecordType::from_byte(h[0]).expect("checked type"), len))
    }

    /// Called at the end of the byte stream: refuses a stream that ended without `Close`.
    pub fn finish(&self) -> Result<(), AttestError> {
        self.poison.check()?;
        if self.dir.closed {
            Ok(())
        } else {
            self.poison.fail(AttestError::Truncated)
        }
    }

    /// Records opened so far.
    pub fn records_received(&self) -> u64 {
        self.dir.seq
    }

    /// The MAC chain value after the last record opened (see [`Sender::chain`]).
    pub fn chain(&self) -> &[u8] {
        &self.dir.chain
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

/// An established, attested channel: the verified peer and both directions.
pub struct Channel {
    peer: VerifiedPeer,
    sender: Sender,
    receiver: Receiver,
}

impl Channel {
    pub(crate) fn new(peer: VerifiedPeer, role: Role, k: &SharedKey, transcript: [u8; 32]) -> Self {
        let (out, inn) = match role {
            Role::Initiator => (
                Direction::InitiatorToResponder,
                Direction::ResponderToInitiator,
            ),
            Role::Responder => (
                Direction::ResponderToInitiator,
                Direction::InitiatorToResponder,
            ),
        };
        Self::from_keys(
            peer,
            (&k.direction(out), out),
            (&k.direction(inn), inn),
            transcript,
        )
    }

    fn from_keys(
        peer: VerifiedPeer,
        out: (&DirectionKeys, Direction),
        inn: (&DirectionKeys, Direction),
        transcript: [u8; 32],
    ) -> Self {
        let poison = Arc::new(Poison::default());
        Self {
            peer,
            sender: Sender {
                dir: DirectionState::new(out.0, out.1, transcript),
                poison: Arc::clone(&poison),
            },
            receiver: Receiver {
                dir: DirectionState::new(inn.0, inn.1, transcript),
                poison,
            },
        }
    }

    /// The verified peer.
    pub fn peer(&self) -> &VerifiedPeer {
        &self.peer
    }

    /// The sending half.
    pub fn sender(&mut self) -> &mut Sender {
        &mut self.sender
    }

    /// The receiving half.
    pub fn receiver(&mut self) -> &mut Receiver {
        &mut self.receiver
    }

    /// Splits the channel so each half can run on its own thread. A failure in either half
    /// still fails both.
    pub fn split(self) -> (VerifiedPeer, Sender, Receiver) {
        (self.peer, self.sender, self.receiver)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Secret;

    fn keys(enc: u8, auth: u8) -> DirectionKeys {
        DirectionKeys {
            enc: Secret::new([enc; 32]),
            auth: Secret::new([auth; 32]),
        }
    }

    fn halves(tx_keys: DirectionKeys, rx_keys: DirectionKeys) -> (Sender, Receiver) {
        let d = Direction::InitiatorToResponder;
        let poison = Arc::new(Poison::default());
        (
            Sender {
                dir: DirectionState::new(&tx_keys, d, [0; 32]),
                poison: Arc::new(Poison::default()),
            },
            Receiver {
                dir: DirectionState::new(&rx_keys, d, [0; 32]),
                poison,
            },
        )
    }

    #[test]
    fn swapping_the_encryption_and_authentication_keys_fails_every_record() {
        for len in [0usize, 1, 100, 4096] {
            let (mut tx, mut rx) = halves(keys(1, 2), keys(2, 1));
            let mut rec = tx.seal_bytes(&vec![7; len]).unwrap();
            assert_eq!(rx.open(&mut rec), Err(AttestError::BadRecord), "len {len}");
        }
        // Only the authentication key wrong, or only the encryption key wrong: also refused.
        for (a, b) in [(keys(1, 2), keys(1, 3)), (keys(1, 2), keys(3, 2))] {
            let (mut tx, mut rx) = halves(a, b);
            let mut rec = tx.seal_bytes(b"hello").unwrap();
            assert_eq!(rx.open(&mut rec), Err(AttestError::BadRecord));
        }
        let (mut tx, mut rx) = halves(keys(1, 2), keys(1, 2));
        let mut rec = tx.seal_bytes(b"hello").unwrap();
        assert_eq!(rx.open(&mut rec), Ok(Opened::Data(b"hello")));
    }

    #[test]
    fn the_mac_alone_does_not_suffice() {
        // Same authentication key, so the MAC chain verifies; the AEAD must still refuse.
        let (mut tx, mut rx) = halves(keys(1, 2), keys(9, 2));
        let mut rec = tx.seal_bytes(b"hello").unwrap();
        assert_eq!(rx.open(&mut rec), Err(AttestError::BadRecord));
    }
}
