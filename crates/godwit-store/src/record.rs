//! The member's durable state on the host's disk: a chain of records the SM seals.
//!
//! Every ready the member must make durable becomes one record: a `Delta` (the hard state
//! and the entries it appends), or a `Base` (the whole log: snapshot, entries, hard state)
//! when a snapshot is taken or installed, after which the host may drop the records before
//! it. A record is `number ‖ nonce ‖ AES-256-GCM(store key, nonce, record, aad = label ‖
//! number)`, and it names the SHA-256 of the sealed record before it, so the host can
//! neither read, alter, reorder nor splice records.
//!
//! Freshness: each record's number moves the component's monotonic counter
//! ([`godwit_hw::Hardware::nv_counter`]) before the member acts on it being durable. The
//! counter also carries the term of the hard state written, so a member whose records are
//! refused knows the highest term it may have voted in ([`pack`]). A host that hands back
//! an older (authentic) chain is found out: its last number is behind the counter.

use std::sync::Arc;

use godwit_hw::Hardware;
use godwit_wire::Measurement;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::log::{EntryImage, HardStateImage, MemLog, SnapshotImage};

/// Largest sealed record accepted from the host: a base with the largest snapshot and a
/// full log after it.
pub const RECORD_BYTES_MAX: usize = crate::SNAPSHOT_BYTES_MAX + 64 * 1024 * 1024;
/// Most records accepted after a base: the member writes a base at least this often.
pub const RECORDS_PER_BASE_MAX: usize = 4096;

/// Bits of the counter that hold the record number (below them: the term).
const NUMBER_BITS: u32 = 40;
const NUMBER_MASK: u64 = (1 << NUMBER_BITS) - 1;
/// The largest term the counter can carry; beyond it, the counter holds this.
const TERM_MAX: u64 = (1 << (64 - NUMBER_BITS)) - 1;

/// The counter's value for record `number` written at `term`: the term above the record
/// number, so that it grows with every record (terms never go back).
pub(crate) fn pack(term: u64, number: u64) -> u64 {
    (term.min(TERM_MAX) << NUMBER_BITS) | (number & NUMBER_MASK)
}

/// (term, record number) of a counter value.
pub(crate) fn unpack(value: u64) -> (u64, u64) {
    (value >> NUMBER_BITS, value & NUMBER_MASK)
}

/// What one record holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Body {
    /// The whole log: the host may drop every record before this one.
    Base {
        /// The member lost its records before and has not caught up yet: it casts no
        /// vote (kept across restarts until it caught up).
        rejoining: bool,
        hard_state: HardStateImage,
        snapshot: SnapshotImage,
        entries: Vec<EntryImage>,
    },
    /// What one ready appended: entries (replacing those from their first index on), and
    /// the hard state if it changed.
    Delta {
        hard_state: Option<HardStateImage>,
        entries: Vec<EntryImage>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    number: u64,
    prev: [u8; 32],
    body: Body,
}

/// A record for the host to store durably, then report with
/// `Monitor::persisted(number)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreWrite {
    /// The record's number.
    pub number: u64,
    /// The sealed record.
    pub bytes: Vec<u8>,
    /// A base: once it is durable, the records before it may be dropped.
    pub base: bool,
}

/// Why the host's records were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// A record failed authentication or does not follow the one before it.
    #[error("store record {what}: corrupted, not this SM's, or spliced from other copies")]
    Corrupt {
        /// Which record and why.
        what: String,
    },
    /// The records authenticate, but end before this SM's last durable write: the host
    /// handed back an older copy (or none).
    #[error(
        "the store's records end at write {found}, but the component's counter says {expected}: an older copy was handed back"
    )]
    RolledBack {
        /// The last record's number (0: none).
        found: u64,
        /// The number the counter holds.
        expected: u64,
    },
}

/// Seals and opens the member's records with this SM's store key, and keeps the chain.
pub(crate) struct Chain {
    key: LessSafeKey,
    hw: Arc<dyn Hardware>,
    /// The next record's number.
    pub(crate) next: u64,
    /// The link of the last record written.
    prev: [u8; 32],
}

const LABEL: &[u8] = b"godwit store record v2";

fn link(sealed: &[u8]) -> [u8; 32] {
    Sha256::digest(sealed).into()
}

fn corrupt(what: impl Into<String>) -> OpenError {
    OpenError::Corrupt { what: what.into() }
}

/// What the host's records held.
pub(crate) struct Restored {
    pub(crate) log: MemLog,
    /// The member was still catching up after losing its records.
    pub(crate) rejoining: bool,
}

impl Chain {
    /// The identity under which the hardware derives the store's key.
    pub(crate) fn key_identity() -> Measurement {
        Measurement::of_parts("godwit store v2", &[])
    }

    /// A chain whose next record is `next`, after a record whose link is `prev`.
    pub(crate) fn new(hw: Arc<dyn Hardware>, next: u64, prev: [u8; 32]) -> Self {
        let key = hw.sealing_key(&Self::key_identity());
        // Invariant: sealing keys are 32 bytes, AES-256's key length.
        let key =
            LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key.as_bytes()).expect("32-byte key"));
        Self {
            key,
            hw,
            next,
            prev,
        }
    }

    fn aad(number: u64) -> Vec<u8> {
        let mut aad = LABEL.to_vec();
        aad.extend_from_slice(&number.to_be_bytes());
        aad
    }

    /// Seals `body` as the next record.
    pub(crate) fn seal(&mut self, body: Body) -> StoreWrite {
        let number = self.next;
        let base = matches!(body, Body::Base { .. });
        let record = Record {
            number,
            prev: if base { [0; 32] } else { self.prev },
            body,
        };
        let plain = postcard::to_stdvec(&record).expect("records always encode");
        let mut nonce = [0u8; NONCE_LEN];
        self.hw.fill_random(&mut nonce);
        let mut out = Vec::with_capacity(8 + NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(&number.to_be_bytes());
        out.extend_from_slice(&nonce);
        let mut body = plain;
        // Invariant: ring fails only beyond GCM's 64 GiB message limit.
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(Self::aad(number)),
                &mut body,
            )
            .expect("within AES-GCM's limit");
        out.extend_from_slice(&body);
        self.prev = link(&out);
        self.next = number + 1;
        StoreWrite {
            number,
            bytes: out,
            base,
        }
    }

    fn open(&self, sealed: &[u8]) -> Result<Record, OpenError> {
        if sealed.len() > RECORD_BYTES_MAX {
            return Err(corrupt(format!("of {} bytes (too large)", sealed.len())));
        }
        let (number, rest) = sealed
            .split_first_chunk::<8>()
            .ok_or_else(|| corrupt("(truncated)"))?;
        let number = u64::from_be_bytes(*number);
        let (nonce, ct) = rest
            .split_first_chunk::<NONCE_LEN>()
            .ok_or_else(|| corrupt(format!("{number} (truncated)")))?;
        let mut body = ct.to_vec();
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(Self::aad(number)),
                &mut body,
            )
            .map_err(|_| corrupt(format!("{number} (authentication failed)")))?;
        let record: Record = godwit_wire::decode(plain, RECORD_BYTES_MAX)
            .map_err(|e| corrupt(format!("{number} ({e})")))?;
        if record.number != number {
            return Err(corrupt(format!("{number} (numbered {})", record.number)));
        }
        Ok(record)
    }

    /// Opens the records the host kept (oldest first: a base and what followed it) and
    /// rebuilds the log. Every record must authenticate and follow the one before it, and
    /// the last must not be behind the component's counter. On success the chain goes on
    /// after the last record, and the counter is moved up to it (a record written just
    /// before a crash may be ahead of the counter).
    pub(crate) fn restore(&mut self, records: &[Vec<u8>]) -> Result<Restored, OpenError> {
        let counter = self.hw.nv_counter();
        let (_, expected) = unpack(counter.get());
        if records.is_empty() {
            if expected > 0 {
                return Err(OpenError::RolledBack { found: 0, expected });
            }
            return Ok(Restored {
                log: MemLog::default(),
                rejoining: false,
            });
        }
        if records.len() > RECORDS_PER_BASE_MAX + 1 {
            return Err(corrupt(format!("chain of {} records", records.len())));
        }
        let mut log = MemLog::default();
        let mut rejoining = false;
        let mut prev: Option<([u8; 32], u64)> = None;
        for sealed in records {
            let r = self.open(sealed)?;
            match (&r.body, prev) {
                (Body::Base { .. }, None) => {}
                (Body::Delta { .. }, Some((link_before, n)))
                    if r.prev == link_before && r.number == n + 1 => {}
                (Body::Base { .. }, Some(_)) => {
                    return Err(corrupt(format!("{} (a base after the first)", r.number)));
                }
                _ => {
                    return Err(corrupt(format!(
                        "{} (it does not follow the record before it)",
                        r.number
                    )));
                }
            }
            apply(&mut log, &mut rejoining, r.body)
                .map_err(|why| corrupt(format!("{} ({why})", r.number)))?;
            prev = Some((link(sealed), r.number));
        }
        // Invariant: at least one record was read above.
        let (last_link, last) = prev.expect("records is not empty");
        let (counted_term, _) = unpack(counter.get());
        // The counter also says the highest term a counted record was written in: a chain
        // whose hard state is of an earlier term is an older branch.
        if last < expected || log.hard_state.term < counted_term {
            return Err(OpenError::RolledBack {
                found: last,
                expected,
            });
        }
        self.next = last + 1;
        self.prev = last_link;
        Ok(Restored { log, rejoining })
    }
}

/// Applies one record's body to the log being rebuilt.
fn apply(log: &mut MemLog, rejoining: &mut bool, body: Body) -> Result<(), String> {
    let entries = match body {
        Body::Base {
            rejoining: r,
            hard_state,
            snapshot,
            entries,
        } => {
            *rejoining = r;
            log.snapshot = snapshot;
            log.hard_state = hard_state;
            log.entries.clear();
            entries
        }
        Body::Delta {
            hard_state,
            entries,
        } => {
            if let Some(hs) = hard_state {
                log.hard_state = hs;
            }
            entries
        }
    };
    let mut ents = Vec::with_capacity(entries.len());
    for (k, image) in entries.iter().enumerate() {
        let e = image.entry().ok_or("an entry of unknown type")?;
        if k > 0
            && e.index
                != ents
                    .last()
                    .map_or(0, |p: &raft::eraftpb::Entry| p.index + 1)
        {
            return Err("entries out of order".into());
        }
        ents.push(e);
    }
    if let Some(first) = ents.first()
        && (first.index < log.first() || first.index > log.last() + 1)
    {
        return Err(format!(
            "entries from {} do not follow a log of {}..={}",
            first.index,
            log.first(),
            log.last()
        ));
    }
    log.append(&ents);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use godwit_hw::{Manufacturer, SimHardware};
    use godwit_wire::HostId;

    fn hw(secret: u8) -> Arc<dyn Hardware> {
        let m = Manufacturer::from_seed([1; 32]);
        let id = m.provision_from_secret(HostId::new("h").unwrap(), [secret; 32].into());
        Arc::new(SimHardware::new(id, Measurement([3; 32]), 4).0)
    }

    fn entry(index: u64, term: u64) -> EntryImage {
        EntryImage {
            index,
            term,
            kind: 0,
            data: format!("secret entry {index}").into_bytes(),
            context: vec![],
        }
    }

    fn base() -> Body {
        Body::Base {
            rejoining: true,
            hard_state: HardStateImage {
                term: 1,
                vote: 0,
                commit: 0,
            },
            snapshot: SnapshotImage::default(),
            entries: vec![],
        }
    }

    fn delta(index: u64, term: u64) -> Body {
        Body::Delta {
            hard_state: Some(HardStateImage {
                term,
                vote: 1,
                commit: index - 1,
            }),
            entries: vec![entry(index, term)],
        }
    }

    /// Writes a base and three deltas, marking each durable on the counter as a member
    /// does.
    fn written(hw: &Arc<dyn Hardware>) -> Vec<Vec<u8>> {
        let mut chain = Chain::new(Arc::clone(hw), 1, [0; 32]);
        let mut out = Vec::new();
        for body in [base(), delta(1, 1), delta(2, 1), delta(3, 2)] {
            let w = chain.seal(body);
            hw.nv_counter().advance(pack(2, w.number)).unwrap();
            out.push(w.bytes);
        }
        out
    }

    #[test]
    fn records_round_trip_and_hide_their_content() {
        let hw = hw(1);
        let records = written(&hw);
        assert!(
            records
                .iter()
                .all(|r| !r.windows(12).any(|w| w == b"secret entry"))
        );
        let r = Chain::new(Arc::clone(&hw), 0, [0; 32])
            .restore(&records)
            .unwrap();
        assert_eq!((r.log.first(), r.log.last()), (1, 3));
        assert_eq!(r.log.hard_state.term, 2);
        assert!(r.rejoining);
    }

    #[test]
    fn altered_spliced_reordered_foreign_or_older_records_are_refused() {
        let hw = hw(1);
        let records = written(&hw);
        let restore = |rs: &[Vec<u8>]| Chain::new(Arc::clone(&hw), 0, [0; 32]).restore(rs);
        let mut altered = records.clone();
        altered[2][20] ^= 1;
        assert!(matches!(restore(&altered), Err(OpenError::Corrupt { .. })));
        let mut swapped = records.clone();
        swapped.swap(1, 2);
        assert!(matches!(restore(&swapped), Err(OpenError::Corrupt { .. })));
        let mut gap = records.clone();
        gap.remove(2);
        assert!(matches!(restore(&gap), Err(OpenError::Corrupt { .. })));
        // A record from another chain of this SM with the same number, spliced in.
        let mut other = Chain::new(Arc::clone(&hw), 1, [0; 32]);
        other.seal(base());
        other.seal(delta(1, 1));
        let forged = other.seal(delta(2, 9)).bytes;
        let mut spliced = records.clone();
        spliced[2] = forged;
        assert!(matches!(restore(&spliced), Err(OpenError::Corrupt { .. })));
        // Another SM's records.
        assert!(matches!(
            Chain::new(self::hw(2), 0, [0; 32]).restore(&records),
            Err(OpenError::Corrupt { .. })
        ));
        // An older copy (the last record dropped), or none.
        assert!(matches!(
            restore(&records[..3]),
            Err(OpenError::RolledBack {
                found: 3,
                expected: 4
            })
        ));
        assert!(matches!(
            restore(&[]),
            Err(OpenError::RolledBack { found: 0, .. })
        ));
    }

    #[test]
    fn the_counter_carries_the_term() {
        assert_eq!(unpack(pack(7, 1234)), (7, 1234));
        assert!(pack(3, 1) > pack(2, 1_000_000));
        assert!(pack(3, 2) > pack(3, 1));
        assert_eq!(unpack(pack(u64::MAX, 5)).0, TERM_MAX);
    }
}
