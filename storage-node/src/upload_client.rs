//! The importer's side of an upload: preprocessed shards sent in bounded parts to the storage
//! node that takes the upload, then the manifest that commits them.

use aic_protocol::messages::{ClientRequest, ClientResponse};
use aic_protocol::rpc::RpcClient;
use aic_protocol::{NodeId, ShardId};

use crate::import::{ImportError, ShardSink};
use crate::manifest::Manifest;

/// Plain shard bytes per upload request (well within the frame limit).
pub const UPLOAD_PART: usize = 1024 * 1024;
/// How long a commit may take: every replica pulls the whole dataset before it answers.
pub const COMMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1800);

/// A [`ShardSink`] that uploads each shard to a storage node.
pub struct UploadSink<'a> {
    client: &'a RpcClient,
    upload: u64,
    /// Called with the bytes of each part sent, for a progress bar.
    on_sent: Box<dyn Fn(u64) + Send + Sync + 'a>,
}

fn upload_error(e: aic_protocol::Error) -> ImportError {
    ImportError::Upload(e)
}

fn unexpected(answer: ClientResponse) -> ImportError {
    ImportError::Upload(aic_protocol::Error::Transport(format!(
        "unexpected answer {answer:?}"
    )))
}

impl<'a> UploadSink<'a> {
    /// Opens an upload on the storage node behind `client`.
    pub async fn begin(
        client: &'a RpcClient,
        on_sent: impl Fn(u64) + Send + Sync + 'a,
    ) -> Result<Self, ImportError> {
        match client
            .call(&ClientRequest::BeginImport)
            .await
            .map_err(upload_error)?
        {
            ClientResponse::ImportStarted { upload } => Ok(UploadSink {
                client,
                upload,
                on_sent: Box::new(on_sent),
            }),
            other => Err(unexpected(other)),
        }
    }

    /// Commits the upload under `manifest`; answers the dataset id and the replicas holding it.
    pub async fn commit(self, manifest: &Manifest) -> Result<(String, Vec<NodeId>), ImportError> {
        let request = ClientRequest::CommitImport {
            upload: self.upload,
            manifest: manifest.to_json(),
        };
        let client = self.client.clone().with_timeout(COMMIT_TIMEOUT);
        match client.call(&request).await.map_err(upload_error)? {
            ClientResponse::Imported { dataset, replicas } => Ok((dataset, replicas)),
            other => Err(unexpected(other)),
        }
    }
}

impl ShardSink for UploadSink<'_> {
    async fn put(&mut self, id: ShardId, parquet: Vec<u8>) -> Result<(), ImportError> {
        let total = parquet.len() as u64;
        let mut offset = 0u64;
        for part in parquet.chunks(UPLOAD_PART) {
            let request = ClientRequest::UploadShard {
                upload: self.upload,
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

/// A trained model's parameters as one Parquet shard — columns `tensor`, `index`, `value`, one
/// row per parameter — uploaded to `client`'s node and placed on `replicas`. Answers the
/// manifest (its hash is the TrainedModel asset's content hash) and the stored object's id.
pub async fn store_weights(
    client: &RpcClient,
    name: &str,
    tensors: &[Vec<f32>],
    replicas: Vec<crate::manifest::ReplicaLocation>,
) -> Result<(Manifest, String), ImportError> {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Float32Array, RecordBatch, UInt32Array};

    let mut tensor_ids = Vec::new();
    let mut indices = Vec::new();
    let mut values = Vec::new();
    for (t, tensor) in tensors.iter().enumerate() {
        for (i, v) in tensor.iter().enumerate() {
            tensor_ids.push(t as u32);
            indices.push(i as u32);
            values.push(*v);
        }
    }
    let rows = values.len() as u64;
    let batch = RecordBatch::try_from_iter([
        ("tensor", Arc::new(UInt32Array::from(tensor_ids)) as ArrayRef),
        ("index", Arc::new(UInt32Array::from(indices)) as ArrayRef),
        ("value", Arc::new(Float32Array::from(values)) as ArrayRef),
    ])
    .map_err(|e| ImportError::Shard(e.to_string()))?;
    let parquet = crate::import::write_parquet(&batch).map_err(ImportError::Shard)?;
    let id = ShardId::of_content(&parquet);
    let bytes = parquet.len() as u64;
    let mut sink = UploadSink::begin(client, |_| {}).await?;
    sink.put(id, parquet).await?;
    let manifest = Manifest {
        kind: crate::manifest::ObjectKind::TrainedModel,
        name: name.to_string(),
        rows,
        features: Vec::new(),
        label: String::new(),
        classes: Vec::new(),
        seed: 0,
        test_fraction: 0.0,
        shard_rows: rows as usize,
        train: vec![crate::manifest::ShardEntry {
            id: id.to_string(),
            rows,
            bytes,
        }],
        test: Vec::new(),
        replicas,
        fee: "0".into(),
    };
    let (object, _) = sink.commit(&manifest).await?;
    Ok((manifest, object))
}
