//! The store's files: one redb database per member on the host's disk, every value sealed.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::seal::{Corrupt, Sealer};

pub(crate) const LOGS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("logs");
pub(crate) const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");

/// Keys of the meta table.
pub(crate) const VOTE: &str = "vote";
pub(crate) const COMMITTED: &str = "committed";
pub(crate) const PURGED: &str = "purged";
pub(crate) const SNAPSHOT: &str = "snapshot";

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
}

pub(crate) fn log_label(index: u64) -> Vec<u8> {
    let mut l = b"log ".to_vec();
    l.extend_from_slice(&index.to_be_bytes());
    l
}

/// The database and the sealer, shared by the log store and the state machine.
pub struct Storage {
    pub(crate) db: Database,
    pub(crate) sealer: Sealer,
}

fn db_err(e: impl std::fmt::Display) -> OpenError {
    OpenError::Database(e.to_string())
}

impl Storage {
    /// Opens (or creates) the store at `path`, checking that every item authenticates: a
    /// member never runs on state it cannot verify.
    pub fn open(path: &Path, sealer: Sealer) -> Result<Arc<Self>, OpenError> {
        let db = Database::create(path).map_err(db_err)?;
        {
            let tx = db.begin_write().map_err(db_err)?;
            tx.open_table(LOGS).map_err(db_err)?;
            tx.open_table(META).map_err(db_err)?;
            tx.commit().map_err(db_err)?;
        }
        let st = Self { db, sealer };
        st.verify()?;
        Ok(Arc::new(st))
    }

    fn verify(&self) -> Result<(), OpenError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let logs = tx.open_table(LOGS).map_err(db_err)?;
        for item in logs.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            let index = k.value();
            self.sealer.open(&log_label(index), v.value(), || {
                format!("log entry {index}")
            })?;
        }
        let meta = tx.open_table(META).map_err(db_err)?;
        for item in meta.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            let key = k.value().to_owned();
            self.sealer
                .open(key.as_bytes(), v.value(), || key.clone())?;
        }
        Ok(())
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
        tx.commit().map_err(|e| e.to_string())
    }
}
