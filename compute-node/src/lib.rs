//! An AIC compute node.
//!
//! Today it joins the grid: registers with the scheduler, heartbeats, measures RTTs to its peers
//! and answers theirs. It will own the device probe (Vulkan or CPU), shard fetch with a bounded
//! cache, and the execution of training tasks through `aic-kernels`.

pub mod config;

use std::sync::Arc;

use aic_protocol::certs::PeerIdentity;
use aic_protocol::messages::{Capacity, PeerRequest, PeerResponse};
use aic_protocol::node_agent::{answer_peer, local_capacity, start_node};
use aic_protocol::rpc::RpcHandler;
use aic_protocol::service::{BoundSockets, ServiceHandle};
use aic_protocol::{Role, RpcError};
use tokio_util::sync::CancellationToken;

pub use config::ComputeConfig;

/// What a compute node answers over QUIC.
struct ComputeApi;

impl RpcHandler for ComputeApi {
    async fn peer(&self, _peer: &PeerIdentity, request: PeerRequest) -> Result<PeerResponse, RpcError> {
        answer_peer(request)
    }
}

/// Starts a compute node on already-bound sockets. It stops when `shutdown` is cancelled.
pub fn start(
    config: ComputeConfig,
    bound: BoundSockets,
    shutdown: CancellationToken,
) -> aic_protocol::Result<ServiceHandle> {
    // Until the kernels land the node computes on its CPU, and says so in its registration.
    let capacity = Capacity {
        device: "cpu".into(),
        ..local_capacity()
    };
    start_node(
        Role::Compute,
        &config.endpoint,
        &config.scheduler,
        capacity,
        bound,
        Arc::new(ComputeApi),
        shutdown,
    )
}
