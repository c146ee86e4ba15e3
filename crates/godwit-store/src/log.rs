//! The Raft log on sealed storage (openraft's `RaftLogStorage`).

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote,
};
use redb::{ReadableDatabase, ReadableTable};

use crate::storage::{ANCHOR, COMMITTED, LOGS, META, PURGED, Storage, VOTE, link};
use crate::{NodeId, TypeConfig};

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

/// The log store of one member.
#[derive(Clone)]
pub struct LogStore {
    st: Arc<Storage>,
}

fn read_err(e: impl ToString) -> StorageError<NodeId> {
    StorageIOError::read_logs(AnyError::error(e.to_string())).into()
}

fn write_err(e: impl ToString) -> StorageError<NodeId> {
    StorageIOError::write_logs(AnyError::error(e.to_string())).into()
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> std::result::Result<T, String> {
    postcard::from_bytes(bytes).map_err(|e| e.to_string())
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    // Invariant: openraft's entries, votes and log ids always serialise.
    postcard::to_stdvec(v).expect("serialisable")
}

impl LogStore {
    /// The log store over `st`.
    pub fn new(st: Arc<Storage>) -> Self {
        Self { st }
    }

    fn meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.st.get_meta(key).map_err(read_err)? {
            Some(bytes) => Ok(Some(decode(&bytes).map_err(read_err)?)),
            None => Ok(None),
        }
    }

    fn entries(&self, range: (Bound<u64>, Bound<u64>)) -> Result<Vec<Entry<TypeConfig>>> {
        let tx = self.st.db.begin_read().map_err(read_err)?;
        let table = tx.open_table(LOGS).map_err(read_err)?;
        let mut out = Vec::new();
        for item in table.range::<u64>(range).map_err(read_err)? {
            let (k, v) = item.map_err(read_err)?;
            let index = k.value();
            let (_, plain) = self.st.open_entry(index, v.value()).map_err(read_err)?;
            let entry: Entry<TypeConfig> = decode(&plain).map_err(read_err)?;
            if entry.log_id.index != index {
                return Err(read_err(format!(
                    "log entry filed at {index} is entry {}",
                    entry.log_id.index
                )));
            }
            out.push(entry);
        }
        Ok(out)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>> {
        self.entries((range.start_bound().cloned(), range.end_bound().cloned()))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        let last_purged: Option<LogId<NodeId>> = self.meta(PURGED)?;
        let last = {
            let tx = self.st.db.begin_read().map_err(read_err)?;
            let table = tx.open_table(LOGS).map_err(read_err)?;
            table.last().map_err(read_err)?.map(|(k, _)| k.value())
        };
        let last_log_id = match last {
            Some(index) => self
                .entries((Bound::Included(index), Bound::Included(index)))?
                .pop()
                .map(|e| e.log_id),
            None => None,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last_log_id.or(last_purged),
        })
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<()> {
        self.st
            .put_meta(VOTE, &encode(vote))
            .map_err(|e| StorageIOError::write_vote(AnyError::error(e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>> {
        self.meta(VOTE)
    }

    /// Not fsynced: a lost committed id only makes openraft start from the last applied
    /// entry (it takes the larger of the two), and the leader re-sends the commit index.
    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<()> {
        self.st
            .put_meta_with(COMMITTED, &encode(&committed), redb::Durability::None)
            .map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>> {
        Ok(self.meta::<Option<LogId<NodeId>>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
    {
        let tx = self.st.db.begin_write().map_err(write_err)?;
        {
            let mut table = tx.open_table(LOGS).map_err(write_err)?;
            let meta = tx.open_table(META).map_err(write_err)?;
            // The link of the entry just written, for the next one of the batch.
            let mut last: Option<(u64, crate::storage::Link)> = None;
            for entry in entries {
                let index = entry.log_id.index;
                let prev = match last {
                    Some((i, l)) if i + 1 == index => l,
                    _ => self
                        .st
                        .link_before(&table, &meta, index)
                        .map_err(write_err)?,
                };
                let bytes = encode(&entry);
                let linked = link(&prev, index, &bytes);
                let sealed = self.st.seal_entry(index, &linked, &bytes);
                table.insert(index, sealed.as_slice()).map_err(write_err)?;
                last = Some((index, linked));
            }
        }
        self.st.commit_durable(tx).map_err(write_err)?;
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        let tx = self.st.db.begin_write().map_err(write_err)?;
        {
            let mut table = tx.open_table(LOGS).map_err(write_err)?;
            table
                .retain_in(log_id.index.., |_, _| false)
                .map_err(write_err)?;
        }
        self.st.commit_durable(tx).map_err(write_err)
    }

    /// Removes the entries up to `log_id` and, in the same write, records the purge mark
    /// and the link of the last entry removed, which the first remaining entry follows.
    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        let tx = self.st.db.begin_write().map_err(write_err)?;
        {
            let mut table = tx.open_table(LOGS).map_err(write_err)?;
            let mut meta = tx.open_table(META).map_err(write_err)?;
            let anchor = match log_id.index.checked_add(1) {
                Some(after) => Some(
                    self.st
                        .link_before(&table, &meta, after)
                        .map_err(write_err)?,
                ),
                None => None,
            };
            let sealed = self.st.sealer.seal(PURGED.as_bytes(), &encode(&log_id));
            meta.insert(PURGED, sealed.as_slice()).map_err(write_err)?;
            if let Some(anchor) = anchor {
                let sealed = self.st.sealer.seal(ANCHOR.as_bytes(), &anchor);
                meta.insert(ANCHOR, sealed.as_slice()).map_err(write_err)?;
            }
            table
                .retain_in(..=log_id.index, |_, _| false)
                .map_err(write_err)?;
        }
        self.st.commit_durable(tx).map_err(write_err)
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }
}
