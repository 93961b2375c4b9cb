//! The storage node's boundaries as an attacker meets them, over real QUIC with each role's
//! certificate: upload slots per client identity, aborts and idle expiry that leave no shard
//! behind, a preview that reveals one fixed sample however often it is called, and an import
//! whose asset cannot be minted leaving nothing stored (issue 12, items 4–6), and a dataset's
//! key and shards handed over only between storage nodes at a trusted scheduler's request
//! (issue 17). Tensors (a job's weights) have their own boundary test, `tensors.rs`; a hostile
//! holder's copy has its own, `handover.rs`.

mod common;

use std::collections::BTreeSet;

use aic_protocol::messages::{ClientRequest, ClientResponse, DatasetPreview, PeerRequest};
use aic_protocol::rpc::RpcClient;
use aic_protocol::{Error, ErrorCode, Role, RpcError, ShardId};
use aic_storage_node::import::{preprocess, ImportOptions};
use aic_storage_node::manifest::{Manifest, ReplicaLocation};
use aic_storage_node::preview_sample_size;
use aic_storage_node::shard_store::ShardStore;
use aic_storage_node::upload_client::UploadSink;
use common::{connect, digits_csv, eventually, start_minting_scheduler, start_storage_with, REFUSED_OWNER};
use tokio_util::sync::CancellationToken;

fn ca(dir: &std::path::Path) -> aic_protocol::certs::CertificateAuthority {
    aic_protocol::install_crypto_provider();
    let ca = aic_protocol::certs::CertificateAuthority::generate("boundaries").unwrap();
    ca.save(dir).unwrap();
    ca
}

fn refusal<T: std::fmt::Debug>(result: Result<T, Error>) -> (ErrorCode, String) {
    match result {
        Err(Error::Rpc(RpcError { code, message })) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn begin(client: &RpcClient) -> Result<u64, Error> {
    match client.call(&ClientRequest::BeginImport).await? {
        ClientResponse::ImportStarted { upload } => Ok(upload),
        other => panic!("unexpected answer {other:?}"),
    }
}

async fn upload_small_shard(client: &RpcClient, upload: u64, bytes: &[u8]) -> Result<ClientResponse, Error> {
    client
        .call(&ClientRequest::UploadShard {
            upload,
            shard: ShardId::of_content(bytes),
            offset: 0,
            total: bytes.len() as u64,
            bytes: bytes.to_vec(),
        })
        .await
}

struct Node {
    addr: String,
    id: aic_protocol::NodeId,
    store: ShardStore,
    stops: Vec<CancellationToken>,
    handle: Option<aic_protocol::service::ServiceHandle>,
}

impl Node {
    async fn stop(mut self) {
        for stop in &self.stops {
            stop.cancel();
        }
        if let Some(handle) = self.handle.take() {
            handle.stopped().await;
        }
    }

    fn replicas(&self) -> Vec<ReplicaLocation> {
        vec![ReplicaLocation {
            node: self.id.to_string(),
            quic_addr: self.addr.clone(),
        }]
    }
}

/// One storage node with a minting stand-in for the scheduler, one upload slot per client and
/// uploads that idle out after a second.
fn start(dir: &std::path::Path, ca: &aic_protocol::certs::CertificateAuthority) -> Node {
    let scheduler_stop = CancellationToken::new();
    let (scheduler, _) = start_minting_scheduler(ca, &scheduler_stop);
    let (handle, id, stop) = start_storage_with(ca, dir, "storage", &scheduler, Vec::new(), 3600, |config| {
        config.storage.uploads_per_client = 1;
        config.storage.upload_idle_secs = 1;
    });
    Node {
        addr: handle.quic_addr.to_string(),
        id,
        store: ShardStore::local(&dir.join("storage/shards")).unwrap(),
        stops: vec![stop, scheduler_stop],
        handle: Some(handle),
    }
}

async fn import_digits(
    node: &Node,
    client: &RpcClient,
    owner: [u8; 32],
) -> Result<(String, Manifest), Error> {
    let mut sink = UploadSink::new(client, |_| {});
    let mut manifest = preprocess(
        &digits_csv(),
        "digits",
        &ImportOptions::new("digit"),
        &mut sink,
        &|_| {},
    )
    .await
    .unwrap();
    manifest.replicas = node.replicas();
    match sink.commit(&manifest, owner).await {
        Ok(committed) => Ok((committed.dataset, manifest)),
        Err(aic_storage_node::import::SinkError::Upload(error)) => Err(error),
        Err(other) => panic!("{other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_slots_are_per_client_and_aborted_or_idle_uploads_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca(dir.path());
    let node = start(dir.path(), &ca);
    let (x, _) = connect(&ca, Role::Client, "x", &node.addr).await;
    let (y, _) = connect(&ca, Role::Client, "y", &node.addr).await;

    // One slot per client: X's second upload is refused, Y still gets one.
    let first = begin(&x).await.unwrap();
    let (code, message) = refusal(begin(&x).await);
    assert_eq!(code, ErrorCode::ResourceExhausted, "{message}");
    let y_upload = begin(&y).await.unwrap();
    // Nobody aborts another's upload.
    let abort_x = ClientRequest::AbortImport { upload: first };
    assert_eq!(refusal(y.call(&abort_x).await).0, ErrorCode::PermissionDenied);

    // A shard sent then aborted: deleted at once, and the slot is free again.
    upload_small_shard(&x, first, b"a shard that is given up")
        .await
        .unwrap();
    assert_eq!(node.store.list().await.unwrap().len(), 1);
    assert!(matches!(x.call(&abort_x).await.unwrap(), ClientResponse::Aborted));
    assert!(node.store.list().await.unwrap().is_empty());
    let second = begin(&x).await.unwrap();

    // Left idle: abandoned by the sweeper, its shard deleted, its id unknown.
    upload_small_shard(&x, second, b"a shard that is left behind")
        .await
        .unwrap();
    eventually("the idle upload to be swept", || async {
        node.store.list().await.unwrap().is_empty()
    })
    .await;
    let (code, _) = refusal(upload_small_shard(&x, second, b"late").await);
    assert_eq!(code, ErrorCode::NotFound);
    let (code, _) = refusal(upload_small_shard(&y, y_upload, b"late").await);
    assert_eq!(code, ErrorCode::NotFound);
    // Both slots came back.
    begin(&x).await.unwrap();
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_preview_reveals_one_fixed_sample_however_often_it_is_called() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca(dir.path());
    let node = start(dir.path(), &ca);
    let (owner, _) = connect(&ca, Role::Client, "owner", &node.addr).await;
    let (dataset, manifest) = import_digits(&node, &owner, [1; 32]).await.unwrap();
    let sample = preview_sample_size(manifest.rows);
    assert_eq!(sample, 17, "1 % of 1,797 rows, rounded down");

    let preview = |client: RpcClient, rows: u32| {
        let dataset = dataset.clone();
        async move {
            match client
                .call(&ClientRequest::Preview { dataset, rows })
                .await
                .unwrap()
            {
                ClientResponse::Preview(preview) => preview,
                other => panic!("unexpected answer {other:?}"),
            }
        }
    };
    let key = |p: &DatasetPreview, i: usize| -> Vec<u32> {
        p.rows[i]
            .iter()
            .map(|v| v.to_bits())
            .chain([p.labels[i]])
            .collect()
    };
    let full = preview(owner.clone(), 100).await;
    assert_eq!(full.rows.len(), sample);
    let mut seen: BTreeSet<Vec<u32>> = BTreeSet::new();
    // 200 calls from several certificates, asking for different counts.
    for call in 0..200u32 {
        let (client, _) = if call % 50 == 0 {
            connect(&ca, Role::Client, &format!("scraper-{call}"), &node.addr).await
        } else {
            (owner.clone(), node.id)
        };
        let asked = 1 + call % 120;
        let got = preview(client, asked).await;
        assert_eq!(got.rows.len(), (asked as usize).min(sample));
        for i in 0..got.rows.len() {
            // Each answer is a prefix of the one sample.
            assert_eq!(key(&got, i), key(&full, i));
            seen.insert(key(&got, i));
        }
    }
    assert_eq!(seen.len(), sample, "200 previews revealed only the sample");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_whose_asset_is_not_minted_leaves_nothing_stored() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca(dir.path());
    let node = start(dir.path(), &ca);
    let (client, _) = connect(&ca, Role::Client, "client", &node.addr).await;
    let (code, message) = refusal(import_digits(&node, &client, REFUSED_OWNER).await);
    assert_eq!(code, ErrorCode::AlreadyExists, "{message}");
    assert!(message.contains("not minted"), "{message}");
    assert!(
        node.store.list().await.unwrap().is_empty(),
        "no shard stays behind"
    );
    match client.call(&ClientRequest::ListDatasets).await.unwrap() {
        ClientResponse::Datasets(datasets) => assert!(datasets.is_empty()),
        other => panic!("{other:?}"),
    }
    // The slot is free again: the same client imports at once.
    import_digits(&node, &client, [2; 32]).await.unwrap();
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_storage_nodes_hand_over_a_dataset_and_only_a_trusted_scheduler_asks_for_a_copy() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca(dir.path());
    let node = start(dir.path(), &ca);
    let (owner, _) = connect(&ca, Role::Client, "owner", &node.addr).await;
    let (dataset, manifest) = import_digits(&node, &owner, [3; 32]).await.unwrap();
    let shards_before = node.store.list().await.unwrap().len();
    let key = [7u8; 32];
    let (other, other_id) = connect(&ca, Role::Storage, "other-storage", &node.addr).await;
    let elsewhere = aic_storage_node::manifest::ReplicaLocation {
        node: other_id.to_string(),
        quic_addr: "127.0.0.1:9".into(),
    };
    let holders = aic_protocol::holders::HolderSet::signed(&dataset, 1, vec![elsewhere], &key);
    let pull = PeerRequest::TakeReplica {
        manifest: manifest.to_json(),
        key,
        holders: holders.clone(),
    };
    let update = PeerRequest::UpdateHolders { holders };
    let copy = PeerRequest::ReReplicate {
        dataset: dataset.clone(),
        target: other_id,
        target_addr: "127.0.0.1:9".into(),
        lost: Vec::new(),
    };

    // Compute nodes, people and gateways may neither make this node pull, nor hand it holders,
    // nor have it hand a dataset (and its key) to another node; a storage node may not ask for
    // a copy either: the RPC table refuses them before any handler runs.
    for role in [
        Role::Compute,
        Role::Client,
        Role::Operator,
        Role::Gateway,
        Role::Storage,
    ] {
        let (caller, _) = connect(&ca, role, &format!("{role}-caller"), &node.addr).await;
        let refused: Vec<(&str, &PeerRequest)> = if role == Role::Storage {
            vec![("re_replicate", &copy)]
        } else {
            vec![
                ("take_replica", &pull),
                ("update_holders", &update),
                ("re_replicate", &copy),
            ]
        };
        for (rpc, request) in refused {
            let (code, message) = refusal(caller.call(request).await);
            assert_eq!(code, ErrorCode::PermissionDenied, "{role} {rpc}: {message}");
            assert!(message.contains(rpc), "{message}");
        }
    }
    // A scheduler certificate this node never registered with (nor was told to trust) is not
    // obeyed.
    let (rogue, _) = connect(&ca, Role::Scheduler, "rogue-scheduler", &node.addr).await;
    let (code, message) = refusal(rogue.call(&copy).await);
    assert_eq!(code, ErrorCode::PermissionDenied, "{message}");
    assert!(
        message.contains("not a scheduler whose requests this node honours"),
        "{message}"
    );

    // Nothing changed: the one dataset, its shards, and no holder set written for it.
    match owner.call(&ClientRequest::ListDatasets).await.unwrap() {
        ClientResponse::Datasets(list) => {
            assert_eq!(
                list.iter().map(|d| d.id.clone()).collect::<Vec<_>>(),
                vec![dataset.clone()]
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(node.store.list().await.unwrap().len(), shards_before);
    assert!(!dir
        .path()
        .join(format!("storage/datasets/{dataset}.holders"))
        .exists());
    let metrics = aic_protocol::metrics_http::scrape(node.handle.as_ref().unwrap().metrics_addr)
        .await
        .unwrap();
    assert!(
        metrics.contains("aic_storage_requests_rejected_total{reason=\"untrusted_scheduler\"} 1"),
        "{metrics}"
    );
    drop(other);
    node.stop().await;
}
