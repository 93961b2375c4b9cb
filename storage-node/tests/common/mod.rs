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
    start_storage_with(ca, dir, name, scheduler, trusted, scrub_secs, |_| {})
}

/// [`start_storage`], with the config changed by `tweak` before the node starts.
pub fn start_storage_with(
    ca: &CertificateAuthority,
    dir: &Path,
    name: &str,
    scheduler: &str,
    trusted: Vec<String>,
    scrub_secs: u64,
    tweak: impl FnOnce(&mut StorageConfig),
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
    tweak(&mut config);
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

/// Stands in for the scheduler where a test needs one that mints: it registers nodes, accepts
/// heartbeats, and answers an import's mint request after checking every attestation's
/// signature (what the real scheduler and ledger check); the mints it granted are kept. An
/// import for [`REFUSED_OWNER`] is refused, as the ledger refuses a content minted already.
pub const REFUSED_OWNER: [u8; 32] = [0xee; 32];

pub struct MintingScheduler {
    pub mints: std::sync::Mutex<Vec<aic_protocol::messages::DatasetMint>>,
}

impl aic_protocol::rpc::RpcHandler for MintingScheduler {
    async fn node(
        &self,
        peer: &aic_protocol::certs::PeerIdentity,
        request: aic_protocol::messages::NodeRequest,
    ) -> Result<aic_protocol::messages::NodeResponse, aic_protocol::RpcError> {
        use aic_protocol::messages::{ImportAttestation, NodeRequest, NodeResponse};
        match request {
            NodeRequest::Register(_) => Ok(NodeResponse::Registered {
                node_id: peer.node_id,
                heartbeat_interval_ms: 1000,
                probe_targets: Vec::new(),
                scheduler_replicas: Default::default(),
            }),
            NodeRequest::Heartbeat(_) => Ok(NodeResponse::HeartbeatAccepted {
                probe_targets: Vec::new(),
                scheduler_replicas: Default::default(),
            }),
            NodeRequest::AttestImport(mint) => {
                let message = ImportAttestation::message(&mint.content_hash, &mint.owner);
                for attestation in &mint.attestations {
                    let signature: [u8; 64] = attestation.signature.as_slice().try_into().unwrap();
                    let key = aic_ledger::Address(attestation.node_key);
                    assert!(
                        aic_ledger::keys::verify_strict(&key, &message, &signature),
                        "an attestation does not verify"
                    );
                }
                if mint.owner == REFUSED_OWNER {
                    return Err(aic_protocol::RpcError::new(
                        aic_protocol::ErrorCode::AlreadyExists,
                        "this content is already minted",
                    ));
                }
                self.mints.lock().unwrap().push(*mint);
                Ok(NodeResponse::DatasetMinted {
                    asset: aic_protocol::AssetId::random(),
                })
            }
        }
    }
}

/// Starts a [`MintingScheduler`] on loopback; answers its address and the handler.
pub fn start_minting_scheduler(
    ca: &CertificateAuthority,
    shutdown: &CancellationToken,
) -> (String, std::sync::Arc<MintingScheduler>) {
    let identity = Identity::from_issued(
        ca,
        &ca.issue(Role::Scheduler, "scheduler", &[], Validity::default())
            .unwrap(),
    )
    .unwrap();
    let tuning = TransportTuning::default();
    let endpoint = transport::endpoint(
        transport::bind_udp("127.0.0.1:0".parse().unwrap(), &tuning).unwrap(),
        &identity,
        &tuning,
    )
    .unwrap();
    let addr = endpoint.local_addr().unwrap().to_string();
    let handler = std::sync::Arc::new(MintingScheduler {
        mints: Default::default(),
    });
    let metrics =
        aic_protocol::metrics::TransportMetrics::register(&prometheus::Registry::new(), "scheduler").unwrap();
    tokio::spawn(aic_protocol::rpc::serve(
        endpoint,
        handler.clone(),
        metrics,
        shutdown.clone(),
    ));
    (addr, handler)
}
