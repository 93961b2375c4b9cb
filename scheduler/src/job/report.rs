//! The job's report (what `aic job status` shows, JSON) and its metrics, built from the
//! engine's report items with the nodes' names, and the tally of bytes its tensors moved.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use aic_protocol::messages::TaskKind;
use serde_json::{json, Value};
use tracing::warn;

use super::admission::Plan;
use super::engine::{Done, ReportItem};
use super::runner::Effects;
use super::JobContext;

/// Bytes the job's tensors moved, for the report: what the rounds cost the wire.
#[derive(Debug, Default)]
pub struct WireTally {
    /// Weights (and optimizer state) stored on storage nodes, per holder.
    stored_bytes: AtomicU64,
    /// Weights compute nodes fetched (their first task of a round on each node).
    fetched_bytes: AtomicU64,
    /// Updates collected from compute nodes for the reduce.
    collected_bytes: AtomicU64,
    /// Updates read to compare a spot check's executions.
    compared_bytes: AtomicU64,
}

impl WireTally {
    pub fn add_stored(&self, bytes: u64) {
        self.stored_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn add_fetched(&self, bytes: u64) {
        self.fetched_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn add_collected(&self, bytes: u64) {
        self.collected_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn add_compared(&self, bytes: u64) {
        self.compared_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The tallies, and per round (rounds run here) relative to the model's bytes.
    fn report(&self, rounds: u32, model_bytes: u64) -> Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let total = get(&self.stored_bytes)
            + get(&self.fetched_bytes)
            + get(&self.collected_bytes)
            + get(&self.compared_bytes);
        let per_round = total as f64 / f64::from(rounds.max(1));
        json!({
            "stored_bytes": get(&self.stored_bytes),
            "fetched_bytes": get(&self.fetched_bytes),
            "collected_bytes": get(&self.collected_bytes),
            "compared_bytes": get(&self.compared_bytes),
            "bytes_per_round": per_round,
            "per_round_over_model_bytes": per_round / model_bytes.max(1) as f64,
        })
    }
}

/// The report as it grows.
pub struct JobReport {
    value: Value,
    /// Every failed attempt (node, task, shard, why).
    failures: Vec<Value>,
    started: Instant,
    /// Rounds done before this replica ran the job (a resumed job).
    start_round: u32,
    model_bytes: u64,
}

fn kind_name(kind: TaskKind) -> &'static str {
    match kind {
        TaskKind::Gradient => "gradient",
        TaskKind::Evaluate => "evaluate",
    }
}

impl JobReport {
    pub fn new(ctx: &JobContext, plan: &Plan, start_round: u32) -> Self {
        let value = json!({
            "id": plan.request.job.to_string(),
            "state": "running",
            "runner": ctx.me.to_string(),
            "dataset": plan.dataset,
            "dataset_asset": plan.request.dataset_asset.to_string(),
            "model_asset": plan.request.model_asset.to_string(),
            "model": plan.model_json(),
            "epochs": plan.request.epochs,
            "local_steps": plan.request.local_steps,
            "verification": plan.request.verification,
            "batch_size": plan.request.batch_size,
            "seed": plan.request.training_seed(),
            "inner_optimizer": plan.request.inner_optimizer,
            "outer_optimizer": plan.request.outer_optimizer,
            "weight_decay": plan.request.weight_decay_micro as f64 / 1e6,
            "schedule": plan.request.schedule,
            "budget": plan.budget.to_string(),
            "rounds": start_round,
            "tasks": [],
            "curve": [],
            "held_out": [],
            "spot_checks": [],
            "penalties": [],
            "payments": [],
            "rewinds": [],
        });
        JobReport {
            value,
            failures: Vec::new(),
            started: Instant::now(),
            start_round,
            model_bytes: plan.parameters() * 4,
        }
    }

    pub fn value(&self) -> &Value {
        &self.value
    }

    pub fn set(&mut self, key: &str, value: Value) {
        self.value[key] = value;
    }

    /// Lends the report to settlement, which writes the payments into it.
    pub fn take_value(&mut self) -> Value {
        self.value.take()
    }

    pub fn put_value(&mut self, value: Value) {
        self.value = value;
    }

    /// Folds one of the engine's items into the report and the metrics.
    pub fn add(&mut self, item: ReportItem, fx: &Effects) {
        let metrics = &fx.ctx.metrics;
        match item {
            ReportItem::Attempt { kind, ok } => {
                let result = if ok { "ok" } else { "failed" };
                metrics.tasks.with_label_values(&[kind_name(kind), result]).inc();
            }
            ReportItem::Failure {
                node,
                task,
                shard,
                error,
            } => {
                warn!(node = %fx.name(&node), %task, %error, "task failed; placing it elsewhere");
                self.failures.push(json!({
                    "node": fx.name(&node),
                    "task": task.to_string(),
                    "shard": shard,
                    "error": error,
                }));
            }
            ReportItem::SpotCheck {
                round,
                task,
                shard,
                original,
                checker,
                third,
                verdict,
            } => {
                metrics.spot_checks.with_label_values(&[verdict.as_str()]).inc();
                let mut record = json!({
                    "round": round,
                    "task": task.to_string(),
                    "shard": shard,
                    "original": fx.name(&original),
                    "checker": fx.name(&checker),
                    "verdict": verdict.as_str(),
                });
                if let Some(third) = third {
                    record["third"] = json!(fx.name(&third));
                }
                push(&mut self.value["spot_checks"], record);
            }
            ReportItem::Task {
                round,
                kind,
                shard,
                done,
            } => {
                let task = task_json(fx, round, kind, &shard.id, &done);
                push(&mut self.value["tasks"], task);
            }
            ReportItem::Round { rounds, epoch, loss } => {
                metrics.job_rounds.inc();
                self.value["rounds"] = json!(rounds);
                self.value["epoch"] = json!(epoch);
                self.value["loss"] = json!(loss);
                // The training curve, one point a round (the console plots it).
                push(&mut self.value["curve"], json!({"round": rounds, "loss": loss}));
                self.value["wire"] = fx
                    .wire
                    .report(rounds.saturating_sub(self.start_round), self.model_bytes);
            }
            ReportItem::Rewound { from, to, node } => {
                warn!(job = %fx.plan.request.job, node = %fx.name(&node), from, to,
                    "a node found wrong had unconfirmed results in earlier rounds; rewinding");
                metrics.job_rewinds.inc();
                metrics
                    .job_rounds_discarded
                    .inc_by(u64::from(from.saturating_sub(to)));
                push(
                    &mut self.value["rewinds"],
                    json!({"node": fx.name(&node), "from_round": from, "to_round": to}),
                );
                self.value["rounds"] = json!(to);
                // What the model no longer contains: the curves go back with it, and the
                // discarded rounds' tasks (paid: the work was done as asked) say so.
                let keep = |point: &Value| point["round"].as_u64().is_some_and(|r| r <= u64::from(to));
                for curve in ["curve", "held_out"] {
                    if let Some(points) = self.value[curve].as_array_mut() {
                        points.retain(keep);
                    }
                }
                if let Some(tasks) = self.value["tasks"].as_array_mut() {
                    for task in tasks {
                        if task["kind"] == "gradient"
                            && task["round"].as_u64().is_some_and(|r| r >= u64::from(to))
                        {
                            task["discarded"] = json!(true);
                        }
                    }
                }
            }
            ReportItem::Evaluation {
                round,
                last,
                rows,
                loss,
                accuracy,
                r2,
            } => {
                // The held-out curve, one point an evaluation (the console plots it).
                let mut point = json!({"round": round, "loss": loss});
                if let Some(accuracy) = accuracy {
                    point["accuracy"] = json!(accuracy);
                }
                if let Some(r2) = r2 {
                    point["r2"] = json!(r2);
                }
                push(&mut self.value["held_out"], point);
                if !last {
                    return;
                }
                if let Some(accuracy) = accuracy {
                    self.value["accuracy"] = json!(accuracy);
                }
                if let Some(r2) = r2 {
                    self.value["r2"] = json!(r2);
                }
                self.value["test_rows"] = json!(rows);
                self.value["test_loss"] = json!(loss);
                self.value["seconds"] = json!(self.started.elapsed().as_secs_f64());
                self.value["failed_attempts"] = json!(self.failures);
            }
            ReportItem::Error(error) => {
                warn!(job = %fx.plan.request.job, %error, "job failed; settling the work done");
                self.value["error"] = json!(error);
                self.value["failed_attempts"] = json!(self.failures);
            }
        }
    }
}

fn task_json(fx: &Effects, round: u32, kind: TaskKind, shard: &str, done: &Done) -> Value {
    let p = &done.placement;
    let failed_attempts: Vec<String> = done
        .failed_attempts
        .iter()
        .map(|(node, error)| match node {
            Some(node) => format!("{}: {error}", fx.name(node)),
            None => error.clone(),
        })
        .collect();
    json!({
        "round": round,
        "kind": kind_name(kind),
        "task": done.result.task.to_string(),
        "node": fx.name(&p.node),
        "node_id": p.node.to_string(),
        "shard": shard,
        "storage_node": fx.name(&p.replica),
        "rows": done.result.rows,
        "loss": done.result.loss,
        "cached": done.result.cache_hits > 0,
        "weights_fetched_bytes": done.result.weights_fetched_bytes,
        "failed_attempts": failed_attempts,
        "fetch_ms": done.result.fetch_micros as f64 / 1000.0,
        "compute_ms": done.result.compute_micros as f64 / 1000.0,
        "cost": {
            "rtt_ms": p.rtt_ms,
            "transfer_secs": p.transfer_secs,
            "queue_secs": p.queue_secs,
            "compute_secs": p.compute_secs,
            "reputation": p.reputation,
            "total": p.cost,
        },
    })
}

pub(super) fn push(array: &mut Value, item: Value) {
    if let Some(items) = array.as_array_mut() {
        items.push(item);
    }
}
