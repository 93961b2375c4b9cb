//! Re-replication on the storage nodes: copying a dataset whose holder was lost for good to a
//! node that does not hold it, and keeping every holder's record of who holds it now.
//!
//! ```text
//!  scheduler ── ReReplicate{dataset, target, lost} ──► holder
//!  holder ── TakeReplica{manifest, key, holder set} ──► target
//!  target ── FetchSealed × every shard ──► holder      (each opened under the key before it is
//!                                                       written; any failure deletes them all)
//!  holder ── UpdateHolders{holder set} ──► the other holders
//! ```
//!
//! Who drives: the scheduler leader (`aic-scheduler`'s `re_replication`). It alone sees every
//! storage node's heartbeats, so it knows which node is lost rather than restarting, which
//! datasets fell short of their replica count, and which node is up, has room and does not hold
//! the dataset; holders deciding for themselves would see none of that and race to place the
//! same copy. The scheduler never holds a dataset key, so the copy itself goes holder to target,
//! storage node to storage node, and only a storage certificate may hand a key over
//! (`take_replica`, `update_holders`); only a scheduler this node trusts may ask for a copy.
//!
//! Who holds a dataset is a [`HolderSet`] beside the manifest (the manifest's replicas are part
//! of the dataset's id and never change): tagged under the dataset key, its epoch only grows.

use aic_protocol::certs::PeerIdentity;
use aic_protocol::holders::{HolderSet, HolderSetError};
use aic_protocol::manifest::ReplicaLocation;
use aic_protocol::messages::{PeerRequest, PeerResponse};
use aic_protocol::rpc::RpcClient;
use aic_protocol::{ErrorCode, NodeId, RpcError, ShardId};
use bytes::Bytes;

use crate::catalog::{dataset_id, CatalogError};
use crate::manifest::Manifest;
use crate::node::StorageNode;
use crate::replication::fetch_sealed;
use crate::sealing::{DatasetKey, SealError};
use crate::shard_store::StoreError;

/// Why a copy was refused or failed, on either side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandoverError {
    #[error("no dataset {0} here")]
    NotHeld(String),
    #[error("node {0} is not a scheduler whose requests this node honours")]
    UntrustedScheduler(String),
    #[error("the target {0} is this node")]
    TargetIsSelf(String),
    #[error("the node at {addr} is {found}, not {expected}")]
    WrongNode {
        addr: String,
        expected: String,
        found: String,
    },
    #[error("manifest: {0}")]
    BadManifest(String),
    #[error("holder set: {0}")]
    BadHolders(#[from] HolderSetError),
    #[error("the holder set is for dataset {found}, not {expected}")]
    OtherDataset { expected: String, found: String },
    #[error("the holder set must name this node and the node asking")]
    NotNamed,
    #[error("dataset {0} is held here under another key")]
    OtherKey(String),
    #[error("shard {shard} is already stored here as part of dataset {dataset}")]
    ShardInUse { shard: ShardId, dataset: String },
    #[error("the copy of shard {shard} from {from} is damaged: {error}")]
    DamagedCopy {
        shard: ShardId,
        from: String,
        error: SealError,
    },
    #[error("{0}")]
    Peer(RpcError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

impl HandoverError {
    /// The wire code the asker receives.
    pub fn code(&self) -> ErrorCode {
        match self {
            HandoverError::NotHeld(_) => ErrorCode::NotFound,
            HandoverError::UntrustedScheduler(_)
            | HandoverError::NotNamed
            | HandoverError::WrongNode { .. } => ErrorCode::PermissionDenied,
            HandoverError::TargetIsSelf(_)
            | HandoverError::BadManifest(_)
            | HandoverError::BadHolders(_)
            | HandoverError::OtherDataset { .. } => ErrorCode::InvalidArgument,
            HandoverError::OtherKey(_) | HandoverError::ShardInUse { .. } => ErrorCode::AlreadyExists,
            // The holder's copy was bad on the way: another holder may have a good one.
            HandoverError::DamagedCopy { .. } | HandoverError::Store(_) => ErrorCode::Unavailable,
            HandoverError::Peer(e) => e.code,
            HandoverError::Catalog(_) => ErrorCode::Internal,
        }
    }

    /// The refusal's reason, for `aic_storage_requests_rejected_total`; none for a failure that
    /// is not the asker's doing.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            HandoverError::NotHeld(_) => Some("unknown_dataset"),
            HandoverError::UntrustedScheduler(_) => Some("untrusted_scheduler"),
            HandoverError::NotNamed | HandoverError::WrongNode { .. } => Some("not_a_holder"),
            HandoverError::TargetIsSelf(_)
            | HandoverError::BadManifest(_)
            | HandoverError::ShardInUse { .. } => Some("bad_manifest"),
            HandoverError::BadHolders(_)
            | HandoverError::OtherDataset { .. }
            | HandoverError::OtherKey(_) => Some("bad_holders"),
            HandoverError::DamagedCopy { .. } => Some("damaged_copy"),
            HandoverError::Peer(_) | HandoverError::Store(_) | HandoverError::Catalog(_) => None,
        }
    }
}

/// A copy under way from this node: while it lasts the target may fetch the dataset's sealed
/// shards, though no holder set names it yet.
pub(crate) struct Handover<'n> {
    node: &'n StorageNode,
    dataset: String,
    target: NodeId,
}

impl Drop for Handover<'_> {
    fn drop(&mut self) {
        let mut open = self.node.handovers.lock().expect("handovers");
        if let Some(i) = open
            .iter()
            .position(|(d, t)| *d == self.dataset && *t == self.target)
        {
            open.swap_remove(i);
        }
    }
}

impl StorageNode {
    /// Whether `caller` may fetch `dataset`'s sealed shards: a holder, or a copy's target now.
    pub(crate) fn may_fetch(&self, holders: &HolderSet, caller: &NodeId) -> bool {
        holders.names(&caller.to_string())
            || self
                .handovers
                .lock()
                .expect("handovers")
                .iter()
                .any(|(d, t)| *d == holders.dataset && t == caller)
    }

    /// Counts a handover refusal by reason and builds its wire error.
    pub(crate) fn handover_refusal(&self, error: HandoverError) -> RpcError {
        if let Some(reason) = error.reason() {
            self.metrics.rejected.with_label_values(&[reason]).inc();
        }
        RpcError::new(error.code(), error.to_string())
    }

    /// The scheduler asks this holder to copy `dataset` to `target`: the target takes it from
    /// here, then this node keeps the new holder set and hands it to the other holders.
    /// Answers the holders now.
    pub async fn re_replicate(
        &self,
        peer: &PeerIdentity,
        dataset: &str,
        target: NodeId,
        target_addr: &str,
        lost: &[NodeId],
    ) -> Result<Vec<NodeId>, HandoverError> {
        let result = self.hand_over(peer, dataset, target, target_addr, lost).await;
        let outcome = if result.is_ok() { "ok" } else { "failed" };
        self.metrics
            .re_replications
            .with_label_values(&["source", outcome])
            .inc();
        match &result {
            Ok(holders) => {
                tracing::info!(%dataset, target = %target.short(), holders = holders.len(), "dataset copied to a new holder")
            }
            Err(error) => {
                tracing::warn!(%dataset, target = %target.short(), %error, "copying a dataset to a new holder failed")
            }
        }
        result
    }

    async fn hand_over(
        &self,
        peer: &PeerIdentity,
        dataset: &str,
        target: NodeId,
        target_addr: &str,
        lost: &[NodeId],
    ) -> Result<Vec<NodeId>, HandoverError> {
        if !self.trusted.read().expect("trusted set").contains(&peer.node_id) {
            return Err(HandoverError::UntrustedScheduler(peer.node_id.short()));
        }
        if target == self.me {
            return Err(HandoverError::TargetIsSelf(target.short()));
        }
        let (manifest, key, current) = {
            let catalog = self.catalog.read().await;
            let Some((manifest, key)) = catalog.get(dataset) else {
                return Err(HandoverError::NotHeld(dataset.to_string()));
            };
            let holders = catalog.holders(dataset).expect("held");
            (manifest.clone(), key.clone(), holders)
        };
        let me = ReplicaLocation {
            node: self.me.to_string(),
            quic_addr: self.quic_addr.clone(),
        };
        let to = ReplicaLocation {
            node: target.to_string(),
            quic_addr: target_addr.to_string(),
        };
        let next = current.after_copy(me, to, lost, key.as_bytes())?;
        let handover = self.begin_handover(dataset, target);
        let client = self
            .dial_storage(target_addr)
            .await
            .map_err(HandoverError::Peer)?;
        if client.peer().node_id != target {
            return Err(HandoverError::WrongNode {
                addr: target_addr.to_string(),
                expected: target.short(),
                found: client.peer().node_id.short(),
            });
        }
        let request = PeerRequest::TakeReplica {
            manifest: manifest.to_json(),
            key: *key.as_bytes(),
            holders: next.clone(),
        };
        match client.call(&request).await {
            Ok(PeerResponse::ReplicaTaken { .. }) => {}
            Ok(other) => {
                return Err(HandoverError::Peer(RpcError::new(
                    ErrorCode::Internal,
                    format!("unexpected answer {other:?}"),
                )))
            }
            Err(error) => return Err(HandoverError::Peer(as_rpc(error))),
        }
        drop(handover);
        self.catalog.write().await.set_holders(dataset, next.clone())?;
        let others = next
            .holders
            .iter()
            .filter(|h| h.node != self.me.to_string() && h.node != target.to_string());
        for holder in others {
            // Best effort: a holder that misses it still serves its copy, and learns the set
            // with the next copy made.
            if let Err(error) = self.send_holders(&holder.quic_addr, &next).await {
                tracing::warn!(%dataset, holder = %holder.quic_addr, %error, "a holder did not take the new holder set");
            }
        }
        Ok(next.holders.iter().filter_map(|h| h.node.parse().ok()).collect())
    }

    fn begin_handover(&self, dataset: &str, target: NodeId) -> Handover<'_> {
        self.handovers
            .lock()
            .expect("handovers")
            .push((dataset.to_string(), target));
        Handover {
            node: self,
            dataset: dataset.to_string(),
            target,
        }
    }

    async fn send_holders(&self, addr: &str, holders: &HolderSet) -> Result<(), RpcError> {
        let client = self.dial_storage(addr).await?;
        let request = PeerRequest::UpdateHolders {
            holders: holders.clone(),
        };
        match client.call(&request).await {
            Ok(PeerResponse::HoldersUpdated { .. }) => Ok(()),
            Ok(other) => Err(RpcError::new(
                ErrorCode::Internal,
                format!("unexpected answer {other:?}"),
            )),
            Err(error) => Err(as_rpc(error)),
        }
    }

    /// A holder hands this node a dataset: check the manifest and the holder set under the key,
    /// pull every sealed shard from the holder, open each under the key before it is written,
    /// and keep the dataset only once every shard is in. Answers how many shards it holds.
    pub async fn take_replica(
        &self,
        peer: &PeerIdentity,
        manifest_json: &str,
        key: [u8; 32],
        holders: HolderSet,
    ) -> Result<u32, HandoverError> {
        let result = self.take(peer, manifest_json, key, holders).await;
        let outcome = if result.is_ok() { "ok" } else { "failed" };
        self.metrics
            .re_replications
            .with_label_values(&["target", outcome])
            .inc();
        if let Err(error) = &result {
            tracing::warn!(from = %peer.node_id.short(), %error, "refused a dataset copy");
        }
        result
    }

    async fn take(
        &self,
        peer: &PeerIdentity,
        manifest_json: &str,
        key: [u8; 32],
        holders: HolderSet,
    ) -> Result<u32, HandoverError> {
        let manifest = Manifest::from_json(manifest_json).map_err(HandoverError::BadManifest)?;
        let dataset = dataset_id(&manifest);
        holders.verify(&key)?;
        if holders.dataset != dataset {
            return Err(HandoverError::OtherDataset {
                expected: dataset,
                found: holders.dataset,
            });
        }
        let asker = peer.node_id.to_string();
        let Some(source) = holders.location_of(&asker).map(|h| h.quic_addr.clone()) else {
            return Err(HandoverError::NotNamed);
        };
        if !holders.names(&self.me.to_string()) {
            return Err(HandoverError::NotNamed);
        }
        let shards = u32::try_from(manifest.shards().count()).unwrap_or(u32::MAX);
        {
            // Held already (an earlier answer lost on the way): keep the newer holders.
            let mut catalog = self.catalog.write().await;
            if let Some((_, held)) = catalog.get(&dataset) {
                if held.as_bytes() != &key {
                    return Err(HandoverError::OtherKey(dataset));
                }
                catalog.set_holders(&dataset, holders)?;
                return Ok(shards);
            }
            for entry in manifest.shards() {
                let shard: ShardId = entry.id.parse().expect("checked by from_json");
                if let Some(other) = catalog.holder_of(&shard) {
                    return Err(HandoverError::ShardInUse {
                        shard,
                        dataset: other.to_string(),
                    });
                }
            }
        }
        let client = self.dial_storage(&source).await.map_err(HandoverError::Peer)?;
        if client.peer().node_id != peer.node_id {
            return Err(HandoverError::WrongNode {
                addr: source,
                expected: peer.node_id.short(),
                found: client.peer().node_id.short(),
            });
        }
        let key = DatasetKey::from_bytes(key);
        let mut written: Vec<ShardId> = Vec::new();
        let pulled = async {
            for entry in manifest.shards() {
                let shard: ShardId = entry.id.parse().expect("checked by from_json");
                self.pull_checked(&client, &dataset, &shard, &key).await?;
                written.push(shard);
            }
            Ok::<(), HandoverError>(())
        };
        let kept = match pulled.await {
            Ok(()) => self
                .catalog
                .write()
                .await
                .add_copy(manifest, key, holders)
                .map_err(HandoverError::from),
            Err(error) => Err(error),
        };
        if let Err(error) = kept {
            // Nothing half-written stays: no catalog entry was made, so no shard here is named.
            for shard in &written {
                if let Err(e) = self.store.delete(shard).await {
                    tracing::warn!(%shard, error = %e, "could not delete a shard of a refused copy");
                }
            }
            return Err(error);
        }
        self.publish_holdings(&Default::default()).await;
        tracing::info!(%dataset, shards, from = %source, "took a copy of a dataset");
        Ok(shards)
    }

    /// Pulls one sealed shard, opens it under `key` (authentic, hashing to its name), and only
    /// then writes it.
    async fn pull_checked(
        &self,
        client: &RpcClient,
        dataset: &str,
        shard: &ShardId,
        key: &DatasetKey,
    ) -> Result<(), HandoverError> {
        let sealed = fetch_sealed(client, dataset, shard)
            .await
            .map_err(HandoverError::Peer)?;
        key.open(shard, &sealed)
            .map_err(|error| HandoverError::DamagedCopy {
                shard: *shard,
                from: client.peer().name.clone(),
                error,
            })?;
        self.store.put(shard, Bytes::from(sealed)).await?;
        Ok(())
    }

    /// Another holder's newer holder set of a dataset held here.
    pub async fn update_holders(
        &self,
        peer: &PeerIdentity,
        holders: HolderSet,
    ) -> Result<u64, HandoverError> {
        let mut catalog = self.catalog.write().await;
        let Some((_, key)) = catalog.get(&holders.dataset) else {
            return Err(HandoverError::NotHeld(holders.dataset));
        };
        holders.verify(key.as_bytes())?;
        if !holders.names(&peer.node_id.to_string()) || !holders.names(&self.me.to_string()) {
            return Err(HandoverError::NotNamed);
        }
        let dataset = holders.dataset.clone();
        Ok(catalog.set_holders(&dataset, holders)?)
    }
}

fn as_rpc(error: aic_protocol::Error) -> RpcError {
    match error {
        aic_protocol::Error::Rpc(e) => e,
        other => RpcError::new(ErrorCode::Unavailable, other.to_string()),
    }
}
