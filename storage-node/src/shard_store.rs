//! Where a storage node keeps its (sealed) shards: one `ShardStore` over `object_store`, so the
//! local filesystem (the default), an in-memory store (tests) and S3, GCS or Azure Blob Storage
//! all behave alike; `tests/store_conformance.rs` holds them to one suite.
//!
//! Layout: `<prefix>/shards/<shard id hex>`; the shard id is the BLAKE3 hash of the plaintext
//! Parquet bytes, so a name says what its content must be.

use std::sync::Arc;

use aic_protocol::ShardId;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("shard {0} is not in the store")]
    NotFound(ShardId),
    #[error("unsupported store URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("store: {0}")]
    Backend(#[from] object_store::Error),
}

/// A stored shard's name and size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredShard {
    pub shard: ShardId,
    pub bytes: u64,
}

#[derive(Clone, Debug)]
pub struct ShardStore {
    inner: Arc<dyn ObjectStore>,
    prefix: Path,
}

impl ShardStore {
    /// Shards under a local directory (created if missing).
    pub fn local(dir: &std::path::Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Url {
            url: dir.display().to_string(),
            reason: e.to_string(),
        })?;
        let store = LocalFileSystem::new_with_prefix(dir)?;
        Ok(ShardStore {
            inner: Arc::new(store),
            prefix: Path::from("aic"),
        })
    }

    /// Shards in memory, gone with the process.
    pub fn memory() -> Self {
        ShardStore {
            inner: Arc::new(InMemory::new()),
            prefix: Path::from("aic"),
        }
    }

    /// A store from a `--store` value: a directory path or `file://…`, `memory://`, or a
    /// bucket URL — `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix` — with
    /// credentials, region and endpoint from the usual environment variables (`AWS_*`,
    /// `GOOGLE_*`, `AZURE_*`; e.g. `AWS_ENDPOINT` and `AWS_ALLOW_HTTP` for a local S3).
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        if url == "memory://" {
            return Ok(Self::memory());
        }
        if let Some(path) = url.strip_prefix("file://") {
            return Self::local(std::path::Path::new(path));
        }
        let Some((scheme, rest)) = url.split_once("://") else {
            return Self::local(std::path::Path::new(url));
        };
        let bad = |reason: String| StoreError::Url {
            url: url.to_string(),
            reason,
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("the URL names no bucket".into()));
        }
        let inner: Arc<dyn ObjectStore> = match scheme {
            "s3" => Arc::new(
                object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .build()?,
            ),
            "gs" => Arc::new(
                object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(bucket)
                    .build()?,
            ),
            "az" | "azure" => Arc::new(
                object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_container_name(bucket)
                    .build()?,
            ),
            other => {
                return Err(bad(format!(
                    "unknown store scheme {other}://; use a path, file://, memory://, s3://, gs:// or az://"
                )))
            }
        };
        let prefix = prefix.trim_matches('/');
        Ok(ShardStore {
            inner,
            prefix: Path::from(if prefix.is_empty() { "aic" } else { prefix }),
        })
    }

    /// A tensor store beside the shards, in the same object store, sealed under `key`.
    pub fn tensor_store(&self, key: crate::sealing::DatasetKey) -> crate::tensor_store::TensorStore {
        crate::tensor_store::TensorStore::new(self.inner.clone(), self.prefix.clone(), key)
    }

    fn shards_dir(&self) -> Path {
        Path::from(format!("{}/shards", self.prefix))
    }

    fn path_of(&self, shard: &ShardId) -> Path {
        Path::from(format!("{}/shards/{shard}", self.prefix))
    }

    /// Stores `bytes` as `shard` (atomically: a reader sees all of it or none).
    pub async fn put(&self, shard: &ShardId, bytes: Bytes) -> Result<(), StoreError> {
        self.inner
            .put(&self.path_of(shard), PutPayload::from(bytes))
            .await?;
        Ok(())
    }

    pub async fn get(&self, shard: &ShardId) -> Result<Bytes, StoreError> {
        match self.inner.get(&self.path_of(shard)).await {
            Ok(result) => Ok(result.bytes().await?),
            Err(object_store::Error::NotFound { .. }) => Err(StoreError::NotFound(*shard)),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn delete(&self, shard: &ShardId) -> Result<(), StoreError> {
        match self.inner.delete(&self.path_of(shard)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn contains(&self, shard: &ShardId) -> Result<bool, StoreError> {
        match self.inner.head(&self.path_of(shard)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Every shard held, by id; objects whose names are not shard ids are ignored.
    pub async fn list(&self) -> Result<Vec<StoredShard>, StoreError> {
        let prefix = self.shards_dir();
        let mut shards: Vec<StoredShard> = self
            .inner
            .list(Some(&prefix))
            .try_filter_map(|meta| async move {
                let name = meta.location.filename().unwrap_or_default().to_string();
                Ok(name.parse::<ShardId>().ok().map(|shard| StoredShard {
                    shard,
                    bytes: meta.size,
                }))
            })
            .try_collect()
            .await?;
        shards.sort_by_key(|s| s.shard);
        Ok(shards)
    }
}
