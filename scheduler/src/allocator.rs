//! The `Allocator` actor (the Resource Allocator): keeps network coordinates for every node,
//! fitted from the RTTs the nodes report, and the tasks in flight on each compute node, and
//! places tasks with the pure [`crate::placement`] function.

use std::collections::HashMap;

use actix::prelude::*;
use aic_protocol::messages::{NodeState, NodeStatus};
use aic_protocol::{NodeId, Role};

use crate::placement::{self, ComputeCandidate, NetworkModel, Placement, ReplicaLocation, TaskDemand};
use crate::vivaldi::Coordinates;

/// Feeds the RTT samples in a fresh node list into the coordinates, and remembers the list.
#[derive(Message)]
#[rtype(result = "()")]
pub struct UpdateTopology {
    pub nodes: Vec<NodeStatus>,
}

/// Chooses a compute node for a task; the chosen node counts one more task in flight.
#[derive(Message)]
#[rtype(result = "Option<Placement<NodeId>>")]
pub struct Place {
    pub shard_bytes: u64,
    pub flops: f64,
    pub memory_bytes: u64,
    /// Storage nodes holding the task's shards.
    pub replicas: Vec<NodeId>,
    /// Nodes not to use (they failed this task, or it is a spot check of their result).
    pub exclude: Vec<NodeId>,
}

/// A task placed earlier has finished (or failed) on `node`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Finished {
    pub node: NodeId,
}

/// The rater's latest reputation for a node.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetReputation {
    pub node: NodeId,
    pub reputation: f64,
}

#[derive(Default)]
pub struct Allocator {
    coordinates: Coordinates<NodeId>,
    nodes: Vec<NodeStatus>,
    in_flight: HashMap<NodeId, u32>,
    reputation: HashMap<NodeId, f64>,
    network: NetworkModel,
}

impl Actor for Allocator {
    type Context = Context<Self>;
}

impl Handler<UpdateTopology> for Allocator {
    type Result = ();

    fn handle(&mut self, message: UpdateTopology, _: &mut Self::Context) {
        for node in &message.nodes {
            for sample in &node.rtts {
                self.coordinates
                    .observe(&node.node_id, &sample.peer, sample.rtt_micros as f64 / 1000.0);
            }
        }
        self.nodes = message.nodes;
    }
}

impl Handler<Place> for Allocator {
    type Result = Option<Placement<NodeId>>;

    fn handle(&mut self, task: Place, _: &mut Self::Context) -> Self::Result {
        let candidates: Vec<ComputeCandidate<NodeId>> = self
            .nodes
            .iter()
            .filter(|n| {
                n.role == Role::Compute && n.state == NodeState::Up && !task.exclude.contains(&n.node_id)
            })
            .map(|n| {
                let busy = self.in_flight.get(&n.node_id).copied().unwrap_or(0);
                let flops = (n.capacity.measured_mflops as f64 * 1e6).max(1e6);
                ComputeCandidate {
                    node: n.node_id,
                    coordinate: self.coordinates.get(&n.node_id),
                    free_slots: n.capacity.task_slots.saturating_sub(busy),
                    // The device runs tasks one after another: the ones in flight come first.
                    queue_secs: f64::from(busy) * task.flops / flops,
                    reputation: self.reputation.get(&n.node_id).copied().unwrap_or(1.0),
                    device_memory_bytes: n.capacity.device_memory_bytes,
                    flops_per_sec: flops,
                }
            })
            .collect();
        let demand = TaskDemand {
            shard_bytes: task.shard_bytes,
            flops: task.flops,
            memory_bytes: task.memory_bytes,
            replicas: task
                .replicas
                .iter()
                .map(|node| ReplicaLocation {
                    node: *node,
                    coordinate: self.coordinates.get(node),
                })
                .collect(),
        };
        let chosen = placement::best(&demand, &candidates, &self.network)?;
        *self.in_flight.entry(chosen.node).or_insert(0) += 1;
        Some(chosen)
    }
}

impl Handler<Finished> for Allocator {
    type Result = ();

    fn handle(&mut self, message: Finished, _: &mut Self::Context) {
        if let Some(busy) = self.in_flight.get_mut(&message.node) {
            *busy = busy.saturating_sub(1);
        }
    }
}

impl Handler<SetReputation> for Allocator {
    type Result = ();

    fn handle(&mut self, message: SetReputation, _: &mut Self::Context) {
        self.reputation.insert(message.node, message.reputation);
    }
}
