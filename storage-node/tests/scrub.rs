//! Two replicas of the digits dataset: a flipped byte and a lost shard in one are found by the
//! scrubber and repaired from the other; the catalog survives a restart.

use aic_protocol::ShardId;
use aic_storage_node::catalog::Catalog;
use aic_storage_node::import::{import_csv, read_shard, ImportOptions};
use aic_storage_node::scrub::{repair, scrub, RepairError};
use aic_storage_node::shard_store::ShardStore;
use bytes::Bytes;

#[tokio::test]
async fn a_damaged_replica_is_found_and_repaired_from_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let digits = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/digits/digits.csv");
    let primary = ShardStore::local(&dir.path().join("node-1/shards")).unwrap();
    let replica = ShardStore::local(&dir.path().join("node-2/shards")).unwrap();
    let (manifest, key) = import_csv(&digits, "digits", &ImportOptions::new("digit"), &primary)
        .await
        .unwrap();
    for shard in primary.list().await.unwrap() {
        replica
            .put(&shard.shard, primary.get(&shard.shard).await.unwrap())
            .await
            .unwrap();
    }
    let mut catalog = Catalog::open(&dir.path().join("node-1/datasets")).unwrap();
    let dataset = catalog.add(manifest.clone(), key).unwrap();

    let clean = scrub(&primary, &catalog).await.unwrap();
    assert_eq!(clean.healthy.len(), manifest.train.len() + manifest.test.len());
    assert!(clean.corrupt.is_empty() && clean.missing.is_empty() && clean.unknown.is_empty());

    let flipped: ShardId = manifest.train[0].id.parse().unwrap();
    let lost: ShardId = manifest.test[0].id.parse().unwrap();
    let mut bytes = primary.get(&flipped).await.unwrap().to_vec();
    bytes[100] ^= 0x80;
    primary.put(&flipped, Bytes::from(bytes)).await.unwrap();
    primary.delete(&lost).await.unwrap();

    // The catalog comes back from disk after a restart, keys included.
    let catalog = Catalog::open(&dir.path().join("node-1/datasets")).unwrap();
    assert_eq!(catalog.ids().collect::<Vec<_>>(), vec![&dataset]);
    let report = scrub(&primary, &catalog).await.unwrap();
    assert_eq!(report.corrupt, vec![flipped]);
    assert_eq!(report.missing, vec![lost]);

    assert_eq!(repair(&primary, &replica, &catalog, &report).await.unwrap(), 2);
    let after = scrub(&primary, &catalog).await.unwrap();
    assert!(after.corrupt.is_empty() && after.missing.is_empty());
    let (_, key) = catalog.get(&dataset).unwrap();
    assert!(read_shard(&primary, key, &flipped).await.is_ok());

    // A replica that is damaged too is not copied over.
    let mut bytes = replica.get(&flipped).await.unwrap().to_vec();
    bytes[100] ^= 0x80;
    replica.put(&flipped, Bytes::from(bytes.clone())).await.unwrap();
    primary.put(&flipped, Bytes::from(bytes)).await.unwrap();
    let report = scrub(&primary, &catalog).await.unwrap();
    assert!(matches!(
        repair(&primary, &replica, &catalog, &report).await,
        Err(RepairError::NoHealthyCopy(id)) if id == flipped
    ));
}
