//! One SM's member of the store: raft-rs's `RawNode` (the engine TiKV runs on) driven from
//! inside the SM, the replicated state it applies, and the records that make it durable.
//!
//! Sans-IO. Inputs: store messages from peer SMs (with the attested peer they came on),
//! the host's word that a record is durable, and wake-ups (the member reads the trusted
//! timer itself). Outputs ([`Output`]): messages for peer SMs, records for the host's
//! disk, the outcomes of this SM's proposals (read from its own applied log, never from
//! the host), and lease renewals.
//!
//! Call order: after every input, drain [`Member::poll_output`]; sleep until
//! [`Member::poll_timeout`] and then call [`Member::handle_timeout`].

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use godwit_hw::{Hardware, TrustedInstant};
use godwit_proto::{LedgerOp, LedgerOutcome};
use godwit_wire::HostId;
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, Message,
    MessageType,
};
use raft::{RawNode, StateRole};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::log::{ConfImage, EntryImage, HardStateImage, MemLog, SnapshotImage};
use crate::record::{Body, Chain, OpenError, RECORDS_PER_BASE_MAX, StoreWrite, pack, unpack};
use crate::state::{Applied, MemberInfo, Proposal, Replicated};
use crate::wire::{self, NodeId, WireError, node_id};

/// How the member runs.
#[derive(Debug, Clone)]
pub struct MemberConfig {
    /// The hosts that found the store, this one among them, if this member may found it
    /// (only a component that never wrote a record does). Empty: join a store that
    /// exists.
    pub founders: Vec<HostId>,
    /// The store's lease, if this member founds it (see [`LEASE`]); every member then uses
    /// the one its founders wrote into the store's first entries, so all agree on it.
    pub lease: Duration,
    /// The base tick (heartbeats every 2 ticks, elections after 10 to 20).
    pub tick: Duration,
}

impl Default for MemberConfig {
    fn default() -> Self {
        Self {
            founders: Vec::new(),
            lease: LEASE,
            tick: Duration::from_millis(50),
        }
    }
}

/// What the member asks of the SM around it.
#[derive(Debug)]
#[non_exhaustive]
#[allow(clippy::large_enum_variant)] // drained at once, one by one; boxing buys nothing
pub enum Output {
    /// A store message for a peer SM, to go through the attested channel to `to`.
    Send {
        /// The peer.
        to: HostId,
        /// The message.
        bytes: Vec<u8>,
    },
    /// A record for the host's disk; the host reports it durable with its number.
    Persist(StoreWrite),
    /// The outcome of this SM's proposal `seq`, as this member applied it; `None` if it was
    /// not applied in time (it may still be, later: the ledger's writes are safe to ask
    /// again).
    Outcome {
        /// The proposal.
        seq: u64,
        /// The ledger's answer.
        outcome: Option<LedgerOutcome>,
    },
    /// The member heard from a store majority: the lease runs again.
    LeaseRenewed,
    /// The member applied entries or installed a snapshot: the SM's view of the ledger
    /// moved on (it then drops what the ledger no longer lets it run).
    Applied,
    /// A membership change was applied.
    Membership(MembershipChange),
}

/// A membership change, as applied.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MembershipChange {
    /// `host` joined as a learner.
    Learner(HostId),
    /// `host` became a voter.
    Voter(HostId),
    /// `host` left; what it ran is recorded lost.
    Left(HostId),
}

/// Why the SM refused a store message or request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The message did not decode, or named another sender or addressee.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A member of another store (another founding set).
    #[error("{0} belongs to another store")]
    ForeignCluster(HostId),
    /// The sender was removed from the store.
    #[error("{0} was removed from the store")]
    Removed(HostId),
    /// A proposal or a forwarded entry over [`PROPOSAL_BYTES_MAX`].
    #[error("a proposal of {0} bytes (the limit is {PROPOSAL_BYTES_MAX})")]
    TooLarge(usize),
    /// A proposal forwarded on behalf of another host.
    #[error("{peer} forwarded a write on behalf of {author}")]
    NotOnBehalf {
        /// The forwarding peer.
        peer: HostId,
        /// The write's author.
        author: HostId,
    },
    /// A membership change forwarded by a host that is not a voter.
    #[error("{0} may not change the membership")]
    NotVoter(HostId),
    /// A snapshot that does not decode or check.
    #[error("a snapshot from {peer} was refused: {why}")]
    BadSnapshot {
        /// The sender.
        peer: HostId,
        /// Why.
        why: String,
    },
    /// Too many proposals in flight.
    #[error("too many store writes in flight")]
    Busy,
    /// Raft refused the step.
    #[error("raft: {0}")]
    Raft(String),
    /// A membership request that cannot be carried out.
    #[error("{0}")]
    Membership(String),
}

/// A membership change's context: who the member is, and for the founders' entries, the
/// store they found.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ChangeContext {
    member: MemberInfo,
    genesis: Option<[u8; 32]>,
    /// In the founders' entries: the store's lease, ms.
    lease_ms: Option<u64>,
}

/// The largest number of this SM's proposals in flight at once.
pub const PROPOSALS_MAX: usize = 4096;
/// How long a proposal may take before the SM hears "no answer".
const PROPOSAL_TIMEOUT: Duration = Duration::from_millis(2500);
/// How often a proposal not yet applied is handed to Raft again (the same one: applied
/// at most once).
const PROPOSAL_RETRY: Duration = Duration::from_millis(300);
/// Lease probes kept waiting for an answer.
const READS_MAX: usize = 8;
/// The default lease: how long an SM may release results after a majority confirmed a
/// read it sent. The founders write the store's lease into its first entries (and into
/// its cluster id), so every member uses the same one: the rule that an adopted instance
/// waits out the last owner's lease holds only then.
pub const LEASE: Duration = Duration::from_millis(2000);
/// Shortest and longest lease a store may be founded with.
pub const LEASE_MIN: Duration = Duration::from_millis(200);
/// See [`LEASE_MIN`].
pub const LEASE_MAX: Duration = Duration::from_secs(600);

/// The bound on how much faster one trusted timer may run than another over `lease`
/// (a tenth of it: timers within 10 % of each other), which an adopted instance waits on
/// top of the lease.
pub fn lease_drift(lease: Duration) -> Duration {
    lease / 10
}
/// Most records sealed and not yet reported durable. A new run of the member numbers its
/// records past the last one found and past the counter by more than this, so that no
/// record an earlier run sealed and never reported (the host may keep them) can follow
/// the new run's once it is durable.
pub const RECORDS_AHEAD_MAX: u64 = 256;
/// Largest proposal, and largest entry accepted from a forwarding member.
pub const PROPOSAL_BYTES_MAX: usize = 1024 * 1024;
/// Longest member address.
pub const ADDR_BYTES_MAX: usize = 255;
/// How often a member tells the others it is up.
const HELLO_EVERY: Duration = Duration::from_millis(500);
/// Most peers whose last message time is kept.
const HEARD_MAX: usize = 1024;
/// A vote that matches no member: a member that lost its records casts it in the highest
/// term it may have voted in, so that it votes there for nobody.
const NOBODY: u64 = u64::MAX;

struct Unpersisted {
    /// The record.
    record: u64,
    /// The term of the hard state it holds (for the counter).
    term: u64,
    /// The newest ready it covers, if any.
    ready: Option<u64>,
    /// Messages that may go once it is durable (votes, append responses).
    messages: Vec<Message>,
    /// A snapshot it installs: Raft learns it applied up to there once it is durable.
    snapshot: Option<u64>,
}

struct Inflight {
    op: LedgerOp,
    first: TrustedInstant,
    last: TrustedInstant,
}

/// One SM's store member. See the module documentation for the call order.
pub struct Member {
    hw: Arc<dyn Hardware>,
    host: HostId,
    id: NodeId,
    config: MemberConfig,
    raw: RawNode<MemLog>,
    state: Replicated,
    conf: ConfState,
    chain: Chain,
    unpersisted: VecDeque<Unpersisted>,
    /// The newest ready whose record is durable, not yet reported to Raft.
    outputs: VecDeque<Output>,
    proposals: BTreeMap<u64, Inflight>,
    next_seq: u64,
    reads: BTreeMap<u64, TrustedInstant>,
    next_read: u64,
    next_lease_probe: TrustedInstant,
    lease_until: Option<TrustedInstant>,
    next_tick: TrustedInstant,
    tick_period: Duration,
    soft: (u64, u64, StateRole),
    /// Set while the member lost its records: it casts no vote until it holds the log up
    /// to what the leader had committed when it answered a probe (`Some(index)` once
    /// known).
    rejoining: Option<Option<u64>>,
    /// Random per run: binds this run's lease probes, so that an answer to an earlier
    /// run's probe (same member, same sequence number) renews nothing.
    run: u64,
    /// Leases confirmed by a majority, waiting until this member applied up to the read
    /// index (its state is then at least as new as what the majority had committed).
    awaiting: Vec<(TrustedInstant, u64)>,
    /// The applied index last reported with [`Output::Applied`].
    reported_applied: u64,
    /// Whether this run's first record (its base) is counted: until then the member
    /// handles no ready, so it seals no other record and acts on nothing.
    started: bool,
    /// The number of this run's first record.
    first: u64,
    records_since_base: usize,
    /// The hosts of members that sent this member a message (its ids are derived from
    /// attested hosts): a member that is joining answers the leader before it knows the
    /// membership.
    peers: BTreeMap<NodeId, HostId>,
    /// When this member last took a message from each peer (for the operator).
    heard: BTreeMap<HostId, TrustedInstant>,
    /// For each host whose removal this member applied: the term it was in then (or when
    /// it first heard from the host after that). Only a leader of a later term is heard
    /// from such a host: one re-added and elected since.
    left_terms: BTreeMap<HostId, u64>,
    /// When it next tells the other members it is up.
    next_hello: TrustedInstant,
    /// When a member that lost its records last asked the leader for a snapshot.
    asked_snapshot: Option<TrustedInstant>,
}

/// What opening the member found on the host's disk.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Opened {
    /// Nothing, on a component that never wrote: a new member (a founder, or one that
    /// joins).
    Fresh,
    /// The records, verified.
    Restored,
    /// Records the SM refused: it starts over empty and rejoins from its peers, voting in
    /// no term it may have voted in before, and not at all until it caught up. The host
    /// should keep the refused records aside.
    Refused(OpenError),
}

fn raft_config(id: NodeId, applied: u64) -> raft::Config {
    raft::Config {
        id,
        applied,
        election_tick: 10,
        heartbeat_tick: 2,
        // The randomised election timeout comes from the tick period, drawn from the
        // hardware's random source (raft-rs draws its own from the OS, which a simulation
        // could not repeat).
        min_election_tick: 10,
        max_election_tick: 11,
        max_size_per_msg: 1024 * 1024,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        max_uncommitted_size: 64 * 1024 * 1024,
        max_committed_size_per_ready: 16 * 1024 * 1024,
        ..raft::Config::default()
    }
}

/// raft-rs's log lines, at debug level in tracing.
struct Log;

impl slog::Drain for Log {
    type Ok = ();
    type Err = slog::Never;
    fn log(&self, record: &slog::Record<'_>, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        if record.level().is_at_least(slog::Level::Warning) {
            tracing::debug!(target: "raft", "{}", record.msg());
        } else {
            tracing::trace!(target: "raft", "{}", record.msg());
        }
        Ok(())
    }
}

/// The founders' entries: one membership change per founder, in id order, the same on
/// every founder.
fn genesis(founders: &[HostId], lease: Duration) -> ([u8; 32], Vec<Entry>) {
    let mut ids: Vec<(NodeId, &HostId)> = founders.iter().map(|h| (node_id(h), h)).collect();
    ids.sort();
    ids.dedup();
    let mut h = Sha256::new();
    let lease = lease.clamp(LEASE_MIN, LEASE_MAX);
    let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
    h.update(b"godwit store genesis v2");
    h.update(lease_ms.to_be_bytes());
    for (_, host) in &ids {
        h.update((host.as_str().len() as u64).to_be_bytes());
        h.update(host.as_str().as_bytes());
    }
    let cluster: [u8; 32] = h.finalize().into();
    let entries = ids
        .iter()
        .enumerate()
        .map(|(i, (id, host))| {
            let ctx = ChangeContext {
                member: MemberInfo {
                    host: (*host).clone(),
                    addr: String::new(),
                },
                genesis: Some(cluster),
                lease_ms: Some(lease_ms),
            };
            let mut e = Entry {
                index: i as u64 + 1,
                term: 1,
                data: single_change(ConfChangeType::AddNode, *id)
                    .write_to_bytes()
                    .expect("a configuration change encodes")
                    .into(),
                context: postcard::to_stdvec(&ctx).expect("a context encodes").into(),
                ..Default::default()
            };
            e.set_entry_type(EntryType::EntryConfChangeV2);
            e
        })
        .collect();
    (cluster, entries)
}

fn single_change(kind: ConfChangeType, id: NodeId) -> ConfChangeV2 {
    let mut c = ConfChangeSingle::default();
    c.set_change_type(kind);
    c.node_id = id;
    let mut cc = ConfChangeV2::default();
    cc.set_changes(vec![c].into());
    cc
}

impl Member {
    /// Opens the member on `hw` from the records the host kept (oldest first).
    pub fn open(
        hw: Arc<dyn Hardware>,
        config: MemberConfig,
        records: &[Vec<u8>],
    ) -> (Self, Opened) {
        let host = hw.host().clone();
        let id = node_id(&host);
        let mut chain = Chain::new(Arc::clone(&hw), 1, [0; 32]);
        let (_, counted) = unpack(hw.nv_counter().get());
        let restored = chain.restore(records).and_then(|r| {
            // Invariant kept by this SM: it sealed only snapshots it had checked. A state
            // that no longer decodes (a build with other limits) is refused, not trusted.
            if r.log.snapshot.data.is_empty() || Replicated::decode(&r.log.snapshot.data).is_ok() {
                Ok(r)
            } else {
                Err(OpenError::Corrupt {
                    what: "the snapshot in the base record (it does not decode)".into(),
                })
            }
        });
        let (log, opened, rejoining) = match restored {
            Ok(r) if records.is_empty() => {
                let mut log = r.log;
                if config.founders.contains(&host) {
                    let (_, entries) = genesis(&config.founders, config.lease);
                    log.hard_state = HardStateImage {
                        term: 1,
                        vote: 0,
                        commit: entries.len() as u64,
                    };
                    log.entries = entries;
                }
                (log, Opened::Fresh, false)
            }
            Ok(r) => (r.log, Opened::Restored, r.rejoining),
            Err(e) => {
                let (term, _) = unpack(hw.nv_counter().get());
                // It may have voted in `term`: it votes there for nobody.
                let log = MemLog {
                    hard_state: HardStateImage {
                        term,
                        vote: if term > 0 { NOBODY } else { 0 },
                        commit: 0,
                    },
                    ..MemLog::default()
                };
                tracing::error!(error = %e, "store records refused; rejoining from the peers with an empty log");
                (log, Opened::Refused(e), true)
            }
        };
        // This run's records start with a base at counter + RECORDS_AHEAD_MAX + 1, and the
        // member does nothing else until that base is counted. Every record an earlier run
        // sealed is either its own base (at most this number, when it opened at the same
        // counter value and acted on nothing) or a record sealed at most RECORDS_AHEAD_MAX
        // past the counter of its time: once this base is counted, a host that hands back
        // an earlier run's longer branch hands back records behind the counter.
        let found = match &opened {
            Opened::Restored => chain.next.saturating_sub(1),
            _ => 0,
        };
        let first = (counted + RECORDS_AHEAD_MAX + 1).max(found + 1);
        chain = Chain::new(Arc::clone(&hw), first, [0; 32]);
        let applied = log.snapshot.index;
        let state = if log.snapshot.data.is_empty() {
            Replicated::default()
        } else {
            // Checked above.
            Replicated::decode(&log.snapshot.data).unwrap_or_default()
        };
        let conf = log.snapshot.conf.conf_state();
        let logger = slog::Logger::root(slog::Drain::fuse(Log), slog::o!());
        // Invariant: the configuration is valid and the log consistent (checked above).
        let raw = RawNode::new(&raft_config(id, applied), log, &logger).expect("raft starts");
        let now = hw.now();
        let mut m = Self {
            host,
            id,
            raw,
            state,
            conf,
            chain,
            unpersisted: VecDeque::new(),
            outputs: VecDeque::new(),
            proposals: BTreeMap::new(),
            next_seq: 0,
            reads: BTreeMap::new(),
            next_read: 0,
            next_lease_probe: now,
            lease_until: None,
            next_tick: now,
            tick_period: config.tick,
            soft: (0, 0, StateRole::Follower),
            rejoining: rejoining.then_some(None),
            run: {
                let mut r = [0u8; 8];
                hw.fill_random(&mut r);
                u64::from_be_bytes(r)
            },
            awaiting: Vec::new(),
            reported_applied: 0,
            started: false,
            first,
            records_since_base: 0,
            peers: BTreeMap::new(),
            heard: BTreeMap::new(),
            left_terms: BTreeMap::new(),
            next_hello: now,
            asked_snapshot: None,
            config,
            hw,
        };
        // Every run starts with a base record: the first of its own numbers.
        m.write_base();
        m.pick_tick_period();
        m.drive();
        (m, opened)
    }

    /// The applied index and a digest of the replicated state at it: two members at the
    /// same index must agree (Raft's state machine safety; the simulator checks it).
    pub fn state_digest(&self) -> (u64, [u8; 32]) {
        (self.applied(), Sha256::digest(self.state.encode()).into())
    }

    /// The store's lease, once this member applied its founding entries (or a snapshot).
    pub fn lease(&self) -> Option<Duration> {
        self.state.lease_ms.map(Duration::from_millis)
    }

    /// When this member last took a message from each peer that sent one.
    pub fn heard(&self) -> &BTreeMap<HostId, TrustedInstant> {
        &self.heard
    }

    /// Whether `host` is a voter or a learner now.
    pub fn is_member(&self, host: &HostId) -> bool {
        let id = node_id(host);
        self.conf.voters.contains(&id) || self.conf.learners.contains(&id)
    }

    /// This member's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The replicated state as this member applied it.
    pub fn state(&self) -> &Replicated {
        &self.state
    }

    /// The current leader's host, if known.
    pub fn leader(&self) -> Option<&HostId> {
        let leader = self.raw.raft.leader_id;
        if leader == self.id {
            return Some(&self.host);
        }
        self.state.host_of(leader)
    }

    /// The current term.
    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// The last applied log index.
    pub fn applied(&self) -> u64 {
        self.raw.raft.raft_log.applied
    }

    /// Voters and learners now, by host.
    pub fn membership(&self) -> (Vec<HostId>, Vec<HostId>) {
        let hosts = |ids: &[u64]| {
            ids.iter()
                .filter_map(|id| self.state.host_of(*id).cloned())
                .collect()
        };
        (hosts(&self.conf.voters), hosts(&self.conf.learners))
    }

    /// The store this member belongs to (the hash of its founders), once known.
    pub fn cluster(&self) -> Option<[u8; 32]> {
        self.state.cluster
    }

    /// Whether the member lost its records and has not caught up yet.
    pub fn rejoining(&self) -> bool {
        self.rejoining.is_some()
    }

    /// Whether the SM holds a lease at `now`: it heard from a store majority less than the
    /// lease ago (measured from when it asked).
    pub fn lease_valid(&self, now: TrustedInstant) -> bool {
        self.lease_until
            .is_some_and(|until| matches!(now.is_at_or_after(until), Ok(false)))
    }

    /// The next thing the SM must do for the member, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When the member next needs the timer.
    pub fn poll_timeout(&self) -> TrustedInstant {
        self.next_tick
    }

    /// Proposes a ledger write on this SM's behalf; its outcome comes as
    /// [`Output::Outcome`] with the number returned.
    pub fn propose(&mut self, op: LedgerOp) -> Result<u64, StoreError> {
        if !self.started || self.proposals.len() >= PROPOSALS_MAX {
            return Err(StoreError::Busy);
        }
        let bytes = godwit_wire::encode(&op).len();
        if bytes > PROPOSAL_BYTES_MAX - 1024 {
            return Err(StoreError::TooLarge(bytes));
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let now = self.hw.now();
        self.proposals.insert(
            seq,
            Inflight {
                op,
                first: now,
                last: now,
            },
        );
        self.submit(seq);
        self.drive();
        Ok(seq)
    }

    fn submit(&mut self, seq: u64) {
        let Some(p) = self.proposals.get(&seq) else {
            return;
        };
        let proposal = Proposal {
            proposer: self.host.clone(),
            boot: self.hw.boot_epoch().to_bytes(),
            seq,
            low: self.proposals.keys().next().copied().unwrap_or(seq),
            op: p.op.clone(),
        };
        let data = postcard::to_stdvec(&proposal).expect("a proposal encodes");
        // No leader now: asked again at the next retry.
        let _ = self.raw.propose(Vec::new(), data);
    }

    /// Asks the store to add `host` (listening at `addr`) as a learner; the leader makes it
    /// a voter once it caught up. The SM calls this only once it attested `host`.
    pub fn add_member(&mut self, host: &HostId, addr: &str) -> Result<(), StoreError> {
        if addr.len() > ADDR_BYTES_MAX {
            return Err(StoreError::Membership(format!(
                "an address of {} bytes (at most {ADDR_BYTES_MAX})",
                addr.len()
            )));
        }
        let ctx = ChangeContext {
            member: MemberInfo {
                host: host.clone(),
                addr: addr.to_owned(),
            },
            genesis: None,
            lease_ms: None,
        };
        let change = if self.conf.voters.contains(&node_id(host)) {
            return Err(StoreError::Membership(format!("{host} is a voter already")));
        } else {
            ConfChangeType::AddLearnerNode
        };
        self.propose_change(change, node_id(host), &ctx)
    }

    /// Asks the store to remove `host`; what it ran is recorded lost when it applies.
    pub fn remove_member(&mut self, host: &HostId) -> Result<(), StoreError> {
        let id = node_id(host);
        let info = self
            .state
            .members
            .get(&id)
            .cloned()
            .ok_or_else(|| StoreError::Membership(format!("{host} is not a member")))?;
        let ctx = ChangeContext {
            member: info,
            genesis: None,
            lease_ms: None,
        };
        self.propose_change(ConfChangeType::RemoveNode, id, &ctx)
    }

    fn propose_change(
        &mut self,
        kind: ConfChangeType,
        id: NodeId,
        ctx: &ChangeContext,
    ) -> Result<(), StoreError> {
        if !self.started {
            return Err(StoreError::Busy);
        }
        let ctx = postcard::to_stdvec(ctx).expect("a context encodes");
        self.raw
            .propose_conf_change(ctx, single_change(kind, id))
            .map_err(|e| StoreError::Raft(e.to_string()))?;
        self.drive();
        Ok(())
    }

    /// A store message from the attested peer `from`.
    pub fn step(&mut self, from: &HostId, bytes: &[u8]) -> Result<(), StoreError> {
        let (cluster, msg, hello) = match wire::decode(from, self.id, bytes)? {
            wire::Decoded::Raft(cluster, msg) => (cluster, Some(msg), false),
            wire::Decoded::Rejoin(cluster) => (cluster, None, false),
            wire::Decoded::Hello(cluster) => (cluster, None, true),
        };
        if let (Some(mine), Some(theirs)) = (self.state.cluster, cluster)
            && mine != theirs
        {
            return Err(StoreError::ForeignCluster(from.clone()));
        }
        if self.state.left.contains(from) {
            // A member whose removal this member applied takes no part in elections,
            // reads or writes here. Only a leader of a later term than the removal is
            // heard: the host may have been added back and elected while this member has
            // not applied that yet (the simulator found a member that dropped its new
            // leader's appends and never caught up). A removed leader of the same term,
            // one that has not applied its own removal, is not: it would otherwise hold
            // the members to a term in which none can renew a lease.
            let since = *self
                .left_terms
                .entry(from.clone())
                .or_insert(self.raw.raft.term);
            let leads = msg.as_ref().is_some_and(|m| {
                m.term > since
                    && matches!(
                        m.get_msg_type(),
                        MessageType::MsgAppend
                            | MessageType::MsgHeartbeat
                            | MessageType::MsgSnapshot
                    )
            });
            if !leads {
                return Err(StoreError::Removed(from.clone()));
            }
        }
        // Until this run's first record is counted the member acts on nothing, and keeps
        // nothing raft-rs would queue meanwhile: its peers send again.
        if !self.started && msg.is_some() {
            return Ok(());
        }
        if self.heard.len() < HEARD_MAX || self.heard.contains_key(from) {
            self.heard.insert(from.clone(), self.hw.now());
        }
        let Some(mut msg) = msg else {
            if !hello {
                self.rejoined(from);
            }
            return Ok(());
        };
        match msg.get_msg_type() {
            MessageType::MsgPropose => self.check_forwarded(from, &msg)?,
            MessageType::MsgSnapshot => {
                let data = &msg.get_snapshot().data;
                let s = Replicated::decode(data).map_err(|why| StoreError::BadSnapshot {
                    peer: from.clone(),
                    why,
                })?;
                if let (Some(mine), Some(theirs)) = (self.state.cluster, s.cluster)
                    && mine != theirs
                {
                    return Err(StoreError::ForeignCluster(from.clone()));
                }
            }
            MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
                if self.rejoining.is_some() =>
            {
                tracing::debug!(%from, "rejoining: no vote");
                return Ok(());
            }
            _ => {}
        }
        self.peers.insert(msg.from, from.clone());
        // A leader's commit index can only run past this log if this member lost records
        // the leader saw it hold (it rejoined empty): raft-rs would stop on it. Clamp it,
        // and ask the leader for a snapshot.
        let last = self.raw.store().last();
        let behind = msg.get_msg_type() == MessageType::MsgHeartbeat && msg.commit > last;
        if behind {
            msg.commit = last;
        }
        // A response from a peer this member does not track (raft-rs refuses it), or a
        // message of a past term: not the peer's fault, nothing to report.
        let _ = self.raw.step(msg);
        if behind && self.rejoining.is_some() {
            self.tell_leader_we_rejoined(from);
        }
        self.drive();
        Ok(())
    }

    /// A member that lost its records tells the leader, which believes its log reaches
    /// where it did: Raft has no message for a log that went back.
    fn tell_leader_we_rejoined(&mut self, leader: &HostId) {
        let now = self.hw.now();
        if self.asked_snapshot.is_some_and(|t| {
            now.duration_since(t)
                .is_ok_and(|d| d < Duration::from_millis(500))
        }) {
            return;
        }
        self.asked_snapshot = Some(now);
        self.outputs.push_back(Output::Send {
            to: leader.clone(),
            bytes: wire::encode_rejoin(self.state.cluster),
        });
    }

    /// `from` says it lost its records: if this member leads, it forgets how far it
    /// believed `from`'s log went and probes it from the start (entries, or a snapshot).
    fn rejoined(&mut self, from: &HostId) {
        if self.raw.raft.state != StateRole::Leader {
            return;
        }
        let id = node_id(from);
        if let Some(pr) = self.raw.raft.mut_prs().get_mut(id) {
            tracing::info!(%from, "a member rejoined empty: probing it from the start");
            pr.matched = 0;
            pr.become_probe();
        }
        self.drive();
    }

    /// A forwarded proposal: accepted only as the sender's own writes, and membership
    /// changes only from a voter.
    fn check_forwarded(&self, from: &HostId, msg: &Message) -> Result<(), StoreError> {
        for e in msg.get_entries() {
            if e.data.len() + e.context.len() > PROPOSAL_BYTES_MAX {
                return Err(StoreError::TooLarge(e.data.len() + e.context.len()));
            }
            match e.get_entry_type() {
                EntryType::EntryNormal => {
                    let p: Proposal =
                        godwit_wire::decode(&e.data, crate::wire::STORE_MESSAGE_BYTES_MAX)
                            .map_err(|e| WireError::Malformed(e.to_string()))?;
                    if p.proposer != *from {
                        return Err(StoreError::NotOnBehalf {
                            peer: from.clone(),
                            author: p.proposer,
                        });
                    }
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    if !self.conf.voters.contains(&node_id(from)) {
                        return Err(StoreError::NotVoter(from.clone()));
                    }
                }
            }
        }
        Ok(())
    }

    /// The record number the component's counter holds.
    fn counted(&self) -> u64 {
        unpack(self.hw.nv_counter().get()).1
    }

    /// The host says record `number` (and every one before it) is durable.
    pub fn persisted(&mut self, number: u64) -> Result<(), godwit_hw::NvError> {
        let mut ready = None;
        let mut snapshot = None;
        while let Some(u) = self.unpersisted.front() {
            if u.record > number {
                break;
            }
            // The counter moves before anything acts on the record being durable.
            self.hw.nv_counter().advance(pack(u.term, u.record))?;
            let u = self.unpersisted.pop_front().expect("checked");
            if u.record >= self.first {
                self.started = true;
            }
            ready = u.ready.or(ready);
            snapshot = u.snapshot.or(snapshot);
            for m in u.messages {
                self.send(m);
            }
        }
        if let Some(r) = ready {
            self.raw.on_persist_ready(r);
        }
        if let Some(index) = snapshot
            && index > self.raw.raft.raft_log.applied
        {
            self.raw.advance_apply_to(index);
        }
        self.drive();
        Ok(())
    }

    /// The trusted timer passed [`Member::poll_timeout`].
    pub fn handle_timeout(&mut self) {
        let now = self.hw.now();
        if !now.is_at_or_after(self.next_tick).unwrap_or(true) {
            return;
        }
        self.next_tick = now.saturating_add(self.tick_period);
        if !self.started {
            return;
        }
        // A member that lost its records does not campaign until it caught up.
        if self.rejoining.is_none() {
            self.raw.tick();
        }
        self.retry_proposals(now);
        if now.is_at_or_after(self.next_lease_probe).unwrap_or(true) {
            self.probe_lease(now);
        }
        self.promote_learners();
        if now.is_at_or_after(self.next_hello).unwrap_or(true) {
            self.next_hello = now.saturating_add(HELLO_EVERY);
            self.say_hello();
        }
        self.drive();
    }

    /// Tells every other member this one is up.
    fn say_hello(&mut self) {
        let bytes = wire::encode_hello(self.state.cluster);
        let others: Vec<HostId> = self
            .state
            .members
            .values()
            .map(|m| m.host.clone())
            .filter(|h| *h != self.host)
            .collect();
        for to in others {
            self.outputs.push_back(Output::Send {
                to,
                bytes: bytes.clone(),
            });
        }
    }

    fn retry_proposals(&mut self, now: TrustedInstant) {
        let mut expired = Vec::new();
        let mut again = Vec::new();
        for (&seq, p) in &self.proposals {
            let age = |t| now.duration_since(t).unwrap_or(Duration::MAX);
            if age(p.first) >= PROPOSAL_TIMEOUT {
                expired.push(seq);
            } else if age(p.last) >= PROPOSAL_RETRY {
                again.push(seq);
            }
        }
        for seq in expired {
            self.proposals.remove(&seq);
            self.outputs
                .push_back(Output::Outcome { seq, outcome: None });
        }
        for seq in again {
            if let Some(p) = self.proposals.get_mut(&seq) {
                p.last = now;
            }
            self.submit(seq);
        }
    }

    /// Asks the leader to confirm, with a majority, that it still leads: its answer renews
    /// the lease from the time of asking.
    fn probe_lease(&mut self, now: TrustedInstant) {
        // Every quarter lease while one is held; at every tick while none is.
        let every = if self.lease_valid(now) {
            self.lease().unwrap_or(LEASE) / 4
        } else {
            self.tick_period
        };
        self.next_lease_probe = now.saturating_add(every);
        let seq = self.next_read;
        self.next_read += 1;
        self.reads.insert(seq, now);
        while self.reads.len() > READS_MAX {
            self.reads.pop_first();
        }
        // The leader keys pending probes by their context: it names this member too.
        let mut ctx = self.id.to_be_bytes().to_vec();
        ctx.extend_from_slice(&self.run.to_be_bytes());
        ctx.extend_from_slice(&seq.to_be_bytes());
        self.raw.read_index(ctx);
    }

    fn promote_learners(&mut self) {
        if self.raw.raft.state != StateRole::Leader || self.raw.raft.has_pending_conf() {
            return;
        }
        let committed = self.raw.raft.raft_log.committed;
        let ready = self.conf.learners.iter().copied().find(|id| {
            self.raw
                .raft
                .prs()
                .get(*id)
                .is_some_and(|p| p.matched >= committed)
        });
        let Some(id) = ready else { return };
        let Some(info) = self.state.members.get(&id).cloned() else {
            return;
        };
        let ctx = ChangeContext {
            member: info,
            genesis: None,
            lease_ms: None,
        };
        if let Err(e) = self.propose_change(ConfChangeType::AddNode, id, &ctx) {
            tracing::debug!(error = %e, "promoting a learner");
        }
    }

    fn pick_tick_period(&mut self) {
        // Leaders tick at the base rate (heartbeats); the others at a random rate in
        // [1, 2) × base, drawn anew at every change of term or leader, so that their
        // election timeouts differ.
        if self.raw.raft.state == StateRole::Leader {
            self.tick_period = self.config.tick;
            return;
        }
        let mut r = [0u8; 2];
        self.hw.fill_random(&mut r);
        let base = self.config.tick.as_micros() as u64;
        let extra = base * u64::from(u16::from_be_bytes(r)) / 65536;
        self.tick_period = Duration::from_micros(base + extra);
    }

    fn send(&mut self, msg: Message) {
        let to = if msg.to == self.id {
            return;
        } else if let Some(h) = self
            .state
            .host_of(msg.to)
            .or_else(|| self.peers.get(&msg.to))
        {
            h.clone()
        } else {
            tracing::debug!(to = msg.to, "a message for a member with no known host");
            return;
        };
        self.outputs.push_back(Output::Send {
            to,
            bytes: wire::encode(self.state.cluster, &msg),
        });
        // The transport never says whether a snapshot arrived. Report it sent: the leader
        // then probes the member after it, and if the snapshot was lost the member refuses
        // the probe and the leader sends another. (Left in the snapshot state, the leader
        // would wait for that member forever.)
        if msg.get_msg_type() == MessageType::MsgSnapshot {
            self.raw
                .report_snapshot(msg.to, raft::SnapshotStatus::Finish);
        }
    }

    /// Handles every ready raft-rs has.
    fn drive(&mut self) {
        self.drive_readies();
        self.grant_leases();
        let applied = self.raw.raft.raft_log.applied;
        if applied != self.reported_applied {
            self.reported_applied = applied;
            self.outputs.push_back(Output::Applied);
        }
    }

    /// Handles every ready raft-rs has, while at most [`RECORDS_AHEAD_MAX`] records wait
    /// for the host (the rest waits in raft-rs until the host catches up).
    fn drive_readies(&mut self) {
        if !self.started {
            return;
        }
        // One ready seals at most three records (a delta, a base at a snapshot, a base
        // when a rejoining member caught up): stop while they would not fit in the window
        // past the counter.
        while self.raw.has_ready() && self.chain.next + 2 <= self.counted() + RECORDS_AHEAD_MAX {
            let mut rd = self.raw.ready();
            if let Some(ss) = rd.ss() {
                let soft = (ss.leader_id, self.raw.raft.term, ss.raft_state);
                if soft != self.soft {
                    self.soft = soft;
                    self.pick_tick_period();
                }
            }
            for m in rd.take_messages() {
                self.send(m);
            }
            let snapshot = (!rd.snapshot().is_empty()).then(|| SnapshotImage::of(rd.snapshot()));
            if let Some(s) = &snapshot {
                self.install(s.clone());
            }
            let committed = rd.take_committed_entries();
            for rs in rd.take_read_states() {
                self.read_answered(&rs.request_ctx, rs.index);
            }
            let entries = rd.take_entries();
            let hard_state = rd.hs().map(HardStateImage::of);
            if !entries.is_empty() {
                self.raw.mut_store().append(&entries);
            }
            if let Some(hs) = hard_state {
                self.raw.mut_store().hard_state = hs;
            }
            let messages = rd.take_persisted_messages();
            let number = rd.number();
            let durable = snapshot.is_some() || !entries.is_empty() || rd.must_sync();
            self.raw.advance_append_async(rd);
            if let Some(s) = &snapshot {
                self.write_base();
                if let Some(u) = self.unpersisted.back_mut() {
                    u.snapshot = Some(s.index);
                }
            } else if durable {
                // The current hard state goes with every record, so a commit index
                // learned in a ready that wrote nothing is durable with the next one (a
                // restarted member then applies up to it at once).
                let current = self.raw.store().hard_state;
                self.write_delta(Some(current), &entries);
            }
            match self.unpersisted.back_mut() {
                // This ready's messages and durability wait behind its record, or an
                // earlier one.
                Some(u) => {
                    u.ready = Some(number);
                    u.messages.extend(messages);
                }
                None => {
                    for m in messages {
                        self.send(m);
                    }
                    self.raw.on_persist_ready(number);
                }
            }
            self.apply(committed);
        }
        self.check_rejoined();
    }

    fn write_delta(&mut self, hard_state: Option<HardStateImage>, entries: &[Entry]) {
        if self.records_since_base >= RECORDS_PER_BASE_MAX {
            return self.write_base();
        }
        let term = self.raw.store().hard_state.term;
        let w = self.chain.seal(Body::Delta {
            hard_state,
            entries: entries.iter().map(EntryImage::of).collect(),
        });
        self.records_since_base += 1;
        self.queue_record(w, term);
    }

    /// Seals the whole log as a base record.
    fn write_base(&mut self) {
        let log = self.raw.store();
        let term = log.hard_state.term;
        let w = self.chain.seal(Body::Base {
            rejoining: self.rejoining.is_some(),
            hard_state: log.hard_state,
            snapshot: log.snapshot.clone(),
            entries: log.images(),
        });
        self.records_since_base = 0;
        self.queue_record(w, term);
    }

    fn queue_record(&mut self, w: StoreWrite, term: u64) {
        self.unpersisted.push_back(Unpersisted {
            record: w.number,
            term,
            ready: None,
            messages: Vec::new(),
            snapshot: None,
        });
        self.outputs.push_back(Output::Persist(w));
    }

    /// A snapshot from the leader (checked when its message arrived) replaces the state.
    fn install(&mut self, s: SnapshotImage) {
        // Invariant: `step` refused snapshots that do not decode and check.
        let state = Replicated::decode(&s.data).expect("checked at receipt");
        self.conf = s.conf.conf_state();
        self.state = state;
        self.raw.mut_store().install(s);
    }

    fn read_answered(&mut self, ctx: &[u8], index: u64) {
        let Some((id, rest)) = ctx.split_first_chunk::<8>() else {
            return;
        };
        let Some((run, seq)) = rest.split_first_chunk::<8>() else {
            return;
        };
        let Some(seq) = seq.try_into().ok().map(u64::from_be_bytes) else {
            return;
        };
        if u64::from_be_bytes(*id) != self.id || u64::from_be_bytes(*run) != self.run {
            return;
        }
        let Some(asked) = self.reads.remove(&seq) else {
            return;
        };
        self.reads.retain(|s, _| *s > seq);
        if self.state.left.contains(&self.host) {
            return;
        }
        if let Some(r) = &mut self.rejoining {
            *r = Some(r.map_or(index, |i| i.max(index)));
        }
        // The lease runs from when it asked, once this member's state is as new as what
        // the majority had committed then: before that, its ledger could still license
        // what the store no longer does.
        let Some(lease) = self.lease() else {
            return;
        };
        let until = asked.saturating_add(lease);
        if self.awaiting.len() >= READS_MAX {
            self.awaiting.remove(0);
        }
        self.awaiting.push((until, index));
        self.grant_leases();
    }

    /// Grants the leases whose read index this member has applied.
    fn grant_leases(&mut self) {
        let applied = self.raw.raft.raft_log.applied;
        let mut granted = None;
        self.awaiting.retain(|&(until, index)| {
            if index > applied {
                return true;
            }
            granted = Some(granted.map_or(until, |g: TrustedInstant| {
                if until.is_at_or_after(g).unwrap_or(true) {
                    until
                } else {
                    g
                }
            }));
            false
        });
        let Some(until) = granted else {
            return;
        };
        if self.state.left.contains(&self.host) {
            return;
        }
        if self
            .lease_until
            .is_none_or(|u| until.is_at_or_after(u).unwrap_or(true))
        {
            self.lease_until = Some(until);
        }
        self.outputs.push_back(Output::LeaseRenewed);
    }

    fn check_rejoined(&mut self) {
        let Some(Some(target)) = self.rejoining else {
            return;
        };
        if self.raw.raft.raft_log.applied >= target {
            tracing::info!(index = target, "caught up with the store: votes again");
            self.rejoining = None;
            // Durably: a restart from here on votes.
            self.write_base();
        }
    }

    fn apply(&mut self, entries: Vec<Entry>) {
        let Some(last) = entries.last().map(|e| e.index) else {
            return;
        };
        let mut changed = false;
        for e in entries {
            match e.get_entry_type() {
                EntryType::EntryNormal => self.apply_normal(&e),
                EntryType::EntryConfChangeV2 => {
                    self.apply_change(&e);
                    changed = true;
                }
                // Never proposed by this code.
                EntryType::EntryConfChange => {}
            }
        }
        self.raw.advance_apply_to(last);
        if changed {
            self.take_latest(last);
        }
        self.maybe_snapshot();
    }

    /// Keeps a snapshot of the state at `index` (just applied) to send to members that
    /// need one: after a membership change, so that a new member finds itself in it.
    fn take_latest(&mut self, index: u64) {
        let Some(term) = self.raw.store().term_at(index) else {
            return;
        };
        let latest = SnapshotImage {
            index,
            term,
            conf: ConfImage::of(&self.conf),
            data: self.state.encode(),
        };
        self.raw.mut_store().latest = Some(latest);
    }

    fn apply_normal(&mut self, e: &Entry) {
        if e.data.is_empty() {
            return; // a new leader's empty entry
        }
        let Ok(p) = godwit_wire::decode::<Proposal>(&e.data, crate::wire::STORE_MESSAGE_BYTES_MAX)
        else {
            tracing::warn!(index = e.index, "an entry that is not a proposal; skipped");
            return;
        };
        let applied = self.state.apply_proposal(&p);
        let mine = p.proposer == self.host && p.boot == self.hw.boot_epoch().to_bytes();
        if let (true, Applied::Outcome(outcome)) = (mine, applied)
            && self.proposals.remove(&p.seq).is_some()
        {
            self.outputs.push_back(Output::Outcome {
                seq: p.seq,
                outcome: Some(outcome),
            });
        }
    }

    fn apply_change(&mut self, e: &Entry) {
        let (Ok(cc), Ok(ctx)) = (
            ConfChangeV2::parse_from_bytes(&e.data),
            postcard::from_bytes::<ChangeContext>(&e.context),
        ) else {
            tracing::warn!(
                index = e.index,
                "a membership change that does not decode; skipped"
            );
            return;
        };
        let [change] = cc.get_changes() else {
            return;
        };
        let id = change.node_id;
        let host = ctx.member.host.clone();
        let valid = node_id(&host) == id
            && ctx.member.addr.len() <= ADDR_BYTES_MAX
            && match ctx.genesis {
                Some(g) => self.state.cluster.is_none_or(|c| c == g),
                None => true,
            };
        if !valid {
            tracing::warn!(index = e.index, %host, "an invalid membership change; skipped");
            return;
        }
        let applied = match change.get_change_type() {
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                self.left_terms.remove(&host);
                self.state.add_member(id, ctx.member)
            }
            ConfChangeType::RemoveNode => self.state.members.contains_key(&id),
        };
        if !applied {
            return;
        }
        match self.raw.apply_conf_change(&cc) {
            Ok(cs) => self.conf = cs,
            Err(err) => {
                tracing::warn!(index = e.index, error = %err, "raft refused a membership change");
                return;
            }
        }
        if self.raw.raft.state == StateRole::Leader && !self.conf.voters.contains(&self.raw.raft.id)
        {
            // raft-rs 0.7 leaves a leader that removed itself leading (a branch it marks
            // untested), and then unwraps its own missing progress at the next persisted
            // ready: the simulator's hostile host found the panic. It steps down instead.
            let term = self.raw.raft.term;
            self.raw.raft.become_follower(term, raft::INVALID_ID);
        }
        if let Some(g) = ctx.genesis {
            self.state.cluster = Some(g);
            if let Some(ms) = ctx.lease_ms {
                self.state.lease_ms = Some(ms);
            }
        }
        let change = match change.get_change_type() {
            ConfChangeType::AddNode => MembershipChange::Voter(host),
            ConfChangeType::AddLearnerNode => MembershipChange::Learner(host),
            ConfChangeType::RemoveNode => {
                self.state.remove_member(id);
                if self.state.left.contains(&host) {
                    self.left_terms.insert(host.clone(), self.raw.raft.term);
                }
                if host == self.host {
                    tracing::warn!("this host was removed from the store: its lease ends");
                    self.lease_until = None;
                }
                MembershipChange::Left(host)
            }
        };
        self.outputs.push_back(Output::Membership(change));
    }

    fn maybe_snapshot(&mut self) {
        let applied = self.raw.raft.raft_log.applied;
        let log = self.raw.store();
        // The first snapshot as soon as anything is applied (a leader must hold a
        // non-empty one to send to a member that lost its log), then every so many.
        let due = if log.snapshot.index == 0 {
            applied > 0
        } else {
            applied >= log.snapshot.index + crate::SNAPSHOT_EVERY_ENTRIES
        };
        if !due || applied > log.last() {
            return;
        }
        let data = self.state.encode();
        let conf = ConfImage::of(&self.conf);
        self.raw.mut_store().compact(applied, conf, data);
        self.write_base();
    }

    /// Checks the member's own consistency (asserts that stay on in release builds).
    pub fn check_invariants(&self) {
        let log = self.raw.store();
        assert!(
            log.snapshot.index <= log.last(),
            "a snapshot past the log's end"
        );
        assert!(self.proposals.len() <= PROPOSALS_MAX);
        for id in self.conf.voters.iter().chain(&self.conf.learners) {
            assert!(
                self.state.members.contains_key(id),
                "member {id:x} in the configuration with no host"
            );
        }
    }
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let log = &self.raw.raft.raft_log;
        let progress: Vec<(String, u64, u64, String)> = self
            .raw
            .raft
            .prs()
            .iter()
            .map(|(id, p)| {
                let host = self
                    .state
                    .host_of(*id)
                    .map_or_else(|| format!("{id:x}"), |h| h.to_string());
                (host, p.matched, p.next_idx, format!("{:?}", p.state))
            })
            .collect();
        f.debug_struct("Member")
            .field("host", &self.host)
            .field("term", &self.raw.raft.term)
            .field("role", &self.raw.raft.state)
            .field("leader", &self.raw.raft.leader_id)
            .field("committed", &log.committed)
            .field("applied", &log.applied)
            .field("persisted", &log.persisted)
            .field("last", &self.raw.store().last())
            .field("snapshot", &self.raw.store().snapshot.index)
            .field("unpersisted", &self.unpersisted.len())
            .field("rejoining", &self.rejoining)
            .field("proposals", &self.proposals.len())
            .field("reads", &self.reads.len())
            .field("awaiting", &self.awaiting)
            .field("lease_until", &self.lease_until)
            .field("progress", &progress)
            .finish_non_exhaustive()
    }
}
