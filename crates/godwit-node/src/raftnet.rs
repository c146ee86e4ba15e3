//! Store traffic between members, carried inside the SMs' attested channels: Raft RPCs,
//! writes forwarded to the leader, and liveness pings.

use std::sync::Weak;
use std::time::Duration;

use godwit_proto::{LedgerOp, LedgerOutcome};
use godwit_store::{NodeId, TypeConfig};
use godwit_wire::HostId;
use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use crate::node::Inner;

/// Decodes a store message that arrived from a peer SM.
pub(crate) fn decode_store_message(bytes: &[u8]) -> Result<StoreMsg, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// One store message inside a channel record.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum StoreMsg {
    Request { id: u64, req: StoreRequest },
    Response { id: u64, resp: StoreResponse },
    Ping,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum StoreRequest {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// A ledger write, forwarded to the leader by the member whose SM asked for it.
    Write(LedgerOp),
    /// A membership change, forwarded to the leader.
    Admin(Admin),
}

/// A membership change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Admin {
    /// Add a member (as a learner, then a voter).
    Add { node_id: NodeId, node: BasicNode },
    /// Remove a member; then settle its enclaves in the ledger.
    Remove { node_id: NodeId, host: HostId },
}

/// Why a membership change did not happen.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum AdminError {
    NotLeader,
    Failed(String),
}

/// Why a forwarded write did not apply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum WriteError {
    NotLeader,
    Refused(String),
    Failed(String),
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum StoreResponse {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    Write(Result<LedgerOutcome, WriteError>),
    Admin(Result<(), AdminError>),
}

/// Why an RPC got no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RpcFail {
    #[error("peer {0} unreachable")]
    Unreachable(String),
    #[error("no answer from {0} in time")]
    Timeout(String),
}

/// openraft's view of the network.
pub(crate) struct RaftNet {
    pub(crate) inner: Weak<Inner>,
}

/// openraft's connection to one member (the member's host id is its `BasicNode::addr`).
pub(crate) struct PeerLink {
    inner: Weak<Inner>,
    target: NodeId,
    host: String,
}

impl RaftNetworkFactory<TypeConfig> for RaftNet {
    type Network = PeerLink;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        PeerLink {
            inner: self.inner.clone(),
            target,
            host: crate::node::parse_member(node)
                .map(|(h, _)| h.to_string())
                .unwrap_or_else(|| node.addr.clone()),
        }
    }
}

impl PeerLink {
    async fn call<E: std::error::Error>(
        &self,
        req: StoreRequest,
        ttl: Duration,
    ) -> Result<StoreResponse, RPCError<NodeId, BasicNode, E>> {
        let inner = self.inner.upgrade().ok_or_else(|| {
            RPCError::Unreachable(Unreachable::new(&RpcFail::Unreachable(self.host.clone())))
        })?;
        let host = HostId::new(self.host.clone()).map_err(|e| {
            RPCError::Unreachable(Unreachable::new(&RpcFail::Unreachable(e.to_string())))
        })?;
        inner.rpc(&host, req, ttl).await.map_err(|e| match e {
            RpcFail::Unreachable(_) => RPCError::Unreachable(Unreachable::new(&e)),
            RpcFail::Timeout(_) => RPCError::Network(NetworkError::new(&e)),
        })
    }

    fn unexpected<E: std::error::Error>(&self) -> RPCError<NodeId, BasicNode, E> {
        RPCError::Network(NetworkError::new(&RpcFail::Timeout(format!(
            "{}: mismatched reply",
            self.host
        ))))
    }
}

impl RaftNetwork<TypeConfig> for PeerLink {
    async fn append_entries(
        &mut self,
        req: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self
            .call(StoreRequest::Append(req), option.hard_ttl())
            .await?
        {
            StoreResponse::Append(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(self.unexpected()),
        }
    }

    async fn install_snapshot(
        &mut self,
        req: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self
            .call(StoreRequest::Snapshot(req), option.hard_ttl())
            .await?
        {
            StoreResponse::Snapshot(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(self.unexpected()),
        }
    }

    async fn vote(
        &mut self,
        req: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self
            .call(StoreRequest::Vote(req), option.hard_ttl())
            .await?
        {
            StoreResponse::Vote(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(self.unexpected()),
        }
    }
}
