//! What pass 1 parsed, kept for pass 2 so that it reads no CSV and parses no number again: each
//! profiling group writes its columns, batch by batch, to an unnamed-on-close temporary file
//! beside the input (Arrow IPC, one stream per batch). A batch's column is kept as the numbers
//! pass 1 parsed when every present value is one (missing values null), as its text otherwise.
//!
//! The spill is only an optimisation: when it cannot be written (no room, a read-only
//! directory) or a feature needs text that was kept as numbers, pass 2 parses the file again.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::Path;
use std::sync::Arc;

use arrow_array::{new_null_array, Array, ArrayRef, Float64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use tempfile::NamedTempFile;

use crate::encoding::{Feature, FeatureEncoding};

/// A batch's column as numbers, while every present value is one.
pub(super) struct NumberColumn {
    values: Vec<f64>,
    present: Vec<bool>,
    all_numbers: bool,
}

impl NumberColumn {
    pub fn with_capacity(rows: usize) -> Self {
        NumberColumn {
            values: Vec::with_capacity(rows),
            present: Vec::with_capacity(rows),
            all_numbers: true,
        }
    }

    pub fn push_missing(&mut self) {
        if self.all_numbers {
            self.values.push(0.0);
            self.present.push(false);
        }
    }

    pub fn push(&mut self, number: f64) {
        if self.all_numbers {
            self.values.push(number);
            self.present.push(true);
        }
    }

    /// A present value that is not a number: the column is kept as text.
    pub fn not_a_number(&mut self) {
        self.all_numbers = false;
        self.values = Vec::new();
        self.present = Vec::new();
    }

    /// The numbers, when every present value was one.
    pub fn finish(self) -> Option<Float64Array> {
        self.all_numbers
            .then(|| Float64Array::new(self.values.into(), Some(self.present.into())))
    }
}

/// One profiling group's spill file being written.
pub(super) struct SpillWriter {
    columns: Vec<usize>,
    names: Vec<String>,
    out: BufWriter<NamedTempFile>,
    batches: u64,
    /// Source columns of this group with a batch kept as numbers holding a present value.
    numbers_present: Vec<bool>,
}

impl SpillWriter {
    /// A spill file in `dir` for the group's `columns` (source index, name).
    pub fn create(dir: &Path, columns: Vec<(usize, String)>) -> std::io::Result<Self> {
        let file = tempfile::Builder::new()
            .prefix(".aic-import-")
            .suffix(".spill")
            .tempfile_in(dir)?;
        let out = BufWriter::with_capacity(1 << 20, file);
        let (columns, names): (Vec<usize>, Vec<String>) = columns.into_iter().unzip();
        Ok(SpillWriter {
            numbers_present: vec![false; columns.len()],
            columns,
            names,
            out,
            batches: 0,
        })
    }

    /// Writes one batch of the group's columns, in the order they were given.
    pub fn write(&mut self, arrays: Vec<ArrayRef>) -> Result<(), String> {
        let fields: Vec<Field> = self
            .names
            .iter()
            .zip(&arrays)
            .map(|(name, array)| Field::new(name, array.data_type().clone(), true))
            .collect();
        for (present, array) in self.numbers_present.iter_mut().zip(&arrays) {
            if array.data_type() == &DataType::Float64 && array.null_count() < array.len() {
                *present = true;
            }
        }
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).map_err(|e| e.to_string())?;
        let mut stream = arrow_ipc::writer::StreamWriter::try_new(&mut self.out, &batch.schema())
            .map_err(|e| e.to_string())?;
        stream.write(&batch).map_err(|e| e.to_string())?;
        stream.finish().map_err(|e| e.to_string())?;
        self.batches += 1;
        Ok(())
    }

    pub fn finish(self) -> Result<SpillPart, String> {
        let file = self.out.into_inner().map_err(|e| e.error().to_string())?;
        Ok(SpillPart {
            columns: self.columns,
            numbers_present: self.numbers_present,
            file,
            batches: self.batches,
        })
    }
}

/// One group's finished spill file.
#[derive(Debug)]
pub(super) struct SpillPart {
    columns: Vec<usize>,
    numbers_present: Vec<bool>,
    file: NamedTempFile,
    batches: u64,
}

/// Every group's spill: together, every profiled column of every batch. The files are removed
/// when it is dropped.
#[derive(Debug)]
pub struct Spill {
    parts: Vec<SpillPart>,
    /// Columns of the file.
    columns: usize,
}

impl Spill {
    pub(super) fn new(parts: Vec<SpillPart>, columns: usize) -> Option<Spill> {
        // Every group wrote every batch, or the spill is not whole.
        let batches = parts.first()?.batches;
        parts
            .iter()
            .all(|p| p.batches == batches)
            .then_some(Spill { parts, columns })
    }

    /// Whether pass 2 can encode `features` from the spill: every feature's column was
    /// spilled, and only a numeric feature's column was kept as numbers.
    pub(super) fn serves(&self, features: &[(usize, Feature)], label: usize) -> bool {
        let kept = |column: usize| {
            self.parts.iter().find_map(|part| {
                part.columns
                    .iter()
                    .position(|c| *c == column)
                    .map(|i| part.numbers_present[i])
            })
        };
        kept(label) == Some(false)
            && features.iter().all(|(column, feature)| match kept(*column) {
                None => false,
                Some(numbers_present) => {
                    !numbers_present || matches!(feature.encoding, FeatureEncoding::Numeric { .. })
                }
            })
    }

    /// The spilled batches in file order, each with every column of the file (columns not
    /// profiled are null).
    pub(super) fn batches(&self) -> std::io::Result<SpillBatches> {
        let readers = self
            .parts
            .iter()
            .map(|part| {
                Ok((
                    part.columns.clone(),
                    BufReader::with_capacity(1 << 20, part.file.reopen()?),
                ))
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(SpillBatches {
            readers,
            left: self.parts.first().map_or(0, |p| p.batches),
            columns: self.columns,
        })
    }
}

pub(super) struct SpillBatches {
    readers: Vec<(Vec<usize>, BufReader<File>)>,
    left: u64,
    columns: usize,
}

impl SpillBatches {
    fn read_batch(&mut self) -> Result<RecordBatch, String> {
        let mut columns: Vec<Option<(Field, ArrayRef)>> = vec![None; self.columns];
        let mut rows = 0;
        for (sources, reader) in &mut self.readers {
            let mut stream = arrow_ipc::reader::StreamReader::try_new(&mut *reader, None)
                .map_err(|e| format!("reading the spill: {e}"))?;
            let batch = stream
                .next()
                .ok_or("the spill ended early")?
                .map_err(|e| format!("reading the spill: {e}"))?;
            // Consume the stream's end, so the next batch's stream starts where it should.
            if stream.next().is_some() {
                return Err("a spill stream holds more than one batch".into());
            }
            rows = batch.num_rows();
            for (i, source) in sources.iter().enumerate() {
                columns[*source] = Some((batch.schema().field(i).clone(), batch.column(i).clone()));
            }
        }
        let (fields, arrays): (Vec<Field>, Vec<ArrayRef>) = columns
            .into_iter()
            .enumerate()
            .map(|(i, column)| {
                column.unwrap_or_else(|| {
                    (
                        Field::new(format!("unprofiled_{i}"), DataType::Utf8, true),
                        new_null_array(&DataType::Utf8, rows),
                    )
                })
            })
            .unzip();
        RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).map_err(|e| e.to_string())
    }
}

impl Iterator for SpillBatches {
    type Item = Result<RecordBatch, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        Some(self.read_batch())
    }
}
