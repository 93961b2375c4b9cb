//! A dataset copy handed to a storage node (`TakeReplica`, the target's side of re-replicating a
//! lost holder's dataset), with the holder played by a hostile storage certificate over real
//! QUIC: a tampered shard is refused and nothing of the copy stays; a holder set that is forged
//! or does not name the asker is refused; an intact copy is kept whole, and only the nodes its
//! holder set names (or a newer one a holder sends) may fetch its sealed shards.

mod common;

use std::sync::Arc;

use aic_protocol::certs::{CertificateAuthority, Identity, PeerIdentity, Validity};
use aic_protocol::holders::HolderSet;
use aic_protocol::manifest::{Manifest, ReplicaLocation};
use aic_protocol::messages::{ClientRequest, ClientResponse, PeerRequest, PeerResponse, ShardState};
use aic_protocol::rpc::{Reply, RpcClient, RpcHandler};
use aic_protocol::transport::{self, TransportTuning};
use aic_protocol::{Error, ErrorCode, Role, RpcError, ShardId};
use aic_storage_node::catalog::dataset_id;
use aic_storage_node::import::{import_file, ImportOptions};
use aic_storage_node::sealing::DatasetKey;
use aic_storage_node::shard_store::ShardStore;
use common::{connect, digits_csv, start_storage};
use tokio_util::sync::CancellationToken;

/// A storage node that holds a dataset in memory and serves its sealed shards, with one byte of
/// `tampered` flipped on the way out.
struct Holder {
    store: ShardStore,
    tampered: std::sync::Mutex<Option<ShardId>>,
}

impl RpcHandler for Holder {
    async fn peer_reply(
        &self,
        _: &PeerIdentity,
        request: PeerRequest,
    ) -> Result<Reply<PeerResponse>, RpcError> {
        let PeerRequest::FetchSealed { shard, .. } = request else {
            return Err(RpcError::new(ErrorCode::Unsupported, "a holder that only serves"));
        };
        let mut sealed = self.store.get(&shard).await.unwrap().to_vec();
        if *self.tampered.lock().unwrap() == Some(shard) {
            sealed[40] ^= 0x01;
        }
        let chunk = Ok(PeerResponse::SealedChunk { bytes: sealed });
        Ok(Reply::Stream(Box::pin(futures::stream::iter(vec![chunk]))))
    }
}

fn refusal<T: std::fmt::Debug>(result: Result<T, Error>) -> (ErrorCode, String) {
    match result {
        Err(Error::Rpc(RpcError { code, message })) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn datasets(client: &RpcClient) -> Vec<String> {
    match client.call(&ClientRequest::ListDatasets).await.unwrap() {
        ClientResponse::Datasets(list) => list.into_iter().map(|d| d.id).collect(),
        other => panic!("{other:?}"),
    }
}

/// Serves `holder` with a fresh storage certificate; answers a client on the same identity
/// (so the target, dialing the holder's address back, finds the node that asked) and where the
/// holder is.
async fn serve_holder(
    ca: &CertificateAuthority,
    holder: Arc<Holder>,
    target_addr: &str,
    shutdown: &CancellationToken,
) -> (RpcClient, ReplicaLocation) {
    let identity = Identity::from_issued(
        ca,
        &ca.issue(Role::Storage, "hostile-holder", &[], Validity::default())
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
    let location = ReplicaLocation {
        node: identity.me.node_id.to_string(),
        quic_addr: endpoint.local_addr().unwrap().to_string(),
    };
    let metrics =
        aic_protocol::metrics::TransportMetrics::register(&prometheus::Registry::new(), "storage").unwrap();
    tokio::spawn(aic_protocol::rpc::serve(
        endpoint.clone(),
        holder,
        metrics,
        shutdown.clone(),
    ));
    let client = RpcClient::connect(&endpoint, target_addr, Role::Storage)
        .await
        .unwrap();
    (client, location)
}

fn take(manifest: &Manifest, key: &DatasetKey, holders: HolderSet) -> PeerRequest {
    PeerRequest::TakeReplica {
        manifest: manifest.to_json(),
        key: *key.as_bytes(),
        holders,
    }
}

/// The value of a metric line naming every label in `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|label| l.contains(label)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_copy_is_refused_and_leaves_nothing_and_an_intact_one_is_kept_for_its_holders() {
    aic_protocol::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::generate("handover").unwrap();
    ca.save(dir.path()).unwrap();
    let stop = CancellationToken::new();
    // Nothing listens at the scheduler address: this node takes copies without one.
    let (target, target_id, target_stop) =
        start_storage(&ca, dir.path(), "target", "127.0.0.1:9", Vec::new(), 3600);
    let target_addr = target.quic_addr.to_string();
    let target_store = ShardStore::local(&dir.path().join("target/shards")).unwrap();
    let catalog_dir = dir.path().join("target/datasets");

    // The dataset, sealed as a holder keeps it.
    let held = ShardStore::memory();
    let (mut manifest, key) = import_file(&digits_csv(), "digits", &ImportOptions::new("digit"), &held)
        .await
        .unwrap();
    let holder = Arc::new(Holder {
        store: held.clone(),
        tampered: Default::default(),
    });
    let (asker, at_holder) = serve_holder(&ca, holder.clone(), &target_addr, &stop).await;
    let at_target = ReplicaLocation {
        node: target_id.to_string(),
        quic_addr: target_addr.clone(),
    };
    manifest.replicas = vec![at_holder.clone()];
    let dataset = dataset_id(&manifest);
    let holders =
        |epoch: u64, who: Vec<ReplicaLocation>| HolderSet::signed(&dataset, epoch, who, key.as_bytes());
    let both = holders(1, vec![at_holder.clone(), at_target.clone()]);
    let (operator, _) = connect(&ca, Role::Client, "operator", &target_addr).await;

    // The second shard is tampered on the way: the first was already written when it arrives.
    let tampered: ShardId = manifest.train[1].id.parse().unwrap();
    *holder.tampered.lock().unwrap() = Some(tampered);
    let (code, message) = refusal(asker.call(&take(&manifest, &key, both.clone())).await);
    assert_eq!(code, ErrorCode::Unavailable, "{message}");
    assert!(message.contains(&format!("shard {tampered}")), "{message}");
    assert!(message.contains("damaged"), "{message}");
    assert!(
        target_store.list().await.unwrap().is_empty(),
        "no shard of the refused copy stays"
    );
    assert!(datasets(&operator).await.is_empty());
    let mut left: Vec<_> = std::fs::read_dir(&catalog_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    left.sort();
    assert!(left.is_empty(), "no key, holder set or manifest stays: {left:?}");

    // A holder set tagged under another key, or one that leaves out the asker: refused before
    // anything is pulled.
    *holder.tampered.lock().unwrap() = None;
    let forged = HolderSet::signed(&dataset, 1, vec![at_holder.clone(), at_target.clone()], &[9; 32]);
    let (code, message) = refusal(asker.call(&take(&manifest, &key, forged)).await);
    assert_eq!(code, ErrorCode::InvalidArgument, "{message}");
    let without_asker = holders(1, vec![at_target.clone()]);
    let (code, message) = refusal(asker.call(&take(&manifest, &key, without_asker)).await);
    assert_eq!(code, ErrorCode::PermissionDenied, "{message}");
    assert!(target_store.list().await.unwrap().is_empty());

    // Intact: every shard kept, the dataset listed and healthy shard by shard.
    match asker.call(&take(&manifest, &key, both.clone())).await.unwrap() {
        PeerResponse::ReplicaTaken { shards } => assert_eq!(shards as usize, manifest.shards().count()),
        other => panic!("{other:?}"),
    }
    assert_eq!(datasets(&operator).await, vec![dataset.clone()]);
    match operator
        .call(&ClientRequest::Stat {
            dataset: dataset.clone(),
        })
        .await
        .unwrap()
    {
        ClientResponse::Stat(stat) => assert!(stat.shards.iter().all(|s| s.state == ShardState::Healthy)),
        other => panic!("{other:?}"),
    }
    for entry in manifest.shards() {
        let shard: ShardId = entry.id.parse().unwrap();
        let kept = target_store.get(&shard).await.unwrap();
        assert_eq!(
            key.open(&shard, &kept).unwrap(),
            key.open(&shard, &held.get(&shard).await.unwrap()).unwrap()
        );
    }

    // Sealed shards go to the holders the set names, not to another storage node — until a
    // holder sends a newer set naming it. An older or forged set changes nothing.
    let (intruder, intruder_id) = connect(&ca, Role::Storage, "intruder", &target_addr).await;
    let first: ShardId = manifest.train[0].id.parse().unwrap();
    let (code, _) = refusal(
        aic_storage_node::fetch_sealed(&intruder, &dataset, &first)
            .await
            .map_err(Error::Rpc),
    );
    assert_eq!(code, ErrorCode::PermissionDenied);
    let at_intruder = ReplicaLocation {
        node: intruder_id.to_string(),
        quic_addr: "127.0.0.1:9".into(),
    };
    let three = holders(2, vec![at_holder.clone(), at_target.clone(), at_intruder]);
    let update = |set: HolderSet| PeerRequest::UpdateHolders { holders: set };
    assert!(matches!(
        asker.call(&update(three.clone())).await.unwrap(),
        PeerResponse::HoldersUpdated { epoch: 2 }
    ));
    assert!(matches!(
        asker.call(&update(both.clone())).await.unwrap(),
        PeerResponse::HoldersUpdated { epoch: 2 }
    ));
    let mut forged = three.clone();
    forged.epoch = 3;
    assert_eq!(
        refusal(asker.call(&update(forged)).await).0,
        ErrorCode::InvalidArgument
    );
    let sealed = aic_storage_node::fetch_sealed(&intruder, &dataset, &first)
        .await
        .unwrap();
    assert_eq!(sealed, target_store.get(&first).await.unwrap().to_vec());

    let metrics = aic_protocol::metrics_http::scrape(target.metrics_addr)
        .await
        .unwrap();
    assert_eq!(
        metric(&metrics, "aic_storage_requests_rejected_total", &["damaged_copy"]),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            "aic_storage_re_replications_total",
            &["side=\"target\"", "result=\"ok\""]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            "aic_storage_re_replications_total",
            &["side=\"target\"", "result=\"failed\""]
        ),
        3.0
    );
    target_stop.cancel();
    stop.cancel();
    target.stopped().await;
}
