//! The storage node's RPC surface: which request goes to which part of the node.

use std::sync::Arc;

use aic_protocol::certs::PeerIdentity;
use aic_protocol::messages::{ClientRequest, ClientResponse, PeerRequest, PeerResponse};
use aic_protocol::node_agent::answer_peer;
use aic_protocol::rpc::{Reply, RpcHandler};
use aic_protocol::{ErrorCode, RpcError};

use crate::node::StorageNode;

pub(crate) struct StorageApi(pub Arc<StorageNode>);

impl RpcHandler for StorageApi {
    async fn client_reply(
        &self,
        peer: &PeerIdentity,
        request: ClientRequest,
    ) -> Result<Reply<ClientResponse>, RpcError> {
        let node = &self.0;
        let response = match request {
            ClientRequest::ListDatasets => ClientResponse::Datasets(node.list().await),
            ClientRequest::Preview { dataset, rows } => {
                ClientResponse::Preview(node.preview(&dataset, rows).await?)
            }
            ClientRequest::Stat { dataset } => ClientResponse::Stat(node.stat(&dataset).await?),
            ClientRequest::BeginImport => ClientResponse::ImportStarted {
                upload: node.begin_import(peer).await?,
            },
            ClientRequest::UploadShard {
                upload,
                shard,
                offset,
                total,
                bytes,
            } => ClientResponse::ShardReceived {
                received: node
                    .upload_shard(peer, upload, shard, offset, total, bytes)
                    .await?,
            },
            ClientRequest::CommitImport {
                upload,
                manifest,
                owner,
            } => {
                let (dataset, replicas, asset) = node.commit_import(peer, upload, &manifest, owner).await?;
                ClientResponse::Imported {
                    dataset,
                    replicas,
                    asset,
                }
            }
            ClientRequest::AbortImport { upload } => {
                node.abort_import(peer, upload).await?;
                ClientResponse::Aborted
            }
            ClientRequest::DropDataset { dataset } => {
                node.drop_dataset(peer, &dataset).await?;
                ClientResponse::Dropped
            }
            ClientRequest::Export {
                dataset,
                shard,
                proof,
            } => {
                return node.export(peer, &dataset, &shard, &proof).await;
            }
            ClientRequest::ExportTensor { tensor, proof } => {
                return node.export_tensor(peer, tensor, &proof).await;
            }
            ClientRequest::ListNodes
            | ClientRequest::Ledger(_)
            | ClientRequest::QuoteJob(_)
            | ClientRequest::SubmitJob(_)
            | ClientRequest::JobStatus { .. }
            | ClientRequest::CancelJob { .. }
            | ClientRequest::InferenceVerdict { .. }
            | ClientRequest::Ratings => {
                return Err(RpcError::new(
                    ErrorCode::Unsupported,
                    "storage nodes serve datasets; ask a scheduler",
                ))
            }
        };
        Ok(Reply::One(response))
    }

    async fn peer_reply(
        &self,
        peer: &PeerIdentity,
        request: PeerRequest,
    ) -> Result<Reply<PeerResponse>, RpcError> {
        let node = &self.0;
        match request {
            PeerRequest::GetShard {
                dataset,
                shard,
                ticket,
            } => node.get_shard(peer, &dataset, &shard, &ticket).await,
            PeerRequest::FetchSealed { dataset, shard } => node.serve_sealed(peer, &dataset, &shard).await,
            PeerRequest::EscrowKey {
                dataset,
                sealed,
                holders,
            } => Ok(Reply::One(
                node.keep_escrow(peer, dataset, sealed, holders).await?,
            )),
            PeerRequest::RecoverKey { dataset } => Ok(Reply::One(node.recover_escrow(peer, &dataset).await?)),
            PeerRequest::ListTensors => Ok(Reply::One(node.list_tensors().await?)),
            PeerRequest::Replicate {
                manifest,
                key,
                importer,
                source,
                owner,
            } => {
                let (shards, attestation) = node
                    .accept_replica(peer, &manifest, &key, importer, &source, owner)
                    .await?;
                Ok(Reply::One(PeerResponse::Replicated { shards, attestation }))
            }
            PeerRequest::DropReplica { dataset } => {
                node.drop_replica(peer, &dataset).await?;
                Ok(Reply::One(PeerResponse::Dropped))
            }
            PeerRequest::GetTensor { tensor, ticket } => node.get_tensor(peer, tensor, ticket.as_ref()).await,
            PeerRequest::GetPublishedTensor { asset, tensor } => {
                node.get_published_tensor(asset, tensor).await
            }
            PeerRequest::PutTensor { tensor, index, bytes } => {
                let complete = node.put_tensor(peer, tensor, index, &bytes).await?;
                Ok(Reply::One(PeerResponse::TensorStored { complete }))
            }
            PeerRequest::DropTensor { tensor } => {
                node.drop_tensor(tensor).await?;
                Ok(Reply::One(PeerResponse::Dropped))
            }
            PeerRequest::ReReplicate {
                dataset,
                target,
                target_addr,
                lost,
            } => {
                let holders = node
                    .re_replicate(peer, &dataset, target, &target_addr, &lost)
                    .await
                    .map_err(|e| node.handover_refusal(e))?;
                Ok(Reply::One(PeerResponse::ReReplicated { holders }))
            }
            PeerRequest::TakeReplica {
                manifest,
                key,
                holders,
            } => {
                let shards = node
                    .take_replica(peer, &manifest, key, holders)
                    .await
                    .map_err(|e| node.handover_refusal(e))?;
                Ok(Reply::One(PeerResponse::ReplicaTaken { shards }))
            }
            PeerRequest::UpdateHolders { holders } => {
                let epoch = node
                    .update_holders(peer, holders)
                    .await
                    .map_err(|e| node.handover_refusal(e))?;
                Ok(Reply::One(PeerResponse::HoldersUpdated { epoch }))
            }
            other => answer_peer(other).map(Reply::One),
        }
    }
}
