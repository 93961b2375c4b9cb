//! Layer graphs: the forward and backward pass of every layer a model description
//! (`aic_protocol::model_graph`) may use, and its losses. The matrix multiplies (dense layers,
//! convolutions) run on the backend a node trains with — Vulkan on a GPU node, the CPU's SGEMM on
//! every configured core otherwise — and every other layer on the host; on the CPU backend this is
//! the reference other backends are checked against.
//!
//! A batch is a matrix of rows; an image row holds channels × height × width values, row-major.
//! Convolution is im2col + GEMM: each output position's receptive field becomes a row, so the
//! work is one matrix multiply per sample on the same tuned SGEMM as dense layers (a direct
//! convolution would need its own tuned loops per kernel size).

use aic_protocol::model_graph::{Loss, ModelGraph, Op, Shape};

use crate::backend::{accuracy, r_squared, Backend};
use crate::cpu::CpuBackend;
use crate::error::{check_finite, KernelError, Result};
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

/// What the forward pass keeps for the backward pass.
pub struct Trace {
    /// Every layer's output, in order.
    outputs: Vec<Matrix>,
    /// Max pooling: the input index each output came from, per layer (empty otherwise).
    argmax: Vec<Vec<u32>>,
    /// Dropout: the kept-and-scaled factor of each value, per layer (empty otherwise).
    masks: Vec<Vec<f32>>,
    /// Layer norm: each row's mean and 1/σ, per layer (empty otherwise).
    norms: Vec<Vec<(f32, f32)>>,
}

fn dims(shape: Shape) -> (usize, usize, usize) {
    match shape {
        Shape::Vector(n) => (n as usize, 1, 1),
        Shape::Image {
            channels,
            height,
            width,
        } => (channels as usize, height as usize, width as usize),
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
        Ok(())
    }

    /// The host backend the convenience methods run on: the CPU on this graph's threads.
    fn host(&self) -> CpuBackend {
        CpuBackend::with_threads(self.threads)
    }

    /// The forward pass on the host. `dropout_seed` draws the dropout masks when `training` (the
    /// same seed draws the same masks, so a re-execution agrees); without training dropout passes
    /// through.
    pub fn forward(&self, weights: &Weights, x: &Matrix, training: bool, dropout_seed: u64) -> Result<Trace> {
        self.forward_on(&mut self.host(), weights, x, training, dropout_seed)
    }

    /// The forward pass with the matrix multiplies (dense layers, convolutions) on `backend`:
    /// the Vulkan backend on a GPU node; the other layers run on the host.
    pub fn forward_on(
        &self,
        backend: &mut dyn Backend,
        weights: &Weights,
        x: &Matrix,
        training: bool,
        dropout_seed: u64,
    ) -> Result<Trace> {
        let rows = x.rows;
        let mut trace = Trace {
            outputs: Vec::with_capacity(self.layers.len()),
            argmax: Vec::new(),
            masks: Vec::new(),
            norms: Vec::new(),
        };
        for (index, layer) in self.layers.iter().enumerate() {
            let input = if index == 0 { x } else { &trace.outputs[index - 1] };
            let params = &weights.tensors[layer.first_param.min(weights.tensors.len())..];
            let (mut argmax, mut mask, mut norm) = (Vec::new(), Vec::new(), Vec::new());
            let output = match &layer.op {
                Op::Dense { .. } => {
                    let z = backend.matmul(input, &params[0], false, false)?;
                    add_bias(z, &params[1].data)
                }
                Op::Conv2d {
                    filters,
                    kernel,
                    stride,
                    padding,
                } => {
                    let geometry = Conv::new(layer.input, layer.output, *kernel, *stride, *padding);
                    let (positions, filters) = (geometry.positions(), *filters as usize);
                    // Every sample's receptive fields in one matrix, one GEMM for the batch:
                    // (rows·positions × field) · (filters × field)ᵀ.
                    let parallel = backend.host_threads() > 1;
                    let cols = geometry.im2col_batch(input, parallel);
                    let y = backend.matmul(&cols, &params[0], false, true)?;
                    let mut out = Matrix::zeros(rows, layer.output.elements() as usize);
                    let bias = &params[1].data;
                    let out_cols = out.cols;
                    for_each_row(
                        &mut out.data,
                        out_cols,
                        &y.data,
                        positions * filters,
                        parallel,
                        |row, y| {
                            for p in 0..positions {
                                for f in 0..filters {
                                    row[f * positions + p] = y[p * filters + f] + bias[f];
                                }
                            }
                        },
                    );
                    out
                }
                Op::MaxPool2d { kernel, stride } | Op::AvgPool2d { kernel, stride } => {
                    let max = matches!(layer.op, Op::MaxPool2d { .. });
                    let (out, indices) = pool(
                        input,
                        layer.input,
                        layer.output,
                        *kernel as usize,
                        *stride as usize,
                        max,
                    );
                    argmax = indices;
                    out
                }
                Op::Flatten => input.clone(),
                Op::Relu => map(input, |v| v.max(0.0)),
                Op::Tanh => map(input, f32::tanh),
                Op::Sigmoid => map(input, sigmoid),
                Op::Gelu => map(input, |v| gelu(v).0),
                Op::Dropout { rate } => {
                    if training && *rate > 0.0 {
                        let keep = 1.0 / (1.0 - rate);
                        mask = (0..input.data.len())
                            .map(|i| {
                                if dropout_draw(dropout_seed, index as u64, i as u64) < *rate {
                                    0.0
                                } else {
                                    keep
                                }
                            })
                            .collect();
                        let data = input.data.iter().zip(&mask).map(|(v, m)| v * m).collect();
                        Matrix::new(input.rows, input.cols, data)?
                    } else {
                        input.clone()
                    }
                }
                Op::LayerNorm { epsilon } => {
                    let (out, stats) = layer_norm(input, &params[0].data, &params[1].data, *epsilon);
                    norm = stats;
                    out
                }
                Op::Add { .. } => {
                    let other = &trace.outputs[layer.from.expect("validated: an earlier layer")];
                    let data = input.data.iter().zip(&other.data).map(|(a, b)| a + b).collect();
                    Matrix::new(input.rows, input.cols, data)?
                }
            };
            trace.outputs.push(output);
            trace.argmax.push(argmax);
            trace.masks.push(mask);
            trace.norms.push(norm);
        }
        Ok(trace)
    }

    /// The loss on `batch` and its gradient for every parameter, on the host.
    pub fn train_step(&self, weights: &Weights, batch: &Batch, dropout_seed: u64) -> Result<(f32, Weights)> {
        self.train_step_on(&mut self.host(), weights, batch, dropout_seed)
    }

    /// [`Self::train_step`] with the matrix multiplies on `backend`.
    pub fn train_step_on(
        &self,
        backend: &mut dyn Backend,
        weights: &Weights,
        batch: &Batch,
        dropout_seed: u64,
    ) -> Result<(f32, Weights)> {
        self.check_weights(weights)?;
        self.check_batch(batch)?;
        let trace = self.forward_on(backend, weights, &batch.x, true, dropout_seed)?;
        let logits = trace.outputs.last().expect("a graph has layers");
        let (loss, grad_logits) = self.loss_and_gradient(logits, batch)?;
        let grads = self.backward(backend, weights, &batch.x, &trace, grad_logits)?;
        check_finite("loss", &[loss])?;
        check_finite("gradients", &grads.flat())?;
        Ok((loss, grads))
    }

    /// The mean loss, and the accuracy (classifiers) or R² (regression) on `batch`, on the host.
    pub fn evaluate(&self, weights: &Weights, batch: &Batch) -> Result<(f32, f32)> {
        self.evaluate_on(&mut self.host(), weights, batch)
    }

    /// [`Self::evaluate`] with the matrix multiplies on `backend`.
    pub fn evaluate_on(
        &self,
        backend: &mut dyn Backend,
        weights: &Weights,
        batch: &Batch,
    ) -> Result<(f32, f32)> {
        self.check_weights(weights)?;
        self.check_batch(batch)?;
        let trace = self.forward_on(backend, weights, &batch.x, false, 0)?;
        let logits = trace.outputs.last().expect("a graph has layers");
        let (loss, _) = self.loss_and_gradient(logits, batch)?;
        let score = match self.loss {
            Loss::SoftmaxCrossEntropy => accuracy(logits, &batch.labels),
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

    fn loss_and_gradient(&self, logits: &Matrix, batch: &Batch) -> Result<(f32, Matrix)> {
        let n = logits.rows.max(1) as f32;
        match self.loss {
            Loss::SoftmaxCrossEntropy => {
                let (grad, losses) = CpuBackend::default().softmax_xent(logits, &batch.labels)?;
                Ok((losses.iter().sum::<f32>() / n, grad))
            }
            Loss::MeanSquaredError => {
                if batch.targets.len() != logits.rows {
                    return Err(shape_error("a regression batch needs one target per row".into()));
                }
                let residuals: Vec<f32> = logits
                    .data
                    .iter()
                    .zip(&batch.targets)
                    .map(|(p, y)| p - y)
                    .collect();
                let loss = residuals.iter().map(|r| r * r).sum::<f32>() / n;
                let grad = residuals.iter().map(|r| 2.0 * r / n).collect();
                Ok((loss, Matrix::new(logits.rows, 1, grad)?))
            }
            Loss::BinaryCrossEntropy => {
                if batch.labels.len() != logits.rows || batch.labels.iter().any(|&l| l > 1) {
                    return Err(shape_error(
                        "binary cross-entropy needs labels 0 or 1, one per row".into(),
                    ));
                }
                let mut loss = 0.0f32;
                let mut grad = Vec::with_capacity(logits.rows);
                for (z, &label) in logits.data.iter().zip(&batch.labels) {
                    let t = label as f32;
                    // softplus(z) − t·z, computed without overflow.
                    loss += z.max(0.0) - z * t + (-z.abs()).exp().ln_1p();
                    grad.push((sigmoid(*z) - t) / n);
                }
                Ok((loss / n, Matrix::new(logits.rows, 1, grad)?))
            }
        }
    }

    fn backward(
        &self,
        backend: &mut dyn Backend,
        weights: &Weights,
        x: &Matrix,
        trace: &Trace,
        grad_logits: Matrix,
    ) -> Result<Weights> {
        let mut grads: Vec<Matrix> = weights
            .tensors
            .iter()
            .map(|t| Matrix::zeros(t.rows, t.cols))
            .collect();
        // The gradient with respect to each layer's output, accumulated (an `add` feeds two).
        let mut upstream: Vec<Option<Matrix>> = vec![None; self.layers.len()];
        *upstream.last_mut().expect("a graph has layers") = Some(grad_logits);
        for index in (0..self.layers.len()).rev() {
            let Some(g) = upstream[index].take() else { continue };
            let layer = &self.layers[index];
            let input = if index == 0 { x } else { &trace.outputs[index - 1] };
            let output = &trace.outputs[index];
            let p = layer.first_param;
            let grad_input = match &layer.op {
                Op::Dense { .. } => {
                    grads[p] = backend.matmul(input, &g, true, false)?;
                    grads[p + 1] = Matrix::new(1, g.cols, backend.column_sum(&g)?)?;
                    if index > 0 {
                        backend.matmul(&g, &weights.tensors[p], false, true)?
                    } else {
                        Matrix::zeros(0, 0)
                    }
                }
                Op::Conv2d {
                    filters,
                    kernel,
                    stride,
                    padding,
                } => {
                    let geometry = Conv::new(layer.input, layer.output, *kernel, *stride, *padding);
                    let (positions, filters) = (geometry.positions(), *filters as usize);
                    let parallel = backend.host_threads() > 1;
                    // The output gradient as (rows·positions × filters), like the forward GEMM.
                    let mut g_p = Matrix::zeros(input.rows * positions, filters);
                    for_each_row(
                        &mut g_p.data,
                        positions * filters,
                        &g.data,
                        g.cols,
                        parallel,
                        |out, g| {
                            for f in 0..filters {
                                for p in 0..positions {
                                    out[p * filters + f] = g[f * positions + p];
                                }
                            }
                        },
                    );
                    let cols = geometry.im2col_batch(input, parallel);
                    // dW = g_pᵀ · cols (filters × field); db = column sums; dcols = g_p · W.
                    grads[p] = backend.matmul(&g_p, &cols, true, false)?;
                    grads[p + 1] = Matrix::new(1, filters, backend.column_sum(&g_p)?)?;
                    let mut d_x = Matrix::zeros(input.rows, input.cols);
                    // The first layer's input is the data: nothing upstream needs its gradient.
                    if index > 0 {
                        let d_cols = backend.matmul(&g_p, &weights.tensors[p], false, false)?;
                        geometry.col2im_batch(&d_cols, &mut d_x, parallel);
                    }
                    d_x
                }
                Op::MaxPool2d { kernel, .. } | Op::AvgPool2d { kernel, .. } => {
                    let mut d_x = Matrix::zeros(input.rows, input.cols);
                    if matches!(layer.op, Op::MaxPool2d { .. }) {
                        for (o, &from) in trace.argmax[index].iter().enumerate() {
                            let r = o / output.cols;
                            d_x.data[r * input.cols + from as usize] += g.data[o];
                        }
                    } else {
                        // Average pooling: the trace keeps each window's first input index.
                        let (_, _, w) = dims(layer.input);
                        let k = *kernel as usize;
                        let area = (k * k) as f32;
                        for (o, &first) in trace.argmax[index].iter().enumerate() {
                            let r = o / output.cols;
                            for dy in 0..k {
                                for dx in 0..k {
                                    d_x.data[r * input.cols + first as usize + dy * w + dx] +=
                                        g.data[o] / area;
                                }
                            }
                        }
                    }
                    d_x
                }
                Op::Flatten => g,
                Op::Relu => zip(&g, output, |g, y| if y > 0.0 { g } else { 0.0 }),
                Op::Tanh => zip(&g, output, |g, y| g * (1.0 - y * y)),
                Op::Sigmoid => zip(&g, output, |g, y| g * y * (1.0 - y)),
                Op::Gelu => zip(&g, input, |g, v| g * gelu(v).1),
                Op::Dropout { .. } => {
                    let mask = &trace.masks[index];
                    if mask.is_empty() {
                        g
                    } else {
                        let data = g.data.iter().zip(mask).map(|(g, m)| g * m).collect();
                        Matrix::new(g.rows, g.cols, data)?
                    }
                }
                Op::LayerNorm { .. } => {
                    let (d_x, d_gamma, d_beta) =
                        layer_norm_backward(input, &g, &weights.tensors[p].data, &trace.norms[index]);
                    grads[p] = Matrix::new(1, d_gamma.len(), d_gamma)?;
                    grads[p + 1] = Matrix::new(1, d_beta.len(), d_beta)?;
                    d_x
                }
                Op::Add { .. } => {
                    let from = layer.from.expect("validated: an earlier layer");
                    accumulate(&mut upstream[from], &g);
                    g
                }
            };
            if index > 0 {
                accumulate(&mut upstream[index - 1], &grad_input);
            }
        }
        Ok(Weights { tensors: grads })
    }
}

/// A receptive-field entry that falls in the zero padding.
const PADDING: u32 = u32::MAX;

/// Calls `f` on each row of `out` (`out_width` values) with the matching row of `input`
/// (`in_width` values): on rayon's pool when `parallel` (rows are independent), in order
/// otherwise. Either way each row's values are computed the same way, so results are identical.
fn for_each_row(
    out: &mut [f32],
    out_width: usize,
    input: &[f32],
    in_width: usize,
    parallel: bool,
    f: impl Fn(&mut [f32], &[f32]) + Sync + Send,
) {
    use rayon::prelude::*;
    if out_width == 0 || in_width == 0 {
        return;
    }
    if parallel {
        out.par_chunks_mut(out_width)
            .zip(input.par_chunks(in_width))
            .for_each(|(o, i)| f(o, i));
    } else {
        out.chunks_mut(out_width)
            .zip(input.chunks(in_width))
            .for_each(|(o, i)| f(o, i));
    }
}

fn accumulate(slot: &mut Option<Matrix>, g: &Matrix) {
    match slot {
        Some(existing) => {
            for (a, b) in existing.data.iter_mut().zip(&g.data) {
                *a += b;
            }
        }
        None => *slot = Some(g.clone()),
    }
}

fn add_bias(mut z: Matrix, bias: &[f32]) -> Matrix {
    let cols = z.cols;
    for (i, v) in z.data.iter_mut().enumerate() {
        *v += bias[i % cols];
    }
    z
}

fn map(x: &Matrix, f: impl Fn(f32) -> f32) -> Matrix {
    Matrix {
        rows: x.rows,
        cols: x.cols,
        data: x.data.iter().map(|&v| f(v)).collect(),
    }
}

fn zip(g: &Matrix, other: &Matrix, f: impl Fn(f32, f32) -> f32) -> Matrix {
    Matrix {
        rows: g.rows,
        cols: g.cols,
        data: g.data.iter().zip(&other.data).map(|(&g, &o)| f(g, o)).collect(),
    }
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

/// Pools each channel's windows: the maximum (with the input index it came from) or the mean
/// (with the window's first input index).
fn pool(x: &Matrix, input: Shape, output: Shape, k: usize, stride: usize, max: bool) -> (Matrix, Vec<u32>) {
    let (channels, h, w) = dims(input);
    let (_, oh, ow) = dims(output);
    let mut out = Matrix::zeros(x.rows, output.elements() as usize);
    let mut indices = Vec::with_capacity(out.data.len());
    for r in 0..x.rows {
        let row = &x.data[r * x.cols..(r + 1) * x.cols];
        for c in 0..channels {
            for oy in 0..oh {
                for ox in 0..ow {
                    let first = c * h * w + oy * stride * w + ox * stride;
                    let (mut best, mut at, mut sum) = (f32::NEG_INFINITY, first, 0.0f32);
                    for dy in 0..k {
                        for dx in 0..k {
                            let i = first + dy * w + dx;
                            sum += row[i];
                            if row[i] > best {
                                best = row[i];
                                at = i;
                            }
                        }
                    }
                    out.data[r * out.cols + c * oh * ow + oy * ow + ox] =
                        if max { best } else { sum / (k * k) as f32 };
                    indices.push(if max { at as u32 } else { first as u32 });
                }
            }
        }
    }
    (out, indices)
}

/// Normalises each row over all its values: (x − μ)/σ · γ + β. Answers the rows' (μ, 1/σ).
fn layer_norm(x: &Matrix, gamma: &[f32], beta: &[f32], epsilon: f32) -> (Matrix, Vec<(f32, f32)>) {
    let mut out = Matrix::zeros(x.rows, x.cols);
    let mut stats = Vec::with_capacity(x.rows);
    let n = x.cols as f32;
    for r in 0..x.rows {
        let row = &x.data[r * x.cols..(r + 1) * x.cols];
        let mean = row.iter().sum::<f32>() / n;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
        let inv = 1.0 / (var + epsilon).sqrt();
        for (c, v) in row.iter().enumerate() {
            out.data[r * x.cols + c] = (v - mean) * inv * gamma[c] + beta[c];
        }
        stats.push((mean, inv));
    }
    (out, stats)
}

fn layer_norm_backward(
    x: &Matrix,
    g: &Matrix,
    gamma: &[f32],
    stats: &[(f32, f32)],
) -> (Matrix, Vec<f32>, Vec<f32>) {
    let n = x.cols as f32;
    let mut d_x = Matrix::zeros(x.rows, x.cols);
    let mut d_gamma = vec![0.0f32; x.cols];
    let mut d_beta = vec![0.0f32; x.cols];
    for (r, &(mean, inv)) in stats.iter().enumerate().take(x.rows) {
        let row = &x.data[r * x.cols..(r + 1) * x.cols];
        let g_row = &g.data[r * x.cols..(r + 1) * x.cols];
        let x_hat: Vec<f32> = row.iter().map(|v| (v - mean) * inv).collect();
        let d_hat: Vec<f32> = g_row.iter().zip(gamma).map(|(g, gm)| g * gm).collect();
        let sum_d: f32 = d_hat.iter().sum();
        let sum_dx: f32 = d_hat.iter().zip(&x_hat).map(|(d, h)| d * h).sum();
        for c in 0..x.cols {
            d_gamma[c] += g_row[c] * x_hat[c];
            d_beta[c] += g_row[c];
            d_x.data[r * x.cols + c] = inv / n * (n * d_hat[c] - sum_d - x_hat[c] * sum_dx);
        }
    }
    (d_x, d_gamma, d_beta)
}

/// A convolution's geometry: which input value each receptive-field entry reads.
struct Conv {
    channels: usize,
    height: usize,
    width: usize,
    out_height: usize,
    out_width: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
}

impl Conv {
    fn new(input: Shape, output: Shape, kernel: u64, stride: u64, padding: u64) -> Self {
        let (channels, height, width) = dims(input);
        let (_, out_height, out_width) = dims(output);
        Conv {
            channels,
            height,
            width,
            out_height,
            out_width,
            kernel: kernel as usize,
            stride: stride as usize,
            padding: padding as usize,
        }
    }

    fn positions(&self) -> usize {
        self.out_height * self.out_width
    }

    fn field(&self) -> usize {
        self.channels * self.kernel * self.kernel
    }

    /// The input value a (position, field entry) reads, if inside the image.
    fn source(&self, position: usize, entry: usize) -> Option<usize> {
        let (oy, ox) = (position / self.out_width, position % self.out_width);
        let c = entry / (self.kernel * self.kernel);
        let (ky, kx) = ((entry / self.kernel) % self.kernel, entry % self.kernel);
        let y = (oy * self.stride + ky).checked_sub(self.padding)?;
        let x = (ox * self.stride + kx).checked_sub(self.padding)?;
        (y < self.height && x < self.width).then_some(c * self.height * self.width + y * self.width + x)
    }

    /// Every sample's receptive fields as rows: (rows·positions) × (channels·k·k), zero where
    /// padded.
    fn im2col_batch(&self, x: &Matrix, parallel: bool) -> Matrix {
        let block = self.positions() * self.field();
        let mut cols = Matrix::zeros(x.rows * self.positions(), self.field());
        let sources = self.sources();
        for_each_row(&mut cols.data, block, &x.data, x.cols, parallel, |out, image| {
            for (value, &source) in out.iter_mut().zip(&sources) {
                if source != PADDING {
                    *value = image[source as usize];
                }
            }
        });
        cols
    }

    /// Adds each sample's receptive-field gradients ((rows·positions) × field, row-major) back
    /// onto the input values they read.
    fn col2im_batch(&self, d_cols: &Matrix, d_x: &mut Matrix, parallel: bool) {
        let sources = self.sources();
        let block = self.positions() * self.field();
        let width = d_x.cols;
        for_each_row(
            &mut d_x.data,
            width,
            &d_cols.data,
            block,
            parallel,
            |image, d_cols| {
                for (value, &source) in d_cols.iter().zip(&sources) {
                    if source != PADDING {
                        image[source as usize] += value;
                    }
                }
            },
        );
    }

    /// Where each (position, field entry) reads from, worked out once per batch: an index into
    /// the sample's values, or [`PADDING`]. Four bytes an entry keeps the table in cache.
    fn sources(&self) -> Vec<u32> {
        let field = self.field();
        (0..self.positions() * field)
            .map(|i| self.source(i / field, i % field).map_or(PADDING, |s| s as u32))
            .collect()
    }
}

#[cfg(test)]
#[path = "graph_tests.rs"]
mod tests;
