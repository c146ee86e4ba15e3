//! The sending side of one migration.
//!
//! ```text
//!  start ─PREPARE─▶ AwaitReady ─READY─▶ Collecting ─collected─▶ AwaitBegin ─BEGIN ok─▶ Streaming
//!                      │ REFUSE/timeout      (E paused)              │ refused            │ all sent
//!                      ▼                                             ▼                    ▼
//!                   Done (E never paused)                   Done (E resumed)      AwaitDecision
//!                                                                                        │ COMMITTED
//!   any failure or deadline once E is paused ──▶ Aborting ─ABORT recorded─▶ Done (E resumed)
//!                                                   └──── COMMIT won ─────▶ Done (E wiped)
//! ```
//!
//! Call order: create with [`Outgoing::start`]; feed [`Outgoing::handle_message`],
//! [`Outgoing::handle_store`], [`Outgoing::handle_timeout`] (when [`Outgoing::poll_timeout`]
//! has passed) and [`Outgoing::handle_disconnect`]; answer `PauseAndCollect` with
//! [`Outgoing::collected`]; while streaming, pull data with [`Outgoing::poll_data`]; after
//! every call drain [`Outgoing::poll_effect`].
//!
//! The rule the machine enforces: E resumes only after the store recorded ABORT, or
//! answered that BEGIN was never recorded; E is wiped only after COMMIT is known. A
//! timeout alone never licenses a resume.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use godwit_hw::TrustedInstant;
use godwit_wire::{EnclaveId, GlobalValue, HostId};

use crate::ledger::{Decision, LedgerOp, LedgerOutcome, LedgerRefusal, RecordState};
use crate::msg::{AbortReason, CHUNK_BYTES_MAX, FinalState, Message, Prepare, Wait};
use crate::timing::{Deadline, TimeoutConfig};
use crate::{MigrationId, PAGE_BYTES, SealedSlot, StepTimes, StoreReply, transfer_digest};

/// What the source SM collected from the paused enclave.
pub struct SendPlan {
    /// The module, as measured.
    pub module: Arc<[u8]>,
    /// Sealed slots, unsealed. Wiped on drop.
    pub sealed: Vec<SealedSlot>,
    /// Mutable globals.
    pub globals: Vec<GlobalValue>,
    /// Monotonic counters.
    pub counters: Vec<(String, u64)>,
}

/// What the SM must do for the sending side.
#[derive(Debug)]
pub enum SendEffect {
    /// Send a control message to the receiver.
    Transmit(Message<'static>),
    /// Pause E (Running → Migrating) and collect its state, then call `collected`.
    PauseAndCollect,
    /// Write to the ledger, then call `handle_store`.
    Store(LedgerOp),
    /// ABORT is recorded (or BEGIN never was): E runs again at the source, held at the
    /// ledger's `epoch`.
    Resume {
        /// The record's epoch now.
        epoch: u64,
    },
    /// COMMIT is recorded, or the ledger no longer lets the source run E: wipe E at the
    /// source; its sealed blobs stay if E is recorded lost with the source as its last
    /// owner (a fresh instance adopting it opens them).
    Wipe {
        /// Keep the sealed blobs.
        keep_blobs: bool,
    },
    /// The migration is over.
    Finished(SendOutcome),
}

/// How a migration ended at the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// The receiver owns E at `epoch`.
    Committed {
        /// The new ledger epoch.
        epoch: u64,
    },
    /// E stays (or runs again) at the source.
    Aborted(AbortReason),
}

enum Cursor {
    Module(usize),
    Memory(usize),
    Sealed(usize),
    Final,
}

enum Phase {
    AwaitReady {
        sent_at: TrustedInstant,
        deadline: Deadline,
    },
    Collecting {
        network: Duration,
    },
    AwaitBegin {
        network: Duration,
        plan: SendPlan,
        deadline: Deadline,
    },
    Streaming {
        plan: SendPlan,
        cursor: Cursor,
        network: Duration,
        deadline: Deadline,
    },
    AwaitDecision {
        deadline: Deadline,
    },
    Aborting {
        reason: AbortReason,
        deadline: Deadline,
    },
    Done,
}

/// The sending side of one migration. See the module documentation for the call order.
pub struct Outgoing {
    prepare: Prepare,
    from: HostId,
    to: HostId,
    config: TimeoutConfig,
    phase: Phase,
    effects: VecDeque<SendEffect>,
    times: StepTimes,
    sent_bytes: u64,
    /// READY said the receiver holds the module: the data starts at memory.
    module_cached: bool,
}

impl Outgoing {
    /// Starts a migration: returns the machine, whose first effect transmits PREPARE.
    /// Nothing is paused yet.
    pub fn start(
        now: TrustedInstant,
        prepare: Prepare,
        from: HostId,
        to: HostId,
        config: TimeoutConfig,
    ) -> Self {
        let terms = config.terms(config.assumed_network_delay(), 0);
        let mut out = Self {
            from,
            to,
            phase: Phase::AwaitReady {
                sent_at: now,
                deadline: Deadline::after(now, terms),
            },
            effects: VecDeque::new(),
            times: StepTimes::started(now),
            sent_bytes: 0,
            module_cached: false,
            config,
            prepare: prepare.clone(),
        };
        out.effects
            .push_back(SendEffect::Transmit(Message::Prepare(Box::new(prepare))));
        out
    }

    /// The migration.
    pub fn migration(&self) -> MigrationId {
        self.prepare.migration
    }

    /// The enclave.
    pub fn enclave(&self) -> EnclaveId {
        self.prepare.enclave
    }

    /// The receiving host.
    pub fn to(&self) -> &HostId {
        &self.to
    }

    /// The PREPARE that started it.
    pub fn prepare(&self) -> &Prepare {
        &self.prepare
    }

    /// Bytes of data messages produced so far, and the total to send.
    pub fn progress(&self) -> (u64, u64) {
        (self.sent_bytes, self.prepare.total_bytes())
    }

    /// When each step happened, on the trusted timer.
    pub fn times(&self) -> &StepTimes {
        &self.times
    }

    /// Whether the machine has finished.
    pub fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    /// Whether data is ready to be pulled with [`Outgoing::poll_data`].
    pub fn is_streaming(&self) -> bool {
        matches!(self.phase, Phase::Streaming { .. })
    }

    /// The next effect to carry out.
    pub fn poll_effect(&mut self) -> Option<SendEffect> {
        self.effects.pop_front()
    }

    /// The current wait's deadline.
    pub fn poll_timeout(&self) -> Option<TrustedInstant> {
        match &self.phase {
            Phase::AwaitReady { deadline, .. }
            | Phase::AwaitBegin { deadline, .. }
            | Phase::Streaming { deadline, .. }
            | Phase::AwaitDecision { deadline }
            | Phase::Aborting { deadline, .. } => Some(deadline.at()),
            Phase::Collecting { .. } | Phase::Done => None,
        }
    }

    fn is_paused(&self) -> bool {
        !matches!(self.phase, Phase::AwaitReady { .. } | Phase::Done)
    }

    fn finish(&mut self, outcome: SendOutcome) {
        self.phase = Phase::Done;
        self.effects.push_back(SendEffect::Finished(outcome));
    }

    /// Gives the migration up before anything was paused: nothing to undo.
    fn give_up(&mut self, reason: AbortReason, tell_peer: bool) {
        if tell_peer {
            self.transmit_abort(&reason);
        }
        self.finish(SendOutcome::Aborted(reason));
    }

    fn transmit_abort(&mut self, reason: &AbortReason) {
        self.effects.push_back(SendEffect::Transmit(Message::Abort {
            migration: self.migration(),
            reason: reason.clone(),
        }));
    }

    /// E is paused: settle the migration through the store before touching E again.
    fn abort(&mut self, now: TrustedInstant, reason: AbortReason, tell_peer: bool) {
        if matches!(self.phase, Phase::Aborting { .. } | Phase::Done) {
            return;
        }
        if tell_peer {
            self.transmit_abort(&reason);
        }
        #[cfg(feature = "planted-bugs")]
        if crate::planted::resume_before_abort() {
            // The planted bug: resume without waiting for the store to record ABORT.
            self.request_abort();
            self.effects.push_back(SendEffect::Resume {
                epoch: self.prepare.epoch,
            });
            return self.finish(SendOutcome::Aborted(reason));
        }
        self.phase = Phase::Aborting {
            reason,
            deadline: Deadline::after(now, self.config.store_terms()),
        };
        self.request_abort();
    }

    fn request_abort(&mut self) {
        self.effects.push_back(SendEffect::Store(LedgerOp::Abort {
            id: self.prepare.enclave,
            epoch: self.prepare.epoch,
            migration: self.migration(),
            by: self.from.clone(),
        }));
    }

    /// A message from the receiver about this migration.
    pub fn handle_message(&mut self, now: TrustedInstant, msg: &Message<'_>) {
        match (&self.phase, msg) {
            (
                Phase::AwaitReady { sent_at, .. },
                Message::Ready {
                    prepare_us,
                    module_cached,
                    ..
                },
            ) => {
                self.module_cached = *module_cached;
                let round_trip = now.duration_since(*sent_at).unwrap_or_default();
                let network = round_trip.saturating_sub(Duration::from_micros(*prepare_us));
                self.times.ready = Some(now);
                self.phase = Phase::Collecting { network };
                self.effects.push_back(SendEffect::PauseAndCollect);
            }
            (Phase::AwaitReady { .. }, Message::Refuse { reason, .. }) => {
                self.give_up(AbortReason::Refused(reason.clone()), false);
            }
            (Phase::AwaitReady { .. }, Message::Abort { reason, .. }) => {
                self.give_up(AbortReason::Peer(Box::new(reason.clone())), false);
            }
            (
                Phase::Streaming { .. } | Phase::AwaitDecision { .. },
                Message::Committed { epoch, .. },
            ) => {
                self.times.decided = Some(now);
                self.effects
                    .push_back(SendEffect::Wipe { keep_blobs: false });
                self.finish(SendOutcome::Committed { epoch: *epoch });
            }
            (Phase::Aborting { .. } | Phase::Done, _) => {}
            (_, Message::Abort { reason, .. }) => {
                self.abort(now, AbortReason::Peer(Box::new(reason.clone())), false);
            }
            (_, other) => {
                let why =
                    AbortReason::Protocol(format!("unexpected {} at the sender", other.kind()));
                if self.is_paused() {
                    self.abort(now, why, true);
                } else {
                    self.give_up(why, true);
                }
            }
        }
    }

    /// The SM paused E and collected its state (or failed to: E is resumed at once, since
    /// nothing was written to the store).
    pub fn collected(&mut self, now: TrustedInstant, plan: Result<SendPlan, AbortReason>) {
        let Phase::Collecting { network } = self.phase else {
            return;
        };
        match plan {
            Ok(plan) => {
                self.times.paused = Some(now);
                self.phase = Phase::AwaitBegin {
                    network,
                    plan,
                    deadline: Deadline::after(now, self.config.store_terms()),
                };
                self.effects.push_back(SendEffect::Store(LedgerOp::Begin {
                    id: self.prepare.enclave,
                    epoch: self.prepare.epoch,
                    from: self.from.clone(),
                    to: self.to.clone(),
                    migration: self.migration(),
                }));
            }
            Err(reason) => {
                let epoch = self.prepare.epoch;
                self.effects.push_back(SendEffect::Resume { epoch });
                self.give_up(reason, true);
            }
        }
    }

    /// The store's reply to the last write this machine asked for.
    pub fn handle_store(&mut self, now: TrustedInstant, reply: StoreReply) {
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::AwaitBegin {
                network,
                plan,
                deadline,
            } => match reply {
                StoreReply::Outcome(LedgerOutcome::Applied(_)) => {
                    self.times.begun = Some(now);
                    self.effects
                        .push_back(SendEffect::Transmit(Message::Transfer {
                            migration: self.migration(),
                            network_delay_us: u64::try_from(network.as_micros())
                                .unwrap_or(u64::MAX),
                        }));
                    let terms = self.config.terms(network, self.prepare.total_bytes());
                    self.phase = Phase::Streaming {
                        plan,
                        cursor: if self.module_cached {
                            Cursor::Memory(0)
                        } else {
                            Cursor::Module(0)
                        },
                        network,
                        deadline: Deadline::after(now, terms),
                    };
                }
                StoreReply::Outcome(LedgerOutcome::Refused { reason, record }) => {
                    // BEGIN was refused: E resumes if the ledger says it runs here.
                    self.effects
                        .push_back(self.resume_or_wipe(record.as_ref(), None));
                    self.give_up(AbortReason::Store(reason), true);
                }
                StoreReply::Unavailable(why) => {
                    // BEGIN may or may not be recorded: settle it with ABORT.
                    self.phase = Phase::AwaitBegin {
                        network,
                        plan,
                        deadline,
                    };
                    self.abort(now, AbortReason::StoreUnavailable(why), true);
                }
            },
            Phase::Aborting { reason, deadline } => self.settle_abort(now, reason, deadline, reply),
            other => self.phase = other, // a stale reply
        }
    }

    fn settle_abort(
        &mut self,
        now: TrustedInstant,
        reason: AbortReason,
        deadline: Deadline,
        reply: StoreReply,
    ) {
        let record = match reply {
            // Only ABORT's own answer licenses a resume. BEGIN's answer ("applied" too) can
            // arrive late, after the abort was asked for: it decides nothing, and ABORT's
            // answer is still to come (or asked again at the deadline).
            StoreReply::Outcome(LedgerOutcome::Applied(record))
                if !record.as_ref().is_some_and(|r| {
                    r.last_decision == Some((self.migration(), Decision::Aborted))
                }) =>
            {
                self.phase = Phase::Aborting { reason, deadline };
                return;
            }
            StoreReply::Outcome(LedgerOutcome::Applied(record)) => {
                self.times.decided = Some(now);
                let epoch = record.map_or(self.prepare.epoch + 1, |r| r.epoch);
                self.effects.push_back(SendEffect::Resume { epoch });
                return self.finish(SendOutcome::Aborted(reason));
            }
            StoreReply::Outcome(LedgerOutcome::Refused {
                reason: LedgerRefusal::AlreadyDecided(Decision::Committed),
                record,
            }) => {
                self.times.decided = Some(now);
                self.effects
                    .push_back(SendEffect::Wipe { keep_blobs: false });
                let epoch = record.map_or(self.prepare.epoch + 1, |r| r.epoch);
                return self.finish(SendOutcome::Committed { epoch });
            }
            StoreReply::Outcome(LedgerOutcome::Refused { record, .. }) => record,
            StoreReply::Unavailable(_) => {
                // Keep E paused; ask again when the deadline passes.
                self.phase = Phase::Aborting { reason, deadline };
                return;
            }
        };
        // Refused for another reason: resume only if the record proves BEGIN never took
        // effect (still running here, at the epoch this migration started from).
        self.times.decided = Some(now);
        let effect = self.resume_or_wipe(record.as_ref(), Some(self.prepare.epoch));
        self.effects.push_back(effect);
        self.finish(SendOutcome::Aborted(reason));
    }

    /// After a refusal: E runs again here only if the ledger says it runs here (at `epoch`,
    /// when given). Otherwise the ledger no longer lets this host run E — it is lost,
    /// destroyed or moved on — and this copy must never run again.
    fn resume_or_wipe(
        &self,
        record: Option<&crate::EnclaveRecord>,
        epoch: Option<u64>,
    ) -> SendEffect {
        match record {
            // Running here at the epoch this migration started from (BEGIN never took
            // effect), or past it by this migration's recorded abort (which fenced BEGIN).
            Some(r)
                if r.owner == self.from
                    && r.state == RecordState::Running
                    && epoch.is_none_or(|e| {
                        e == r.epoch
                            || r.last_decision == Some((self.migration(), Decision::Aborted))
                    }) =>
            {
                SendEffect::Resume { epoch: r.epoch }
            }
            r => SendEffect::Wipe {
                keep_blobs: r.is_some_and(|r| r.owner == self.from && r.state == RecordState::Lost),
            },
        }
    }

    /// The trusted timer passed [`Outgoing::poll_timeout`].
    pub fn handle_timeout(&mut self, now: TrustedInstant) {
        let expired = |d: &Deadline| d.expired(now);
        match &self.phase {
            Phase::AwaitReady { deadline, .. } if expired(deadline) => {
                let terms = deadline.terms();
                self.give_up(
                    AbortReason::Timeout {
                        wait: Wait::Ready,
                        terms,
                    },
                    true,
                );
            }
            Phase::AwaitBegin { deadline, .. } if expired(deadline) => {
                let terms = deadline.terms();
                self.abort(
                    now,
                    AbortReason::Timeout {
                        wait: Wait::Decision,
                        terms,
                    },
                    true,
                );
            }
            Phase::Streaming { deadline, .. } | Phase::AwaitDecision { deadline }
                if expired(deadline) =>
            {
                let terms = deadline.terms();
                self.abort(
                    now,
                    AbortReason::Timeout {
                        wait: Wait::Decision,
                        terms,
                    },
                    true,
                );
            }
            Phase::Aborting { deadline, .. } if expired(deadline) => {
                if let Phase::Aborting { deadline, .. } = &mut self.phase {
                    *deadline = Deadline::after(now, self.config.store_terms());
                }
                self.request_abort();
            }
            _ => {}
        }
    }

    /// The connection to the receiver ended.
    pub fn handle_disconnect(&mut self, now: TrustedInstant) {
        match self.phase {
            Phase::AwaitReady { .. } => self.give_up(AbortReason::ConnectionLost, false),
            Phase::Collecting { .. } | Phase::Aborting { .. } | Phase::Done => {}
            _ => self.abort(now, AbortReason::ConnectionLost, false),
        }
    }

    /// The host asks to give the migration up. Before READY that ends it at once; after,
    /// the store decides (the receiver may already have committed).
    pub fn cancel(&mut self, now: TrustedInstant) {
        if self.is_paused() {
            self.abort(now, AbortReason::Cancelled, true);
        } else if !self.is_done() {
            self.give_up(AbortReason::Cancelled, true);
        }
    }

    /// Encodes the next data message into `out` (at least [`crate::MESSAGE_BYTES_MAX`]
    /// bytes) and returns its length, or `None` when there is nothing to send now.
    /// `memory` is E's paused linear memory; `chain` is the channel's MAC chain value
    /// before the record that will carry this message (it makes the transfer digest).
    pub fn poll_data(
        &mut self,
        now: TrustedInstant,
        memory: &[u8],
        chain: &[u8],
        out: &mut [u8],
    ) -> Option<usize> {
        let migration = self.migration();
        let Phase::Streaming {
            plan,
            cursor,
            network,
            ..
        } = &mut self.phase
        else {
            return None;
        };
        let (message, data_bytes): (Message<'_>, usize) = match cursor {
            Cursor::Module(off) if *off < plan.module.len() => {
                let end = (*off + CHUNK_BYTES_MAX).min(plan.module.len());
                let m = Message::Module {
                    migration,
                    offset: *off as u64,
                    bytes: &plan.module[*off..end],
                };
                let n = end - *off;
                *off = end;
                (m, n)
            }
            Cursor::Module(_) => {
                *cursor = Cursor::Memory(0);
                return self.poll_data(now, memory, chain, out);
            }
            Cursor::Memory(off) => match next_nonzero_run(memory, *off) {
                Some((start, end)) => {
                    *off = end;
                    (
                        Message::Memory {
                            migration,
                            offset: start as u64,
                            bytes: &memory[start..end],
                        },
                        end - start,
                    )
                }
                None => {
                    *cursor = Cursor::Sealed(0);
                    return self.poll_data(now, memory, chain, out);
                }
            },
            Cursor::Sealed(i) if *i < plan.sealed.len() => {
                let sealed = &plan.sealed[*i];
                *i += 1;
                (
                    Message::Sealed {
                        migration,
                        slot: sealed.slot.clone(),
                        version: sealed.version,
                        incarnation: sealed.incarnation,
                        data: &sealed.data,
                    },
                    sealed.data.len(),
                )
            }
            Cursor::Sealed(_) => {
                *cursor = Cursor::Final;
                return self.poll_data(now, memory, chain, out);
            }
            Cursor::Final => {
                let state = FinalState {
                    globals: plan.globals.clone(),
                    counters: plan.counters.clone(),
                    // Invariant: the SM checked at pause that the slots fit the PREPARE.
                    sealed_slots: u32::try_from(plan.sealed.len()).expect("slot count bounded"),
                    digest: transfer_digest(migration, chain),
                };
                let network = *network;
                let n = godwit_wire::encode_into(
                    &Message::Final {
                        migration,
                        state: Box::new(state),
                    },
                    out,
                )
                .ok();
                self.times.sent = Some(now);
                let terms = self
                    .config
                    .decision_terms(network, self.prepare.sealed_bytes);
                self.phase = Phase::AwaitDecision {
                    deadline: Deadline::after(now, terms),
                };
                return n;
            }
        };
        self.sent_bytes += data_bytes as u64;
        // Invariant: data messages are at most CHUNK_BYTES_MAX plus a small header, and
        // `out` holds MESSAGE_BYTES_MAX; a failure here is a programming error.
        Some(godwit_wire::encode_into(&message, out).expect("a data message fits one record"))
    }
}

/// The next run of non-zero pages at or after `from`, at most [`CHUNK_BYTES_MAX`] long.
/// Zero pages are not sent: the receiver's memory starts zeroed.
fn next_nonzero_run(memory: &[u8], from: usize) -> Option<(usize, usize)> {
    // Block by block, so a page with data is usually known after its first 64 bytes; each
    // block's OR vectorizes.
    let is_zero = |at: usize| {
        memory[at..at + PAGE_BYTES]
            .chunks_exact(64)
            .all(|block| block.iter().fold(0u8, |a, &b| a | b) == 0)
    };
    let mut start = from;
    while start < memory.len() && is_zero(start) {
        start += PAGE_BYTES;
    }
    if start >= memory.len() {
        return None;
    }
    let mut end = start;
    while end < memory.len() && end - start < CHUNK_BYTES_MAX && !is_zero(end) {
        end += PAGE_BYTES;
    }
    Some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_pages_are_skipped_and_runs_are_bounded() {
        let mut mem = vec![0u8; 8 * PAGE_BYTES];
        mem[PAGE_BYTES + 5] = 1;
        mem[2 * PAGE_BYTES] = 1;
        mem[5 * PAGE_BYTES + 4095] = 1;
        assert_eq!(
            next_nonzero_run(&mem, 0),
            Some((PAGE_BYTES, 3 * PAGE_BYTES))
        );
        assert_eq!(
            next_nonzero_run(&mem, 3 * PAGE_BYTES),
            Some((5 * PAGE_BYTES, 6 * PAGE_BYTES))
        );
        assert_eq!(next_nonzero_run(&mem, 6 * PAGE_BYTES), None);
        let full = vec![1u8; CHUNK_BYTES_MAX + 2 * PAGE_BYTES];
        assert_eq!(next_nonzero_run(&full, 0), Some((0, CHUNK_BYTES_MAX)));
    }
}
