//! Migration scenarios on an in-memory world with virtual time.

use std::time::Duration;

use godwit_enclave::examples::{BALLAST, COUNTER, VAULT};
use godwit_monitor::{EnclaveState, Event, MonitorError};
use godwit_proto::{AbortReason, RecordState, RefuseReason, TimeoutConfig, Wait};

use crate::world::{World, h};

fn running_at(w: &World, id: godwit_wire::EnclaveId) -> Vec<String> {
    w.copies(id)
        .into_iter()
        .filter(|(_, s)| *s == EnclaveState::Running)
        .map(|(host, _)| host)
        .collect()
}

#[test]
fn happy_path_moves_state_and_ownership() {
    let mut w = World::new(&["a", "b", "c"]);
    let id = w.deploy("a", COUNTER);
    for _ in 0..3 {
        w.call("a", id, "incr");
    }
    w.call("a", id, "persist");
    let m = w.sm("a").migrate(id, h("b")).unwrap();
    let report = w.finish_migration("a").unwrap();
    assert_eq!((report.to.as_str(), report.epoch), ("b", 1));
    assert!(report.bytes > 0);
    w.check();
    // The state continues at the destination; the source refuses.
    assert_eq!(w.call("b", id, "get"), "3");
    assert_eq!(w.call("b", id, "incr"), "4");
    assert_eq!(
        w.call_raw("a", id, "get", b""),
        Err(MonitorError::UnknownEnclave(id))
    );
    // Sealed data was re-sealed at the destination and still opens there.
    assert_eq!(w.call("b", id, "restore"), "3");
    assert!(
        w.nodes[&h("a")].blobs.keys().is_empty(),
        "the source's blobs are deleted"
    );
    let r = w.ledger().get(&id).cloned().unwrap();
    assert_eq!(
        (r.owner.as_str(), r.epoch, r.state.clone()),
        ("b", 1, RecordState::Running)
    );
    assert!(w.events.iter().any(|(host, e)| host.as_str() == "b"
        && matches!(e, Event::IncomingFinished { migration, outcome: Ok(1), .. } if *migration == m)));
}

#[test]
fn a_destination_that_holds_the_module_is_sent_no_module_bytes() {
    let mut w = World::new(&["a", "b", "c"]);
    let id = w.deploy("a", COUNTER);
    w.call("a", id, "incr");
    w.sm("a").migrate(id, h("b")).unwrap();
    let to_b = w.finish_migration("a").unwrap(); // b compiles it from MODULE messages
    w.sm("b").migrate(id, h("a")).unwrap();
    let back = w.finish_migration("b").unwrap(); // a keeps it since the deploy
    assert_eq!(to_b.bytes - back.bytes, COUNTER.module().len() as u64);
    w.check();
    assert_eq!(w.call("a", id, "incr"), "2");
    assert_eq!(running_at(&w, id), ["a"]);
}

#[test]
fn an_enclave_can_move_on_and_come_back() {
    let mut w = World::new(&["a", "b", "c"]);
    let id = w.deploy("a", COUNTER);
    w.call("a", id, "incr");
    for (from, to, epoch) in [("a", "b", 1), ("b", "c", 2), ("c", "a", 3)] {
        w.sm(from).migrate(id, h(to)).unwrap();
        let report = w.finish_migration(from).unwrap();
        assert_eq!(report.epoch, epoch);
        w.call(to, id, "incr");
        w.check();
    }
    assert_eq!(w.call("a", id, "get"), "4");
    assert_eq!(running_at(&w, id), ["a"]);
}

#[test]
fn sealed_data_and_secrets_travel_and_are_resealed() {
    let mut w = World::new(&["a", "b"]);
    let id = w.deploy("a", VAULT);
    w.call_raw("a", id, "put", b"hunter2").unwrap();
    let before = w.call_raw("a", id, "hmac", b"challenge").unwrap();
    w.sm("a").migrate(id, h("b")).unwrap();
    w.finish_migration("a").unwrap();
    assert_eq!(w.call_raw("b", id, "hmac", b"challenge").unwrap(), before);
    // The secret reaches the destination's storage only as a blob sealed by the
    // destination, and it opens there.
    assert_eq!(w.nodes[&h("b")].blobs.keys().len(), 1);
    assert_eq!(w.call_raw("b", id, "load", b"").unwrap(), b"ok");
    assert_eq!(w.call_raw("b", id, "count", b"").unwrap(), b"2");
}

#[test]
fn a_big_enclave_moves_page_for_page() {
    let mut w = World::new(&["a", "b"]);
    let id = w.deploy("a", BALLAST);
    w.call_raw("a", id, "fill", b"3").unwrap();
    let sum = w.call("a", id, "checksum");
    w.sm("a").migrate(id, h("b")).unwrap();
    let report = w.finish_migration("a").unwrap();
    assert!(report.bytes >= 3 << 20);
    assert_eq!(w.call("b", id, "checksum"), sum);
    assert_eq!(w.call("b", id, "size"), (3 << 20).to_string());
}

#[test]
fn refused_at_ready_when_the_destination_is_at_its_limit() {
    let mut w = World::new(&["a", "b"]);
    let id = w.deploy("a", VAULT);
    w.deploy("b", VAULT); // vault allows one per host
    w.call("a", id, "count");
    w.sm("a").migrate(id, h("b")).unwrap();
    let err = w.finish_migration("a").unwrap_err();
    assert_eq!(
        err,
        AbortReason::Refused(RefuseReason::InstanceLimit {
            limit: 1,
            present: 1
        })
    );
    assert_eq!(err.code(), "instance_limit");
    // Never paused: it kept running, state intact, ledger untouched.
    assert_eq!(w.sm("a").info(id).unwrap().state, EnclaveState::Running);
    assert_eq!(w.call("a", id, "count"), "0");
    assert_eq!(w.ledger().get(&id).unwrap().epoch, 0);
    w.check();
}

#[test]
fn refused_at_ready_while_the_destination_boot_is_not_recorded() {
    let mut w = World::new(&["a", "b", "c"]);
    let id = w.deploy("a", COUNTER);
    // b restarts, and the ledger cannot record its new boot yet.
    w.cut_store("b");
    w.reboot("b");
    w.settle();
    w.sm("a").migrate(id, h("b")).unwrap();
    let err = w.finish_migration("a").unwrap_err();
    assert_eq!(err, AbortReason::Refused(RefuseReason::Starting));
    assert_eq!(err.code(), "receiver_starting");
    assert_eq!(w.sm("a").info(id).unwrap().state, EnclaveState::Running);
    // Once the boot is recorded, b receives.
    w.heal_store();
    assert!(w.run_until(std::time::Duration::from_secs(30), |w| {
        w.ledger()
            .boot_of(&h("b"))
            .is_some_and(|b| godwit_hw::BootEpoch::count_of(b) == 2)
    }));
    w.settle();
    w.sm("a").migrate(id, h("b")).unwrap();
    w.finish_migration("a").unwrap();
    w.check();
}

#[test]
fn refused_at_ready_when_too_large_for_the_destination() {
    let mut w = World::with(&["a", "b"], TimeoutConfig::default(), 3 << 20);
    let id = w.deploy("a", BALLAST);
    w.call_raw("a", id, "fill", b"3").unwrap();
    w.deploy("b", BALLAST); // 64 KiB in use at b: 3 MiB no longer fit its budget
    w.sm("a").migrate(id, h("b")).unwrap();
    let err = w.finish_migration("a").unwrap_err();
    assert!(
        matches!(err, AbortReason::Refused(RefuseReason::TooLarge { bytes, .. }) if bytes == 3 << 20),
        "{err:?}"
    );
    assert_eq!(w.sm("a").info(id).unwrap().state, EnclaveState::Running);
}

#[test]
fn a_manifest_that_forbids_migration_is_refused_at_once() {
    let mut w = World::new(&["a", "b"]);
    let mut manifest = COUNTER.manifest();
    manifest.migratable = false;
    let id = w.sm("a").create(&COUNTER.module(), manifest).unwrap();
    w.settle();
    assert_eq!(
        w.sm("a").migrate(id, h("b")),
        Err(MonitorError::NotMigratable(id))
    );
}

#[test]
fn a_second_migration_of_the_same_enclave_is_refused() {
    let mut w = World::new(&["a", "b", "c"]);
    let id = w.deploy("a", COUNTER);
    w.sm("a").migrate(id, h("b")).unwrap();
    assert_eq!(
        w.sm("a").migrate(id, h("c")),
        Err(MonitorError::AlreadyMigrating(id))
    );
    w.finish_migration("a").unwrap();
    assert_eq!(running_at(&w, id), ["b"]);
}

#[test]
fn timeout_waiting_for_ready_leaves_the_enclave_running() {
    let mut w = World::new(&["a", "b"]);
    let id = w.deploy("a", COUNTER);
    w.call("a", id, "incr");
    // b's READY (its second frame on the link, after the ServerHello) never arrives.
    w.stall_from("b", 1);
    w.sm("a").migrate(id, h("b")).unwrap();
    let err = w.finish_migration("a").unwrap_err();
    assert!(
        matches!(
            err,
            AbortReason::Timeout {
                wait: Wait::Ready,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.code(), "timeout_ready");
    assert!(
        err.to_string().contains("network") && err.to_string().contains("margin"),
        "{err}"
    );
    assert_eq!(w.sm("a").info(id).unwrap().state, EnclaveState::Running);
    assert_eq!(w.call("a", id, "get"), "1");
    assert_eq!(
        w.ledger().get(&id).unwrap().epoch,
        0,
        "nothing reached the store"
    );
    w.run_until(Duration::from_secs(60), |w| w.finished("b").len() == 1);
    w.check();
    assert_eq!(running_at(&w, id), ["a"]);
}

#[test]
fn timeout_waiting_for_a_data_chunk_aborts_and_the_source_resumes() {
    let mut w = World::new(&["a", "b"]);
    let id = w.deploy("a", BALLAST);
    w.call_raw("a", id, "fill", b"3").unwrap();
    let sum = w.call("a", id, "checksum");
    // a→b: ClientHello, ClientFinish, PREPARE, TRANSFER, MODULE, MEMORY(1 MiB), then stall.
    w.stall_from("a", 6);
    w.sm("a").migrate(id, h("b")).unwrap();
    let err = w.finish_migration("a").unwrap_err();
    // The receiver timed out on the chunk and recorded ABORT; the sender learnt it.
    let AbortReason::Peer(inner) = &err else {
        panic!("{err:?}")
    };
    assert!(
        matches!(
            **inner,
            AbortReason::Timeout {
                wait: Wait::Chunk,
                ..
            }
        ),
        "{inner:?}"
    );
    assert_eq!(w.sm("a").info(id).unwrap().state, EnclaveState::Running);
    assert_eq!(
        w.call("a", id, "checksum"),
        sum,
        "state unchanged at the source"
    );
    let r = w.ledger().get(&id).cloned().unwrap();
    assert_eq!((r.owner.as_str(), r.epoch), ("a", 1));
    assert!(w.sm("b").info(id).is_err());
    w.check();
    // The stall ends: the aborted migration's late chunks reach b and are ignored, and the
    // next migration works from the new epoch.
    w.release();
    w.sm("a").migrate(id, h("b")).unwrap();
    assert_eq!(w.finish_migration("a").unwrap().epoch, 2);
    assert_eq!(w.call("b", id, "checksum"), sum);
}

#[test]
fn timeout_waiting_for_the_decision_abort_wins_when_commit_cannot_reach_the_store() {
    let mut w = World::new(&["a", "b", "c"]);
    let id = w.deploy("a", COUNTER);
    w.call("a", id, "incr");
    // b cannot reach the store: its COMMIT never lands, so a's decision deadline passes
    // and a's ABORT wins.
    w.cut_store("b");
    w.sm("a").migrate(id, h("b")).unwrap();
    let err = w.finish_migration("a").unwrap_err();
    assert!(
        matches!(
            err,
            AbortReason::Timeout {
                wait: Wait::Decision,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(w.call("a", id, "incr"), "2");
    // b keeps asking; once the store is back, it learns ABORT won and discards its copy.
    w.heal_store();
    assert!(w.run_until(Duration::from_secs(60), |w| w.finished("b").len() == 1));
    assert!(matches!(
        w.finished("b")[0],
        Event::IncomingFinished {
            outcome: Err(AbortReason::Store(_)),
            ..
        }
    ));
    assert!(w.sm("b").info(id).is_err());
    assert!(w.nodes[&h("b")].blobs.keys().is_empty());
    w.check();
    assert_eq!(running_at(&w, id), ["a"]);
}

#[test]
fn timeout_waiting_for_the_decision_commit_wins_when_committed_is_lost() {
    let mut w = World::new(&["a", "b"]);
    let id = w.deploy("a", COUNTER);
    w.call("a", id, "incr");
    // b's COMMITTED (its third frame: ServerHello, READY, COMMITTED) never reaches a.
    w.stall_from("b", 2);
    w.sm("a").migrate(id, h("b")).unwrap();
    // a times out, asks the store to ABORT, and learns that COMMIT won: it wipes its copy.
    let report = w.finish_migration("a").unwrap();
    assert_eq!(report.epoch, 1);
    assert!(w.sm("a").info(id).is_err());
    assert_eq!(w.call("b", id, "get"), "1");
    w.check();
}

#[test]
fn reboot_of_the_receiver_mid_transfer_aborts_and_the_source_resumes() {
    let mut w = World::new(&["a", "b"]);
    let id = w.deploy("a", BALLAST);
    w.call_raw("a", id, "fill", b"3").unwrap();
    let sum = w.call("a", id, "checksum");
    w.stall_from("a", 6);
    w.sm("a").migrate(id, h("b")).unwrap();
    w.run_until(Duration::from_secs(1), |w| {
        w.sm_ref("a").info(id).unwrap().state == EnclaveState::Migrating
    });
    w.settle();
    w.reboot("b");
    let err = w.finish_migration("a").unwrap_err();
    assert_eq!(err, AbortReason::ConnectionLost);
    assert_eq!(w.sm("a").info(id).unwrap().state, EnclaveState::Running);
    assert_eq!(w.call("a", id, "checksum"), sum);
    assert_eq!(w.ledger().get(&id).unwrap().owner.as_str(), "a");
    w.check();
}

#[test]
fn reboot_of_the_sender_mid_transfer_leaves_no_copy_running() {
    let mut w = World::new(&["a", "b"]);
    let id = w.deploy("a", BALLAST);
    w.call_raw("a", id, "fill", b"3").unwrap();
    w.stall_from("a", 6);
    w.sm("a").migrate(id, h("b")).unwrap();
    w.run_until(Duration::from_secs(1), |w| {
        w.ledger()
            .get(&id)
            .is_some_and(|r| matches!(r.state, RecordState::Migrating { .. }))
    });
    w.reboot("a");
    // The receiver had only part of E: it aborts and discards. E lived in a's memory and
    // is gone: nothing runs it, and nothing restarts it from an old copy.
    assert!(w.run_until(Duration::from_secs(60), |w| w.finished("b").len() == 1));
    assert!(matches!(
        w.finished("b")[0],
        Event::IncomingFinished {
            outcome: Err(_),
            ..
        }
    ));
    assert!(w.copies(id).is_empty());
    w.check();
}

#[test]
fn reboot_of_the_sender_after_the_last_chunk_lets_the_receiver_commit() {
    let mut w = World::new(&["a", "b"]);
    let id = w.deploy("a", COUNTER);
    w.call("a", id, "incr");
    w.call("a", id, "incr");
    // COMMITTED never reaches a; a reboots once b holds everything.
    w.stall_from("b", 2);
    w.sm("a").migrate(id, h("b")).unwrap();
    assert!(w.run_until(Duration::from_secs(60), |w| w.finished("b").len() == 1));
    w.reboot("a");
    w.wait_ready();
    assert_eq!(running_at(&w, id), ["b"]);
    assert_eq!(w.call("b", id, "get"), "2");
    w.check();
}
