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
    pub jobs: crate::job::JobContext,
}

fn unavailable(error: actix::MailboxError) -> RpcError {
    RpcError::new(ErrorCode::Unavailable, format!("registry unavailable: {error}"))
}

impl SchedulerApi {
    /// A registration's or heartbeat's answer with the scheduler replicas the ledger's
    /// membership names (voters and learners): nodes follow the replica set from it, so a
    /// replica added or removed needs no node restart.
    fn with_replicas(&self, mut answer: NodeResponse) -> NodeResponse {
        let members = self.ledger.read(|a| aic_protocol::messages::SchedulerReplicas {
            membership_index: a.membership.log_id().map_or(0, |id| id.index),
            addrs: a
                .membership
                .membership()
                .nodes()
                .map(|(_, replica)| replica.addr.clone())
                .collect(),
        });
        if let NodeResponse::Registered {
            scheduler_replicas, ..
        }
        | NodeResponse::HeartbeatAccepted {
            scheduler_replicas, ..
        } = &mut answer
        {
            *scheduler_replicas = members;
        }
        answer
    }

    async fn job_status(&self, job: aic_protocol::JobId) -> Result<ClientResponse, RpcError> {
        match self
            .jobs
            .board
            .send(crate::job::Status { job })
            .await
            .map_err(unavailable)?
        {
            Some((state, report)) => Ok(ClientResponse::Job {
                state: state.as_str().to_string(),
                report: report.to_string(),
            }),
            None => Err(RpcError::new(
                ErrorCode::NotFound,
                format!("no job {job} on this scheduler"),
            )),
        }
    }
}

impl RpcHandler for SchedulerApi {
    async fn node(&self, peer: &PeerIdentity, request: NodeRequest) -> Result<NodeResponse, RpcError> {
        let peer = peer.clone();
        match request {
            NodeRequest::Register(registration) => self
                .registry
                .send(Register { peer, registration })
                .await
                .map_err(unavailable)?
                .map(|answer| self.with_replicas(answer)),
            NodeRequest::Heartbeat(heartbeat) => self
                .registry
                .send(ReceiveHeartbeat { peer, heartbeat })
                .await
                .map_err(unavailable)?
                .map(|answer| self.with_replicas(answer)),
            NodeRequest::AttestImport(mint) => {
                crate::provenance::mint_attested_dataset(&self.jobs, &peer, *mint).await
            }
        }
    }

    async fn client(&self, peer: &PeerIdentity, request: ClientRequest) -> Result<ClientResponse, RpcError> {
        match request {
            ClientRequest::ListNodes => Ok(ClientResponse::Nodes(
                self.registry.send(ListNodes).await.map_err(unavailable)?,
            )),
            ClientRequest::Ledger(payload) => Ok(ClientResponse::Ledger(
                self.ledger.handle_client(&payload, peer.role).await,
            )),
            ClientRequest::QuoteJob(request) => {
                let (amount, detail) = crate::job::quote(&self.jobs, &request).await?;
                Ok(ClientResponse::JobQuote {
                    amount: amount.to_string(),
                    detail,
                })
            }
            ClientRequest::SubmitJob(request) => {
                let job = request.job;
                crate::job::submit(&self.jobs, request, peer.node_id).await?;
                self.job_status(job).await
            }
            ClientRequest::JobStatus { job } => self.job_status(job).await,
            ClientRequest::CancelJob { job } => {
                self.jobs
                    .board
                    .send(crate::job::Cancel {
                        job,
                        caller: peer.node_id,
                    })
                    .await
                    .map_err(unavailable)??;
                self.job_status(job).await
            }
            ClientRequest::Ratings => {
                let (records, penalties) = self
                    .jobs
                    .rater
                    .send(crate::rater::Records)
                    .await
                    .map_err(unavailable)?;
                let records: serde_json::Map<String, serde_json::Value> = records
                    .iter()
                    .map(|(node, r)| {
                        (
                            node.to_string(),
                            serde_json::json!({"matches": r.matches, "mismatches": r.mismatches, "reputation": r.reputation, "check_rate": r.check_rate()}),
                        )
                    })
                    .collect();
                Ok(ClientResponse::Ratings {
                    report: serde_json::json!({"records": records, "penalties": penalties}).to_string(),
                })
            }
            ClientRequest::InferenceVerdict { node, model, matched } => {
                if matched {
                    self.jobs
                        .rater
                        .do_send(crate::rater::RecordCheck { node, matched });
                } else {
                    // Penalties name nodes as `aic nodes` does.
                    let listed = self
                        .registry
                        .send(ListNodes)
                        .await
                        .map_err(unavailable)?
                        .into_iter()
                        .find(|n| n.node_id == node);
                    let name = listed
                        .as_ref()
                        .map_or_else(|| node.to_string(), |n| n.name.clone());
                    let payout = listed.and_then(|n| n.payout_address.parse::<aic_ledger::Address>().ok());
                    let slashed = match payout {
                        Some(account) => self
                            .jobs
                            .slash_stake(
                                account,
                                format!("inference on {model}: outputs outvoted by two nodes"),
                            )
                            .await
                            .unwrap_or_else(|error| {
                                tracing::warn!(%name, %error, "slash refused");
                                aic_ledger::Amount::ZERO
                            }),
                        None => aic_ledger::Amount::ZERO,
                    };
                    self.jobs.rater.do_send(crate::rater::RecordInferenceFault {
                        node,
                        name,
                        model,
                        slashed,
                    });
                }
                Ok(ClientResponse::Recorded)
            }
            ClientRequest::ListDatasets
            | ClientRequest::Preview { .. }
            | ClientRequest::Stat { .. }
            | ClientRequest::BeginImport
            | ClientRequest::UploadShard { .. }
            | ClientRequest::CommitImport { .. }
            | ClientRequest::DropDataset { .. }
            | ClientRequest::AbortImport { .. }
            | ClientRequest::Export { .. }
            | ClientRequest::ExportTensor { .. } => Err(RpcError::new(
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
