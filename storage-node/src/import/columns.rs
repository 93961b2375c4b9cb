//! Pass 2's encoding of one batch, column by column: every feature encodes its whole column
//! into its own input columns, then the rows a missing value drops and the first cell that
//! cannot be encoded are settled in file order — exactly as reading the batch row by row,
//! feature by feature, would settle them. Batches are independent, so the import encodes
//! several at once (see [`super::ordered`]).

use arrow_array::cast::AsArray;
use arrow_array::types::Float64Type;
use arrow_array::{Array, Float64Array, RecordBatch, StringArray};
use arrow_schema::DataType;

use super::shards::Label;
use super::{is_test_row, Analysis, ImportError};
use crate::encoding::{
    is_missing, parse_number, trimmed, CellError, Feature, FeatureEncoding, MissingPolicy,
};

/// A feature's column of the batch.
pub(super) struct FeatureColumn<'a> {
    pub feature: &'a Feature,
    pub cells: Cells<'a>,
}

/// A column's cells: their text, or the numbers pass 1 parsed from it (missing values null; see
/// [`super::spill`]).
#[derive(Clone, Copy)]
pub(super) enum Cells<'a> {
    Text(&'a StringArray),
    Numbers(&'a Float64Array),
}

/// What a feature's pass over its column found besides the encoded values.
#[derive(Default)]
struct Outcome {
    /// Rows whose cell is missing under the drop-row policy.
    drops: Vec<u32>,
    /// Rows whose cell cannot be encoded, with why; these count only where no earlier cause
    /// dropped the row.
    errors: Vec<(u32, CellError)>,
}

/// The first cell of a batch that cannot be encoded, by row then feature.
#[derive(Debug)]
pub(super) struct BadCell {
    /// The row within the batch.
    pub row: usize,
    /// The feature's position among the features.
    pub feature: usize,
    pub error: CellError,
}

/// A batch's input columns, and the rows a missing value drops.
pub(super) struct EncodedBatch {
    /// Input column `c`'s values, one per row of the batch (rows that end up dropped hold
    /// whatever their cells encoded to).
    pub columns: Vec<Vec<f32>>,
    /// Rows left out for a missing value (the label's or a feature's).
    pub dropped: Vec<bool>,
}

impl EncodedBatch {
    /// Encodes every feature column; `label_missing[r]` drops row `r` before any feature is
    /// looked at. Answers the first bad cell of a row that is not dropped before it.
    pub fn encode(
        features: &[FeatureColumn<'_>],
        label_missing: &[bool],
        markers: &[String],
    ) -> Result<Self, BadCell> {
        let width: usize = features.iter().map(|f| f.feature.width()).sum();
        let mut columns = vec![vec![0f32; label_missing.len()]; width];
        // Each feature encodes into its own slice of the input columns.
        let mut outcomes = Vec::with_capacity(features.len());
        let mut rest = columns.as_mut_slice();
        for feature in features {
            let (mine, after) = rest.split_at_mut(feature.feature.width());
            outcomes.push(encode_column(feature, mine, markers));
            rest = after;
        }

        let mut dropped = label_missing.to_vec();
        let mut first_bad: Option<BadCell> = None;
        for (index, outcome) in outcomes.into_iter().enumerate() {
            // A row dropped by the label or an earlier feature is never encoded row by row, so
            // its error does not count; a later feature's drop does not excuse it.
            for (row, error) in outcome.errors {
                let row = row as usize;
                if !dropped[row] && first_bad.as_ref().is_none_or(|bad| row < bad.row) {
                    first_bad = Some(BadCell {
                        row,
                        feature: index,
                        error,
                    });
                }
            }
            for row in outcome.drops {
                dropped[row as usize] = true;
            }
        }
        match first_bad {
            Some(bad) => Err(bad),
            None => Ok(EncodedBatch { columns, dropped }),
        }
    }
}

/// Encodes a batch on its own, as pass 1 decided.
pub(super) struct BatchEncoder {
    pub file: String,
    pub analysis: Analysis,
}

/// One batch encoded: the input columns, and per split (train, test) the rows kept, in file
/// order, with their labels.
pub(super) struct EncodedRows {
    pub columns: Vec<Vec<f32>>,
    pub rows: [Vec<u32>; 2],
    pub labels: [Vec<Label>; 2],
    /// Rows left out for a missing value.
    pub dropped: u64,
}

impl BatchEncoder {
    /// Encodes `batch`, whose first row is data row `first_row` of the file (0-based).
    pub fn encode(&self, batch: &RecordBatch, first_row: u64) -> Result<EncodedRows, ImportError> {
        let analysis = &self.analysis;
        let markers = &analysis.null_markers;
        let columns = analysis
            .features
            .iter()
            .map(|(column, feature)| {
                let array = batch.column(*column);
                let cells = match array.data_type() {
                    DataType::Float64 => {
                        // Pass 1 spills numbers only where the text is not needed.
                        let numeric = matches!(feature.encoding, FeatureEncoding::Numeric { .. });
                        if !numeric && array.null_count() < array.len() {
                            return Err(ImportError::Shard(format!(
                                "column {:?} was kept as numbers but is not numeric",
                                feature.name
                            )));
                        }
                        Cells::Numbers(array.as_primitive::<Float64Type>())
                    }
                    _ => Cells::Text(array.as_string::<i32>()),
                };
                Ok(FeatureColumn { feature, cells })
            })
            .collect::<Result<Vec<_>, ImportError>>()?;
        let raw_labels = batch.column(analysis.label_index).as_string::<i32>();
        // Pass 1 refused missing labels unless the label's policy drops their rows.
        let label_missing: Vec<bool> = (0..batch.num_rows())
            .map(|r| is_missing((!raw_labels.is_null(r)).then(|| raw_labels.value(r)), markers))
            .collect();
        let encoded = EncodedBatch::encode(&columns, &label_missing, markers).map_err(|bad| {
            ImportError::Unencodable {
                file: self.file.clone(),
                column: columns[bad.feature].feature.name.clone(),
                reason: format!("row {}: {}", first_row + bad.row as u64 + 1, bad.error),
            }
        })?;
        let mut rows = [Vec::new(), Vec::new()];
        let mut labels = [Vec::new(), Vec::new()];
        let mut dropped = 0u64;
        for (r, dropped_row) in encoded.dropped.iter().enumerate() {
            if *dropped_row {
                dropped += 1;
                continue;
            }
            let raw_label = trimmed(raw_labels.value(r));
            let label = match &analysis.target {
                // Standardised like the features, so training is well scaled whatever the
                // target's units; a prediction is mapped back with the manifest's mean and std.
                Some(target) => Label::Value(
                    ((parse_number(raw_label).expect("checked in pass 1") - target.mean) / target.std) as f32,
                ),
                None => Label::Class(
                    analysis
                        .classes
                        .iter()
                        .position(|c| c == raw_label)
                        .expect("seen in pass 1") as u32,
                ),
            };
            let row = first_row + r as u64;
            let split = usize::from(is_test_row(
                analysis.options.seed,
                row,
                analysis.options.test_fraction,
            ));
            rows[split].push(r as u32);
            labels[split].push(label);
        }
        Ok(EncodedRows {
            columns: encoded.columns,
            rows,
            labels,
            dropped,
        })
    }
}

/// One feature's pass over its column: values into `out`, drops and bad cells noted.
fn encode_column(column: &FeatureColumn<'_>, out: &mut [Vec<f32>], markers: &[String]) -> Outcome {
    let feature = column.feature;
    let mut outcome = Outcome::default();
    let mut span = vec![0f32; feature.width()];
    let mut settle = |row: usize, encoded: Result<(), CellError>, span: &[f32]| match encoded {
        Ok(()) => {
            for (values, value) in out.iter_mut().zip(span) {
                values[row] = *value;
            }
        }
        Err(CellError::Missing) if feature.missing == MissingPolicy::DropRow => {
            outcome.drops.push(row as u32);
        }
        Err(error) => outcome.errors.push((row as u32, error)),
    };
    match column.cells {
        Cells::Text(text) => {
            for row in 0..text.len() {
                let raw = (!text.is_null(row)).then(|| text.value(row));
                let encoded = feature.encode_into(raw.unwrap_or(""), is_missing(raw, markers), &mut span);
                settle(row, encoded, &span);
            }
        }
        Cells::Numbers(numbers) => {
            for row in 0..numbers.len() {
                let encoded = match (&feature.encoding, numbers.is_null(row)) {
                    (_, true) => feature.encode_into("", true, &mut span),
                    // What `encode_into` computes from the text, from the number pass 1 parsed
                    // out of the same text.
                    (FeatureEncoding::Numeric { mean, std }, false) => {
                        span[0] = ((numbers.value(row) - mean) / std) as f32;
                        Ok(())
                    }
                    // Not spilled so (see `BatchEncoder::encode`); as text, were it ever.
                    (_, false) => feature.encode_into(&numbers.value(row).to_string(), false, &mut span),
                };
                settle(row, encoded, &span);
            }
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(name: &str, missing: MissingPolicy) -> Feature {
        Feature {
            name: name.into(),
            encoding: FeatureEncoding::Numeric { mean: 1.0, std: 2.0 },
            missing,
            fill: None,
        }
    }

    fn categorical(name: &str) -> Feature {
        Feature {
            name: name.into(),
            encoding: FeatureEncoding::Categorical {
                categories: vec!["a".into(), "b".into()],
            },
            missing: MissingPolicy::Level,
            fill: None,
        }
    }

    /// The kept rows' values and every row's dropped flag, or the first bad cell's
    /// (row, feature).
    type Settled = Result<(Vec<Vec<f32>>, Vec<bool>), (usize, usize)>;

    /// What reading the batch row by row, feature by feature, gives: the values of the rows
    /// kept, the rows dropped, or the first bad cell as (row, feature).
    fn row_by_row(features: &[FeatureColumn<'_>], label_missing: &[bool], markers: &[String]) -> Settled {
        let mut kept = Vec::new();
        let mut dropped = Vec::new();
        'rows: for (row, label_missing) in label_missing.iter().enumerate() {
            if *label_missing {
                dropped.push(true);
                continue;
            }
            let mut encoded = Vec::new();
            for (index, column) in features.iter().enumerate() {
                let Cells::Text(cells) = column.cells else {
                    unreachable!("the reference reads text")
                };
                let raw = (!cells.is_null(row)).then(|| cells.value(row));
                let mut span = vec![0f32; column.feature.width()];
                match column
                    .feature
                    .encode_into(raw.unwrap_or(""), is_missing(raw, markers), &mut span)
                {
                    Ok(()) => encoded.extend(span),
                    Err(CellError::Missing) if column.feature.missing == MissingPolicy::DropRow => {
                        dropped.push(true);
                        continue 'rows;
                    }
                    Err(_) => return Err((row, index)),
                }
            }
            dropped.push(false);
            kept.push(encoded);
        }
        Ok((kept, dropped))
    }

    fn columnwise(features: &[FeatureColumn<'_>], label_missing: &[bool], markers: &[String]) -> Settled {
        let batch =
            EncodedBatch::encode(features, label_missing, markers).map_err(|bad| (bad.row, bad.feature))?;
        let kept = (0..label_missing.len())
            .filter(|r| !batch.dropped[*r])
            .map(|r| batch.columns.iter().map(|c| c[r]).collect())
            .collect();
        Ok((kept, batch.dropped))
    }

    #[test]
    fn column_by_column_settles_drops_and_bad_cells_as_row_by_row_does() {
        let markers = vec!["NA".to_string()];
        let features = [
            numeric("drop", MissingPolicy::DropRow),
            numeric("refuse", MissingPolicy::Refuse),
            numeric("late_drop", MissingPolicy::DropRow),
            categorical("colour"),
        ];
        // Per case: whether each row's label is missing, then each feature's column; and what
        // row by row gives, as the rows dropped or the first bad cell's (row, feature).
        type Case = (
            Vec<bool>,
            [Vec<Option<&'static str>>; 4],
            Result<Vec<bool>, (usize, usize)>,
        );
        let ok = Some("1");
        let cases: Vec<Case> = vec![
            // Every row encodes; one category unseen, one missing (its own level).
            (
                vec![false; 3],
                [
                    vec![ok, Some("2"), Some("3")],
                    vec![Some("0.5"), Some("-1"), Some(" 7 ")],
                    vec![ok, ok, ok],
                    vec![Some("a"), Some("zzz"), None],
                ],
                Ok(vec![false; 3]),
            ),
            // A bad cell in a row the label drops does not count.
            (
                vec![true, false],
                [
                    vec![ok, ok],
                    vec![Some("x"), ok],
                    vec![ok, ok],
                    vec![Some("a"), Some("b")],
                ],
                Ok(vec![true, false]),
            ),
            // ...nor in a row an earlier feature drops.
            (
                vec![false, false],
                [
                    vec![Some("NA"), ok],
                    vec![Some("x"), ok],
                    vec![ok, ok],
                    vec![Some("a"), Some("b")],
                ],
                Ok(vec![true, false]),
            ),
            // A later feature's drop does not excuse an earlier bad cell.
            (
                vec![false, false],
                [
                    vec![ok, ok],
                    vec![ok, Some("x")],
                    vec![ok, None],
                    vec![Some("a"), Some("b")],
                ],
                Err((1, 1)),
            ),
            // The first bad row wins over an earlier feature's later bad row.
            (
                vec![false, false, false],
                [
                    vec![ok, ok, Some("oops")],
                    vec![ok, Some("no"), ok],
                    vec![ok, ok, ok],
                    vec![Some("a"), Some("b"), Some("a")],
                ],
                Err((1, 1)),
            ),
            // Drops by the label and by two features, in different rows.
            (
                vec![false, true, false, false],
                [
                    vec![None, ok, ok, ok],
                    vec![ok, ok, ok, ok],
                    vec![ok, ok, Some("na"), ok],
                    vec![Some("b"); 4],
                ],
                Ok(vec![true, true, true, false]),
            ),
        ];
        for (case, (label_missing, cells, expected)) in cases.into_iter().enumerate() {
            let arrays: Vec<StringArray> = cells.into_iter().map(StringArray::from).collect();
            let columns: Vec<FeatureColumn<'_>> = features
                .iter()
                .zip(&arrays)
                .map(|(feature, cells)| FeatureColumn {
                    feature,
                    cells: Cells::Text(cells),
                })
                .collect();
            let reference = row_by_row(&columns, &label_missing, &markers);
            assert_eq!(
                reference
                    .as_ref()
                    .map(|(_, dropped)| dropped.clone())
                    .map_err(|e| *e),
                expected,
                "case {case}: the reference"
            );
            assert_eq!(
                columnwise(&columns, &label_missing, &markers),
                reference,
                "case {case}"
            );
        }
    }
}
