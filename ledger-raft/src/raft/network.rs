//! Raft traffic between scheduler replicas over the protocol crate's QUIC transport. Only
//! scheduler-role certificates may send it (checked by the RPC layer), and each connection is
//! checked to reach the replica the membership names.

use aic_protocol::messages::{ReplicaRequest, ReplicaResponse};
use aic_protocol::rpc::RpcClient;
use aic_protocol::Role;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::AnyError;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::types::{LedgerRaft, ReplicaAddr, ReplicaId};

/// Makes a [`ReplicaPeer`] per target replica, all on this replica's endpoint.
#[derive(Clone)]
pub struct QuicNetwork {
    pub endpoint: quinn::Endpoint,
}

impl RaftNetworkFactory<LedgerRaft> for QuicNetwork {
    type Network = ReplicaPeer;

    async fn new_client(&mut self, target: ReplicaId, node: &ReplicaAddr) -> ReplicaPeer {
        ReplicaPeer {
            endpoint: self.endpoint.clone(),
            target,
            addr: node.clone(),
            client: None,
        }
    }
}

/// The connection to one other replica, made lazily and remade after failures.
pub struct ReplicaPeer {
    endpoint: quinn::Endpoint,
    target: ReplicaId,
    addr: ReplicaAddr,
    client: Option<RpcClient>,
}

type Rpc<T, E> = Result<T, RPCError<ReplicaId, ReplicaAddr, E>>;

fn unreachable<E: std::error::Error>(error: impl std::fmt::Display) -> RPCError<ReplicaId, ReplicaAddr, E> {
    RPCError::Unreachable(Unreachable::new(&AnyError::error(error.to_string())))
}

impl ReplicaPeer {
    async fn client(&mut self) -> Result<RpcClient, String> {
        if let Some(client) = self.client.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        let client = RpcClient::connect(&self.endpoint, &self.addr.addr, Role::Scheduler)
            .await
            .map_err(|e| e.to_string())?;
        if client.peer().node_id.to_string() != self.addr.node_id {
            return Err(format!(
                "{} answered as {}, membership says replica {} is {}",
                self.addr.addr,
                client.peer().node_id.short(),
                self.target,
                self.addr.node_id
            ));
        }
        self.client = Some(client.clone());
        Ok(client)
    }

    async fn send<Req, Resp, E>(&mut self, wrap: fn(Vec<u8>) -> ReplicaRequest, request: &Req) -> Rpc<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = self.client().await.map_err(unreachable)?;
        let payload = postcard::to_stdvec(request).map_err(|e| unreachable::<E>(e))?;
        let ReplicaResponse(bytes) = match client.call(&wrap(payload)).await {
            Ok(response) => response,
            Err(error) => {
                self.client = None;
                return Err(RPCError::Network(NetworkError::new(&AnyError::error(
                    error.to_string(),
                ))));
            }
        };
        let result: Result<Resp, E> = postcard::from_bytes(&bytes)
            .map_err(|e| RPCError::Network(NetworkError::new(&AnyError::new(&e))))?;
        result.map_err(|e| RPCError::RemoteError(openraft::error::RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<LedgerRaft> for ReplicaPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<LedgerRaft>,
        _option: RPCOption,
    ) -> Rpc<AppendEntriesResponse<ReplicaId>, RaftError<ReplicaId>> {
        self.send(ReplicaRequest::AppendEntries, &rpc).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<LedgerRaft>,
        _option: RPCOption,
    ) -> Rpc<InstallSnapshotResponse<ReplicaId>, RaftError<ReplicaId, InstallSnapshotError>> {
        self.send(ReplicaRequest::InstallSnapshot, &rpc).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<ReplicaId>,
        _option: RPCOption,
    ) -> Rpc<VoteResponse<ReplicaId>, RaftError<ReplicaId>> {
        self.send(ReplicaRequest::Vote, &rpc).await
    }
}
