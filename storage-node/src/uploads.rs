//! Imports arriving from a client: plaintext shards checked against their names and sealed
//! under the upload's fresh dataset key as they complete; the commit places the dataset on
//! every replica the manifest names, has each replica attest it and the scheduler mint its
//! Dataset asset — or undoes it everywhere.
//!
//! Budgets per identity: each client certificate holds at most `uploads_per_client` open
//! uploads (the node at most [`MAX_OPEN_UPLOADS`]); an upload idle for `upload_idle_secs` is
//! abandoned and its shards deleted; a client may abort its upload at once. A shard's bytes
//! are buffered as they arrive, never reserved up front from the size a client claims.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use aic_protocol::certs::PeerIdentity;
use aic_protocol::{AssetId, ErrorCode, NodeId, RpcError, ShardId};
use bytes::Bytes;

use crate::catalog::dataset_id;
use crate::manifest::Manifest;
use crate::node::StorageNode;
use crate::sealing::DatasetKey;

/// Largest shard an upload may send (checked before anything is buffered).
pub const MAX_SHARD_BYTES: u64 = 64 * 1024 * 1024;
/// Uploads one node keeps open at once, all clients together.
pub const MAX_OPEN_UPLOADS: usize = 16;

/// One client's upload under way.
pub struct Upload {
    client: NodeId,
    key: DatasetKey,
    touched: Instant,
    /// Shards received whole, checked and stored (sealed).
    stored: BTreeSet<ShardId>,
    /// The shard arriving now: its id, declared size and the bytes so far.
    partial: Option<(ShardId, u64, Vec<u8>)>,
}

/// The uploads under way, and the budgets they are held to.
pub struct Uploads {
    next: u64,
    open: HashMap<u64, Upload>,
    per_client: usize,
    idle_limit: Duration,
}

impl Uploads {
    pub fn new(per_client: usize, idle_limit: Duration) -> Self {
        Uploads {
            next: 0,
            open: HashMap::new(),
            per_client,
            idle_limit,
        }
    }

    /// Uploads idle past the limit, removed; their shards are the caller's to delete.
    fn expire(&mut self, now: Instant) -> Vec<Upload> {
        let stale: Vec<u64> = self
            .open
            .iter()
            .filter(|(_, u)| now.duration_since(u.touched) > self.idle_limit)
            .map(|(id, _)| *id)
            .collect();
        stale.into_iter().filter_map(|id| self.open.remove(&id)).collect()
    }

    fn held_by(&self, client: &NodeId) -> usize {
        self.open.values().filter(|u| u.client == *client).count()
    }

    /// How often the sweeper should look for idle uploads.
    pub fn sweep_interval(&self) -> Duration {
        (self.idle_limit / 4).max(Duration::from_millis(50))
    }
}

impl StorageNode {
    /// Abandons uploads idle past the limit and deletes their shards; answers how many.
    pub async fn sweep_idle_uploads(&self) -> usize {
        let expired = self.uploads.lock().await.expire(Instant::now());
        for upload in &expired {
            self.delete_unreferenced(upload.stored.iter()).await;
        }
        expired.len()
    }

    pub async fn begin_import(&self, peer: &PeerIdentity) -> Result<u64, RpcError> {
        let expired = {
            let mut uploads = self.uploads.lock().await;
            let expired = uploads.expire(Instant::now());
            if uploads.held_by(&peer.node_id) >= uploads.per_client {
                return Err(self.refuse(
                    "too_many_uploads",
                    ErrorCode::ResourceExhausted,
                    format!(
                        "your certificate already holds {} open uploads here; commit or abort one",
                        uploads.per_client
                    ),
                ));
            }
            if uploads.open.len() >= MAX_OPEN_UPLOADS {
                return Err(self.refuse(
                    "too_many_uploads",
                    ErrorCode::Unavailable,
                    format!("this node already has {MAX_OPEN_UPLOADS} uploads open; retry later"),
                ));
            }
            // Random start so ids from before a restart are not reused.
            if uploads.next == 0 {
                uploads.next = rand::random::<u32>() as u64 + 1;
            }
            let id = uploads.next;
            uploads.next += 1;
            uploads.open.insert(
                id,
                Upload {
                    client: peer.node_id,
                    key: DatasetKey::generate(),
                    touched: Instant::now(),
                    stored: BTreeSet::new(),
                    partial: None,
                },
            );
            (expired, id)
        };
        for upload in expired.0 {
            self.delete_unreferenced(upload.stored.iter()).await;
        }
        Ok(expired.1)
    }

    /// The dataset in the catalog that holds `shard`, if any.
    pub(crate) async fn holder_of(&self, shard: &ShardId) -> Option<String> {
        self.catalog.read().await.holder_of(shard).map(String::from)
    }

    /// Gives up an upload at its client's request: its shards are deleted, its slot is free.
    pub async fn abort_import(&self, peer: &PeerIdentity, upload_id: u64) -> Result<(), RpcError> {
        let upload = {
            let mut uploads = self.uploads.lock().await;
            self.own_upload(&mut uploads, peer, upload_id)?;
            uploads.open.remove(&upload_id).expect("checked above")
        };
        self.delete_unreferenced(upload.stored.iter()).await;
        Ok(())
    }

    /// One part of a shard; parts arrive in order. The last part completes the shard: its
    /// hash must be its id, and it is sealed and stored before the answer.
    pub async fn upload_shard(
        &self,
        peer: &PeerIdentity,
        upload_id: u64,
        shard: ShardId,
        offset: u64,
        total: u64,
        bytes: Vec<u8>,
    ) -> Result<u64, RpcError> {
        let mut uploads = self.uploads.lock().await;
        let upload = self.own_upload(&mut uploads, peer, upload_id)?;
        upload.touched = Instant::now();
        if total == 0 || total > MAX_SHARD_BYTES {
            return Err(self.refuse(
                "bad_upload",
                ErrorCode::InvalidArgument,
                format!("a shard is 1 to {MAX_SHARD_BYTES} bytes, not {total}"),
            ));
        }
        if offset == 0 {
            // Shards are stored by content and sealed under their dataset's key: a shard another
            // dataset holds here would be overwritten under a different key and break it. The
            // same data is imported once (its asset is the one genuine copy).
            if let Some(holder) = self.holder_of(&shard).await {
                return Err(self.refuse(
                    "bad_upload",
                    ErrorCode::AlreadyExists,
                    format!("shard {shard} is already stored here as part of dataset {holder}: this data was imported before"),
                ));
            }
            // Grown as parts arrive: a claimed size reserves nothing.
            upload.partial = Some((shard, total, Vec::new()));
        }
        let Some((partial_id, partial_total, received)) = upload.partial.as_mut() else {
            return Err(self.refuse(
                "bad_upload",
                ErrorCode::InvalidArgument,
                format!("shard {shard}: the first part must start at offset 0"),
            ));
        };
        let end = offset.checked_add(bytes.len() as u64);
        if *partial_id != shard
            || *partial_total != total
            || offset != received.len() as u64
            || end > Some(total)
        {
            return Err(self.refuse(
                "bad_upload",
                ErrorCode::InvalidArgument,
                format!(
                    "shard {shard}: part at offset {offset} does not follow the {} bytes received",
                    received.len()
                ),
            ));
        }
        received.extend_from_slice(&bytes);
        let so_far = received.len() as u64;
        if so_far < total {
            return Ok(so_far);
        }
        let (id, _, plaintext) = upload.partial.take().expect("checked above");
        if ShardId::of_content(&plaintext) != id {
            return Err(self.refuse(
                "bad_upload",
                ErrorCode::InvalidArgument,
                format!("shard {id}: the bytes received do not hash to the shard's name"),
            ));
        }
        let sealed = upload
            .key
            .seal(&id, &plaintext)
            .map_err(|e| RpcError::new(ErrorCode::Internal, e.to_string()))?;
        upload.stored.insert(id);
        let key_store = self.store.clone();
        drop(uploads);
        key_store
            .put(&id, Bytes::from(sealed))
            .await
            .map_err(|e| RpcError::new(ErrorCode::Unavailable, e.to_string()))?;
        Ok(so_far)
    }

    fn own_upload<'u>(
        &self,
        uploads: &'u mut Uploads,
        peer: &PeerIdentity,
        id: u64,
    ) -> Result<&'u mut Upload, RpcError> {
        match uploads.open.get_mut(&id) {
            Some(upload) if upload.client == peer.node_id => Ok(upload),
            Some(_) => Err(self.refuse(
                "not_your_upload",
                ErrorCode::PermissionDenied,
                format!("upload {id} belongs to another client"),
            )),
            None => Err(self.refuse(
                "unknown_upload",
                ErrorCode::NotFound,
                format!("no upload {id} is open here (expired, committed, or never begun)"),
            )),
        }
    }

    /// Completes an upload: every shard the manifest names must be here; this node must be
    /// its first replica. The others pull their copy; if any fails, all copies are dropped
    /// and the import is refused — no half dataset stays registered anywhere.
    pub async fn commit_import(
        &self,
        peer: &PeerIdentity,
        upload_id: u64,
        manifest_json: &str,
        owner: [u8; 32],
    ) -> Result<(String, Vec<NodeId>, Option<AssetId>), RpcError> {
        let upload = {
            let mut uploads = self.uploads.lock().await;
            self.own_upload(&mut uploads, peer, upload_id)?;
            uploads.open.remove(&upload_id).expect("checked above")
        };
        let result = self.place(peer, &upload, manifest_json, owner).await;
        if result.is_err() {
            self.delete_unreferenced(upload.stored.iter()).await;
        } else {
            // Shards sent but not named by the manifest are not kept.
            let named: BTreeSet<ShardId> = Manifest::from_json(manifest_json)
                .map(|m| m.shards().filter_map(|e| e.id.parse().ok()).collect())
                .unwrap_or_default();
            self.delete_unreferenced(upload.stored.iter().filter(|s| !named.contains(s)))
                .await;
        }
        result
    }

    async fn place(
        &self,
        peer: &PeerIdentity,
        upload: &Upload,
        manifest_json: &str,
        owner: [u8; 32],
    ) -> Result<(String, Vec<NodeId>, Option<AssetId>), RpcError> {
        let invalid = |message: String| self.refuse("bad_manifest", ErrorCode::InvalidArgument, message);
        let manifest = Manifest::from_json(manifest_json).map_err(invalid)?;
        for entry in manifest.shards() {
            let id: ShardId = entry.id.parse().expect("checked by from_json");
            if !upload.stored.contains(&id) {
                return Err(invalid(format!("shard {id} was never uploaded")));
            }
        }
        let replicas: Vec<NodeId> = manifest
            .replicas
            .iter()
            .map(|r| {
                r.node
                    .parse::<NodeId>()
                    .map_err(|_| format!("bad replica node id {:?}", r.node))
            })
            .collect::<Result<_, _>>()
            .map_err(invalid)?;
        if replicas.first() != Some(&self.me) {
            return Err(invalid(format!(
                "the manifest's first replica must be the node taking the upload ({})",
                self.me
            )));
        }
        if replicas.iter().collect::<BTreeSet<_>>().len() != replicas.len() {
            return Err(invalid("each replica must be a different node".into()));
        }
        let dataset = dataset_id(&manifest);
        if self.catalog.read().await.get(&dataset).is_some() {
            return Err(self.refuse(
                "bad_manifest",
                ErrorCode::AlreadyExists,
                format!("dataset {dataset} is already held here"),
            ));
        }
        // Recorded here first, since the replicas pull their copies from this catalog; taken out
        // again (here and on every replica that got a copy) if any replica fails.
        self.catalog
            .write()
            .await
            .add(manifest.clone(), upload.key.clone(), Some(upload.client))
            .map_err(|e| RpcError::new(ErrorCode::Internal, e.to_string()))?;
        let placed = self
            .replicate_to_peers(&manifest, &upload.key, upload.client, owner)
            .await;
        let minted = match placed {
            Err((error, done)) => Err((error, done)),
            Ok(attestations) => {
                let done = manifest
                    .replicas
                    .iter()
                    .skip(1)
                    .map(|r| r.quic_addr.clone())
                    .collect();
                self.mint_dataset(&manifest, owner, attestations)
                    .await
                    .map_err(|error| (error, done))
            }
        };
        let asset = match minted {
            Ok(asset) => {
                self.catalog
                    .write()
                    .await
                    .set_asset(&dataset, asset)
                    .map_err(|e| RpcError::new(ErrorCode::Internal, e.to_string()))?;
                Some(asset)
            }
            Err((error, done)) => {
                // No half import: every copy goes again, and nothing was minted.
                for addr in done {
                    self.drop_on_peer(&addr, &dataset).await;
                }
                self.forget(&dataset).await?;
                return Err(error);
            }
        };
        self.publish_holdings(&Default::default()).await;
        tracing::info!(%dataset, replicas = replicas.len(), client = %peer.node_id.short(), "dataset imported");
        Ok((dataset, replicas, asset))
    }

    /// Removes a dataset its importer gives up on: here and, when this node took the upload, on
    /// the other replicas. A dataset whose asset was minted is kept: whoever holds the asset
    /// (perhaps not the importer any more) owns what it names.
    pub async fn drop_dataset(&self, peer: &PeerIdentity, dataset: &str) -> Result<(), RpcError> {
        let manifest = {
            let catalog = self.catalog.read().await;
            let (manifest, _) = self.known(&catalog, dataset)?;
            // A replica's copy goes only with the upload's (the node that took it holds the
            // asset record).
            if manifest.replicas.first().map(|r| r.node.as_str()) != Some(self.me.to_string().as_str()) {
                return Err(self.refuse(
                    "not_the_importer",
                    ErrorCode::PermissionDenied,
                    format!("dataset {dataset} is dropped through the node that took its upload"),
                ));
            }
            if let Some(asset) = catalog.asset(dataset) {
                return Err(self.refuse(
                    "not_the_importer",
                    ErrorCode::PermissionDenied,
                    format!("dataset {dataset} backs asset {asset}: it is kept as long as the asset exists"),
                ));
            }
            if catalog.importer(dataset) != Some(&peer.node_id) {
                return Err(self.refuse(
                    "not_the_importer",
                    ErrorCode::PermissionDenied,
                    format!("only the client that imported dataset {dataset} may drop it"),
                ));
            }
            manifest.clone()
        };
        if manifest.replicas.first().map(|r| r.node.as_str()) == Some(self.me.to_string().as_str()) {
            for replica in manifest.replicas.iter().skip(1) {
                self.drop_on_peer(&replica.quic_addr, dataset).await;
            }
        }
        self.forget(dataset).await
    }

    /// Removes a dataset from the catalog and deletes the shards no other dataset names.
    pub(crate) async fn forget(&self, dataset: &str) -> Result<(), RpcError> {
        let removed = self
            .catalog
            .write()
            .await
            .remove(dataset)
            .map_err(|e| RpcError::new(ErrorCode::Internal, e.to_string()))?;
        if let Some(manifest) = removed {
            let shards: Vec<ShardId> = manifest.shards().filter_map(|e| e.id.parse().ok()).collect();
            self.delete_unreferenced(shards.iter()).await;
        }
        self.publish_holdings(&Default::default()).await;
        Ok(())
    }

    async fn delete_unreferenced(&self, shards: impl Iterator<Item = &ShardId>) {
        let catalog = self.catalog.read().await;
        for shard in shards {
            if !catalog.references(shard) {
                if let Err(error) = self.store.delete(shard).await {
                    tracing::warn!(%shard, %error, "could not delete an unused shard");
                }
            }
        }
    }
}
