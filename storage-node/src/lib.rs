//! An AIC storage node.
//!
//! It joins the grid (registers its capacity with the scheduler, heartbeats with what it holds,
//! measures RTTs to its peers), takes dataset uploads and places them on their replicas, keeps
//! shards sealed in an object store, serves them to compute nodes holding a scheduler's ticket,
//! exports them to the Dataset asset's owner, and scrubs and repairs them from other replicas.
//! When a holder is lost for good, it copies the datasets it shared with it to another node at
//! the scheduler's request (`handover.rs`). It also keeps training jobs' tensors (checkpointed
//! weights), sealed like shards.

mod api;
// The data vocabulary every node shares lives in the protocol crate; these paths stay for the
// storage node's own code and its users.
pub use aic_protocol::{encoding, manifest, report, shard_fetch, upload as upload_client};
pub mod attest;
pub mod backup;
pub mod bundled;
pub mod catalog;
pub mod config;
pub mod escrow;
mod export;
pub mod handover;
pub mod import;
mod key_escrow;
pub mod metrics;
mod node;
mod replication;
pub mod scrub;
pub mod sealing;
mod serving;
pub mod shard_store;
pub mod tensor_store;
mod uploads;

use std::collections::HashSet;
use std::sync::Arc;

use aic_protocol::certs::PeerIdentity;
use aic_protocol::messages::Capacity;
use aic_protocol::node_agent::{local_capacity, start_node, NodeExtras};
use aic_protocol::service::{BoundSockets, ServiceHandle};
use aic_protocol::transport;
use aic_protocol::{NodeId, Role};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use config::StorageConfig;
pub use replication::fetch_sealed;
pub use serving::{encode_ipc, preview_sample, preview_sample_size, MAX_BATCH_BYTES};
pub use uploads::{MAX_OPEN_UPLOADS, MAX_SHARD_BYTES};

use node::StorageNode;

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
    let tensor_key = tensor_store::TensorStore::load_or_create_key(&storage.data_dir.join("tensors.key"))
        .map_err(|e| aic_protocol::Error::Transport(e.to_string()))?;
    let tensors = Arc::new(store.tensor_store(tensor_key));
    let catalog = catalog::Catalog::open(&storage.data_dir.join("datasets"))
        .map_err(|e| aic_protocol::Error::Transport(e.to_string()))?;
    let registry = prometheus::Registry::new();
    let metrics = metrics::StorageMetrics::register(&registry)?;
    let trusted: HashSet<NodeId> = storage
        .trusted_schedulers
        .iter()
        .map(|id| id.parse())
        .collect::<Result<_, _>>()?;
    let identity = config.endpoint.tls.load()?;
    let node_key = aic_ledger::Keypair::from_pkcs8_der(identity.key.secret_der())
        .map_err(|e| aic_protocol::Error::Certificate(format!("the node key: {e}")))?;
    let outbound = transport::outbound_endpoint(&identity)?;
    let (holdings, holdings_rx) = tokio::sync::watch::channel(Vec::new());
    let quic_addr = aic_protocol::node_agent::advertised(&config.endpoint, bound.quic_addr()?);
    let node = Arc::new(StorageNode {
        me: identity.me.node_id,
        quic_addr,
        node_key,
        store,
        tensors,
        catalog: tokio::sync::RwLock::new(catalog),
        trusted: std::sync::RwLock::new(trusted),
        verified_tickets: Default::default(),
        uploads: tokio::sync::Mutex::new(uploads::Uploads::new(
            storage.uploads_per_client,
            std::time::Duration::from_secs(storage.upload_idle_secs),
        )),
        handovers: std::sync::Mutex::new(Vec::new()),
        outbound,
        scheduler_addr: config.scheduler.addr.clone(),
        metrics,
        holdings,
        deposits: escrow::Deposits::open(&storage.data_dir.join("escrow"))
            .map_err(|e| aic_protocol::Error::Transport(format!("the escrow directory: {e}")))?,
    });
    // The scheduler this node registers with signs the tickets it will be shown.
    let trusting = node.clone();
    let trust_scheduler: Arc<dyn Fn(&PeerIdentity) + Send + Sync> =
        Arc::new(move |scheduler: &PeerIdentity| {
            trusting
                .trusted
                .write()
                .expect("trusted set")
                .insert(scheduler.node_id);
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
        Arc::new(api::StorageApi(node.clone())),
        registry,
        NodeExtras {
            on_registered: Some(trust_scheduler),
            holdings: Some(holdings_rx),
            payout_address: storage.payout_address.clone(),
        },
        shutdown.clone(),
    )?;
    let interval = std::time::Duration::from_secs(storage.scrub_interval_secs);
    handle.spawn(sweep_uploads(node.clone(), shutdown.clone()));
    handle.spawn(escrow_loop(node.clone(), shutdown.clone()));
    handle.spawn(scrub_loop(node, interval, shutdown));
    Ok(handle)
}

/// Escrows dataset keys not yet escrowed enough, every [`key_escrow::ESCROW_INTERVAL`], until
/// shutdown.
async fn escrow_loop(node: Arc<StorageNode>, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(key_escrow::ESCROW_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let made = node.escrow_keys().instrument(tracing::info_span!("escrow")).await;
        if made > 0 {
            tracing::info!(made, "dataset keys escrowed with other storage nodes");
        }
    }
}

/// Abandons idle uploads (and deletes their shards) until shutdown.
async fn sweep_uploads(node: Arc<StorageNode>, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(node.uploads.lock().await.sweep_interval());
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let sweep = async {
            let expired = node.sweep_idle_uploads().await;
            if expired > 0 {
                tracing::info!(expired, "idle uploads abandoned and their shards deleted");
            }
        };
        sweep.instrument(tracing::info_span!("sweep_uploads")).await;
    }
}

/// Scrubs once at start and then every `interval` until shutdown: publishes what it finds,
/// repairs damaged shards from other replicas, and reports the holdings to the scheduler.
async fn scrub_loop(node: Arc<StorageNode>, interval: std::time::Duration, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(interval);
    for pass in 0u64.. {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        scrub_once(&node)
            .instrument(tracing::info_span!("scrub", pass))
            .await;
    }
}

/// One scrub: every shard checked against its name, damaged ones repaired from peers, the
/// holdings published.
async fn scrub_once(node: &StorageNode) {
    let started = std::time::Instant::now();
    let report = scrub::scrub(&node.store, &*node.catalog.read().await).await;
    match (report, node.store.list().await) {
        (Ok(report), Ok(held)) => {
            node.metrics.record(&report);
            node.metrics
                .bytes_stored
                .set(held.iter().map(|s| s.bytes as i64).sum());
            let damaged: Vec<_> = report.damaged().copied().collect();
            for shard in &damaged {
                tracing::warn!(%shard, "scrub found a damaged shard");
            }
            let repaired = if damaged.is_empty() {
                0
            } else {
                node.repair_from_peers(&damaged).await
            };
            // What is still damaged after repair is reported as such.
            let still: HashSet<_> = if repaired == damaged.len() {
                HashSet::new()
            } else {
                scrub::scrub(&node.store, &*node.catalog.read().await)
                    .await
                    .map(|r| r.damaged().copied().collect())
                    .unwrap_or_else(|_| damaged.iter().copied().collect())
            };
            node.publish_holdings(&still).await;
        }
        (Err(error), _) | (_, Err(error)) => {
            node.metrics.scrubs.with_label_values(&["error"]).inc();
            tracing::warn!(%error, "scrub failed");
        }
    }
    node.metrics
        .scrub_duration
        .observe(started.elapsed().as_secs_f64());
}
