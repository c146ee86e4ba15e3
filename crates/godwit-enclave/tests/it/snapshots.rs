use godwit_enclave::examples::{BALLAST, COUNTER};
use godwit_enclave::{EnclaveError, PAGE_BYTES};
use godwit_wire::GlobalValue;
use proptest::prelude::*;

use crate::support::*;

#[derive(Debug, Clone)]
enum CounterOp {
    Incr,
    Get,
    Persist,
    Restore,
}

fn counter_op() -> impl Strategy<Value = CounterOp> {
    prop_oneof![
        4 => Just(CounterOp::Incr),
        1 => Just(CounterOp::Get),
        1 => Just(CounterOp::Persist),
        1 => Just(CounterOp::Restore),
    ]
}

fn run_counter(
    e: &mut godwit_enclave::Enclave<PlainServices>,
    op: &CounterOp,
) -> Result<Vec<u8>, EnclaveError> {
    let name = match op {
        CounterOp::Incr => "incr",
        CounterOp::Get => "get",
        CounterOp::Persist => "persist",
        CounterOp::Restore => "restore",
    };
    e.call(name, b"")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// A restored counter answers every following call exactly as the original does.
    #[test]
    fn restored_counter_continues_like_the_original(
        before in prop::collection::vec(counter_op(), 0..30),
        after in prop::collection::vec(counter_op(), 1..30),
    ) {
        let rt = runtime();
        let module = load(&rt, COUNTER);
        let mut original = rt.instantiate(&module, PlainServices::default()).unwrap();
        for op in &before {
            let _ = run_counter(&mut original, op);
        }
        let snap = original.snapshot();
        // The SM carries sealed data and counters separately; here, copy them along.
        let services = original.services().clone();
        let mut restored = rt.restore(&module, services, &snap).unwrap();
        prop_assert_eq!(restored.snapshot(), snap);
        for op in &after {
            prop_assert_eq!(run_counter(&mut original, op), run_counter(&mut restored, op));
        }
    }

    /// The same for ballast, whose state is bulk memory and a generation global.
    #[test]
    fn restored_ballast_continues_like_the_original(
        before in prop::collection::vec(0u8..4, 1..4),
        after in prop::collection::vec(0u8..4, 1..4),
    ) {
        let rt = runtime();
        let module = load(&rt, BALLAST);
        let mut original = rt.instantiate(&module, PlainServices::default()).unwrap();
        let step = |e: &mut godwit_enclave::Enclave<PlainServices>, op: u8| match op {
            0 => e.call("checksum", b""),
            1 => e.call("size", b""),
            n => e.call("fill", n.to_string().as_bytes()),
        };
        for &op in &before {
            step(&mut original, op).unwrap();
        }
        let snap = original.snapshot();
        let mut restored = rt.restore(&module, PlainServices::default(), &snap).unwrap();
        for &op in &after {
            prop_assert_eq!(step(&mut original, op).unwrap(), step(&mut restored, op).unwrap());
        }
    }
}

#[test]
fn mutable_globals_are_captured_even_when_not_exported() {
    let rt = runtime();
    let mut e = start(&rt, COUNTER);
    call(&mut e, "incr", "");
    call(&mut e, "incr", "");
    assert_eq!(e.globals(), vec![GlobalValue::I64(2)]);
}

#[test]
fn streamed_pages_rebuild_the_instance_in_any_order() {
    let rt = runtime();
    let module = load(&rt, BALLAST);
    let mut original = rt.instantiate(&module, PlainServices::default()).unwrap();
    call(&mut original, "fill", "1");
    let expected = call(&mut original, "checksum", "");
    let globals = original.globals();
    let pages = original.memory_bytes() / PAGE_BYTES;
    let mut r = rt
        .begin_restore(&module, PlainServices::default(), original.memory_bytes())
        .unwrap();
    for i in (0..pages).rev() {
        r.write(i * PAGE_BYTES, original.page(i).unwrap()).unwrap();
    }
    assert!(original.page(pages).is_none());
    let mut restored = r.finish(&globals).unwrap();
    assert_eq!(call(&mut restored, "checksum", ""), expected);
}

#[test]
fn restore_refuses_state_that_does_not_fit() {
    let rt = runtime();
    let module = load(&rt, COUNTER);
    let mut e = rt.instantiate(&module, PlainServices::default()).unwrap();
    let mut snap = e.snapshot();
    snap.globals.push(GlobalValue::I32(0));
    assert!(matches!(
        rt.restore(&module, PlainServices::default(), &snap),
        Err(EnclaveError::SnapshotMismatch(_))
    ));
    snap.globals = vec![GlobalValue::I32(0)]; // wrong type: the count is an i64
    assert!(matches!(
        rt.restore(&module, PlainServices::default(), &snap),
        Err(EnclaveError::SnapshotMismatch(_))
    ));
    snap.globals = vec![GlobalValue::I64(0)];
    snap.memory.truncate(1000);
    assert!(matches!(
        rt.restore(&module, PlainServices::default(), &snap),
        Err(EnclaveError::SnapshotMismatch(_))
    ));
    // Larger than the manifest allows (1 MiB for counter).
    assert!(matches!(
        rt.begin_restore(&module, PlainServices::default(), 2 << 20),
        Err(EnclaveError::MemoryLimit { .. })
    ));
    let mut r = rt
        .begin_restore(&module, PlainServices::default(), 65536)
        .unwrap();
    assert!(r.write(65530, &[1; 10]).is_err());
}
