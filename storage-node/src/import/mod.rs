//! Dataset import: a CSV or Parquet file becomes preprocessed Parquet shards, sealed into a
//! [`ShardStore`] or uploaded to a storage node (see [`ShardSink`]).
//!
//! ```text
//!  pass 1 (analyse): stream the file as text → per column (in groups, one thread each):
//!          missing values (null markers), numbers, dates, distinct values → type (as told or
//!          inferred), encoding, missing-value policy, the import report; every refusal here,
//!          before anything is stored; what was parsed is spilled beside the input for pass 2
//!  pass 2 (encode):  stream the spill (or the file again) → drop, fill or encode each cell by
//!          its feature (one-hot, standardised, days) column by column, batches on every core,
//!          in file order; split train/test by a seeded hash of the row number, cut shards
//!          (`shard_rows`, or about 1 MiB each), write Parquet (LZ4), name by BLAKE3, hand to
//!          the sink
//! ```
//!
//! Memory stays bounded by the batch size (a few batches in flight per thread) and a few shards,
//! whatever the file's size: a CSV line is at most [`MAX_LINE_BYTES`], a file at most
//! [`MAX_COLUMNS`] columns (counted from the header before anything is parsed), a text cell at
//! most [`MAX_CELL_BYTES`], distinct values are tracked within a fixed budget, and the column
//! encodings must fit the manifest the ledger publishes ([`MAX_ENCODING_BYTES`]). Statistics
//! that would overflow are refused in pass 1 with the column named.

mod columns;
mod ordered;
mod profile;
mod profile_groups;
mod shards;
mod source;
mod spill;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aic_protocol::ShardId;
use arrow_array::RecordBatch;
use bytes::Bytes;

pub use aic_protocol::upload::{write_parquet, ShardSink, SinkError};
pub use profile::{date_text, AUTO_CATEGORY_LIMIT, MAX_MEDIAN_VALUES};
pub use shards::read_shard;
pub use source::{read_text_rows, InputFormat, TextRows};

use crate::encoding::{Feature, MissingPolicy, DEFAULT_NULL_MARKERS};
use crate::manifest::{Excluded, Manifest, Target};
use crate::report::ColumnReport;
use crate::sealing::DatasetKey;
use crate::shard_store::ShardStore;
use columns::BatchEncoder;
use ordered::OrderedMap;
use profile::{ColumnProfile, Decision};
use profile_groups::{ProfileGroups, ProfiledColumn};
use shards::ShardWriter;
use source::BatchSource;
use spill::Spill;

/// Most distinct values a column may have to be one-hot encoded (and classes a label may have).
pub const MAX_CATEGORIES: usize = 1024;
/// Most columns a file may have (a 128×128 image and its label fit).
pub const MAX_COLUMNS: usize = 16_384;
/// Longest CSV line, header included.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;
/// Longest text value (a category or a label).
pub const MAX_CELL_BYTES: usize = 16 * 1024;
/// Most bytes the column encodings and class names may take in the manifest: the ledger
/// publishes at most 64 KiB of it with the Dataset asset.
pub const MAX_ENCODING_BYTES: usize = 48 * 1024;

/// What a column is, as an importer may say with `--column-type COL=TYPE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ColumnType {
    Numeric,
    Categorical,
    /// Free text: left out.
    Text,
    Date,
}

impl ColumnType {
    pub fn as_str(self) -> &'static str {
        match self {
            ColumnType::Numeric => "numeric",
            ColumnType::Categorical => "categorical",
            ColumnType::Text => "text",
            ColumnType::Date => "date",
        }
    }
}

impl std::str::FromStr for ColumnType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        [
            ColumnType::Numeric,
            ColumnType::Categorical,
            ColumnType::Text,
            ColumnType::Date,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
        .ok_or_else(|| format!("unknown column type {s:?} (numeric, categorical, text, date)"))
    }
}

/// Rows per shard at the least when the importer does not say.
pub const MIN_SHARD_ROWS: usize = 512;
/// Bytes of encoded values a shard holds when the data allows: each shard is a file, a fetch
/// and a Parquet footer, and at 512 rows of a few dozen columns (64 KB) making those files was
/// a third of a large import's time.
pub const SHARD_TARGET_BYTES: u64 = 1024 * 1024;
/// Shards a file makes at the least when it has the rows for them (each at least
/// [`MIN_SHARD_ROWS`]): the training rounds spread a dataset's shards over nodes.
pub const MIN_SHARDS: u64 = 64;

#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// The label column (classes), or with `regression` the numeric target.
    pub label: String,
    pub regression: bool,
    /// Rows per shard; `None` lets the data choose (see [`Analysis::shard_rows`]).
    pub shard_rows: Option<usize>,
    pub test_fraction: f64,
    pub seed: u64,
    pub batch_rows: usize,
    /// Columns left out.
    pub exclude: Vec<String>,
    /// Column types as the importer states them (the rest are inferred).
    pub column_types: BTreeMap<String, ColumnType>,
    /// Missing-value policies per column (the label's too).
    pub missing: BTreeMap<String, MissingPolicy>,
    /// Values read as missing; empty means [`DEFAULT_NULL_MARKERS`].
    pub null_markers: Vec<String>,
    /// The input columns as images: channels × height × width, row-major pixels.
    pub image_shape: Option<[u64; 3]>,
    /// Whether pass 1 keeps what it parsed beside the input for pass 2 (see [`spill`]): about
    /// the input's size on disk, for a pass 2 that reads no CSV. Off for a report alone.
    pub spill: bool,
}

impl ImportOptions {
    pub fn new(label: &str) -> Self {
        ImportOptions {
            label: label.to_string(),
            regression: false,
            shard_rows: None,
            test_fraction: 0.2,
            seed: 42,
            batch_rows: 8192,
            exclude: Vec::new(),
            column_types: BTreeMap::new(),
            missing: BTreeMap::new(),
            null_markers: Vec::new(),
            image_shape: None,
            spill: true,
        }
    }

    fn markers(&self) -> Vec<String> {
        if self.null_markers.is_empty() {
            DEFAULT_NULL_MARKERS.iter().map(|m| m.to_string()).collect()
        } else {
            self.null_markers.clone()
        }
    }

    /// The label's missing-value policy: rows without a label are dropped unless told otherwise.
    fn label_missing(&self) -> MissingPolicy {
        self.missing
            .get(&self.label)
            .copied()
            .unwrap_or(MissingPolicy::DropRow)
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

impl From<SinkError> for ImportError {
    fn from(error: SinkError) -> Self {
        match error {
            SinkError::Upload(error) => ImportError::Upload(error),
            other => ImportError::Shard(other.to_string()),
        }
    }
}

/// Seals each shard under a dataset key and writes it to a store.
pub struct SealingSink<'a> {
    pub store: &'a ShardStore,
    pub key: &'a DatasetKey,
}

impl ShardSink for SealingSink<'_> {
    async fn put(&mut self, id: ShardId, parquet: Vec<u8>) -> Result<(), SinkError> {
        let sealed = self
            .key
            .seal(&id, &parquet)
            .map_err(|e| SinkError::Shard(e.to_string()))?;
        self.store
            .put(&id, Bytes::from(sealed))
            .await
            .map_err(|e| SinkError::Store(e.to_string()))
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

/// What pass 1 decided: every feature's encoding, the label's classes or target, the columns
/// left out, and the report. Pass 2 ([`encode`]) follows it exactly.
#[derive(Clone, Debug)]
pub struct Analysis {
    file: PathBuf,
    pub name: String,
    pub options: ImportOptions,
    /// The source column of each feature, with the feature.
    features: Vec<(usize, Feature)>,
    label_index: usize,
    pub classes: Vec<String>,
    pub target: Option<Target>,
    pub excluded: Vec<Excluded>,
    /// One line per source column, in file order.
    pub report: Vec<ColumnReport>,
    /// Data rows read.
    pub rows: u64,
    pub null_markers: Vec<String>,
    /// What pass 1 parsed, for pass 2, when it was kept.
    spill: Option<Arc<Spill>>,
}

impl Analysis {
    pub fn features(&self) -> Vec<Feature> {
        self.features.iter().map(|(_, f)| f.clone()).collect()
    }

    /// Whether pass 2 will read pass 1's spill rather than parse the file again.
    pub fn spilled(&self) -> bool {
        self.spill.is_some()
    }

    /// Columns of model input the features encode into.
    pub fn input_width(&self) -> u64 {
        self.features.iter().map(|(_, f)| f.width() as u64).sum()
    }

    /// Rows per shard: the importer's, or else enough rows for about [`SHARD_TARGET_BYTES`] of
    /// encoded values, as long as the file still makes [`MIN_SHARDS`] shards, and never fewer
    /// than [`MIN_SHARD_ROWS`].
    pub fn shard_rows(&self) -> usize {
        self.options
            .shard_rows
            .unwrap_or_else(|| default_shard_rows(self.rows, self.input_width()))
    }
}

/// Rows per shard for `rows` rows of `input_width` input columns when the importer does not
/// say (see [`Analysis::shard_rows`]).
fn default_shard_rows(rows: u64, input_width: u64) -> usize {
    // Every input column and the label are 4 bytes a row.
    let row_bytes = input_width.saturating_add(1).saturating_mul(4);
    let by_size = SHARD_TARGET_BYTES / row_bytes;
    let spread = rows / MIN_SHARDS;
    usize::try_from(by_size.min(spread)).map_or(usize::MAX, |rows| rows.max(MIN_SHARD_ROWS))
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

/// Both passes: [`analyse`], then [`encode`] into `sink`. Nothing reaches the sink before the
/// whole file has been checked.
pub async fn preprocess(
    file: &Path,
    name: &str,
    options: &ImportOptions,
    sink: &mut impl ShardSink,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Manifest, ImportError> {
    let analysis = analyse(file, name, options, progress)?;
    encode(&analysis, sink, progress).await
}

/// Pass 1: reads the whole file, decides every column, and refuses what cannot be imported —
/// naming the column, the count and an example value. Stores nothing.
pub fn analyse(
    file: &Path,
    name: &str,
    options: &ImportOptions,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Analysis, ImportError> {
    if options.shard_rows == Some(0)
        || !(0.0..1.0).contains(&options.test_fraction)
        || options.batch_rows == 0
    {
        return Err(ImportError::Options(
            "shard rows and batch rows must be > 0 and the test fraction in [0, 1)".into(),
        ));
    }
    let file_name = file.display().to_string();
    let input = |reason: String| ImportError::Input {
        file: file_name.clone(),
        reason,
    };
    let source = BatchSource::open(file, options.batch_rows).map_err(&input)?;
    let columns: Vec<String> = source.schema.fields().iter().map(|f| f.name().clone()).collect();
    let label_index =
        columns
            .iter()
            .position(|c| *c == options.label)
            .ok_or_else(|| ImportError::UnknownLabel {
                file: file_name.clone(),
                label: options.label.clone(),
                columns: columns.clone(),
            })?;
    check_options(options, &columns, &file_name)?;
    let markers = options.markers();
    let skipped: Vec<bool> = columns.iter().map(|c| options.exclude.contains(c)).collect();
    let profiled = skipped.iter().filter(|s| !**s).count();
    let mut profiles: Vec<ColumnProfile> = columns
        .iter()
        .map(|c| {
            ColumnProfile::new(
                c,
                options.missing.get(c) == Some(&MissingPolicy::Median),
                profiled,
            )
        })
        .collect();
    // The file is parsed on one thread and its columns profiled in groups, one thread each. A
    // column may be spilled as numbers unless it is the label or typed as something else.
    let as_numbers = |i: usize| {
        i != label_index
            && matches!(
                options.column_types.get(&columns[i]),
                None | Some(ColumnType::Numeric)
            )
    };
    let spill_dir = file
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let groups = ProfileGroups::start(
        profiles
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| !skipped[*i])
            .map(|(index, profile)| ProfiledColumn {
                index,
                profile: std::mem::take(profile),
                as_numbers: as_numbers(index),
            })
            .collect(),
        columns.len(),
        &markers,
        &file_name,
        options.spill.then_some(spill_dir),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    )
    .map_err(|e| input(format!("starting the profiling threads: {e}")))?;
    let mut rows: u64 = 0;
    let mut unreadable = None;
    let mut batches = source.batches().and_then(|b| b.read_ahead()).map_err(&input)?;
    while let Some(batch) = batches.next() {
        let batch = match batch {
            Ok(batch) => batch,
            Err(error) => {
                unreadable = Some(error);
                break;
            }
        };
        let first_row = rows + 1;
        rows += batch.num_rows() as u64;
        if !groups.add(first_row, &batch) {
            break;
        }
        progress(Progress {
            pass: 1,
            rows,
            bytes: batches.bytes_read(),
        });
    }
    // A value refused before the line that cannot be parsed is what reading in order meets
    // first.
    let (profiled, spill) = groups.finish()?;
    for (i, profile) in profiled {
        profiles[i] = profile;
    }
    if let Some(error) = unreadable {
        return Err(input(error));
    }
    if rows == 0 {
        return Err(ImportError::Empty { file: file_name });
    }

    let (classes, target, label_report) = profile::decide_label(&profiles[label_index], options, &file_name)?;
    let mut features = Vec::new();
    let mut excluded = Vec::new();
    let mut report = Vec::new();
    for (i, profile) in profiles.iter().enumerate() {
        if i == label_index {
            report.push(label_report.clone());
            continue;
        }
        if skipped[i] {
            let why = "left out, as told (--exclude)".to_string();
            excluded.push(Excluded {
                name: columns[i].clone(),
                reason: why.clone(),
            });
            report.push(ColumnReport {
                name: columns[i].clone(),
                role: "excluded".into(),
                kind: String::new(),
                type_given: false,
                present: 0,
                missing: 0,
                distinct: None,
                min: None,
                max: None,
                mean: None,
                top: Vec::new(),
                encoding: String::new(),
                policy: String::new(),
                width: 0,
                warnings: vec![why],
            });
            continue;
        }
        match profile::decide(profile, options, &file_name)? {
            Decision::Feature(feature, line) => {
                features.push((i, feature));
                report.push(line);
            }
            Decision::Excluded(reason, line) => {
                excluded.push(Excluded {
                    name: columns[i].clone(),
                    reason,
                });
                report.push(line);
            }
        }
    }
    if features.is_empty() {
        return Err(input("no feature column is left besides the label".into()));
    }
    let spill = spill.filter(|spill| spill.serves(&features, label_index));
    let analysis = Analysis {
        file: file.to_path_buf(),
        name: name.to_string(),
        options: options.clone(),
        features,
        label_index,
        classes,
        target,
        excluded,
        report,
        rows,
        null_markers: markers,
        spill: spill.map(Arc::new),
    };
    check_encoding_size(&analysis, &file_name)?;
    Ok(analysis)
}

/// The importer's choices name columns that exist, and do not contradict each other.
fn check_options(options: &ImportOptions, columns: &[String], file: &str) -> Result<(), ImportError> {
    let named = options
        .exclude
        .iter()
        .chain(options.column_types.keys())
        .chain(options.missing.keys());
    for column in named {
        if !columns.contains(column) {
            return Err(ImportError::Options(format!(
                "{file}: no column {column:?}; the columns are {columns:?}"
            )));
        }
    }
    if options.exclude.contains(&options.label) {
        return Err(ImportError::Options(format!(
            "the label {:?} cannot be excluded",
            options.label
        )));
    }
    if options.column_types.contains_key(&options.label) {
        return Err(ImportError::Options(format!(
            "the label {:?} takes no --column-type: --label names classes, --target a number",
            options.label
        )));
    }
    Ok(())
}

/// Checks that the column encodings and class names fit the manifest the ledger publishes,
/// naming the column that takes the most room when they do not.
fn check_encoding_size(analysis: &Analysis, file: &str) -> Result<(), ImportError> {
    let size = |value: &dyn erased_serde_size::Json| value.json_len();
    let features = analysis.features();
    let total = size(&features) + size(&analysis.classes);
    if total <= MAX_ENCODING_BYTES {
        return Ok(());
    }
    let (column, bytes) = features
        .iter()
        .map(|f| (f.name.clone(), size(f)))
        .chain(std::iter::once((
            "(the label's classes)".to_string(),
            size(&analysis.classes),
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

/// Pass 2: encodes every row as pass 1 decided, into shards handed to `sink`; answers the
/// manifest that names them (its replicas and fee are the caller's to fill in).
pub async fn encode(
    analysis: &Analysis,
    sink: &mut impl ShardSink,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Manifest, ImportError> {
    let options = &analysis.options;
    let file_name = analysis.file.display().to_string();
    let input = |reason: String| ImportError::Input {
        file: file_name.clone(),
        reason,
    };
    let features = analysis.features();
    let input_columns: Vec<String> = features.iter().flat_map(|f| f.column_names()).collect();
    let width = input_columns.len();
    if let Some(shape) = options.image_shape {
        check_image_shape(shape, &features).map_err(input)?;
    }
    let shard_rows = analysis.shard_rows();
    let mut writer = ShardWriter::new(
        &input_columns,
        &options.label,
        analysis.target.is_some(),
        shard_rows,
        sink,
    );
    // Pass 1's spill where it serves these features, the file parsed again otherwise; with the
    // bytes of the file read so far (estimated by rows from the spill).
    let mut batches: Box<dyn Iterator<Item = (Result<RecordBatch, String>, u64)> + Send> = match &analysis
        .spill
    {
        Some(spill) => {
            let file_bytes = std::fs::metadata(&analysis.file).map_or(0, |m| m.len());
            let (all_rows, mut rows) = (analysis.rows.max(1), 0u64);
            let spilled = spill
                .batches()
                .map_err(|e| input(format!("reading the spill: {e}")))?;
            Box::new(spilled.map(move |batch| {
                rows += batch.as_ref().map_or(0, |b| b.num_rows() as u64);
                let bytes = u128::from(file_bytes) * u128::from(rows.min(all_rows)) / u128::from(all_rows);
                (batch, bytes as u64)
            }))
        }
        None => {
            let mut parsed = BatchSource::open(&analysis.file, options.batch_rows)
                .and_then(|source| source.batches())
                .map_err(&input)?;
            Box::new(std::iter::from_fn(move || {
                let batch = parsed.next()?;
                Some((batch, parsed.bytes_read()))
            }))
        }
    };
    // The batches are read (from the spill, or parsed from the file) on one thread and encoded
    // on one per core, handed back in file order; shards are cut and written here.
    let encoder = Arc::new(BatchEncoder {
        file: file_name.clone(),
        analysis: analysis.clone(),
    });
    let mut first_row = 0u64;
    let mut failed = false;
    let numbered = std::iter::from_fn(move || {
        // Nothing is read past a parse error.
        if failed {
            return None;
        }
        let (batch, bytes_read) = batches.next()?;
        failed = batch.is_err();
        let numbered = batch.map(|batch| (first_row, batch));
        if let Ok((_, batch)) = &numbered {
            first_row += batch.num_rows() as u64;
        }
        Some((numbered, bytes_read))
    });
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let encoded = OrderedMap::spawn(
        "aic-import-encode",
        numbered,
        threads,
        move |(batch, bytes_read)| {
            let (first_row, batch) = batch?;
            let rows = batch.num_rows() as u64;
            Ok::<_, String>((encoder.encode(&batch, first_row), first_row + rows, bytes_read))
        },
    )
    .map_err(|e| input(format!("starting the encoding threads: {e}")))?;
    let (mut row_number, mut kept, mut dropped) = (0u64, 0u64, 0u64);
    for result in encoded {
        let (rows, rows_read, bytes_read) = result.map_err(&input)?;
        let rows = rows?;
        for (split, test) in [(0, false), (1, true)] {
            kept += rows.rows[split].len() as u64;
            writer
                .push_rows(test, &rows.rows[split], &rows.columns, &rows.labels[split])
                .await?;
        }
        dropped += rows.dropped;
        row_number = rows_read;
        progress(Progress {
            pass: 2,
            rows: row_number,
            bytes: bytes_read,
        });
    }
    if kept == 0 {
        return Err(input(format!(
            "every one of the {row_number} rows was dropped for a missing value"
        )));
    }
    let (train, test) = writer.finish().await?;
    Ok(Manifest {
        kind: crate::manifest::ObjectKind::Dataset,
        name: analysis.name.clone(),
        rows: kept,
        features,
        label: options.label.clone(),
        classes: analysis.classes.clone(),
        seed: options.seed,
        test_fraction: options.test_fraction,
        shard_rows,
        train,
        test,
        replicas: Vec::new(),
        fee: String::new(),
        target: analysis.target.clone(),
        null_markers: analysis.null_markers.clone(),
        excluded: analysis.excluded.clone(),
        rows_dropped: dropped,
        input_width: width as u64,
        report: analysis.report.clone(),
        image_shape: options.image_shape,
    })
}

/// An image view must hold exactly the input columns, every one a number (a pixel), not a
/// category's one-hot columns.
pub fn check_image_shape(shape: [u64; 3], features: &[crate::encoding::Feature]) -> Result<(), String> {
    let width: usize = features.iter().map(|f| f.width()).sum();
    let pixels = shape.iter().try_fold(1u64, |p, d| p.checked_mul(*d));
    if shape.contains(&0) || pixels != Some(width as u64) {
        return Err(format!(
            "an image shape of {}×{}×{} holds {} values; the file has {width} input columns",
            shape[0],
            shape[1],
            shape[2],
            pixels.map_or_else(|| "too many".to_string(), |p| p.to_string())
        ));
    }
    if let Some(category) = features.iter().find(|f| f.width() != 1) {
        return Err(format!(
            "column {:?} is a category, not a pixel: an image's columns are all numbers",
            category.name
        ));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_default_to_about_a_mebibyte_without_losing_spread_or_the_floor() {
        // Small files keep the floor: the digits (1,797 rows of 64 columns) as before.
        assert_eq!(default_shard_rows(1_797, 64), MIN_SHARD_ROWS);
        assert_eq!(default_shard_rows(0, 0), MIN_SHARD_ROWS);
        // A mid-sized file is cut into MIN_SHARDS shards rather than a few big ones.
        assert_eq!(default_shard_rows(100_000, 32), 100_000 / 64);
        // A large one into shards of about 1 MiB: 32 features and the label are 132 bytes a row.
        let rows = default_shard_rows(4_000_000, 32);
        assert_eq!(rows, (1 << 20) / 132);
        assert!(rows as u64 * 132 <= SHARD_TARGET_BYTES && (rows as u64 + 1) * 132 > SHARD_TARGET_BYTES);
        // Rows wider than the target never go below the floor (an image is still 512 rows).
        assert_eq!(default_shard_rows(10_000_000, 3 * 224 * 224), MIN_SHARD_ROWS);
        // Widths near u64::MAX do not overflow.
        assert_eq!(default_shard_rows(u64::MAX, u64::MAX), MIN_SHARD_ROWS);
    }
}
