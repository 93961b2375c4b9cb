//! The step API a compute node calls with a decoded shard: Arrow in, loss and gradients (or loss
//! and accuracy) out, on whichever backend it opened.

use arrow_array::RecordBatch;

use crate::backend::Backend;
use crate::batch::from_record_batch;
use crate::error::Result;
use crate::model::{ModelSpec, Weights};

/// Bytes of activations (and their gradients) one pass may hold at once: a batch larger than
/// that is cut into passes of fewer rows, so a task's memory follows the model, not the shard.
pub const ACTIVATION_BUDGET_BYTES: u64 = 256 << 20;

/// Activation bytes one row costs: the widest layer's pre-activations, activations and their
/// gradients, in `f32`.
pub fn activation_bytes_per_row(model: &ModelSpec) -> u64 {
    let widest = match *model {
        ModelSpec::Mlp {
            features,
            hidden,
            classes,
        } => features.max(hidden).max(classes),
        other => other.features().max(other.classes()),
    };
    widest as u64 * 4 * 4
}

/// The most rows one pass of `model` takes.
pub fn rows_per_pass(model: &ModelSpec) -> usize {
    (ACTIVATION_BUDGET_BYTES / activation_bytes_per_row(model).max(1)).max(1) as usize
}

/// `batch` cut into passes of at most [`rows_per_pass`] rows (zero-copy slices). A caller that
/// weights each pass's mean by its rows gets the whole batch's mean.
pub fn passes<'a>(model: &ModelSpec, batch: &'a RecordBatch) -> impl Iterator<Item = RecordBatch> + 'a {
    passes_of(rows_per_pass(model), batch)
}

/// `batch` cut into passes of at most `rows` rows (zero-copy slices).
pub fn passes_of(rows: usize, batch: &RecordBatch) -> impl Iterator<Item = RecordBatch> + '_ {
    let rows = rows.max(1);
    let total = batch.num_rows();
    (0..total)
        .step_by(rows)
        .map(move |offset| batch.slice(offset, rows.min(total - offset)))
}

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

/// Loss and gradients of any trainable model on the rows of `shard` (`dropout_seed` draws a
/// graph's dropout masks).
pub fn train_model(
    backend: &mut dyn Backend,
    model: &crate::Trainable,
    weights: &Weights,
    shard: &RecordBatch,
    label: &str,
    dropout_seed: u64,
) -> Result<(f32, Weights)> {
    model.train_step(backend, weights, &from_record_batch(shard, label)?, dropout_seed)
}

/// Loss and accuracy (or R²) of any trainable model on the rows of `shard`.
pub fn evaluate_model(
    backend: &mut dyn Backend,
    model: &crate::Trainable,
    weights: &Weights,
    shard: &RecordBatch,
    label: &str,
) -> Result<(f32, f32)> {
    model.evaluate(backend, weights, &from_record_batch(shard, label)?)
}
