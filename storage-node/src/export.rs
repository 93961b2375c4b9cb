//! Export for an asset's owner: the caller proves it holds the owner's key, the ledger says who
//! the owner is and where the asset came from (an attested import for a dataset, a settled job
//! for a trained model), and the bytes leave in bounded chunks: a dataset's shards as plain
//! Parquet, a trained model's weights as the tensor the asset names. An asset that merely
//! carries the content hash is not enough.

use aic_ledger::api::{LedgerRequest, LedgerResponse};
use aic_ledger::state::Provenance;
use aic_ledger::tx::AssetKind;
use aic_ledger::Address;
use aic_protocol::certs::PeerIdentity;
use aic_protocol::messages::{ClientResponse, OwnerProof, PeerResponse};
use aic_protocol::rpc::Reply;
use aic_protocol::tensor::TensorRef;
use aic_protocol::{ErrorCode, RpcError, ShardId};

use crate::catalog::dataset_id_of_hash;
use crate::node::StorageNode;
use crate::serving::{now_ms, RequestTimer};

/// What an owner asks to export.
#[derive(Clone, Copy, Debug)]
enum Exported {
    Dataset,
    /// A trained model's weights: the TrainedModel asset's content hash names the tensor.
    Weights(TensorRef),
}

/// How far ahead an owner proof may expire: a proof is for one export, not a standing grant.
pub const MAX_PROOF_LIFETIME_MS: u64 = 3_600_000;
/// Plain Parquet bytes per answer frame.
const EXPORT_CHUNK: usize = 1024 * 1024;

impl StorageNode {
    pub async fn export(
        &self,
        peer: &PeerIdentity,
        dataset: &str,
        shard: &ShardId,
        proof: &OwnerProof,
    ) -> Result<Reply<ClientResponse>, RpcError> {
        let timer = RequestTimer::start(self.metrics.request_duration.with_label_values(&["export"]));
        self.check_owner(peer, dataset, proof, Exported::Dataset).await?;
        let plaintext = self.open_shard(dataset, shard).await?;
        self.metrics.exported_bytes.inc_by(plaintext.len() as u64);
        let chunks: Vec<Result<ClientResponse, RpcError>> = plaintext
            .chunks(EXPORT_CHUNK)
            .map(|c| Ok(ClientResponse::ExportChunk { bytes: c.to_vec() }))
            .collect();
        drop(timer);
        Ok(Reply::Stream(Box::pin(futures::stream::iter(chunks))))
    }

    /// A trained model's weights for the TrainedModel asset's owner, chunk by chunk as the
    /// tensor store opens them.
    pub async fn export_tensor(
        &self,
        peer: &PeerIdentity,
        tensor: TensorRef,
        proof: &OwnerProof,
    ) -> Result<Reply<ClientResponse>, RpcError> {
        let timer = RequestTimer::start(
            self.metrics
                .request_duration
                .with_label_values(&["export_tensor"]),
        );
        self.check_owner(peer, &tensor.ticket_name(), proof, Exported::Weights(tensor))
            .await?;
        let frames = self
            .tensors
            .serve(tensor)
            .await
            .map_err(|e| self.refuse(e.reason(), ErrorCode::NotFound, e.to_string()))?;
        let exported = self.metrics.exported_bytes.clone();
        let rejected = self.metrics.rejected.clone();
        Ok(Reply::Stream(Box::pin(futures::StreamExt::map(
            frames,
            move |frame| {
                let _timer = &timer;
                match frame {
                    Ok(PeerResponse::TensorChunk { index, bytes }) => {
                        exported.inc_by(bytes.len() as u64);
                        Ok(ClientResponse::TensorChunk { index, bytes })
                    }
                    Ok(PeerResponse::TensorEnd { chunks }) => Ok(ClientResponse::TensorEnd { chunks }),
                    Ok(_) => Err(RpcError::new(ErrorCode::Internal, "not a tensor frame")),
                    Err(e) => {
                        rejected.with_label_values(&[e.reason()]).inc();
                        Err(RpcError::new(ErrorCode::Internal, e.to_string()))
                    }
                }
            },
        ))))
    }

    /// The proof is fresh, signed by the key it names for this caller and `name` (a dataset id,
    /// or a tensor's ticket name), and the ledger's asset is the genuine asset of what is asked
    /// for and belongs to that key.
    async fn check_owner(
        &self,
        peer: &PeerIdentity,
        name: &str,
        proof: &OwnerProof,
        exported: Exported,
    ) -> Result<(), RpcError> {
        let dataset = name;
        let now = now_ms();
        if proof.expires_ms <= now || proof.expires_ms > now + MAX_PROOF_LIFETIME_MS {
            return Err(self.refuse(
                "proof_expired",
                ErrorCode::PermissionDenied,
                "the owner proof has expired or expires too far ahead (at most an hour)",
            ));
        }
        let owner = Address(proof.owner);
        let message = OwnerProof::message(&proof.asset, dataset, &peer.node_id, proof.expires_ms);
        let signature: Option<[u8; 64]> = proof.signature.as_slice().try_into().ok();
        if !signature.is_some_and(|s| aic_ledger::keys::verify_strict(&owner, &message, &s)) {
            return Err(self.refuse(
                "proof_forged",
                ErrorCode::PermissionDenied,
                "the owner proof's signature does not verify for this caller and dataset",
            ));
        }
        let scheduler = self.dial_scheduler().await?;
        let asset = match aic_ledger::remote::request(&scheduler, &LedgerRequest::Asset(proof.asset)).await {
            Ok(LedgerResponse::Asset(asset)) => asset,
            Ok(other) => {
                return Err(RpcError::new(
                    ErrorCode::Internal,
                    format!("unexpected ledger answer {other:?}"),
                ))
            }
            Err(e) => {
                return Err(RpcError::new(
                    ErrorCode::Unavailable,
                    format!("reading the ledger: {e}"),
                ))
            }
        };
        let Some(asset) = asset else {
            return Err(self.refuse(
                "not_owner",
                ErrorCode::NotFound,
                format!("no asset {}", proof.asset),
            ));
        };
        let genuine = match (exported, &asset.kind, &asset.provenance) {
            (Exported::Dataset, AssetKind::Dataset, Provenance::Imported { .. }) => {
                self.catalog.read().await.get(dataset).is_some()
                    && dataset_id_of_hash(&asset.metadata.content_hash) == dataset
            }
            (Exported::Weights(tensor), AssetKind::TrainedModel, Provenance::Trained { .. }) => {
                asset.metadata.content_hash == tensor.hash
            }
            _ => false,
        };
        if !genuine {
            return Err(self.refuse(
                "not_owner",
                ErrorCode::PermissionDenied,
                format!(
                    "asset {} is not the genuine asset of {dataset} (its kind, provenance or content differ)",
                    proof.asset
                ),
            ));
        }
        if asset.owner != owner {
            return Err(self.refuse(
                "not_owner",
                ErrorCode::PermissionDenied,
                format!(
                    "asset {} belongs to {}, not to the key that signed",
                    proof.asset, asset.owner
                ),
            ));
        }
        Ok(())
    }
}
