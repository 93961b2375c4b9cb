//! The Vulkan backend: the ops as compute dispatches through vulkano. Buffers are pooled by
//! size and reused; outputs are poisoned with NaN before each dispatch, so an element a kernel
//! fails to write shows up as NaN rather than a stale value; a whole training step is recorded
//! into one command buffer and submitted once (vulkano inserts the barriers between dispatches).

mod context;
mod graph_ops;
mod kernels;

use std::collections::HashMap;
use std::sync::Arc;

use vulkano::buffer::{Buffer, BufferContents, BufferCreateInfo, BufferUsage, Subbuffer};
use vulkano::command_buffer::allocator::StandardCommandBufferAllocator;
use vulkano::command_buffer::{AutoCommandBufferBuilder, CommandBufferUsage, PrimaryAutoCommandBuffer};
use vulkano::descriptor_set::allocator::StandardDescriptorSetAllocator;
use vulkano::descriptor_set::{DescriptorSet, WriteDescriptorSet};
use vulkano::device::physical::PhysicalDeviceType;
use vulkano::memory::allocator::{AllocationCreateInfo, MemoryTypeFilter, StandardMemoryAllocator};
use vulkano::pipeline::{Pipeline, PipelineBindPoint};
use vulkano::sync::{self, GpuFuture};

use context::Context;
pub use context::VulkanOptions;
use graph_ops::DeviceOps;
pub use graph_ops::DeviceTensor;
use kernels::{Kernel, Pipelines};

use crate::backend::{check_adam, check_labels, check_len, check_matmul, check_same, AdamParams, Backend};
use crate::error::{check_finite, KernelError, Result};
use crate::graph::GraphModel;
use crate::graph_ops::{GraphOps, Shaped};
use crate::model::{Batch, ModelSpec, Weights};
use crate::tensor::Matrix;

/// A buffer of f32 on the device.
type Floats = Subbuffer<[f32]>;

/// A quiet NaN: what an output holds until a kernel writes it.
const POISON: u32 = 0x7fc0_0000;

fn vk(error: impl std::fmt::Display) -> KernelError {
    KernelError::Vulkan(error.to_string())
}

fn groups(count: usize, size: usize) -> u32 {
    count.div_ceil(size).max(1) as u32
}

pub struct VulkanBackend {
    context: Context,
    memory: Arc<StandardMemoryAllocator>,
    descriptor_sets: Arc<StandardDescriptorSetAllocator>,
    command_buffers: Arc<StandardCommandBufferAllocator>,
    pipelines: Pipelines,
    /// Free buffers by element count, reused across calls.
    free: HashMap<usize, Vec<Subbuffer<[f32]>>>,
    free_labels: HashMap<usize, Vec<Subbuffer<[u32]>>>,
    max_buffer_bytes: u64,
    /// Whether the device runs the register-blocked matrix multiply (256 invocations and 8 KiB
    /// of shared memory per workgroup); the 16×16 kernel otherwise.
    blocked_matmul: bool,
    /// Whether the blocked matrix multiply loads vec4s where the shapes allow.
    vector_loads: bool,
    vector_load_multiplies: u64,
    submissions: u64,
}

impl VulkanBackend {
    pub fn new(options: VulkanOptions) -> Result<Self> {
        let context = Context::open(options)?;
        let device = context.device.clone();
        let properties = device.physical_device().properties();
        let max_buffer_bytes = u64::from(properties.max_storage_buffer_range);
        let blocked_matmul = properties.max_compute_work_group_invocations >= 256
            && properties.max_compute_work_group_size[0] >= 16
            && properties.max_compute_work_group_size[1] >= 16
            && properties.max_compute_shared_memory_size >= 2 * 64 * 16 * 4;
        Ok(VulkanBackend {
            blocked_matmul,
            submissions: 0,
            vector_loads: true,
            vector_load_multiplies: 0,
            memory: Arc::new(StandardMemoryAllocator::new_default(device.clone())),
            descriptor_sets: Arc::new(StandardDescriptorSetAllocator::new(
                device.clone(),
                Default::default(),
            )),
            command_buffers: Arc::new(StandardCommandBufferAllocator::new(device, Default::default())),
            pipelines: Pipelines::default(),
            free: HashMap::new(),
            free_labels: HashMap::new(),
            max_buffer_bytes,
            context,
        })
    }

    pub fn device_name(&self) -> &str {
        &self.context.device_name
    }

    /// Whether matrix multiplies use the register-blocked kernel.
    pub fn blocked_matmul(&self) -> bool {
        self.blocked_matmul
    }

    /// Uses the 16×16 matrix multiply even where the blocked one could run (to compare them).
    pub fn use_simple_matmul(&mut self) {
        self.blocked_matmul = false;
    }

    /// Keeps the blocked matrix multiply on scalar loads even where vec4 loads could run (to
    /// compare them).
    pub fn use_scalar_loads(&mut self) {
        self.vector_loads = false;
    }

    pub fn is_cpu_device(&self) -> bool {
        self.context.device_type == PhysicalDeviceType::Cpu
    }

    /// Whether the Khronos validation layer is active on this backend.
    pub fn validating(&self) -> bool {
        self.context.validating
    }

    /// Everything the validation layer has reported so far (warnings and errors).
    pub fn validation_messages(&self) -> Vec<String> {
        self.context.messages.lock().expect("message sink").clone()
    }

    /// Creates every pipeline now instead of on first use (pipeline creation is slow on some
    /// drivers; benchmarks warm up with this).
    pub fn warm_up(&mut self) -> Result<()> {
        for kernel in Kernel::ALL {
            self.pipelines.get(&self.context.device, kernel)?;
        }
        Ok(())
    }

    /// Times `repeats` n×n matrix multiplies recorded into one submission, the inputs already on
    /// the device: the kernel's own speed, without uploads and downloads.
    pub fn time_matmul(&mut self, a: &Matrix, b: &Matrix, repeats: usize) -> Result<std::time::Duration> {
        let dims = check_matmul(a, b, false, false)?;
        let mut rec = Recorder::new(self)?;
        let (a_buf, b_buf) = (rec.input(&a.data)?, rec.input(&b.data)?);
        for _ in 0..repeats {
            rec.matmul(&a_buf, &b_buf, dims, false, false)?;
        }
        let started = std::time::Instant::now();
        let done = rec.submit()?;
        let elapsed = started.elapsed();
        self.recycle(done);
        Ok(elapsed)
    }

    /// Records whatever `record` asks of the layer-graph operations into one command buffer,
    /// submits it, and reads back the tensors it answers (tests and benchmarks drive single
    /// operations through this).
    pub fn with_graph_ops(
        &mut self,
        record: impl FnOnce(
            &mut dyn GraphOps<Tensor = DeviceTensor, Indices = Subbuffer<[u32]>>,
        ) -> Result<Vec<DeviceTensor>>,
    ) -> Result<Vec<Matrix>> {
        let mut rec = Recorder::new(self)?;
        let outputs = record(&mut DeviceOps::new(&mut rec))?;
        let done = rec.submit()?;
        let read = outputs
            .iter()
            .map(|t| Matrix::new(t.rows(), t.cols(), self.download(&t.buffer, t.rows() * t.cols())?))
            .collect();
        self.recycle(done);
        read
    }

    /// Matrix multiplies recorded with vec4 loads so far.
    pub fn vector_load_multiplies(&self) -> u64 {
        self.vector_load_multiplies
    }

    /// Command buffers submitted so far: a layer graph's training step is one.
    pub fn submissions(&self) -> u64 {
        self.submissions
    }

    /// Submits an empty command buffer and waits: the floor under every step's host overhead.
    pub fn empty_round_trip(&mut self) -> Result<()> {
        let done = Recorder::new(self)?.submit()?;
        self.recycle(done);
        Ok(())
    }

    fn new_buffer<T: BufferContents>(&self, len: usize) -> Result<Subbuffer<[T]>> {
        let bytes = (len.max(1) * std::mem::size_of::<u32>()) as u64;
        if bytes > self.max_buffer_bytes {
            return Err(KernelError::BufferTooLarge {
                bytes,
                limit: self.max_buffer_bytes,
            });
        }
        Buffer::new_slice::<T>(
            self.memory.clone(),
            BufferCreateInfo {
                usage: BufferUsage::STORAGE_BUFFER | BufferUsage::TRANSFER_DST | BufferUsage::TRANSFER_SRC,
                ..Default::default()
            },
            AllocationCreateInfo {
                memory_type_filter: MemoryTypeFilter::PREFER_DEVICE | MemoryTypeFilter::HOST_RANDOM_ACCESS,
                ..Default::default()
            },
            len.max(1) as u64,
        )
        .map_err(vk)
    }

    fn take(&mut self, len: usize) -> Result<Subbuffer<[f32]>> {
        match self.free.get_mut(&len).and_then(Vec::pop) {
            Some(buffer) => Ok(buffer),
            None => self.new_buffer(len),
        }
    }

    fn upload(&mut self, data: &[f32]) -> Result<Subbuffer<[f32]>> {
        let buffer = self.take(data.len())?;
        buffer.write().map_err(vk)?[..data.len()].copy_from_slice(data);
        Ok(buffer)
    }

    fn upload_labels(&mut self, labels: &[u32]) -> Result<Subbuffer<[u32]>> {
        let buffer = match self.free_labels.get_mut(&labels.len()).and_then(Vec::pop) {
            Some(buffer) => buffer,
            None => self.new_buffer(labels.len())?,
        };
        buffer.write().map_err(vk)?[..labels.len()].copy_from_slice(labels);
        Ok(buffer)
    }

    fn download(&self, buffer: &Subbuffer<[f32]>, len: usize) -> Result<Vec<f32>> {
        Ok(buffer.read().map_err(vk)?[..len].to_vec())
    }

    fn give_back(&mut self, buffers: Vec<Subbuffer<[f32]>>) {
        for buffer in buffers {
            self.free.entry(buffer.len() as usize).or_default().push(buffer);
        }
    }
}

/// Records dispatches into one command buffer; buffers it hands out go back to the pool after
/// the submission.
struct Recorder<'a> {
    backend: &'a mut VulkanBackend,
    builder: AutoCommandBufferBuilder<PrimaryAutoCommandBuffer>,
    used: Vec<Subbuffer<[f32]>>,
    labels: Vec<Subbuffer<[u32]>>,
}

impl<'a> Recorder<'a> {
    fn new(backend: &'a mut VulkanBackend) -> Result<Self> {
        let builder = AutoCommandBufferBuilder::primary(
            backend.command_buffers.clone(),
            backend.context.queue.queue_family_index(),
            CommandBufferUsage::OneTimeSubmit,
        )
        .map_err(vk)?;
        Ok(Recorder {
            backend,
            builder,
            used: Vec::new(),
            labels: Vec::new(),
        })
    }

    fn input(&mut self, data: &[f32]) -> Result<Subbuffer<[f32]>> {
        let buffer = self.backend.upload(data)?;
        self.used.push(buffer.clone());
        Ok(buffer)
    }

    fn labels(&mut self, labels: &[u32]) -> Result<Subbuffer<[u32]>> {
        let buffer = self.backend.upload_labels(labels)?;
        self.labels.push(buffer.clone());
        Ok(buffer)
    }

    /// An index buffer for a kernel to fill, poisoned with `u32::MAX` first.
    fn indices(&mut self, len: usize) -> Result<Subbuffer<[u32]>> {
        let buffer = match self.backend.free_labels.get_mut(&len.max(1)).and_then(Vec::pop) {
            Some(buffer) => buffer,
            None => self.backend.new_buffer(len)?,
        };
        self.builder.fill_buffer(buffer.clone(), u32::MAX).map_err(vk)?;
        self.labels.push(buffer.clone());
        Ok(buffer)
    }

    /// An output buffer, poisoned with NaN in the command stream before anything writes it.
    fn output(&mut self, len: usize) -> Result<Subbuffer<[f32]>> {
        let buffer = self.backend.take(len)?;
        self.builder
            .fill_buffer(buffer.clone().reinterpret::<[u32]>(), POISON)
            .map_err(vk)?;
        self.used.push(buffer.clone());
        Ok(buffer)
    }

    fn dispatch<P: BufferContents>(
        &mut self,
        kernel: Kernel,
        writes: Vec<WriteDescriptorSet>,
        push: P,
        group_counts: [u32; 3],
    ) -> Result<()> {
        let pipeline = self.backend.pipelines.get(&self.backend.context.device, kernel)?;
        let layout = pipeline.layout().clone();
        let set = DescriptorSet::new(
            self.backend.descriptor_sets.clone(),
            layout.set_layouts()[0].clone(),
            writes,
            [],
        )
        .map_err(vk)?;
        self.builder
            .bind_pipeline_compute(pipeline)
            .map_err(vk)?
            .bind_descriptor_sets(PipelineBindPoint::Compute, layout.clone(), 0, set)
            .map_err(vk)?
            .push_constants(layout, 0, push)
            .map_err(vk)?;
        // SAFETY: every shader bounds-checks its invocation index against the sizes pushed with
        // it, and the bound buffers hold at least those many elements (checked by the callers).
        unsafe { self.builder.dispatch(group_counts) }.map_err(vk)?;
        Ok(())
    }

    fn matmul(
        &mut self,
        a: &Subbuffer<[f32]>,
        b: &Subbuffer<[f32]>,
        (m, n, k): (usize, usize, usize),
        transpose_a: bool,
        transpose_b: bool,
    ) -> Result<Subbuffer<[f32]>> {
        let c = self.output(m * n)?;
        let push = [
            m as u32,
            n as u32,
            k as u32,
            u32::from(transpose_a),
            u32::from(transpose_b),
        ];
        let writes = vec![
            WriteDescriptorSet::buffer(0, a.clone()),
            WriteDescriptorSet::buffer(1, b.clone()),
            WriteDescriptorSet::buffer(2, c.clone()),
        ];
        // vec4 loads need every stored row's length to be a multiple of 4: op(A)'s m×k is
        // stored with rows of k (k×m when transposed: rows of m); op(B)'s k×n rows of n (or k).
        let rows_of_four =
            (if transpose_a { m } else { k }) % 4 == 0 && (if transpose_b { k } else { n }) % 4 == 0;
        if self.backend.blocked_matmul {
            let kernel = if self.backend.vector_loads && rows_of_four {
                self.backend.vector_load_multiplies += 1;
                Kernel::MatmulBlockedVec4
            } else {
                Kernel::MatmulBlocked
            };
            self.dispatch(kernel, writes, push, [groups(n, 64), groups(m, 64), 1])?;
        } else {
            self.dispatch(Kernel::Matmul, writes, push, [groups(n, 16), groups(m, 16), 1])?;
        }
        Ok(c)
    }

    fn bias_act(
        &mut self,
        x: &Subbuffer<[f32]>,
        bias: &Subbuffer<[f32]>,
        rows: usize,
        cols: usize,
        relu: bool,
    ) -> Result<Subbuffer<[f32]>> {
        let y = self.output(rows * cols)?;
        let writes = vec![
            WriteDescriptorSet::buffer(0, x.clone()),
            WriteDescriptorSet::buffer(1, bias.clone()),
            WriteDescriptorSet::buffer(2, y.clone()),
        ];
        self.dispatch(
            Kernel::BiasAct,
            writes,
            [rows as u32, cols as u32, u32::from(relu)],
            [groups(rows * cols, 64), 1, 1],
        )?;
        Ok(y)
    }

    fn relu_backward(
        &mut self,
        activation: &Subbuffer<[f32]>,
        grad: &Subbuffer<[f32]>,
        len: usize,
    ) -> Result<Subbuffer<[f32]>> {
        let out = self.output(len)?;
        let writes = vec![
            WriteDescriptorSet::buffer(0, activation.clone()),
            WriteDescriptorSet::buffer(1, grad.clone()),
            WriteDescriptorSet::buffer(2, out.clone()),
        ];
        self.dispatch(
            Kernel::ReluBackward,
            writes,
            [len as u32],
            [groups(len, 64), 1, 1],
        )?;
        Ok(out)
    }

    fn softmax_xent(
        &mut self,
        logits: &Subbuffer<[f32]>,
        labels: &Subbuffer<[u32]>,
        rows: usize,
        classes: usize,
    ) -> Result<(Floats, Floats)> {
        let grad = self.output(rows * classes)?;
        let loss = self.output(rows)?;
        let writes = vec![
            WriteDescriptorSet::buffer(0, logits.clone()),
            WriteDescriptorSet::buffer(1, labels.clone()),
            WriteDescriptorSet::buffer(2, grad.clone()),
            WriteDescriptorSet::buffer(3, loss.clone()),
        ];
        self.dispatch(
            Kernel::SoftmaxXent,
            writes,
            [rows as u32, classes as u32],
            [groups(rows, 64), 1, 1],
        )?;
        Ok((grad, loss))
    }

    fn column_sum(&mut self, x: &Subbuffer<[f32]>, rows: usize, cols: usize) -> Result<Subbuffer<[f32]>> {
        let out = self.output(cols)?;
        let writes = vec![
            WriteDescriptorSet::buffer(0, x.clone()),
            WriteDescriptorSet::buffer(1, out.clone()),
        ];
        self.dispatch(
            Kernel::ColumnSum,
            writes,
            [rows as u32, cols as u32],
            [groups(cols, 64), 1, 1],
        )?;
        Ok(out)
    }

    /// Σ x (or Σ x²) into a one-element buffer, by passes of 256-wide tree sums.
    fn sum(&mut self, x: &Subbuffer<[f32]>, len: usize, square: bool) -> Result<Subbuffer<[f32]>> {
        let mut current = x.clone();
        let mut current_len = len;
        let mut first = true;
        loop {
            let partial_count = current_len.div_ceil(256).max(1);
            let partials = self.output(partial_count)?;
            let writes = vec![
                WriteDescriptorSet::buffer(0, current.clone()),
                WriteDescriptorSet::buffer(1, partials.clone()),
            ];
            let push = [current_len as u32, u32::from(square && first)];
            self.dispatch(Kernel::Reduce, writes, push, [partial_count as u32, 1, 1])?;
            first = false;
            current = partials;
            current_len = partial_count;
            if current_len == 1 {
                return Ok(current);
            }
        }
    }

    /// Submits the recorded commands and waits for them. The returned buffers go back to the
    /// pool (`VulkanBackend::recycle`) once the caller has read its outputs.
    fn submit(self) -> Result<Submitted> {
        let Recorder {
            backend,
            builder,
            used,
            labels,
        } = self;
        let commands = builder.build().map_err(vk)?;
        backend.submissions += 1;
        sync::now(backend.context.device.clone())
            .then_execute(backend.context.queue.clone(), commands)
            .map_err(vk)?
            .then_signal_fence_and_flush()
            .map_err(vk)?
            .wait(None)
            .map_err(vk)?;
        Ok(Submitted { used, labels })
    }
}

/// The buffers of a finished submission.
struct Submitted {
    used: Vec<Subbuffer<[f32]>>,
    labels: Vec<Subbuffer<[u32]>>,
}

impl VulkanBackend {
    fn recycle(&mut self, done: Submitted) {
        self.give_back(done.used);
        for buffer in done.labels {
            self.free_labels
                .entry(buffer.len() as usize)
                .or_default()
                .push(buffer);
        }
    }
}

impl Backend for VulkanBackend {
    fn describe(&self) -> String {
        format!(
            "vulkan ({}, {:?})",
            self.context.device_name, self.context.device_type
        )
    }

    fn device_memory_bytes(&self) -> Option<u64> {
        let properties = self.context.device.physical_device().memory_properties();
        properties
            .memory_heaps
            .iter()
            .filter(|heap| {
                heap.flags
                    .intersects(vulkano::memory::MemoryHeapFlags::DEVICE_LOCAL)
            })
            .map(|heap| heap.size)
            .max()
    }

    fn matmul(&mut self, a: &Matrix, b: &Matrix, transpose_a: bool, transpose_b: bool) -> Result<Matrix> {
        let dims = check_matmul(a, b, transpose_a, transpose_b)?;
        check_finite("matmul input a", &a.data)?;
        check_finite("matmul input b", &b.data)?;
        let mut rec = Recorder::new(self)?;
        let (a_buf, b_buf) = (rec.input(&a.data)?, rec.input(&b.data)?);
        let c = rec.matmul(&a_buf, &b_buf, dims, transpose_a, transpose_b)?;
        let done = rec.submit()?;
        let data = self.download(&c, dims.0 * dims.1);
        self.recycle(done);
        Matrix::new(dims.0, dims.1, data?)
    }

    fn bias_act(&mut self, x: &Matrix, bias: &[f32], relu: bool) -> Result<Matrix> {
        check_len("bias_act", x.cols, bias.len())?;
        let mut rec = Recorder::new(self)?;
        let (x_buf, b_buf) = (rec.input(&x.data)?, rec.input(bias)?);
        let y = rec.bias_act(&x_buf, &b_buf, x.rows, x.cols, relu)?;
        let done = rec.submit()?;
        let data = self.download(&y, x.data.len());
        self.recycle(done);
        Matrix::new(x.rows, x.cols, data?)
    }

    fn relu_backward(&mut self, activation: &Matrix, grad: &Matrix) -> Result<Matrix> {
        check_same("relu_backward", activation, grad)?;
        let mut rec = Recorder::new(self)?;
        let (a_buf, g_buf) = (rec.input(&activation.data)?, rec.input(&grad.data)?);
        let out = rec.relu_backward(&a_buf, &g_buf, grad.data.len())?;
        let done = rec.submit()?;
        let data = self.download(&out, grad.data.len());
        self.recycle(done);
        Matrix::new(grad.rows, grad.cols, data?)
    }

    fn softmax_xent(&mut self, logits: &Matrix, labels: &[u32]) -> Result<(Matrix, Vec<f32>)> {
        check_labels(logits, labels)?;
        let mut rec = Recorder::new(self)?;
        let l_buf = rec.input(&logits.data)?;
        let y_buf = rec.labels(labels)?;
        let (grad, loss) = rec.softmax_xent(&l_buf, &y_buf, logits.rows, logits.cols)?;
        let done = rec.submit()?;
        let grad = self.download(&grad, logits.data.len());
        let loss = self.download(&loss, logits.rows);
        self.recycle(done);
        Ok((Matrix::new(logits.rows, logits.cols, grad?)?, loss?))
    }

    fn column_sum(&mut self, x: &Matrix) -> Result<Vec<f32>> {
        let mut rec = Recorder::new(self)?;
        let x_buf = rec.input(&x.data)?;
        let out = rec.column_sum(&x_buf, x.rows, x.cols)?;
        let done = rec.submit()?;
        let data = self.download(&out, x.cols);
        self.recycle(done);
        data
    }

    fn sum(&mut self, x: &[f32], square: bool) -> Result<f32> {
        let mut rec = Recorder::new(self)?;
        let x_buf = rec.input(x)?;
        let out = rec.sum(&x_buf, x.len(), square)?;
        let done = rec.submit()?;
        let data = self.download(&out, 1);
        self.recycle(done);
        Ok(data?[0])
    }

    fn sgd(&mut self, w: &mut [f32], g: &[f32], lr: f32) -> Result<()> {
        check_len("sgd", w.len(), g.len())?;
        let mut rec = Recorder::new(self)?;
        let (w_buf, g_buf) = (rec.input(w)?, rec.input(g)?);
        let writes = vec![
            WriteDescriptorSet::buffer(0, w_buf.clone()),
            WriteDescriptorSet::buffer(1, g_buf),
        ];
        rec.dispatch(
            Kernel::Sgd,
            writes,
            [w.len() as u32, lr.to_bits()],
            [groups(w.len(), 64), 1, 1],
        )?;
        let done = rec.submit()?;
        let data = self.download(&w_buf, w.len());
        self.recycle(done);
        w.copy_from_slice(&data?);
        Ok(())
    }

    fn adam(
        &mut self,
        w: &mut [f32],
        g: &[f32],
        m: &mut [f32],
        v: &mut [f32],
        params: AdamParams,
    ) -> Result<()> {
        check_adam(w, g, m, v)?;
        let (step_size, epsilon_hat) = params.corrected();
        let mut rec = Recorder::new(self)?;
        let (w_buf, g_buf, m_buf, v_buf) = (rec.input(w)?, rec.input(g)?, rec.input(m)?, rec.input(v)?);
        let writes = vec![
            WriteDescriptorSet::buffer(0, w_buf.clone()),
            WriteDescriptorSet::buffer(1, g_buf),
            WriteDescriptorSet::buffer(2, m_buf.clone()),
            WriteDescriptorSet::buffer(3, v_buf.clone()),
        ];
        let push = [
            w.len() as u32,
            params.beta1.to_bits(),
            params.beta2.to_bits(),
            step_size.to_bits(),
            epsilon_hat.to_bits(),
        ];
        rec.dispatch(Kernel::Adam, writes, push, [groups(w.len(), 64), 1, 1])?;
        let done = rec.submit()?;
        let results = (
            self.download(&w_buf, w.len()),
            self.download(&m_buf, m.len()),
            self.download(&v_buf, v.len()),
        );
        self.recycle(done);
        w.copy_from_slice(&results.0?);
        m.copy_from_slice(&results.1?);
        v.copy_from_slice(&results.2?);
        Ok(())
    }

    /// A layer graph's whole step — forward, loss, backward — recorded into one command buffer
    /// and submitted once; only the loss and the gradients come back.
    fn graph_train_step(
        &mut self,
        graph: &GraphModel,
        weights: &Weights,
        batch: &Batch,
        dropout_seed: u64,
    ) -> Result<(f32, Weights)> {
        let mut rec = Recorder::new(self)?;
        let (loss_sum, grads) =
            graph.step_with(&mut DeviceOps::new(&mut rec), weights, batch, dropout_seed)?;
        let done = rec.submit()?;
        let read = (|| {
            let loss = self.download(&loss_sum.buffer, 1)?[0] / batch.x.rows.max(1) as f32;
            let tensors = grads
                .iter()
                .map(|g| Matrix::new(g.rows(), g.cols(), self.download(&g.buffer, g.rows() * g.cols())?))
                .collect::<Result<Vec<_>>>()?;
            Ok::<_, KernelError>((loss, Weights { tensors }))
        })();
        self.recycle(done);
        read
    }

    fn graph_outputs(&mut self, graph: &GraphModel, weights: &Weights, x: &Matrix) -> Result<Matrix> {
        let mut rec = Recorder::new(self)?;
        let out = graph.outputs_with(&mut DeviceOps::new(&mut rec), weights, x)?;
        let done = rec.submit()?;
        let data = self.download(&out.buffer, out.rows() * out.cols());
        self.recycle(done);
        Matrix::new(out.rows(), out.cols(), data?)
    }

    /// The whole step — forward, loss, backward — in one command buffer and one submission.
    fn train_step(&mut self, model: &ModelSpec, weights: &Weights, batch: &Batch) -> Result<(f32, Weights)> {
        if model.is_regression() {
            // Its products run here op by op; one command buffer for it comes with the layer
            // graphs (issue 14).
            return crate::backend::train_step_by_ops(self, model, weights, batch);
        }
        model.check_weights(weights)?;
        model.check_batch(batch)?;
        let (rows, classes) = (batch.x.rows, model.classes());
        let mut rec = Recorder::new(self)?;
        let x = rec.input(&batch.x.data)?;
        let labels = rec.labels(&batch.labels)?;
        let params: Vec<Subbuffer<[f32]>> = weights
            .tensors
            .iter()
            .map(|t| rec.input(&t.data))
            .collect::<Result<_>>()?;
        let shapes = model.shapes();
        let features = model.features();
        let (grads, loss_sum) = match *model {
            ModelSpec::SoftmaxRegression { .. } => {
                let z = rec.matmul(&x, &params[0], (rows, classes, features), false, false)?;
                let logits = rec.bias_act(&z, &params[1], rows, classes, false)?;
                let (g, losses) = rec.softmax_xent(&logits, &labels, rows, classes)?;
                let d_w = rec.matmul(&x, &g, (features, classes, rows), true, false)?;
                let d_b = rec.column_sum(&g, rows, classes)?;
                (vec![d_w, d_b], rec.sum(&losses, rows, false)?)
            }
            ModelSpec::Mlp { hidden, .. } => {
                let z1 = rec.matmul(&x, &params[0], (rows, hidden, features), false, false)?;
                let h = rec.bias_act(&z1, &params[1], rows, hidden, true)?;
                let z2 = rec.matmul(&h, &params[2], (rows, classes, hidden), false, false)?;
                let logits = rec.bias_act(&z2, &params[3], rows, classes, false)?;
                let (g, losses) = rec.softmax_xent(&logits, &labels, rows, classes)?;
                let d_w2 = rec.matmul(&h, &g, (hidden, classes, rows), true, false)?;
                let d_b2 = rec.column_sum(&g, rows, classes)?;
                let d_h = rec.matmul(&g, &params[2], (rows, hidden, classes), false, true)?;
                let d_z1 = rec.relu_backward(&h, &d_h, rows * hidden)?;
                let d_w1 = rec.matmul(&x, &d_z1, (features, hidden, rows), true, false)?;
                let d_b1 = rec.column_sum(&d_z1, rows, hidden)?;
                (vec![d_w1, d_b1, d_w2, d_b2], rec.sum(&losses, rows, false)?)
            }
            ModelSpec::LinearRegression { .. } => unreachable!("regressions step by ops (above)"),
        };
        let done = rec.submit()?;
        let read = (|| {
            let loss = self.download(&loss_sum, 1)?[0] / rows as f32;
            let tensors = grads
                .iter()
                .zip(&shapes)
                .map(|(buffer, &(r, c))| Matrix::new(r, c, self.download(buffer, r * c)?))
                .collect::<Result<Vec<_>>>()?;
            Ok::<_, KernelError>((loss, Weights { tensors }))
        })();
        self.recycle(done);
        let (loss, grads) = read?;
        check_finite("loss", &[loss])?;
        check_finite("gradients", &grads.flat())?;
        Ok((loss, grads))
    }
}
