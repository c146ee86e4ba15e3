//! The member's Raft log, held in the SM's memory (raft-rs's `Storage`), and the plain
//! images of its parts that the SM seals into records for the host's disk.
//!
//! The log holds the last snapshot (the replicated state at some applied index), the
//! entries after it and the hard state. Snapshots are taken every
//! [`crate::SNAPSHOT_EVERY_ENTRIES`] applied entries, so what stays in memory is bounded.

use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use serde::{Deserialize, Serialize};

/// An entry as the SM seals it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EntryImage {
    pub(crate) index: u64,
    pub(crate) term: u64,
    /// 0 normal, 1 configuration change (v1), 2 configuration change (v2).
    pub(crate) kind: u8,
    #[serde(with = "serde_bytes")]
    pub(crate) data: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub(crate) context: Vec<u8>,
}

impl EntryImage {
    pub(crate) fn of(e: &Entry) -> Self {
        Self {
            index: e.index,
            term: e.term,
            kind: match e.get_entry_type() {
                EntryType::EntryNormal => 0,
                EntryType::EntryConfChange => 1,
                EntryType::EntryConfChangeV2 => 2,
            },
            data: e.data.to_vec(),
            context: e.context.to_vec(),
        }
    }

    pub(crate) fn entry(&self) -> Option<Entry> {
        let mut e = Entry {
            index: self.index,
            term: self.term,
            data: self.data.clone().into(),
            context: self.context.clone().into(),
            ..Default::default()
        };
        e.set_entry_type(match self.kind {
            0 => EntryType::EntryNormal,
            1 => EntryType::EntryConfChange,
            2 => EntryType::EntryConfChangeV2,
            _ => return None,
        });
        Some(e)
    }
}

/// A hard state (term, vote, commit) as the SM seals it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HardStateImage {
    pub(crate) term: u64,
    pub(crate) vote: u64,
    pub(crate) commit: u64,
}

impl HardStateImage {
    pub(crate) fn of(hs: &HardState) -> Self {
        Self {
            term: hs.term,
            vote: hs.vote,
            commit: hs.commit,
        }
    }

    pub(crate) fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.commit,
            ..Default::default()
        }
    }
}

/// A configuration as the SM seals it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ConfImage {
    pub(crate) voters: Vec<u64>,
    pub(crate) learners: Vec<u64>,
    pub(crate) voters_outgoing: Vec<u64>,
    pub(crate) learners_next: Vec<u64>,
    pub(crate) auto_leave: bool,
}

impl ConfImage {
    pub(crate) fn of(cs: &ConfState) -> Self {
        Self {
            voters: cs.voters.clone(),
            learners: cs.learners.clone(),
            voters_outgoing: cs.voters_outgoing.clone(),
            learners_next: cs.learners_next.clone(),
            auto_leave: cs.auto_leave,
        }
    }

    pub(crate) fn conf_state(&self) -> ConfState {
        ConfState {
            voters: self.voters.clone(),
            learners: self.learners.clone(),
            voters_outgoing: self.voters_outgoing.clone(),
            learners_next: self.learners_next.clone(),
            auto_leave: self.auto_leave,
            ..Default::default()
        }
    }
}

/// A snapshot as the SM seals it: where it stands in the log, the configuration then, and
/// the replicated state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SnapshotImage {
    pub(crate) index: u64,
    pub(crate) term: u64,
    pub(crate) conf: ConfImage,
    #[serde(with = "serde_bytes")]
    pub(crate) data: Vec<u8>,
}

impl SnapshotImage {
    pub(crate) fn of(s: &Snapshot) -> Self {
        let m = s.get_metadata();
        Self {
            index: m.index,
            term: m.term,
            conf: ConfImage::of(m.get_conf_state()),
            data: s.data.to_vec(),
        }
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        let mut meta = SnapshotMetadata {
            index: self.index,
            term: self.term,
            ..Default::default()
        };
        meta.set_conf_state(self.conf.conf_state());
        let mut s = Snapshot {
            data: self.data.clone().into(),
            ..Default::default()
        };
        s.set_metadata(meta);
        s
    }
}

/// The log in memory: the last snapshot, the entries after it, the hard state.
#[derive(Debug, Default)]
pub struct MemLog {
    pub(crate) hard_state: HardStateImage,
    pub(crate) snapshot: SnapshotImage,
    /// `entries[i].index == snapshot.index + 1 + i`.
    pub(crate) entries: Vec<Entry>,
    /// A newer snapshot to send to a member that needs one, taken after each membership
    /// change (a member refuses a snapshot whose configuration does not hold it); the log
    /// is not compacted to it.
    pub(crate) latest: Option<SnapshotImage>,
}

fn unavailable() -> raft::Error {
    raft::Error::Store(StorageError::Unavailable)
}

impl MemLog {
    /// The index of the first entry held (one past the snapshot).
    pub fn first(&self) -> u64 {
        self.snapshot.index + 1
    }

    /// The index of the last entry (the snapshot's when none follows it).
    pub fn last(&self) -> u64 {
        self.snapshot.index + self.entries.len() as u64
    }

    /// Appends entries from a ready, replacing any held from their first index on (Raft
    /// overwrites an uncommitted suffix that conflicts). Entries must follow on from what
    /// is held (raft-rs only hands such ones).
    pub(crate) fn append(&mut self, ents: &[Entry]) {
        let Some(first) = ents.first() else {
            return;
        };
        // Invariant: raft-rs appends at or after the first held index and at most one past
        // the last one.
        assert!(
            first.index >= self.first() && first.index <= self.last() + 1,
            "append of {} to a log of {}..={}",
            first.index,
            self.first(),
            self.last()
        );
        let keep = (first.index - self.first()) as usize;
        self.entries.truncate(keep);
        self.entries.extend_from_slice(ents);
    }

    /// Replaces everything with a snapshot from the leader.
    pub(crate) fn install(&mut self, snapshot: SnapshotImage) {
        self.hard_state.term = self.hard_state.term.max(snapshot.term);
        self.hard_state.commit = self.hard_state.commit.max(snapshot.index);
        self.snapshot = snapshot;
        self.entries.clear();
        self.latest = None;
    }

    /// The term of the entry at `index`, held or the snapshot's.
    pub(crate) fn term_at(&self, index: u64) -> Option<u64> {
        if index == self.snapshot.index {
            return Some(self.snapshot.term);
        }
        let at = index.checked_sub(self.first())?;
        self.entries.get(usize::try_from(at).ok()?).map(|e| e.term)
    }

    /// Takes a snapshot of the replicated state at `index` (applied, held here) and drops
    /// the entries up to it.
    pub(crate) fn compact(&mut self, index: u64, conf: ConfImage, data: Vec<u8>) {
        // Invariant: the member compacts only at an index it applied, which it holds.
        assert!(index > self.snapshot.index && index <= self.last());
        let term = self.entries[(index - self.first()) as usize].term;
        self.entries.drain(..(index - self.snapshot.index) as usize);
        self.snapshot = SnapshotImage {
            index,
            term,
            conf,
            data,
        };
    }

    /// The entries as the SM seals them.
    pub(crate) fn images(&self) -> Vec<EntryImage> {
        self.entries.iter().map(EntryImage::of).collect()
    }
}

impl raft::Storage for MemLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState {
            hard_state: self.hard_state.hard_state(),
            conf_state: self.snapshot.conf.conf_state(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 || low > high {
            return Err(unavailable());
        }
        let from = (low - self.first()) as usize;
        let to = (high - self.first()) as usize;
        let mut ents = self.entries[from..to].to_vec();
        raft::util::limit_size(&mut ents, max_size.into());
        Ok(ents)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snapshot.index {
            return Ok(self.snapshot.term);
        }
        if idx < self.snapshot.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.entries
            .get((idx - self.first()) as usize)
            .map(|e| e.term)
            .ok_or_else(unavailable)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let newest = match &self.latest {
            Some(l) if l.index > self.snapshot.index => l,
            _ => &self.snapshot,
        };
        if newest.index < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(newest.snapshot())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8].into(),
            ..Default::default()
        }
    }

    fn log(terms: &[(u64, u64)]) -> MemLog {
        let mut l = MemLog::default();
        l.append(&terms.iter().map(|&(i, t)| entry(i, t)).collect::<Vec<_>>());
        l
    }

    #[test]
    fn entries_terms_and_bounds_follow_raft_rs_storage_rules() {
        let l = log(&[(1, 1), (2, 1), (3, 2)]);
        assert_eq!((l.first_index().unwrap(), l.last_index().unwrap()), (1, 3));
        assert_eq!(l.term(0).unwrap(), 0);
        assert_eq!(l.term(3).unwrap(), 2);
        assert!(l.term(4).is_err());
        let got = l
            .entries(1, 4, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(got.len(), 3);
        // A size limit keeps at least one entry.
        let one = l
            .entries(1, 4, Some(0), GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(one.len(), 1);
        assert!(
            l.entries(2, 6, None, GetEntriesContext::empty(false))
                .is_err()
        );
    }

    #[test]
    fn an_append_replaces_the_conflicting_suffix() {
        let mut l = log(&[(1, 1), (2, 1), (3, 1)]);
        l.append(&[entry(2, 2)]);
        assert_eq!(l.last(), 2);
        assert_eq!(l.term(2).unwrap(), 2);
        l.append(&[entry(3, 2), entry(4, 2)]);
        assert_eq!(l.last(), 4);
    }

    #[test]
    fn compaction_and_snapshots() {
        let mut l = log(&[(1, 1), (2, 1), (3, 2), (4, 2)]);
        l.compact(2, ConfImage::default(), b"state".to_vec());
        assert_eq!((l.first(), l.last()), (3, 4));
        assert_eq!(l.term(2).unwrap(), 1);
        assert!(matches!(
            l.term(1),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert!(
            l.entries(2, 4, None, GetEntriesContext::empty(false))
                .is_err()
        );
        let s = l.snapshot(2, 7).unwrap();
        assert_eq!((s.get_metadata().index, &s.data[..]), (2, &b"state"[..]));
        assert!(l.snapshot(3, 7).is_err());
        // A newer snapshot from the leader replaces everything.
        l.install(SnapshotImage {
            index: 9,
            term: 3,
            conf: ConfImage::default(),
            data: vec![],
        });
        assert_eq!((l.first(), l.last(), l.hard_state.commit), (10, 9, 9));
    }

    #[test]
    fn images_round_trip() {
        let mut e = entry(5, 3);
        e.set_entry_type(EntryType::EntryConfChangeV2);
        e.context = b"ctx".to_vec().into();
        assert_eq!(EntryImage::of(&e).entry().unwrap(), e);
        let hs = HardState {
            term: 4,
            vote: 9,
            commit: 3,
            ..Default::default()
        };
        assert_eq!(HardStateImage::of(&hs).hard_state(), hs);
        let cs = ConfState::from((vec![1, 2], vec![3]));
        assert_eq!(ConfImage::of(&cs).conf_state(), cs);
    }
}
