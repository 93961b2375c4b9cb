//! Shard serving over QUIC: a compute node with a valid ticket gets the shard's rows as Arrow
//! IPC batches; a missing-the-mark ticket (expired, another node, another dataset,
//! untrusted or forged), a client certificate, or a corrupt shard is refused, and counted.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use aic_protocol::certs::{CertificateAuthority, Validity};
use aic_protocol::messages::{ClientRequest, ClientResponse};
use aic_protocol::node_agent::SchedulerLink;
use aic_protocol::rpc::RpcClient;
use aic_protocol::service::{BoundSockets, EndpointSettings};
use aic_protocol::ticket::{ShardTicket, SignedTicket};
use aic_protocol::{Error, ErrorCode, JobId, NodeId, Role, RpcError, ShardId};
use aic_storage_node::catalog::Catalog;
use aic_storage_node::import::{import_file, read_shard, ImportOptions};
use aic_storage_node::shard_fetch::{fetch_shard, fetch_shards, FetchError, SHARDS_IN_FLIGHT};
use aic_storage_node::shard_store::ShardStore;
use aic_storage_node::StorageConfig;
use arrow_array::RecordBatch;
use bytes::Bytes;
use ed25519_dalek::SigningKey;
use tokio_util::sync::CancellationToken;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

async fn client(ca: &CertificateAuthority, role: Role, addr: &str) -> (RpcClient, NodeId) {
    common::connect(ca, role, "caller", addr).await
}

fn refusal(result: Result<Vec<RecordBatch>, FetchError>) -> (ErrorCode, String) {
    match result {
        Err(FetchError::Transport(Error::Rpc(RpcError { code, message }))) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_are_served_only_against_valid_tickets() {
    aic_protocol::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("storage-1");
    let digits = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/digits/digits.csv");
    let store = ShardStore::local(&data_dir.join("shards")).unwrap();
    let (manifest, key) = import_file(&digits, "digits", &ImportOptions::new("digit"), &store)
        .await
        .unwrap();
    let dataset = Catalog::open(&data_dir.join("datasets"))
        .unwrap()
        .add(manifest.clone(), key.clone(), None)
        .unwrap();

    let ca = CertificateAuthority::generate("serving").unwrap();
    ca.save(dir.path()).unwrap();
    let tls = ca
        .issue(Role::Storage, "storage-1", &[], Validity::default())
        .unwrap()
        .save(dir.path(), "storage-1")
        .unwrap();
    let scheduler_key = SigningKey::from_bytes(&[7u8; 32]);
    let scheduler_id = NodeId::from_public_key(&scheduler_key.verifying_key().to_bytes());
    let mut config = StorageConfig {
        endpoint: EndpointSettings {
            tls,
            ..EndpointSettings::with_ports(0, 0)
        },
        // No scheduler runs here; the agent retries in the background while we test serving.
        scheduler: SchedulerLink {
            addr: "127.0.0.1:9".into(),
            replicas: Vec::new(),
        },
        ..Default::default()
    };
    config.storage.data_dir = data_dir.clone();
    config.storage.trusted_schedulers = vec![scheduler_id.to_string()];
    let shutdown = CancellationToken::new();
    let node = aic_storage_node::start(
        config,
        BoundSockets::loopback_ephemeral().unwrap(),
        shutdown.clone(),
    )
    .unwrap();
    let addr = node.quic_addr.to_string();

    let (compute, compute_id) = client(&ca, Role::Compute, &addr).await;
    let shard: ShardId = manifest.train[0].id.parse().unwrap();
    let ticket = |node: NodeId, dataset: &str, expires_ms: u64, key: &SigningKey| {
        ShardTicket {
            job: JobId::random(),
            node,
            dataset: dataset.to_string(),
            expires_ms,
        }
        .sign(key)
    };
    let get = |client: &RpcClient, dataset: &str, ticket: SignedTicket| {
        let (client, dataset) = (client.clone(), dataset.to_string());
        async move { fetch_shard(&client, &dataset, &shard, &ticket).await }
    };

    // A valid ticket: the streamed batches are the shard's rows.
    let valid = ticket(compute_id, &dataset, now_ms() + 60_000, &scheduler_key);
    let served = get(&compute, &dataset, valid.clone()).await.unwrap();
    let stored = read_shard(&store, &key, &shard).await.unwrap();
    assert_eq!(served, stored);
    assert_eq!(
        served.iter().map(|b| b.num_rows() as u64).sum::<u64>(),
        manifest.train[0].rows
    );

    // A task's shards, a few in flight, come back whole and in the order asked (each twice here,
    // to ask for more than are fetched at once).
    let all: Vec<ShardId> = manifest
        .train
        .iter()
        .chain(&manifest.train)
        .map(|s| s.id.parse().unwrap())
        .collect();
    assert!(all.len() > SHARDS_IN_FLIGHT, "more shards than fetched at once");
    let fetched = fetch_shards(&compute, &dataset, &all, &valid).await.unwrap();
    assert_eq!(fetched.len(), all.len());
    for (id, batches) in all.iter().zip(&fetched) {
        assert_eq!(batches, &read_shard(&store, &key, id).await.unwrap());
    }
    // The ticket's signature, verified once and remembered, vouches for no altered copy.
    let mut extended = valid.clone();
    extended.ticket.expires_ms += 1;
    assert!(refusal(get(&compute, &dataset, extended).await)
        .1
        .contains("does not verify"));

    let expired = ticket(compute_id, &dataset, now_ms() - 1, &scheduler_key);
    assert_eq!(
        refusal(get(&compute, &dataset, expired).await).1,
        "the ticket expired"
    );
    let elsewhere = ticket(
        NodeId::from_public_key(b"other"),
        &dataset,
        now_ms() + 60_000,
        &scheduler_key,
    );
    assert!(refusal(get(&compute, &dataset, elsewhere).await)
        .1
        .contains("another node"));
    let other_dataset = ticket(compute_id, "0123", now_ms() + 60_000, &scheduler_key);
    assert!(refusal(get(&compute, &dataset, other_dataset).await)
        .1
        .contains("another dataset"));
    let stranger = ticket(
        compute_id,
        &dataset,
        now_ms() + 60_000,
        &SigningKey::from_bytes(&[9u8; 32]),
    );
    assert!(refusal(get(&compute, &dataset, stranger).await)
        .1
        .contains("not a trusted"));
    let mut forged = valid.clone();
    forged.ticket.expires_ms += 1;
    let (code, message) = refusal(get(&compute, &dataset, forged).await);
    assert_eq!(
        (code, message.as_str()),
        (
            ErrorCode::PermissionDenied,
            "the ticket's signature does not verify"
        )
    );

    // A client certificate may not fetch shards at all, ticket or not.
    let (user, _) = client(&ca, Role::Client, &addr).await;
    assert_eq!(
        refusal(get(&user, &dataset, valid.clone()).await).0,
        ErrorCode::PermissionDenied
    );
    // Any authenticated client may list datasets and take a capped free look.
    match user.call(&ClientRequest::ListDatasets).await.unwrap() {
        ClientResponse::Datasets(list) => {
            assert_eq!(list.len(), 1);
            assert_eq!((list[0].id.as_str(), list[0].rows), (dataset.as_str(), 1797));
        }
        other => panic!("{other:?}"),
    }
    let preview = ClientRequest::Preview {
        dataset: dataset.clone(),
        rows: 1000,
    };
    match user.call(&preview).await.unwrap() {
        ClientResponse::Preview(preview) => {
            assert_eq!(preview.columns.len(), 64);
            assert_eq!(preview.rows.len(), 17, "1 % of 1,797 rows, rounded down");
            assert_eq!(preview.labels.len(), 17);
            assert!(preview.labels.iter().all(|&l| l < 10));
        }
        other => panic!("{other:?}"),
    }

    // A corrupt shard is never served.
    let mut sealed = store.get(&shard).await.unwrap().to_vec();
    sealed[64] ^= 0x10;
    store.put(&shard, Bytes::from(sealed)).await.unwrap();
    let (code, message) = refusal(get(&compute, &dataset, valid).await);
    assert_eq!(code, ErrorCode::Unavailable, "{message}");

    // Each refusal is counted by its reason, and the bytes served are counted too.
    let metrics = aic_protocol::metrics_http::scrape(node.metrics_addr)
        .await
        .unwrap();
    for (reason, count) in [
        ("ticket_expired", 1),
        ("ticket_wrong_node", 1),
        ("ticket_wrong_dataset", 1),
        ("ticket_untrusted", 1),
        // The extended copy of a remembered ticket and a forged signature.
        ("ticket_forged", 2),
        ("corrupt_shard", 1),
    ] {
        let line = format!("aic_storage_requests_rejected_total{{reason=\"{reason}\"}} {count}");
        assert!(metrics.contains(&line), "missing {line} in:\n{metrics}");
    }
    assert!(
        !metrics.contains("aic_storage_served_bytes_total 0\n"),
        "{metrics}"
    );

    shutdown.cancel();
    node.stopped().await;
}
