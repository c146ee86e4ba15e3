//! Attacks a hostile host makes on its SM's store member through the member's own API
//! (the records it hands back, what it reports durable, when it wakes the member), found
//! by a review of the store's move into the SM. Each failed before its fix.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use godwit_hw::{Hardware, Manufacturer, NvCounter, SimClock, SimHardware};
use godwit_proto::{LedgerOp, LedgerOutcome, RecordState};
use godwit_store::{Member, MemberConfig, OpenError, Opened, Output};
use godwit_wire::{EnclaveId, HostId, Measurement};

fn h(s: &str) -> HostId {
    HostId::new(s).unwrap()
}

struct Run {
    hw: Arc<SimHardware>,
    clock: SimClock,
    m: Member,
}

/// Boots host a's component (its `count`th boot, counter `nv`) on the records `disk`.
fn boot(count: u64, nv: &NvCounter, disk: &[Vec<u8>]) -> (Run, Opened) {
    let man = Manufacturer::from_seed([9; 32]);
    let id = man.provision_from_secret(h("a"), [7u8; 32].into());
    let (hw, clock) = SimHardware::booted(id, Measurement([1; 32]), 100 + count, count);
    let hw = Arc::new(hw.with_nv_counter(nv.clone()));
    let cfg = MemberConfig {
        founders: vec![h("a")],
        ..MemberConfig::default()
    };
    let (m, opened) = Member::open(Arc::clone(&hw) as Arc<dyn Hardware>, cfg, disk);
    (Run { hw, clock, m }, opened)
}

type Outcomes = Vec<(u64, Option<LedgerOutcome>)>;

/// Takes the member's outputs: records go to `disk` (a base replaces what was there),
/// reported durable only if `report`.
fn drain(r: &mut Run, disk: &mut Vec<Vec<u8>>, report: bool, outcomes: &mut Outcomes) {
    while let Some(o) = r.m.poll_output() {
        match o {
            Output::Persist(w) => {
                if w.base {
                    disk.clear();
                }
                disk.push(w.bytes.clone());
                if report {
                    r.m.persisted(w.number).unwrap();
                }
            }
            Output::Outcome { seq, outcome } => outcomes.push((seq, outcome)),
            _ => {}
        }
    }
}

fn tick(r: &mut Run, disk: &mut Vec<Vec<u8>>, report: bool, outcomes: &mut Outcomes, ms: u64) {
    for _ in 0..ms / 10 {
        r.clock.advance(Duration::from_millis(10));
        r.m.handle_timeout();
        drain(r, disk, report, outcomes);
    }
}

/// The host keeps records the SM sealed but reports only a prefix durable, restarts the
/// SM on that prefix, lets the new run act, then restarts it on the first run's longer
/// branch. Record numbers of a new run start past anything an earlier run may have sealed,
/// so the older branch is behind the counter.
#[test]
fn an_older_branch_of_the_records_is_refused_after_a_later_run_acted() {
    let nv = NvCounter::volatile();
    let mut out = Vec::new();
    let mut disk = Vec::new();
    let (mut r1, o) = boot(1, &nv, &disk);
    assert_eq!(o, Opened::Fresh);
    drain(&mut r1, &mut disk, true, &mut out);
    tick(&mut r1, &mut disk, true, &mut out, 3000);
    let reported = disk.clone();
    // From here the host stores every record and reports none.
    let mut branch = disk.clone();
    for _ in 0..20 {
        let op = LedgerOp::HostBooted {
            host: h("a"),
            boot: r1.hw.boot_epoch().to_bytes(),
        };
        r1.m.propose(op).unwrap();
        drain(&mut r1, &mut branch, false, &mut out);
    }
    drop(r1);
    // Run 2 on the reported prefix: it acts (a registration applied and answered).
    let mut disk2 = reported.clone();
    let (mut r2, o) = boot(2, &nv, &disk2);
    assert_eq!(o, Opened::Restored);
    out.clear();
    drain(&mut r2, &mut disk2, true, &mut out);
    tick(&mut r2, &mut disk2, true, &mut out, 3000);
    let x = EnclaveId([0x42; 16]);
    let seq =
        r2.m.propose(LedgerOp::Register {
            id: x,
            app: Measurement([5; 32]),
            app_name: "app".into(),
            owner: h("a"),
            boot: r2.hw.boot_epoch().to_bytes(),
            max_instances_cluster: None,
            departures: 0,
        })
        .unwrap();
    drain(&mut r2, &mut disk2, true, &mut out);
    tick(&mut r2, &mut disk2, true, &mut out, 200);
    assert!(
        out.iter()
            .any(|(s, o)| *s == seq && matches!(o, Some(LedgerOutcome::Applied(_)))),
        "run 2 applied its registration: {out:?}"
    );
    drop(r2);
    // Run 3 on run 1's longer branch: refused, the registration cannot be undone.
    let (r3, o) = boot(3, &nv, &branch);
    assert!(
        matches!(o, Opened::Refused(OpenError::RolledBack { .. })),
        "the older branch was accepted: {o:?}"
    );
    assert!(r3.m.rejoining());
    // And run 2's own records still open (the registration is applied again once the
    // member leads again and learns its commit).
    let (mut r4, o) = boot(4, &nv, &disk2);
    assert_eq!(o, Opened::Restored);
    tick(&mut r4, &mut disk2, true, &mut out, 3000);
    assert!(r4.m.state().ledger.get(&x).is_some());
}

/// The same, with both later runs started on the same records: two runs opened on the same
/// counter must not share record numbers past their first.
#[test]
fn a_branch_of_a_run_started_on_the_same_records_is_refused() {
    let nv = NvCounter::volatile();
    let mut out = Vec::new();
    let mut disk = Vec::new();
    let (mut r1, _) = boot(1, &nv, &disk);
    drain(&mut r1, &mut disk, true, &mut out);
    tick(&mut r1, &mut disk, true, &mut out, 3000);
    drop(r1);
    // Run 2 on the records: the host keeps what it seals and reports nothing.
    let mut branch = disk.clone();
    let (mut r2, _) = boot(2, &nv, &disk);
    drain(&mut r2, &mut branch, false, &mut out);
    tick(&mut r2, &mut branch, false, &mut out, 3000);
    for _ in 0..20 {
        let op = LedgerOp::HostBooted {
            host: h("a"),
            boot: r2.hw.boot_epoch().to_bytes(),
        };
        let _ = r2.m.propose(op);
        drain(&mut r2, &mut branch, false, &mut out);
    }
    drop(r2);
    // Run 3 on the same records: it acts.
    let mut disk3 = disk.clone();
    let (mut r3, o) = boot(3, &nv, &disk3);
    assert_eq!(o, Opened::Restored);
    drain(&mut r3, &mut disk3, true, &mut out);
    tick(&mut r3, &mut disk3, true, &mut out, 3000);
    let x = EnclaveId([0x43; 16]);
    out.clear();
    let seq =
        r3.m.propose(LedgerOp::Register {
            id: x,
            app: Measurement([5; 32]),
            app_name: "app".into(),
            owner: h("a"),
            boot: r3.hw.boot_epoch().to_bytes(),
            max_instances_cluster: None,
            departures: 0,
        })
        .unwrap();
    drain(&mut r3, &mut disk3, true, &mut out);
    tick(&mut r3, &mut disk3, true, &mut out, 200);
    assert!(
        out.iter()
            .any(|(s, o)| *s == seq && matches!(o, Some(LedgerOutcome::Applied(_)))),
        "run 3 applied its registration: {out:?}"
    );
    drop(r3);
    // Run 2's branch is refused.
    let (_, o) = boot(4, &nv, &branch);
    assert!(
        matches!(o, Opened::Refused(OpenError::RolledBack { .. })),
        "the other run's branch was accepted: {o:?}"
    );
}

/// Too long an address never enters the replicated state (it would make every member's
/// snapshot too large to decode).
#[test]
fn a_member_address_is_bounded() {
    let nv = NvCounter::volatile();
    let mut out = Vec::new();
    let mut disk = Vec::new();
    let (mut r, _) = boot(1, &nv, &disk);
    drain(&mut r, &mut disk, true, &mut out);
    tick(&mut r, &mut disk, true, &mut out, 3000);
    assert_eq!(r.m.leader(), Some(&h("a")));
    assert!(r.m.add_member(&h("x"), &"x".repeat(256)).is_err());
    assert!(r.m.add_member(&h("x"), "127.0.0.1:7109").is_ok());
}

/// Several members on a lossless network, with a host that may report records late.
struct Node {
    hw: Arc<SimHardware>,
    clock: SimClock,
    m: Member,
    late: Vec<u64>,
    report_late: bool,
    applied_outputs: usize,
}

struct Cluster {
    n: BTreeMap<String, Node>,
    net: VecDeque<(String, String, Vec<u8>)>,
    cut: BTreeSet<String>,
    /// Messages over this many bytes to this member are lost (entries and snapshots;
    /// heartbeats and read answers get through).
    starve: Option<(String, usize)>,
}

impl Cluster {
    fn new(names: &[&str]) -> Self {
        let founders: Vec<HostId> = names.iter().map(|s| h(s)).collect();
        let man = Manufacturer::from_seed([9; 32]);
        let mut n = BTreeMap::new();
        for (i, name) in names.iter().enumerate() {
            let id = man.provision_from_secret(h(name), [i as u8 + 1; 32].into());
            let (hw, clock) = SimHardware::booted(id, Measurement([1; 32]), i as u64 + 1, 1);
            let hw = Arc::new(hw);
            let cfg = MemberConfig {
                founders: founders.clone(),
                ..MemberConfig::default()
            };
            let (m, _) = Member::open(Arc::clone(&hw) as Arc<dyn Hardware>, cfg, &[]);
            n.insert(
                name.to_string(),
                Node {
                    hw,
                    clock,
                    m,
                    late: Vec::new(),
                    report_late: false,
                    applied_outputs: 0,
                },
            );
        }
        Cluster {
            n,
            net: VecDeque::new(),
            cut: BTreeSet::new(),
            starve: None,
        }
    }

    fn settle(&mut self) {
        for _ in 0..100_000 {
            let mut moved = false;
            let names: Vec<String> = self.n.keys().cloned().collect();
            for name in &names {
                let node = self.n.get_mut(name).unwrap();
                while let Some(o) = node.m.poll_output() {
                    moved = true;
                    match o {
                        Output::Send { to, bytes } => {
                            self.net.push_back((name.clone(), to.to_string(), bytes))
                        }
                        Output::Persist(w) if node.report_late => node.late.push(w.number),
                        Output::Persist(w) => node.m.persisted(w.number).unwrap(),
                        Output::Applied => node.applied_outputs += 1,
                        _ => {}
                    }
                }
            }
            while let Some((from, to, bytes)) = self.net.pop_front() {
                if self.cut.contains(&from) || self.cut.contains(&to) {
                    continue;
                }
                if self
                    .starve
                    .as_ref()
                    .is_some_and(|(s, max)| *s == to && bytes.len() > *max)
                {
                    continue;
                }
                if let Some(node) = self.n.get_mut(&to) {
                    moved = true;
                    let _ = node.m.step(&h(&from), &bytes);
                }
            }
            if !moved {
                return;
            }
        }
        panic!("never settles");
    }

    fn run(&mut self, ms: u64) {
        for _ in 0..ms / 10 {
            for node in self.n.values_mut() {
                if let Some(&n) = node.late.iter().max() {
                    node.late.clear();
                    node.m.persisted(n).unwrap();
                }
                node.clock.advance(Duration::from_millis(10));
                node.m.handle_timeout();
            }
            self.settle();
        }
    }

    fn leader(&self) -> String {
        self.n
            .values()
            .find_map(|x| x.m.leader().map(|l| l.to_string()))
            .unwrap()
    }

    fn busy(&mut self, leader: &str, writes: usize) {
        for _ in 0..writes {
            let l = self.n.get_mut(leader).unwrap();
            let op = LedgerOp::HostBooted {
                host: h(leader),
                boot: l.hw.boot_epoch().to_bytes(),
            };
            let _ = l.m.propose(op);
        }
    }
}

/// r runs E; r is cut off, the store compacts past its log, removes r (E recorded lost)
/// and adds it back. r hears heartbeats (and answers to its lease probes) before the
/// snapshot that tells it E is lost gets through; then it catches up while its host
/// reports records late and the store is busy. r's lease must never be valid while its
/// own state still lets it run E, and it must tell the SM its state moved on (so the SM
/// drops E).
#[test]
fn a_re_added_member_holds_a_lease_only_with_a_state_as_new_as_the_majoritys() {
    let mut c = Cluster::new(&["a", "b", "c", "d", "r"]);
    c.run(3000);
    let e = EnclaveId([0x33; 16]);
    {
        let r = c.n.get_mut("r").unwrap();
        let op = LedgerOp::Register {
            id: e,
            app: Measurement([5; 32]),
            app_name: "app".into(),
            owner: h("r"),
            boot: r.hw.boot_epoch().to_bytes(),
            max_instances_cluster: None,
            departures: 0,
        };
        r.m.propose(op).unwrap();
    }
    c.run(300);
    assert_eq!(
        c.n["r"].m.state().ledger.get(&e).unwrap().state,
        RecordState::Running
    );
    let mut leader = c.leader();
    if leader == "r" {
        c.cut.insert("r".into());
        c.run(3000);
        c.cut.clear();
        leader = c.leader();
    }
    assert_ne!(leader, "r");
    c.cut.insert("r".into());
    for _ in 0..3 {
        c.busy(&leader, 600);
        c.settle();
        c.run(50);
    }
    c.n.get_mut(&leader)
        .unwrap()
        .m
        .remove_member(&h("r"))
        .unwrap();
    c.run(200);
    assert_eq!(
        c.n[&leader].m.state().ledger.get(&e).unwrap().state,
        RecordState::Lost
    );
    c.n.get_mut(&leader)
        .unwrap()
        .m
        .add_member(&h("r"), "r:1")
        .unwrap();
    // Long enough for r's lease from before the cut to run out (an old lease is the
    // adoption wait's business, not this test's).
    c.run(2500);
    assert!(!c.n["r"].m.lease_valid(c.n["r"].hw.now()));
    c.n.get_mut("r").unwrap().report_late = true;
    c.n.get_mut("r").unwrap().applied_outputs = 0;
    c.cut.clear();
    c.starve = Some(("r".into(), 400));
    let mut leased = false;
    for step in 0..1000 {
        if step == 300 {
            c.starve = None;
        }
        c.busy(&leader, 1);
        c.run(10);
        let r = &c.n["r"];
        if r.m.lease_valid(r.hw.now()) {
            leased = true;
            let rec = r.m.state().ledger.get(&e).unwrap();
            assert_eq!(
                rec.state,
                RecordState::Lost,
                "r holds a lease while its state still lets it run E"
            );
        }
    }
    assert!(leased, "r holds a lease again once caught up");
    assert!(
        c.n["r"].applied_outputs > 0,
        "r told its SM that its state moved on"
    );
}
