//! The scheduler's own metrics (membership, jobs, verification, payroll, storage health as the
//! nodes report it), beside the transport metrics every server records.
//!
//! Every label takes values from a closed set listed here; none names a job, node or account.

use aic_protocol::messages::NodeState;
use aic_protocol::metrics::{registered, TransportMetrics};
use aic_protocol::Role;
use prometheus::{
    CounterVec, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// `aic_scheduler_tasks_total{kind}`.
pub const TASK_KINDS: [&str; 2] = ["gradient", "evaluate"];
/// `aic_scheduler_tasks_total{result}`: ran and answered, or failed/timed out (re-run elsewhere).
pub const TASK_RESULTS: [&str; 2] = ["ok", "failed"];
/// `aic_scheduler_spot_checks_total{verdict}`.
pub const SPOT_CHECK_VERDICTS: [&str; 4] = ["agreed", "original_wrong", "checker_wrong", "undecided"];
/// `aic_scheduler_jobs_finished_total{state}`.
pub const JOB_END_STATES: [&str; 4] = ["done", "failed", "cancelled", "moved"];
/// `aic_scheduler_jobs_submitted_total{result}`.
pub const SUBMISSION_RESULTS: [&str; 2] = ["accepted", "refused"];
/// `aic_scheduler_payments_aic_total{role}`.
pub const PAYMENT_ROLES: [&str; 6] = [
    "compute",
    "storage",
    "dataset_fee",
    "model_fee",
    "platform_fee",
    "refund",
];
/// `aic_scheduler_penalties_total{reason}`.
pub const PENALTY_REASONS: [&str; 1] = ["wrong_result"];

#[derive(Clone)]
pub struct SchedulerMetrics {
    pub transport: TransportMetrics,
    /// Nodes by role and state.
    pub nodes: IntGaugeVec,
    pub registrations: IntCounterVec,
    pub heartbeats_received: IntCounterVec,
    pub node_state_changes: IntCounterVec,
    pub lottery_rounds: IntCounterVec,
    pub jobs_submitted: IntCounterVec,
    pub jobs_running: IntGauge,
    pub jobs_finished: IntCounterVec,
    pub job_rounds: IntCounter,
    /// Rewinds: a node found wrong had unconfirmed results in earlier rounds.
    pub job_rewinds: IntCounter,
    /// Rounds those rewinds threw away (and so ran again).
    pub job_rounds_discarded: IntCounter,
    /// Task updates refused while collecting or comparing them, by reason.
    pub tensor_refusals: IntCounterVec,
    /// The smallest share of its escrow any running job has left after what it owes so far
    /// (1 when no job runs).
    pub job_escrow_left: Gauge,
    pub tasks: IntCounterVec,
    pub placement_duration: Histogram,
    pub spot_checks: IntCounterVec,
    pub penalties: IntCounterVec,
    pub payments: CounterVec,
    /// Shard copies that datasets' manifests ask for but no up storage node reports healthy.
    pub missing_shard_copies: IntGauge,
}

impl SchedulerMetrics {
    pub fn register(registry: &Registry) -> aic_protocol::Result<Self> {
        let metrics = SchedulerMetrics {
            transport: TransportMetrics::register(registry, "scheduler")?,
            nodes: registered(
                registry,
                IntGaugeVec::new(
                    Opts::new("aic_scheduler_nodes", "Registered nodes by role and state"),
                    &["role", "state"],
                )?,
            )?,
            registrations: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "aic_scheduler_registrations_total",
                        "Node registrations, by role and result",
                    ),
                    &["role", "result"],
                )?,
            )?,
            heartbeats_received: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "aic_scheduler_heartbeats_received_total",
                        "Heartbeats received, by result",
                    ),
                    &["result"],
                )?,
            )?,
            node_state_changes: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "aic_scheduler_node_state_changes_total",
                        "Nodes marked down or back up, by role and new state",
                    ),
                    &["role", "state"],
                )?,
            )?,
            lottery_rounds: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "aic_scheduler_lottery_rounds_total",
                        "Block lottery rounds on the leader, by outcome (won, no_winner, failed)",
                    ),
                    &["outcome"],
                )?,
            )?,
            jobs_submitted: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "aic_scheduler_jobs_submitted_total",
                        "Job submissions, accepted (escrow checked, job started) or refused",
                    ),
                    &["result"],
                )?,
            )?,
            jobs_running: registered(
                registry,
                IntGauge::new("aic_scheduler_jobs_running", "Jobs this scheduler is running")?,
            )?,
            jobs_finished: registered(
                registry,
                IntCounterVec::new(
                    Opts::new("aic_scheduler_jobs_finished_total", "Jobs ended, by final state"),
                    &["state"],
                )?,
            )?,
            job_rounds: registered(
                registry,
                IntCounter::new(
                    "aic_scheduler_job_rounds_total",
                    "Training rounds completed (updates reduced, weights updated and stored)",
                )?,
            )?,
            job_rewinds: registered(
                registry,
                IntCounter::new(
                    "aic_scheduler_job_rewinds_total",
                    "Jobs sent back to an earlier round because a node found wrong had unconfirmed \
                     results in the weights",
                )?,
            )?,
            job_rounds_discarded: registered(
                registry,
                IntCounter::new(
                    "aic_scheduler_job_rounds_discarded_total",
                    "Training rounds thrown away by rewinds (run again without the wrong node)",
                )?,
            )?,
            tensor_refusals: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "aic_scheduler_tensor_refusals_total",
                        "Task updates refused while collecting or comparing them (not true to \
                         their name, cut, out of order, not finite, gone), by reason",
                    ),
                    &["reason"],
                )?,
            )?,
            job_escrow_left: registered(
                registry,
                Gauge::new(
                    "aic_scheduler_job_escrow_left_ratio",
                    "Lowest share of its escrow a running job has left after what it owes so far (1 when none runs)",
                )?,
            )?,
            tasks: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "aic_scheduler_tasks_total",
                        "Task attempts dispatched to compute nodes, by kind and result",
                    ),
                    &["kind", "result"],
                )?,
            )?,
            placement_duration: registered(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "aic_scheduler_placement_duration_seconds",
                        "Time the allocator takes to choose compute nodes for a task, or for a whole round at once",
                    )
                    .buckets(prometheus::exponential_buckets(0.00001, 4.0, 9)?),
                )?,
            )?,
            spot_checks: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "aic_scheduler_spot_checks_total",
                        "Re-executions of a task on another node, by verdict",
                    ),
                    &["verdict"],
                )?,
            )?,
            penalties: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "aic_scheduler_penalties_total",
                        "Penalties recorded against compute nodes, by reason",
                    ),
                    &["reason"],
                )?,
            )?,
            payments: registered(
                registry,
                CounterVec::new(
                    Opts::new(
                        "aic_scheduler_payments_aic_total",
                        "AIC released from job escrows, by recipient role (platform fee burned, refund to the payer)",
                    ),
                    &["role"],
                )?,
            )?,
            missing_shard_copies: registered(
                registry,
                IntGauge::new(
                    "aic_scheduler_missing_shard_copies",
                    "Shard copies datasets ask for that no up storage node reports healthy",
                )?,
            )?,
        };
        metrics.job_escrow_left.set(1.0);
        for kind in TASK_KINDS {
            for result in TASK_RESULTS {
                metrics.tasks.with_label_values(&[kind, result]);
            }
        }
        for verdict in SPOT_CHECK_VERDICTS {
            metrics.spot_checks.with_label_values(&[verdict]);
        }
        for state in JOB_END_STATES {
            metrics.jobs_finished.with_label_values(&[state]);
        }
        for result in SUBMISSION_RESULTS {
            metrics.jobs_submitted.with_label_values(&[result]);
        }
        for role in PAYMENT_ROLES {
            metrics.payments.with_label_values(&[role]);
        }
        for reason in PENALTY_REASONS {
            metrics.penalties.with_label_values(&[reason]);
        }
        for outcome in ["won", "no_winner", "failed"] {
            metrics.lottery_rounds.with_label_values(&[outcome]);
        }
        for reason in aic_protocol::tensor::REFUSAL_REASONS {
            metrics.tensor_refusals.with_label_values(&[reason]);
        }
        // Publish zeros for every combination so dashboards and alerts see the series at once.
        for role in [Role::Storage, Role::Compute] {
            for state in [NodeState::Up, NodeState::Down] {
                metrics
                    .nodes
                    .with_label_values(&[role.as_str(), state.as_str()])
                    .set(0);
                metrics
                    .node_state_changes
                    .with_label_values(&[role.as_str(), state.as_str()]);
            }
        }
        Ok(metrics)
    }
}
