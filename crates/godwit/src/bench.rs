//! `godwit bench`: measurements printed beside the machine's own limits, never asserted in
//! tests. Timing is the host's business, so this module reads the OS clock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use godwit_attest::{Initiator, Opened, Policy, RecordBuf, RecordType, Responder};
use godwit_hw::{Hardware, Manufacturer, SoftHardware};
use godwit_wire::HostId;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hmac;

/// Options of `godwit bench`.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    which: Option<BenchCommand>,
    #[command(flatten)]
    suite: crate::bench_suite::SuiteArgs,
}

#[derive(clap::Subcommand)]
enum BenchCommand {
    /// Store commit latency (a ledger write, applied by a majority) with 3 and 5 members.
    Store {
        /// Cluster sizes to measure.
        #[arg(long, value_delimiter = ',', default_value = "3,5")]
        members: Vec<usize>,
        /// Writes per cluster and origin.
        #[arg(long, default_value_t = 300)]
        samples: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Protected-record throughput (seal + open) beside the raw primitives it is built from.
    Channel {
        /// Print JSON: {"results": [{"record_bytes", "channel_mib_s", "primitive_mib_s", "ratio", ...}]}.
        #[arg(long)]
        json: bool,
        /// Seconds to measure each variant of each size, in total.
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
    },
}

/// The record sizes `bench channel` measures.
pub const CHANNEL_RECORD_SIZES: [usize; 4] = [16 << 10, 64 << 10, 256 << 10, 1 << 20];
/// The goal for the channel's throughput as a fraction of the raw primitive's.
pub const CHANNEL_RATIO_GOAL: f64 = 0.9;

#[allow(clippy::disallowed_methods)] // the host's clock, for timing only
fn now() -> Instant {
    Instant::now()
}

pub fn run(args: BenchArgs) -> Result<std::process::ExitCode> {
    match args.which {
        None => crate::bench_suite::run(args.suite),
        Some(BenchCommand::Channel { json, seconds }) => channel(json, seconds),
        Some(BenchCommand::Store {
            members,
            samples,
            json,
        }) => crate::bench_store::run(&members, samples, json),
    }
}

#[derive(serde::Serialize)]
struct ChannelResult {
    record_bytes: usize,
    /// The channel: seal + open of one record, MiB/s of payload.
    channel_mib_s: f64,
    /// The raw primitives the channel is built from, on the same bytes: AES-256-GCM seal +
    /// open of the payload, and HMAC-SHA-256 of the 45-byte MAC input twice.
    primitive_mib_s: f64,
    /// channel / primitive: what the channel's own framing and bookkeeping cost.
    ratio: f64,
    /// AES-256-GCM seal + open alone: the bulk cipher without claim 11's second key.
    aead_only_mib_s: f64,
    /// channel / aead_only: the whole cost of the separate authentication key.
    ratio_to_aead_only: f64,
    /// HMAC-SHA-256 over the whole payload, twice (tag + verify): an upper bound for any
    /// encrypt-then-MAC design using HMAC-SHA-256, the alternative composition.
    hmac_payload_bound_mib_s: f64,
}

fn channel(json: bool, seconds: f64) -> Result<std::process::ExitCode> {
    let budget = Duration::from_secs_f64(seconds.max(0.05));
    let mut results = Vec::new();
    for size in CHANNEL_RECORD_SIZES {
        let [
            channel_mib_s,
            primitive_mib_s,
            aead_only_mib_s,
            hmac_payload_bound_mib_s,
        ] = measure_channel_size(size, budget)?;
        results.push(ChannelResult {
            record_bytes: size,
            channel_mib_s,
            primitive_mib_s,
            ratio: channel_mib_s / primitive_mib_s,
            aead_only_mib_s,
            ratio_to_aead_only: channel_mib_s / aead_only_mib_s,
            hmac_payload_bound_mib_s,
        });
    }
    if json {
        println!("{}", serde_json::json!({ "results": results }));
        return Ok(std::process::ExitCode::SUCCESS);
    }
    println!("protected records, seal + open on one core, MiB/s of payload");
    println!("  channel    AES-256-GCM under k_enc + chained HMAC-SHA-256-128 under k_auth");
    println!("  primitives the same AES-256-GCM and HMAC-SHA-256 calls, raw, same bytes");
    println!("  gcm only   AES-256-GCM alone (what a single key would cost)");
    println!("  etm bound  HMAC-SHA-256 over the payload (caps encrypt-then-MAC with HMAC)\n");
    println!(
        "{:>9} {:>9} {:>11} {:>7} {:>9} {:>7} {:>10}  goal",
        "record", "channel", "primitives", "ratio", "gcm only", "ratio", "etm bound"
    );
    for r in &results {
        let met = if r.ratio >= CHANNEL_RATIO_GOAL {
            "met"
        } else {
            "NOT met"
        };
        println!(
            "{:>5} KiB {:>9.0} {:>11.0} {:>7.3} {:>9.0} {:>7.3} {:>10.0}  ratio >= {CHANNEL_RATIO_GOAL}: {met}",
            r.record_bytes / 1024,
            r.channel_mib_s,
            r.primitive_mib_s,
            r.ratio,
            r.aead_only_mib_s,
            r.ratio_to_aead_only,
            r.hmac_payload_bound_mib_s,
        );
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn counter_nonce(seq: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&seq.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Alternates rounds of the four variants so that all see the same machine conditions;
/// reports each one's median round, in MiB/s of payload.
pub(crate) fn measure_channel_size(size: usize, budget: Duration) -> Result<[f64; 4]> {
    const ROUNDS: u32 = 7;
    let round = budget / (4 * ROUNDS);
    let (mut tx, mut rx) = channel_pair()?;
    let mut rec = RecordBuf::new();
    rec.payload_mut(size).fill(0x5a);
    let gcm = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, &[7; 32]).map_err(|_| anyhow::anyhow!("aes key"))?,
    );
    let mac = hmac::Key::new(hmac::HMAC_SHA256, &[9; 32]);
    let mut raw = vec![0x5a; size];
    let mut seq = 0u64;
    let mut rounds: [Vec<f64>; 4] = Default::default();
    for _ in 0..ROUNDS {
        rounds[0].push(timed(size, round, || {
            tx.seal(RecordType::Data, &mut rec)?;
            match rx.open(rec.as_bytes_mut())? {
                Opened::Data(d) => anyhow::ensure!(d.len() == size, "short record"),
                Opened::Close => anyhow::bail!("unexpected close"),
            }
            Ok(())
        })?);
        let mut gcm_round_trip = |with_mac: bool| -> Result<()> {
            let tag = gcm
                .seal_in_place_separate_tag(counter_nonce(seq), Aad::from([0u8; 13]), &mut raw)
                .map_err(|_| anyhow::anyhow!("seal"))?;
            if with_mac {
                std::hint::black_box(hmac::sign(&mac, &[0u8; 45]));
            }
            gcm.open_in_place_separate_tag(
                counter_nonce(seq),
                Aad::from([0u8; 13]),
                tag,
                &mut raw,
                0..,
            )
            .map_err(|_| anyhow::anyhow!("open"))?;
            if with_mac {
                std::hint::black_box(hmac::sign(&mac, &[0u8; 45]));
            }
            seq += 1;
            Ok(())
        };
        rounds[1].push(timed(size, round, || gcm_round_trip(true))?);
        rounds[2].push(timed(size, round, || gcm_round_trip(false))?);
        rounds[3].push(timed(size, round, || {
            std::hint::black_box(hmac::sign(&mac, &raw));
            std::hint::black_box(hmac::sign(&mac, &raw));
            Ok(())
        })?);
    }
    Ok(rounds.map(|mut r| median(&mut r)))
}

/// Runs `op` repeatedly for about `budget`; returns MiB/s of `bytes` per operation.
fn timed(bytes: usize, budget: Duration, mut op: impl FnMut() -> Result<()>) -> Result<f64> {
    let start = now();
    let mut n = 0u64;
    while n < 2 || start.elapsed() < budget {
        op()?;
        n += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok((bytes as f64 * n as f64) / secs / (1024.0 * 1024.0))
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A channel between two emulated hosts of a throwaway manufacturer, in memory.
pub(crate) fn channel_pair() -> Result<(godwit_attest::Sender, godwit_attest::Receiver)> {
    let m = Manufacturer::generate();
    let sm = godwit_monitor::sm_measurement();
    let boot = |name: &str| -> Result<Arc<dyn Hardware>> {
        Ok(Arc::new(SoftHardware::boot(
            m.provision(HostId::new(name)?),
            sm,
        )))
    };
    let (a, b) = (boot("bench-a")?, boot("bench-b")?);
    let policy = Arc::new(Policy {
        roots: vec![m.root()],
        allowed_sm: vec![sm],
        allowed_hosts: None,
    });
    let (wait, hello) = Initiator::start(a, policy.clone(), HostId::new("bench-b")?);
    let (wait_finish, server_hello) = Responder::respond(b, policy, &hello)?;
    let (initiator, finish) = wait.receive(&server_hello)?;
    let responder = wait_finish.receive(&finish)?;
    let (_, tx, _) = initiator.into_channel().split();
    let (_, _, rx) = responder.into_channel().split();
    Ok((tx, rx))
}
