//! The SM's store member in the SM: its messages ride the SM's attested channels, its
//! records go to the host's disk sealed, and the SM learns every outcome of its writes
//! from the member's own applied log — never from the host.
//!
//! The host has no entry point through which to hand the SM a store outcome (the first
//! wave's `handle_store_reply` let a hostile daemon answer an ABORT with "applied, you
//! own it" while the receiver ran):
//!
//! ```compile_fail
//! fn forge(sm: &mut godwit_monitor::Monitor, reply: godwit_proto::StoreReply) {
//!     sm.handle_store_reply(godwit_monitor::RequestId(0), reply);
//! }
//! ```
//!
//! nor one that hands out the hardware component (it let the host derive any sealing key):
//!
//! ```compile_fail
//! fn keys(sm: &godwit_monitor::Monitor, app: &godwit_wire::Measurement) {
//!     let _ = sm.hardware().sealing_key(app);
//! }
//! ```

use godwit_proto::{Ledger, LedgerOp, RecordState, StoreReply};
use godwit_store::Output;
use godwit_wire::HostId;

use crate::{Action, BlobFate, EnclaveState, Event, Monitor, MonitorError, RequestId};

/// How long the SM keeps trying to reach and attest a host the operator asked to add.
pub const ADMISSION_WINDOW: std::time::Duration = std::time::Duration::from_secs(300);
/// How soon it dials such a host again after a failed attempt.
const ADMISSION_REDIAL: std::time::Duration = std::time::Duration::from_secs(1);
/// Most store probes under way at once.
const PROBES_MAX: usize = 16;
/// Most hosts being admitted at once.
const ADMISSIONS_MAX: usize = 16;

/// A host the operator asked to add, not attested yet.
#[derive(Debug)]
pub(crate) struct Admission {
    /// Where it listens.
    pub(crate) addr: String,
    /// The end of the admission window.
    until: godwit_hw::TrustedInstant,
    /// When to dial it again, after a failed attempt.
    pub(crate) redial: Option<godwit_hw::TrustedInstant>,
}

/// What the SM tells the host about its store member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreStatus {
    /// The leader this member knows of.
    pub leader: Option<HostId>,
    /// The current term.
    pub term: u64,
    /// The last log index applied here.
    pub applied: u64,
    /// Voters, by host.
    pub voters: Vec<HostId>,
    /// Learners, by host.
    pub learners: Vec<HostId>,
    /// Whether this SM holds a lease (heard from a store majority lately): it releases
    /// results only then.
    pub lease: bool,
    /// Whether the member lost its records and has not caught up yet.
    pub rejoining: bool,
    /// The store this member belongs to (the hash of its founders), hex, once known.
    pub cluster: Option<String>,
    /// How long ago this member last took a store message from each peer.
    pub heard: Vec<(HostId, std::time::Duration)>,
}

impl Monitor {
    /// Carries out what the store member asks: messages to peers, records to the host,
    /// outcomes to the SM's pending writes.
    pub(crate) fn pump_store(&mut self) {
        let mut applied = false;
        while let Some(out) = self.store.poll_output() {
            match out {
                Output::Send { to, bytes } => self.send_store(&to, &bytes),
                Output::Persist(w) => self.actions.push_back(Action::Persist(w)),
                Output::Outcome { seq, outcome } => {
                    applied = true;
                    let reply = match outcome {
                        Some(o) => StoreReply::Outcome(o),
                        None => StoreReply::Unavailable("no answer from the store in time".into()),
                    };
                    self.store_reply(RequestId(seq), reply);
                }
                Output::LeaseRenewed => self.release_all(),
                Output::Applied => applied = true,
                Output::Membership(change) => {
                    applied = true;
                    tracing::info!(?change, "store membership changed");
                    self.event(Event::Membership(change));
                }
                other => tracing::debug!(?other, "store output"),
            }
        }
        if applied {
            self.reconcile();
        }
        self.check_invariants();
    }

    /// The host stored record `number` (and every one before it) durably.
    pub fn persisted(&mut self, number: u64) {
        if let Err(e) = self.store.persisted(number) {
            tracing::error!(error = %e, "the component's counter could not move: the store waits");
        }
        self.pump_store();
    }

    /// The ledger as this SM's member applied it.
    pub fn ledger(&self) -> &Ledger {
        &self.store.state().ledger
    }

    /// The store's members, with their hosts and addresses.
    pub fn store_members(&self) -> Vec<godwit_store::MemberInfo> {
        self.store.state().members.values().cloned().collect()
    }

    /// What the SM's store member knows.
    pub fn store_status(&self) -> StoreStatus {
        let (voters, learners) = self.store.membership();
        let now = self.hw.now();
        StoreStatus {
            leader: self.store.leader().cloned(),
            term: self.store.term(),
            applied: self.store.applied(),
            voters,
            learners,
            lease: self.store.lease_valid(now),
            rejoining: self.store.rejoining(),
            cluster: self.store.cluster().map(hex::encode),
            heard: self
                .store
                .heard()
                .iter()
                .map(|(h, t)| (h.clone(), now.duration_since(*t).unwrap_or_default()))
                .collect(),
        }
    }

    /// Asks the store to add `host` (listening at `addr`): the SM attests it first (over
    /// a channel to it; while it cannot be reached, for up to [`ADMISSION_WINDOW`], so that
    /// the operator may start it after asking), then proposes it as a learner; the leader
    /// makes it a voter once it caught up. The outcome comes as [`Event::Membership`] or
    /// [`Event::MembershipRefused`].
    pub fn add_member(&mut self, host: HostId, addr: String) -> Result<(), MonitorError> {
        if host == *self.host() {
            return Err(MonitorError::BadDestination(host));
        }
        if self.store.is_member(&host) {
            return Err(MonitorError::Store(format!("{host} is a member already")));
        }
        if addr.len() > godwit_store::ADDR_BYTES_MAX {
            return Err(MonitorError::Store(format!(
                "an address of {} bytes (at most {})",
                addr.len(),
                godwit_store::ADDR_BYTES_MAX
            )));
        }
        if self.admitting.len() >= ADMISSIONS_MAX && !self.admitting.contains_key(&host) {
            return Err(MonitorError::Store(format!(
                "{ADMISSIONS_MAX} hosts are being admitted already"
            )));
        }
        let until = self.hw.now().saturating_add(ADMISSION_WINDOW);
        self.admitting.insert(
            host.clone(),
            Admission {
                addr,
                until,
                redial: None,
            },
        );
        let conn = self.dial(&host);
        if self.net.is_open(conn) {
            self.admit(&host);
        }
        Ok(())
    }

    /// A channel to `host` opened: if the operator asked to add it, propose it now that
    /// it is attested.
    pub(crate) fn admit(&mut self, host: &HostId) {
        let Some(a) = self.admitting.remove(host) else {
            return;
        };
        if let Err(e) = self.store.add_member(host, &a.addr) {
            self.event(Event::MembershipRefused {
                host: host.clone(),
                reason: e.to_string(),
            });
        }
    }

    /// A channel to a host the operator asked to add closed before it attested: dial
    /// again shortly while the admission window lasts.
    pub(crate) fn admission_failed(&mut self, host: &HostId, reason: &str) {
        let now = self.hw.now();
        let Some(a) = self.admitting.get_mut(host) else {
            return;
        };
        if now.is_at_or_after(a.until).unwrap_or(true) {
            self.admission_refused(host, reason);
        } else {
            tracing::debug!(%host, reason, "not attested yet; dialling again");
            a.redial = Some(now.saturating_add(ADMISSION_REDIAL));
        }
    }

    /// A host the operator asked to add is not admitted.
    pub(crate) fn admission_refused(&mut self, host: &HostId, reason: &str) {
        if self.admitting.remove(host).is_some() {
            self.event(Event::MembershipRefused {
                host: host.clone(),
                reason: format!("it could not be attested: {reason}"),
            });
        }
    }

    /// Dials again the hosts being admitted whose redial time came.
    pub(crate) fn admission_timeouts(&mut self, now: godwit_hw::TrustedInstant) {
        let due: Vec<HostId> = self
            .admitting
            .iter()
            .filter(|(_, a)| {
                a.redial
                    .is_some_and(|t| now.is_at_or_after(t).unwrap_or(true))
            })
            .map(|(h, _)| h.clone())
            .collect();
        for host in due {
            if let Some(a) = self.admitting.get_mut(&host) {
                a.redial = None;
            }
            let conn = self.dial(&host);
            if self.net.is_open(conn) {
                self.admit(&host);
            }
        }
    }

    /// Writes a harmless entry (this SM re-announces its boot) and reports, as
    /// [`Event::StoreProbed`], when its own member applied it: how an operator or a
    /// benchmark sees that the store commits from here, and how fast.
    pub fn probe_store(&mut self) -> Result<u64, MonitorError> {
        let op = LedgerOp::HostBooted {
            host: self.host().clone(),
            boot: self.hw.boot_epoch().to_bytes(),
        };
        let probes = self
            .requests
            .values()
            .filter(|p| matches!(p, crate::Pending::Probe(_)))
            .count();
        if probes >= PROBES_MAX {
            return Err(MonitorError::Store(format!(
                "{PROBES_MAX} probes are under way already"
            )));
        }
        let seq = self
            .store
            .propose(op)
            .map_err(|e| MonitorError::Store(e.to_string()))?;
        self.requests
            .insert(RequestId(seq), crate::Pending::Probe(seq));
        Ok(seq)
    }

    /// Asks the store to remove `host`; what it ran is recorded lost when the removal
    /// applies, and it stops releasing results within a lease.
    pub fn remove_member(&mut self, host: &HostId) -> Result<(), MonitorError> {
        self.store
            .remove_member(host)
            .map_err(|e| MonitorError::Store(e.to_string()))
    }

    /// After entries were applied: an enclave this SM holds that the ledger no longer
    /// lets it run (recorded lost, moved, gone) is wiped, unless a migration holds it (the
    /// migration settles it). The SM acts only on its own applied log.
    fn reconcile(&mut self) {
        let me = self.hw.host().clone();
        let boot = self.hw.boot_epoch().to_bytes();
        // An outgoing migration that has not paused its enclave holds nothing the store
        // decided: once the ledger no longer lets this host run the enclave (its host was
        // removed, say), it is given up, and the enclave is wiped below like any other.
        let given_up: Vec<godwit_proto::MigrationId> = self
            .migrations
            .unpaused_out()
            .into_iter()
            .filter(|(_, id)| {
                !self.store.state().ledger.get(id).is_some_and(|rec| {
                    rec.owner == me && rec.owner_boot == boot && rec.state == RecordState::Running
                })
            })
            .map(|(m, _)| m)
            .collect();
        for m in given_up {
            tracing::warn!(migration = %m, "the ledger no longer lets this host run the enclave: migration given up");
            let _ = self.cancel_migration(m);
        }
        self.settle_from_ledger();
        let stale: Vec<(godwit_wire::EnclaveId, BlobFate)> = self
            .enclaves
            .iter()
            .filter(|(id, r)| {
                r.state != EnclaveState::Registering && !self.migrations.is_migrating(id)
            })
            .filter_map(|(id, _)| {
                let record = self.store.state().ledger.get(id);
                let licensed = record.is_some_and(|rec| {
                    rec.owner == me && rec.owner_boot == boot && rec.state == RecordState::Running
                });
                if licensed {
                    return None;
                }
                let keep =
                    record.is_some_and(|rec| rec.owner == me && rec.state == RecordState::Lost);
                Some((
                    *id,
                    if keep {
                        BlobFate::Keep
                    } else {
                        BlobFate::Delete
                    },
                ))
            })
            .collect();
        for (id, fate) in stale {
            tracing::warn!(enclave = %id, "the ledger no longer lets this host run the enclave: wiped");
            self.wipe(
                id,
                "the ledger no longer lets this host run the enclave",
                fate,
            );
        }
    }

    /// The applied index of this SM's store member and a digest of its replicated state
    /// there (members at the same index agree; for the simulator's checks).
    pub fn store_digest(&self) -> (u64, [u8; 32]) {
        self.store.state_digest()
    }

    /// The store member's internals, for debugging (term, role, log indices, progress).
    pub fn store_debug(&self) -> String {
        format!("{:?}", self.store)
    }

    /// The store's lease (the longest, if this member does not know it yet: waits on it
    /// stay safe).
    pub(crate) fn store_lease(&self) -> std::time::Duration {
        self.store.lease().unwrap_or(godwit_store::LEASE_MAX)
    }

    /// Whether this SM holds its store lease now (it releases results only then).
    pub fn holds_lease(&self) -> bool {
        self.lease_held()
    }

    /// Whether results may be released now: the SM heard from a store majority within
    /// the lease.
    pub(crate) fn lease_held(&self) -> bool {
        self.store.lease_valid(self.hw.now())
    }

    /// The lease runs again: every result waiting only for it goes out.
    fn release_all(&mut self) {
        let ids: Vec<_> = self.enclaves.keys().copied().collect();
        for id in ids {
            self.release_withheld(id);
        }
    }

    /// The store this SM belongs to, once known.
    pub(crate) fn cluster(&self) -> Option<[u8; 32]> {
        self.store.cluster()
    }
}
