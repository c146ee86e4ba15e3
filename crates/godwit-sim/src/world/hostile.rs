//! The lying host: what a hostile daemon does to its own SM beyond what an honest one
//! does. It holds everything outside the SM: the wire to and from its SM, its disk, its
//! timer interrupts and the operator's requests. So it replays, reflects and invents
//! frames on its SM's connections; tells its SM records are durable before they are (or
//! that records never written are); withholds wake-ups for seconds; removes other hosts
//! from the store and adopts their enclaves on itself; and makes requests out of order or
//! with bytes no honest operator sends. (Its older store records, older blobs, rolled-back
//! boot counts and kills at the worst moment are in `world.rs`.) The SM's channel does
//! not let it forge a frame of its own SM's peers: what it sends in their name is bytes it
//! saw or made up.

use godwit_monitor::{ConnId, MonitorError};
use godwit_proto::{MigrationId, RecordState};
use godwit_wire::EnclaveId;
use rand::{Rng, RngExt};

use super::{MS, World, conn_of};

/// Frames a hostile host keeps for replay.
const OVERHEARD_MAX: usize = 64;
/// How often, in virtual time, removed hosts are asked back after the chaos.
const READMIT_EVERY: u64 = 500 * MS;

impl World {
    /// A hostile host keeps a copy of `frame`, carried to or from its SM.
    pub(super) fn overhear(&mut self, i: usize, frame: &[u8]) {
        if !self.hostile.contains(&i) {
            return;
        }
        let h = &mut self.hosts[i];
        if h.overheard.len() == OVERHEARD_MAX {
            h.overheard.pop_front();
        }
        h.overheard.push_back(frame.to_vec());
    }

    /// A hostile host sometimes tells its SM record `upto` is durable as soon as it has
    /// it: a crash before the disk synced it loses what the SM was told was kept.
    pub(super) fn lie_durable(&mut self, i: usize, upto: u64) {
        if !self.hostile.contains(&i) || !self.may_lose_records(Some(i), None) || !self.chance(0.3)
        {
            return;
        }
        self.summary.attacks += 1;
        self.hosts[i].lied = true;
        if let Some(sm) = self.hosts[i].sm.as_mut() {
            sm.persisted(upto);
        }
    }

    /// One call of a hostile host's daemon that no honest daemon makes.
    pub(super) fn hostile_act(&mut self) -> Result<(), String> {
        let up: Vec<usize> = self
            .hostile
            .iter()
            .copied()
            .filter(|&i| self.hosts[i].sm.is_some())
            .collect();
        let Some(i) = self.pick(&up) else {
            return Ok(());
        };
        self.summary.attacks += 1;
        match self.rng.random_range(0..9) {
            0 | 1 => self.inject_frame(i),
            2 if self.may_lose_records(Some(i), None) => {
                // Every record written is "durable"; sometimes records never sealed, too.
                self.hosts[i].lied = true;
                let last = self.hosts[i].unsynced.back().map_or(0, |w| w.number);
                let extra = if self.rng.random_bool(0.5) {
                    self.rng.random_range(1..1000)
                } else {
                    0
                };
                let host = self.hosts[i].id.clone();
                self.note(format!(
                    "{host} tells its SM records up to {} are durable",
                    last + extra
                ));
                if let Some(sm) = self.hosts[i].sm.as_mut() {
                    sm.persisted(last + extra);
                }
            }
            3 => {
                let for_ms = self.rng.random_range(100..3_000);
                self.hosts[i].withhold_until = self.now + for_ms * MS;
                let host = self.hosts[i].id.clone();
                self.note(format!(
                    "{host} withholds its SM's wake-ups for {for_ms} ms"
                ));
            }
            4 => self.remove_other(i),
            5 => self.adopt_elsewhere(true)?,
            6 => self.out_of_order(i)?,
            7 => {
                // The daemon drops one of its SM's connections and tells it the connection
                // closed or failed (the peer sees it reset).
                if let Some(conn) = self.pick(&self.conns_of(i)) {
                    self.close_link((i, self.hosts[i].boot, conn));
                    let sm = self.hosts[i].sm.as_mut().expect("picked from the up hosts");
                    if self.rng.random_bool(0.5) {
                        sm.disconnected(conn);
                    } else {
                        sm.dial_failed(conn, "the host says so".into());
                    }
                }
            }
            _ => {
                if let Some(sm) = self.hosts[i].sm.as_mut() {
                    sm.handle_timeout();
                }
                self.check_waits(i)?;
            }
        }
        Ok(())
    }

    /// The SM's connections the host knows of this boot.
    fn conns_of(&self, i: usize) -> Vec<ConnId> {
        let boot = self.hosts[i].boot;
        self.links
            .values()
            .flat_map(|l| l.ends)
            .filter(|e| e.0 == i && e.1 == boot)
            .map(|e| conn_of(&e))
            .collect()
    }

    /// Hands the SM, on one of its connections, a frame it carried before (to it, or from
    /// it: its own frame reflected as the peer's), one cut short, or bytes made up.
    fn inject_frame(&mut self, i: usize) {
        let Some(conn) = self.pick(&self.conns_of(i)) else {
            return;
        };
        let heard = self.hosts[i].overheard.len();
        let mut frame = match self.rng.random_range(0..4) {
            0 | 1 if heard > 0 => {
                let k = self.rng.random_range(0..heard);
                self.hosts[i].overheard[k].clone()
            }
            2 if heard > 0 => {
                let k = self.rng.random_range(0..heard);
                let mut f = self.hosts[i].overheard[k].clone();
                let keep = self.rng.random_range(0..=f.len());
                f.truncate(keep);
                f
            }
            _ => {
                let len = self.rng.random_range(0..300);
                let mut f = vec![0u8; len];
                self.rng.fill_bytes(&mut f);
                f
            }
        };
        let host = self.hosts[i].id.clone();
        self.note(format!(
            "{host} hands its SM a frame of {} bytes it carried or made up",
            frame.len()
        ));
        if let Some(sm) = self.hosts[i].sm.as_mut() {
            sm.handle_frame(conn, &mut frame);
        }
    }

    /// The hostile host's SM proposes removing another voter (so that its enclaves are
    /// recorded lost, for the hostile host to adopt). At most a minority of the hosts is
    /// out at once; all come back after the chaos.
    pub(super) fn remove_other(&mut self, i: usize) {
        let n = self.hosts.len();
        if self.removed.len() >= (n - 1) / 2 {
            return;
        }
        let Some(sm) = self.hosts[i].sm.as_ref() else {
            return;
        };
        let me = self.hosts[i].id.clone();
        let voters = sm.store_status().voters;
        if voters.len() < 3 {
            return;
        }
        let candidates: Vec<usize> = voters
            .iter()
            .filter(|h| **h != me)
            .filter_map(|h| self.hosts.iter().position(|x| x.id == *h))
            .filter(|&j| !self.removed.contains(&j) && self.may_lose_records(None, Some(j)))
            .collect();
        // Preferably a host running enclaves that sealed nothing yet: those are the ones
        // the hostile host may adopt on itself once they are recorded lost.
        let ledger = sm.ledger();
        let running: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|&j| {
                self.hosts[j].sm.as_ref().is_some_and(|sm| {
                    sm.list().iter().any(|e| {
                        e.state == godwit_monitor::EnclaveState::Running
                            && ledger
                                .get(&e.id)
                                .is_some_and(|r| r.durable.sealed.is_empty())
                    })
                })
            })
            .collect();
        let pool = if running.is_empty() {
            candidates
        } else {
            running
        };
        let Some(j) = self.pick(&pool) else {
            return;
        };
        let them = self.hosts[j].id.clone();
        let sm = self.hosts[i].sm.as_mut().expect("checked up");
        match sm.remove_member(&them) {
            Ok(()) => {
                self.removed.insert(j);
                self.summary.removals += 1;
                self.note(format!("{me} removes {them} from the store"));
                // The adversary holds the network too: most of the time it also cuts the
                // victim off from the store, so that it does not hear of its removal and
                // runs on (withheld once its lease runs out) while its enclaves are adopted
                // elsewhere. (Not the leader: cut off, it would take the removal with it.)
                let leads = self.hosts[i]
                    .sm
                    .as_ref()
                    .is_some_and(|sm| sm.store_status().leader.as_ref() == Some(&them));
                if !leads && self.rng.random_bool(0.7) {
                    self.store_cut.insert(j);
                    self.note(format!("{me} cuts {them} off from the store"));
                }
            }
            Err(e) => self.note(format!("{me} cannot remove {them}: {e}")),
        }
    }

    /// Whether host `i` (if any) may lose records it told its SM were durable (it lied,
    /// or hands back stale ones), with host `removing` (if any) removed from the store: a member that lost
    /// its records votes for no one until it caught up, so a majority of them stops the
    /// store for good (an operator's problem, recovery.md, outside what the simulation
    /// checks). So members that may have lost records stay a minority of the voters.
    pub(super) fn may_lose_records(&self, i: Option<usize>, removing: Option<usize>) -> bool {
        // Voters, counting every removal asked for as done.
        let voters = self
            .hosts
            .iter()
            .filter_map(|h| h.sm.as_ref())
            .max_by_key(|sm| sm.store_digest().0)
            .map_or_else(Vec::new, |sm| sm.store_status().voters)
            .iter()
            .filter_map(|v| self.hosts.iter().position(|h| h.id == *v))
            .filter(|k| !self.removed.contains(k) && Some(*k) != removing)
            .count();
        let at_risk = (0..self.hosts.len())
            .filter(|&k| Some(k) != removing)
            .filter(|&k| Some(k) == i || self.hosts[k].rejoining || self.hosts[k].lied)
            .count();
        at_risk <= voters.saturating_sub(1) / 2
    }

    /// Each hostile host adopts, on itself, every enclave its SM's ledger records lost
    /// that the ledger lets any host adopt (it sealed nothing); with `all`, the others too.
    pub(super) fn adopt_elsewhere(&mut self, all: bool) -> Result<(), String> {
        let hostile: Vec<usize> = self.hostile.iter().copied().collect();
        for i in hostile {
            let Some(sm) = self.hosts[i].sm.as_ref() else {
                continue;
            };
            let me = sm.host().clone();
            let lost: Vec<EnclaveId> = sm
                .ledger()
                .records()
                .filter(|r| r.state == RecordState::Lost)
                .filter(|r| all || r.owner == me || r.durable.sealed.is_empty())
                .map(|r| r.id)
                .filter(|id| sm.info(*id).is_err())
                .collect();
            for id in lost {
                let host = self.hosts[i].id.clone();
                let sm = self.hosts[i].sm.as_mut().expect("checked up");
                let mut adopted = sm.adopt(id, &self.app.module, self.app.manifest.clone());
                if let Err(MonitorError::InstanceLimit { .. }) = adopted {
                    // It makes room: it destroys one of its own.
                    let own = sm
                        .list()
                        .into_iter()
                        .find(|e| e.state == godwit_monitor::EnclaveState::Running)
                        .map(|e| e.id);
                    if let Some(own) = own
                        && sm.destroy(own).is_ok()
                    {
                        adopted = sm.adopt(id, &self.app.module, self.app.manifest.clone());
                        self.note(format!("{host} destroys {own} to make room"));
                    }
                }
                if adopted.is_ok() {
                    self.summary.attacks += 1;
                    self.note(format!("{host} adopts lost {id} on itself"));
                }
            }
        }
        Ok(())
    }

    /// Requests no honest operator makes, or not now: resuming an enclave (one that
    /// migrates, one that runs elsewhere), migrating one to its own host, cancelling a
    /// migration that does not exist, adding a member twice or itself, adopting one that
    /// is not lost, deploying bytes that are not a module, calling a function that is not
    /// there with bytes made up.
    fn out_of_order(&mut self, i: usize) -> Result<(), String> {
        let ids: Vec<EnclaveId> = self.enclaves.keys().copied().collect();
        let id = self.pick(&ids);
        let me = self.hosts[i].id.clone();
        let other = self.rng.random_range(0..self.hosts.len());
        let them = self.hosts[other].id.clone();
        let mut junk = vec![0u8; self.rng.random_range(0..64)];
        self.rng.fill_bytes(&mut junk);
        let what = self.rng.random_range(0..8);
        let Some(sm) = self.hosts[i].sm.as_mut() else {
            return Ok(());
        };
        let outcome: Result<(), MonitorError> = match (what, id) {
            (0, Some(id)) => sm.resume(id),
            (1, Some(id)) => sm.migrate(id, me.clone()).map(|_| ()),
            (2, _) => {
                let mut m = [0u8; 16];
                self.rng.fill_bytes(&mut m);
                sm.cancel_migration(MigrationId(m))
            }
            (3, _) => sm.add_member(them.clone(), "anywhere".into()),
            (4, Some(id)) => sm.adopt(id, &self.app.module, self.app.manifest.clone()),
            (5, _) => sm.create(&junk, self.app.manifest.clone()).map(|id| {
                // Invariant: bytes that are not a module never load.
                panic!("{me}'s SM deployed {} bytes of junk as {id}", junk.len())
            }),
            (6, Some(id)) => sm.call(id, "no_such_function", &junk).map(|_| ()),
            _ => sm.probe_store().map(|_| ()),
        };
        if let Err(e) = outcome {
            self.note(format!("{me}'s out-of-order request refused: {e}"));
        }
        Ok(())
    }

    /// After the chaos, the hosts a hostile host removed are added back (by any member
    /// that no longer counts them), so the liveness phase can settle everything.
    pub(super) fn readmit_removed(&mut self) {
        if self.removed.is_empty() || self.now < self.readmit_at {
            return;
        }
        self.readmit_at = self.now + READMIT_EVERY;
        let removed: Vec<usize> = self.removed.iter().copied().collect();
        for j in removed {
            let them = self.hosts[j].id.clone();
            let members = |w: &World, k: usize| {
                w.hosts[k].sm.as_ref().map(|sm| {
                    let s = sm.store_status();
                    (
                        s.voters.contains(&them),
                        s.learners.contains(&them),
                        s.leader == Some(sm.host().clone()),
                    )
                })
            };
            // Back once the leader counts it a voter again.
            let leader = (0..self.hosts.len())
                .filter(|&k| k != j)
                .find(|&k| members(self, k).is_some_and(|(_, _, leads)| leads));
            let Some(k) = leader else {
                continue;
            };
            match members(self, k) {
                Some((true, _, _)) => {
                    self.removed.remove(&j);
                    self.note(format!("{them} is a voter again"));
                }
                Some((false, false, _)) => {
                    let sm = self.hosts[k].sm.as_mut().expect("checked up");
                    let asked = sm.add_member(them.clone(), format!("sim:{j}"));
                    let leader = self.hosts[k].id.clone();
                    self.note(format!("{leader} adds {them} back: {asked:?}"));
                }
                _ => {}
            }
        }
    }

    /// A result of `id` released by host `i`'s SM: it holds its store lease, and its own
    /// ledger records `id` as running (or migrating away) under this boot of this host.
    pub(super) fn check_release(&self, i: usize, id: EnclaveId) -> Result<(), String> {
        let h = &self.hosts[i];
        let (Some(sm), Some(hw)) = (&h.sm, &h.hw) else {
            return Err(format!("{} released a result of {id} while down", h.id));
        };
        if !sm.holds_lease() {
            return Err(format!(
                "{} released a result of {id} without holding its store lease",
                h.id
            ));
        }
        use godwit_hw::Hardware;
        let boot = hw.boot_epoch().to_bytes();
        let licensed = sm.ledger().get(&id).is_some_and(|r| {
            r.owner == h.id
                && r.owner_boot == boot
                && matches!(
                    r.state,
                    RecordState::Running | RecordState::Migrating { .. }
                )
        });
        if !licensed {
            return Err(format!(
                "{} released a result of {id} that its ledger does not let it run",
                h.id
            ));
        }
        Ok(())
    }
}
