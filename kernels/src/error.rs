//! Kernel errors: bad shapes and bad numbers are the caller's, missing devices the machine's.

/// Everything that can go wrong running a kernel.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    #[error("shape mismatch in {op}: {detail}")]
    Shape { op: &'static str, detail: String },
    #[error("{what} holds a non-finite value ({value}) at index {index}")]
    NonFinite { what: String, index: usize, value: f32 },
    #[error("batch does not fit the model: {0}")]
    Batch(String),
    /// Raw rows (or their dataset) that do not fit a trained model's inputs.
    #[error(transparent)]
    Input(#[from] crate::inference::InputError),
    #[error("label {label} at row {row} is not a class of a {classes}-class model")]
    Label { row: usize, label: u32, classes: usize },
    #[error("a buffer of {bytes} bytes exceeds the device's limit of {limit} bytes")]
    BufferTooLarge { bytes: u64, limit: u64 },
    #[error("no Vulkan: {0}")]
    NoVulkan(String),
    #[error("only a CPU-type Vulkan device ({0}) is present; it is slower than the CPU backend, so it is used only when asked for")]
    OnlyCpuDevice(String),
    #[error("Vulkan: {0}")]
    Vulkan(String),
}

pub type Result<T, E = KernelError> = std::result::Result<T, E>;

/// Fails on the first NaN or infinity in `values`, naming what they are.
pub fn check_finite(what: &str, values: &[f32]) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(KernelError::NonFinite {
            what: what.to_string(),
            index,
            value: values[index],
        }),
        None => Ok(()),
    }
}
