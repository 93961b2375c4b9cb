//! What the Vulkan test suites share: a real device (lavapipe where there is no GPU; none is a
//! failure, never a skip), the validation layer's verdict, random matrices and the comparison.

// Each suite uses the helpers it needs.
#![allow(dead_code)]

use aic_kernels::compare::agree;
use aic_kernels::{Backend, Matrix, VulkanBackend, VulkanOptions};
use rand::Rng;

pub fn vulkan() -> VulkanBackend {
    let backend = VulkanBackend::new(VulkanOptions {
        allow_cpu_device: true,
        validation: true,
    })
    .unwrap_or_else(|e| panic!("a Vulkan device is required for this test (install lavapipe): {e}"));
    eprintln!("testing on {}", backend.describe());
    backend
}

pub fn assert_no_validation_messages(backend: &VulkanBackend) {
    let messages = backend.validation_messages();
    assert!(messages.is_empty(), "validation layer reported: {messages:#?}");
}

pub fn random(rng: &mut impl Rng, rows: usize, cols: usize) -> Matrix {
    Matrix::new(
        rows,
        cols,
        (0..rows * cols).map(|_| rng.random_range(-1.0f32..1.0)).collect(),
    )
    .unwrap()
}

pub fn close(what: &str, cpu: &[f32], gpu: &[f32]) {
    if let Err(m) = agree(cpu, gpu) {
        panic!(
            "{what}: element {} differs: cpu {} vs vulkan {}",
            m.index, m.left, m.right
        );
    }
}
