//! Export for a Dataset asset's owner: the caller proves it holds the owner's key, the ledger
//! says who the owner is and where the asset came from (an attested import for a dataset, a
//! settled job for a trained model's weights), and the shard leaves as plain Parquet in
//! bounded chunks. An asset that merely carries the content hash is not enough.

use aic_ledger::api::{LedgerRequest, LedgerResponse};
use aic_ledger::state::Provenance;
use aic_ledger::tx::AssetKind;
use aic_ledger::Address;
use aic_protocol::certs::PeerIdentity;
use aic_protocol::messages::{ClientResponse, OwnerProof};
use aic_protocol::rpc::Reply;
use aic_protocol::{ErrorCode, RpcError, ShardId};

use crate::catalog::dataset_id_of_hash;
use crate::manifest::ObjectKind;
use crate::node::StorageNode;
use crate::serving::{now_ms, RequestTimer};

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
        self.check_owner(peer, dataset, proof).await?;
        let plaintext = self.open_shard(dataset, shard).await?;
        self.metrics.exported_bytes.inc_by(plaintext.len() as u64);
        let chunks: Vec<Result<ClientResponse, RpcError>> = plaintext
            .chunks(EXPORT_CHUNK)
            .map(|c| Ok(ClientResponse::ExportChunk { bytes: c.to_vec() }))
            .collect();
        drop(timer);
        Ok(Reply::Stream(Box::pin(futures::stream::iter(chunks))))
    }

    /// The proof is fresh, signed by the key it names for this caller and dataset, and the
    /// ledger's Dataset asset for this dataset belongs to that key.
    async fn check_owner(
        &self,
        peer: &PeerIdentity,
        dataset: &str,
        proof: &OwnerProof,
    ) -> Result<(), RpcError> {
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
        let genuine = match (&asset.kind, &asset.provenance) {
            (AssetKind::Dataset, Provenance::Imported { .. }) => Some(ObjectKind::Dataset),
            (AssetKind::TrainedModel, Provenance::Trained { .. }) => Some(ObjectKind::TrainedModel),
            _ => None,
        };
        let held = self.catalog.read().await.get(dataset).map(|(m, _)| m.kind);
        if genuine.is_none() || genuine != held || dataset_id_of_hash(&asset.metadata.content_hash) != dataset
        {
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
