//! A malicious daemon, for tests only: compiled in with the `hostile` feature (which only
//! the test suite's dev-dependency turns on, never a release build), and armed by the
//! `GODWIT_HOSTILE` environment variable. It plays the host the threat model assumes:
//! daemon code that calls its SM's entry points with whatever it likes. Each attack is one
//! thing such code can do with the SM's API; the process tests check the SM refuses it
//! and nothing forks.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use godwit_monitor::ConnId;

/// What the malicious daemon does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attack {
    /// Hands its SM a frame from a peer a second time (a replayed store message or
    /// migration record: "the leader committed it", once more).
    Replay,
    /// Hands its SM a frame it made itself: a store message in the clear that says a
    /// leader committed whatever the host likes (a forged outcome).
    Forge,
    /// Hands its SM, on one peer's connection, a frame that came on another's (a reply
    /// from the peer that was not asked, a write forwarded under another's name).
    Splice,
    /// Hands its SM a frame the SM itself sent, as if the peer had sent it.
    Reflect,
    /// Tells its SM that store records are durable without writing them (the SM acts on
    /// them; at the next start the host has lost them).
    LieDurable,
}

impl Attack {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "replay" => Self::Replay,
            "forge" => Self::Forge,
            "splice" => Self::Splice,
            "reflect" => Self::Reflect,
            "lie-durable" => Self::LieDurable,
            _ => return None,
        })
    }
}

/// The attack this daemon runs, if armed.
pub(crate) fn attack() -> Option<Attack> {
    static ATTACK: OnceLock<Option<Attack>> = OnceLock::new();
    *ATTACK.get_or_init(|| {
        let a = std::env::var("GODWIT_HOSTILE").ok()?;
        let attack = Attack::parse(&a);
        match attack {
            Some(a) => tracing::warn!(attack = ?a, "HOSTILE DAEMON: this node attacks its own SM"),
            None => tracing::error!(%a, "GODWIT_HOSTILE names no attack; running honestly"),
        }
        attack
    })
}

/// The frame number on each connection at which the daemon strikes (after the handshake,
/// once the channel carries traffic), and then every this many frames.
const STRIKE_AT: u64 = 6;
const STRIKE_EVERY: u64 = 40;

#[derive(Default)]
struct Seen {
    /// Frames read per connection.
    read: HashMap<ConnId, u64>,
    /// The last frame read, and on which connection.
    last_in: Option<(ConnId, Vec<u8>)>,
    /// The last frame the SM sent on each connection.
    last_out: HashMap<ConnId, Vec<u8>>,
}

fn seen() -> std::sync::MutexGuard<'static, Seen> {
    static SEEN: OnceLock<Mutex<Seen>> = OnceLock::new();
    SEEN.get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// The SM sent `frame` on `conn`.
pub(crate) fn sent(conn: ConnId, frame: &[u8]) {
    if attack() == Some(Attack::Reflect) {
        seen().last_out.insert(conn, frame.to_vec());
    }
}

/// The daemon read `frame` on `conn` and handed it to the SM; returns a frame to hand the
/// SM next on `conn`, if the attack strikes now.
pub(crate) fn after_read(conn: ConnId, frame: &[u8]) -> Option<Vec<u8>> {
    let attack = attack()?;
    let mut s = seen();
    let n = s.read.entry(conn).or_default();
    *n += 1;
    let strike = *n >= STRIKE_AT && (*n - STRIKE_AT).is_multiple_of(STRIKE_EVERY);
    let other = s.last_in.take();
    s.last_in = Some((conn, frame.to_vec()));
    if !strike {
        return None;
    }
    let forged = match attack {
        Attack::Replay => frame.to_vec(),
        Attack::Forge => forged_commit(frame)?,
        Attack::Splice => match other {
            Some((c, f)) if c != conn => f,
            _ => return None,
        },
        Attack::Reflect => s.last_out.get(&conn)?.clone(),
        Attack::LieDurable => return None,
    };
    tracing::warn!(%conn, ?attack, bytes = forged.len(), "HOSTILE DAEMON: handing the SM a frame of its own making");
    Some(forged)
}

/// Whether the daemon claims records durable without writing them.
pub(crate) fn lies_about_durability() -> bool {
    attack() == Some(Attack::LieDurable)
}

/// A record the host writes itself to claim an outcome: the channel's framing copied
/// from the record just read (its type, the next sequence number), and a body that says, in
/// the clear, that a leader committed what the host likes. The host has no channel key,
/// so it cannot seal it; the tag and MAC are its best guess (zeros).
fn forged_commit(after: &[u8]) -> Option<Vec<u8>> {
    const HEADER: usize = 13;
    const TRAILER: usize = 32;
    let header = after.get(..HEADER)?;
    let seq = u64::from_be_bytes(header[1..9].try_into().ok()?).wrapping_add(1);
    let body: &[u8] =
        b"store: MsgHeartbeat from=leader term=99 commit=1000000 (abort applied: resume)";
    let mut forged = Vec::with_capacity(HEADER + body.len() + TRAILER);
    forged.push(header[0]);
    forged.extend_from_slice(&seq.to_be_bytes());
    forged.extend_from_slice(&u32::try_from(body.len()).ok()?.to_be_bytes());
    forged.extend_from_slice(body);
    forged.resize(HEADER + body.len() + TRAILER, 0);
    Some(forged)
}
