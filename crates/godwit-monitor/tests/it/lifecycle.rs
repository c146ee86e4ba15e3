use godwit_enclave::EnclaveError;
use godwit_enclave::examples::{BALLAST, COUNTER, VAULT};
use godwit_monitor::{EnclaveState, MonitorError};
use godwit_wire::EnclaveId;
use proptest::prelude::*;

use crate::support::*;

#[test]
fn the_instance_after_the_manifest_limit_is_refused() {
    let mut h = host("h1", 1);
    let limit = COUNTER.manifest().max_instances_per_host;
    let ids: Vec<_> = (0..limit).map(|_| deploy(&mut h, COUNTER)).collect();
    let err =
        h.sm.create(&COUNTER.module(), COUNTER.manifest())
            .unwrap_err();
    assert_eq!(
        err,
        MonitorError::InstanceLimit {
            app: "counter".into(),
            limit,
            present: limit
        }
    );
    assert!(err.to_string().contains("at most 2 instance(s) per host"));
    // Paused instances still count; other applications are unaffected.
    h.sm.pause(ids[0]).unwrap();
    assert!(h.sm.create(&COUNTER.module(), COUNTER.manifest()).is_err());
    deploy(&mut h, VAULT);
    // Destroying one frees a place.
    h.sm.destroy(ids[0]).unwrap();
    deploy(&mut h, COUNTER);
}

#[test]
fn a_manifest_that_allows_one_refuses_the_second() {
    let mut h = host("h1", 1);
    assert_eq!(VAULT.manifest().max_instances_per_host, 1);
    deploy(&mut h, VAULT);
    assert!(matches!(
        h.sm.create(&VAULT.module(), VAULT.manifest()),
        Err(MonitorError::InstanceLimit {
            limit: 1,
            present: 1,
            ..
        })
    ));
}

#[test]
fn pause_resume_and_destroy_follow_the_state_machine() {
    let mut h = host("h1", 1);
    let id = deploy(&mut h, COUNTER);
    assert_eq!(call(&mut h, id, "incr"), "1");
    h.sm.pause(id).unwrap();
    assert!(matches!(
        h.call_raw(id, "incr", b""),
        Err(MonitorError::WrongState {
            state: EnclaveState::Paused,
            ..
        })
    ));
    assert!(h.sm.pause(id).is_err());
    h.sm.resume(id).unwrap();
    assert!(h.sm.resume(id).is_err(), "resuming a running enclave");
    assert_eq!(call(&mut h, id, "incr"), "2");
    call(&mut h, id, "persist");
    assert_eq!(h.blobs.keys().len(), 1);
    h.sm.destroy(id).unwrap();
    assert!(
        h.blobs.keys().is_empty(),
        "destroy deletes the sealed blobs"
    );
    assert_eq!(
        h.call_raw(id, "get", b""),
        Err(MonitorError::UnknownEnclave(id))
    );
    assert!(h.sm.list().is_empty());
}

#[test]
fn unknown_ids_and_bad_modules_get_typed_errors() {
    let mut h = host("h1", 1);
    let ghost = EnclaveId([0xee; 16]);
    assert_eq!(
        h.call_raw(ghost, "get", b""),
        Err(MonitorError::UnknownEnclave(ghost))
    );
    assert_eq!(h.sm.pause(ghost), Err(MonitorError::UnknownEnclave(ghost)));
    assert_eq!(
        h.sm.destroy(ghost),
        Err(MonitorError::UnknownEnclave(ghost))
    );
    assert!(h.sm.info(ghost).is_err());
    assert!(matches!(
        h.sm.create(b"garbage", COUNTER.manifest()),
        Err(MonitorError::Enclave(EnclaveError::Invalid(_)))
    ));
    let mut bad = COUNTER.manifest();
    bad.max_instances_per_host = 0;
    assert!(matches!(
        h.sm.create(&COUNTER.module(), bad),
        Err(MonitorError::Enclave(EnclaveError::Manifest(_)))
    ));
    let id = deploy(&mut h, BALLAST);
    assert!(matches!(
        h.call_raw(id, "fill", b"99999"),
        Err(MonitorError::Enclave(EnclaveError::Failed { .. }))
    ));
}

#[test]
fn counters_are_monotonic_and_bounded() {
    let wat = r#"(module
      (import "godwit" "counter_create" (func $create (param i32 i32) (result i32)))
      (import "godwit" "counter_increment" (func $inc (param i32 i32) (result i64)))
      (import "godwit" "counter_read" (func $read (param i32 i32) (result i64)))
      (memory (export "memory") 1)
      (func (export "godwit_alloc") (param i32) (result i32) (i32.const 1024))
      (func (export "create") (param $p i32) (param $l i32) (result i64)
        (i64.extend_i32_s (call $create (local.get $p) (local.get $l))))
      ;; inc and read return the value as 8 little-endian bytes at 0, or the status
      (func $out (param $v i64) (result i64)
        (if (i64.lt_s (local.get $v) (i64.const 0)) (then (return (local.get $v))))
        (i64.store (i32.const 0) (local.get $v))
        (i64.const 8))
      (func (export "inc") (param $p i32) (param $l i32) (result i64)
        (call $out (call $inc (local.get $p) (local.get $l))))
      (func (export "read") (param $p i32) (param $l i32) (result i64)
        (call $out (call $read (local.get $p) (local.get $l)))))"#;
    let mut h = host("h1", 1);
    let manifest = godwit_wire::Manifest::from_toml(
        "name = \"ctr\"\nversion = \"1\"\nmax_instances_per_host = 1\nmemory_max_mib = 1\nmigratable = true\n",
    )
    .unwrap();
    let module = godwit_enclave::module_from_source(wat.as_bytes()).unwrap();
    let id = h.sm.create(&module, manifest).unwrap();
    h.settle();
    let value = |v: Vec<u8>| u64::from_le_bytes(v.try_into().unwrap());
    assert_eq!(
        h.call_raw(id, "read", b"a"),
        Err(MonitorError::Enclave(EnclaveError::Failed { code: -1 }))
    );
    h.call_raw(id, "create", b"a").unwrap();
    assert_eq!(
        h.call_raw(id, "create", b"a"),
        Err(MonitorError::Enclave(EnclaveError::Failed { code: -2 }))
    );
    assert_eq!(
        h.call_raw(id, "create", b"bad name!"),
        Err(MonitorError::Enclave(EnclaveError::Failed { code: -4 }))
    );
    assert_eq!(value(h.call_raw(id, "read", b"a").unwrap()), 0);
    for i in 1..=3 {
        assert_eq!(value(h.call_raw(id, "inc", b"a").unwrap()), i);
    }
    assert_eq!(value(h.call_raw(id, "read", b"a").unwrap()), 3);
    for i in 1..godwit_monitor::COUNTERS_MAX {
        h.call_raw(id, "create", format!("c{i}").as_bytes())
            .unwrap();
    }
    assert_eq!(
        h.call_raw(id, "create", b"one-more"),
        Err(MonitorError::Enclave(EnclaveError::Failed { code: -5 }))
    );
}

#[derive(Debug, Clone)]
enum Op {
    Create(bool),
    Destroy(usize),
    Pause(usize),
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// Whatever the host asks, instances of an application never exceed its limit, and
    /// every refusal is the typed limit error.
    #[test]
    fn instance_limits_hold_under_any_request_sequence(ops in prop::collection::vec(
        prop_oneof![
            3 => any::<bool>().prop_map(Op::Create),
            1 => (0usize..8).prop_map(Op::Destroy),
            1 => (0usize..8).prop_map(Op::Pause),
        ], 1..24)
    ) {
        let mut h = host("h1", 1);
        let apps = [COUNTER, VAULT];
        let mut live: Vec<EnclaveId> = Vec::new();
        for op in ops {
            match op {
                Op::Create(which) => {
                    let ex = apps[usize::from(which)];
                    let m = ex.manifest();
                    let measurement = m.measure(&ex.module());
                    let before = h.sm.instances_of(&measurement);
                    match h.sm.create(&ex.module(), m.clone()) {
                        Ok(id) => {
                            h.settle();
                            prop_assert!(before < m.max_instances_per_host);
                            live.push(id);
                        }
                        Err(MonitorError::InstanceLimit { .. }) => {
                            prop_assert_eq!(before, m.max_instances_per_host);
                        }
                        Err(e) => prop_assert!(false, "unexpected {e}"),
                    }
                }
                Op::Destroy(i) if !live.is_empty() => {
                    let id = live.remove(i % live.len());
                    h.sm.destroy(id).unwrap();
                }
                Op::Pause(i) if !live.is_empty() => {
                    let _ = h.sm.pause(live[i % live.len()]);
                }
                _ => {}
            }
            h.sm.check_invariants();
        }
    }
}
