//! Multi-process tests: real `godwit node` processes on loopback.

use crate::support::*;

#[test]
fn deploy_call_migrate_call_across_processes() {
    let p = Processes::start(3);
    let id = p.deploy(1, "counter");
    assert_eq!(p.ok(1, &["call", &id, "incr"]), "1");
    assert_eq!(p.ok(1, &["call", &id, "incr"]), "2");
    p.ok(1, &["call", &id, "persist"]);
    let report: serde_json::Value =
        serde_json::from_str(&p.ok(1, &["migrate", &id, "--to", "host2", "--json"])).unwrap();
    assert_eq!(report["to"], "host2");
    assert_eq!(report["epoch"], 1);
    // The state continues at the destination, sealed data included.
    assert_eq!(p.ok(2, &["call", &id, "get"]), "2");
    assert_eq!(p.ok(2, &["call", &id, "incr"]), "3");
    assert_eq!(p.ok(2, &["call", &id, "restore"]), "2");
    // The source refuses, with a clear one-line error and a non-zero exit that says where
    // the store saw the enclave last (host1's copy of the store may lag a moment).
    let err = p.fails(1, &["call", &id, "get"]);
    assert!(
        err.contains("no enclave") && err.contains("the store records it on host"),
        "{err}"
    );
    // Each side counted the migration (the receiver's count may follow a moment later).
    let metrics = p.ok(1, &["metrics"]);
    assert!(
        metrics.contains("godwit_migrations_out_total{host=\"host1\",outcome=\"committed\"} 1"),
        "{metrics}"
    );
    poll(
        std::time::Duration::from_secs(30),
        "host2 to count the incoming migration",
        || {
            p.ok(2, &["metrics"])
                .contains("godwit_migrations_in_total{host=\"host2\",outcome=\"committed\"} 1")
        },
    );
    // Every host's status agrees on the owner (a follower applies the commit a moment
    // after the leader: bounded).
    for k in 1..=3 {
        poll(
            std::time::Duration::from_secs(30),
            &format!("host{k} to record host2 as the owner"),
            || record(&p, k, &id).is_some_and(|e| e["owner"] == "host2" && e["state"] == "running"),
        );
    }
}

#[test]
fn a_migration_to_a_host_that_is_down_names_it_and_the_enclave_stays() {
    let mut p = Processes::laid_out(3);
    for k in [1, 2] {
        p.spawn(k);
    }
    p.wait_leader(1);
    let id = p.deploy(1, "counter");
    assert_eq!(p.ok(1, &["call", &id, "incr"]), "1");
    let err = p.fails(1, &["migrate", &id, "--to", "host3"]);
    assert!(
        err.contains("cannot reach the peer: host3 at 127.0.0.1:")
            && err.contains("[peer_unreachable]"),
        "{err}"
    );
    assert_eq!(
        p.ok(1, &["call", &id, "incr"]),
        "2",
        "it still runs at the source"
    );
    let metrics = p.ok(1, &["metrics"]);
    assert!(
        metrics
            .contains("godwit_migrations_out_total{host=\"host1\",outcome=\"peer_unreachable\"} 1"),
        "{metrics}"
    );
}

#[test]
fn bad_input_gets_one_line_errors() {
    let p = Processes::start(3);
    let cases: &[&[&str]] = &[
        &["call", "0123456789abcdef0123456789abcdef", "get"],
        &["call", "not-an-id", "get"],
        &[
            "migrate",
            "0123456789abcdef0123456789abcdef",
            "--to",
            "host9",
        ],
        &[
            "deploy",
            "--module",
            "/nonexistent.wat",
            "--manifest",
            "/nonexistent.toml",
        ],
    ];
    for args in cases {
        p.fails(1, args);
    }
    // Wrong credentials.
    let cfg = godwit_node::NodeConfig::load(&p.config(1)).unwrap();
    std::fs::write(&cfg.control.token_file, "wrong").unwrap();
    let out = p.cli(1, &["status"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong control credentials"));
    // A malformed config names its field.
    let bad = p.dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(p.config(2))
            .unwrap()
            .replace("listen =", "lsten ="),
    )
    .unwrap();
    let out = godwit()
        .args(["status", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("lsten"));
}

#[test]
fn hosts_join_and_leave_the_store_through_membership_changes() {
    let mut p = Processes::start(3);
    let id = p.deploy(1, "counter");
    p.ok(1, &["call", &id, "incr"]);
    let dir = p.dir.path().join("c");
    let out = godwit()
        .args(["cluster", "add", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .ends_with("host4.toml")
    );
    p.spawn(4);
    poll(std::time::Duration::from_secs(60), "host4 to join", || {
        p.status(4).is_some_and(|s| {
            let hosts = s["hosts"].as_array().unwrap();
            hosts.len() == 4
                && hosts.iter().all(|h| h["voter"] == true)
                && s["enclaves"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e["id"] == id.as_str())
        })
    });
    p.ok(1, &["migrate", &id, "--to", "host4"]);
    assert_eq!(p.ok(4, &["call", &id, "incr"]), "2");
    // host3 leaves; the store goes on with three voters.
    p.remove_member(1, 3);
    p.kill(3);
    poll(
        std::time::Duration::from_secs(60),
        "host3 to be gone",
        || {
            p.status(1).is_some_and(|s| {
                let hosts = s["hosts"].as_array().unwrap();
                hosts.len() == 3 && hosts.iter().all(|h| h["id"] != "host3")
            })
        },
    );
    p.ok(4, &["migrate", &id, "--to", "host2"]);
    assert_eq!(p.ok(2, &["call", &id, "get"]), "2");
}
