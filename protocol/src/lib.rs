//! The AIC wire protocol and the runtime every AIC process shares.
//!
//! ```text
//!  certs ──► tls ──► transport (quinn endpoint, tuned limits)
//!                       │
//!  ids, messages ──► frame codec ──► rpc (one request = one bidirectional stream,
//!                                        role checked before any handler runs)
//!  config, logging, metrics_http, service: the node runtime around it
//!  node_agent: the node side of membership (register, heartbeat, RTT probes)
//! ```
//!
//! The shared vocabulary of data lives here too, so node crates never depend on each other:
//! a dataset's `manifest` (with each column's `encoding` and the import `report`), fetching a
//! shard (`shard_fetch`) and uploading one (`upload`), and tensors as named objects (`tensor`).
//!
//! Nothing here knows about the scheduler's decisions: storage and compute nodes depend on this
//! crate, never on the control plane.

pub mod alloc_probe;
pub mod authz;
pub mod certs;
pub mod config;
pub mod encoding;
pub mod error;
pub mod fault_net;
pub mod frame;
pub mod hex_serde;
pub mod holders;
pub mod ids;
pub mod logging;
pub mod manifest;
pub mod messages;
pub mod metrics;
pub mod metrics_http;
pub mod model_graph;
pub mod node_agent;
pub mod path_model;
pub mod preflight;
pub mod report;
pub mod rpc;
pub mod service;
pub mod shard_fetch;
pub mod tensor;
pub mod ticket;
pub mod tls;
pub mod transport;
pub mod upload;

pub use error::{Error, ErrorCode, Result, RpcError};
pub use ids::{AssetId, JobId, NodeId, Role, ShardId, TaskId};

/// Installs ring as the process-wide rustls crypto provider.
///
/// Our own TLS configs name ring explicitly, but a dependency that calls
/// `ClientConfig::builder()` would panic if two providers were compiled in and none installed.
/// Every binary and test harness calls this first; calling it again is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The version string nodes report when they register.
pub const SOFTWARE_VERSION: &str = env!("CARGO_PKG_VERSION");
