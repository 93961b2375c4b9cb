//! The models a job can train, their parameters, and a batch of training data.

use crate::error::{check_finite, KernelError, Result};
use crate::tensor::Matrix;

/// Seeded pseudo-random draws in [-0.5, 0.5) (a 64-bit LCG's top 24 bits): the same seed gives
/// the same initial weights on every machine.
pub(crate) fn seeded_draws(seed: u64) -> impl FnMut() -> f32 {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }
}

/// A model's architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelSpec {
    /// logits = X·W + b
    SoftmaxRegression { features: usize, classes: usize },
    /// logits = relu(X·W1 + b1)·W2 + b2
    Mlp {
        features: usize,
        hidden: usize,
        classes: usize,
    },
    /// y = X·w + b, trained on mean squared error (a regression target).
    LinearRegression { features: usize },
}

/// The kernels' model for a shape named on the wire (a job's model asset).
impl From<aic_protocol::messages::ModelShape> for ModelSpec {
    fn from(shape: aic_protocol::messages::ModelShape) -> Self {
        use aic_protocol::messages::ModelShape;
        match shape {
            ModelShape::LinearRegression { features } => ModelSpec::LinearRegression {
                features: features as usize,
            },
            ModelShape::SoftmaxRegression { features, classes } => ModelSpec::SoftmaxRegression {
                features: features as usize,
                classes: classes as usize,
            },
            ModelShape::Mlp {
                features,
                hidden,
                classes,
            } => ModelSpec::Mlp {
                features: features as usize,
                hidden: hidden as usize,
                classes: classes as usize,
            },
        }
    }
}

impl ModelSpec {
    pub fn features(&self) -> usize {
        match *self {
            ModelSpec::SoftmaxRegression { features, .. }
            | ModelSpec::Mlp { features, .. }
            | ModelSpec::LinearRegression { features } => features,
        }
    }

    /// Classes of a classifier; a regression has one output.
    pub fn classes(&self) -> usize {
        match *self {
            ModelSpec::SoftmaxRegression { classes, .. } | ModelSpec::Mlp { classes, .. } => classes,
            ModelSpec::LinearRegression { .. } => 1,
        }
    }

    /// Whether the model regresses a number (trained on mean squared error) rather than
    /// classifying.
    pub fn is_regression(&self) -> bool {
        matches!(self, ModelSpec::LinearRegression { .. })
    }

    /// (rows, cols) of each parameter tensor in order: W, b (and W2, b2 for the MLP).
    pub fn shapes(&self) -> Vec<(usize, usize)> {
        match *self {
            ModelSpec::SoftmaxRegression { features, classes } => vec![(features, classes), (1, classes)],
            ModelSpec::LinearRegression { features } => vec![(features, 1), (1, 1)],
            ModelSpec::Mlp {
                features,
                hidden,
                classes,
            } => {
                vec![(features, hidden), (1, hidden), (hidden, classes), (1, classes)]
            }
        }
    }

    /// Parameters with small deterministic pseudo-random weights and zero biases.
    pub fn init(&self, seed: u64) -> Weights {
        let mut next = seeded_draws(seed);
        let tensors = self
            .shapes()
            .into_iter()
            .map(|(rows, cols)| {
                let scale = if rows == 1 {
                    0.0
                } else {
                    (2.0 / rows as f32).sqrt()
                };
                Matrix {
                    rows,
                    cols,
                    data: (0..rows * cols).map(|_| next() * scale).collect(),
                }
            })
            .collect();
        Weights { tensors }
    }

    /// Checks that `weights` have this model's shapes and finite values.
    pub fn check_weights(&self, weights: &Weights) -> Result<()> {
        let expected = self.shapes();
        let got: Vec<(usize, usize)> = weights.tensors.iter().map(|t| (t.rows, t.cols)).collect();
        if expected != got {
            return Err(KernelError::Shape {
                op: "weights",
                detail: format!("model {self:?} needs {expected:?}, got {got:?}"),
            });
        }
        for (i, tensor) in weights.tensors.iter().enumerate() {
            check_finite(&format!("weight tensor {i}"), &tensor.data)?;
        }
        Ok(())
    }

    /// Checks that a batch fits this model.
    pub fn check_batch(&self, batch: &Batch) -> Result<()> {
        if batch.x.cols != self.features() {
            return Err(KernelError::Batch(format!(
                "{} feature columns, the model takes {}",
                batch.x.cols,
                self.features()
            )));
        }
        if self.is_regression() {
            if batch.targets.len() != batch.x.rows || batch.x.rows == 0 {
                return Err(KernelError::Batch(format!(
                    "{} rows of features and {} targets",
                    batch.x.rows,
                    batch.targets.len()
                )));
            }
            check_finite("batch targets", &batch.targets)?;
            return check_finite("batch features", &batch.x.data);
        }
        if batch.labels.len() != batch.x.rows || batch.x.rows == 0 {
            return Err(KernelError::Batch(format!(
                "{} rows of features and {} labels",
                batch.x.rows,
                batch.labels.len()
            )));
        }
        if let Some((row, &label)) = batch
            .labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= self.classes())
        {
            return Err(KernelError::Label {
                row,
                label,
                classes: self.classes(),
            });
        }
        check_finite("batch features", &batch.x.data)
    }
}

/// A model's parameters (or their gradients), in [`ModelSpec::shapes`] order.
#[derive(Clone, Debug, PartialEq)]
pub struct Weights {
    pub tensors: Vec<Matrix>,
}

impl Weights {
    /// Flat parameters cut into tensors of `shapes` (rows, cols), in order.
    pub fn from_flat(shapes: &[(usize, usize)], flat: &[f32]) -> crate::Result<Weights> {
        let needed: usize = shapes.iter().map(|(r, c)| r * c).sum();
        if flat.len() != needed {
            return Err(crate::KernelError::Shape {
                op: "weights",
                detail: format!("the model has {needed} parameters, got {}", flat.len()),
            });
        }
        let mut offset = 0;
        let tensors = shapes
            .iter()
            .map(|&(rows, cols)| {
                let data = flat[offset..offset + rows * cols].to_vec();
                offset += rows * cols;
                Matrix { rows, cols, data }
            })
            .collect();
        Ok(Weights { tensors })
    }

    /// All values, tensor after tensor.
    pub fn flat(&self) -> Vec<f32> {
        self.tensors.iter().flat_map(|t| t.data.iter().copied()).collect()
    }
}

/// Features (rows × features) and, per row, a class label (classification) or a target value
/// (regression); the other is empty.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub x: Matrix,
    pub labels: Vec<u32>,
    pub targets: Vec<f32>,
}
