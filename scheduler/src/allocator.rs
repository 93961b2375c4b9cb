//! The `Allocator` actor (the Resource Allocator): keeps network coordinates for every node,
//! fitted from the RTTs the nodes report, and the tasks in flight on each compute node, and
//! places tasks, a whole round at once, with the pure [`crate::round_placement`] function (which
//! chooses what [`crate::placement`]'s per-task ranking would).

use std::collections::HashMap;

use actix::prelude::*;
use aic_protocol::messages::{NodeState, NodeStatus};
use aic_protocol::{NodeId, Role};

use crate::placement::{ComputeCandidate, NetworkModel, Placement, ReplicaLocation, RoundTask, TaskDemand};
use crate::round_placement::place_round;
use crate::vivaldi::Coordinates;

/// Feeds the RTT samples in a fresh node list into the coordinates, and remembers the list.
#[derive(Message)]
#[rtype(result = "()")]
pub struct UpdateTopology {
    pub nodes: Vec<NodeStatus>,
}

/// A task to place; the chosen node counts one more task in flight.
pub struct Place {
    pub shard_bytes: u64,
    pub flops: f64,
    pub memory_bytes: u64,
    /// Storage nodes holding the task's shards.
    pub replicas: Vec<NodeId>,
    /// Nodes not to use (they failed this task, or it is a spot check of their result).
    pub exclude: Vec<NodeId>,
}

/// Chooses compute nodes for tasks (a round's, or one) at once: the same nodes as placing each
/// in turn with [`crate::placement::best`], in a fraction of the time. Each chosen node counts its
/// tasks.
#[derive(Message)]
#[rtype(result = "Vec<Option<Placement<NodeId>>>")]
pub struct PlaceRound {
    pub tasks: Vec<Place>,
}

/// A task placed earlier has finished (or failed) on `node`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Finished {
    pub node: NodeId,
    /// The placement's compute estimate, which leaves the node's queue.
    pub compute_secs: f64,
}

/// What a compute node has in flight: how many tasks, and their estimated seconds of compute.
#[derive(Clone, Copy, Debug, Default)]
struct Busy {
    tasks: u32,
    queued_secs: f64,
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
    in_flight: HashMap<NodeId, Busy>,
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

impl Allocator {
    /// Every compute node that is up, as the placement sees it.
    fn candidates(&self) -> Vec<ComputeCandidate<NodeId>> {
        self.nodes
            .iter()
            .filter(|n| n.role == Role::Compute && n.state == NodeState::Up)
            .map(|n| {
                let busy = self.in_flight.get(&n.node_id).copied().unwrap_or_default();
                ComputeCandidate {
                    node: n.node_id,
                    coordinate: self.coordinates.get(&n.node_id),
                    free_slots: n.capacity.task_slots.saturating_sub(busy.tasks),
                    // The device runs tasks one after another: the ones in flight come first.
                    queue_secs: busy.queued_secs,
                    reputation: self.reputation.get(&n.node_id).copied().unwrap_or(1.0),
                    device_memory_bytes: n.capacity.device_memory_bytes,
                    flops_per_sec: (n.capacity.measured_mflops as f64 * 1e6).max(1e6),
                }
            })
            .collect()
    }

    fn demand(&self, task: &Place) -> TaskDemand<NodeId> {
        TaskDemand {
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
        }
    }

    fn count(&mut self, placed: &Placement<NodeId>) {
        let busy = self.in_flight.entry(placed.node).or_default();
        busy.tasks += 1;
        busy.queued_secs += placed.compute_secs;
    }
}

impl Handler<PlaceRound> for Allocator {
    type Result = Vec<Option<Placement<NodeId>>>;

    fn handle(&mut self, round: PlaceRound, _: &mut Self::Context) -> Self::Result {
        let candidates = self.candidates();
        let tasks: Vec<RoundTask<NodeId>> = round
            .tasks
            .into_iter()
            .map(|task| RoundTask {
                demand: self.demand(&task),
                exclude: task.exclude,
            })
            .collect();
        let placed = place_round(&tasks, &candidates, &self.network);
        for chosen in placed.iter().flatten() {
            self.count(chosen);
        }
        placed
    }
}

impl Handler<Finished> for Allocator {
    type Result = ();

    fn handle(&mut self, message: Finished, _: &mut Self::Context) {
        if let Some(busy) = self.in_flight.get_mut(&message.node) {
            busy.tasks = busy.tasks.saturating_sub(1);
            // Sums of floats drift: an idle node's queue is exactly empty.
            busy.queued_secs = if busy.tasks == 0 {
                0.0
            } else {
                (busy.queued_secs - message.compute_secs).max(0.0)
            };
        }
    }
}

impl Handler<SetReputation> for Allocator {
    type Result = ();

    fn handle(&mut self, message: SetReputation, _: &mut Self::Context) {
        self.reputation.insert(message.node, message.reputation);
    }
}
