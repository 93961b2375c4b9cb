//! Turning an Arrow record batch (a decoded shard) into a training [`Batch`]: every column but
//! the label is a feature (Float32 or Float64), the label column holds class indices (or, as
//! Float32, a regression target's values).

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int32Type, Int64Type, UInt32Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;

use crate::error::{KernelError, Result};
use crate::model::Batch;
use crate::tensor::Matrix;

/// Reads features and labels from `batch`; `label` names the label column. Nulls, non-finite
/// features and negative labels are errors that name the column and row.
pub fn from_record_batch(batch: &RecordBatch, label: &str) -> Result<Batch> {
    let schema = batch.schema();
    let label_index = schema
        .index_of(label)
        .map_err(|_| KernelError::Batch(format!("no label column {label:?}")))?;
    let rows = batch.num_rows();
    let feature_columns: Vec<usize> = (0..batch.num_columns()).filter(|&i| i != label_index).collect();
    let features = feature_columns.len();
    let mut x = vec![0f32; rows * features];
    for (f, &column_index) in feature_columns.iter().enumerate() {
        let column = batch.column(column_index);
        let name = schema.field(column_index).name();
        if column.null_count() > 0 {
            return Err(KernelError::Batch(format!("feature column {name:?} has nulls")));
        }
        let values: Vec<f32> = match column.data_type() {
            DataType::Float32 => column.as_primitive::<Float32Type>().values().to_vec(),
            DataType::Float64 => column
                .as_primitive::<Float64Type>()
                .values()
                .iter()
                .map(|&v| v as f32)
                .collect(),
            other => {
                return Err(KernelError::Batch(format!(
                    "feature column {name:?} is {other}, not a float"
                )))
            }
        };
        for (r, value) in values.into_iter().enumerate() {
            if !value.is_finite() {
                return Err(KernelError::NonFinite {
                    what: format!("feature column {name:?}"),
                    index: r,
                    value,
                });
            }
            x[r * features + f] = value;
        }
    }
    let column = batch.column(label_index);
    if column.null_count() > 0 {
        return Err(KernelError::Batch(format!("label column {label:?} has nulls")));
    }
    // A float label is a regression target.
    if column.data_type() == &DataType::Float32 {
        return Ok(Batch {
            x: Matrix::new(rows, features, x)?,
            labels: Vec::new(),
            targets: column.as_primitive::<Float32Type>().values().to_vec(),
        });
    }
    let labels: Vec<i64> = match column.data_type() {
        DataType::Int32 => column
            .as_primitive::<Int32Type>()
            .values()
            .iter()
            .map(|&v| i64::from(v))
            .collect(),
        DataType::Int64 => column.as_primitive::<Int64Type>().values().to_vec(),
        DataType::UInt32 => column
            .as_primitive::<UInt32Type>()
            .values()
            .iter()
            .map(|&v| i64::from(v))
            .collect(),
        other => {
            return Err(KernelError::Batch(format!(
                "label column {label:?} is {other}, not an integer"
            )))
        }
    };
    let labels = labels
        .into_iter()
        .enumerate()
        .map(|(row, v)| {
            u32::try_from(v)
                .map_err(|_| KernelError::Batch(format!("label {v} at row {row} is not a class index")))
        })
        .collect::<Result<Vec<u32>>>()?;
    Ok(Batch {
        x: Matrix::new(rows, features, x)?,
        labels,
        targets: Vec::new(),
    })
}
