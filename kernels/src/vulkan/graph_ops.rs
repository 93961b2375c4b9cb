//! The layer-graph operations as compute dispatches on device buffers, recorded into one command
//! buffer: a whole training step (forward, loss, backward) is one submission, and nothing leaves
//! the device until the gradients are read. Every shader here gathers (one invocation per output
//! value, no atomics), so a step repeats bit for bit on one device.

use aic_protocol::model_graph::Loss;
use vulkano::buffer::Subbuffer;
use vulkano::descriptor_set::WriteDescriptorSet;

use super::{Floats, Kernel, Recorder};
use crate::error::{KernelError, Result};
use crate::graph_ops::{Activation, Conv, GraphOps, Pool, Shaped};
use crate::model::Batch;
use crate::tensor::Matrix;

/// A row-major matrix in a device buffer.
#[derive(Clone)]
pub struct DeviceTensor {
    pub(super) buffer: Floats,
    rows: usize,
    cols: usize,
}

impl Shaped for DeviceTensor {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
}

impl DeviceTensor {
    fn len(&self) -> usize {
        self.rows * self.cols
    }
}

/// Records the operations of a layer graph on `rec`.
pub(super) struct DeviceOps<'r, 'a> {
    rec: &'r mut Recorder<'a>,
}

impl<'r, 'a> DeviceOps<'r, 'a> {
    pub(super) fn new(rec: &'r mut Recorder<'a>) -> Self {
        DeviceOps { rec }
    }

    /// A fresh output tensor.
    fn output(&mut self, rows: usize, cols: usize) -> Result<DeviceTensor> {
        Ok(DeviceTensor {
            buffer: self.rec.output(rows * cols)?,
            rows,
            cols,
        })
    }

    /// Dispatches `kernel` over `count` invocations in groups of 64.
    fn run<P: vulkano::buffer::BufferContents>(
        &mut self,
        kernel: Kernel,
        writes: Vec<WriteDescriptorSet>,
        push: P,
        count: usize,
    ) -> Result<()> {
        let groups = flat_groups(kernel, count)?;
        self.rec.dispatch(kernel, writes, push, groups)
    }
}

/// Workgroups for `count` invocations of 64: along x up to the 65,535 every device allows, then
/// rows of those along y (the shaders flatten the two back into one index).
fn flat_groups(kernel: Kernel, count: usize) -> Result<[u32; 3]> {
    const MAX_GROUPS: usize = 65_535;
    let groups = count.div_ceil(64).max(1);
    let x = groups.min(MAX_GROUPS);
    let y = groups.div_ceil(x);
    if count > u32::MAX as usize || y > MAX_GROUPS {
        return Err(KernelError::Shape {
            op: "vulkan dispatch",
            detail: format!("{kernel:?} over {count} values is more than one dispatch indexes"),
        });
    }
    Ok([x as u32, y as u32, 1])
}

fn buffers(list: &[&Floats]) -> Vec<WriteDescriptorSet> {
    list.iter()
        .enumerate()
        .map(|(binding, buffer)| WriteDescriptorSet::buffer(binding as u32, (*buffer).clone()))
        .collect()
}

fn mismatch(op: &'static str, detail: String) -> KernelError {
    KernelError::Shape { op, detail }
}

fn same(op: &'static str, a: &DeviceTensor, b: &DeviceTensor) -> Result<()> {
    if (a.rows, a.cols) != (b.rows, b.cols) {
        return Err(mismatch(
            op,
            format!("{}×{} against {}×{}", a.rows, a.cols, b.rows, b.cols),
        ));
    }
    Ok(())
}

fn width(op: &'static str, t: &DeviceTensor, expected: usize) -> Result<()> {
    if t.cols != expected {
        return Err(mismatch(
            op,
            format!("rows of {} values; expected {expected}", t.cols),
        ));
    }
    Ok(())
}

impl GraphOps for DeviceOps<'_, '_> {
    type Tensor = DeviceTensor;
    type Indices = Subbuffer<[u32]>;

    fn tensor(&mut self, m: &Matrix) -> Result<DeviceTensor> {
        Ok(DeviceTensor {
            buffer: self.rec.input(&m.data)?,
            rows: m.rows,
            cols: m.cols,
        })
    }

    fn matmul(&mut self, a: &DeviceTensor, b: &DeviceTensor, ta: bool, tb: bool) -> Result<DeviceTensor> {
        let (m, k) = if ta { (a.cols, a.rows) } else { (a.rows, a.cols) };
        let (k2, n) = if tb { (b.cols, b.rows) } else { (b.rows, b.cols) };
        if k != k2 {
            return Err(mismatch("matmul", format!("op(a) is {m}×{k}, op(b) is {k2}×{n}")));
        }
        let buffer = self.rec.matmul(&a.buffer, &b.buffer, (m, n, k), ta, tb)?;
        Ok(DeviceTensor {
            buffer,
            rows: m,
            cols: n,
        })
    }

    fn add_bias(&mut self, x: &DeviceTensor, bias: &DeviceTensor) -> Result<DeviceTensor> {
        if bias.len() != x.cols {
            return Err(mismatch(
                "add_bias",
                format!("{} biases for {} columns", bias.len(), x.cols),
            ));
        }
        let buffer = self
            .rec
            .bias_act(&x.buffer, &bias.buffer, x.rows, x.cols, false)?;
        Ok(DeviceTensor {
            buffer,
            rows: x.rows,
            cols: x.cols,
        })
    }

    fn column_sum(&mut self, x: &DeviceTensor) -> Result<DeviceTensor> {
        let buffer = self.rec.column_sum(&x.buffer, x.rows, x.cols)?;
        Ok(DeviceTensor {
            buffer,
            rows: 1,
            cols: x.cols,
        })
    }

    fn add(&mut self, a: &DeviceTensor, b: &DeviceTensor) -> Result<DeviceTensor> {
        self.elementwise(a, b, false)
    }

    fn multiply(&mut self, a: &DeviceTensor, b: &DeviceTensor) -> Result<DeviceTensor> {
        self.elementwise(a, b, true)
    }

    fn im2col(&mut self, x: &DeviceTensor, conv: &Conv) -> Result<DeviceTensor> {
        width("im2col", x, conv.input_width())?;
        let out = self.output(x.rows * conv.positions(), conv.field())?;
        let push = conv_push(out.len(), conv);
        self.run(
            Kernel::Im2col,
            buffers(&[&x.buffer, &out.buffer]),
            push,
            out.len(),
        )?;
        Ok(out)
    }

    fn col2im(&mut self, d_cols: &DeviceTensor, conv: &Conv, rows: usize) -> Result<DeviceTensor> {
        width("col2im", d_cols, conv.field())?;
        if d_cols.rows != rows * conv.positions() {
            return Err(mismatch(
                "col2im",
                format!("{} field rows for {rows} samples", d_cols.rows),
            ));
        }
        let out = self.output(rows, conv.input_width())?;
        let push = conv_push(out.len(), conv);
        self.run(
            Kernel::Col2im,
            buffers(&[&d_cols.buffer, &out.buffer]),
            push,
            out.len(),
        )?;
        Ok(out)
    }

    fn conv_output(&mut self, y: &DeviceTensor, bias: &DeviceTensor, conv: &Conv) -> Result<DeviceTensor> {
        let positions = conv.positions().max(1);
        width("conv_output", y, conv.filters)?;
        if bias.len() != conv.filters || y.rows % positions != 0 {
            return Err(mismatch(
                "conv_output",
                format!(
                    "{} biases, {} GEMM rows for {} filters at {positions} positions",
                    bias.len(),
                    y.rows,
                    conv.filters
                ),
            ));
        }
        let out = self.output(y.rows / positions, positions * conv.filters)?;
        let push = [out.len() as u32, positions as u32, conv.filters as u32];
        self.run(
            Kernel::ConvOutput,
            buffers(&[&y.buffer, &bias.buffer, &out.buffer]),
            push,
            out.len(),
        )?;
        Ok(out)
    }

    fn conv_output_grad(&mut self, g: &DeviceTensor, conv: &Conv) -> Result<DeviceTensor> {
        width("conv_output_grad", g, conv.positions() * conv.filters)?;
        let out = self.output(g.rows * conv.positions(), conv.filters)?;
        let push = [out.len() as u32, conv.positions() as u32, conv.filters as u32];
        self.run(
            Kernel::ConvOutputGrad,
            buffers(&[&g.buffer, &out.buffer]),
            push,
            out.len(),
        )?;
        Ok(out)
    }

    fn pool(&mut self, x: &DeviceTensor, pool: &Pool) -> Result<(DeviceTensor, Subbuffer<[u32]>)> {
        width("pool", x, pool.input_width())?;
        let out = self.output(x.rows, pool.output_width())?;
        let indices = self.rec.indices(out.len())?;
        let writes = vec![
            WriteDescriptorSet::buffer(0, x.buffer.clone()),
            WriteDescriptorSet::buffer(1, out.buffer.clone()),
            WriteDescriptorSet::buffer(2, indices.clone()),
        ];
        self.run(Kernel::Pool, writes, pool_push(out.len(), pool), out.len())?;
        Ok((out, indices))
    }

    fn pool_backward(
        &mut self,
        g: &DeviceTensor,
        indices: &Subbuffer<[u32]>,
        pool: &Pool,
    ) -> Result<DeviceTensor> {
        width("pool_backward", g, pool.output_width())?;
        if indices.len() < g.len() as u64 {
            return Err(mismatch(
                "pool_backward",
                format!("{} indices for {} gradients", indices.len(), g.len()),
            ));
        }
        let out = self.output(g.rows, pool.input_width())?;
        let writes = vec![
            WriteDescriptorSet::buffer(0, g.buffer.clone()),
            WriteDescriptorSet::buffer(1, indices.clone()),
            WriteDescriptorSet::buffer(2, out.buffer.clone()),
        ];
        self.run(
            Kernel::PoolBackward,
            writes,
            pool_push(out.len(), pool),
            out.len(),
        )?;
        Ok(out)
    }

    fn activate(&mut self, x: &DeviceTensor, f: Activation) -> Result<DeviceTensor> {
        let out = self.output(x.rows, x.cols)?;
        let push = [out.len() as u32, f.code()];
        self.run(
            Kernel::Activation,
            buffers(&[&x.buffer, &out.buffer]),
            push,
            out.len(),
        )?;
        Ok(out)
    }

    fn activate_backward(
        &mut self,
        g: &DeviceTensor,
        input: &DeviceTensor,
        output: &DeviceTensor,
        f: Activation,
    ) -> Result<DeviceTensor> {
        same("activate_backward", g, input)?;
        same("activate_backward", g, output)?;
        let out = self.output(g.rows, g.cols)?;
        let push = [out.len() as u32, f.code()];
        self.run(
            Kernel::ActivationBackward,
            buffers(&[&g.buffer, &input.buffer, &output.buffer, &out.buffer]),
            push,
            out.len(),
        )?;
        Ok(out)
    }

    fn dropout(
        &mut self,
        x: &DeviceTensor,
        rate: f32,
        seed: u64,
        layer: u64,
    ) -> Result<(DeviceTensor, DeviceTensor)> {
        let out = self.output(x.rows, x.cols)?;
        let mask = self.output(x.rows, x.cols)?;
        let keep = 1.0 / (1.0 - rate);
        let push = [
            out.len() as u32,
            seed as u32,
            (seed >> 32) as u32,
            layer as u32,
            (layer >> 32) as u32,
            rate.to_bits(),
            keep.to_bits(),
        ];
        self.run(
            Kernel::Dropout,
            buffers(&[&x.buffer, &out.buffer, &mask.buffer]),
            push,
            out.len(),
        )?;
        Ok((out, mask))
    }

    fn layer_norm(
        &mut self,
        x: &DeviceTensor,
        gamma: &DeviceTensor,
        beta: &DeviceTensor,
        epsilon: f32,
    ) -> Result<(DeviceTensor, DeviceTensor)> {
        if gamma.len() != x.cols || beta.len() != x.cols {
            return Err(mismatch(
                "layer_norm",
                format!(
                    "γ and β of {} and {} for rows of {}",
                    gamma.len(),
                    beta.len(),
                    x.cols
                ),
            ));
        }
        let out = self.output(x.rows, x.cols)?;
        let stats = self.output(x.rows, 2)?;
        let push = [x.rows as u32, x.cols as u32, epsilon.to_bits()];
        self.run(
            Kernel::LayerNorm,
            buffers(&[&x.buffer, &gamma.buffer, &beta.buffer, &out.buffer, &stats.buffer]),
            push,
            x.rows,
        )?;
        Ok((out, stats))
    }

    fn layer_norm_backward(
        &mut self,
        x: &DeviceTensor,
        g: &DeviceTensor,
        gamma: &DeviceTensor,
        stats: &DeviceTensor,
    ) -> Result<(DeviceTensor, DeviceTensor, DeviceTensor)> {
        same("layer_norm_backward", x, g)?;
        if gamma.len() != x.cols || stats.len() != 2 * x.rows {
            return Err(mismatch(
                "layer_norm_backward",
                format!(
                    "γ of {} and {} statistics for {}×{}",
                    gamma.len(),
                    stats.len(),
                    x.rows,
                    x.cols
                ),
            ));
        }
        let d_x = self.output(x.rows, x.cols)?;
        let push = [x.rows as u32, x.cols as u32];
        self.run(
            Kernel::LayerNormBackward,
            buffers(&[&x.buffer, &g.buffer, &gamma.buffer, &stats.buffer, &d_x.buffer]),
            push,
            x.rows,
        )?;
        let d_gamma = self.output(1, x.cols)?;
        let d_beta = self.output(1, x.cols)?;
        self.run(
            Kernel::LayerNormParams,
            buffers(&[
                &x.buffer,
                &g.buffer,
                &stats.buffer,
                &d_gamma.buffer,
                &d_beta.buffer,
            ]),
            push,
            x.cols,
        )?;
        Ok((d_x, d_gamma, d_beta))
    }

    fn loss(
        &mut self,
        outputs: &DeviceTensor,
        batch: &Batch,
        loss: Loss,
    ) -> Result<(DeviceTensor, DeviceTensor)> {
        let rows = outputs.rows;
        let (grad, losses) = match loss {
            Loss::SoftmaxCrossEntropy => {
                let labels = self.rec.labels(&batch.labels)?;
                let (grad, losses) = self
                    .rec
                    .softmax_xent(&outputs.buffer, &labels, rows, outputs.cols)?;
                (
                    DeviceTensor {
                        buffer: grad,
                        rows,
                        cols: outputs.cols,
                    },
                    losses,
                )
            }
            Loss::MeanSquaredError | Loss::BinaryCrossEntropy => {
                width("loss", outputs, 1)?;
                let (targets, kind): (Vec<f32>, u32) = match loss {
                    Loss::MeanSquaredError => (batch.targets.clone(), 0),
                    _ => (batch.labels.iter().map(|&l| l as f32).collect(), 1),
                };
                if targets.len() != rows {
                    return Err(mismatch(
                        "loss",
                        format!("{} targets for {rows} rows", targets.len()),
                    ));
                }
                let targets = self.rec.input(&targets)?;
                let grad = self.output(rows, 1)?;
                let losses = self.rec.output(rows)?;
                let writes = vec![
                    WriteDescriptorSet::buffer(0, outputs.buffer.clone()),
                    WriteDescriptorSet::buffer(1, targets),
                    WriteDescriptorSet::buffer(2, grad.buffer.clone()),
                    WriteDescriptorSet::buffer(3, losses.clone()),
                ];
                self.run(Kernel::RegressionLoss, writes, [rows as u32, kind], rows)?;
                (grad, losses)
            }
        };
        let sum = self.rec.sum(&losses, rows, false)?;
        Ok((
            DeviceTensor {
                buffer: sum,
                rows: 1,
                cols: 1,
            },
            grad,
        ))
    }
}

impl DeviceOps<'_, '_> {
    fn elementwise(&mut self, a: &DeviceTensor, b: &DeviceTensor, multiply: bool) -> Result<DeviceTensor> {
        same(if multiply { "multiply" } else { "add" }, a, b)?;
        let out = self.output(a.rows, a.cols)?;
        let push = [out.len() as u32, u32::from(multiply)];
        self.run(
            Kernel::Elementwise,
            buffers(&[&a.buffer, &b.buffer, &out.buffer]),
            push,
            out.len(),
        )?;
        Ok(out)
    }
}

/// The push constants im2col and col2im share.
fn conv_push(total: usize, conv: &Conv) -> [u32; 11] {
    [
        total as u32,
        conv.channels as u32,
        conv.height as u32,
        conv.width as u32,
        conv.out_height as u32,
        conv.out_width as u32,
        conv.kernel as u32,
        conv.stride as u32,
        conv.padding as u32,
        conv.positions() as u32,
        conv.field() as u32,
    ]
}

fn pool_push(total: usize, pool: &Pool) -> [u32; 9] {
    [
        total as u32,
        pool.channels as u32,
        pool.height as u32,
        pool.width as u32,
        pool.out_height as u32,
        pool.out_width as u32,
        pool.kernel as u32,
        pool.stride as u32,
        u32::from(pool.max),
    ]
}
