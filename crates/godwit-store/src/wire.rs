//! What store members send each other, inside the SMs' attested channels, and how a
//! member's id is bound to its host.
//!
//! A member's id is a function of its attested host id ([`node_id`]), so a host is at
//! most one member, and a message is accepted only if the member it claims to come from is
//! the host whose channel it came on ([`decode`]).

use godwit_wire::HostId;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A member's id in the Raft group.
pub type NodeId = u64;

/// Largest store message accepted: a snapshot of the largest ledger, with room.
pub const STORE_MESSAGE_BYTES_MAX: usize = crate::SNAPSHOT_BYTES_MAX + 1024 * 1024;

/// The member id of `host`: 64 bits of SHA-256 over a label and the host id, never 0
/// (Raft's "nobody").
pub fn node_id(host: &HostId) -> NodeId {
    let mut h = Sha256::new();
    h.update(b"godwit store member v1");
    h.update(host.as_str().as_bytes());
    let d = h.finalize();
    let mut id = [0u8; 8];
    id.copy_from_slice(&d[..8]);
    u64::from_be_bytes(id).max(1)
}

/// One store message between two SMs.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum StoreMessage {
    /// A Raft message, protobuf-encoded as raft-rs defines it, with the store the sender
    /// belongs to, once it knows.
    Raft {
        cluster: Option<[u8; 32]>,
        #[serde(with = "serde_bytes")]
        raft: Vec<u8>,
    },
    /// The sender lost its records and rejoined empty: the leader forgets how far it
    /// believed the sender's log went, and probes it from the start.
    Rejoin { cluster: Option<[u8; 32]> },
    /// The sender is up (sent to every member now and then, so that every member knows
    /// which others are, not only the leader).
    Hello { cluster: Option<[u8; 32]> },
}

/// A decoded store message.
#[derive(Debug)]
pub(crate) enum Decoded {
    /// A Raft message, and the store its sender says it belongs to.
    Raft(Option<[u8; 32]>, Message),
    /// The sender rejoined empty.
    Rejoin(Option<[u8; 32]>),
    /// The sender is up.
    Hello(Option<[u8; 32]>),
}

/// Why a store message from a peer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Over [`STORE_MESSAGE_BYTES_MAX`].
    #[error("a store message of {0} bytes is over the limit")]
    TooLarge(usize),
    /// The bytes are not a store message.
    #[error("undecodable store message: {0}")]
    Malformed(String),
    /// The message claims to come from another member than the channel's attested host.
    #[error("a store message from {peer} claims to come from member {claimed:x}, not {expected:x}")]
    Impersonation {
        /// The attested peer.
        peer: HostId,
        /// The member the message names as its sender.
        claimed: NodeId,
        /// The peer's member id.
        expected: NodeId,
    },
    /// The message is addressed to another member.
    #[error("a store message for member {to:x} reached member {me:x}")]
    Misaddressed {
        /// Its addressee.
        to: NodeId,
        /// This member.
        me: NodeId,
    },
    /// A message type that never crosses the network.
    #[error("a local Raft message type {0:?} arrived from a peer")]
    LocalType(MessageType),
}

/// Encodes a Raft message for the wire, from a member of `cluster`.
pub(crate) fn encode(cluster: Option<[u8; 32]>, msg: &Message) -> Vec<u8> {
    // Invariant: raft-rs's own messages always encode.
    let raft = msg.write_to_bytes().expect("a Raft message encodes");
    godwit_wire::encode(&StoreMessage::Raft { cluster, raft })
}

/// Encodes a rejoin notice.
pub(crate) fn encode_rejoin(cluster: Option<[u8; 32]>) -> Vec<u8> {
    godwit_wire::encode(&StoreMessage::Rejoin { cluster })
}

/// Encodes a hello.
pub(crate) fn encode_hello(cluster: Option<[u8; 32]>) -> Vec<u8> {
    godwit_wire::encode(&StoreMessage::Hello { cluster })
}

/// Decodes a store message that arrived from the attested `peer` for member `me`: a Raft
/// message must come from `peer`'s member and be addressed to `me`.
pub(crate) fn decode(peer: &HostId, me: NodeId, bytes: &[u8]) -> Result<Decoded, WireError> {
    if bytes.len() > STORE_MESSAGE_BYTES_MAX {
        return Err(WireError::TooLarge(bytes.len()));
    }
    let (cluster, raft) = match godwit_wire::decode(bytes, STORE_MESSAGE_BYTES_MAX)
        .map_err(|e| WireError::Malformed(e.to_string()))?
    {
        StoreMessage::Raft { cluster, raft } => (cluster, raft),
        StoreMessage::Rejoin { cluster } => return Ok(Decoded::Rejoin(cluster)),
        StoreMessage::Hello { cluster } => return Ok(Decoded::Hello(cluster)),
    };
    let msg = Message::parse_from_bytes(&raft).map_err(|e| WireError::Malformed(e.to_string()))?;
    let expected = node_id(peer);
    if msg.from != expected {
        return Err(WireError::Impersonation {
            peer: peer.clone(),
            claimed: msg.from,
            expected,
        });
    }
    if msg.to != me {
        return Err(WireError::Misaddressed { to: msg.to, me });
    }
    if raft::raw_node::is_local_msg(msg.get_msg_type()) {
        return Err(WireError::LocalType(msg.get_msg_type()));
    }
    Ok(Decoded::Raft(cluster, msg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> HostId {
        HostId::new(s).unwrap()
    }

    #[test]
    fn ids_are_bound_to_hosts_and_never_zero() {
        assert_ne!(node_id(&h("host1")), node_id(&h("host2")));
        assert_eq!(node_id(&h("host1")), node_id(&h("host1")));
        assert_ne!(node_id(&h("host1")), 0);
    }

    #[test]
    fn a_message_is_accepted_only_from_the_member_it_names_and_for_this_member() {
        let (a, b, c) = (h("a"), h("b"), h("c"));
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgHeartbeat);
        m.from = node_id(&a);
        m.to = node_id(&b);
        let bytes = encode(Some([1; 32]), &m);
        assert!(matches!(
            decode(&a, node_id(&b), &bytes),
            Ok(Decoded::Raft(Some([1, ..]), _))
        ));
        // Relayed by c (c's channel), or delivered to c: refused.
        assert!(matches!(
            decode(&c, node_id(&b), &bytes),
            Err(WireError::Impersonation { .. })
        ));
        assert!(matches!(
            decode(&a, node_id(&c), &bytes),
            Err(WireError::Misaddressed { .. })
        ));
        // A local message type.
        m.set_msg_type(MessageType::MsgHup);
        assert!(matches!(
            decode(&a, node_id(&b), &encode(None, &m)),
            Err(WireError::LocalType(_))
        ));
        assert!(decode(&a, node_id(&b), b"\x00\x05junk").is_err());
    }
}
