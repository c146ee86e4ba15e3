//! The security monitor (SM): manages enclaves on one host and moves them to others.
//!
//! It creates enclaves after checking their manifest and the per-application instance
//! limit (claim 15), runs their ecalls, seals their data with rollback protection, keeps
//! their counters, attests peer SMs and holds the channels to them (claims 1, 11), and runs
//! the migration protocol (claims 2–7, 10) with the ledger kept by the store (claim 9).
//!
//! Contract (sans-IO): the SM opens no socket, file or thread and never reads the OS clock.
//! The host hands it requests, frames from peers and store replies; the SM answers with
//! [`Action`]s (dial, send, write to the store, events) and frames pulled with
//! [`Monitor::poll_transmit`]. It reads time and randomness only from its [`Hardware`], and
//! stores sealed blobs only through the host's [`BlobStore`], treating whatever comes back
//! as hostile. Keys and enclave plaintext never leave it: the host moves ciphertext only.
//!
//! Call order for the host: after every input call, drain [`Monitor::poll_action`]; for
//! each `Wake`, pull [`Monitor::poll_transmit`] until it returns `None`; sleep until
//! [`Monitor::poll_timeout`] and then call [`Monitor::handle_timeout`].

/// Whether the planted bug `$bug` (see `godwit_proto::planted`) is switched on; always
/// false in a build without the `planted-bugs` feature.
macro_rules! planted {
    ($bug:ident) => {{
        #[cfg(feature = "planted-bugs")]
        let on = godwit_proto::planted::$bug();
        #[cfg(not(feature = "planted-bugs"))]
        let on = false;
        on
    }};
}

mod durable;
mod host;
mod migrate;
mod modules;
mod net;
pub mod seal;
mod services;
mod store;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use godwit_attest::Policy;
use godwit_enclave::{Enclave, EnclaveError, LoadedModule, Runtime};
use godwit_hw::Hardware;
use godwit_proto::{AbortReason, LedgerOp, LedgerOutcome, MigrationId, StoreReply, TimeoutConfig};
use godwit_wire::{EnclaveId, HostId, Manifest, Measurement};

pub use durable::{CallError, CallId, CallOutcome, Ecall, EcallDone};
pub use godwit_store::{MemberConfig, MemberInfo, MembershipChange, Opened, StoreWrite};
pub use host::{BlobStore, HostError, MemoryBlobStore};
pub use net::{ConnId, FrameKind, RECORD_FRAME_BYTES_MAX, STORE_MESSAGE_BYTES_MAX};
pub use seal::SealError;
pub use services::{COUNTERS_MAX, InstanceServices, SLOTS_MAX, UNRECORDED_SEALS_MAX};
pub use store::{ADMISSION_WINDOW, StoreStatus};

/// How long the SM waits before asking the store again after it did not answer.
pub const STORE_RETRY: Duration = Duration::from_millis(200);

/// The version of the SM, part of its measurement.
pub const SM_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The measurement of this security monitor, which the hardware certifies at boot.
///
/// A real part measures the SM's code as it loads it; the emulation measures the SM's
/// identity (name and version), so that every build of one release attests alike and a
/// different release is a different SM to the verifier's policy.
pub fn sm_measurement() -> Measurement {
    // A build with the simulator's planted bugs compiled in is another SM: it must not
    // attest as this one.
    if cfg!(feature = "planted-bugs") {
        Measurement::of_parts(
            "godwit security monitor",
            &[SM_VERSION.as_bytes(), b"with planted bugs"],
        )
    } else {
        Measurement::of_parts("godwit security monitor", &[SM_VERSION.as_bytes()])
    }
}

/// Where an enclave is in its life on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EnclaveState {
    /// Created; waiting for the store to register it before it may run.
    Registering,
    /// Accepting ecalls.
    Running,
    /// Paused at the host's request; resumable by the host.
    Paused,
    /// Paused by the SM for a migration; only the migration's outcome moves it on.
    Migrating,
}

impl fmt::Display for EnclaveState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Registering => "registering",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Migrating => "migrating",
        })
    }
}

/// What the SM tells the host about an enclave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnclaveInfo {
    /// The instance.
    pub id: EnclaveId,
    /// The application's name.
    pub app: String,
    /// The application's measurement.
    pub measurement: Measurement,
    /// Its state.
    pub state: EnclaveState,
    /// Its ledger epoch.
    pub epoch: u64,
    /// Its linear memory size.
    pub memory_bytes: usize,
    /// Sealed slots it has written.
    pub sealed_slots: usize,
    /// An ecall is running it.
    pub busy: bool,
}

/// Why the SM refused or failed a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MonitorError {
    /// Loading or running the enclave failed.
    #[error(transparent)]
    Enclave(#[from] EnclaveError),
    /// No enclave with that id runs on this host.
    #[error("no enclave {0} on this host")]
    UnknownEnclave(EnclaveId),
    /// The application's manifest limit on instances per host is reached (claim 15).
    #[error(
        "application {app:?} may run at most {limit} instance(s) per host; {present} already present"
    )]
    InstanceLimit {
        /// The application's name.
        app: String,
        /// The manifest's `max_instances_per_host`.
        limit: u32,
        /// Instances present (running, paused, migrating or reserved).
        present: u32,
    },
    /// The request needs a state the enclave is not in.
    #[error("enclave {id} is {state}, not {expected}")]
    WrongState {
        /// The enclave.
        id: EnclaveId,
        /// Its state.
        state: EnclaveState,
        /// The state the request needs.
        expected: EnclaveState,
    },
    /// A sealed blob the host handed back was refused.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// The manifest does not allow migration.
    #[error("the manifest of enclave {0} does not allow migration")]
    NotMigratable(EnclaveId),
    /// A migration of this enclave is already under way.
    #[error("enclave {0} is already being migrated")]
    AlreadyMigrating(EnclaveId),
    /// The destination is this host, or not a peer this SM may reach.
    #[error("cannot migrate to {0}")]
    BadDestination(HostId),
    /// No such migration.
    #[error("no migration {0} in progress")]
    UnknownMigration(MigrationId),
    /// Another ecall of this enclave is running; calls of one enclave run one at a time.
    #[error("enclave {0} is running another call")]
    Busy(EnclaveId),
    /// The enclave was wiped while the call ran (the ledger no longer lets this host run
    /// it); the call's result is never released.
    #[error("enclave {0} was wiped while the call ran; its result is withdrawn")]
    Withdrawn(EnclaveId),
    /// The store could not take the request.
    #[error("store: {0}")]
    Store(String),
    /// Adoption is only for what this SM's view of the ledger records lost.
    #[error("enclave {0} is {1} in this host's view of the store, not lost")]
    NotLost(EnclaveId, String),
    /// This SM's store member does not know its store yet (it is joining or catching up).
    #[error("this host's store member is not part of a store yet; try again shortly")]
    StoreStarting,
    /// The store refused this SM's boot (its boot count went back): it creates, adopts and
    /// receives nothing.
    #[error(
        "the store refused this SM's boot: the component's boot count went back (rolled back by the host?); restart it with its true boot count"
    )]
    StaleBoot,
}

/// How the SM is set up on a host.
#[derive(Debug, Clone)]
pub struct MonitorConfig {
    /// Which peer SMs to trust.
    pub policy: Policy,
    /// The terms of every deadline.
    pub timeouts: TimeoutConfig,
    /// Memory the host grants for enclaves (incoming migrations are refused past it).
    pub memory_budget_bytes: u64,
    /// How the SM's store member runs (founders, lease, tick).
    pub store: MemberConfig,
}

/// A store write's handle: the number of this SM's proposal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct RequestId(pub(crate) u64);

/// Drops an instance's memory and keys, and its blobs unless they are to be kept.
fn discard(enclave: Enclave<InstanceServices>, fate: BlobFate) {
    let services = enclave.wipe();
    if fate == BlobFate::Delete {
        services.delete_blobs();
    }
}

impl Pending {
    /// The enclave a pending write is about, if it is one of an enclave's own lives.
    fn enclave(&self) -> Option<EnclaveId> {
        match self {
            Self::Register((id, _), _) | Self::Update((id, _), _) | Self::Adopt((id, _)) => {
                Some(*id)
            }
            _ => None,
        }
    }
}

/// What the SM asks of the host.
#[derive(Debug)]
#[non_exhaustive]
pub enum Action {
    /// Open a connection to `peer`; then call [`Monitor::connected`] (or
    /// [`Monitor::dial_failed`] if it fails).
    Connect {
        /// The connection's id.
        conn: ConnId,
        /// The host to reach.
        peer: HostId,
        /// Where the store's membership says it listens, if it says (a hint: the
        /// channel's attestation decides who answers).
        addr: Option<String>,
        /// It will carry the store's traffic (migrations have connections of their own).
        store: bool,
    },
    /// `conn` has frames to send: pull them with [`Monitor::poll_transmit`].
    Wake {
        /// The connection.
        conn: ConnId,
    },
    /// Close `conn`: the SM is done with it.
    Close {
        /// The connection.
        conn: ConnId,
    },
    /// Store this sealed record of the SM's store member durably (after every record
    /// before it), then call [`Monitor::persisted`] with its number. A base record makes
    /// the ones before it unneeded.
    Persist(StoreWrite),
    /// Something for the operator.
    Event(Event),
}

/// What happened, for the operator and the CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// An enclave is registered and running.
    Registered {
        /// The enclave.
        enclave: EnclaveId,
    },
    /// The store refused to register an enclave; it was destroyed.
    RegistrationRefused {
        /// The enclave.
        enclave: EnclaveId,
        /// Why.
        reason: String,
    },
    /// A withheld ecall outcome, released once the ledger recorded the durable state it
    /// depends on (or withdrawn if the ledger will not).
    CallCompleted {
        /// The call.
        call: CallId,
        /// The enclave.
        enclave: EnclaveId,
        /// Its result, or the enclave's own failure, or why it is withdrawn.
        result: Result<Vec<u8>, CallError>,
    },
    /// An outgoing migration ended.
    MigrationFinished {
        /// The migration.
        migration: MigrationId,
        /// The enclave.
        enclave: EnclaveId,
        /// Its report, or why it aborted.
        outcome: Result<MigrationReport, AbortReason>,
    },
    /// An incoming migration ended.
    IncomingFinished {
        /// The migration.
        migration: MigrationId,
        /// The enclave.
        enclave: EnclaveId,
        /// The new epoch, or why it aborted.
        outcome: Result<u64, AbortReason>,
    },
    /// An operator's probe of the store ([`Monitor::probe_store`]) was applied, or not.
    StoreProbed {
        /// The probe.
        probe: u64,
        /// Applied, or why not.
        outcome: Result<(), String>,
    },
    /// The store's membership changed.
    Membership(MembershipChange),
    /// A membership request could not be carried out.
    MembershipRefused {
        /// The host.
        host: HostId,
        /// Why.
        reason: String,
    },
    /// A peer failed attestation or broke the channel.
    PeerRefused {
        /// The connection.
        conn: ConnId,
        /// What went wrong.
        reason: String,
    },
}

/// What a committed migration took, measured on the sender's trusted timer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// The destination.
    pub to: HostId,
    /// The new ledger epoch.
    pub epoch: u64,
    /// Data bytes moved (module, memory pages actually sent, sealed data).
    pub bytes: u64,
    /// Attestation (zero when the channel was already open).
    pub attest: Duration,
    /// PREPARE sent → READY received.
    pub prepare_ready: Duration,
    /// Paused → BEGIN recorded.
    pub begin: Duration,
    /// BEGIN recorded → last data sent.
    pub transfer: Duration,
    /// Last data sent → COMMIT known.
    pub commit: Duration,
    /// PREPARE sent → COMMIT known.
    pub total: Duration,
    /// Paused → COMMIT known: no copy runs for at most this long.
    pub downtime: Duration,
}

struct Resident {
    /// The instance, or `None` while an ecall runs it outside the SM (see [`Ecall`]).
    enclave: Option<Enclave<InstanceServices>>,
    /// Its module (kept here to count and describe the instance while it is out).
    module: Arc<LoadedModule>,
    /// Its linear memory size when it was last here.
    memory_bytes: usize,
    /// Its incarnation in the ledger (as its services hold it).
    incarnation: u64,
    state: EnclaveState,
    epoch: u64,
    /// The state to return to if an outgoing migration aborts.
    resume_to: EnclaveState,
    /// How far the ledger recorded its durable state, and the results waiting for it.
    durability: durable::Durability,
    /// Names this life of the instance on this SM: replies and returning ecalls meant for
    /// an earlier life of the same id (wiped, adopted again) are recognised and ignored.
    token: u64,
    /// Wiped while an ecall held it: it is wiped for good when the ecall returns (keeping
    /// its blobs or not), and the ecall's result is withdrawn.
    doomed: Option<BlobFate>,
    /// The ledger refused its state while an outgoing migration held it: it answers
    /// nothing more, and is wiped when the migration lets go of it instead of resuming.
    revoked: Option<BlobFate>,
    /// An adopted instance whose adoption the ledger applied: it runs from this time on
    /// the trusted timer (a lease and the drift bound after the adoption applied here, so
    /// that the last owner's lease has surely run out).
    runs_at: Option<godwit_hw::TrustedInstant>,
}

/// What a wipe does with the instance's sealed blobs on the host's disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlobFate {
    /// Delete them: the instance is gone (destroyed, moved on).
    Delete,
    /// Keep them: the instance is recorded lost with this host as its last owner, and a
    /// fresh instance adopting it opens them.
    Keep,
}

impl Resident {
    fn new(
        enclave: Enclave<InstanceServices>,
        state: EnclaveState,
        epoch: u64,
        token: u64,
    ) -> Self {
        let recorded = enclave.services().durable();
        Self {
            module: Arc::clone(enclave.module()),
            memory_bytes: enclave.memory_bytes(),
            incarnation: enclave.services().incarnation,
            enclave: Some(enclave),
            state,
            epoch,
            resume_to: EnclaveState::Running,
            durability: durable::Durability::recorded(recorded),
            token,
            doomed: None,
            revoked: None,
            runs_at: None,
        }
    }

    /// Whether it may be asked for anything (not wiped while out, not revoked).
    fn usable(&self) -> bool {
        self.doomed.is_none() && self.revoked.is_none()
    }
}

impl Resident {
    /// Whether an outgoing migration may collect the instance now: the ledger holds every
    /// durable change it made, and no ecall holds it.
    fn ready_to_collect(&self) -> bool {
        self.durability.caught_up() && self.enclave.is_some()
    }
}

/// Where this SM's boot stands with the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BootStatus {
    /// Announced, not yet recorded: the SM receives no enclave.
    Announced,
    /// Recorded: the SM takes part in migrations.
    Recorded,
    /// Refused as stale (the component's boot count went back): the SM takes part in
    /// nothing.
    Stale,
}

/// One life of an instance on this SM: its id and the token of its `Resident`.
type Life = (EnclaveId, u64);

enum Pending {
    /// A registration, with the departures count it was made under (kept for retries).
    Register(Life, u64),
    Destroy(EnclaveId),
    Outgoing(MigrationId),
    Incoming(MigrationId),
    Update(Life, u64),
    Booted,
    Adopt(Life),
    /// An operator's probe of the store (a harmless write).
    Probe(u64),
}

/// The security monitor of one host. See the crate documentation for its contract.
pub struct Monitor {
    hw: Arc<dyn Hardware>,
    runtime: Runtime,
    modules: modules::ModuleCache,
    blobs: Arc<dyn BlobStore>,
    config: MonitorConfig,
    policy: Arc<Policy>,
    enclaves: BTreeMap<EnclaveId, Resident>,
    net: net::Connections,
    migrations: migrate::Migrations,
    requests: BTreeMap<RequestId, Pending>,
    next_call: u64,
    /// The next resident's token.
    next_token: u64,
    /// Random, chosen at start: binds the ecalls this SM hands out to it.
    nonce: u64,
    /// Store writes to ask again once the store had time to recover (trusted time).
    retries: Vec<(godwit_hw::TrustedInstant, Pending, LedgerOp)>,
    actions: VecDeque<Action>,
    /// Whether the ledger has recorded this boot (or refused it).
    boot: BootStatus,
    /// This SM's member of the store.
    store: godwit_store::Member,
    /// Hosts to add to the store once attested.
    admitting: BTreeMap<HostId, store::Admission>,
    /// (enclave, incarnation) of every adoption that applied in this boot: a second
    /// life of the same incarnation never runs.
    adopted_lives: std::collections::BTreeSet<(EnclaveId, u64)>,
}

impl Monitor {
    /// Starts an SM on `hw`, storing sealed blobs through the host's `blobs`, and its
    /// store member from the `records` the host kept (oldest first). Also says what the
    /// member found in them: refused records should be kept aside by the host.
    pub fn new(
        hw: Arc<dyn Hardware>,
        blobs: Arc<dyn BlobStore>,
        config: MonitorConfig,
        records: &[Vec<u8>],
    ) -> Result<(Self, Opened), MonitorError> {
        let (store, opened) =
            godwit_store::Member::open(Arc::clone(&hw), config.store.clone(), records);
        let mut sm = Self {
            hw,
            runtime: Runtime::new()?,
            modules: modules::ModuleCache::default(),
            blobs,
            policy: Arc::new(config.policy.clone()),
            config,
            enclaves: BTreeMap::new(),
            net: net::Connections::default(),
            migrations: migrate::Migrations::default(),
            requests: BTreeMap::new(),
            next_call: 0,
            next_token: 0,
            nonce: 0,
            retries: Vec::new(),
            actions: VecDeque::new(),
            boot: BootStatus::Announced,
            store,
            admitting: BTreeMap::new(),
            adopted_lives: std::collections::BTreeSet::new(),
        };
        let mut nonce = [0u8; 8];
        sm.hw.fill_random(&mut nonce);
        sm.nonce = u64::from_be_bytes(nonce);
        // First thing a new boot does: tell the ledger, so that what this host ran under
        // an earlier boot is recorded lost rather than believed running.
        sm.announce_boot();
        Ok((sm, opened))
    }

    /// How long until [`Monitor::poll_timeout`], on the SM's trusted timer (the host sleeps
    /// that long; it cannot read the trusted timer itself).
    pub fn timeout_in(&self) -> Option<Duration> {
        let at = self.poll_timeout()?;
        Some(at.duration_since(self.hw.now()).unwrap_or(Duration::ZERO))
    }

    /// This SM's boot count (from its component), for the operator.
    pub fn boot_count(&self) -> u64 {
        self.hw.boot_epoch().count()
    }

    /// Whether the store refused this SM's boot as stale (its component's boot count went
    /// back): it then creates, adopts and receives nothing.
    pub fn boot_refused(&self) -> bool {
        self.boot == BootStatus::Stale
    }

    /// This host's id (from its device certificate).
    pub fn host(&self) -> &HostId {
        self.hw.host()
    }

    /// The next thing the host must do, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        if self.actions.is_empty() {
            self.pump_store();
        }
        self.actions.pop_front()
    }

    fn event(&mut self, e: Event) {
        self.actions.push_back(Action::Event(e));
    }

    /// Asks for `op` again after [`STORE_RETRY`] on the trusted timer: a store that failed
    /// fast must not be asked in a tight loop.
    fn store_later(&mut self, pending: Pending, op: LedgerOp) {
        let at = self.hw.now().saturating_add(STORE_RETRY);
        self.retries.push((at, pending, op));
    }

    /// A fresh resident, with its token.
    fn resident_for(
        &mut self,
        enclave: Enclave<InstanceServices>,
        state: EnclaveState,
        epoch: u64,
    ) -> Resident {
        self.next_token += 1;
        Resident::new(enclave, state, epoch, self.next_token)
    }

    /// The life `(id, token)` if the resident at `id` is still that life.
    fn life_is(&self, (id, token): Life) -> bool {
        self.enclaves.get(&id).is_some_and(|r| r.token == token)
    }

    /// Proposes `op` to the store; its outcome comes from this SM's own applied log.
    fn store(&mut self, pending: Pending, op: LedgerOp) {
        match self.store.propose(op.clone()) {
            Ok(seq) => {
                self.requests.insert(RequestId(seq), pending);
                if planted!(act_on_proposal) {
                    let outcome = self.ledger().clone().apply(&op);
                    self.store_reply(RequestId(seq), StoreReply::Outcome(outcome));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "store busy; asking again later");
                self.store_later(pending, op);
            }
        }
    }

    /// Instances of the application `app` on this host, in any state, including incoming
    /// migrations that reserved a place.
    pub fn instances_of(&self, app: &Measurement) -> u32 {
        let resident = self
            .enclaves
            .values()
            .filter(|r| r.module.measurement() == *app)
            .count();
        let n = resident + self.migrations.reserved_for(app);
        // Invariant: each instance needs memory; far fewer than 2^32 fit on a host.
        u32::try_from(n).expect("instance count fits u32")
    }

    /// Memory held by resident enclaves and reserved by incoming migrations.
    fn memory_in_use(&self) -> u64 {
        let resident: u64 = self.enclaves.values().map(|r| r.memory_bytes as u64).sum();
        resident + self.migrations.reserved_memory()
    }

    /// Loads `module` for a new instance here, unless its application already has as many
    /// instances on this host as its manifest allows.
    fn load_within_limit(
        &mut self,
        module: &[u8],
        manifest: Manifest,
    ) -> Result<Arc<godwit_enclave::LoadedModule>, MonitorError> {
        let loaded = self.modules.load(&self.runtime, module, manifest)?;
        let limit = loaded.manifest().max_instances_per_host;
        let present = self.instances_of(&loaded.measurement());
        if present >= limit {
            return Err(MonitorError::InstanceLimit {
                app: loaded.manifest().name.clone(),
                limit,
                present,
            });
        }
        Ok(loaded)
    }

    /// Creates an enclave at the host's request: loads and measures the module, checks the
    /// manifest's instance limit for this application, instantiates it and asks the store
    /// to register it. It runs once registered ([`Event::Registered`]).
    pub fn create(&mut self, module: &[u8], manifest: Manifest) -> Result<EnclaveId, MonitorError> {
        if self.boot == BootStatus::Stale {
            return Err(MonitorError::StaleBoot);
        }
        let loaded = self.load_within_limit(module, manifest)?;
        let app = loaded.measurement();
        let id = self.fresh_id();
        let services =
            InstanceServices::new(id, app, 0, Arc::clone(&self.hw), Arc::clone(&self.blobs));
        let enclave = self.runtime.instantiate(&loaded, services)?;
        tracing::info!(enclave = %id, app = %loaded.manifest().name, measurement = %app.short(), "enclave created");
        let r = self.resident_for(enclave, EnclaveState::Registering, 0);
        let life = (id, r.token);
        self.enclaves.insert(id, r);
        // Bound to the departures this SM's ledger shows now, for every retry: if this host
        // leaves the cluster before the registration reaches the log, it is refused.
        let departures = self.ledger().departures_of(self.host());
        if let Some(op) = self.register_op(id, departures) {
            self.store(Pending::Register(life, departures), op);
        }
        self.check_invariants();
        Ok(id)
    }

    fn register_op(&self, id: EnclaveId, departures: u64) -> Option<LedgerOp> {
        let module = &self.enclaves.get(&id)?.module;
        Some(LedgerOp::Register {
            id,
            app: module.measurement(),
            app_name: module.manifest().name.clone(),
            owner: self.host().clone(),
            boot: self.hw.boot_epoch().to_bytes(),
            max_instances_cluster: module.manifest().max_instances_cluster,
            departures,
        })
    }

    fn fresh_id(&self) -> EnclaveId {
        loop {
            let mut id = [0u8; 16];
            self.hw.fill_random(&mut id);
            let id = EnclaveId(id);
            if !self.enclaves.contains_key(&id) && !self.migrations.holds_enclave(&id) {
                return id;
            }
        }
    }

    fn resident(&mut self, id: EnclaveId) -> Result<&mut Resident, MonitorError> {
        self.enclaves
            .get_mut(&id)
            .ok_or(MonitorError::UnknownEnclave(id))
    }

    fn in_state(
        &mut self,
        id: EnclaveId,
        expected: EnclaveState,
    ) -> Result<&mut Resident, MonitorError> {
        let r = self.resident(id)?;
        if !r.usable() {
            return Err(MonitorError::Withdrawn(id));
        }
        if r.state != expected {
            return Err(MonitorError::WrongState {
                id,
                state: r.state,
                expected,
            });
        }
        Ok(r)
    }

    /// Pauses a running enclave at the host's request.
    pub fn pause(&mut self, id: EnclaveId) -> Result<(), MonitorError> {
        self.in_state(id, EnclaveState::Running)?.state = EnclaveState::Paused;
        Ok(())
    }

    /// Resumes an enclave the host paused. An enclave the SM paused for a migration is not
    /// the host's to resume.
    pub fn resume(&mut self, id: EnclaveId) -> Result<(), MonitorError> {
        self.in_state(id, EnclaveState::Paused)?.state = EnclaveState::Running;
        Ok(())
    }

    /// Destroys an enclave: wipes its memory and keys, deletes its sealed blobs, and tells
    /// the store. Refused while a migration holds it.
    pub fn destroy(&mut self, id: EnclaveId) -> Result<(), MonitorError> {
        let state = self.resident(id)?.state;
        if state == EnclaveState::Migrating || self.migrations.is_migrating(&id) {
            return Err(MonitorError::AlreadyMigrating(id));
        }
        self.wipe(
            id,
            "the enclave was destroyed before its state was recorded",
            BlobFate::Delete,
        );
        self.store(
            Pending::Destroy(id),
            LedgerOp::Destroy {
                id,
                by: self.host().clone(),
            },
        );
        tracing::info!(enclave = %id, "enclave destroyed");
        self.check_invariants();
        Ok(())
    }

    /// Removes an enclave: memory zeroed, keys dropped, its blobs deleted (or kept, for an
    /// enclave recorded lost here, for adoption), and every result it withholds withdrawn
    /// with `why`. An enclave an ecall holds is marked doomed and wiped when the ecall
    /// returns. (Part of a transition: the public caller checks the invariants when the
    /// transition is done.)
    fn wipe(&mut self, id: EnclaveId, why: &str, fate: BlobFate) {
        let Some(r) = self.enclaves.get_mut(&id) else {
            return;
        };
        let withheld: Vec<_> = r.durability.withheld.drain(..).collect();
        for (call, _, _) in withheld {
            self.actions.push_back(Action::Event(Event::CallCompleted {
                call,
                enclave: id,
                result: Err(CallError::Withdrawn(why.to_owned())),
            }));
        }
        // Retries queued for this life are for nothing now.
        self.retries.retain(|(_, p, _)| p.enclave() != Some(id));
        let Some(r) = self.enclaves.get_mut(&id) else {
            return;
        };
        if r.enclave.is_none() {
            r.doomed = Some(fate);
            return;
        }
        if let Some(enclave) = self.enclaves.remove(&id).and_then(|r| r.enclave) {
            discard(enclave, fate);
        }
    }

    /// What the SM tells the host about one enclave.
    pub fn info(&self, id: EnclaveId) -> Result<EnclaveInfo, MonitorError> {
        let r = self
            .enclaves
            .get(&id)
            .ok_or(MonitorError::UnknownEnclave(id))?;
        Ok(Self::describe(id, r))
    }

    /// Every enclave on this host.
    pub fn list(&self) -> Vec<EnclaveInfo> {
        self.enclaves
            .iter()
            .map(|(&id, r)| Self::describe(id, r))
            .collect()
    }

    fn describe(id: EnclaveId, r: &Resident) -> EnclaveInfo {
        EnclaveInfo {
            id,
            app: r.module.manifest().name.clone(),
            measurement: r.module.measurement(),
            state: r.state,
            epoch: r.epoch,
            memory_bytes: r.memory_bytes,
            sealed_slots: r.durability.seen().sealed.len(),
            busy: r.enclave.is_none(),
        }
    }

    /// The last sealed blob from the host that this enclave's SM refused, if any.
    pub fn last_refusal(&self, id: EnclaveId) -> Result<Option<SealError>, MonitorError> {
        let r = self
            .enclaves
            .get(&id)
            .ok_or(MonitorError::UnknownEnclave(id))?;
        Ok(r.enclave
            .as_ref()
            .and_then(|e| e.services().last_refusal.clone()))
    }

    /// The store answered (or failed to answer) request `request`, as this SM's member
    /// applied it.
    fn store_reply(&mut self, request: RequestId, reply: StoreReply) {
        let Some(pending) = self.requests.remove(&request) else {
            return;
        };
        match pending {
            Pending::Register(life, departures) => self.registered(life, departures, reply),
            Pending::Destroy(id) => match reply {
                StoreReply::Outcome(LedgerOutcome::Applied(_)) => {}
                StoreReply::Unavailable(_) => {
                    let op = LedgerOp::Destroy {
                        id,
                        by: self.host().clone(),
                    };
                    self.store_later(Pending::Destroy(id), op);
                }
                refused => tracing::warn!(enclave = %id, ?refused, "the store refused a destroy"),
            },
            Pending::Outgoing(m) => self.outgoing_store_reply(m, reply),
            Pending::Incoming(m) => self.incoming_store_reply(m, reply),
            Pending::Update(life, seq) => self.updated(life, seq, reply),
            Pending::Booted => self.booted(reply),
            Pending::Adopt(life) => self.adopted(life, reply),
            Pending::Probe(probe) => {
                let outcome = match reply {
                    StoreReply::Outcome(LedgerOutcome::Applied(_)) => Ok(()),
                    StoreReply::Outcome(LedgerOutcome::Refused { reason, .. }) => {
                        Err(reason.to_string())
                    }
                    StoreReply::Unavailable(why) => Err(why),
                };
                self.event(Event::StoreProbed { probe, outcome });
            }
        }
        self.check_invariants();
    }

    fn registered(&mut self, life: Life, departures: u64, reply: StoreReply) {
        if !self.life_is(life) {
            return; // a reply for an earlier life of this id
        }
        let id = life.0;
        if let StoreReply::Unavailable(why) = &reply {
            // Unknown whether it was applied: ask again (a repeated registration is answered
            // alike). The enclave stays `registering`, not running, meanwhile.
            tracing::warn!(enclave = %id, %why, "store unavailable; registering again");
            if let Some(op) = self.register_op(id, departures) {
                self.store_later(Pending::Register(life, departures), op);
            }
            return;
        }
        match reply {
            StoreReply::Outcome(LedgerOutcome::Applied(_)) => {
                if let Some(r) = self.enclaves.get_mut(&id)
                    && r.state == EnclaveState::Registering
                {
                    r.state = EnclaveState::Running;
                    self.event(Event::Registered { enclave: id });
                }
            }
            other => {
                let reason = match other {
                    StoreReply::Outcome(LedgerOutcome::Refused { reason, .. }) => {
                        reason.to_string()
                    }
                    StoreReply::Unavailable(why) => format!("the store did not answer: {why}"),
                    StoreReply::Outcome(LedgerOutcome::Applied(_)) => unreachable!("matched above"),
                };
                tracing::warn!(enclave = %id, %reason, "registration refused; enclave destroyed");
                self.wipe(
                    id,
                    "the store refused to register the enclave",
                    BlobFate::Delete,
                );
                self.event(Event::RegistrationRefused {
                    enclave: id,
                    reason,
                });
            }
        }
    }

    /// The earliest deadline on the trusted timer, if any: call
    /// [`Monitor::handle_timeout`] once it has passed.
    pub fn poll_timeout(&self) -> Option<godwit_hw::TrustedInstant> {
        let mut earliest: Option<godwit_hw::TrustedInstant> = None;
        let retries = self.retries.iter().map(|(at, _, _)| *at);
        for t in self
            .net
            .timeouts()
            .chain(self.migrations.timeouts())
            .chain(retries)
            .chain(self.admitting.values().filter_map(|a| a.redial))
            .chain(self.enclaves.values().filter_map(|r| r.runs_at))
            .chain(std::iter::once(self.store.poll_timeout()))
        {
            earliest = Some(match earliest {
                Some(e) if e.is_at_or_after(t).unwrap_or(false) => t,
                Some(e) => e,
                None => t,
            });
        }
        earliest
    }

    /// Handles every deadline that has passed on the trusted timer (the SM reads the timer
    /// itself: the host can make it late, never early).
    pub fn handle_timeout(&mut self) {
        let now = self.hw.now();
        self.store.handle_timeout();
        self.pump_store();
        self.net_timeouts(now);
        self.admission_timeouts(now);
        self.adoption_timeouts(now);
        self.migration_timeouts(now);
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retries)
            .into_iter()
            .partition(|(at, _, _)| now.is_at_or_after(*at).unwrap_or(true));
        self.retries = later;
        for (_, pending, op) in due {
            self.store(pending, op);
        }
        self.check_invariants();
    }

    /// Asserts the SM's invariants; they stay on in release builds (one pass over the
    /// tables). Called after every transition.
    pub fn check_invariants(&self) {
        let mut per_app: BTreeMap<Measurement, (u32, u32)> = BTreeMap::new();
        for (id, r) in &self.enclaves {
            if let Some(e) = &r.enclave {
                let s = e.services();
                assert_eq!(s.id, *id, "instance services bound to another id");
                assert_eq!(
                    s.app,
                    r.module.measurement(),
                    "services bound to another app"
                );
                assert_eq!(s.incarnation, r.incarnation, "incarnation out of step");
                assert!(r.doomed.is_none(), "a doomed enclave is back in the SM");
            }
            let limit = r.module.manifest().max_instances_per_host;
            per_app
                .entry(r.module.measurement())
                .or_insert((0, limit))
                .0 += 1;
            assert_eq!(
                r.state == EnclaveState::Migrating,
                self.migrations.is_paused_for_migration(id),
                "enclave {id} state {} disagrees with the migration table",
                r.state
            );
        }
        self.store.check_invariants();
        for (app, (present, limit)) in per_app {
            let reserved = u32::try_from(self.migrations.reserved_for(&app)).unwrap_or(u32::MAX);
            assert!(
                present + reserved <= limit,
                "instances of {app:?}: {present} + {reserved} reserved > limit {limit}"
            );
        }
        self.migrations.check_invariants(&self.enclaves);
    }
}
