//! The ledger as openraft's state machine, with sealed snapshots.

use std::io::Cursor;
use std::sync::{Arc, RwLock};

use godwit_proto::{Ledger, LedgerOutcome};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use crate::storage::{SNAPSHOT, Storage};
use crate::{NodeId, TypeConfig};

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

/// Largest snapshot accepted from a peer or from disk.
pub const SNAPSHOT_BYTES_MAX: usize = 256 * 1024 * 1024;

/// The replicated state: the ledger, and where in the log it stands.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SmData {
    /// The last log entry applied.
    pub last_applied: Option<LogId<NodeId>>,
    /// The membership as of that entry.
    pub membership: StoredMembership<NodeId, BasicNode>,
    /// The ownership ledger.
    pub ledger: Ledger,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

/// A read-only view of the applied ledger, for status and reads.
#[derive(Clone)]
pub struct LedgerView(Arc<RwLock<SmData>>);

impl LedgerView {
    /// Runs `f` on the applied state.
    pub fn read<R>(&self, f: impl FnOnce(&SmData) -> R) -> R {
        // A poisoned lock means a panic mid-apply; the node stops on such panics anyway.
        f(&self.0.read().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The state machine of one member.
#[derive(Clone)]
pub struct StateMachine {
    st: Arc<Storage>,
    data: Arc<RwLock<SmData>>,
}

fn sm_err(e: impl ToString) -> StorageError<NodeId> {
    StorageIOError::read_state_machine(AnyError::error(e.to_string())).into()
}

impl StateMachine {
    /// The state machine over `st`, starting from the last snapshot on disk.
    pub fn open(st: Arc<Storage>) -> std::result::Result<Self, String> {
        let data = match st.get_meta(SNAPSHOT)? {
            Some(bytes) => {
                let snap: StoredSnapshot =
                    postcard::from_bytes(&bytes).map_err(|e| e.to_string())?;
                postcard::from_bytes(&snap.data).map_err(|e| e.to_string())?
            }
            None => SmData::default(),
        };
        Ok(Self {
            st,
            data: Arc::new(RwLock::new(data)),
        })
    }

    /// A view of the applied ledger.
    pub fn view(&self) -> LedgerView {
        LedgerView(Arc::clone(&self.data))
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, SmData> {
        self.data.write().unwrap_or_else(|p| p.into_inner())
    }

    fn persist(&self, snap: &StoredSnapshot) -> Result<()> {
        // Invariant: snapshots always serialise.
        let bytes = postcard::to_stdvec(snap).expect("serialisable");
        self.st.put_meta(SNAPSHOT, &bytes).map_err(|e| {
            StorageIOError::write_snapshot(Some(snap.meta.signature()), AnyError::error(e)).into()
        })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>> {
        let (data, last, membership) = {
            let d = self.data.read().unwrap_or_else(|p| p.into_inner());
            // Invariant: the ledger always serialises.
            (
                postcard::to_stdvec(&*d).expect("serialisable"),
                d.last_applied,
                d.membership.clone(),
            )
        };
        let snapshot_id = match last {
            Some(l) => format!("{}-{}", l.leader_id, l.index),
            None => "empty".to_owned(),
        };
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: membership,
            snapshot_id,
        };
        self.persist(&StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        })?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>)> {
        let d = self.data.read().unwrap_or_else(|p| p.into_inner());
        Ok((d.last_applied, d.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<LedgerOutcome>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + openraft::OptionalSend,
    {
        let mut d = self.write();
        let mut out = Vec::new();
        for entry in entries {
            d.last_applied = Some(entry.log_id);
            out.push(match entry.payload {
                EntryPayload::Blank => LedgerOutcome::Applied(None),
                EntryPayload::Normal(op) => d.ledger.apply(&op),
                EntryPayload::Membership(m) => {
                    d.membership = StoredMembership::new(Some(entry.log_id), m);
                    LedgerOutcome::Applied(None)
                }
            });
        }
        Ok(out)
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<()> {
        let data = snapshot.into_inner();
        if data.len() > SNAPSHOT_BYTES_MAX {
            return Err(sm_err("snapshot too large"));
        }
        let mut installed: SmData = postcard::from_bytes(&data).map_err(sm_err)?;
        installed.last_applied = meta.last_log_id;
        installed.membership = meta.last_membership.clone();
        installed.ledger.check_invariants();
        self.persist(&StoredSnapshot {
            meta: meta.clone(),
            data,
        })?;
        *self.write() = installed;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>> {
        let Some(bytes) = self.st.get_meta(SNAPSHOT).map_err(sm_err)? else {
            return Ok(None);
        };
        let snap: StoredSnapshot = postcard::from_bytes(&bytes).map_err(sm_err)?;
        Ok(Some(Snapshot {
            meta: snap.meta,
            snapshot: Box::new(Cursor::new(snap.data)),
        }))
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }
}
