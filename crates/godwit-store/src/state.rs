//! The replicated state: the ownership ledger, the members with their hosts, the hosts
//! that left, and each host's proposals applied so far (so a proposal asked again is
//! applied once). Every member applies the same entries in the same order and reaches the
//! same state; snapshots carry it to members that fell behind.

use std::collections::{BTreeMap, BTreeSet};

use godwit_hw::BootEpoch;
use godwit_proto::{Boot, Ledger, LedgerOp, LedgerOutcome, LedgerRefusal};
use godwit_wire::HostId;
use serde::{Deserialize, Serialize};

use crate::wire::{NodeId, node_id};

/// Most proposals of one host remembered as applied (beyond its lowest unresolved one).
const SESSION_DONE_MAX: usize = 8192;

/// A member of the store, as the replicated state knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Its host.
    pub host: HostId,
    /// Where the host listens, as the member that added it said (a hint for dialling;
    /// the channel's attestation decides who answers).
    pub addr: String,
}

/// A proposal: a ledger write on behalf of a host, numbered by that host's SM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Proposal {
    /// The host whose SM proposed it (the leader accepts it only from that host).
    pub(crate) proposer: HostId,
    /// The proposer SM's boot epoch.
    pub(crate) boot: Boot,
    /// Its number among the boot's proposals.
    pub(crate) seq: u64,
    /// Every proposal of this boot numbered below this one is resolved.
    pub(crate) low: u64,
    /// The write.
    pub(crate) op: LedgerOp,
}

/// One host's applied proposals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    boot: Boot,
    low: u64,
    done: BTreeSet<u64>,
}

/// The state every member replicates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replicated {
    /// The store: the hash of its founders (and its lease), set when their entries are
    /// applied.
    pub cluster: Option<[u8; 32]>,
    /// The store's lease, ms, from its founders' entries.
    pub lease_ms: Option<u64>,
    /// The ownership ledger.
    pub ledger: Ledger,
    /// The current members (voters and learners), by id.
    pub members: BTreeMap<NodeId, MemberInfo>,
    /// Hosts removed from the store (until added again): nothing they send is acted on.
    pub left: BTreeSet<HostId>,
    sessions: BTreeMap<HostId, Session>,
}

/// What applying a proposal did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // one per applied entry, consumed at once
pub(crate) enum Applied {
    /// The ledger's outcome.
    Outcome(LedgerOutcome),
    /// The same proposal was applied before: nothing happened.
    Repeat,
}

/// Whether `boot` is older than `current` (or another boot under the same count: a count
/// that went back).
fn older(boot: &Boot, current: &Boot) -> bool {
    let (b, c) = (BootEpoch::count_of(boot), BootEpoch::count_of(current));
    b < c || (b == c && boot != current)
}

impl Replicated {
    /// Applies a proposal. A proposal whose op names another author is refused; one from
    /// an older boot of its host than the newest that proposed is refused as stale (that
    /// SM is gone, or its component's boot count went back); one applied before is a
    /// repeat.
    pub(crate) fn apply_proposal(&mut self, p: &Proposal) -> Applied {
        if *p.op.author() != p.proposer {
            return Applied::Outcome(refuse(
                LedgerRefusal::NotParty {
                    by: p.proposer.clone(),
                },
                None,
            ));
        }
        let session = self
            .sessions
            .entry(p.proposer.clone())
            .or_insert_with(|| Session {
                boot: p.boot,
                ..Session::default()
            });
        if older(&p.boot, &session.boot) {
            return Applied::Outcome(refuse(
                LedgerRefusal::StaleBoot {
                    host: p.proposer.clone(),
                },
                None,
            ));
        } else if p.boot != session.boot {
            *session = Session {
                boot: p.boot,
                ..Session::default()
            };
        }
        if p.seq < session.low || session.done.contains(&p.seq) {
            return Applied::Repeat;
        }
        session.low = session.low.max(p.low);
        let low = session.low;
        session.done.retain(|s| *s >= low);
        session.done.insert(p.seq);
        while session.done.len() > SESSION_DONE_MAX {
            // Bounded: an SM keeps far fewer proposals in flight; forget the oldest.
            let oldest = *session.done.iter().next().expect("non-empty");
            session.done.remove(&oldest);
            session.low = session.low.max(oldest + 1);
        }
        Applied::Outcome(self.ledger.apply(&p.op))
    }

    /// A member joined: `info`'s host, at id `id`. Refused (false) if the id is not the
    /// host's, or another host already holds it.
    pub(crate) fn add_member(&mut self, id: NodeId, info: MemberInfo) -> bool {
        if node_id(&info.host) != id {
            return false;
        }
        if self.members.get(&id).is_some_and(|m| m.host != info.host) {
            return false;
        }
        self.left.remove(&info.host);
        self.members.insert(id, info);
        true
    }

    /// A member left: what its host ran is recorded lost (see [`LedgerOp::HostLeft`]).
    pub(crate) fn remove_member(&mut self, id: NodeId) -> Option<HostId> {
        let info = self.members.remove(&id)?;
        self.left.insert(info.host.clone());
        self.ledger.apply(&LedgerOp::HostLeft {
            host: info.host.clone(),
        });
        Some(info.host)
    }

    /// The member at `id`'s host, if it is a member.
    pub fn host_of(&self, id: NodeId) -> Option<&HostId> {
        self.members.get(&id).map(|m| &m.host)
    }

    /// The encoding carried in snapshots.
    pub(crate) fn encode(&self) -> Vec<u8> {
        // Invariant: the state always encodes.
        postcard::to_stdvec(self).expect("the replicated state encodes")
    }

    /// Decodes and checks a snapshot's state: bounded, and consistent (every check a
    /// peer's bytes could fail returns an error, never a panic).
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, String> {
        let s: Self =
            godwit_wire::decode(bytes, crate::SNAPSHOT_BYTES_MAX).map_err(|e| e.to_string())?;
        s.ledger.validate()?;
        for (id, m) in &s.members {
            if node_id(&m.host) != *id {
                return Err(format!("member {id:x} is not {}'s id", m.host));
            }
        }
        Ok(s)
    }
}

fn refuse(reason: LedgerRefusal, record: Option<godwit_proto::EnclaveRecord>) -> LedgerOutcome {
    LedgerOutcome::Refused { reason, record }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> HostId {
        HostId::new(s).unwrap()
    }

    fn boot(count: u64, random: u8) -> Boot {
        let mut b = [random; 16];
        b[..8].copy_from_slice(&count.to_be_bytes());
        b
    }

    fn proposal(host: &str, b: Boot, seq: u64, low: u64) -> Proposal {
        Proposal {
            proposer: h(host),
            boot: b,
            seq,
            low,
            op: LedgerOp::HostBooted {
                host: h(host),
                boot: b,
            },
        }
    }

    #[test]
    fn a_proposal_applies_once_and_a_stale_boot_is_refused() {
        let mut s = Replicated::default();
        let b2 = boot(2, 1);
        assert!(matches!(
            s.apply_proposal(&proposal("a", b2, 0, 0)),
            Applied::Outcome(LedgerOutcome::Applied(_))
        ));
        assert_eq!(s.apply_proposal(&proposal("a", b2, 0, 0)), Applied::Repeat);
        assert!(matches!(
            s.apply_proposal(&proposal("a", b2, 1, 1)),
            Applied::Outcome(_)
        ));
        // Below the low mark: a repeat.
        assert_eq!(s.apply_proposal(&proposal("a", b2, 0, 0)), Applied::Repeat);
        // An earlier boot, or another boot under the same count.
        for stale in [boot(1, 1), boot(2, 9)] {
            assert!(matches!(
                s.apply_proposal(&proposal("a", stale, 7, 0)),
                Applied::Outcome(LedgerOutcome::Refused {
                    reason: LedgerRefusal::StaleBoot { .. },
                    ..
                })
            ));
        }
        // A newer boot starts a new session.
        assert!(matches!(
            s.apply_proposal(&proposal("a", boot(3, 1), 0, 0)),
            Applied::Outcome(LedgerOutcome::Applied(_))
        ));
    }

    #[test]
    fn a_proposal_on_behalf_of_another_host_is_refused() {
        let mut s = Replicated::default();
        let mut p = proposal("a", boot(1, 1), 0, 0);
        p.proposer = h("b");
        assert!(matches!(
            s.apply_proposal(&p),
            Applied::Outcome(LedgerOutcome::Refused {
                reason: LedgerRefusal::NotParty { .. },
                ..
            })
        ));
        assert!(s.ledger.boot_of(&h("a")).is_none());
    }

    #[test]
    fn members_are_bound_to_their_hosts_and_once() {
        let mut s = Replicated::default();
        let info = |host: &str| MemberInfo {
            host: h(host),
            addr: "127.0.0.1:1".into(),
        };
        assert!(!s.add_member(5, info("a")), "an id that is not a's");
        assert!(s.add_member(node_id(&h("a")), info("a")));
        assert!(s.add_member(node_id(&h("a")), info("a")), "again: the same");
        assert_eq!(s.members.len(), 1);
        assert_eq!(s.remove_member(node_id(&h("a"))), Some(h("a")));
        assert!(s.left.contains(&h("a")));
        assert!(s.add_member(node_id(&h("a")), info("a")));
        assert!(!s.left.contains(&h("a")));
    }

    #[test]
    fn a_snapshot_that_does_not_decode_or_check_is_refused() {
        let mut s = Replicated::default();
        s.add_member(
            node_id(&h("a")),
            MemberInfo {
                host: h("a"),
                addr: String::new(),
            },
        );
        let good = s.encode();
        assert_eq!(Replicated::decode(&good).unwrap(), s);
        assert!(Replicated::decode(&good[..good.len() - 1]).is_err());
        // A member filed under another host's id.
        let mut forged = s.clone();
        let (_, m) = forged.members.pop_first().unwrap();
        forged.members.insert(7, m);
        assert!(Replicated::decode(&forged.encode()).is_err());
    }
}
