//! The ownership ledger: who runs each enclave instance, at which epoch, and the decisions
//! of its migrations. A deterministic state machine of conditional writes, applied in one
//! order by every replica of the store (claim 9); the in-memory double and the replicated
//! store run this same code.
//!
//! Every decision op names the `(enclave, epoch, migration)` it applies to. `Begin` moves a
//! running record to `migrating`; `Commit` (by the receiver) and `Abort` (by either party)
//! both end the epoch, so whichever the ledger applies first wins and the other is refused
//! with the winner named. Repeating an applied decision is answered with the same outcome,
//! so a party whose reply was lost can ask again safely.

use std::collections::BTreeMap;

use godwit_wire::{EnclaveId, HostId, Measurement};
use serde::{Deserialize, Serialize};

use crate::MigrationId;

/// A boot epoch of an SM, as the ledger records it.
pub type Boot = [u8; 16];

/// Where an enclave instance stands in the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordState {
    /// Runs at the owner.
    Running,
    /// Paused at the owner, being moved to `to`.
    Migrating {
        /// The migration.
        migration: MigrationId,
        /// The receiving host.
        to: HostId,
    },
    /// Its only live copy was lost (its SM restarted); never to be restarted from memory.
    /// Its sealed data stays on the last owner's disk, usable by a fresh instance
    /// ([`LedgerOp::Adopt`]).
    Lost,
}

impl RecordState {
    /// A short name for tables and JSON.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Migrating { .. } => "migrating",
            Self::Lost => "lost",
        }
    }
}

/// How a migration ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    /// The receiver owns the enclave.
    Committed,
    /// The sender owns it again.
    Aborted,
}

/// One sealed slot's newest version, the incarnation that sealed it, and its plaintext
/// size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotVersion {
    /// The newest version sealed.
    pub version: u64,
    /// The incarnation of the instance that sealed it (see [`EnclaveRecord::incarnation`]):
    /// a blob opens only under the exact (version, incarnation) recorded, so a version a
    /// lost incarnation sealed but never recorded can never pass for the one a later
    /// incarnation sealed under the same number.
    pub incarnation: u64,
    /// Its plaintext size.
    pub len: u64,
}

/// The state of an enclave that must survive restarts: its sealed slots' newest versions
/// (rollback protection) and its monotonic counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurableState {
    /// Per slot.
    pub sealed: BTreeMap<String, SlotVersion>,
    /// Per counter.
    pub counters: BTreeMap<String, u64>,
}

impl DurableState {
    /// Takes in `newer`, keeping the larger version of each slot and the larger value of
    /// each counter: the ledger's copy never goes back.
    pub fn merge(&mut self, newer: &DurableState) {
        for (slot, v) in &newer.sealed {
            // A version once recorded keeps the incarnation that sealed it: the same number
            // from another incarnation never replaces it.
            let e = self.sealed.entry(slot.clone()).or_insert(*v);
            if v.version > e.version {
                *e = *v;
            }
        }
        for (name, value) in &newer.counters {
            let e = self.counters.entry(name.clone()).or_insert(*value);
            *e = (*e).max(*value);
        }
    }

    /// Whether `self` is at or beyond `other` everywhere (nothing went back).
    pub fn covers(&self, other: &DurableState) -> bool {
        other
            .sealed
            .iter()
            .all(|(k, v)| self.sealed.get(k).is_some_and(|s| s.version >= v.version))
            && other
                .counters
                .iter()
                .all(|(k, v)| self.counters.get(k).is_some_and(|c| c >= v))
    }
}

/// One enclave instance's entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnclaveRecord {
    /// The instance.
    pub id: EnclaveId,
    /// The application's measurement.
    pub app: Measurement,
    /// The application's name.
    pub app_name: String,
    /// The host whose SM owns it (for `lost`: the last owner, which holds its blobs).
    pub owner: HostId,
    /// The boot epoch of the owner's SM when it took ownership.
    pub owner_boot: Boot,
    /// Advances with every decision: a write naming an older epoch is stale.
    pub epoch: u64,
    /// Which life of the instance this is: 0 at registration, one more at every adoption.
    /// Every blob is sealed under its incarnation, so no (key, slot, version) is ever
    /// sealed twice by two lives of one instance.
    pub incarnation: u64,
    /// Its state.
    pub state: RecordState,
    /// The last decided migration and its outcome, so decisions can be repeated.
    pub last_decision: Option<(MigrationId, Decision)>,
    /// The digest of the last committed transfer.
    pub last_digest: Option<[u8; 32]>,
    /// Newest sealed versions and counters.
    pub durable: DurableState,
    /// The manifest's cluster-wide cap on live instances of the application, if any.
    pub max_instances_cluster: Option<u32>,
}

/// A write to the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerOp {
    /// A new instance, running at `owner` (epoch 0).
    Register {
        /// The instance.
        id: EnclaveId,
        /// Its application.
        app: Measurement,
        /// The application's name.
        app_name: String,
        /// The creating host.
        owner: HostId,
        /// Its SM's boot epoch.
        boot: Boot,
        /// The manifest's cluster-wide cap, if any.
        max_instances_cluster: Option<u32>,
        /// How many times `owner` had left the cluster when its SM first asked, as its own
        /// applied ledger showed ([`Ledger::departures_of`]). A registration that reaches
        /// the log only after its host left (and perhaps came back) is refused: what it
        /// registered may meanwhile have been recorded lost, adopted and destroyed, and must
        /// not be brought back fresh under the same id.
        departures: u64,
    },
    /// The sender starts moving the instance to `to` (the sender has paused it).
    Begin {
        /// The instance.
        id: EnclaveId,
        /// The epoch the sender holds it at.
        epoch: u64,
        /// The sender (must be the owner).
        from: HostId,
        /// The receiver.
        to: HostId,
        /// The migration.
        migration: MigrationId,
    },
    /// The receiver holds everything and takes ownership.
    Commit {
        /// The instance.
        id: EnclaveId,
        /// The epoch named in Begin.
        epoch: u64,
        /// The migration.
        migration: MigrationId,
        /// The receiver (must be the migration's `to`).
        by: HostId,
        /// The receiver SM's boot epoch.
        boot: Boot,
        /// The digest of what it received.
        digest: [u8; 32],
        /// The durable state it received.
        durable: DurableState,
    },
    /// A party gives the migration up; the sender owns the instance again (or, if the
    /// sender's SM restarted meanwhile, the instance is lost).
    Abort {
        /// The instance.
        id: EnclaveId,
        /// The epoch named in Begin.
        epoch: u64,
        /// The migration.
        migration: MigrationId,
        /// Who aborts: the sender or the receiver; anyone if the sender restarted.
        by: HostId,
    },
    /// The owner destroyed the instance.
    Destroy {
        /// The instance.
        id: EnclaveId,
        /// The owner.
        by: HostId,
    },
    /// The owner's SM recorded newer sealed versions or counters.
    Update {
        /// The instance.
        id: EnclaveId,
        /// Its epoch.
        epoch: u64,
        /// The owner.
        by: HostId,
        /// The newer state.
        durable: DurableState,
    },
    /// A host's SM started with a new boot epoch: what it owned under an older one is lost.
    HostBooted {
        /// The host.
        host: HostId,
        /// Its new boot epoch.
        boot: Boot,
    },
    /// A host left the cluster: what it ran is recorded lost, and its migrations are
    /// settled (aborted; lost if it was the sender).
    HostLeft {
        /// The host.
        host: HostId,
    },
    /// A host starts a fresh instance of a lost one under its id, from its module (never
    /// from old memory), with its recorded sealed versions and counters.
    Adopt {
        /// The instance.
        id: EnclaveId,
        /// The adopting host: the last owner (its blobs are sealed to it), or any host if
        /// the instance sealed nothing (its counters are in the ledger).
        by: HostId,
        /// Its SM's boot epoch.
        boot: Boot,
        /// The application (must match).
        app: Measurement,
    },
}

impl LedgerOp {
    /// The instance the op concerns, if it concerns one.
    pub fn enclave(&self) -> Option<EnclaveId> {
        match self {
            Self::Register { id, .. }
            | Self::Begin { id, .. }
            | Self::Commit { id, .. }
            | Self::Abort { id, .. }
            | Self::Destroy { id, .. }
            | Self::Update { id, .. }
            | Self::Adopt { id, .. } => Some(*id),
            Self::HostBooted { .. } | Self::HostLeft { .. } => None,
        }
    }

    /// The host on whose behalf the op is written: only that host's SM may write it (the
    /// receiver's SM for a COMMIT; either party for an ABORT — checked by the ledger).
    pub fn author(&self) -> &HostId {
        match self {
            Self::Register { owner, .. } => owner,
            Self::Begin { from, .. } => from,
            Self::Commit { by, .. }
            | Self::Abort { by, .. }
            | Self::Destroy { by, .. }
            | Self::Update { by, .. }
            | Self::Adopt { by, .. } => by,
            Self::HostBooted { host, .. } | Self::HostLeft { host } => host,
        }
    }
}

/// Why the ledger refused a write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerRefusal {
    /// No such instance.
    #[error("no such enclave in the ledger")]
    Unknown,
    /// An instance with this id already exists.
    #[error("the enclave is already registered")]
    AlreadyRegistered,
    /// The op names an older or newer epoch than the record's.
    #[error("stale epoch {presented}; the ledger is at {current}")]
    StaleEpoch {
        /// The op's epoch.
        presented: u64,
        /// The record's.
        current: u64,
    },
    /// The record is not in a state that allows the op.
    #[error("the enclave is {state}")]
    WrongState {
        /// The record's state name.
        state: String,
    },
    /// The migration named is not the one in progress.
    #[error("another migration is in progress or was decided")]
    OtherMigration,
    /// The migration was already decided the other way.
    #[error("the migration was already {0:?}")]
    AlreadyDecided(Decision),
    /// The writer is not allowed to make this write.
    #[error("{by} may not write this")]
    NotParty {
        /// The writer.
        by: HostId,
    },
    /// The application's cluster-wide cap is reached.
    #[error("the application may run at most {limit} instance(s) in the cluster")]
    ClusterLimit {
        /// The manifest's cap.
        limit: u32,
    },
    /// An adoption names another application than the record's.
    #[error("the enclave belongs to another application")]
    WrongApp,
    /// The writer's SM has restarted since it made this write: what it would own is gone.
    #[error("{host}'s SM has restarted since this write")]
    StaleBoot {
        /// The writer.
        host: HostId,
    },
    /// The writer's host left the cluster since its SM made this registration: what it
    /// registered then may have been recorded lost, adopted and destroyed since.
    #[error("{host} left the cluster since this registration was made")]
    LeftSince {
        /// The writer.
        host: HostId,
    },
    /// The ledger holds [`LEDGER_RECORDS_MAX`] records: it takes no more (so that the
    /// replicated state always fits in a snapshot).
    #[error("the ledger is full ({LEDGER_RECORDS_MAX} enclaves); destroy or adopt lost ones")]
    Full,
}

/// Most records the ledger holds. The SM bounds what a record holds (64 sealed slots and
/// 64 counters with short names: about 10 KiB at most), so the whole ledger stays well
/// inside a snapshot (128 MiB).
pub const LEDGER_RECORDS_MAX: usize = 8192;

/// The ledger's answer to a write: the record after it, or a refusal with the record as it
/// stands (so the writer learns the current truth in the same reply).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerOutcome {
    /// Applied (or an identical write applied before); the record now.
    Applied(Option<EnclaveRecord>),
    /// Refused; the record as it stands.
    Refused {
        /// Why.
        reason: LedgerRefusal,
        /// The current record, if any.
        record: Option<EnclaveRecord>,
    },
}

/// The ledger's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    records: BTreeMap<EnclaveId, EnclaveRecord>,
    /// Each host's current boot epoch, as its SM last announced it.
    boots: BTreeMap<HostId, Boot>,
    /// How many times each host left the cluster ([`LedgerOp::HostLeft`]); one entry per
    /// host ever removed.
    departures: BTreeMap<HostId, u64>,
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// The record of an instance.
    pub fn get(&self, id: &EnclaveId) -> Option<&EnclaveRecord> {
        self.records.get(id)
    }

    /// Every record.
    pub fn records(&self) -> impl Iterator<Item = &EnclaveRecord> {
        self.records.values()
    }

    /// A host's current boot epoch, if it announced one.
    pub fn boot_of(&self, host: &HostId) -> Option<&Boot> {
        self.boots.get(host)
    }

    /// How many times `host` left the cluster. A registration names the count its SM saw;
    /// one made before a departure is refused ([`LedgerRefusal::LeftSince`]).
    pub fn departures_of(&self, host: &HostId) -> u64 {
        self.departures.get(host).copied().unwrap_or(0)
    }

    /// Instances of `app` that are not lost, cluster-wide.
    pub fn live_instances(&self, app: &Measurement) -> usize {
        self.records
            .values()
            .filter(|r| r.app == *app && r.state != RecordState::Lost)
            .count()
    }

    /// Running (or migrating) instances per application per host, as the ledger sees them.
    pub fn instance_counts(&self) -> BTreeMap<(String, HostId), u32> {
        let mut counts = BTreeMap::new();
        for r in self
            .records
            .values()
            .filter(|r| r.state != RecordState::Lost)
        {
            *counts
                .entry((r.app_name.clone(), r.owner.clone()))
                .or_insert(0) += 1;
        }
        counts
    }

    /// Whether `host` has announced a later boot than `boot`: a write made under `boot`
    /// comes from an SM that no longer exists. (A boot not announced yet but newer than the
    /// last announced one is current: its announcement may simply be behind its writes.)
    fn is_stale(&self, host: &HostId, boot: &Boot) -> bool {
        use godwit_hw::BootEpoch;
        self.boots.get(host).is_some_and(|b| {
            let (announced, writer) = (BootEpoch::count_of(b), BootEpoch::count_of(boot));
            writer < announced || (writer == announced && b != boot)
        })
    }

    /// Whether the SM that owns `r` has restarted since it took ownership. (An owner boot
    /// newer than the one announced is current: its announcement is behind its writes.)
    fn owner_restarted(&self, r: &EnclaveRecord) -> bool {
        self.is_stale(&r.owner, &r.owner_boot)
    }

    /// Applies one write. Deterministic: the same ops in the same order give the same
    /// state and outcomes on every replica.
    pub fn apply(&mut self, op: &LedgerOp) -> LedgerOutcome {
        let outcome = match op {
            LedgerOp::Register {
                id,
                app,
                app_name,
                owner,
                boot,
                max_instances_cluster,
                departures,
            } => self.register(
                *id,
                *app,
                app_name,
                (owner, *boot, *departures),
                *max_instances_cluster,
            ),
            LedgerOp::Begin {
                id,
                epoch,
                from,
                to,
                migration,
            } => self.begin(*id, *epoch, from, to, *migration),
            LedgerOp::Commit {
                id,
                epoch,
                migration,
                by,
                boot,
                digest,
                durable,
            } => self.decide(*id, *epoch, *migration, by, Some((*boot, *digest, durable))),
            LedgerOp::Abort {
                id,
                epoch,
                migration,
                by,
            } => self.decide(*id, *epoch, *migration, by, None),
            LedgerOp::Destroy { id, by } => self.destroy(*id, by),
            LedgerOp::Update {
                id,
                epoch,
                by,
                durable,
            } => self.update(*id, *epoch, by, durable),
            LedgerOp::HostBooted { host, boot } => self.host_booted(host, *boot),
            LedgerOp::HostLeft { host } => self.host_left(host),
            LedgerOp::Adopt { id, by, boot, app } => self.adopt(*id, by, *boot, *app),
        };
        self.check_invariants();
        outcome
    }

    fn refuse(&self, id: EnclaveId, reason: LedgerRefusal) -> LedgerOutcome {
        LedgerOutcome::Refused {
            reason,
            record: self.records.get(&id).cloned(),
        }
    }

    fn register(
        &mut self,
        id: EnclaveId,
        app: Measurement,
        app_name: &str,
        (owner, boot, departures): (&HostId, Boot, u64),
        cap: Option<u32>,
    ) -> LedgerOutcome {
        if let Some(r) = self.records.get(&id) {
            // The same registration repeated (its first reply was lost) is answered alike.
            if r.app == app
                && r.owner == *owner
                && r.owner_boot == boot
                && r.epoch == 0
                && r.last_decision.is_none()
            {
                return LedgerOutcome::Applied(Some(r.clone()));
            }
            return self.refuse(id, LedgerRefusal::AlreadyRegistered);
        }
        if self.is_stale(owner, &boot) {
            return self.refuse(
                id,
                LedgerRefusal::StaleBoot {
                    host: owner.clone(),
                },
            );
        }
        if departures != self.departures_of(owner) {
            return self.refuse(
                id,
                LedgerRefusal::LeftSince {
                    host: owner.clone(),
                },
            );
        }
        if self.records.len() >= LEDGER_RECORDS_MAX {
            return self.refuse(id, LedgerRefusal::Full);
        }
        if let Some(limit) = cap
            && self.live_instances(&app) >= limit as usize
        {
            return self.refuse(id, LedgerRefusal::ClusterLimit { limit });
        }
        let record = EnclaveRecord {
            id,
            app,
            app_name: app_name.to_owned(),
            owner: owner.clone(),
            owner_boot: boot,
            epoch: 0,
            incarnation: 0,
            state: RecordState::Running,
            last_decision: None,
            last_digest: None,
            durable: DurableState::default(),
            max_instances_cluster: cap,
        };
        self.records.insert(id, record.clone());
        LedgerOutcome::Applied(Some(record))
    }

    fn begin(
        &mut self,
        id: EnclaveId,
        epoch: u64,
        from: &HostId,
        to: &HostId,
        migration: MigrationId,
    ) -> LedgerOutcome {
        let Some(r) = self.records.get(&id) else {
            return self.refuse(id, LedgerRefusal::Unknown);
        };
        if r.state
            == (RecordState::Migrating {
                migration,
                to: to.clone(),
            })
            && r.epoch == epoch
        {
            return LedgerOutcome::Applied(Some(r.clone())); // a repeated Begin
        }
        if r.epoch != epoch {
            return self.refuse(
                id,
                LedgerRefusal::StaleEpoch {
                    presented: epoch,
                    current: r.epoch,
                },
            );
        }
        if r.state != RecordState::Running {
            return self.refuse(
                id,
                LedgerRefusal::WrongState {
                    state: r.state.name().into(),
                },
            );
        }
        if r.owner != *from || from == to || self.owner_restarted(r) {
            return self.refuse(id, LedgerRefusal::NotParty { by: from.clone() });
        }
        let r = self.records.get_mut(&id).expect("present");
        r.state = RecordState::Migrating {
            migration,
            to: to.clone(),
        };
        LedgerOutcome::Applied(Some(r.clone()))
    }

    /// COMMIT (`commit` = the receiver's boot, digest and durable state) or ABORT.
    fn decide(
        &mut self,
        id: EnclaveId,
        epoch: u64,
        migration: MigrationId,
        by: &HostId,
        commit: Option<(Boot, [u8; 32], &DurableState)>,
    ) -> LedgerOutcome {
        let decision = if commit.is_some() {
            Decision::Committed
        } else {
            Decision::Aborted
        };
        let Some(r) = self.records.get(&id) else {
            return self.refuse(id, LedgerRefusal::Unknown);
        };
        // A decision already taken for this migration is repeated, or names the winner.
        if let Some((m, d)) = r.last_decision
            && m == migration
        {
            return if d == decision {
                LedgerOutcome::Applied(Some(r.clone()))
            } else {
                self.refuse(id, LedgerRefusal::AlreadyDecided(d))
            };
        }
        if decision == Decision::Aborted
            && r.state == RecordState::Running
            && r.owner == *by
            && r.epoch == epoch
            && !self.owner_restarted(r)
        {
            // The owner gives up a migration whose BEGIN is not (yet) applied. Record the
            // abort and advance the epoch: a BEGIN still on its way is then stale and
            // refused, so the owner may resume knowing BEGIN can never take effect.
            let r = self.records.get_mut(&id).expect("present");
            r.epoch += 1;
            r.last_decision = Some((migration, decision));
            return LedgerOutcome::Applied(Some(r.clone()));
        }
        let RecordState::Migrating {
            migration: current,
            to,
        } = &r.state
        else {
            return self.refuse(
                id,
                LedgerRefusal::WrongState {
                    state: r.state.name().into(),
                },
            );
        };
        if *current != migration {
            return self.refuse(id, LedgerRefusal::OtherMigration);
        }
        if r.epoch != epoch {
            return self.refuse(
                id,
                LedgerRefusal::StaleEpoch {
                    presented: epoch,
                    current: r.epoch,
                },
            );
        }
        let sender_restarted = self.owner_restarted(r);
        let allowed = match decision {
            Decision::Committed => by == to,
            // Deadlines are the parties' business; others may only settle a migration whose
            // sender can no longer act.
            Decision::Aborted => by == to || *by == r.owner || sender_restarted,
        };
        if !allowed {
            return self.refuse(id, LedgerRefusal::NotParty { by: by.clone() });
        }
        if let Some((boot, _, _)) = commit
            && self.is_stale(by, &boot)
        {
            return self.refuse(id, LedgerRefusal::StaleBoot { host: by.clone() });
        }
        let to = to.clone();
        let r = self.records.get_mut(&id).expect("present");
        match commit {
            Some((boot, digest, durable)) => {
                r.owner = to;
                r.owner_boot = boot;
                r.last_digest = Some(digest);
                r.durable.merge(durable);
                r.state = RecordState::Running;
            }
            None if sender_restarted => r.state = RecordState::Lost,
            None => r.state = RecordState::Running,
        }
        r.epoch += 1;
        r.last_decision = Some((migration, decision));
        LedgerOutcome::Applied(Some(r.clone()))
    }

    fn destroy(&mut self, id: EnclaveId, by: &HostId) -> LedgerOutcome {
        let Some(r) = self.records.get(&id) else {
            return LedgerOutcome::Applied(None); // already gone: a repeat
        };
        if r.owner != *by {
            return self.refuse(id, LedgerRefusal::NotParty { by: by.clone() });
        }
        if matches!(r.state, RecordState::Migrating { .. }) {
            return self.refuse(
                id,
                LedgerRefusal::WrongState {
                    state: r.state.name().into(),
                },
            );
        }
        self.records.remove(&id);
        LedgerOutcome::Applied(None)
    }

    fn update(
        &mut self,
        id: EnclaveId,
        epoch: u64,
        by: &HostId,
        durable: &DurableState,
    ) -> LedgerOutcome {
        let Some(r) = self.records.get(&id) else {
            return self.refuse(id, LedgerRefusal::Unknown);
        };
        if r.owner != *by || self.owner_restarted(r) {
            return self.refuse(id, LedgerRefusal::NotParty { by: by.clone() });
        }
        if r.epoch != epoch {
            return self.refuse(
                id,
                LedgerRefusal::StaleEpoch {
                    presented: epoch,
                    current: r.epoch,
                },
            );
        }
        if r.state != RecordState::Running {
            return self.refuse(
                id,
                LedgerRefusal::WrongState {
                    state: r.state.name().into(),
                },
            );
        }
        let r = self.records.get_mut(&id).expect("present");
        r.durable.merge(durable);
        LedgerOutcome::Applied(Some(r.clone()))
    }

    fn host_booted(&mut self, host: &HostId, boot: Boot) -> LedgerOutcome {
        if let Some(current) = self.boots.get(host) {
            let (count, recorded) = (
                godwit_hw::BootEpoch::count_of(&boot),
                godwit_hw::BootEpoch::count_of(current),
            );
            // An earlier boot, or another boot under the recorded count: either a late
            // announcement of an SM that no longer exists, or a component whose boot count
            // went back (a host that rolled back the emulated component's count). Neither
            // is recorded, and the announcer learns so: it never counts its boot as
            // recorded, and takes no part in migrations.
            if count < recorded || (count == recorded && boot != *current) {
                return LedgerOutcome::Refused {
                    reason: LedgerRefusal::StaleBoot { host: host.clone() },
                    record: None,
                };
            }
        }
        // A first announcement is not a restart: the boot that announces may be the one
        // that has been taking part in migrations all along.
        let restarted_now = self
            .boots
            .insert(host.clone(), boot)
            .is_some_and(|previous| previous != boot);
        let boots = &self.boots;
        let restarted = |h: &HostId, b: &Boot| boots.get(h).is_some_and(|cur| cur != b);
        for r in self.records.values_mut() {
            match &r.state {
                // What the host ran under an older boot is gone with its memory.
                RecordState::Running if r.owner == *host && r.owner_boot != boot => {
                    r.state = RecordState::Lost;
                    r.epoch += 1;
                }
                // A migration to the restarted host: its copy, never committed, is gone with
                // its memory, so the migration can only abort. The sender keeps E (or, if
                // it restarted too, no one holds it any more). A COMMIT from the old boot
                // still on its way is then refused as decided.
                // A migration from the restarted host: its paused copy is gone. A receiver
                // that has not committed yet may hold everything, but it may as well hold
                // nothing and never settle the record. Abort: the enclave is lost (its
                // sealed data stays on this host's disk, for adoption), and the receiver's
                // COMMIT, if one comes, is refused as decided.
                RecordState::Migrating { migration, .. }
                    if r.owner == *host && r.owner_boot != boot =>
                {
                    r.last_decision = Some((*migration, Decision::Aborted));
                    r.state = RecordState::Lost;
                    r.epoch += 1;
                }
                RecordState::Migrating { to, migration } if to == host && restarted_now => {
                    let m = *migration;
                    r.state = if restarted(&r.owner, &r.owner_boot) {
                        RecordState::Lost
                    } else {
                        RecordState::Running
                    };
                    r.last_decision = Some((m, Decision::Aborted));
                    r.epoch += 1;
                }
                _ => {}
            }
        }
        LedgerOutcome::Applied(None)
    }

    fn host_left(&mut self, host: &HostId) -> LedgerOutcome {
        *self.departures.entry(host.clone()).or_insert(0) += 1;
        for r in self.records.values_mut() {
            match &r.state {
                RecordState::Running if r.owner == *host => r.state = RecordState::Lost,
                RecordState::Migrating { migration, to } if to == host || r.owner == *host => {
                    let m = *migration;
                    r.state = if r.owner == *host {
                        RecordState::Lost
                    } else {
                        RecordState::Running
                    };
                    r.last_decision = Some((m, Decision::Aborted));
                }
                _ => continue,
            }
            r.epoch += 1;
        }
        LedgerOutcome::Applied(None)
    }

    fn adopt(&mut self, id: EnclaveId, by: &HostId, boot: Boot, app: Measurement) -> LedgerOutcome {
        let Some(r) = self.records.get(&id) else {
            return self.refuse(id, LedgerRefusal::Unknown);
        };
        if r.owner == *by && r.owner_boot == boot && r.state == RecordState::Running {
            return LedgerOutcome::Applied(Some(r.clone())); // a repeated adoption
        }
        if r.state != RecordState::Lost {
            return self.refuse(
                id,
                LedgerRefusal::WrongState {
                    state: r.state.name().into(),
                },
            );
        }
        if r.owner != *by && !r.durable.sealed.is_empty() {
            return self.refuse(id, LedgerRefusal::NotParty { by: by.clone() });
        }
        if r.app != app {
            return self.refuse(id, LedgerRefusal::WrongApp);
        }
        if self.is_stale(by, &boot) {
            return self.refuse(id, LedgerRefusal::StaleBoot { host: by.clone() });
        }
        if let Some(limit) = r.max_instances_cluster
            && self.live_instances(&app) >= limit as usize
        {
            return self.refuse(id, LedgerRefusal::ClusterLimit { limit });
        }
        let r = self.records.get_mut(&id).expect("present");
        r.state = RecordState::Running;
        r.owner = by.clone();
        r.owner_boot = boot;
        r.epoch += 1;
        r.incarnation += 1;
        LedgerOutcome::Applied(Some(r.clone()))
    }

    /// Structural invariants, asserted after every write (on in release builds).
    pub fn check_invariants(&self) {
        if let Err(e) = self.validate() {
            panic!("ledger invariant: {e}");
        }
    }

    /// The structural invariants as a check, for a ledger that came from elsewhere (a
    /// snapshot): an error, never a panic.
    pub fn validate(&self) -> Result<(), String> {
        for (id, r) in &self.records {
            if *id != r.id {
                return Err(format!("record of {} filed under {id}", r.id));
            }
            if let RecordState::Migrating { to, .. } = &r.state
                && *to == r.owner
            {
                return Err(format!("{id} migrates to its own owner"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(s: &str) -> HostId {
        HostId::new(s).unwrap()
    }
    const E: EnclaveId = EnclaveId([1; 16]);
    const M1: MigrationId = MigrationId([1; 16]);
    const M2: MigrationId = MigrationId([2; 16]);
    const BOOT_A: Boot = [0xa; 16];
    const BOOT_B: Boot = [0xb; 16];
    const APP: Measurement = Measurement([3; 32]);

    fn announce(l: &mut Ledger, host: &str, boot: Boot) -> LedgerOutcome {
        l.apply(&LedgerOp::HostBooted {
            host: h(host),
            boot,
        })
    }
    /// The `count`th boot of a component, with `random` as its random part.
    fn counted(count: u64, random: u8) -> Boot {
        let mut b = [random; 16];
        b[..8].copy_from_slice(&count.to_be_bytes());
        b
    }
    /// E, registered by a's SM.
    fn register_e(l: &mut Ledger) {
        register_e_at(l, BOOT_A);
    }
    /// E, registered by a's SM under `boot`.
    fn register_e_at(l: &mut Ledger, boot: Boot) {
        let out = l.apply(&LedgerOp::Register {
            id: E,
            app: APP,
            app_name: "app".into(),
            owner: h("a"),
            boot,
            max_instances_cluster: None,
            departures: 0,
        });
        assert!(matches!(out, LedgerOutcome::Applied(Some(_))));
    }
    /// a and b booted, and E registered at a.
    fn registered() -> Ledger {
        let mut l = Ledger::new();
        announce(&mut l, "a", BOOT_A);
        announce(&mut l, "b", BOOT_B);
        register_e(&mut l);
        l
    }

    fn begin(l: &mut Ledger, epoch: u64, m: MigrationId) -> LedgerOutcome {
        l.apply(&LedgerOp::Begin {
            id: E,
            epoch,
            from: h("a"),
            to: h("b"),
            migration: m,
        })
    }
    fn durable(counter: u64) -> DurableState {
        DurableState {
            sealed: BTreeMap::from([(
                "s".to_string(),
                SlotVersion {
                    version: counter,
                    incarnation: 0,
                    len: 8,
                },
            )]),
            counters: BTreeMap::from([("c".to_string(), counter)]),
        }
    }
    fn commit(l: &mut Ledger, epoch: u64, m: MigrationId) -> LedgerOutcome {
        l.apply(&LedgerOp::Commit {
            id: E,
            epoch,
            migration: m,
            by: h("b"),
            boot: BOOT_B,
            digest: [9; 32],
            durable: durable(5),
        })
    }
    fn abort(l: &mut Ledger, epoch: u64, m: MigrationId, by: &str) -> LedgerOutcome {
        l.apply(&LedgerOp::Abort {
            id: E,
            epoch,
            migration: m,
            by: h(by),
        })
    }
    /// M1 was aborted for good: a COMMIT is refused, naming the abort.
    fn assert_commit_refused(l: &mut Ledger) {
        assert!(matches!(
            commit(l, 0, M1),
            LedgerOutcome::Refused {
                reason: LedgerRefusal::AlreadyDecided(Decision::Aborted),
                ..
            }
        ));
    }
    /// M1's abort, repeated by `by`, is answered as applied (a party whose reply was lost
    /// learns the decision).
    fn assert_abort_applies(l: &mut Ledger, by: &str) {
        assert!(matches!(abort(l, 0, M1, by), LedgerOutcome::Applied(_)));
    }
    fn state(l: &Ledger) -> (String, u64, RecordState) {
        let r = l.get(&E).unwrap();
        (r.owner.to_string(), r.epoch, r.state.clone())
    }

    #[test]
    fn a_full_ledger_refuses_registrations_and_takes_one_after_a_destroy() {
        let mut l = Ledger::new();
        announce(&mut l, "a", BOOT_A);
        let reg = |l: &mut Ledger, i: usize| {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&(i as u64).to_be_bytes());
            l.apply(&LedgerOp::Register {
                id: EnclaveId(id),
                app: APP,
                app_name: "app".into(),
                owner: h("a"),
                boot: BOOT_A,
                max_instances_cluster: None,
                departures: 0,
            })
        };
        for i in 0..LEDGER_RECORDS_MAX {
            assert!(matches!(reg(&mut l, i), LedgerOutcome::Applied(Some(_))));
        }
        assert!(matches!(
            reg(&mut l, LEDGER_RECORDS_MAX),
            LedgerOutcome::Refused {
                reason: LedgerRefusal::Full,
                ..
            }
        ));
        let first = *l.records.keys().next().unwrap();
        let out = l.apply(&LedgerOp::Destroy {
            id: first,
            by: h("a"),
        });
        assert!(matches!(out, LedgerOutcome::Applied(_)), "{out:?}");
        assert!(matches!(
            reg(&mut l, LEDGER_RECORDS_MAX),
            LedgerOutcome::Applied(Some(_))
        ));
    }

    #[test]
    fn commit_moves_ownership_and_advances_the_epoch() {
        let mut l = registered();
        assert!(matches!(begin(&mut l, 0, M1), LedgerOutcome::Applied(_)));
        let LedgerOutcome::Applied(Some(r)) = commit(&mut l, 0, M1) else {
            panic!()
        };
        assert_eq!(state(&l), ("b".into(), 1, RecordState::Running));
        assert_eq!((r.owner_boot, r.durable.clone()), (BOOT_B, durable(5)));
        // Repeating the commit is answered the same; a late abort names the winner.
        assert_eq!(commit(&mut l, 0, M1), LedgerOutcome::Applied(Some(r)));
        assert!(matches!(
            abort(&mut l, 0, M1, "a"),
            LedgerOutcome::Refused {
                reason: LedgerRefusal::AlreadyDecided(Decision::Committed),
                ..
            }
        ));
    }

    #[test]
    fn abort_first_refuses_the_commit() {
        let mut l = registered();
        begin(&mut l, 0, M1);
        assert_abort_applies(&mut l, "b");
        assert_eq!(state(&l), ("a".into(), 1, RecordState::Running));
        assert_commit_refused(&mut l);
    }

    #[test]
    fn a_receiver_restart_aborts_the_migrations_to_it() {
        let mut l = registered();
        begin(&mut l, 0, M1);
        // The receiver's first announcement of a boot it already announced changes nothing.
        announce(&mut l, "b", BOOT_B);
        assert!(matches!(state(&l).2, RecordState::Migrating { .. }));
        announce(&mut l, "b", [0xbb; 16]);
        assert_eq!(state(&l), ("a".into(), 1, RecordState::Running));
        // A COMMIT from the receiver's previous boot, still on its way, is refused.
        assert_commit_refused(&mut l);
        // The paused sender's ABORT is answered as applied: it resumes.
        assert_abort_applies(&mut l, "a");
    }

    #[test]
    fn a_receivers_first_announcement_during_a_migration_is_not_a_restart() {
        let mut l = Ledger::new();
        announce(&mut l, "a", BOOT_A);
        register_e(&mut l);
        begin(&mut l, 0, M1);
        // b's boot is announced only now, behind the migration it takes part in.
        announce(&mut l, "b", BOOT_B);
        assert!(matches!(state(&l).2, RecordState::Migrating { .. }));
        assert!(matches!(commit(&mut l, 0, M1), LedgerOutcome::Applied(_)));
    }

    #[test]
    fn a_registration_from_a_boot_not_yet_announced_is_accepted() {
        let mut l = Ledger::new();
        let boot = |count| counted(count, 7);
        let register = |l: &mut Ledger, id: u8, b| {
            l.apply(&LedgerOp::Register {
                id: EnclaveId([id; 16]),
                app: APP,
                app_name: "app".into(),
                owner: h("a"),
                boot: b,
                max_instances_cluster: None,
                departures: 0,
            })
        };
        announce(&mut l, "a", boot(2));
        // The next boot writes before its announcement is applied: it is current.
        assert!(matches!(
            register(&mut l, 1, boot(3)),
            LedgerOutcome::Applied(_)
        ));
        // The one before is not.
        assert!(matches!(
            register(&mut l, 2, boot(1)),
            LedgerOutcome::Refused {
                reason: LedgerRefusal::StaleBoot { .. },
                ..
            }
        ));
    }

    #[test]
    fn a_late_announcement_of_an_earlier_boot_changes_nothing_and_is_refused() {
        let mut l = Ledger::new();
        let boot = counted;
        announce(&mut l, "a", boot(2, 1));
        let stale = LedgerOutcome::Refused {
            reason: LedgerRefusal::StaleBoot { host: h("a") },
            record: None,
        };
        // Boot 1's announcement, delayed, or a component whose count went back.
        assert_eq!(announce(&mut l, "a", boot(1, 9)), stale);
        // Another boot under the recorded count: a count rolled back and advanced again.
        assert_eq!(announce(&mut l, "a", boot(2, 7)), stale);
        assert_eq!(l.boot_of(&h("a")), Some(&boot(2, 1)));
        // The recorded boot repeating its announcement is answered as applied.
        assert_eq!(
            announce(&mut l, "a", boot(2, 1)),
            LedgerOutcome::Applied(None)
        );
    }

    #[test]
    fn an_owner_whose_boot_is_announced_after_its_registration_may_write() {
        let mut l = Ledger::new();
        announce(&mut l, "a", counted(1, 1));
        // Boot 2 registers E before its own announcement is applied.
        register_e_at(&mut l, counted(2, 1));
        let update = |l: &mut Ledger| {
            l.apply(&LedgerOp::Update {
                id: E,
                epoch: 0,
                by: h("a"),
                durable: durable(1),
            })
        };
        assert!(matches!(update(&mut l), LedgerOutcome::Applied(_)));
        announce(&mut l, "a", counted(2, 1));
        assert!(matches!(update(&mut l), LedgerOutcome::Applied(_)));
        assert_eq!(state(&l).2, RecordState::Running);
    }

    #[test]
    fn a_commit_from_a_stale_boot_is_refused() {
        let mut l = Ledger::new();
        announce(&mut l, "a", counted(1, 1));
        announce(&mut l, "b", counted(3, 1));
        register_e_at(&mut l, counted(1, 1));
        begin(&mut l, 0, M1);
        // b's component came back with a count below the recorded one.
        let out = l.apply(&LedgerOp::Commit {
            id: E,
            epoch: 0,
            migration: M1,
            by: h("b"),
            boot: counted(2, 5),
            digest: [9; 32],
            durable: durable(5),
        });
        assert!(matches!(
            out,
            LedgerOutcome::Refused {
                reason: LedgerRefusal::StaleBoot { .. },
                ..
            }
        ));
        assert!(matches!(state(&l).2, RecordState::Migrating { .. }));
    }

    /// Seed 852 of the simulator: a's registration of E reaches the log, a is cut off and
    /// removed before it learns so, b adopts E (it sealed nothing), E releases counter 1 and
    /// b destroys it; a comes back without restarting and asks again. Applied, the late
    /// registration would start E afresh at counter 0 under the same id.
    #[test]
    fn a_registration_made_before_its_host_left_is_refused() {
        let mut l = registered();
        let departures = l.departures_of(&h("a"));
        l.apply(&LedgerOp::HostLeft { host: h("a") });
        assert_eq!(l.departures_of(&h("a")), departures + 1);
        assert_eq!(state(&l).2, RecordState::Lost);
        assert!(matches!(
            l.apply(&LedgerOp::Adopt {
                id: E,
                by: h("b"),
                boot: BOOT_B,
                app: APP,
            }),
            LedgerOutcome::Applied(_)
        ));
        assert!(matches!(
            l.apply(&LedgerOp::Destroy { id: E, by: h("b") }),
            LedgerOutcome::Applied(None)
        ));
        let again = |l: &mut Ledger, departures| {
            l.apply(&LedgerOp::Register {
                id: E,
                app: APP,
                app_name: "app".into(),
                owner: h("a"),
                boot: BOOT_A,
                max_instances_cluster: None,
                departures,
            })
        };
        assert!(matches!(
            again(&mut l, departures),
            LedgerOutcome::Refused {
                reason: LedgerRefusal::LeftSince { .. },
                ..
            }
        ));
        assert!(l.get(&E).is_none(), "the destroyed id stays gone");
        // A registration made after the host came back (it saw the departure) is taken.
        assert!(matches!(
            again(&mut l, departures + 1),
            LedgerOutcome::Applied(Some(_))
        ));
    }

    #[test]
    fn a_registration_from_a_restarted_sm_is_refused() {
        let mut l = registered();
        announce(&mut l, "a", [0xc; 16]);
        let late = l.apply(&LedgerOp::Register {
            id: EnclaveId([9; 16]),
            app: APP,
            app_name: "x".into(),
            owner: h("a"),
            boot: BOOT_A,
            max_instances_cluster: None,
            departures: 0,
        });
        assert!(matches!(
            late,
            LedgerOutcome::Refused {
                reason: LedgerRefusal::StaleBoot { .. },
                ..
            }
        ));
    }

    #[test]
    fn an_abort_before_begin_fences_a_late_begin() {
        let mut l = registered();
        // The sender gave up before its BEGIN was applied (it may still be on its way).
        let LedgerOutcome::Applied(Some(r)) = abort(&mut l, 0, M1, "a") else {
            panic!("the owner's abort is recorded")
        };
        assert_eq!(
            (r.epoch, r.last_decision),
            (1, Some((M1, Decision::Aborted)))
        );
        assert_eq!(state(&l), ("a".into(), 1, RecordState::Running));
        // The late BEGIN is stale; the abort repeats alike.
        assert!(matches!(
            begin(&mut l, 0, M1),
            LedgerOutcome::Refused {
                reason: LedgerRefusal::StaleEpoch { .. },
                ..
            }
        ));
        assert_eq!(abort(&mut l, 0, M1, "a"), LedgerOutcome::Applied(Some(r)));
        // Only the owner can do this to a running record.
        assert!(matches!(
            abort(&mut l, 1, M2, "b"),
            LedgerOutcome::Refused {
                reason: LedgerRefusal::WrongState { .. },
                ..
            }
        ));
    }

    #[test]
    fn stale_epochs_other_migrations_and_outsiders_are_refused() {
        let mut l = registered();
        assert!(matches!(
            begin(&mut l, 5, M1),
            LedgerOutcome::Refused {
                reason: LedgerRefusal::StaleEpoch { .. },
                ..
            }
        ));
        begin(&mut l, 0, M1);
        assert!(matches!(
            begin(&mut l, 0, M2),
            LedgerOutcome::Refused {
                reason: LedgerRefusal::WrongState { .. },
                ..
            }
        ));
        assert!(matches!(
            commit(&mut l, 0, M2),
            LedgerOutcome::Refused {
                reason: LedgerRefusal::OtherMigration,
                ..
            }
        ));
        assert!(matches!(
            abort(&mut l, 0, M1, "c"),
            LedgerOutcome::Refused {
                reason: LedgerRefusal::NotParty { .. },
                ..
            }
        ));
        assert!(matches!(
            l.apply(&LedgerOp::Commit {
                id: E,
                epoch: 0,
                migration: M1,
                by: h("a"),
                boot: BOOT_A,
                digest: [0; 32],
                durable: DurableState::default()
            }),
            LedgerOutcome::Refused {
                reason: LedgerRefusal::NotParty { .. },
                ..
            }
        ));
        commit(&mut l, 0, M1);
        assert!(matches!(
            begin(&mut l, 0, M2),
            LedgerOutcome::Refused {
                reason: LedgerRefusal::StaleEpoch { .. },
                ..
            }
        ));
        assert!(matches!(
            begin(&mut l, 1, M2),
            LedgerOutcome::Refused {
                reason: LedgerRefusal::NotParty { .. },
                ..
            }
        ));
    }

    #[test]
    fn cluster_caps_count_live_instances() {
        let mut l = Ledger::new();
        let reg = |l: &mut Ledger, n: u8| {
            l.apply(&LedgerOp::Register {
                id: EnclaveId([n; 16]),
                app: APP,
                app_name: "app".into(),
                owner: h("a"),
                boot: BOOT_A,
                max_instances_cluster: Some(2),
                departures: 0,
            })
        };
        assert!(matches!(reg(&mut l, 1), LedgerOutcome::Applied(_)));
        assert!(
            matches!(reg(&mut l, 1), LedgerOutcome::Applied(_)),
            "a repeat is answered alike"
        );
        assert!(matches!(reg(&mut l, 2), LedgerOutcome::Applied(_)));
        assert!(matches!(
            reg(&mut l, 3),
            LedgerOutcome::Refused {
                reason: LedgerRefusal::ClusterLimit { limit: 2 },
                ..
            }
        ));
    }

    #[test]
    fn a_restart_loses_what_the_host_ran_but_not_what_it_took_over_after() {
        let mut l = registered();
        // A new boot at a: E (owned under the old boot) is lost.
        announce(&mut l, "a", [0xc; 16]);
        assert_eq!(state(&l), ("a".into(), 1, RecordState::Lost));
        // An enclave registered under the new boot is untouched by a repeat of the same boot.
        l.apply(&LedgerOp::Register {
            id: EnclaveId([2; 16]),
            app: APP,
            app_name: "x".into(),
            owner: h("a"),
            boot: [0xc; 16],
            max_instances_cluster: None,
            departures: 0,
        });
        announce(&mut l, "a", [0xc; 16]);
        assert_eq!(
            l.get(&EnclaveId([2; 16])).unwrap().state,
            RecordState::Running
        );
    }

    #[test]
    fn a_sender_restart_aborts_its_migration_and_records_the_enclave_lost() {
        let mut l = registered();
        begin(&mut l, 0, M1);
        announce(&mut l, "a", [0xc; 16]);
        // The paused copy is gone; nobody else may hold all of it, so nobody may settle.
        assert_eq!(state(&l), ("a".into(), 1, RecordState::Lost));
        // The receiver's COMMIT, if it comes, is refused; its ABORT repeats the decision.
        assert_commit_refused(&mut l);
        assert_abort_applies(&mut l, "b");
    }

    #[test]
    fn a_migration_whose_both_ends_restarted_is_lost() {
        let mut l = registered();
        begin(&mut l, 0, M1);
        announce(&mut l, "a", [0xc; 16]);
        announce(&mut l, "b", [0xd; 16]);
        assert_eq!(state(&l).2, RecordState::Lost);
    }

    #[test]
    fn a_host_leaving_settles_its_migrations() {
        let mut l = registered();
        begin(&mut l, 0, M1);
        l.apply(&LedgerOp::HostLeft { host: h("b") });
        assert_eq!(state(&l), ("a".into(), 1, RecordState::Running));
        // The sender's ABORT is answered as already applied; the receiver's COMMIT refused.
        assert_abort_applies(&mut l, "a");
        assert!(matches!(
            commit(&mut l, 0, M1),
            LedgerOutcome::Refused { .. }
        ));
        l.apply(&LedgerOp::HostLeft { host: h("a") });
        assert_eq!(state(&l), ("a".into(), 2, RecordState::Lost));
    }

    #[test]
    fn updates_only_grow_and_only_the_owner_writes_them() {
        let mut l = registered();
        let up = |l: &mut Ledger, by: &str, d: DurableState| {
            l.apply(&LedgerOp::Update {
                id: E,
                epoch: 0,
                by: h(by),
                durable: d,
            })
        };
        assert!(matches!(
            up(&mut l, "a", durable(3)),
            LedgerOutcome::Applied(_)
        ));
        assert!(matches!(
            up(&mut l, "a", durable(2)),
            LedgerOutcome::Applied(_)
        ));
        assert_eq!(l.get(&E).unwrap().durable, durable(3), "nothing goes back");
        assert!(matches!(
            up(&mut l, "b", durable(9)),
            LedgerOutcome::Refused {
                reason: LedgerRefusal::NotParty { .. },
                ..
            }
        ));
    }

    #[test]
    fn only_the_last_owner_adopts_a_lost_enclave_and_keeps_its_durable_state() {
        let mut l = registered();
        l.apply(&LedgerOp::Update {
            id: E,
            epoch: 0,
            by: h("a"),
            durable: durable(7),
        });
        let adopt = |l: &mut Ledger, by: &str, app| {
            l.apply(&LedgerOp::Adopt {
                id: E,
                by: h(by),
                boot: [0xc; 16],
                app,
            })
        };
        assert!(matches!(
            adopt(&mut l, "a", APP),
            LedgerOutcome::Refused {
                reason: LedgerRefusal::WrongState { .. },
                ..
            }
        ));
        announce(&mut l, "a", [0xc; 16]);
        assert!(matches!(
            adopt(&mut l, "b", APP),
            LedgerOutcome::Refused {
                reason: LedgerRefusal::NotParty { .. },
                ..
            }
        ));
        assert!(matches!(
            adopt(&mut l, "a", Measurement([4; 32])),
            LedgerOutcome::Refused {
                reason: LedgerRefusal::WrongApp,
                ..
            }
        ));
        let LedgerOutcome::Applied(Some(r)) = adopt(&mut l, "a", APP) else {
            panic!()
        };
        assert_eq!(
            (r.state, r.epoch, r.durable),
            (RecordState::Running, 2, durable(7))
        );
    }

    proptest! {
        /// Whatever order commits and aborts of one migration arrive in, exactly one
        /// decision is recorded and every later write agrees with it.
        #[test]
        fn racing_commit_and_abort_give_exactly_one_outcome(ops in proptest::collection::vec(0u8..3, 1..12)) {
            let mut l = registered();
            begin(&mut l, 0, M1);
            let mut decided: Option<Decision> = None;
            for op in ops {
                let (out, d) = match op {
                    0 => (commit(&mut l, 0, M1), Decision::Committed),
                    1 => (abort(&mut l, 0, M1, "a"), Decision::Aborted),
                    _ => (abort(&mut l, 0, M1, "b"), Decision::Aborted),
                };
                match out {
                    LedgerOutcome::Applied(_) => {
                        prop_assert!(decided.is_none() || decided == Some(d));
                        decided = Some(d);
                    }
                    LedgerOutcome::Refused { reason, .. } => {
                        prop_assert_eq!(reason, LedgerRefusal::AlreadyDecided(decided.unwrap()));
                    }
                }
            }
            if let Some(d) = decided {
                let (owner, epoch, _) = state(&l);
                prop_assert_eq!(epoch, 1);
                prop_assert_eq!(owner.as_str(), if d == Decision::Committed { "b" } else { "a" });
            }
        }
    }
}
