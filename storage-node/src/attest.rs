//! Provenance of imports: each replica signs that it holds a dataset whole for its owner, and
//! the node that took the upload asks the scheduler to mint the Dataset asset from those
//! signatures — the only way a Dataset asset comes to exist on the ledger.

use aic_ledger::Keypair;
use aic_protocol::messages::{DatasetMint, ImportAttestation, NodeRequest, NodeResponse};
use aic_protocol::{AssetId, Error, ErrorCode, RpcError};

use crate::catalog::manifest_hash;
use crate::manifest::Manifest;
use crate::node::StorageNode;

/// Most bytes of manifest the ledger publishes with an asset (`aic_ledger::state::MAX_MANIFEST_BYTES`).
const PUBLISHED_MANIFEST_BYTES: usize = aic_ledger::state::MAX_MANIFEST_BYTES;
/// How long minting may take: the scheduler commits a ledger transaction.
const MINT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The manifest as the ledger publishes it: whole when it fits, else without its import report,
/// else without its shard lists too (the storage nodes hold it whole; its hash is still the
/// content hash).
pub fn published_manifest(manifest: &Manifest) -> String {
    let full = manifest.to_json();
    if full.len() <= PUBLISHED_MANIFEST_BYTES {
        return full;
    }
    let without_report = Manifest {
        report: Vec::new(),
        ..manifest.clone()
    };
    let text = without_report.to_json();
    if text.len() <= PUBLISHED_MANIFEST_BYTES {
        return text;
    }
    let mut summary = serde_json::to_value(&without_report).expect("a manifest always encodes");
    summary["train"] = serde_json::json!(manifest.train.len());
    summary["test"] = serde_json::json!(manifest.test.len());
    summary.to_string()
}

/// This node's signature that it holds the content `content_hash` for `owner`.
pub fn attestation(key: &Keypair, content_hash: &[u8; 32], owner: &[u8; 32]) -> ImportAttestation {
    ImportAttestation {
        node_key: key.address().0,
        signature: key
            .sign(&ImportAttestation::message(content_hash, owner))
            .to_vec(),
    }
}

impl StorageNode {
    pub(crate) fn attest(&self, content_hash: &[u8; 32], owner: &[u8; 32]) -> ImportAttestation {
        attestation(&self.node_key, content_hash, owner)
    }

    /// Asks the scheduler to mint the Dataset asset of `manifest` to `owner` from the replicas'
    /// attestations; answers the asset. A refusal (the content is minted already, a bad
    /// signature) keeps its reason for the importer.
    pub(crate) async fn mint_dataset(
        &self,
        manifest: &Manifest,
        owner: [u8; 32],
        attestations: Vec<ImportAttestation>,
    ) -> Result<AssetId, RpcError> {
        let request = NodeRequest::AttestImport(Box::new(DatasetMint {
            owner,
            name: manifest.name.clone(),
            content_hash: manifest_hash(manifest),
            published_manifest: published_manifest(manifest),
            fee: if manifest.fee.is_empty() {
                "0".into()
            } else {
                manifest.fee.clone()
            },
            attestations,
        }));
        let scheduler = self.dial_scheduler().await?.with_timeout(MINT_TIMEOUT);
        match scheduler.call(&request).await {
            Ok(NodeResponse::DatasetMinted { asset }) => Ok(asset),
            Ok(other) => Err(RpcError::new(
                ErrorCode::Internal,
                format!("unexpected answer to a mint: {other:?}"),
            )),
            Err(Error::Rpc(refusal)) => {
                self.metrics.rejected.with_label_values(&["mint_refused"]).inc();
                Err(RpcError::new(
                    refusal.code,
                    format!("the Dataset asset was not minted: {}", refusal.message),
                ))
            }
            Err(error) => Err(RpcError::new(
                ErrorCode::Unavailable,
                format!("minting the Dataset asset: {error}"),
            )),
        }
    }
}
