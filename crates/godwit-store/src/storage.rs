//! The store's files: one redb database per member on the host's disk, every value sealed.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use crate::seal::{Corrupt, Sealer};

pub(crate) const LOGS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("logs");
pub(crate) const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");

/// Keys of the meta table.
pub(crate) const VOTE: &str = "vote";
pub(crate) const COMMITTED: &str = "committed";
pub(crate) const PURGED: &str = "purged";
pub(crate) const SNAPSHOT: &str = "snapshot";
/// The record of the last durable write: its number, matched against the component's
/// counter, and a digest of the state it left ([`state_digest`]).
pub(crate) const GENERATION: &str = "generation";
/// The link the first entry in the log table follows: that of the last purged entry (all
/// zeros before any purge). See [`Link`].
pub(crate) const ANCHOR: &str = "anchor";

/// Each log entry is stored with a link, a hash over the link of the entry before it, its
/// index and its bytes: the entries form a chain from [`ANCHOR`] to the last entry, and the
/// last entry is in the write record's digest. An authentic entry from an older copy (one
/// a new leader overwrote, say) put back in the middle of the log breaks the chain at the
/// entry after it.
pub(crate) type Link = [u8; 32];

/// The link of the entry at `index` with encoding `entry`, after `prev`.
pub(crate) fn link(prev: &Link, index: u64, entry: &[u8]) -> Link {
    let mut d = ring::digest::Context::new(&ring::digest::SHA256);
    d.update(b"godwit store log link v1");
    d.update(prev);
    d.update(&index.to_be_bytes());
    d.update(entry);
    finish(d)
}

fn finish(d: ring::digest::Context) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(d.finish().as_ref());
    out
}

/// What a write record vouches for: the last log entry (index and sealed bytes) and the
/// vote, purge mark, snapshot and chain anchor as stored. A newer record moved into an
/// older file, or a file whose newest entries were removed, no longer matches. (The
/// committed id, a hint written without fsync, is left out.)
fn state_digest(
    logs: &impl ReadableTable<u64, &'static [u8]>,
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<[u8; 32], redb::StorageError> {
    let mut d = ring::digest::Context::new(&ring::digest::SHA256);
    let mut item = |bytes: Option<&[u8]>| match bytes {
        Some(b) => {
            d.update(&(b.len() as u64).to_be_bytes());
            d.update(b);
        }
        None => d.update(&u64::MAX.to_be_bytes()),
    };
    match logs.last()? {
        Some((k, v)) => {
            item(Some(&k.value().to_be_bytes()));
            item(Some(v.value()));
        }
        None => item(None),
    }
    for key in [VOTE, PURGED, SNAPSHOT, ANCHOR] {
        item(meta.get(key)?.as_ref().map(|v| v.value()));
    }
    Ok(finish(d))
}

/// Why the store's files could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The database file could not be opened or read.
    #[error("store database: {0}")]
    Database(String),
    /// An item failed authentication: the host's copy is corrupted or not this SM's.
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
    /// Every item authenticates, but the file is older than this SM's last durable write:
    /// the host handed back an older copy (or removed the file).
    #[error(
        "the store file is older than this SM's last write (write {found}, the component's counter says {expected}): an older copy was handed back"
    )]
    RolledBack {
        /// The last write the file holds (0: none).
        found: u64,
        /// The last write the component's counter recorded.
        expected: u64,
    },
    /// The component's monotonic counter could not be written.
    #[error(transparent)]
    Counter(#[from] godwit_hw::NvError),
}

pub(crate) fn log_label(index: u64) -> Vec<u8> {
    let mut l = b"log ".to_vec();
    l.extend_from_slice(&index.to_be_bytes());
    l
}

/// The database and the sealer, shared by the log store and the state machine.
///
/// Freshness: every durable write carries the next write number (the sealed
/// `GENERATION` item) and moves the hardware's monotonic counter to it before it is
/// acknowledged. A file whose last write number is below the counter is an older copy, and
/// is refused ([`OpenError::RolledBack`]); one above it is a write that completed just
/// before a crash and was never acknowledged.
pub struct Storage {
    pub(crate) db: Database,
    pub(crate) sealer: Sealer,
    generation: AtomicU64,
}

fn db_err(e: impl std::fmt::Display) -> OpenError {
    OpenError::Database(e.to_string())
}

impl Storage {
    /// Opens (or creates) the store at `path`, checking that every item authenticates and
    /// that the file is not older than this SM's last durable write: a member never runs on
    /// state it cannot verify. An empty store is refused as rolled back once this component
    /// has written one (see [`Storage::open_empty`]).
    pub fn open(path: &Path, sealer: Sealer) -> Result<Arc<Self>, OpenError> {
        Self::open_with(path, sealer, false)
    }

    /// As [`Storage::open`], accepting an empty store whatever the component's counter
    /// says: for a member that starts over and rejoins from its peers.
    pub fn open_empty(path: &Path, sealer: Sealer) -> Result<Arc<Self>, OpenError> {
        Self::open_with(path, sealer, true)
    }

    fn open_with(path: &Path, sealer: Sealer, empty_ok: bool) -> Result<Arc<Self>, OpenError> {
        let db = Database::create(path).map_err(db_err)?;
        {
            let tx = db.begin_write().map_err(db_err)?;
            tx.open_table(LOGS).map_err(db_err)?;
            tx.open_table(META).map_err(db_err)?;
            tx.commit().map_err(db_err)?;
        }
        let st = Self {
            db,
            sealer,
            generation: AtomicU64::new(0),
        };
        let (items, found) = st.verify()?;
        let counter = st.sealer.hardware().nv_counter();
        let expected = counter.get();
        if found < expected && !(items == 0 && empty_ok) {
            return Err(OpenError::RolledBack { found, expected });
        }
        counter.advance(found)?;
        st.generation.store(found.max(expected), Ordering::SeqCst);
        Ok(Arc::new(st))
    }

    /// Authenticates every item; the number of items and the last write number.
    fn verify(&self) -> Result<(usize, u64), OpenError> {
        let mut items = 0;
        let mut generation = 0;
        let tx = self.db.begin_read().map_err(db_err)?;
        let logs = tx.open_table(LOGS).map_err(db_err)?;
        let meta = tx.open_table(META).map_err(db_err)?;
        let anchor = meta.get(ANCHOR).map_err(db_err)?;
        let mut prev = self.open_anchor(anchor.as_ref().map(|v| v.value()))?;
        for item in logs.iter().map_err(db_err)? {
            items += 1;
            let (k, v) = item.map_err(db_err)?;
            let index = k.value();
            let (stored, entry) = self.open_entry(index, v.value())?;
            if stored != link(&prev, index, &entry) {
                return Err(Corrupt {
                    what: format!(
                        "log entry {index} (it does not follow the entry before it: put back from an older copy?)"
                    ),
                }
                .into());
            }
            prev = stored;
        }
        for item in meta.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            let key = k.value().to_owned();
            let value = self
                .sealer
                .open(key.as_bytes(), v.value(), || key.clone())?;
            items += 1;
            if key == GENERATION {
                let record: Option<([u8; 8], [u8; 32])> = value
                    .split_first_chunk::<8>()
                    .and_then(|(n, rest)| Some((*n, rest.try_into().ok()?)));
                let Some((n, digest)) = record else {
                    return Err(Corrupt {
                        what: "write record".into(),
                    }
                    .into());
                };
                if state_digest(&logs, &meta).map_err(db_err)? != digest {
                    return Err(Corrupt {
                        what: "store state (it does not match the last write record: items from different copies?)".into(),
                    }
                    .into());
                }
                generation = u64::from_be_bytes(n);
            }
        }
        Ok((items, generation))
    }

    /// Commits a durable write: stamps it with the next write number, and moves the
    /// hardware's counter to that number before returning (so before the write is
    /// acknowledged). Write transactions are serialised by the database, so numbers follow
    /// commit order.
    pub(crate) fn commit_durable(&self, tx: WriteTransaction) -> Result<(), String> {
        let n = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        {
            let logs = tx.open_table(LOGS).map_err(|e| e.to_string())?;
            let mut meta = tx.open_table(META).map_err(|e| e.to_string())?;
            let digest = state_digest(&logs, &meta).map_err(|e| e.to_string())?;
            let mut record = n.to_be_bytes().to_vec();
            record.extend_from_slice(&digest);
            let sealed = self.sealer.seal(GENERATION.as_bytes(), &record);
            meta.insert(GENERATION, sealed.as_slice())
                .map_err(|e| e.to_string())?;
        }
        tx.commit().map_err(|e| e.to_string())?;
        self.sealer
            .hardware()
            .nv_counter()
            .advance(n)
            .map_err(|e| e.to_string())
    }

    /// Seals log entry `entry` for index `index`, with its link.
    pub(crate) fn seal_entry(&self, index: u64, link: &Link, entry: &[u8]) -> Vec<u8> {
        let mut plain = Vec::with_capacity(link.len() + entry.len());
        plain.extend_from_slice(link);
        plain.extend_from_slice(entry);
        self.sealer.seal(&log_label(index), &plain)
    }

    /// Opens a stored log entry: its link and its encoding.
    pub(crate) fn open_entry(&self, index: u64, sealed: &[u8]) -> Result<(Link, Vec<u8>), Corrupt> {
        let what = || format!("log entry {index}");
        let mut plain = self.sealer.open(&log_label(index), sealed, what)?;
        let Some(stored) = plain.first_chunk::<32>().copied() else {
            return Err(Corrupt { what: what() });
        };
        plain.drain(..stored.len());
        Ok((stored, plain))
    }

    /// The link the first entry of the log table follows, from the stored anchor item.
    pub(crate) fn open_anchor(&self, sealed: Option<&[u8]>) -> Result<Link, Corrupt> {
        let Some(sealed) = sealed else {
            return Ok([0; 32]);
        };
        let what = || "chain anchor".to_owned();
        let plain = self.sealer.open(ANCHOR.as_bytes(), sealed, what)?;
        plain.try_into().map_err(|_| Corrupt { what: what() })
    }

    /// The link an entry appended at `index` follows: that of the entry before it, or the
    /// anchor when the table holds none.
    pub(crate) fn link_before(
        &self,
        logs: &impl ReadableTable<u64, &'static [u8]>,
        meta: &impl ReadableTable<&'static str, &'static [u8]>,
        index: u64,
    ) -> Result<Link, String> {
        match logs.range(..index).map_err(|e| e.to_string())?.next_back() {
            Some(item) => {
                let (k, v) = item.map_err(|e| e.to_string())?;
                Ok(self
                    .open_entry(k.value(), v.value())
                    .map_err(|e| e.to_string())?
                    .0)
            }
            None => {
                let sealed = meta.get(ANCHOR).map_err(|e| e.to_string())?;
                self.open_anchor(sealed.as_ref().map(|v| v.value()))
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Reads and opens a meta item.
    pub(crate) fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        let tx = self.db.begin_read().map_err(|e| e.to_string())?;
        let table = tx.open_table(META).map_err(|e| e.to_string())?;
        let Some(v) = table.get(key).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        self.sealer
            .open(key.as_bytes(), v.value(), || key.to_owned())
            .map(Some)
            .map_err(|e| e.to_string())
    }

    /// Seals and writes a meta item durably.
    pub(crate) fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), String> {
        self.put_meta_with(key, value, redb::Durability::Immediate)
    }

    /// As [`Storage::put_meta`], with a chosen durability: an item Raft can re-learn (the
    /// committed log id) need not cost an fsync; it becomes durable with the next durable
    /// commit.
    pub(crate) fn put_meta_with(
        &self,
        key: &str,
        value: &[u8],
        durability: redb::Durability,
    ) -> Result<(), String> {
        let sealed = self.sealer.seal(key.as_bytes(), value);
        let mut tx = self.db.begin_write().map_err(|e| e.to_string())?;
        tx.set_durability(durability).map_err(|e| e.to_string())?;
        {
            let mut table = tx.open_table(META).map_err(|e| e.to_string())?;
            table
                .insert(key, sealed.as_slice())
                .map_err(|e| e.to_string())?;
        }
        if matches!(durability, redb::Durability::Immediate) {
            self.commit_durable(tx)
        } else {
            tx.commit().map_err(|e| e.to_string())
        }
    }
}
