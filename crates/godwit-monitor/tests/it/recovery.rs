//! Restarts, lost enclaves, adoption, and output commit of durable state.

use std::time::Duration;

use godwit_enclave::EnclaveError;
use godwit_enclave::examples::{BALLAST, COUNTER, PIN, VAULT};
use godwit_monitor::{CallError, CallOutcome, EnclaveState, Event, MonitorError};
use godwit_proto::{AbortReason, RecordState, RefuseReason};
use godwit_wire::Manifest;

use crate::world::{World, h};

const COUNTERS_WAT: &str = r#"(module
  (import "godwit" "counter_create" (func $create (param i32 i32) (result i32)))
  (import "godwit" "counter_increment" (func $inc (param i32 i32) (result i64)))
  (import "godwit" "counter_read" (func $read (param i32 i32) (result i64)))
  (memory (export "memory") 1)
  (data (i32.const 0) "c")
  (func (export "godwit_alloc") (param i32) (result i32) (i32.const 1024))
  (func $out (param $v i64) (result i64)
    (if (i64.lt_s (local.get $v) (i64.const 0)) (then (return (local.get $v))))
    (i64.store (i32.const 16) (local.get $v))
    (i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const 8)))
  (func (export "create") (param i32 i32) (result i64)
    (drop (call $create (i32.const 0) (i32.const 1))) (i64.const 0))
  (func (export "inc") (param i32 i32) (result i64)
    (call $out (call $inc (i32.const 0) (i32.const 1))))
  (func (export "read") (param i32 i32) (result i64)
    (call $out (call $read (i32.const 0) (i32.const 1)))))"#;

fn counters_app() -> (Vec<u8>, Manifest) {
    let module = godwit_enclave::module_from_source(COUNTERS_WAT.as_bytes()).unwrap();
    let manifest = Manifest::from_toml(
        "name = \"ctr\"\nversion = \"1\"\nmax_instances_per_host = 1\nmemory_max_mib = 1\nmigratable = true\n",
    )
    .unwrap();
    (module, manifest)
}

fn value(bytes: Vec<u8>) -> u64 {
    u64::from_le_bytes(bytes.try_into().unwrap())
}

#[test]
fn a_restart_records_the_enclave_lost_and_adoption_recovers_its_sealed_data() {
    let mut w = World::new(&["a", "b"]);
    let id = w.deploy("a", COUNTER);
    for _ in 0..5 {
        w.call("a", id, "incr");
    }
    w.call("a", id, "persist");
    w.call("a", id, "incr"); // in memory only: lost with the restart
    w.reboot("a");
    w.wait_ready();
    assert_eq!(w.ledger().get(&id).unwrap().state, RecordState::Lost);
    assert!(
        w.sm("a").info(id).is_err(),
        "nothing restarted from old memory"
    );
    // Only the host holding its blobs may adopt it, as the same application.
    assert!(
        w.sm("b")
            .adopt(id, &COUNTER.module(), COUNTER.manifest())
            .is_ok()
    );
    w.settle();
    assert!(
        w.sm("b").info(id).is_err(),
        "b cannot adopt: the blobs are sealed to a"
    );
    let before = w.registered("a", id);
    w.sm("a")
        .adopt(id, &COUNTER.module(), COUNTER.manifest())
        .unwrap();
    w.settle();
    // It runs a lease and the drift bound after the adoption applied (the last owner
    // might still answer until then).
    assert_eq!(w.sm("a").info(id).unwrap().state, EnclaveState::Registering);
    assert!(w.run_until(Duration::from_secs(10), |w| w.registered("a", id) > before));
    assert_eq!(w.sm("a").info(id).unwrap().state, EnclaveState::Running);
    // A fresh instance: memory starts over, sealed data is there at the recorded version.
    assert_eq!(w.call("a", id, "get"), "0");
    assert_eq!(w.call("a", id, "restore"), "5");
    assert_eq!(w.ledger().get(&id).unwrap().state, RecordState::Running);
    w.check();
}

#[test]
fn an_older_blob_is_refused_after_adoption_too() {
    let mut w = World::new(&["a", "b"]);
    let id = w.deploy("a", COUNTER);
    w.call("a", id, "incr");
    w.call("a", id, "persist");
    let old = godwit_monitor::BlobStore::get(&*w.nodes[&h("a")].blobs, id, "count@1")
        .unwrap()
        .unwrap();
    w.call("a", id, "incr");
    w.call("a", id, "persist");
    w.reboot("a");
    w.wait_ready();
    godwit_monitor::BlobStore::put(&*w.nodes[&h("a")].blobs, id, "count@2", &old).unwrap();
    w.sm("a")
        .adopt(id, &COUNTER.module(), COUNTER.manifest())
        .unwrap();
    w.settle();
    assert!(
        w.call_raw("a", id, "restore", b"").is_err(),
        "the ledger knows version 2"
    );
}

#[test]
fn a_seal_the_ledger_never_recorded_is_dropped_and_never_opens_again() {
    use godwit_monitor::BlobStore;
    let mut w = World::new(&["a", "b"]);
    let id = w.deploy("a", COUNTER);
    w.call("a", id, "incr");
    w.call("a", id, "persist"); // version 1, recorded
    // The store stops answering a: the next seal is written but never recorded, and its
    // result is withheld.
    w.cut_store("a");
    w.call("a", id, "incr");
    assert!(matches!(
        w.sm("a").call(id, "persist", b"").unwrap(),
        godwit_monitor::CallOutcome::Pending(_)
    ));
    w.settle();
    let disk = std::sync::Arc::clone(&w.nodes[&h("a")].blobs);
    let unrecorded = disk
        .get(id, "count@2")
        .unwrap()
        .expect("written before recorded");
    w.reboot("a");
    w.heal_store();
    w.wait_ready();
    w.adopt("a", id, COUNTER);
    // Exactly the recorded version opens, consistent with the recorded counters.
    assert_eq!(w.call("a", id, "restore"), "1");
    // The next seal takes the next version number under the new incarnation.
    w.call("a", id, "persist");
    assert_ne!(disk.get(id, "count@2").unwrap().unwrap(), unrecorded);
    // The host offering the lost incarnation's unrecorded blob of the same version is
    // refused: it was sealed by another incarnation.
    disk.put(id, "count@2", &unrecorded).unwrap();
    assert!(w.call_raw("a", id, "restore", b"").is_err());
    assert!(matches!(
        w.sm_ref("a").last_refusal(id).unwrap(),
        Some(godwit_monitor::SealError::OtherIncarnation {
            version: 2,
            presented: 0,
            expected: 1
        })
    ));
}

#[test]
fn counters_survive_a_restart_and_never_go_back() {
    let mut w = World::new(&["a", "b"]);
    let (module, manifest) = counters_app();
    let id = w.sm("a").create(&module, manifest.clone()).unwrap();
    w.settle();
    w.call_raw("a", id, "create", b"").unwrap();
    for i in 1..=3 {
        assert_eq!(value(w.call_raw("a", id, "inc", b"").unwrap()), i);
    }
    w.reboot("a");
    w.wait_ready();
    let before = w.registered("a", id);
    w.sm("a").adopt(id, &module, manifest).unwrap();
    assert!(w.run_until(Duration::from_secs(10), |w| w.registered("a", id) > before));
    assert_eq!(value(w.call_raw("a", id, "read", b"").unwrap()), 3);
    assert_eq!(value(w.call_raw("a", id, "inc", b"").unwrap()), 4);
}

#[test]
fn a_result_that_depends_on_unrecorded_state_is_withheld() {
    let mut w = World::new(&["a"]);
    let id = w.deploy("a", COUNTER);
    w.cut_store_all();
    // persist seals: its result waits for the ledger; so does every later result.
    let CallOutcome::Pending(persist) = w.sm("a").call(id, "persist", b"").unwrap() else {
        panic!("persist answered before its state was recorded")
    };
    let CallOutcome::Pending(_) = w.sm("a").call(id, "get", b"").unwrap() else {
        panic!("a later result was released before an earlier unrecorded change")
    };
    w.run_until(Duration::from_secs(10), |_| false);
    assert!(
        !w.events
            .iter()
            .any(|(_, e)| matches!(e, Event::CallCompleted { .. }))
    );
    w.heal_store();
    assert!(w.run_until(Duration::from_secs(30), |w| {
        w.events
            .iter()
            .filter(|(_, e)| matches!(e, Event::CallCompleted { .. }))
            .count()
            == 2
    }));
    let first = w.events.iter().find_map(|(_, e)| match e {
        Event::CallCompleted { call, result, .. } if *call == persist => Some(result.clone()),
        _ => None,
    });
    assert_eq!(first, Some(Ok(b"0".to_vec())));
}

#[test]
fn a_migration_collects_only_what_the_ledger_recorded() {
    let mut w = World::new(&["a", "b"]);
    let id = w.deploy("a", VAULT);
    w.cut_store("a");
    let CallOutcome::Pending(_) = w.sm("a").call(id, "put", b"s3cret").unwrap() else {
        panic!()
    };
    w.sm("a").migrate(id, h("b")).unwrap();
    w.run_until(Duration::from_secs(1), |_| false);
    // Paused, but waiting for the ledger before it collects.
    assert_eq!(w.sm("a").info(id).unwrap().state, EnclaveState::Migrating);
    assert!(matches!(
        w.ledger().get(&id).unwrap().state,
        RecordState::Running
    ));
    w.heal_store();
    w.finish_migration("a").unwrap();
    let r = w.ledger().get(&id).cloned().unwrap();
    assert_eq!(r.owner.as_str(), "b");
    assert_eq!(r.durable.sealed["secret"].version, 1);
    assert_eq!(w.sm("b").call(id, "load", b"").map(|_| ()), Ok(()));
}

#[test]
fn an_abort_after_the_sender_restarted_leaves_the_enclave_lost() {
    let mut w = World::new(&["a", "b"]);
    let id = w.deploy("a", BALLAST);
    w.sm("a").call(id, "fill", b"3").unwrap();
    w.stall_from("a", 6);
    w.sm("a").migrate(id, h("b")).unwrap();
    assert!(w.run_until(Duration::from_secs(1), |w| {
        w.ledger()
            .get(&id)
            .is_some_and(|r| matches!(r.state, RecordState::Migrating { .. }))
    }));
    w.reboot("a");
    // The receiver aborts; the ledger records the sender's new boot (in either order).
    assert!(w.run_until(Duration::from_secs(60), |w| {
        w.finished("b").len() == 1
            && w.ledger()
                .get(&id)
                .is_some_and(|r| r.state == RecordState::Lost)
    }));
    let r = w.ledger().get(&id).cloned().unwrap();
    assert_eq!(
        (r.owner.as_str(), r.state.clone()),
        ("a", RecordState::Lost)
    );
    assert!(w.copies(id).is_empty());
    w.check();
}

/// The outcome of withheld call `call`, once released.
fn completed(w: &World, call: godwit_monitor::CallId) -> Option<Result<Vec<u8>, CallError>> {
    w.events.iter().find_map(|(_, e)| match e {
        Event::CallCompleted {
            call: c, result, ..
        } if *c == call => Some(result.clone()),
        _ => None,
    })
}

#[test]
fn a_call_that_changed_durable_state_and_failed_waits_for_the_ledger() {
    let mut w = World::new(&["a"]);
    let id = w.deploy("a", PIN);
    w.call_raw("a", id, "set", b"1234").unwrap();
    w.cut_store_all();
    // A wrong guess counts an attempt (a durable change), then fails: the failure is an
    // answer, and it waits for the ledger like a result.
    let CallOutcome::Pending(guess) = w.sm("a").call(id, "try", b"0000").unwrap() else {
        panic!("a failed call that counted an attempt was answered before it was recorded")
    };
    w.run_until(Duration::from_secs(10), |_| false);
    assert_eq!(completed(&w, guess), None);
    w.heal_store();
    assert!(w.run_until(Duration::from_secs(30), |w| completed(w, guess).is_some()));
    assert_eq!(
        completed(&w, guess),
        Some(Err(CallError::Enclave(EnclaveError::Failed { code: -100 })))
    );
    assert_eq!(w.ledger().get(&id).unwrap().durable.counters["attempts"], 1);
    assert_eq!(w.call("a", id, "attempts"), "1");
}

#[test]
fn a_host_removed_from_the_store_releases_nothing_once_its_lease_ran_out() {
    let mut w = World::new(&["a", "b", "c"]);
    let id = w.deploy("a", COUNTER);
    w.call("a", id, "incr");
    w.call("a", id, "persist");
    // Another host's operator removes a while a's SM runs E: the store records E lost.
    w.remove_member("b", "a");
    assert_eq!(w.ledger().get(&id).unwrap().state, RecordState::Lost);
    // A seal on a can never be recorded: its result is never released.
    let persist = w.sm("a").call(id, "persist", b"");
    w.run_until(Duration::from_secs(5), |_| false);
    match persist {
        Ok(CallOutcome::Pending(call)) => assert!(
            !matches!(completed(&w, call), Some(Ok(_))),
            "a seal the store never recorded was released"
        ),
        Ok(CallOutcome::Done(_)) => panic!("a seal released before it was recorded"),
        Err(_) => {}
    }
    // Past its lease, a answers nothing at all: not even a read.
    assert!(!w.sm_ref("a").store_status().lease);
    assert!(!matches!(
        w.sm("a").call(id, "get", b""),
        Ok(CallOutcome::Done(_))
    ));
}

#[test]
fn a_boot_under_a_rolled_back_count_takes_part_in_nothing() {
    let mut w = World::new(&["a", "b"]);
    let id = w.deploy("a", COUNTER);
    // b restarts twice, then its host rolls the component's boot count back.
    w.reboot("b");
    w.wait_ready();
    w.reboot("b");
    w.wait_ready();
    w.reboot_as("b", 1);
    assert!(w.run_until(Duration::from_secs(30), |w| w.sm_ref("b").boot_refused()));
    assert!(
        w.events
            .iter()
            .all(|(host, e)| host.as_str() != "b" || !matches!(e, Event::Registered { .. })),
    );
    assert_eq!(
        w.sm("b").create(&COUNTER.module(), COUNTER.manifest()),
        Err(MonitorError::StaleBoot)
    );
    // A migration to b is refused with the reason; E stays at a.
    w.sm("a").migrate(id, h("b")).unwrap();
    let outcome = w.finish_migration("a");
    assert_eq!(
        outcome.unwrap_err(),
        AbortReason::Refused(RefuseReason::StaleBoot)
    );
    assert_eq!(w.ledger().get(&id).unwrap().owner.as_str(), "a");
    assert_eq!(w.call("a", id, "get"), "0");
}

#[test]
fn an_ecall_runs_outside_the_sm_and_holds_only_its_own_enclave() {
    let mut w = World::new(&["a", "b"]);
    let busy = w.deploy("a", BALLAST);
    let other = w.deploy("a", COUNTER);
    let run = w.sm("a").begin_call(busy, "spin", b"1").unwrap();
    // While the ecall is out: the same enclave is busy, others answer, and the SM goes
    // on (a migration of the busy enclave waits to collect it).
    assert_eq!(
        w.sm("a").call(busy, "size", b"").map(|_| ()),
        Err(MonitorError::Busy(busy))
    );
    assert_eq!(w.call("a", other, "incr"), "1");
    w.sm("a").migrate(busy, h("b")).unwrap();
    w.run_until(Duration::from_secs(1), |_| false);
    assert_eq!(w.sm("a").info(busy).unwrap().state, EnclaveState::Migrating);
    assert!(matches!(
        w.ledger().get(&busy).unwrap().state,
        RecordState::Running
    ));
    // Back from its call, it is collected and moves.
    let done = run.run();
    assert_eq!(
        w.sm("a").end_call(done),
        Ok(CallOutcome::Done(b"1".to_vec()))
    );
    w.finish_migration("a").unwrap();
    assert_eq!(w.ledger().get(&busy).unwrap().owner.as_str(), "b");
}

#[test]
fn an_enclave_destroyed_while_its_ecall_runs_is_wiped_when_it_returns() {
    let mut w = World::new(&["a"]);
    let id = w.deploy("a", COUNTER);
    let run = w.sm("a").begin_call(id, "incr", b"").unwrap();
    w.sm("a").destroy(id).unwrap();
    w.settle();
    assert_eq!(
        w.sm("a").end_call(run.run()),
        Err(MonitorError::Withdrawn(id))
    );
    assert_eq!(
        w.sm("a").info(id).map(|_| ()),
        Err(MonitorError::UnknownEnclave(id))
    );
    assert!(w.ledger().get(&id).is_none());
}

#[test]
fn an_enclave_recorded_lost_before_its_migration_paused_it_is_given_up_and_wiped() {
    let mut w = World::new(&["a", "b", "c"]);
    let id = w.deploy("a", COUNTER);
    w.call("a", id, "persist");
    // A migration that has not got its channel yet (every frame from a to c held back),
    // so it has not paused the enclave.
    w.stall_between("a", "c", 0);
    w.sm("a").migrate(id, h("c")).unwrap();
    w.settle();
    // Meanwhile a is removed (E recorded lost) and added again: a member once more, its
    // SM never restarted.
    w.remove_member("b", "a");
    w.sm("b").add_member(h("a"), String::new()).unwrap();
    assert!(w.run_until(Duration::from_secs(30), |w| {
        w.sm_ref("a").store_status().voters.contains(&h("a"))
            && w.sm_ref("a")
                .ledger()
                .get(&id)
                .is_some_and(|r| r.state == RecordState::Lost)
    }));
    // The migration is given up as soon as a applied the loss, and E is wiped then: at
    // no point does a hold a running copy its own ledger records lost. (Before, E ran on,
    // answering nothing, until the migration ended.)
    assert_eq!(w.finished("a").len(), 1);
    assert_eq!(
        w.sm("a").call(id, "get", b"").map(|_| ()),
        Err(MonitorError::UnknownEnclave(id))
    );
    assert_eq!(
        w.sm("a").migrate(id, h("b")).map(|_| ()),
        Err(MonitorError::UnknownEnclave(id))
    );
    assert!(
        !w.nodes[&h("a")].blobs.keys().is_empty(),
        "the recorded blob is kept for adoption"
    );
}

#[test]
fn a_late_adoption_reply_never_touches_a_later_life_of_the_enclave() {
    let mut w = World::new(&["a"]);
    let id = w.deploy("a", COUNTER);
    w.call("a", id, "persist");
    w.reboot("a");
    w.wait_ready();
    let registered = |w: &World| {
        w.events
            .iter()
            .filter(|(_, e)| matches!(e, Event::Registered { enclave } if *enclave == id))
            .count()
    };
    let before = registered(&w);
    // The host adopts, destroys that life before the store answers, and adopts again: the
    // store applies adopt, destroy, adopt, in that order.
    w.sm("a")
        .adopt(id, &COUNTER.module(), COUNTER.manifest())
        .unwrap();
    w.sm("a").destroy(id).unwrap();
    w.sm("a")
        .adopt(id, &COUNTER.module(), COUNTER.manifest())
        .unwrap();
    w.run_until(Duration::from_secs(10), |_| false);
    // The first adoption's answer belonged to a life that is gone: the second life never
    // ran on it, and its own adoption is refused (the record was destroyed).
    assert_eq!(registered(&w), before);
    assert_eq!(
        w.sm("a").info(id).map(|_| ()),
        Err(MonitorError::UnknownEnclave(id))
    );
    assert!(w.ledger().get(&id).is_none());
}

#[test]
fn a_doomed_enclave_cannot_be_migrated_and_a_foreign_ecall_is_refused() {
    let mut w = World::new(&["a", "b"]);
    let id = w.deploy("a", COUNTER);
    let run = w.sm("a").begin_call(id, "incr", b"").unwrap();
    w.sm("a").destroy(id).unwrap();
    assert_eq!(
        w.sm("a").migrate(id, h("b")).map(|_| ()),
        Err(MonitorError::Withdrawn(id))
    );
    assert_eq!(w.sm("a").pause(id), Err(MonitorError::Withdrawn(id)));
    // An ecall handed back to an SM that did not hand it out is refused, not obeyed.
    let other = w.deploy("b", COUNTER);
    let _busy = w.sm("b").begin_call(other, "get", b"").unwrap();
    assert_eq!(
        w.sm("b").end_call(run.run()),
        Err(MonitorError::UnknownEnclave(id))
    );
    w.sm("b").check_invariants();
}

#[test]
fn an_enclave_adopted_elsewhere_runs_only_once_the_removed_owners_lease_ran_out() {
    let mut w = World::new(&["a", "b", "c"]);
    // The owner must not lead: cut off, a leader could not be removed by the others.
    let leader = w.sm_ref("a").store_status().leader.expect("a leader");
    let owner = ["a", "b", "c"]
        .into_iter()
        .find(|x| h(x) != leader)
        .unwrap();
    let adopter = ["a", "b", "c"].into_iter().find(|x| *x != owner).unwrap();
    // Nothing sealed: any member may adopt it.
    let id = w.deploy(owner, COUNTER);
    w.call(owner, id, "incr");
    assert!(w.sm_ref(owner).holds_lease());
    // The owner is cut off from the store (it never hears of what follows, and keeps its
    // lease until it runs out); the adopter's operator removes it and adopts E at once.
    w.cut_store(owner);
    w.remove_member(adopter, owner);
    assert_eq!(w.ledger().get(&id).unwrap().state, RecordState::Lost);
    let before = w.registered(adopter, id);
    w.sm(adopter)
        .adopt(id, &COUNTER.module(), COUNTER.manifest())
        .unwrap();
    assert!(w.run_until(Duration::from_secs(1), |w| {
        w.sm_ref(adopter)
            .ledger()
            .get(&id)
            .is_some_and(|r| r.owner == h(adopter))
    }));
    assert_eq!(
        w.sm(adopter).info(id).unwrap().state,
        EnclaveState::Registering
    );
    // When the adopted instance runs, the owner's lease has run out: it answers nothing.
    assert!(w.run_until(Duration::from_secs(10), |w| {
        w.registered(adopter, id) > before
    }));
    assert!(
        !w.sm_ref(owner).holds_lease(),
        "the adopted copy runs while the removed owner may still answer"
    );
    assert!(!matches!(
        w.sm(owner).call(id, "get", b""),
        Ok(CallOutcome::Done(_))
    ));
    assert_eq!(w.call(adopter, id, "incr"), "1");
}
