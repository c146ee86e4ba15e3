//! `godwit bench`: the whole suite in one run — the machine's limits, then godwit's
//! figures on real `godwit node` processes, each beside its limit.

use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use godwit_enclave::examples::{BALLAST, COUNTER, Example};
use godwit_node::NodeConfig;
use godwit_node::control::{Command, Response, request};
use serde_json::{Value, json};

use crate::bench_store::percentile_ms;

/// Goals, printed with whether they are met (never asserted in tests).
pub const GOAL_BULK_RATIO: f64 = 0.8;
pub const GOAL_SMALL_P50_MS: f64 = 3.0;
pub const GOAL_COMMIT_P50_MS: f64 = 2.0;
pub const GOAL_VS_QEMU_TLS: f64 = 3.0;
pub const GOAL_PEAK_MEMORY_RATIO: f64 = 1.25;

/// Options of the suite.
#[derive(clap::Args)]
pub struct SuiteArgs {
    /// Ballast sizes to migrate, MiB.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256,1024")]
    sizes_mib: Vec<u32>,
    /// Migrations of a small enclave (counter, 64 KiB) over warm channels.
    #[arg(long, default_value_t = 120)]
    small_runs: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Draw migration time against size, with the limit line, into this PNG.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Also run QEMU's live migration of the same memory, with and without TLS.
    #[arg(long)]
    vs_qemu: bool,
}

#[allow(clippy::disallowed_methods)] // the host's clock, for timing only
pub(crate) fn now() -> Instant {
    Instant::now()
}

const MIB: f64 = 1024.0 * 1024.0;

/// This process's CPU time so far (user + system).
fn cpu_seconds() -> f64 {
    process_cpu_seconds("self")
}

/// A process's CPU time so far (user + system), from `/proc/<pid>/stat` (Linux, 100 Hz
/// ticks); 0 where that file does not exist.
fn process_cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after ") ".
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat; here 0-based from field 3.
    (ticks(11) + ticks(12)) / 100.0
}

/// One core copying as a migration does, MiB/s: enclave memory into a record buffer (the
/// sender), then the record buffer into enclave memory (the receiver), record by record
/// over `bytes` of resident memory, the largest enclave the run migrates, so that memory
/// is as far from the cache as a migration's. Both copies count; fresh pages are measured
/// apart. The memory is opaque to the compiler: when it could see one repeated byte it
/// turned the copy into a fill, and until 2026-11-27 this figure was memset's, about three
/// times too high. The best of three, as a limit should be.
fn memcpy_mib_s(bytes: usize) -> f64 {
    let mut memory = std::hint::black_box(vec![0x5au8; bytes]);
    let mut record = vec![0u8; godwit_proto::CHUNK_BYTES_MAX];
    (0..3)
        .map(|_| {
            let t = now();
            for pages in memory.chunks(record.len()) {
                record[..pages.len()].copy_from_slice(pages);
                std::hint::black_box(&mut record);
            }
            for pages in memory.chunks_mut(record.len()) {
                let n = pages.len();
                pages.copy_from_slice(&record[..n]);
                std::hint::black_box(pages);
            }
            2.0 * bytes as f64 / MIB / t.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

/// Seal + open of 1 MiB records on every core at once, MiB/s in total.
fn channel_all_cores_mib_s(cores: usize) -> Result<f64> {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut threads = Vec::new();
    for _ in 0..cores {
        let stop = Arc::clone(&stop);
        threads.push(std::thread::spawn(move || -> Result<f64> {
            let (mut tx, mut rx) = crate::bench::channel_pair()?;
            let mut rec = godwit_attest::RecordBuf::new();
            rec.payload_mut(1 << 20).fill(7);
            let start = now();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tx.seal(godwit_attest::RecordType::Data, &mut rec)?;
                rx.open(rec.as_bytes_mut())?;
                n += 1;
            }
            Ok(n as f64 / start.elapsed().as_secs_f64())
        }));
    }
    std::thread::sleep(Duration::from_millis(800));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0.0;
    for t in threads {
        total += t.join().map_err(|_| anyhow!("bench thread panicked"))??;
    }
    Ok(total)
}

/// One loopback TCP connection, a writer thread and a reader thread: MiB/s, and the CPU
/// seconds the pair spent per GiB moved.
fn loopback_tcp() -> Result<(f64, f64)> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let writer = std::thread::spawn(move || -> Result<()> {
        let mut s = std::net::TcpStream::connect(addr)?;
        let buf = vec![0x5au8; 1 << 20];
        let start = now();
        while start.elapsed() < Duration::from_millis(800) {
            s.write_all(&buf)?;
        }
        Ok(())
    });
    let (mut r, _) = listener.accept()?;
    let mut buf = vec![0u8; 1 << 20];
    let (cpu0, start) = (cpu_seconds(), now());
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    let (secs, cpu) = (start.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
    writer.join().map_err(|_| anyhow!("writer panicked"))??;
    let gib = total as f64 / (MIB * 1024.0);
    Ok((total as f64 / MIB / secs, cpu / gib))
}

/// CPU seconds per GiB the kernel (and, under a hypervisor, the host) spends handing out
/// fresh pages: copying `bytes` into newly allocated memory, less copying them again into
/// the same, now resident, memory. Any destination pays it: it writes the enclave into
/// memory it has just allocated (on TEE hardware, pages it must also accept). The cheapest
/// of three, as a limit should be: on a VM the same first touch can cost twice as much
/// from one moment to the next.
fn fresh_pages_s_per_gib(bytes: usize) -> f64 {
    // At least 64 MiB: glibc serves smaller blocks, once one was freed, from memory it kept
    // (its mmap threshold grows up to 32 MiB), and such a sample would touch no fresh page.
    let bytes = bytes.max(64 << 20);
    let src = std::hint::black_box(vec![0x5au8; bytes]);
    let gib = bytes as f64 / (MIB * 1024.0);
    (0..3)
        .map(|_| {
            let mut dst: Vec<u8> = Vec::with_capacity(bytes);
            let t = now();
            dst.extend_from_slice(&src);
            let fresh = t.elapsed();
            let t = now();
            dst.copy_from_slice(&src);
            std::hint::black_box(&dst);
            fresh.saturating_sub(t.elapsed()).as_secs_f64() / gib
        })
        .fold(f64::INFINITY, f64::min)
}

/// A 4 KiB write and `sync_data` in the directory the bench's hosts keep their files in,
/// ms, p50 of 200: the least a durable store write waits for on this disk.
fn fsync_ms_p50() -> Result<f64> {
    use std::os::unix::fs::FileExt;
    let dir = std::env::temp_dir().join(format!("godwit-bench-fsync-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let f = std::fs::File::create(dir.join("f"))?;
    let block = [0x5au8; 4096];
    let mut samples = Vec::with_capacity(200);
    for i in 0..200u64 {
        let t = now();
        f.write_all_at(&block, i * 4096)?;
        f.sync_data()?;
        samples.push(t.elapsed());
    }
    drop(f);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(percentile_ms(&mut samples, 50.0))
}

/// A one-byte round trip over loopback TCP (Nagle off, blocking reads), µs, p50 of 2000:
/// the least any message and its answer take between two hosts here.
fn loopback_rtt_us_p50() -> Result<f64> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut b = [0u8; 1];
        while s.read(&mut b)? == 1 {
            s.write_all(&b)?;
        }
        Ok(())
    });
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let mut b = [7u8; 1];
    let mut samples = Vec::with_capacity(2000);
    for _ in 0..2100 {
        let t = now();
        s.write_all(&b)?;
        s.read_exact(&mut b)?;
        samples.push(t.elapsed());
    }
    drop(s);
    echo.join().map_err(|_| anyhow!("echo thread panicked"))??;
    // The first hundred warm the path up.
    Ok(percentile_ms(&mut samples[100..], 50.0) * 1000.0)
}

/// wasmtime calling an exported function that returns at once, µs, p50 of 5000: the least
/// any ecall costs here.
fn wasm_call_us_p50() -> Result<f64> {
    let w = |e: wasmtime::Error| anyhow!("wasmtime: {e}");
    let engine = wasmtime::Engine::default();
    let wasm = wat::parse_str(r#"(module (func (export "nop")))"#)?;
    let module = wasmtime::Module::new(&engine, wasm).map_err(w)?;
    let mut store = wasmtime::Store::new(&engine, ());
    let instance = wasmtime::Instance::new(&mut store, &module, &[]).map_err(w)?;
    let nop = instance
        .get_typed_func::<(), ()>(&mut store, "nop")
        .map_err(w)?;
    let mut samples = Vec::with_capacity(5000);
    for _ in 0..5000 {
        let t = now();
        nop.call(&mut store, ()).map_err(w)?;
        samples.push(t.elapsed());
    }
    Ok(percentile_ms(&mut samples, 50.0) * 1000.0)
}

/// The machine's limits; fresh pages are measured at `largest_mib`, the largest enclave the
/// run migrates.
fn limits(largest_mib: u32) -> Result<Value> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let enclave_bytes = (largest_mib.clamp(16, 1024) as usize) << 20;
    let memcpy = memcpy_mib_s(enclave_bytes);
    let channel_one = crate::bench::measure_channel_size(1 << 20, Duration::from_millis(700))?[0];
    let channel_all = channel_all_cores_mib_s(cores)?;
    let (tcp, tcp_cpu_s_per_gib) = loopback_tcp()?;
    let fresh = fresh_pages_s_per_gib(enclave_bytes);
    // CPU seconds per GiB the data needs: the TCP pair, seal + open, two copies (pages
    // into records at the sender, records into pages at the receiver) and the receiver's
    // fresh pages.
    let cpu_per_gib = tcp_cpu_s_per_gib + 1024.0 / channel_one + 2.0 * 1024.0 / memcpy + fresh;
    let by_cpu = cores as f64 * 1024.0 / cpu_per_gib;
    let pipeline = by_cpu.min(tcp).min(channel_all);
    // Latencies. A store write is durable once the leader's log and one follower's are
    // synced; they sync at once, the follower after a round trip. A migration waits for a
    // round trip (PREPARE/READY), a store write (BEGIN), one more trip (FINAL, then
    // COMMITTED back) and a store write (COMMIT), besides moving the bytes.
    let fsync_ms = fsync_ms_p50()?;
    let rtt_us = loopback_rtt_us_p50()?;
    let commit_limit_ms = fsync_ms + rtt_us / 1000.0;
    let migration_fixed_ms = 2.0 * commit_limit_ms + 2.0 * rtt_us / 1000.0;
    Ok(json!({
        "cores": cores,
        "memcpy_mib_s": memcpy,
        "channel_one_core_mib_s": channel_one,
        "channel_all_cores_mib_s": channel_all,
        "loopback_tcp_mib_s": tcp,
        "loopback_tcp_cpu_s_per_gib": tcp_cpu_s_per_gib,
        "fresh_pages_cpu_s_per_gib": fresh,
        "pipeline_limit_mib_s": pipeline,
        "fsync_ms_p50": fsync_ms,
        "loopback_rtt_us_p50": rtt_us,
        "wasm_call_us_p50": wasm_call_us_p50()?,
        "commit_limit_ms": commit_limit_ms,
        "migration_fixed_limit_ms": migration_fixed_ms,
    }))
}

/// Three `godwit node` processes on loopback, killed when dropped.
struct Hosts {
    dir: PathBuf,
    configs: Vec<NodeConfig>,
    children: Vec<Child>,
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Hosts {
    fn start(n: usize) -> Result<Self> {
        let mut r = [0u8; 8];
        #[allow(clippy::disallowed_methods)] // host randomness for a directory name
        getrandom::fill(&mut r).map_err(|e| anyhow!("{e}"))?;
        let dir = std::env::temp_dir().join(format!("godwit-bench-{}", hex::encode(r)));
        let base = godwit_node::cluster::free_base_port(n)
            .ok_or_else(|| anyhow!("no free loopback ports"))?;
        let files = godwit_node::cluster::init(&dir, n, base)?;
        let exe = std::env::current_exe()?;
        let mut hosts = Hosts {
            dir: dir.clone(),
            configs: Vec::new(),
            children: Vec::new(),
        };
        for (k, f) in files.iter().enumerate() {
            hosts.configs.push(NodeConfig::load(f)?);
            let log = std::fs::File::create(dir.join(format!("host{}.log", k + 1)))?;
            hosts.children.push(
                std::process::Command::new(&exe)
                    .arg("node")
                    .arg("--config")
                    .arg(f)
                    .env("GODWIT_LOG", "warn,openraft=off")
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()?,
            );
        }
        Ok(hosts)
    }

    fn ask(&self, rt: &tokio::runtime::Runtime, k: usize, cmd: Command) -> Result<Value> {
        let c = &self.configs[k];
        match rt.block_on(request(
            &c.control.socket,
            &c.control.token_file,
            cmd,
            |_, _| {},
        ))? {
            Response::Ok(v) => Ok(v),
            Response::Err { error, code } => bail!("host{}: {error} [{code}]", k + 1),
            Response::Progress { .. } => bail!("unexpected progress"),
        }
    }

    fn wait_ready(&self, rt: &tokio::runtime::Runtime) -> Result<()> {
        let start = now();
        while start.elapsed() < Duration::from_secs(60) {
            let ready = (0..self.configs.len()).all(|k| {
                self.ask(rt, k, Command::Status).is_ok_and(|s| {
                    let hosts = s["hosts"].as_array().cloned().unwrap_or_default();
                    hosts.iter().all(|h| h["up"] == true)
                        && hosts.iter().any(|h| h["leader"] == true)
                })
            });
            if ready {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("the cluster did not come up within 60 s")
    }

    fn deploy(&self, rt: &tokio::runtime::Runtime, k: usize, ex: Example) -> Result<String> {
        let v = self.ask(
            rt,
            k,
            Command::Deploy {
                module_hex: hex::encode(ex.module()),
                manifest: ex.manifest.to_owned(),
                adopt: None,
            },
        )?;
        Ok(v["enclave"].as_str().unwrap_or_default().to_owned())
    }

    fn call(
        &self,
        rt: &tokio::runtime::Runtime,
        k: usize,
        enclave: &str,
        f: &str,
        arg: &str,
    ) -> Result<String> {
        let v = self.ask(
            rt,
            k,
            Command::Call {
                enclave: enclave.into(),
                function: f.into(),
                arg: arg.into(),
                wait_ms: None,
            },
        )?;
        Ok(v["result"].as_str().unwrap_or_default().to_owned())
    }

    fn migrate(
        &self,
        rt: &tokio::runtime::Runtime,
        from: usize,
        enclave: &str,
        to: usize,
    ) -> Result<Value> {
        self.ask(
            rt,
            from,
            Command::Migrate {
                enclave: enclave.into(),
                to: self.configs[to].id.to_string(),
            },
        )
    }

    /// CPU seconds host `k`'s process has used so far.
    fn cpu_seconds(&self, k: usize) -> f64 {
        process_cpu_seconds(&self.children[k].id().to_string())
    }

    /// Peak resident memory of host `k`'s process so far, MiB.
    fn peak_rss_mib(&self, k: usize) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.children[k].id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    }
}

fn migrations(
    hosts: &Hosts,
    rt: &tokio::runtime::Runtime,
    sizes: &[u32],
    limits: &Value,
) -> Result<Vec<Value>> {
    let limit = limits["pipeline_limit_mib_s"].as_f64().unwrap_or(f64::NAN);
    let fixed_ms = limits["migration_fixed_limit_ms"]
        .as_f64()
        .unwrap_or(f64::NAN);
    let mut out = Vec::new();
    for &mib in sizes {
        let id = hosts.deploy(rt, 0, BALLAST)?;
        hosts.call(rt, 0, &id, "fill", &mib.to_string())?;
        let sum = hosts.call(rt, 0, &id, "checksum", "")?;
        let cpu_before = [hosts.cpu_seconds(0), hosts.cpu_seconds(1)];
        let r = hosts.migrate(rt, 0, &id, 1)?;
        let cpu = [
            hosts.cpu_seconds(0) - cpu_before[0],
            hosts.cpu_seconds(1) - cpu_before[1],
        ];
        if hosts.call(rt, 1, &id, "checksum", "")? != sum {
            bail!("the {mib} MiB ballast arrived with another checksum");
        }
        let transfer_ms = r["steps_ms"]["transfer"].as_f64().unwrap_or(f64::NAN);
        let bytes = r["bytes"].as_f64().unwrap_or(0.0);
        // The kernel counts CPU time in 10 ms ticks: below five, the figure says nothing.
        let per_gib = |secs: f64| (secs >= 0.05).then(|| secs / (bytes / MIB / 1024.0));
        let throughput = bytes / MIB / (transfer_ms / 1000.0);
        // The least the whole migration could take: the bytes at the pipeline limit, plus
        // the round trips and store writes no migration can skip.
        let limit_ms = bytes / MIB / limit * 1000.0 + fixed_ms;
        out.push(json!({
            "size_mib": mib,
            "bytes": r["bytes"],
            "total_ms": r["total_ms"],
            "downtime_ms": r["downtime_ms"],
            "throughput_mib_s": throughput,
            "throughput_ratio_to_limit": throughput / limit,
            "limit_ms": limit_ms,
            "total_ratio_to_limit": limit_ms / r["total_ms"].as_f64().unwrap_or(f64::NAN),
            "steps_ms": r["steps_ms"],
            "peak_rss_mib": { "sender": hosts.peak_rss_mib(0), "receiver": hosts.peak_rss_mib(1) },
            "cpu_s_per_gib": { "sender": per_gib(cpu[0]), "receiver": per_gib(cpu[1]) },
        }));
        hosts.ask(rt, 1, Command::Destroy { enclave: id })?;
    }
    Ok(out)
}

/// Migrations of a small enclave back and forth over warm channels: total ms each.
fn small_enclave(
    hosts: &Hosts,
    rt: &tokio::runtime::Runtime,
    runs: usize,
) -> Result<Vec<Duration>> {
    let id = hosts.deploy(rt, 0, COUNTER)?;
    hosts.call(rt, 0, &id, "incr", "")?;
    let mut at = 0;
    for _ in 0..4 {
        hosts.migrate(rt, at, &id, 1 - at)?; // warm the channels both ways
        at = 1 - at;
    }
    let mut out = Vec::with_capacity(runs);
    for _ in 0..runs {
        let r = hosts.migrate(rt, at, &id, 1 - at)?;
        out.push(Duration::from_secs_f64(
            r["total_ms"].as_f64().unwrap_or(f64::NAN) / 1000.0,
        ));
        at = 1 - at;
    }
    Ok(out)
}

/// One enclave's calls and migrations with its neighbour idle, then with the neighbour
/// (on the same host) in a long call: p50 of the call latency through the control API,
/// and of a small migration's total time.
fn busy_neighbour(hosts: &Hosts, rt: &tokio::runtime::Runtime) -> Result<Value> {
    const CALLS: usize = 200;
    const MIGRATIONS: usize = 10;
    let quiet = hosts.deploy(rt, 0, COUNTER)?;
    let measure = || -> Result<(f64, f64)> {
        let mut calls = Vec::with_capacity(CALLS);
        for _ in 0..CALLS {
            let t = now();
            hosts.call(rt, 0, &quiet, "get", "")?;
            calls.push(t.elapsed());
        }
        let mut moves = Vec::with_capacity(MIGRATIONS);
        for _ in 0..MIGRATIONS {
            // From the busy host and back: both directions count.
            for (from, to) in [(0, 1), (1, 0)] {
                let r = hosts.migrate(rt, from, &quiet, to)?;
                moves.push(Duration::from_secs_f64(
                    r["total_ms"].as_f64().unwrap_or(f64::NAN) / 1000.0,
                ));
            }
        }
        Ok((
            percentile_ms(&mut calls, 50.0),
            percentile_ms(&mut moves, 50.0),
        ))
    };
    let idle = measure()?;
    let busy = hosts.deploy(rt, 0, BALLAST)?;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let loaded = std::thread::scope(|scope| {
        let spinner = scope.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if hosts.call(rt, 0, &busy, "spin", "4095").is_err() {
                    return;
                }
            }
        });
        let started = now();
        let under_way = loop {
            let local = hosts.ask(rt, 0, Command::Status)?["local"].clone();
            let busy_now = local
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["id"] == busy.as_str() && e["busy"] == true);
            if busy_now || started.elapsed() > Duration::from_secs(30) {
                break busy_now;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        if !under_way {
            bail!("the long call did not start within 30 s");
        }
        let loaded = measure();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // Ends the spin under way: the enclave is wiped when its call returns.
        hosts.ask(
            rt,
            0,
            Command::Destroy {
                enclave: busy.clone(),
            },
        )?;
        let _ = spinner.join();
        loaded
    })?;
    hosts.ask(rt, 0, Command::Destroy { enclave: quiet })?;
    Ok(json!({
        "calls": CALLS,
        "migrations": 2 * MIGRATIONS,
        "call_ms_p50": { "idle": idle.0, "busy": loaded.0, "ratio": loaded.0 / idle.0 },
        "migration_ms_p50": { "idle": idle.1, "busy": loaded.1, "ratio": loaded.1 / idle.1 },
    }))
}

/// The SM's ecall path on the emulated hardware (state check, wasmtime call, fuel).
fn ecall_us_p50() -> Result<f64> {
    let m = godwit_hw::Manufacturer::generate();
    let hw = Arc::new(godwit_hw::SoftHardware::boot(
        m.provision(godwit_wire::HostId::new("bench")?),
        godwit_monitor::sm_measurement(),
    ));
    let host = godwit_wire::HostId::new("bench")?;
    let config = godwit_monitor::MonitorConfig {
        policy: godwit_attest::Policy {
            roots: vec![m.root()],
            allowed_sm: vec![godwit_monitor::sm_measurement()],
            allowed_hosts: None,
        },
        timeouts: godwit_proto::TimeoutConfig::default(),
        memory_budget_bytes: u64::MAX,
        // A store of one: this SM's own member.
        store: godwit_monitor::MemberConfig {
            founders: vec![host],
            ..Default::default()
        },
    };
    let (mut sm, _) = godwit_monitor::Monitor::new(
        hw,
        Arc::new(godwit_monitor::MemoryBlobStore::default()),
        config,
        &[],
    )?;
    let id = sm.create(&COUNTER.module(), COUNTER.manifest())?;
    // Drive the SM (its records kept nowhere: durable at once) until the enclave runs.
    let start = now();
    while sm.info(id)?.state != godwit_monitor::EnclaveState::Running {
        if start.elapsed() > Duration::from_secs(30) {
            anyhow::bail!("the one-member store did not register the enclave in 30 s");
        }
        while let Some(a) = sm.poll_action() {
            if let godwit_monitor::Action::Persist(w) = a {
                sm.persisted(w.number);
            }
        }
        if let Some(wait) = sm.timeout_in() {
            std::thread::sleep(wait.min(Duration::from_millis(10)));
        }
        sm.handle_timeout();
    }
    let mut samples = Vec::with_capacity(5000);
    for _ in 0..5000 {
        let t = now();
        std::hint::black_box(sm.call(id, "get", b"")?);
        samples.push(t.elapsed());
    }
    Ok(percentile_ms(&mut samples, 50.0) * 1000.0)
}

pub fn run(args: SuiteArgs) -> Result<ExitCode> {
    let say = |s: &str| {
        if !args.json {
            eprintln!("{s}");
        }
    };
    say("measuring the machine's limits...");
    let limits = limits(args.sizes_mib.iter().copied().max().unwrap_or(16))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    say("starting 3 godwit node processes on loopback...");
    let hosts = Hosts::start(3)?;
    hosts.wait_ready(&rt)?;
    say("migrating ballast enclaves...");
    let migrations = migrations(&hosts, &rt, &args.sizes_mib, &limits)?;
    say("migrating a small enclave over warm channels...");
    let mut small = small_enclave(&hosts, &rt, args.small_runs.max(1))?;
    say("calling and migrating an enclave beside one in a long call...");
    let neighbour = busy_neighbour(&hosts, &rt)?;
    drop(hosts);
    say("measuring store commits and ecalls...");
    let (commit_p50, commit_p99) = rt.block_on(async {
        let (nodes, dir) = crate::bench_store::start_cluster(3).await?;
        let leader = crate::bench_store::leader(&nodes).await?;
        let mut s = crate::bench_store::samples(leader, 300).await?;
        for n in &nodes {
            n.shutdown().await;
        }
        let _ = std::fs::remove_dir_all(dir);
        anyhow::Ok((percentile_ms(&mut s, 50.0), percentile_ms(&mut s, 99.0)))
    })?;
    let ecall = ecall_us_p50()?;
    let qemu = if args.vs_qemu {
        Some(crate::bench_qemu::run(&args.sizes_mib))
    } else {
        None
    };
    let mut report = assemble(
        &limits,
        migrations,
        &mut small,
        (commit_p50, commit_p99),
        ecall,
        qemu,
    );
    report["busy_neighbour"] = neighbour;
    if let Some(path) = &args.plot {
        plot(path, &report).with_context(|| format!("drawing {}", path.display()))?;
        say(&format!("plot written to {}", path.display()));
    }
    if args.json {
        println!("{report}");
    } else {
        print_report(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn assemble(
    limits: &Value,
    migrations: Vec<Value>,
    small: &mut [Duration],
    (commit_p50, commit_p99): (f64, f64),
    ecall_us: f64,
    qemu: Option<Value>,
) -> Value {
    let limit = limits["pipeline_limit_mib_s"].as_f64().unwrap_or(f64::NAN);
    let bulk: Vec<&Value> = migrations
        .iter()
        .filter(|m| m["size_mib"].as_u64().unwrap_or(0) >= 64)
        .collect();
    let worst_bulk = bulk
        .iter()
        .filter_map(|m| m["throughput_ratio_to_limit"].as_f64())
        .fold(f64::INFINITY, f64::min);
    // The goal is about a 1 GiB migration; smaller ones are dominated by the node's baseline.
    let largest = migrations
        .iter()
        .filter(|m| m["size_mib"].as_u64().unwrap_or(0) >= 1024)
        .max_by_key(|m| m["size_mib"].as_u64().unwrap_or(0));
    let peak_ratio = largest.map(|m| {
        let size = m["size_mib"].as_f64().unwrap_or(f64::NAN);
        let s = m["peak_rss_mib"]["sender"].as_f64().unwrap_or(f64::NAN);
        let r = m["peak_rss_mib"]["receiver"].as_f64().unwrap_or(f64::NAN);
        s.max(r) / size
    });
    let small_p50 = percentile_ms(small, 50.0);
    // Latencies' ratios are limit / measured: the share of the best possible reached, as
    // for throughput.
    let latency_ratio = |key: &str, measured: f64| limits[key].as_f64().map(|l| l / measured);
    // QEMU's figure is size / its total migration time; godwit's, for the same size, too.
    let same_size_mib_s = |q: &Value| {
        migrations
            .iter()
            .find(|m| m["size_mib"] == q["size_mib"])
            .and_then(|m| Some(m["size_mib"].as_f64()? / (m["total_ms"].as_f64()? / 1000.0)))
    };
    let vs_qemu = |key: &str| {
        let q = qemu.as_ref()?;
        Some(same_size_mib_s(q)? / q[key].as_f64()?)
    };
    let (vs_qemu_tls, vs_qemu_plain) = (vs_qemu("tls_mib_s"), vs_qemu("plain_mib_s"));
    json!({
        "limits": limits,
        "migrations": migrations,
        "small_enclave_ms_p50": small_p50,
        "small_enclave_ms_p99": percentile_ms(small, 99.0),
        "small_enclave_runs": small.len(),
        "small_enclave_ratio_to_limit": latency_ratio("migration_fixed_limit_ms", small_p50),
        "commit_ms_p50": commit_p50,
        "commit_ms_p99": commit_p99,
        "commit_ratio_to_limit": latency_ratio("commit_limit_ms", commit_p50),
        "ecall_us_p50": ecall_us,
        "ecall_ratio_to_limit": latency_ratio("wasm_call_us_p50", ecall_us),
        "qemu": qemu,
        "ratio_to_qemu_tls": vs_qemu_tls,
        "ratio_to_qemu_plain": vs_qemu_plain,
        "goals": {
            "bulk_throughput_ratio": { "goal": GOAL_BULK_RATIO, "worst": (!bulk.is_empty()).then_some(worst_bulk), "met": (!bulk.is_empty()).then_some(worst_bulk >= GOAL_BULK_RATIO) },
            "small_enclave_ms_p50": { "goal": GOAL_SMALL_P50_MS, "value": small_p50, "met": small_p50 <= GOAL_SMALL_P50_MS },
            "commit_ms_p50": { "goal": GOAL_COMMIT_P50_MS, "value": commit_p50, "met": commit_p50 <= GOAL_COMMIT_P50_MS },
            "vs_qemu_tls": { "goal": GOAL_VS_QEMU_TLS, "value": vs_qemu_tls, "met": vs_qemu_tls.map(|r| r >= GOAL_VS_QEMU_TLS) },
            "peak_memory_ratio": { "goal": GOAL_PEAK_MEMORY_RATIO, "value": peak_ratio, "met": peak_ratio.map(|r| r <= GOAL_PEAK_MEMORY_RATIO) },
        },
        "limit_mib_s": limit,
    })
}

fn print_report(r: &Value) {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let cpu = |v: &Value| v.as_f64().map_or("-".to_owned(), |x| format!("{x:.2}"));
    let l = &r["limits"];
    println!("machine limits ({} cores)", l["cores"]);
    // One limit per line: label, value at its precision, unit and what it is.
    let line = |label: &str, key: &str, decimals: usize, rest: &str| {
        println!("  {label:<24} {:>9.*} {rest}", decimals, f(&l[key]));
    };
    line(
        "memcpy",
        "memcpy_mib_s",
        0,
        "MiB/s (one core, pages to records and back)",
    );
    println!(
        "  channel seal+open        {:>9.0} MiB/s one core, {:.0} MiB/s all cores",
        f(&l["channel_one_core_mib_s"]),
        f(&l["channel_all_cores_mib_s"])
    );
    println!(
        "  loopback TCP             {:>9.0} MiB/s ({:.2} CPU-s per GiB)",
        f(&l["loopback_tcp_mib_s"]),
        f(&l["loopback_tcp_cpu_s_per_gib"])
    );
    line(
        "fresh pages",
        "fresh_pages_cpu_s_per_gib",
        2,
        "CPU-s per GiB (first touch of newly allocated memory)",
    );
    line(
        "pipeline limit",
        "pipeline_limit_mib_s",
        0,
        "MiB/s (cores / CPU cost per byte of TCP, crypto, two copies, fresh pages)",
    );
    line(
        "fsync",
        "fsync_ms_p50",
        2,
        "ms (a 4 KiB write and sync_data, p50)",
    );
    line(
        "loopback round trip",
        "loopback_rtt_us_p50",
        1,
        "µs (one byte each way, p50)",
    );
    line(
        "wasmtime call",
        "wasm_call_us_p50",
        2,
        "µs (an exported function that returns at once, p50)",
    );
    line(
        "store commit limit",
        "commit_limit_ms",
        2,
        "ms (fsync + round trip)",
    );
    line(
        "migration fixed limit",
        "migration_fixed_limit_ms",
        2,
        "ms (two commits, two round trips)",
    );
    println!("\nmigrations of a paused ballast enclave, host1 -> host2 (3-member store)");
    println!(
        "{:>8} {:>9} {:>9} {:>9} {:>10} {:>7} {:>8} {:>8} {:>9} {:>8} {:>8} {:>9} {:>13}",
        "MiB",
        "total ms",
        "limit ms",
        "down ms",
        "MiB/s",
        "ratio",
        "attest",
        "prep/rdy",
        "begin",
        "transfer",
        "commit",
        "peak MiB",
        "CPU-s/GiB s|r"
    );
    for m in r["migrations"].as_array().into_iter().flatten() {
        let s = &m["steps_ms"];
        println!(
            "{:>8.0} {:>9.1} {:>9.1} {:>9.1} {:>10.0} {:>7.3} {:>8.2} {:>8.2} {:>9.2} {:>8.1} {:>8.2} {:>9.0} {:>6}|{:<6}",
            f(&m["size_mib"]),
            f(&m["total_ms"]),
            f(&m["limit_ms"]),
            f(&m["downtime_ms"]),
            f(&m["throughput_mib_s"]),
            f(&m["throughput_ratio_to_limit"]),
            f(&s["attest"]),
            f(&s["prepare_ready"]),
            f(&s["begin"]),
            f(&s["transfer"]),
            f(&s["commit"]),
            f(&m["peak_rss_mib"]["sender"]).max(f(&m["peak_rss_mib"]["receiver"])),
            cpu(&m["cpu_s_per_gib"]["sender"]),
            cpu(&m["cpu_s_per_gib"]["receiver"]),
        );
    }
    println!(
        "\nsmall enclave over warm channels ({} runs): p50 {:.2} ms, p99 {:.2} ms; ratio to limit {:.3}",
        r["small_enclave_runs"],
        f(&r["small_enclave_ms_p50"]),
        f(&r["small_enclave_ms_p99"]),
        f(&r["small_enclave_ratio_to_limit"])
    );
    println!(
        "store commit (3 members, leader): p50 {:.2} ms, p99 {:.2} ms; ratio to limit {:.3}",
        f(&r["commit_ms_p50"]),
        f(&r["commit_ms_p99"]),
        f(&r["commit_ratio_to_limit"])
    );
    println!(
        "ecall (counter get, in the SM): p50 {:.2} µs; ratio to limit {:.3}",
        f(&r["ecall_us_p50"]),
        f(&r["ecall_ratio_to_limit"])
    );
    let n = &r["busy_neighbour"];
    if n.is_object() {
        println!(
            "beside an enclave in a long call (same host): call p50 {:.3} ms (idle {:.3}, ratio {:.2}); small migration p50 {:.2} ms (idle {:.2}, ratio {:.2})",
            f(&n["call_ms_p50"]["busy"]),
            f(&n["call_ms_p50"]["idle"]),
            f(&n["call_ms_p50"]["ratio"]),
            f(&n["migration_ms_p50"]["busy"]),
            f(&n["migration_ms_p50"]["idle"]),
            f(&n["migration_ms_p50"]["ratio"]),
        );
    }
    match &r["qemu"] {
        Value::Null => println!("QEMU comparison: not run (pass --vs-qemu)"),
        q if q["error"].is_string() => println!(
            "QEMU comparison: {}",
            q["error"].as_str().unwrap_or_default()
        ),
        q => println!(
            "QEMU live migration of {} MiB: TLS {:.0} MiB/s, plain {:.0} MiB/s; godwit (same size, total time) / TLS = {:.2}, / plain = {:.2}",
            q["size_mib"],
            f(&q["tls_mib_s"]),
            f(&q["plain_mib_s"]),
            f(&r["ratio_to_qemu_tls"]),
            f(&r["ratio_to_qemu_plain"])
        ),
    }
    println!("\ngoals");
    for (name, g) in r["goals"].as_object().into_iter().flatten() {
        let met = match &g["met"] {
            Value::Bool(true) => "met",
            Value::Bool(false) => "NOT met",
            _ => "not measured",
        };
        let value = g
            .get("value")
            .or_else(|| g.get("worst"))
            .map_or(f64::NAN, f);
        println!(
            "  {name:<24} goal {:<5} measured {:>8.3}  {met}",
            g["goal"], value
        );
    }
}

/// Migration time against size, log-log, with the pipeline limit's line.
fn plot(path: &Path, r: &Value) -> Result<()> {
    use plotters::prelude::*;
    let font = ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/dejavu/DejaVuSans.ttf"]
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .ok_or_else(|| anyhow!("no DejaVuSans.ttf found for the plot's text (Debian: apt-get install fonts-dejavu-core)"))?;
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| anyhow!("font not usable"))?;
    let points: Vec<(f64, f64)> = r["migrations"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                m["size_mib"].as_f64().unwrap_or(1.0),
                m["total_ms"].as_f64().unwrap_or(1.0),
            )
        })
        .collect();
    let limit = r["limit_mib_s"].as_f64().unwrap_or(1.0);
    let max_size = points.iter().map(|p| p.0).fold(1.0, f64::max) * 1.5;
    let max_ms = points
        .iter()
        .map(|p| p.1)
        .fold(1.0, f64::max)
        .max(max_size / limit * 1000.0)
        * 2.0;
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "godwit migration time against enclave size",
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d((0.5f64..max_size).log_scale(), (0.1f64..max_ms).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("enclave size (MiB)")
        .y_desc("migration time (ms)")
        .draw()?;
    chart
        .draw_series(LineSeries::new(points.iter().copied(), RED.stroke_width(2)))?
        .label("godwit total (PREPARE to COMMIT)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, RED.filled())))?;
    // Bytes at the pipeline limit plus the round trips and store writes every migration
    // waits for: a curve on these axes, drawn through many points.
    let fixed_ms = r["limits"]["migration_fixed_limit_ms"]
        .as_f64()
        .unwrap_or(0.0);
    let line: Vec<(f64, f64)> = (0..=100)
        .map(|i| {
            let s = 0.5 * (max_size / 0.5).powf(f64::from(i) / 100.0);
            (s, s / limit * 1000.0 + fixed_ms)
        })
        .collect();
    chart
        .draw_series(LineSeries::new(line, BLUE.stroke_width(1)))?
        .label(format!(
            "limit: {limit:.0} MiB/s plus {fixed_ms:.2} ms of round trips and store writes"
        ))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn migration(size_mib: u64, ratio: f64, peak_mib: f64) -> Value {
        json!({
            "size_mib": size_mib,
            "total_ms": 100.0,
            "throughput_ratio_to_limit": ratio,
            "peak_rss_mib": { "sender": peak_mib, "receiver": peak_mib },
        })
    }

    #[test]
    fn goals_without_the_sizes_they_are_about_are_not_measured() {
        let limits = json!({ "pipeline_limit_mib_s": 2000.0 });
        let mut small = [Duration::from_millis(2); 4];
        let r = assemble(
            &limits,
            vec![migration(1, 1.8, 26.0), migration(16, 0.45, 46.0)],
            &mut small,
            (1.0, 2.0),
            0.1,
            None,
        );
        assert_eq!(r["goals"]["bulk_throughput_ratio"]["met"], Value::Null);
        assert_eq!(r["goals"]["peak_memory_ratio"]["met"], Value::Null);
        assert_eq!(r["goals"]["small_enclave_ms_p50"]["met"], true);
        let r = assemble(
            &limits,
            vec![migration(256, 0.7, 300.0), migration(1024, 0.9, 1100.0)],
            &mut small,
            (1.0, 2.0),
            0.1,
            None,
        );
        assert_eq!(r["goals"]["bulk_throughput_ratio"]["met"], false);
        assert_eq!(r["goals"]["bulk_throughput_ratio"]["worst"], 0.7);
        assert_eq!(r["goals"]["peak_memory_ratio"]["met"], true);
    }
}
