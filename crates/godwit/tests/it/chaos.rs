//! Process chaos: real `godwit node` processes, migrations and drains in a loop, SIGKILL of
//! senders, receivers and leaders at random moments, restarts.
//!
//! After every round, with every host back up and every migration resolved: no enclave runs
//! on two hosts; a running enclave runs on its recorded owner with the count it had; a lost
//! one runs nowhere, and a fresh instance adopting it opens its sealed count, never an older
//! one. `GODWIT_CHAOS_SEED` repeats a schedule (the seed is printed), `GODWIT_CHAOS_ROUNDS`
//! lengthens the run.
#![allow(clippy::print_stderr)] // the seed and the schedule, to reproduce a failure

use std::process::Child;
use std::time::Duration;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::support::*;

const HOSTS: usize = 4;
const COUNTERS: usize = 3;
const BALLAST_MIB: u32 = 48;

/// A counter whose every acknowledged increment is sealed: `sealed` is the count it must
/// show, in memory or, after a loss, in its sealed data.
struct Counter {
    id: String,
    sealed: u64,
}

#[derive(Default, Debug)]
struct Tally {
    rounds: usize,
    kills: usize,
    /// Rounds whose kill landed while the migration or drain was still under way.
    mid_operation: usize,
    /// Migrations and drains that reported success.
    succeeded: usize,
    failed: usize,
    drains: usize,
    adopted: usize,
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number"))
    })
}

fn seed() -> u64 {
    env_u64("GODWIT_CHAOS_SEED").unwrap_or_else(|| {
        #[allow(clippy::disallowed_methods)] // only picks a schedule, printed for replay
        let now = std::time::SystemTime::now();
        now.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    })
}

fn host_num(name: &str) -> usize {
    name.trim_start_matches("host").parse().unwrap()
}

/// The current leader, asked of any host that answers.
fn leader_now(p: &Processes) -> Option<usize> {
    (1..=HOSTS).find_map(|k| {
        let s = p.status(k)?;
        let h = s["hosts"]
            .as_array()?
            .iter()
            .find(|h| h["leader"] == true)?;
        Some(host_num(h["id"].as_str()?))
    })
}

/// How each host's SM sees `id`.
fn local_states(p: &Processes, id: &str) -> String {
    (1..=HOSTS)
        .map(|k| {
            let state = p.status(k).and_then(|s| {
                s["local"]
                    .as_array()?
                    .iter()
                    .find(|e| e["id"] == id)
                    .map(|e| e.to_string())
            });
            format!("host{k}: {}", state.unwrap_or_else(|| "-".into()))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Waits until every host is up and no record is migrating, then checks that each enclave
/// runs on at most one host, and (bounded) on exactly its owner when recorded running.
/// Returns each enclave's record state and owner.
fn settle(p: &Processes, ids: &[String], seed: u64) -> Vec<(String, usize)> {
    p.wait_ready(HOSTS);
    // A restarted host's boot is announced through the store: until every member has
    // applied every host's current boot, a record may still show what the restart ended.
    poll(Duration::from_secs(60), "every boot to be recorded", || {
        let views: Option<Vec<_>> = (1..=HOSTS).map(|k| p.status(k)).collect();
        views.is_some_and(|views| {
            let own: Vec<_> = views.iter().map(|s| s["boot"].clone()).collect();
            views.iter().all(|s| {
                s["hosts"].as_array().is_some_and(|hosts| {
                    hosts
                        .iter()
                        .all(|h| h["boot"] == own[host_num(h["id"].as_str().unwrap_or("0")) - 1])
                })
            })
        })
    });
    poll(
        Duration::from_secs(90),
        "every migration to resolve",
        || {
            ids.iter().all(|id| {
                record(p, 1, id).is_some_and(|r| r["state"] == "running" || r["state"] == "lost")
            })
        },
    );
    let all: Vec<usize> = (1..=HOSTS).collect();
    ids.iter()
        .map(|id| {
            let on = running_on(p, id, &all);
            assert!(
                on.len() <= 1,
                "seed {seed}: {id} runs on hosts {on:?}{}",
                p.logs()
            );
            let r = record(p, 1, id).unwrap();
            let state = r["state"].as_str().unwrap().to_owned();
            let owner = host_num(r["owner"].as_str().unwrap());
            let expect: Vec<usize> = if state == "running" {
                vec![owner]
            } else {
                vec![]
            };
            let consistent = poll_until(Duration::from_secs(60), || {
                running_on(p, id, &all) == expect
            });
            assert!(
                consistent,
                "seed {seed}: {id} is {state} at host{owner} but runs on {:?}; records: {:?}; local states: {}{}",
                running_on(p, id, &all),
                all.iter().map(|&k| record(p, k, id)).collect::<Vec<_>>(),
                local_states(p, id),
                p.logs()
            );
            (state, owner)
        })
        .collect()
}

#[test]
fn random_kills_during_migrations_and_drains_never_fork_or_lose_sealed_state() {
    let seed = seed();
    let rounds = env_u64("GODWIT_CHAOS_ROUNDS").unwrap_or(20) as usize;
    eprintln!(
        "chaos: seed {seed}, {rounds} rounds (GODWIT_CHAOS_SEED={seed} repeats the schedule)"
    );
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut p = Processes::start(HOSTS);

    // Room for every counter on one host, so that adoption is never refused by the limit.
    let manifest = p.dir.path().join("counter.toml");
    let text = std::fs::read_to_string(example("counter.toml")).unwrap();
    std::fs::write(
        &manifest,
        text.replace(
            "max_instances_per_host = 2",
            &format!("max_instances_per_host = {COUNTERS}"),
        ),
    )
    .unwrap();
    let mut counters: Vec<Counter> = (0..COUNTERS)
        .map(|i| Counter {
            id: p.deploy_with(1 + i % HOSTS, "counter", Some(&manifest), None),
            sealed: 0,
        })
        .collect();
    // A larger enclave whose transfers last long enough for kills to land mid-transfer.
    let (ballast, checksum) = p.deploy_ballast(HOSTS, BALLAST_MIB);

    let mut tally = Tally::default();
    for round in 0..=rounds {
        let mut ids: Vec<String> = counters.iter().map(|c| c.id.clone()).collect();
        ids.push(ballast.clone());
        let states = settle(&p, &ids, seed);

        // The state continued: each running counter shows its sealed count, then counts on;
        // a lost one is adopted on its owner's disk and opens exactly its last sealed count.
        for (c, (state, owner)) in counters.iter_mut().zip(&states) {
            let k = *owner;
            if state == "lost" {
                p.deploy_with(k, "counter", Some(&manifest), Some(&c.id));
                tally.adopted += 1;
                let restored = p.ok(k, &["call", &c.id, "restore"]);
                assert_eq!(
                    restored,
                    c.sealed.to_string(),
                    "seed {seed}: sealed count of {}",
                    c.id
                );
            }
            let next = p.ok(k, &["call", &c.id, "incr"]);
            assert_eq!(
                next,
                (c.sealed + 1).to_string(),
                "seed {seed}: count of {}",
                c.id
            );
            assert_eq!(p.ok(k, &["call", &c.id, "persist"]), next);
            c.sealed += 1;
        }
        let (ballast_state, ballast_owner) = &states[COUNTERS];
        if ballast_state == "running" {
            assert_eq!(
                p.ok(*ballast_owner, &["call", &ballast, "checksum"]),
                checksum,
                "seed {seed}: the ballast's memory survived"
            );
        }
        if round == rounds {
            break;
        }
        tally.rounds += 1;

        // One action: a migration of a running enclave, or a drain of a host.
        let running: Vec<(usize, usize)> = states
            .iter()
            .enumerate()
            .filter(|(_, (s, _))| s == "running")
            .map(|(i, (_, o))| (i, *o))
            .collect();
        let drain = running.is_empty() || rng.random_range(0..4) == 0;
        // How long the operation roughly lasts here (debug build), ms: kills land within it.
        let (from, to, window, mut cli): (usize, Option<usize>, u64, Child) = if drain {
            let host = rng.random_range(1..=HOSTS);
            tally.drains += 1;
            let cli = godwit()
                .args(["drain", "--config"])
                .arg(p.config(host))
                .arg(format!("host{host}"))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            (host, None, 200, cli)
        } else {
            let (i, from) = running[rng.random_range(0..running.len())];
            let mut to = rng.random_range(1..HOSTS);
            if to >= from {
                to += 1;
            }
            let window = if i == COUNTERS { 150 } else { 15 };
            let cli = migrate_in_background(&p, from, &ids[i], to);
            (from, Some(to), window, cli)
        };

        // SIGKILL at a random moment: the sender, the receiver, the leader, any host, or
        // sender and receiver together (the store then has no majority until they return).
        let mut victims = Vec::new();
        if rng.random_range(0..4) != 0 {
            let leader = leader_now(&p).unwrap_or(1);
            let any = rng.random_range(1..=HOSTS);
            let receiver = to.unwrap_or(any);
            victims = match rng.random_range(0..5) {
                0 => vec![from],
                1 => vec![receiver],
                2 => vec![leader],
                3 => vec![any],
                _ => vec![from, receiver],
            };
            victims.dedup();
            let delay = rng.random_range(0..window);
            std::thread::sleep(Duration::from_millis(delay));
            if cli.try_wait().unwrap().is_none() {
                tally.mid_operation += 1;
            }
            for &v in &victims {
                p.kill(v);
                tally.kills += 1;
            }
        }
        eprintln!(
            "chaos: round {round}: {} host{from}{} kill {victims:?}",
            if to.is_some() {
                "migrate from"
            } else {
                "drain"
            },
            to.map(|t| format!(" to host{t}")).unwrap_or_default()
        );
        if wait_child(cli, Duration::from_secs(120)) {
            tally.succeeded += 1;
        } else {
            tally.failed += 1;
        }
        for &v in &victims {
            p.spawn(v);
        }
    }
    eprintln!("chaos: seed {seed}: {tally:?}");
    assert!(
        tally.kills > 0 && tally.succeeded > 0,
        "seed {seed}: {tally:?}"
    );
    // A SIGKILL never leaves store records their own SM refuses (as corrupted, or as
    // older than its counter): every member reopened what it had written.
    for k in 1..=HOSTS {
        let dir = p.dir.path().join(format!("c/host{k}/store"));
        let aside: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("refused-"))
            .collect();
        assert!(aside.is_empty(), "seed {seed}: host{k} set aside {aside:?}");
    }
}
