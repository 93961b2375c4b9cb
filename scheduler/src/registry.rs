//! The `Registry` actor: owns [`Membership`], applies node messages to it, sweeps for silent
//! nodes, and publishes the resulting states as metrics and log lines.

use std::time::{Duration, Instant};

use actix::prelude::*;
use aic_protocol::certs::PeerIdentity;
use aic_protocol::messages::{Heartbeat, NodeResponse, NodeStatus, Registration};
use aic_protocol::RpcError;
use tracing::{info, warn};

use crate::membership::{Membership, MembershipEvent};
use crate::metrics::SchedulerMetrics;

/// A node registers (or registers again).
#[derive(Message)]
#[rtype(result = "Result<NodeResponse, RpcError>")]
pub struct Register {
    pub peer: PeerIdentity,
    pub registration: Registration,
}

/// A node's heartbeat.
#[derive(Message)]
#[rtype(result = "Result<NodeResponse, RpcError>")]
pub struct ReceiveHeartbeat {
    pub peer: PeerIdentity,
    pub heartbeat: Heartbeat,
}

/// The current node table.
#[derive(Message)]
#[rtype(result = "Vec<NodeStatus>")]
pub struct ListNodes;

/// Stops the actor (service shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

pub struct Registry {
    membership: Membership,
    metrics: SchedulerMetrics,
}

impl Registry {
    pub fn new(membership: Membership, metrics: SchedulerMetrics) -> Self {
        Registry { membership, metrics }
    }

    fn apply(&mut self, events: Vec<MembershipEvent>) {
        for event in events {
            match event {
                MembershipEvent::Registered { node, role, rejoined } => {
                    self.metrics
                        .registrations
                        .with_label_values(&[role.as_str(), "ok"])
                        .inc();
                    info!(node = %node.short(), %role, rejoined, "node registered");
                }
                MembershipEvent::MarkedDown { node, role } => {
                    self.metrics
                        .node_state_changes
                        .with_label_values(&[role.as_str(), "down"])
                        .inc();
                    warn!(node = %node.short(), %role, "node missed its heartbeats: marked down");
                }
                MembershipEvent::BackUp { node, role } => {
                    self.metrics
                        .node_state_changes
                        .with_label_values(&[role.as_str(), "up"])
                        .inc();
                    info!(node = %node.short(), %role, "node is back up");
                }
            }
        }
        self.publish_storage_health();
        self.metrics.nodes.reset();
        for ((role, state), count) in self.membership.counts() {
            self.metrics
                .nodes
                .with_label_values(&[role.as_str(), state.as_str()])
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    fn publish_storage_health(&self) {
        self.metrics
            .missing_shard_copies
            .set(i64::try_from(self.membership.missing_shard_copies()).unwrap_or(i64::MAX));
    }

    fn interval_ms(&self) -> u64 {
        u64::try_from(self.membership.rules().heartbeat_interval.as_millis()).unwrap_or(u64::MAX)
    }
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Sweep a few times per heartbeat interval so a silent node is noticed promptly.
        let every = (self.membership.rules().heartbeat_interval / 4).max(Duration::from_millis(5));
        ctx.run_interval(every, |registry, _| {
            let events = registry.membership.sweep(Instant::now());
            if !events.is_empty() {
                registry.apply(events);
            }
        });
        self.apply(Vec::new());
    }
}

impl Handler<Register> for Registry {
    type Result = Result<NodeResponse, RpcError>;

    fn handle(&mut self, message: Register, _: &mut Self::Context) -> Self::Result {
        let role = message.peer.role;
        match self
            .membership
            .register(&message.peer, message.registration, Instant::now())
        {
            Ok((probe_targets, events)) => {
                self.apply(events);
                Ok(NodeResponse::Registered {
                    node_id: message.peer.node_id,
                    heartbeat_interval_ms: self.interval_ms(),
                    probe_targets,
                    // Filled from the ledger's membership by the API, which holds the replica.
                    scheduler_replicas: Default::default(),
                })
            }
            Err(error) => {
                self.metrics
                    .registrations
                    .with_label_values(&[role.as_str(), error.code.as_str()])
                    .inc();
                Err(error)
            }
        }
    }
}

impl Handler<ReceiveHeartbeat> for Registry {
    type Result = Result<NodeResponse, RpcError>;

    fn handle(&mut self, message: ReceiveHeartbeat, _: &mut Self::Context) -> Self::Result {
        match self
            .membership
            .heartbeat(message.peer.node_id, message.heartbeat, Instant::now())
        {
            Ok((probe_targets, events)) => {
                self.metrics.heartbeats_received.with_label_values(&["ok"]).inc();
                self.publish_storage_health();
                if !events.is_empty() {
                    self.apply(events);
                }
                Ok(NodeResponse::HeartbeatAccepted {
                    probe_targets,
                    scheduler_replicas: Default::default(),
                })
            }
            Err(error) => {
                self.metrics
                    .heartbeats_received
                    .with_label_values(&[error.code.as_str()])
                    .inc();
                Err(error)
            }
        }
    }
}

impl Handler<ListNodes> for Registry {
    type Result = MessageResult<ListNodes>;

    fn handle(&mut self, _: ListNodes, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.membership.list(Instant::now()))
    }
}

impl Handler<Stop> for Registry {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
