//! `godwit bench store`: commit latency of the replicated ledger on loopback, as an SM sees
//! it — from proposing a write to its own member applying it — on the leader's host and on
//! a follower's (whose proposal is forwarded to the leader over the attested channel).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use godwit_node::{Node, NodeConfig};
use serde_json::json;

/// The goal: p50 of a commit from the leader with 3 members.
pub const COMMIT_P50_GOAL_MS: f64 = 2.0;

#[allow(clippy::disallowed_methods)] // the host's clock, for timing only
fn now() -> Instant {
    Instant::now()
}

/// The p-th percentile (0..=100) of `v`, in ms.
pub fn percentile_ms(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p / 100.0).round() as usize;
    v.get(i).map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

/// Starts `n` hosts in this process (a throwaway cluster directory) and returns them,
/// with the directory to remove afterwards.
pub async fn start_cluster(n: usize) -> Result<(Vec<Node>, std::path::PathBuf)> {
    let mut r = [0u8; 8];
    #[allow(clippy::disallowed_methods)] // host randomness for a directory name
    getrandom::fill(&mut r).map_err(|e| anyhow!("{e}"))?;
    let dir = std::env::temp_dir().join(format!("godwit-bench-{}", hex::encode(r)));
    let base =
        godwit_node::cluster::free_base_port(n).ok_or_else(|| anyhow!("no free loopback ports"))?;
    let mut nodes = Vec::new();
    for f in godwit_node::cluster::init(&dir, n, base)? {
        nodes.push(Node::start(NodeConfig::load(&f)?).await?);
    }
    for node in &nodes {
        if node
            .wait_for_leader(Duration::from_secs(30))
            .await
            .is_none()
        {
            bail!("{} found no store leader in 30 s", node.host());
        }
    }
    Ok((nodes, dir))
}

/// The node whose SM leads the store.
pub async fn leader(nodes: &[Node]) -> Result<&Node> {
    let host = nodes[0]
        .wait_for_leader(Duration::from_secs(30))
        .await
        .ok_or_else(|| anyhow!("no store leader"))?;
    nodes
        .iter()
        .find(|n| *n.host() == host)
        .ok_or_else(|| anyhow!("the leader {host} is not one of the nodes"))
}

/// `count` commits of a harmless write by `node`'s SM, each timed from proposal to its own
/// member applying it.
pub async fn samples(node: &Node, count: usize) -> Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let t = now();
        node.probe_store(Duration::from_secs(10))
            .await
            .map_err(|why| anyhow!("store probe from {}: {why}", node.host()))?;
        out.push(t.elapsed());
    }
    Ok(out)
}

pub fn run(members: &[usize], count: usize, json: bool) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut results = Vec::new();
    for &n in members {
        if n < 1 {
            bail!("--members takes sizes of at least 1");
        }
        let r = rt.block_on(async {
            let (nodes, dir) = start_cluster(n).await?;
            // Let the initial elections and boot announcements settle.
            samples(&nodes[0], 20).await?;
            let host = leader(&nodes).await?.host().clone();
            let leader = nodes
                .iter()
                .position(|n| *n.host() == host)
                .ok_or_else(|| anyhow!("no leader"))?;
            let follower = (0..n).find(|&i| i != leader);
            let mut from_leader = samples(&nodes[leader], count).await?;
            let mut from_follower = match follower {
                Some(f) => samples(&nodes[f], count).await?,
                None => Vec::new(),
            };
            for node in &nodes {
                node.shutdown().await;
            }
            let _ = std::fs::remove_dir_all(&dir);
            anyhow::Ok(json!({
                "members": n,
                "samples": count,
                "leader_p50_ms": percentile_ms(&mut from_leader, 50.0),
                "leader_p99_ms": percentile_ms(&mut from_leader, 99.0),
                "follower_p50_ms": percentile_ms(&mut from_follower, 50.0),
                "follower_p99_ms": percentile_ms(&mut from_follower, 99.0),
            }))
        })?;
        results.push(r);
    }
    if json {
        println!("{}", json!({ "results": results }));
        return Ok(ExitCode::SUCCESS);
    }
    println!("store commit latency on loopback (a ledger write applied by a majority), ms");
    println!(
        "{:>8} {:>11} {:>11} {:>13} {:>13}",
        "members", "leader p50", "leader p99", "follower p50", "follower p99"
    );
    for r in &results {
        println!(
            "{:>8} {:>11.2} {:>11.2} {:>13.2} {:>13.2}",
            r["members"],
            r["leader_p50_ms"].as_f64().unwrap_or(f64::NAN),
            r["leader_p99_ms"].as_f64().unwrap_or(f64::NAN),
            r["follower_p50_ms"].as_f64().unwrap_or(f64::NAN),
            r["follower_p99_ms"].as_f64().unwrap_or(f64::NAN),
        );
    }
    if let Some(r3) = results.iter().find(|r| r["members"] == 3) {
        let p50 = r3["leader_p50_ms"].as_f64().unwrap_or(f64::NAN);
        let met = if p50 <= COMMIT_P50_GOAL_MS {
            "met"
        } else {
            "NOT met"
        };
        println!("goal: p50 <= {COMMIT_P50_GOAL_MS} ms with 3 members: {met}");
    }
    Ok(ExitCode::SUCCESS)
}
