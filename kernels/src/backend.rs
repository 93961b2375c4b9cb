//! The `Backend` trait every executor implements, the training step composed from its ops, and
//! the choice between the Vulkan and CPU backends.

use crate::error::{check_finite, KernelError, Result};
use crate::graph::GraphModel;
use crate::host_ops::HostOps;
use crate::model::{Batch, ModelSpec, Weights};
use crate::tensor::Matrix;

/// Adam's hyper-parameters and the step count.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamParams {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub epsilon: f32,
    /// The step being taken, from 1.
    pub step: u32,
}

impl AdamParams {
    /// lr·√(1−β2^t)/(1−β1^t) and ε·√(1−β2^t): Adam's bias corrections folded into two scalars.
    pub fn corrected(&self) -> (f32, f32) {
        let t = self.step.max(1) as i32;
        let c1 = 1.0 - self.beta1.powi(t);
        let c2 = (1.0 - self.beta2.powi(t)).sqrt();
        (self.lr * c2 / c1, self.epsilon * c2)
    }
}

/// The ops of training, on host matrices. Each backend runs them on its own hardware.
pub trait Backend {
    /// Which backend and device, for logs and registrations.
    fn describe(&self) -> String;

    /// Bytes of memory the device computes in, where the backend knows (the largest
    /// device-local heap of a GPU); `None` for the CPU, whose memory the node reports itself.
    fn device_memory_bytes(&self) -> Option<u64> {
        None
    }

    /// Cores the host-side loops of a layer graph may use alongside this backend (im2col and
    /// its inverse): the CPU backend's own count; one for a device that computes elsewhere.
    fn host_threads(&self) -> usize {
        1
    }

    /// op(a)·op(b), where op transposes when asked.
    fn matmul(&mut self, a: &Matrix, b: &Matrix, transpose_a: bool, transpose_b: bool) -> Result<Matrix>;
    /// x + bias (per column), then ReLU when `relu`.
    fn bias_act(&mut self, x: &Matrix, bias: &[f32], relu: bool) -> Result<Matrix>;
    /// The gradient through a ReLU, given its output.
    fn relu_backward(&mut self, activation: &Matrix, grad: &Matrix) -> Result<Matrix>;
    /// Per-row cross-entropy losses of softmax(logits), and the gradient of their mean.
    fn softmax_xent(&mut self, logits: &Matrix, labels: &[u32]) -> Result<(Matrix, Vec<f32>)>;
    /// Σ over rows, per column.
    fn column_sum(&mut self, x: &Matrix) -> Result<Vec<f32>>;
    /// Σ x, or Σ x² when `square`.
    fn sum(&mut self, x: &[f32], square: bool) -> Result<f32>;
    /// w ← w − lr·g
    fn sgd(&mut self, w: &mut [f32], g: &[f32], lr: f32) -> Result<()>;
    /// One Adam update of `w` with moments `m`, `v`.
    fn adam(
        &mut self,
        w: &mut [f32],
        g: &[f32],
        m: &mut [f32],
        v: &mut [f32],
        params: AdamParams,
    ) -> Result<()>;

    fn mean(&mut self, x: &[f32]) -> Result<f32> {
        if x.is_empty() {
            return Err(KernelError::Shape {
                op: "mean",
                detail: "the mean of nothing".into(),
            });
        }
        Ok(self.sum(x, false)? / x.len() as f32)
    }

    fn l2_norm(&mut self, x: &[f32]) -> Result<f32> {
        Ok(self.sum(x, true)?.sqrt())
    }

    /// Loss and gradients of one training step.
    fn train_step(&mut self, model: &ModelSpec, weights: &Weights, batch: &Batch) -> Result<(f32, Weights)> {
        train_step_by_ops(self, model, weights, batch)
    }

    /// Loss and accuracy of the weights on a batch.
    fn evaluate(&mut self, model: &ModelSpec, weights: &Weights, batch: &Batch) -> Result<(f32, f32)> {
        evaluate_by_ops(self, model, weights, batch)
    }

    /// The mean loss and every parameter's gradient of a layer graph's step (weights and batch
    /// checked by the caller): by default the host loops with this backend's matrix multiplies.
    fn graph_train_step(
        &mut self,
        graph: &GraphModel,
        weights: &Weights,
        batch: &Batch,
        dropout_seed: u64,
    ) -> Result<(f32, Weights)> {
        let (loss_sum, tensors) = graph.step_with(&mut HostOps::new(self), weights, batch, dropout_seed)?;
        Ok((loss_sum.data[0] / batch.x.rows.max(1) as f32, Weights { tensors }))
    }

    /// A layer graph's outputs for the rows of `x`, without training (weights checked by the
    /// caller).
    fn graph_outputs(&mut self, graph: &GraphModel, weights: &Weights, x: &Matrix) -> Result<Matrix> {
        graph.outputs_with(&mut HostOps::new(self), weights, x)
    }
}

/// The forward pass as ops: logits, and the hidden activation for the MLP.
fn forward<B: Backend + ?Sized>(
    b: &mut B,
    model: &ModelSpec,
    w: &Weights,
    x: &Matrix,
) -> Result<(Matrix, Option<Matrix>)> {
    let t = &w.tensors;
    match model {
        ModelSpec::SoftmaxRegression { .. } | ModelSpec::LinearRegression { .. } => {
            let z = b.matmul(x, &t[0], false, false)?;
            Ok((b.bias_act(&z, &t[1].data, false)?, None))
        }
        ModelSpec::Mlp { .. } => {
            let z1 = b.matmul(x, &t[0], false, false)?;
            let h = b.bias_act(&z1, &t[1].data, true)?;
            let z2 = b.matmul(&h, &t[2], false, false)?;
            Ok((b.bias_act(&z2, &t[3].data, false)?, Some(h)))
        }
    }
}

/// The training step composed from a backend's single ops (the CPU backend's path; Vulkan
/// records the same ops into one command buffer instead).
pub fn train_step_by_ops<B: Backend + ?Sized>(
    b: &mut B,
    model: &ModelSpec,
    weights: &Weights,
    batch: &Batch,
) -> Result<(f32, Weights)> {
    model.check_weights(weights)?;
    model.check_batch(batch)?;
    let (logits, hidden) = forward(b, model, weights, &batch.x)?;
    let (grad_logits, losses) = if model.is_regression() {
        squared_error(&logits, &batch.targets)
    } else {
        b.softmax_xent(&logits, &batch.labels)?
    };
    let loss = b.mean(&losses)?;
    let row = |data: Vec<f32>| Matrix {
        rows: 1,
        cols: data.len(),
        data,
    };
    let grads = match (model, hidden) {
        (ModelSpec::SoftmaxRegression { .. } | ModelSpec::LinearRegression { .. }, _) => vec![
            b.matmul(&batch.x, &grad_logits, true, false)?,
            row(b.column_sum(&grad_logits)?),
        ],
        (ModelSpec::Mlp { .. }, Some(h)) => {
            let d_w2 = b.matmul(&h, &grad_logits, true, false)?;
            let d_b2 = row(b.column_sum(&grad_logits)?);
            let d_h = b.matmul(&grad_logits, &weights.tensors[2], false, true)?;
            let d_z1 = b.relu_backward(&h, &d_h)?;
            vec![
                b.matmul(&batch.x, &d_z1, true, false)?,
                row(b.column_sum(&d_z1)?),
                d_w2,
                d_b2,
            ]
        }
        (ModelSpec::Mlp { .. }, None) => unreachable!("the MLP forward pass returns its hidden layer"),
    };
    check_finite("loss", &[loss])?;
    let grads = Weights { tensors: grads };
    check_finite("gradients", &grads.flat())?;
    Ok((loss, grads))
}

pub fn evaluate_by_ops<B: Backend + ?Sized>(
    b: &mut B,
    model: &ModelSpec,
    weights: &Weights,
    batch: &Batch,
) -> Result<(f32, f32)> {
    model.check_weights(weights)?;
    model.check_batch(batch)?;
    let (logits, _) = forward(b, model, weights, &batch.x)?;
    if model.is_regression() {
        let (_, losses) = squared_error(&logits, &batch.targets);
        let loss = b.mean(&losses)?;
        return Ok((loss, r_squared(&logits.data, &batch.targets)));
    }
    let (_, losses) = b.softmax_xent(&logits, &batch.labels)?;
    let loss = b.mean(&losses)?;
    Ok((loss, accuracy(&logits, &batch.labels)))
}

/// The model's outputs for the rows of `x` (logits, or a regression's predictions).
pub fn predict<B: Backend + ?Sized>(
    b: &mut B,
    model: &ModelSpec,
    weights: &Weights,
    x: &Matrix,
) -> Result<Matrix> {
    model.check_weights(weights)?;
    Ok(forward(b, model, weights, x)?.0)
}

/// Per-row squared errors of a regression's predictions, and the gradient of their mean with
/// respect to the predictions: 2·(ŷ − y)/n. One value per row, computed on the host (the
/// matrix products around it run on the backend).
fn squared_error(predictions: &Matrix, targets: &[f32]) -> (Matrix, Vec<f32>) {
    let n = targets.len() as f32;
    let residuals: Vec<f32> = predictions.data.iter().zip(targets).map(|(p, y)| p - y).collect();
    let losses = residuals.iter().map(|r| r * r).collect();
    let gradient = Matrix {
        rows: predictions.rows,
        cols: 1,
        data: residuals.iter().map(|r| 2.0 * r / n).collect(),
    };
    (gradient, losses)
}

/// The coefficient of determination of predictions: 1 − SSE/SST (1 is perfect, 0 is the mean).
pub fn r_squared(predictions: &[f32], targets: &[f32]) -> f32 {
    let n = targets.len() as f64;
    let mean = targets.iter().map(|&y| f64::from(y)).sum::<f64>() / n;
    let sse: f64 = predictions
        .iter()
        .zip(targets)
        .map(|(&p, &y)| (f64::from(p) - f64::from(y)).powi(2))
        .sum();
    let sst: f64 = targets.iter().map(|&y| (f64::from(y) - mean).powi(2)).sum();
    if sst == 0.0 {
        return 0.0;
    }
    (1.0 - sse / sst) as f32
}

/// The share of rows whose largest logit is the label (ties go to the lowest class).
pub fn accuracy(logits: &Matrix, labels: &[u32]) -> f32 {
    let correct = labels
        .iter()
        .enumerate()
        .filter(|(r, &label)| {
            let row = &logits.data[r * logits.cols..(r + 1) * logits.cols];
            let best = row
                .iter()
                .enumerate()
                .fold(0, |best, (c, &v)| if v > row[best] { c } else { best });
            best == label as usize
        })
        .count();
    correct as f32 / labels.len().max(1) as f32
}

/// Which backend to run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    /// A GPU through Vulkan if there is one, else the CPU (and say so).
    Auto,
    Cpu,
    /// Vulkan or an error. `allow_cpu_device` admits a CPU-type Vulkan device (lavapipe).
    Vulkan {
        allow_cpu_device: bool,
    },
}

/// Opens the chosen backend; the CPU backend uses every core.
pub fn open(choice: BackendChoice) -> Result<Box<dyn Backend>> {
    open_with(choice, 0)
}

/// Opens the chosen backend; the CPU backend uses `cpu_threads` cores (0: every core).
pub fn open_with(choice: BackendChoice, cpu_threads: usize) -> Result<Box<dyn Backend>> {
    let cpu = crate::cpu::CpuBackend::with_threads(cpu_threads);
    match choice {
        BackendChoice::Cpu => Ok(Box::new(cpu)),
        BackendChoice::Vulkan { allow_cpu_device } => {
            let options = crate::vulkan::VulkanOptions {
                allow_cpu_device,
                ..Default::default()
            };
            Ok(Box::new(crate::vulkan::VulkanBackend::new(options)?))
        }
        BackendChoice::Auto => match crate::vulkan::VulkanBackend::new(Default::default()) {
            Ok(vulkan) => Ok(Box::new(vulkan)),
            Err(reason) => {
                tracing::info!(%reason, "no usable Vulkan GPU; using the CPU backend");
                Ok(Box::new(cpu))
            }
        },
    }
}

/// Shared shape checks for the ops.
pub(crate) fn check_matmul(a: &Matrix, b: &Matrix, ta: bool, tb: bool) -> Result<(usize, usize, usize)> {
    let (m, k) = a.shape(ta);
    let (k2, n) = b.shape(tb);
    if k != k2 {
        return Err(KernelError::Shape {
            op: "matmul",
            detail: format!("op(a) is {m}×{k}, op(b) is {k2}×{n}"),
        });
    }
    Ok((m, n, k))
}

pub(crate) fn check_same(op: &'static str, a: &Matrix, b: &Matrix) -> Result<()> {
    if (a.rows, a.cols) != (b.rows, b.cols) {
        return Err(KernelError::Shape {
            op,
            detail: format!("{}×{} against {}×{}", a.rows, a.cols, b.rows, b.cols),
        });
    }
    Ok(())
}

pub(crate) fn check_len(op: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected != got {
        return Err(KernelError::Shape {
            op,
            detail: format!("expected {expected} values, got {got}"),
        });
    }
    Ok(())
}

/// Adam's weights, gradient and both moments must have one length.
pub(crate) fn check_adam(w: &[f32], g: &[f32], m: &[f32], v: &[f32]) -> Result<()> {
    for len in [g.len(), m.len(), v.len()] {
        check_len("adam", w.len(), len)?;
    }
    Ok(())
}

pub(crate) fn check_labels(logits: &Matrix, labels: &[u32]) -> Result<()> {
    check_len("softmax_xent", logits.rows, labels.len())?;
    if let Some((row, &label)) = labels
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= logits.cols)
    {
        return Err(KernelError::Label {
            row,
            label,
            classes: logits.cols,
        });
    }
    check_finite("logits", &logits.data)
}
