//! The layer-graph operations on host matrices: the reference every other backend is checked
//! against. Matrix multiplies go to a backend (the CPU's SGEMM on its cores, or any other); the
//! other loops run here, row-parallel on rayon's pool where the backend has cores to spare, in
//! the same order either way, so results do not depend on the core count.

use aic_protocol::model_graph::Loss;

use crate::backend::Backend;
use crate::cpu::CpuBackend;
use crate::error::{KernelError, Result};
use crate::graph::{dropout_draw, gelu, sigmoid};
use crate::graph_ops::{Activation, Conv, GraphOps, Pool};
use crate::model::Batch;
use crate::tensor::Matrix;

/// A receptive-field entry that falls in the zero padding.
pub(crate) const PADDING: u32 = u32::MAX;

/// Host loops with matrix multiplies on `backend`.
pub struct HostOps<'a, B: Backend + ?Sized> {
    backend: &'a mut B,
    parallel: bool,
}

impl<'a, B: Backend + ?Sized> HostOps<'a, B> {
    pub fn new(backend: &'a mut B) -> Self {
        let parallel = backend.host_threads() > 1;
        HostOps { backend, parallel }
    }
}

impl<B: Backend + ?Sized> GraphOps for HostOps<'_, B> {
    type Tensor = Matrix;
    type Indices = Vec<u32>;

    fn tensor(&mut self, m: &Matrix) -> Result<Matrix> {
        Ok(m.clone())
    }

    fn matmul(&mut self, a: &Matrix, b: &Matrix, ta: bool, tb: bool) -> Result<Matrix> {
        self.backend.matmul(a, b, ta, tb)
    }

    fn add_bias(&mut self, x: &Matrix, bias: &Matrix) -> Result<Matrix> {
        let mut z = x.clone();
        let cols = z.cols;
        for (i, v) in z.data.iter_mut().enumerate() {
            *v += bias.data[i % cols];
        }
        Ok(z)
    }

    fn column_sum(&mut self, x: &Matrix) -> Result<Matrix> {
        Matrix::new(1, x.cols, self.backend.column_sum(x)?)
    }

    fn add(&mut self, a: &Matrix, b: &Matrix) -> Result<Matrix> {
        Ok(zip(a, b, |a, b| a + b))
    }

    fn multiply(&mut self, a: &Matrix, b: &Matrix) -> Result<Matrix> {
        Ok(zip(a, b, |a, b| a * b))
    }

    fn im2col(&mut self, x: &Matrix, conv: &Conv) -> Result<Matrix> {
        let block = conv.positions() * conv.field();
        let mut cols = Matrix::zeros(x.rows * conv.positions(), conv.field());
        let sources = sources(conv);
        for_each_row(
            &mut cols.data,
            block,
            &x.data,
            x.cols,
            self.parallel,
            |out, image| {
                for (value, &source) in out.iter_mut().zip(&sources) {
                    if source != PADDING {
                        *value = image[source as usize];
                    }
                }
            },
        );
        Ok(cols)
    }

    fn col2im(&mut self, d_cols: &Matrix, conv: &Conv, rows: usize) -> Result<Matrix> {
        let sources = sources(conv);
        let block = conv.positions() * conv.field();
        let mut d_x = Matrix::zeros(rows, conv.input_width());
        let width = d_x.cols;
        for_each_row(
            &mut d_x.data,
            width,
            &d_cols.data,
            block,
            self.parallel,
            |image, d_cols| {
                for (value, &source) in d_cols.iter().zip(&sources) {
                    if source != PADDING {
                        image[source as usize] += value;
                    }
                }
            },
        );
        Ok(d_x)
    }

    fn conv_output(&mut self, y: &Matrix, bias: &Matrix, conv: &Conv) -> Result<Matrix> {
        let (positions, filters) = (conv.positions(), conv.filters);
        let rows = y.rows / positions.max(1);
        let mut out = Matrix::zeros(rows, positions * filters);
        let out_cols = out.cols;
        let bias = &bias.data;
        for_each_row(
            &mut out.data,
            out_cols,
            &y.data,
            positions * filters,
            self.parallel,
            |row, y| {
                for p in 0..positions {
                    for f in 0..filters {
                        row[f * positions + p] = y[p * filters + f] + bias[f];
                    }
                }
            },
        );
        Ok(out)
    }

    fn conv_output_grad(&mut self, g: &Matrix, conv: &Conv) -> Result<Matrix> {
        let (positions, filters) = (conv.positions(), conv.filters);
        let mut g_p = Matrix::zeros(g.rows * positions, filters);
        for_each_row(
            &mut g_p.data,
            positions * filters,
            &g.data,
            g.cols,
            self.parallel,
            |out, g| {
                for f in 0..filters {
                    for p in 0..positions {
                        out[p * filters + f] = g[f * positions + p];
                    }
                }
            },
        );
        Ok(g_p)
    }

    fn pool(&mut self, x: &Matrix, pool: &Pool) -> Result<(Matrix, Vec<u32>)> {
        Ok(pool_forward(x, pool))
    }

    fn pool_backward(&mut self, g: &Matrix, indices: &Vec<u32>, pool: &Pool) -> Result<Matrix> {
        let (input_cols, output_cols) = (pool.input_width(), g.cols);
        let mut d_x = Matrix::zeros(g.rows, input_cols);
        if pool.max {
            for (o, &from) in indices.iter().enumerate() {
                let r = o / output_cols;
                d_x.data[r * input_cols + from as usize] += g.data[o];
            }
        } else {
            // Average pooling: the indices are each window's first input value.
            let k = pool.kernel;
            let area = (k * k) as f32;
            for (o, &first) in indices.iter().enumerate() {
                let r = o / output_cols;
                for dy in 0..k {
                    for dx in 0..k {
                        d_x.data[r * input_cols + first as usize + dy * pool.width + dx] += g.data[o] / area;
                    }
                }
            }
        }
        Ok(d_x)
    }

    fn activate(&mut self, x: &Matrix, f: Activation) -> Result<Matrix> {
        Ok(match f {
            Activation::Relu => map(x, |v| v.max(0.0)),
            Activation::Tanh => map(x, f32::tanh),
            Activation::Sigmoid => map(x, sigmoid),
            Activation::Gelu => map(x, |v| gelu(v).0),
        })
    }

    fn activate_backward(
        &mut self,
        g: &Matrix,
        input: &Matrix,
        output: &Matrix,
        f: Activation,
    ) -> Result<Matrix> {
        Ok(match f {
            Activation::Relu => zip(g, output, |g, y| if y > 0.0 { g } else { 0.0 }),
            Activation::Tanh => zip(g, output, |g, y| g * (1.0 - y * y)),
            Activation::Sigmoid => zip(g, output, |g, y| g * y * (1.0 - y)),
            Activation::Gelu => zip(g, input, |g, v| g * gelu(v).1),
        })
    }

    fn dropout(&mut self, x: &Matrix, rate: f32, seed: u64, layer: u64) -> Result<(Matrix, Matrix)> {
        let keep = 1.0 / (1.0 - rate);
        let mask = Matrix {
            rows: x.rows,
            cols: x.cols,
            data: (0..x.data.len())
                .map(|i| {
                    if dropout_draw(seed, layer, i as u64) < rate {
                        0.0
                    } else {
                        keep
                    }
                })
                .collect(),
        };
        Ok((zip(x, &mask, |v, m| v * m), mask))
    }

    fn layer_norm(
        &mut self,
        x: &Matrix,
        gamma: &Matrix,
        beta: &Matrix,
        epsilon: f32,
    ) -> Result<(Matrix, Matrix)> {
        let mut out = Matrix::zeros(x.rows, x.cols);
        let mut stats = Matrix::zeros(x.rows, 2);
        let n = x.cols as f32;
        for r in 0..x.rows {
            let row = &x.data[r * x.cols..(r + 1) * x.cols];
            let mean = row.iter().sum::<f32>() / n;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
            let inv = 1.0 / (var + epsilon).sqrt();
            for (c, v) in row.iter().enumerate() {
                out.data[r * x.cols + c] = (v - mean) * inv * gamma.data[c] + beta.data[c];
            }
            stats.data[2 * r] = mean;
            stats.data[2 * r + 1] = inv;
        }
        Ok((out, stats))
    }

    fn layer_norm_backward(
        &mut self,
        x: &Matrix,
        g: &Matrix,
        gamma: &Matrix,
        stats: &Matrix,
    ) -> Result<(Matrix, Matrix, Matrix)> {
        let n = x.cols as f32;
        let mut d_x = Matrix::zeros(x.rows, x.cols);
        let mut d_gamma = Matrix::zeros(1, x.cols);
        let mut d_beta = Matrix::zeros(1, x.cols);
        for r in 0..x.rows {
            let (mean, inv) = (stats.data[2 * r], stats.data[2 * r + 1]);
            let row = &x.data[r * x.cols..(r + 1) * x.cols];
            let g_row = &g.data[r * x.cols..(r + 1) * x.cols];
            let x_hat: Vec<f32> = row.iter().map(|v| (v - mean) * inv).collect();
            let d_hat: Vec<f32> = g_row.iter().zip(&gamma.data).map(|(g, gm)| g * gm).collect();
            let sum_d: f32 = d_hat.iter().sum();
            let sum_dx: f32 = d_hat.iter().zip(&x_hat).map(|(d, h)| d * h).sum();
            for c in 0..x.cols {
                d_gamma.data[c] += g_row[c] * x_hat[c];
                d_beta.data[c] += g_row[c];
                d_x.data[r * x.cols + c] = inv / n * (n * d_hat[c] - sum_d - x_hat[c] * sum_dx);
            }
        }
        Ok((d_x, d_gamma, d_beta))
    }

    fn loss(&mut self, outputs: &Matrix, batch: &Batch, loss: Loss) -> Result<(Matrix, Matrix)> {
        let n = outputs.rows.max(1) as f32;
        let (sum, grad) = match loss {
            Loss::SoftmaxCrossEntropy => {
                let (grad, losses) = CpuBackend::default().softmax_xent(outputs, &batch.labels)?;
                (losses.iter().sum::<f32>(), grad)
            }
            Loss::MeanSquaredError => {
                let residuals: Vec<f32> = outputs
                    .data
                    .iter()
                    .zip(&batch.targets)
                    .map(|(p, y)| p - y)
                    .collect();
                let sum = residuals.iter().map(|r| r * r).sum::<f32>();
                let grad = residuals.iter().map(|r| 2.0 * r / n).collect();
                (sum, Matrix::new(outputs.rows, 1, grad)?)
            }
            Loss::BinaryCrossEntropy => {
                let mut sum = 0.0f32;
                let mut grad = Vec::with_capacity(outputs.rows);
                for (z, &label) in outputs.data.iter().zip(&batch.labels) {
                    let t = label as f32;
                    // softplus(z) − t·z, computed without overflow.
                    sum += z.max(0.0) - z * t + (-z.abs()).exp().ln_1p();
                    grad.push((sigmoid(*z) - t) / n);
                }
                (sum, Matrix::new(outputs.rows, 1, grad)?)
            }
        };
        if grad.rows != outputs.rows {
            return Err(KernelError::Shape {
                op: "loss",
                detail: format!("{} gradient rows for {} outputs", grad.rows, outputs.rows),
            });
        }
        Ok((Matrix::new(1, 1, vec![sum])?, grad))
    }
}

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

/// Where each (position, field entry) reads from, worked out once per batch: an index into the
/// sample's values, or [`PADDING`]. Four bytes an entry keeps the table in cache.
fn sources(conv: &Conv) -> Vec<u32> {
    let field = conv.field();
    (0..conv.positions() * field)
        .map(|i| conv.source(i / field, i % field).map_or(PADDING, |s| s as u32))
        .collect()
}

fn map(x: &Matrix, f: impl Fn(f32) -> f32) -> Matrix {
    Matrix {
        rows: x.rows,
        cols: x.cols,
        data: x.data.iter().map(|&v| f(v)).collect(),
    }
}

fn zip(a: &Matrix, b: &Matrix, f: impl Fn(f32, f32) -> f32) -> Matrix {
    Matrix {
        rows: a.rows,
        cols: a.cols,
        data: a.data.iter().zip(&b.data).map(|(&a, &b)| f(a, b)).collect(),
    }
}

/// Pools each channel's windows: the maximum (with the input index it came from) or the mean
/// (with the window's first input index).
fn pool_forward(x: &Matrix, pool: &Pool) -> (Matrix, Vec<u32>) {
    let (h, w) = (pool.height, pool.width);
    let (oh, ow, k, stride) = (pool.out_height, pool.out_width, pool.kernel, pool.stride);
    let mut out = Matrix::zeros(x.rows, pool.output_width());
    let mut indices = Vec::with_capacity(out.data.len());
    for r in 0..x.rows {
        let row = &x.data[r * x.cols..(r + 1) * x.cols];
        for c in 0..pool.channels {
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
                        if pool.max { best } else { sum / (k * k) as f32 };
                    indices.push(if pool.max { at as u32 } else { first as u32 });
                }
            }
        }
    }
    (out, indices)
}
