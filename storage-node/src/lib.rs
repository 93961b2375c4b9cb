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
use aic_protocol::messages::{Capacity, PeerRequest, PeerResponse};
use aic_protocol::node_agent::{answer_peer, local_capacity, start_node};
use aic_protocol::rpc::RpcHandler;
use aic_protocol::service::{BoundSockets, ServiceHandle};
use aic_protocol::{Role, RpcError};
use tokio_util::sync::CancellationToken;

pub use config::StorageConfig;

/// What a storage node answers over QUIC.
struct StorageApi;

impl RpcHandler for StorageApi {
    async fn peer(&self, _peer: &PeerIdentity, request: PeerRequest) -> Result<PeerResponse, RpcError> {
        answer_peer(request)
    }
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
    let registry = prometheus::Registry::new();
    let metrics = metrics::StorageMetrics::register(&registry)?;
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
        Arc::new(StorageApi),
        registry,
        shutdown.clone(),
    )?;
    let interval = std::time::Duration::from_secs(storage.scrub_interval_secs);
    handle.spawn(scrub_loop(store, catalog, metrics, interval, shutdown));
    Ok(handle)
}

/// Scrubs once at start and then every `interval` until shutdown, publishing what it finds.
async fn scrub_loop(
    store: shard_store::ShardStore,
    catalog: catalog::Catalog,
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
        match (scrub::scrub(&store, &catalog).await, store.list().await) {
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
