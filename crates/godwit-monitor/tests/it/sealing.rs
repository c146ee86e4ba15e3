use godwit_enclave::EnclaveError;
use godwit_enclave::examples::{COUNTER, VAULT};
use godwit_monitor::{BlobStore, MonitorError, SealError};

use crate::support::*;

const INTEGRITY: MonitorError = MonitorError::Enclave(EnclaveError::Failed { code: -6 });

#[test]
fn sealed_data_survives_in_host_storage_and_opens() {
    let mut h = host("h1", 1);
    let id = deploy(&mut h, COUNTER);
    call(&mut h, id, "incr");
    call(&mut h, id, "incr");
    call(&mut h, id, "persist");
    call(&mut h, id, "incr");
    assert_eq!(call(&mut h, id, "restore"), "2");
    assert_eq!(h.sm.last_refusal(id).unwrap(), None);
}

#[test]
fn an_altered_blob_is_refused() {
    let mut h = host("h1", 1);
    let id = deploy(&mut h, COUNTER);
    call(&mut h, id, "persist");
    // Each version of a slot is its own blob, named `<slot>@<version>`.
    let mut blob = h.blobs.get(id, "count@1").unwrap().unwrap();
    let last = blob.len() - 1;
    blob[last] ^= 1;
    h.blobs.put(id, "count@1", &blob).unwrap();
    assert_eq!(h.call_raw(id, "restore", b""), Err(INTEGRITY));
    assert_eq!(
        h.sm.last_refusal(id).unwrap(),
        Some(SealError::Authentication)
    );
}

#[test]
fn an_older_blob_is_refused_as_a_rollback() {
    let mut h = host("h1", 1);
    let id = deploy(&mut h, COUNTER);
    call(&mut h, id, "incr");
    call(&mut h, id, "persist");
    let old = h.blobs.get(id, "count@1").unwrap().unwrap();
    call(&mut h, id, "incr");
    call(&mut h, id, "persist");
    // Once the ledger recorded version 2, version 1 is deleted.
    assert_eq!(h.blobs.get(id, "count@1").unwrap(), None);
    // The host hands back the first version in place of the second.
    h.blobs.put(id, "count@2", &old).unwrap();
    assert_eq!(h.call_raw(id, "restore", b""), Err(INTEGRITY));
    assert_eq!(
        h.sm.last_refusal(id).unwrap(),
        Some(SealError::Rollback {
            presented: 1,
            newest: 2
        })
    );
    // A lost blob is refused too, not reported as "never sealed".
    h.blobs.delete(id, "count@2").unwrap();
    assert_eq!(h.call_raw(id, "restore", b""), Err(INTEGRITY));
    assert_eq!(h.sm.last_refusal(id).unwrap(), Some(SealError::Missing));
}

#[test]
fn a_blob_from_another_enclave_is_refused() {
    let mut h = host("h1", 1);
    let a = deploy(&mut h, COUNTER);
    let b = deploy(&mut h, COUNTER);
    call(&mut h, a, "incr");
    call(&mut h, a, "persist");
    call(&mut h, b, "persist");
    // Same application, same sealing key, another instance: the binding refuses it.
    let from_a = h.blobs.get(a, "count@1").unwrap().unwrap();
    h.blobs.put(b, "count@1", &from_a).unwrap();
    assert_eq!(h.call_raw(b, "restore", b""), Err(INTEGRITY));
    assert!(matches!(
        h.sm.last_refusal(b).unwrap(),
        Some(SealError::WrongBinding { .. })
    ));
}

#[test]
fn a_blob_from_another_platform_is_refused() {
    let mut here = host("h1", 1);
    let mut there = host("h2", 2);
    let id = deploy(&mut here, VAULT);
    call_arg(&mut here, id, "put", b"s3cret");
    let other = deploy(&mut there, VAULT);
    call_arg(&mut there, other, "put", b"other!");
    // Move the other platform's blob under this instance's key and slot: it names the other
    // instance and was sealed under another device's key.
    let foreign = there.blobs.get(other, "secret@1").unwrap().unwrap();
    here.blobs.put(id, "secret@1", &foreign).unwrap();
    assert_eq!(here.call_raw(id, "load", b""), Err(INTEGRITY));
    assert!(here.sm.last_refusal(id).unwrap().is_some());
}

fn call_arg(h: &mut Host, id: godwit_wire::EnclaveId, f: &str, arg: &[u8]) -> Vec<u8> {
    h.call_raw(id, f, arg).unwrap()
}
