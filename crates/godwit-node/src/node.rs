//! The host daemon's runtime: it gives its SM a network, a disk and a clock to sleep on,
//! and runs the SM's store member. Everything it moves is sealed by the SM; everything it
//! hands the SM is checked there.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use godwit_hw::{DeviceIdentity, Hardware, SoftHardware};
use godwit_monitor::{Action, ConnId, Event, Monitor, MonitorConfig, sm_measurement};
use godwit_proto::{LedgerOp, StoreReply};
use godwit_store::{LedgerView, NodeId, Raft, Sealer};
use godwit_wire::HostId;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, broadcast, oneshot};

use crate::config::NodeConfig;
use crate::disk::DirBlobStore;
use crate::raftnet::{
    Admin, AdminError, RaftNet, RpcFail, StoreMsg, StoreRequest, StoreResponse, WriteError,
};

/// Largest frame read from a peer that has attested: one record of the largest payload.
/// Before that, the SM allows only a handshake message ([`Monitor::frame_bytes_max`]).
pub const FRAME_BYTES_MAX: usize = godwit_monitor::RECORD_FRAME_BYTES_MAX;
/// How long a write may wait for the store before the SM is told it is unavailable.
const PROPOSE_TIMEOUT: Duration = Duration::from_millis(2500);
/// How long a connection to a peer may take to be accepted.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);
/// A peer whose dial failed is not dialled again for this long (the Raft RPC to it fails
/// at once as unreachable, so openraft backs off).
const REDIAL_BACKOFF: Duration = Duration::from_millis(500);
/// How often members ping each other (for `status`'s `up`).
const PING_INTERVAL: Duration = Duration::from_millis(500);

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The device identity could not be loaded.
    #[error("device identity: {0}")]
    Identity(#[from] godwit_hw::IdentityError),
    /// The identity belongs to another host than the configuration says.
    #[error(
        "the device in {dir} was provisioned as {found}, but the configuration says id = {expected:?}"
    )]
    WrongHost {
        /// The identity directory.
        dir: String,
        /// Its host.
        found: String,
        /// The configured id.
        expected: String,
    },
    /// The store's files could not be opened (or failed authentication).
    #[error("store: {0}")]
    Store(#[from] godwit_store::OpenError),
    /// Anything else at start-up.
    #[error("{0}")]
    Start(String),
}

struct ConnTask {
    wake: Arc<Notify>,
    close: Arc<Notify>,
}

/// Shared state of a running node.
pub(crate) struct Inner {
    pub(crate) cfg: NodeConfig,
    pub(crate) hw: Arc<dyn Hardware>,
    monitor: Mutex<Monitor>,
    conns: Mutex<HashMap<ConnId, ConnTask>>,
    raft: std::sync::OnceLock<Raft>,
    pub(crate) ledger: LedgerView,
    rpcs: Mutex<HashMap<u64, oneshot::Sender<StoreResponse>>>,
    next_rpc: AtomicU64,
    pub(crate) events: broadcast::Sender<Event>,
    timer: Notify,
    unreachable: Mutex<HashMap<HostId, Instant>>,
    pub(crate) heard: Mutex<HashMap<HostId, Instant>>,
    pub(crate) token: String,
    /// What this host's migrations and store writes did since it started.
    pub(crate) metrics: Mutex<crate::metrics::Metrics>,
    shutdown: Notify,
    /// One lock per enclave with a call under way, so that its calls run one at a time
    /// (the SM refuses a second one as busy) without holding the SM.
    calls: Mutex<HashMap<godwit_wire::EnclaveId, Arc<tokio::sync::Mutex<()>>>>,
    /// Set when the store was found corrupted and restarted empty: until a leader has
    /// replicated to this member, it grants no vote (it may have voted before the wipe, and
    /// must not vote twice in one term).
    rejoining: std::sync::atomic::AtomicBool,
}

/// The host's own clock, for its own business (back-off, liveness, how long to wait for
/// the store). The SM never sees it: its deadlines are on the trusted timer.
#[allow(clippy::disallowed_methods)]
pub(crate) fn host_now() -> Instant {
    Instant::now()
}

/// The host's own randomness, for its own business (control tokens, port choice).
#[allow(clippy::disallowed_methods)]
pub(crate) fn host_random(out: &mut [u8]) -> Result<(), getrandom::Error> {
    getrandom::fill(out)
}

/// The SM's lock. A panic while it was held leaves the SM in a state it never checked:
/// the node stops rather than go on with it.
fn lock_sm(m: &Mutex<Monitor>) -> std::sync::MutexGuard<'_, Monitor> {
    m.lock().unwrap_or_else(|_| {
        tracing::error!("the security monitor panicked mid-transition; stopping the node");
        std::process::abort()
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks is a bug that already failed loudly; the
    // protected state is kept consistent by the SM's own checks.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inner {
    /// Runs `f` on the SM, then carries out the actions it produced.
    pub(crate) fn with<R>(self: &Arc<Self>, f: impl FnOnce(&mut Monitor) -> R) -> R {
        let (r, actions) = {
            let mut m = lock_sm(&self.monitor);
            let r = f(&mut m);
            let mut actions = Vec::new();
            while let Some(a) = m.poll_action() {
                actions.push(a);
            }
            (r, actions)
        };
        for a in actions {
            self.act(a);
        }
        self.timer.notify_one();
        r
    }

    /// Runs an ecall without holding the SM: the SM hands the enclave out, a blocking
    /// thread runs it, and the SM takes it back. Calls of one enclave wait for each other;
    /// other enclaves, frames and timers go on meanwhile.
    pub(crate) async fn run_call(
        self: &Arc<Self>,
        id: godwit_wire::EnclaveId,
        ecall: &str,
        arg: &[u8],
    ) -> Result<godwit_monitor::CallOutcome, godwit_monitor::MonitorError> {
        let turn = Arc::clone(lock(&self.calls).entry(id).or_default());
        let result = {
            let _turn = turn.lock().await;
            match self.with(|m| m.begin_call(id, ecall, arg)) {
                Ok(run) => match tokio::task::spawn_blocking(move || run.run()).await {
                    Ok(done) => self.with(|m| m.end_call(done)),
                    // An ecall does not panic (wasmtime turns traps into errors); if one
                    // did, the enclave would be lost in the SM's hands: stop.
                    Err(e) => {
                        tracing::error!(error = %e, "an ecall's thread failed; stopping the node");
                        std::process::abort()
                    }
                },
                Err(e) => Err(e),
            }
        };
        let mut calls = lock(&self.calls);
        if calls.get(&id).is_some_and(|t| Arc::strong_count(t) <= 2) {
            calls.remove(&id);
        }
        result
    }

    pub(crate) fn raft(&self) -> Option<&Raft> {
        self.raft.get()
    }

    fn act(self: &Arc<Self>, action: Action) {
        match action {
            Action::Connect { conn, peer } => {
                tokio::spawn(Arc::clone(self).dial(conn, peer));
            }
            Action::Wake { conn } => {
                if let Some(t) = lock(&self.conns).get(&conn) {
                    t.wake.notify_one();
                }
            }
            Action::Close { conn } => {
                if let Some(t) = lock(&self.conns).remove(&conn) {
                    t.close.notify_one();
                }
            }
            Action::Store { request, op } => {
                let me = Arc::clone(self);
                tokio::spawn(async move {
                    let start = host_now();
                    let reply = me.propose(op).await;
                    lock(&me.metrics).observe_store_write(&reply, start.elapsed());
                    me.with(|m| m.handle_store_reply(request, reply));
                });
            }
            Action::StoreMessage { conn, peer, bytes } => self.on_store_message(conn, peer, &bytes),
            Action::Event(e) => {
                tracing::debug!(?e, "event");
                lock(&self.metrics).observe(&e);
                let _ = self.events.send(e);
            }
            other => tracing::warn!(?other, "unhandled SM action"),
        }
    }

    async fn dial(self: Arc<Self>, conn: ConnId, peer: HostId) {
        let Some(addr) = self.address_of(&peer) else {
            tracing::warn!(%peer, "no address configured for peer");
            let why = format!("no address is configured for {peer}");
            return self.with(|m| m.dial_failed(conn, why));
        };
        let why = match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(&addr)).await {
            Ok(Ok(stream)) => {
                lock(&self.unreachable).remove(&peer);
                return self.run_conn(conn, stream, true).await;
            }
            Ok(Err(e)) => format!("{peer} at {addr}: {e}"),
            Err(_) => format!("{peer} at {addr}: no answer in {DIAL_TIMEOUT:?}"),
        };
        tracing::debug!(%peer, error = %why, "dial failed");
        lock(&self.unreachable).insert(peer, host_now());
        self.with(|m| m.dial_failed(conn, why));
    }

    /// Reads frames into the SM and writes the frames it produces, until either side ends.
    ///
    /// Two tasks per connection: a writer that seals the next frame (under the SM's lock)
    /// and writes it, and a reader that reads a frame and hands it to the SM at once. The
    /// stages of a migration still run in parallel: the sender's SM seals while the kernel
    /// moves earlier records, and the receiver opens them on its own host. Handing each
    /// record between more tasks (an earlier design) cost more CPU than it saved: the
    /// record went through another core's cache, and each hand-over woke a thread
    /// (docs/benchmarks.md). One buffer per direction is reused, so bulk transfer
    /// allocates nothing per record.
    async fn run_conn(self: Arc<Self>, conn: ConnId, stream: TcpStream, dialled: bool) {
        let _ = stream.set_nodelay(true);
        let (mut rd, mut wr) = stream.into_split();
        let wake = Arc::new(Notify::new());
        let close = Arc::new(Notify::new());
        lock(&self.conns).insert(
            conn,
            ConnTask {
                wake: Arc::clone(&wake),
                close: Arc::clone(&close),
            },
        );
        if dialled {
            self.with(|m| m.connected(conn));
        }
        let me = Arc::clone(&self);
        let writer = tokio::spawn(async move {
            let mut written: Option<Vec<u8>> = None;
            loop {
                loop {
                    let frame = me.with(|m| {
                        if let Some(buf) = written.take() {
                            m.recycle(conn, buf);
                        }
                        m.poll_transmit(conn)
                    });
                    let Some(frame) = frame else { break };
                    if write_frame(&mut wr, &frame).await.is_err() {
                        return;
                    }
                    written = Some(frame);
                }
                wake.notified().await;
            }
        });
        tokio::select! {
            e = self.read_frames(conn, &mut rd) => {
                tracing::debug!(%conn, error = %e, "connection ended");
            }
            _ = close.notified() => {}
        }
        writer.abort();
        lock(&self.conns).remove(&conn);
        self.with(|m| m.disconnected(conn));
    }

    /// Reads frames and hands each to the SM, until the connection fails or ends; returns
    /// why.
    async fn read_frames(self: &Arc<Self>, conn: ConnId, rd: &mut OwnedReadHalf) -> std::io::Error {
        let mut buf = Vec::new();
        // The SM says how large a frame may be: small until the peer has attested.
        let mut max = self.with(|m| m.frame_bytes_max(conn));
        loop {
            let mut len = [0u8; 4];
            if let Err(e) = rd.read_exact(&mut len).await {
                return e;
            }
            let len = u32::from_be_bytes(len) as usize;
            if len > max {
                return std::io::Error::other(format!("frame of {len} bytes, over {max}"));
            }
            // The buffer only grows: a large frame after a small one is not zeroed again.
            if buf.len() < len {
                buf.resize(len, 0);
            }
            let frame = &mut buf[..len];
            if let Err(e) = rd.read_exact(frame).await {
                return e;
            }
            if max == FRAME_BYTES_MAX {
                self.with(|m| m.handle_frame(conn, frame));
            } else {
                max = self.with(|m| {
                    m.handle_frame(conn, frame);
                    m.frame_bytes_max(conn)
                });
            }
        }
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        loop {
            tokio::select! {
                r = listener.accept() => match r {
                    Ok((stream, _)) => {
                        let conn = self.with(|m| m.accept());
                        tokio::spawn(Arc::clone(&self).run_conn(conn, stream, false));
                    }
                    Err(e) => tracing::warn!(error = %e, "accept failed"),
                },
                _ = self.shutdown.notified() => return,
            }
        }
    }

    /// Sleeps until the SM's next deadline on its trusted timer and lets it handle it.
    async fn timer_loop(self: Arc<Self>) {
        loop {
            let wait = {
                let m = lock_sm(&self.monitor);
                m.poll_timeout()
                    .map(|t| t.duration_since(self.hw.now()).unwrap_or(Duration::ZERO))
            };
            match wait {
                Some(d) if d.is_zero() => self.with(|m| m.handle_timeout()),
                other => {
                    let d = other
                        .unwrap_or(Duration::from_secs(1))
                        .min(Duration::from_secs(1));
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        _ = self.timer.notified() => {}
                        _ = self.shutdown.notified() => return,
                    }
                }
            }
        }
    }

    async fn ping_loop(self: Arc<Self>) {
        let ping = postcard::to_stdvec(&StoreMsg::Ping).unwrap_or_default();
        loop {
            for (_, host, _, _) in self.current_members() {
                if host != self.cfg.id && !self.is_backing_off(&host) {
                    self.with(|m| m.send_store(&host, &ping));
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(PING_INTERVAL) => {}
                _ = self.shutdown.notified() => return,
            }
        }
    }

    fn is_backing_off(&self, host: &HostId) -> bool {
        lock(&self.unreachable)
            .get(host)
            .is_some_and(|t| t.elapsed() < REDIAL_BACKOFF)
    }

    /// Sends a store request to `host` over the SM's channel and waits for the answer.
    pub(crate) async fn rpc(
        self: &Arc<Self>,
        host: &HostId,
        req: StoreRequest,
        ttl: Duration,
    ) -> Result<StoreResponse, RpcFail> {
        if self.is_backing_off(host) {
            return Err(RpcFail::Unreachable(host.to_string()));
        }
        let id = self.next_rpc.fetch_add(1, Ordering::Relaxed);
        let bytes = postcard::to_stdvec(&StoreMsg::Request { id, req })
            .map_err(|e| RpcFail::Unreachable(e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        lock(&self.rpcs).insert(id, tx);
        if self.with(|m| m.send_store(host, &bytes)).is_none() {
            lock(&self.rpcs).remove(&id);
            return Err(RpcFail::Unreachable(format!("{host}: message too large")));
        }
        match tokio::time::timeout(ttl, rx).await {
            Ok(Ok(resp)) => Ok(resp),
            _ => {
                lock(&self.rpcs).remove(&id);
                Err(RpcFail::Timeout(host.to_string()))
            }
        }
    }

    fn on_store_message(self: &Arc<Self>, conn: ConnId, peer: HostId, bytes: &[u8]) {
        lock(&self.heard).insert(peer.clone(), host_now());
        let msg = match crate::raftnet::decode_store_message(bytes) {
            Ok(m) => m,
            Err(e) => return tracing::warn!(%peer, error = %e, "undecodable store message"),
        };
        match msg {
            StoreMsg::Ping => {}
            StoreMsg::Response { id, resp } => {
                if let Some(tx) = lock(&self.rpcs).remove(&id) {
                    let _ = tx.send(resp);
                }
            }
            StoreMsg::Request { id, req } => {
                let me = Arc::clone(self);
                tokio::spawn(async move {
                    let resp = me.serve(peer, req).await;
                    if let Ok(bytes) = postcard::to_stdvec(&StoreMsg::Response { id, resp }) {
                        me.with(|m| m.send_store_on(conn, &bytes));
                    }
                });
            }
        }
    }

    async fn serve(self: &Arc<Self>, peer: HostId, req: StoreRequest) -> StoreResponse {
        let Some(raft) = self.raft() else {
            return StoreResponse::Write(Err(WriteError::Failed("store not started".into())));
        };
        match req {
            StoreRequest::Append(r) => {
                let resp = raft.append_entries(r).await;
                if resp.as_ref().is_ok_and(|r| r.is_success())
                    && self.rejoining.swap(false, Ordering::AcqRel)
                {
                    tracing::info!(
                        "a leader replicated to this member: rejoined, votes allowed again"
                    );
                }
                StoreResponse::Append(resp)
            }
            StoreRequest::Vote(r) if self.rejoining.load(Ordering::Acquire) => {
                let m = raft.metrics().borrow().clone();
                tracing::info!(candidate = ?r.vote, "rejoining after store corruption: vote refused");
                StoreResponse::Vote(Ok(openraft::raft::VoteResponse::new(
                    m.vote,
                    m.last_applied,
                    false,
                )))
            }
            StoreRequest::Vote(r) => StoreResponse::Vote(raft.vote(r).await),
            StoreRequest::Admin(op) => StoreResponse::Admin(self.admin_here(&op).await),
            StoreRequest::Snapshot(r) => StoreResponse::Snapshot(raft.install_snapshot(r).await),
            StoreRequest::Write(op) => {
                if *op.author() != peer {
                    return StoreResponse::Write(Err(WriteError::Refused(format!(
                        "{peer} wrote on behalf of another host"
                    ))));
                }
                StoreResponse::Write(match raft.client_write(op).await {
                    Ok(r) => Ok(r.data),
                    Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                        Err(WriteError::NotLeader)
                    }
                    Err(e) => Err(WriteError::Failed(e.to_string())),
                })
            }
        }
    }

    /// Carries out a membership change on this member, which must lead.
    async fn admin_here(&self, op: &Admin) -> Result<(), AdminError> {
        let raft = self
            .raft()
            .ok_or_else(|| AdminError::Failed("store not started".into()))?;
        let map = |e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>| match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => AdminError::NotLeader,
            other => AdminError::Failed(other.to_string()),
        };
        match op {
            Admin::Add { node_id, node } => {
                raft.add_learner(*node_id, node.clone(), false)
                    .await
                    .map_err(map)?;
                let voters = ChangeMembers::AddVoterIds([*node_id].into());
                raft.change_membership(voters, false).await.map_err(map)?;
            }
            Admin::Remove { node_id, host } => {
                let voters = ChangeMembers::RemoveVoters([*node_id].into());
                raft.change_membership(voters, false).await.map_err(map)?;
                raft.client_write(LedgerOp::HostLeft { host: host.clone() })
                    .await
                    .map_err(|e| AdminError::Failed(e.to_string()))?;
            }
        }
        Ok(())
    }

    /// Carries out a membership change on the leader, forwarding it if this member does not
    /// lead.
    pub(crate) async fn admin(self: &Arc<Self>, op: Admin) -> Result<(), String> {
        let mut why = String::from("no leader");
        for _ in 0..50 {
            match self.admin_here(&op).await {
                Ok(()) => return Ok(()),
                Err(AdminError::Failed(e)) => return Err(e),
                Err(AdminError::NotLeader) => {}
            }
            let leader = self
                .raft()
                .and_then(|r| r.metrics().borrow().current_leader);
            let host = leader.and_then(|l| {
                self.current_members()
                    .into_iter()
                    .find(|(id, ..)| *id == l)
                    .map(|(_, h, ..)| h)
            });
            if let Some(host) = host {
                match self
                    .rpc(
                        &host,
                        StoreRequest::Admin(op.clone()),
                        Duration::from_secs(10),
                    )
                    .await
                {
                    Ok(StoreResponse::Admin(Ok(()))) => return Ok(()),
                    Ok(StoreResponse::Admin(Err(AdminError::Failed(e)))) => return Err(e),
                    Ok(_) => why = "the leader moved".into(),
                    Err(e) => why = e.to_string(),
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(why)
    }

    /// Writes to the ledger for the local SM: on this member if it leads, else through the
    /// leader. `Unavailable` when no leader answered in time (the write may or may not have
    /// been applied; the SM's ops are safe to repeat).
    pub(crate) async fn propose(self: &Arc<Self>, op: LedgerOp) -> StoreReply {
        let deadline = host_now() + PROPOSE_TIMEOUT;
        let Some(raft) = self.raft().cloned() else {
            return StoreReply::Unavailable("store not started".into());
        };
        let mut why = String::from("no leader");
        while host_now() < deadline {
            let left = deadline.saturating_duration_since(host_now());
            match tokio::time::timeout(left, raft.client_write(op.clone())).await {
                Ok(Ok(r)) => return StoreReply::Outcome(r.data),
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                    if let Some((host, _)) = f.leader_node.as_ref().and_then(parse_member) {
                        let left = deadline.saturating_duration_since(host_now());
                        match self.rpc(&host, StoreRequest::Write(op.clone()), left).await {
                            Ok(StoreResponse::Write(Ok(outcome))) => {
                                return StoreReply::Outcome(outcome);
                            }
                            Ok(StoreResponse::Write(Err(e))) => why = format!("{e:?}"),
                            Ok(_) => why = "mismatched reply".into(),
                            Err(e) => why = e.to_string(),
                        }
                    }
                }
                Ok(Err(e)) => why = e.to_string(),
                Err(_) => why = "timed out".into(),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        StoreReply::Unavailable(why)
    }
}

async fn write_frame(
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    frame: &[u8],
) -> std::io::Result<()> {
    // Invariant: frames are at most one record, far below 4 GiB.
    let len = u32::try_from(frame.len())
        .expect("bounded frame")
        .to_be_bytes();
    if frame.len() < 64 * 1024 {
        let mut buf = Vec::with_capacity(4 + frame.len());
        buf.extend_from_slice(&len);
        buf.extend_from_slice(frame);
        wr.write_all(&buf).await
    } else {
        wr.write_all(&len).await?;
        wr.write_all(frame).await
    }
}

/// Shortest token accepted, in characters (`cluster init` writes 64 hex digits).
const TOKEN_CHARS_MIN: usize = 16;

/// The user this process runs as (the owner of `/proc/self`).
pub(crate) fn own_uid() -> std::io::Result<u32> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata("/proc/self")?.uid())
}

/// Reads the control token. A token file others may read or that another user owns, or
/// one with a short or empty token, is refused: the token is the only thing between the
/// socket and the SM's entry points. The file is opened once and checked as opened.
fn read_token(path: &std::path::Path) -> Result<String, NodeError> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let file = path.display();
    let fail = |why: String| NodeError::Start(format!("control token file {file}: {why}"));
    let f = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let meta = f.metadata().map_err(|e| fail(e.to_string()))?;
    let mode = meta.permissions().mode();
    if !meta.is_file() {
        return Err(fail("not a regular file".into()));
    }
    if mode & 0o077 != 0 {
        return Err(fail(format!(
            "mode {:o} lets others read it; run `chmod 600 {file}`",
            mode & 0o777
        )));
    }
    if own_uid().is_ok_and(|me| me != meta.uid()) {
        return Err(fail(format!(
            "owned by user {}, not by the user running the node",
            meta.uid()
        )));
    }
    let mut token = String::new();
    f.take(crate::control::TOKEN_LINE_BYTES_MAX as u64)
        .read_to_string(&mut token)
        .map_err(|e| fail(e.to_string()))?;
    let token = token.trim();
    let max = crate::control::TOKEN_LINE_BYTES_MAX - 1;
    if token.len() < TOKEN_CHARS_MIN || token.len() > max || token.contains(char::is_whitespace) {
        return Err(fail(format!(
            "it must hold one token of {TOKEN_CHARS_MIN} to {max} characters (`godwit cluster init` writes one)"
        )));
    }
    Ok(token.to_owned())
}

/// Opens the store member's files. Files that fail authentication (corrupted, or not this
/// SM's) are moved aside and the member starts empty, rejoining from its peers; other
/// failures (e.g. the file in use by another process) stop the start.
fn open_store(
    cfg: &NodeConfig,
    hw: &Arc<dyn Hardware>,
) -> Result<(godwit_store::LogStore, godwit_store::StateMachine, bool), NodeError> {
    let path = cfg.store_path();
    crate::disk::private_file(&path)
        .map_err(|e| NodeError::Start(format!("{}: {e}", path.display())))?;
    match godwit_store::open(&path, Sealer::new(Arc::clone(hw))) {
        Ok((log, sm)) => Ok((log, sm, false)),
        Err(
            e @ (godwit_store::OpenError::Corrupt(_) | godwit_store::OpenError::RolledBack { .. }),
        ) => {
            let kind = match e {
                godwit_store::OpenError::Corrupt(_) => "corrupt",
                _ => "stale",
            };
            let aside = (1u32..)
                .map(|n| path.with_extension(format!("redb.{kind}-{n}")))
                .find(|p| !p.exists())
                .expect("some name is free");
            tracing::error!(error = %e, aside = %aside.display(), "store {}: kept aside; rejoining from peers with an empty store", if kind == "corrupt" { "corrupted" } else { "rolled back" });
            if path.exists() {
                std::fs::rename(&path, &aside)
                    .map_err(|e| NodeError::Start(format!("{}: {e}", path.display())))?;
            }
            crate::disk::private_file(&path)
                .map_err(|e| NodeError::Start(format!("{}: {e}", path.display())))?;
            let (log, sm) = godwit_store::open_empty(&path, Sealer::new(Arc::clone(hw)))?;
            Ok((log, sm, true))
        }
        Err(e) => Err(e.into()),
    }
}

/// A running host: its SM, its store member, its listener and control API.
pub struct Node {
    pub(crate) inner: Arc<Inner>,
}

impl Node {
    /// Starts a host from its configuration: boots the emulated hardware with the stored
    /// identity, starts the SM, opens the store, listens for peers and for control
    /// requests. Returns once everything is listening.
    pub async fn start(cfg: NodeConfig) -> Result<Node, NodeError> {
        let identity = DeviceIdentity::load(&cfg.identity_dir())?;
        if *identity.host() != cfg.id {
            return Err(NodeError::WrongHost {
                dir: cfg.identity_dir().display().to_string(),
                found: identity.host().to_string(),
                expected: cfg.id.to_string(),
            });
        }
        let boots = godwit_hw::advance_boot_count(&cfg.identity_dir())?;
        let nv = godwit_hw::NvCounter::open(&cfg.identity_dir())?;
        let hw: Arc<dyn Hardware> = Arc::new(
            SoftHardware::boot_counted(identity, sm_measurement(), boots).with_nv_counter(nv),
        );
        let blobs = DirBlobStore::open(&cfg.blob_dir())
            .map_err(|e| NodeError::Start(format!("blob directory: {e}")))?;
        let policy = cfg
            .policy()
            .map_err(|(f, r)| NodeError::Start(format!("policy.{f}: {r}")))?;
        let monitor = Monitor::new(
            Arc::clone(&hw),
            Arc::new(blobs),
            MonitorConfig {
                policy,
                timeouts: cfg.timeouts.clone(),
                memory_budget_bytes: cfg.memory_budget_mib.saturating_mul(1024 * 1024),
            },
        )
        .map_err(|e| NodeError::Start(e.to_string()))?;
        let token = read_token(&cfg.control.token_file)?;
        let (log, sm, rejoining) = open_store(&cfg, &hw)?;
        let listener = TcpListener::bind(&cfg.listen)
            .await
            .map_err(|e| NodeError::Start(format!("listen on {}: {e}", cfg.listen)))?;
        let inner = Arc::new(Inner {
            ledger: sm.view(),
            cfg,
            hw,
            monitor: Mutex::new(monitor),
            conns: Mutex::new(HashMap::new()),
            raft: std::sync::OnceLock::new(),
            rpcs: Mutex::new(HashMap::new()),
            next_rpc: AtomicU64::new(1),
            events: broadcast::channel(4096).0,
            timer: Notify::new(),
            unreachable: Mutex::new(HashMap::new()),
            heard: Mutex::new(HashMap::new()),
            token,
            metrics: Mutex::default(),
            shutdown: Notify::new(),
            calls: Mutex::new(HashMap::new()),
            rejoining: std::sync::atomic::AtomicBool::new(rejoining),
        });
        let raft_config = Arc::new(
            godwit_store::raft_config()
                .validate()
                .map_err(|e| NodeError::Start(format!("raft config: {e}")))?,
        );
        let network = RaftNet {
            inner: Arc::downgrade(&inner),
        };
        let raft = Raft::new(inner.cfg.node_id, raft_config, network, log, sm)
            .await
            .map_err(|e| NodeError::Start(format!("raft: {e}")))?;
        let _ = inner.raft.set(raft.clone());
        tokio::spawn(Arc::clone(&inner).accept_loop(listener));
        tokio::spawn(Arc::clone(&inner).timer_loop());
        tokio::spawn(Arc::clone(&inner).ping_loop());
        crate::serve::serve(Arc::clone(&inner))
            .await
            .map_err(NodeError::Start)?;
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| NodeError::Start(e.to_string()))?;
        // A member rejoining after corruption learns the membership from the leader; it
        // must not write one of its own.
        if !initialized && !inner.rejoining.load(Ordering::Acquire) {
            let members = inner.members();
            // Safe on every member with the same membership (openraft's guarantee).
            if let Err(e) = raft.initialize(members).await {
                tracing::debug!(error = %e, "initialize");
            }
        }
        tracing::info!(host = %inner.cfg.id, listen = %inner.cfg.listen, "node started");
        Ok(Node { inner })
    }

    /// This host's id.
    pub fn host(&self) -> &HostId {
        &self.inner.cfg.id
    }

    /// Stops the node: its store member, listener and timers.
    pub async fn shutdown(&self) {
        self.inner.shutdown.notify_waiters();
        if let Some(raft) = self.inner.raft() {
            let _ = raft.shutdown().await;
        }
        let conns: Vec<ConnTask> = lock(&self.inner.conns).drain().map(|(_, t)| t).collect();
        for t in conns {
            t.close.notify_one();
        }
        let _ = std::fs::remove_file(&self.inner.cfg.control.socket);
    }

    /// Writes `op` to the ledger as this host's SM would (through the leader), for
    /// benchmarks and tools; the SM's own writes go through its actions.
    pub async fn write(&self, op: LedgerOp) -> StoreReply {
        self.inner.propose(op).await
    }

    /// A harmless write this host is entitled to make: re-announcing its boot epoch.
    pub fn harmless_write(&self) -> LedgerOp {
        LedgerOp::HostBooted {
            host: self.inner.cfg.id.clone(),
            boot: self.inner.hw.boot_epoch().to_bytes(),
        }
    }

    /// Whether this member currently leads the store.
    pub fn is_leader(&self) -> bool {
        self.inner
            .raft()
            .is_some_and(|r| r.metrics().borrow().current_leader == Some(self.inner.cfg.node_id))
    }

    /// Waits until the store has a leader (bounded).
    pub async fn wait_for_leader(&self, timeout: Duration) -> Option<NodeId> {
        let raft = self.inner.raft()?;
        raft.wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "leader")
            .await
            .ok()
            .and_then(|m| m.current_leader)
    }
}

/// A store member as openraft records it: `host@address`, so that every member can reach
/// members added after its own configuration was written.
pub(crate) fn member_node(host: &HostId, addr: &str) -> BasicNode {
    BasicNode::new(format!("{host}@{addr}"))
}

/// The host and address of a member recorded by [`member_node`].
pub(crate) fn parse_member(node: &BasicNode) -> Option<(HostId, String)> {
    let (host, addr) = node.addr.split_once('@')?;
    Some((HostId::new(host).ok()?, addr.to_owned()))
}

impl Inner {
    /// The initial members: this host and its configured peers.
    pub(crate) fn members(&self) -> BTreeMap<NodeId, BasicNode> {
        let mut m = BTreeMap::new();
        m.insert(
            self.cfg.node_id,
            member_node(&self.cfg.id, &self.cfg.listen),
        );
        for p in &self.cfg.peers {
            m.insert(p.node_id, member_node(&p.id, &p.addr));
        }
        m
    }

    /// The store's current members (voters and learners) with their host and address;
    /// the configured ones until the store knows better.
    pub(crate) fn current_members(&self) -> Vec<(NodeId, HostId, String, bool)> {
        let from_store: Vec<_> = self
            .raft()
            .map(|r| {
                let m = r.metrics().borrow().membership_config.clone();
                let voters: std::collections::BTreeSet<NodeId> =
                    m.membership().voter_ids().collect();
                m.nodes()
                    .filter_map(|(id, n)| {
                        parse_member(n).map(|(h, a)| (*id, h, a, voters.contains(id)))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if !from_store.is_empty() {
            return from_store;
        }
        self.members()
            .iter()
            .filter_map(|(id, n)| parse_member(n).map(|(h, a)| (*id, h, a, true)))
            .collect()
    }

    /// Where `host` listens: its configured address, or the one the store records.
    pub(crate) fn address_of(&self, host: &HostId) -> Option<String> {
        if let Some(p) = self.cfg.peer(host) {
            return Some(p.addr.clone());
        }
        self.current_members()
            .into_iter()
            .find(|(_, h, _, _)| h == host)
            .map(|(_, _, a, _)| a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raftnet::{StoreRequest, StoreResponse, WriteError};

    /// Polls `f` every 20 ms for up to `secs` seconds.
    async fn poll<T>(secs: u64, mut f: impl AsyncFnMut() -> Option<T>) -> Option<T> {
        for _ in 0..secs * 50 {
            if let Some(v) = f().await {
                return Some(v);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// A peer that has not attested cannot make a node buffer a record-sized frame: a
    /// frame announced just over a handshake message closes the connection before its body
    /// is read; a handshake-sized one is read, and closes it only once it fails to attest.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_peer_that_has_not_attested_cannot_announce_a_large_frame() {
        let dir = tempfile::tempdir().unwrap();
        let base = crate::cluster::free_base_port(1).expect("free loopback ports");
        let files = crate::cluster::init(&dir.path().join("c"), 1, base).unwrap();
        let mut cfg = NodeConfig::load(&files[0]).unwrap();
        // The handshake deadline must not be what closes the connection.
        cfg.timeouts.handshake_ms = 120_000;
        let addr = cfg.listen.clone();
        let node = Node::start(cfg).await.unwrap();
        // Sends a header announcing `len` bytes, then `body` of them; returns whether the
        // node closed the connection within 20 s.
        let closed_after = async |len: usize, body: usize| {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            s.write_all(&u32::try_from(len).unwrap().to_be_bytes())
                .await
                .unwrap();
            s.write_all(&vec![0x5a; body]).await.unwrap();
            let mut byte = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_secs(20), s.read(&mut byte));
            matches!(read.await, Ok(Ok(0) | Err(_)))
        };
        let small = godwit_attest::HANDSHAKE_MESSAGE_BYTES_MAX;
        assert!(
            closed_after(small + 1, 0).await,
            "a frame over a handshake message, announced before attesting, is refused"
        );
        assert!(
            closed_after(small, small).await,
            "a handshake-sized frame is read and fails to attest"
        );
        node.shutdown().await;
    }

    /// A member forwards only its own SM's writes: the leader refuses a write whose author
    /// is not the attested peer that sent it.
    #[tokio::test(flavor = "multi_thread")]
    async fn the_leader_refuses_a_write_forwarded_on_behalf_of_another_host() {
        let dir = tempfile::tempdir().unwrap();
        let base = crate::cluster::free_base_port(3).expect("free loopback ports");
        let mut nodes = Vec::new();
        for f in crate::cluster::init(&dir.path().join("c"), 3, base).unwrap() {
            nodes.push(Node::start(NodeConfig::load(&f).unwrap()).await.unwrap());
        }
        // Member `from` forwards `op` to whichever member leads now (leadership may still
        // move while the cluster settles; NotLeader answers are retried).
        let forward = async |from: usize, op: &LedgerOp| {
            let leader = nodes
                .iter()
                .position(Node::is_leader)
                .filter(|&l| l != from)?;
            let to = nodes[leader].host().clone();
            let r = nodes[from]
                .inner
                .rpc(&to, StoreRequest::Write(op.clone()), Duration::from_secs(5))
                .await;
            match r {
                Ok(StoreResponse::Write(Err(WriteError::NotLeader))) | Err(_) => None,
                Ok(StoreResponse::Write(r)) => Some((leader, r)),
                Ok(_) => panic!("mismatched reply"),
            }
        };
        // A member's own write goes through once the cluster is up; take a member that
        // does not lead.
        let (from, other) = poll(20, async || {
            let leader = nodes.iter().position(Node::is_leader)?;
            let from = (leader + 1) % 3;
            match forward(from, &nodes[from].harmless_write()).await? {
                (l, Ok(_)) if l != from => Some((from, 3 - from - l)),
                _ => None,
            }
        })
        .await
        .expect("a member's own forwarded write applied within 20 s");
        // The same member forwarding the third host's write is refused.
        let forged = nodes[other].harmless_write();
        let refused = poll(20, async || forward(from, &forged).await)
            .await
            .expect("an answer from the leader within 20 s");
        match refused {
            (_, Err(WriteError::Refused(why))) => {
                assert!(why.contains("on behalf of another host"), "{why}")
            }
            (_, r) => panic!("expected a refusal, got {r:?}"),
        }
        for n in &nodes {
            n.shutdown().await;
        }
    }
}
