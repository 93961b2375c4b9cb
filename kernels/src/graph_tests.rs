//! Every layer's backward pass against finite differences, the fixed MLP against the existing
//! kernels, seeded dropout, and a small CNN that learns.

use aic_protocol::model_graph::{self, ModelGraph};

use super::*;
use crate::model::ModelSpec;

fn graph(input: &str, loss: &str, layers: &str) -> ModelGraph {
    model_graph::parse(&format!(
        "name = \"t\"\ninput = {input}\nloss = \"{loss}\"\n{layers}"
    ))
    .unwrap()
}

fn layer(kind: &str, extra: &str) -> String {
    format!("[[layer]]\nkind = \"{kind}\"\n{extra}\n")
}

/// Deterministic values in [-1, 1).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_add(0x2545_F491_4F6C_DD1D);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn batch(rows: usize, width: usize, classes: u32) -> Batch {
    let x = Matrix::new(rows, width, values(rows * width, 7)).unwrap();
    let labels = (0..rows as u32).map(|r| r % classes).collect();
    let targets = values(rows, 9);
    Batch { x, labels, targets }
}

/// The analytic gradient of a few entries of every parameter tensor against central
/// differences of the loss.
fn check_gradients(g: &ModelGraph, width: usize, classes: u32) {
    let model = GraphModel::new(g).unwrap();
    let weights = model.init(5);
    // Biases start at zero: perturb every parameter a little so no gradient is trivially zero.
    let mut weights = weights;
    for (t, tensor) in weights.tensors.iter_mut().enumerate() {
        let jitter = values(tensor.data.len(), 100 + t as u64);
        for (v, d) in tensor.data.iter_mut().zip(jitter) {
            *v += 0.1 * d;
        }
    }
    let batch = batch(5, width, classes);
    let (_, grads) = model.train_step(&weights, &batch, 11).unwrap();
    let loss_at = |w: &Weights| model.train_step(w, &batch, 11).unwrap().0 as f64;
    let eps = 1e-3f32;
    for (t, tensor) in weights.tensors.iter().enumerate() {
        let picks = tensor.data.len().min(6);
        for k in 0..picks {
            let i = (k * 7919) % tensor.data.len();
            let mut plus = weights.clone();
            plus.tensors[t].data[i] += eps;
            let mut minus = weights.clone();
            minus.tensors[t].data[i] -= eps;
            let (up, here, down) = (loss_at(&plus), loss_at(&weights), loss_at(&minus));
            let e = f64::from(eps);
            let numeric = (up - down) / (2.0 * e);
            let analytic = f64::from(grads.tensors[t].data[i]);
            let tolerance = 2e-2 * numeric.abs().max(analytic.abs()).max(0.05);
            // Where a ReLU or a pooling window's maximum switches within ±eps, the central
            // difference averages two slopes: the analytic one must then match a one-sided one.
            let one_sided = [(up - here) / e, (here - down) / e];
            assert!(
                (numeric - analytic).abs() <= tolerance
                    || one_sided.iter().any(|n| (n - analytic).abs() <= tolerance),
                "{:?}: tensor {t} entry {i}: analytic {analytic} vs numeric {numeric}",
                g.layers.iter().map(|l| l.op.kind()).collect::<Vec<_>>()
            );
        }
    }
}

const VECTOR: &str = "{ features = 6 }";
const IMAGE: &str = "{ image = [2, 5, 5] }";

#[test]
fn dense_and_every_activation_match_finite_differences() {
    for activation in ["relu", "tanh", "sigmoid", "gelu"] {
        let layers = layer("dense", "units = 5") + &layer(activation, "") + &layer("dense", "units = 3");
        check_gradients(&graph(VECTOR, "softmax_cross_entropy", &layers), 6, 3);
    }
}

#[test]
fn layer_norm_dropout_and_a_residual_add_match_finite_differences() {
    let norm = layer("dense", "units = 5") + &layer("layer_norm", "") + &layer("dense", "units = 3");
    check_gradients(&graph(VECTOR, "softmax_cross_entropy", &norm), 6, 3);
    let dropout =
        layer("dense", "units = 8") + &layer("dropout", "rate = 0.3") + &layer("dense", "units = 3");
    check_gradients(&graph(VECTOR, "softmax_cross_entropy", &dropout), 6, 3);
    let residual = layer("dense", "units = 4\nname = \"a\"")
        + &layer("tanh", "")
        + &layer("dense", "units = 4")
        + &layer("add", "from = \"a\"")
        + &layer("dense", "units = 3");
    check_gradients(&graph(VECTOR, "softmax_cross_entropy", &residual), 6, 3);
}

#[test]
fn convolutions_and_pooling_match_finite_differences() {
    let padded = layer("conv2d", "filters = 3\nkernel = 3\npadding = 1")
        + &layer("tanh", "")
        + &layer("max_pool2d", "kernel = 2")
        + &layer("flatten", "")
        + &layer("dense", "units = 3");
    check_gradients(&graph(IMAGE, "softmax_cross_entropy", &padded), 50, 3);
    let strided = layer("conv2d", "filters = 2\nkernel = 2\nstride = 2")
        + &layer("avg_pool2d", "kernel = 2\nstride = 1")
        + &layer("flatten", "")
        + &layer("dense", "units = 2");
    check_gradients(&graph(IMAGE, "softmax_cross_entropy", &strided), 50, 2);
}

#[test]
fn regression_and_binary_losses_match_finite_differences() {
    let regression = layer("dense", "units = 4") + &layer("tanh", "") + &layer("dense", "units = 1");
    check_gradients(&graph(VECTOR, "mean_squared_error", &regression), 6, 1);
    let binary = layer("dense", "units = 4") + &layer("sigmoid", "") + &layer("dense", "units = 1");
    check_gradients(&graph(VECTOR, "binary_cross_entropy", &binary), 6, 2);
}

#[test]
fn the_fixed_mlp_as_a_graph_computes_what_the_existing_kernels_do() {
    use aic_protocol::messages::ModelShape;
    let shape = ModelShape::Mlp {
        features: 6,
        hidden: 5,
        classes: 3,
    };
    let model = GraphModel::new(&ModelGraph::of_shape("mlp", shape)).unwrap();
    let spec = ModelSpec::from(shape);
    assert_eq!(model.shapes(), spec.shapes());
    let weights = spec.init(3);
    let batch = batch(7, 6, 3);
    let (loss, grads) = model.train_step(&weights, &batch, 0).unwrap();
    let (expected_loss, expected) = CpuBackend::default().train_step(&spec, &weights, &batch).unwrap();
    assert!((loss - expected_loss).abs() < 1e-5, "{loss} vs {expected_loss}");
    for (a, b) in grads.flat().iter().zip(expected.flat()) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
}

#[test]
fn dropout_masks_follow_the_seed_and_evaluation_keeps_everything() {
    let layers =
        layer("dense", "units = 16") + &layer("dropout", "rate = 0.5") + &layer("dense", "units = 3");
    let model = GraphModel::new(&graph(VECTOR, "softmax_cross_entropy", &layers)).unwrap();
    let weights = model.init(1);
    let batch = batch(8, 6, 3);
    let a = model.train_step(&weights, &batch, 42).unwrap();
    let b = model.train_step(&weights, &batch, 42).unwrap();
    assert_eq!(a.0.to_bits(), b.0.to_bits());
    assert_eq!(a.1.flat(), b.1.flat(), "the same seed repeats bitwise");
    let c = model.train_step(&weights, &batch, 43).unwrap();
    assert_ne!(a.1.flat(), c.1.flat(), "another seed draws another mask");
    let trace = model.forward(&weights, &batch.x, false, 42).unwrap();
    let kept = trace.outputs[1]
        .data
        .iter()
        .zip(&trace.outputs[0].data)
        .all(|(a, b)| a == b);
    assert!(kept, "evaluation passes every value through");
    let drawn: usize = (0..1000).filter(|&i| dropout_draw(42, 1, i) < 0.5).count();
    assert!((400..600).contains(&drawn), "{drawn} of 1000 dropped at rate 0.5");
}

#[test]
fn the_digits_cnn_learns_two_kinds_of_image() {
    // Vertical versus horizontal bars on 8×8 images, with noise.
    let g = model_graph::parse(include_str!("../../examples/models/digits-cnn.toml")).unwrap();
    let model = GraphModel::new(&g).unwrap();
    let rows = 32;
    let noise = values(rows * 64, 3);
    let mut x = Vec::with_capacity(rows * 64);
    let mut labels = Vec::with_capacity(rows);
    for r in 0..rows {
        let label = (r % 2) as u32;
        for i in 0..64 {
            let (y, xx) = (i / 8, i % 8);
            let bar = if label == 0 {
                xx == 3 || xx == 4
            } else {
                y == 3 || y == 4
            };
            x.push(if bar { 1.0 } else { 0.0 } + 0.2 * noise[r * 64 + i]);
        }
        labels.push(label);
    }
    let batch = Batch {
        x: Matrix::new(rows, 64, x).unwrap(),
        labels,
        targets: Vec::new(),
    };
    let mut weights = model.init(1);
    let (first, _) = model.evaluate(&weights, &batch).unwrap();
    let mut cpu = CpuBackend::default();
    for step in 0..30 {
        let (_, grads) = model.train_step(&weights, &batch, step).unwrap();
        for (w, g) in weights.tensors.iter_mut().zip(&grads.tensors) {
            cpu.sgd(&mut w.data, &g.data, 0.1).unwrap();
        }
    }
    let (last, accuracy) = model.evaluate(&weights, &batch).unwrap();
    assert!(last < first / 2.0, "the loss fell from {first} to {last}");
    assert_eq!(accuracy, 1.0);
}

#[test]
fn every_core_computes_the_same_step_as_one() {
    // Convolutions with padding and a stride, so im2col, its inverse and the output scatter run
    // on several rows at once; the answer must not depend on how many cores took part.
    let layers = layer("conv2d", "filters = 4\nkernel = 3\npadding = 1")
        + &layer("relu", "")
        + &layer("conv2d", "filters = 3\nkernel = 3\nstride = 2\npadding = 1")
        + &layer("flatten", "")
        + &layer("dense", "units = 3");
    let description = graph(IMAGE, "softmax_cross_entropy", &layers);
    let rows = 33;
    let data = batch(rows, 50, 3);
    let mut one = GraphModel::new(&description).unwrap();
    one.set_threads(1);
    let mut all = GraphModel::new(&description).unwrap();
    all.set_threads(4);
    let weights = one.init(9);
    let (loss_one, grads_one) = one.train_step(&weights, &data, 1).unwrap();
    let (loss_all, grads_all) = all.train_step(&weights, &data, 1).unwrap();
    assert_eq!(loss_one.to_bits(), loss_all.to_bits());
    assert_eq!(grads_one.flat(), grads_all.flat());
    assert!(grads_one.flat().iter().any(|g| *g != 0.0));
}
