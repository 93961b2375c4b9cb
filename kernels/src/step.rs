//! The step API a compute node calls with a decoded shard: Arrow in, loss and gradients (or loss
//! and accuracy) out, on whichever backend it opened.

use arrow_array::RecordBatch;

use crate::backend::Backend;
use crate::batch::from_record_batch;
use crate::error::Result;
use crate::model::{ModelSpec, Weights};

/// Loss and gradients of `model` at `weights` on the rows of `shard`; `label` names the label
/// column, every other column is a feature.
pub fn train_step(
    backend: &mut dyn Backend,
    model: &ModelSpec,
    weights: &Weights,
    shard: &RecordBatch,
    label: &str,
) -> Result<(f32, Weights)> {
    backend.train_step(model, weights, &from_record_batch(shard, label)?)
}

/// Loss and accuracy of `model` at `weights` on the rows of `shard`.
pub fn evaluate(
    backend: &mut dyn Backend,
    model: &ModelSpec,
    weights: &Weights,
    shard: &RecordBatch,
    label: &str,
) -> Result<(f32, f32)> {
    backend.evaluate(model, weights, &from_record_batch(shard, label)?)
}
