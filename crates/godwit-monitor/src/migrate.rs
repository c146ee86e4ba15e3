//! The SM's side of migrations: it checks PREPAREs, pauses and collects enclaves, streams
//! their state, rebuilds incoming ones, and carries out the decisions of the state
//! machines in `godwit-proto`.

use std::collections::BTreeMap;
use std::sync::Arc;

use godwit_enclave::{Enclave, LoadedModule, Restoring, Runtime, WASM_PAGE_BYTES};
use godwit_hw::TrustedInstant;
use godwit_proto::{
    AbortReason, Incoming, Message, MigrationId, Outgoing, Prepare, RecvEffect, RecvOutcome,
    RefuseReason, SendEffect, SendOutcome, SendPlan, StoreReply,
};
use godwit_wire::{EnclaveId, HostId, Measurement};

use crate::net::ConnId;
use crate::{
    EnclaveState, Event, InstanceServices, MigrationReport, Monitor, MonitorError, Pending,
    Resident, SLOTS_MAX,
};

struct Out {
    conn: ConnId,
    enclave: EnclaveId,
    to: HostId,
    /// `None` until the channel to `to` is open.
    machine: Option<Outgoing>,
    /// Whether this migration holds the enclave paused (state `Migrating`).
    paused: bool,
}

struct In {
    conn: ConnId,
    machine: Incoming,
    restoring: Option<Restoring<InstanceServices>>,
    /// Rebuilt and re-sealed, waiting for COMMIT: never runs before it.
    rebuilt: Option<Enclave<InstanceServices>>,
}

#[derive(Default)]
pub(crate) struct Migrations {
    out: BTreeMap<MigrationId, Out>,
    inc: BTreeMap<MigrationId, In>,
}

impl Migrations {
    pub(crate) fn in_flight(&self) -> (usize, usize) {
        (self.out.len(), self.inc.len())
    }

    pub(crate) fn reserved_for(&self, app: &Measurement) -> usize {
        self.inc
            .values()
            .filter(|i| i.machine.prepare().app == *app)
            .count()
    }

    pub(crate) fn reserved_memory(&self) -> u64 {
        self.inc
            .values()
            .map(|i| i.machine.prepare().memory_bytes)
            .sum()
    }

    pub(crate) fn holds_enclave(&self, id: &EnclaveId) -> bool {
        self.inc
            .values()
            .any(|i| i.machine.prepare().enclave == *id)
    }

    pub(crate) fn is_migrating(&self, id: &EnclaveId) -> bool {
        self.out.values().any(|o| o.enclave == *id)
    }

    /// Outgoing migrations that have not paused their enclave: (migration, enclave).
    pub(crate) fn unpaused_out(&self) -> Vec<(MigrationId, EnclaveId)> {
        self.out
            .iter()
            .filter(|(_, o)| !o.paused)
            .map(|(m, o)| (*m, o.enclave))
            .collect()
    }

    pub(crate) fn is_paused_for_migration(&self, id: &EnclaveId) -> bool {
        self.out.values().any(|o| o.enclave == *id && o.paused)
    }

    pub(crate) fn timeouts(&self) -> impl Iterator<Item = TrustedInstant> + '_ {
        let out = self
            .out
            .values()
            .filter_map(|o| o.machine.as_ref()?.poll_timeout());
        let inc = self.inc.values().filter_map(|i| i.machine.poll_timeout());
        out.chain(inc)
    }

    pub(crate) fn check_invariants(&self, enclaves: &BTreeMap<EnclaveId, Resident>) {
        for (m, o) in &self.out {
            assert!(
                enclaves.contains_key(&o.enclave),
                "migration {m} of an enclave that is gone"
            );
            let outgoing_of_enclave = self.out.values().filter(|x| x.enclave == o.enclave).count();
            assert_eq!(
                outgoing_of_enclave, 1,
                "two migrations of enclave {}",
                o.enclave
            );
        }
        for (m, i) in &self.inc {
            let id = i.machine.prepare().enclave;
            assert!(
                !enclaves.contains_key(&id),
                "incoming migration {m} of an enclave already here"
            );
            assert!(
                i.restoring.is_none() || i.rebuilt.is_none(),
                "two copies of incoming {m}"
            );
        }
    }
}

fn state_error(e: impl std::fmt::Display) -> AbortReason {
    AbortReason::State(e.to_string())
}

impl Monitor {
    /// The hypervisor asks the SM to migrate `enclave` to host `to` (claim 10). The SM
    /// attests `to` (or reuses an open channel) and runs the protocol; the outcome arrives
    /// as [`Event::MigrationFinished`].
    pub fn migrate(&mut self, enclave: EnclaveId, to: HostId) -> Result<MigrationId, MonitorError> {
        let r = self
            .enclaves
            .get(&enclave)
            .ok_or(MonitorError::UnknownEnclave(enclave))?;
        if !matches!(r.state, EnclaveState::Running | EnclaveState::Paused) {
            return Err(MonitorError::WrongState {
                id: enclave,
                state: r.state,
                expected: EnclaveState::Running,
            });
        }
        if !r.usable() {
            return Err(MonitorError::Withdrawn(enclave));
        }
        if !r.module.manifest().migratable {
            return Err(MonitorError::NotMigratable(enclave));
        }
        if self.migrations.is_migrating(&enclave) {
            return Err(MonitorError::AlreadyMigrating(enclave));
        }
        if to == *self.host() {
            return Err(MonitorError::BadDestination(to));
        }
        if self.cluster().is_none() {
            return Err(MonitorError::StoreStarting);
        }
        let mut id = [0u8; 16];
        self.hw.fill_random(&mut id);
        let migration = MigrationId(id);
        let conn = self.dial(&to);
        self.migrations.out.insert(
            migration,
            Out {
                conn,
                enclave,
                to,
                machine: None,
                paused: false,
            },
        );
        if self.net.is_open(conn) {
            self.start_outgoing(migration);
        }
        self.check_invariants();
        Ok(migration)
    }

    /// The host asks to give a migration up; the store still decides if E was paused.
    pub fn cancel_migration(&mut self, migration: MigrationId) -> Result<(), MonitorError> {
        let now = self.hw.now();
        let o = self
            .migrations
            .out
            .get_mut(&migration)
            .ok_or(MonitorError::UnknownMigration(migration))?;
        match &mut o.machine {
            Some(machine) => machine.cancel(now),
            None => {
                let enclave = o.enclave;
                self.migrations.out.remove(&migration);
                self.event(Event::MigrationFinished {
                    migration,
                    enclave,
                    outcome: Err(AbortReason::Cancelled),
                });
                self.settle_revoked(enclave);
                self.check_invariants();
                return Ok(());
            }
        }
        self.drive_out(migration);
        self.check_invariants();
        Ok(())
    }

    /// Migrations under way here: (outgoing, incoming).
    pub fn migrations_in_flight(&self) -> (usize, usize) {
        self.migrations.in_flight()
    }

    /// Bytes sent and bytes to send of an outgoing migration.
    pub fn migration_progress(&self, migration: MigrationId) -> Option<(u64, u64)> {
        self.migrations
            .out
            .get(&migration)?
            .machine
            .as_ref()
            .map(Outgoing::progress)
    }

    fn start_outgoing(&mut self, migration: MigrationId) {
        let Some(o) = self.migrations.out.get(&migration) else {
            return;
        };
        let Some(r) = self.enclaves.get(&o.enclave) else {
            return;
        };
        // From what the SM keeps beside the instance: it may be out running an ecall.
        let module = &r.module;
        let seen = r.durability.seen();
        let sealed_slots = seen.sealed.len();
        let sealed_bytes = seen.sealed.values().map(|v| v.len).sum();
        let prepare = Prepare {
            migration,
            enclave: o.enclave,
            app: module.measurement(),
            manifest: module.manifest().clone(),
            module_bytes: module.module_bytes().len() as u64,
            memory_bytes: r.memory_bytes as u64,
            // Invariant: at most SLOTS_MAX slots exist.
            sealed_slots: u32::try_from(sealed_slots).expect("slot count bounded"),
            sealed_bytes,
            counters: u32::try_from(seen.counters.len()).expect("counter count bounded"),
            epoch: r.epoch,
            incarnation: r.incarnation,
            cluster: self.cluster().unwrap_or_default(),
        };
        let machine = Outgoing::start(
            self.hw.now(),
            prepare,
            self.host().clone(),
            o.to.clone(),
            self.config.timeouts.clone(),
        );
        if let Some(o) = self.migrations.out.get_mut(&migration) {
            o.machine = Some(machine);
        }
        self.drive_out(migration);
    }

    /// A channel opened: start the migrations that waited for it.
    pub(crate) fn connection_opened(&mut self, conn: ConnId) {
        let waiting: Vec<MigrationId> = self
            .migrations
            .out
            .iter()
            .filter(|(_, o)| o.conn == conn && o.machine.is_none())
            .map(|(&m, _)| m)
            .collect();
        for m in waiting {
            self.start_outgoing(m);
        }
    }

    /// A connection ended: the migrations on it learn so.
    pub(crate) fn connection_lost(&mut self, conn: ConnId, reason: Option<AbortReason>) {
        let now = self.hw.now();
        let outs: Vec<MigrationId> = self
            .migrations
            .out
            .iter()
            .filter(|(_, o)| o.conn == conn)
            .map(|(&m, _)| m)
            .collect();
        for m in outs {
            let Some(o) = self.migrations.out.get_mut(&m) else {
                continue;
            };
            match &mut o.machine {
                Some(machine) => machine.handle_disconnect(now),
                None => {
                    let enclave = o.enclave;
                    self.migrations.out.remove(&m);
                    let why = reason.clone().unwrap_or(AbortReason::ConnectionLost);
                    self.event(Event::MigrationFinished {
                        migration: m,
                        enclave,
                        outcome: Err(why),
                    });
                    self.settle_revoked(enclave);
                    continue;
                }
            }
            self.drive_out(m);
        }
        let ins: Vec<MigrationId> = self
            .migrations
            .inc
            .iter()
            .filter(|(_, i)| i.conn == conn)
            .map(|(&m, _)| m)
            .collect();
        for m in ins {
            if let Some(i) = self.migrations.inc.get_mut(&m) {
                i.machine.handle_disconnect(now);
            }
            self.drive_in(m);
        }
    }

    /// A message from `peer` on `conn`. Messages about a migration are accepted only on the
    /// connection that migration runs on.
    pub(crate) fn dispatch(
        &mut self,
        conn: ConnId,
        peer: &HostId,
        msg: Message<'_>,
        chain_before: &[u8],
    ) {
        let now = self.hw.now();
        let m = msg.migration();
        if let Message::Prepare(prepare) = msg {
            return self.on_prepare(conn, peer, *prepare, now);
        }
        if let Some(o) = self.migrations.out.get_mut(&m).filter(|o| o.conn == conn) {
            if let Some(machine) = &mut o.machine {
                machine.handle_message(now, &msg);
            }
            return self.drive_out(m);
        }
        let Some(i) = self.migrations.inc.get_mut(&m).filter(|i| i.conn == conn) else {
            tracing::debug!(migration = %m, kind = msg.kind(), %peer, "message for no migration here");
            return;
        };
        let write = i.machine.handle_message(now, &msg, chain_before);
        if let (true, Message::Memory { offset, bytes, .. }) = (write, &msg) {
            let written = match &mut i.restoring {
                Some(r) => usize::try_from(*offset)
                    .map_err(|_| "offset".to_string())
                    .and_then(|off| r.write(off, bytes).map_err(|e| e.to_string())),
                None => Err("no instance to write into".into()),
            };
            if let Err(e) = written {
                i.machine.restored(now, Err(state_error(e)));
            }
        }
        self.drive_in(m);
    }

    fn check_prepare(&self, p: &Prepare) -> Result<(), RefuseReason> {
        let invalid = |why: &str| Err(RefuseReason::Invalid(why.to_owned()));
        if let Err(e) = p.manifest.validate() {
            return invalid(&e.to_string());
        }
        if !p.manifest.migratable {
            return Err(RefuseReason::NotMigratable);
        }
        match self.boot {
            crate::BootStatus::Recorded => {}
            crate::BootStatus::Announced => return Err(RefuseReason::Starting),
            crate::BootStatus::Stale => return Err(RefuseReason::StaleBoot),
        }
        match self.cluster() {
            None => return Err(RefuseReason::Starting),
            Some(c) if c != p.cluster => return Err(RefuseReason::ForeignStore),
            Some(_) => {}
        }
        if self.migrations.inc.contains_key(&p.migration) {
            return invalid("a migration with this id is already under way");
        }
        if self.enclaves.contains_key(&p.enclave) || self.migrations.holds_enclave(&p.enclave) {
            return Err(RefuseReason::AlreadyPresent);
        }
        let present = self.instances_of(&p.app);
        let limit = p.manifest.max_instances_per_host;
        if present >= limit {
            return Err(RefuseReason::InstanceLimit { limit, present });
        }
        if p.memory_bytes > p.manifest.memory_max_bytes()
            || !p.memory_bytes.is_multiple_of(WASM_PAGE_BYTES as u64)
        {
            return invalid("memory size not allowed by the manifest");
        }
        if p.module_bytes == 0 || p.module_bytes > Runtime::MODULE_BYTES_MAX as u64 {
            return invalid("module size");
        }
        if p.sealed_slots as usize > SLOTS_MAX
            || p.sealed_bytes > (SLOTS_MAX * godwit_enclave::SEAL_BYTES_MAX) as u64
            || p.counters as usize > crate::COUNTERS_MAX
        {
            return invalid("sealed data or counters over the limits");
        }
        let available = self
            .config
            .memory_budget_bytes
            .saturating_sub(self.memory_in_use());
        if p.memory_bytes > available {
            return Err(RefuseReason::TooLarge {
                bytes: p.memory_bytes,
                available,
            });
        }
        Ok(())
    }

    fn on_prepare(
        &mut self,
        conn: ConnId,
        peer: &HostId,
        prepare: Prepare,
        received: TrustedInstant,
    ) {
        let migration = prepare.migration;
        if let Err(reason) = self.check_prepare(&prepare) {
            tracing::info!(%migration, %peer, %reason, "refused a PREPARE");
            return self.send_message(conn, &Message::Refuse { migration, reason });
        }
        // With the module kept here, the instance to restore into is made now, before READY.
        let restoring = match self.modules.get(&prepare.app) {
            Some(loaded) => match self.begin_restore(&prepare, &loaded) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(%migration, error = ?e, "cannot prepare an instance");
                    let reason = RefuseReason::Invalid("cannot prepare an instance".into());
                    return self.send_message(conn, &Message::Refuse { migration, reason });
                }
            },
            None => None,
        };
        let now = self.hw.now();
        let machine = Incoming::accept(
            now,
            prepare,
            peer.clone(),
            (self.host().clone(), self.hw.boot_epoch().to_bytes()),
            self.config.timeouts.clone(),
            (
                now.duration_since(received).unwrap_or_default(),
                restoring.is_some(),
            ),
        );
        self.migrations.inc.insert(
            migration,
            In {
                conn,
                machine,
                restoring,
                rebuilt: None,
            },
        );
        self.drive_in(migration);
    }

    /// Pulls the next data record of a streaming migration on `conn`.
    pub(crate) fn poll_migration_data(&mut self, conn: ConnId) -> Option<Vec<u8>> {
        let now = self.hw.now();
        let streaming: Vec<MigrationId> = self
            .migrations
            .out
            .iter()
            .filter(|(_, o)| {
                o.conn == conn && o.machine.as_ref().is_some_and(Outgoing::is_streaming)
            })
            .map(|(&m, _)| m)
            .collect();
        for m in streaming {
            let Self {
                migrations,
                enclaves,
                net,
                ..
            } = self;
            let (Some(o), Some(c)) = (migrations.out.get_mut(&m), net.get_mut(conn)) else {
                continue;
            };
            let (Some(machine), Some(e)) = (
                o.machine.as_mut(),
                enclaves.get(&o.enclave).and_then(|r| r.enclave.as_ref()),
            ) else {
                continue;
            };
            let memory = e.memory();
            let frame = Self::seal_into_frame(c, |chain, out| {
                let (prefix, rest) = out.split_first_mut()?;
                *prefix = crate::net::MIGRATION_PREFIX;
                machine.poll_data(now, memory, chain, rest).map(|n| n + 1)
            });
            self.drive_out(m);
            if frame.is_some() {
                return frame;
            }
        }
        None
    }

    pub(crate) fn outgoing_store_reply(&mut self, m: MigrationId, reply: StoreReply) {
        let now = self.hw.now();
        if let Some(machine) = self
            .migrations
            .out
            .get_mut(&m)
            .and_then(|o| o.machine.as_mut())
        {
            machine.handle_store(now, reply);
        }
        self.drive_out(m);
    }

    pub(crate) fn incoming_store_reply(&mut self, m: MigrationId, reply: StoreReply) {
        let now = self.hw.now();
        if let Some(i) = self.migrations.inc.get_mut(&m) {
            i.machine.handle_store(now, reply);
        }
        self.drive_in(m);
    }

    /// Settles every paused outgoing migration whose outcome this SM's own applied ledger
    /// already shows (this migration decided, or the enclave recorded lost or someone
    /// else's), as the store's answer to its write would: an SM removed from the store,
    /// whose writes no longer reach it, would otherwise hold its enclave paused for ever
    /// (a hostile review found it). Only the machine's own phases that wait for the store
    /// act on it; one still streaming settles once it times out into its abort.
    pub(crate) fn settle_from_ledger(&mut self) {
        use godwit_proto::{LedgerOutcome, LedgerRefusal, RecordState};
        let me = self.host().clone();
        let now = self.hw.now();
        let paused: Vec<(MigrationId, EnclaveId)> = self
            .migrations
            .out
            .iter()
            .filter(|(_, o)| o.paused)
            .map(|(m, o)| (*m, o.enclave))
            .collect();
        for (m, id) in paused {
            let record = self.ledger().get(&id).cloned();
            let decided = record
                .as_ref()
                .and_then(|r| r.last_decision)
                .filter(|(d, _)| *d == m)
                .map(|(_, d)| d);
            let reason = match (&record, decided) {
                (_, Some(d)) => LedgerRefusal::AlreadyDecided(d),
                (Some(r), None) if r.state == RecordState::Lost || r.owner != me => {
                    LedgerRefusal::WrongState {
                        state: r.state.name().into(),
                    }
                }
                (None, None) => LedgerRefusal::Unknown,
                (Some(_), None) => continue,
            };
            if let Some(machine) = self
                .migrations
                .out
                .get_mut(&m)
                .and_then(|o| o.machine.as_mut())
            {
                machine.handle_store(
                    now,
                    StoreReply::Outcome(LedgerOutcome::Refused { reason, record }),
                );
            }
            self.drive_out(m);
        }
    }

    pub(crate) fn migration_timeouts(&mut self, now: TrustedInstant) {
        let outs: Vec<MigrationId> = self.migrations.out.keys().copied().collect();
        for m in outs {
            if let Some(machine) = self
                .migrations
                .out
                .get_mut(&m)
                .and_then(|o| o.machine.as_mut())
            {
                machine.handle_timeout(now);
            }
            self.drive_out(m);
        }
        let ins: Vec<MigrationId> = self.migrations.inc.keys().copied().collect();
        for m in ins {
            if let Some(i) = self.migrations.inc.get_mut(&m) {
                i.machine.handle_timeout(now);
            }
            self.drive_in(m);
        }
        self.settle_from_ledger();
    }

    /// Carries out the sender machine's effects.
    fn drive_out(&mut self, m: MigrationId) {
        while let Some(effect) = self
            .migrations
            .out
            .get_mut(&m)
            .and_then(|o| o.machine.as_mut())
            .and_then(Outgoing::poll_effect)
        {
            // Invariant: the entry exists while its machine yields effects.
            let (conn, enclave) = {
                let o = &self.migrations.out[&m];
                (o.conn, o.enclave)
            };
            match effect {
                SendEffect::Transmit(msg) => self.send_message(conn, &msg),
                SendEffect::PauseAndCollect => match self.pause_for(m, enclave) {
                    Err(reason) => self.collected(m, Err(reason)),
                    // Collect once the ledger holds every durable change E made (the
                    // state that travels is then the state the ledger vouches for), and
                    // once E is back from any ecall that holds it.
                    Ok(()) if self.enclaves[&enclave].ready_to_collect() => {
                        let plan = self.collect(m, enclave);
                        self.collected(m, plan);
                    }
                    Ok(()) => {
                        if let Some(r) = self.enclaves.get_mut(&enclave) {
                            r.durability.collect_for = Some(m);
                        }
                    }
                },
                SendEffect::Store(op) => self.store(Pending::Outgoing(m), op),
                SendEffect::Resume { epoch } => self.release(m, enclave, Some(epoch)),
                SendEffect::Wipe { keep_blobs } => {
                    self.release(m, enclave, None);
                    let revoked = self.enclaves.get(&enclave).and_then(|r| r.revoked);
                    let fate = if keep_blobs || revoked == Some(crate::BlobFate::Keep) {
                        crate::BlobFate::Keep
                    } else {
                        crate::BlobFate::Delete
                    };
                    self.wipe(enclave, "the enclave moved on or was lost", fate);
                }
                SendEffect::Finished(outcome) => self.finish_out(m, enclave, outcome),
            }
        }
    }

    fn collected(&mut self, m: MigrationId, plan: Result<SendPlan, AbortReason>) {
        let now = self.hw.now();
        if let Some(machine) = self
            .migrations
            .out
            .get_mut(&m)
            .and_then(|o| o.machine.as_mut())
        {
            machine.collected(now, plan);
        }
    }

    /// The ledger caught up with an enclave whose migration waits to collect it.
    pub(crate) fn resume_collect(&mut self, enclave: EnclaveId) {
        let Some(r) = self.enclaves.get_mut(&enclave) else {
            return;
        };
        if !r.ready_to_collect() {
            return;
        }
        let Some(m) = r.durability.collect_for.take() else {
            return;
        };
        let plan = self.collect(m, enclave);
        self.collected(m, plan);
        self.drive_out(m);
    }

    fn pause_for(&mut self, m: MigrationId, enclave: EnclaveId) -> Result<(), AbortReason> {
        let Some(r) = self.enclaves.get_mut(&enclave) else {
            return Err(state_error("the enclave is gone"));
        };
        if !matches!(r.state, EnclaveState::Running | EnclaveState::Paused) {
            return Err(state_error(format!("the enclave is {}", r.state)));
        }
        r.resume_to = r.state;
        r.state = EnclaveState::Migrating;
        if let Some(o) = self.migrations.out.get_mut(&m) {
            o.paused = true;
        }
        Ok(())
    }

    fn collect(&mut self, m: MigrationId, enclave: EnclaveId) -> Result<SendPlan, AbortReason> {
        let Some(r) = self.enclaves.get_mut(&enclave) else {
            return Err(state_error("the enclave is gone"));
        };
        // The state may have grown since PREPARE (E ran until READY): it must still fit.
        let prepare = self
            .migrations
            .out
            .get(&m)
            .and_then(|o| o.machine.as_ref())
            .map(|x| x.prepare().clone());
        let Some(prepare) = prepare else {
            return Err(state_error("no machine"));
        };
        let Some(e) = r.enclave.as_mut() else {
            // Invariant: collection waits for the enclave to be back (`ready_to_collect`).
            unreachable!("collecting an enclave an ecall holds");
        };
        let sealed = e
            .services_mut()
            .unseal_all()
            .map_err(|(slot, e)| state_error(format!("sealed slot {slot:?} refused: {e}")))?;
        let sealed_bytes: u64 = sealed.iter().map(|s| s.data.len() as u64).sum();
        if e.memory_bytes() as u64 != prepare.memory_bytes
            || sealed.len() > prepare.sealed_slots as usize
            || sealed_bytes > prepare.sealed_bytes
        {
            return Err(state_error(
                "the enclave grew between PREPARE and READY; retry",
            ));
        }
        Ok(SendPlan {
            module: Arc::clone(e.module().module_bytes()),
            sealed,
            globals: e.globals(),
            counters: e.services().counters(),
        })
    }

    /// The migration lets go of the paused enclave: back to its state before at the
    /// ledger's epoch, or (`None`: it is about to be wiped) nowhere.
    fn release(&mut self, m: MigrationId, enclave: EnclaveId, resume_at: Option<u64>) {
        if let Some(o) = self.migrations.out.get_mut(&m) {
            o.paused = false;
        }
        if let Some(r) = self.enclaves.get_mut(&enclave)
            && r.durability.collect_for == Some(m)
        {
            // A collection still waiting for the ledger is no longer wanted.
            r.durability.collect_for = None;
        }
        if let Some(r) = self.enclaves.get_mut(&enclave)
            && r.state == EnclaveState::Migrating
        {
            match resume_at {
                // A revoked enclave never runs again: it is wiped when the migration ends.
                Some(epoch) if r.revoked.is_none() => {
                    r.state = r.resume_to;
                    r.epoch = epoch;
                }
                _ => r.state = EnclaveState::Paused,
            }
        }
    }

    fn finish_out(&mut self, m: MigrationId, enclave: EnclaveId, outcome: SendOutcome) {
        let Some(o) = self.migrations.out.remove(&m) else {
            return;
        };
        if let Some(r) = self.enclaves.get_mut(&enclave)
            && r.durability.collect_for == Some(m)
        {
            r.durability.collect_for = None;
        }
        let outcome = match outcome {
            SendOutcome::Committed { epoch } => {
                let machine = o.machine.as_ref();
                Ok(report(
                    machine,
                    o.to.clone(),
                    epoch,
                    self.net.attest_time(o.conn).unwrap_or_default(),
                ))
            }
            SendOutcome::Aborted(reason) => {
                tracing::info!(migration = %m, %enclave, %reason, code = reason.code(), "migration aborted");
                Err(reason)
            }
        };
        self.event(Event::MigrationFinished {
            migration: m,
            enclave,
            outcome,
        });
        self.settle_revoked(enclave);
    }

    /// Carries out the receiver machine's effects.
    fn drive_in(&mut self, m: MigrationId) {
        while let Some(effect) = self
            .migrations
            .inc
            .get_mut(&m)
            .and_then(|i| i.machine.poll_effect())
        {
            let now = self.hw.now();
            let conn = self.migrations.inc[&m].conn;
            match effect {
                RecvEffect::Transmit(msg) => self.send_message(conn, &msg),
                RecvEffect::LoadModule(bytes) => {
                    let result = self.load_incoming(m, &bytes);
                    if let Some(i) = self.migrations.inc.get_mut(&m) {
                        i.machine.module_loaded(now, result);
                    }
                }
                RecvEffect::Complete(received) => {
                    let result = self.rebuild_incoming(m, *received);
                    if let Some(i) = self.migrations.inc.get_mut(&m) {
                        i.machine.restored(now, result);
                    }
                }
                RecvEffect::Store(op) => self.store(Pending::Incoming(m), op),
                RecvEffect::Activate => self.activate(m),
                RecvEffect::Discard => self.discard(m),
                RecvEffect::Finished(outcome) => {
                    let Some(i) = self.migrations.inc.remove(&m) else {
                        continue;
                    };
                    let enclave = i.machine.prepare().enclave;
                    if i.restoring.is_some() || i.rebuilt.is_some() {
                        // Invariant: the machine discards or activates before finishing.
                        unreachable!("incoming migration {m} finished holding a copy");
                    }
                    let outcome = match outcome {
                        RecvOutcome::Committed { epoch } => {
                            if let Some(r) = self.enclaves.get_mut(&enclave) {
                                r.epoch = epoch;
                            }
                            Ok(epoch)
                        }
                        RecvOutcome::Aborted(reason) => Err(reason),
                    };
                    self.event(Event::IncomingFinished {
                        migration: m,
                        enclave,
                        outcome,
                    });
                }
            }
        }
    }

    fn load_incoming(&mut self, m: MigrationId, module: &[u8]) -> Result<(), AbortReason> {
        let i = self
            .migrations
            .inc
            .get(&m)
            .ok_or_else(|| state_error("gone"))?;
        let p = i.machine.prepare().clone();
        if p.manifest.measure(module) != p.app {
            return Err(AbortReason::MeasurementMismatch);
        }
        let loaded: Arc<LoadedModule> = self
            .modules
            .load(&self.runtime, module, p.manifest.clone())
            .map_err(state_error)?;
        let restoring = self.begin_restore(&p, &loaded)?;
        if let Some(i) = self.migrations.inc.get_mut(&m) {
            i.restoring = Some(restoring);
        }
        Ok(())
    }

    /// An instance of `loaded` with the memory size PREPARE announced, not running, for
    /// the pages to be written into.
    fn begin_restore(
        &self,
        p: &Prepare,
        loaded: &Arc<LoadedModule>,
    ) -> Result<Restoring<InstanceServices>, AbortReason> {
        let services = InstanceServices::new(
            p.enclave,
            p.app,
            p.incarnation,
            Arc::clone(&self.hw),
            Arc::clone(&self.blobs),
        );
        let memory = usize::try_from(p.memory_bytes).map_err(state_error)?;
        self.runtime
            .begin_restore(loaded, services, memory)
            .map_err(state_error)
    }

    fn rebuild_incoming(
        &mut self,
        m: MigrationId,
        received: godwit_proto::Received,
    ) -> Result<godwit_proto::DurableState, AbortReason> {
        let i = self
            .migrations
            .inc
            .get_mut(&m)
            .ok_or_else(|| state_error("gone"))?;
        let restoring = i
            .restoring
            .take()
            .ok_or_else(|| state_error("no instance to finish"))?;
        let mut enclave = restoring
            .finish(&received.state.globals)
            .map_err(state_error)?;
        let services = enclave.services_mut();
        services
            .set_counters(&received.state.counters)
            .map_err(state_error)?;
        // Keep the copy (so its blobs can be deleted on discard) before re-sealing.
        let resealed = received
            .sealed
            .iter()
            .try_for_each(|s| services.reseal_slot(s));
        let durable = enclave.services().durable();
        i.rebuilt = Some(enclave);
        resealed.map_err(|e| state_error(format!("re-sealing: {e}")))?;
        Ok(durable)
    }

    /// COMMIT is recorded: the rebuilt enclave runs here.
    fn activate(&mut self, m: MigrationId) {
        let Some(i) = self.migrations.inc.get_mut(&m) else {
            return;
        };
        // Invariant: the machine activates only after `restored(Ok)`, which set `rebuilt`.
        let enclave = i
            .rebuilt
            .take()
            .expect("activate after a successful restore");
        let id = i.machine.prepare().enclave;
        let epoch = i.machine.prepare().epoch + 1;
        tracing::info!(enclave = %id, migration = %m, "migration committed; enclave runs here");
        let resident = self.resident_for(enclave, EnclaveState::Running, epoch);
        // COMMIT carried the durable state the instance has: the ledger is caught up.
        self.enclaves.insert(id, resident);
    }

    /// The copy (partial or rebuilt) is dropped, with any blobs re-sealed for it.
    fn discard(&mut self, m: MigrationId) {
        let Some(i) = self.migrations.inc.get_mut(&m) else {
            return;
        };
        i.restoring = None;
        if let Some(e) = i.rebuilt.take() {
            e.wipe().delete_blobs();
        }
    }
}

fn report(
    machine: Option<&Outgoing>,
    to: HostId,
    epoch: u64,
    attest: std::time::Duration,
) -> MigrationReport {
    let zero = std::time::Duration::ZERO;
    let Some(machine) = machine else {
        return MigrationReport {
            to,
            epoch,
            bytes: 0,
            attest,
            prepare_ready: zero,
            begin: zero,
            transfer: zero,
            commit: zero,
            total: zero,
            downtime: zero,
        };
    };
    let t = machine.times();
    let span = |a: Option<TrustedInstant>, b: Option<TrustedInstant>| match (a, b) {
        (Some(a), Some(b)) => b.duration_since(a).unwrap_or(zero),
        _ => zero,
    };
    MigrationReport {
        to,
        epoch,
        bytes: machine.progress().0,
        attest,
        prepare_ready: span(Some(t.prepared), t.ready),
        begin: span(t.paused, t.begun),
        transfer: span(t.begun, t.sent),
        commit: span(t.sent, t.decided),
        total: span(Some(t.prepared), t.decided),
        downtime: span(t.paused, t.decided),
    }
}
