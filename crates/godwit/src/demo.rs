//! `godwit demo`: a whole cluster in this process, on loopback, with no set-up. Each host
//! has its own emulated hardware, SM and store member; the demo plays the hypervisor
//! through the same control API the CLI uses.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use godwit_enclave::examples::{BALLAST, COUNTER, Example};
use godwit_node::control::{Command, Response, request};
use godwit_node::{Node, NodeConfig};
use serde_json::{Value, json};

use crate::client::progress_bar;

/// Options of `godwit demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Hosts in the cluster (at least 2; 3 or more gives a fault-tolerant store).
    #[arg(long, default_value_t = 3)]
    hosts: usize,
    /// Also migrate a `ballast` enclave of this many MiB (0: none).
    #[arg(long, default_value_t = 0)]
    enclave_mib: u32,
    /// Print one JSON object instead of the narrative.
    #[arg(long)]
    json: bool,
}

struct Cluster {
    configs: Vec<NodeConfig>,
    nodes: Vec<Node>,
}

impl Cluster {
    async fn ask(
        &self,
        host: usize,
        command: Command,
        mut on_progress: impl FnMut(u64, u64),
    ) -> Result<Value, (String, String)> {
        let c = &self.configs[host];
        match request(
            &c.control.socket,
            &c.control.token_file,
            command,
            &mut on_progress,
        )
        .await
        {
            Ok(Response::Ok(v)) => Ok(v),
            Ok(Response::Err { error, code }) => Err((error, code)),
            Ok(Response::Progress { .. }) => Err(("unexpected progress".into(), "protocol".into())),
            Err(e) => Err((e.to_string(), "client".into())),
        }
    }

    async fn deploy(&self, host: usize, ex: Example) -> Result<String, (String, String)> {
        let module = hex::encode(ex.module());
        let v = self
            .ask(
                host,
                Command::Deploy {
                    module_hex: module,
                    manifest: ex.manifest.to_owned(),
                    adopt: None,
                },
                |_, _| {},
            )
            .await?;
        Ok(v["enclave"].as_str().unwrap_or_default().to_owned())
    }

    async fn call(
        &self,
        host: usize,
        enclave: &str,
        function: &str,
        arg: &str,
    ) -> Result<String, (String, String)> {
        let v = self
            .ask(
                host,
                Command::Call {
                    enclave: enclave.to_owned(),
                    function: function.to_owned(),
                    arg: arg.to_owned(),
                    wait_ms: None,
                },
                |_, _| {},
            )
            .await?;
        Ok(v["result"].as_str().unwrap_or_default().to_owned())
    }

    async fn migrate(
        &self,
        host: usize,
        enclave: &str,
        to: usize,
        show: bool,
    ) -> Result<Value, (String, String)> {
        let bar = if show {
            progress_bar(&format!("migrating to host{}", to + 1))
        } else {
            indicatif::ProgressBar::hidden()
        };
        let r = self
            .ask(
                host,
                Command::Migrate {
                    enclave: enclave.to_owned(),
                    to: self.configs[to].id.to_string(),
                },
                |sent, total| {
                    bar.set_length(total);
                    bar.set_position(sent);
                },
            )
            .await;
        bar.finish_and_clear();
        r
    }
}

/// A fresh scratch directory for the demo's cluster (host side: it holds only sealed
/// blobs, sealed store files and the emulated devices' identities).
fn temp_dir() -> Result<PathBuf> {
    let mut r = [0u8; 8];
    #[allow(clippy::disallowed_methods)] // the host's own randomness, for a directory name
    getrandom::fill(&mut r).map_err(|e| anyhow!("random source: {e}"))?;
    Ok(std::env::temp_dir().join(format!("godwit-demo-{}", hex::encode(r))))
}

async fn start(dir: &Path, hosts: usize) -> Result<Cluster> {
    let base = godwit_node::cluster::free_base_port(hosts)
        .ok_or_else(|| anyhow!("no free loopback ports"))?;
    let files = godwit_node::cluster::init(dir, hosts, base)?;
    let mut configs = Vec::new();
    let mut nodes = Vec::new();
    for f in &files {
        let cfg = NodeConfig::load(f)?;
        nodes.push(
            Node::start(cfg.clone())
                .await
                .with_context(|| format!("starting {}", cfg.id))?,
        );
        configs.push(cfg);
    }
    if nodes[0]
        .wait_for_leader(Duration::from_secs(20))
        .await
        .is_none()
    {
        bail!("the store elected no leader within 20 s");
    }
    Ok(Cluster { configs, nodes })
}

pub fn run(args: DemoArgs) -> Result<ExitCode> {
    if args.hosts < 2 {
        bail!("--hosts must be at least 2 (a migration needs a destination)");
    }
    let dir = temp_dir()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let cluster = start(&dir, args.hosts).await?;
        let outcome = scenario(&cluster, &args).await;
        for n in &cluster.nodes {
            n.shutdown().await;
        }
        outcome
    });
    let _ = std::fs::remove_dir_all(&dir);
    let (ok, report) = result?;
    if args.json {
        println!("{report}");
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn step(show: bool, line: impl AsRef<str>) {
    if show {
        println!("{}", line.as_ref());
    }
}

async fn scenario(c: &Cluster, args: &DemoArgs) -> Result<(bool, Value)> {
    let show = !args.json;
    let fail = |(e, code): (String, String)| anyhow!("{e} [{code}]");
    step(
        show,
        format!(
            "{} hosts on loopback, each: emulated hardware, security monitor, store member (openraft)",
            args.hosts
        ),
    );
    let id = c.deploy(0, COUNTER).await.map_err(fail)?;
    step(show, format!("host1: deployed counter as enclave {id}"));
    let mut last = String::new();
    for _ in 0..3 {
        last = c.call(0, &id, "incr", "").await.map_err(fail)?;
    }
    c.call(0, &id, "persist", "").await.map_err(fail)?;
    step(show, format!("host1: incr x3 -> {last}; persist seals it"));

    let report = c.migrate(0, &id, 1, show).await.map_err(fail)?;
    step(
        show,
        format!(
            "migrated to host2 (epoch {}) in {:.1} ms",
            report["epoch"],
            report["total_ms"].as_f64().unwrap_or_default()
        ),
    );

    let after = c.call(1, &id, "get", "").await.map_err(fail)?;
    let next = c.call(1, &id, "incr", "").await.map_err(fail)?;
    let restored = c.call(1, &id, "restore", "").await.map_err(fail)?;
    let state_continued = after == "3" && next == "4" && restored == "3";
    step(
        show,
        format!(
            "host2: get -> {after}, incr -> {next}, restore (sealed data, re-sealed by host2) -> {restored}"
        ),
    );

    let old = c.call(0, &id, "get", "").await;
    let old_copy_refused = matches!(&old, Err((_, code)) if code == "unknown_enclave");
    step(
        show,
        format!(
            "host1: the old copy -> {}",
            old.err()
                .map_or("ANSWERED".into(), |(e, _)| format!("refused: {e}"))
        ),
    );

    let limit = COUNTER.manifest().max_instances_per_host;
    let mut limit_refused = false;
    for _ in 1..=limit {
        match c.deploy(1, COUNTER).await {
            Ok(_) => {}
            Err((e, code)) => {
                limit_refused = code == "instance_limit";
                step(show, format!("host2: one more counter -> refused: {e}"));
                break;
            }
        }
    }

    let mut checks = json!({
        "state_continued": state_continued,
        "old_copy_refused": old_copy_refused,
        "limit_refused": limit_refused,
    });
    let mut migration = report;
    if args.enclave_mib > 0 {
        let big = c.deploy(0, BALLAST).await.map_err(fail)?;
        c.call(0, &big, "fill", &args.enclave_mib.to_string())
            .await
            .map_err(fail)?;
        let sum = c.call(0, &big, "checksum", "").await.map_err(fail)?;
        migration = c.migrate(0, &big, 1, show).await.map_err(fail)?;
        let kept = c.call(1, &big, "checksum", "").await.map_err(fail)? == sum;
        checks["ballast_state_kept"] = json!(kept);
        step(
            show,
            format!(
                "ballast of {} MiB migrated; checksum kept: {kept}",
                args.enclave_mib
            ),
        );
    }
    let ok = checks
        .as_object()
        .is_some_and(|o| o.values().all(|v| v == true));
    let steps = &migration["steps_ms"];
    if show {
        println!("\nper-step timing of the last migration (sender's trusted timer):");
        for (name, key) in [
            ("attestation", "attest"),
            ("PREPARE/READY", "prepare_ready"),
            ("BEGIN (store)", "begin"),
            ("transfer", "transfer"),
            ("commit", "commit"),
        ] {
            println!(
                "  {name:<16} {:>9.2} ms",
                steps[key].as_f64().unwrap_or_default()
            );
        }
        println!(
            "  {:<16} {:>9.2} ms",
            "total",
            migration["total_ms"].as_f64().unwrap_or_default()
        );
        println!(
            "  {:<16} {:>9.2} ms",
            "downtime",
            migration["downtime_ms"].as_f64().unwrap_or_default()
        );
        println!("  {:<16} {:>9} bytes", "moved", migration["bytes"]);
        println!(
            "\n{}",
            if ok {
                "all checks passed"
            } else {
                "SOME CHECKS FAILED"
            }
        );
    }
    let report = json!({
        "ok": ok,
        "checks": checks,
        "migration": {
            "bytes": migration["bytes"],
            "total_ms": migration["total_ms"],
            "downtime_ms": migration["downtime_ms"],
            "steps_ms": steps,
        },
    });
    Ok((ok, report))
}
