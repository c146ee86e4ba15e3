//! An in-memory world for scenario tests: monitors on simulated hardware, each with its
//! own store member (the real consensus, over the SMs' channels), a network of frames the
//! test can hold or drop, disks for the members' records, and virtual time. No sockets,
//! no threads, no wall clock.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use godwit_attest::Policy;
use godwit_enclave::examples::Example;
use godwit_hw::{DeviceIdentity, Hardware, Manufacturer, SimClock, SimHardware};
use godwit_monitor::{
    Action, ConnId, Event, MemberConfig, MemoryBlobStore, Monitor, MonitorConfig, StoreWrite,
    sm_measurement,
};
use godwit_proto::{Ledger, TimeoutConfig};
use godwit_wire::{EnclaveId, HostId};

pub struct Node {
    pub sm: Monitor,
    pub hw: Arc<SimHardware>,
    pub clock: SimClock,
    pub blobs: Arc<MemoryBlobStore>,
    identity: DeviceIdentity,
    boots: u64,
    /// The store member's durable records.
    disk: Vec<Vec<u8>>,
    /// Records written but not durable yet (held while the host's store is cut).
    unpersisted: VecDeque<StoreWrite>,
}

/// What the network does with one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Deliver,
    /// Never delivered (the connection stalls: later frames queue behind it).
    Hold,
}

/// A frame on the wire, as a filter sees it (ciphertext only).
pub struct FrameInfo<'a> {
    pub from: &'a HostId,
    pub to: &'a HostId,
    /// How many frames this direction of this link carried before.
    pub index: usize,
}

type Filter = Box<dyn FnMut(&FrameInfo<'_>) -> Verdict>;

pub struct World {
    pub nodes: BTreeMap<HostId, Node>,
    pub events: Vec<(HostId, Event)>,
    /// Decides the fate of each frame of a migration's connections (store connections are
    /// not filtered: see [`World::cut_store`]); delivers everything by default.
    pub filter: Filter,
    /// Hosts cut off from the store: their store connections carry nothing, and their
    /// records do not become durable.
    store_cut: BTreeSet<HostId>,
    founders: Vec<HostId>,
    manufacturer: Manufacturer,
    policy: Policy,
    config: TimeoutConfig,
    budget: u64,
    links: BTreeMap<(HostId, ConnId), (HostId, ConnId)>,
    /// Links that carry the store's traffic (both ends).
    store_links: BTreeSet<(HostId, ConnId)>,
    sent: BTreeMap<(HostId, ConnId), usize>,
    /// Frames held back per link direction, in order (a stalled direction).
    held: BTreeMap<(HostId, ConnId), VecDeque<Vec<u8>>>,
    frames: VecDeque<((HostId, ConnId), Vec<u8>)>,
    /// Boots so far in this world, for each boot's random seed.
    boots_ever: u64,
    pub now: Duration,
}

pub fn h(name: &str) -> HostId {
    HostId::new(name).unwrap()
}

impl World {
    pub fn new(hosts: &[&str]) -> Self {
        Self::with(hosts, TimeoutConfig::default(), u64::MAX)
    }

    /// Hosts that found a store together, each SM's boot recorded and a leader elected.
    pub fn with(hosts: &[&str], config: TimeoutConfig, budget: u64) -> Self {
        let manufacturer = Manufacturer::from_seed([7; 32]);
        let policy = Policy {
            roots: vec![manufacturer.root()],
            allowed_sm: vec![sm_measurement()],
            allowed_hosts: None,
        };
        let mut w = Self {
            nodes: BTreeMap::new(),
            events: Vec::new(),
            filter: Box::new(|_| Verdict::Deliver),
            store_cut: BTreeSet::new(),
            founders: hosts.iter().map(|n| h(n)).collect(),
            manufacturer,
            policy,
            config,
            budget,
            links: BTreeMap::new(),
            store_links: BTreeSet::new(),
            sent: BTreeMap::new(),
            held: BTreeMap::new(),
            frames: VecDeque::new(),
            boots_ever: 0,
            now: Duration::ZERO,
        };
        for (i, name) in hosts.iter().enumerate() {
            let identity = w
                .manufacturer
                .provision_from_secret(h(name), [i as u8 + 1; 32].into());
            let node = w.boot(identity, 0, None, Vec::new(), None);
            w.nodes.insert(h(name), node);
        }
        w.wait_ready();
        w
    }

    /// Runs until every SM's boot is recorded in its own ledger and holds a lease.
    pub fn wait_ready(&mut self) {
        let ready = self.run_until(Duration::from_secs(60), |w| {
            w.nodes.iter().all(|(host, n)| {
                n.sm.store_status().lease
                    && n.sm.ledger().boot_of(host) == Some(&n.hw.boot_epoch().to_bytes())
            })
        });
        assert!(ready, "the store did not come up within 60 virtual seconds");
    }

    fn boot(
        &mut self,
        identity: DeviceIdentity,
        boots: u64,
        disk: Option<Arc<MemoryBlobStore>>,
        records: Vec<Vec<u8>>,
        counter: Option<godwit_hw::NvCounter>,
    ) -> Node {
        // Every boot draws its own randomness, even under a boot count used before.
        self.boots_ever += 1;
        let seed =
            u64::from(identity.certificate().host.as_str().as_bytes()[0]) * 1000 + self.boots_ever;
        // The component counts its boots, as a real one does (the first is boot 1).
        let (hw, clock) = SimHardware::booted(identity.clone(), sm_measurement(), seed, boots + 1);
        let hw = Arc::new(match counter {
            Some(c) => hw.with_nv_counter(c),
            None => hw,
        });
        clock.advance(self.now);
        let blobs = disk.unwrap_or_default();
        let config = MonitorConfig {
            policy: self.policy.clone(),
            timeouts: self.config.clone(),
            memory_budget_bytes: self.budget,
            store: MemberConfig {
                founders: self.founders.clone(),
                ..MemberConfig::default()
            },
        };
        let (sm, _) = Monitor::new(
            Arc::clone(&hw) as Arc<dyn Hardware>,
            blobs.clone(),
            config,
            &records,
        )
        .unwrap();
        Node {
            sm,
            hw,
            clock,
            blobs,
            identity,
            boots,
            disk: records,
            unpersisted: VecDeque::new(),
        }
    }

    pub fn sm(&mut self, host: &str) -> &mut Monitor {
        &mut self.nodes.get_mut(&h(host)).unwrap().sm
    }

    pub fn sm_ref(&self, host: &str) -> &Monitor {
        &self.nodes[&h(host)].sm
    }

    /// The ledger as the SM that applied the most of the log sees it.
    pub fn ledger(&self) -> Ledger {
        self.nodes
            .values()
            .max_by_key(|n| n.sm.store_status().applied)
            .map(|n| n.sm.ledger().clone())
            .unwrap_or_default()
    }

    /// Cuts `host` off from the store: its store connections carry nothing, and its
    /// records stop becoming durable.
    pub fn cut_store(&mut self, host: &str) {
        self.store_cut.insert(h(host));
    }

    /// Cuts every host off from the store.
    pub fn cut_store_all(&mut self) {
        self.store_cut = self.nodes.keys().cloned().collect();
    }

    /// Ends every cut from the store.
    pub fn heal_store(&mut self) {
        self.store_cut.clear();
    }

    /// Power-cycles a host: its SM and everything in its memory are gone; its disk (sealed
    /// blobs, the store's durable records) and its component's counter stay; its
    /// connections drop.
    pub fn reboot(&mut self, host: &str) {
        let boots = self.nodes[&h(host)].boots + 1;
        self.reboot_as(host, boots);
    }

    /// As [`World::reboot`], with the component's boot count set to `boots` + 1: a host
    /// that rolled the emulated count back gives a count it already used.
    pub fn reboot_as(&mut self, host: &str, boots: u64) {
        let old = self.nodes.remove(&h(host)).unwrap();
        let counter = old.hw.nv_counter().clone();
        let node = self.boot(
            old.identity,
            boots,
            Some(old.blobs),
            old.disk,
            Some(counter),
        );
        self.nodes.insert(h(host), node);
        // The new SM numbers its connections afresh.
        self.store_links.retain(|(owner, _)| owner.as_str() != host);
        self.sent.retain(|(owner, _), _| owner.as_str() != host);
        self.held.retain(|(owner, _), _| owner.as_str() != host);
        self.frames.retain(|((owner, _), _)| owner.as_str() != host);
        let dead: Vec<_> = self
            .links
            .keys()
            .filter(|(owner, _)| owner.as_str() == host)
            .cloned()
            .collect();
        for end in dead {
            if let Some(peer) = self.links.remove(&end) {
                self.links.remove(&peer);
                if let Some(n) = self.nodes.get_mut(&peer.0) {
                    n.sm.disconnected(peer.1);
                }
            }
        }
    }

    /// Deploys an example on `host` and runs until it is registered.
    pub fn deploy(&mut self, host: &str, ex: Example) -> EnclaveId {
        let id = self.sm(host).create(&ex.module(), ex.manifest()).unwrap();
        let registered = self.run_until(Duration::from_secs(30), |w| {
            w.events.iter().any(|(who, e)| {
                who.as_str() == host && matches!(e, Event::Registered { enclave } if *enclave == id)
            })
        });
        assert!(registered, "{id} not registered within 30 virtual seconds");
        id
    }

    /// Adopts lost `id` on `host` as `ex` and runs until it runs there.
    pub fn adopt(&mut self, host: &str, id: EnclaveId, ex: Example) {
        let before = self.registered(host, id);
        self.sm(host)
            .adopt(id, &ex.module(), ex.manifest())
            .unwrap();
        let adopted = self.run_until(Duration::from_secs(30), |w| w.registered(host, id) > before);
        assert!(
            adopted,
            "{id} not adopted on {host} within 30 virtual seconds"
        );
    }

    /// How many times `id` was registered (created or adopted) on `host`.
    pub fn registered(&self, host: &str, id: EnclaveId) -> usize {
        self.events
            .iter()
            .filter(|(who, e)| {
                who.as_str() == host && matches!(e, Event::Registered { enclave } if *enclave == id)
            })
            .count()
    }

    pub fn call(&mut self, host: &str, id: EnclaveId, f: &str) -> String {
        String::from_utf8(self.call_raw(host, id, f, b"").unwrap()).unwrap()
    }

    /// An ecall's result; a withheld one is waited for (the world runs until the store
    /// recorded the state it depends on).
    pub fn call_raw(
        &mut self,
        host: &str,
        id: EnclaveId,
        f: &str,
        arg: &[u8],
    ) -> Result<Vec<u8>, godwit_monitor::MonitorError> {
        match self.sm(host).call(id, f, arg)? {
            godwit_monitor::CallOutcome::Done(out) => Ok(out),
            godwit_monitor::CallOutcome::Pending(call) => {
                let found = self.run_until(Duration::from_secs(60), |w| {
                    w.events.iter().any(
                        |(_, e)| matches!(e, Event::CallCompleted { call: c, .. } if *c == call),
                    )
                });
                assert!(found, "withheld result never released");
                let idx = self
                    .events
                    .iter()
                    .position(
                        |(_, e)| matches!(e, Event::CallCompleted { call: c, .. } if *c == call),
                    )
                    .unwrap();
                match self.events.remove(idx).1 {
                    Event::CallCompleted { result, .. } => match result {
                        Ok(out) => Ok(out),
                        Err(godwit_monitor::CallError::Enclave(e)) => Err(e.into()),
                        Err(e) => panic!("the result was withdrawn: {e}"),
                    },
                    _ => unreachable!(),
                }
            }
        }
    }

    /// Delivers frames and records until nothing moves, without advancing time.
    pub fn settle(&mut self) {
        for _ in 0..1_000_000 {
            if !self.step() {
                return;
            }
        }
        panic!("the world did not settle");
    }

    fn step(&mut self) -> bool {
        let mut moved = false;
        let hosts: Vec<HostId> = self.nodes.keys().cloned().collect();
        for host in &hosts {
            while let Some(action) = self.nodes.get_mut(host).and_then(|n| n.sm.poll_action()) {
                moved = true;
                self.act(host, action);
            }
            moved |= self.persist(host);
        }
        if let Some((to, mut frame)) = self.frames.pop_front() {
            moved = true;
            if self.links.contains_key(&to)
                && let Some(n) = self.nodes.get_mut(&to.0)
            {
                n.sm.handle_frame(to.1, &mut frame);
            }
        }
        moved
    }

    /// Makes `host`'s written records durable, unless it is cut off from the store.
    fn persist(&mut self, host: &HostId) -> bool {
        if self.store_cut.contains(host) {
            return false;
        }
        let n = self.nodes.get_mut(host).unwrap();
        let mut last = None;
        while let Some(w) = n.unpersisted.pop_front() {
            if w.base {
                n.disk.clear();
            }
            n.disk.push(w.bytes);
            last = Some(w.number);
        }
        match last {
            Some(number) => {
                n.sm.persisted(number);
                true
            }
            None => false,
        }
    }

    fn act(&mut self, host: &HostId, action: Action) {
        match action {
            Action::Connect {
                conn, peer, store, ..
            } => {
                let Some(p) = self.nodes.get_mut(&peer) else {
                    return self
                        .nodes
                        .get_mut(host)
                        .unwrap()
                        .sm
                        .dial_failed(conn, format!("{peer} does not exist"));
                };
                let theirs = p.sm.accept();
                self.links
                    .insert((host.clone(), conn), (peer.clone(), theirs));
                self.links
                    .insert((peer.clone(), theirs), (host.clone(), conn));
                if store {
                    self.store_links.insert((host.clone(), conn));
                    self.store_links.insert((peer, theirs));
                }
                self.nodes.get_mut(host).unwrap().sm.connected(conn);
            }
            Action::Wake { conn } => self.pump(host, conn),
            Action::Close { conn } => {
                if let Some(peer) = self.links.remove(&(host.clone(), conn)) {
                    self.links.remove(&peer);
                    if let Some(n) = self.nodes.get_mut(&peer.0) {
                        n.sm.disconnected(peer.1);
                    }
                }
            }
            Action::Persist(w) => self.nodes.get_mut(host).unwrap().unpersisted.push_back(w),
            Action::Event(e) => self.events.push((host.clone(), e)),
            other => panic!("unexpected action {other:?}"),
        }
    }

    /// Pulls every frame `conn` has to send and puts it on the wire (or holds it, or for a
    /// store link of a host cut off from the store, drops it).
    fn pump(&mut self, host: &HostId, conn: ConnId) {
        let Some(&(ref peer, peer_conn)) = self.links.get(&(host.clone(), conn)) else {
            return;
        };
        let (peer, key) = (peer.clone(), (host.clone(), conn));
        let store = self.store_links.contains(&key);
        while let Some(frame) = self
            .nodes
            .get_mut(host)
            .and_then(|n| n.sm.poll_transmit(conn))
        {
            if store {
                if !self.store_cut.contains(host) && !self.store_cut.contains(&peer) {
                    self.frames.push_back(((peer.clone(), peer_conn), frame));
                }
                continue;
            }
            let index = *self.sent.get(&key).unwrap_or(&0);
            self.sent.insert(key.clone(), index + 1);
            let stalled = self.held.contains_key(&key);
            let info = FrameInfo {
                from: host,
                to: &peer,
                index,
            };
            if stalled || (self.filter)(&info) == Verdict::Hold {
                self.held.entry(key.clone()).or_default().push_back(frame);
                continue;
            }
            self.frames.push_back(((peer.clone(), peer_conn), frame));
        }
    }

    /// Stalls every migration link direction out of `from` at its frame number `index`
    /// (counted from 0): that frame and all after it are held until [`World::release`].
    pub fn stall_from(&mut self, from: &str, index: usize) {
        let from = h(from);
        self.filter = Box::new(move |f| {
            if *f.from == from && f.index >= index {
                Verdict::Hold
            } else {
                Verdict::Deliver
            }
        });
    }

    /// Stalls the migration link direction from `from` to `to` at its frame `index`.
    pub fn stall_between(&mut self, from: &str, to: &str, index: usize) {
        let (from, to) = (h(from), h(to));
        self.filter = Box::new(move |f| {
            if *f.from == from && *f.to == to && f.index >= index {
                Verdict::Hold
            } else {
                Verdict::Deliver
            }
        });
    }

    /// Ends every stall: held frames go out in order, and the filter delivers everything.
    pub fn release(&mut self) {
        self.filter = Box::new(|_| Verdict::Deliver);
        for ((host, conn), frames) in std::mem::take(&mut self.held) {
            if let Some((peer, peer_conn)) = self.links.get(&(host, conn)).cloned() {
                for frame in frames {
                    self.frames.push_back(((peer.clone(), peer_conn), frame));
                }
            }
        }
    }

    /// Runs, advancing virtual time to each next deadline, until `done` or `limit` of
    /// virtual time has passed. Returns whether `done` held.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&World) -> bool) -> bool {
        let end = self.now + limit;
        loop {
            self.settle();
            if done(self) {
                return true;
            }
            // Advance to the earliest deadline, in steps no larger than 10 ms.
            let next = self
                .nodes
                .values()
                .filter_map(|n| n.sm.timeout_in())
                .min()
                .unwrap_or(Duration::from_millis(10))
                .clamp(Duration::from_micros(1), Duration::from_millis(10));
            if self.now >= end {
                return false;
            }
            self.now += next;
            for n in self.nodes.values_mut() {
                n.clock.advance(next);
                n.sm.handle_timeout();
            }
        }
    }

    /// The outcome of migration events so far, for one host.
    pub fn finished(&self, host: &str) -> Vec<&Event> {
        self.events
            .iter()
            .filter(|(who, e)| {
                who.as_str() == host
                    && matches!(
                        e,
                        Event::MigrationFinished { .. } | Event::IncomingFinished { .. }
                    )
            })
            .map(|(_, e)| e)
            .collect()
    }

    /// Runs until `host` reports an outgoing migration finished; returns its outcome.
    pub fn finish_migration(
        &mut self,
        host: &str,
    ) -> Result<godwit_monitor::MigrationReport, godwit_proto::AbortReason> {
        let host = h(host);
        let found = self.run_until(Duration::from_secs(600), |w| {
            w.events
                .iter()
                .any(|(who, e)| *who == host && matches!(e, Event::MigrationFinished { .. }))
        });
        assert!(found, "migration did not finish within 10 virtual minutes");
        let idx = self
            .events
            .iter()
            .position(|(who, e)| *who == host && matches!(e, Event::MigrationFinished { .. }))
            .unwrap();
        let (_, e) = self.events.remove(idx);
        match e {
            Event::MigrationFinished { outcome, .. } => outcome,
            _ => unreachable!(),
        }
    }

    /// Removes `gone` from the store through `via`'s SM, and runs until `via` applied it.
    pub fn remove_member(&mut self, via: &str, gone: &str) {
        self.sm(via).remove_member(&h(gone)).unwrap();
        let applied = self.run_until(Duration::from_secs(30), |w| {
            w.events.iter().any(|(who, e)| {
                who.as_str() == via
                    && matches!(e, Event::Membership(godwit_monitor::MembershipChange::Left(x)) if x.as_str() == gone)
            })
        });
        assert!(
            applied,
            "{gone}'s removal not applied within 30 virtual seconds"
        );
    }

    /// Hosts on which `id` is resident, and the states it is in.
    pub fn copies(&self, id: EnclaveId) -> Vec<(String, godwit_monitor::EnclaveState)> {
        self.nodes
            .iter()
            .filter_map(|(host, n)| n.sm.info(id).ok().map(|i| (host.to_string(), i.state)))
            .collect()
    }

    /// Every SM's invariants, and no enclave running in two places.
    pub fn check(&self) {
        let mut running: BTreeMap<EnclaveId, Vec<String>> = BTreeMap::new();
        for (host, n) in &self.nodes {
            n.sm.check_invariants();
            for info in n.sm.list() {
                if info.state == godwit_monitor::EnclaveState::Running {
                    running.entry(info.id).or_default().push(host.to_string());
                }
            }
        }
        for (id, hosts) in running {
            assert!(hosts.len() <= 1, "enclave {id} runs on {hosts:?}");
        }
    }
}
