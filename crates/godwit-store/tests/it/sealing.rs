use std::sync::Arc;

use godwit_hw::{Manufacturer, NvCounter, SimHardware};
use godwit_proto::{LedgerOp, LedgerOutcome};
use godwit_store::{OpenError, Sealer, TypeConfig};
use godwit_wire::{EnclaveId, HostId, Measurement};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader, Vote};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

const LOGS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("logs");

fn sealer(secret: u8) -> Sealer {
    let m = Manufacturer::from_seed([1; 32]);
    let id = m.provision_from_secret(HostId::new("h").unwrap(), [secret; 32].into());
    let (hw, _) = SimHardware::new(id, Measurement([3; 32]), 4);
    Sealer::new(Arc::new(hw))
}

fn entry(index: u64) -> Entry<TypeConfig> {
    entry_in(1, index)
}

/// The id of entry `index` written by the leader of `term` (member 1).
fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

/// Entry `index` as the leader of `term` wrote it.
fn entry_in(term: u64, index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(LedgerOp::Register {
            id: EnclaveId([index as u8; 16]),
            app: Measurement([9; 32]),
            app_name: "secret-app-name".into(),
            owner: HostId::new("host1").unwrap(),
            boot: [1; 16],
            max_instances_cluster: None,
        }),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

/// Writes three entries and a vote with `sealer`, returns the database path.
fn write_some(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("raft.redb");
    rt().block_on(async {
        let (mut log, mut sm) = godwit_store::open(&path, sealer(2)).unwrap();
        log.save_vote(&Vote::new(1, 1)).await.unwrap();
        let entries: Vec<_> = (1..=3).map(entry).collect();
        log.blocking_append(entries.clone()).await.unwrap();
        let out = sm.apply(entries).await.unwrap();
        assert!(matches!(out[0], LedgerOutcome::Applied(Some(_))));
    });
    path
}

#[test]
fn nothing_the_host_stores_is_readable() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_some(dir.path());
    let bytes = std::fs::read(&path).unwrap();
    for needle in [&b"secret-app-name"[..], b"host1"] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "plaintext on disk"
        );
    }
    // And it reopens under the same SM.
    rt().block_on(async {
        let (mut log, _) = godwit_store::open(&path, sealer(2)).unwrap();
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(1, 1)));
        assert_eq!(log.try_get_log_entries(1..4).await.unwrap().len(), 3);
    });
}

#[test]
fn a_corrupted_or_foreign_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_some(dir.path());
    // Another device (or another SM) cannot open it.
    assert!(matches!(
        godwit_store::open(&path, sealer(5)),
        Err(OpenError::Corrupt(_))
    ));
    // A host that alters one entry is caught at start.
    {
        let db = redb::Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut t = tx.open_table(LOGS).unwrap();
            let mut v = t.get(2).unwrap().unwrap().value().to_vec();
            v[20] ^= 1;
            t.insert(2, v.as_slice()).unwrap();
        }
        tx.commit().unwrap();
    }
    match godwit_store::open(&path, sealer(2)) {
        Err(OpenError::Corrupt(c)) => assert_eq!(c.what, "log entry 2"),
        other => panic!("expected corruption, got {:?}", other.err()),
    }
}

#[test]
fn an_entry_moved_to_another_index_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_some(dir.path());
    {
        let db = redb::Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut t = tx.open_table(LOGS).unwrap();
            let v = t.get(1).unwrap().unwrap().value().to_vec();
            t.insert(3, v.as_slice()).unwrap();
        }
        tx.commit().unwrap();
    }
    assert!(matches!(
        godwit_store::open(&path, sealer(2)),
        Err(OpenError::Corrupt(_))
    ));
}

fn sealer_with(nv: &NvCounter) -> Sealer {
    let m = Manufacturer::from_seed([1; 32]);
    let id = m.provision_from_secret(HostId::new("h").unwrap(), [2; 32].into());
    let (hw, _) = SimHardware::new(id, Measurement([3; 32]), 4);
    Sealer::new(Arc::new(hw.with_nv_counter(nv.clone())))
}

/// Writes a vote and three entries into a new store on a component with a fresh counter,
/// and keeps a copy of the file: the directory, the store, the copy and the counter.
fn write_then_copy() -> (
    tempfile::TempDir,
    std::path::PathBuf,
    std::path::PathBuf,
    NvCounter,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");
    let old = dir.path().join("old.redb");
    let nv = NvCounter::volatile();
    rt().block_on(async {
        let (mut log, _) = godwit_store::open(&path, sealer_with(&nv)).unwrap();
        log.save_vote(&Vote::new(1, 1)).await.unwrap();
        log.blocking_append((1..=3).map(entry).collect::<Vec<_>>())
            .await
            .unwrap();
    });
    std::fs::copy(&path, &old).unwrap();
    (dir, path, old, nv)
}

#[test]
fn an_older_copy_of_the_store_is_refused() {
    let (_dir, path, old, nv) = write_then_copy();
    rt().block_on(async {
        let (mut log, _) = godwit_store::open(&path, sealer_with(&nv)).unwrap();
        // A vote in a later term: the old copy would let this member vote twice in it.
        log.save_vote(&Vote::new(2, 2)).await.unwrap();
    });
    let written = nv.get();
    assert!(written >= 3, "every durable write moved the counter");
    // The host hands back the older, authentic copy.
    std::fs::copy(&old, &path).unwrap();
    match godwit_store::open(&path, sealer_with(&nv)) {
        Err(OpenError::RolledBack { found, expected }) => {
            assert_eq!((found + 1, expected), (written, written))
        }
        other => panic!("expected a rollback, got {:?}", other.err()),
    }
    // Or removes the file: an empty store is refused as well, unless the member starts
    // over on purpose (and then rejoins from its peers).
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(
        godwit_store::open(&path, sealer_with(&nv)),
        Err(OpenError::RolledBack { found: 0, .. })
    ));
    assert!(godwit_store::open_empty(&path, sealer_with(&nv)).is_ok());
}

#[test]
fn a_write_that_landed_just_before_a_crash_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_some(dir.path());
    // The file holds writes the counter never saw (the crash came between the two): they
    // were never acknowledged, and the counter catches up.
    let nv = NvCounter::volatile();
    assert!(godwit_store::open(&path, sealer_with(&nv)).is_ok());
    assert!(nv.get() > 0);
}

const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");

#[test]
fn a_newer_write_record_moved_into_an_older_copy_is_refused() {
    let (_dir, path, old, nv) = write_then_copy();
    rt().block_on(async {
        let (mut log, _) = godwit_store::open(&path, sealer_with(&nv)).unwrap();
        log.blocking_append(vec![entry(4)]).await.unwrap();
    });
    // The host copies the newest write record into the older file: its number passes the
    // counter, but it vouches for a state the older file does not hold.
    let record = {
        let db = redb::Database::create(&path).unwrap();
        let tx = db.begin_read().unwrap();
        let t = tx.open_table(META).unwrap();
        t.get("generation").unwrap().unwrap().value().to_vec()
    };
    {
        let db = redb::Database::create(&old).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(META)
            .unwrap()
            .insert("generation", record.as_slice())
            .unwrap();
        tx.commit().unwrap();
    }
    assert!(matches!(
        godwit_store::open(&old, sealer_with(&nv)),
        Err(OpenError::Corrupt(_))
    ));
    // Nor may the newest entries be dropped from the current file.
    {
        let db = redb::Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(LOGS).unwrap().remove(4).unwrap();
        tx.commit().unwrap();
    }
    assert!(matches!(
        godwit_store::open(&path, sealer_with(&nv)),
        Err(OpenError::Corrupt(_))
    ));
}

/// Log ids of the entries `log` holds in `range`.
async fn ids(log: &mut godwit_store::LogStore, range: std::ops::Range<u64>) -> Vec<(u64, u64)> {
    log.try_get_log_entries(range)
        .await
        .unwrap()
        .iter()
        .map(|e| (e.log_id.leader_id.term, e.log_id.index))
        .collect()
}

#[test]
fn truncated_purged_and_appended_logs_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.redb");
    let nv = NvCounter::volatile();
    let reopen = || godwit_store::open(&path, sealer_with(&nv)).unwrap().0;
    rt().block_on(async {
        let mut log = reopen();
        log.blocking_append((1..=5).map(entry).collect::<Vec<_>>())
            .await
            .unwrap();
        log.truncate(log_id(1, 4)).await.unwrap();
        drop(log);
        let mut log = reopen();
        log.blocking_append((4..=6).map(|i| entry_in(2, i)).collect::<Vec<_>>())
            .await
            .unwrap();
        log.purge(log_id(1, 2)).await.unwrap();
        drop(log);
        let mut log = reopen();
        assert_eq!(ids(&mut log, 0..10).await, [(1, 3), (2, 4), (2, 5), (2, 6)]);
        // Purged past the end, as after a snapshot from the leader, then appended on.
        log.purge(log_id(2, 9)).await.unwrap();
        drop(log);
        let mut log = reopen();
        log.blocking_append((10..=11).map(|i| entry_in(3, i)).collect::<Vec<_>>())
            .await
            .unwrap();
        drop(log);
        let mut log = reopen();
        assert_eq!(ids(&mut log, 0..20).await, [(3, 10), (3, 11)]);
    });
}

#[test]
fn an_overwritten_entry_put_back_mid_log_is_refused() {
    let (_dir, path, old, nv) = write_then_copy();
    rt().block_on(async {
        let (mut log, _) = godwit_store::open(&path, sealer_with(&nv)).unwrap();
        // A new leader overwrites entries 2 and 3 (uncommitted ones of the old term).
        log.truncate(log_id(1, 2)).await.unwrap();
        log.blocking_append((2..=3).map(|i| entry_in(2, i)).collect::<Vec<_>>())
            .await
            .unwrap();
    });
    // The host puts the overwritten entry 2, authentic and filed at its own index, back
    // from the older copy. The last entry and the write record are untouched.
    let overwritten = {
        let db = redb::Database::create(&old).unwrap();
        let tx = db.begin_read().unwrap();
        let t = tx.open_table(LOGS).unwrap();
        t.get(2).unwrap().unwrap().value().to_vec()
    };
    {
        let db = redb::Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(LOGS)
            .unwrap()
            .insert(2, overwritten.as_slice())
            .unwrap();
        tx.commit().unwrap();
    }
    match godwit_store::open(&path, sealer_with(&nv)) {
        Err(OpenError::Corrupt(c)) => assert!(c.what.starts_with("log entry 3 "), "{}", c.what),
        other => panic!("expected corruption, got {:?}", other.err()),
    }
}
