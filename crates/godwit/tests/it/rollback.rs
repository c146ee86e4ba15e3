//! Rollback and stale-state holes a hostile host can open with nothing but the stock
//! `godwit` binary, its CLI and its files: a never-recorded blob put back after adoption
//! and a round trip, a refused ledger write, a failed call that changed durable state, a
//! rolled-back boot count, a careless control API, and one enclave's long call. Each is
//! closed in the SM (or, for the control API, where the daemon guards the SM's door);
//! every test here failed on the main branch before the fix (see the commit message).

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::support::*;

/// The data directory of host `k`.
fn data(p: &Processes, k: usize) -> PathBuf {
    p.dir.path().join("c").join(format!("host{k}"))
}

/// The blob file of `slot` at `version` of enclave `id` on host `k`.
fn blob(p: &Processes, k: usize, id: &str, name: &str) -> PathBuf {
    data(p, k).join("blobs").join(id).join(name)
}

/// Waits (bounded) until host `k`'s copy of the store records `id` lost.
fn wait_lost(p: &Processes, k: usize, id: &str) {
    poll(Duration::from_secs(60), "the enclave recorded lost", || {
        record(p, k, id).is_some_and(|r| r["state"] == "lost")
    });
}

/// Starts `godwit call` on host `k` without waiting for it.
fn call_in_background(p: &Processes, k: usize, id: &str, function: &str, arg: &str) -> Child {
    godwit()
        .args(["call", "--config"])
        .arg(p.config(k))
        .args([id, function, "--arg", arg])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Hole 1: the lost incarnation's version 2 was sealed and never recorded; after adoption
/// and a round trip through another host, the new incarnation's version 2 is in the
/// ledger. The old blob, put back, must not open.
#[test]
fn a_never_recorded_blob_of_a_lost_incarnation_does_not_come_back() {
    let mut p = Processes::start(3);
    // On a host that does not lead the store: with the others down, its write reaches no
    // log at all, so the seal is certainly never recorded.
    let k = (1..=3).find(|&k| k != leader(&p, 1)).unwrap();
    let others: Vec<usize> = (1..=3).filter(|&o| o != k).collect();
    let id = p.deploy(k, "counter");
    for _ in 0..5 {
        p.ok(k, &["call", &id, "incr"]);
    }
    assert_eq!(p.ok(k, &["call", &id, "persist"]), "5");
    // No quorum: the next seal is written to disk but never recorded, and its result is
    // withheld.
    for &o in &others {
        p.kill(o);
    }
    for _ in 0..25 {
        p.ok(k, &["call", &id, "incr"]);
    }
    let withheld = KillOnDrop(call_in_background(&p, k, &id, "persist", ""));
    let v2 = blob(&p, k, &id, "count@2");
    poll(
        Duration::from_secs(60),
        "the unrecorded seal on disk",
        || v2.exists(),
    );
    let unrecorded = std::fs::read(&v2).unwrap();
    drop(withheld);
    p.kill(k);
    for h in 1..=3 {
        p.spawn(h);
    }
    p.wait_ready(3);
    wait_lost(&p, k, &id);
    p.deploy_with(k, "counter", None, Some(&id));
    assert_eq!(p.ok(k, &["call", &id, "restore"]), "5");
    // A round trip: version 2 of the new incarnation is sealed and recorded elsewhere.
    let o = others[0];
    p.ok(k, &["migrate", &id, "--to", &format!("host{o}")]);
    p.ok(o, &["call", &id, "incr"]);
    p.ok(o, &["call", &id, "incr"]);
    assert_eq!(p.ok(o, &["call", &id, "persist"]), "7");
    p.ok(o, &["migrate", &id, "--to", &format!("host{k}")]);
    // The host puts the lost incarnation's version 2 back.
    std::fs::write(blob(&p, k, &id, "count@2"), &unrecorded).unwrap();
    let out = p.cli(k, &["call", &id, "restore"]);
    let said = String::from_utf8_lossy(&out.stdout);
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && why.contains("status -6"),
        "the lost incarnation's seal opened: {said}{why}"
    );
    let log = std::fs::read_to_string(p.dir.path().join(format!("host{k}.log"))).unwrap();
    assert!(log.contains("sealed by incarnation 0, not 1"), "{log}");
}

/// Hole 2: once the ledger refuses to record an instance's state because it no longer
/// lets this host run it, the instance releases nothing more.
#[test]
fn an_instance_whose_state_the_ledger_refuses_releases_nothing_more() {
    let p = Processes::start(3);
    // The enclave's host must not lead the store (a removed leader cannot write at all).
    let k = (1..=3).find(|&k| k != leader(&p, 1)).unwrap();
    let other = (1..=3).find(|&o| o != k).unwrap();
    let id = p.deploy(k, "counter");
    p.ok(k, &["call", &id, "incr"]);
    assert_eq!(p.ok(k, &["call", &id, "persist"]), "1");
    // Another host's operator removes host k: the store records its enclave lost.
    p.remove_member(other, k);
    poll(Duration::from_secs(60), "the enclave recorded lost", || {
        record(&p, other, &id).is_some_and(|r| r["state"] == "lost")
    });
    let _ = p.cli(k, &["call", &id, "incr", "--wait-ms", "5000"]);
    let persist = p.cli(k, &["call", &id, "persist", "--wait-ms", "20000"]);
    assert!(!persist.status.success(), "a refused seal was answered");
    let get = p.cli(k, &["call", &id, "get", "--wait-ms", "5000"]);
    assert!(
        !get.status.success(),
        "state the ledger refused was released: {}",
        String::from_utf8_lossy(&get.stdout)
    );
}

/// Hole 3: a call that counted an attempt and then failed is an answer like any other,
/// released only once the attempt is recorded; a host without quorum learns nothing.
#[test]
fn a_failed_call_that_changed_durable_state_is_not_answered_before_it_is_recorded() {
    let mut p = Processes::start(3);
    let id = p.deploy(1, "pin");
    assert_eq!(p.ok(1, &["call", &id, "set", "--arg", "1234"]), "ok");
    p.kill(2);
    p.kill(3);
    let out = p.cli(
        1,
        &["call", &id, "try", "--arg", "0000", "--wait-ms", "3000"],
    );
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{why}");
    assert!(
        !why.contains("status -100") && why.contains("[store_unavailable]"),
        "the wrong guess was answered before the attempt was recorded: {why}"
    );
    // The host kills the SM and adopts the enclave. The attempt may still be recorded
    // later (the entry may survive in the old leader's log) or be gone; either way no
    // answer to it was ever released.
    p.kill(1);
    for k in 1..=3 {
        p.spawn(k);
    }
    p.wait_ready(3);
    wait_lost(&p, 1, &id);
    p.deploy_with(1, "pin", None, Some(&id));
    let before: u64 = p.ok(1, &["call", &id, "attempts"]).parse().unwrap();
    assert!(before <= 1, "{before}");
    let wrong = p.fails(1, &["call", &id, "try", "--arg", "0000"]);
    assert!(wrong.contains("status -100"), "{wrong}");
    assert_eq!(p.ok(1, &["call", &id, "try", "--arg", "1234"]), "ok");
    assert_eq!(
        p.ok(1, &["call", &id, "attempts"]),
        (before + 2).to_string()
    );
}

/// Hole 4: the host hands host2's component an older boot count. The store refuses the
/// boot, and host2 takes part in nothing.
#[test]
fn a_rolled_back_boot_count_takes_part_in_nothing() {
    let mut p = Processes::start(3);
    let id = p.deploy(1, "counter");
    p.ok(1, &["call", &id, "incr"]);
    let count = data(&p, 2).join("identity/boot-count");
    let old = std::fs::read(&count).unwrap();
    for _ in 0..2 {
        p.kill(2);
        p.spawn(2);
        p.wait_boot_recorded(2);
    }
    p.kill(2);
    std::fs::write(&count, &old).unwrap();
    p.spawn(2);
    p.wait_leader(2);
    // A migration to host2 is refused for its stale boot (asked again while host2's
    // announcement is not answered yet).
    let mut refused = String::new();
    poll(Duration::from_secs(60), "host2's refusal", || {
        let out = p.cli(1, &["migrate", &id, "--to", "host2"]);
        assert!(
            !out.status.success(),
            "a migration to a host with a rolled-back boot count committed"
        );
        refused = String::from_utf8_lossy(&out.stderr).into_owned();
        !refused.contains("receiver_starting")
    });
    assert!(refused.contains("receiver_stale_boot"), "{refused}");
    let deploy = p.deploy_cli(2, "counter", None, None);
    assert!(!deploy.status.success());
    assert!(String::from_utf8_lossy(&deploy.stderr).contains("boot count went back"));
    assert_eq!(p.ok(1, &["call", &id, "get"]), "1");
    assert_eq!(running_on(&p, &id, &[1, 2, 3]), vec![1]);
}

/// Waits (bounded) for `child` to exit; its stderr, or `None` if it was still running.
fn exits_within(child: Child, limit: Duration) -> Option<String> {
    let mut child = KillOnDrop(child);
    let mut exited = false;
    poll_until(limit, || {
        exited = child.0.try_wait().unwrap().is_some();
        exited
    });
    if !exited {
        return None;
    }
    let mut err = String::new();
    child.0.stderr.take()?.read_to_string(&mut err).unwrap();
    Some(err)
}

/// Hole 5: the node refuses a token file others can read or an empty one, names the file
/// and the fix, and every file it writes is private whatever the umask.
#[test]
fn the_control_token_must_be_private_and_not_empty() {
    let p = Processes::laid_out(1);
    let token = data(&p, 1).join("control.token");
    let start = || {
        godwit()
            .arg("node")
            .arg("--config")
            .arg(p.config(1))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = exits_within(start(), Duration::from_secs(30))
        .expect("a node with a world-readable token file started");
    assert!(
        err.contains("control.token") && err.contains("chmod 600"),
        "{err}"
    );
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&token, b"\n").unwrap();
    let err = exits_within(start(), Duration::from_secs(30))
        .expect("a node with an empty token file started");
    assert!(err.contains("control.token"), "{err}");
}

/// Every regular file under `dir`, with its mode.
fn files_under(dir: &Path, out: &mut Vec<(PathBuf, u32)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let meta = std::fs::symlink_metadata(e.path()).unwrap();
        if meta.is_dir() {
            files_under(&e.path(), out);
        } else {
            out.push((e.path(), meta.permissions().mode() & 0o777));
        }
    }
}

#[test]
fn under_an_open_umask_every_file_is_private_and_the_token_is_read_first() {
    let mut p = Processes::laid_out(1);
    p.spawn_with_umask(1, Some("000"));
    p.wait_ready(1);
    let id = p.deploy(1, "counter");
    p.ok(1, &["call", &id, "persist"]);
    let mut files = Vec::new();
    files_under(&data(&p, 1), &mut files);
    let open: Vec<_> = files.iter().filter(|(_, m)| m & 0o077 != 0).collect();
    assert!(open.is_empty(), "files others may read or use: {open:?}");
    // A peer with no token cannot make the daemon read a large request: the first line
    // is the token, read with a small bound.
    let socket = data(&p, 1).join("control.sock");
    let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = s.write_all(&vec![b'a'; 64 * 1024]);
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(
        answer.contains("unauthorized"),
        "no refusal after 64 KiB without a token: {answer:?}"
    );
}

/// Hole 6: one enclave's long call holds only that enclave.
#[test]
fn a_long_call_holds_only_its_own_enclave() {
    let p = Processes::start(3);
    let busy = p.deploy(1, "ballast");
    let other = p.deploy(1, "counter");
    let mut spin = KillOnDrop(call_in_background(&p, 1, &busy, "spin", "4095"));
    poll(
        Duration::from_secs(60),
        "the long call to be under way",
        || {
            p.status(1).is_some_and(|s| {
                s["local"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e["id"] == busy.as_str() && e["busy"] == true)
            })
        },
    );
    for n in 1..=3 {
        assert_eq!(p.ok(1, &["call", &other, "incr"]), n.to_string());
    }
    // The store and the network go on too: a migration of the other enclave commits.
    p.ok(1, &["migrate", &other, "--to", "host2"]);
    assert_eq!(p.ok(2, &["call", &other, "get"]), "3");
    assert!(
        spin.0.try_wait().unwrap().is_none(),
        "the long call ended before the other enclave's calls: nothing was shown"
    );
}
