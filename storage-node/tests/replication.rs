//! Import over the network onto two storage nodes: the digits data uploaded to one node, placed
//! on both, read back shard by shard from each; a flipped byte on one replica is refused and
//! repaired from the other by the scrubber; bad uploads and a failed placement leave no dataset
//! behind; only the importer may drop a dataset, and dropping it removes every replica.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use aic_protocol::certs::CertificateAuthority;
use aic_protocol::messages::{ClientRequest, ClientResponse, ShardState};
use aic_protocol::rpc::RpcClient;
use aic_protocol::ticket::ShardTicket;
use aic_protocol::{Error, ErrorCode, JobId, NodeId, Role, RpcError, ShardId};
use aic_storage_node::import::{import_file, preprocess, read_shard, ImportOptions};
use aic_storage_node::manifest::ReplicaLocation;
use aic_storage_node::shard_fetch::fetch_shard;
use aic_storage_node::shard_store::ShardStore;
use aic_storage_node::upload_client::UploadSink;
use bytes::Bytes;
use common::{connect, digits_csv, eventually, start_minting_scheduler, start_storage};
use ed25519_dalek::SigningKey;
use tokio_util::sync::CancellationToken;

async fn stat(client: &RpcClient, dataset: &str) -> Result<Vec<ShardState>, Error> {
    match client
        .call(&ClientRequest::Stat {
            dataset: dataset.into(),
        })
        .await?
    {
        ClientResponse::Stat(stat) => Ok(stat.shards.iter().map(|s| s.state).collect()),
        other => panic!("{other:?}"),
    }
}

async fn list(client: &RpcClient) -> Vec<String> {
    match client.call(&ClientRequest::ListDatasets).await.unwrap() {
        ClientResponse::Datasets(list) => list.into_iter().map(|d| d.id).collect(),
        other => panic!("{other:?}"),
    }
}

fn code<T: std::fmt::Debug>(result: Result<T, impl Into<Box<dyn std::error::Error>>>) -> (ErrorCode, String) {
    let error: Box<dyn std::error::Error> = match result {
        Ok(value) => panic!("expected a refusal, got {value:?}"),
        Err(e) => e.into(),
    };
    let text = error.to_string();
    let mut source: Option<&dyn std::error::Error> = Some(error.as_ref());
    while let Some(e) = source {
        if let Some(Error::Rpc(RpcError { code, .. })) = e.downcast_ref::<Error>() {
            return (*code, text);
        }
        if let Some(RpcError { code, .. }) = e.downcast_ref::<RpcError>() {
            return (*code, text);
        }
        source = e.source();
    }
    panic!("not an RPC refusal: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_is_placed_on_two_nodes_read_back_and_repaired() {
    aic_protocol::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::generate("replication").unwrap();
    ca.save(dir.path()).unwrap();
    let scheduler_key = SigningKey::from_bytes(&[5u8; 32]);
    let trusted = vec![NodeId::from_public_key(&scheduler_key.verifying_key().to_bytes()).to_string()];
    let scheduler_stop = CancellationToken::new();
    let (scheduler, minter) = start_minting_scheduler(&ca, &scheduler_stop);
    let (a, a_id, a_stop) = start_storage(&ca, dir.path(), "storage-a", &scheduler, trusted.clone(), 1);
    let (b, b_id, b_stop) = start_storage(&ca, dir.path(), "storage-b", &scheduler, trusted, 1);
    let (a_addr, b_addr) = (a.quic_addr.to_string(), b.quic_addr.to_string());
    let replicas = vec![
        ReplicaLocation {
            node: a_id.to_string(),
            quic_addr: a_addr.clone(),
        },
        ReplicaLocation {
            node: b_id.to_string(),
            quic_addr: b_addr.clone(),
        },
    ];

    // Upload to A, placed on A and B.
    let (importer, _) = connect(&ca, Role::Client, "importer", &a_addr).await;
    let options = ImportOptions::new("digit");
    let owner = [4u8; 32];
    let mut sink = UploadSink::new(&importer, |_| {});
    let mut manifest = preprocess(&digits_csv(), "digits", &options, &mut sink, &|_| {})
        .await
        .unwrap();
    manifest.replicas = replicas.clone();
    manifest.fee = "1".into();
    let committed = sink.commit(&manifest, owner).await.unwrap();
    let dataset = committed.dataset.clone();
    assert_eq!(committed.replicas, vec![a_id, b_id]);
    assert!(committed.asset.is_some(), "the import's asset is minted");
    assert_eq!(dataset, aic_storage_node::catalog::dataset_id(&manifest));
    // Both replicas attested the import for its owner, A (which took the upload) first.
    {
        let mints = minter.mints.lock().unwrap();
        assert_eq!(mints.len(), 1);
        assert_eq!(mints[0].owner, owner);
        assert_eq!(
            mints[0].content_hash,
            aic_storage_node::catalog::manifest_hash(&manifest)
        );
        let attesters: Vec<NodeId> = mints[0]
            .attestations
            .iter()
            .map(|a| NodeId::from_public_key(&a.node_key))
            .collect();
        assert_eq!(attesters, vec![a_id, b_id]);
    }

    // Every shard read back from each replica holds exactly the preprocessed rows, which a
    // local import of the same file produces independently.
    let reference = ShardStore::memory();
    let (local, key) = import_file(&digits_csv(), "digits", &options, &reference)
        .await
        .unwrap();
    assert_eq!(
        (local.train.clone(), local.test.clone()),
        (manifest.train.clone(), manifest.test.clone())
    );
    let expires_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64 + 600_000;
    for addr in [&a_addr, &b_addr] {
        let (compute, compute_id) = connect(&ca, Role::Compute, "compute", addr).await;
        let ticket = ShardTicket {
            job: JobId::random(),
            node: compute_id,
            dataset: dataset.clone(),
            expires_ms,
        }
        .sign(&scheduler_key);
        let mut rows = 0u64;
        for entry in manifest.shards() {
            let shard: ShardId = entry.id.parse().unwrap();
            let served = fetch_shard(&compute, &dataset, &shard, &ticket).await.unwrap();
            assert_eq!(served, read_shard(&reference, &key, &shard).await.unwrap());
            rows += served.iter().map(|b| b.num_rows() as u64).sum::<u64>();
        }
        assert_eq!(rows, 1797);
        assert!(stat(&compute_as_client(&ca, addr).await, &dataset)
            .await
            .unwrap()
            .iter()
            .all(|s| *s == ShardState::Healthy));
    }

    // A flipped byte on A: A refuses to serve it, and its scrubber repairs it from B.
    let a_store = ShardStore::local(&dir.path().join("storage-a/shards")).unwrap();
    let flipped: ShardId = manifest.train[1].id.parse().unwrap();
    let mut bytes = a_store.get(&flipped).await.unwrap().to_vec();
    bytes[80] ^= 0x01;
    a_store.put(&flipped, Bytes::from(bytes)).await.unwrap();
    let (compute, compute_id) = connect(&ca, Role::Compute, "compute", &a_addr).await;
    let ticket = ShardTicket {
        job: JobId::random(),
        node: compute_id,
        dataset: dataset.clone(),
        expires_ms,
    }
    .sign(&scheduler_key);
    if let Err(error) = fetch_shard(&compute, &dataset, &flipped, &ticket).await {
        // The scrubber may already have repaired it; if not, the refusal is a clear one.
        assert!(error.to_string().contains("integrity check"), "{error}");
    }
    let a_client = compute_as_client(&ca, &a_addr).await;
    eventually("the scrubber to repair the flipped shard from B", || async {
        stat(&a_client, &dataset)
            .await
            .unwrap()
            .iter()
            .all(|s| *s == ShardState::Healthy)
    })
    .await;
    assert!(fetch_shard(&compute, &dataset, &flipped, &ticket).await.is_ok());
    let metrics = aic_protocol::metrics_http::scrape(a.metrics_addr).await.unwrap();
    assert!(
        metrics.contains("aic_storage_repairs_total{result=\"repaired\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("aic_storage_replications_total{result=\"ok\"} 1"),
        "{metrics}"
    );

    // Bad uploads: bytes that do not hash to their name; a manifest naming a shard never sent;
    // a manifest whose first replica is another node. None leaves a dataset behind.
    let mut sink = UploadSink::new(&importer, |_| {});
    let (refused, _) = code(
        aic_storage_node::import::ShardSink::put(&mut sink, ShardId::of_content(b"x"), b"y".to_vec()).await,
    );
    assert_eq!(refused, ErrorCode::InvalidArgument);
    let mut missing = manifest.clone();
    missing.name = "missing".into();
    let (refused, text) = code(sink.commit(&missing, owner).await);
    assert_eq!(refused, ErrorCode::InvalidArgument);
    assert!(text.contains("never uploaded"), "{text}");

    // A replica that cannot be reached: the import fails and neither node keeps the dataset.
    // (Another split, so other shards than the kept dataset's: the same shards again are
    // refused, see below.)
    let mut unreachable_options = ImportOptions::new("digit");
    unreachable_options.seed = 7;
    let mut sink = UploadSink::new(&importer, |_| {});
    let mut unreachable = preprocess(
        &digits_csv(),
        "unreachable",
        &unreachable_options,
        &mut sink,
        &|_| {},
    )
    .await
    .unwrap();
    unreachable.replicas = vec![
        replicas[0].clone(),
        ReplicaLocation {
            node: NodeId::from_public_key(b"nobody").to_string(),
            quic_addr: "127.0.0.1:9".into(),
        },
    ];
    let (refused, text) = code(sink.commit(&unreachable, owner).await);
    assert_eq!(refused, ErrorCode::Unavailable, "{text}");
    assert_eq!(list(&importer).await, vec![dataset.clone()]);

    // A storage certificate asking B to pull a dataset from A, as if A had asked: refused (a
    // replica pulls only from the node that asks it), and B holds nothing new.
    let (intruder, _) = connect(&ca, Role::Storage, "intruder", &b_addr).await;
    let mut stolen = manifest.clone();
    stolen.name = "stolen".into();
    // Shards B does not hold (those it holds are refused sooner, as already stored).
    stolen.train = vec![aic_storage_node::manifest::ShardEntry {
        id: ShardId::of_content(b"elsewhere").to_string(),
        rows: manifest.rows,
        bytes: 1,
    }];
    stolen.test = Vec::new();
    let pull = aic_protocol::messages::PeerRequest::Replicate {
        manifest: stolen.to_json(),
        key: vec![7; 32],
        importer: NodeId::from_public_key(b"intruder"),
        source: a_addr.clone(),
        owner,
    };
    let (refused, text) = code(intruder.call(&pull).await);
    assert_eq!(refused, ErrorCode::PermissionDenied, "{text}");
    assert!(
        text.contains("the replica source must be the node asking"),
        "{text}"
    );
    assert_eq!(
        list(&compute_as_client(&ca, &b_addr).await).await,
        vec![dataset.clone()]
    );

    // A minted dataset is kept: neither a stranger nor its importer may drop it (its asset's
    // holder owns what it names), and a replica's copy is never dropped on its own.
    let (stranger, _) = connect(&ca, Role::Client, "stranger", &a_addr).await;
    let drop = ClientRequest::DropDataset {
        dataset: dataset.clone(),
    };
    assert_eq!(code(stranger.call(&drop).await).0, ErrorCode::PermissionDenied);
    let (refused, text) = code(importer.call(&drop).await);
    assert_eq!(refused, ErrorCode::PermissionDenied);
    assert!(text.contains("kept as long as the asset exists"), "{text}");
    let (importer_at_b, _) = connect(&ca, Role::Client, "importer", &b_addr).await;
    assert_eq!(
        code(importer_at_b.call(&drop).await).0,
        ErrorCode::PermissionDenied
    );
    let b_client = compute_as_client(&ca, &b_addr).await;
    assert_eq!(list(&b_client).await, vec![dataset.clone()]);

    // The same data again (same shards under another name) is refused at its first shard: it
    // would overwrite the kept dataset's shards under another key.
    let mut sink = UploadSink::new(&importer, |_| {});
    match preprocess(&digits_csv(), "again", &options, &mut sink, &|_| {}).await {
        Err(aic_storage_node::import::ImportError::Upload(error)) => {
            let (refused, text) = code::<()>(Err(error));
            assert_eq!(refused, ErrorCode::AlreadyExists, "{text}");
            assert!(text.contains("imported before"), "{text}");
        }
        other => panic!("the same shards were taken again: {other:?}"),
    }
    sink.abort().await.unwrap();

    // An import whose asset the ledger refuses is dropped from both replicas, and the kept
    // dataset stays whole on both.
    let mut other_options = ImportOptions::new("digit");
    other_options.seed = 11;
    let mut sink = UploadSink::new(&importer, |_| {});
    let mut refused_import = preprocess(&digits_csv(), "refused", &other_options, &mut sink, &|_| {})
        .await
        .unwrap();
    refused_import.replicas = replicas.clone();
    let (code_refused, text) = code(sink.commit(&refused_import, common::REFUSED_OWNER).await);
    assert_eq!(code_refused, ErrorCode::AlreadyExists, "{text}");
    assert_eq!(list(&importer).await, vec![dataset.clone()]);
    assert_eq!(list(&b_client).await, vec![dataset.clone()]);
    for client in [&a_client, &b_client] {
        assert!(stat(client, &dataset)
            .await
            .unwrap()
            .iter()
            .all(|s| *s == ShardState::Healthy));
    }
    let shards_kept = manifest.shards().count();
    eventually("the refused import's shards to be deleted", || async {
        a_store.list().await.unwrap().len() == shards_kept
    })
    .await;

    a_stop.cancel();
    b_stop.cancel();
    scheduler_stop.cancel();
    a.stopped().await;
    b.stopped().await;
}

async fn compute_as_client(ca: &CertificateAuthority, addr: &str) -> RpcClient {
    connect(ca, Role::Client, "operator", addr).await.0
}
