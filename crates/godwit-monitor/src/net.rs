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

/// What a channel record carries: a migration message, or store traffic (Raft RPCs and
/// forwarded writes), opaque to the SM's migration code and handed to the host's store
/// member as [`Action::StoreMessage`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ChannelMessage<'a> {
    #[serde(borrow)]
    Migration(Message<'a>),
    Store(#[serde(with = "serde_bytes")] &'a [u8]),
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

/// Largest store payload one record carries.
pub const STORE_MESSAGE_BYTES_MAX: usize = MESSAGE_BYTES_MAX - 16;

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
    state: State,
    outbox: VecDeque<Vec<u8>>,
    started: TrustedInstant,
    handshake_deadline: Deadline,
    /// How long the handshake took, once open.
    attest: Option<Duration>,
    /// Record buffers to reuse (bulk frames come back through [`Monitor::recycle`]).
    pool: Vec<Vec<u8>>,
    /// Store traffic waiting for the channel to open.
    pending_store: Vec<Vec<u8>>,
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
}

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
    fn new_conn(&mut self, peer: Option<HostId>, dialled: bool, state: State) -> ConnId {
        let now = self.hw.now();
        let id = ConnId(self.net.next);
        self.net.next += 1;
        self.net.conns.insert(
            id,
            Conn {
                peer,
                dialled,
                state,
                outbox: VecDeque::new(),
                started: now,
                handshake_deadline: Deadline::after(now, self.config.timeouts.handshake_terms()),
                attest: None,
                pool: Vec::new(),
                pending_store: Vec::new(),
            },
        );
        id
    }

    /// An outbound connection to `peer`, reusing one that is open or being opened.
    pub(crate) fn dial(&mut self, peer: &HostId) -> ConnId {
        if let Some((&id, _)) = self
            .net
            .conns
            .iter()
            .find(|(_, c)| c.dialled && c.peer.as_ref() == Some(peer))
        {
            return id;
        }
        let id = self.new_conn(Some(peer.clone()), true, State::Dialing);
        self.actions.push_back(Action::Connect {
            conn: id,
            peer: peer.clone(),
        });
        id
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
        c.outbox.push_back(hello);
        self.actions.push_back(Action::Wake { conn });
    }

    /// The host accepted an inbound connection; returns the id to use for it.
    pub fn accept(&mut self) -> ConnId {
        self.new_conn(None, false, State::AwaitClientHello)
    }

    /// The host's connection ended (or could not be made).
    pub fn disconnected(&mut self, conn: ConnId) {
        if self.net.conns.remove(&conn).is_some() {
            self.connection_lost(conn, None);
            self.check_invariants();
        }
    }

    /// The host could not connect `conn` to its peer, for the reason `why` (a migration
    /// waiting for it fails naming it); otherwise as [`Monitor::disconnected`].
    pub fn dial_failed(&mut self, conn: ConnId, why: String) {
        if self.net.conns.remove(&conn).is_some() {
            self.connection_lost(conn, Some(AbortReason::Unreachable(why)));
            self.check_invariants();
        }
    }

    /// Gives up a connection: tells the host to close it and fails what depended on it.
    fn drop_conn(&mut self, conn: ConnId, reason: String) {
        tracing::warn!(%conn, %reason, "closing connection");
        self.net.conns.remove(&conn);
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
        let c = self.net.conns.get_mut(&conn)?;
        if let Some(frame) = c.outbox.pop_front() {
            return Some(frame);
        }
        if !matches!(c.state, State::Open(_)) {
            return None;
        }
        let frame = self.poll_migration_data(conn);
        self.check_invariants();
        frame
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
        self.send_channel(conn, &ChannelMessage::Migration(msg.clone()), msg.kind());
    }

    fn send_channel(&mut self, conn: ConnId, msg: &ChannelMessage<'_>, what: &str) {
        let Some(c) = self.net.conns.get_mut(&conn) else {
            return;
        };
        let frame = Self::seal_into_frame(c, |_, out| godwit_wire::encode_into(msg, out).ok());
        match frame {
            Some(frame) => {
                c.outbox.push_back(frame);
                self.actions.push_back(Action::Wake { conn });
            }
            None => self.drop_conn(conn, format!("cannot send {what}")),
        }
    }

    /// Sends store traffic (a Raft RPC or a forwarded write) to `peer` over the attested
    /// channel, dialling it if needed; it waits in the SM until the channel opens. Returns
    /// the connection, or `None` if the payload is too large for one record.
    pub fn send_store(&mut self, peer: &HostId, bytes: &[u8]) -> Option<ConnId> {
        if bytes.len() > STORE_MESSAGE_BYTES_MAX {
            return None;
        }
        let conn = self.dial(peer);
        if self.net.is_open(conn) {
            self.send_channel(conn, &ChannelMessage::Store(bytes), "store message");
        } else if let Some(c) = self.net.conns.get_mut(&conn) {
            c.pending_store.push(bytes.to_vec());
        }
        Some(conn)
    }

    /// Sends store traffic on a given connection (a reply); `false` if it is not open or
    /// the payload too large.
    pub fn send_store_on(&mut self, conn: ConnId, bytes: &[u8]) -> bool {
        if bytes.len() > STORE_MESSAGE_BYTES_MAX || !self.net.is_open(conn) {
            return false;
        }
        self.send_channel(conn, &ChannelMessage::Store(bytes), "store message");
        true
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
                            Ok(ChannelMessage::Store(bytes)) => {
                                self.actions.push_back(Action::StoreMessage {
                                    conn,
                                    peer,
                                    bytes: bytes.to_vec(),
                                })
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
                    c.outbox.push_back(reply);
                    self.actions.push_back(Action::Wake { conn });
                }
                if opened {
                    for bytes in std::mem::take(&mut c.pending_store) {
                        self.send_channel(conn, &ChannelMessage::Store(&bytes), "store message");
                    }
                    self.connection_opened(conn);
                }
            }
            Err(e) => self.drop_conn(conn, format!("attestation failed: {e}")),
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
