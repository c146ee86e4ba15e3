//! The invariants checked after every step (DESIGN.md §5):
//!
//! 1. **No fork**: an SM runs an enclave only while its own view of the ledger records it
//!    running there, under that SM's boot epoch; and at most one SM that holds its store
//!    lease (the only ones that release results) runs each enclave.
//! 2. **One history**: the store members agree on the replicated state at every applied
//!    index (Raft's state machine safety, checked by digest), and along it a record's
//!    epoch never goes back (committed transfers are never undone).
//! 3. **No rollback**: a record's counters and sealed versions never go back; a released
//!    tick is larger than every one released before it; a check sees a counter and sealed
//!    data at least as new as every released tick (in `World::released`).
//! 4. **No plaintext outside an SM**: no frame, store record, blob on a host's disk or
//!    line the SMs log holds an enclave's canary (in its memory and sealed data) or a
//!    sealing key.
//! 5. **Limits hold**: no SM holds more instances of the application than its manifest
//!    allows per host, and the ledger holds no more live ones than the cluster cap.
//! 6. **Bounded waits**: once an SM has handled its timer, none of its deadlines lies in
//!    the past.
//! 7. Each SM's own consistency checks (`Monitor::check_invariants`) and the ledger's.
//!
//! The liveness phase adds: every migration resolves, and every enclave ends up running on
//! exactly one host or recorded lost with its sealed data intact (in `World::finish`).

use std::collections::BTreeMap;

use godwit_hw::Hardware;
use godwit_monitor::EnclaveState;
use godwit_proto::RecordState;
use godwit_wire::EnclaveId;

use crate::world::World;

/// Applied indices whose state digest is remembered.
const DIGESTS_MAX: usize = 20_000;

impl World {
    pub(crate) fn check_step(&mut self) -> Result<(), String> {
        self.trace_states();
        self.scan_logs()?;
        self.check_history()?;
        let mut running: BTreeMap<EnclaveId, Vec<String>> = BTreeMap::new();
        let per_host = self.app.manifest.max_instances_per_host;
        for h in &self.hosts {
            let (Some(sm), Some(hw)) = (&h.sm, &h.hw) else {
                continue;
            };
            sm.check_invariants();
            let present = sm.instances_of(&self.app.measurement);
            if present > per_host {
                return Err(format!(
                    "{} holds {present} instances of tally, over its limit of {per_host}",
                    h.id
                ));
            }
            let boot = hw.boot_epoch().to_bytes();
            let lease = sm.holds_lease();
            for info in sm.list() {
                if info.state != EnclaveState::Running {
                    continue;
                }
                if lease {
                    running.entry(info.id).or_default().push(h.id.to_string());
                }
                let record = sm.ledger().get(&info.id);
                let licensed = record.is_some_and(|r| {
                    r.owner == h.id && r.state == RecordState::Running && r.owner_boot == boot
                });
                if !licensed {
                    return Err(format!(
                        "{} runs {} but its ledger says {}",
                        h.id,
                        info.id,
                        record.map_or("nothing".to_string(), |r| format!(
                            "{} at {} (epoch {})",
                            r.state.name(),
                            r.owner,
                            r.epoch
                        ))
                    ));
                }
            }
        }
        if let Some((id, hosts)) = running.iter().find(|(_, h)| h.len() > 1) {
            return Err(format!(
                "{id} runs on {hosts:?} at once, each holding its store lease"
            ));
        }
        if let Some(cap) = self.app.manifest.max_instances_cluster
            && let Some(ledger) = self.best_ledger()
        {
            let live = ledger.live_instances(&self.app.measurement);
            if live > cap as usize {
                return Err(format!(
                    "the ledger holds {live} live instances, over the cluster cap {cap}"
                ));
            }
        }
        Ok(())
    }

    /// Every member that applied more entries since the last step: its state at that index
    /// is the one every other member reported there; and the furthest state reached moves
    /// only forward along the history.
    fn check_history(&mut self) -> Result<(), String> {
        let mut best: Option<(u64, usize)> = None;
        for i in 0..self.hosts.len() {
            let Some(sm) = &self.hosts[i].sm else {
                continue;
            };
            let (applied, digest) = sm.store_digest();
            let rejoining = sm.store_status().rejoining;
            self.hosts[i].rejoining = rejoining;
            if best.is_none_or(|(b, _)| applied > b) {
                best = Some((applied, i));
            }
            if applied == self.applied[i] || applied == 0 {
                continue;
            }
            self.applied[i] = applied;
            match self.digests.get(&applied) {
                Some((j, d)) if *d != digest => {
                    return Err(format!(
                        "store members disagree at applied index {applied}: {} and {} hold different states",
                        self.hosts[*j].id, self.hosts[i].id
                    ));
                }
                Some(_) => {}
                None => {
                    if self.digests.len() == DIGESTS_MAX {
                        self.digests.pop_first();
                    }
                    self.digests.insert(applied, (i, digest));
                }
            }
        }
        if let Some((applied, i)) = best
            && applied > self.best_applied
        {
            self.best_applied = applied;
            let ledger = self.hosts[i].sm.as_ref().expect("up").ledger().clone();
            ledger.check_invariants();
            self.check_ledger(&ledger)?;
        }
        Ok(())
    }

    /// Notes every change of an enclave's state at an SM, for the trace.
    fn trace_states(&mut self) {
        let mut now = BTreeMap::new();
        for (i, h) in self.hosts.iter().enumerate() {
            if let Some(sm) = &h.sm {
                for info in sm.list() {
                    now.insert((i, info.id), info.state);
                }
            }
        }
        let mut lines = Vec::new();
        for (k, state) in &now {
            if self.states.get(k) != Some(state) {
                lines.push(format!("{}: {} is {state:?}", self.hosts[k.0].id, k.1));
            }
        }
        for k in self.states.keys() {
            if !now.contains_key(k) {
                lines.push(format!("{}: {} is gone", self.hosts[k.0].id, k.1));
            }
        }
        self.states = now;
        for l in lines {
            self.note(l);
        }
    }

    /// A ledger further along the history than any before: nothing in it went back.
    fn check_ledger(&mut self, ledger: &godwit_proto::Ledger) -> Result<(), String> {
        for r in ledger.records() {
            if let Some((epoch, durable)) = self.seen.get(&r.id) {
                if r.epoch < *epoch {
                    return Err(format!(
                        "{}'s epoch went back from {epoch} to {}",
                        r.id, r.epoch
                    ));
                }
                if !r.durable.covers(durable) {
                    return Err(format!(
                        "{}'s recorded counters or sealed versions went back: {:?} after {:?}",
                        r.id, r.durable, durable
                    ));
                }
            }
        }
        self.seen = ledger
            .records()
            .map(|r| (r.id, (r.epoch, r.durable.clone())))
            .collect();
        Ok(())
    }

    /// After host `i`'s SM handled its timer: no deadline of it lies in the past.
    pub(crate) fn check_waits(&self, i: usize) -> Result<(), String> {
        let (Some(sm), Some(hw)) = (&self.hosts[i].sm, &self.hosts[i].hw) else {
            return Ok(());
        };
        if let Some(at) = sm.poll_timeout() {
            let now = hw.now();
            if at.is_at_or_after(now).is_ok_and(|later| !later) {
                return Err(format!(
                    "{} handled its timer but still has a deadline in the past",
                    self.hosts[i].id
                ));
            }
        }
        Ok(())
    }

    /// Refuses `bytes` if they hold any secret (canaries and sealing keys) in the clear.
    pub(crate) fn scan(&self, bytes: &[u8], what: &str) -> Result<(), String> {
        if bytes.len() < 32 {
            return Ok(());
        }
        for s in &self.secrets {
            let head = s[0];
            let mut from = 0;
            while let Some(p) = bytes[from..].iter().position(|&b| b == head) {
                let at = from + p;
                if bytes.len() - at < 32 {
                    break;
                }
                if bytes[at..at + 32] == s[..] {
                    return Err(format!(
                        "{what} of {} bytes carries a secret in the clear at offset {at}",
                        bytes.len()
                    ));
                }
                from = at + 1;
            }
        }
        Ok(())
    }

    /// Every blob on every host's disk: sealed, never plaintext.
    pub(crate) fn scan_disks(&self) -> Result<(), String> {
        use godwit_monitor::BlobStore;
        for h in &self.hosts {
            for (enclave, slot) in h.disk.keys() {
                if let Ok(Some(blob)) = h.disk.get(enclave, &slot) {
                    self.scan(&blob, &format!("the blob {enclave}/{slot} on {}", h.id))?;
                }
            }
        }
        Ok(())
    }

    /// What the SMs logged since the last step (at debug and above): no secret in hex, as
    /// bytes, or as a byte array's `Debug` form.
    pub(crate) fn scan_logs(&mut self) -> Result<(), String> {
        let Some(sink) = &self.log_sink else {
            return Ok(());
        };
        let text = std::mem::take(&mut *sink.lock().unwrap_or_else(|p| p.into_inner()));
        if text.is_empty() {
            return Ok(());
        }
        self.summary.scanned += 1;
        self.scan(&text, "the SMs' log")?;
        let text = String::from_utf8_lossy(&text);
        for s in &self.secrets {
            let hex: String = s.iter().map(|b| format!("{b:02x}")).collect();
            let debug = format!("{:?}", &s[..8]);
            let debug = &debug[..debug.len() - 1];
            if text.contains(&hex) || text.contains(debug) {
                return Err("the SMs' log carries a secret in the clear".into());
            }
        }
        Ok(())
    }
}
