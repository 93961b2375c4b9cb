//! Every layer-graph operation, forward and backward, on the Vulkan device against the host
//! reference (`HostOps`, whose backward passes the unit tests check by finite differences), on
//! random inputs at odd sizes: convolutions with padding and strides, overlapping pooling windows,
//! every activation, seeded dropout (the same mask bit for bit), layer norm and the three losses.
//! A layer graph's step is one submission and repeats bit for bit on one device.

mod common;

use aic_kernels::compare::agree_within;
use aic_kernels::graph::GraphModel;
use aic_kernels::graph_ops::{Activation, Conv, GraphOps, Pool};
use aic_kernels::host_ops::HostOps;
use aic_kernels::{Batch, CpuBackend, Matrix, Result};
use aic_protocol::model_graph::Loss;
use common::{assert_no_validation_messages, random, vulkan};
use rand::{Rng, SeedableRng};

/// One geometry: an image batch, a convolution over it and a pooling window.
struct Case {
    rows: usize,
    conv: Conv,
    pool: Pool,
}

fn case(
    rows: usize,
    (channels, height, width): (usize, usize, usize),
    (kernel, stride, padding, filters): (usize, usize, usize, usize),
    (pool_kernel, pool_stride): (usize, usize),
) -> Case {
    let out = |size: usize| (size + 2 * padding - kernel) / stride + 1;
    let pooled = |size: usize| (size - pool_kernel) / pool_stride + 1;
    Case {
        rows,
        conv: Conv {
            channels,
            height,
            width,
            out_height: out(height),
            out_width: out(width),
            kernel,
            stride,
            padding,
            filters,
        },
        pool: Pool {
            channels,
            height,
            width,
            out_height: pooled(height),
            out_width: pooled(width),
            kernel: pool_kernel,
            stride: pool_stride,
            max: true,
        },
    }
}

/// The inputs of one case, drawn once and given to both backends.
struct Inputs {
    x: Matrix,
    filters: Matrix,
    filter_bias: Matrix,
    /// A gradient shaped like the convolution's output.
    g_conv: Matrix,
    /// A gradient shaped like the pooling output.
    g_pool: Matrix,
    /// A gradient shaped like `x`.
    g_x: Matrix,
    gamma: Matrix,
    beta: Matrix,
    row_bias: Matrix,
    logits: Matrix,
    single: Matrix,
    batch: Batch,
}

fn inputs(case: &Case, rng: &mut impl Rng) -> Inputs {
    let (rows, conv, pool) = (case.rows, &case.conv, &case.pool);
    let width = conv.channels * conv.height * conv.width;
    let classes = 7;
    // Scaled so the activations see their saturating ends too.
    let mut x = random(rng, rows, width);
    x.data.iter_mut().for_each(|v| *v *= 4.0);
    Inputs {
        x,
        filters: random(rng, conv.filters, conv.field()),
        filter_bias: random(rng, 1, conv.filters),
        g_conv: random(rng, rows, conv.filters * conv.positions()),
        g_pool: random(rng, rows, pool.channels * pool.out_height * pool.out_width),
        g_x: random(rng, rows, width),
        gamma: random(rng, 1, width),
        beta: random(rng, 1, width),
        row_bias: random(rng, 1, width),
        logits: random(rng, rows, classes),
        single: random(rng, rows, 1),
        batch: Batch {
            x: Matrix::zeros(rows, 1),
            labels: (0..rows).map(|_| rng.random_range(0..2u32)).collect(),
            targets: (0..rows).map(|_| rng.random_range(-2.0f32..2.0)).collect(),
        },
    }
}

/// Every operation on `ops`, its outputs named in order.
fn exercise<O: GraphOps + ?Sized>(
    ops: &mut O,
    case: &Case,
    data: &Inputs,
) -> Result<Vec<(String, O::Tensor)>> {
    let mut out = Vec::new();
    let conv = &case.conv;
    let x = ops.tensor(&data.x)?;
    let filters = ops.tensor(&data.filters)?;
    let filter_bias = ops.tensor(&data.filter_bias)?;
    let cols = ops.im2col(&x, conv)?;
    let y = ops.matmul(&cols, &filters, false, true)?;
    out.push((
        "conv output".to_string(),
        ops.conv_output(&y, &filter_bias, conv)?,
    ));
    let g_conv = ops.tensor(&data.g_conv)?;
    let g_p = ops.conv_output_grad(&g_conv, conv)?;
    let d_cols = ops.matmul(&g_p, &filters, false, false)?;
    out.push(("conv output gradient".to_string(), g_p));
    out.push(("col2im".to_string(), ops.col2im(&d_cols, conv, case.rows)?));
    out.push(("im2col".to_string(), cols));

    let g_pool = ops.tensor(&data.g_pool)?;
    for max in [true, false] {
        let pool = Pool { max, ..case.pool };
        let (pooled, indices) = ops.pool(&x, &pool)?;
        out.push((format!("pool max={max}"), pooled));
        out.push((
            format!("pool backward max={max}"),
            ops.pool_backward(&g_pool, &indices, &pool)?,
        ));
    }

    let g_x = ops.tensor(&data.g_x)?;
    for f in [
        Activation::Relu,
        Activation::Tanh,
        Activation::Sigmoid,
        Activation::Gelu,
    ] {
        let activated = ops.activate(&x, f)?;
        out.push((
            format!("{f:?} backward"),
            ops.activate_backward(&g_x, &x, &activated, f)?,
        ));
        out.push((format!("{f:?}"), activated));
    }

    let (dropped, mask) = ops.dropout(&x, 0.3, 0x0123_4567_89ab_cdef, 3)?;
    out.push(("dropout gradient".to_string(), ops.multiply(&g_x, &mask)?));
    out.push(("dropout".to_string(), dropped));
    out.push(("dropout mask".to_string(), mask));
    out.push(("add".to_string(), ops.add(&x, &g_x)?));

    let gamma = ops.tensor(&data.gamma)?;
    let beta = ops.tensor(&data.beta)?;
    let (normed, stats) = ops.layer_norm(&x, &gamma, &beta, 1e-5)?;
    let (d_x, d_gamma, d_beta) = ops.layer_norm_backward(&x, &g_x, &gamma, &stats)?;
    out.extend([
        ("layer norm".to_string(), normed),
        ("layer norm statistics".to_string(), stats),
        ("layer norm dx".to_string(), d_x),
        ("layer norm dγ".to_string(), d_gamma),
        ("layer norm dβ".to_string(), d_beta),
    ]);
    let row_bias = ops.tensor(&data.row_bias)?;
    out.push(("add bias".to_string(), ops.add_bias(&x, &row_bias)?));
    out.push(("column sum".to_string(), ops.column_sum(&x)?));

    let logits = ops.tensor(&data.logits)?;
    let single = ops.tensor(&data.single)?;
    let mut softmax_batch = data.batch.clone();
    softmax_batch.labels = (0..case.rows as u32).map(|r| (r * 5 + 1) % 7).collect();
    for (name, outputs, batch, loss) in [
        (
            "softmax cross-entropy",
            &logits,
            &softmax_batch,
            Loss::SoftmaxCrossEntropy,
        ),
        ("squared error", &single, &data.batch, Loss::MeanSquaredError),
        (
            "binary cross-entropy",
            &single,
            &data.batch,
            Loss::BinaryCrossEntropy,
        ),
    ] {
        let (sum, grad) = ops.loss(outputs, batch, loss)?;
        out.push((format!("{name} loss"), sum));
        out.push((format!("{name} gradient"), grad));
    }
    Ok(out)
}

fn cases() -> Vec<Case> {
    vec![
        // rows, (C, H, W), (kernel, stride, padding, filters), (pool kernel, pool stride)
        case(1, (1, 8, 8), (3, 1, 1, 4), (2, 2)),
        case(3, (2, 7, 5), (3, 2, 0, 3), (3, 1)),
        case(17, (3, 9, 11), (5, 2, 2, 5), (3, 2)),
        case(5, (2, 6, 6), (1, 1, 0, 2), (2, 1)),
    ]
}

#[test]
fn every_operation_matches_the_host_reference_at_odd_sizes() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    let mut gpu = vulkan();
    let mut cpu = CpuBackend::default();
    for case in cases() {
        let data = inputs(&case, &mut rng);
        let expected = exercise(&mut HostOps::new(&mut cpu), &case, &data).unwrap();
        let mut names = Vec::new();
        let got = gpu
            .with_graph_ops(|ops| {
                let outputs = exercise(ops, &case, &data)?;
                names = outputs.iter().map(|(name, _)| name.clone()).collect();
                Ok(outputs.into_iter().map(|(_, t)| t).collect())
            })
            .unwrap();
        assert_eq!(names.len(), expected.len());
        for ((name, want), got) in expected.iter().zip(&got) {
            let what = format!("{name} ({} rows, {:?})", case.rows, case.conv);
            assert_eq!((got.rows, got.cols), (want.rows, want.cols), "{what}: shape");
            if name.starts_with("dropout") {
                // The mask is drawn from integers alone: every backend drops the same values.
                assert_eq!(got.data, want.data, "{what}: not the host's mask");
                continue;
            }
            if let Err(m) = agree_within(&want.data, &got.data, 1e-4, 1e-5) {
                panic!(
                    "{what}: element {} differs: host {} vs vulkan {}",
                    m.index, m.left, m.right
                );
            }
        }
        // Nothing left unwritten: a value a kernel forgot would still be the NaN poison.
        assert!(got.iter().all(|t| t.data.iter().all(|v| v.is_finite())));
    }
    assert_no_validation_messages(&gpu);
}

#[test]
fn the_operations_repeat_bit_for_bit_on_one_device() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(22);
    let mut gpu = vulkan();
    let case = &cases()[2];
    let data = inputs(case, &mut rng);
    let mut run = || {
        gpu.with_graph_ops(|ops| Ok(exercise(ops, case, &data)?.into_iter().map(|(_, t)| t).collect()))
            .unwrap()
    };
    let first = run();
    let again = run();
    let bits = |ms: &[Matrix]| {
        ms.iter()
            .flat_map(|m| m.data.iter().map(|v| v.to_bits()))
            .collect::<Vec<_>>()
    };
    assert_eq!(bits(&first), bits(&again));
}

#[test]
fn a_graph_step_on_vulkan_is_one_submission_for_every_loss() {
    let mut gpu = vulkan();
    let mut rng = rand::rngs::StdRng::seed_from_u64(23);
    for (loss, units) in [
        ("softmax_cross_entropy", 4),
        ("mean_squared_error", 1),
        ("binary_cross_entropy", 1),
    ] {
        let description = format!(
            "name = \"t\"\ninput = {{ image = [1, 6, 6] }}\nloss = \"{loss}\"\n\
             [[layer]]\nkind = \"conv2d\"\nfilters = 3\nkernel = 3\n\
             [[layer]]\nkind = \"relu\"\n[[layer]]\nkind = \"max_pool2d\"\nkernel = 2\n\
             [[layer]]\nkind = \"flatten\"\n[[layer]]\nkind = \"layer_norm\"\n\
             [[layer]]\nkind = \"dense\"\nunits = {units}\n"
        );
        let graph = GraphModel::new(&aic_protocol::model_graph::parse(&description).unwrap()).unwrap();
        let rows = 13;
        let batch = Batch {
            x: random(&mut rng, rows, 36),
            labels: (0..rows as u32).map(|r| r % units.max(2) as u32).collect(),
            targets: (0..rows).map(|r| r as f32 / 4.0 - 1.0).collect(),
        };
        let weights = graph.init(4);
        let before = gpu.submissions();
        let (loss_gpu, grads_gpu) = graph.train_step_on(&mut gpu, &weights, &batch, 1).unwrap();
        assert_eq!(gpu.submissions(), before + 1, "{loss}: one command buffer a step");
        let (loss_cpu, grads_cpu) = graph
            .train_step_on(&mut CpuBackend::default(), &weights, &batch, 1)
            .unwrap();
        assert!(
            agree_within(&[loss_cpu], &[loss_gpu], 1e-4, 1e-5).is_ok(),
            "{loss}: {loss_cpu} vs {loss_gpu}"
        );
        if let Err(m) = agree_within(&grads_cpu.flat(), &grads_gpu.flat(), 1e-3, 1e-4) {
            panic!(
                "{loss}: gradient {} differs: cpu {} vs vulkan {}",
                m.index, m.left, m.right
            );
        }
        let (eval_cpu, score_cpu) = graph
            .evaluate_on(&mut CpuBackend::default(), &weights, &batch)
            .unwrap();
        let (eval_gpu, score_gpu) = graph.evaluate_on(&mut gpu, &weights, &batch).unwrap();
        assert!(agree_within(&[eval_cpu, score_cpu], &[eval_gpu, score_gpu], 1e-4, 1e-5).is_ok());
    }
    assert_no_validation_messages(&gpu);
}
