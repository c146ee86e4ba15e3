//! What must survive a restart: every enclave's newest sealed versions and counters are
//! recorded in the store's ledger, and an ecall whose result depends on a change of them is
//! answered only once the ledger has it (output commit). No result the outside world has
//! seen can therefore be rolled back by a crash, and no counter goes back.

use std::collections::VecDeque;
use std::sync::Arc;

use godwit_proto::{DurableState, LedgerOp, LedgerOutcome, MigrationId, StoreReply};
use godwit_wire::{EnclaveId, Manifest};

use crate::{EnclaveState, Event, InstanceServices, Monitor, MonitorError, Pending, Resident};

/// A withheld ecall's handle; its result arrives as [`Event::CallCompleted`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CallId(pub u64);

/// What an ecall gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallOutcome {
    /// The result, releasable now.
    Done(Vec<u8>),
    /// The ecall changed (or followed a change of) durable state not yet recorded; its
    /// result arrives as [`Event::CallCompleted`] once the ledger has it.
    Pending(CallId),
}

/// Per enclave: how far its durable state changed, and how far the ledger recorded it.
#[derive(Default)]
pub(crate) struct Durability {
    seen: DurableState,
    seen_seq: u64,
    recorded_seq: u64,
    inflight: Option<u64>,
    pub(crate) withheld: VecDeque<(CallId, u64, Vec<u8>)>,
    /// A migration waiting for the ledger to catch up before it collects the state.
    pub(crate) collect_for: Option<MigrationId>,
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
}

impl Monitor {
    /// Runs an ecall on a running enclave. Its result comes back at once, unless the
    /// enclave's durable state (sealed versions, counters) changed and the ledger does not
    /// have it yet: then [`CallOutcome::Pending`], and the result follows as
    /// [`Event::CallCompleted`], in call order.
    pub fn call(
        &mut self,
        id: EnclaveId,
        ecall: &str,
        arg: &[u8],
    ) -> Result<CallOutcome, MonitorError> {
        let out = self
            .in_state(id, EnclaveState::Running)?
            .enclave
            .call(ecall, arg);
        self.note_durable(id);
        let out = out?;
        let call = CallId(self.next_call);
        self.next_call += 1;
        // Invariant: `in_state` found it, and nothing since removed it.
        let d = &mut self.enclaves.get_mut(&id).expect("present").durability;
        if d.recorded_seq >= d.seen_seq {
            return Ok(CallOutcome::Done(out));
        }
        d.withheld.push_back((call, d.seen_seq, out));
        Ok(CallOutcome::Pending(call))
    }

    /// Notes a change of the enclave's durable state and makes sure the ledger is asked to
    /// record it.
    fn note_durable(&mut self, id: EnclaveId) {
        let Some(r) = self.enclaves.get_mut(&id) else {
            return;
        };
        let now = r.enclave.services().durable();
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
        self.store(Pending::Update(id, seq), op);
    }

    pub(crate) fn updated(&mut self, id: EnclaveId, seq: u64, reply: StoreReply) {
        let Some(r) = self.enclaves.get_mut(&id) else {
            return;
        };
        r.durability.inflight = None;
        let d = &mut r.durability;
        let mut done = Vec::new();
        match reply {
            StoreReply::Outcome(LedgerOutcome::Applied(record)) => {
                if let Some(record) = record {
                    r.enclave.services_mut().recorded(&record.durable);
                }
                let d = &mut r.durability;
                d.recorded_seq = d.recorded_seq.max(seq);
                while d
                    .withheld
                    .front()
                    .is_some_and(|(_, needs, _)| *needs <= d.recorded_seq)
                {
                    let (call, _, out) = d.withheld.pop_front().expect("checked");
                    done.push((call, Ok(out)));
                }
            }
            StoreReply::Unavailable(why) => {
                tracing::warn!(enclave = %id, %why, "store unavailable; recording again");
                // Ask again later with the newest state; nothing else goes out meanwhile.
                d.inflight = Some(d.seen_seq);
                let op = LedgerOp::Update {
                    id,
                    epoch: r.epoch,
                    by: self.hw.host().clone(),
                    durable: d.seen.clone(),
                };
                let seq = d.seen_seq;
                self.store_later(Pending::Update(id, seq), op);
                return;
            }
            StoreReply::Outcome(LedgerOutcome::Refused { reason, .. }) => {
                // The ledger will not record this enclave's state: its withheld results
                // must never be released.
                tracing::error!(enclave = %id, %reason, "the store refused to record durable state");
                d.recorded_seq = d.seen_seq;
                for (call, _, _) in d.withheld.drain(..) {
                    done.push((
                        call,
                        Err(format!(
                            "the store refused to record the enclave's state: {reason}"
                        )),
                    ));
                }
            }
        }
        for (call, result) in done {
            self.event(Event::CallCompleted {
                call,
                enclave: id,
                result,
            });
        }
        self.request_update(id);
        self.resume_collect(id);
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
            StoreReply::Outcome(_) => {
                self.boot_recorded = true;
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
        if self.enclaves.contains_key(&id) || self.migrations.holds_enclave(&id) {
            return Err(MonitorError::AlreadyMigrating(id));
        }
        let loaded = self.load_within_limit(module, manifest)?;
        let app = loaded.measurement();
        let services =
            InstanceServices::new(id, app, Arc::clone(&self.hw), Arc::clone(&self.blobs));
        let enclave = self.runtime.instantiate(&loaded, services)?;
        self.enclaves
            .insert(id, Resident::new(enclave, EnclaveState::Registering, 0));
        let op = LedgerOp::Adopt {
            id,
            by: self.hw.host().clone(),
            boot: self.hw.boot_epoch().to_bytes(),
            app,
        };
        self.store(Pending::Adopt(id), op);
        self.check_invariants();
        Ok(())
    }

    pub(crate) fn adopted(&mut self, id: EnclaveId, reply: StoreReply) {
        match reply {
            StoreReply::Outcome(LedgerOutcome::Applied(Some(record))) => {
                let Some(r) = self.enclaves.get_mut(&id) else {
                    return;
                };
                r.enclave.services_mut().adopt_durable(&record.durable);
                r.durability = crate::durable::Durability::recorded(r.enclave.services().durable());
                r.epoch = record.epoch;
                r.state = EnclaveState::Running;
                tracing::info!(enclave = %id, epoch = record.epoch, "lost enclave adopted");
                self.event(Event::Registered { enclave: id });
            }
            StoreReply::Unavailable(why) => {
                tracing::warn!(enclave = %id, %why, "store unavailable; adopting again");
                if let Some(r) = self.enclaves.get(&id) {
                    let op = LedgerOp::Adopt {
                        id,
                        by: self.hw.host().clone(),
                        boot: self.hw.boot_epoch().to_bytes(),
                        app: r.enclave.module().measurement(),
                    };
                    self.store_later(Pending::Adopt(id), op);
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
                if let Some(r) = self.enclaves.remove(&id) {
                    drop(r.enclave.wipe());
                }
                self.event(Event::RegistrationRefused {
                    enclave: id,
                    reason,
                });
            }
        }
    }
}
