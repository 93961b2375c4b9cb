//! AIC training kernels: the math of a training step on any vendor's GPU through Vulkan, with a
//! CPU implementation of every op as the reference and the fallback.
//!
//! ```text
//!  arrow RecordBatch ──► batch::from_record_batch ──► Batch (features, labels), checked
//!                                                       │
//!  ModelSpec + Weights ──► Backend::train_step / evaluate ──► loss, gradients / accuracy
//!                              ├─ CpuBackend     (gemm SGEMM on every core, other loops in index order)
//!                              └─ VulkanBackend  (GLSL → SPIR-V shaders, one submission a step)
//!  GraphModel (layer graphs) ──► step_with(GraphOps) ──► loss, gradients
//!                              ├─ HostOps     (host loops, matrix multiplies on the backend: the reference)
//!                              └─ DeviceOps   (every layer a Vulkan shader, one submission a step)
//!  compare::agree: the cross-backend tolerance the rater applies
//! ```

pub mod backend;
pub mod batch;
pub mod compare;
pub mod cpu;
pub mod error;
pub mod graph;
pub mod graph_ops;
pub mod host_ops;
pub mod inference;
pub mod model;
pub mod step;
pub mod tensor;
pub mod trainable;
pub mod vulkan;

pub use backend::{open, open_with, AdamParams, Backend, BackendChoice};
pub use cpu::CpuBackend;
pub use error::{KernelError, Result};
pub use model::{Batch, ModelSpec, Weights};
pub use tensor::Matrix;
pub use trainable::Trainable;
pub use vulkan::{VulkanBackend, VulkanOptions};
