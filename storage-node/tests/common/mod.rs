//! What the storage tests share: certificates from one CA, a storage node on loopback, and
//! connections with a certificate of a chosen role.

#![allow(dead_code)]

use std::path::Path;

use aic_protocol::certs::{CertificateAuthority, Identity, IdentityFiles, Validity};
use aic_protocol::node_agent::SchedulerLink;
use aic_protocol::rpc::RpcClient;
use aic_protocol::service::{BoundSockets, EndpointSettings, ServiceHandle};
use aic_protocol::transport::{self, TransportTuning};
use aic_protocol::{NodeId, Role};
use aic_storage_node::StorageConfig;
use tokio_util::sync::CancellationToken;

pub fn digits_csv() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/digits/digits.csv")
}

pub fn issue(ca: &CertificateAuthority, dir: &Path, role: Role, name: &str) -> IdentityFiles {
    ca.issue(role, name, &[], Validity::default())
        .unwrap()
        .save(dir, name)
        .unwrap()
}

/// A storage node with its data under `dir/<name>`, scrubbing every `scrub_secs`, whose
/// scheduler link points at `scheduler` (nothing need listen there).
pub fn start_storage(
    ca: &CertificateAuthority,
    dir: &Path,
    name: &str,
    scheduler: &str,
    trusted: Vec<String>,
    scrub_secs: u64,
) -> (ServiceHandle, NodeId, CancellationToken) {
    let tls = issue(ca, dir, Role::Storage, name);
    let id = tls.load().unwrap().me.node_id;
    let mut config = StorageConfig {
        endpoint: EndpointSettings {
            tls,
            ..EndpointSettings::with_ports(0, 0)
        },
        scheduler: SchedulerLink {
            addr: scheduler.to_string(),
            replicas: Vec::new(),
        },
        ..Default::default()
    };
    config.storage.data_dir = dir.join(name);
    config.storage.trusted_schedulers = trusted;
    config.storage.scrub_interval_secs = scrub_secs;
    let shutdown = CancellationToken::new();
    let node = aic_storage_node::start(
        config,
        BoundSockets::loopback_ephemeral().unwrap(),
        shutdown.clone(),
    )
    .unwrap();
    (node, id, shutdown)
}

/// A connection to the storage node at `addr` with a fresh certificate of `role`, and the
/// node id that certificate gives the caller.
pub async fn connect(ca: &CertificateAuthority, role: Role, name: &str, addr: &str) -> (RpcClient, NodeId) {
    let identity =
        Identity::from_issued(ca, &ca.issue(role, name, &[], Validity::default()).unwrap()).unwrap();
    let id = identity.me.node_id;
    let tuning = TransportTuning::default();
    let endpoint = transport::endpoint(
        transport::bind_udp("127.0.0.1:0".parse().unwrap(), &tuning).unwrap(),
        &identity,
        &tuning,
    )
    .unwrap();
    (
        RpcClient::connect(&endpoint, addr, Role::Storage).await.unwrap(),
        id,
    )
}

/// Polls `check` every 100 ms for up to 20 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}
