//! The compute shaders as SPIR-V (compiled at build time, see `build.rs`) and their pipelines,
//! created once per backend and cached.

use std::collections::HashMap;
use std::sync::Arc;

use vulkano::device::Device;
use vulkano::pipeline::compute::ComputePipelineCreateInfo;
use vulkano::pipeline::layout::PipelineDescriptorSetLayoutCreateInfo;
use vulkano::pipeline::{ComputePipeline, PipelineLayout, PipelineShaderStageCreateInfo};
use vulkano::shader::{ShaderModule, ShaderModuleCreateInfo};

use crate::error::{KernelError, Result};

macro_rules! spirv {
    ($name:literal) => {
        include_bytes!(concat!(env!("OUT_DIR"), "/", $name, ".spv"))
    };
}

/// One compute shader.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    Matmul,
    /// Register-blocked matrix multiply (64×64 tiles, 4×4 per invocation).
    MatmulBlocked,
    /// The same with vec4 loads, where the stored rows' lengths are multiples of 4.
    MatmulBlockedVec4,
    BiasAct,
    ReluBackward,
    SoftmaxXent,
    ColumnSum,
    Reduce,
    Sgd,
    Adam,
    // The layers of a layer graph (see `graph_ops`).
    Im2col,
    Col2im,
    ConvOutput,
    ConvOutputGrad,
    Pool,
    PoolBackward,
    Activation,
    ActivationBackward,
    Dropout,
    Elementwise,
    LayerNorm,
    LayerNormBackward,
    LayerNormParams,
    RegressionLoss,
}

impl Kernel {
    pub const ALL: [Kernel; 24] = [
        Kernel::Matmul,
        Kernel::MatmulBlocked,
        Kernel::MatmulBlockedVec4,
        Kernel::BiasAct,
        Kernel::ReluBackward,
        Kernel::SoftmaxXent,
        Kernel::ColumnSum,
        Kernel::Reduce,
        Kernel::Sgd,
        Kernel::Adam,
        Kernel::Im2col,
        Kernel::Col2im,
        Kernel::ConvOutput,
        Kernel::ConvOutputGrad,
        Kernel::Pool,
        Kernel::PoolBackward,
        Kernel::Activation,
        Kernel::ActivationBackward,
        Kernel::Dropout,
        Kernel::Elementwise,
        Kernel::LayerNorm,
        Kernel::LayerNormBackward,
        Kernel::LayerNormParams,
        Kernel::RegressionLoss,
    ];

    fn spirv(self) -> &'static [u8] {
        match self {
            Kernel::Matmul => spirv!("matmul"),
            Kernel::MatmulBlocked => spirv!("matmul_blocked"),
            Kernel::MatmulBlockedVec4 => spirv!("matmul_blocked_vec4"),
            Kernel::BiasAct => spirv!("bias_act"),
            Kernel::ReluBackward => spirv!("relu_backward"),
            Kernel::SoftmaxXent => spirv!("softmax_xent"),
            Kernel::ColumnSum => spirv!("column_sum"),
            Kernel::Reduce => spirv!("reduce"),
            Kernel::Sgd => spirv!("sgd"),
            Kernel::Adam => spirv!("adam"),
            Kernel::Im2col => spirv!("im2col"),
            Kernel::Col2im => spirv!("col2im"),
            Kernel::ConvOutput => spirv!("conv_output"),
            Kernel::ConvOutputGrad => spirv!("conv_output_grad"),
            Kernel::Pool => spirv!("pool"),
            Kernel::PoolBackward => spirv!("pool_backward"),
            Kernel::Activation => spirv!("activation"),
            Kernel::ActivationBackward => spirv!("activation_backward"),
            Kernel::Dropout => spirv!("dropout"),
            Kernel::Elementwise => spirv!("elementwise"),
            Kernel::LayerNorm => spirv!("layer_norm"),
            Kernel::LayerNormBackward => spirv!("layer_norm_backward"),
            Kernel::LayerNormParams => spirv!("layer_norm_params"),
            Kernel::RegressionLoss => spirv!("regression_loss"),
        }
    }
}

/// Compiled pipelines, made on first use.
#[derive(Default)]
pub struct Pipelines {
    cache: HashMap<Kernel, Arc<ComputePipeline>>,
}

impl Pipelines {
    pub fn get(&mut self, device: &Arc<Device>, kernel: Kernel) -> Result<Arc<ComputePipeline>> {
        if let Some(pipeline) = self.cache.get(&kernel) {
            return Ok(pipeline.clone());
        }
        let pipeline = build(device, kernel)?;
        self.cache.insert(kernel, pipeline.clone());
        Ok(pipeline)
    }
}

fn build(device: &Arc<Device>, kernel: Kernel) -> Result<Arc<ComputePipeline>> {
    let vk = |e: &dyn std::fmt::Display| KernelError::Vulkan(format!("{kernel:?} pipeline: {e}"));
    let bytes = kernel.spirv();
    // Copy into u32 words: the embedded bytes carry no alignment guarantee.
    let words: Vec<u32> = bytes
        .chunks_exact(4)
        .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        .collect();
    // SAFETY: the words are SPIR-V compiled by glslc from our own shaders (or the committed copy
    // of them, checked against the sources by a test).
    let module = unsafe { ShaderModule::new(device.clone(), ShaderModuleCreateInfo::new(&words)) }
        .map_err(|e| vk(&e))?;
    let entry = module
        .entry_point("main")
        .ok_or_else(|| vk(&"no main entry point"))?;
    let stage = PipelineShaderStageCreateInfo::new(entry);
    let layout_info = PipelineDescriptorSetLayoutCreateInfo::from_stages([&stage])
        .into_pipeline_layout_create_info(device.clone())
        .map_err(|e| vk(&e.error))?;
    let layout = PipelineLayout::new(device.clone(), layout_info).map_err(|e| vk(&e))?;
    ComputePipeline::new(
        device.clone(),
        None,
        ComputePipelineCreateInfo::stage_layout(stage, layout),
    )
    .map_err(|e| vk(&e))
}
