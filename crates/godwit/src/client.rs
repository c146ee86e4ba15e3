//! The client commands: each sends one request to the local daemon's control API.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use godwit_node::NodeConfig;
use godwit_node::control::{Command, Response, request};
use serde_json::Value;

/// `--config FILE`, shared by every client command.
#[derive(clap::Args, Clone)]
pub struct ConfigArg {
    /// The host's configuration file (e.g. DIR/host1.toml from `godwit cluster init`).
    #[arg(long)]
    pub config: PathBuf,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Sends `command` to the daemon of `config`; returns its final answer's value, or fails
/// with the daemon's one-line error.
pub fn send(config: &Path, command: Command, on_progress: impl FnMut(u64, u64)) -> Result<Value> {
    let cfg = NodeConfig::load(config)?;
    let response = runtime()?.block_on(request(
        &cfg.control.socket,
        &cfg.control.token_file,
        command,
        on_progress,
    ))?;
    match response {
        Response::Ok(v) => Ok(v),
        Response::Err { error, code } => bail!("{error} [{code}]"),
        Response::Progress { .. } => bail!("unexpected progress as a final answer"),
    }
}

pub fn deploy(
    config: &Path,
    module: &Path,
    manifest: &Path,
    adopt: Option<String>,
) -> Result<ExitCode> {
    let source = std::fs::read(module).with_context(|| format!("reading {}", module.display()))?;
    let module = godwit_enclave::module_from_source(&source)
        .with_context(|| format!("{}", module.display()))?;
    let manifest = std::fs::read_to_string(manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let v = send(
        config,
        Command::Deploy {
            module_hex: hex::encode(module),
            manifest,
            adopt,
        },
        |_, _| {},
    )?;
    println!("{}", v["enclave"].as_str().unwrap_or_default());
    Ok(ExitCode::SUCCESS)
}

pub fn call(
    config: &Path,
    enclave: String,
    function: String,
    arg: String,
    wait_ms: u64,
) -> Result<ExitCode> {
    let v = send(
        config,
        Command::Call {
            enclave,
            function,
            arg,
            wait_ms: Some(wait_ms),
        },
        |_, _| {},
    )?;
    match (v["result"].as_str(), v["result_hex"].as_str()) {
        (Some(text), _) => println!("{text}"),
        (None, Some(hex)) => println!("{hex}"),
        _ => println!(),
    }
    Ok(ExitCode::SUCCESS)
}

/// A progress bar on stderr when it is a terminal.
pub fn progress_bar(label: &str) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(label.to_owned());
    bar
}

pub fn migrate(config: &Path, enclave: String, to: String, json: bool) -> Result<ExitCode> {
    let bar = progress_bar(&format!("migrating to {to}"));
    let result = send(config, Command::Migrate { enclave, to }, |sent, total| {
        bar.set_length(total);
        bar.set_position(sent);
    });
    bar.finish_and_clear();
    let v = result?;
    if json {
        println!("{v}");
    } else {
        println!(
            "committed: {} now runs on {} (epoch {}), {} bytes in {:.1} ms, downtime {:.1} ms",
            v["enclave"].as_str().unwrap_or_default(),
            v["to"].as_str().unwrap_or_default(),
            v["epoch"],
            v["bytes"],
            v["total_ms"].as_f64().unwrap_or_default(),
            v["downtime_ms"].as_f64().unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn destroy(config: &Path, enclave: String) -> Result<ExitCode> {
    send(config, Command::Destroy { enclave }, |_, _| {})?;
    Ok(ExitCode::SUCCESS)
}

pub fn status(config: &Path, json: bool) -> Result<ExitCode> {
    let v = send(config, Command::Status, |_, _| {})?;
    if json {
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    // JSON values ignore a width: the padded columns are formatted as strings.
    println!("{:<10} {:<22} {:<5} leader", "host", "address", "up");
    for h in v["hosts"].as_array().into_iter().flatten() {
        let line = format!(
            "{:<10} {:<22} {:<5} {}",
            h["id"].as_str().unwrap_or_default(),
            h["addr"].as_str().unwrap_or_default(),
            h["up"].to_string(),
            if h["leader"] == true { "*" } else { "" }
        );
        println!("{}", line.trim_end());
    }
    println!(
        "\n{:<34} {:<10} {:<10} {:<6} state",
        "enclave", "app", "owner", "epoch"
    );
    for e in v["enclaves"].as_array().into_iter().flatten() {
        println!(
            "{:<34} {:<10} {:<10} {:<6} {}",
            e["id"].as_str().unwrap_or_default(),
            e["app"].as_str().unwrap_or_default(),
            e["owner"].as_str().unwrap_or_default(),
            e["epoch"].to_string(),
            e["state"].as_str().unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn metrics(config: &Path) -> Result<ExitCode> {
    let v = send(config, Command::Status, |_, _| {})?;
    print!(
        "{}",
        prometheus(v["self"].as_str().unwrap_or_default(), &v["metrics"])
    );
    Ok(ExitCode::SUCCESS)
}

/// A node's counters (`status --json`'s `metrics`) in the Prometheus text exposition
/// format, each sample labelled with the host.
fn prometheus(host: &str, m: &Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let host = host.replace('\\', "\\\\").replace('"', "\\\"");
    // (metric, help, field in `m`; by outcome, or one value)
    let families = [
        (
            "migrations_out_total",
            "Outgoing migrations that ended, by outcome (committed or the abort code).",
            "migrations_out",
        ),
        (
            "migrations_in_total",
            "Incoming migrations that ended, by outcome.",
            "migrations_in",
        ),
        (
            "migration_out_bytes_total",
            "Data bytes moved by committed outgoing migrations.",
            "migration_out_bytes",
        ),
        (
            "migration_out_seconds_total",
            "Time of committed outgoing migrations, PREPARE to COMMIT, summed.",
            "migration_out_seconds",
        ),
        (
            "migration_out_downtime_seconds_total",
            "Downtime of committed outgoing migrations, summed.",
            "migration_out_downtime_seconds",
        ),
        (
            "peers_refused_total",
            "Peers refused: failed attestation or a broken channel.",
            "peers_refused",
        ),
        (
            "store_writes_total",
            "This host's store writes, by outcome (applied, refused, unavailable).",
            "store_writes",
        ),
        (
            "store_write_seconds_total",
            "Time from proposing a store write to its answer, summed.",
            "store_write_seconds",
        ),
    ];
    for (name, help, field) in families {
        let _ = writeln!(
            out,
            "# HELP godwit_{name} {help}\n# TYPE godwit_{name} counter"
        );
        match &m[field] {
            Value::Object(by) => {
                for (outcome, n) in by {
                    let _ = writeln!(
                        out,
                        "godwit_{name}{{host=\"{host}\",outcome=\"{outcome}\"}} {n}"
                    );
                }
            }
            v => {
                let _ = writeln!(
                    out,
                    "godwit_{name}{{host=\"{host}\"}} {}",
                    v.as_f64().unwrap_or(0.0)
                );
            }
        }
    }
    out
}

/// The configuration to use for `host`: the given one if it is that host's, else the
/// sibling `HOST.toml` beside it (the layout `cluster init` writes).
fn config_for(config: &Path, host: &str) -> Result<PathBuf> {
    let cfg = NodeConfig::load(config)?;
    if cfg.id.as_str() == host {
        return Ok(config.to_owned());
    }
    let sibling = config.with_file_name(format!("{host}.toml"));
    if sibling.exists() {
        return Ok(sibling);
    }
    bail!(
        "{host} is not the host of {} and no {} exists beside it",
        config.display(),
        sibling.display()
    )
}

pub fn drain(config: &Path, host: String) -> Result<ExitCode> {
    let config = config_for(config, &host)?;
    let bar = progress_bar(&format!("draining {host}"));
    let result = send(
        &config,
        Command::Drain { host: host.clone() },
        |sent, total| {
            bar.set_length(total);
            bar.set_position(sent);
        },
    );
    bar.finish_and_clear();
    let v = result?;
    for m in v["moved"].as_array().into_iter().flatten() {
        println!(
            "{} -> {}",
            m["enclave"].as_str().unwrap_or_default(),
            m["to"].as_str().unwrap_or_default()
        );
    }
    println!("{host} drained");
    Ok(ExitCode::SUCCESS)
}

pub fn node(config: &Path) -> Result<ExitCode> {
    let cfg = NodeConfig::load(config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let node = godwit_node::Node::start(cfg).await?;
        eprintln!("godwit: {} running; Ctrl-C to stop", node.host());
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        node.shutdown().await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

pub fn cluster_init(dir: &Path, hosts: usize, base_port: u16) -> Result<ExitCode> {
    let files = godwit_node::cluster::init(dir, hosts, base_port)?;
    for f in &files {
        println!("{}", f.display());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn cluster_add(dir: &Path, via: Option<String>) -> Result<ExitCode> {
    let existing = godwit_node::cluster::configs(dir)?;
    let ask = match &via {
        Some(host) => existing
            .iter()
            .find(|(_, c)| c.id.as_str() == host)
            .map(|(p, _)| p.clone())
            .with_context(|| format!("no {host}.toml in {}", dir.display()))?,
        None => existing
            .first()
            .map(|(p, _)| p.clone())
            .context("no hosts in the directory")?,
    };
    let new = godwit_node::cluster::add(dir)?;
    send(
        &ask,
        Command::AddMember {
            host: new.id.to_string(),
            addr: new.addr.clone(),
        },
        |_, _| {},
    )?;
    eprintln!(
        "{} added to the store; start it with: godwit node --config {}",
        new.id,
        new.config.display()
    );
    println!("{}", new.config.display());
    Ok(ExitCode::SUCCESS)
}

pub fn cluster_admit(config: &Path, host: String, addr: String) -> Result<ExitCode> {
    let v = send(config, Command::AddMember { host, addr }, |_, _| {})?;
    match (v["added"].as_str(), v["admitting"].as_str()) {
        (Some(h), _) => println!("{h} added"),
        (_, Some(h)) => {
            println!("{h} admitting");
            if let Some(note) = v["note"].as_str() {
                eprintln!("{note}");
            }
        }
        _ => println!("{v}"),
    }
    Ok(ExitCode::SUCCESS)
}

pub fn cluster_remove(config: &Path, host: String) -> Result<ExitCode> {
    send(
        config,
        Command::RemoveMember { host: host.clone() },
        |_, _| {},
    )?;
    println!("{host} removed");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_print_in_the_prometheus_text_format() {
        let m = serde_json::json!({
            "migrations_out": { "committed": 2, "timeout_ready": 1 },
            "migrations_in": {},
            "migration_out_bytes": 4548,
            "store_write_seconds": 0.25,
        });
        let text = prometheus("host1", &m);
        for line in [
            "# TYPE godwit_migrations_out_total counter",
            "godwit_migrations_out_total{host=\"host1\",outcome=\"committed\"} 2",
            "godwit_migrations_out_total{host=\"host1\",outcome=\"timeout_ready\"} 1",
            "godwit_migration_out_bytes_total{host=\"host1\"} 4548",
            "godwit_store_write_seconds_total{host=\"host1\"} 0.25",
            "godwit_peers_refused_total{host=\"host1\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        // Every sample line is `name{labels} value`.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = l.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{l}");
        }
    }
}
