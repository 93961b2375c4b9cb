//! Copies between storage nodes: placing a new dataset on its replicas, the pull a replica makes
//! of sealed shards, and repairing a damaged shard from a healthy copy on another holder. Every
//! copy is opened with the dataset key (authentic, hashing to its name) before it is written.
//! (A lost holder's copy made again elsewhere is `handover.rs`.)

use std::collections::BTreeMap;

use aic_protocol::certs::PeerIdentity;
use aic_protocol::messages::{PeerRequest, PeerResponse};
use aic_protocol::rpc::{Reply, RpcClient};
use aic_protocol::{ErrorCode, NodeId, RpcError, ShardId};
use bytes::Bytes;

use aic_protocol::messages::ImportAttestation;

use crate::catalog::{dataset_id, manifest_hash};
use crate::manifest::Manifest;
use crate::node::StorageNode;
use crate::sealing::DatasetKey;
use crate::uploads::MAX_SHARD_BYTES;

/// Sealed bytes per answer frame.
const SEALED_CHUNK: usize = 1024 * 1024;
/// Sealing adds a nonce and a tag; a sealed shard is at most this much larger than its plaintext.
const SEAL_OVERHEAD: u64 = 64;

impl StorageNode {
    /// Asks every replica after the first (this node) to pull the dataset, and collects each
    /// replica's attestation for `owner` (this node's first). On failure, returns the error and
    /// the replicas that already hold a copy, for the caller to drop.
    pub(crate) async fn replicate_to_peers(
        &self,
        manifest: &Manifest,
        key: &DatasetKey,
        importer: NodeId,
        owner: [u8; 32],
    ) -> Result<Vec<ImportAttestation>, (RpcError, Vec<String>)> {
        let source = manifest.replicas[0].quic_addr.clone();
        let content_hash = manifest_hash(manifest);
        let mut attestations = vec![self.attest(&content_hash, &owner)];
        let mut done = Vec::new();
        for replica in manifest.replicas.iter().skip(1) {
            let request = PeerRequest::Replicate {
                manifest: manifest.to_json(),
                key: key.as_bytes().to_vec(),
                importer,
                source: source.clone(),
                owner,
            };
            let answer = match self.dial_storage(&replica.quic_addr).await {
                Ok(client) => client
                    .call(&request)
                    .await
                    .map_err(|e| RpcError::new(ErrorCode::Unavailable, e.to_string())),
                Err(e) => Err(e),
            };
            match answer {
                Ok(PeerResponse::Replicated { attestation, .. }) => {
                    self.metrics.replications.with_label_values(&["ok"]).inc();
                    done.push(replica.quic_addr.clone());
                    if NodeId::from_public_key(&attestation.node_key).to_string() != replica.node {
                        let error = RpcError::new(
                            ErrorCode::Internal,
                            format!(
                                "replica {} attested with a key that is not node {}",
                                replica.quic_addr, replica.node
                            ),
                        );
                        return Err((error, done));
                    }
                    attestations.push(attestation);
                }
                Ok(other) => {
                    return Err((
                        RpcError::new(ErrorCode::Internal, format!("unexpected answer {other:?}")),
                        done,
                    ))
                }
                Err(error) => {
                    self.metrics.replications.with_label_values(&["error"]).inc();
                    let error = RpcError::new(
                        error.code,
                        format!("placing a replica on {}: {}", replica.quic_addr, error.message),
                    );
                    return Err((error, done));
                }
            }
        }
        Ok(attestations)
    }

    pub(crate) async fn drop_on_peer(&self, addr: &str, dataset: &str) {
        let result = match self.dial_storage(addr).await {
            Ok(client) => client
                .call(&PeerRequest::DropReplica {
                    dataset: dataset.to_string(),
                })
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(error) = result {
            tracing::warn!(%addr, %dataset, %error, "could not drop a replica; its scrub will report it");
        }
    }

    /// A peer asks this node to hold a replica: pull each sealed shard from the peer itself
    /// (the `source` must be the caller), check it, store it, then record the dataset.
    pub async fn accept_replica(
        &self,
        peer: &PeerIdentity,
        manifest_json: &str,
        key: &[u8],
        importer: NodeId,
        source: &str,
        owner: [u8; 32],
    ) -> Result<(u32, ImportAttestation), RpcError> {
        let invalid = |m: String| self.refuse("bad_manifest", ErrorCode::InvalidArgument, m);
        let manifest = Manifest::from_json(manifest_json).map_err(invalid)?;
        let key: [u8; 32] = key
            .try_into()
            .map_err(|_| invalid("a dataset key is 32 bytes".into()))?;
        let key = DatasetKey::from_bytes(key);
        let me = self.me.to_string();
        if !manifest.replicas.iter().skip(1).any(|r| r.node == me) {
            return Err(invalid("this node is not among the manifest's replicas".into()));
        }
        let dataset = dataset_id(&manifest);
        let attestation = self.attest(&manifest_hash(&manifest), &owner);
        if self.catalog.read().await.get(&dataset).is_some() {
            return Ok((manifest.shards().count() as u32, attestation));
        }
        for entry in manifest.shards() {
            let shard: ShardId = entry.id.parse().expect("checked by from_json");
            if let Some(holder) = self.holder_of(&shard).await {
                return Err(self.refuse(
                    "bad_manifest",
                    ErrorCode::AlreadyExists,
                    format!("shard {shard} is already stored here as part of dataset {holder}"),
                ));
            }
        }
        let client = self.dial_storage(source).await?;
        if client.peer().node_id != peer.node_id {
            return Err(self.refuse(
                "bad_manifest",
                ErrorCode::PermissionDenied,
                "the replica source must be the node asking",
            ));
        }
        let mut copied = Vec::new();
        for entry in manifest.shards() {
            let shard: ShardId = entry.id.parse().expect("checked by from_json");
            let result = self.copy_from(&client, &dataset, &shard, &key).await;
            if let Err(error) = result {
                for shard in &copied {
                    let _ = self.store.delete(shard).await;
                }
                return Err(error);
            }
            copied.push(shard);
        }
        self.catalog
            .write()
            .await
            .add(manifest, key, Some(importer))
            .map_err(|e| RpcError::new(ErrorCode::Internal, e.to_string()))?;
        self.publish_holdings(&Default::default()).await;
        tracing::info!(%dataset, shards = copied.len(), from = %source, "replica placed");
        Ok((copied.len() as u32, attestation))
    }

    /// Pulls one sealed shard from `client`, checks it under `key` and stores it.
    async fn copy_from(
        &self,
        client: &RpcClient,
        dataset: &str,
        shard: &ShardId,
        key: &DatasetKey,
    ) -> Result<(), RpcError> {
        let sealed = fetch_sealed(client, dataset, shard).await?;
        if key.open(shard, &sealed).is_err() {
            return Err(RpcError::new(
                ErrorCode::Unavailable,
                format!("the copy of shard {shard} from {} is damaged", client.peer().name),
            ));
        }
        self.store
            .put(shard, Bytes::from(sealed))
            .await
            .map_err(|e| RpcError::new(ErrorCode::Unavailable, e.to_string()))
    }

    /// Streams a sealed shard to another replica of its dataset. Only an intact copy leaves.
    pub async fn serve_sealed(
        &self,
        peer: &PeerIdentity,
        dataset: &str,
        shard: &ShardId,
    ) -> Result<Reply<PeerResponse>, RpcError> {
        let sealed = {
            let catalog = self.catalog.read().await;
            let (manifest, key) = self.known(&catalog, dataset)?;
            let holders = catalog.holders(dataset).expect("known above");
            if !self.may_fetch(&holders, &peer.node_id) {
                return Err(self.refuse(
                    "not_a_replica",
                    ErrorCode::PermissionDenied,
                    format!(
                        "node {} holds no replica of dataset {dataset}",
                        peer.node_id.short()
                    ),
                ));
            }
            if manifest.shard(&shard.to_string()).is_none() {
                return Err(self.refuse(
                    "unknown_shard",
                    ErrorCode::NotFound,
                    format!("dataset {dataset} has no shard {shard}"),
                ));
            }
            let sealed = self
                .store
                .get(shard)
                .await
                .map_err(|e| self.refuse("missing_shard", ErrorCode::Unavailable, e.to_string()))?;
            if key.open(shard, &sealed).is_err() {
                return Err(self.refuse(
                    "corrupt_shard",
                    ErrorCode::Unavailable,
                    format!("shard {shard} is damaged here too"),
                ));
            }
            sealed
        };
        let chunks: Vec<Result<PeerResponse, RpcError>> = sealed
            .chunks(SEALED_CHUNK)
            .map(|c| Ok(PeerResponse::SealedChunk { bytes: c.to_vec() }))
            .collect();
        Ok(Reply::Stream(Box::pin(futures::stream::iter(chunks))))
    }

    /// The node that took the upload drops an import that did not complete.
    pub async fn drop_replica(&self, peer: &PeerIdentity, dataset: &str) -> Result<(), RpcError> {
        let primary = {
            let catalog = self.catalog.read().await;
            let (manifest, _) = self.known(&catalog, dataset)?;
            manifest.replicas.first().map(|r| r.node.clone())
        };
        if primary.as_deref() != Some(peer.node_id.to_string().as_str()) {
            return Err(self.refuse(
                "not_the_importer",
                ErrorCode::PermissionDenied,
                "only the node that took the upload may drop a replica",
            ));
        }
        self.forget(dataset).await
    }

    /// Re-creates damaged shards from the dataset's other holders. Returns how many were
    /// repaired; the rest stay damaged and are reported by the next scrub.
    pub async fn repair_from_peers(&self, damaged: &[ShardId]) -> usize {
        let plan: Vec<(ShardId, String, DatasetKey, Vec<String>)> = {
            let catalog = self.catalog.read().await;
            let expected: BTreeMap<ShardId, String> = catalog.expected_shards();
            let me = self.me.to_string();
            damaged
                .iter()
                .filter_map(|shard| {
                    let dataset = expected.get(shard)?;
                    let (_, key) = catalog.get(dataset)?;
                    let peers = catalog
                        .holders(dataset)?
                        .holders
                        .into_iter()
                        .filter(|r| r.node != me)
                        .map(|r| r.quic_addr)
                        .collect();
                    Some((*shard, dataset.clone(), key.clone(), peers))
                })
                .collect()
        };
        let mut repaired = 0;
        for (shard, dataset, key, peers) in plan {
            let mut fixed = false;
            for addr in &peers {
                let attempt = async {
                    let client = self.dial_storage(addr).await?;
                    self.copy_from(&client, &dataset, &shard, &key).await
                };
                match attempt.await {
                    Ok(()) => {
                        tracing::info!(%shard, %dataset, from = %addr, "shard repaired from a replica");
                        fixed = true;
                        break;
                    }
                    Err(error) => tracing::warn!(%shard, from = %addr, %error, "repair attempt failed"),
                }
            }
            let result = if fixed { "repaired" } else { "failed" };
            self.metrics.repairs.with_label_values(&[result]).inc();
            repaired += usize::from(fixed);
        }
        repaired
    }
}

/// Reads a sealed shard streamed by another storage node, refusing more than a shard can be.
pub async fn fetch_sealed(client: &RpcClient, dataset: &str, shard: &ShardId) -> Result<Vec<u8>, RpcError> {
    let transport = |e: aic_protocol::Error| match e {
        aic_protocol::Error::Rpc(e) => e,
        other => RpcError::new(ErrorCode::Unavailable, other.to_string()),
    };
    let mut stream = client
        .call_stream(&PeerRequest::FetchSealed {
            dataset: dataset.to_string(),
            shard: *shard,
        })
        .await
        .map_err(transport)?;
    let mut sealed = Vec::new();
    while let Some(item) = stream.next().await {
        match item.map_err(transport)? {
            PeerResponse::SealedChunk { bytes } => {
                if (sealed.len() + bytes.len()) as u64 > MAX_SHARD_BYTES + SEAL_OVERHEAD {
                    return Err(RpcError::new(
                        ErrorCode::InvalidArgument,
                        "a sealed shard larger than any shard",
                    ));
                }
                sealed.extend_from_slice(&bytes);
            }
            other => {
                return Err(RpcError::new(
                    ErrorCode::Internal,
                    format!("unexpected answer {other:?}"),
                ))
            }
        }
    }
    Ok(sealed)
}
