//! The host daemon's runtime: it gives its SM a network, a disk and a clock to sleep on.
//! Everything it moves is sealed by the SM — frames between SMs, blobs, and the records of
//! the SM's store member; everything it hands the SM is checked there. The daemon runs no
//! consensus of its own: the store member lives in the SM, and the daemon only carries its
//! messages and keeps its records.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use godwit_hw::{DeviceIdentity, Hardware, SoftHardware};
use godwit_monitor::{
    Action, ConnId, Event, MemberConfig, Monitor, MonitorConfig, Opened, StoreStatus, StoreWrite,
    sm_measurement,
};
use godwit_wire::HostId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, broadcast, mpsc};

use crate::config::NodeConfig;
use crate::disk::DirBlobStore;
use crate::records::RecordLog;

/// Largest frame read from a peer that has attested: one record of the largest payload.
/// Before that, the SM allows only a handshake message ([`Monitor::frame_bytes_max`]).
pub const FRAME_BYTES_MAX: usize = godwit_monitor::RECORD_FRAME_BYTES_MAX;
/// How long a connection to a peer may take to be accepted.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);
/// A peer is shown `up` if its SM's store member heard from it this recently.
const UP_WITHIN: Duration = Duration::from_secs(2);

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
    /// The store's record files could not be opened or read.
    #[error("store records in {dir}: {source}")]
    Store {
        /// The record directory.
        dir: String,
        /// The OS error.
        source: std::io::Error,
    },
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
    monitor: Mutex<Monitor>,
    conns: Mutex<HashMap<ConnId, ConnTask>>,
    /// Records for the writer task, in the order the SM produced them.
    persist: mpsc::UnboundedSender<StoreWrite>,
    /// The record files (taken at shutdown, which lets their lock go).
    records: Arc<Mutex<Option<RecordLog>>>,
    pub(crate) events: broadcast::Sender<Event>,
    timer: Notify,
    pub(crate) token: String,
    /// What this host's migrations and store records did since it started.
    pub(crate) metrics: Mutex<crate::metrics::Metrics>,
    shutdown: Notify,
    /// One lock per enclave with a call under way, so that its calls run one at a time
    /// (the SM refuses a second one as busy) without holding the SM.
    calls: Mutex<HashMap<godwit_wire::EnclaveId, Arc<tokio::sync::Mutex<()>>>>,
}

/// The host's own clock, for its own business (back-off, liveness, timing its disk). The
/// SM never sees it: its deadlines are on the trusted timer.
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

/// A store member as the operator sees it.
#[derive(Debug, Clone)]
pub(crate) struct MemberView {
    pub(crate) host: HostId,
    pub(crate) addr: String,
    pub(crate) voter: bool,
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

    /// Reads from the SM (its ledger, its store's status) without driving it.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&Monitor) -> R) -> R {
        f(&lock_sm(&self.monitor))
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

    fn act(self: &Arc<Self>, action: Action) {
        match action {
            Action::Connect {
                conn, peer, addr, ..
            } => {
                tokio::spawn(Arc::clone(self).dial(conn, peer, addr));
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
            Action::Persist(w) => {
                // The writer task lives as long as the node; after shutdown nothing waits
                // for the record.
                let _ = self.persist.send(w);
            }
            Action::Event(e) => {
                tracing::debug!(?e, "event");
                lock(&self.metrics).observe(&e);
                let _ = self.events.send(e);
            }
            other => tracing::warn!(?other, "unhandled SM action"),
        }
    }

    /// Makes the SM's store records durable, in order, batching what queued meanwhile
    /// into one sync, and tells the SM how far they are durable. The SM's member sends
    /// nothing that depends on a record before it hears so.
    async fn persist_loop(self: Arc<Self>, mut queue: mpsc::UnboundedReceiver<StoreWrite>) {
        while let Some(first) = queue.recv().await {
            let mut batch = vec![first];
            while batch.len() < PERSIST_BATCH_MAX
                && let Ok(w) = queue.try_recv()
            {
                batch.push(w);
            }
            let last = batch.last().map_or(0, |w| w.number);
            let bytes: usize = batch.iter().map(|w| w.bytes.len()).sum();
            let count = batch.len();
            #[cfg(feature = "hostile")]
            if crate::hostile::lies_about_durability() {
                self.with(|m| m.persisted(last));
                continue;
            }
            let log = Arc::clone(&self.records);
            let start = host_now();
            let written =
                tokio::task::spawn_blocking(move || lock(&log).as_mut().map(|l| l.write(&batch)))
                    .await;
            match written {
                // Shut down: nothing waits for the records any more.
                Ok(None) => return,
                Ok(Some(Ok(()))) => {
                    lock(&self.metrics).observe_store_sync(count, bytes, start.elapsed());
                    self.with(|m| m.persisted(last));
                }
                // The records' order on disk can no longer be vouched for: stop. Nothing
                // the SM was told is durable is lost; it finds the rest missing at the
                // next start (and rejoins from its peers if need be).
                Ok(Some(Err(e))) => {
                    tracing::error!(error = %e, "the store's records could not be written; stopping the node");
                    std::process::abort()
                }
                Err(e) => {
                    tracing::error!(error = %e, "the store's writer failed; stopping the node");
                    std::process::abort()
                }
            }
        }
    }

    /// Where `host` listens: the SM's hint (from the store's membership), else the
    /// configured address.
    fn address_of(&self, host: &HostId, hint: Option<String>) -> Option<String> {
        hint.or_else(|| self.cfg.peer(host).map(|p| p.addr.clone()))
            .or_else(|| {
                self.members()
                    .into_iter()
                    .find(|m| m.host == *host && !m.addr.is_empty())
                    .map(|m| m.addr)
            })
    }

    /// Whether `host` is a host this node can reach (a member, or configured).
    pub(crate) fn knows(&self, host: &HostId) -> bool {
        self.address_of(host, None).is_some()
    }

    /// The store's members as this SM's member applied them; the founders it was
    /// configured with until it knows better.
    pub(crate) fn members(&self) -> Vec<MemberView> {
        let (members, status) = self.read(|m| (m.store_members(), m.store_status()));
        let mut out: Vec<MemberView> = members
            .into_iter()
            .map(|m| MemberView {
                voter: status.voters.contains(&m.host),
                addr: if m.addr.is_empty() {
                    self.configured_addr(&m.host)
                } else {
                    m.addr
                },
                host: m.host,
            })
            .collect();
        if out.is_empty() {
            out = self
                .cfg
                .store
                .founders
                .iter()
                .map(|h| MemberView {
                    host: h.clone(),
                    addr: self.configured_addr(h),
                    voter: true,
                })
                .collect();
        }
        out
    }

    fn configured_addr(&self, host: &HostId) -> String {
        if *host == self.cfg.id {
            return self.cfg.listen.clone();
        }
        self.cfg
            .peer(host)
            .map(|p| p.addr.clone())
            .unwrap_or_default()
    }

    /// What the SM's store member knows.
    pub(crate) fn store_status(&self) -> StoreStatus {
        self.read(Monitor::store_status)
    }

    /// Whether `host`'s SM was heard from lately (by this SM's store member).
    pub(crate) fn is_up(&self, status: &StoreStatus, host: &HostId) -> bool {
        *host == self.cfg.id
            || status
                .heard
                .iter()
                .any(|(h, ago)| h == host && *ago < UP_WITHIN)
    }

    async fn dial(self: Arc<Self>, conn: ConnId, peer: HostId, hint: Option<String>) {
        let Some(addr) = self.address_of(&peer, hint) else {
            tracing::warn!(%peer, "no address known for peer");
            let why = format!("no address is known for {peer}");
            return self.with(|m| m.dial_failed(conn, why));
        };
        let why = match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(&addr)).await {
            Ok(Ok(stream)) => return self.run_conn(conn, stream, true).await,
            Ok(Err(e)) => format!("{peer} at {addr}: {e}"),
            Err(_) => format!("{peer} at {addr}: no answer in {DIAL_TIMEOUT:?}"),
        };
        tracing::debug!(%peer, error = %why, "dial failed");
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
                    #[cfg(feature = "hostile")]
                    crate::hostile::sent(conn, &frame);
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
                #[cfg(feature = "hostile")]
                if let Some(mut forged) = crate::hostile::after_read(conn, frame) {
                    self.with(|m| m.handle_frame(conn, &mut forged));
                }
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
            let wait = self.read(Monitor::timeout_in);
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
}

/// Most records written with one sync.
const PERSIST_BATCH_MAX: usize = 256;

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

/// A running host: its SM (with its store member), its listener and control API.
pub struct Node {
    pub(crate) inner: Arc<Inner>,
}

impl Node {
    /// Starts a host from its configuration: boots the emulated hardware with the stored
    /// identity, reads the store member's records, starts the SM on them, listens for peers
    /// and for control requests. Returns once everything is listening.
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
        let token = read_token(&cfg.control.token_file)?;
        #[cfg(feature = "hostile")]
        let _ = crate::hostile::attack();
        let store_dir = cfg.store_dir();
        let store_err = |source| NodeError::Store {
            dir: store_dir.display().to_string(),
            source,
        };
        let (mut log, found) = RecordLog::open(&store_dir).map_err(store_err)?;
        let (monitor, opened) = Monitor::new(
            Arc::clone(&hw),
            Arc::new(blobs),
            MonitorConfig {
                policy,
                timeouts: cfg.timeouts.clone(),
                memory_budget_bytes: cfg.memory_budget_mib.saturating_mul(1024 * 1024),
                store: MemberConfig {
                    founders: cfg.store.founders.clone(),
                    lease: cfg.store.lease(),
                    ..MemberConfig::default()
                },
            },
            &found.records,
        )
        .map_err(|e| NodeError::Start(e.to_string()))?;
        match &opened {
            Opened::Fresh => tracing::info!("store member: no records; a fresh member"),
            Opened::Restored => tracing::info!(
                records = found.records.len(),
                torn_bytes = found.torn_bytes,
                "store member restored"
            ),
            Opened::Refused(why) => {
                let aside = log.set_aside().map_err(store_err)?;
                tracing::error!(error = %why, aside = %aside.display(), "the SM refused the store's records; kept aside; the member rejoins from its peers");
            }
            other => tracing::info!(?other, "store member opened"),
        }
        let listener = TcpListener::bind(&cfg.listen)
            .await
            .map_err(|e| NodeError::Start(format!("listen on {}: {e}", cfg.listen)))?;
        let (persist, queue) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            cfg,
            monitor: Mutex::new(monitor),
            conns: Mutex::new(HashMap::new()),
            persist,
            records: Arc::new(Mutex::new(Some(log))),
            events: broadcast::channel(4096).0,
            timer: Notify::new(),
            token,
            metrics: Mutex::default(),
            shutdown: Notify::new(),
            calls: Mutex::new(HashMap::new()),
        });
        tokio::spawn(Arc::clone(&inner).persist_loop(queue));
        tokio::spawn(Arc::clone(&inner).accept_loop(listener));
        tokio::spawn(Arc::clone(&inner).timer_loop());
        crate::serve::serve(Arc::clone(&inner))
            .await
            .map_err(NodeError::Start)?;
        // The SM's first records (and its boot announcement) go out now.
        inner.with(|_| ());
        tracing::info!(host = %inner.cfg.id, listen = %inner.cfg.listen, "node started");
        Ok(Node { inner })
    }

    /// This host's id.
    pub fn host(&self) -> &HostId {
        &self.inner.cfg.id
    }

    /// Stops the node: its listener, timers and connections.
    pub async fn shutdown(&self) {
        self.inner.shutdown.notify_waiters();
        let conns: Vec<ConnTask> = lock(&self.inner.conns).drain().map(|(_, t)| t).collect();
        for t in conns {
            t.close.notify_one();
        }
        let _ = std::fs::remove_file(&self.inner.cfg.control.socket);
        // Waits for a write under way; the record files' lock goes with them.
        let records = Arc::clone(&self.inner.records);
        let _ = tokio::task::spawn_blocking(move || lock(&records).take()).await;
    }

    /// What this host's SM's store member knows.
    pub fn store_status(&self) -> StoreStatus {
        self.inner.store_status()
    }

    /// Whether this host's SM's member leads the store.
    pub fn is_leader(&self) -> bool {
        self.store_status().leader.as_ref() == Some(self.host())
    }

    /// Waits until this host's SM knows a store leader and holds a lease (bounded).
    pub async fn wait_for_leader(&self, timeout: Duration) -> Option<HostId> {
        let end = host_now() + timeout;
        while host_now() < end {
            let s = self.store_status();
            if let (Some(l), true) = (s.leader, s.lease) {
                return Some(l);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Has the SM write a harmless entry to the store and waits until its own member
    /// applied it (see [`Monitor::probe_store`]): a store commit as the SM sees one.
    pub async fn probe_store(&self, timeout: Duration) -> Result<(), String> {
        crate::serve::probe(&self.inner, timeout).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// A one-host store commits the SM's writes through the host's record files, and a
    /// restart finds them: the SM's ledger survives, from records it checks itself.
    #[tokio::test(flavor = "multi_thread")]
    async fn store_records_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let base = crate::cluster::free_base_port(1).expect("free loopback ports");
        let files = crate::cluster::init(&dir.path().join("c"), 1, base).unwrap();
        let node = Node::start(NodeConfig::load(&files[0]).unwrap())
            .await
            .unwrap();
        assert!(
            node.wait_for_leader(Duration::from_secs(30))
                .await
                .is_some()
        );
        node.probe_store(Duration::from_secs(30)).await.unwrap();
        let applied = node.store_status().applied;
        node.shutdown().await;
        drop(node);
        // The listener may take a moment to be released by its task.
        let mut again = None;
        for _ in 0..500 {
            match Node::start(NodeConfig::load(&files[0]).unwrap()).await {
                Ok(n) => {
                    again = Some(n);
                    break;
                }
                Err(NodeError::Start(why)) if why.contains("listen") => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => panic!("{e}"),
            }
        }
        let again = again.expect("the node starts again within 10 s");
        // Restored from its records (applied once its first record of this run is durable,
        // and up to the last commit once it leads again).
        assert!(
            again
                .wait_for_leader(Duration::from_secs(30))
                .await
                .is_some()
        );
        assert!(again.store_status().applied > applied);
        again.shutdown().await;
    }
}
