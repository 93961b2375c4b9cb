//! What a storage node answers about its datasets: the list, a shard-by-shard stat, a capped
//! preview for any client, and shards streamed as Arrow IPC to compute nodes holding a ticket.

use std::collections::HashSet;
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
use crate::manifest::Manifest;
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

    /// A free look at a dataset: random rows from randomly chosen shards, never more than 1 % of
    /// the dataset or 100 rows, whatever was asked.
    pub async fn preview(&self, dataset: &str, asked: u32) -> Result<DatasetPreview, RpcError> {
        let _timer = RequestTimer::start(self.metrics.request_duration.with_label_values(&["preview"]));
        let catalog = self.catalog.read().await;
        let (manifest, key) = self.known(&catalog, dataset)?;
        let cap = manifest.rows.div_ceil(100).min(100) as usize;
        let wanted = (asked as usize).min(cap);
        // Shards in random order, read until they hold enough rows to sample from.
        let mut shards: Vec<_> = manifest.shards().collect();
        rand::seq::SliceRandom::shuffle(shards.as_mut_slice(), &mut rand::rng());
        let mut batches = Vec::new();
        let mut held = 0usize;
        for entry in shards {
            if held >= wanted {
                break;
            }
            let shard: ShardId = entry.id.parse().map_err(|_| bad_manifest())?;
            let read = import::read_shard(&self.store, key, &shard)
                .await
                .map_err(|e| self.refuse("corrupt_shard", ErrorCode::Unavailable, e.to_string()))?;
            held += read.iter().map(|b| b.num_rows()).sum::<usize>();
            batches.extend(read);
        }
        Ok(preview_rows(manifest, &batches, wanted))
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
        let trusted: HashSet<_> = self.trusted.read().expect("trusted set").clone();
        if let Err(e) = ticket.check(&peer.node_id, dataset, now_ms(), |id| trusted.contains(id)) {
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

/// Picks `wanted` random rows out of a shard's batches.
fn preview_rows(manifest: &Manifest, batches: &[RecordBatch], wanted: usize) -> DatasetPreview {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float32Type, UInt32Type};
    let mut all: Vec<(Vec<f32>, u32)> = Vec::new();
    for batch in batches {
        let features = batch.num_columns() - 1;
        let labels = batch.column(features).as_primitive::<UInt32Type>();
        for r in 0..batch.num_rows() {
            let row = (0..features)
                .map(|c| batch.column(c).as_primitive::<Float32Type>().value(r))
                .collect();
            all.push((row, labels.value(r)));
        }
    }
    let picked = rand::seq::index::sample(&mut rand::rng(), all.len(), wanted.min(all.len()));
    let (rows, labels) = picked.into_iter().map(|i| all[i].clone()).unzip();
    DatasetPreview {
        columns: manifest.features.iter().map(|f| f.name.clone()).collect(),
        rows,
        labels,
    }
}
