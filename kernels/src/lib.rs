//! AIC training kernels.
//!
//! This crate will own the GLSL compute shaders (compiled to SPIR-V at build time), the vulkano
//! executor behind a `Backend` trait, the CPU reference implementation of every op (also the
//! fallback without a Vulkan device), and the `train_step` / `evaluate` API over Arrow batches.
//! It is filled by the kernels issue; it has no dependencies yet so it costs nothing to build.

/// The backends a compute node can ask for; `Auto` prefers a GPU and falls back to the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    Auto,
    Cpu,
    Vulkan,
}
