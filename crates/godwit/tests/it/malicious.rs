//! A host running malicious daemon code: the test build's daemon armed with
//! `GODWIT_HOSTILE` (godwit-node's src/hostile.rs) calls its own SM's entry points with
//! frames of its own making, or lies about what it wrote to disk. The SM must refuse
//! everything it cannot authenticate, and no enclave may ever run or answer twice.
//!
//! What the list of attacks becomes once consensus runs inside the SM: a daemon
//! has no entry point to hand its SM an outcome, a vote, a commit index, a membership or a
//! reply; what it can still do is hand its SM bytes as if a peer had sent them. A forged
//! outcome is a store message written in the clear (`forge`); an outcome or a write
//! forwarded under another host's name is another channel's frame (`splice`); a reply
//! from the peer that was not asked is the SM's own frame reflected (`reflect`) or a
//! replay (`replay`). Adding a host twice, or itself, goes through the control API.

use std::time::Duration;

use crate::support::*;

/// Where `id` runs (at most one host, checked at every look), and its counter there.
fn one_copy(p: &Processes, id: &str) -> Option<usize> {
    let on = running_on(p, id, &[1, 2, 3]);
    assert!(on.len() <= 1, "{id} runs on {on:?} at once{}", p.logs());
    on.first().copied()
}

/// Drives a counter across the cluster while host3's daemon runs `attack`: migrations to
/// and from host3 (which the attack may abort), calls wherever it runs. The counter must
/// count up by one per answered call, whoever answers, and one copy at most must run.
fn counter_survives(attack: &str) -> Processes {
    let mut p = Processes::laid_out(3);
    p.spawn(1);
    p.spawn(2);
    p.spawn_hostile(3, attack);
    p.wait_leader(1);
    p.wait_boot_recorded(1);
    p.wait_boot_recorded(3);
    let id = p.deploy(1, "counter");
    let mut count = 0u64;
    let mut moved = 0;
    for round in 0..6 {
        let Some(at) = one_copy(&p, &id) else {
            panic!("{id} runs nowhere after round {round}{}", p.logs());
        };
        let out = p.cli(at, &["call", &id, "incr"]);
        if out.status.success() {
            let n: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
            assert_eq!(n, count + 1, "the counter answered {n} after {count}");
            count = n;
        }
        let to = [1, 2, 3]
            .into_iter()
            .find(|&k| k != at && (k == 3 || at == 3))
            .unwrap();
        // The migration may be aborted by the attack: it resolves either way.
        let out = p.cli(at, &["migrate", &id, "--to", &format!("host{to}")]);
        moved += usize::from(out.status.success());
        one_copy(&p, &id);
    }
    // Whatever happened, the enclave ends up running once, with every answered count.
    poll(Duration::from_secs(60), "one running copy", || {
        one_copy(&p, &id).is_some()
    });
    let at = one_copy(&p, &id).unwrap();
    let got: u64 = p.ok(at, &["call", &id, "get"]).parse().unwrap();
    assert_eq!(got, count, "the counter kept every answered increment");
    #[allow(clippy::print_stderr)] // the run's tally, for whoever reads the test output
    {
        eprintln!("{attack}: {count} increments answered, {moved} of 6 migrations committed");
    }
    assert!(count >= 1, "the cluster still answers calls");
    let log = std::fs::read_to_string(p.dir.path().join("host3.log")).unwrap();
    assert!(
        log.contains("HOSTILE DAEMON"),
        "host3 ran the malicious daemon:\n{log}"
    );
    p
}

/// The lines of host3's log in which its SM refused a frame it could not authenticate.
fn refusals(p: &Processes) -> Vec<String> {
    std::fs::read_to_string(p.dir.path().join("host3.log"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("closing connection") && l.contains("refused"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_forged_store_outcome_is_refused_and_nothing_forks() {
    let p = counter_survives("forge");
    let r = refusals(&p);
    assert!(
        r.iter().any(|l| l.contains("failed authentication")),
        "the forged frames are refused as unauthenticated: {r:?}"
    );
}

#[test]
fn a_replayed_store_or_migration_frame_is_refused_and_nothing_forks() {
    let p = counter_survives("replay");
    let r = refusals(&p);
    assert!(
        r.iter()
            .any(|l| l.contains("replayed, reordered or dropped")),
        "the replayed frames are refused by their sequence numbers: {r:?}"
    );
}

#[test]
fn another_channels_frame_is_refused_and_nothing_forks() {
    let p = counter_survives("splice");
    assert!(!refusals(&p).is_empty(), "the spliced frames are refused");
}

#[test]
fn the_sms_own_frame_handed_back_as_the_peers_is_refused_and_nothing_forks() {
    let p = counter_survives("reflect");
    assert!(!refusals(&p).is_empty(), "the reflected frames are refused");
}

/// host3's daemon says every store record is durable and writes none. Its SM acts on
/// them; at the next start the records are gone, the component's counter says so, and the
/// member rejoins without voting until it caught up. The store never loses an entry.
#[test]
fn records_claimed_durable_and_never_written_are_missed_at_the_next_start() {
    let mut p = Processes::laid_out(3);
    p.spawn(1);
    p.spawn(2);
    p.spawn_hostile(3, "lie-durable");
    p.wait_ready(3);
    let id = p.deploy(1, "counter");
    p.ok(1, &["call", &id, "incr"]);
    p.ok(1, &["migrate", &id, "--to", "host3"]);
    assert_eq!(p.ok(3, &["call", &id, "incr"]), "2");
    p.ok(3, &["call", &id, "persist"]);
    // The host restarts its SM, honest now, with the records it never wrote.
    p.kill(3);
    p.spawn(3);
    poll(Duration::from_secs(60), "host3 to rejoin", || {
        record(&p, 3, &id).is_some_and(|r| r["state"] == "lost")
    });
    p.wait_boot_recorded(3);
    let log = std::fs::read_to_string(p.dir.path().join("host3.log")).unwrap();
    assert!(
        log.contains("an older copy was handed back"),
        "the SM finds its records missing:\n{log}"
    );
    // What the lost instance sealed and the store recorded is intact: adopted from it.
    let adopt = p.deploy_cli(3, "counter", None, Some(&id));
    assert!(
        adopt.status.success(),
        "{}",
        String::from_utf8_lossy(&adopt.stderr)
    );
    assert_eq!(p.ok(3, &["call", &id, "restore"]), "2");
    assert_eq!(one_copy(&p, &id), Some(3));
}

/// Through the control API, a host cannot make itself a member twice, or add itself.
#[test]
fn a_host_cannot_be_added_twice_or_add_itself() {
    let p = Processes::start(3);
    let me = p.status(1).unwrap()["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["id"] == "host1")
        .unwrap()["addr"]
        .as_str()
        .unwrap()
        .to_owned();
    let voters = |k: usize| -> usize {
        p.status(k).unwrap()["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h["voter"] == true)
            .count()
    };
    assert_eq!(voters(1), 3);
    // host1 asks to add itself, and host2 asks to add host3 (a voter) once more, under
    // another address.
    let admit = |k: usize, host: &str, addr: &str| {
        godwit()
            .args(["cluster", "admit", "--config"])
            .arg(p.config(k))
            .args([host, addr])
            .output()
            .unwrap()
    };
    let own = admit(1, "host1", &me);
    assert!(!own.status.success());
    let twice = admit(2, "host3", "127.0.0.1:1");
    assert!(
        !twice.status.success(),
        "{}",
        String::from_utf8_lossy(&twice.stdout)
    );
    for k in 1..=3 {
        assert_eq!(voters(k), 3, "still three members, each once");
    }
}
