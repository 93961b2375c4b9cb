//! The scrubber finds a flipped byte and a lost shard; the catalog survives a restart. (Repair
//! from another replica over the network is in `replication.rs`.)

use aic_protocol::ShardId;
use aic_storage_node::catalog::Catalog;
use aic_storage_node::import::{import_file, read_shard, ImportOptions};
use aic_storage_node::scrub::scrub;
use aic_storage_node::shard_store::ShardStore;
use bytes::Bytes;

#[tokio::test]
async fn a_damaged_shard_is_found_by_the_scrubber() {
    let dir = tempfile::tempdir().unwrap();
    let digits = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/digits/digits.csv");
    let primary = ShardStore::local(&dir.path().join("node-1/shards")).unwrap();
    let (manifest, key) = import_file(&digits, "digits", &ImportOptions::new("digit"), &primary)
        .await
        .unwrap();
    let mut catalog = Catalog::open(&dir.path().join("node-1/datasets")).unwrap();
    let dataset = catalog.add(manifest.clone(), key, None).unwrap();

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

    let (_, key) = catalog.get(&dataset).unwrap();
    assert!(
        read_shard(&primary, key, &flipped).await.is_err(),
        "a flipped byte never reads back"
    );
}
