//! What a task trains, behind one interface: one of the fixed models (the backend's own fused
//! kernels: Vulkan or CPU) or a layer graph ([`crate::graph`]: its matrix multiplies on the
//! backend, every other layer forward and backward on the host).

use aic_protocol::messages::TaskModel;
use aic_protocol::model_graph::{self, Loss};

use crate::backend::Backend;
use crate::error::{KernelError, Result};
use crate::graph::GraphModel;
use crate::model::{Batch, ModelSpec, Weights};
use crate::step::ACTIVATION_BUDGET_BYTES;

#[derive(Clone, Debug)]
pub enum Trainable {
    Fixed(ModelSpec),
    Graph(Box<GraphModel>),
}

impl Trainable {
    /// The model a task names: a fixed shape, or a description validated again here.
    pub fn of(model: &TaskModel) -> Result<Self> {
        match model {
            TaskModel::Shape(shape) => Ok(Trainable::Fixed(ModelSpec::from(*shape))),
            TaskModel::Graph(text) => {
                let graph = model_graph::parse(text).map_err(|e| KernelError::Shape {
                    op: "model description",
                    detail: e.to_string(),
                })?;
                Ok(Trainable::Graph(Box::new(GraphModel::new(&graph)?)))
            }
        }
    }

    /// (rows, cols) of each parameter tensor, in the flat order updates travel in.
    pub fn shapes(&self) -> Vec<(usize, usize)> {
        match self {
            Trainable::Fixed(spec) => spec.shapes(),
            Trainable::Graph(graph) => graph.shapes(),
        }
    }

    pub fn parameters(&self) -> usize {
        self.shapes().iter().map(|(r, c)| r * c).sum()
    }

    pub fn init(&self, seed: u64) -> Weights {
        match self {
            Trainable::Fixed(spec) => spec.init(seed),
            Trainable::Graph(graph) => graph.init(seed),
        }
    }

    pub fn is_regression(&self) -> bool {
        match self {
            Trainable::Fixed(spec) => spec.is_regression(),
            Trainable::Graph(graph) => graph.loss() == Loss::MeanSquaredError,
        }
    }

    pub fn check_weights(&self, weights: &Weights) -> Result<()> {
        match self {
            Trainable::Fixed(spec) => spec.check_weights(weights),
            Trainable::Graph(graph) => graph.check_weights(weights),
        }
    }

    /// Activation bytes one row costs in a pass (the widest layer's values, a few copies).
    pub fn activation_bytes_per_row(&self) -> u64 {
        match self {
            Trainable::Fixed(spec) => crate::step::activation_bytes_per_row(spec),
            Trainable::Graph(graph) => graph.widest() as u64 * 4 * 4,
        }
    }

    /// The most rows one pass takes: what fits [`ACTIVATION_BUDGET_BYTES`].
    pub fn rows_per_pass(&self) -> usize {
        (ACTIVATION_BUDGET_BYTES / self.activation_bytes_per_row().max(1)).max(1) as usize
    }

    /// Loss and gradients on `batch`. `dropout_seed` draws a graph's dropout masks.
    pub fn train_step(
        &self,
        backend: &mut dyn Backend,
        weights: &Weights,
        batch: &Batch,
        dropout_seed: u64,
    ) -> Result<(f32, Weights)> {
        match self {
            Trainable::Fixed(spec) => backend.train_step(spec, weights, batch),
            Trainable::Graph(graph) => graph.train_step_on(backend, weights, batch, dropout_seed),
        }
    }

    /// Mean loss, and accuracy (classifiers) or R² (regression).
    pub fn evaluate(
        &self,
        backend: &mut dyn Backend,
        weights: &Weights,
        batch: &Batch,
    ) -> Result<(f32, f32)> {
        match self {
            Trainable::Fixed(spec) => backend.evaluate(spec, weights, batch),
            Trainable::Graph(graph) => graph.evaluate_on(backend, weights, batch),
        }
    }
}
