//! The receiving side of one migration.
//!
//! ```text
//!  PREPARE accepted ─READY─▶ AwaitTransfer ─TRANSFER─▶ Receiving ─FINAL (digest ok)─▶ Restoring
//!                                 │ deadline              │ deadline, bad data          │ restored
//!                                 ▼                       ▼                             ▼
//!                            Aborting ◀───────────────────┘                        AwaitCommit
//!                         (ABORT to the store; the copy is discarded)      COMMIT ok │   │ ABORT won
//!                                                                        Activate ◀──┘   └──▶ Discard
//! ```
//!
//! Call order: create with [`Incoming::accept`] once the SM's checks passed; feed
//! [`Incoming::handle_message`] (memory pages are validated here and written by the SM),
//! [`Incoming::module_loaded`], [`Incoming::restored`], [`Incoming::handle_store`],
//! [`Incoming::handle_timeout`], [`Incoming::handle_disconnect`]; drain
//! [`Incoming::poll_effect`] after every call.
//!
//! The rule it enforces: E runs here only after COMMIT is recorded. Once COMMIT is asked
//! for, the receiver never gives up on its own: it asks again until the store answers,
//! because after COMMIT it may hold the only copy.

use std::collections::VecDeque;
use std::time::Duration;

use godwit_hw::TrustedInstant;
use godwit_wire::HostId;
use zeroize::Zeroizing;

use crate::ledger::{Boot, Decision, DurableState, LedgerOp, LedgerOutcome, LedgerRefusal};
use crate::msg::{AbortReason, CHUNK_BYTES_MAX, FinalState, Message, Prepare, Wait};
use crate::timing::{Deadline, DeadlineTerms, TimeoutConfig};
use crate::{MigrationId, PAGE_BYTES, SealedSlot, StoreReply, transfer_digest};

/// Everything received besides memory, handed to the SM to finish the restore.
pub struct Received {
    /// Sealed slots: (slot, version at the source, plaintext). Wiped on drop.
    pub sealed: Vec<SealedSlot>,
    /// Globals, counters, digest.
    pub state: FinalState,
}

/// What the SM must do for the receiving side.
pub enum RecvEffect {
    /// Send a control message to the sender.
    Transmit(Message<'static>),
    /// The module arrived whole: check it against the measurement, load it, prepare an
    /// instance to restore into, then call `module_loaded`.
    LoadModule(Vec<u8>),
    /// Everything arrived: finish the instance (not running), re-seal the sealed data under
    /// this platform's keys, then call `restored`.
    Complete(Box<Received>),
    /// Write to the ledger, then call `handle_store`.
    Store(LedgerOp),
    /// COMMIT is recorded: run E here.
    Activate,
    /// Drop the partial or unconfirmed copy and any blobs re-sealed for it.
    Discard,
    /// The migration is over.
    Finished(RecvOutcome),
}

/// How a migration ended at the destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecvOutcome {
    /// E runs here at `epoch`.
    Committed {
        /// The new ledger epoch.
        epoch: u64,
    },
    /// Nothing runs here.
    Aborted(AbortReason),
}

struct Progress {
    network: Duration,
    deadline: Deadline,
    module: Vec<u8>,
    module_loaded: bool,
    memory_next: u64,
    sealed: Vec<SealedSlot>,
    sealed_bytes: u64,
}

enum Phase {
    AwaitTransfer {
        deadline: Deadline,
    },
    Receiving(Box<Progress>),
    Restoring {
        digest: [u8; 32],
    },
    AwaitCommit {
        commit: Box<LedgerOp>,
        deadline: Deadline,
    },
    Aborting {
        reason: AbortReason,
        deadline: Deadline,
    },
    Done,
}

/// The receiving side of one migration. See the module documentation for the call order.
pub struct Incoming {
    prepare: Prepare,
    from: HostId,
    me: HostId,
    boot: Boot,
    config: TimeoutConfig,
    phase: Phase,
    effects: VecDeque<RecvEffect>,
    received_bytes: u64,
    /// The SM holds the module already and prepared the instance before READY.
    module_cached: bool,
}

impl Incoming {
    /// Accepts a PREPARE the SM checked; the first effect transmits READY. `me` and `boot`
    /// are this SM's host and boot epoch (COMMIT names them); `prepared_for` is how long the
    /// checks took on this side's trusted timer. With `module_cached`, the SM already holds
    /// the module measured `prepare.app` and has an instance ready for pages: READY says so,
    /// and MODULE messages are then a protocol violation.
    pub fn accept(
        now: TrustedInstant,
        prepare: Prepare,
        from: HostId,
        (me, boot): (HostId, Boot),
        config: TimeoutConfig,
        (prepared_for, module_cached): (Duration, bool),
    ) -> Self {
        // The sender pauses E and writes BEGIN before it sends TRANSFER.
        let mut terms = config.terms(config.assumed_network_delay(), 0);
        terms.peer_prepare_us = terms
            .peer_prepare_us
            .saturating_add(config.store_ms.saturating_mul(1000));
        let mut inc = Self {
            from,
            me,
            boot,
            phase: Phase::AwaitTransfer {
                deadline: Deadline::after(now, terms),
            },
            effects: VecDeque::new(),
            received_bytes: 0,
            module_cached,
            config,
            prepare,
        };
        inc.effects.push_back(RecvEffect::Transmit(Message::Ready {
            migration: inc.prepare.migration,
            prepare_us: u64::try_from(prepared_for.as_micros()).unwrap_or(u64::MAX),
            module_cached,
        }));
        inc
    }

    /// The migration.
    pub fn migration(&self) -> MigrationId {
        self.prepare.migration
    }

    /// The PREPARE it accepted.
    pub fn prepare(&self) -> &Prepare {
        &self.prepare
    }

    /// The sending host.
    pub fn from(&self) -> &HostId {
        &self.from
    }

    /// Data bytes received so far.
    pub fn received_bytes(&self) -> u64 {
        self.received_bytes
    }

    /// Whether the machine has finished.
    pub fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    /// Whether COMMIT has been asked for (from then on the copy may be the only one).
    pub fn is_committing(&self) -> bool {
        matches!(self.phase, Phase::AwaitCommit { .. })
    }

    /// The next effect to carry out.
    pub fn poll_effect(&mut self) -> Option<RecvEffect> {
        self.effects.pop_front()
    }

    /// The current wait's deadline.
    pub fn poll_timeout(&self) -> Option<TrustedInstant> {
        match &self.phase {
            Phase::AwaitTransfer { deadline }
            | Phase::AwaitCommit { deadline, .. }
            | Phase::Aborting { deadline, .. } => Some(deadline.at()),
            Phase::Receiving(p) => Some(p.deadline.at()),
            Phase::Restoring { .. } | Phase::Done => None,
        }
    }

    fn chunk_terms(&self, network: Duration) -> DeadlineTerms {
        self.config.terms(network, CHUNK_BYTES_MAX as u64)
    }

    fn finish(&mut self, outcome: RecvOutcome) {
        self.phase = Phase::Done;
        self.effects.push_back(RecvEffect::Finished(outcome));
    }

    /// Gives the migration up (before COMMIT was asked for): tells the sender, records
    /// ABORT so the sender need not wait for its own deadline, and discards.
    fn abort(&mut self, now: TrustedInstant, reason: AbortReason, tell_peer: bool) {
        if !matches!(
            self.phase,
            Phase::AwaitTransfer { .. } | Phase::Receiving(_) | Phase::Restoring { .. }
        ) {
            return;
        }
        if tell_peer {
            self.effects.push_back(RecvEffect::Transmit(Message::Abort {
                migration: self.migration(),
                reason: reason.clone(),
            }));
        }
        self.effects.push_back(RecvEffect::Discard);
        self.phase = Phase::Aborting {
            reason,
            deadline: Deadline::after(now, self.config.store_terms()),
        };
        self.request_abort();
    }

    fn request_abort(&mut self) {
        self.effects.push_back(RecvEffect::Store(LedgerOp::Abort {
            id: self.prepare.enclave,
            epoch: self.prepare.epoch,
            migration: self.migration(),
            by: self.me.clone(),
        }));
    }

    fn violation(&mut self, now: TrustedInstant, why: String) {
        self.abort(now, AbortReason::Protocol(why), true);
    }

    /// A message from the sender about this migration. For `Memory` messages, `Ok(true)`
    /// means the SM must now write the bytes at their offset.
    pub fn handle_message(
        &mut self,
        now: TrustedInstant,
        msg: &Message<'_>,
        chain_before: &[u8],
    ) -> bool {
        if let Message::Abort { reason, .. } = msg {
            // The sender settles with the store; nothing here was committed.
            if matches!(
                self.phase,
                Phase::AwaitTransfer { .. } | Phase::Receiving(_) | Phase::Restoring { .. }
            ) {
                self.effects.push_back(RecvEffect::Discard);
                self.finish(RecvOutcome::Aborted(AbortReason::Peer(Box::new(
                    reason.clone(),
                ))));
            }
            return false;
        }
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::AwaitTransfer { .. } => match msg {
                Message::Transfer {
                    network_delay_us, ..
                } => {
                    let network = Duration::from_micros(*network_delay_us);
                    self.phase = Phase::Receiving(Box::new(Progress {
                        network,
                        deadline: Deadline::after(now, self.chunk_terms(network)),
                        module: Vec::new(),
                        module_loaded: self.module_cached,
                        memory_next: 0,
                        sealed: Vec::new(),
                        sealed_bytes: 0,
                    }));
                    false
                }
                other => {
                    self.phase = Phase::AwaitTransfer {
                        deadline: Deadline::after(now, self.chunk_terms(Duration::ZERO)),
                    };
                    self.violation(now, format!("{} before TRANSFER", other.kind()));
                    false
                }
            },
            Phase::Receiving(mut p) => {
                p.deadline = Deadline::after(now, self.chunk_terms(p.network));
                let verdict = self.receive(&mut p, msg, chain_before);
                match verdict {
                    Ok(write) => {
                        if !matches!(msg, Message::Final { .. }) {
                            self.phase = Phase::Receiving(p);
                        }
                        write
                    }
                    Err(why) => {
                        self.phase = Phase::Receiving(p);
                        self.abort(now, why, true);
                        false
                    }
                }
            }
            other => {
                self.phase = other;
                false
            }
        }
    }

    fn receive(
        &mut self,
        p: &mut Progress,
        msg: &Message<'_>,
        chain_before: &[u8],
    ) -> Result<bool, AbortReason> {
        let prep = &self.prepare;
        let bad = |why: String| Err(AbortReason::Protocol(why));
        match msg {
            Message::Module { offset, bytes, .. } => {
                let end = *offset + bytes.len() as u64;
                if p.module_loaded || *offset != p.module.len() as u64 || end > prep.module_bytes {
                    return bad(format!(
                        "module bytes at {offset}..{end} of {}",
                        prep.module_bytes
                    ));
                }
                p.module.extend_from_slice(bytes);
                self.received_bytes += bytes.len() as u64;
                if end == prep.module_bytes {
                    self.effects
                        .push_back(RecvEffect::LoadModule(std::mem::take(&mut p.module)));
                    p.module = Vec::with_capacity(0);
                }
                Ok(false)
            }
            Message::Memory { offset, bytes, .. } => {
                let end = *offset + bytes.len() as u64;
                let aligned = *offset % PAGE_BYTES as u64 == 0 && bytes.len() % PAGE_BYTES == 0;
                if !p.module_loaded
                    || !aligned
                    || *offset < p.memory_next
                    || end > prep.memory_bytes
                    || bytes.is_empty()
                {
                    return bad(format!(
                        "memory pages at {offset}..{end} of {}",
                        prep.memory_bytes
                    ));
                }
                p.memory_next = end;
                self.received_bytes += bytes.len() as u64;
                Ok(true)
            }
            Message::Sealed {
                slot,
                version,
                incarnation,
                data,
                ..
            } => {
                p.sealed_bytes += data.len() as u64;
                if p.sealed.len() as u32 >= prep.sealed_slots || p.sealed_bytes > prep.sealed_bytes
                {
                    return bad("more sealed data than announced".into());
                }
                if p.sealed.iter().any(|s| s.slot == *slot) {
                    return bad(format!("sealed slot {slot:?} sent twice"));
                }
                p.sealed.push(SealedSlot {
                    slot: slot.clone(),
                    version: *version,
                    incarnation: *incarnation,
                    data: Zeroizing::new(data.to_vec()),
                });
                self.received_bytes += data.len() as u64;
                Ok(false)
            }
            Message::Final { state, .. } => {
                if !p.module_loaded || p.sealed.len() as u32 != state.sealed_slots {
                    return bad("FINAL before all module and sealed data".into());
                }
                let expected = transfer_digest(self.prepare.migration, chain_before);
                if state.digest != expected {
                    return Err(AbortReason::DigestMismatch);
                }
                self.phase = Phase::Restoring { digest: expected };
                self.effects
                    .push_back(RecvEffect::Complete(Box::new(Received {
                        sealed: std::mem::take(&mut p.sealed),
                        state: (**state).clone(),
                    })));
                Ok(false)
            }
            other => bad(format!("unexpected {} at the receiver", other.kind())),
        }
    }

    /// The SM checked and loaded the module (or could not).
    pub fn module_loaded(&mut self, now: TrustedInstant, result: Result<(), AbortReason>) {
        match (&mut self.phase, result) {
            (Phase::Receiving(p), Ok(())) => p.module_loaded = true,
            (_, Err(reason)) => self.abort(now, reason, true),
            _ => {}
        }
    }

    /// The SM finished the instance and re-sealed its data (or could not). `Ok` carries the
    /// durable state (sealed versions, counters) the instance now has, for the COMMIT.
    pub fn restored(&mut self, now: TrustedInstant, result: Result<DurableState, AbortReason>) {
        let Phase::Restoring { digest } = self.phase else {
            return;
        };
        match result {
            Ok(durable) => {
                let commit = LedgerOp::Commit {
                    id: self.prepare.enclave,
                    epoch: self.prepare.epoch,
                    migration: self.migration(),
                    by: self.me.clone(),
                    boot: self.boot,
                    digest,
                    durable,
                };
                self.effects.push_back(RecvEffect::Store(commit.clone()));
                self.phase = Phase::AwaitCommit {
                    commit: Box::new(commit),
                    deadline: Deadline::after(now, self.config.store_terms()),
                };
            }
            Err(reason) => self.abort(now, reason, true),
        }
    }

    /// The store's reply to the last write this machine asked for.
    pub fn handle_store(&mut self, _now: TrustedInstant, reply: StoreReply) {
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::AwaitCommit { commit, deadline } => match reply {
                // Only COMMIT's own answer licenses running E here.
                StoreReply::Outcome(LedgerOutcome::Applied(record))
                    if !record.as_ref().is_some_and(|r| {
                        r.last_decision == Some((self.prepare.migration, Decision::Committed))
                            && r.owner == self.me
                    }) =>
                {
                    self.phase = Phase::AwaitCommit { commit, deadline };
                }
                StoreReply::Outcome(LedgerOutcome::Applied(record)) => {
                    let epoch = record.map_or(self.prepare.epoch + 1, |r| r.epoch);
                    self.effects.push_back(RecvEffect::Activate);
                    self.effects
                        .push_back(RecvEffect::Transmit(Message::Committed {
                            migration: self.migration(),
                            epoch,
                        }));
                    self.finish(RecvOutcome::Committed { epoch });
                }
                StoreReply::Outcome(LedgerOutcome::Refused { reason, .. }) => {
                    // ABORT won, or the migration is no longer this one's to commit.
                    self.effects.push_back(RecvEffect::Discard);
                    self.finish(RecvOutcome::Aborted(AbortReason::Store(reason)));
                }
                StoreReply::Unavailable(_) => self.phase = Phase::AwaitCommit { commit, deadline },
            },
            Phase::Aborting { reason, deadline } => match reply {
                StoreReply::Outcome(LedgerOutcome::Refused {
                    reason: LedgerRefusal::AlreadyDecided(Decision::Committed),
                    ..
                }) => {
                    // Only this side commits, and it never asked: unreachable in a correct
                    // system. Keep nothing rather than guess.
                    self.finish(RecvOutcome::Aborted(reason));
                }
                StoreReply::Outcome(_) => self.finish(RecvOutcome::Aborted(reason)),
                StoreReply::Unavailable(_) => self.phase = Phase::Aborting { reason, deadline },
            },
            other => self.phase = other,
        }
    }

    /// The trusted timer passed [`Incoming::poll_timeout`].
    pub fn handle_timeout(&mut self, now: TrustedInstant) {
        match &mut self.phase {
            Phase::AwaitTransfer { deadline } if deadline.expired(now) => {
                let terms = deadline.terms();
                self.abort(
                    now,
                    AbortReason::Timeout {
                        wait: Wait::Transfer,
                        terms,
                    },
                    true,
                );
            }
            Phase::Receiving(p) if p.deadline.expired(now) => {
                let terms = p.deadline.terms();
                self.abort(
                    now,
                    AbortReason::Timeout {
                        wait: Wait::Chunk,
                        terms,
                    },
                    true,
                );
            }
            Phase::AwaitCommit { commit, deadline } if deadline.expired(now) => {
                *deadline = Deadline::after(now, self.config.store_terms());
                let commit = (**commit).clone();
                self.effects.push_back(RecvEffect::Store(commit));
            }
            Phase::Aborting { deadline, .. } if deadline.expired(now) => {
                *deadline = Deadline::after(now, self.config.store_terms());
                self.request_abort();
            }
            _ => {}
        }
    }

    /// The connection to the sender ended. Before FINAL the copy is incomplete and is given
    /// up; after, the receiver goes on committing on its own.
    pub fn handle_disconnect(&mut self, now: TrustedInstant) {
        self.abort(now, AbortReason::ConnectionLost, false);
    }
}
