//! The device thread: one OS thread owns the kernel backend (a Vulkan device or the CPU), runs
//! tasks one at a time in the order they arrive, and measures the device at start.

use std::sync::mpsc;
use std::time::Instant;

use aic_kernels::{Backend, BackendChoice, Matrix, ModelSpec, Weights};
use aic_protocol::messages::{ModelShape, TaskKind};
use arrow_array::RecordBatch;
use tokio::sync::oneshot;

/// What the device measured at start.
#[derive(Clone, Debug)]
pub struct DeviceProbe {
    pub describe: String,
    pub memory_bytes: Option<u64>,
    pub mflops: u64,
}

/// One task's numbers, before the node adds its digest and timings.
#[derive(Clone, Debug, PartialEq)]
pub struct Computed {
    pub rows: u64,
    pub loss: f32,
    pub values: Vec<f32>,
    pub correct: u64,
}

struct Work {
    kind: TaskKind,
    model: ModelShape,
    weights: Vec<f32>,
    label: String,
    batches: Vec<RecordBatch>,
    reply: oneshot::Sender<Result<Computed, String>>,
}

/// A handle to the device thread.
#[derive(Clone)]
pub struct Executor {
    work: mpsc::Sender<Work>,
}

impl Executor {
    /// Opens the backend on its own thread and measures it: a 256³ matrix multiply, best of 3.
    pub fn start(choice: BackendChoice) -> Result<(Executor, DeviceProbe), String> {
        let (work_tx, work_rx) = mpsc::channel::<Work>();
        let (probe_tx, probe_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("aic-device".into())
            .spawn(move || {
                let mut backend = match aic_kernels::open(choice) {
                    Ok(backend) => backend,
                    Err(e) => {
                        let _ = probe_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let probe = probe(backend.as_mut());
                if probe_tx.send(probe).is_err() {
                    return;
                }
                // Runs until every handle is dropped.
                while let Ok(work) = work_rx.recv() {
                    let result = run(backend.as_mut(), &work);
                    let _ = work.reply.send(result);
                }
            })
            .map_err(|e| e.to_string())?;
        let probe = probe_rx
            .recv()
            .map_err(|_| "the device thread died".to_string())??;
        Ok((Executor { work: work_tx }, probe))
    }

    /// Runs a task's kernels on the device thread.
    pub async fn run(
        &self,
        kind: TaskKind,
        model: ModelShape,
        weights: Vec<f32>,
        label: String,
        batches: Vec<RecordBatch>,
    ) -> Result<Computed, String> {
        let (reply, answer) = oneshot::channel();
        self.work
            .send(Work {
                kind,
                model,
                weights,
                label,
                batches,
                reply,
            })
            .map_err(|_| "the device thread has stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the device thread dropped the task".to_string())?
    }
}

fn probe(backend: &mut dyn Backend) -> Result<DeviceProbe, String> {
    const N: usize = 256;
    let a = Matrix {
        rows: N,
        cols: N,
        data: (0..N * N).map(|i| (i % 7) as f32 * 0.1).collect(),
    };
    let mut best = f64::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        backend.matmul(&a, &a, false, false).map_err(|e| e.to_string())?;
        best = best.min(started.elapsed().as_secs_f64());
    }
    let flops = 2.0 * (N * N * N) as f64;
    Ok(DeviceProbe {
        describe: backend.describe(),
        memory_bytes: backend.device_memory_bytes(),
        mflops: (flops / best.max(1e-9) / 1e6) as u64,
    })
}

/// The kernels' model for a wire shape.
pub fn model_spec(shape: ModelShape) -> ModelSpec {
    match shape {
        ModelShape::LinearRegression { features } => ModelSpec::LinearRegression {
            features: features as usize,
        },
        ModelShape::SoftmaxRegression { features, classes } => ModelSpec::SoftmaxRegression {
            features: features as usize,
            classes: classes as usize,
        },
        ModelShape::Mlp {
            features,
            hidden,
            classes,
        } => ModelSpec::Mlp {
            features: features as usize,
            hidden: hidden as usize,
            classes: classes as usize,
        },
    }
}

/// Flat parameters cut into the model's tensors.
pub fn unflatten(spec: &ModelSpec, flat: &[f32]) -> Result<Weights, String> {
    let shapes = spec.shapes();
    let needed: usize = shapes.iter().map(|(r, c)| r * c).sum();
    if flat.len() != needed {
        return Err(format!(
            "the model has {needed} parameters, the task sent {}",
            flat.len()
        ));
    }
    let mut offset = 0;
    let tensors = shapes
        .into_iter()
        .map(|(rows, cols)| {
            let data = flat[offset..offset + rows * cols].to_vec();
            offset += rows * cols;
            Matrix { rows, cols, data }
        })
        .collect();
    Ok(Weights { tensors })
}

/// Mean loss and mean gradient (or correct count) over every row of the batches. A regression's
/// evaluation answers, as its values, Σy and Σy² of the rows' targets, from which the runner
/// computes R² over the whole held-out split.
fn run(backend: &mut dyn Backend, work: &Work) -> Result<Computed, String> {
    let spec = model_spec(work.model);
    let weights = unflatten(&spec, &work.weights)?;
    spec.check_weights(&weights).map_err(|e| e.to_string())?;
    let mut rows = 0u64;
    let mut loss_sum = 0.0f64;
    let mut gradient_sum: Vec<f64> = Vec::new();
    let mut correct = 0u64;
    for batch in &work.batches {
        let n = batch.num_rows() as u64;
        if n == 0 {
            continue;
        }
        match work.kind {
            TaskKind::Gradient => {
                let (loss, gradient) =
                    aic_kernels::step::train_step(backend, &spec, &weights, batch, &work.label)
                        .map_err(|e| e.to_string())?;
                let flat = gradient.flat();
                if gradient_sum.is_empty() {
                    gradient_sum = vec![0.0; flat.len()];
                }
                // Each batch's gradient is its mean; weight it by its rows.
                for (sum, g) in gradient_sum.iter_mut().zip(flat) {
                    *sum += f64::from(g) * n as f64;
                }
                loss_sum += f64::from(loss) * n as f64;
            }
            TaskKind::Evaluate => {
                let (loss, accuracy) =
                    aic_kernels::step::evaluate(backend, &spec, &weights, batch, &work.label)
                        .map_err(|e| e.to_string())?;
                loss_sum += f64::from(loss) * n as f64;
                if spec.is_regression() {
                    let targets = aic_kernels::batch::from_record_batch(batch, &work.label)
                        .map_err(|e| e.to_string())?
                        .targets;
                    if gradient_sum.is_empty() {
                        gradient_sum = vec![0.0; 2];
                    }
                    for y in targets {
                        gradient_sum[0] += f64::from(y);
                        gradient_sum[1] += f64::from(y) * f64::from(y);
                    }
                } else {
                    correct += (f64::from(accuracy) * n as f64).round() as u64;
                }
            }
        }
        rows += n;
    }
    if rows == 0 {
        return Err("the task's shards hold no rows".into());
    }
    let values = match work.kind {
        TaskKind::Gradient => gradient_sum.iter().map(|g| (g / rows as f64) as f32).collect(),
        // Sums, not means: the runner adds them up across tasks.
        TaskKind::Evaluate => gradient_sum.iter().map(|v| *v as f32).collect(),
    };
    Ok(Computed {
        rows,
        loss: (loss_sum / rows as f64) as f32,
        values,
        correct,
    })
}
