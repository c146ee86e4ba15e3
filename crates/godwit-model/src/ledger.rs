//! The store: the real [`Ledger`] behind a linearizable register, and the small views of
//! its writes and answers that travel in the model's messages.

use std::collections::BTreeSet;
use std::fmt;
use std::hash::{Hash, Hasher};

use godwit_proto::{
    Boot, Decision, DurableState, EnclaveRecord, Ledger, LedgerOp, LedgerOutcome, LedgerRefusal,
    MigrationId, RecordState,
};
use godwit_wire::{EnclaveId, HostId, Measurement};
use stateright::actor::{Id, Out};

use crate::HOSTS;
use crate::sm::{Mig, Msg, Node};

/// The one enclave.
const E: EnclaveId = EnclaveId([1; 16]);
/// Its application.
const APP: Measurement = Measurement([3; 32]);

/// A write an SM asks the store for, about E (the author is the sending SM, under the
/// boot its message names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// `LedgerOp::Begin` of `mig` from the author to the other host.
    Begin {
        /// The migration.
        mig: Mig,
        /// The epoch the sender holds E at.
        epoch: u8,
    },
    /// `LedgerOp::Commit` of `mig` by the author.
    Commit {
        /// The migration.
        mig: Mig,
        /// The epoch named in BEGIN.
        epoch: u8,
    },
    /// `LedgerOp::Abort` of `mig` by the author.
    Abort {
        /// The migration.
        mig: Mig,
        /// The epoch named in BEGIN.
        epoch: u8,
    },
    /// `LedgerOp::HostBooted` of the author's boot.
    Booted,
    /// `LedgerOp::Adopt` of E by the author.
    Adopt,
}

/// E's record state, as a view carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum St {
    /// Runs at the owner.
    Running,
    /// Paused at the owner, moving to `to` in `mig`.
    Migrating {
        /// The migration.
        mig: Mig,
        /// The receiving host.
        to: u8,
    },
    /// Lost.
    Lost,
}

/// E's record as an answer or a lease read tells an SM.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordView {
    /// The owner's host.
    pub owner: u8,
    /// The owner's boot count when it took ownership.
    pub owner_boot: u8,
    /// The epoch.
    pub epoch: u8,
    /// The state.
    pub state: St,
    /// The last decided migration and whether it committed.
    pub decided: Option<(Mig, bool)>,
}

impl fmt::Debug for RecordView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            St::Running => "running".to_string(),
            St::Migrating { mig, to } => {
                format!("migrating to {} in {mig:?}", HOSTS[usize::from(to)])
            }
            St::Lost => "lost".to_string(),
        };
        write!(
            f,
            "{state} owner {}/boot {} epoch {}",
            HOSTS[usize::from(self.owner)],
            self.owner_boot,
            self.epoch
        )?;
        if let Some((m, committed)) = self.decided {
            let d = if committed { "committed" } else { "aborted" };
            write!(f, ", last {m:?} {d}")?;
        }
        Ok(())
    }
}

impl RecordView {
    /// Whether this record is later than `other`. E's record changes only by moving to a
    /// new epoch, or by BEGIN within one (running to migrating), so (epoch, migrating)
    /// orders its versions.
    pub fn newer_than(&self, other: &RecordView) -> bool {
        let key = |r: &RecordView| (r.epoch, matches!(r.state, St::Migrating { .. }));
        key(self) > key(other)
    }
}

/// How the ledger answered a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    /// Applied (or answered alike as a repeat).
    Applied,
    /// Refused: the migration was already decided the other way, for COMMIT.
    CommitWon,
    /// Refused for another reason.
    Refused,
}

/// The ledger's answer to a write, as a view carries it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Outcome {
    /// Applied or refused.
    pub verdict: Verdict,
    /// E's record after the write.
    pub record: Option<RecordView>,
}

impl fmt::Debug for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.record {
            Some(r) => write!(f, "{:?} ({r:?})", self.verdict),
            None => write!(f, "{:?}", self.verdict),
        }
    }
}

/// The store's state: the real ledger, the era (how many times a lease and the drift
/// bound have passed since an adoption applied; see the crate documentation), and the
/// host the operator removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerNode {
    /// The ledger.
    pub ledger: Ledger,
    /// Leases read in an earlier era have lapsed.
    pub era: u8,
    /// Whether an adoption applied in this era (time passing matters only then).
    pub adopted_in_era: bool,
    /// The host removed from the store, if any.
    pub removed: Option<u8>,
    /// Per host, the (boot, era) of the last lease read answered: a boot's read is
    /// answered once per era.
    pub granted: [Option<(u8, u8)>; 2],
    /// The writes applied, by (host, boot): the store's proposal sessions
    /// (`godwit-store`'s `Replicated::apply_proposal`) apply each proposal once.
    pub applied: BTreeSet<(u8, u8, Op)>,
    /// Every answer sent, by recipient. The duplicating network keeps each one, so an
    /// answer already sent is not sent again (see [`LedgerNode::send`]).
    pub sent: BTreeSet<(u8, Msg)>,
}

impl Hash for LedgerNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Every field of the ledger that can differ between the model's states: E's
        // record (its sealed state, digest and cap never change here) and the boots.
        let r = self.ledger.get(&E);
        r.map(|r| {
            (
                r.owner.as_str(),
                r.owner_boot,
                r.epoch,
                r.incarnation,
                view(r),
                r.durable.sealed.len() + r.durable.counters.len(),
            )
        })
        .hash(state);
        for h in 0..HOSTS.len() as u8 {
            self.ledger.boot_of(&host_id(h)).hash(state);
        }
        (self.era, self.adopted_in_era, self.removed).hash(state);
        (self.granted, &self.applied, &self.sent).hash(state);
    }
}

impl LedgerNode {
    /// Both hosts' first boots recorded, and E registered at `a` under its first boot.
    pub fn new() -> Self {
        let mut ledger = Ledger::new();
        for (h, _) in HOSTS.iter().enumerate() {
            let host = host_id(h as u8);
            expect_applied(ledger.apply(&LedgerOp::HostBooted {
                host,
                boot: boot(1),
            }));
        }
        expect_applied(ledger.apply(&LedgerOp::Register {
            id: E,
            app: APP,
            app_name: "e".into(),
            owner: host_id(0),
            boot: boot(1),
            max_instances_cluster: None,
            departures: 0,
        }));
        Self {
            ledger,
            era: 0,
            adopted_in_era: false,
            removed: None,
            // The first boots hold a lease from the start.
            granted: [Some((1, 0)); 2],
            applied: BTreeSet::new(),
            sent: BTreeSet::new(),
        }
    }

    /// E's record now.
    pub fn record(&self) -> RecordView {
        // Invariant: E is registered at the start and the model never destroys it.
        let r = self.ledger.get(&E).expect("E is registered");
        view(r)
    }

    /// E's incarnation (adoptions so far).
    pub fn incarnation(&self) -> u64 {
        self.ledger.get(&E).map_or(0, |r| r.incarnation)
    }

    /// Whether the record licenses a copy at `host` under `boot`: it names them as owner,
    /// and E is not lost.
    pub fn licenses(&self, host: u8, boot: u8) -> bool {
        let r = self.record();
        r.owner == host && r.owner_boot == boot && r.state != St::Lost
    }

    /// Whether the store's sessions let `op` by `host`'s boot `boot` through: a repeat
    /// of a write applied before is not applied again, and a write from an older boot of
    /// the host than the newest that wrote is dropped (that SM is gone; its answer would
    /// reach no one).
    pub fn admits(&self, host: u8, boot: u8, op: Op) -> bool {
        let newer = self.applied.iter().any(|&(h, b, _)| h == host && b > boot);
        !newer && !self.applied.contains(&(host, boot, op))
    }

    /// Applies `op` by `host` under `boot` with the real transition function.
    pub fn write(&mut self, host: u8, boot: u8, op: Op) -> Outcome {
        self.applied.insert((host, boot, op));
        if op == Op::Booted {
            // Its answer is the boot's first lease.
            self.granted[usize::from(host)] = Some((boot, self.era));
        }
        let before = self.incarnation();
        let outcome = self.apply(&ledger_op(host, boot, op));
        self.adopted_in_era |= self.incarnation() > before;
        outcome
    }

    /// Sends `msg` to `to` unless it was sent before. Sending it again would change
    /// nothing but stateright's record of the last message delivered (the network is a
    /// set, and duplicates it anyway), so every repeat would be one more state to explore.
    /// On a lossy network this leaves out a lost answer sent anew, which behaves as the
    /// same answer delayed.
    pub fn send(&mut self, to: u8, msg: Msg, o: &mut Out<Node>) {
        if self.sent.insert((to, msg.clone())) {
            o.send(Id::from(usize::from(to)), msg);
        }
    }

    /// Whether to answer a lease read of `host`'s boot `boot`: once per boot and era,
    /// never to a boot older than one answered already.
    pub fn grant(&mut self, host: u8, boot: u8) -> bool {
        let g = &mut self.granted[usize::from(host)];
        if g.is_some_and(|(b, e)| b > boot || (b, e) == (boot, self.era)) {
            return false;
        }
        *g = Some((boot, self.era));
        true
    }

    /// If E became lost since `before`, the operator (who watches the ledger, as
    /// `godwit status` shows it) asks every host still in the store to adopt it.
    pub fn ask_adoption(&mut self, before: St, o: &mut Out<Node>) {
        let r = self.record();
        if before != St::Lost && r.state == St::Lost {
            for h in 0..HOSTS.len() as u8 {
                if self.removed != Some(h) {
                    self.send(h, Msg::AdoptAsked { epoch: r.epoch }, o);
                }
            }
        }
    }

    /// A lease and the drift bound pass: every lease read so far lapses.
    pub fn time_passes(&mut self) {
        self.era += 1;
        self.adopted_in_era = false;
    }

    /// The operator removes `host`: what it ran is lost, its migrations settled.
    pub fn remove(&mut self, host: u8) {
        self.apply(&LedgerOp::HostLeft {
            host: host_id(host),
        });
        self.removed = Some(host);
    }

    fn apply(&mut self, op: &LedgerOp) -> Outcome {
        let outcome = self.ledger.apply(op);
        let (verdict, record) = match outcome {
            LedgerOutcome::Applied(r) => (Verdict::Applied, r),
            LedgerOutcome::Refused {
                reason: LedgerRefusal::AlreadyDecided(Decision::Committed),
                record,
            } => (Verdict::CommitWon, record),
            LedgerOutcome::Refused { record, .. } => (Verdict::Refused, record),
        };
        Outcome {
            verdict,
            // Answers to writes on E carry E's record; HostBooted's carries none, and
            // the SM learns the record at its next read.
            record: record.map(|r| view(&r)),
        }
    }
}

impl Default for LedgerNode {
    fn default() -> Self {
        Self::new()
    }
}

fn expect_applied(out: LedgerOutcome) {
    assert!(
        matches!(out, LedgerOutcome::Applied(_)),
        "the initial ledger: {out:?}"
    );
}

/// The host id of host index `h`.
fn host_id(h: u8) -> HostId {
    // Invariant: the names in HOSTS are valid host ids.
    HostId::new(HOSTS[usize::from(h)]).expect("a valid host id")
}

fn host_index(id: &HostId) -> u8 {
    // Invariant: the ledger only ever names the model's hosts.
    let h = HOSTS.iter().position(|n| id.to_string() == *n);
    h.expect("a model host") as u8
}

/// The boot epoch of boot count `count`: the count in the first 8 bytes (as the hardware
/// component writes it), and a random part that differs per boot.
fn boot(count: u8) -> Boot {
    let mut b = [count; 16];
    b[..8].copy_from_slice(&u64::from(count).to_be_bytes());
    b
}

fn boot_count(b: &Boot) -> u8 {
    b[15]
}

fn migration_id(m: Mig) -> MigrationId {
    let mut id = [0; 16];
    id[..3].copy_from_slice(&[m.from, m.boot, m.n]);
    MigrationId(id)
}

fn mig(id: &MigrationId) -> Mig {
    Mig {
        from: id.0[0],
        boot: id.0[1],
        n: id.0[2],
    }
}

fn view(r: &EnclaveRecord) -> RecordView {
    RecordView {
        owner: host_index(&r.owner),
        owner_boot: boot_count(&r.owner_boot),
        // Invariant: the bounds keep epochs far below 256.
        epoch: u8::try_from(r.epoch).expect("a small epoch"),
        state: match &r.state {
            RecordState::Running => St::Running,
            RecordState::Migrating { migration, to } => St::Migrating {
                mig: mig(migration),
                to: host_index(to),
            },
            RecordState::Lost => St::Lost,
        },
        decided: r
            .last_decision
            .map(|(m, d)| (mig(&m), d == Decision::Committed)),
    }
}

fn ledger_op(host: u8, boot_count: u8, op: Op) -> LedgerOp {
    let me = host_id(host);
    match op {
        Op::Begin { mig, epoch } => LedgerOp::Begin {
            id: E,
            epoch: epoch.into(),
            from: me,
            to: host_id(1 - host),
            migration: migration_id(mig),
        },
        Op::Commit { mig, epoch } => LedgerOp::Commit {
            id: E,
            epoch: epoch.into(),
            migration: migration_id(mig),
            by: me,
            boot: boot(boot_count),
            digest: [7; 32],
            durable: DurableState::default(),
        },
        Op::Abort { mig, epoch } => LedgerOp::Abort {
            id: E,
            epoch: epoch.into(),
            migration: migration_id(mig),
            by: me,
        },
        Op::Booted => LedgerOp::HostBooted {
            host: me,
            boot: boot(boot_count),
        },
        Op::Adopt => LedgerOp::Adopt {
            id: E,
            by: me,
            boot: boot(boot_count),
            app: APP,
        },
    }
}
