//! An exhaustive model check of godwit's migration commit rule, with
//! [stateright](https://docs.rs/stateright/0.31) actor models. Test-only: nothing in
//! godwit depends on this crate.
//!
//! Three actors: the SMs of hosts `a` and `b`, and the store. The store applies every
//! write with the real ledger transition function, [`godwit_proto::Ledger::apply`], in
//! the order writes reach it: Raft abstracted to the linearizable register it provides.
//! The model and the code cannot drift on the ledger's rules (COMMIT/ABORT races,
//! epochs, boot announcements settling migrations, adoption, removal). The SMs' side is
//! restated, one rule per handler in `sm.rs`, from `godwit-proto`'s `send.rs` and
//! `recv.rs` and `godwit-monitor`'s `migrate.rs`, `durable.rs` and `store.rs`: those
//! machines carry byte buffers and trusted-timer deadlines, which a model state cannot
//! (it must be small, cloneable and hashable).
//!
//! # What is modelled, and how it is abstracted
//!
//! - **One enclave E**, registered at `a` under `a`'s first boot, which seals nothing.
//!   With no sealed slots the ledger lets *any* host adopt E once it is lost: the widest
//!   adoption rule, so the lease wait matters across hosts.
//! - **The sender** (`Outgoing`): PREPARE; on READY it pauses E and asks for BEGIN; once
//!   BEGIN is applied it sends the transfer; at a deadline it gives up (before READY,
//!   nothing was paused) or asks for ABORT and keeps E paused; it resumes E only on an
//!   answer naming this migration's ABORT, or on a refusal whose record says E still runs
//!   here (`resume_or_wipe`); it wipes E when the ledger answers that COMMIT won.
//! - **The receiver** (`Incoming`): it takes a PREPARE only once its boot is recorded,
//!   and a migration at most once per boot; TRANSFER through FINAL are one message that
//!   carries everything; then it asks for COMMIT and never gives up on its own; it runs E
//!   only on an answer naming this migration's COMMIT at this host. Before the transfer
//!   its deadline discards the copy.
//! - Left out, because they decide nothing the steps above cannot: COMMITTED (the sender
//!   learns the outcome from the ledger), the peers' ABORT messages (each side's deadline
//!   can fire at any moment anyway), the receiver's ABORT write (it can only abort what
//!   the sender's ABORT aborts), REFUSE (the sender's deadline), and retries (a resent
//!   write is the same message, which the network already delivers late).
//! - **Boot epochs.** An SM's boot count is its only persistent state (the hardware
//!   component's count, as stateright's actor storage). A crash loses everything else:
//!   copies, machines, lease, its view of the ledger. A restarted SM has the next boot,
//!   announces it (`HostBooted`) and learns the ledger again from answers. The ledger
//!   settles what the earlier boot held (the real rule). **Boot binding** is everything an
//!   SM receives being bound to its current boot: a migration's data to the boot that
//!   answered READY (the attested channel is per boot), store answers to the boot that
//!   asked (the store's proposal sessions are per boot), and a licence to run to a
//!   record naming this boot as owner.
//! - **The store's sessions** (`godwit-store`'s `Replicated::apply_proposal`) apply each
//!   write once and drop writes from a boot older than the newest that wrote: a late
//!   write is applied when it first arrives, however late, but a repeat is not.
//! - **The network** is stateright's unordered, duplicating one, optionally lossy. Any
//!   message may arrive any number of times, late, or (lossy) never; late answers reach
//!   restarted SMs. For the *always* properties loss adds nothing: remove the drops from
//!   a path and every delivery on it is still possible, with the same actor states, and
//!   the properties read only actor states (stateright's documentation says as much).
//!   So the large checks run without loss, and the tests also check a lossy network at
//!   a smaller bound.
//! - **Operator actions.** Migrate E (its owner, whenever E runs there; `migrations` in a
//!   run, counted in stateright's history variable). Remove a host (the store applies
//!   `HostLeft`, at most once; the removed host's writes and reads go unanswered, and its
//!   SM, never told, runs its copy on). Adopt E: when E becomes lost, the operator, who
//!   watches the ledger, asks every host still in the store to adopt it.
//! - **Leases and time.** An SM answers (releases results) only while it holds a lease
//!   and its own view of the ledger names it (host and boot) as E's owner
//!   (`may_release`). Time is abstract: the store counts *eras*, and a new era begins
//!   when "a lease and the drift bound pass" after an adoption applied (`TimePasses`);
//!   every lease from an earlier era has then lapsed. An SM's lease is the newest era in
//!   which it heard from the store: every answer renews it, and each boot's lease read
//!   is answered once per era (with E's record, so the SM's view is at least as new as
//!   its lease). Leases outside adoptions never lapse, which only lets SMs answer more.
//!   An adopted instance runs only once an era has passed since its adoption applied
//!   (the real rule: a lease and the drift bound after it applied); states where it runs
//!   earlier are not physical and the model's boundary cuts them.
//! - **Crashes** are stateright's: at most `crashes` SM crashes in a run, each followed
//!   (or not) by a restart; the store never crashes (a lost majority stops every write,
//!   which is safe and not what is checked here).
//!
//! Not modelled: the handshake and record layer (a channel is a message tag), sealed
//! data and counters, registration and destruction, a host rolling boot counts back,
//! more than one enclave.
//!
//! # Properties
//!
//! - *always* [`AT_MOST_ONE_ANSWERING`]: at most one SM answers for E;
//! - *always* [`RUNNING_IS_OWNER`]: a copy runs only where the ledger records E's owner,
//!   under the owner's recorded boot (except on a removed host, which runs on with its
//!   results withheld once its lease lapses);
//! - *sometimes* [`CAN_COMMIT`], [`ABORT_RESUMES`], [`ADOPTED_RUNS`]: liveness witnesses.
//!
//! [`Variant`] switches one part of the rule off, to show the check finds what it
//! guards against: [`check`] explores every state, [`find_counterexample`] looks for a
//! shortest violation, and [`trace`] prints one.

mod ledger;
mod sm;
mod trace;

use std::collections::BTreeMap;

use stateright::actor::{ActorModel, ActorModelState, LossyNetwork, Network};
use stateright::{Checker, Expectation, Model, Path};

pub use ledger::{LedgerNode, Op, Outcome, RecordView, St, Verdict};
pub use sm::{Adopting, Mig, Msg, Node, NodeState, Recv, Role, Send, Sm, Timer};
pub use trace::{Action, describe_action, describe_state, trace};

/// The SMs' hosts, by actor index.
pub const HOSTS: [&str; 2] = ["a", "b"];
/// The store's actor index.
pub const STORE: usize = 2;

/// Property: at most one SM answers for E (runs it, holds a lease, and its view of the
/// ledger licenses it).
pub const AT_MOST_ONE_ANSWERING: &str = "at most one copy answering";
/// Property: every running copy is at the recorded owner, under the recorded boot.
pub const RUNNING_IS_OWNER: &str = "a running copy is the recorded owner";
/// Witness: a migration commits and E runs at the receiver.
pub const CAN_COMMIT: &str = "a migration can commit";
/// Witness: an aborted migration resumes E at the sender.
pub const ABORT_RESUMES: &str = "an aborted migration resumes the sender";
/// Witness: a lost E is adopted and runs again.
pub const ADOPTED_RUNS: &str = "a lost enclave is adopted and runs";

/// Which commit rule the SMs follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Variant {
    /// godwit's rule.
    Real,
    /// SMs ignore boots: a restarted SM takes messages and store answers meant for its
    /// earlier boot, and a record naming its host under any boot licenses it.
    NoBootBinding,
    /// An adopted instance runs as soon as its adoption applied, without waiting out the
    /// last owner's lease.
    NoLeaseWait,
}

impl Variant {
    /// Every variant, the real rule first.
    pub const ALL: [Variant; 3] = [Variant::Real, Variant::NoBootBinding, Variant::NoLeaseWait];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Real => "real",
            Self::NoBootBinding => "no-boot-binding",
            Self::NoLeaseWait => "no-lease-wait",
        }
    }

    /// Whether SMs bind what they receive to their current boot.
    pub fn binds_boots(self) -> bool {
        self != Self::NoBootBinding
    }

    /// Whether an adopted instance waits out the last owner's lease.
    pub fn waits_lease(self) -> bool {
        self != Self::NoLeaseWait
    }
}

/// How far a check explores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Bounds {
    /// SM crashes in a run (each restart is the next boot).
    pub crashes: u8,
    /// Migrations the operator asks for in a run.
    pub migrations: u8,
    /// Whether the operator may remove a host (once).
    pub removal: bool,
    /// Whether the network loses messages.
    pub lossy: bool,
}

impl Bounds {
    /// The bound `cargo test` checks the real rule at: a crash and a migration (about
    /// 3·10^5 states). Removal and a lossy network are checked at smaller bounds.
    pub const TEST: Bounds = Bounds {
        crashes: 1,
        migrations: 1,
        removal: false,
        lossy: false,
    };
}

/// A model's configuration: the rule and the bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Config {
    /// The rule.
    pub variant: Variant,
    /// The bounds.
    pub bounds: Bounds,
}

/// The model: two SMs and the store. Its history (stateright's auxiliary variable)
/// counts the migrations started, for the bound.
pub type GodwitModel = ActorModel<Node, Config, u8>;
/// A state of the model.
pub type State = ActorModelState<Node, u8>;

/// Builds the model of `variant` within `bounds`.
pub fn model(variant: Variant, bounds: Bounds) -> GodwitModel {
    let config = Config { variant, bounds };
    let network = Network::new_unordered_duplicating([]);
    ActorModel::new(config, 0)
        .actors((0..HOSTS.len()).map(|h| sm::Node::Sm {
            host: h as u8,
            config,
        }))
        .actor(sm::Node::Store { config })
        .init_network(network)
        .lossy_network(if bounds.lossy {
            LossyNetwork::Yes
        } else {
            LossyNetwork::No
        })
        .max_crashes(usize::from(bounds.crashes).min(HOSTS.len()))
        .record_msg_out(|_, started, envelope| {
            matches!(envelope.msg, Msg::Prepare { .. }).then_some(started + 1)
        })
        .within_boundary(within_boundary)
        .property(Expectation::Always, AT_MOST_ONE_ANSWERING, |m, s| {
            let (variant, era) = (m.cfg.variant, store(s).era);
            live_sms(s)
                .filter(|(h, sm)| sm.answers(*h, variant, era))
                .count()
                <= 1
        })
        .property(Expectation::Always, RUNNING_IS_OWNER, |_, s| {
            let store = store(s);
            live_sms(s)
                .filter(|(_, sm)| sm.role.runs())
                .all(|(h, sm)| store.removed == Some(h) || store.licenses(h, sm.boot))
        })
        .property(Expectation::Sometimes, CAN_COMMIT, |_, s| {
            let store = store(s);
            store
                .record()
                .decided
                .is_some_and(|(_, committed)| committed)
                && store.incarnation() == 0
                && live_sms(s).any(|(h, sm)| store.licenses(h, sm.boot) && sm.role.runs())
        })
        .property(Expectation::Sometimes, ABORT_RESUMES, |_, s| {
            let store = store(s);
            let r = store.record();
            r.decided
                .is_some_and(|(m, committed)| !committed && m.from == r.owner)
                && store.incarnation() == 0
                && live_sms(s)
                    .any(|(h, sm)| h == r.owner && store.licenses(h, sm.boot) && sm.role.runs())
        })
        .property(Expectation::Sometimes, ADOPTED_RUNS, |_, s| {
            let store = store(s);
            store.incarnation() > 0
                && live_sms(s).any(|(h, sm)| store.licenses(h, sm.boot) && sm.role.runs())
        })
}

/// The SMs that are up, with their host index.
pub fn live_sms(s: &State) -> impl Iterator<Item = (u8, &Sm)> {
    (0..HOSTS.len()).filter(|&h| !s.crashed[h]).filter_map(|h| {
        let sm::NodeState::Sm(sm) = &*s.actor_states[h] else {
            return None;
        };
        Some((h as u8, sm))
    })
}

/// The store's state.
pub fn store(s: &State) -> &LedgerNode {
    match &*s.actor_states[STORE] {
        sm::NodeState::Store(l) => l,
        sm::NodeState::Sm(_) => unreachable!("actor {STORE} is the store"),
    }
}

/// The states worth exploring: within the crash budget, with the store up, and physical
/// as to time (see the crate documentation on leases).
fn within_boundary(config: &Config, s: &State) -> bool {
    if s.crashed[STORE] {
        return false;
    }
    let restarts: usize = s.actor_storages[..HOSTS.len()]
        .iter()
        .map(|b| usize::from(b.unwrap_or(1).saturating_sub(1)))
        .sum();
    let down = s.crashed[..HOSTS.len()].iter().filter(|c| **c).count();
    if restarts + down > usize::from(config.bounds.crashes) || s.history > config.bounds.migrations
    {
        return false;
    }
    let era = store(s).era;
    live_sms(s).all(|(_, sm)| match sm.role {
        Role::Running {
            adopted_in: Some(adopted),
        } => era > adopted,
        _ => true,
    })
}

/// What a check found.
#[derive(Debug)]
pub struct Report {
    /// States generated, repeats included.
    pub states: usize,
    /// Distinct states.
    pub unique: usize,
    /// The longest path explored.
    pub depth: usize,
    /// Whether the search ended (every reachable state, or the first failure, found).
    pub done: bool,
    /// The path found for each property that has one: a counterexample of an *always*
    /// property, or a witness of a *sometimes* one.
    pub discoveries: BTreeMap<&'static str, Path<State, Action>>,
}

impl Report {
    fn of(checker: impl Checker<GodwitModel>) -> Self {
        Report {
            states: checker.state_count(),
            unique: checker.unique_state_count(),
            depth: checker.max_depth(),
            done: checker.is_done(),
            discoveries: checker.discoveries().into_iter().collect(),
        }
    }
}

/// Checks every reachable state, depth first on `threads` threads (a breadth-first
/// search would hold its whole frontier in memory). `depth` bounds the paths explored,
/// when given.
pub fn check(model: GodwitModel, threads: usize, depth: Option<usize>) -> Report {
    let checker = model.checker().threads(threads);
    let checker = match depth {
        Some(d) => checker.target_max_depth(d),
        None => checker,
    };
    Report::of(checker.spawn_dfs().join())
}

/// Searches for a shortest counterexample: breadth first, to depth 1, 2, 3, … until a
/// property fails or no path reaches the depth. (Stateright's breadth-first search keeps
/// the last violation it meets before it stops, not the first, so the depth bound is
/// what makes the path a shortest one.) The report's counts are those of the last,
/// deepest search.
pub fn find_counterexample(model: &GodwitModel, threads: usize) -> Report {
    let mut depth = 1;
    loop {
        let report = Report::of(
            model
                .clone()
                .checker()
                .threads(threads)
                .target_max_depth(depth)
                .finish_when(stateright::HasDiscoveries::AnyFailures)
                .spawn_bfs()
                .join(),
        );
        let failed = model.properties().iter().any(|p| {
            p.expectation.discovery_is_failure() && report.discoveries.contains_key(p.name)
        });
        if failed || report.depth < depth {
            return report;
        }
        depth += 1;
    }
}
