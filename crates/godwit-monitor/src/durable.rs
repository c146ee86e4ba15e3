//! What must survive a restart: every enclave's newest sealed versions and counters are
//! recorded in the store's ledger, and an ecall whose result depends on a change of them is
//! answered only once the ledger has it (output commit). No result the outside world has
//! seen can therefore be rolled back by a crash, and no counter goes back.

use std::collections::VecDeque;
use std::sync::Arc;

use godwit_enclave::{Enclave, EnclaveError};
use godwit_proto::{
    DurableState, LedgerOp, LedgerOutcome, LedgerRefusal, MigrationId, RecordState, StoreReply,
};
use godwit_wire::{EnclaveId, Manifest};

use crate::{
    BlobFate, BootStatus, EnclaveState, Event, InstanceServices, Life, Monitor, MonitorError,
    Pending,
};

/// Most results one enclave may withhold; past it, calls are refused until the store
/// catches up.
pub const WITHHELD_MAX: usize = 4096;

/// A withheld ecall's handle; its result arrives as [`Event::CallCompleted`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CallId(pub u64);

/// What an ecall gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallOutcome {
    /// The result, releasable now.
    Done(Vec<u8>),
    /// The ecall changed (or followed a change of) durable state not yet recorded; its
    /// outcome arrives as [`Event::CallCompleted`] once the ledger has it, in call order.
    Pending(CallId),
}

/// Why a withheld call has no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The ecall failed (a negative status, a trap, out of fuel, a result too large). Its
    /// failure is an outcome like a result: released only once the durable change it made
    /// is recorded.
    #[error(transparent)]
    Enclave(EnclaveError),
    /// The ledger will not record the state the result depends on, or the instance was
    /// wiped: the result is never released.
    #[error("{0}")]
    Withdrawn(String),
}

/// An ecall the SM hands to the host to run without holding the SM: the instance travels
/// inside, and nothing of it is reachable but [`Ecall::run`]. The host runs it on a thread
/// of its own, so one enclave's long call stalls no other enclave, frame or timer, and
/// gives the [`EcallDone`] back with [`Monitor::end_call`].
pub struct Ecall {
    /// The SM that handed it out and the life of the instance.
    owner: (u64, Life),
    enclave: Enclave<InstanceServices>,
    ecall: String,
    arg: Vec<u8>,
}

impl Ecall {
    /// Runs the ecall (fuel-bounded).
    pub fn run(mut self) -> EcallDone {
        let out = self.enclave.call(&self.ecall, &self.arg);
        EcallDone {
            owner: self.owner,
            enclave: self.enclave,
            out,
        }
    }
}

/// A finished [`Ecall`], for [`Monitor::end_call`].
pub struct EcallDone {
    owner: (u64, Life),
    enclave: Enclave<InstanceServices>,
    out: Result<Vec<u8>, EnclaveError>,
}

/// A withheld outcome: the call, the durable-state sequence it waits for, the outcome.
pub(crate) type Withheld = (CallId, u64, Result<Vec<u8>, CallError>);

/// Per enclave: how far its durable state changed, and how far the ledger recorded it.
#[derive(Default)]
pub(crate) struct Durability {
    seen: DurableState,
    seen_seq: u64,
    recorded_seq: u64,
    inflight: Option<u64>,
    pub(crate) withheld: VecDeque<Withheld>,
    /// A migration waiting for the ledger to catch up before it collects the state.
    pub(crate) collect_for: Option<MigrationId>,
    /// State the ledger recorded while an ecall held the instance: its older blobs go
    /// once the instance is back.
    recorded_while_out: Option<DurableState>,
}

impl Durability {
    /// Starts from a state the ledger already holds.
    pub(crate) fn recorded(state: DurableState) -> Self {
        Self {
            seen: state,
            ..Self::default()
        }
    }

    /// Whether everything seen is recorded.
    pub(crate) fn caught_up(&self) -> bool {
        self.recorded_seq >= self.seen_seq && self.inflight.is_none()
    }

    /// The newest durable state the SM saw the instance reach.
    pub(crate) fn seen(&self) -> &DurableState {
        &self.seen
    }
}

impl Monitor {
    /// Runs an ecall on a running enclave (see [`Monitor::begin_call`]; this runs it while
    /// the caller holds the SM).
    pub fn call(
        &mut self,
        id: EnclaveId,
        ecall: &str,
        arg: &[u8],
    ) -> Result<CallOutcome, MonitorError> {
        let run = self.begin_call(id, ecall, arg)?;
        self.end_call(run.run())
    }

    /// Takes a running enclave out of the SM for one ecall, which the host runs with
    /// [`Ecall::run`] and hands back to [`Monitor::end_call`]. Meanwhile the enclave takes
    /// no other call ([`MonitorError::Busy`]), and a migration that wants to pause it waits
    /// for the call to return.
    pub fn begin_call(
        &mut self,
        id: EnclaveId,
        ecall: &str,
        arg: &[u8],
    ) -> Result<Ecall, MonitorError> {
        let nonce = self.nonce;
        let r = self.in_state(id, EnclaveState::Running)?;
        if r.durability.withheld.len() >= WITHHELD_MAX {
            return Err(MonitorError::Busy(id));
        }
        let enclave = r.enclave.take().ok_or(MonitorError::Busy(id))?;
        Ok(Ecall {
            owner: (nonce, (id, r.token)),
            enclave,
            ecall: ecall.to_owned(),
            arg: arg.to_vec(),
        })
    }

    /// An ecall returned. Its outcome comes back at once, unless the enclave's durable
    /// state (sealed versions, counters) changed and the ledger does not have it yet: then
    /// [`CallOutcome::Pending`], and the outcome — a result or the enclave's own failure
    /// alike — follows as [`Event::CallCompleted`], in call order.
    pub fn end_call(&mut self, done: EcallDone) -> Result<CallOutcome, MonitorError> {
        let EcallDone {
            owner: (nonce, (id, token)),
            enclave,
            out,
        } = done;
        let Some(r) = self
            .enclaves
            .get_mut(&id)
            .filter(|r| nonce == self.nonce && r.token == token && r.enclave.is_none())
        else {
            // Not this SM's, or not this life's: its memory goes, its blobs are not its
            // to touch.
            drop(enclave.wipe());
            return Err(MonitorError::UnknownEnclave(id));
        };
        if let Some(fate) = r.doomed {
            self.enclaves.remove(&id);
            crate::discard(enclave, fate);
            self.check_invariants();
            return Err(MonitorError::Withdrawn(id));
        }
        r.memory_bytes = enclave.memory_bytes();
        r.enclave = Some(enclave);
        if let Some(d) = r.durability.recorded_while_out.take()
            && let Some(e) = r.enclave.as_mut()
        {
            e.services_mut().recorded(&d);
        }
        self.note_durable(id);
        let call = CallId(self.next_call);
        self.next_call += 1;
        let lease = self.may_release(id);
        // Invariant: the entry is still here (checked above, nothing removed it since).
        let d = &mut self.enclaves.get_mut(&id).expect("present").durability;
        // Released now only if nothing it depends on waits for the ledger, nothing before
        // it waits, and the SM holds a lease (it heard from a store majority lately: a
        // host removed or cut off from the store answers nothing).
        let recorded =
            d.recorded_seq >= d.seen_seq || (out.is_err() && planted!(release_failure_early));
        let outcome = if recorded && d.withheld.is_empty() && lease {
            out.map(CallOutcome::Done).map_err(MonitorError::from)
        } else {
            d.withheld
                .push_back((call, d.seen_seq, out.map_err(CallError::Enclave)));
            Ok(CallOutcome::Pending(call))
        };
        // A migration may be waiting for the enclave to come back before it collects it.
        self.resume_collect(id);
        self.check_invariants();
        outcome
    }

    /// Notes a change of the enclave's durable state and makes sure the ledger is asked to
    /// record it.
    fn note_durable(&mut self, id: EnclaveId) {
        let Some(r) = self.enclaves.get_mut(&id) else {
            return;
        };
        let Some(now) = r.enclave.as_ref().map(|e| e.services().durable()) else {
            return;
        };
        if now != r.durability.seen {
            r.durability.seen = now;
            r.durability.seen_seq += 1;
        }
        self.request_update(id);
    }

    fn request_update(&mut self, id: EnclaveId) {
        let Some(r) = self.enclaves.get_mut(&id) else {
            return;
        };
        let d = &mut r.durability;
        if d.inflight.is_some() || d.recorded_seq >= d.seen_seq {
            return;
        }
        d.inflight = Some(d.seen_seq);
        let op = LedgerOp::Update {
            id,
            epoch: r.epoch,
            by: self.hw.host().clone(),
            durable: d.seen.clone(),
        };
        let seq = d.seen_seq;
        let life = (id, r.token);
        self.store(Pending::Update(life, seq), op);
    }

    pub(crate) fn updated(&mut self, life: Life, seq: u64, reply: StoreReply) {
        let id = life.0;
        let Some(r) = self.enclaves.get_mut(&id).filter(|r| r.token == life.1) else {
            return;
        };
        r.durability.inflight = None;
        let record = match reply {
            StoreReply::Outcome(LedgerOutcome::Applied(record)) => {
                match (record, r.enclave.as_mut()) {
                    (Some(record), Some(e)) => e.services_mut().recorded(&record.durable),
                    (Some(record), None) => {
                        r.durability.recorded_while_out = Some(record.durable);
                    }
                    (None, _) => {}
                }
                let d = &mut r.durability;
                d.recorded_seq = d.recorded_seq.max(seq);
                self.release_withheld(id);
                self.request_update(id);
                self.resume_collect(id);
                return;
            }
            StoreReply::Unavailable(why) => {
                tracing::warn!(enclave = %id, %why, "store unavailable; recording again");
                // Ask again later with the newest state; nothing else goes out meanwhile.
                let d = &mut r.durability;
                d.inflight = Some(d.seen_seq);
                let op = LedgerOp::Update {
                    id,
                    epoch: r.epoch,
                    by: self.hw.host().clone(),
                    durable: d.seen.clone(),
                };
                let seq = d.seen_seq;
                self.store_later(Pending::Update(life, seq), op);
                return;
            }
            StoreReply::Outcome(LedgerOutcome::Refused { reason, record }) => (reason, record),
        };
        self.update_refused(id, record.0, record.1);
    }

    /// Releases the withheld outcomes of `id` whose durable state the ledger recorded, in
    /// call order, if the SM holds a lease.
    pub(crate) fn release_withheld(&mut self, id: EnclaveId) {
        if !self.may_release(id) {
            return;
        }
        let Some(r) = self.enclaves.get_mut(&id) else {
            return;
        };
        let d = &mut r.durability;
        let mut done = Vec::new();
        while d
            .withheld
            .front()
            .is_some_and(|(_, needs, _)| *needs <= d.recorded_seq)
        {
            let (call, _, out) = d.withheld.pop_front().expect("checked");
            done.push((call, out));
        }
        for (call, result) in done {
            self.event(Event::CallCompleted {
                call,
                enclave: id,
                result,
            });
        }
    }

    /// The ledger refused to record an enclave's durable state. If it still runs here
    /// (a fenced abort moved its epoch on after the write was asked for), ask again at the
    /// ledger's epoch. Otherwise the ledger no longer lets this SM run it — lost, moved or
    /// destroyed — so nothing of it may ever be released: every withheld result is
    /// withdrawn, and the instance is wiped, as a sender that lost its migration wipes its
    /// copy; its blobs stay if it is recorded lost here (a fresh instance adopts them). An
    /// enclave an outgoing migration holds is revoked: it answers nothing more, and is
    /// wiped when the migration lets go of it.
    fn update_refused(
        &mut self,
        id: EnclaveId,
        reason: LedgerRefusal,
        record: Option<godwit_proto::EnclaveRecord>,
    ) {
        let me = self.hw.host().clone();
        let boot = self.hw.boot_epoch().to_bytes();
        let Some(r) = self.enclaves.get_mut(&id) else {
            return;
        };
        let fate = match &record {
            Some(rec) if rec.owner == me && rec.state == RecordState::Lost => BlobFate::Keep,
            _ => BlobFate::Delete,
        };
        if let Some(rec) = record.filter(|rec| {
            rec.owner == me
                && rec.owner_boot == boot
                && rec.state == RecordState::Running
                && rec.epoch >= r.epoch
        }) {
            // A write from before a fenced abort moved the epoch on: still ours. Ask again,
            // after a back-off.
            tracing::info!(enclave = %id, epoch = rec.epoch, "the ledger moved the epoch on; recording again");
            r.epoch = rec.epoch;
            let d = &mut r.durability;
            d.inflight = Some(d.seen_seq);
            let op = LedgerOp::Update {
                id,
                epoch: r.epoch,
                by: me,
                durable: d.seen.clone(),
            };
            let seq = d.seen_seq;
            let life = (id, r.token);
            self.store_later(Pending::Update(life, seq), op);
            return;
        }
        tracing::error!(enclave = %id, %reason, "the store refused to record the enclave's state; it is not this host's to run any more: wiped");
        let why = format!("the store refused to record the enclave's state: {reason}");
        if self.migrations.is_migrating(&id) {
            r.revoked = Some(fate);
            let d = &mut r.durability;
            d.recorded_seq = d.seen_seq;
            let withheld: Vec<_> = d.withheld.drain(..).collect();
            for (call, _, _) in withheld {
                self.event(Event::CallCompleted {
                    call,
                    enclave: id,
                    result: Err(CallError::Withdrawn(why.clone())),
                });
            }
            self.resume_collect(id);
        } else {
            self.wipe(id, &why, fate);
        }
    }

    /// An enclave the ledger revoked while a migration held it is wiped once no migration
    /// holds it any more.
    pub(crate) fn settle_revoked(&mut self, id: EnclaveId) {
        let Some(fate) = self.enclaves.get(&id).and_then(|r| r.revoked) else {
            return;
        };
        if !self.migrations.is_migrating(&id) {
            self.wipe(
                id,
                "the store no longer lets this host run the enclave",
                fate,
            );
        }
    }

    /// Announces this SM's boot epoch to the ledger: whatever this host ran under an
    /// earlier boot is recorded lost (its memory is gone).
    pub(crate) fn announce_boot(&mut self) {
        let op = LedgerOp::HostBooted {
            host: self.hw.host().clone(),
            boot: self.hw.boot_epoch().to_bytes(),
        };
        self.store(Pending::Booted, op);
    }

    pub(crate) fn booted(&mut self, reply: StoreReply) {
        match reply {
            StoreReply::Outcome(LedgerOutcome::Refused {
                reason: LedgerRefusal::StaleBoot { .. },
                ..
            }) => {
                self.boot = BootStatus::Stale;
                tracing::error!(boot = %self.hw.boot_epoch(), "the store refused this boot: the component's boot count went back (rolled back by the host?); this SM creates, adopts and receives nothing");
            }
            StoreReply::Outcome(_) => {
                self.boot = BootStatus::Recorded;
                tracing::info!(boot = %self.hw.boot_epoch(), "boot epoch recorded")
            }
            StoreReply::Unavailable(why) => {
                tracing::warn!(%why, "store unavailable; announcing the boot again");
                let op = LedgerOp::HostBooted {
                    host: self.hw.host().clone(),
                    boot: self.hw.boot_epoch().to_bytes(),
                };
                self.store_later(Pending::Booted, op);
            }
        }
    }

    /// Starts a fresh instance of a lost enclave under its id, on the host that holds its
    /// sealed data: from its module (never from old memory), with the sealed versions and
    /// counters the ledger recorded. It runs once the ledger applied the adoption
    /// ([`Event::Registered`]).
    pub fn adopt(
        &mut self,
        id: EnclaveId,
        module: &[u8],
        manifest: Manifest,
    ) -> Result<(), MonitorError> {
        if self.boot == BootStatus::Stale {
            return Err(MonitorError::StaleBoot);
        }
        if self.enclaves.contains_key(&id) || self.migrations.holds_enclave(&id) {
            return Err(MonitorError::AlreadyMigrating(id));
        }
        // Only what this SM's own view of the ledger records lost: an instance destroyed
        // here whose record still says it runs here (its destroy not recorded yet) is not
        // adopted again, under the same incarnation, by a second life.
        match self.ledger().get(&id) {
            Some(r) if r.state == RecordState::Lost => {}
            Some(r) => {
                let what = format!("{} at {}", r.state.name(), r.owner);
                return Err(MonitorError::NotLost(id, what));
            }
            None => return Err(MonitorError::NotLost(id, "unknown".into())),
        }
        let loaded = self.load_within_limit(module, manifest)?;
        let app = loaded.measurement();
        let services =
            InstanceServices::new(id, app, 0, Arc::clone(&self.hw), Arc::clone(&self.blobs));
        let enclave = self.runtime.instantiate(&loaded, services)?;
        let r = self.resident_for(enclave, EnclaveState::Registering, 0);
        let life = (id, r.token);
        self.enclaves.insert(id, r);
        let op = LedgerOp::Adopt {
            id,
            by: self.hw.host().clone(),
            boot: self.hw.boot_epoch().to_bytes(),
            app,
        };
        self.store(Pending::Adopt(life), op);
        self.check_invariants();
        Ok(())
    }

    pub(crate) fn adopted(&mut self, life: Life, reply: StoreReply) {
        // Only for the life that asked, and only while it waits: a late or repeated reply
        // must never reset an instance that runs.
        let id = life.0;
        if !self
            .enclaves
            .get(&id)
            .is_some_and(|r| r.token == life.1 && r.state == EnclaveState::Registering)
        {
            return;
        }
        match reply {
            StoreReply::Outcome(LedgerOutcome::Applied(Some(record)))
                if self.adopted_lives.contains(&(id, record.incarnation)) =>
            {
                // A life of this incarnation ran here already in this boot (an adoption
                // answered again as a repeat): a second one could seal the same versions.
                self.wipe(
                    id,
                    "an earlier life of this incarnation ran here",
                    BlobFate::Keep,
                );
                self.event(Event::RegistrationRefused {
                    enclave: id,
                    reason: "this incarnation was adopted here before".into(),
                });
            }
            StoreReply::Outcome(LedgerOutcome::Applied(Some(record))) => {
                self.adopted_lives.insert((id, record.incarnation));
                let lease = self.store_lease();
                let Some((r, e)) = self
                    .enclaves
                    .get_mut(&id)
                    .and_then(|r| r.enclave.take().map(|e| (r, e)))
                else {
                    return;
                };
                let mut e = e;
                e.services_mut()
                    .adopt_durable(&record.durable, record.incarnation);
                r.durability = Durability::recorded(e.services().durable());
                r.incarnation = record.incarnation;
                r.enclave = Some(e);
                r.epoch = record.epoch;
                // The last owner may still hold a lease, and answer, until it has surely
                // run out: the instance runs a lease and the drift bound after the adoption
                // applied here (whatever made the enclave lost, and however this SM learned
                // it: the owner's last lease began before the loss was committed).
                let wait = if planted!(adopt_without_wait) {
                    std::time::Duration::ZERO
                } else {
                    lease + godwit_store::lease_drift(lease)
                };
                r.runs_at = Some(self.hw.now().saturating_add(wait));
                tracing::info!(enclave = %id, epoch = record.epoch, wait_ms = wait.as_millis(), "lost enclave adopted; it runs once the last owner's lease has run out");
            }
            StoreReply::Unavailable(why) => {
                tracing::warn!(enclave = %id, %why, "store unavailable; adopting again");
                if let Some(r) = self.enclaves.get(&id) {
                    let op = LedgerOp::Adopt {
                        id,
                        by: self.hw.host().clone(),
                        boot: self.hw.boot_epoch().to_bytes(),
                        app: r.module.measurement(),
                    };
                    self.store_later(Pending::Adopt(life), op);
                }
            }
            other => {
                let reason = match other {
                    StoreReply::Outcome(LedgerOutcome::Refused { reason, .. }) => {
                        reason.to_string()
                    }
                    _ => "the store answered without a record".into(),
                };
                // Nothing was sealed by this instance yet, so no blob of the lost one is
                // touched when it is dropped.
                self.wipe(id, "the store refused the adoption", BlobFate::Keep);
                self.event(Event::RegistrationRefused {
                    enclave: id,
                    reason,
                });
            }
        }
    }

    /// Adopted instances whose wait is over run now, if the ledger still lets them.
    pub(crate) fn adoption_timeouts(&mut self, now: godwit_hw::TrustedInstant) {
        let due: Vec<EnclaveId> = self
            .enclaves
            .iter()
            .filter(|(_, r)| {
                r.runs_at
                    .is_some_and(|t| now.is_at_or_after(t).unwrap_or(true))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let licensed = self.ledger().get(&id).is_some_and(|rec| {
                rec.owner == *self.host()
                    && rec.owner_boot == self.hw.boot_epoch().to_bytes()
                    && rec.state == RecordState::Running
            });
            let Some(r) = self.enclaves.get_mut(&id) else {
                continue;
            };
            r.runs_at = None;
            if licensed && r.state == EnclaveState::Registering {
                r.state = EnclaveState::Running;
                tracing::info!(enclave = %id, "adopted enclave runs");
                self.event(Event::Registered { enclave: id });
            } else {
                self.wipe(
                    id,
                    "the ledger no longer lets this host run the adopted enclave",
                    BlobFate::Keep,
                );
                self.event(Event::RegistrationRefused {
                    enclave: id,
                    reason: "the ledger no longer lets this host run it".into(),
                });
            }
        }
    }

    /// Whether results of `id` may be released now: the SM holds a lease, and its own
    /// applied ledger records `id` as this boot's (running, or migrating away but not yet
    /// committed elsewhere).
    pub(crate) fn may_release(&self, id: EnclaveId) -> bool {
        self.lease_held()
            && self.ledger().get(&id).is_some_and(|r| {
                r.owner == *self.host()
                    && r.owner_boot == self.hw.boot_epoch().to_bytes()
                    && matches!(
                        r.state,
                        RecordState::Running | RecordState::Migrating { .. }
                    )
            })
    }
}
