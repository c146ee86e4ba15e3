//! The host as adversary, with real node processes: a proxy in the host's place between
//! two SMs that alters, replays, reorders, drops or stalls frames of a migration; a disk
//! that hands back older sealed blobs and an older store file; a forged SM at a peer's
//! address; an old copy asked to run again; a deployment past the limit; two migrations of
//! one enclave at once. Each attack is refused with a reason that names it, and nothing is
//! lost: the enclave runs on exactly one host with its state.
//!
//! (In-process cases — a wrong SM measurement, a resume after the enclave left, altered
//! and foreign blobs, a restart mid-migration — are in `godwit-attest`, `godwit-monitor`
//! and `recovery.rs`; docs/testing.md lists them all.)

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::support::*;

/// Frames at least this large are migration data (memory pages); the rest is handshakes,
/// protocol messages and store traffic.
const DATA_FRAME_BYTES: usize = 64 * 1024;

#[derive(Clone, Copy, Debug)]
enum Tamper {
    /// Forward everything (and record it).
    Nothing,
    /// Flip one bit in the middle of the frame.
    Alter,
    /// Deliver the frame twice.
    Replay,
    /// Deliver the frame after the one that follows it.
    Reorder,
    /// Never deliver it.
    Drop,
    /// Hold it back for this long, then deliver it.
    Stall(Duration),
}

/// Whether a proxy has tampered (`fired`), and has finished (`done`: a stalled frame was
/// let go).
#[derive(Default)]
struct Flags {
    fired: AtomicBool,
    done: AtomicBool,
    /// Every byte the proxy carried, both ways.
    seen: std::sync::Mutex<Vec<u8>>,
}

/// A TCP proxy in the host's place: forwards length-delimited frames between the SMs, and
/// tampers once with the first data frame it sees in the dialling direction.
struct Proxy {
    addr: String,
}

impl Proxy {
    fn start(target: String, tamper: Tamper, fired: Arc<Flags>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let flag = Arc::clone(&fired);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let (Ok(client), Ok(server)) = (client, TcpStream::connect(&target)) else {
                    continue;
                };
                let (mut back_from, mut back_to) =
                    (server.try_clone().unwrap(), client.try_clone().unwrap());
                let back = Arc::clone(&flag);
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n @ 1..) = back_from.read(&mut buf) {
                        back.seen.lock().unwrap().extend_from_slice(&buf[..n]);
                        if back_to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = back_to.shutdown(Shutdown::Both);
                    let _ = back_from.shutdown(Shutdown::Both);
                });
                let fired = Arc::clone(&flag);
                std::thread::spawn(move || {
                    let _ = pump(&client, &server, tamper, &fired);
                    let _ = client.shutdown(Shutdown::Both);
                    let _ = server.shutdown(Shutdown::Both);
                });
            }
        });
        Self { addr }
    }
}

fn pump(
    mut from: &TcpStream,
    mut to: &TcpStream,
    tamper: Tamper,
    flags: &Flags,
) -> std::io::Result<()> {
    let mut held: Option<Vec<u8>> = None;
    loop {
        let mut len = [0u8; 4];
        from.read_exact(&mut len)?;
        let n = u32::from_be_bytes(len) as usize;
        let mut frame = vec![0u8; 4 + n];
        frame[..4].copy_from_slice(&len);
        from.read_exact(&mut frame[4..])?;
        flags.seen.lock().unwrap().extend_from_slice(&frame);
        if let Some(earlier) = held.take() {
            to.write_all(&frame)?;
            to.write_all(&earlier)?;
            continue;
        }
        if n < DATA_FRAME_BYTES
            || matches!(tamper, Tamper::Nothing)
            || flags.fired.swap(true, Ordering::SeqCst)
        {
            to.write_all(&frame)?;
            continue;
        }
        match tamper {
            Tamper::Nothing => unreachable!("forwarded above"),
            Tamper::Alter => {
                frame[4 + n / 2] ^= 0x10;
                to.write_all(&frame)?;
            }
            Tamper::Replay => {
                to.write_all(&frame)?;
                to.write_all(&frame)?;
            }
            Tamper::Reorder => held = Some(frame),
            Tamper::Drop => {}
            Tamper::Stall(d) => {
                std::thread::sleep(d);
                to.write_all(&frame)?;
            }
        }
        flags.done.store(true, Ordering::SeqCst);
    }
}

/// The address a host's configuration listens on.
fn listen_of(config: &std::path::Path) -> String {
    let text = std::fs::read_to_string(config).unwrap();
    let line = text.lines().find(|l| l.starts_with("listen")).unwrap();
    line.split('"').nth(1).unwrap().to_owned()
}

fn listen_addr(p: &Processes, k: usize) -> String {
    listen_of(&p.config(k))
}

/// Makes host `k` reach peer `peer` at `addr` instead (an operator's edit of its config).
fn redirect(p: &Processes, k: usize, peer: usize, addr: &str) {
    let path = p.config(k);
    let text = std::fs::read_to_string(&path).unwrap();
    let old = format!("addr = \"{}\"", listen_addr(p, peer));
    assert_eq!(text.matches(&old).count(), 1, "{old} in {}", path.display());
    std::fs::write(&path, text.replace(&old, &format!("addr = \"{addr}\""))).unwrap();
}

/// Three hosts, where everything between host1 and host2 (both ways) passes through a
/// proxy doing `tamper`.
fn proxied_cluster(tamper: Tamper) -> (Processes, Arc<Flags>) {
    let mut p = Processes::laid_out(3);
    let flags = Arc::new(Flags::default());
    let to2 = Proxy::start(listen_addr(&p, 2), tamper, Arc::clone(&flags));
    let to1 = Proxy::start(listen_addr(&p, 1), tamper, Arc::clone(&flags));
    redirect(&p, 1, 2, &to2.addr);
    redirect(&p, 2, 1, &to1.addr);
    for k in 1..=3 {
        p.spawn(k);
    }
    p.wait_ready(3);
    (p, flags)
}

/// Runs a migration of `id` from host1 to host2 through a tampering proxy (both ways) and
/// checks: the migration fails naming `expect` (in its error or in the log of the SM that
/// detected the attack), the enclave runs on host1 alone with its memory, and a migration
/// without tampering then succeeds.
fn tampered_migration(tamper: Tamper, expect: &[&str]) {
    let (mut p, flags) = proxied_cluster(tamper);
    let (id, sum) = p.deploy_ballast(1, 8);

    let out = p.cli(1, &["migrate", &id, "--to", "host2"]);
    assert!(flags.fired.load(Ordering::SeqCst), "{tamper:?} was applied");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{tamper:?}: the migration failed");
    let logs = format!(
        "{stderr}\n{}\n{}",
        std::fs::read_to_string(p.dir.path().join("host1.log")).unwrap(),
        std::fs::read_to_string(p.dir.path().join("host2.log")).unwrap()
    );
    assert!(
        expect.iter().any(|e| logs.contains(e)),
        "{tamper:?}: expected one of {expect:?} among the reasons:\n{stderr}{}",
        p.logs()
    );

    // Nothing lost: host1 alone runs it, with its memory; host2 holds no copy.
    poll(Duration::from_secs(30), "the source to resume", || {
        running_on(&p, &id, &[1, 2, 3]) == [1]
    });
    assert_eq!(p.ok(1, &["call", &id, "checksum"]), sum);
    assert!(!p.cli(2, &["call", &id, "checksum"]).status.success());
    // The proxy tampers only once: once it is done, the next attempt goes through.
    poll(Duration::from_secs(30), "the proxy to finish", || {
        flags.done.load(Ordering::SeqCst)
    });
    p.ok(1, &["migrate", &id, "--to", "host2"]);
    assert_eq!(p.ok(2, &["call", &id, "checksum"]), sum);
    p.kill(1);
}

/// Whether `needle` occurs in `hay`.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn no_plaintext_reaches_the_wire_or_the_disk() {
    let (p, flags) = proxied_cluster(Tamper::Nothing);
    let canary = "godwit-canary-5f0e2b9a7c31d846";
    let id = p.deploy(1, "vault");
    p.ok(1, &["call", &id, "put", "--arg", canary]);
    let answer = p.ok(1, &["call", &id, "hmac", "--arg", "challenge"]);
    p.ok(1, &["migrate", &id, "--to", "host2"]);
    // The secret moved (in memory and in the sealed slot): host2 answers alike, and its
    // sealed copy opens.
    assert_eq!(
        p.ok(2, &["call", &id, "hmac", "--arg", "challenge"]),
        answer
    );
    assert_eq!(p.ok(2, &["call", &id, "load"]), "ok");
    let seen = std::mem::take(&mut *flags.seen.lock().unwrap());
    // host1 and host2 have no other route: the migration (its non-zero pages, the sealed
    // slot, the module) went through the proxy.
    assert!(seen.len() > 4096, "traffic went through the proxy");
    assert!(
        !contains(&seen, canary.as_bytes()),
        "the secret crossed the wire in clear"
    );
    // Nor is it in anything the hosts stored: sealed blobs, store files, identities.
    let mut dirs = vec![p.dir.path().join("c")];
    let mut files = 0;
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.is_file() {
                files += 1;
                let bytes = std::fs::read(&path).unwrap();
                assert!(
                    !contains(&bytes, canary.as_bytes()),
                    "{} holds the secret in clear",
                    path.display()
                );
            }
        }
    }
    assert!(files > 10, "the hosts' files were read ({files})");
}

#[test]
fn an_altered_frame_is_refused_and_the_migration_aborts() {
    tampered_migration(Tamper::Alter, &["record failed authentication"]);
}

#[test]
fn a_replayed_frame_is_refused_and_the_migration_aborts() {
    tampered_migration(Tamper::Replay, &["replayed, reordered or dropped record"]);
}

#[test]
fn reordered_frames_are_refused_and_the_migration_aborts() {
    tampered_migration(Tamper::Reorder, &["replayed, reordered or dropped record"]);
}

#[test]
fn a_dropped_frame_is_refused_and_the_migration_aborts() {
    tampered_migration(Tamper::Drop, &["replayed, reordered or dropped record"]);
}

#[test]
fn a_frame_held_past_the_deadline_aborts_the_migration() {
    // Whichever deadline ends first aborts it: the receiver's for the next chunk, or the
    // sender's for the whole transfer (which started earlier); which one depends on where
    // in the transfer the frame was held and how the hosts were scheduled.
    tampered_migration(
        Tamper::Stall(Duration::from_secs(8)),
        &[
            "timed out waiting for the next data chunk",
            "timed out waiting for the transfer and its decision",
        ],
    );
}

#[test]
fn a_forged_sm_at_a_peers_address_is_refused() {
    let mut p = Processes::laid_out(3);
    // Another manufacturer's device, provisioned as "host2", listening where host1 thinks
    // host2 is.
    let rogue = p.dir.path().join("rogue");
    let base = godwit_node::cluster::free_base_port(2).expect("free ports");
    let out = godwit()
        .args(["cluster", "init", "--dir"])
        .arg(&rogue)
        .args(["--hosts", "2", "--base-port", &base.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let forged = KillOnDrop(
        godwit()
            .arg("node")
            .arg("--config")
            .arg(rogue.join("host2.toml"))
            .env("GODWIT_LOG", "debug,openraft=warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(p.dir.path().join("rogue.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    redirect(&p, 1, 2, &listen_of(&rogue.join("host2.toml")));
    // The genuine host2 stays down: host1 and host3 make the majority. (Were it up, it
    // could win an election with host3's vote, and host1, which reaches only the forgery
    // as "host2", would never hear from that leader.)
    for k in [1, 3] {
        p.spawn(k);
    }
    p.wait_leader(1);
    let id = p.deploy(1, "counter");
    p.ok(1, &["call", &id, "incr"]);
    let out = p.cli(1, &["migrate", &id, "--to", "host2"]);
    drop(forged);
    assert!(!out.status.success());
    let log = std::fs::read_to_string(p.dir.path().join("host1.log")).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("manufacturer root: expected one of"),
        "the refusal names the forged root:\n{stderr}\n{log}\nrogue: {}",
        std::fs::read_to_string(p.dir.path().join("rogue.log")).unwrap_or_default()
    );
    assert_eq!(p.ok(1, &["call", &id, "get"]), "1", "nothing lost");
}

#[test]
fn an_older_sealed_blob_is_refused_and_the_newer_one_still_opens() {
    let p = Processes::start(3);
    let id = p.deploy(1, "counter");
    let dir = p.dir.path().join("c/host1/blobs").join(&id);
    p.ok(1, &["call", &id, "incr"]);
    p.ok(1, &["call", &id, "persist"]);
    // The slot's versions, oldest first.
    let blobs = |dir: &std::path::Path| -> Vec<std::path::PathBuf> {
        let mut v: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter_map(|p| {
                let name = p.file_name()?.to_str()?.to_owned();
                Some((name.strip_prefix("count@")?.parse().ok()?, p))
            })
            .collect();
        v.sort();
        v.into_iter().map(|(_, p)| p).collect()
    };
    let old = std::fs::read(blobs(&dir).last().unwrap()).unwrap();
    for _ in 0..4 {
        p.ok(1, &["call", &id, "incr"]);
    }
    p.ok(1, &["call", &id, "persist"]);
    let newest = blobs(&dir).last().unwrap().clone();
    let new = std::fs::read(&newest).unwrap();
    // The host serves the older blob under the newest name.
    std::fs::write(&newest, &old).unwrap();
    // The enclave's unseal fails with Integrity (-6), and the SM logs why.
    let out = p.cli(1, &["call", &id, "restore"]);
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && why.contains("status -6"), "{why}");
    let log = std::fs::read_to_string(p.dir.path().join("host1.log")).unwrap();
    let refusal = log
        .lines()
        .find(|l| l.contains("refused a sealed blob from the host"))
        .unwrap_or_else(|| panic!("the refusal is logged:\n{log}"));
    assert!(
        refusal.contains("rollback refused") || refusal.contains("sealed for"),
        "{refusal}"
    );
    // Put back, the genuine blob opens: nothing was lost.
    std::fs::write(&newest, &new).unwrap();
    assert_eq!(p.ok(1, &["call", &id, "restore"]), "5");
}

#[test]
fn older_store_records_are_refused_and_the_member_rejoins() {
    let mut p = Processes::start(3);
    let store = p.dir.path().join("c/host3/store");
    let old = p.dir.path().join("host3-store-old");
    p.kill(3);
    copy_segments(&store, &old);
    p.spawn(3);
    p.wait_ready(3);
    // host3 votes and appends while the cluster works.
    let id = p.deploy(1, "counter");
    p.ok(1, &["call", &id, "incr"]);
    p.ok(1, &["migrate", &id, "--to", "host2"]);
    poll(
        Duration::from_secs(30),
        "host3 to see the migration",
        || record(&p, 3, &id).is_some_and(|r| r["owner"] == "host2"),
    );
    // The host hands host3 its older, authentic records.
    p.kill(3);
    for e in std::fs::read_dir(&store).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "seg") {
            std::fs::remove_file(path).unwrap();
        }
    }
    copy_segments(&old, &store);
    p.spawn(3);
    poll(Duration::from_secs(60), "host3 to rejoin", || {
        record(&p, 3, &id).is_some_and(|r| r["owner"] == "host2")
    });
    p.wait_boot_recorded(3);
    assert!(
        store.join("refused-1").is_dir(),
        "the older records are kept aside"
    );
    let log = std::fs::read_to_string(p.dir.path().join("host3.log")).unwrap();
    assert!(
        log.contains("an older copy was handed back"),
        "the refusal names the rollback:\n{log}"
    );
    // The rejoined member takes part again: the enclave moves to it, state intact.
    p.ok(2, &["migrate", &id, "--to", "host3"]);
    assert_eq!(p.ok(3, &["call", &id, "get"]), "1");
}

/// Copies the record segments of one store directory into another.
pub fn copy_segments(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "seg") {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
}

#[test]
fn the_old_copy_cannot_run_or_be_adopted_after_it_moved() {
    let p = Processes::start(3);
    let id = p.deploy(1, "counter");
    p.ok(1, &["call", &id, "incr"]);
    p.ok(1, &["migrate", &id, "--to", "host2"]);
    let call = p.cli(1, &["call", &id, "get"]);
    assert!(!call.status.success());
    let adopt = p.deploy_cli(1, "counter", None, Some(&id));
    assert!(!adopt.status.success(), "a running enclave is not adopted");
    let why = String::from_utf8_lossy(&adopt.stderr);
    assert!(why.contains("running") || why.contains("state"), "{why}");
    assert_eq!(running_on(&p, &id, &[1, 2, 3]), [2]);
    assert_eq!(p.ok(2, &["call", &id, "incr"]), "2");
}

#[test]
fn deploying_past_the_limit_is_refused_with_the_limit() {
    let p = Processes::start(3);
    p.deploy(1, "counter");
    p.deploy(1, "counter");
    let out = p.deploy_cli(1, "counter", None, None);
    assert!(!out.status.success());
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(why.contains("limit"), "{why}");
}

#[test]
fn two_migrations_of_one_enclave_at_once_leave_one_copy() {
    let p = Processes::start(3);
    let (id, sum) = p.deploy_ballast(1, 32);
    let a = migrate_in_background(&p, 1, &id, 2);
    let b = migrate_in_background(&p, 1, &id, 3);
    let (a, b) = (
        wait_child(a, Duration::from_secs(60)),
        wait_child(b, Duration::from_secs(60)),
    );
    assert!(!(a && b), "both migrations cannot succeed");
    poll(Duration::from_secs(30), "one copy", || {
        running_on(&p, &id, &[1, 2, 3]).len() == 1
    });
    let on = running_on(&p, &id, &[1, 2, 3])[0];
    assert_eq!(
        on,
        if a {
            2
        } else if b {
            3
        } else {
            1
        }
    );
    assert_eq!(p.ok(on, &["call", &id, "checksum"]), sum);
}
