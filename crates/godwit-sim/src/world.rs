//! The simulated cluster: hosts, network, store, operator, and the event loop.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use godwit_attest::Policy;
use godwit_hw::{DeviceIdentity, Hardware, Manufacturer, NvCounter, SimClock, SimHardware};
use godwit_monitor::{
    Action, CallId, CallOutcome, ConnId, EnclaveState, Event, MemberConfig, MemoryBlobStore,
    Monitor, MonitorConfig, MonitorError, Opened, StoreWrite, sm_measurement,
};
use godwit_proto::{Ledger, MigrationId, TimeoutConfig};
use godwit_wire::{EnclaveId, HostId, Manifest, Measurement};
use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{Options, Summary, Violation};

mod hostile;

const MS: u64 = 1_000_000;
const TRACE_LINES: usize = 40;

/// A deliberate bug the run switches on (see `godwit_proto::planted`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plant {
    /// The sender resumes a paused enclave before the store has recorded ABORT.
    ResumeBeforeAbort,
    /// An SM opens a sealed blob of the right version whatever incarnation sealed it (a
    /// blob version reused after adoption).
    AnyIncarnation,
    /// An SM acts on the outcome a write would have, as soon as it proposes it, instead of
    /// on what its own log applies.
    ActOnProposal,
    /// An adopted instance runs as soon as the adoption applies, without waiting out the
    /// last owner's lease.
    AdoptWithoutWait,
    /// A call that changed durable state and failed is released before the ledger
    /// records the change.
    ReleaseFailureEarly,
}

impl Plant {
    /// Every planted bug.
    pub const ALL: [Self; 5] = [
        Self::ResumeBeforeAbort,
        Self::AnyIncarnation,
        Self::ActOnProposal,
        Self::AdoptWithoutWait,
        Self::ReleaseFailureEarly,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::ResumeBeforeAbort => "resume-before-abort",
            Self::AnyIncarnation => "any-incarnation",
            Self::ActOnProposal => "act-on-proposal",
            Self::AdoptWithoutWait => "adopt-without-wait",
            Self::ReleaseFailureEarly => "release-failure-early",
        }
    }

    /// Switches the bug on or off for this thread.
    fn set(self, on: bool) {
        use godwit_proto::planted;
        match self {
            Self::ResumeBeforeAbort => planted::set_resume_before_abort(on),
            Self::AnyIncarnation => planted::set_any_incarnation(on),
            Self::ActOnProposal => planted::set_act_on_proposal(on),
            Self::AdoptWithoutWait => planted::set_adopt_without_wait(on),
            Self::ReleaseFailureEarly => planted::set_release_failure_early(on),
        }
    }
}

impl fmt::Display for Plant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Plant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = Self::ALL.iter().map(|p| p.name()).collect();
                format!("unknown planted bug {s:?} (known: {})", known.join(", "))
            })
    }
}

/// A host's disk of sealed blobs, which also keeps every blob it was ever given (the
/// last [`ARCHIVE_BLOBS_MAX`]), so that the lying host can hand old ones back.
#[derive(Default)]
pub(crate) struct Disk {
    blobs: MemoryBlobStore,
    archive: std::sync::Mutex<VecDeque<(EnclaveId, String, Vec<u8>)>>,
}

/// Blobs a host's disk remembers for replay.
const ARCHIVE_BLOBS_MAX: usize = 512;

impl Disk {
    pub(crate) fn keys(&self) -> Vec<(EnclaveId, String)> {
        self.blobs.keys()
    }

    fn archived(&self) -> Vec<(EnclaveId, String, Vec<u8>)> {
        self.archive
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

impl godwit_monitor::BlobStore for Disk {
    fn put(
        &self,
        enclave: EnclaveId,
        slot: &str,
        blob: &[u8],
    ) -> Result<(), godwit_monitor::HostError> {
        let mut archive = self.archive.lock().unwrap_or_else(|p| p.into_inner());
        if archive.len() == ARCHIVE_BLOBS_MAX {
            archive.pop_front();
        }
        archive.push_back((enclave, slot.to_owned(), blob.to_vec()));
        self.blobs.put(enclave, slot, blob)
    }

    fn get(
        &self,
        enclave: EnclaveId,
        slot: &str,
    ) -> Result<Option<Vec<u8>>, godwit_monitor::HostError> {
        self.blobs.get(enclave, slot)
    }

    fn delete(&self, enclave: EnclaveId, slot: &str) -> Result<(), godwit_monitor::HostError> {
        self.blobs.delete(enclave, slot)
    }
}

/// The simulator's enclave (see tally.wat).
pub(crate) struct App {
    pub(crate) module: Vec<u8>,
    pub(crate) manifest: Manifest,
    pub(crate) measurement: Measurement,
}

impl App {
    fn load() -> Self {
        // Invariant: tally.wat and tally.toml are part of this crate and checked by its tests.
        let module = godwit_enclave::module_from_source(include_bytes!("tally.wat"))
            .expect("tally.wat compiles");
        let manifest = Manifest::from_toml(include_str!("tally.toml")).expect("tally.toml");
        let measurement = manifest.measure(&module);
        Self {
            module,
            manifest,
            measurement,
        }
    }
}

pub(crate) struct Host {
    pub(crate) id: HostId,
    identity: DeviceIdentity,
    pub(crate) disk: Arc<Disk>,
    /// `None` while the host is down.
    pub(crate) sm: Option<Monitor>,
    /// The component this boot (the host reads its clock for its own scheduling only).
    pub(crate) hw: Option<Arc<SimHardware>>,
    clock: Option<SimClock>,
    /// The component's monotonic counter: it outlives boots.
    nv: NvCounter,
    /// The store member's records on the host's disk: durable ones (from the last base
    /// on), and ones written but not synced yet (a crash loses some of them).
    records: Vec<Vec<u8>>,
    unsynced: VecDeque<StoreWrite>,
    /// Older durable record sets, for the lying host to hand back.
    old_records: VecDeque<Vec<Vec<u8>>>,
    /// Its member lost its records and has not caught up yet (as last seen).
    pub(crate) rejoining: bool,
    /// Boots so far; frames, replies and dials carry the boot they belong to.
    pub(crate) boot: u64,
    /// The highest boot count the component was given; a lying host may start it again
    /// with a lower one.
    count: u64,
    /// This boot's trusted-timer rate against virtual time (drift).
    rate: f64,
    /// Nanoseconds of trusted time owed to the clock (rates are fractional).
    owed: f64,
    /// How late this host delivers timer expiries to its SM.
    lateness: u64,
    /// The SM's earliest deadline as last seen, and the virtual time the host wakes it
    /// for it (fixed once computed: a deadline that came due is not put off again).
    wake: Option<(godwit_hw::TrustedInstant, u64)>,
    /// A hostile host: the frames it carried lately (to and from its SM), for replay.
    overheard: VecDeque<Vec<u8>>,
    /// A hostile host wakes its SM no earlier than this (virtual time).
    withhold_until: u64,
    /// This boot, the host told its SM records were durable before they were.
    lied: bool,
}

/// One end of a connection: host, boot, the SM's connection id.
type End = (usize, u64, ConnId);

struct Link {
    ends: [End; 2],
    /// It carries the store's traffic (the dialler said so).
    store: bool,
    /// Arrival time of the last frame each way (TCP keeps order).
    last: [u64; 2],
}

enum Ev {
    Frame {
        link: u64,
        to: End,
        frame: Vec<u8>,
    },
    Dialled {
        from: End,
        peer: usize,
        store: bool,
    },
    Reset {
        at: End,
    },
    /// The host's disk synced the store records up to `upto`.
    Synced {
        host: usize,
        boot: u64,
        upto: u64,
    },
    HostUp {
        host: usize,
    },
    Operator,
    Heal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallKind {
    Init,
    Tick,
    /// A tick that fails after it counted and sealed; its failure names the count.
    TickFail,
    Check,
}

/// What the operator knows about one enclave it deployed.
pub(crate) struct Tracked {
    pub(crate) canary: [u8; 32],
    /// Init's result was released: the counter exists and the canary is in memory.
    pub(crate) initialized: bool,
    /// The largest count released to a client (by a tick, or a failed tick's status).
    pub(crate) max_released: u64,
    /// The life mark released with each tick: the sealed state of that count.
    pub(crate) lives: BTreeMap<u64, [u8; 8]>,
}

/// Fault rates for this seed.
struct Faults {
    drop: f64,
    duplicate: f64,
    reorder: f64,
    corrupt: f64,
    reset: f64,
    crash: f64,
    partition: f64,
    /// A host restarts its component with a boot count it used before.
    rollback: f64,
    /// A host hands its SM older store records than it last wrote, or altered ones.
    stale_records: f64,
    /// A hostile host removes another from the store (per operator step).
    removal: f64,
}

/// Older record sets a host keeps for replay.
const OLD_RECORD_SETS_MAX: usize = 8;

pub(crate) struct World {
    pub(crate) seed: u64,
    options: Options,
    rng: ChaCha8Rng,
    manufacturer: Manufacturer,
    policy: Policy,
    pub(crate) app: App,
    pub(crate) hosts: Vec<Host>,
    /// The highest applied index any member has reached, and what it applied there (the
    /// ledger's history only moves forward along it).
    pub(crate) best_applied: u64,
    /// A digest of the replicated state at each applied index some member reported (the
    /// last [`DIGESTS_MAX`]): every member must agree on it.
    pub(crate) digests: BTreeMap<u64, (usize, [u8; 32])>,
    /// Each host's applied index at the last check.
    pub(crate) applied: Vec<u64>,
    pub(crate) now: u64,
    pub(crate) step: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    links: BTreeMap<u64, Link>,
    next_link: u64,
    /// Host pairs (lower index first) that cannot reach each other.
    cut: BTreeSet<(usize, usize)>,
    /// Hosts that cannot reach the store.
    store_cut: BTreeSet<usize>,
    faults: Faults,
    chaos: bool,
    pub(crate) enclaves: BTreeMap<EnclaveId, Tracked>,
    calls: BTreeMap<(usize, u64, CallId), (EnclaveId, CallKind)>,
    /// Outgoing migrations the operator started and has not heard the end of.
    migrating: BTreeMap<(usize, u64, MigrationId), EnclaveId>,
    /// Byte strings that must never appear in a frame, a store write or a blob.
    pub(crate) secrets: Vec<[u8; 32]>,
    /// The ledger as last checked: epochs and durable state must never go back.
    pub(crate) seen: BTreeMap<EnclaveId, (u64, godwit_proto::DurableState)>,
    pub(crate) summary: Summary,
    trace: VecDeque<String>,
    /// Each enclave's state at each SM, as last traced.
    pub(crate) states: BTreeMap<(usize, EnclaveId), EnclaveState>,
    /// Hosts whose daemon is the adversary's (at most a minority); the others are honest.
    pub(crate) hostile: BTreeSet<usize>,
    /// Hosts a hostile host removed from the store, to be added back after the chaos.
    removed: BTreeSet<usize>,
    /// When removed hosts are next asked back (virtual time).
    readmit_at: u64,
    /// What the SMs logged since the last step, when the run scans its logs.
    pub(crate) log_sink: Option<Arc<std::sync::Mutex<Vec<u8>>>>,
}

/// Where the SMs' log lines go while a run scans them.
#[derive(Clone)]
struct LogSink(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn conn_of(e: &End) -> ConnId {
    e.2
}

impl World {
    pub(crate) fn run(seed: u64, options: &Options) -> Result<Summary, Box<Violation>> {
        if let Some(plant) = options.plant {
            plant.set(true);
        }
        // The SMs' log lines (debug and up) go to a buffer scanned after every step.
        let sink = Arc::new(std::sync::Mutex::new(Vec::new()));
        let _logs = options.scan_logs.then(|| {
            use tracing_subscriber::util::SubscriberInitExt;
            let writer = LogSink(Arc::clone(&sink));
            tracing_subscriber::fmt()
                .with_max_level(tracing_subscriber::filter::LevelFilter::DEBUG)
                .with_ansi(false)
                .without_time()
                .with_writer(move || writer.clone())
                .finish()
                .set_default()
        });
        let mut world = Self::new(seed, options.clone());
        if options.scan_logs {
            world.log_sink = Some(sink);
        }
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| world.main()));
        for plant in Plant::ALL {
            plant.set(false);
        }
        let what = match result {
            Ok(Ok(())) => return Ok(world.summary.clone()),
            Ok(Err(what)) => what,
            Err(panic) => format!(
                "panic: {}",
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "(no message)".into())
            ),
        };
        Err(Box::new(Violation {
            seed,
            step: world.step,
            at_ms: world.now as f64 / MS as f64,
            what,
            trace: world.trace.iter().cloned().collect(),
            command: world.options.command(seed),
        }))
    }

    fn new(seed: u64, options: Options) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = options
            .hosts
            .unwrap_or_else(|| rng.random_range(3..=7))
            .clamp(1, 16);
        let mut mseed = [0u8; 32];
        rng.fill_bytes(&mut mseed);
        let manufacturer = Manufacturer::from_seed(mseed);
        let policy = Policy {
            roots: vec![manufacturer.root()],
            allowed_sm: vec![sm_measurement()],
            allowed_hosts: None,
        };
        // Some seeds are calm, some stormy.
        let storm: f64 = rng.random_range(0.0..1.0);
        let faults = Faults {
            drop: storm * 0.004,
            duplicate: storm * 0.002,
            reorder: storm * 0.002,
            corrupt: storm * 0.002,
            reset: storm * 0.002,
            crash: storm * 0.03,
            partition: storm * 0.03,
            rollback: storm * 0.3,
            stale_records: storm * 0.3,
            removal: rng.random_range(0.0..0.08),
        };
        // Per seed, up to a minority of the hosts run the adversary's daemon.
        let mut hostile = BTreeSet::new();
        let most = (n - 1) / 2;
        if most > 0 && rng.random_bool(0.8) {
            let k = rng.random_range(1..=most);
            while hostile.len() < k {
                hostile.insert(rng.random_range(0..n));
            }
        }
        let app = App::load();
        let mut w = Self {
            seed,
            options,
            rng,
            manufacturer,
            policy,
            app,
            hosts: Vec::new(),
            best_applied: 0,
            digests: BTreeMap::new(),
            applied: vec![0; n],
            now: 0,
            step: 0,
            seq: 0,
            queue: BTreeMap::new(),
            links: BTreeMap::new(),
            next_link: 0,
            cut: BTreeSet::new(),
            store_cut: BTreeSet::new(),
            faults,
            chaos: true,
            enclaves: BTreeMap::new(),
            calls: BTreeMap::new(),
            migrating: BTreeMap::new(),
            secrets: Vec::new(),
            seen: BTreeMap::new(),
            summary: Summary {
                hosts: n,
                ..Summary::default()
            },
            trace: VecDeque::new(),
            states: BTreeMap::new(),
            hostile,
            removed: BTreeSet::new(),
            readmit_at: 0,
            log_sink: None,
        };
        for i in 0..n {
            let id = HostId::new(format!("h{i}")).expect("valid host name");
            let mut secret = [0u8; 32];
            w.rng.fill_bytes(&mut secret);
            let identity = w
                .manufacturer
                .provision_from_secret(id.clone(), secret.into());
            w.hosts.push(Host {
                id,
                identity,
                disk: Arc::default(),
                sm: None,
                hw: None,
                clock: None,
                nv: NvCounter::volatile(),
                records: Vec::new(),
                unsynced: VecDeque::new(),
                old_records: VecDeque::new(),
                rejoining: false,
                boot: 0,
                count: 0,
                rate: 1.0,
                owed: 0.0,
                lateness: 0,
                wake: None,
                overheard: VecDeque::new(),
                withhold_until: 0,
                lied: false,
            });
        }
        if !w.hostile.is_empty() {
            let names: Vec<String> = w.hostile.iter().map(|&i| format!("h{i}")).collect();
            w.note(format!("hostile daemons on {names:?}"));
        }
        w.summary.hostile = w.hostile.len();
        for i in 0..n {
            w.boot_host(i, false);
            // The host's sealing key for the app must never leave its SM.
            if let Some(hw) = &w.hosts[i].hw {
                let key = hw.sealing_key(&w.app.measurement);
                w.secrets.push(*key.as_bytes());
            }
        }
        w
    }

    fn main(&mut self) -> Result<(), String> {
        let chaos_end = self.options.chaos_ms * MS;
        self.schedule(MS, Ev::Operator);
        self.schedule(chaos_end, Ev::Heal);
        let end = chaos_end + self.options.heal_ms * MS;
        while self.now < end {
            self.drain_actions()?;
            if !self.chaos {
                self.restart_refused_boots();
                self.readmit_removed();
                if self.quiescent() {
                    break;
                }
            }
            self.next_step(end)?;
            self.step += 1;
            self.summary.steps = self.step;
            self.check_step()?;
        }
        self.drain_actions()?;
        self.finish()
    }

    pub(crate) fn note(&mut self, line: String) {
        if self.trace.len() == TRACE_LINES {
            self.trace.pop_front();
        }
        let line = format!("[{:>10.3} ms] {line}", self.now as f64 / MS as f64);
        if self.options.verbose {
            #[allow(clippy::print_stderr)] // asked for with --verbose
            {
                eprintln!("{line}");
            }
        }
        self.trace.push_back(line);
    }

    fn schedule(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((at, self.seq), ev);
    }

    fn latency(&mut self) -> u64 {
        let base = self.rng.random_range(50_000..2 * MS);
        if self.chaos && self.rng.random_bool(0.01) {
            base + self.rng.random_range(0..300 * MS)
        } else {
            base
        }
    }

    /// How long a sync of the host's disk takes.
    fn disk_latency(&mut self) -> u64 {
        let base = self.rng.random_range(20_000..MS);
        if self.chaos && self.rng.random_bool(0.01) {
            base + self.rng.random_range(0..50 * MS)
        } else {
            base
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        self.chaos && p > 0.0 && self.rng.random_bool(p.min(1.0))
    }

    // ---- hosts -------------------------------------------------------------------------

    /// Boots host `i`'s component and SM; with `rollback`, the lying host hands the
    /// component a boot count it used before.
    fn boot_host(&mut self, i: usize, rollback: bool) {
        let boot = self.hosts[i].boot + 1;
        let count = if rollback {
            self.rng.random_range(1..=self.hosts[i].count.max(1))
        } else {
            self.hosts[i].count + 1
        };
        self.hosts[i].count = self.hosts[i].count.max(count);
        let hw_seed = self.seed ^ ((i as u64) << 48) ^ (boot << 32) ^ 0x9e37_79b9;
        let (hw, clock) = SimHardware::booted(
            self.hosts[i].identity.clone(),
            sm_measurement(),
            hw_seed,
            count,
        );
        let hw = Arc::new(hw.with_nv_counter(self.hosts[i].nv.clone()));
        let config = MonitorConfig {
            policy: self.policy.clone(),
            timeouts: TimeoutConfig::default(),
            memory_budget_bytes: 64 << 20,
            store: MemberConfig {
                founders: self.hosts.iter().map(|h| h.id.clone()).collect(),
                ..MemberConfig::default()
            },
        };
        let disk = Arc::clone(&self.hosts[i].disk);
        let records = self.records_to_hand(i);
        // Invariant: the wasm runtime starts (it did for every earlier boot).
        let (sm, opened) =
            Monitor::new(Arc::clone(&hw) as Arc<dyn Hardware>, disk, config, &records)
                .expect("the SM starts");
        if let Opened::Refused(why) = &opened {
            // The host sets the refused records aside; the member starts over empty.
            let id = self.hosts[i].id.clone();
            self.note(format!("{id}'s SM refuses its store records: {why}"));
            self.hosts[i].records.clear();
            self.hosts[i].rejoining = true;
        }
        let rate = self.rng.random_range(0.98..1.02);
        let lateness = self.rng.random_range(0..20 * MS);
        let h = &mut self.hosts[i];
        h.sm = Some(sm);
        h.hw = Some(hw);
        h.clock = Some(clock);
        h.boot = boot;
        h.rate = rate;
        h.owed = 0.0;
        h.lateness = lateness;
        h.lied = false;
        let id = h.id.clone();
        self.summary.rollbacks += u64::from(rollback);
        let lie = if rollback { ", rolled back" } else { "" };
        self.note(format!(
            "{id} boots (boot {boot}, component count {count}{lie}, clock rate {rate:.4})"
        ));
    }

    /// The store records host `i` hands its SM at boot: the durable ones; or, when it
    /// lies, an older set, a prefix, or one with a byte altered.
    fn records_to_hand(&mut self, i: usize) -> Vec<Vec<u8>> {
        let records = self.hosts[i].records.clone();
        if records.is_empty()
            || !self.hostile.contains(&i)
            || !self.may_lose_records(Some(i), None)
            || !self.chance(self.faults.stale_records)
        {
            return records;
        }
        let id = self.hosts[i].id.clone();
        self.summary.stale_records += 1;
        match self.rng.random_range(0..4) {
            0 if !self.hosts[i].old_records.is_empty() => {
                let k = self.rng.random_range(0..self.hosts[i].old_records.len());
                self.note(format!(
                    "{id}'s disk hands back an older set of store records"
                ));
                self.hosts[i].old_records[k].clone()
            }
            1 => {
                let keep = self.rng.random_range(0..records.len());
                self.note(format!(
                    "{id}'s disk hands back {keep} of its {} store records",
                    records.len()
                ));
                records[..keep].to_vec()
            }
            2 => {
                let mut records = records;
                let r = self.rng.random_range(0..records.len());
                if !records[r].is_empty() {
                    let at = self.rng.random_range(0..records[r].len());
                    records[r][at] ^= 1 << self.rng.random_range(0..8);
                }
                self.note(format!("{id}'s disk alters store record {r}"));
                records
            }
            _ => {
                self.note(format!("{id}'s disk hands back no store records"));
                Vec::new()
            }
        }
    }

    /// After the chaos, the host stops lying: a component whose boot the store refused
    /// (its count went back) is restarted with a true count.
    fn restart_refused_boots(&mut self) {
        for i in 0..self.hosts.len() {
            if self.hosts[i].sm.as_ref().is_some_and(Monitor::boot_refused) {
                self.crash(i);
            }
        }
    }

    fn crash(&mut self, i: usize) {
        if self.hosts[i].sm.is_none() {
            return;
        }
        self.summary.crashes += 1;
        self.hosts[i].sm = None;
        self.hosts[i].hw = None;
        self.hosts[i].clock = None;
        // Records written but not synced: the disk kept some prefix of them, or none.
        let unsynced: Vec<StoreWrite> = self.hosts[i].unsynced.drain(..).collect();
        let kept = self.rng.random_range(0..=unsynced.len());
        for w in unsynced.into_iter().take(kept) {
            self.keep_record(i, w);
        }
        let dead: Vec<u64> = self
            .links
            .iter()
            .filter(|(_, l)| l.ends.iter().any(|e| e.0 == i))
            .map(|(&k, _)| k)
            .collect();
        for k in dead {
            if let Some(l) = self.links.remove(&k) {
                let other = if l.ends[0].0 == i {
                    l.ends[1]
                } else {
                    l.ends[0]
                };
                let at = self.now + self.latency();
                self.schedule(at, Ev::Reset { at: other });
            }
        }
        self.calls.retain(|(h, ..), _| *h != i);
        self.migrating.retain(|(h, ..), _| *h != i);
        let down = self.rng.random_range(0..500 * MS);
        self.schedule(self.now + down, Ev::HostUp { host: i });
        let id = self.hosts[i].id.clone();
        self.note(format!("{id} crashes; back in {} ms", down / MS));
    }

    fn advance(&mut self, to: u64) {
        let dt = to.saturating_sub(self.now);
        self.now = to;
        for h in &mut self.hosts {
            if let Some(clock) = &h.clock {
                h.owed += dt as f64 * h.rate;
                let whole = h.owed.floor();
                h.owed -= whole;
                clock.advance(Duration::from_nanos(whole as u64));
            }
        }
    }

    /// When host `i`'s SM next needs its timer, in virtual time (with the host's lateness).
    fn timer_due(&mut self, i: usize) -> Option<u64> {
        let now = self.now;
        let h = &mut self.hosts[i];
        let sm = h.sm.as_ref()?;
        let at = sm.poll_timeout()?;
        if let Some((seen, wake)) = h.wake
            && seen == at
        {
            return Some(wake.max(h.withhold_until));
        }
        let wait = sm.timeout_in()?;
        let virt = (wait.as_nanos() as f64 / h.rate).ceil() as u64;
        let wake = now + virt + h.lateness;
        h.wake = Some((at, wake));
        Some(wake.max(h.withhold_until))
    }

    fn next_step(&mut self, end: u64) -> Result<(), String> {
        let queued = self.queue.keys().next().map(|&(t, _)| t);
        let timer = (0..self.hosts.len())
            .filter_map(|i| self.timer_due(i).map(|t| (t, i)))
            .collect::<Vec<_>>()
            .into_iter()
            .min();
        match (queued, timer) {
            (Some(q), Some((t, i))) if t < q => self.fire_timer(t, i),
            (None, Some((t, i))) => self.fire_timer(t, i),
            (Some(_), _) => {
                let ((at, _), ev) = self.queue.pop_first().expect("checked non-empty");
                self.advance(at);
                self.handle(ev)
            }
            (None, None) => {
                self.advance(end);
                Ok(())
            }
        }
    }

    fn fire_timer(&mut self, at: u64, i: usize) -> Result<(), String> {
        self.advance(at.max(self.now));
        let Some(sm) = self.hosts[i].sm.as_mut() else {
            return Ok(());
        };
        sm.handle_timeout();
        self.check_waits(i)
    }

    // ---- events ------------------------------------------------------------------------

    fn handle(&mut self, ev: Ev) -> Result<(), String> {
        match ev {
            Ev::Frame {
                link,
                to,
                mut frame,
            } => {
                let alive = self.links.contains_key(&link) && !self.is_cut_link(link);
                if alive && self.is_current(&to) {
                    self.overhear(to.0, &frame);
                    let sm = self.hosts[to.0].sm.as_mut().expect("current end is up");
                    sm.handle_frame(conn_of(&to), &mut frame);
                }
            }
            Ev::Dialled { from, peer, store } => {
                if !self.is_current(&from) {
                    return Ok(());
                }
                let reachable = self.hosts[peer].sm.is_some()
                    && !self.is_cut(from.0, peer)
                    && !(store && self.is_store_cut(from.0, peer));
                if reachable {
                    let theirs = self.hosts[peer].sm.as_mut().expect("up").accept();
                    let other = (peer, self.hosts[peer].boot, theirs);
                    self.next_link += 1;
                    self.links.insert(
                        self.next_link,
                        Link {
                            ends: [from, other],
                            store,
                            last: [0, 0],
                        },
                    );
                    let sm = self.hosts[from.0].sm.as_mut().expect("current");
                    sm.connected(conn_of(&from));
                } else {
                    let sm = self.hosts[from.0].sm.as_mut().expect("current");
                    sm.dial_failed(conn_of(&from), "refused by the network".to_owned());
                }
            }
            Ev::Reset { at } => {
                if self.is_current(&at) {
                    self.links.retain(|_, l| !l.ends.contains(&at));
                    let sm = self.hosts[at.0].sm.as_mut().expect("current");
                    sm.disconnected(conn_of(&at));
                }
            }
            Ev::Synced { host, boot, upto } => {
                if self.hosts[host].boot == boot && self.hosts[host].sm.is_some() {
                    while self.hosts[host]
                        .unsynced
                        .front()
                        .is_some_and(|w| w.number <= upto)
                    {
                        let w = self.hosts[host].unsynced.pop_front().expect("checked");
                        self.keep_record(host, w);
                    }
                    if let Some(sm) = self.hosts[host].sm.as_mut() {
                        sm.persisted(upto);
                    }
                }
            }
            Ev::HostUp { host } => {
                if self.hosts[host].sm.is_none() {
                    let rollback =
                        self.hostile.contains(&host) && self.chance(self.faults.rollback);
                    self.boot_host(host, rollback);
                }
            }
            Ev::Operator => {
                if self.chaos {
                    self.operate()?;
                    let next = self.now + self.rng.random_range(2 * MS..25 * MS);
                    self.schedule(next, Ev::Operator);
                }
            }
            Ev::Heal => self.heal(),
        }
        Ok(())
    }

    fn is_current(&self, e: &End) -> bool {
        self.hosts[e.0].boot == e.1 && self.hosts[e.0].sm.is_some()
    }

    fn is_cut(&self, a: usize, b: usize) -> bool {
        self.cut.contains(&(a.min(b), a.max(b)))
    }

    /// Whether the store's traffic between `a` and `b` is cut (one of them is cut off
    /// from the store).
    fn is_store_cut(&self, a: usize, b: usize) -> bool {
        self.store_cut.contains(&a) || self.store_cut.contains(&b)
    }

    fn is_cut_link(&self, link: u64) -> bool {
        self.links.get(&link).is_some_and(|l| {
            let (a, b) = (l.ends[0].0, l.ends[1].0);
            self.is_cut(a, b) || (l.store && self.is_store_cut(a, b))
        })
    }

    /// Record `w` reached host `i`'s disk: after a base, the records before it go (the
    /// host keeps them for replay).
    fn keep_record(&mut self, i: usize, w: StoreWrite) {
        let h = &mut self.hosts[i];
        if w.base {
            let old = std::mem::take(&mut h.records);
            if !old.is_empty() {
                if h.old_records.len() == OLD_RECORD_SETS_MAX {
                    h.old_records.pop_front();
                }
                h.old_records.push_back(old);
            }
        }
        h.records.push(w.bytes);
    }

    fn drain_actions(&mut self) -> Result<(), String> {
        for _ in 0..100_000 {
            let mut moved = false;
            for i in 0..self.hosts.len() {
                while let Some(action) = self.hosts[i].sm.as_mut().and_then(Monitor::poll_action) {
                    moved = true;
                    self.act(i, action)?;
                }
            }
            if !moved {
                return Ok(());
            }
        }
        Err("the SMs never stop asking for actions".into())
    }

    fn act(&mut self, i: usize, action: Action) -> Result<(), String> {
        let boot = self.hosts[i].boot;
        match action {
            Action::Connect {
                conn, peer, store, ..
            } => {
                let Some(p) = self.hosts.iter().position(|h| h.id == peer) else {
                    return Err(format!("{} dials unknown host {peer}", self.hosts[i].id));
                };
                let at = self.now + self.latency();
                self.schedule(
                    at,
                    Ev::Dialled {
                        from: (i, boot, conn),
                        peer: p,
                        store,
                    },
                );
            }
            Action::Wake { conn } => self.pump(i, conn)?,
            Action::Close { conn } => self.close_link((i, boot, conn)),
            Action::Persist(w) => {
                self.summary.scanned += 1;
                self.scan(&w.bytes, "a store record")?;
                let upto = w.number;
                self.hosts[i].unsynced.push_back(w);
                self.lie_durable(i, upto);
                let at = self.now + self.disk_latency();
                self.schedule(
                    at,
                    Ev::Synced {
                        host: i,
                        boot,
                        upto,
                    },
                );
            }
            Action::Event(e) => self.on_event(i, e)?,
            other => return Err(format!("unexpected action {other:?}")),
        }
        Ok(())
    }

    /// The connection at `end` closes: its link goes, and the other end sees it reset.
    fn close_link(&mut self, end: End) {
        let found = self
            .links
            .iter()
            .find(|(_, l)| l.ends.contains(&end))
            .map(|(&k, _)| k);
        if let Some(l) = found.and_then(|k| self.links.remove(&k)) {
            let other = if l.ends[0] == end {
                l.ends[1]
            } else {
                l.ends[0]
            };
            let at = self.now + self.latency();
            self.schedule(at, Ev::Reset { at: other });
        }
    }

    /// Takes every frame `conn` has to send and puts it on the (faulty) wire.
    fn pump(&mut self, i: usize, conn: ConnId) -> Result<(), String> {
        let end = (i, self.hosts[i].boot, conn);
        let Some((&link, l)) = self.links.iter().find(|(_, l)| l.ends.contains(&end)) else {
            // Not connected (yet or any more): the frames wait in the SM.
            return Ok(());
        };
        let dir = usize::from(l.ends[1] == end);
        let to = l.ends[1 - dir];
        while let Some(frame) = self.hosts[i]
            .sm
            .as_mut()
            .and_then(|sm| sm.poll_transmit(conn))
        {
            self.summary.scanned += 1;
            self.scan(&frame, "a frame")?;
            self.overhear(i, &frame);
            if self.is_cut_link(link) || self.chance(self.faults.drop) {
                continue;
            }
            let mut frame = frame;
            if self.chance(self.faults.corrupt) && !frame.is_empty() {
                let at = self.rng.random_range(0..frame.len());
                frame[at] ^= 1 << self.rng.random_range(0..8);
            }
            let latency = self.latency();
            let reorder = self.chance(self.faults.reorder);
            let Some(l) = self.links.get_mut(&link) else {
                return Ok(());
            };
            let at = if reorder {
                self.now + latency
            } else {
                (self.now + latency).max(l.last[dir] + 1)
            };
            l.last[dir] = l.last[dir].max(at);
            if self.chance(self.faults.duplicate) {
                self.schedule(
                    at + 1,
                    Ev::Frame {
                        link,
                        to,
                        frame: frame.clone(),
                    },
                );
            }
            self.schedule(at, Ev::Frame { link, to, frame });
            if self.chance(self.faults.reset) {
                let at = self.now + self.latency();
                self.schedule(at, Ev::Reset { at: end });
                self.schedule(at, Ev::Reset { at: to });
            }
        }
        Ok(())
    }

    fn on_event(&mut self, i: usize, e: Event) -> Result<(), String> {
        let host = self.hosts[i].id.clone();
        match e {
            Event::Registered { enclave } => {
                self.summary.enclaves += 1;
                self.note(format!("{enclave} registered on {host}"));
                let canary = self.enclaves.get(&enclave).map(|t| t.canary);
                if let Some(canary) = canary {
                    self.call(i, enclave, CallKind::Init, &canary)?;
                }
            }
            Event::RegistrationRefused { enclave, reason } => {
                self.note(format!("{enclave} refused on {host}: {reason}"));
            }
            Event::CallCompleted {
                call,
                enclave,
                result,
            } => {
                let key = (i, self.hosts[i].boot, call);
                if let Some((id, kind)) = self.calls.remove(&key) {
                    if id != enclave {
                        return Err(format!(
                            "call {call:?} on {host} completed for {enclave}, made for {id}"
                        ));
                    }
                    match result {
                        Ok(bytes) => self.released(i, enclave, kind, &bytes)?,
                        Err(godwit_monitor::CallError::Enclave(e)) => {
                            self.failed(i, enclave, kind, &e)?;
                        }
                        Err(_) => {}
                    }
                }
            }
            Event::MigrationFinished {
                migration,
                enclave,
                outcome,
            } => {
                self.migrating.remove(&(i, self.hosts[i].boot, migration));
                match &outcome {
                    Ok(r) => {
                        self.summary.migrations.1 += 1;
                        self.note(format!(
                            "{enclave}: {host} -> {} committed (epoch {})",
                            r.to, r.epoch
                        ));
                    }
                    Err(reason) => {
                        self.summary.migrations.2 += 1;
                        self.note(format!(
                            "{enclave}: migration from {host} aborted: {reason}"
                        ));
                    }
                }
            }
            Event::IncomingFinished { .. } | Event::PeerRefused { .. } => {}
            other => self.note(format!("{host}: {other:?}")),
        }
        Ok(())
    }

    // ---- the operator --------------------------------------------------------------------

    fn call(&mut self, i: usize, id: EnclaveId, kind: CallKind, arg: &[u8]) -> Result<(), String> {
        let f = match kind {
            CallKind::Init => "init",
            CallKind::Tick => "tick",
            CallKind::TickFail => "tick_fail",
            CallKind::Check => "check",
        };
        let Some(sm) = self.hosts[i].sm.as_mut() else {
            return Ok(());
        };
        match sm.call(id, f, arg) {
            Ok(CallOutcome::Done(bytes)) => self.released(i, id, kind, &bytes),
            Ok(CallOutcome::Pending(call)) => {
                self.calls.insert((i, self.hosts[i].boot, call), (id, kind));
                // A hostile host sees a result withheld (a durable change the store has
                // not recorded yet) and sometimes kills its SM at once.
                if self.hostile.contains(&i) && self.chance(self.faults.crash * 10.0) {
                    self.crash(i);
                }
                Ok(())
            }
            Err(MonitorError::Enclave(e)) => {
                self.failed(i, id, kind, &e)?;
                // A hostile host kills its SM right after an answer, too.
                if self.hostile.contains(&i) && self.chance(self.faults.crash * 10.0) {
                    self.crash(i);
                }
                Ok(())
            }
            Err(_) => Ok(()),
        }
    }

    /// A call's failure reached the client. A failed tick's status names the count it
    /// reached: a released value like any result.
    fn failed(
        &mut self,
        i: usize,
        id: EnclaveId,
        kind: CallKind,
        e: &godwit_enclave::EnclaveError,
    ) -> Result<(), String> {
        let godwit_enclave::EnclaveError::Failed { code } = e else {
            return Ok(());
        };
        if kind != CallKind::TickFail || *code > -1000 {
            return Ok(());
        }
        let n = u64::try_from(-1000 - *code).map_err(|_| format!("tick_fail status {code}"))?;
        self.check_release(i, id)?;
        let host = self.hosts[i].id.clone();
        let Some(t) = self.enclaves.get_mut(&id) else {
            return Ok(());
        };
        if n <= t.max_released {
            return Err(format!(
                "{id} on {host} released a failed tick at {n} after {}: a counter went back or two copies ran",
                t.max_released
            ));
        }
        t.max_released = n;
        self.summary.ticks += 1;
        Ok(())
    }

    /// The host where the SM says `id` runs.
    fn running_at(&self, id: EnclaveId) -> Option<usize> {
        self.hosts.iter().position(|h| {
            h.sm.as_ref()
                .and_then(|sm| sm.info(id).ok())
                .is_some_and(|info| info.state == EnclaveState::Running)
        })
    }

    fn up_hosts(&self) -> Vec<usize> {
        (0..self.hosts.len())
            .filter(|&i| self.hosts[i].sm.is_some())
            .collect()
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        if items.is_empty() {
            None
        } else {
            Some(items[self.rng.random_range(0..items.len())])
        }
    }

    fn operate(&mut self) -> Result<(), String> {
        let ids: Vec<EnclaveId> = self.enclaves.keys().copied().collect();
        let up = self.up_hosts();
        let roll = self.rng.random_range(0..112);
        if !self.removed.is_empty() {
            self.adopt_elsewhere(false)?;
        }
        if self.chance(self.faults.removal) {
            let hostile: Vec<usize> = self
                .hostile
                .iter()
                .copied()
                .filter(|&i| self.hosts[i].sm.is_some())
                .collect();
            if let Some(i) = self.pick(&hostile) {
                self.remove_other(i);
            }
        }
        match roll {
            0..=9 => {
                if let Some(i) = self.pick(&up) {
                    self.deploy(i)?;
                }
            }
            10..=39 => {
                if let Some(id) = self.pick(&ids)
                    && let Some(i) = self.running_at(id)
                    && self.enclaves.get(&id).is_some_and(|t| t.initialized)
                {
                    let kind = if roll < 35 {
                        CallKind::Tick
                    } else {
                        CallKind::TickFail
                    };
                    self.call(i, id, kind, b"")?;
                }
            }
            40..=49 => {
                if let Some(id) = self.pick(&ids)
                    && let Some(i) = self.running_at(id)
                    && self.enclaves.get(&id).is_some_and(|t| t.initialized)
                {
                    self.call(i, id, CallKind::Check, b"")?;
                }
            }
            50..=74 => {
                if let Some(id) = self.pick(&ids)
                    && let Some(i) = self.running_at(id)
                {
                    let others: Vec<usize> = (0..self.hosts.len()).filter(|&j| j != i).collect();
                    if let Some(j) = self.pick(&others) {
                        self.migrate(i, id, j);
                    }
                }
            }
            75..=79 => {
                if let Some(i) = self.pick(&up) {
                    self.drain(i);
                }
            }
            80..=83 => {
                let inflight: Vec<(usize, u64, MigrationId)> =
                    self.migrating.keys().copied().collect();
                if let Some((i, boot, m)) = self.pick(&inflight)
                    && self.hosts[i].boot == boot
                    && let Some(sm) = self.hosts[i].sm.as_mut()
                {
                    let _ = sm.cancel_migration(m);
                    self.note(format!("operator cancels {m} on {}", self.hosts[i].id));
                }
            }
            84..=85 => self.adopt_lost()?,
            86..=89 => self.replay_blob()?,
            90..=91 => {
                // A hostile host calls its SM's timer for no reason: trusted time decides,
                // not it.
                let hostile: Vec<usize> = up
                    .iter()
                    .copied()
                    .filter(|i| self.hostile.contains(i))
                    .collect();
                if let Some(i) = self.pick(&hostile) {
                    if let Some(sm) = self.hosts[i].sm.as_mut() {
                        sm.handle_timeout();
                    }
                    self.check_waits(i)?;
                }
            }
            92..=95 => {
                // A host crashes; a hostile one kills its SM whenever it likes, half the
                // time one that withholds results (it sealed what the store has not
                // recorded yet).
                let withholding: Vec<usize> = self
                    .calls
                    .keys()
                    .map(|(h, ..)| *h)
                    .filter(|h| up.contains(h) && self.hostile.contains(h))
                    .collect();
                let victim = if !withholding.is_empty() && self.rng.random_bool(0.5) {
                    self.pick(&withholding)
                } else {
                    self.pick(&up)
                };
                if self.chance(self.faults.crash * 20.0)
                    && let Some(i) = victim
                {
                    self.crash(i);
                }
            }
            100..=111 => self.hostile_act()?,
            _ => {
                if self.chance(self.faults.partition * 20.0) {
                    self.partition();
                } else if !self.cut.is_empty() || !self.store_cut.is_empty() {
                    self.cut.clear();
                    self.store_cut.clear();
                    self.note("partitions heal".into());
                }
            }
        }
        Ok(())
    }

    fn deploy(&mut self, i: usize) -> Result<(), String> {
        let Some(sm) = self.hosts[i].sm.as_mut() else {
            return Ok(());
        };
        match sm.create(&self.app.module, self.app.manifest.clone()) {
            Ok(id) => {
                let mut canary = [0u8; 32];
                self.rng.fill_bytes(&mut canary);
                self.secrets.push(canary);
                self.enclaves.insert(
                    id,
                    Tracked {
                        canary,
                        initialized: false,
                        max_released: 0,
                        lives: BTreeMap::new(),
                    },
                );
                let host = self.hosts[i].id.clone();
                self.note(format!("operator deploys {id} on {host}"));
            }
            Err(MonitorError::InstanceLimit { .. }) => self.summary.limit_refusals += 1,
            Err(MonitorError::StaleBoot) => {}
            Err(e) => return Err(format!("deploy on a live host failed: {e}")),
        }
        Ok(())
    }

    fn migrate(&mut self, i: usize, id: EnclaveId, j: usize) {
        let to = self.hosts[j].id.clone();
        let from = self.hosts[i].id.clone();
        let Some(sm) = self.hosts[i].sm.as_mut() else {
            return;
        };
        if let Ok(m) = sm.migrate(id, to.clone()) {
            self.summary.migrations.0 += 1;
            self.migrating.insert((i, self.hosts[i].boot, m), id);
            self.note(format!("operator migrates {id}: {from} -> {to} ({m})"));
        }
    }

    fn drain(&mut self, i: usize) {
        let Some(sm) = self.hosts[i].sm.as_ref() else {
            return;
        };
        let running: Vec<EnclaveId> = sm
            .list()
            .into_iter()
            .filter(|e| e.state == EnclaveState::Running)
            .map(|e| e.id)
            .collect();
        let others: Vec<usize> = (0..self.hosts.len()).filter(|&j| j != i).collect();
        let host = self.hosts[i].id.clone();
        self.note(format!(
            "operator drains {host} ({} enclaves)",
            running.len()
        ));
        for id in running {
            if let Some(j) = self.pick(&others) {
                self.migrate(i, id, j);
            }
        }
    }

    /// Starts a fresh instance of each enclave recorded lost, on the host holding its
    /// sealed data, if that host is up.
    fn adopt_lost(&mut self) -> Result<(), String> {
        let Some(ledger) = self.best_ledger() else {
            return Ok(());
        };
        let lost: Vec<(EnclaveId, HostId)> = ledger
            .records()
            .filter(|r| r.state == godwit_proto::RecordState::Lost)
            .map(|r| (r.id, r.owner.clone()))
            .collect();
        for (id, owner) in lost {
            let Some(i) = self.hosts.iter().position(|h| h.id == owner) else {
                continue;
            };
            let Some(sm) = self.hosts[i].sm.as_mut() else {
                continue;
            };
            if sm.info(id).is_ok() {
                continue;
            }
            match sm.adopt(id, &self.app.module, self.app.manifest.clone()) {
                Ok(()) => self.note(format!("operator adopts lost {id} on {owner}")),
                Err(e) => self.note(format!("adoption of {id} on {owner} refused: {e}")),
            }
        }
        Ok(())
    }

    /// The lying host puts back an older blob it kept, in place of the one now on its disk
    /// under the same name (a never-recorded blob of a lost incarnation among them).
    /// The operator then asks the enclave to check its sealed state.
    fn replay_blob(&mut self) -> Result<(), String> {
        use godwit_monitor::BlobStore;
        let hostile: Vec<usize> = self.hostile.iter().copied().collect();
        let Some(i) = self.pick(&hostile) else {
            return Ok(());
        };
        let disk = Arc::clone(&self.hosts[i].disk);
        let current: BTreeSet<(EnclaveId, String)> = disk.keys().into_iter().collect();
        let older: Vec<(EnclaveId, String, Vec<u8>)> = disk
            .archived()
            .into_iter()
            .filter(|(e, name, blob)| {
                current.contains(&(*e, name.clone()))
                    && disk.get(*e, name).ok().flatten().as_ref() != Some(blob)
            })
            .collect();
        // Headers are in the clear: the host prefers a blob of the same version sealed by
        // another incarnation (a lost one's, never recorded).
        let incarnation = |blob: &[u8]| {
            godwit_monitor::seal::header(blob)
                .ok()
                .map(|(h, _)| h.incarnation)
        };
        let other_life: Vec<(EnclaveId, String, Vec<u8>)> = older
            .iter()
            .filter(|(e, name, blob)| {
                let now = disk.get(*e, name).ok().flatten();
                now.is_some_and(|now| incarnation(&now) != incarnation(blob))
            })
            .cloned()
            .collect();
        let older = if other_life.is_empty() {
            older
        } else {
            other_life
        };
        if older.is_empty() {
            return Ok(());
        }
        let (enclave, name, blob) = older[self.rng.random_range(0..older.len())].clone();
        if disk.put(enclave, &name, &blob).is_err() {
            return Ok(());
        }
        self.summary.replays += 1;
        let host = self.hosts[i].id.clone();
        self.note(format!(
            "{host}'s disk hands back an older {enclave}/{name}"
        ));
        if self.running_at(enclave) == Some(i)
            && self.enclaves.get(&enclave).is_some_and(|t| t.initialized)
        {
            self.call(i, enclave, CallKind::Check, b"")?;
        }
        Ok(())
    }

    fn partition(&mut self) {
        let n = self.hosts.len();
        let a = self.rng.random_range(0..n);
        let b = self.rng.random_range(0..n);
        if a != b {
            self.cut.insert((a.min(b), a.max(b)));
        }
        if self.rng.random_bool(0.3) {
            let c = self.rng.random_range(0..n);
            self.store_cut.insert(c);
        }
        let what = format!(
            "partition: links {:?}, cut from the store {:?}",
            self.cut, self.store_cut
        );
        self.note(what);
    }

    fn heal(&mut self) {
        self.chaos = false;
        self.cut.clear();
        self.store_cut.clear();
        for h in &mut self.hosts {
            h.withhold_until = 0;
        }
        self.note("chaos ends: partitions heal, faults stop, hosts come back".into());
    }

    // ---- results -------------------------------------------------------------------------

    fn released(
        &mut self,
        i: usize,
        id: EnclaveId,
        kind: CallKind,
        bytes: &[u8],
    ) -> Result<(), String> {
        self.check_release(i, id)?;
        let host = self.hosts[i].id.clone();
        let Some(t) = self.enclaves.get_mut(&id) else {
            return Ok(());
        };
        match kind {
            CallKind::Init => t.initialized = true,
            CallKind::Tick | CallKind::TickFail => {
                let (n, life) = bytes
                    .split_first_chunk::<8>()
                    .and_then(|(n, life)| {
                        Some((u64::from_le_bytes(*n), <[u8; 8]>::try_from(life).ok()?))
                    })
                    .ok_or_else(|| format!("tick of {id} returned {} bytes", bytes.len()))?;
                if n <= t.max_released {
                    return Err(format!(
                        "{id} on {host} released tick {n} after {}: a counter went back or two copies ran",
                        t.max_released
                    ));
                }
                t.max_released = n;
                t.lives.insert(n, life);
                self.summary.ticks += 1;
            }
            CallKind::Check => {
                let (counter, sealed) = bytes.split_at(8.min(bytes.len()));
                let counter = u64::from_le_bytes(
                    counter
                        .try_into()
                        .map_err(|_| format!("check of {id} returned {} bytes", bytes.len()))?,
                );
                if counter < t.max_released {
                    return Err(format!(
                        "{id} on {host}: counter {counter} is behind the released tick {}",
                        t.max_released
                    ));
                }
                match sealed.len() {
                    0 if t.max_released == 0 => {}
                    48 => {
                        let v = u64::from_le_bytes(sealed[..8].try_into().expect("8 bytes"));
                        if v < t.max_released || v > counter + 1 {
                            return Err(format!(
                                "{id} on {host}: sealed value {v} against counter {counter} and released {}",
                                t.max_released
                            ));
                        }
                        if sealed[8..40] != t.canary {
                            return Err(format!("{id} on {host}: the sealed canary changed"));
                        }
                        // The sealed state of a released count is the one released with it,
                        // not another life's seal of the same count.
                        if let Some(life) = t.lives.get(&v)
                            && sealed[40..] != life[..]
                        {
                            return Err(format!(
                                "{id} on {host}: the sealed state of count {v} is not the one released (a blob of another life came back)"
                            ));
                        }
                    }
                    n => {
                        return Err(format!(
                            "{id} on {host}: {n} sealed bytes after released tick {}",
                            t.max_released
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Every host is up, its boot is in its own view of the ledger, every member applied
    /// the same entries, nothing migrates, no result is withheld.
    fn quiescent(&self) -> bool {
        let applied: BTreeSet<u64> = self
            .hosts
            .iter()
            .filter_map(|h| h.sm.as_ref().map(|sm| sm.store_digest().0))
            .collect();
        self.migrating.is_empty()
            && self.calls.is_empty()
            && !self.any_registering()
            && applied.len() == 1
            && self.hosts.iter().all(|h| {
                h.sm.as_ref().is_some_and(|sm| {
                    sm.migrations_in_flight() == (0, 0)
                        && sm.holds_lease()
                        && self.boot_recorded(h)
                        && sm.ledger().records().all(|r| {
                            !matches!(r.state, godwit_proto::RecordState::Migrating { .. })
                        })
                })
            })
    }

    /// Whether host `h`'s own view of the ledger records its current boot.
    fn boot_recorded(&self, h: &Host) -> bool {
        match (&h.sm, &h.hw) {
            (Some(sm), Some(hw)) => sm.ledger().boot_of(&h.id) == Some(&hw.boot_epoch().to_bytes()),
            _ => false,
        }
    }

    /// The ledger of the member that applied the most entries (every other member's is
    /// an earlier state of the same history), if any host is up.
    pub(crate) fn best_ledger(&self) -> Option<&Ledger> {
        self.hosts
            .iter()
            .filter_map(|h| h.sm.as_ref())
            .max_by_key(|sm| sm.store_digest().0)
            .map(Monitor::ledger)
    }

    /// The liveness phase's verdict, then adoption of what was lost and a last check of
    /// every enclave's state.
    fn finish(&mut self) -> Result<(), String> {
        if !self.quiescent() {
            let busy: Vec<String> = self
                .hosts
                .iter()
                .filter_map(|h| {
                    let (o, i) = h.sm.as_ref()?.migrations_in_flight();
                    (o + i > 0).then(|| format!("{}: {o} out, {i} in", h.id))
                })
                .collect();
            let waiting: Vec<String> = self
                .hosts
                .iter()
                .filter_map(|h| {
                    let Some(sm) = &h.sm else {
                        return Some(format!("{} is down", h.id));
                    };
                    let s = sm.store_status();
                    let store = format!(
                        "leader {:?}, term {}, applied {}, lease {}, rejoining {}, voters {:?}",
                        s.leader, s.term, s.applied, s.lease, s.rejoining, s.voters
                    );
                    if !self.boot_recorded(h) {
                        return Some(format!(
                            "{}'s boot is not in its ledger ({store}; {}; connections: {})",
                            h.id,
                            sm.store_debug(),
                            sm.connections_debug()
                        ));
                    }
                    if !sm.holds_lease() {
                        return Some(format!("{} holds no store lease ({store})", h.id));
                    }
                    let registering: Vec<String> = sm
                        .list()
                        .iter()
                        .filter(|e| e.state == EnclaveState::Registering)
                        .map(|e| e.id.to_string())
                        .collect();
                    (!registering.is_empty())
                        .then(|| format!("{} still registers {registering:?}", h.id))
                })
                .collect();
            let leaders: Vec<String> = self
                .hosts
                .iter()
                .filter_map(|h| h.sm.as_ref())
                .filter(|sm| sm.store_status().leader.as_ref() == Some(sm.host()))
                .map(Monitor::store_debug)
                .collect();
            return Err(format!(
                "not resolved {} ms after healing (leaders: {leaders:?}): {waiting:?}, {} migrations awaited by the operator, {} calls withheld, SMs busy: {busy:?}, ledger records migrating: {:?}",
                self.options.heal_ms,
                self.migrating.len(),
                self.calls.len(),
                self.best_ledger()
                    .into_iter()
                    .flat_map(Ledger::records)
                    .filter_map(|r| match &r.state {
                        godwit_proto::RecordState::Migrating { migration, to } => {
                            Some(format!("{} {} -> {to} ({migration})", r.id, r.owner))
                        }
                        _ => None,
                    })
                    .collect::<Vec<_>>()
            ));
        }
        // Every record running has exactly one live copy, at its owner.
        let records: Vec<(EnclaveId, HostId, godwit_proto::RecordState)> = self
            .best_ledger()
            .into_iter()
            .flat_map(Ledger::records)
            .map(|r| (r.id, r.owner.clone(), r.state.clone()))
            .collect();
        for (id, owner, state) in &records {
            let running: Vec<HostId> = self
                .hosts
                .iter()
                .filter(|h| {
                    h.sm.as_ref()
                        .and_then(|sm| sm.info(*id).ok())
                        .is_some_and(|i| i.state == EnclaveState::Running)
                })
                .map(|h| h.id.clone())
                .collect();
            match state {
                godwit_proto::RecordState::Running if running != [owner.clone()] => {
                    return Err(format!(
                        "{id} is recorded running at {owner} but runs at {running:?}"
                    ));
                }
                godwit_proto::RecordState::Lost if !running.is_empty() => {
                    return Err(format!("{id} is recorded lost but runs at {running:?}"));
                }
                _ => {}
            }
        }
        // What was lost is adopted from its sealed data, which must be intact.
        self.adopt_lost()?;
        let limit = self.now + 30_000 * MS;
        while self.now < limit && (!self.calls.is_empty() || self.any_registering()) {
            self.drain_actions()?;
            self.next_step(limit)?;
            self.step += 1;
            self.check_step()?;
        }
        self.drain_actions()?;
        let lost_before = records
            .iter()
            .filter(|(_, _, s)| *s == godwit_proto::RecordState::Lost)
            .count() as u64;
        let ids: Vec<EnclaveId> = self.enclaves.keys().copied().collect();
        for id in ids {
            if let Some(i) = self.running_at(id) {
                self.call(i, id, CallKind::Check, b"")?;
            }
        }
        let limit = self.now + 30_000 * MS;
        while self.now < limit && !self.calls.is_empty() {
            self.drain_actions()?;
            self.next_step(limit)?;
            self.step += 1;
            self.check_step()?;
        }
        self.summary.adopted = lost_before;
        self.scan_disks()?;
        Ok(())
    }

    fn any_registering(&self) -> bool {
        self.hosts.iter().any(|h| {
            h.sm.as_ref().is_some_and(|sm| {
                sm.list()
                    .iter()
                    .any(|e| e.state == EnclaveState::Registering)
            })
        })
    }
}
