//! Reading an import's input: a CSV or Parquet file as record batches whose every column is
//! text, so the importer decides what is missing and what each column is — never the parser.
//! A CSV's header is counted before any parser sees it and every line is bounded.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_csv::reader::Format;
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::{MAX_COLUMNS, MAX_LINE_BYTES};

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

/// A file read as record batches of text columns.
pub(super) struct BatchSource {
    file: PathBuf,
    format: InputFormat,
    batch_rows: usize,
    /// The CSV schema (every column text), or the Parquet file's own.
    file_schema: SchemaRef,
    /// Every column as text.
    pub schema: SchemaRef,
}

impl BatchSource {
    pub fn open(file: &Path, batch_rows: usize) -> Result<Self, String> {
        let format = InputFormat::detect(file).map_err(|e| e.to_string())?;
        let file_schema: SchemaRef = match format {
            InputFormat::Csv => {
                let columns = header_columns(file)?;
                if columns > MAX_COLUMNS {
                    return Err(format!(
                        "the header names {columns} columns; at most {MAX_COLUMNS} are imported"
                    ));
                }
                let source = File::open(file).map_err(|e| e.to_string())?;
                // The header only: the importer infers types itself, past missing values.
                let (schema, _) = Format::default()
                    .with_header(true)
                    .infer_schema(BufReader::new(LineLimit::new(source)), Some(0))
                    .map_err(|e| e.to_string())?;
                Arc::new(Schema::new(
                    schema
                        .fields()
                        .iter()
                        .map(|f| Field::new(f.name(), DataType::Utf8, true))
                        .collect::<Vec<_>>(),
                ))
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
        let schema = Arc::new(Schema::new(
            file_schema
                .fields()
                .iter()
                .map(|f| Field::new(f.name(), DataType::Utf8, true))
                .collect::<Vec<_>>(),
        ));
        Ok(BatchSource {
            file: file.to_path_buf(),
            format,
            batch_rows,
            file_schema,
            schema,
        })
    }

    /// The file from the start, batch by batch.
    pub fn batches(&self) -> Result<Batches, String> {
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

/// A file's header and its rows as text cells (`None` where the file has no value).
pub type TextRows = (Vec<String>, Vec<Vec<Option<String>>>);

/// Up to `limit` rows of a CSV or Parquet file as text cells (`None` where the file has no
/// value), with the header: what a model is asked about (`aic model predict`), read by the same
/// bounded reader as an import.
pub fn read_text_rows(file: &Path, limit: usize) -> Result<TextRows, String> {
    use arrow_array::cast::AsArray;
    use arrow_array::Array;
    let source = BatchSource::open(file, 4096)?;
    let header: Vec<String> = source.schema.fields().iter().map(|f| f.name().clone()).collect();
    let mut rows = Vec::new();
    for batch in source.batches()? {
        let batch = batch?;
        if rows.len() + batch.num_rows() > limit {
            return Err(format!("the file has more than {limit} rows"));
        }
        let columns: Vec<_> = batch.columns().iter().map(|c| c.as_string::<i32>()).collect();
        for r in 0..batch.num_rows() {
            rows.push(
                columns
                    .iter()
                    .map(|c| (!c.is_null(r)).then(|| c.value(r).to_string()))
                    .collect(),
            );
        }
    }
    Ok((header, rows))
}

pub(super) struct Batches {
    inner: Box<dyn Iterator<Item = Result<RecordBatch, String>> + Send>,
    schema: SchemaRef,
    read: Arc<AtomicU64>,
    rows: u64,
}

impl Batches {
    pub fn bytes_read(&self) -> u64 {
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
                if column.data_type() == &DataType::Utf8 {
                    Ok(column.clone())
                } else {
                    arrow_cast::cast(column, &DataType::Utf8)
                        .map_err(|e| format!("rows {}..: column {:?}: {e}", first + 1, field.name()))
                }
            })
            .collect();
        Some(columns.and_then(|columns| {
            RecordBatch::try_new(self.schema.clone(), columns).map_err(|e| e.to_string())
        }))
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

impl<R> LineLimit<R> {
    fn check_line(&self) -> std::io::Result<()> {
        if self.line > MAX_LINE_BYTES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a line is longer than {MAX_LINE_BYTES} bytes"),
            ));
        }
        Ok(())
    }
}

impl<R: std::io::Read> std::io::Read for LineLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        // Line ends found with memchr's vector search: a byte-by-byte loop here took a
        // twentieth of an import.
        let mut start = 0usize;
        for end in memchr::memchr_iter(b'\n', &buf[..n]) {
            self.line += end - start;
            self.check_line()?;
            self.line = 0;
            start = end + 1;
        }
        self.line += n - start;
        self.check_line()?;
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

/// How many decoded batches may wait for the importer: the parse of the next batches overlaps
/// the work on this one, and memory stays bounded.
const READ_AHEAD_BATCHES: usize = 2;

/// [`Batches`] decoded on a thread of their own, at most [`READ_AHEAD_BATCHES`] ahead of their
/// consumer, in the same order: an import's passes parse on one core and profile or encode on
/// another. Dropping it stops the thread and waits for it.
pub(super) struct ReadAhead {
    received: Option<std::sync::mpsc::Receiver<(Result<RecordBatch, String>, u64)>>,
    thread: Option<std::thread::JoinHandle<()>>,
    bytes_read: u64,
}

impl Batches {
    pub fn read_ahead(mut self) -> Result<ReadAhead, String> {
        let (send, received) = std::sync::mpsc::sync_channel(READ_AHEAD_BATCHES);
        let thread = std::thread::Builder::new()
            .name("aic-import-read".into())
            .spawn(move || {
                while let Some(batch) = self.next() {
                    let failed = batch.is_err();
                    // A consumer gone (it refused the file) or a read error ends the reading.
                    if send.send((batch, self.bytes_read())).is_err() || failed {
                        return;
                    }
                }
            })
            .map_err(|e| format!("starting the reading thread: {e}"))?;
        Ok(ReadAhead {
            received: Some(received),
            thread: Some(thread),
            bytes_read: 0,
        })
    }
}

impl ReadAhead {
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }
}

impl Iterator for ReadAhead {
    type Item = Result<RecordBatch, String>;

    fn next(&mut self) -> Option<Self::Item> {
        let (batch, bytes_read) = self.received.as_ref()?.recv().ok()?;
        self.bytes_read = bytes_read;
        Some(batch)
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        // Without a receiver the thread's next send fails and it returns.
        self.received.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
