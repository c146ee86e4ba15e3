//! Readable traces of the checker's paths.

use std::fmt::Write as _;

use stateright::Path;
use stateright::actor::{ActorModelAction, Id};

use crate::ledger::Op;
use crate::sm::{Msg, NodeState, Role, Timer};
use crate::{HOSTS, State, Variant, live_sms, store};

/// An action of the model.
pub type Action = ActorModelAction<Msg, Timer, ()>;

fn name(id: Id) -> &'static str {
    HOSTS.get(usize::from(id)).copied().unwrap_or("store")
}

fn describe_op(op: &Op) -> String {
    match op {
        Op::Begin { mig, epoch } => format!("BEGIN {mig:?} at epoch {epoch}"),
        Op::Commit { mig, epoch } => format!("COMMIT {mig:?} at epoch {epoch}"),
        Op::Abort { mig, epoch } => format!("ABORT {mig:?} at epoch {epoch}"),
        Op::Booted => "HostBooted".to_string(),
        Op::Adopt => "ADOPT".to_string(),
    }
}

fn describe_msg(msg: &Msg) -> String {
    match msg {
        Msg::Prepare { mig, epoch } => format!("PREPARE {mig:?} at epoch {epoch}"),
        Msg::Ready { mig, boot } => format!("READY {mig:?} from boot {boot}"),
        Msg::Transfer { mig, to_boot } => format!("TRANSFER..FINAL {mig:?} to boot {to_boot}"),
        Msg::Write { boot, op } => format!("write {} (boot {boot})", describe_op(op)),
        Msg::Read { boot } => format!("lease read (boot {boot})"),
        Msg::AdoptAsked { epoch } => {
            format!("the operator asks to adopt E (lost at epoch {epoch})")
        }
        Msg::Answer {
            boot, op, outcome, ..
        } => {
            format!("answer to boot {boot}'s {}: {outcome:?}", describe_op(op))
        }
        Msg::Lease { boot, era, record } => {
            format!("lease for boot {boot} in era {era}: {record:?}")
        }
    }
}

/// One step, in words.
pub fn describe_action(before: &State, action: &Action) -> String {
    match action {
        ActorModelAction::Deliver { src, dst, msg } => {
            format!("{} → {}: {}", name(*src), name(*dst), describe_msg(msg))
        }
        ActorModelAction::Drop(env) => format!(
            "the network loses {} → {}: {}",
            name(env.src),
            name(env.dst),
            describe_msg(&env.msg)
        ),
        ActorModelAction::Timeout(id, timer) => {
            let who = name(*id);
            match timer {
                Timer::Migrate => format!("{who}: the operator asks to migrate E"),
                Timer::Deadline => format!("{who}: the deadline passes"),
                Timer::AdoptionWaited => {
                    format!("{who}: a lease and the drift bound have passed since the adoption")
                }
                Timer::TimePasses => format!(
                    "a lease and the drift bound pass: leases of era {} lapse",
                    store(before).era
                ),
                Timer::Remove(h) => format!(
                    "the operator removes {} from the store (HostLeft)",
                    HOSTS[usize::from(*h)]
                ),
            }
        }
        ActorModelAction::Crash(id) => format!("{} crashes: its memory is gone", name(*id)),
        ActorModelAction::Recover(id) => {
            let boot = before.actor_storages[usize::from(*id)].unwrap_or(0) + 1;
            format!("{} restarts as boot {boot}", name(*id))
        }
        ActorModelAction::SelectRandom { .. } => "a random choice".to_string(),
    }
}

/// Every SM and the store, in words.
pub fn describe_state(variant: Variant, s: &State) -> String {
    let mut out = String::new();
    for (h, name) in HOSTS.iter().enumerate() {
        if s.crashed[h] {
            let _ = writeln!(out, "  {name}: down");
            continue;
        }
        let NodeState::Sm(sm) = &*s.actor_states[h] else {
            continue;
        };
        let role = match sm.role {
            Role::Idle => "no copy".to_string(),
            Role::Running { .. } => "E runs".to_string(),
            other => format!("{other:?}"),
        };
        let era = store(s).era;
        let lease = if sm.lease == Some(era) {
            "lease held"
        } else {
            "no lease"
        };
        let answers = if sm.answers(h as u8, variant, era) {
            ", ANSWERS"
        } else {
            ""
        };
        let view = sm.view.map_or("nothing".to_string(), |r| format!("{r:?}"));
        let _ = writeln!(
            out,
            "  {name} (boot {}{}): {role}, {lease}{answers}; its ledger: {view}",
            sm.boot,
            if sm.recorded { ", recorded" } else { "" },
        );
    }
    let l = store(s);
    let removed = l.removed.map_or(String::new(), |h| {
        format!(", {} removed", HOSTS[usize::from(h)])
    });
    let _ = writeln!(out, "  store (era {}{removed}): E {:?}", l.era, l.record());
    out
}

/// A path as numbered steps, then the state it ends in.
pub fn trace(variant: Variant, path: &Path<State, Action>) -> String {
    let mut out = String::new();
    let steps = path.clone().into_vec();
    let mut n = 0;
    for (state, action) in &steps {
        if let Some(action) = action {
            n += 1;
            let _ = writeln!(out, "{n:3}. {}", describe_action(state, action));
        }
    }
    let last = path.last_state();
    let era = store(last).era;
    let answering = live_sms(last)
        .filter(|(h, sm)| sm.answers(*h, variant, era))
        .count();
    let _ = writeln!(out, "ends with {answering} SM(s) answering:");
    out.push_str(&describe_state(variant, last));
    out
}
