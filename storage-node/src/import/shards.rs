//! The second pass's output: encoded rows collected per split and cut into Parquet shards
//! (LZ4, one row group), each named by the BLAKE3 hash of its bytes and handed to a sink; and
//! reading a stored shard back.

use std::collections::VecDeque;
use std::sync::Arc;

use super::{write_parquet, ImportError, ShardSink};
use crate::manifest::ShardEntry;
use crate::sealing::DatasetKey;
use crate::shard_store::ShardStore;
use aic_protocol::ShardId;
use arrow_array::{ArrayRef, Float32Array, RecordBatch, UInt32Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;

/// A row's label: a class index, or a regression target's value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Label {
    Class(u32),
    Value(f32),
}

/// Shards encoded to Parquet at once, off the importing thread, while it goes on cutting rows
/// and handing finished shards to the sink.
const SHARDS_BUILDING: usize = 4;

/// A shard built: its name, its Parquet bytes and its rows.
struct Built {
    id: ShardId,
    parquet: Vec<u8>,
    rows: u64,
}

/// Collects rows per split and writes a shard whenever one is full.
pub(super) struct ShardWriter<'a, S> {
    schema: SchemaRef,
    shard_rows: usize,
    sink: &'a mut S,
    /// Per split: the rows not yet written, column by column, and their labels.
    pending: [(Vec<Vec<f32>>, Vec<Label>); 2],
    /// Shards being built, oldest first, with their split: handed to the sink in this order,
    /// so that each split's shards are listed in file order.
    building: VecDeque<(usize, tokio::task::JoinHandle<Result<Built, String>>)>,
    written: [Vec<ShardEntry>; 2],
}

impl<'a, S: ShardSink> ShardWriter<'a, S> {
    /// Shards with one Float32 column per input column, then the label (UInt32 classes or a
    /// Float32 target).
    pub fn new(
        columns: &[String],
        label: &str,
        regression: bool,
        shard_rows: usize,
        sink: &'a mut S,
    ) -> Self {
        let mut fields: Vec<Field> = columns
            .iter()
            .map(|name| Field::new(name, DataType::Float32, false))
            .collect();
        let label_type = if regression {
            DataType::Float32
        } else {
            DataType::UInt32
        };
        fields.push(Field::new(label, label_type, false));
        ShardWriter {
            schema: Arc::new(Schema::new(fields)),
            shard_rows,
            sink,
            pending: [(Vec::new(), Vec::new()), (Vec::new(), Vec::new())],
            building: VecDeque::new(),
            written: [Vec::new(), Vec::new()],
        }
    }

    /// Adds rows `rows` of an encoded batch (`columns[c][row]`) to a split, with their labels
    /// (`labels[i]` is row `rows[i]`'s), writing a shard each time the split has `shard_rows`.
    pub async fn push_rows(
        &mut self,
        test: bool,
        rows: &[u32],
        columns: &[Vec<f32>],
        labels: &[Label],
    ) -> Result<(), ImportError> {
        let split = usize::from(test);
        let mut from = 0usize;
        while from < rows.len() {
            let (pending, pending_labels) = &mut self.pending[split];
            if pending.is_empty() {
                *pending = vec![Vec::with_capacity(self.shard_rows); columns.len()];
            }
            let take = (self.shard_rows - pending_labels.len()).min(rows.len() - from);
            let chunk = &rows[from..from + take];
            for (values, column) in pending.iter_mut().zip(columns) {
                values.extend(chunk.iter().map(|&r| column[r as usize]));
            }
            pending_labels.extend_from_slice(&labels[from..from + take]);
            from += take;
            if pending_labels.len() == self.shard_rows {
                self.flush(split).await?;
            }
        }
        Ok(())
    }

    /// Starts building a shard of the split's pending rows; hands the oldest shards built to
    /// the sink while more than [`SHARDS_BUILDING`] are under way.
    async fn flush(&mut self, split: usize) -> Result<(), ImportError> {
        let (values, labels) = std::mem::take(&mut self.pending[split]);
        if labels.is_empty() {
            return Ok(());
        }
        let schema = self.schema.clone();
        self.building.push_back((
            split,
            tokio::task::spawn_blocking(move || build_shard(schema, values, labels)),
        ));
        while self.building.len() > SHARDS_BUILDING {
            self.store_oldest().await?;
        }
        Ok(())
    }

    async fn store_oldest(&mut self) -> Result<(), ImportError> {
        let Some((split, building)) = self.building.pop_front() else {
            return Ok(());
        };
        let built = building
            .await
            .map_err(|e| ImportError::Shard(format!("building a shard: {e}")))?
            .map_err(ImportError::Shard)?;
        let bytes = built.parquet.len() as u64;
        self.sink.put(built.id, built.parquet).await?;
        self.written[split].push(ShardEntry {
            id: built.id.to_string(),
            rows: built.rows,
            bytes,
        });
        Ok(())
    }

    pub async fn finish(mut self) -> Result<(Vec<ShardEntry>, Vec<ShardEntry>), ImportError> {
        self.flush(0).await?;
        self.flush(1).await?;
        while !self.building.is_empty() {
            self.store_oldest().await?;
        }
        let [train, test] = self.written;
        Ok((train, test))
    }
}

/// A shard's Parquet bytes and name from its columns and labels.
fn build_shard(schema: SchemaRef, values: Vec<Vec<f32>>, labels: Vec<Label>) -> Result<Built, String> {
    let mut columns: Vec<ArrayRef> = values
        .into_iter()
        .map(|column| Arc::new(Float32Array::from(column)) as ArrayRef)
        .collect();
    let features = columns.len();
    let label: ArrayRef = match schema.field(features).data_type() {
        DataType::UInt32 => Arc::new(UInt32Array::from_iter_values(labels.iter().map(|l| match l {
            Label::Class(c) => *c,
            Label::Value(_) => unreachable!("a classification writer gets classes"),
        }))),
        _ => Arc::new(Float32Array::from_iter_values(labels.iter().map(|l| match l {
            Label::Value(v) => *v,
            Label::Class(_) => unreachable!("a regression writer gets values"),
        }))),
    };
    columns.push(label);
    let batch = RecordBatch::try_new(schema, columns).map_err(|e| e.to_string())?;
    let parquet = write_parquet(&batch)?;
    Ok(Built {
        id: ShardId::of_content(&parquet),
        parquet,
        rows: batch.num_rows() as u64,
    })
}

/// Reads a stored shard back: fetch, open (authenticity and content hash), decode Parquet.
pub async fn read_shard(
    store: &ShardStore,
    key: &DatasetKey,
    id: &ShardId,
) -> Result<Vec<RecordBatch>, ImportError> {
    let sealed = store.get(id).await?;
    let plaintext = key
        .open(id, &sealed)
        .map_err(|e| ImportError::Shard(e.to_string()))?;
    let reader =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(Bytes::from(plaintext))
            .and_then(|b| b.build())
            .map_err(|e| ImportError::Shard(e.to_string()))?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ImportError::Shard(e.to_string()))
}
