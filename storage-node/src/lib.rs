//! An AIC storage node.
//!
//! It joins the grid (registers its capacity with the scheduler, heartbeats, measures RTTs to its
//! peers and answers theirs) and owns the shard store over object_store with encryption at rest.
//! Dataset import and preprocessing, ticket-checked shard serving, scrubbing and replica repair
//! come with the rest of the storage issue.

pub mod catalog;
pub mod config;
pub mod import;
pub mod manifest;
pub mod metrics;
pub mod scrub;
pub mod sealing;
pub mod shard_store;

use std::sync::Arc;

use aic_protocol::certs::PeerIdentity;
use aic_protocol::messages::{
    Capacity, ClientRequest, ClientResponse, DatasetPreview, DatasetSummary, PeerRequest, PeerResponse,
};
use aic_protocol::node_agent::{answer_peer, local_capacity, start_node};
use aic_protocol::rpc::RpcHandler;
use aic_protocol::service::{BoundSockets, ServiceHandle};
use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use aic_protocol::ticket::SignedTicket;
use aic_protocol::{ErrorCode, NodeId, Role, RpcError, ShardId};
use tokio_util::sync::CancellationToken;

pub use config::StorageConfig;

/// What a storage node answers over QUIC.
struct StorageApi {
    store: shard_store::ShardStore,
    catalog: Arc<tokio::sync::RwLock<catalog::Catalog>>,
    /// Schedulers whose tickets are honoured.
    trusted: Arc<std::sync::RwLock<HashSet<NodeId>>>,
    metrics: metrics::StorageMetrics,
}

impl RpcHandler for StorageApi {
    async fn client(&self, _peer: &PeerIdentity, request: ClientRequest) -> Result<ClientResponse, RpcError> {
        match request {
            ClientRequest::ListDatasets => {
                let catalog = self.catalog.read().await;
                let datasets = catalog
                    .ids()
                    .filter_map(|id| catalog.get(id).map(|(m, _)| (id, m)))
                    .map(|(id, manifest)| DatasetSummary {
                        id: id.clone(),
                        name: manifest.name.clone(),
                        rows: manifest.rows,
                        shards: (manifest.train.len() + manifest.test.len()) as u64,
                        manifest: manifest.to_json(),
                    })
                    .collect();
                Ok(ClientResponse::Datasets(datasets))
            }
            ClientRequest::Preview { dataset, rows } => {
                self.preview(&dataset, rows).await.map(ClientResponse::Preview)
            }
            _ => Err(RpcError::new(
                ErrorCode::Unsupported,
                "storage nodes serve datasets, not this request",
            )),
        }
    }

    async fn peer(&self, peer: &PeerIdentity, request: PeerRequest) -> Result<PeerResponse, RpcError> {
        match request {
            PeerRequest::GetShard {
                dataset,
                shard,
                ticket,
            } => self.get_shard(peer, &dataset, &shard, &ticket).await,
            other => answer_peer(other),
        }
    }
}

impl StorageApi {
    /// A free look at a dataset: random rows from randomly chosen shards, never more than 1 % of
    /// the dataset or 100 rows, whatever was asked.
    async fn preview(&self, dataset: &str, asked: u32) -> Result<DatasetPreview, RpcError> {
        let catalog = self.catalog.read().await;
        let Some((manifest, key)) = catalog.get(dataset) else {
            return Err(self.refuse(
                "unknown_dataset",
                ErrorCode::NotFound,
                format!("no dataset {dataset} here"),
            ));
        };
        let cap = manifest.rows.div_ceil(100).min(100) as usize;
        let wanted = (asked as usize).min(cap);
        // Shards in random order, read until they hold enough rows to sample from.
        let mut shards: Vec<_> = manifest.train.iter().chain(&manifest.test).collect();
        rand::seq::SliceRandom::shuffle(shards.as_mut_slice(), &mut rand::rng());
        let mut batches = Vec::new();
        let mut held = 0usize;
        for entry in shards {
            if held >= wanted {
                break;
            }
            let shard: ShardId = entry
                .id
                .parse()
                .map_err(|_| RpcError::new(ErrorCode::Internal, "a manifest names a bad shard id"))?;
            let read = import::read_shard(&self.store, key, &shard)
                .await
                .map_err(|e| self.refuse("corrupt_shard", ErrorCode::Unavailable, e.to_string()))?;
            held += read.iter().map(|b| b.num_rows()).sum::<usize>();
            batches.extend(read);
        }
        preview_rows(manifest, &batches, wanted).map_err(|e| RpcError::new(ErrorCode::Internal, e))
    }

    fn refuse(&self, reason: &'static str, code: ErrorCode, message: String) -> RpcError {
        self.metrics.rejected.with_label_values(&[reason]).inc();
        RpcError::new(code, message)
    }

    /// Serves a shard: the ticket first, then the catalog, then the bytes — which are checked
    /// (authentic, and hashing to their name) before any of them leaves the node.
    async fn get_shard(
        &self,
        peer: &PeerIdentity,
        dataset: &str,
        shard: &ShardId,
        ticket: &SignedTicket,
    ) -> Result<PeerResponse, RpcError> {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let trusted = self.trusted.read().expect("trusted set").clone();
        if let Err(e) = ticket.check(&peer.node_id, dataset, now_ms, |id| trusted.contains(id)) {
            return Err(self.refuse(e.reason(), ErrorCode::PermissionDenied, e.to_string()));
        }
        let catalog = self.catalog.read().await;
        let Some((manifest, key)) = catalog.get(dataset) else {
            return Err(self.refuse(
                "unknown_dataset",
                ErrorCode::NotFound,
                format!("no dataset {dataset} here"),
            ));
        };
        let id = shard.to_string();
        if !manifest.train.iter().chain(&manifest.test).any(|s| s.id == id) {
            return Err(self.refuse(
                "unknown_shard",
                ErrorCode::NotFound,
                format!("dataset {dataset} has no shard {id}"),
            ));
        }
        let sealed = match self.store.get(shard).await {
            Ok(sealed) => sealed,
            Err(e) => return Err(self.refuse("unknown_shard", ErrorCode::NotFound, e.to_string())),
        };
        match key.open(shard, &sealed) {
            Ok(parquet) => {
                self.metrics.served_bytes.inc_by(parquet.len() as u64);
                Ok(PeerResponse::Shard { parquet })
            }
            Err(e) => {
                tracing::warn!(%shard, error = %e, "refusing to serve a damaged shard");
                Err(self.refuse(
                    "corrupt_shard",
                    ErrorCode::Unavailable,
                    format!("shard {id} failed its integrity check here; ask another replica"),
                ))
            }
        }
    }
}

/// Picks `wanted` random rows out of a shard's batches.
fn preview_rows(
    manifest: &manifest::Manifest,
    batches: &[arrow_array::RecordBatch],
    wanted: usize,
) -> Result<DatasetPreview, String> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float32Type, UInt32Type};
    let mut all: Vec<(Vec<f32>, u32)> = Vec::new();
    for batch in batches {
        let features = batch.num_columns() - 1;
        let labels = batch.column(features).as_primitive::<UInt32Type>();
        for r in 0..batch.num_rows() {
            let row = (0..features)
                .map(|c| batch.column(c).as_primitive::<Float32Type>().value(r))
                .collect();
            all.push((row, labels.value(r)));
        }
    }
    let picked = rand::seq::index::sample(&mut rand::rng(), all.len(), wanted.min(all.len()));
    let (rows, labels) = picked.into_iter().map(|i| all[i].clone()).unzip();
    Ok(DatasetPreview {
        columns: manifest.features.iter().map(|f| f.name.clone()).collect(),
        rows,
        labels,
    })
}

/// Starts a storage node on already-bound sockets. It stops when `shutdown` is cancelled.
pub fn start(
    config: StorageConfig,
    bound: BoundSockets,
    shutdown: CancellationToken,
) -> aic_protocol::Result<ServiceHandle> {
    let storage = &config.storage;
    let store_url = if storage.store.is_empty() {
        storage.data_dir.join("shards").display().to_string()
    } else {
        storage.store.clone()
    };
    let store = shard_store::ShardStore::from_url(&store_url)
        .map_err(|e| aic_protocol::Error::Transport(format!("shard store {store_url}: {e}")))?;
    let catalog = catalog::Catalog::open(&storage.data_dir.join("datasets"))
        .map_err(|e| aic_protocol::Error::Transport(e.to_string()))?;
    let catalog = Arc::new(tokio::sync::RwLock::new(catalog));
    let registry = prometheus::Registry::new();
    let metrics = metrics::StorageMetrics::register(&registry)?;
    let trusted: HashSet<NodeId> = storage
        .trusted_schedulers
        .iter()
        .map(|id| id.parse())
        .collect::<Result<_, _>>()?;
    let trusted = Arc::new(std::sync::RwLock::new(trusted));
    let api = StorageApi {
        store: store.clone(),
        catalog: catalog.clone(),
        trusted: trusted.clone(),
        metrics: metrics.clone(),
    };
    // The scheduler this node registers with signs the tickets it will be shown.
    let trust_scheduler: Arc<dyn Fn(&PeerIdentity) + Send + Sync> =
        Arc::new(move |scheduler: &PeerIdentity| {
            trusted.write().expect("trusted set").insert(scheduler.node_id);
        });
    let capacity = Capacity {
        storage_bytes: storage.capacity_bytes,
        device: "none".into(),
        ..local_capacity()
    };
    let mut handle = start_node(
        Role::Storage,
        &config.endpoint,
        &config.scheduler,
        capacity,
        bound,
        Arc::new(api),
        registry,
        Some(trust_scheduler),
        shutdown.clone(),
    )?;
    let interval = std::time::Duration::from_secs(storage.scrub_interval_secs);
    handle.spawn(scrub_loop(store, catalog, metrics, interval, shutdown));
    Ok(handle)
}

/// Scrubs once at start and then every `interval` until shutdown, publishing what it finds.
async fn scrub_loop(
    store: shard_store::ShardStore,
    catalog: Arc<tokio::sync::RwLock<catalog::Catalog>>,
    metrics: metrics::StorageMetrics,
    interval: std::time::Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let started = std::time::Instant::now();
        let report = scrub::scrub(&store, &*catalog.read().await).await;
        match (report, store.list().await) {
            (Ok(report), Ok(held)) => {
                metrics.record(&report);
                metrics
                    .bytes_stored
                    .set(held.iter().map(|s| s.bytes as i64).sum());
                for shard in report.damaged() {
                    tracing::warn!(%shard, "scrub found a damaged shard");
                }
            }
            (Err(error), _) | (_, Err(error)) => {
                metrics.scrubs.with_label_values(&["error"]).inc();
                tracing::warn!(%error, "scrub failed");
            }
        }
        metrics.scrub_duration.observe(started.elapsed().as_secs_f64());
    }
}
