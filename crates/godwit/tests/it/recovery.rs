//! Crash recovery with real processes: SIGKILL at the moments that break naive designs.

use std::time::Duration;

use crate::support::*;

#[test]
fn killing_the_leader_mid_migration_resolves_it_with_one_live_copy() {
    let mut p = Processes::start(3);
    let l = leader(&p, 1);
    let others: Vec<usize> = (1..=3).filter(|&k| k != l).collect();
    let (x, y) = (others[0], others[1]);
    let (id, sum) = p.deploy_ballast(x, 64);
    let m = migrate_in_background(&p, x, &id, y);
    p.kill(l);
    wait_child(m, Duration::from_secs(90));
    // The store re-elects between the two survivors; the migration commits or aborts.
    poll(Duration::from_secs(60), "one live copy", || {
        let on = running_on(&p, &id, &[x, y]);
        on.len() == 1
            && record(&p, on[0], &id)
                .is_some_and(|r| r["state"] == "running" && r["owner"] == format!("host{}", on[0]))
    });
    let on = running_on(&p, &id, &[x, y])[0];
    assert_eq!(
        p.ok(on, &["call", &id, "checksum"]),
        sum,
        "the state survived"
    );
}

#[test]
fn killing_the_sender_mid_transfer_never_leaves_two_copies() {
    let mut p = Processes::start(3);
    let (id, _) = p.deploy_ballast(1, 512);
    let m = migrate_in_background(&p, 1, &id, 2);
    poll(Duration::from_secs(60), "the transfer to start", || {
        record(&p, 2, &id).is_some_and(|r| r["state"] == "migrating")
    });
    p.kill(1);
    wait_child(m, Duration::from_secs(60));
    // The receiver either had everything (and committed) or gives up; it never runs a
    // partial copy.
    poll(Duration::from_secs(60), "the migration to resolve", || {
        record(&p, 2, &id).is_some_and(|r| r["state"] != "migrating")
    });
    let r = record(&p, 2, &id).unwrap();
    if r["owner"] == "host2" {
        assert_eq!(running_on(&p, &id, &[2, 3]), [2]);
    } else {
        assert!(running_on(&p, &id, &[2, 3]).is_empty());
        // When the sender comes back, its SM has a new boot epoch: the enclave it held in
        // memory is recorded lost, never restarted from an old copy.
        p.spawn(1);
        poll(
            Duration::from_secs(60),
            "the enclave to be recorded lost",
            || record(&p, 1, &id).is_some_and(|r| r["state"] == "lost"),
        );
        assert!(running_on(&p, &id, &[1, 2, 3]).is_empty());
    }
}

#[test]
fn killing_the_receiver_after_commit_loses_memory_but_not_sealed_data() {
    let mut p = Processes::start(3);
    let id = p.deploy(1, "counter");
    for _ in 0..4 {
        p.ok(1, &["call", &id, "incr"]);
    }
    p.ok(1, &["call", &id, "persist"]);
    p.ok(1, &["migrate", &id, "--to", "host2"]);
    p.kill(2);
    assert!(
        running_on(&p, &id, &[1, 3]).is_empty(),
        "no other host runs it"
    );
    p.spawn(2);
    poll(
        Duration::from_secs(60),
        "the enclave to be recorded lost",
        || record(&p, 2, &id).is_some_and(|r| r["state"] == "lost"),
    );
    assert!(running_on(&p, &id, &[1, 2, 3]).is_empty());
    // Its sealed data is intact: a fresh instance on host2 opens it.
    assert!(p.deploy_cli(2, "counter", None, Some(&id)).status.success());
    assert_eq!(p.ok(2, &["call", &id, "restore"]), "4");
    assert_eq!(record(&p, 3, &id).unwrap()["owner"], "host2");
}

#[test]
fn migrations_complete_with_one_follower_down() {
    let mut p = Processes::start(3);
    let l = leader(&p, 1);
    let follower = (1..=3).find(|&k| k != l).unwrap();
    let other = (1..=3).find(|&k| k != l && k != follower).unwrap();
    p.kill(follower);
    let id = p.deploy(l, "counter");
    p.ok(l, &["call", &id, "incr"]);
    p.ok(l, &["migrate", &id, "--to", &format!("host{other}")]);
    assert_eq!(p.ok(other, &["call", &id, "get"]), "1");
    p.ok(other, &["migrate", &id, "--to", &format!("host{l}")]);
    assert_eq!(p.ok(l, &["call", &id, "incr"]), "2");
}

#[test]
fn a_member_with_a_corrupted_store_rejoins_from_its_peers() {
    let mut p = Processes::start(3);
    let id = p.deploy(1, "counter");
    p.ok(1, &["call", &id, "incr"]);
    // The host alters one sealed record of host3 while it is down, and mends the frame's
    // checksum (which only the host reads): only the SM can tell.
    p.kill(3);
    let store = p.dir.path().join("c/host3/store");
    let segment = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .expect("a record segment");
    let mut bytes = std::fs::read(&segment).unwrap();
    let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
    bytes[8 + len - 1] ^= 1;
    let crc = crc32fast::hash(&bytes[8..8 + len]);
    bytes[4..8].copy_from_slice(&crc.to_be_bytes());
    std::fs::write(&segment, &bytes).unwrap();
    p.spawn(3);
    // It refuses the corrupted records (kept aside), starts empty, and catches up from
    // the others: it then knows the enclave and can receive it.
    poll(Duration::from_secs(60), "host3 to rejoin", || {
        record(&p, 3, &id).is_some()
    });
    p.wait_boot_recorded(3);
    assert!(store.join("refused-1").is_dir());
    let log = std::fs::read_to_string(p.dir.path().join("host3.log")).unwrap();
    assert!(log.contains("authentication failed"), "{log}");
    p.ok(1, &["migrate", &id, "--to", "host3"]);
    assert_eq!(p.ok(3, &["call", &id, "get"]), "1");
}

/// Another host's operator removes host k while k runs an enclave. k's SM stops answering
/// once its lease runs out, whatever its daemon does; the enclave (it sealed nothing, so
/// any member may adopt it) may be adopted elsewhere only after that lease has surely run
/// out, and from then on only the adopter answers.
#[test]
fn a_removed_host_stops_answering_before_its_enclave_is_adopted_elsewhere() {
    let p = Processes::start(3);
    // The enclave's host must not lead the store (a removed leader cannot write at all).
    let k = (1..=3).find(|&k| k != leader(&p, 1)).unwrap();
    let other = (1..=3).find(|&o| o != k).unwrap();
    let id = p.deploy(k, "counter");
    assert_eq!(p.ok(k, &["call", &id, "incr"]), "1");
    p.remove_member(other, k);
    poll(Duration::from_secs(60), "the enclave recorded lost", || {
        record(&p, other, &id).is_some_and(|r| r["state"] == "lost")
    });
    // Adoption elsewhere: the adopted instance runs only once the removed host's lease
    // has surely run out (a lease and the drift bound after the adoption applied).
    let adopt = p.deploy_cli(other, "counter", None, Some(&id));
    assert!(
        adopt.status.success(),
        "{}",
        String::from_utf8_lossy(&adopt.stderr)
    );
    // The removed host answers nothing any more: its lease ran out before the adoption.
    let get = p.cli(k, &["call", &id, "get", "--wait-ms", "1000"]);
    assert!(
        !get.status.success(),
        "the removed host answered after its enclave was adopted elsewhere: {}",
        String::from_utf8_lossy(&get.stdout)
    );
    assert_eq!(p.ok(other, &["call", &id, "incr"]), "1");
}
