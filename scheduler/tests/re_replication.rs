//! A storage node lost for good (issue 17, item 4): a real scheduler (one-replica ledger, the
//! leader) and three real storage nodes on loopback QUIC. The digits are imported onto two of
//! them; one holder is killed and stays away past `membership.storage_lost_after_ms`; the
//! leader has the survivor copy the dataset to the third node, which checks every shard before
//! keeping it. The grid is back to two whole copies, the new holder serves the survivor's exact
//! shards to a compute node and exports them to the asset's owner, and both holders' holder sets
//! name the new holder instead of the lost one.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aic_protocol::certs::{CertificateAuthority, Identity, IdentityFiles, Validity};
use aic_protocol::holders::HolderSet;
use aic_protocol::messages::{ClientRequest, ClientResponse, NodeState, NodeStatus, OwnerProof, ShardState};
use aic_protocol::node_agent::SchedulerLink;
use aic_protocol::rpc::RpcClient;
use aic_protocol::service::{BoundSockets, EndpointSettings, ServiceHandle};
use aic_protocol::ticket::ShardTicket;
use aic_protocol::transport::{self, TransportTuning};
use aic_protocol::{JobId, NodeId, Role, ShardId};
use aic_scheduler::SchedulerConfig;
use aic_storage_node::import::{preprocess, ImportOptions};
use aic_storage_node::manifest::ReplicaLocation;
use aic_storage_node::shard_fetch::fetch_shard;
use aic_storage_node::shard_store::ShardStore;
use aic_storage_node::upload_client::UploadSink;
use ed25519_dalek::SigningKey;
use tokio_util::sync::CancellationToken;

/// Marked down after 3 × 250 ms of silence (as the cluster test), lost for good after 2 s.
const HEARTBEAT_MS: u64 = 250;
const LOST_AFTER_MS: u64 = 2_000;
/// The bound on every wait: generous for a loaded 2-core machine; nothing asserts on time.
const PATIENCE: Duration = Duration::from_secs(90);

fn issue(ca: &CertificateAuthority, dir: &Path, role: Role, name: &str) -> IdentityFiles {
    ca.issue(role, name, &[], Validity::default())
        .unwrap()
        .save(dir, name)
        .unwrap()
}

fn endpoint_settings(files: IdentityFiles) -> EndpointSettings {
    EndpointSettings {
        tls: files,
        ..EndpointSettings::with_ports(0, 0)
    }
}

fn digits_csv() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../storage-node/data/digits/digits.csv")
}

struct Storage {
    handle: ServiceHandle,
    id: NodeId,
    stop: CancellationToken,
    store: ShardStore,
    addr: String,
}

fn start_storage(
    ca: &CertificateAuthority,
    dir: &Path,
    name: &str,
    scheduler: &str,
    trusted: &str,
) -> Storage {
    let tls = issue(ca, dir, Role::Storage, name);
    let id = tls.load().unwrap().me.node_id;
    let mut config = aic_storage_node::StorageConfig {
        endpoint: endpoint_settings(tls),
        scheduler: SchedulerLink {
            addr: scheduler.to_string(),
            replicas: Vec::new(),
        },
        ..Default::default()
    };
    config.storage.data_dir = dir.join(name);
    config.storage.trusted_schedulers = vec![trusted.to_string()];
    let stop = CancellationToken::new();
    let handle =
        aic_storage_node::start(config, BoundSockets::loopback_ephemeral().unwrap(), stop.clone()).unwrap();
    let addr = handle.quic_addr.to_string();
    Storage {
        handle,
        id,
        stop,
        store: ShardStore::local(&dir.join(name).join("shards")).unwrap(),
        addr,
    }
}

/// An endpoint with a fresh certificate of `role`, and the node id it gives.
fn endpoint(ca: &CertificateAuthority, role: Role, name: &str) -> (quinn::Endpoint, NodeId) {
    let identity =
        Identity::from_issued(ca, &ca.issue(role, name, &[], Validity::default()).unwrap()).unwrap();
    let tuning = TransportTuning::default();
    let endpoint = transport::endpoint(
        transport::bind_udp("127.0.0.1:0".parse().unwrap(), &tuning).unwrap(),
        &identity,
        &tuning,
    )
    .unwrap();
    (endpoint, identity.me.node_id)
}

async fn client(ca: &CertificateAuthority, role: Role, name: &str, addr: &str, expect: Role) -> RpcClient {
    let (endpoint, _) = endpoint(ca, role, name);
    RpcClient::connect(&endpoint, addr, expect).await.unwrap()
}

async fn list(client: &RpcClient) -> Vec<NodeStatus> {
    match client.call(&ClientRequest::ListNodes).await.unwrap() {
        ClientResponse::Nodes(nodes) => nodes,
        other => panic!("unexpected answer {other:?}"),
    }
}

/// Up storage nodes that report `dataset` whole: what a job's placement reads
/// (`job::engine::replicas_of`).
fn whole(nodes: &[NodeStatus], dataset: &str) -> Vec<NodeId> {
    let mut holders = aic_scheduler::job::engine::replicas_of(nodes, dataset);
    holders.sort();
    holders
}

/// Polls `check` every 100 ms until it answers `Some`, for at most [`PATIENCE`].
async fn wait_for<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "gave up waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn metric(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
}

#[test]
fn a_lost_holders_dataset_is_copied_until_it_has_its_replica_count_again() {
    aic_protocol::install_crypto_provider();
    let system = actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    });
    system.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::generate("re-replication").unwrap();
        ca.save(dir.path()).unwrap();

        // A scheduler that mints (it holds the genesis system key) and leads its ledger.
        let mut config = SchedulerConfig {
            endpoint: endpoint_settings(issue(&ca, dir.path(), Role::Scheduler, "scheduler")),
            ..Default::default()
        };
        config.membership.heartbeat_interval_ms = HEARTBEAT_MS;
        config.membership.missed_heartbeats_before_down = 3;
        config.membership.storage_lost_after_ms = LOST_AFTER_MS;
        let (genesis, keys) = aic_ledger::testkit::test_genesis("re-replication");
        config.ledger.genesis = dir.path().join("genesis.toml");
        genesis.save(&config.ledger.genesis).unwrap();
        config.ledger.data_dir = dir.path().join("ledger");
        config.ledger.bootstrap = true;
        config.ledger.block_interval_ms = 500;
        config.jobs.system_key = dir.path().join("system.key");
        std::fs::write(&config.jobs.system_key, hex::encode(keys.system.secret_bytes())).unwrap();
        aic_protocol::config::Validate::validate(&config).unwrap();
        let scheduler_stop = CancellationToken::new();
        let scheduler = aic_scheduler::start(
            config,
            BoundSockets::loopback_ephemeral().unwrap(),
            scheduler_stop.clone(),
        )
        .await
        .unwrap();
        let scheduler_addr = scheduler.quic_addr.to_string();

        // Shard tickets in this test are signed with a key the storage nodes are told to trust.
        let ticket_key = SigningKey::from_bytes(&[5u8; 32]);
        let trusted = NodeId::from_public_key(&ticket_key.verifying_key().to_bytes()).to_string();
        let a = start_storage(&ca, dir.path(), "storage-a", &scheduler_addr, &trusted);
        let b = start_storage(&ca, dir.path(), "storage-b", &scheduler_addr, &trusted);
        let c = start_storage(&ca, dir.path(), "storage-c", &scheduler_addr, &trusted);
        let operator = client(&ca, Role::Operator, "operator", &scheduler_addr, Role::Scheduler).await;
        wait_for("three storage nodes are up", async || {
            let nodes = list(&operator).await;
            let up = nodes
                .iter()
                .filter(|n| n.role == Role::Storage && n.state == NodeState::Up)
                .count();
            (up == 3).then_some(())
        })
        .await;

        // The digits, imported through A onto A and B.
        let importer = client(&ca, Role::Client, "importer", &a.addr, Role::Storage).await;
        let mut sink = UploadSink::new(&importer, |_| {});
        let mut manifest = preprocess(
            &digits_csv(),
            "digits",
            &ImportOptions::new("digit"),
            &mut sink,
            &|_| {},
        )
        .await
        .unwrap();
        manifest.replicas = [&a, &b]
            .iter()
            .map(|s| ReplicaLocation {
                node: s.id.to_string(),
                quic_addr: s.addr.clone(),
            })
            .collect();
        let owner = aic_ledger::Keypair::generate();
        let committed = sink.commit(&manifest, owner.address().0).await.unwrap();
        let dataset = committed.dataset.clone();
        let asset = committed.asset.expect("the scheduler minted the Dataset asset");
        let mut placed = vec![a.id, b.id];
        placed.sort();
        wait_for("A and B report the dataset whole", async || {
            (whole(&list(&operator).await, &dataset) == placed).then_some(())
        })
        .await;

        // B is lost for good: killed, and never back.
        let lost = b.id;
        b.stop.cancel();
        b.handle.stopped().await;
        let mut expected = vec![a.id, c.id];
        expected.sort();
        let nodes = wait_for("C holds the dataset whole beside A", async || {
            let nodes = list(&operator).await;
            (whole(&nodes, &dataset) == expected).then_some(nodes)
        })
        .await;
        let b_row = nodes.iter().find(|n| n.node_id == lost).unwrap();
        assert_eq!(b_row.state, NodeState::Down);
        let c_holding = nodes
            .iter()
            .find(|n| n.node_id == c.id)
            .unwrap()
            .holdings
            .iter()
            .find(|h| h.dataset == dataset)
            .unwrap()
            .clone();
        assert_eq!(c_holding.healthy_shards, c_holding.shards);
        assert_eq!(
            c_holding.replicas_wanted, 2,
            "the replica count the import asked for"
        );

        // The scheduler counted one copy and sees nothing short any more.
        let metrics = wait_for("the scheduler's gauges settle", async || {
            let text = aic_protocol::metrics_http::scrape(scheduler.metrics_addr)
                .await
                .unwrap();
            (metric(&text, "aic_scheduler_datasets_under_replicated ") == Some(0.0)).then_some(text)
        })
        .await;
        assert_eq!(
            metric(&metrics, "aic_scheduler_re_replications_total{result=\"ok\"} "),
            Some(1.0),
            "{metrics}"
        );
        assert_eq!(
            metric(
                &metrics,
                "aic_scheduler_re_replications_total{result=\"failed\"} "
            ),
            Some(0.0)
        );
        assert_eq!(metric(&metrics, "aic_scheduler_storage_nodes_lost "), Some(1.0));

        // The new copy is the survivor's: the same sealed bytes at rest, every shard healthy
        // (authentic and hashing to its name), and the same rows served to a compute node.
        let expires_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64 + 600_000;
        let (compute, compute_id) = endpoint(&ca, Role::Compute, "compute");
        let at_a = RpcClient::connect(&compute, &a.addr, Role::Storage)
            .await
            .unwrap();
        let at_c = RpcClient::connect(&compute, &c.addr, Role::Storage)
            .await
            .unwrap();
        let ticket = ShardTicket {
            job: JobId::random(),
            node: compute_id,
            dataset: dataset.clone(),
            expires_ms,
        }
        .sign(&ticket_key);
        for entry in manifest.shards() {
            let shard: ShardId = entry.id.parse().unwrap();
            let (survivor, copy) = (
                a.store.get(&shard).await.unwrap(),
                c.store.get(&shard).await.unwrap(),
            );
            assert_eq!(blake3::hash(&survivor), blake3::hash(&copy), "shard {shard}");
            let from_a = fetch_shard(&at_a, &dataset, &shard, &ticket).await.unwrap();
            let from_c = fetch_shard(&at_c, &dataset, &shard, &ticket).await.unwrap();
            assert_eq!(from_a, from_c, "shard {shard}");
        }
        let c_operator = client(&ca, Role::Operator, "operator", &c.addr, Role::Storage).await;
        match c_operator
            .call(&ClientRequest::Stat {
                dataset: dataset.clone(),
            })
            .await
            .unwrap()
        {
            ClientResponse::Stat(stat) => {
                assert_eq!(stat.shards.len(), manifest.shards().count());
                assert!(stat.shards.iter().all(|s| s.state == ShardState::Healthy));
            }
            other => panic!("{other:?}"),
        }

        // The asset's owner exports every shard from the new holder: the plain Parquet hashes
        // to the shard's name.
        let (exporter, exporter_id) = endpoint(&ca, Role::Client, "owner");
        let owner_at_c = RpcClient::connect(&exporter, &c.addr, Role::Storage)
            .await
            .unwrap();
        for entry in manifest.shards() {
            let shard: ShardId = entry.id.parse().unwrap();
            let message = OwnerProof::message(&asset, &dataset, &exporter_id, expires_ms);
            let request = ClientRequest::Export {
                dataset: dataset.clone(),
                shard,
                proof: OwnerProof {
                    asset,
                    owner: owner.address().0,
                    expires_ms,
                    signature: owner.sign(&message).to_vec(),
                },
            };
            let mut stream = owner_at_c.call_stream(&request).await.unwrap();
            let mut parquet = Vec::new();
            while let Some(item) = stream.next().await {
                match item.unwrap() {
                    ClientResponse::ExportChunk { bytes } => parquet.extend_from_slice(&bytes),
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(ShardId::of_content(&parquet), shard);
        }

        // Both holders record the new holder set: A and C, not B; the dataset id is unchanged.
        for holder in ["storage-a", "storage-c"] {
            let path = dir
                .path()
                .join(holder)
                .join(format!("datasets/{dataset}.holders"));
            let set: HolderSet = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
            let mut named: Vec<NodeId> = set.holders.iter().map(|h| h.node.parse().unwrap()).collect();
            named.sort();
            assert_eq!(
                (set.dataset.as_str(), set.epoch, named),
                (dataset.as_str(), 1, expected.clone())
            );
        }
        assert_eq!(aic_storage_node::catalog::dataset_id(&manifest), dataset);

        for storage in [a, c] {
            storage.stop.cancel();
            storage.handle.stopped().await;
        }
        scheduler_stop.cancel();
        scheduler.stopped().await;
    });
}
