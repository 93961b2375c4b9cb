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
    let capacity = Capacity {
        storage_bytes: config.storage.capacity_bytes,
        device: "none".into(),
        ..local_capacity()
    };
    start_node(
        Role::Storage,
        &config.endpoint,
        &config.scheduler,
        capacity,
        bound,
        Arc::new(StorageApi),
        shutdown,
    )
}
