//! The scheduler's own metrics (membership), beside the transport metrics every server records.

use aic_protocol::messages::NodeState;
use aic_protocol::metrics::{registered, TransportMetrics};
use aic_protocol::Role;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

#[derive(Clone)]
pub struct SchedulerMetrics {
    pub transport: TransportMetrics,
    /// Nodes by role and state.
    pub nodes: IntGaugeVec,
    pub registrations: IntCounterVec,
    pub heartbeats_received: IntCounterVec,
    pub node_state_changes: IntCounterVec,
    pub lottery_rounds: IntCounterVec,
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
        };
        for outcome in ["won", "no_winner", "failed"] {
            metrics.lottery_rounds.with_label_values(&[outcome]);
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
