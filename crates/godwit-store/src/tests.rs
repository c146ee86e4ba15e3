//! Members on simulated hardware, a network and disks the test controls, a virtual clock.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use godwit_hw::{DeviceIdentity, Hardware, Manufacturer, SimClock, SimHardware};
use godwit_proto::{LedgerOp, LedgerOutcome, LedgerRefusal};
use godwit_wire::{HostId, Measurement};
use raft::eraftpb::{Entry, Message, MessageType};

use crate::member::{Member, MemberConfig, MembershipChange, Opened, Output};
use crate::record::StoreWrite;
use crate::state::Proposal;
use crate::wire;

pub(crate) fn h(s: &str) -> HostId {
    HostId::new(s).unwrap()
}

struct Node {
    identity: DeviceIdentity,
    hw: Arc<SimHardware>,
    clock: SimClock,
    member: Option<Member>,
    /// Durable records, oldest first (from the last base on).
    disk: Vec<Vec<u8>>,
    /// Written, not yet durable.
    pending: VecDeque<StoreWrite>,
    boots: u64,
}

pub(crate) struct Cluster {
    nodes: BTreeMap<HostId, Node>,
    founders: Vec<HostId>,
    net: VecDeque<(HostId, HostId, Vec<u8>)>,
    /// Host pairs that cannot reach each other (either way).
    pub(crate) cut: BTreeSet<(HostId, HostId)>,
    pub(crate) outcomes: Vec<(HostId, u64, Option<LedgerOutcome>)>,
    pub(crate) changes: Vec<(HostId, MembershipChange)>,
    pub(crate) refusals: Vec<(HostId, String)>,
    /// Frames from a host to deliver as if from another (a hostile relay), by sender.
    pub(crate) now: Duration,
}

fn config(founders: &[HostId]) -> MemberConfig {
    MemberConfig {
        founders: founders.to_vec(),
        ..MemberConfig::default()
    }
}

impl Cluster {
    /// `names` founders.
    pub(crate) fn new(names: &[&str]) -> Self {
        let founders: Vec<HostId> = names.iter().map(|n| h(n)).collect();
        let mut c = Self {
            nodes: BTreeMap::new(),
            founders: founders.clone(),
            net: VecDeque::new(),
            cut: BTreeSet::new(),
            outcomes: Vec::new(),
            changes: Vec::new(),
            refusals: Vec::new(),
            now: Duration::ZERO,
        };
        for name in names {
            c.provision(name);
            c.boot(name, &founders);
        }
        c
    }

    fn provision(&mut self, name: &str) {
        let m = Manufacturer::from_seed([9; 32]);
        let secret = [name.as_bytes()[name.len() - 1]; 32];
        let identity = m.provision_from_secret(h(name), secret.into());
        let seed = u64::from(name.as_bytes()[name.len() - 1]);
        let (hw, clock) = SimHardware::booted(identity.clone(), Measurement([1; 32]), seed, 1);
        self.nodes.insert(
            h(name),
            Node {
                identity,
                hw: Arc::new(hw),
                clock,
                member: None,
                disk: Vec::new(),
                pending: VecDeque::new(),
                boots: 1,
            },
        );
    }

    /// Starts (or restarts) `name`'s member from its disk.
    fn boot(&mut self, name: &str, founders: &[HostId]) -> Opened {
        let n = self.nodes.get_mut(&h(name)).unwrap();
        let (member, opened) = Member::open(
            Arc::clone(&n.hw) as Arc<dyn Hardware>,
            config(founders),
            &n.disk,
        );
        n.member = Some(member);
        opened
    }

    /// A new host that joins (not a founder).
    pub(crate) fn join(&mut self, name: &str) {
        self.provision(name);
        self.boot(name, &[]);
    }

    /// Power-cycles `name`: memory and unpersisted records lost; the component's counter
    /// kept; a new boot.
    pub(crate) fn restart(&mut self, name: &str) -> Opened {
        let founders = self.founders.clone();
        let n = self.nodes.get_mut(&h(name)).unwrap();
        n.member = None;
        n.pending.clear();
        n.boots += 1;
        let counter = n.hw.nv_counter().clone();
        let seed = u64::from(name.as_bytes()[name.len() - 1]) + 1000 * n.boots;
        let (hw, clock) =
            SimHardware::booted(n.identity.clone(), Measurement([1; 32]), seed, n.boots);
        n.hw = Arc::new(hw.with_nv_counter(counter));
        n.clock = clock;
        n.clock.advance(self.now);
        self.boot(name, &founders)
    }

    /// The host hands `name`'s member an older copy of its records at its next start.
    pub(crate) fn roll_back_disk(&mut self, name: &str, keep: usize) {
        let n = self.nodes.get_mut(&h(name)).unwrap();
        n.disk.truncate(keep);
    }

    pub(crate) fn disk_len(&self, name: &str) -> usize {
        self.nodes[&h(name)].disk.len()
    }

    pub(crate) fn member(&mut self, name: &str) -> &mut Member {
        self.nodes
            .get_mut(&h(name))
            .unwrap()
            .member
            .as_mut()
            .unwrap()
    }

    pub(crate) fn member_ref(&self, name: &str) -> &Member {
        self.nodes[&h(name)].member.as_ref().unwrap()
    }

    pub(crate) fn hw(&self, name: &str) -> Arc<SimHardware> {
        Arc::clone(&self.nodes[&h(name)].hw)
    }

    /// Delivers `bytes` to `to` as coming over the channel from `from`.
    pub(crate) fn inject(&mut self, from: &str, to: &str, bytes: &[u8]) {
        let r = self.member(to).step(&h(from), bytes);
        if let Err(e) = r {
            self.refusals.push((h(to), e.to_string()));
        }
    }

    fn collect(&mut self) -> bool {
        let mut moved = false;
        let names: Vec<HostId> = self.nodes.keys().cloned().collect();
        for name in names {
            let Some(m) = self.nodes.get_mut(&name).unwrap().member.as_mut() else {
                continue;
            };
            let mut outs = Vec::new();
            while let Some(o) = m.poll_output() {
                outs.push(o);
            }
            for o in outs {
                moved = true;
                match o {
                    Output::Send { to, bytes } => self.net.push_back((name.clone(), to, bytes)),
                    Output::Persist(w) => self.nodes.get_mut(&name).unwrap().pending.push_back(w),
                    Output::Outcome { seq, outcome } => {
                        self.outcomes.push((name.clone(), seq, outcome));
                    }
                    Output::Membership(c) => self.changes.push((name.clone(), c)),
                    Output::LeaseRenewed | Output::Applied => {}
                }
            }
        }
        moved
    }

    fn persist(&mut self) -> bool {
        let mut moved = false;
        for n in self.nodes.values_mut() {
            let Some(m) = n.member.as_mut() else { continue };
            let mut last = None;
            while let Some(w) = n.pending.pop_front() {
                if w.base {
                    n.disk.clear();
                }
                n.disk.push(w.bytes);
                last = Some(w.number);
            }
            if let Some(l) = last {
                m.persisted(l).unwrap();
                moved = true;
            }
        }
        moved
    }

    fn deliver(&mut self) -> bool {
        let mut moved = false;
        while let Some((from, to, bytes)) = self.net.pop_front() {
            let cut = self.cut.contains(&(from.clone(), to.clone()))
                || self.cut.contains(&(to.clone(), from.clone()));
            let Some(m) = self.nodes.get_mut(&to).and_then(|n| n.member.as_mut()) else {
                continue;
            };
            if cut {
                continue;
            }
            moved = true;
            if let Err(e) = m.step(&from, &bytes) {
                self.refusals.push((to.clone(), e.to_string()));
            }
        }
        moved
    }

    /// Moves messages and records until nothing moves, without advancing time.
    pub(crate) fn settle(&mut self) {
        for _ in 0..10_000 {
            let a = self.collect();
            let b = self.persist();
            let c = self.deliver();
            if !(a || b || c) {
                return;
            }
        }
        panic!("the members never settle");
    }

    /// Advances virtual time by `d` in 10 ms steps, settling at each.
    pub(crate) fn run(&mut self, d: Duration) {
        let step = Duration::from_millis(10);
        let mut left = d;
        while !left.is_zero() {
            let dt = step.min(left);
            left -= dt;
            self.now += dt;
            for n in self.nodes.values_mut() {
                n.clock.advance(dt);
                if let Some(m) = n.member.as_mut() {
                    m.handle_timeout();
                }
            }
            self.settle();
        }
    }

    /// Runs until `cond` holds (at most `limit` of virtual time).
    pub(crate) fn run_until(
        &mut self,
        limit: Duration,
        mut cond: impl FnMut(&Self) -> bool,
    ) -> bool {
        let mut spent = Duration::ZERO;
        while !cond(self) {
            if spent >= limit {
                return false;
            }
            self.run(Duration::from_millis(10));
            spent += Duration::from_millis(10);
        }
        true
    }

    pub(crate) fn leader(&self) -> Option<HostId> {
        let leaders: BTreeSet<HostId> = self
            .nodes
            .values()
            .filter_map(|n| n.member.as_ref()?.leader().cloned())
            .collect();
        (leaders.len() == 1).then(|| leaders.into_iter().next().unwrap())
    }

    pub(crate) fn elect(&mut self) -> HostId {
        assert!(
            self.run_until(Duration::from_secs(30), |c| c.leader().is_some()),
            "no leader within 30 s"
        );
        self.leader().unwrap()
    }

    /// Proposes `op` at `name` and runs until its outcome is known.
    pub(crate) fn write(&mut self, name: &str, op: LedgerOp) -> Option<LedgerOutcome> {
        let seq = self.member(name).propose(op).unwrap();
        let host = h(name);
        assert!(self.run_until(Duration::from_secs(30), |c| {
            c.outcomes.iter().any(|(n, s, _)| *n == host && *s == seq)
        }));
        let i = self
            .outcomes
            .iter()
            .position(|(n, s, _)| *n == host && *s == seq)
            .unwrap();
        self.outcomes.remove(i).2
    }
}

/// A write `name` may make: its boot's announcement.
pub(crate) fn booted(c: &Cluster, name: &str) -> LedgerOp {
    LedgerOp::HostBooted {
        host: h(name),
        boot: c.hw(name).boot_epoch().to_bytes(),
    }
}

fn applied(o: &Option<LedgerOutcome>) -> bool {
    matches!(o, Some(LedgerOutcome::Applied(_)))
}

#[test]
fn founders_elect_a_leader_and_each_learns_its_outcomes_from_its_own_log() {
    let mut c = Cluster::new(&["a", "b", "c"]);
    c.elect();
    for n in ["a", "b", "c"] {
        let op = booted(&c, n);
        assert!(applied(&c.write(n, op)), "{n}'s write");
    }
    c.run(Duration::from_millis(500));
    let ledgers: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|n| c.member_ref(n).state().clone())
        .collect();
    assert!(ledgers.windows(2).all(|w| w[0] == w[1]));
    assert!(ledgers[0].ledger.boot_of(&h("c")).is_some());
    assert!(ledgers[0].cluster.is_some());
    for n in ["a", "b", "c"] {
        assert!(c.member_ref(n).lease_valid(c.hw(n).now()), "{n}'s lease");
    }
}

#[test]
fn a_single_member_store_works_alone() {
    let mut c = Cluster::new(&["a"]);
    c.elect();
    let op = booted(&c, "a");
    assert!(applied(&c.write("a", op)));
    c.run(Duration::from_millis(600));
    assert!(c.member_ref("a").lease_valid(c.hw("a").now()));
}

#[test]
fn a_forwarded_write_on_behalf_of_another_host_is_refused_by_the_leader() {
    let mut c = Cluster::new(&["a", "b", "c"]);
    let leader = c.elect();
    let (from, other) = {
        let rest: Vec<&str> = ["a", "b", "c"]
            .into_iter()
            .filter(|n| h(n) != leader)
            .collect();
        (rest[0], rest[1])
    };
    // `from`'s channel carries a proposal in `other`'s name.
    let forged = Proposal {
        proposer: h(other),
        boot: c.hw(other).boot_epoch().to_bytes(),
        seq: 99,
        low: 0,
        op: booted(&c, other),
    };
    let e = Entry {
        data: postcard::to_stdvec(&forged).unwrap().into(),
        ..Default::default()
    };
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgPropose);
    m.from = wire::node_id(&h(from));
    m.to = wire::node_id(&leader);
    m.set_entries(vec![e].into());
    let before = c.member_ref(leader.as_str()).applied();
    c.inject(from, leader.as_str(), &wire::encode(None, &m));
    c.run(Duration::from_millis(300));
    assert!(
        c.refusals
            .iter()
            .any(|(_, why)| why.contains("on behalf of")),
        "{:?}",
        c.refusals
    );
    assert_eq!(c.member_ref(leader.as_str()).applied(), before);
    // An entry that names another proposer, were it in the log, is refused at apply.
    let mut s = crate::state::Replicated::default();
    let mut p = forged.clone();
    p.proposer = h(from);
    assert!(matches!(
        s.apply_proposal(&p),
        crate::state::Applied::Outcome(LedgerOutcome::Refused {
            reason: LedgerRefusal::NotParty { .. },
            ..
        })
    ));
}

#[test]
fn a_message_under_another_members_id_or_for_another_member_is_refused() {
    let mut c = Cluster::new(&["a", "b", "c"]);
    c.elect();
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgHeartbeat);
    m.term = 1000;
    // b's channel carries a heartbeat in c's name.
    m.from = wire::node_id(&h("c"));
    m.to = wire::node_id(&h("a"));
    c.inject("b", "a", &wire::encode(None, &m));
    // A reply meant for b, delivered to a.
    m.from = wire::node_id(&h("c"));
    m.to = wire::node_id(&h("b"));
    c.inject("c", "a", &wire::encode(None, &m));
    assert_eq!(c.refusals.len(), 2, "{:?}", c.refusals);
    assert!(
        c.member_ref("a").term() < 1000,
        "the forged term was not taken"
    );
}

#[test]
fn a_restart_restores_the_log_from_its_records() {
    let mut c = Cluster::new(&["a", "b", "c"]);
    c.elect();
    for _ in 0..3 {
        let op = booted(&c, "a");
        assert!(applied(&c.write("a", op)));
    }
    let before = c.member_ref("b").state().clone();
    assert_eq!(c.restart("b"), Opened::Restored);
    c.run(Duration::from_secs(2));
    assert_eq!(c.member_ref("b").state().ledger, before.ledger);
    assert!(!c.member_ref("b").rejoining());
}

#[test]
fn an_older_copy_of_the_records_is_refused_and_the_member_rejoins_without_voting() {
    let mut c = Cluster::new(&["a", "b", "c"]);
    c.elect();
    let op = booted(&c, "a");
    assert!(applied(&c.write("a", op)));
    let keep = c.disk_len("b");
    for _ in 0..3 {
        let op = booted(&c, "a");
        assert!(applied(&c.write("a", op)));
    }
    c.roll_back_disk("b", keep);
    assert!(matches!(c.restart("b"), Opened::Refused(_)));
    assert!(c.member_ref("b").rejoining());
    // It catches up from the leader, then votes again.
    assert!(c.run_until(Duration::from_secs(30), |c| !c.member_ref("b").rejoining()));
    let a = c.member_ref("a").state().ledger.clone();
    c.run(Duration::from_millis(500));
    assert_eq!(c.member_ref("b").state().ledger, a);
}

#[test]
fn a_removed_member_loses_its_lease_and_its_enclaves_are_recorded_lost() {
    let mut c = Cluster::new(&["a", "b", "c"]);
    let leader = c.elect();
    let gone = ["a", "b", "c"]
        .into_iter()
        .find(|n| h(n) != leader)
        .unwrap();
    let stays = ["a", "b", "c"]
        .into_iter()
        .find(|n| *n != gone && h(n) != leader)
        .unwrap();
    c.run(Duration::from_secs(1));
    assert!(c.member_ref(gone).lease_valid(c.hw(gone).now()));
    c.member(stays).remove_member(&h(gone)).unwrap();
    assert!(c.run_until(Duration::from_secs(10), |c| {
        c.changes
            .iter()
            .any(|(n, ch)| n.as_str() == stays && *ch == MembershipChange::Left(h(gone)))
    }));
    // Within a lease (and a bit), the removed member holds none.
    c.run(Duration::from_millis(2500));
    assert!(!c.member_ref(gone).lease_valid(c.hw(gone).now()));
    assert!(c.member_ref(stays).lease_valid(c.hw(stays).now()));
    // Its messages are not acted on.
    let op = booted(&c, gone);
    let seq = c.member(gone).propose(op).unwrap();
    c.run(Duration::from_secs(3));
    assert!(
        c.outcomes
            .iter()
            .any(|(n, s, o)| n.as_str() == gone && *s == seq && o.is_none()),
        "a removed member's write is never applied"
    );
}

#[test]
fn a_new_member_joins_as_a_learner_and_becomes_a_voter_once_caught_up() {
    let mut c = Cluster::new(&["a", "b", "c"]);
    let leader = c.elect();
    for _ in 0..5 {
        let op = booted(&c, leader.as_str());
        c.write(leader.as_str(), op);
    }
    c.join("d");
    c.member(leader.as_str())
        .add_member(&h("d"), "127.0.0.1:4")
        .unwrap();
    assert!(c.run_until(Duration::from_secs(30), |c| {
        c.member_ref("d").membership().0.contains(&h("d"))
    }));
    assert!(
        c.changes
            .iter()
            .any(|(_, ch)| *ch == MembershipChange::Learner(h("d")))
    );
    assert_eq!(
        c.member_ref("d").state().ledger,
        c.member_ref(leader.as_str()).state().ledger
    );
    // Adding it again changes nothing: one host, one member.
    let voters = c.member_ref(leader.as_str()).membership().0.len();
    assert!(c.member(leader.as_str()).add_member(&h("d"), "x").is_err());
    c.run(Duration::from_secs(1));
    assert_eq!(c.member_ref(leader.as_str()).membership().0.len(), voters);
}

#[test]
fn snapshots_carry_the_state_and_a_crafted_one_is_refused() {
    let mut c = Cluster::new(&["a", "b", "c"]);
    let leader = c.elect();
    for _ in 0..(crate::SNAPSHOT_EVERY_ENTRIES + 20) {
        let op = booted(&c, leader.as_str());
        let _ = c.member(leader.as_str()).propose(op);
        c.settle();
    }
    c.run(Duration::from_secs(2));
    // A member added now starts from the snapshot.
    c.join("d");
    c.member(leader.as_str())
        .add_member(&h("d"), "127.0.0.1:4")
        .unwrap();
    assert!(c.run_until(Duration::from_secs(30), |c| {
        c.member_ref("d").state().ledger == c.member_ref("a").state().ledger
            && c.member_ref("d").membership().0.contains(&h("d"))
    }));
    // A snapshot whose state does not decode, or at an offset no one could hold: refused
    // without a panic.
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgSnapshot);
    m.from = wire::node_id(&leader);
    m.to = wire::node_id(&h("d"));
    m.term = c.member_ref("d").term();
    let mut s = raft::eraftpb::Snapshot {
        data: vec![0xff; 64].into(),
        ..Default::default()
    };
    s.mut_metadata().index = 1 << 40;
    s.mut_metadata().term = 1;
    m.set_snapshot(s);
    c.inject(leader.as_str(), "d", &wire::encode(None, &m));
    assert!(c.refusals.iter().any(|(_, why)| why.contains("snapshot")));
}

#[test]
fn a_member_that_lost_its_records_votes_for_nobody_until_it_caught_up() {
    let mut c = Cluster::new(&["a", "b", "c"]);
    c.elect();
    let op = booted(&c, "a");
    assert!(applied(&c.write("a", op)));
    let term = c.member_ref("b").term();
    // b's records are lost, and b is cut off: it cannot catch up.
    c.roll_back_disk("b", 0);
    c.cut.insert((h("a"), h("b")));
    c.cut.insert((h("c"), h("b")));
    assert!(matches!(c.restart("b"), Opened::Refused(_)));
    assert!(
        c.member_ref("b").term() >= term,
        "it keeps the term it may have voted in"
    );
    let mut vote = Message::default();
    vote.set_msg_type(MessageType::MsgRequestVote);
    vote.from = wire::node_id(&h("c"));
    vote.to = wire::node_id(&h("b"));
    vote.term = term + 5;
    c.inject("c", "b", &wire::encode(None, &vote));
    c.collect();
    assert!(
        !c.net.iter().any(|(from, _, _)| from.as_str() == "b"),
        "a rejoining member answered a vote request"
    );
    assert!(c.member_ref("b").rejoining());
}
