//! Connections to peer SMs: the attested handshake, then the channel, both held by the SM.
//! The host moves frames (handshake messages, then sealed records) and never sees keys or
//! plaintext.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use godwit_attest::{
    AwaitClientFinish, AwaitServerHello, Channel, HANDSHAKE_MESSAGE_BYTES_MAX, Initiator, Opened,
    RECORD_OVERHEAD_BYTES, RECORD_PAYLOAD_BYTES_MAX, RecordBuf, RecordType, Responder,
};
use godwit_hw::TrustedInstant;
use godwit_proto::{AbortReason, Deadline, MESSAGE_BYTES_MAX, Message};
use godwit_wire::HostId;

use serde::{Deserialize, Serialize};

use crate::{Action, Event, Monitor};

/// What a channel record carries: a migration message, or store traffic for the SM's own
/// store member (a message of up to [`STORE_MESSAGE_BYTES_MAX`], cut into records: every
/// part but the last is a `StorePart`).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ChannelMessage<'a> {
    #[serde(borrow)]
    Migration(Message<'a>),
    Store(#[serde(with = "serde_bytes")] &'a [u8]),
    StorePart(#[serde(with = "serde_bytes")] &'a [u8]),
}

/// What a frame from [`Monitor::poll_transmit_tagged`] carries (its size tells as much to
/// anyone on the wire; this is for the host's bookkeeping and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameKind {
    /// A handshake message.
    Handshake,
    /// Migration traffic.
    Migration,
    /// Store traffic.
    Store,
}

/// The encoding of `ChannelMessage::Migration(m)` is this byte followed by `m`'s encoding
/// (postcard writes an enum's variant index as a varint), so bulk data can be encoded into
/// a record without an intermediate copy.
pub(crate) const MIGRATION_PREFIX: u8 = 0;

/// Frames below this are copied out of the pooled buffer rather than handed over.
const SMALL_FRAME_BYTES: usize = 64 * 1024;
/// Buffers a connection keeps for reuse. The daemon writes one bulk frame at a time, so
/// one buffer is out while the next is sealed; more would only hold memory.
const POOL_BUFFERS_MAX: usize = 2;

/// Largest store message; it travels cut into parts of at most one record each.
pub const STORE_MESSAGE_BYTES_MAX: usize = godwit_store::STORE_MESSAGE_BYTES_MAX;
/// The store bytes one record carries.
const STORE_PART_BYTES: usize = MESSAGE_BYTES_MAX - 64;
/// Store bytes queued for one connection at most (sent, or waiting for it to open);
/// past it, store messages are dropped (Raft asks again).
const STORE_QUEUED_BYTES_MAX: usize = 2 * STORE_MESSAGE_BYTES_MAX;

/// Largest frame on an open channel: one record of the largest payload.
pub const RECORD_FRAME_BYTES_MAX: usize = RECORD_PAYLOAD_BYTES_MAX + RECORD_OVERHEAD_BYTES;

/// A connection to a peer SM, as the host and the SM both name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}

enum State {
    /// The host is dialling.
    Dialing,
    AwaitServerHello(Box<AwaitServerHello>),
    AwaitClientHello,
    AwaitClientFinish(Box<AwaitClientFinish>),
    Open(Box<Channel>),
}

pub(crate) struct Conn {
    /// The host dialled (for outbound connections) or verified (once open).
    peer: Option<HostId>,
    dialled: bool,
    /// It carries the store's traffic (and no migration): Raft's heartbeats never wait
    /// behind a migration's records.
    store: bool,
    state: State,
    outbox: VecDeque<(Vec<u8>, FrameKind)>,
    /// Bytes of store frames in the outbox.
    store_queued: usize,
    started: TrustedInstant,
    handshake_deadline: Deadline,
    /// How long the handshake took, once open.
    attest: Option<Duration>,
    /// Record buffers to reuse (bulk frames come back through [`Monitor::recycle`]).
    pool: Vec<Vec<u8>>,
    /// Store traffic waiting for the channel to open.
    pending_store: VecDeque<Vec<u8>>,
    /// A store message arriving in parts.
    reassembly: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_migration_prefix_matches_postcards_encoding() {
        let msg = Message::Transfer {
            migration: godwit_proto::MigrationId([3; 16]),
            network_delay_us: 7,
        };
        let wrapped = godwit_wire::encode(&ChannelMessage::Migration(msg.clone()));
        let mut manual = vec![MIGRATION_PREFIX];
        manual.extend(godwit_wire::encode(&msg));
        assert_eq!(wrapped, manual);
        let store = godwit_wire::encode(&ChannelMessage::Store(b"x"));
        assert_ne!(store[0], MIGRATION_PREFIX);
    }
}

#[derive(Default)]
pub(crate) struct Connections {
    conns: BTreeMap<ConnId, Conn>,
    next: u64,
    /// Peers whose store connection failed to open: not dialled for the store again
    /// before this time (their messages are dropped meanwhile; Raft sends again).
    store_backoff: BTreeMap<HostId, TrustedInstant>,
}

/// Most peers remembered as unreachable (the store's members are far fewer).
const STORE_BACKOFF_PEERS_MAX: usize = 256;
/// How long the store waits before dialling again a peer it could not reach.
const STORE_REDIAL_BACKOFF: std::time::Duration = std::time::Duration::from_millis(500);

impl Connections {
    pub(crate) fn timeouts(&self) -> impl Iterator<Item = TrustedInstant> + '_ {
        self.conns
            .values()
            .filter(|c| !matches!(c.state, State::Open(_)))
            .map(|c| c.handshake_deadline.at())
    }

    pub(crate) fn get_mut(&mut self, conn: ConnId) -> Option<&mut Conn> {
        self.conns.get_mut(&conn)
    }

    /// The verified peer of an open connection.
    pub(crate) fn open_peer(&self, conn: ConnId) -> Option<&HostId> {
        self.conns
            .get(&conn)
            .filter(|c| matches!(c.state, State::Open(_)))
            .and_then(|c| c.peer.as_ref())
    }

    pub(crate) fn is_open(&self, conn: ConnId) -> bool {
        self.open_peer(conn).is_some()
    }

    pub(crate) fn attest_time(&self, conn: ConnId) -> Option<Duration> {
        self.conns.get(&conn).and_then(|c| c.attest)
    }
}

impl Monitor {
    fn new_conn(
        &mut self,
        peer: Option<HostId>,
        dialled: bool,
        store: bool,
        state: State,
    ) -> ConnId {
        let now = self.hw.now();
        let id = ConnId(self.net.next);
        self.net.next += 1;
        self.net.conns.insert(
            id,
            Conn {
                peer,
                dialled,
                store,
                state,
                outbox: VecDeque::new(),
                store_queued: 0,
                started: now,
                handshake_deadline: Deadline::after(now, self.config.timeouts.handshake_terms()),
                attest: None,
                pool: Vec::new(),
                pending_store: VecDeque::new(),
                reassembly: Vec::new(),
            },
        );
        id
    }

    /// An outbound connection to `peer` for migrations, reusing one that is open or being
    /// opened.
    pub(crate) fn dial(&mut self, peer: &HostId) -> ConnId {
        if let Some((&id, _)) = self
            .net
            .conns
            .iter()
            .find(|(_, c)| c.dialled && !c.store && c.peer.as_ref() == Some(peer))
        {
            return id;
        }
        self.new_dial(peer, false)
    }

    /// A connection to `peer` for the store's traffic: one that carries it already (either
    /// way, open or being opened), or a new one.
    fn dial_store(&mut self, peer: &HostId) -> ConnId {
        let found = self
            .net
            .conns
            .iter()
            .filter(|(_, c)| c.store && c.peer.as_ref() == Some(peer))
            .min_by_key(|(_, c)| !matches!(c.state, State::Open(_)))
            .map(|(&id, _)| id);
        found.unwrap_or_else(|| self.new_dial(peer, true))
    }

    fn new_dial(&mut self, peer: &HostId, store: bool) -> ConnId {
        let id = self.new_conn(Some(peer.clone()), true, store, State::Dialing);
        let addr = self
            .admitting
            .get(peer)
            .map(|a| a.addr.clone())
            .or_else(|| {
                self.store_members()
                    .into_iter()
                    .find(|m| m.host == *peer && !m.addr.is_empty())
                    .map(|m| m.addr)
            });
        self.actions.push_back(Action::Connect {
            conn: id,
            peer: peer.clone(),
            addr,
            store,
        });
        id
    }

    /// The SM's connections, for debugging: id, peer, whether dialled, whether they carry
    /// the store, phase, frames waiting, store bytes waiting.
    pub fn connections_debug(&self) -> String {
        let mut out = String::new();
        for (id, c) in &self.net.conns {
            let phase = match &c.state {
                State::Dialing => "dialing",
                State::AwaitClientHello => "await-client-hello",
                State::AwaitServerHello(_) => "await-server-hello",
                State::AwaitClientFinish(_) => "await-client-finish",
                State::Open(_) => "open",
            };
            out += &format!(
                "{id}: {:?} dialled={} store={} {phase} outbox={} store_queued={} pending={}; ",
                c.peer.as_ref().map(HostId::as_str),
                c.dialled,
                c.store,
                c.outbox.len(),
                c.store_queued,
                c.pending_store.len()
            );
        }
        out
    }

    /// The host established the connection it was asked to dial: the SM starts the
    /// handshake.
    pub fn connected(&mut self, conn: ConnId) {
        let Some(c) = self.net.conns.get_mut(&conn) else {
            return;
        };
        let (State::Dialing, Some(peer)) = (&c.state, c.peer.clone()) else {
            return;
        };
        let (next, hello) = Initiator::start(self.hw.clone(), self.policy.clone(), peer);
        c.state = State::AwaitServerHello(Box::new(next));
        c.outbox.push_back((hello, FrameKind::Handshake));
        self.actions.push_back(Action::Wake { conn });
    }

    /// The host accepted an inbound connection; returns the id to use for it.
    pub fn accept(&mut self) -> ConnId {
        self.new_conn(None, false, false, State::AwaitClientHello)
    }

    /// The host's connection ended (or could not be made).
    pub fn disconnected(&mut self, conn: ConnId) {
        if let Some(c) = self.net.conns.remove(&conn) {
            self.never_opened(&c, "the connection ended before the peer attested");
            self.connection_lost(conn, None);
            self.check_invariants();
        }
    }

    /// The host could not connect `conn` to its peer, for the reason `why` (a migration
    /// waiting for it fails naming it); otherwise as [`Monitor::disconnected`].
    pub fn dial_failed(&mut self, conn: ConnId, why: String) {
        if let Some(c) = self.net.conns.remove(&conn) {
            self.never_opened(&c, &why);
            self.connection_lost(conn, Some(AbortReason::Unreachable(why)));
            self.check_invariants();
        }
    }

    /// A dialled connection that closes before it opened: a host the operator asked to
    /// add could not be attested.
    fn never_opened(&mut self, c: &Conn, why: &str) {
        if let (true, true, false, Some(peer)) = (
            c.dialled,
            c.store,
            matches!(c.state, State::Open(_)),
            &c.peer,
        ) {
            if self.net.store_backoff.len() >= STORE_BACKOFF_PEERS_MAX {
                self.net.store_backoff.pop_first();
            }
            let until = self.hw.now().saturating_add(STORE_REDIAL_BACKOFF);
            self.net.store_backoff.insert(peer.clone(), until);
        }
        if let (true, false, Some(peer)) = (c.dialled, matches!(c.state, State::Open(_)), &c.peer) {
            let peer = peer.clone();
            self.admission_failed(&peer, why);
        }
    }

    /// Gives up a connection: tells the host to close it and fails what depended on it.
    fn drop_conn(&mut self, conn: ConnId, reason: String) {
        tracing::warn!(%conn, %reason, "closing connection");
        if let Some(c) = self.net.conns.remove(&conn) {
            self.never_opened(&c, &reason);
        }
        self.actions.push_back(Action::Close { conn });
        self.event(Event::PeerRefused {
            conn,
            reason: reason.clone(),
        });
        self.connection_lost(conn, Some(AbortReason::Attestation(reason)));
    }

    /// The next frame to send on `conn`, if any: handshake messages and control records
    /// first, then migration data as the host asks for it (so the host's socket paces the
    /// transfer).
    pub fn poll_transmit(&mut self, conn: ConnId) -> Option<Vec<u8>> {
        self.poll_transmit_tagged(conn).map(|(frame, _)| frame)
    }

    /// As [`Monitor::poll_transmit`], with what the frame carries.
    pub fn poll_transmit_tagged(&mut self, conn: ConnId) -> Option<(Vec<u8>, FrameKind)> {
        let c = self.net.conns.get_mut(&conn)?;
        if let Some((frame, kind)) = c.outbox.pop_front() {
            if kind == FrameKind::Store {
                c.store_queued = c.store_queued.saturating_sub(frame.len());
            }
            return Some((frame, kind));
        }
        if !matches!(c.state, State::Open(_)) {
            return None;
        }
        let frame = self.poll_migration_data(conn);
        self.check_invariants();
        frame.map(|f| (f, FrameKind::Migration))
    }

    /// Seals one data record carrying whatever `fill` encodes into the payload area, in a
    /// buffer from the connection's pool. A small frame is copied out and the buffer kept;
    /// a bulk frame takes the buffer with it (no copy), to come back via
    /// [`Monitor::recycle`].
    pub(crate) fn seal_into_frame(
        c: &mut Conn,
        fill: impl FnOnce(&[u8], &mut [u8]) -> Option<usize>,
    ) -> Option<Vec<u8>> {
        let Conn { state, pool, .. } = c;
        let State::Open(channel) = state else {
            return None;
        };
        let chain: Vec<u8> = channel.sender().chain().to_vec();
        let mut rec = RecordBuf::from_vec(pool.pop().unwrap_or_default());
        let Some(n) = fill(&chain, rec.payload_mut(MESSAGE_BYTES_MAX)) else {
            pool.push(rec.into_buffer());
            return None;
        };
        rec.truncate_payload(n);
        if let Err(e) = channel.sender().seal(RecordType::Data, &mut rec) {
            tracing::warn!(error = %e, "cannot seal a record");
            return None;
        }
        if n < SMALL_FRAME_BYTES {
            let frame = rec.as_bytes().to_vec();
            pool.push(rec.into_buffer());
            Some(frame)
        } else {
            Some(rec.into_vec())
        }
    }

    /// Gives back a frame buffer from [`Monitor::poll_transmit`] once it was written, so
    /// the next record needs no allocation.
    pub fn recycle(&mut self, conn: ConnId, mut buf: Vec<u8>) {
        if let Some(c) = self.net.conns.get_mut(&conn)
            && c.pool.len() < POOL_BUFFERS_MAX
            && buf.capacity() >= MESSAGE_BYTES_MAX
        {
            // Keep the length: the next record of up to this size reuses it unzeroed.
            buf.resize(buf.capacity(), 0);
            c.pool.push(buf);
        }
    }

    /// Encodes a control message into a sealed record on `conn`'s outbox.
    pub(crate) fn send_message(&mut self, conn: ConnId, msg: &Message<'_>) {
        let what = msg.kind();
        self.send_channel(
            conn,
            &ChannelMessage::Migration(msg.clone()),
            what,
            FrameKind::Migration,
        );
    }

    fn send_channel(
        &mut self,
        conn: ConnId,
        msg: &ChannelMessage<'_>,
        what: &str,
        kind: FrameKind,
    ) {
        let Some(c) = self.net.conns.get_mut(&conn) else {
            return;
        };
        let frame = Self::seal_into_frame(c, |_, out| godwit_wire::encode_into(msg, out).ok());
        match frame {
            Some(frame) => {
                if kind == FrameKind::Store {
                    c.store_queued += frame.len();
                }
                c.outbox.push_back((frame, kind));
                self.actions.push_back(Action::Wake { conn });
            }
            None => self.drop_conn(conn, format!("cannot send {what}")),
        }
    }

    /// Sends a store message from this SM's member to `peer`'s, over the attested channel
    /// (dialling it if needed; the message waits in the SM until the channel opens). Past
    /// [`STORE_QUEUED_BYTES_MAX`] queued for the peer, it is dropped: Raft sends again.
    pub(crate) fn send_store(&mut self, peer: &HostId, bytes: &[u8]) {
        if bytes.len() > STORE_MESSAGE_BYTES_MAX {
            tracing::warn!(%peer, bytes = bytes.len(), "a store message over the limit; dropped");
            return;
        }
        let now = self.hw.now();
        let has_conn = self
            .net
            .conns
            .values()
            .any(|c| c.store && c.peer.as_ref() == Some(peer));
        if !has_conn && let Some(until) = self.net.store_backoff.get(peer) {
            if !now.is_at_or_after(*until).unwrap_or(true) {
                return;
            }
            self.net.store_backoff.remove(peer);
        }
        let conn = self.dial_store(peer);
        let Some(c) = self.net.conns.get_mut(&conn) else {
            return;
        };
        let queued = c.store_queued + c.pending_store.iter().map(Vec::len).sum::<usize>();
        if queued + bytes.len() > STORE_QUEUED_BYTES_MAX {
            tracing::debug!(%peer, "the store's queue to the peer is full; a message dropped");
            return;
        }
        if !matches!(c.state, State::Open(_)) {
            c.pending_store.push_back(bytes.to_vec());
            return;
        }
        let mut parts = bytes.chunks(STORE_PART_BYTES).peekable();
        while let Some(part) = parts.next() {
            let msg = if parts.peek().is_some() {
                ChannelMessage::StorePart(part)
            } else {
                ChannelMessage::Store(part)
            };
            self.send_channel(conn, &msg, "store message", FrameKind::Store);
        }
    }

    /// One part of a store message from `peer` on `conn`; the whole message goes to the
    /// member once its last part arrived.
    fn store_part(&mut self, conn: ConnId, peer: &HostId, part: &[u8], last: bool) {
        let Some(c) = self.net.conns.get_mut(&conn) else {
            return;
        };
        // The peer's store talks on this connection: so does this one's.
        c.store = true;
        if c.reassembly.len() + part.len() > STORE_MESSAGE_BYTES_MAX {
            return self.drop_conn(conn, format!("a store message from {peer} over the limit"));
        }
        c.reassembly.extend_from_slice(part);
        if !last {
            return;
        }
        let message = std::mem::take(&mut c.reassembly);
        if let Err(e) = self.store.step(peer, &message) {
            tracing::warn!(%peer, error = %e, "a store message refused");
        }
        // What the member applied takes effect before this call returns: the SM never
        // holds an enclave that its own ledger no longer lets it run between two calls.
        self.pump_store();
    }

    /// The largest frame the host may read next on `conn`: a handshake message until the
    /// peer has attested, a record after; 0 for a connection the SM does not hold. A peer
    /// that has not attested cannot make the host buffer more than a handshake message.
    pub fn frame_bytes_max(&self, conn: ConnId) -> usize {
        match self.net.conns.get(&conn).map(|c| &c.state) {
            Some(State::Open(_)) => RECORD_FRAME_BYTES_MAX,
            Some(_) => HANDSHAKE_MESSAGE_BYTES_MAX,
            None => 0,
        }
    }

    /// One frame from the peer on `conn`: a handshake message or a record. The record is
    /// decrypted in place.
    pub fn handle_frame(&mut self, conn: ConnId, frame: &mut [u8]) {
        let Some(c) = self.net.conns.get_mut(&conn) else {
            return;
        };
        let state = std::mem::replace(&mut c.state, State::Dialing);
        match state {
            State::Open(mut channel) => {
                let chain_before = channel.receiver().chain().to_vec();
                let peer = channel.peer().host().clone();
                let opened = channel.receiver().open(frame).map(|o| match o {
                    Opened::Data(d) => Some(d),
                    Opened::Close => None,
                });
                c.state = State::Open(channel);
                match opened {
                    Ok(Some(payload)) => {
                        match godwit_wire::decode_borrowed(payload, MESSAGE_BYTES_MAX) {
                            Ok(ChannelMessage::Migration(msg)) => {
                                self.dispatch(conn, &peer, msg, &chain_before)
                            }
                            Ok(ChannelMessage::Store(part)) => {
                                self.store_part(conn, &peer, part, true)
                            }
                            Ok(ChannelMessage::StorePart(part)) => {
                                self.store_part(conn, &peer, part, false)
                            }
                            Err(e) => self
                                .drop_conn(conn, format!("undecodable message from {peer}: {e}")),
                        }
                    }
                    Ok(None) => self.drop_conn(conn, format!("{peer} closed the channel")),
                    Err(e) => self.drop_conn(conn, format!("record from {peer} refused: {e}")),
                }
            }
            other => self.handshake_step(conn, other, frame),
        }
        self.check_invariants();
    }

    fn handshake_step(&mut self, conn: ConnId, state: State, frame: &[u8]) {
        let now = self.hw.now();
        let result = match state {
            State::AwaitClientHello => {
                Responder::respond(self.hw.clone(), self.policy.clone(), frame)
                    .map(|(next, reply)| (State::AwaitClientFinish(Box::new(next)), Some(reply)))
            }
            State::AwaitServerHello(wait) => wait.receive(frame).map(|(session, finish)| {
                (State::Open(Box::new(session.into_channel())), Some(finish))
            }),
            State::AwaitClientFinish(wait) => wait
                .receive(frame)
                .map(|session| (State::Open(Box::new(session.into_channel())), None)),
            State::Dialing | State::Open(_) => {
                return self.drop_conn(conn, "a frame before the connection was set up".into());
            }
        };
        let Some(c) = self.net.conns.get_mut(&conn) else {
            return;
        };
        match result {
            Ok((next, reply)) => {
                if let State::Open(channel) = &next {
                    c.peer = Some(channel.peer().host().clone());
                    c.attest = now.duration_since(c.started).ok();
                    tracing::info!(%conn, peer = %channel.peer().host(), "attested channel open");
                }
                let opened = matches!(next, State::Open(_));
                c.state = next;
                if let Some(reply) = reply {
                    c.outbox.push_back((reply, FrameKind::Handshake));
                    self.actions.push_back(Action::Wake { conn });
                }
                if opened {
                    let peer = c.peer.clone();
                    let pending = std::mem::take(&mut c.pending_store);
                    if let Some(peer) = peer {
                        for bytes in pending {
                            self.send_store(&peer, &bytes);
                        }
                        self.admit(&peer);
                    }
                    self.connection_opened(conn);
                }
            }
            Err(e) => {
                let why = format!("attestation failed: {e}");
                // A host that answers and fails attestation is not admitted (no retry).
                if let Some(peer) = self
                    .net
                    .conns
                    .get(&conn)
                    .filter(|c| c.dialled)
                    .and_then(|c| c.peer.clone())
                {
                    self.admission_refused(&peer, &why);
                }
                self.drop_conn(conn, why)
            }
        }
    }

    pub(crate) fn net_timeouts(&mut self, now: TrustedInstant) {
        let expired: Vec<ConnId> = self
            .net
            .conns
            .iter()
            .filter(|(_, c)| {
                !matches!(c.state, State::Open(_)) && c.handshake_deadline.expired(now)
            })
            .map(|(&id, _)| id)
            .collect();
        for conn in expired {
            let terms = self.net.conns[&conn].handshake_deadline.terms();
            self.drop_conn(
                conn,
                format!("attestation did not complete in time: deadline {terms}"),
            );
        }
    }
}
