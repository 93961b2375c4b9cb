//! Kernel benchmark: matrix multiply GFLOP/s at n = 256…2048 on every backend available, beside
//! the `matrixmultiply` SGEMM on one thread measured in the same run; and the Vulkan backend's
//! per-step host overhead beside an empty submit-and-wait round trip.
//!
//! ```text
//! cargo bench -p aic-kernels --bench kernels
//! AIC_BENCH_MAX_N=1024 cargo bench -p aic-kernels --bench kernels
//! ```
//!
//! lavapipe (a CPU-type Vulkan device) is benchmarked too where it is the only device, so the
//! numbers exist on every machine; it is not what production would use.

use std::time::{Duration, Instant};

use aic_kernels::{Backend, Batch, CpuBackend, Matrix, ModelSpec, VulkanBackend, VulkanOptions};

fn matrix(n: usize, seed: u32) -> Matrix {
    let data = (0..n * n)
        .map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f32 / 1000.0 - 0.5);
    Matrix::new(n, n, data.collect()).unwrap()
}

fn gflops(n: usize, repeats: usize, elapsed: Duration) -> f64 {
    2.0 * (n as f64).powi(3) * repeats as f64 / elapsed.as_secs_f64() / 1e9
}

/// Median of `runs` timings of `f`.
fn median(runs: usize, mut f: impl FnMut() -> Duration) -> Duration {
    let mut times: Vec<Duration> = (0..runs).map(|_| f()).collect();
    times.sort();
    times[times.len() / 2]
}

fn main() {
    let max_n: usize = std::env::var("AIC_BENCH_MAX_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048);
    let mut vulkan = match VulkanBackend::new(VulkanOptions {
        allow_cpu_device: true,
        validation: false,
    }) {
        Ok(backend) => Some(backend),
        Err(e) => {
            println!("no Vulkan backend: {e}");
            None
        }
    };
    if let Some(v) = vulkan.as_mut() {
        v.warm_up().unwrap();
        println!("Vulkan device: {}", v.describe());
    }

    println!("\nmatrix multiply, n×n·n×n, f32");
    println!(
        "  {:>5} {:>22} {:>22} {:>8}",
        "n", "cpu sgemm 1 thread", "vulkan (kernel only)", "ratio"
    );
    let mut cpu = CpuBackend;
    for n in [256usize, 512, 1024, 2048].into_iter().filter(|&n| n <= max_n) {
        let (a, b) = (matrix(n, 1), matrix(n, 2));
        let cpu_time = median(3, || {
            let t = Instant::now();
            cpu.matmul(&a, &b, false, false).unwrap();
            t.elapsed()
        });
        let cpu_gflops = gflops(n, 1, cpu_time);
        let vulkan_gflops = vulkan.as_mut().map(|v| {
            // Enough repeats for ~0.2 s of work on a fast device, at least one.
            let repeats = if v.is_cpu_device() {
                1
            } else {
                (4096 / n).pow(2).clamp(1, 64)
            };
            gflops(n, repeats, median(3, || v.time_matmul(&a, &b, repeats).unwrap()))
        });
        match vulkan_gflops {
            Some(g) => println!(
                "  {n:>5} {cpu_gflops:>16.2} GF/s {g:>16.2} GF/s {:>7.2}×",
                g / cpu_gflops
            ),
            None => println!("  {n:>5} {cpu_gflops:>16.2} GF/s {:>22} {:>8}", "-", "-"),
        }
    }

    if let Some(v) = vulkan.as_mut() {
        println!("\nVulkan per-step host overhead (softmax regression, 8 rows × 4 features × 3 classes)");
        let model = ModelSpec::SoftmaxRegression {
            features: 4,
            classes: 3,
        };
        let weights = model.init(1);
        let batch = Batch {
            x: Matrix::new(8, 4, matrix(8, 3).data[..32].to_vec()).unwrap(),
            labels: (0..8).map(|i| i % 3).collect(),
            targets: Vec::new(),
        };
        let step = median(21, || {
            let t = Instant::now();
            v.train_step(&model, &weights, &batch).unwrap();
            t.elapsed()
        });
        let empty = median(21, || {
            let t = Instant::now();
            v.empty_round_trip().unwrap();
            t.elapsed()
        });
        println!(
            "  train step {:>8.1} µs   empty submit+wait {:>8.1} µs   ratio {:.1}×",
            step.as_secs_f64() * 1e6,
            empty.as_secs_f64() * 1e6,
            step.as_secs_f64() / empty.as_secs_f64()
        );

        println!("\ntraining step, MLP 64→64→10, batch 256 (digits-sized)");
        let model = ModelSpec::Mlp {
            features: 64,
            hidden: 64,
            classes: 10,
        };
        let weights = model.init(2);
        let batch = Batch {
            x: Matrix::new(256, 64, matrix(128, 7).data[..256 * 64].to_vec()).unwrap(),
            labels: (0..256).map(|i| i % 10).collect(),
            targets: Vec::new(),
        };
        let cpu_step = median(11, || {
            let t = Instant::now();
            cpu.train_step(&model, &weights, &batch).unwrap();
            t.elapsed()
        });
        let gpu_step = median(11, || {
            let t = Instant::now();
            v.train_step(&model, &weights, &batch).unwrap();
            t.elapsed()
        });
        println!(
            "  cpu {:>8.1} µs   vulkan {:>8.1} µs   vulkan/cpu time {:.2}×",
            cpu_step.as_secs_f64() * 1e6,
            gpu_step.as_secs_f64() * 1e6,
            gpu_step.as_secs_f64() / cpu_step.as_secs_f64()
        );
    }
}
