//! The state one storage node shares across its requests and background tasks: store, catalog,
//! trusted schedulers, uploads under way, copies being handed over, the outbound endpoint for
//! replica traffic, metrics.

use std::collections::HashSet;

use aic_protocol::messages::DatasetHolding;
use aic_protocol::rpc::RpcClient;
use aic_protocol::{ErrorCode, NodeId, Role, RpcError};
use tokio::sync::{watch, Mutex, RwLock};

use crate::catalog::Catalog;
use crate::metrics::StorageMetrics;
use crate::shard_store::ShardStore;
use crate::uploads::Uploads;

/// How long dialing another node may take before it counts as unreachable.
const DIAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
/// How long one call to another storage node may take (a replica pulls a whole dataset).
const PEER_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

pub(crate) struct StorageNode {
    /// This node's id, from its certificate.
    pub me: NodeId,
    /// Where other nodes reach this one (`host:port`), as it registers with the scheduler.
    pub quic_addr: String,
    /// The certificate's key, which signs this node's import attestations.
    pub node_key: aic_ledger::Keypair,
    pub store: ShardStore,
    /// Jobs' tensors (checkpointed weights), beside the shards.
    pub tensors: std::sync::Arc<crate::tensor_store::TensorStore>,
    pub catalog: RwLock<Catalog>,
    /// Schedulers whose tickets are honoured.
    pub trusted: std::sync::RwLock<HashSet<NodeId>>,
    /// Tickets whose signatures were verified here: a task's shards share one ticket.
    pub verified_tickets: aic_protocol::ticket::VerifiedTickets,
    pub uploads: Mutex<Uploads>,
    /// Copies under way from this node: (dataset, target). See `handover.rs`.
    pub handovers: std::sync::Mutex<Vec<(String, NodeId)>>,
    /// Dials other storage nodes and the scheduler, with this node's certificate.
    pub outbound: quinn::Endpoint,
    pub scheduler_addr: String,
    pub metrics: StorageMetrics,
    /// What this node holds, for the heartbeat; refreshed by the scrubber and on every change.
    pub holdings: watch::Sender<Vec<DatasetHolding>>,
    /// Other storage nodes' dataset keys kept here in escrow, sealed to this node.
    pub deposits: crate::escrow::Deposits,
}

impl StorageNode {
    /// Counts a refusal by reason and builds its error.
    pub fn refuse(&self, reason: &'static str, code: ErrorCode, message: impl Into<String>) -> RpcError {
        self.metrics.rejected.with_label_values(&[reason]).inc();
        RpcError::new(code, message.into())
    }

    /// Dials a peer storage node (its certificate must say storage).
    pub async fn dial_storage(&self, addr: &str) -> Result<RpcClient, RpcError> {
        let unreachable =
            |e: String| RpcError::new(ErrorCode::Unavailable, format!("storage node {addr}: {e}"));
        let connect = RpcClient::connect(&self.outbound, addr, Role::Storage);
        match tokio::time::timeout(DIAL_TIMEOUT, connect).await {
            Ok(Ok(client)) => Ok(client.with_timeout(PEER_CALL_TIMEOUT)),
            Ok(Err(e)) => Err(unreachable(e.to_string())),
            Err(_) => Err(unreachable(format!("no answer within {DIAL_TIMEOUT:?}"))),
        }
    }

    pub async fn dial_scheduler(&self) -> Result<RpcClient, RpcError> {
        let addr = &self.scheduler_addr;
        let unreachable = |e: String| RpcError::new(ErrorCode::Unavailable, format!("scheduler {addr}: {e}"));
        match tokio::time::timeout(
            DIAL_TIMEOUT,
            RpcClient::connect(&self.outbound, addr, Role::Scheduler),
        )
        .await
        {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(unreachable(e.to_string())),
            Err(_) => Err(unreachable(format!("no answer within {DIAL_TIMEOUT:?}"))),
        }
    }

    /// Re-publishes what the catalog holds (every shard counted healthy until a scrub says
    /// otherwise; `damaged` lists what the last scrub found).
    pub async fn publish_holdings(&self, damaged: &HashSet<aic_protocol::ShardId>) {
        let catalog = self.catalog.read().await;
        let holdings = catalog
            .ids()
            .filter_map(|id| catalog.get(id).map(|(m, _)| (id, m)))
            .map(|(id, manifest)| {
                let shards = manifest.shards().count() as u32;
                let bad = manifest
                    .shards()
                    .filter(|e| e.id.parse().is_ok_and(|s| damaged.contains(&s)))
                    .count() as u32;
                DatasetHolding {
                    dataset: id.clone(),
                    healthy_shards: shards - bad,
                    shards,
                    bytes: manifest.shards().map(|e| e.bytes).sum(),
                    replicas_wanted: manifest.replicas.len() as u32,
                }
            })
            .collect::<Vec<_>>();
        // Every write was checked against its hash, so a shard counts healthy from its arrival
        // until a scrub says otherwise; corrupt and missing counts come from scrubs alone.
        let healthy: u64 = holdings
            .iter()
            .map(|h: &DatasetHolding| u64::from(h.healthy_shards))
            .sum();
        self.metrics
            .shards
            .with_label_values(&["healthy"])
            .set(i64::try_from(healthy).unwrap_or(i64::MAX));
        self.holdings.send_replace(holdings);
        self.metrics.datasets.set(catalog.ids().count() as i64);
        drop(catalog);
        if let Ok(held) = self.store.list().await {
            self.metrics
                .bytes_stored
                .set(held.iter().map(|s| s.bytes as i64).sum());
        }
    }
}
