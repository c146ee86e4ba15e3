//! The invariants checked after every step (DESIGN.md §5):
//!
//! 1. **No fork**: at most one SM runs each enclave, and an SM runs one only while the
//!    ledger records it running there, under that SM's boot epoch.
//! 2. **Committed transfers are never undone**: a record's epoch never goes back.
//! 3. **No rollback**: a record's counters and sealed versions never go back; a released
//!    tick is larger than every one released before it; a check sees a counter and sealed
//!    data at least as new as every released tick (in `World::released`).
//! 4. **No plaintext outside an SM**: no frame, store write or blob on a host's disk holds
//!    an enclave's canary (in its memory and sealed data) or a sealing key.
//! 5. **Limits hold**: no SM holds more instances of the application than its manifest
//!    allows per host, and the ledger holds no more live ones than the cluster cap.
//! 6. **Bounded waits**: once an SM has handled its timer, none of its deadlines lies in
//!    the past.
//! 7. Each SM's own consistency checks (`Monitor::check_invariants`) and the ledger's.
//!
//! The liveness phase adds: every migration resolves, and every enclave ends up running on
//! exactly one host or recorded lost with its sealed data intact (in `World::finish`).

use std::collections::BTreeMap;

use godwit_monitor::EnclaveState;
use godwit_proto::RecordState;
use godwit_wire::EnclaveId;

use crate::world::World;

impl World {
    pub(crate) fn check_step(&mut self) -> Result<(), String> {
        self.trace_states();
        let mut running: BTreeMap<EnclaveId, Vec<String>> = BTreeMap::new();
        let per_host = self.app.manifest.max_instances_per_host;
        for h in &self.hosts {
            let Some(sm) = &h.sm else { continue };
            sm.check_invariants();
            let present = sm.instances_of(&self.app.measurement);
            if present > per_host {
                return Err(format!(
                    "{} holds {present} instances of tally, over its limit of {per_host}",
                    h.id
                ));
            }
            let boot = sm.hardware().boot_epoch().to_bytes();
            for info in sm.list() {
                if info.state != EnclaveState::Running {
                    continue;
                }
                running.entry(info.id).or_default().push(h.id.to_string());
                let record = self.ledger.get(&info.id);
                let licensed = record.is_some_and(|r| {
                    r.owner == h.id && r.state == RecordState::Running && r.owner_boot == boot
                });
                if !licensed {
                    return Err(format!(
                        "{} runs {} but the ledger says {}",
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
            return Err(format!("{id} runs on {hosts:?} at once"));
        }
        if let Some(cap) = self.app.manifest.max_instances_cluster {
            let live = self.ledger.live_instances(&self.app.measurement);
            if live > cap as usize {
                return Err(format!(
                    "the ledger holds {live} live instances, over the cluster cap {cap}"
                ));
            }
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

    /// After the store applied a write: nothing in the ledger went back.
    pub(crate) fn check_ledger(&mut self) -> Result<(), String> {
        for r in self.ledger.records() {
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
        self.seen = self
            .ledger
            .records()
            .map(|r| (r.id, (r.epoch, r.durable.clone())))
            .collect();
        Ok(())
    }

    /// After host `i`'s SM handled its timer: no deadline of it lies in the past.
    pub(crate) fn check_waits(&self, i: usize) -> Result<(), String> {
        let Some(sm) = &self.hosts[i].sm else {
            return Ok(());
        };
        if let Some(at) = sm.poll_timeout() {
            let now = sm.hardware().now();
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
}
