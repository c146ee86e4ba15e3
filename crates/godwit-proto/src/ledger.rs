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
    /// Its only live copy was lost (its host crashed); never to be restarted from memory.
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

/// One enclave instance's entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnclaveRecord {
    /// The instance.
    pub id: EnclaveId,
    /// The application's measurement.
    pub app: Measurement,
    /// The application's name.
    pub app_name: String,
    /// The host whose SM owns it.
    pub owner: HostId,
    /// Advances with every decision: a write naming an older epoch is stale.
    pub epoch: u64,
    /// Its state.
    pub state: RecordState,
    /// The last decided migration and its outcome, so decisions can be repeated.
    pub last_decision: Option<(MigrationId, Decision)>,
    /// The digest of the last committed transfer.
    pub last_digest: Option<[u8; 32]>,
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
        /// The manifest's cluster-wide cap, if any.
        max_instances_cluster: Option<u32>,
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
        /// The digest of what it received.
        digest: [u8; 32],
    },
    /// A party gives the migration up; the sender owns the instance again.
    Abort {
        /// The instance.
        id: EnclaveId,
        /// The epoch named in Begin.
        epoch: u64,
        /// The migration.
        migration: MigrationId,
        /// Who aborts (must be the sender or the receiver).
        by: HostId,
    },
    /// The owner destroyed the instance.
    Destroy {
        /// The instance.
        id: EnclaveId,
        /// The owner.
        by: HostId,
    },
    /// The owner's only copy is gone (the owner restarted with a new boot epoch).
    MarkLost {
        /// The instance.
        id: EnclaveId,
        /// The epoch at which it was lost.
        epoch: u64,
    },
}

impl LedgerOp {
    /// The instance the op concerns.
    pub fn enclave(&self) -> EnclaveId {
        match self {
            Self::Register { id, .. }
            | Self::Begin { id, .. }
            | Self::Commit { id, .. }
            | Self::Abort { id, .. }
            | Self::Destroy { id, .. }
            | Self::MarkLost { id, .. } => *id,
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
    /// The writer is not allowed to make this decision.
    #[error("{by} is not a party to this migration")]
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
}

/// The ledger's answer to a write: the record after it, or a refusal with the record as it
/// stands (so the writer learns the current truth in the same reply).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerOutcome {
    /// Applied (or an identical decision applied before); the record now.
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

    /// Applies one write. Deterministic: the same ops in the same order give the same
    /// state and outcomes on every replica.
    pub fn apply(&mut self, op: &LedgerOp) -> LedgerOutcome {
        let outcome = match op {
            LedgerOp::Register {
                id,
                app,
                app_name,
                owner,
                max_instances_cluster,
            } => self.register(*id, *app, app_name, owner, *max_instances_cluster),
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
                digest,
            } => self.decide(
                *id,
                *epoch,
                *migration,
                by,
                Decision::Committed,
                Some(*digest),
            ),
            LedgerOp::Abort {
                id,
                epoch,
                migration,
                by,
            } => self.decide(*id, *epoch, *migration, by, Decision::Aborted, None),
            LedgerOp::Destroy { id, by } => self.destroy(*id, by),
            LedgerOp::MarkLost { id, epoch } => self.mark_lost(*id, *epoch),
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
        owner: &HostId,
        cap: Option<u32>,
    ) -> LedgerOutcome {
        if let Some(r) = self.records.get(&id) {
            // The same registration repeated (its first reply was lost) is answered alike.
            if r.app == app && r.owner == *owner && r.epoch == 0 && r.last_decision.is_none() {
                return LedgerOutcome::Applied(Some(r.clone()));
            }
            return self.refuse(id, LedgerRefusal::AlreadyRegistered);
        }
        if let Some(limit) = cap {
            let live = self
                .records
                .values()
                .filter(|r| r.app == app && r.state != RecordState::Lost)
                .count();
            if live >= limit as usize {
                return self.refuse(id, LedgerRefusal::ClusterLimit { limit });
            }
        }
        let record = EnclaveRecord {
            id,
            app,
            app_name: app_name.to_owned(),
            owner: owner.clone(),
            epoch: 0,
            state: RecordState::Running,
            last_decision: None,
            last_digest: None,
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
        if r.owner != *from || from == to {
            return self.refuse(id, LedgerRefusal::NotParty { by: from.clone() });
        }
        // Invariant: found just above.
        let r = self.records.get_mut(&id).expect("present");
        r.state = RecordState::Migrating {
            migration,
            to: to.clone(),
        };
        LedgerOutcome::Applied(Some(r.clone()))
    }

    fn decide(
        &mut self,
        id: EnclaveId,
        epoch: u64,
        migration: MigrationId,
        by: &HostId,
        decision: Decision,
        digest: Option<[u8; 32]>,
    ) -> LedgerOutcome {
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
        let allowed = match decision {
            Decision::Committed => by == to,
            Decision::Aborted => by == to || *by == r.owner,
        };
        if !allowed {
            return self.refuse(id, LedgerRefusal::NotParty { by: by.clone() });
        }
        let to = to.clone();
        // Invariant: found just above.
        let r = self.records.get_mut(&id).expect("present");
        if decision == Decision::Committed {
            r.owner = to;
            r.last_digest = digest;
        }
        r.epoch += 1;
        r.state = RecordState::Running;
        r.last_decision = Some((migration, decision));
        LedgerOutcome::Applied(Some(r.clone()))
    }

    fn destroy(&mut self, id: EnclaveId, by: &HostId) -> LedgerOutcome {
        let Some(r) = self.records.get(&id) else {
            return self.refuse(id, LedgerRefusal::Unknown);
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

    fn mark_lost(&mut self, id: EnclaveId, epoch: u64) -> LedgerOutcome {
        let Some(r) = self.records.get(&id) else {
            return self.refuse(id, LedgerRefusal::Unknown);
        };
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
        // Invariant: found just above.
        let r = self.records.get_mut(&id).expect("present");
        r.state = RecordState::Lost;
        r.epoch += 1;
        LedgerOutcome::Applied(Some(r.clone()))
    }

    /// Structural invariants, asserted after every write (on in release builds).
    pub fn check_invariants(&self) {
        for (id, r) in &self.records {
            assert_eq!(*id, r.id, "record filed under another id");
            if let RecordState::Migrating { to, .. } = &r.state {
                assert_ne!(*to, r.owner, "a migration to its own owner");
            }
        }
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

    fn registered() -> Ledger {
        let mut l = Ledger::new();
        let out = l.apply(&LedgerOp::Register {
            id: E,
            app: Measurement([3; 32]),
            app_name: "app".into(),
            owner: h("a"),
            max_instances_cluster: None,
        });
        assert!(matches!(out, LedgerOutcome::Applied(Some(_))));
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
    fn commit(l: &mut Ledger, epoch: u64, m: MigrationId) -> LedgerOutcome {
        l.apply(&LedgerOp::Commit {
            id: E,
            epoch,
            migration: m,
            by: h("b"),
            digest: [9; 32],
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

    #[test]
    fn commit_moves_ownership_and_advances_the_epoch() {
        let mut l = registered();
        assert!(matches!(begin(&mut l, 0, M1), LedgerOutcome::Applied(_)));
        let LedgerOutcome::Applied(Some(r)) = commit(&mut l, 0, M1) else {
            panic!()
        };
        assert_eq!(
            (r.owner.as_str(), r.epoch, r.state.clone()),
            ("b", 1, RecordState::Running)
        );
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
        let LedgerOutcome::Applied(Some(r)) = abort(&mut l, 0, M1, "b") else {
            panic!()
        };
        assert_eq!((r.owner.as_str(), r.epoch), ("a", 1));
        assert!(matches!(
            commit(&mut l, 0, M1),
            LedgerOutcome::Refused {
                reason: LedgerRefusal::AlreadyDecided(Decision::Aborted),
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
        // A second migration of the same enclave while one is in progress.
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
        // Only the receiver commits.
        assert!(matches!(
            l.apply(&LedgerOp::Commit {
                id: E,
                epoch: 0,
                migration: M1,
                by: h("a"),
                digest: [0; 32]
            }),
            LedgerOutcome::Refused {
                reason: LedgerRefusal::NotParty { .. },
                ..
            }
        ));
        commit(&mut l, 0, M1);
        // The next migration must name the new epoch and come from the new owner.
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
                app: Measurement([3; 32]),
                app_name: "app".into(),
                owner: h("a"),
                max_instances_cluster: Some(2),
            })
        };
        assert!(matches!(reg(&mut l, 1), LedgerOutcome::Applied(_)));
        assert!(matches!(reg(&mut l, 2), LedgerOutcome::Applied(_)));
        assert!(matches!(
            reg(&mut l, 3),
            LedgerOutcome::Refused {
                reason: LedgerRefusal::ClusterLimit { limit: 2 },
                ..
            }
        ));
    }

    proptest! {
        /// Whatever order commits and aborts of one migration arrive in, exactly one
        /// decision is recorded and every later write agrees with it.
        #[test]
        fn racing_commit_and_abort_give_exactly_one_outcome(ops in proptest::collection::vec(0u8..4, 1..12)) {
            let mut l = registered();
            begin(&mut l, 0, M1);
            let mut decided: Option<Decision> = None;
            for op in ops {
                let (out, d) = match op {
                    0 => (commit(&mut l, 0, M1), Decision::Committed),
                    1 => (abort(&mut l, 0, M1, "a"), Decision::Aborted),
                    2 => (abort(&mut l, 0, M1, "b"), Decision::Aborted),
                    _ => (begin(&mut l, 0, M1), Decision::Aborted),
                };
                if op == 3 {
                    // A repeated Begin after the decision is stale; before it, a repeat.
                    continue;
                }
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
            let r = l.get(&E).unwrap();
            if let Some(d) = decided {
                prop_assert_eq!(r.epoch, 1);
                prop_assert_eq!(r.owner.as_str(), if d == Decision::Committed { "b" } else { "a" });
            }
        }
    }
}
