//! The importer's side of an upload: preprocessed shards sent in bounded parts to the storage
//! node that takes the upload, then the manifest that commits them. The upload is opened only
//! when the first shard is ready (the file has passed every check by then), and an importer that
//! fails or gives up aborts it, so its slot and shards are freed at once.

use std::future::Future;

use crate::manifest::Manifest;
use crate::messages::{ClientRequest, ClientResponse};
use crate::rpc::RpcClient;
use crate::{NodeId, ShardId};

/// Where finished shards go: uploaded to a storage node ([`UploadSink`]), or sealed into a
/// storage node's own store.
pub trait ShardSink {
    /// Takes one plaintext Parquet shard named by its BLAKE3 hash.
    fn put(&mut self, id: ShardId, parquet: Vec<u8>) -> impl Future<Output = Result<(), SinkError>>;
}

/// Why a shard could not be handed over.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    #[error("uploading to the storage node: {0}")]
    Upload(#[source] crate::Error),
    #[error("writing a shard: {0}")]
    Shard(String),
    #[error("storing a shard: {0}")]
    Store(String),
}

/// Plain shard bytes per upload request (well within the frame limit).
pub const UPLOAD_PART: usize = 1024 * 1024;
/// How long a commit may take: every replica pulls the whole dataset before it answers.
pub const COMMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1800);

/// A [`ShardSink`] that uploads each shard to a storage node.
pub struct UploadSink<'a> {
    client: &'a RpcClient,
    /// The upload, once the first shard opened it.
    upload: Option<u64>,
    /// Called with the bytes of each part sent, for a progress bar.
    on_sent: Box<dyn Fn(u64) + Send + Sync + 'a>,
}

/// What a committed upload became.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    pub dataset: String,
    pub replicas: Vec<NodeId>,
    /// The Dataset asset the storage nodes had minted (none for a model's weights).
    pub asset: Option<crate::AssetId>,
}

fn upload_error(e: crate::Error) -> SinkError {
    SinkError::Upload(e)
}

fn unexpected(answer: ClientResponse) -> SinkError {
    SinkError::Upload(crate::Error::Transport(format!("unexpected answer {answer:?}")))
}

impl<'a> UploadSink<'a> {
    /// A sink for the storage node behind `client`; nothing is sent until the first shard.
    pub fn new(client: &'a RpcClient, on_sent: impl Fn(u64) + Send + Sync + 'a) -> Self {
        UploadSink {
            client,
            upload: None,
            on_sent: Box::new(on_sent),
        }
    }

    /// The open upload, opening it on first use.
    async fn upload(&mut self) -> Result<u64, SinkError> {
        if let Some(upload) = self.upload {
            return Ok(upload);
        }
        match self
            .client
            .call(&ClientRequest::BeginImport)
            .await
            .map_err(upload_error)?
        {
            ClientResponse::ImportStarted { upload } => {
                self.upload = Some(upload);
                Ok(upload)
            }
            other => Err(unexpected(other)),
        }
    }

    /// Commits the upload under `manifest` for `owner` (an Ed25519 public key); answers the
    /// dataset id, the replicas holding it and the asset minted for it.
    pub async fn commit(mut self, manifest: &Manifest, owner: [u8; 32]) -> Result<Committed, SinkError> {
        let request = ClientRequest::CommitImport {
            upload: self.upload().await?,
            manifest: manifest.to_json(),
            owner,
        };
        let client = self.client.clone().with_timeout(COMMIT_TIMEOUT);
        match client.call(&request).await.map_err(upload_error)? {
            ClientResponse::Imported {
                dataset,
                replicas,
                asset,
            } => Ok(Committed {
                dataset,
                replicas,
                asset,
            }),
            other => Err(unexpected(other)),
        }
    }

    /// Gives the upload up (after a failure or a cancel): the node frees its slot and deletes
    /// what was sent. Nothing to do if no shard was sent.
    pub async fn abort(self) -> Result<(), SinkError> {
        let Some(upload) = self.upload else {
            return Ok(());
        };
        match self
            .client
            .call(&ClientRequest::AbortImport { upload })
            .await
            .map_err(upload_error)?
        {
            ClientResponse::Aborted => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}

impl ShardSink for UploadSink<'_> {
    async fn put(&mut self, id: ShardId, parquet: Vec<u8>) -> Result<(), SinkError> {
        let upload = self.upload().await?;
        let total = parquet.len() as u64;
        let mut offset = 0u64;
        for part in parquet.chunks(UPLOAD_PART) {
            let request = ClientRequest::UploadShard {
                upload,
                shard: id,
                offset,
                total,
                bytes: part.to_vec(),
            };
            match self.client.call(&request).await.map_err(upload_error)? {
                ClientResponse::ShardReceived { received } if received == offset + part.len() as u64 => {}
                other => return Err(unexpected(other)),
            }
            offset += part.len() as u64;
            (self.on_sent)(part.len() as u64);
        }
        Ok(())
    }
}

/// One shard as Parquet: LZ4, no dictionaries, one row group.
pub fn write_parquet(batch: &arrow_array::RecordBatch) -> Result<Vec<u8>, String> {
    use parquet::arrow::ArrowWriter;
    use parquet::basic::Compression;
    use parquet::file::properties::WriterProperties;
    let properties = WriterProperties::builder()
        // LZ4: a shard's column chunks are a few KB each, and zstd set up a context of its own
        // (hundreds of KB, zeroed) for every one, on writing and on reading: a quarter of the
        // import's and of serving's time. Standardised floats gain little from either.
        .set_compression(Compression::LZ4_RAW)
        .set_max_row_group_row_count(Some(batch.num_rows().max(1)))
        // Standardised features are nearly all distinct: a dictionary only costs the import a
        // hash of every value (11 % of its time) before falling back to plain pages.
        .set_dictionary_enabled(false)
        .build();
    let mut out = Vec::new();
    let mut writer =
        ArrowWriter::try_new(&mut out, batch.schema(), Some(properties)).map_err(|e| e.to_string())?;
    writer.write(batch).map_err(|e| e.to_string())?;
    writer.close().map_err(|e| e.to_string())?;
    Ok(out)
}
