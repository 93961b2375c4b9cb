//! Every op on the Vulkan backend against the CPU reference, on fresh random inputs, with sizes
//! that are not multiples of the tile size. The Vulkan device is real: Mesa's lavapipe on
//! machines without a GPU (installed by `ops/install-test-deps.sh`). No device is a failure, never
//! a skip. Where the Khronos validation layer is installed it is on, and any message fails.

mod common;

use aic_kernels::compare::agree_within;
use aic_kernels::{AdamParams, Backend, Batch, CpuBackend, Matrix, ModelSpec, VulkanBackend};
use common::{assert_no_validation_messages, close, random, vulkan};
use rand::{Rng, SeedableRng};

#[test]
fn matmul_matches_the_cpu_for_every_transpose_and_odd_sizes() {
    let mut blocked = vulkan();
    // lavapipe (and any GPU) allows 256 invocations a workgroup: the blocked kernel is the one
    // tested here; the 16×16 kernel is kept for devices that do not.
    assert!(
        blocked.blocked_matmul(),
        "the register-blocked matrix multiply runs"
    );
    matmul_matches_the_cpu(&mut blocked);
    let mut scalar = vulkan();
    scalar.use_scalar_loads();
    matmul_matches_the_cpu(&mut scalar);
    assert_eq!(scalar.vector_load_multiplies(), 0);
    let mut simple = vulkan();
    simple.use_simple_matmul();
    matmul_matches_the_cpu(&mut simple);
}

/// Where every stored row's length is a multiple of 4 the blocked kernel loads vec4s; it sums in
/// the scalar kernel's order, so the two agree bit for bit — including at the ragged edges of a
/// tile and where only one operand qualifies.
#[test]
fn vector_loads_give_the_scalar_loads_bits() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let mut vector = vulkan();
    let mut scalar = vulkan();
    scalar.use_scalar_loads();
    let shapes = [
        (4, 8, 12),
        (68, 132, 20),
        (128, 64, 256),
        (36, 4, 100),
        (5, 8, 12),
        (64, 7, 16),
    ];
    for &(m, n, k) in &shapes {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let a = if ta {
                random(&mut rng, k, m)
            } else {
                random(&mut rng, m, k)
            };
            let b = if tb {
                random(&mut rng, n, k)
            } else {
                random(&mut rng, k, n)
            };
            let want = scalar.matmul(&a, &b, ta, tb).unwrap();
            let got = vector.matmul(&a, &b, ta, tb).unwrap();
            let bits = |m: &Matrix| m.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{m}×{n}×{k} ta={ta} tb={tb}");
        }
    }
    // 4 shapes × 4 transposes qualify wholly; of (5, 8, 12) and (64, 7, 16), the transposes whose
    // stored rows are 12, 8 or 16 long: (5,8,12) with ta=false, (64,7,16) with tb=true.
    assert_eq!(vector.vector_load_multiplies(), 16 + 2 + 2);
    assert_no_validation_messages(&vector);
}

fn matmul_matches_the_cpu(gpu: &mut VulkanBackend) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut cpu = CpuBackend::default();
    let shapes = [
        (1, 1, 1),
        (5, 7, 3),
        (16, 16, 16),
        (17, 33, 19),
        (40, 3, 70),
        (64, 64, 64),
        (65, 130, 67),
        (129, 63, 200),
    ];
    for &(m, n, k) in &shapes {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let a = if ta {
                random(&mut rng, k, m)
            } else {
                random(&mut rng, m, k)
            };
            let b = if tb {
                random(&mut rng, n, k)
            } else {
                random(&mut rng, k, n)
            };
            let expected = cpu.matmul(&a, &b, ta, tb).unwrap();
            let got = gpu.matmul(&a, &b, ta, tb).unwrap();
            assert_eq!((got.rows, got.cols), (m, n));
            close(
                &format!("matmul {m}×{n}×{k} ta={ta} tb={tb}"),
                &expected.data,
                &got.data,
            );
        }
    }
    assert_no_validation_messages(gpu);
}

#[test]
fn elementwise_ops_and_reductions_match_the_cpu() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let mut gpu = vulkan();
    let mut cpu = CpuBackend::default();
    for &(rows, cols) in &[(1, 1), (3, 5), (37, 10), (100, 17)] {
        let x = random(&mut rng, rows, cols);
        let bias: Vec<f32> = (0..cols).map(|_| rng.random_range(-1.0..1.0)).collect();
        for relu in [false, true] {
            close(
                "bias_act",
                &cpu.bias_act(&x, &bias, relu).unwrap().data,
                &gpu.bias_act(&x, &bias, relu).unwrap().data,
            );
        }
        let act = cpu.bias_act(&x, &bias, true).unwrap();
        let grad = random(&mut rng, rows, cols);
        close(
            "relu_backward",
            &cpu.relu_backward(&act, &grad).unwrap().data,
            &gpu.relu_backward(&act, &grad).unwrap().data,
        );
        let labels: Vec<u32> = (0..rows).map(|_| rng.random_range(0..cols as u32)).collect();
        let (cg, cl) = cpu.softmax_xent(&x, &labels).unwrap();
        let (gg, gl) = gpu.softmax_xent(&x, &labels).unwrap();
        close("softmax_xent grad", &cg.data, &gg.data);
        close("softmax_xent loss", &cl, &gl);
        close(
            "column_sum",
            &cpu.column_sum(&x).unwrap(),
            &gpu.column_sum(&x).unwrap(),
        );
    }
    for len in [1usize, 255, 256, 257, 1000, 70_000] {
        let v: Vec<f32> = (0..len).map(|_| rng.random_range(-1.0..1.0)).collect();
        // Long sums are compared with a tolerance scaled to the sum of magnitudes.
        let magnitude: f32 = v.iter().map(|x| x.abs()).sum();
        let (c, g) = (cpu.sum(&v, false).unwrap(), gpu.sum(&v, false).unwrap());
        assert!(
            (c - g).abs() <= 1e-5 * magnitude.max(1.0),
            "sum of {len}: {c} vs {g}"
        );
        close("mean", &[cpu.mean(&v).unwrap()], &[gpu.mean(&v).unwrap()]);
        close("l2", &[cpu.l2_norm(&v).unwrap()], &[gpu.l2_norm(&v).unwrap()]);
    }
    assert_no_validation_messages(&gpu);
}

#[test]
fn optimiser_updates_match_the_cpu() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut gpu = vulkan();
    let mut cpu = CpuBackend::default();
    let len = 333;
    let w: Vec<f32> = (0..len).map(|_| rng.random_range(-1.0..1.0)).collect();
    let g: Vec<f32> = (0..len).map(|_| rng.random_range(-1.0..1.0)).collect();
    let (mut wc, mut wg) = (w.clone(), w.clone());
    cpu.sgd(&mut wc, &g, 0.1).unwrap();
    gpu.sgd(&mut wg, &g, 0.1).unwrap();
    close("sgd", &wc, &wg);
    let params = AdamParams {
        lr: 0.01,
        beta1: 0.9,
        beta2: 0.999,
        epsilon: 1e-8,
        step: 3,
    };
    let (mut mc, mut vc, mut mg, mut vg) = (vec![0.1; len], vec![0.2; len], vec![0.1; len], vec![0.2; len]);
    let (mut wc, mut wg) = (w.clone(), w);
    cpu.adam(&mut wc, &g, &mut mc, &mut vc, params).unwrap();
    gpu.adam(&mut wg, &g, &mut mg, &mut vg, params).unwrap();
    close("adam w", &wc, &wg);
    close("adam m", &mc, &mg);
    close("adam v", &vc, &vg);
    assert_no_validation_messages(&gpu);
}

/// A small linearly separable problem: class = argmax of a fixed projection of the features.
fn generated_batch(rows: usize, features: usize, classes: usize, seed: u64) -> Batch {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let projection: Vec<f32> = (0..features * classes)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let x = random(&mut rng, rows, features);
    let labels = (0..rows)
        .map(|r| {
            let score = |c: usize| {
                (0..features)
                    .map(|f| x.data[r * features + f] * projection[f * classes + c])
                    .sum::<f32>()
            };
            (0..classes)
                .max_by(|&a, &b| score(a).total_cmp(&score(b)))
                .unwrap() as u32
        })
        .collect();
    Batch {
        x,
        labels,
        targets: Vec::new(),
    }
}

#[test]
fn training_steps_lower_the_loss_alike_on_both_backends() {
    let mut gpu = vulkan();
    let mut cpu = CpuBackend::default();
    for model in [
        ModelSpec::SoftmaxRegression {
            features: 12,
            classes: 4,
        },
        ModelSpec::Mlp {
            features: 12,
            hidden: 20,
            classes: 4,
        },
    ] {
        let batch = generated_batch(70, 12, 4, 9);
        let (mut wc, mut wg) = (model.init(5), model.init(5));
        let mut losses = (Vec::new(), Vec::new());
        for _ in 0..5 {
            let (lc, gc) = cpu.train_step(&model, &wc, &batch).unwrap();
            let (lg, gg) = gpu.train_step(&model, &wg, &batch).unwrap();
            close(&format!("{model:?} loss"), &[lc], &[lg]);
            if let Err(m) = agree_within(&gc.flat(), &gg.flat(), 1e-3, 1e-5) {
                panic!(
                    "{model:?} gradient {} differs: {} vs {}",
                    m.index, m.left, m.right
                );
            }
            for (w, g) in wc.tensors.iter_mut().zip(&gc.tensors) {
                cpu.sgd(&mut w.data, &g.data, 0.5).unwrap();
            }
            for (w, g) in wg.tensors.iter_mut().zip(&gg.tensors) {
                gpu.sgd(&mut w.data, &g.data, 0.5).unwrap();
            }
            losses.0.push(lc);
            losses.1.push(lg);
        }
        assert!(
            losses.0.last() < losses.0.first(),
            "{model:?} cpu loss falls: {:?}",
            losses.0
        );
        assert!(
            losses.1.last() < losses.1.first(),
            "{model:?} vulkan loss falls: {:?}",
            losses.1
        );
        let (_, accuracy_cpu) = cpu.evaluate(&model, &wc, &batch).unwrap();
        let (_, accuracy_gpu) = gpu.evaluate(&model, &wg, &batch).unwrap();
        assert!(
            (accuracy_cpu - accuracy_gpu).abs() <= 2.0 / 70.0,
            "{accuracy_cpu} vs {accuracy_gpu}"
        );
    }
    assert_no_validation_messages(&gpu);
}

/// A layer graph's whole step on the Vulkan backend: the loss and every gradient as on the CPU,
/// within the tolerance the rater applies, for a graph with every layer kind at odd sizes.
#[test]
fn a_layer_graph_step_on_vulkan_gives_the_cpus_loss_and_gradients() {
    use aic_kernels::graph::GraphModel;
    let description = r#"
name = "every-layer"
input = { image = [2, 7, 5] }
loss = "softmax_cross_entropy"
[[layer]]
name = "c1"
kind = "conv2d"
filters = 5
kernel = 3
padding = 1
[[layer]]
kind = "gelu"
[[layer]]
kind = "conv2d"
filters = 5
kernel = 3
padding = 1
[[layer]]
kind = "add"
from = "c1"
[[layer]]
kind = "layer_norm"
[[layer]]
kind = "max_pool2d"
kernel = 2
[[layer]]
kind = "avg_pool2d"
kernel = 2
stride = 1
[[layer]]
kind = "flatten"
[[layer]]
kind = "dense"
units = 9
[[layer]]
kind = "tanh"
[[layer]]
kind = "dropout"
rate = 0.3
[[layer]]
kind = "dense"
units = 4
"#;
    let graph = GraphModel::new(&aic_protocol::model_graph::parse(description).unwrap()).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let batch = Batch {
        x: random(&mut rng, 37, 70),
        labels: (0..37).map(|i| i % 4).collect(),
        targets: Vec::new(),
    };
    let weights = graph.init(3);
    let mut gpu = vulkan();
    let mut cpu = CpuBackend::default();
    let (loss_cpu, grads_cpu) = graph.train_step_on(&mut cpu, &weights, &batch, 5).unwrap();
    let (loss_gpu, grads_gpu) = graph.train_step_on(&mut gpu, &weights, &batch, 5).unwrap();
    close("graph loss", &[loss_cpu], &[loss_gpu]);
    for (i, (c, g)) in grads_cpu.tensors.iter().zip(&grads_gpu.tensors).enumerate() {
        if let Err(m) = agree_within(&c.data, &g.data, 1e-3, 1e-4) {
            panic!(
                "gradient tensor {i}: element {} differs: cpu {} vs vulkan {}",
                m.index, m.left, m.right
            );
        }
    }
    // On one device the same step repeats bit for bit.
    let (loss_again, grads_again) = graph.train_step_on(&mut gpu, &weights, &batch, 5).unwrap();
    assert_eq!(loss_again.to_bits(), loss_gpu.to_bits());
    assert_eq!(grads_again.flat(), grads_gpu.flat());
    let (eval_cpu, _) = graph.evaluate_on(&mut cpu, &weights, &batch).unwrap();
    let (eval_gpu, _) = graph.evaluate_on(&mut gpu, &weights, &batch).unwrap();
    close("graph evaluation loss", &[eval_cpu], &[eval_gpu]);
    assert_no_validation_messages(&gpu);
}

#[test]
fn the_same_inputs_give_bitwise_the_same_outputs_on_one_device() {
    let mut gpu = vulkan();
    let model = ModelSpec::Mlp {
        features: 9,
        hidden: 33,
        classes: 5,
    };
    let batch = generated_batch(257, 9, 5, 4);
    let weights = model.init(2);
    let first = gpu.train_step(&model, &weights, &batch).unwrap();
    for _ in 0..3 {
        let again = gpu.train_step(&model, &weights, &batch).unwrap();
        assert_eq!(first.0.to_bits(), again.0.to_bits());
        let bits = |w: &aic_kernels::Weights| w.flat().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&first.1), bits(&again.1));
    }
    assert_no_validation_messages(&gpu);
}

#[test]
fn bad_input_gets_clear_errors_on_both_backends() {
    let mut backends: Vec<Box<dyn Backend>> = vec![Box::new(CpuBackend::default()), Box::new(vulkan())];
    for backend in &mut backends {
        let a = Matrix::zeros(3, 4);
        let b = Matrix::zeros(5, 2);
        let err = backend.matmul(&a, &b, false, false).unwrap_err();
        assert!(err.to_string().contains("shape mismatch in matmul"), "{err}");

        let model = ModelSpec::SoftmaxRegression {
            features: 4,
            classes: 3,
        };
        let weights = model.init(1);
        let narrow = Batch {
            x: Matrix::zeros(2, 5),
            labels: vec![0, 1],
            targets: Vec::new(),
        };
        let err = backend.train_step(&model, &weights, &narrow).unwrap_err();
        assert!(
            err.to_string().contains("5 feature columns, the model takes 4"),
            "{err}"
        );

        let mut poisoned = Batch {
            x: Matrix::zeros(2, 4),
            labels: vec![0, 1],
            targets: Vec::new(),
        };
        poisoned.x.data[6] = f32::NAN;
        let err = backend.train_step(&model, &weights, &poisoned).unwrap_err();
        assert!(
            err.to_string().contains("non-finite") && err.to_string().contains("index 6"),
            "{err}"
        );

        let bad_label = Batch {
            x: Matrix::zeros(2, 4),
            labels: vec![0, 7],
            targets: Vec::new(),
        };
        let err = backend.train_step(&model, &weights, &bad_label).unwrap_err();
        assert!(err.to_string().contains("label 7 at row 1"), "{err}");

        let mut inf = Matrix::zeros(2, 2);
        inf.data[1] = f32::INFINITY;
        assert!(backend.matmul(&inf, &Matrix::zeros(2, 2), false, false).is_err());
    }
}

#[test]
fn a_buffer_larger_than_the_device_allows_is_refused() {
    let mut gpu = vulkan();
    // 2^28 floats = 1 GiB: beyond lavapipe's (and most GPUs') maxStorageBufferRange... or, where
    // a device allows it, the error must still never be a crash: allocate lazily and check.
    let huge = vec![0f32; (1usize << 28) + 16];
    match gpu.sum(&huge, false) {
        Err(aic_kernels::KernelError::BufferTooLarge { bytes, limit }) => assert!(bytes > limit),
        Err(other) => panic!("expected BufferTooLarge, got {other}"),
        Ok(sum) => assert_eq!(sum, 0.0, "a device that allows 1 GiB buffers must sum them right"),
    }
}

#[test]
fn the_validation_layer_is_on_where_installed() {
    let gpu = vulkan();
    let installed =
        std::path::Path::new("/usr/share/vulkan/explicit_layer.d/VkLayer_khronos_validation.json").exists();
    assert_eq!(
        gpu.validating(),
        installed,
        "validation active exactly when the layer is installed"
    );
}
