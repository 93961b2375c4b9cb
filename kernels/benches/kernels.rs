//! Kernel benchmark: matrix multiply GFLOP/s at n = 256…2048 — the CPU backend on one thread and
//! on every core, beside `matrixmultiply`'s one-thread SGEMM and numpy's BLAS (OpenBLAS, every
//! core) measured in the same run, and the Vulkan backend; the Vulkan backend's per-step host
//! overhead beside an empty submit-and-wait round trip; and layer graphs: conv2d forward +
//! backward GFLOP/s and the digits CNN's training samples/s, one thread against every core and
//! against the Vulkan device.
//!
//! ```text
//! ops/install-bench-deps.sh      # numpy, for the BLAS column
//! cargo bench -p aic-kernels --bench kernels
//! AIC_BENCH_MAX_N=1024 cargo bench -p aic-kernels --bench kernels
//! ```
//!
//! lavapipe (a CPU-type Vulkan device) is benchmarked too where it is the only device, so the
//! numbers exist on every machine; it is not what production would use.

use std::time::{Duration, Instant};

use aic_kernels::{Backend, Batch, CpuBackend, Matrix, ModelSpec, VulkanBackend, VulkanOptions};

/// The largest product timed on a CPU-type Vulkan device.
const LAVAPIPE_MAX_N: usize = 1024;

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
        println!(
            "Vulkan device: {} ({} matrix multiply)",
            v.describe(),
            if v.blocked_matmul() {
                "register-blocked"
            } else {
                "16×16"
            }
        );
    }
    // The 16×16 kernel on the same device: what register blocking buys.
    let mut simple = VulkanBackend::new(VulkanOptions {
        allow_cpu_device: true,
        validation: false,
    })
    .ok();
    if let Some(v) = simple.as_mut() {
        v.use_simple_matmul();
        v.warm_up().unwrap();
    }
    // The blocked kernel with scalar loads: what vec4 loads buy.
    let mut scalar = VulkanBackend::new(VulkanOptions {
        allow_cpu_device: true,
        validation: false,
    })
    .ok();
    if let Some(v) = scalar.as_mut() {
        v.use_scalar_loads();
        v.warm_up().unwrap();
    }

    let sizes: Vec<usize> = [256usize, 512, 1024, 2048]
        .into_iter()
        .filter(|&n| n <= max_n)
        .collect();
    let blas = numpy_gflops(&sizes);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("\nmatrix multiply, n×n·n×n, f32 ({cores} cores)");
    println!(
        "  {:>5} {:>16} {:>16} {:>16} {:>16} {:>12} {:>16} {:>16} {:>16} {:>10} {:>10}",
        "n",
        "matrixmultiply 1t",
        "cpu gemm 1t",
        "cpu gemm all",
        "numpy BLAS all",
        "all ÷ BLAS",
        "vulkan vec4",
        "vulkan scalar",
        "vulkan 16×16",
        "vec4 ÷",
        "blocked ÷"
    );
    let mut one = CpuBackend::default();
    let mut all = CpuBackend::with_threads(0);
    for (i, &n) in sizes.iter().enumerate() {
        let (a, b) = (matrix(n, 1), matrix(n, 2));
        let baseline = gflops(n, 1, median(3, || matrixmultiply_once(&a, &b)));
        let time = |backend: &mut CpuBackend| {
            gflops(
                n,
                1,
                median(3, || {
                    let t = Instant::now();
                    backend.matmul(&a, &b, false, false).unwrap();
                    t.elapsed()
                }),
            )
        };
        let (one_gflops, all_gflops) = (time(&mut one), time(&mut all));
        let time_vulkan = |v: &mut VulkanBackend| {
            // Enough repeats for ~0.2 s of work on a fast device, at least one.
            let repeats = if v.is_cpu_device() {
                1
            } else {
                (4096 / n).pow(2).clamp(1, 64)
            };
            gflops(n, repeats, median(3, || v.time_matmul(&a, &b, repeats).unwrap()))
        };
        // lavapipe takes minutes for one 2048³ product: a CPU-type device stops at 1024.
        let on_vulkan = |v: &&mut VulkanBackend| !v.is_cpu_device() || n <= LAVAPIPE_MAX_N;
        let vulkan_gflops = vulkan.as_mut().filter(on_vulkan).map(time_vulkan);
        let simple_gflops = simple.as_mut().filter(on_vulkan).map(time_vulkan);
        let scalar_gflops = scalar.as_mut().filter(on_vulkan).map(time_vulkan);
        let cell = |g: Option<f64>| g.map_or_else(|| "-".to_string(), |g| format!("{g:.1} GF/s"));
        let blas_n = blas.as_ref().ok().map(|b| b[i]);
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => format!("{:.2}×", a / b),
            _ => "-".to_string(),
        };
        println!(
            "  {n:>5} {:>16} {:>16} {:>16} {:>16} {:>12} {:>16} {:>16} {:>16} {:>10} {:>10}",
            cell(Some(baseline)),
            cell(Some(one_gflops)),
            cell(Some(all_gflops)),
            cell(blas_n),
            blas_n.map_or_else(|| "-".to_string(), |b| format!("{:.2}×", all_gflops / b)),
            cell(vulkan_gflops),
            cell(scalar_gflops),
            cell(simple_gflops),
            ratio(vulkan_gflops, scalar_gflops),
            ratio(scalar_gflops, simple_gflops),
        );
    }
    if vulkan.as_ref().is_some_and(|v| v.is_cpu_device()) && sizes.iter().any(|&n| n > LAVAPIPE_MAX_N) {
        println!("  the Vulkan columns stop at n = {LAVAPIPE_MAX_N} on a CPU-type device (lavapipe)");
    }
    if let Err(why) = &blas {
        println!("  no numpy BLAS column: {why} (run ops/install-bench-deps.sh)");
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
            all.train_step(&model, &weights, &batch).unwrap();
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
    layer_graphs(vulkan.as_mut());
}

/// Layer graphs: conv2d forward + backward GFLOP/s and the digits CNN's training samples/s on the
/// CPU backend (one thread and every core), and on the Vulkan device, where the whole step runs
/// as one submission (on lavapipe that is the CPU again, through Mesa's shader compiler).
fn layer_graphs(mut gpu: Option<&mut VulkanBackend>) {
    use aic_protocol::model_graph;

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("\nlayer graphs (a whole training step on each backend)");
    if let Some(v) = gpu.as_deref() {
        println!("  vulkan column: {}", v.describe());
    }
    println!(
        "{:<34} {:>12} {:>12} {:>8} {:>12}",
        "conv2d fwd+bwd (im2col + GEMM)",
        "cpu 1 thread",
        format!("cpu {cores} thr."),
        "ratio",
        "vulkan"
    );
    // (channels, size, filters, rows): the digits CNN's conv2, a CIFAR-sized first layer, a
    // middle layer.
    for (channels, size, filters, rows) in [(32u64, 8u64, 32u64, 256usize), (3, 32, 64, 32), (64, 16, 64, 32)]
    {
        // relu first so the convolution is not the first layer: its input gradient is computed.
        let text = format!(
            "name = \"c\"\ninput = {{ image = [{channels}, {size}, {size}] }}\nloss = \"mean_squared_error\"\n\
             [[layer]]\nkind = \"relu\"\n[[layer]]\nkind = \"conv2d\"\nfilters = {filters}\nkernel = 3\npadding = 1\n\
             [[layer]]\nkind = \"flatten\"\n[[layer]]\nkind = \"dense\"\nunits = 1\n"
        );
        let graph = model_graph::parse(&text).unwrap();
        let width = (channels * size * size) as usize;
        let batch = Batch {
            x: Matrix::new(
                rows,
                width,
                (0..rows * width)
                    .map(|i| ((i * 37) % 101) as f32 / 101.0 - 0.5)
                    .collect(),
            )
            .unwrap(),
            labels: Vec::new(),
            targets: (0..rows).map(|i| (i % 7) as f32).collect(),
        };
        // Forward, weight gradient and input gradient: three GEMMs of 2·rows·positions·field·filters.
        let flops = 3.0 * 2.0 * (rows as u64 * size * size * channels * 9 * filters) as f64;
        let rate =
            |backend: &mut dyn Backend| flops / graph_step_time(&graph, backend, &batch).as_secs_f64() / 1e9;
        let one = rate(&mut CpuBackend::with_threads(1));
        let all = rate(&mut CpuBackend::with_threads(cores));
        let on_gpu = gpu
            .as_deref_mut()
            .map_or("-".to_string(), |v| format!("{:.1} GF/s", rate(v)));
        println!(
            "{:<34} {:>7.1} GF/s {:>7.1} GF/s {:>7.2}× {:>12}",
            format!("{channels}×{size}×{size} → {filters}, 3×3, batch {rows}"),
            one,
            all,
            all / one,
            on_gpu
        );
    }

    let description = include_str!("../../examples/models/digits-cnn.toml");
    let graph = model_graph::parse(description).unwrap();
    let rows = 256;
    let batch = Batch {
        x: Matrix::new(
            rows,
            64,
            (0..rows * 64).map(|i| ((i * 13) % 17) as f32 / 17.0).collect(),
        )
        .unwrap(),
        labels: (0..rows as u32).map(|i| i % 10).collect(),
        targets: Vec::new(),
    };
    let samples =
        |backend: &mut dyn Backend| rows as f64 / graph_step_time(&graph, backend, &batch).as_secs_f64();
    let one = samples(&mut CpuBackend::with_threads(1));
    let all = samples(&mut CpuBackend::with_threads(cores));
    println!(
        "digits CNN training ({} parameters, batch {rows}): {one:.0} samples/s on 1 thread, {all:.0} on {cores} ({:.2}×)",
        aic_kernels::graph::GraphModel::new(&graph).unwrap().parameters(),
        all / one
    );
    if let Some(v) = gpu {
        println!("  on {}: {:.0} samples/s", v.describe(), samples(v));
    }
}

/// The median time of one training step (forward, loss, backward) of `graph` on `backend`.
fn graph_step_time(
    graph: &aic_protocol::model_graph::ModelGraph,
    backend: &mut dyn Backend,
    batch: &Batch,
) -> Duration {
    let model = aic_kernels::graph::GraphModel::new(graph).unwrap();
    let weights = model.init(1);
    median(5, || {
        let t = Instant::now();
        model.train_step_on(backend, &weights, batch, 1).unwrap();
        t.elapsed()
    })
}

/// One `matrixmultiply` SGEMM on one thread: the baseline the CPU backend is compared with.
fn matrixmultiply_once(a: &Matrix, b: &Matrix) -> Duration {
    let n = a.rows;
    let mut c = vec![0.0f32; n * n];
    let t = Instant::now();
    // SAFETY: a, b and c are n×n row-major matrices of exactly n² elements; c is not aliased.
    unsafe {
        matrixmultiply::sgemm(
            n,
            n,
            n,
            1.0,
            a.data.as_ptr(),
            n as isize,
            1,
            b.data.as_ptr(),
            n as isize,
            1,
            0.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
    t.elapsed()
}

/// numpy's matrix multiply (its BLAS, every core) at each size: median GFLOP/s of 3 runs, in a
/// Python process started here.
fn numpy_gflops(sizes: &[usize]) -> Result<Vec<f64>, String> {
    let script = r#"
import sys, time
import numpy as np
for n in map(int, sys.argv[1:]):
    a = np.random.rand(n, n).astype(np.float32) - 0.5
    b = np.random.rand(n, n).astype(np.float32) - 0.5
    a @ b
    times = []
    for _ in range(3):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    times.sort()
    print(2 * n ** 3 / times[1] / 1e9)
"#;
    let output = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(sizes.iter().map(usize::to_string))
        .output()
        .map_err(|e| format!("python3 did not start: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(stderr.lines().last().unwrap_or("python3 failed").to_string());
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| l.trim().parse::<f64>().map_err(|e| e.to_string()))
        .collect()
}
