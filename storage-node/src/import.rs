//! Dataset import: a CSV or Parquet file becomes preprocessed Parquet shards, sealed into a
//! [`ShardStore`] or uploaded to a storage node (see [`ShardSink`]).
//!
//! ```text
//!  pass 1: stream the file → per-column mean/std or categories, label classes, row count
//!  pass 2: stream again → standardise/encode, split train/test by a seeded hash of the row
//!          number, cut shards of `shard_rows`, write Parquet (zstd), name by BLAKE3, seal, store
//! ```
//!
//! Memory stays bounded by the batch size and one shard per split, whatever the file's size:
//! a CSV line is at most [`MAX_LINE_BYTES`], a file at most [`MAX_COLUMNS`] columns (counted
//! from the header before anything is parsed), a text cell at most [`MAX_CELL_BYTES`], and the
//! column encodings must fit the manifest the ledger publishes ([`MAX_ENCODING_BYTES`]).
//! Everything that can be wrong with the input is found in pass 1, before anything is stored —
//! statistics that would overflow included.

use std::collections::BTreeSet;
use std::fs::File;
use std::future::Future;
use std::io::BufReader;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use aic_protocol::ShardId;
use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, Float32Array, RecordBatch, UInt32Array};
use arrow_csv::reader::Format;
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::manifest::{Feature, FeatureEncoding, Manifest, ShardEntry};
use crate::sealing::DatasetKey;
use crate::shard_store::ShardStore;

/// Most distinct values a text column may have to be encoded as categories.
pub const MAX_CATEGORIES: usize = 1024;
/// Rows inspected to infer the schema.
const INFER_ROWS: usize = 10_000;
/// Most columns a file may have (a 128×128 image and its label fit).
pub const MAX_COLUMNS: usize = 16_384;
/// Longest CSV line, header included.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;
/// Longest text value (a category or a label).
pub const MAX_CELL_BYTES: usize = 16 * 1024;
/// Most bytes the column encodings and class names may take in the manifest: the ledger
/// publishes at most 64 KiB of it with the Dataset asset.
pub const MAX_ENCODING_BYTES: usize = 48 * 1024;

#[derive(Clone, Debug)]
pub struct ImportOptions {
    pub label: String,
    pub shard_rows: usize,
    pub test_fraction: f64,
    pub seed: u64,
    pub batch_rows: usize,
}

impl ImportOptions {
    pub fn new(label: &str) -> Self {
        ImportOptions {
            label: label.to_string(),
            shard_rows: 512,
            test_fraction: 0.2,
            seed: 42,
            batch_rows: 8192,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    #[error("{file}: {reason}")]
    Input { file: String, reason: String },
    #[error("{file}: the file has no data rows")]
    Empty { file: String },
    #[error("{file}: no label column {label:?}; the columns are {columns:?}")]
    UnknownLabel {
        file: String,
        label: String,
        columns: Vec<String>,
    },
    #[error("{file}: column {column:?} cannot be encoded: {reason}")]
    Unencodable {
        file: String,
        column: String,
        reason: String,
    },
    #[error("invalid import options: {0}")]
    Options(String),
    #[error("writing a shard: {0}")]
    Shard(String),
    #[error(transparent)]
    Store(#[from] crate::shard_store::StoreError),
    #[error("uploading to the storage node: {0}")]
    Upload(#[source] aic_protocol::Error),
}

/// What pass 1 learns about one column.
enum ColumnStats {
    Numeric { count: u64, mean: f64, m2: f64 },
    Text(BTreeSet<String>),
}

/// Where finished shards go: sealed into this node's store, or uploaded to a storage node.
pub trait ShardSink {
    /// Takes one plaintext Parquet shard named by its BLAKE3 hash.
    fn put(&mut self, id: ShardId, parquet: Vec<u8>) -> impl Future<Output = Result<(), ImportError>>;
}

/// Seals each shard under a dataset key and writes it to a store.
pub struct SealingSink<'a> {
    pub store: &'a ShardStore,
    pub key: &'a DatasetKey,
}

impl ShardSink for SealingSink<'_> {
    async fn put(&mut self, id: ShardId, parquet: Vec<u8>) -> Result<(), ImportError> {
        let sealed = self
            .key
            .seal(&id, &parquet)
            .map_err(|e| ImportError::Shard(e.to_string()))?;
        self.store.put(&id, Bytes::from(sealed)).await?;
        Ok(())
    }
}

/// How far an import has come, for a progress bar.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// 1: reading statistics; 2: encoding and writing shards.
    pub pass: u8,
    pub rows: u64,
    /// Bytes of the input file read so far in this pass.
    pub bytes: u64,
}

/// Imports `file` into `store`, sealing shards under a fresh dataset key.
pub async fn import_file(
    file: &Path,
    name: &str,
    options: &ImportOptions,
    store: &ShardStore,
) -> Result<(Manifest, DatasetKey), ImportError> {
    let key = DatasetKey::generate();
    let manifest = preprocess(
        file,
        name,
        options,
        &mut SealingSink { store, key: &key },
        &|_| {},
    )
    .await?;
    Ok((manifest, key))
}

/// The input formats an import reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputFormat {
    Csv,
    Parquet,
}

impl InputFormat {
    /// Parquet when the file starts with Parquet's magic bytes, CSV otherwise.
    pub fn detect(file: &Path) -> std::io::Result<InputFormat> {
        let mut magic = [0u8; 4];
        let mut source = File::open(file)?;
        let read = std::io::Read::read(&mut source, &mut magic)?;
        Ok(if read == 4 && &magic == b"PAR1" {
            InputFormat::Parquet
        } else {
            InputFormat::Csv
        })
    }
}

/// Preprocesses `file` (CSV or Parquet) into shards handed to `sink`, and returns the manifest
/// that names them. Nothing reaches the sink before the whole file has been checked.
pub async fn preprocess(
    file: &Path,
    name: &str,
    options: &ImportOptions,
    sink: &mut impl ShardSink,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Manifest, ImportError> {
    if options.shard_rows == 0 || !(0.0..1.0).contains(&options.test_fraction) || options.batch_rows == 0 {
        return Err(ImportError::Options(
            "shard rows and batch rows must be > 0 and the test fraction in [0, 1)".into(),
        ));
    }
    let file_name = file.display().to_string();
    let input = |reason: String| ImportError::Input {
        file: file_name.clone(),
        reason,
    };
    let format = InputFormat::detect(file).map_err(|e| input(e.to_string()))?;
    let source = BatchSource::open(file, format, options.batch_rows).map_err(&input)?;
    let schema = source.schema.clone();
    let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let label_index =
        columns
            .iter()
            .position(|c| *c == options.label)
            .ok_or_else(|| ImportError::UnknownLabel {
                file: file_name.clone(),
                label: options.label.clone(),
                columns: columns.clone(),
            })?;

    // Pass 1: statistics, categories, classes; every malformed value is found here.
    let mut stats: Vec<ColumnStats> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Utf8 => ColumnStats::Text(BTreeSet::new()),
            _ => ColumnStats::Numeric {
                count: 0,
                mean: 0.0,
                m2: 0.0,
            },
        })
        .collect();
    let mut classes: BTreeSet<String> = BTreeSet::new();
    let mut rows: u64 = 0;
    let mut batches = source.batches().map_err(&input)?;
    while let Some(batch) = batches.next() {
        let batch = batch.map_err(&input)?;
        let first_line = rows;
        rows += batch.num_rows() as u64;
        progress(Progress {
            pass: 1,
            rows,
            bytes: batches.bytes_read(),
        });
        for (i, column) in batch.columns().iter().enumerate() {
            if i == label_index {
                for (r, value) in as_strings(column).enumerate() {
                    let value = value.ok_or_else(|| {
                        input(format!(
                            "row {}: label column {:?} has an empty value",
                            first_line + r as u64 + 1,
                            options.label
                        ))
                    })?;
                    if value.len() > MAX_CELL_BYTES {
                        return Err(ImportError::Unencodable {
                            file: file_name.clone(),
                            column: options.label.clone(),
                            reason: format!(
                                "row {}: a label of {} bytes (at most {MAX_CELL_BYTES})",
                                first_line + r as u64 + 1,
                                value.len()
                            ),
                        });
                    }
                    classes.insert(value);
                }
                continue;
            }
            accumulate(&mut stats[i], column, &columns[i], &file_name, first_line)?;
        }
    }
    if rows == 0 {
        return Err(ImportError::Empty { file: file_name });
    }
    let classes = order_classes(classes);
    let features: Vec<Feature> = stats
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != label_index)
        .map(|(i, s)| Feature {
            name: columns[i].clone(),
            encoding: match s {
                ColumnStats::Numeric { count, mean, m2 } => {
                    // Finite: pass 1 refused any column whose statistics overflowed.
                    let std = if *count > 1 {
                        (m2 / *count as f64).sqrt()
                    } else {
                        0.0
                    };
                    FeatureEncoding::Numeric {
                        mean: *mean,
                        std: if std > 0.0 { std } else { 1.0 },
                    }
                }
                ColumnStats::Text(set) => FeatureEncoding::Categorical {
                    categories: set.iter().cloned().collect(),
                },
            },
        })
        .collect();
    if features.is_empty() {
        return Err(input("the file has no feature column besides the label".into()));
    }
    check_encoding_size(&features, &classes, &file_name)?;

    // Pass 2: encode, split, shard, hand to the sink.
    let mut writer = ShardWriter::new(&features, &options.label, options.shard_rows, sink);
    let feature_columns: Vec<usize> = (0..columns.len()).filter(|&i| i != label_index).collect();
    let mut row_number: u64 = 0;
    let mut batches = source.batches().map_err(&input)?;
    while let Some(batch) = batches.next() {
        let batch = batch.map_err(&input)?;
        let encoded: Vec<Vec<f32>> = feature_columns
            .iter()
            .zip(&features)
            .map(|(&c, feature)| encode(batch.column(c), &feature.encoding))
            .collect();
        let labels: Vec<u32> = as_strings(batch.column(label_index))
            .map(|v| {
                classes
                    .iter()
                    .position(|c| Some(c) == v.as_ref())
                    .expect("seen in pass 1") as u32
            })
            .collect();
        for r in 0..batch.num_rows() {
            let row: Vec<f32> = encoded.iter().map(|column| column[r]).collect();
            let test = is_test_row(options.seed, row_number, options.test_fraction);
            writer.push(test, row, labels[r]).await?;
            row_number += 1;
        }
        progress(Progress {
            pass: 2,
            rows: row_number,
            bytes: batches.bytes_read(),
        });
    }
    let (train, test) = writer.finish().await?;
    Ok(Manifest {
        kind: crate::manifest::ObjectKind::Dataset,
        name: name.to_string(),
        rows,
        features,
        label: options.label.clone(),
        classes,
        seed: options.seed,
        test_fraction: options.test_fraction,
        shard_rows: options.shard_rows,
        train,
        test,
        replicas: Vec::new(),
        fee: String::new(),
    })
}

/// A file read as record batches with the column types preprocessing understands: Int64,
/// Float64, Boolean and Utf8 (other integer, float and text types are widened to those).
struct BatchSource {
    file: std::path::PathBuf,
    format: InputFormat,
    batch_rows: usize,
    /// The schema as read from the file.
    file_schema: SchemaRef,
    /// The schema after widening.
    schema: SchemaRef,
}

impl BatchSource {
    fn open(file: &Path, format: InputFormat, batch_rows: usize) -> Result<Self, String> {
        let file_schema: SchemaRef = match format {
            InputFormat::Csv => {
                let columns = header_columns(file)?;
                if columns > MAX_COLUMNS {
                    return Err(format!(
                        "the header names {columns} columns; at most {MAX_COLUMNS} are imported"
                    ));
                }
                let source = File::open(file).map_err(|e| e.to_string())?;
                let (schema, _) = Format::default()
                    .with_header(true)
                    .infer_schema(BufReader::new(LineLimit::new(source)), Some(INFER_ROWS))
                    .map_err(|e| e.to_string())?;
                Arc::new(schema)
            }
            InputFormat::Parquet => {
                let source = File::open(file).map_err(|e| e.to_string())?;
                ParquetRecordBatchReaderBuilder::try_new(source)
                    .map_err(|e| e.to_string())?
                    .schema()
                    .clone()
            }
        };
        if file_schema.fields().len() > MAX_COLUMNS {
            return Err(format!(
                "the file has {} columns; at most {MAX_COLUMNS} are imported",
                file_schema.fields().len()
            ));
        }
        let fields: Vec<Field> = file_schema
            .fields()
            .iter()
            .map(|f| Field::new(f.name(), widened(f.data_type()), true))
            .collect();
        Ok(BatchSource {
            file: file.to_path_buf(),
            format,
            batch_rows,
            file_schema,
            schema: Arc::new(Schema::new(fields)),
        })
    }

    /// The file from the start, batch by batch.
    fn batches(&self) -> Result<Batches, String> {
        let source = File::open(&self.file).map_err(|e| e.to_string())?;
        let total = source.metadata().map_err(|e| e.to_string())?.len();
        let read = Arc::new(AtomicU64::new(0));
        let inner: Box<dyn Iterator<Item = Result<RecordBatch, String>> + Send> = match self.format {
            InputFormat::Csv => {
                let counting = CountingReader {
                    inner: LineLimit::new(source),
                    read: read.clone(),
                };
                let reader = arrow_csv::ReaderBuilder::new(self.file_schema.clone())
                    .with_header(true)
                    .with_batch_size(self.batch_rows)
                    .build(BufReader::new(counting))
                    .map_err(|e| e.to_string())?;
                Box::new(reader.map(|b| b.map_err(|e| e.to_string())))
            }
            InputFormat::Parquet => {
                let builder = ParquetRecordBatchReaderBuilder::try_new(source).map_err(|e| e.to_string())?;
                let total_rows = builder.metadata().file_metadata().num_rows().max(1) as u64;
                let reader = builder
                    .with_batch_size(self.batch_rows)
                    .build()
                    .map_err(|e| e.to_string())?;
                let read = read.clone();
                let mut rows = 0u64;
                // Parquet is read by row group; bytes are estimated from the rows read.
                Box::new(reader.map(move |b| {
                    let batch = b.map_err(|e| e.to_string())?;
                    rows += batch.num_rows() as u64;
                    read.store(total.saturating_mul(rows) / total_rows, Ordering::Relaxed);
                    Ok(batch)
                }))
            }
        };
        Ok(Batches {
            inner,
            schema: self.schema.clone(),
            read,
            rows: 0,
        })
    }
}

struct Batches {
    inner: Box<dyn Iterator<Item = Result<RecordBatch, String>> + Send>,
    schema: SchemaRef,
    read: Arc<AtomicU64>,
    rows: u64,
}

impl Batches {
    fn bytes_read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }
}

impl Iterator for Batches {
    type Item = Result<RecordBatch, String>;

    fn next(&mut self) -> Option<Self::Item> {
        let batch = match self.inner.next()? {
            Ok(batch) => batch,
            // arrow-csv names the line (counting the header as line 1) and the column.
            Err(e) => return Some(Err(e)),
        };
        let first = self.rows;
        self.rows += batch.num_rows() as u64;
        let columns: Result<Vec<ArrayRef>, String> = batch
            .columns()
            .iter()
            .zip(self.schema.fields())
            .map(|(column, field)| {
                if column.data_type() == field.data_type() {
                    Ok(column.clone())
                } else {
                    arrow_cast::cast(column, field.data_type())
                        .map_err(|e| format!("rows {}..: column {:?}: {e}", first + 1, field.name()))
                }
            })
            .collect();
        Some(columns.and_then(|columns| {
            RecordBatch::try_new(self.schema.clone(), columns).map_err(|e| e.to_string())
        }))
    }
}

/// The type a column is read as: integers as Int64, floats as Float64, text as Utf8.
fn widened(data_type: &DataType) -> DataType {
    match data_type {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => DataType::Int64,
        DataType::Float16 | DataType::Float32 | DataType::Float64 | DataType::Decimal128(..) => {
            DataType::Float64
        }
        DataType::Boolean => DataType::Boolean,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Dictionary(..) => {
            DataType::Utf8
        }
        other => other.clone(),
    }
}

/// Counts the columns the CSV header names, reading at most [`MAX_LINE_BYTES`] of it, before
/// any parser sees the file (a header of millions of columns costs nothing but this count).
fn header_columns(file: &Path) -> Result<usize, String> {
    use std::io::Read;
    let source = File::open(file).map_err(|e| e.to_string())?;
    let mut columns = 1usize;
    let mut quoted = false;
    let mut read = 0usize;
    for byte in BufReader::new(source).bytes() {
        let byte = byte.map_err(|e| e.to_string())?;
        read += 1;
        if read > MAX_LINE_BYTES {
            return Err(format!("the header line is longer than {MAX_LINE_BYTES} bytes"));
        }
        match byte {
            b'"' => quoted = !quoted,
            b',' if !quoted => columns += 1,
            b'\n' if !quoted => break,
            _ => {}
        }
    }
    Ok(columns)
}

/// Checks that the column encodings and class names fit the manifest the ledger publishes,
/// naming the column that takes the most room when they do not.
fn check_encoding_size(features: &[Feature], classes: &[String], file: &str) -> Result<(), ImportError> {
    let size = |value: &dyn erased_serde_size::Json| value.json_len();
    let total = size(&features) + size(&classes);
    if total <= MAX_ENCODING_BYTES {
        return Ok(());
    }
    let (column, bytes) = features
        .iter()
        .map(|f| (f.name.clone(), size(f)))
        .chain(std::iter::once((
            "(the label's classes)".to_string(),
            size(&classes),
        )))
        .max_by_key(|(_, bytes)| *bytes)
        .expect("at least the classes");
    Err(ImportError::Unencodable {
        file: file.to_string(),
        column,
        reason: format!(
            "the column encodings take {total} bytes of manifest (at most {MAX_ENCODING_BYTES}); \
             this column takes {bytes}: too many or too long categories"
        ),
    })
}

/// The JSON size of the values a manifest holds.
mod erased_serde_size {
    pub trait Json {
        fn json_len(&self) -> usize;
    }

    impl<T: serde::Serialize> Json for T {
        fn json_len(&self) -> usize {
            serde_json::to_vec(self).map_or(usize::MAX / 4, |bytes| bytes.len())
        }
    }
}

/// Refuses a CSV line longer than [`MAX_LINE_BYTES`] as it streams through, so no parser ever
/// buffers more than that for one record.
struct LineLimit<R> {
    inner: R,
    line: usize,
}

impl<R> LineLimit<R> {
    fn new(inner: R) -> Self {
        LineLimit { inner, line: 0 }
    }
}

impl<R: std::io::Read> std::io::Read for LineLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        for &byte in &buf[..n] {
            if byte == b'\n' {
                self.line = 0;
            } else {
                self.line += 1;
                if self.line > MAX_LINE_BYTES {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("a line is longer than {MAX_LINE_BYTES} bytes"),
                    ));
                }
            }
        }
        Ok(n)
    }
}

/// Counts the bytes a reader hands out, for progress.
struct CountingReader<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: std::io::Read> std::io::Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Whether row `row` of the file belongs to the held-out test split: a seeded hash, so the split
/// is the same on every run and independent of batch boundaries.
pub fn is_test_row(seed: u64, row: u64, fraction: f64) -> bool {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&seed.to_le_bytes());
    hasher.update(&row.to_le_bytes());
    let draw = u64::from_le_bytes(hasher.finalize().as_bytes()[..8].try_into().expect("8 bytes"));
    (draw as f64 / u64::MAX as f64) < fraction
}

/// Classes in numeric order when every label is a number, else in text order.
fn order_classes(classes: BTreeSet<String>) -> Vec<String> {
    let mut classes: Vec<String> = classes.into_iter().collect();
    if classes.iter().all(|c| c.parse::<f64>().is_ok()) {
        classes.sort_by(|a, b| a.parse::<f64>().unwrap().total_cmp(&b.parse::<f64>().unwrap()));
    }
    classes
}

fn as_strings(column: &ArrayRef) -> impl Iterator<Item = Option<String>> + '_ {
    let text = arrow_csv_display(column);
    (0..column.len()).map(move |i| if column.is_null(i) { None } else { Some(text(i)) })
}

/// Renders a cell of a numeric or text column as the text the label map uses.
fn arrow_csv_display(column: &ArrayRef) -> impl Fn(usize) -> String + '_ {
    move |i| match column.data_type() {
        DataType::Utf8 => column.as_string::<i32>().value(i).to_string(),
        DataType::Int64 => column
            .as_primitive::<arrow_array::types::Int64Type>()
            .value(i)
            .to_string(),
        DataType::Float64 => column
            .as_primitive::<arrow_array::types::Float64Type>()
            .value(i)
            .to_string(),
        DataType::Boolean => column.as_boolean().value(i).to_string(),
        _ => String::new(),
    }
}

fn numeric_values(column: &ArrayRef) -> Option<Vec<Option<f64>>> {
    let values = match column.data_type() {
        DataType::Int64 => {
            let a = column.as_primitive::<arrow_array::types::Int64Type>();
            (0..a.len())
                .map(|i| (!a.is_null(i)).then(|| a.value(i) as f64))
                .collect()
        }
        DataType::Float64 => {
            let a = column.as_primitive::<arrow_array::types::Float64Type>();
            (0..a.len())
                .map(|i| (!a.is_null(i)).then(|| a.value(i)))
                .collect()
        }
        DataType::Boolean => {
            let a = column.as_boolean();
            (0..a.len())
                .map(|i| (!a.is_null(i)).then(|| f64::from(u8::from(a.value(i)))))
                .collect()
        }
        _ => return None,
    };
    Some(values)
}

/// Adds a batch's column to its statistics; `first_row` numbers the batch's rows in the file
/// (1-based data rows, header excluded) for error messages.
fn accumulate(
    stats: &mut ColumnStats,
    column: &ArrayRef,
    name: &str,
    file: &str,
    first_row: u64,
) -> Result<(), ImportError> {
    let unencodable = |reason: String| ImportError::Unencodable {
        file: file.to_string(),
        column: name.to_string(),
        reason,
    };
    match stats {
        ColumnStats::Numeric { count, mean, m2 } => {
            let values =
                numeric_values(column).ok_or_else(|| unencodable(format!("type {}", column.data_type())))?;
            for (row, value) in values.into_iter().enumerate() {
                let row = first_row + row as u64 + 1;
                let value = value.ok_or_else(|| unencodable(format!("row {row}: empty value")))?;
                if !value.is_finite() {
                    return Err(unencodable(format!("row {row}: non-finite value {value}")));
                }
                // Welford's update: stable for long columns.
                *count += 1;
                let delta = value - *mean;
                *mean += delta / *count as f64;
                *m2 += delta * (value - *mean);
                if !mean.is_finite() || !m2.is_finite() {
                    return Err(unencodable(format!(
                        "row {row}: the value {value} makes the column's mean or variance overflow; \
                         rescale the column"
                    )));
                }
            }
        }
        ColumnStats::Text(set) => {
            for (row, value) in column.as_string::<i32>().iter().enumerate() {
                let row = first_row + row as u64 + 1;
                let value = value.ok_or_else(|| unencodable(format!("row {row}: empty value")))?;
                if value.len() > MAX_CELL_BYTES {
                    return Err(unencodable(format!(
                        "row {row}: a text value of {} bytes (at most {MAX_CELL_BYTES})",
                        value.len()
                    )));
                }
                if set.len() == MAX_CATEGORIES && !set.contains(value) {
                    return Err(unencodable(format!(
                        "more than {MAX_CATEGORIES} distinct text values: not a category, and not a number"
                    )));
                }
                set.insert(value.to_string());
            }
        }
    }
    Ok(())
}

fn encode(column: &ArrayRef, encoding: &FeatureEncoding) -> Vec<f32> {
    match encoding {
        FeatureEncoding::Numeric { mean, std } => numeric_values(column)
            .expect("checked in pass 1")
            .into_iter()
            .map(|v| ((v.expect("checked in pass 1") - mean) / std) as f32)
            .collect(),
        FeatureEncoding::Categorical { categories } => column
            .as_string::<i32>()
            .iter()
            .map(|v| {
                categories
                    .binary_search_by(|c| c.as_str().cmp(v.expect("checked")))
                    .expect("seen in pass 1") as f32
            })
            .collect(),
    }
}

/// Collects rows per split and writes a shard whenever one is full.
struct ShardWriter<'a, S> {
    schema: SchemaRef,
    shard_rows: usize,
    sink: &'a mut S,
    pending: [(Vec<Vec<f32>>, Vec<u32>); 2],
    written: [Vec<ShardEntry>; 2],
}

impl<'a, S: ShardSink> ShardWriter<'a, S> {
    fn new(features: &[Feature], label: &str, shard_rows: usize, sink: &'a mut S) -> Self {
        let mut fields: Vec<Field> = features
            .iter()
            .map(|f| Field::new(&f.name, DataType::Float32, false))
            .collect();
        fields.push(Field::new(label, DataType::UInt32, false));
        ShardWriter {
            schema: Arc::new(Schema::new(fields)),
            shard_rows,
            sink,
            pending: [(Vec::new(), Vec::new()), (Vec::new(), Vec::new())],
            written: [Vec::new(), Vec::new()],
        }
    }

    async fn push(&mut self, test: bool, row: Vec<f32>, label: u32) -> Result<(), ImportError> {
        let split = usize::from(test);
        self.pending[split].0.push(row);
        self.pending[split].1.push(label);
        if self.pending[split].1.len() == self.shard_rows {
            self.flush(split).await?;
        }
        Ok(())
    }

    async fn flush(&mut self, split: usize) -> Result<(), ImportError> {
        let (rows, labels) = std::mem::take(&mut self.pending[split]);
        if rows.is_empty() {
            return Ok(());
        }
        let features = self.schema.fields().len() - 1;
        let mut columns: Vec<ArrayRef> = (0..features)
            .map(|f| Arc::new(Float32Array::from_iter_values(rows.iter().map(|r| r[f]))) as ArrayRef)
            .collect();
        columns.push(Arc::new(UInt32Array::from(labels)) as ArrayRef);
        let batch = RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(|e| ImportError::Shard(e.to_string()))?;
        let parquet = write_parquet(&batch).map_err(ImportError::Shard)?;
        let id = ShardId::of_content(&parquet);
        let bytes = parquet.len() as u64;
        self.sink.put(id, parquet).await?;
        self.written[split].push(ShardEntry {
            id: id.to_string(),
            rows: batch.num_rows() as u64,
            bytes,
        });
        Ok(())
    }

    async fn finish(mut self) -> Result<(Vec<ShardEntry>, Vec<ShardEntry>), ImportError> {
        self.flush(0).await?;
        self.flush(1).await?;
        let [train, test] = self.written;
        Ok((train, test))
    }
}

/// One shard as Parquet: zstd, one row group.
pub fn write_parquet(batch: &RecordBatch) -> Result<Vec<u8>, String> {
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).map_err(|e| e.to_string())?,
        ))
        .set_max_row_group_row_count(Some(batch.num_rows().max(1)))
        .build();
    let mut out = Vec::new();
    let mut writer =
        ArrowWriter::try_new(&mut out, batch.schema(), Some(properties)).map_err(|e| e.to_string())?;
    writer.write(batch).map_err(|e| e.to_string())?;
    writer.close().map_err(|e| e.to_string())?;
    Ok(out)
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
