//! A leader whose host withholds `persisted` commits its own removal through the others but
//! never applies it, so it never steps down. Members that applied the removal take a
//! removed host's leader messages only in a later term than the removal (the host may have
//! been added back and elected); were they to take them in the same term, they would follow
//! the removed leader for ever and drop its read answers, so none would hold a lease. (A
//! hostile review found this against a first version that took them in any term; the test
//! failed there.)

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use godwit_hw::{Hardware, Manufacturer, SimClock, SimHardware};
use godwit_store::{Member, MemberConfig, Output};
use godwit_wire::{HostId, Measurement};

fn h(s: &str) -> HostId {
    HostId::new(s).unwrap()
}

struct Node {
    hw: Arc<SimHardware>,
    clock: SimClock,
    m: Member,
    /// The host seals records away and never reports them durable.
    withhold: bool,
}

struct Cluster {
    n: BTreeMap<String, Node>,
    net: VecDeque<(String, String, Vec<u8>)>,
    cut: BTreeSet<String>,
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
                    withhold: false,
                },
            );
        }
        Cluster {
            n,
            net: VecDeque::new(),
            cut: BTreeSet::new(),
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
                        Output::Persist(_) if node.withhold => {}
                        Output::Persist(w) => node.m.persisted(w.number).unwrap(),
                        _ => {}
                    }
                }
            }
            while let Some((from, to, bytes)) = self.net.pop_front() {
                if self.cut.contains(&from) || self.cut.contains(&to) {
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
                node.clock.advance(Duration::from_millis(10));
                node.m.handle_timeout();
            }
            self.settle();
        }
    }

    fn leader_seen_by(&self, who: &str) -> Option<String> {
        self.n[who].m.leader().map(|l| l.to_string())
    }
}

#[test]
fn a_removed_leader_that_never_applies_its_removal_does_not_keep_the_store() {
    let mut c = Cluster::new(&["a", "b", "r"]);
    c.run(3000);
    // Make r the leader: cut whoever leads until r wins an election.
    for _ in 0..50 {
        let l = c.leader_seen_by("a").unwrap_or_default();
        if l == "r" && c.leader_seen_by("b").as_deref() == Some("r") {
            break;
        }
        if !l.is_empty() && l != "r" {
            c.cut.insert(l);
        }
        c.run(1500);
        c.cut.clear();
        c.run(1500);
    }
    assert_eq!(c.leader_seen_by("a").as_deref(), Some("r"), "r leads");
    // r's host stores r's records and reports none durable from now on.
    c.n.get_mut("r").unwrap().withhold = true;
    // a's operator removes r: a forwards the change to its leader, r.
    c.n.get_mut("a").unwrap().m.remove_member(&h("r")).unwrap();
    c.run(500);
    for who in ["a", "b"] {
        assert!(
            c.n[who].m.state().left.contains(&h("r")),
            "{who} applied r's removal"
        );
    }
    assert!(
        !c.n["r"].m.state().left.contains(&h("r")),
        "r has not applied its own removal (its records are withheld)"
    );
    // Ten seconds later a and b should have a leader of their own and a lease again.
    c.run(10_000);
    let lease_a = c.n["a"].m.lease_valid(c.n["a"].hw.now());
    let lease_b = c.n["b"].m.lease_valid(c.n["b"].hw.now());
    let status = format!(
        "terms a={} b={}; r: {:?}; leases a={lease_a} b={lease_b}",
        c.n["a"].m.term(),
        c.n["b"].m.term(),
        c.n["r"].m,
    );
    // (`leader()` names only members, so a and b name no leader; the terms tell.)
    let r_leads = c.n["r"].m.leader() == Some(&h("r"));
    assert!(
        !r_leads || c.n["r"].m.term() != c.n["a"].m.term(),
        "a still follows the removed r in r's term: {status}"
    );
    assert!(
        lease_a && lease_b,
        "a and b hold no lease while r leads: {status}"
    );
}
