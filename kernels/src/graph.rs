//! Layer graphs: the forward and backward pass of every layer a model description
//! (`aic_protocol::model_graph`) may use, and its losses, written once in the operations of
//! [`GraphOps`]. On a Vulkan node the whole step runs on the device, recorded into one command
//! buffer; on the CPU the host loops run with the SGEMM on every configured core, the reference
//! other backends are checked against.
//!
//! A batch is a matrix of rows; an image row holds channels × height × width values, row-major.
//! Convolution is im2col + GEMM: each output position's receptive field becomes a row, so the
//! work is one matrix multiply per sample on the same tuned SGEMM as dense layers (a direct
//! convolution would need its own tuned loops per kernel size).

use aic_protocol::model_graph::{Loss, ModelGraph, Op, Shape};

use crate::backend::{accuracy, r_squared, Backend};
use crate::cpu::CpuBackend;
use crate::error::{check_finite, KernelError, Result};
use crate::graph_ops::{dims, Activation, Conv, GraphOps, Pool, Shaped};
use crate::host_ops::{HostOps, PADDING};
use crate::model::{Batch, Weights};
use crate::tensor::Matrix;

/// A validated graph with what each layer needs at run time.
#[derive(Clone, Debug)]
pub struct GraphModel {
    layers: Vec<Planned>,
    input: Shape,
    loss: Loss,
    /// Cores the matrix multiplies use (1 unless told; 0 means every core).
    threads: usize,
}

#[derive(Clone, Debug)]
struct Planned {
    op: Op,
    input: Shape,
    output: Shape,
    /// Index of the first of this layer's parameter tensors.
    first_param: usize,
    /// For `add`: the layer whose output is added.
    from: Option<usize>,
    /// Whether a ReLU-like activation follows (Kaiming initialisation; Xavier otherwise).
    rectified: bool,
}

impl Planned {
    fn conv(&self) -> Conv {
        match self.op {
            Op::Conv2d {
                filters,
                kernel,
                stride,
                padding,
            } => Conv::new(self.input, self.output, filters, kernel, stride, padding),
            _ => unreachable!("asked for the convolution of a {} layer", self.op.kind()),
        }
    }

    fn pool(&self) -> Pool {
        match self.op {
            Op::MaxPool2d { kernel, stride } => Pool::new(self.input, self.output, kernel, stride, true),
            Op::AvgPool2d { kernel, stride } => Pool::new(self.input, self.output, kernel, stride, false),
            _ => unreachable!("asked for the pooling of a {} layer", self.op.kind()),
        }
    }
}

fn shape_error(detail: String) -> KernelError {
    KernelError::Shape { op: "graph", detail }
}

impl GraphModel {
    pub fn new(graph: &ModelGraph) -> Result<Self> {
        let summary = graph
            .summary()
            .map_err(|e| shape_error(format!("the description: {e}")))?;
        let mut layers = Vec::with_capacity(summary.len());
        let mut input = graph.input.shape();
        let mut params = 0;
        for (i, (layer, row)) in graph.layers.iter().zip(&summary).enumerate() {
            let from = match &layer.op {
                Op::Add { from } => graph.layers[..i].iter().position(|l| &l.name == from),
                _ => None,
            };
            let rectified = matches!(graph.layers.get(i + 1).map(|l| &l.op), Some(Op::Relu | Op::Gelu));
            let count = match layer.op {
                Op::Dense { .. } | Op::Conv2d { .. } | Op::LayerNorm { .. } => 2,
                _ => 0,
            };
            // im2col indexes a sample's values with 32 bits.
            if matches!(layer.op, Op::Conv2d { .. }) && input.elements() >= u64::from(PADDING) {
                return Err(shape_error(format!(
                    "layer {:?}: an input of {} values per row is more than a convolution indexes ({PADDING})",
                    layer.name,
                    input.elements()
                )));
            }
            layers.push(Planned {
                op: layer.op.clone(),
                input,
                output: row.output,
                first_param: params,
                from,
                rectified,
            });
            params += count;
            input = row.output;
        }
        Ok(GraphModel {
            layers,
            input: graph.input.shape(),
            loss: graph.loss,
            threads: 1,
        })
    }

    /// Runs the matrix multiplies on `threads` cores (0: every core).
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = threads;
    }

    /// (rows, cols) of each parameter tensor in order: per dense layer W (in × out) and b
    /// (1 × out); per convolution W (filters × channels·k·k) and b (1 × filters); per layer
    /// norm γ and β (1 × values).
    pub fn shapes(&self) -> Vec<(usize, usize)> {
        let mut shapes = Vec::new();
        for layer in &self.layers {
            let (inputs, outputs) = (layer.input.elements() as usize, layer.output.elements() as usize);
            match layer.op {
                Op::Dense { units } => {
                    shapes.push((inputs, units as usize));
                    shapes.push((1, units as usize));
                }
                Op::Conv2d { filters, kernel, .. } => {
                    let (channels, _, _) = dims(layer.input);
                    let k = kernel as usize;
                    shapes.push((filters as usize, channels * k * k));
                    shapes.push((1, filters as usize));
                }
                Op::LayerNorm { .. } => {
                    shapes.push((1, outputs));
                    shapes.push((1, outputs));
                }
                _ => {}
            }
        }
        shapes
    }

    pub fn parameters(&self) -> usize {
        self.shapes().iter().map(|(r, c)| r * c).sum()
    }

    pub fn loss(&self) -> Loss {
        self.loss
    }

    /// Values per row of the last layer's output.
    pub fn output_width(&self) -> usize {
        self.layers.last().map_or(0, |l| l.output.elements() as usize)
    }

    /// The most values any layer holds per row, the input included.
    pub fn widest(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.output.elements() as usize)
            .chain([self.input.elements() as usize])
            .max()
            .unwrap_or(1)
    }

    /// Seeded initial weights: Kaiming-uniform for a layer a ReLU or GELU follows, Xavier-uniform
    /// otherwise; zero biases; layer norm γ = 1, β = 0.
    pub fn init(&self, seed: u64) -> Weights {
        let mut draw = crate::model::seeded_draws(seed);
        // Uniform in [-1, 1).
        let mut uniform = move || 2.0 * draw();
        let shapes = self.shapes();
        let mut tensors = Vec::new();
        for layer in &self.layers {
            let (fan_in, fan_out) = match layer.op {
                Op::Dense { units } => (layer.input.elements() as f32, units as f32),
                Op::Conv2d { filters, kernel, .. } => {
                    let (channels, _, _) = dims(layer.input);
                    let field = (kernel * kernel) as f32;
                    (channels as f32 * field, filters as f32 * field)
                }
                Op::LayerNorm { .. } => {
                    let n = layer.output.elements() as usize;
                    tensors.push(Matrix::new(1, n, vec![1.0; n]).expect("1×n"));
                    tensors.push(Matrix::zeros(1, n));
                    continue;
                }
                _ => continue,
            };
            let bound = if layer.rectified {
                (6.0 / fan_in).sqrt()
            } else {
                (6.0 / (fan_in + fan_out)).sqrt()
            };
            let (rows, cols) = shapes[layer.first_param];
            tensors.push(
                Matrix::new(rows, cols, (0..rows * cols).map(|_| uniform() * bound).collect())
                    .expect("shape"),
            );
            let (rows, cols) = shapes[layer.first_param + 1];
            tensors.push(Matrix::zeros(rows, cols));
        }
        Weights { tensors }
    }

    pub fn check_weights(&self, weights: &Weights) -> Result<()> {
        let got: Vec<(usize, usize)> = weights.tensors.iter().map(|t| (t.rows, t.cols)).collect();
        if got != self.shapes() {
            return Err(shape_error(format!(
                "weights of shapes {got:?}; the graph needs {:?}",
                self.shapes()
            )));
        }
        for t in &weights.tensors {
            check_finite("weights", &t.data)?;
        }
        Ok(())
    }

    fn check_batch(&self, batch: &Batch) -> Result<()> {
        let width = self.input.elements() as usize;
        if batch.x.cols != width {
            return Err(shape_error(format!(
                "a batch of {} columns; the graph's input takes {width}",
                batch.x.cols
            )));
        }
        self.check_targets(batch)
    }

    /// The forward pass on the host. `dropout_seed` draws the dropout masks when `training` (the
    /// same seed draws the same masks, so a re-execution agrees); without training dropout passes
    /// through.
    pub fn forward(
        &self,
        weights: &Weights,
        x: &Matrix,
        training: bool,
        dropout_seed: u64,
    ) -> Result<Trace<Matrix, Vec<u32>>> {
        let mut host = CpuBackend::with_threads(self.threads);
        let mut ops = HostOps::new(&mut host);
        let params = weights.tensors.clone();
        self.forward_with(&mut ops, &params, x.clone(), training, dropout_seed)
    }

    /// The loss on `batch` and its gradient for every parameter, on the host.
    pub fn train_step(&self, weights: &Weights, batch: &Batch, dropout_seed: u64) -> Result<(f32, Weights)> {
        self.train_step_on(
            &mut CpuBackend::with_threads(self.threads),
            weights,
            batch,
            dropout_seed,
        )
    }

    /// [`Self::train_step`] on `backend`: the whole step on the device of a Vulkan backend, the
    /// host loops with the backend's matrix multiplies otherwise.
    pub fn train_step_on(
        &self,
        backend: &mut dyn Backend,
        weights: &Weights,
        batch: &Batch,
        dropout_seed: u64,
    ) -> Result<(f32, Weights)> {
        self.check_weights(weights)?;
        self.check_batch(batch)?;
        let (loss, grads) = backend.graph_train_step(self, weights, batch, dropout_seed)?;
        check_finite("loss", &[loss])?;
        check_finite("gradients", &grads.flat())?;
        Ok((loss, grads))
    }

    /// The mean loss, and the accuracy (classifiers) or R² (regression) on `batch`, on the host.
    pub fn evaluate(&self, weights: &Weights, batch: &Batch) -> Result<(f32, f32)> {
        self.evaluate_on(&mut CpuBackend::with_threads(self.threads), weights, batch)
    }

    /// [`Self::evaluate`] with the forward pass on `backend`.
    pub fn evaluate_on(
        &self,
        backend: &mut dyn Backend,
        weights: &Weights,
        batch: &Batch,
    ) -> Result<(f32, f32)> {
        self.check_weights(weights)?;
        self.check_batch(batch)?;
        let logits = backend.graph_outputs(self, weights, &batch.x)?;
        let mut host = CpuBackend::default();
        let (loss_sum, _) = HostOps::new(&mut host).loss(&logits, batch, self.loss)?;
        let loss = loss_sum.data[0] / logits.rows.max(1) as f32;
        let score = match self.loss {
            Loss::SoftmaxCrossEntropy => accuracy(&logits, &batch.labels),
            Loss::MeanSquaredError => r_squared(&logits.data, &batch.targets),
            Loss::BinaryCrossEntropy => {
                let correct = logits
                    .data
                    .iter()
                    .zip(&batch.labels)
                    .filter(|(z, &l)| (**z > 0.0) == (l == 1))
                    .count();
                correct as f32 / batch.labels.len().max(1) as f32
            }
        };
        Ok((loss, score))
    }

    /// The model's outputs for the rows of `x` (logits, or a regression's predictions).
    pub fn predict(&self, weights: &Weights, x: &Matrix) -> Result<Matrix> {
        self.check_weights(weights)?;
        let mut trace = self.forward(weights, x, false, 0)?;
        Ok(trace.outputs.pop().expect("a graph has layers"))
    }

    /// One training step written in `ops`: Σ of the rows' losses (1 × 1) and every parameter's
    /// gradient. The weights and batch are checked by the caller.
    pub fn step_with<O: GraphOps>(
        &self,
        ops: &mut O,
        weights: &Weights,
        batch: &Batch,
        dropout_seed: u64,
    ) -> Result<(O::Tensor, Vec<O::Tensor>)> {
        let params = weights
            .tensors
            .iter()
            .map(|t| ops.tensor(t))
            .collect::<Result<Vec<_>>>()?;
        let x = ops.tensor(&batch.x)?;
        let trace = self.forward_with(ops, &params, x.clone(), true, dropout_seed)?;
        let logits = trace.outputs.last().expect("a graph has layers");
        let (loss_sum, grad_logits) = ops.loss(logits, batch, self.loss)?;
        let grads = self.backward_with(ops, &params, &x, &trace, grad_logits)?;
        Ok((loss_sum, grads))
    }

    /// The outputs of the last layer for the rows of `x`, without training (dropout passes
    /// through), written in `ops`.
    pub fn outputs_with<O: GraphOps>(&self, ops: &mut O, weights: &Weights, x: &Matrix) -> Result<O::Tensor> {
        let params = weights
            .tensors
            .iter()
            .map(|t| ops.tensor(t))
            .collect::<Result<Vec<_>>>()?;
        let x = ops.tensor(x)?;
        let mut trace = self.forward_with(ops, &params, x, false, 0)?;
        Ok(trace.outputs.pop().expect("a graph has layers"))
    }

    fn forward_with<O: GraphOps>(
        &self,
        ops: &mut O,
        params: &[O::Tensor],
        x: O::Tensor,
        training: bool,
        dropout_seed: u64,
    ) -> Result<Trace<O::Tensor, O::Indices>> {
        let mut trace = Trace {
            input: x,
            outputs: Vec::with_capacity(self.layers.len()),
            kept: Vec::with_capacity(self.layers.len()),
        };
        for (index, layer) in self.layers.iter().enumerate() {
            let input = if index == 0 {
                &trace.input
            } else {
                &trace.outputs[index - 1]
            };
            let params = &params[layer.first_param.min(params.len())..];
            let mut kept = Kept::Nothing;
            let output = match &layer.op {
                Op::Dense { .. } => {
                    let z = ops.matmul(input, &params[0], false, false)?;
                    ops.add_bias(&z, &params[1])?
                }
                Op::Conv2d { .. } => {
                    let conv = layer.conv();
                    // Every sample's receptive fields in one matrix, one GEMM for the batch:
                    // (rows·positions × field) · (filters × field)ᵀ.
                    let cols = ops.im2col(input, &conv)?;
                    let y = ops.matmul(&cols, &params[0], false, true)?;
                    ops.conv_output(&y, &params[1], &conv)?
                }
                Op::MaxPool2d { .. } | Op::AvgPool2d { .. } => {
                    let (out, indices) = ops.pool(input, &layer.pool())?;
                    kept = Kept::Indices(indices);
                    out
                }
                Op::Flatten => input.clone(),
                Op::Relu => ops.activate(input, Activation::Relu)?,
                Op::Tanh => ops.activate(input, Activation::Tanh)?,
                Op::Sigmoid => ops.activate(input, Activation::Sigmoid)?,
                Op::Gelu => ops.activate(input, Activation::Gelu)?,
                Op::Dropout { rate } => {
                    if training && *rate > 0.0 {
                        let (out, mask) = ops.dropout(input, *rate, dropout_seed, index as u64)?;
                        kept = Kept::Mask(mask);
                        out
                    } else {
                        input.clone()
                    }
                }
                Op::LayerNorm { epsilon } => {
                    let (out, stats) = ops.layer_norm(input, &params[0], &params[1], *epsilon)?;
                    kept = Kept::Stats(stats);
                    out
                }
                Op::Add { .. } => {
                    let other = &trace.outputs[layer.from.expect("validated: an earlier layer")];
                    ops.add(input, other)?
                }
            };
            trace.outputs.push(output);
            trace.kept.push(kept);
        }
        Ok(trace)
    }

    /// Checks a batch's labels or targets against the loss before anything runs.
    fn check_targets(&self, batch: &Batch) -> Result<()> {
        let rows = batch.x.rows;
        match self.loss {
            Loss::SoftmaxCrossEntropy => {
                let classes = self.layers.last().expect("a graph has layers").output.elements() as usize;
                if batch.labels.len() != rows {
                    return Err(shape_error(format!(
                        "{} labels for {rows} rows",
                        batch.labels.len()
                    )));
                }
                if let Some((row, &label)) = batch
                    .labels
                    .iter()
                    .enumerate()
                    .find(|(_, &l)| l as usize >= classes)
                {
                    return Err(KernelError::Label { row, label, classes });
                }
            }
            Loss::MeanSquaredError => {
                if batch.targets.len() != rows {
                    return Err(shape_error("a regression batch needs one target per row".into()));
                }
                check_finite("targets", &batch.targets)?;
            }
            Loss::BinaryCrossEntropy => {
                if batch.labels.len() != rows || batch.labels.iter().any(|&l| l > 1) {
                    return Err(shape_error(
                        "binary cross-entropy needs labels 0 or 1, one per row".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    fn backward_with<O: GraphOps>(
        &self,
        ops: &mut O,
        params: &[O::Tensor],
        x: &O::Tensor,
        trace: &Trace<O::Tensor, O::Indices>,
        grad_logits: O::Tensor,
    ) -> Result<Vec<O::Tensor>> {
        let mut grads: Vec<Option<O::Tensor>> = vec![None; params.len()];
        // The gradient with respect to each layer's output, accumulated (an `add` feeds two).
        let mut upstream: Vec<Option<O::Tensor>> = vec![None; self.layers.len()];
        *upstream.last_mut().expect("a graph has layers") = Some(grad_logits);
        for index in (0..self.layers.len()).rev() {
            let Some(g) = upstream[index].take() else { continue };
            let layer = &self.layers[index];
            let input = if index == 0 { x } else { &trace.outputs[index - 1] };
            let output = &trace.outputs[index];
            let p = layer.first_param;
            // The first layer's input is the data: nothing upstream needs its gradient.
            let wanted = index > 0;
            let grad_input = match (&layer.op, &trace.kept[index]) {
                (Op::Dense { .. }, _) => {
                    grads[p] = Some(ops.matmul(input, &g, true, false)?);
                    grads[p + 1] = Some(ops.column_sum(&g)?);
                    if wanted {
                        Some(ops.matmul(&g, &params[p], false, true)?)
                    } else {
                        None
                    }
                }
                (Op::Conv2d { .. }, _) => {
                    let conv = layer.conv();
                    // The output gradient as (rows·positions × filters), like the forward GEMM.
                    let g_p = ops.conv_output_grad(&g, &conv)?;
                    let cols = ops.im2col(input, &conv)?;
                    // dW = g_pᵀ · cols (filters × field); db = column sums; dcols = g_p · W.
                    grads[p] = Some(ops.matmul(&g_p, &cols, true, false)?);
                    grads[p + 1] = Some(ops.column_sum(&g_p)?);
                    if wanted {
                        let d_cols = ops.matmul(&g_p, &params[p], false, false)?;
                        Some(ops.col2im(&d_cols, &conv, input.rows())?)
                    } else {
                        None
                    }
                }
                (Op::MaxPool2d { .. } | Op::AvgPool2d { .. }, Kept::Indices(indices)) => {
                    Some(ops.pool_backward(&g, indices, &layer.pool())?)
                }
                (Op::Flatten, _) => Some(g),
                (Op::Relu, _) => Some(ops.activate_backward(&g, input, output, Activation::Relu)?),
                (Op::Tanh, _) => Some(ops.activate_backward(&g, input, output, Activation::Tanh)?),
                (Op::Sigmoid, _) => Some(ops.activate_backward(&g, input, output, Activation::Sigmoid)?),
                (Op::Gelu, _) => Some(ops.activate_backward(&g, input, output, Activation::Gelu)?),
                (Op::Dropout { .. }, Kept::Mask(mask)) => Some(ops.multiply(&g, mask)?),
                (Op::Dropout { .. }, _) => Some(g),
                (Op::LayerNorm { .. }, Kept::Stats(stats)) => {
                    let (d_x, d_gamma, d_beta) = ops.layer_norm_backward(input, &g, &params[p], stats)?;
                    grads[p] = Some(d_gamma);
                    grads[p + 1] = Some(d_beta);
                    Some(d_x)
                }
                (Op::Add { .. }, _) => {
                    let from = layer.from.expect("validated: an earlier layer");
                    accumulate(ops, &mut upstream[from], &g)?;
                    Some(g)
                }
                (op, _) => {
                    return Err(shape_error(format!(
                        "layer {index} ({}) kept nothing from its forward pass",
                        op.kind()
                    )))
                }
            };
            if let (true, Some(grad_input)) = (wanted, grad_input) {
                accumulate(ops, &mut upstream[index - 1], &grad_input)?;
            }
        }
        grads
            .into_iter()
            .enumerate()
            .map(|(i, g)| g.ok_or_else(|| shape_error(format!("parameter tensor {i} got no gradient"))))
            .collect()
    }
}

/// What the forward pass keeps for the backward pass, in a backend's tensors.
pub struct Trace<T, I> {
    /// The batch.
    input: T,
    /// Every layer's output, in order.
    pub outputs: Vec<T>,
    /// What each layer needs again on the way back.
    kept: Vec<Kept<T, I>>,
}

enum Kept<T, I> {
    Nothing,
    /// Pooling: where each output came from.
    Indices(I),
    /// Dropout: the kept-and-scaled factor of each value.
    Mask(T),
    /// Layer norm: each row's mean and 1/σ.
    Stats(T),
}

impl<T, I> Trace<T, I> {
    /// Dropout's mask of a layer, where it dropped anything.
    pub fn mask(&self, layer: usize) -> Option<&T> {
        match self.kept.get(layer) {
            Some(Kept::Mask(mask)) => Some(mask),
            _ => None,
        }
    }
}

fn accumulate<O: GraphOps>(ops: &mut O, slot: &mut Option<O::Tensor>, g: &O::Tensor) -> Result<()> {
    *slot = Some(match slot.take() {
        Some(existing) => ops.add(&existing, g)?,
        None => g.clone(),
    });
    Ok(())
}

pub fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

/// GELU (tanh approximation) and its derivative at `v`.
pub fn gelu(v: f32) -> (f32, f32) {
    const C: f32 = 0.797_884_6; // √(2/π)
    let inner = C * (v + 0.044715 * v * v * v);
    let t = inner.tanh();
    let value = 0.5 * v * (1.0 + t);
    let d_inner = C * (1.0 + 3.0 * 0.044715 * v * v);
    (value, 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * d_inner)
}

/// A uniform draw in [0, 1) for dropout: a hash of the seed, the layer and the value's index,
/// so every backend and every re-execution draws the same mask.
pub fn dropout_draw(seed: u64, layer: u64, index: u64) -> f32 {
    let mut z = seed ^ layer.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 24) as f32
}

#[cfg(test)]
#[path = "graph_tests.rs"]
mod tests;
