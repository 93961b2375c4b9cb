//! The scheduler's QUIC API: turns node and client requests into messages to its actors, and
//! ledger and replica traffic into calls on its ledger replica. Roles are already checked by the
//! RPC layer; this only routes.

use std::sync::Arc;

use actix::Addr;
use aic_ledger::raft::replica::LedgerReplica;
use aic_protocol::certs::PeerIdentity;
use aic_protocol::messages::{
    ClientRequest, ClientResponse, NodeRequest, NodeResponse, ReplicaRequest, ReplicaResponse,
};
use aic_protocol::rpc::RpcHandler;
use aic_protocol::{ErrorCode, RpcError};

use crate::registry::{ListNodes, ReceiveHeartbeat, Register, Registry};

pub struct SchedulerApi {
    pub registry: Addr<Registry>,
    pub ledger: Arc<LedgerReplica>,
}

fn unavailable(error: actix::MailboxError) -> RpcError {
    RpcError::new(ErrorCode::Unavailable, format!("registry unavailable: {error}"))
}

impl RpcHandler for SchedulerApi {
    async fn node(&self, peer: &PeerIdentity, request: NodeRequest) -> Result<NodeResponse, RpcError> {
        let peer = peer.clone();
        match request {
            NodeRequest::Register(registration) => self
                .registry
                .send(Register { peer, registration })
                .await
                .map_err(unavailable)?,
            NodeRequest::Heartbeat(heartbeat) => self
                .registry
                .send(ReceiveHeartbeat { peer, heartbeat })
                .await
                .map_err(unavailable)?,
        }
    }

    async fn client(&self, _peer: &PeerIdentity, request: ClientRequest) -> Result<ClientResponse, RpcError> {
        match request {
            ClientRequest::ListNodes => Ok(ClientResponse::Nodes(
                self.registry.send(ListNodes).await.map_err(unavailable)?,
            )),
            ClientRequest::Ledger(payload) => {
                Ok(ClientResponse::Ledger(self.ledger.handle_client(&payload).await))
            }
            ClientRequest::ListDatasets
            | ClientRequest::Preview { .. }
            | ClientRequest::Stat { .. }
            | ClientRequest::BeginImport
            | ClientRequest::UploadShard { .. }
            | ClientRequest::CommitImport { .. }
            | ClientRequest::DropDataset { .. }
            | ClientRequest::Export { .. } => Err(RpcError::new(
                ErrorCode::Unsupported,
                "datasets are served by storage nodes, not the scheduler",
            )),
        }
    }

    async fn replica(
        &self,
        _peer: &PeerIdentity,
        request: ReplicaRequest,
    ) -> Result<ReplicaResponse, RpcError> {
        self.ledger.handle_replica(request).await
    }
}
