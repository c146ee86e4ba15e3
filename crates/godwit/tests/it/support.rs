//! Real `godwit node` processes on loopback, driven through the CLI.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn godwit() -> Command {
    Command::new(env!("CARGO_BIN_EXE_godwit"))
}

pub fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
}

/// A cluster of `godwit node` processes, killed when dropped.
pub struct Processes {
    pub dir: tempfile::TempDir,
    pub children: Vec<Option<Child>>,
}

impl Processes {
    /// Lays out `hosts` hosts with `godwit cluster init` and starts them all.
    pub fn start(hosts: usize) -> Self {
        let mut p = Self::laid_out(hosts);
        for k in 1..=hosts {
            p.spawn(k);
        }
        p.wait_ready(hosts);
        p
    }

    /// Lays out `hosts` hosts with `godwit cluster init`, starting none.
    pub fn laid_out(hosts: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let base = godwit_node::cluster::free_base_port(hosts).expect("free ports");
        let out = godwit()
            .args(["cluster", "init", "--dir"])
            .arg(dir.path().join("c"))
            .args([
                "--hosts",
                &hosts.to_string(),
                "--base-port",
                &base.to_string(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cluster init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            dir,
            children: (0..hosts).map(|_| None).collect(),
        }
    }

    pub fn config(&self, k: usize) -> PathBuf {
        self.dir.path().join("c").join(format!("host{k}.toml"))
    }

    /// Starts (or restarts) host `k`; its log goes to `hostK.log` in the cluster directory.
    pub fn spawn(&mut self, k: usize) {
        self.spawn_with_umask(k, None);
    }

    /// As [`Processes::spawn`], under the file-creation mask `umask` (octal) if given.
    pub fn spawn_with_umask(&mut self, k: usize, umask: Option<&str>) {
        self.spawn_full(k, umask, &[]);
    }

    /// Starts host `k` with a malicious daemon running `attack` (the test build's
    /// `GODWIT_HOSTILE`, see godwit-node's src/hostile.rs).
    pub fn spawn_hostile(&mut self, k: usize, attack: &str) {
        self.spawn_full(k, None, &[("GODWIT_HOSTILE", attack)]);
    }

    fn spawn_full(&mut self, k: usize, umask: Option<&str>, env: &[(&str, &str)]) {
        if self.children.len() < k {
            self.children.resize_with(k, || None);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("host{k}.log")))
            .unwrap();
        let child = Command::new("sh")
            .arg("-c")
            .arg(match umask {
                Some(mask) => format!("umask {mask} && exec \"$0\" \"$@\""),
                None => "exec \"$0\" \"$@\"".to_owned(),
            })
            .arg(env!("CARGO_BIN_EXE_godwit"))
            .arg("node")
            .arg("--config")
            .arg(self.config(k))
            .env("GODWIT_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children[k - 1] = Some(child);
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill(&mut self, k: usize) {
        if let Some(mut c) = self.children[k - 1].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs the CLI against host `k`.
    pub fn cli(&self, k: usize, args: &[&str]) -> Output {
        let (cmd, rest) = args.split_first().unwrap();
        godwit()
            .arg(cmd)
            .arg("--config")
            .arg(self.config(k))
            .args(rest)
            .output()
            .unwrap()
    }

    pub fn ok(&self, k: usize, args: &[&str]) -> String {
        let out = self.cli(k, args);
        assert!(
            out.status.success(),
            "godwit {args:?} on host{k} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// Runs `godwit` on host `k` expecting a refusal: a non-zero exit and one line on
    /// stderr, `godwit: …`; returns that line.
    pub fn fails(&self, k: usize, args: &[&str]) -> String {
        let out = self.cli(k, args);
        assert!(
            !out.status.success(),
            "godwit {args:?} on host{k} succeeded"
        );
        let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("godwit: "), "{err}");
        err
    }

    /// Removes host `gone` from the store through host `via`'s operator.
    pub fn remove_member(&self, via: usize, gone: usize) {
        let out = godwit()
            .args(["cluster", "remove", "--config"])
            .arg(self.config(via))
            .arg(format!("host{gone}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn status(&self, k: usize) -> Option<serde_json::Value> {
        let out = self.cli(k, &["status", "--json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    /// Polls until every host answers and one leads (bounded).
    pub fn wait_ready(&self, hosts: usize) {
        let ready = poll_until(Duration::from_secs(60), || {
            (1..=hosts).all(|k| {
                self.status(k)
                    .is_some_and(|s| hosts_of(&s).all(|h| h["up"] == true) && knows_leader(&s))
            })
        });
        assert!(ready, "timed out waiting for cluster ready{}", self.logs());
    }

    /// Polls until host `k` knows a leader (for clusters with hosts down: a majority is up).
    pub fn wait_leader(&self, k: usize) {
        poll(Duration::from_secs(60), "a leader", || {
            self.status(k).is_some_and(|s| knows_leader(&s))
        });
    }

    /// Polls until host `k`'s boot is recorded in its view of the ledger: from then on it
    /// receives enclaves (bounded).
    pub fn wait_boot_recorded(&self, k: usize) {
        poll(Duration::from_secs(60), "the boot to be recorded", || {
            self.status(k).is_some_and(|s| {
                let me = s["self"].clone();
                s["hosts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|h| h["id"] == me && h["boot"] == s["boot"])
            })
        });
    }

    /// Deploys a `ballast` of `mib` MiB on host `k`, filled; its id and memory checksum.
    pub fn deploy_ballast(&self, k: usize, mib: u32) -> (String, String) {
        let id = self.deploy(k, "ballast");
        self.ok(k, &["call", &id, "fill", "--arg", &mib.to_string()]);
        let sum = self.ok(k, &["call", &id, "checksum"]);
        (id, sum)
    }

    /// Deploys example `app` on host `k`; its id.
    pub fn deploy(&self, k: usize, app: &str) -> String {
        self.deploy_with(k, app, None, None)
    }

    /// As [`Processes::deploy`], with the options of [`Processes::deploy_cli`].
    pub fn deploy_with(
        &self,
        k: usize,
        app: &str,
        manifest: Option<&Path>,
        adopt: Option<&str>,
    ) -> String {
        let out = self.deploy_cli(k, app, manifest, adopt);
        assert!(
            out.status.success(),
            "deploy {app} on host{k}: {}{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        stdout.lines().last().unwrap().to_owned()
    }

    /// Runs `godwit deploy` of example `app` on host `k`, with `manifest` in place of the
    /// example's if given, adopting the lost enclave `adopt` if given.
    pub fn deploy_cli(
        &self,
        k: usize,
        app: &str,
        manifest: Option<&Path>,
        adopt: Option<&str>,
    ) -> Output {
        let module = example(&format!("{app}.wat"));
        let manifest = manifest.map_or_else(|| example(&format!("{app}.toml")), Path::to_path_buf);
        let mut args = vec![
            "deploy",
            "--module",
            module.to_str().unwrap(),
            "--manifest",
            manifest.to_str().unwrap(),
        ];
        if let Some(id) = adopt {
            args.extend(["--adopt", id]);
        }
        self.cli(k, &args)
    }

    pub fn logs(&self) -> String {
        let mut all = String::new();
        for k in 1..=self.children.len() {
            let log = std::fs::read_to_string(self.dir.path().join(format!("host{k}.log")))
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            all += &format!(
                "\n--- host{k} (last lines) ---\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        all
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for k in 1..=self.children.len() {
            self.kill(k);
        }
    }
}

/// Hosts (1-based) whose local SM runs `id`.
pub fn running_on(p: &Processes, id: &str, hosts: &[usize]) -> Vec<usize> {
    hosts
        .iter()
        .copied()
        .filter(|&k| {
            p.status(k).is_some_and(|s| {
                s["local"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e["id"] == id && e["state"] == "running")
            })
        })
        .collect()
}

pub fn record(p: &Processes, k: usize, id: &str) -> Option<Value> {
    p.status(k)?["enclaves"]
        .as_array()?
        .iter()
        .find(|e| e["id"] == id)
        .cloned()
}

pub fn leader(p: &Processes, k: usize) -> usize {
    let s = p.status(k).unwrap();
    let id = s["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["leader"] == true)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    id.trim_start_matches("host").parse().unwrap()
}

/// The hosts in a `status --json` answer.
fn hosts_of(status: &serde_json::Value) -> impl Iterator<Item = &serde_json::Value> {
    status["hosts"].as_array().into_iter().flatten()
}

/// Whether a `status --json` answer names a leader.
fn knows_leader(status: &serde_json::Value) -> bool {
    hosts_of(status).any(|h| h["leader"] == true)
}

/// A process outside [`Processes`], killed and reaped when this drops, also when the test
/// panics (else it outlives the test run).
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `godwit migrate` against host `from` without waiting for it.
pub fn migrate_in_background(p: &Processes, from: usize, id: &str, to: usize) -> Child {
    godwit()
        .args(["migrate", "--config"])
        .arg(p.config(from))
        .args([id, "--to", &format!("host{to}"), "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits (bounded) for a CLI started in the background; whether it succeeded.
pub fn wait_child(mut c: Child, limit: Duration) -> bool {
    let mut ok = None;
    poll(limit, "migrate to return", || match c.try_wait().unwrap() {
        Some(s) => {
            ok = Some(s.success());
            true
        }
        None => false,
    });
    ok.unwrap()
}

/// Polls `cond` until it holds, failing the test after `limit`.
pub fn poll(limit: Duration, what: &str, cond: impl FnMut() -> bool) {
    assert!(poll_until(limit, cond), "timed out waiting for {what}");
}

/// Polls `cond` until it holds or `limit` passes; whether it held.
pub fn poll_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    #[allow(clippy::disallowed_methods)] // the test harness is the host side
    let start = Instant::now();
    while !cond() {
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}
