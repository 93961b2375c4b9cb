//! What a storage node answers about its datasets: the list, a shard-by-shard stat, a fixed
//! preview sample for any client, and shards streamed as Arrow IPC to compute nodes holding a
//! ticket.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use aic_protocol::certs::PeerIdentity;
use aic_protocol::messages::{
    DatasetPreview, DatasetStat, DatasetSummary, PeerResponse, ShardStat, ShardState,
};
use aic_protocol::rpc::Reply;
use aic_protocol::ticket::SignedTicket;
use aic_protocol::{ErrorCode, RpcError, ShardId};
use arrow_array::RecordBatch;
use bytes::Bytes;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use prometheus::Histogram;

use crate::import;
use crate::manifest::{Manifest, ObjectKind};
use crate::node::StorageNode;

/// The most IPC bytes one answer frame carries; batches are cut to stay under it.
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Observes a request's duration when dropped: at the end of a streamed answer, or when the
/// peer goes away mid-stream.
pub(crate) struct RequestTimer {
    histogram: Histogram,
    started: Instant,
}

impl RequestTimer {
    pub fn start(histogram: Histogram) -> Self {
        RequestTimer {
            histogram,
            started: Instant::now(),
        }
    }
}

impl Drop for RequestTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed().as_secs_f64());
    }
}

pub(crate) fn summary(id: &str, manifest: &Manifest) -> DatasetSummary {
    DatasetSummary {
        id: id.to_string(),
        name: manifest.name.clone(),
        rows: manifest.rows,
        shards: manifest.shards().count() as u64,
        manifest: manifest.to_json(),
    }
}

impl StorageNode {
    pub async fn list(&self) -> Vec<DatasetSummary> {
        let catalog = self.catalog.read().await;
        catalog
            .ids()
            .filter_map(|id| catalog.get(id).map(|(m, _)| summary(id, m)))
            .collect()
    }

    /// Each shard of a dataset checked now: present, authentic, hashing to its name.
    pub async fn stat(&self, dataset: &str) -> Result<DatasetStat, RpcError> {
        let catalog = self.catalog.read().await;
        let (manifest, key) = self.known(&catalog, dataset)?;
        let mut shards = Vec::new();
        for (entry, test) in manifest
            .train
            .iter()
            .map(|e| (e, false))
            .chain(manifest.test.iter().map(|e| (e, true)))
        {
            let id: ShardId = entry.id.parse().map_err(|_| bad_manifest())?;
            let state = match self.store.get(&id).await {
                Ok(sealed) if key.open(&id, &sealed).is_ok() => ShardState::Healthy,
                Ok(_) => ShardState::Damaged,
                Err(crate::shard_store::StoreError::NotFound(_)) => ShardState::Missing,
                Err(e) => return Err(RpcError::new(ErrorCode::Unavailable, e.to_string())),
            };
            shards.push(ShardStat {
                id,
                test,
                rows: entry.rows,
                bytes: entry.bytes,
                state,
            });
        }
        Ok(DatasetStat {
            summary: summary(dataset, manifest),
            shards,
        })
    }

    pub(crate) fn known<'c>(
        &self,
        catalog: &'c crate::catalog::Catalog,
        dataset: &str,
    ) -> Result<&'c (Manifest, crate::sealing::DatasetKey), RpcError> {
        catalog.get(dataset).ok_or_else(|| {
            self.refuse(
                "unknown_dataset",
                ErrorCode::NotFound,
                format!("no dataset {dataset} here"),
            )
        })
    }

    /// A free look at a dataset: the first `asked` rows of its preview sample, a fixed seeded
    /// subset of at most 1 % of its rows and at most 100 (see [`preview_sample`]). Any number
    /// of calls, by anyone, reveals the same rows. Only datasets can be previewed.
    pub async fn preview(&self, dataset: &str, asked: u32) -> Result<DatasetPreview, RpcError> {
        let _timer = RequestTimer::start(self.metrics.request_duration.with_label_values(&["preview"]));
        let catalog = self.catalog.read().await;
        let (manifest, key) = self.known(&catalog, dataset)?;
        if manifest.kind != ObjectKind::Dataset {
            return Err(self.refuse(
                "not_a_dataset",
                ErrorCode::InvalidArgument,
                format!(
                    "{dataset} is a stored {:?}, not a dataset: only datasets can be previewed",
                    manifest.kind
                ),
            ));
        }
        let sample = preview_sample(dataset, manifest.rows);
        let wanted = (asked as usize).min(sample.len());
        let mut picked: Vec<(u64, Vec<f32>, LabelValue)> = Vec::with_capacity(wanted);
        // Rows are numbered across the shards in manifest order; read only the shards that
        // hold a wanted row.
        let mut wanted_rows: Vec<u64> = sample[..wanted].to_vec();
        wanted_rows.sort_unstable();
        let mut first_row = 0u64;
        for entry in manifest.shards() {
            let end = first_row + entry.rows;
            let here: Vec<u64> = wanted_rows
                .iter()
                .filter(|r| (first_row..end).contains(*r))
                .map(|r| r - first_row)
                .collect();
            if !here.is_empty() {
                let shard: ShardId = entry.id.parse().map_err(|_| bad_manifest())?;
                let read = import::read_shard(&self.store, key, &shard)
                    .await
                    .map_err(|e| self.refuse("corrupt_shard", ErrorCode::Unavailable, e.to_string()))?;
                for (offset, (row, label)) in here.iter().zip(rows_at(&read, &here)) {
                    picked.push((first_row + offset, row, label));
                }
            }
            first_row = end;
        }
        // In the sample's own order, so a smaller ask is a prefix of a larger one.
        let position = |row: &u64| sample.iter().position(|s| s == row).unwrap_or(usize::MAX);
        picked.sort_by_key(|(row, _, _)| position(row));
        let mut preview = DatasetPreview {
            columns: manifest.input_columns(),
            rows: Vec::with_capacity(picked.len()),
            labels: Vec::new(),
            targets: Vec::new(),
        };
        for (_, row, label) in picked {
            preview.rows.push(row);
            match label {
                LabelValue::Class(class) => preview.labels.push(class),
                LabelValue::Target(value) => preview.targets.push(value),
            }
        }
        Ok(preview)
    }

    /// Serves a shard: the ticket first, then the catalog, then the bytes — which are checked
    /// (authentic, and hashing to their name) before any of them leaves the node — streamed as
    /// Arrow IPC record batches of at most [`MAX_BATCH_BYTES`], then the row count.
    pub async fn get_shard(
        &self,
        peer: &PeerIdentity,
        dataset: &str,
        shard: &ShardId,
        ticket: &SignedTicket,
    ) -> Result<Reply<PeerResponse>, RpcError> {
        let timer = RequestTimer::start(self.metrics.request_duration.with_label_values(&["get_shard"]));
        let checked = {
            let trusted = self.trusted.read().expect("trusted set");
            ticket.check_remembered(
                &peer.node_id,
                dataset,
                now_ms(),
                |id| trusted.contains(id),
                &self.verified_tickets,
            )
        };
        if let Err(e) = checked {
            return Err(self.refuse(e.reason(), ErrorCode::PermissionDenied, e.to_string()));
        }
        let plaintext = self.open_shard(dataset, shard).await?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(plaintext))
            .map_err(|e| RpcError::new(ErrorCode::Internal, format!("shard {shard}: {e}")))?;
        let columns = reader.schema().fields().len().max(1);
        // 4-byte values; the IPC framing adds little beyond the column buffers.
        let rows_per_batch = (MAX_BATCH_BYTES / 2 / (columns * 4)).max(1);
        let reader = reader
            .with_batch_size(rows_per_batch)
            .build()
            .map_err(|e| RpcError::new(ErrorCode::Internal, format!("shard {shard}: {e}")))?;
        Ok(Reply::Stream(Box::pin(ipc_stream(
            reader,
            self.metrics.served_bytes.clone(),
            timer,
        ))))
    }

    /// A shard's plaintext after every check: in the dataset's manifest, present, authentic and
    /// hashing to its name. A failure is counted and never serves a byte.
    pub(crate) async fn open_shard(&self, dataset: &str, shard: &ShardId) -> Result<Vec<u8>, RpcError> {
        let catalog = self.catalog.read().await;
        let (manifest, key) = self.known(&catalog, dataset)?;
        if manifest.shard(&shard.to_string()).is_none() {
            return Err(self.refuse(
                "unknown_shard",
                ErrorCode::NotFound,
                format!("dataset {dataset} has no shard {shard}"),
            ));
        }
        let sealed = match self.store.get(shard).await {
            Ok(sealed) => sealed,
            Err(e) => return Err(self.refuse("missing_shard", ErrorCode::Unavailable, e.to_string())),
        };
        key.open(shard, &sealed).map_err(|e| {
            tracing::warn!(%shard, error = %e, "refusing to serve a damaged shard");
            self.refuse(
                "corrupt_shard",
                ErrorCode::Unavailable,
                format!("shard {shard} failed its integrity check here; ask another replica"),
            )
        })
    }
}

/// The shard's batches as IPC frames, produced one at a time, then `ShardEnd`.
fn ipc_stream(
    reader: ParquetRecordBatchReader,
    served: prometheus::IntCounter,
    timer: RequestTimer,
) -> impl futures::Stream<Item = Result<PeerResponse, RpcError>> + Send + 'static {
    let state = (Some(reader), 0u64, 0u32, timer);
    futures::stream::unfold(state, move |(reader, rows, batches, timer)| {
        let served = served.clone();
        async move {
            let mut reader = reader?;
            match reader.next() {
                Some(Ok(batch)) => {
                    let item = encode_ipc(&batch)
                        .map(|ipc| {
                            served.inc_by(ipc.len() as u64);
                            PeerResponse::ShardBatch { ipc }
                        })
                        .map_err(|e| RpcError::new(ErrorCode::Internal, e));
                    let rows = rows + batch.num_rows() as u64;
                    let next = item.is_ok().then_some(reader);
                    Some((item, (next, rows, batches + 1, timer)))
                }
                Some(Err(e)) => Some((
                    Err(RpcError::new(ErrorCode::Internal, e.to_string())),
                    (None, rows, batches, timer),
                )),
                None => Some((
                    Ok(PeerResponse::ShardEnd { rows, batches }),
                    (None, rows, batches, timer),
                )),
            }
        }
    })
}

/// One record batch as a self-contained Arrow IPC stream (schema, batch, end marker).
pub fn encode_ipc(batch: &RecordBatch) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut writer =
        arrow_ipc::writer::StreamWriter::try_new(&mut out, &batch.schema()).map_err(|e| e.to_string())?;
    writer.write(batch).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    drop(writer);
    Ok(out)
}

fn bad_manifest() -> RpcError {
    RpcError::new(ErrorCode::Internal, "a manifest names a bad shard id")
}

/// How many rows a dataset's preview sample holds: 1 % of its rows, at most 100, rounded down.
pub fn preview_sample_size(rows: u64) -> usize {
    (rows / 100).min(100) as usize
}

/// The rows (numbered across the shards in manifest order) a dataset's preview may show: drawn
/// once by a generator seeded with the dataset's id, so every call and every caller gets the
/// same ones.
pub fn preview_sample(dataset: &str, rows: u64) -> Vec<u64> {
    use rand::SeedableRng;
    let mut seed = blake3::Hasher::new();
    seed.update(b"aic-preview-sample-v1");
    seed.update(dataset.as_bytes());
    let mut rng = rand::rngs::StdRng::from_seed(*seed.finalize().as_bytes());
    let rows = usize::try_from(rows).unwrap_or(usize::MAX);
    rand::seq::index::sample(&mut rng, rows, preview_sample_size(rows as u64).min(rows))
        .into_iter()
        .map(|i| i as u64)
        .collect()
}

/// A row's label as a shard stores it.
enum LabelValue {
    Class(u32),
    Target(f32),
}

/// The features and label of the rows at `positions` (ascending) of a shard's batches.
fn rows_at(batches: &[RecordBatch], positions: &[u64]) -> Vec<(Vec<f32>, LabelValue)> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float32Type, UInt32Type};
    let mut out = Vec::with_capacity(positions.len());
    let mut wanted = positions.iter().peekable();
    let mut first = 0u64;
    for batch in batches {
        let end = first + batch.num_rows() as u64;
        let features = batch.num_columns() - 1;
        let label_column = batch.column(features);
        let label = |r: usize| match label_column.data_type() {
            arrow_schema::DataType::UInt32 => {
                LabelValue::Class(label_column.as_primitive::<UInt32Type>().value(r))
            }
            _ => LabelValue::Target(label_column.as_primitive::<Float32Type>().value(r)),
        };
        while let Some(&&row) = wanted.peek() {
            if row >= end {
                break;
            }
            let r = (row - first) as usize;
            let values = (0..features)
                .map(|c| batch.column(c).as_primitive::<Float32Type>().value(r))
                .collect();
            out.push((values, label(r)));
            wanted.next();
        }
        first = end;
    }
    out
}

impl StorageNode {
    /// Serves a job's tensor: to a scheduler replica, or to a compute node showing a ticket that
    /// names this tensor.
    pub async fn get_tensor(
        &self,
        peer: &PeerIdentity,
        tensor: aic_protocol::tensor::TensorRef,
        ticket: Option<&SignedTicket>,
    ) -> Result<Reply<PeerResponse>, RpcError> {
        let timer = RequestTimer::start(self.metrics.request_duration.with_label_values(&["get_tensor"]));
        if peer.role != aic_protocol::Role::Scheduler {
            let Some(ticket) = ticket else {
                return Err(self.refuse(
                    "ticket_missing",
                    ErrorCode::PermissionDenied,
                    "a compute node reads a tensor with a scheduler's ticket",
                ));
            };
            let checked = {
                let trusted = self.trusted.read().expect("trusted set");
                ticket.check_remembered(
                    &peer.node_id,
                    &tensor.ticket_name(),
                    now_ms(),
                    |id| trusted.contains(id),
                    &self.verified_tickets,
                )
            };
            if let Err(e) = checked {
                return Err(self.refuse(e.reason(), ErrorCode::PermissionDenied, e.to_string()));
            }
        }
        self.serve_tensor(tensor, timer).await
    }

    /// Serves the weights of a TrainedModel the ledger says is published for inference, to a
    /// compute node that will run it: the asset must be a trained model whose content is this
    /// very tensor, and live.
    pub async fn get_published_tensor(
        &self,
        asset: aic_protocol::AssetId,
        tensor: aic_protocol::tensor::TensorRef,
    ) -> Result<Reply<PeerResponse>, RpcError> {
        let timer = RequestTimer::start(
            self.metrics
                .request_duration
                .with_label_values(&["get_published_tensor"]),
        );
        let scheduler = self.dial_scheduler().await?;
        let request = aic_ledger::api::LedgerRequest::InferenceAccess {
            key_hash: [0; 32],
            model: asset.to_string(),
        };
        let published = match aic_ledger::remote::request(&scheduler, &request).await {
            Ok(aic_ledger::api::LedgerResponse::InferenceAccess(access)) => access.model,
            Ok(other) => {
                return Err(RpcError::new(
                    ErrorCode::Internal,
                    format!("unexpected ledger answer {other:?}"),
                ))
            }
            Err(e) => {
                return Err(RpcError::new(
                    ErrorCode::Unavailable,
                    format!("reading the ledger: {e}"),
                ))
            }
        };
        let genuine = published.is_some_and(|p| {
            p.id == asset
                && p.asset.kind == aic_ledger::tx::AssetKind::TrainedModel
                && matches!(p.asset.provenance, aic_ledger::state::Provenance::Trained { .. })
                && p.asset.metadata.content_hash == tensor.hash
        });
        if !genuine {
            return Err(self.refuse(
                "not_published",
                ErrorCode::PermissionDenied,
                format!("asset {asset} is not a published trained model whose weights are this tensor"),
            ));
        }
        self.serve_tensor(tensor, timer).await
    }

    /// A stored tensor's frames, counted as served.
    async fn serve_tensor(
        &self,
        tensor: aic_protocol::tensor::TensorRef,
        timer: RequestTimer,
    ) -> Result<Reply<PeerResponse>, RpcError> {
        let frames = self
            .tensors
            .serve(tensor)
            .await
            .map_err(|e| self.tensor_refusal(e))?;
        let served = self.metrics.served_bytes.clone();
        let rejected = self.metrics.rejected.clone();
        Ok(Reply::Stream(Box::pin(futures::StreamExt::map(
            frames,
            move |frame| {
                let _timer = &timer;
                match frame {
                    Ok(frame) => {
                        if let PeerResponse::TensorChunk { bytes, .. } = &frame {
                            served.inc_by(bytes.len() as u64);
                        }
                        Ok(frame)
                    }
                    Err(e) => {
                        rejected.with_label_values(&[e.reason()]).inc();
                        Err(RpcError::new(ErrorCode::Internal, e.to_string()))
                    }
                }
            },
        ))))
    }

    /// Takes one chunk of a tensor a scheduler replica stores here.
    pub async fn put_tensor(
        &self,
        peer: &PeerIdentity,
        tensor: aic_protocol::tensor::TensorRef,
        index: u64,
        bytes: &[u8],
    ) -> Result<bool, RpcError> {
        self.tensors
            .put_chunk(peer.node_id, tensor, index, bytes)
            .await
            .map_err(|e| self.tensor_refusal(e))
    }

    /// Forgets a tensor a scheduler replica no longer needs (a superseded round's weights).
    pub async fn drop_tensor(&self, tensor: aic_protocol::tensor::TensorRef) -> Result<(), RpcError> {
        self.tensors
            .delete(&tensor)
            .await
            .map_err(|e| self.tensor_refusal(e))
    }

    /// The whole tensors this node keeps, with their ages (for the leader's sweep).
    pub async fn list_tensors(&self) -> Result<aic_protocol::messages::PeerResponse, RpcError> {
        let (tensors, more) = self
            .tensors
            .list_complete(aic_protocol::messages::MAX_LISTED_TENSORS)
            .await
            .map_err(|e| self.tensor_refusal(e))?;
        Ok(aic_protocol::messages::PeerResponse::Tensors { tensors, more })
    }

    fn tensor_refusal(&self, error: crate::tensor_store::TensorStoreError) -> RpcError {
        use crate::tensor_store::TensorStoreError as E;
        let code = match &error {
            E::Refused(_) => ErrorCode::InvalidArgument,
            E::NotFound(_) => ErrorCode::NotFound,
            E::Busy(_) => ErrorCode::ResourceExhausted,
            E::Corrupt { .. } | E::Key { .. } => ErrorCode::Internal,
            E::Backend(_) => ErrorCode::Unavailable,
        };
        self.refuse(error.reason(), code, error.to_string())
    }
}
