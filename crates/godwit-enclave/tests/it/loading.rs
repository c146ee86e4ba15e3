use godwit_enclave::examples::{ALL, BALLAST, COUNTER, VAULT};
use godwit_enclave::{EnclaveError, Runtime};
use hmac::{KeyInit, Mac};

use crate::support::*;

const SKELETON_EXPORTS: &str = r#"
  (memory (export "memory") 1)
  (func (export "godwit_alloc") (param i32) (result i32) (i32.const 1024))
"#;

fn module_with(body: &str) -> String {
    format!("(module {SKELETON_EXPORTS} {body})")
}

#[test]
fn examples_load_and_list_their_ecalls() {
    let rt = runtime();
    for ex in ALL {
        let m = load(&rt, ex);
        assert_eq!(m.manifest().name, ex.name);
        assert!(m.ecalls().count() >= 2, "{}", ex.name);
    }
    let counter = load(&rt, COUNTER);
    let names: Vec<_> = counter.ecalls().collect();
    assert_eq!(names, ["get", "incr", "persist", "restore"]);
}

#[test]
fn counter_counts_and_seals() {
    let rt = runtime();
    let mut e = start(&rt, COUNTER);
    assert_eq!(call(&mut e, "get", ""), "0");
    assert_eq!(call(&mut e, "incr", ""), "1");
    assert_eq!(call(&mut e, "incr", ""), "2");
    assert_eq!(call(&mut e, "persist", ""), "2");
    assert_eq!(e.services().slots[&b"count".to_vec()], 2u64.to_le_bytes());
    for _ in 0..40 {
        call(&mut e, "incr", "");
    }
    assert_eq!(call(&mut e, "get", ""), "42");
    assert_eq!(call(&mut e, "restore", ""), "2");
}

#[test]
fn vault_answers_hmac_challenges_without_revealing_the_secret() {
    let rt = runtime();
    let mut e = start(&rt, VAULT);
    assert_eq!(e.call("hmac", b"x"), Err(EnclaveError::Failed { code: -1 }));
    assert_eq!(call(&mut e, "put", "hunter2"), "ok");
    let answer = call(&mut e, "hmac", "challenge-1");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"hunter2").unwrap();
    mac.update(b"challenge-1");
    assert_eq!(answer, hex::encode(mac.finalize().into_bytes()));
    assert_eq!(call(&mut e, "count", ""), "1");
    for f in ["put", "load", "hmac", "count"] {
        let out = e.call(f, b"probe").unwrap_or_default();
        assert!(
            !out.windows(7).any(|w| w == b"hunter2"),
            "{f} leaked the secret"
        );
    }
}

#[test]
fn ballast_fills_grows_and_checksums() {
    let rt = runtime();
    let mut e = start(&rt, BALLAST);
    assert_eq!(call(&mut e, "fill", "2"), (2 << 20).to_string());
    assert_eq!(e.memory_bytes(), 2 << 20);
    // Non-zero content after the first page.
    assert!(e.memory()[4096..].iter().all(|&b| b != 0));
    let c1 = call(&mut e, "checksum", "");
    assert_eq!(c1.len(), 16);
    assert_eq!(call(&mut e, "checksum", ""), c1);
    call(&mut e, "fill", "2");
    assert_ne!(
        call(&mut e, "checksum", ""),
        c1,
        "a new generation changes the content"
    );
    assert_eq!(
        e.call("fill", b"x1"),
        Err(EnclaveError::Failed { code: -4 })
    );
}

#[test]
fn the_manifest_memory_limit_is_enforced() {
    let rt = runtime();
    let mut small = BALLAST.manifest();
    small.memory_max_mib = 3;
    let m = rt.load(&BALLAST.module(), small).unwrap();
    let mut e = rt.instantiate(&m, PlainServices::default()).unwrap();
    assert_eq!(call(&mut e, "fill", "3"), (3 << 20).to_string());
    assert_eq!(e.call("fill", b"4"), Err(EnclaveError::Failed { code: -3 }));
    assert_eq!(e.memory_bytes(), 3 << 20);
}

#[test]
fn a_runaway_ecall_is_interrupted_and_the_enclave_survives() {
    let rt = runtime();
    let wat = module_with(
        r#"(global $n (mut i32) (i32.const 0))
           (func (export "spin") (param i32 i32) (result i64) (loop $l (br $l)) (i64.const 0))
           (func (export "ping") (param i32 i32) (result i64)
             (global.set $n (i32.add (global.get $n) (i32.const 1))) (i64.const 0))"#,
    );
    let m = load_wat(&rt, &wat, manifest(1_000_000)).unwrap();
    let mut e = rt.instantiate(&m, PlainServices::default()).unwrap();
    assert_eq!(
        e.call("spin", b""),
        Err(EnclaveError::OutOfFuel { fuel: 1_000_000 })
    );
    assert_eq!(e.call("ping", b""), Ok(vec![]));
    assert_eq!(e.globals(), vec![godwit_wire::GlobalValue::I32(1)]);
}

#[test]
fn calls_are_bounded_and_checked() {
    let rt = runtime();
    let mut e = start(&rt, COUNTER);
    assert_eq!(
        e.call("nope", b""),
        Err(EnclaveError::NoSuchEcall("nope".into()))
    );
    assert_eq!(
        e.call("incr", &[0; 4097]),
        Err(EnclaveError::ArgumentTooLarge {
            len: 4097,
            max: 4096
        })
    );
    let wat = module_with(
        r#"(func (export "wild") (param i32 i32) (result i64) (i64.const 0x7fffff0000000010))
           (func (export "trap") (param i32 i32) (result i64) unreachable)"#,
    );
    let m = load_wat(&rt, &wat, manifest(1000)).unwrap();
    let mut e = rt.instantiate(&m, PlainServices::default()).unwrap();
    assert_eq!(e.call("wild", b""), Err(EnclaveError::BadPointer));
    assert!(matches!(e.call("trap", b""), Err(EnclaveError::Trap(_))));
}

#[test]
fn malformed_modules_are_rejected_with_typed_errors() {
    let rt = runtime();
    let m = manifest(1000);
    let load_bytes = |bytes: &[u8]| rt.load(bytes, m.clone()).unwrap_err();
    assert!(matches!(
        load_bytes(b"\0asm\x01\0\0\0garbage"),
        EnclaveError::Invalid(_)
    ));
    assert!(matches!(
        load_bytes(b"not wasm at all"),
        EnclaveError::Invalid(_)
    ));
    assert!(matches!(load_bytes(b""), EnclaveError::Invalid(_)));
    let too_big = vec![0u8; Runtime::MODULE_BYTES_MAX + 1];
    assert!(matches!(
        load_bytes(&too_big),
        EnclaveError::ModuleTooLarge { .. }
    ));

    let ecall = r#"(func (export "f") (param i32 i32) (result i64) (i64.const 0))"#;
    type Check = fn(&EnclaveError) -> bool;
    let cases: [(String, Check); 7] = [
        (
            module_with(&format!("(func $s) (start $s) {ecall}")),
            |e| matches!(e, EnclaveError::Unsupported(s) if s.contains("start")),
        ),
        (
            format!(r#"(module (import "env" "f" (func)) {SKELETON_EXPORTS} {ecall})"#),
            |e| matches!(e, EnclaveError::UnknownImport(s) if s == "env.f"),
        ),
        (
            format!(
                r#"(module (import "godwit" "seal" (func (param i32))) {SKELETON_EXPORTS} {ecall})"#
            ),
            |e| matches!(e, EnclaveError::WrongSignature(s) if s == "godwit.seal"),
        ),
        (
            format!(r#"(module (memory (export "memory") 1) {ecall})"#),
            |e| matches!(e, EnclaveError::MissingExport(s) if s == "godwit_alloc"),
        ),
        (
            module_with(""),
            |e| matches!(e, EnclaveError::MissingExport(s) if s.contains("ecall")),
        ),
        (
            module_with(&format!(
                "(table 1 funcref) (func (export \"g\") (param i32 i32) (result i64) \
                 (table.set 0 (i32.const 0) (ref.null func)) (i64.const 0)) {ecall}"
            )),
            |e| matches!(e, EnclaveError::Unsupported(s) if s.contains("table.set")),
        ),
        (
            module_with(&format!(
                r#"(global (export "__godwit_global_0") i32 (i32.const 0)) {ecall}"#
            )),
            |e| matches!(e, EnclaveError::Unsupported(_)),
        ),
    ];
    for (i, (wat, expected)) in cases.iter().enumerate() {
        let err = load_wat(&rt, wat, m.clone()).unwrap_err();
        assert!(expected(&err), "case {i}: unexpected {err:?}");
    }
}

#[test]
fn measurement_covers_module_and_manifest() {
    let rt = runtime();
    let a = load(&rt, COUNTER).measurement();
    let mut edited = COUNTER.manifest();
    edited.max_instances_per_host += 1;
    let b = rt.load(&COUNTER.module(), edited).unwrap().measurement();
    let mut module = COUNTER.module();
    module.extend_from_slice(&[0, 2, 1, b'x']); // a custom section: still a valid module
    let c = rt.load(&module, COUNTER.manifest()).unwrap().measurement();
    assert_ne!(a, b);
    assert_ne!(a, c);
    assert_eq!(a, load(&rt, COUNTER).measurement());
}

#[test]
fn ballast_spins_without_touching_memory() {
    let rt = runtime();
    let mut e = start(&rt, BALLAST);
    let before = e.memory().to_vec();
    assert_eq!(call(&mut e, "spin", "64"), "64");
    assert_eq!(e.memory()[4096..], before[4096..]);
    assert!(e.call("spin", b"0").is_err());
    assert!(e.call("spin", b"4096").is_err());
}
