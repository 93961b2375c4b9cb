//! One suite for every shard store backend: what is put comes back byte for byte, listing shows
//! exactly what is held, deletes are idempotent, and a missing shard is a clear `NotFound`.
//! Runs on the local filesystem and memory backends; against S3 (or any S3-compatible store) with
//! `AIC_TEST_S3_URL=s3://bucket AWS_ENDPOINT=… AWS_ACCESS_KEY_ID=… AWS_SECRET_ACCESS_KEY=…
//! cargo test -p aic-storage-node --test store_conformance -- --ignored`.

use aic_protocol::ShardId;
use aic_storage_node::shard_store::{ShardStore, StoreError};
use bytes::Bytes;

async fn conformance(store: ShardStore) {
    assert!(store.list().await.unwrap().is_empty());
    let contents: Vec<Vec<u8>> = vec![b"one".to_vec(), vec![7u8; 1 << 20], Vec::new()];
    let ids: Vec<ShardId> = contents.iter().map(|c| ShardId::of_content(c)).collect();
    for (id, content) in ids.iter().zip(&contents) {
        store.put(id, Bytes::from(content.clone())).await.unwrap();
    }
    for (id, content) in ids.iter().zip(&contents) {
        assert_eq!(store.get(id).await.unwrap(), Bytes::from(content.clone()));
        assert!(store.contains(id).await.unwrap());
    }
    let listed = store.list().await.unwrap();
    let mut expected: Vec<(ShardId, u64)> = ids
        .iter()
        .zip(&contents)
        .map(|(i, c)| (*i, c.len() as u64))
        .collect();
    expected.sort();
    assert_eq!(
        listed.iter().map(|s| (s.shard, s.bytes)).collect::<Vec<_>>(),
        expected
    );

    // Overwriting replaces atomically.
    store.put(&ids[0], Bytes::from_static(b"replaced")).await.unwrap();
    assert_eq!(store.get(&ids[0]).await.unwrap(), Bytes::from_static(b"replaced"));

    store.delete(&ids[1]).await.unwrap();
    store.delete(&ids[1]).await.unwrap();
    assert!(!store.contains(&ids[1]).await.unwrap());
    assert!(matches!(store.get(&ids[1]).await, Err(StoreError::NotFound(id)) if id == ids[1]));
    assert_eq!(store.list().await.unwrap().len(), 2);
}

#[tokio::test]
async fn the_memory_backend_conforms() {
    conformance(ShardStore::memory()).await;
}

#[tokio::test]
async fn the_local_backend_conforms_and_keeps_shards_across_reopening() {
    let dir = tempfile::tempdir().unwrap();
    conformance(ShardStore::local(dir.path()).unwrap()).await;
    let reopened = ShardStore::from_url(&format!("file://{}", dir.path().display())).unwrap();
    assert_eq!(reopened.list().await.unwrap().len(), 2, "shards persist on disk");
}

#[tokio::test]
#[ignore = "needs an S3 endpoint: set AIC_TEST_S3_URL and the AWS_* variables, run with --ignored"]
async fn the_s3_backend_conforms() {
    aic_protocol::install_crypto_provider();
    let base = std::env::var("AIC_TEST_S3_URL")
        .expect("AIC_TEST_S3_URL names the bucket to test against, e.g. s3://aic-test");
    // A fresh prefix per run, so the suite starts from an empty store.
    let url = format!(
        "{}/conformance-{:016x}",
        base.trim_end_matches('/'),
        rand::random::<u64>()
    );
    conformance(ShardStore::from_url(&url).unwrap()).await;
}

#[test]
fn an_unknown_store_url_is_a_clear_error() {
    let err = ShardStore::from_url("ftp://bucket/prefix")
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown store scheme ftp://"), "{err}");
    let err = ShardStore::from_url("s3:///prefix").unwrap_err().to_string();
    assert!(err.contains("no bucket"), "{err}");
}
