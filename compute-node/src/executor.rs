//! The device thread: one OS thread owns the kernel backend (a Vulkan device or the CPU), runs
//! tasks and inference batches one at a time in the order they arrive, and measures the device
//! at start.

use std::sync::mpsc;
use std::time::Instant;

use std::sync::Arc;

use aic_kernels::{Backend, BackendChoice, Matrix, Trainable, Weights};
use aic_protocol::messages::{LocalTraining, TaskKind};

use crate::inner_optimizer::InnerState;
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
    /// Mean loss at the starting weights.
    pub loss: f32,
    /// Gradient tasks: start − end weights after the local steps.
    pub update: Option<Vec<f32>>,
    /// Evaluate of a regression: Σy and Σy².
    pub values: Vec<f32>,
    pub correct: u64,
}

struct Work {
    kind: TaskKind,
    /// Validated and built by the caller.
    model: Trainable,
    /// Seeds a graph's dropout masks and the minibatch order: the task spec's (the job's seed,
    /// the round and the shard), so a re-execution elsewhere draws the same.
    seed: u64,
    weights: Arc<Vec<f32>>,
    training: LocalTraining,
    label: String,
    batches: Vec<RecordBatch>,
    reply: oneshot::Sender<Result<Computed, String>>,
}

/// A batch of encoded rows for a served model's forward pass.
struct InferWork {
    served: Arc<aic_kernels::inference::ServedGraph>,
    x: Matrix,
    reply: oneshot::Sender<Result<Matrix, String>>,
}

/// What the device thread runs.
enum Job {
    Task(Work),
    Infer(InferWork),
}

/// A handle to the device thread.
#[derive(Clone)]
pub struct Executor {
    work: mpsc::Sender<Job>,
}

impl Executor {
    /// Opens the backend on its own thread (the CPU backend on `cpu_threads` cores, 0 for
    /// every core) and measures it: a 256³ matrix multiply, best of 3.
    pub fn start(choice: BackendChoice, cpu_threads: usize) -> Result<(Executor, DeviceProbe), String> {
        let (work_tx, work_rx) = mpsc::channel::<Job>();
        let (probe_tx, probe_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("aic-device".into())
            .spawn(move || {
                let mut backend = match aic_kernels::open_with(choice, cpu_threads) {
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
                while let Ok(job) = work_rx.recv() {
                    match job {
                        Job::Task(work) => {
                            let result = run(backend.as_mut(), &work);
                            let _ = work.reply.send(result);
                        }
                        Job::Infer(work) => {
                            let result = work
                                .served
                                .outputs(backend.as_mut(), &work.x)
                                .map_err(|e| e.to_string());
                            let _ = work.reply.send(result);
                        }
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        let probe = probe_rx
            .recv()
            .map_err(|_| "the device thread died".to_string())??;
        Ok((Executor { work: work_tx }, probe))
    }

    /// Runs a task's kernels on the device thread.
    #[allow(clippy::too_many_arguments)]
    pub async fn run(
        &self,
        kind: TaskKind,
        model: Trainable,
        seed: u64,
        weights: Arc<Vec<f32>>,
        training: LocalTraining,
        label: String,
        batches: Vec<RecordBatch>,
    ) -> Result<Computed, String> {
        let (reply, answer) = oneshot::channel();
        self.work
            .send(Job::Task(Work {
                kind,
                model,
                seed,
                weights,
                training,
                label,
                batches,
                reply,
            }))
            .map_err(|_| "the device thread has stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the device thread dropped the task".to_string())?
    }

    /// A served model's outputs for encoded rows, on the device thread.
    pub async fn infer(
        &self,
        served: Arc<aic_kernels::inference::ServedGraph>,
        x: Matrix,
    ) -> Result<Matrix, String> {
        let (reply, answer) = oneshot::channel();
        self.work
            .send(Job::Infer(InferWork { served, x, reply }))
            .map_err(|_| "the device thread has stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the device thread dropped the batch".to_string())?
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

/// Runs one task. Gradient: the local steps (each a full pass over the task's rows: the mean
/// gradient, then the inner optimizer's step), answering the loss at the starting weights and
/// the update start − end. Evaluate: mean loss and correct count; a regression's evaluation
/// answers, as its values, Σy and Σy² of the rows' targets, from which the runner computes R²
/// over the whole held-out split.
fn run(backend: &mut dyn Backend, work: &Work) -> Result<Computed, String> {
    match work.kind {
        TaskKind::Gradient => train(backend, &work.model, work),
        TaskKind::Evaluate => evaluate(backend, &work.model, work),
    }
}

fn train(backend: &mut dyn Backend, model: &Trainable, work: &Work) -> Result<Computed, String> {
    let steps = work.training.steps.max(1);
    let lr = work.training.learning_rate;
    let mut weights = Weights::from_flat(&model.shapes(), &work.weights).map_err(|e| e.to_string())?;
    model.check_weights(&weights).map_err(|e| e.to_string())?;
    let mut optimizer = InnerState::new(
        work.training.optimizer,
        work.weights.len(),
        lr,
        work.training.weight_decay,
    );
    let mut first_loss = None;
    // The task's rows: what it is paid for and checked against, however many each step takes.
    let rows: u64 = work.batches.iter().map(|b| b.num_rows() as u64).sum();
    let minibatches = crate::minibatch::Minibatches::new(&work.batches, work.training.batch_size, work.seed)?;
    for step in 0..steps {
        let seed = work.seed ^ u64::from(step).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let (loss, gradient) = match &minibatches {
            Some(minibatches) => {
                let batch = [minibatches.step(step)?];
                mean_gradient(backend, model, &weights, &batch, &work.label, seed)?
            }
            None => mean_gradient(backend, model, &weights, &work.batches, &work.label, seed)?,
        };
        first_loss.get_or_insert(loss);
        let mut offset = 0;
        for tensor in &mut weights.tensors {
            let len = tensor.data.len();
            optimizer.apply(offset, &mut tensor.data, &gradient[offset..offset + len]);
            offset += len;
        }
        optimizer.finish_step();
    }
    let update: Vec<f32> = work
        .weights
        .iter()
        .zip(weights.tensors.iter().flat_map(|t| t.data.iter()))
        .map(|(start, end)| start - end)
        .collect();
    if update.iter().any(|u| !u.is_finite()) {
        return Err("the local steps diverged (a weight is not finite)".into());
    }
    Ok(Computed {
        rows,
        loss: first_loss.unwrap_or(0.0),
        update: Some(update),
        values: Vec::new(),
        correct: 0,
    })
}

/// Mean loss and mean gradient (flat) over every row of `batches`.
fn mean_gradient(
    backend: &mut dyn Backend,
    model: &Trainable,
    weights: &Weights,
    batches: &[RecordBatch],
    label: &str,
    seed: u64,
) -> Result<(f32, Vec<f32>), String> {
    let mut rows = 0u64;
    let mut loss_sum = 0.0f64;
    let mut gradient_sum: Vec<f64> = Vec::new();
    // Passes of bounded rows: a wide model's activations stay within the kernels' budget.
    let passes = batches
        .iter()
        .flat_map(|b| aic_kernels::step::passes_of(model.rows_per_pass(), b));
    for (pass, batch) in passes.enumerate() {
        let batch = &batch;
        let n = batch.num_rows() as u64;
        if n == 0 {
            continue;
        }
        let pass_seed = seed ^ (pass as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        let (loss, gradient) =
            aic_kernels::step::train_model(backend, model, weights, batch, label, pass_seed)
                .map_err(|e| e.to_string())?;
        if gradient_sum.is_empty() {
            gradient_sum = vec![0.0; weights.tensors.iter().map(|t| t.data.len()).sum()];
        }
        // Each batch's gradient is its mean; weight it by its rows.
        let mut sums = gradient_sum.iter_mut();
        for g in gradient.tensors.iter().flat_map(|t| t.data.iter()) {
            if let Some(sum) = sums.next() {
                *sum += f64::from(*g) * n as f64;
            }
        }
        loss_sum += f64::from(loss) * n as f64;
        rows += n;
    }
    if rows == 0 {
        return Err("the task's shards hold no rows".into());
    }
    let gradient = gradient_sum.iter().map(|g| (g / rows as f64) as f32).collect();
    Ok(((loss_sum / rows as f64) as f32, gradient))
}

fn evaluate(backend: &mut dyn Backend, model: &Trainable, work: &Work) -> Result<Computed, String> {
    let weights = Weights::from_flat(&model.shapes(), &work.weights).map_err(|e| e.to_string())?;
    model.check_weights(&weights).map_err(|e| e.to_string())?;
    let mut rows = 0u64;
    let mut loss_sum = 0.0f64;
    let mut sums = [0.0f64; 2];
    let mut correct = 0u64;
    let passes = work
        .batches
        .iter()
        .flat_map(|b| aic_kernels::step::passes_of(model.rows_per_pass(), b));
    for batch in passes {
        let batch = &batch;
        let n = batch.num_rows() as u64;
        if n == 0 {
            continue;
        }
        let (loss, accuracy) =
            aic_kernels::step::evaluate_model(backend, model, &weights, batch, &work.label)
                .map_err(|e| e.to_string())?;
        loss_sum += f64::from(loss) * n as f64;
        if model.is_regression() {
            let targets = aic_kernels::batch::from_record_batch(batch, &work.label)
                .map_err(|e| e.to_string())?
                .targets;
            for y in targets {
                sums[0] += f64::from(y);
                sums[1] += f64::from(y) * f64::from(y);
            }
        } else {
            correct += (f64::from(accuracy) * n as f64).round() as u64;
        }
        rows += n;
    }
    if rows == 0 {
        return Err("the task's shards hold no rows".into());
    }
    Ok(Computed {
        rows,
        loss: (loss_sum / rows as f64) as f32,
        update: None,
        // Sums, not means: the runner adds them up across tasks.
        values: if model.is_regression() {
            sums.iter().map(|v| *v as f32).collect()
        } else {
            Vec::new()
        },
        correct,
    })
}
