//! The tensor operations a layer graph's forward and backward passes are written in, once, for
//! every backend: the host runs them eagerly on matrices (`host_ops`), the Vulkan backend records
//! them as dispatches on device buffers into one command buffer (`vulkan::graph_ops`). Also the
//! geometry of convolutions and pooling windows, which both sides index the same way.
//!
//! ```text
//!  GraphModel::step_with(ops) ──► ops.matmul, ops.im2col, ops.pool, ops.layer_norm, … ──► tensors
//!                                   ├─ HostOps    Matrix, computed at once (the reference)
//!                                   └─ DeviceOps  device buffers, one submission a step
//! ```

use aic_protocol::model_graph::{Loss, Shape};

use crate::error::Result;
use crate::model::Batch;
use crate::tensor::Matrix;

/// A row-major matrix, wherever it lives.
pub trait Shaped {
    fn rows(&self) -> usize;
    fn cols(&self) -> usize;
}

impl Shaped for Matrix {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
}

/// An element-wise activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Relu,
    Tanh,
    Sigmoid,
    /// The tanh approximation.
    Gelu,
}

impl Activation {
    /// The code the activation shaders branch on.
    pub fn code(self) -> u32 {
        match self {
            Activation::Relu => 0,
            Activation::Tanh => 1,
            Activation::Sigmoid => 2,
            Activation::Gelu => 3,
        }
    }
}

/// The operations of a layer graph. A tensor is a batch of rows; every call answers a new tensor
/// and leaves its inputs as they were, so a backward pass can read what the forward pass kept.
pub trait GraphOps {
    type Tensor: Clone + Shaped;
    /// Where each max-pooling output came from.
    type Indices;

    /// A host matrix as this backend's tensor (weights, a batch).
    fn tensor(&mut self, m: &Matrix) -> Result<Self::Tensor>;
    /// op(a)·op(b), where op transposes when asked.
    fn matmul(&mut self, a: &Self::Tensor, b: &Self::Tensor, ta: bool, tb: bool) -> Result<Self::Tensor>;
    /// x + bias, the bias (1 × cols) added to every row.
    fn add_bias(&mut self, x: &Self::Tensor, bias: &Self::Tensor) -> Result<Self::Tensor>;
    /// Σ over rows, per column: 1 × cols.
    fn column_sum(&mut self, x: &Self::Tensor) -> Result<Self::Tensor>;
    fn add(&mut self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;
    fn multiply(&mut self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;

    /// Every sample's receptive fields as rows: (rows·positions) × field, zero where padded.
    fn im2col(&mut self, x: &Self::Tensor, conv: &Conv) -> Result<Self::Tensor>;
    /// Adds receptive-field gradients back onto the input values they read: rows × input.
    fn col2im(&mut self, d_cols: &Self::Tensor, conv: &Conv, rows: usize) -> Result<Self::Tensor>;
    /// The GEMM's (rows·positions) × filters output as rows of filters × positions, plus bias.
    fn conv_output(&mut self, y: &Self::Tensor, bias: &Self::Tensor, conv: &Conv) -> Result<Self::Tensor>;
    /// The inverse layout for the output gradient: rows × (filters·positions) to
    /// (rows·positions) × filters.
    fn conv_output_grad(&mut self, g: &Self::Tensor, conv: &Conv) -> Result<Self::Tensor>;

    /// Pools each channel's windows: the maximum (with where it came from) or the mean.
    fn pool(&mut self, x: &Self::Tensor, pool: &Pool) -> Result<(Self::Tensor, Self::Indices)>;
    fn pool_backward(
        &mut self,
        g: &Self::Tensor,
        indices: &Self::Indices,
        pool: &Pool,
    ) -> Result<Self::Tensor>;

    fn activate(&mut self, x: &Self::Tensor, f: Activation) -> Result<Self::Tensor>;
    /// The gradient through an activation, given its input and output.
    fn activate_backward(
        &mut self,
        g: &Self::Tensor,
        input: &Self::Tensor,
        output: &Self::Tensor,
        f: Activation,
    ) -> Result<Self::Tensor>;
    /// Drops each value with probability `rate` (drawn by [`crate::graph::dropout_draw`] from the
    /// seed, the layer and the value's index) and scales the rest by 1/(1 − rate). Answers the
    /// output and the mask of factors.
    fn dropout(
        &mut self,
        x: &Self::Tensor,
        rate: f32,
        seed: u64,
        layer: u64,
    ) -> Result<(Self::Tensor, Self::Tensor)>;

    /// Normalises each row over its values, (x − μ)/σ · γ + β. Answers the output and each
    /// row's (μ, 1/σ) as rows × 2.
    fn layer_norm(
        &mut self,
        x: &Self::Tensor,
        gamma: &Self::Tensor,
        beta: &Self::Tensor,
        epsilon: f32,
    ) -> Result<(Self::Tensor, Self::Tensor)>;
    /// Answers dx, dγ and dβ.
    fn layer_norm_backward(
        &mut self,
        x: &Self::Tensor,
        g: &Self::Tensor,
        gamma: &Self::Tensor,
        stats: &Self::Tensor,
    ) -> Result<(Self::Tensor, Self::Tensor, Self::Tensor)>;

    /// The loss of the outputs on the batch's labels or targets (checked by the caller): Σ of
    /// the rows' losses (1 × 1), and the gradient of their mean with respect to the outputs.
    fn loss(
        &mut self,
        outputs: &Self::Tensor,
        batch: &Batch,
        loss: Loss,
    ) -> Result<(Self::Tensor, Self::Tensor)>;
}

pub(crate) fn dims(shape: Shape) -> (usize, usize, usize) {
    match shape {
        Shape::Vector(n) => (n as usize, 1, 1),
        Shape::Image {
            channels,
            height,
            width,
        } => (channels as usize, height as usize, width as usize),
    }
}

/// A convolution's geometry: which input value each receptive-field entry reads.
#[derive(Clone, Copy, Debug)]
pub struct Conv {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub out_height: usize,
    pub out_width: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub filters: usize,
}

impl Conv {
    pub(crate) fn new(
        input: Shape,
        output: Shape,
        filters: u64,
        kernel: u64,
        stride: u64,
        padding: u64,
    ) -> Self {
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
            filters: filters as usize,
        }
    }

    pub fn positions(&self) -> usize {
        self.out_height * self.out_width
    }

    /// Values of one receptive field: channels · k · k.
    pub fn field(&self) -> usize {
        self.channels * self.kernel * self.kernel
    }

    /// Values of one input sample.
    pub fn input_width(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The input value a (position, field entry) reads, if inside the image.
    pub fn source(&self, position: usize, entry: usize) -> Option<usize> {
        let (oy, ox) = (position / self.out_width, position % self.out_width);
        let c = entry / (self.kernel * self.kernel);
        let (ky, kx) = ((entry / self.kernel) % self.kernel, entry % self.kernel);
        let y = (oy * self.stride + ky).checked_sub(self.padding)?;
        let x = (ox * self.stride + kx).checked_sub(self.padding)?;
        (y < self.height && x < self.width).then_some(c * self.height * self.width + y * self.width + x)
    }
}

/// A pooling layer's geometry (windows of kernel × kernel, no padding).
#[derive(Clone, Copy, Debug)]
pub struct Pool {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub out_height: usize,
    pub out_width: usize,
    pub kernel: usize,
    pub stride: usize,
    /// The maximum; the mean otherwise.
    pub max: bool,
}

impl Pool {
    pub(crate) fn new(input: Shape, output: Shape, kernel: u64, stride: u64, max: bool) -> Self {
        let (channels, height, width) = dims(input);
        let (_, out_height, out_width) = dims(output);
        Pool {
            channels,
            height,
            width,
            out_height,
            out_width,
            kernel: kernel as usize,
            stride: stride as usize,
            max,
        }
    }

    pub fn input_width(&self) -> usize {
        self.channels * self.height * self.width
    }

    pub fn output_width(&self) -> usize {
        self.channels * self.out_height * self.out_width
    }
}
