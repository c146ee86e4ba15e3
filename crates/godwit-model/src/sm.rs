//! The actors: an SM per host, and the store.
//!
//! An SM keeps what a real SM keeps in memory for E: its boot and whether the ledger
//! recorded it, its applied view of E's record (which also dates its lease), and its role (the copy it
//! holds and the migration or adoption under way). Each handler restates one rule of
//! `godwit-proto` (`send.rs`, `recv.rs`) or `godwit-monitor` (`migrate.rs`, `durable.rs`,
//! `store.rs`); the comments name them.

use std::borrow::Cow;
use std::fmt;

use stateright::actor::{Actor, Id, Out, model_timeout};

use crate::ledger::{LedgerNode, Op, Outcome, RecordView, St, Verdict};
use crate::{Config, HOSTS, STORE, Variant};

/// A migration: its sender, the sender's boot and its number in that boot (unique, as
/// the random ids of the real protocol are).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mig {
    /// The sending host.
    pub from: u8,
    /// The sender's boot.
    pub boot: u8,
    /// Its number in that boot.
    pub n: u8,
}

impl fmt::Debug for Mig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "m{}{}.{}",
            HOSTS[usize::from(self.from)],
            self.boot,
            self.n
        )
    }
}

/// A message. Between SMs, one per protocol step; to and from the store, writes, reads
/// and their answers, each tagged with the boot of the SM that asked.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Msg {
    /// PREPARE, with the epoch the sender holds E at.
    Prepare {
        /// The migration.
        mig: Mig,
        /// The sender's epoch.
        epoch: u8,
    },
    /// READY, from the receiver's boot `boot` (the channel the transfer takes).
    Ready {
        /// The migration.
        mig: Mig,
        /// The receiver's boot.
        boot: u8,
    },
    /// TRANSFER and all the data through FINAL, on the channel to the receiver's boot
    /// `to_boot`.
    Transfer {
        /// The migration.
        mig: Mig,
        /// The receiver's boot that answered READY.
        to_boot: u8,
    },
    /// A write to the store, by the sending SM's boot `boot`.
    Write {
        /// The writer's boot.
        boot: u8,
        /// The write.
        op: Op,
    },
    /// A lease read (ReadIndex), by the sending SM's boot `boot`.
    Read {
        /// The reader's boot.
        boot: u8,
    },
    /// The store's answer to a write of boot `boot`, in era `era`.
    Answer {
        /// The writer's boot.
        boot: u8,
        /// The store's era.
        era: u8,
        /// The write answered.
        op: Op,
        /// The outcome.
        outcome: Outcome,
    },
    /// The operator asks the SM to adopt E, which the ledger records lost at `epoch`.
    AdoptAsked {
        /// The epoch of the loss.
        epoch: u8,
    },
    /// A lease: the answer to a read of boot `boot` in era `era`, with E's record.
    Lease {
        /// The reader's boot.
        boot: u8,
        /// The store's era.
        era: u8,
        /// E's record at the read.
        record: RecordView,
    },
}

/// The actions that happen "whenever": the operator's requests, deadlines and time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    /// The operator asks the owner to migrate E to the other host.
    Migrate,
    /// The current wait's deadline passes.
    Deadline,
    /// A lease and the drift bound have passed since this SM applied its adoption.
    AdoptionWaited,
    /// At the store: a lease and the drift bound pass.
    TimePasses,
    /// At the store: the operator removes host `h`.
    Remove(u8),
}

/// The sender's phases (`send.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Send {
    /// PREPARE sent; E still runs.
    AwaitReady,
    /// E paused; BEGIN asked. `to_boot` is the receiver's boot that answered READY.
    AwaitBegin {
        /// The receiver's boot.
        to_boot: u8,
    },
    /// BEGIN applied and everything sent; E paused.
    AwaitDecision,
    /// ABORT asked; E paused until the ledger answers.
    Aborting,
}

/// The receiver's phases (`recv.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Recv {
    /// READY sent; waiting for the transfer.
    AwaitTransfer,
    /// Everything received; COMMIT asked. E does not run.
    AwaitCommit,
}

/// An adoption under way (`durable.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Adopting {
    /// ADOPT asked.
    Asked,
    /// ADOPT applied in era `era`; waiting out the last owner's lease.
    Waiting {
        /// The era the adoption applied in.
        era: u8,
    },
}

/// What an SM holds of E.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// No copy.
    Idle,
    /// E runs here; `adopted_in` is the era of the adoption that started this life, when
    /// it began with one and waited out the lease.
    Running {
        /// The adoption's era.
        adopted_in: Option<u8>,
    },
    /// Sending E.
    Sending {
        /// The migration.
        mig: Mig,
        /// The epoch E was held at.
        epoch: u8,
        /// The phase.
        phase: Send,
    },
    /// Receiving E.
    Receiving {
        /// The migration.
        mig: Mig,
        /// The epoch named in PREPARE.
        epoch: u8,
        /// The phase.
        phase: Recv,
    },
    /// Adopting E.
    Adopting(Adopting),
}

impl Role {
    /// Whether the copy here runs (E is not paused, not waiting to run).
    pub fn runs(self) -> bool {
        matches!(
            self,
            Role::Running { .. }
                | Role::Sending {
                    phase: Send::AwaitReady,
                    ..
                }
        )
    }
}

/// An SM's state. Only `boot` survives a crash (as the actor's storage); the rest is
/// memory.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Sm {
    /// This boot's count.
    pub boot: u8,
    /// Whether the ledger recorded this boot (`BootStatus::Recorded`).
    pub recorded: bool,
    /// E's record in this SM's applied ledger: the newest it has heard.
    pub view: Option<RecordView>,
    /// The newest era it heard from the store in: it holds a lease while that is the
    /// store's era.
    pub lease: Option<u8>,
    /// Migrations started in this boot (numbers them).
    pub started: u8,
    /// Migrations this boot received a PREPARE of. The attested channel delivers each
    /// record once (sequence numbers), and a sender never repeats a PREPARE, so a
    /// receiver never takes part in one migration twice.
    pub seen: Vec<Mig>,
    /// What it holds of E.
    pub role: Role,
}

impl Sm {
    fn start(host: u8, boot: u8) -> Self {
        let first = boot == 1;
        Sm {
            boot,
            // The first boots are in the initial ledger, which every SM has applied.
            recorded: first,
            view: first.then(|| LedgerNode::new().record()),
            lease: first.then_some(0),
            started: 0,
            seen: Vec::new(),
            role: if first && host == 0 {
                Role::Running { adopted_in: None }
            } else {
                Role::Idle
            },
        }
    }

    /// Whether E may run here by this SM's own ledger (`reconcile`, `adoption_timeouts`):
    /// the record names this host, under this boot when boots are bound, as E's owner,
    /// running.
    fn licensed(&self, me: u8, variant: Variant) -> bool {
        self.view
            .is_some_and(|r| self.owns(me, variant, &r) && r.state == St::Running)
    }

    fn owns(&self, me: u8, variant: Variant, r: &RecordView) -> bool {
        r.owner == me && (!variant.binds_boots() || r.owner_boot == self.boot)
    }

    /// Whether this SM answers for E (`may_release`): E runs here, it holds a lease (it
    /// heard from the store in the current `era`), and its ledger names it as E's owner
    /// (running, or migrating away, not yet committed elsewhere).
    pub fn answers(&self, me: u8, variant: Variant, era: u8) -> bool {
        self.role.runs()
            && self.lease == Some(era)
            && self
                .view
                .is_some_and(|r| self.owns(me, variant, &r) && r.state != St::Lost)
    }

    /// Takes in what the store said in `era`: the applied ledger only moves forward, and
    /// hearing from the store renews the lease.
    fn learn(&mut self, era: u8, record: Option<RecordView>) {
        if let Some(r) = record
            && self.view.is_none_or(|v| r.newer_than(&v))
        {
            self.view = Some(r);
        }
        self.lease = self.lease.max(Some(era));
    }

    fn on_msg(&mut self, me: u8, variant: Variant, msg: Msg, o: &mut Out<Node>) {
        let peer = Id::from(usize::from(1 - me));
        match msg {
            // The receiver takes part only once its boot is recorded (`check_prepare`).
            Msg::Prepare { mig, epoch }
                if self.recorded && self.role == Role::Idle && !self.seen.contains(&mig) =>
            {
                self.seen.push(mig);
                self.role = Role::Receiving {
                    mig,
                    epoch,
                    phase: Recv::AwaitTransfer,
                };
                o.send(
                    peer,
                    Msg::Ready {
                        mig,
                        boot: self.boot,
                    },
                );
            }
            Msg::Ready { mig, boot } => {
                // READY: pause E, then ask for BEGIN.
                if let Role::Sending {
                    mig: m,
                    epoch,
                    phase: phase @ Send::AwaitReady,
                } = &mut self.role
                    && *m == mig
                {
                    *phase = Send::AwaitBegin { to_boot: boot };
                    let epoch = *epoch;
                    self.write(Op::Begin { mig, epoch }, o);
                }
            }
            Msg::Transfer { mig, to_boot } => {
                // The data travels on the channel to the boot that answered READY.
                if let Role::Receiving {
                    mig: m,
                    epoch,
                    phase: phase @ Recv::AwaitTransfer,
                } = &mut self.role
                    && *m == mig
                    && (!variant.binds_boots() || to_boot == self.boot)
                {
                    *phase = Recv::AwaitCommit;
                    let epoch = *epoch;
                    self.write(Op::Commit { mig, epoch }, o);
                }
            }
            // The ledger refuses the adoption unless E is lost when it applies.
            Msg::AdoptAsked { .. } if self.role == Role::Idle => {
                self.role = Role::Adopting(Adopting::Asked);
                self.write(Op::Adopt, o);
            }
            Msg::Answer {
                boot,
                era,
                op,
                outcome,
            } if !variant.binds_boots() || boot == self.boot => {
                self.learn(era, outcome.record);
                self.answered(me, variant, (op, era, outcome), o);
            }
            Msg::Lease { boot, era, record } if !variant.binds_boots() || boot == self.boot => {
                self.learn(era, Some(record));
            }
            _ => {}
        }
    }

    /// The sender asks for ABORT and keeps E paused until the ledger answers.
    fn abort(&mut self, mig: Mig, epoch: u8, o: &mut Out<Node>) {
        self.role = Role::Sending {
            mig,
            epoch,
            phase: Send::Aborting,
        };
        self.write(Op::Abort { mig, epoch }, o);
    }

    fn answered(
        &mut self,
        me: u8,
        variant: Variant,
        (op, era, outcome): (Op, u8, Outcome),
        o: &mut Out<Node>,
    ) {
        let peer = Id::from(usize::from(1 - me));
        match (op, self.role) {
            (Op::Booted, _) => self.recorded |= outcome.verdict == Verdict::Applied,
            (
                Op::Begin { mig: m, .. },
                Role::Sending {
                    mig,
                    epoch,
                    phase: Send::AwaitBegin { to_boot },
                },
            ) if m == mig => {
                if outcome.verdict == Verdict::Applied {
                    self.role = Role::Sending {
                        mig,
                        epoch,
                        phase: Send::AwaitDecision,
                    };
                    o.send(peer, Msg::Transfer { mig, to_boot });
                } else {
                    // BEGIN refused: E resumes if the ledger says it runs here.
                    self.role = resume_or_wipe(me, mig, outcome.record, None);
                }
            }
            // Every answer about this migration settles the abort; only ABORT's own
            // licenses a resume (`settle_abort`).
            (
                Op::Begin { mig: m, .. } | Op::Abort { mig: m, .. },
                Role::Sending {
                    mig,
                    epoch,
                    phase: Send::Aborting,
                },
            ) if m == mig => {
                let aborted = outcome
                    .record
                    .is_some_and(|r| r.decided == Some((mig, false)));
                self.role = match outcome.verdict {
                    Verdict::Applied if aborted => Role::Running { adopted_in: None },
                    Verdict::Applied => self.role,
                    Verdict::CommitWon => Role::Idle,
                    Verdict::Refused => resume_or_wipe(me, mig, outcome.record, Some(epoch)),
                };
            }
            // Only COMMIT's own answer, naming this migration at this host, runs E here.
            (
                Op::Commit { mig: m, .. },
                Role::Receiving {
                    mig,
                    phase: Recv::AwaitCommit,
                    ..
                },
            ) if m == mig => match outcome.verdict {
                Verdict::Applied
                    if outcome
                        .record
                        .is_some_and(|r| r.decided == Some((mig, true)) && r.owner == me) =>
                {
                    self.role = Role::Running { adopted_in: None };
                }
                Verdict::Applied => {}
                Verdict::CommitWon | Verdict::Refused => self.role = Role::Idle,
            },
            (Op::Adopt, Role::Adopting(Adopting::Asked)) => {
                self.role = match (outcome.verdict, outcome.record) {
                    (Verdict::Applied, Some(_)) if variant.waits_lease() => {
                        Role::Adopting(Adopting::Waiting { era })
                    }
                    (Verdict::Applied, Some(_)) if self.licensed(me, variant) => {
                        Role::Running { adopted_in: None }
                    }
                    _ => Role::Idle,
                };
            }
            _ => {}
        }
    }

    fn on_timeout(&mut self, me: u8, variant: Variant, timer: Timer, o: &mut Out<Node>) {
        let peer = Id::from(usize::from(1 - me));
        match (timer, self.role) {
            (Timer::Migrate, Role::Running { .. }) => {
                let Some(r) = self.view else { return };
                self.started += 1;
                let mig = Mig {
                    from: me,
                    boot: self.boot,
                    n: self.started,
                };
                self.role = Role::Sending {
                    mig,
                    epoch: r.epoch,
                    phase: Send::AwaitReady,
                };
                o.send(
                    peer,
                    Msg::Prepare {
                        mig,
                        epoch: r.epoch,
                    },
                );
            }
            (Timer::Deadline, Role::Sending { mig, epoch, phase }) => {
                match phase {
                    // Nothing was paused: nothing to undo.
                    Send::AwaitReady => self.role = Role::Running { adopted_in: None },
                    // A timeout alone never licenses a resume.
                    Send::AwaitBegin { .. } | Send::AwaitDecision => self.abort(mig, epoch, o),
                    Send::Aborting => {}
                }
            }
            // The receiver discards its partial copy. (It also asks for ABORT; that
            // write decides nothing the sender's cannot, so the model leaves it out.)
            (
                Timer::Deadline,
                Role::Receiving {
                    phase: Recv::AwaitTransfer,
                    ..
                },
            ) => self.role = Role::Idle,
            (Timer::AdoptionWaited, Role::Adopting(Adopting::Waiting { era })) => {
                self.role = if self.licensed(me, variant) {
                    Role::Running {
                        adopted_in: Some(era),
                    }
                } else {
                    Role::Idle
                };
            }
            _ => {}
        }
    }

    /// After every step: a running copy the SM's ledger no longer licenses is wiped
    /// (`reconcile`).
    fn reconcile(&mut self, me: u8, variant: Variant) {
        if matches!(self.role, Role::Running { .. }) && !self.licensed(me, variant) {
            self.role = Role::Idle;
        }
    }

    fn write(&self, op: Op, o: &mut Out<Node>) {
        o.send(
            Id::from(STORE),
            Msg::Write {
                boot: self.boot,
                op,
            },
        );
    }

    /// The timers that may fire in this state.
    fn timers(&self) -> Vec<Timer> {
        let mut t = Vec::new();
        match self.role {
            Role::Running { .. } => t.push(Timer::Migrate),
            Role::Sending {
                phase: Send::AwaitReady | Send::AwaitBegin { .. } | Send::AwaitDecision,
                ..
            }
            | Role::Receiving {
                phase: Recv::AwaitTransfer,
                ..
            } => t.push(Timer::Deadline),
            Role::Adopting(Adopting::Waiting { .. }) => t.push(Timer::AdoptionWaited),
            _ => {}
        }
        t
    }
}

/// After a refusal, E runs again at the sender only if the ledger says it runs there (at
/// `epoch`, or past it by this migration's abort); otherwise it is wiped
/// (`resume_or_wipe`).
fn resume_or_wipe(me: u8, mig: Mig, record: Option<RecordView>, epoch: Option<u8>) -> Role {
    match record {
        Some(r)
            if r.owner == me
                && r.state == St::Running
                && epoch.is_none_or(|e| e == r.epoch || r.decided == Some((mig, false))) =>
        {
            Role::Running { adopted_in: None }
        }
        _ => Role::Idle,
    }
}

/// The store's handlers: it applies writes and answers reads, except from a removed host.
fn store_msg(l: &mut LedgerNode, from: u8, msg: Msg, o: &mut Out<Node>) {
    if l.removed == Some(from) {
        return;
    }
    match msg {
        Msg::Write { boot, op } if l.admits(from, boot, op) => {
            let before = l.record().state;
            let outcome = l.write(from, boot, op);
            l.ask_adoption(before, o);
            let era = l.era;
            let answer = Msg::Answer {
                boot,
                era,
                op,
                outcome,
            };
            l.send(from, answer, o);
        }
        Msg::Read { boot } if l.grant(from, boot) => {
            let lease = Msg::Lease {
                boot,
                era: l.era,
                record: l.record(),
            };
            l.send(from, lease, o);
        }
        _ => {}
    }
}

fn store_timers(config: &Config, l: &LedgerNode) -> Vec<Timer> {
    let mut t = Vec::new();
    if l.adopted_in_era {
        t.push(Timer::TimePasses);
    }
    if config.bounds.removal && l.removed.is_none() {
        t.extend((0..HOSTS.len() as u8).map(Timer::Remove));
    }
    t
}

/// An actor of the model.
#[derive(Clone, Debug)]
pub enum Node {
    /// The SM of host `host`.
    Sm {
        /// The host's index.
        host: u8,
        /// The rule and bounds.
        config: Config,
    },
    /// The store.
    Store {
        /// The rule and bounds.
        config: Config,
    },
}

/// An actor's state.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NodeState {
    /// An SM's.
    Sm(Sm),
    /// The store's.
    Store(LedgerNode),
}

impl Node {
    fn config(&self) -> &Config {
        match self {
            Node::Sm { config, .. } | Node::Store { config } => config,
        }
    }

    fn timers(&self, state: &NodeState) -> Vec<Timer> {
        match state {
            NodeState::Sm(sm) => sm.timers(),
            NodeState::Store(l) => store_timers(self.config(), l),
        }
    }

    /// Runs `step` on a copy of the state; keeps the copy only if it changed, and arms the
    /// timers the new state enables (re-arming `fired`, if it still applies).
    fn step(
        &self,
        state: &mut Cow<'_, NodeState>,
        fired: Option<Timer>,
        o: &mut Out<Self>,
        step: impl FnOnce(&mut NodeState, &mut Out<Self>),
    ) {
        let before = self.timers(state);
        let mut next = (**state).clone();
        step(&mut next, o);
        let after = self.timers(&next);
        for t in &after {
            if !before.contains(t) || fired == Some(*t) {
                o.set_timer(*t, model_timeout());
            }
        }
        for t in before
            .iter()
            .filter(|t| !after.contains(t) && fired != Some(**t))
        {
            o.cancel_timer(*t);
        }
        if next != **state {
            *state.to_mut() = next;
        }
    }
}

impl Actor for Node {
    type Msg = Msg;
    type State = NodeState;
    type Timer = Timer;
    type Random = ();
    type Storage = u8;

    fn on_start(&self, _id: Id, storage: &Option<u8>, o: &mut Out<Self>) -> NodeState {
        let state = match self {
            Node::Store { .. } => NodeState::Store(LedgerNode::new()),
            Node::Sm { host, .. } => {
                // The component counts boots; a restart is the next one.
                let boot = storage.map_or(1, |b| b + 1);
                o.save(boot);
                if boot > 1 {
                    o.send(
                        Id::from(STORE),
                        Msg::Write {
                            boot,
                            op: Op::Booted,
                        },
                    );
                }
                o.send(Id::from(STORE), Msg::Read { boot });
                NodeState::Sm(Sm::start(*host, boot))
            }
        };
        for t in self.timers(&state) {
            o.set_timer(t, model_timeout());
        }
        state
    }

    fn on_msg(
        &self,
        _id: Id,
        state: &mut Cow<'_, NodeState>,
        src: Id,
        msg: Msg,
        o: &mut Out<Self>,
    ) {
        let from = usize::from(src) as u8;
        let variant = self.config().variant;
        self.step(state, None, o, |s, o| match (self, s) {
            (Node::Sm { host, .. }, NodeState::Sm(sm)) => {
                sm.on_msg(*host, variant, msg, o);
                sm.reconcile(*host, variant);
            }
            (Node::Store { .. }, NodeState::Store(l)) => store_msg(l, from, msg, o),
            _ => unreachable!("an actor's state is of its kind"),
        });
    }

    fn on_timeout(
        &self,
        _id: Id,
        state: &mut Cow<'_, NodeState>,
        timer: &Timer,
        o: &mut Out<Self>,
    ) {
        let variant = self.config().variant;
        self.step(state, Some(*timer), o, |s, o| match (self, s) {
            (Node::Sm { host, .. }, NodeState::Sm(sm)) => {
                sm.on_timeout(*host, variant, *timer, o);
                sm.reconcile(*host, variant);
            }
            (Node::Store { .. }, NodeState::Store(l)) => match *timer {
                Timer::TimePasses => l.time_passes(),
                Timer::Remove(h) if l.removed.is_none() => {
                    let before = l.record().state;
                    l.remove(h);
                    l.ask_adoption(before, o);
                }
                _ => {}
            },
            _ => unreachable!("an actor's state is of its kind"),
        });
    }

    fn name(&self) -> String {
        match self {
            Node::Sm { host, .. } => HOSTS[usize::from(*host)].to_string(),
            Node::Store { .. } => "store".to_string(),
        }
    }
}
