//! An AIC compute node.
//!
//! It joins the grid (registers with the scheduler, naming the compute backend it found —
//! a Vulkan GPU or the CPU — heartbeats, measures RTTs to its peers and answers theirs). Shard
//! fetch with a bounded cache and the execution of training tasks through `aic-kernels` come with
//! the scheduler issue.

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
    // The device this node would train on: a Vulkan GPU if there is one, else the CPU backend;
    // the registration says which.
    let device = match aic_kernels::open(aic_kernels::BackendChoice::Auto) {
        Ok(backend) => backend.describe(),
        Err(error) => format!("cpu (backend probe failed: {error})"),
    };
    let capacity = Capacity {
        device,
        ..local_capacity()
    };
    start_node(
        Role::Compute,
        &config.endpoint,
        &config.scheduler,
        capacity,
        bound,
        Arc::new(ComputeApi),
        prometheus::Registry::new(),
        aic_protocol::node_agent::NodeExtras::default(),
        shutdown,
    )
}
