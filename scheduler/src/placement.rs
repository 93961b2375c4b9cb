//! Where a task runs: the allocator's decision as a pure function of what it knows — each
//! compute node's network coordinate, queue, reputation and capacity, and each replica of the
//! task's shards — so it can be unit-tested, benchmarked and replayed.
//!
//! A candidate's cost is the time the task would take there:
//!
//! ```text
//!  transfer = 2 · RTT(node, replica) + bytes / min(link, window / RTT)   (nearest replica)
//!  compute  = flops / measured FLOP/s
//!  cost     = (transfer + queue wait + compute) / reputation
//! ```
//!
//! Nodes without a free slot or with too little device memory are never chosen; equal costs go
//! to the better reputation, then the lower node id (deterministic on every replica).

use std::cmp::Ordering;

use crate::vivaldi::Coordinate;

pub use aic_protocol::path_model::NetworkModel;

/// A compute node as the allocator sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct ComputeCandidate<K> {
    pub node: K,
    pub coordinate: Coordinate,
    /// Tasks it can take now; 0 means full.
    pub free_slots: u32,
    /// Seconds of work already queued on it.
    pub queue_secs: f64,
    /// In (0, 1]: 1 for a node whose results always matched, lower after mismatches.
    pub reputation: f64,
    pub device_memory_bytes: u64,
    /// Measured at registration by the node's own benchmark.
    pub flops_per_sec: f64,
}

/// A storage node holding a replica of the task's data.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplicaLocation<K> {
    pub node: K,
    pub coordinate: Coordinate,
}

/// What one task needs.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskDemand<K> {
    pub shard_bytes: u64,
    pub flops: f64,
    pub memory_bytes: u64,
    /// Every storage node holding the task's shards.
    pub replicas: Vec<ReplicaLocation<K>>,
}

/// Why a node was ranked where it was: the terms of its cost.
#[derive(Clone, Debug, PartialEq)]
pub struct Placement<K> {
    pub node: K,
    /// The replica it would read from (the one with the cheapest transfer).
    pub replica: K,
    pub rtt_ms: f64,
    pub transfer_secs: f64,
    pub queue_secs: f64,
    pub compute_secs: f64,
    pub reputation: f64,
    pub cost: f64,
}

/// Every eligible compute node for `task`, cheapest first. Empty when no node can take it (no
/// replica, or every node full or too small).
pub fn rank<K: Clone + Ord>(
    task: &TaskDemand<K>,
    candidates: &[ComputeCandidate<K>],
    network: &NetworkModel,
) -> Vec<Placement<K>> {
    let mut ranked: Vec<Placement<K>> = candidates
        .iter()
        .filter_map(|candidate| place_on(task, candidate, network))
        .collect();
    ranked.sort_by(compare);
    ranked
}

/// The cheapest eligible node, without ranking the rest: O(candidates).
pub fn best<K: Clone + Ord>(
    task: &TaskDemand<K>,
    candidates: &[ComputeCandidate<K>],
    network: &NetworkModel,
) -> Option<Placement<K>> {
    candidates
        .iter()
        .filter_map(|candidate| place_on(task, candidate, network))
        .min_by(compare)
}

pub(crate) fn place_on<K: Clone + Ord>(
    task: &TaskDemand<K>,
    candidate: &ComputeCandidate<K>,
    network: &NetworkModel,
) -> Option<Placement<K>> {
    if !eligible(task, candidate) {
        return None;
    }
    let (replica, rtt_ms, transfer_secs) = task
        .replicas
        .iter()
        .map(|r| {
            let rtt = candidate.coordinate.distance_ms(&r.coordinate);
            (r, rtt, network.transfer_secs(task.shard_bytes, rtt))
        })
        .min_by(|a, b| a.2.total_cmp(&b.2).then_with(|| a.0.node.cmp(&b.0.node)))?;
    let terms = CostTerms::of(task, candidate);
    Some(Placement {
        node: candidate.node.clone(),
        replica: replica.node.clone(),
        rtt_ms,
        transfer_secs,
        queue_secs: terms.queue_secs,
        compute_secs: terms.compute_secs,
        reputation: terms.reputation,
        cost: terms.cost(transfer_secs),
    })
}

/// The terms of a candidate's cost that do not depend on where the data comes from. One
/// function computes the cost for the per-task and the whole-round placement, so both reach the
/// same floating-point value for the same node.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CostTerms {
    pub queue_secs: f64,
    pub compute_secs: f64,
    pub reputation: f64,
}

impl CostTerms {
    pub(crate) fn of<K>(task: &TaskDemand<K>, candidate: &ComputeCandidate<K>) -> Self {
        CostTerms {
            queue_secs: candidate.queue_secs.max(0.0),
            compute_secs: task.flops / candidate.flops_per_sec.max(1.0),
            reputation: candidate.reputation.clamp(0.01, 1.0),
        }
    }

    /// Monotone in `transfer_secs`: the cheapest replica's transfer gives the cheapest cost.
    pub(crate) fn cost(&self, transfer_secs: f64) -> f64 {
        (transfer_secs + self.queue_secs + self.compute_secs) / self.reputation
    }
}

/// Whether `candidate` can take `task` at all: a free slot and enough device memory.
pub(crate) fn eligible<K>(task: &TaskDemand<K>, candidate: &ComputeCandidate<K>) -> bool {
    candidate.free_slots > 0 && candidate.device_memory_bytes >= task.memory_bytes
}

/// What placing a task on a node leaves of it: one slot fewer, and the task's compute queued
/// behind what was there.
pub fn occupy<K>(candidate: &mut ComputeCandidate<K>, placed: &Placement<K>) {
    candidate.free_slots = candidate.free_slots.saturating_sub(1);
    candidate.queue_secs = placed.queue_secs + placed.compute_secs;
}

/// The reference for a round: each task in turn gets the cheapest node left (as [`best`]),
/// which then counts the task. Skips the nodes a task excludes. O(tasks × candidates); the
/// round placement gives the same answers at a fraction of the cost.
pub fn place_one_by_one<K: Clone + Ord>(
    tasks: &[RoundTask<K>],
    candidates: &[ComputeCandidate<K>],
    network: &NetworkModel,
) -> Vec<Option<Placement<K>>> {
    let mut nodes = candidates.to_vec();
    tasks
        .iter()
        .map(|task| {
            let (index, placed) = nodes
                .iter()
                .enumerate()
                .filter(|(_, c)| !task.exclude.contains(&c.node))
                .filter_map(|(i, c)| Some((i, place_on(&task.demand, c, network)?)))
                .min_by(|a, b| compare(&a.1, &b.1))?;
            occupy(&mut nodes[index], &placed);
            Some(placed)
        })
        .collect()
}

/// One task of a round, with the nodes it must not use (ones that failed it, or the node whose
/// result it checks).
#[derive(Clone, Debug, PartialEq)]
pub struct RoundTask<K> {
    pub demand: TaskDemand<K>,
    pub exclude: Vec<K>,
}

fn compare<K: Ord>(a: &Placement<K>, b: &Placement<K>) -> Ordering {
    a.cost
        .total_cmp(&b.cost)
        .then_with(|| b.reputation.total_cmp(&a.reputation))
        .then_with(|| a.node.cmp(&b.node))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(x: f64) -> Coordinate {
        Coordinate {
            position: [x, 0.0, 0.0],
            height: 0.1,
            error: 0.1,
        }
    }

    fn node(name: &'static str, x: f64) -> ComputeCandidate<&'static str> {
        ComputeCandidate {
            node: name,
            coordinate: at(x),
            free_slots: 1,
            queue_secs: 0.0,
            reputation: 1.0,
            device_memory_bytes: 8 << 30,
            flops_per_sec: 50e9,
        }
    }

    fn task(replicas: &[(&'static str, f64)]) -> TaskDemand<&'static str> {
        TaskDemand {
            shard_bytes: 64 << 20,
            flops: 1e9,
            memory_bytes: 1 << 20,
            replicas: replicas
                .iter()
                .map(|(n, x)| ReplicaLocation {
                    node: *n,
                    coordinate: at(*x),
                })
                .collect(),
        }
    }

    #[test]
    fn the_node_nearest_a_replica_wins_and_reads_from_that_replica() {
        let nodes = [node("far", 150.0), node("near-b", 52.0), node("middle", 25.0)];
        let ranked = rank(
            &task(&[("storage-a", 0.0), ("storage-b", 50.0)]),
            &nodes,
            &NetworkModel::default(),
        );
        assert_eq!(ranked[0].node, "near-b");
        assert_eq!(ranked[0].replica, "storage-b", "the nearer replica is the source");
        assert!(ranked[0].rtt_ms < 3.0, "{:?}", ranked[0]);
        assert_eq!(ranked.last().unwrap().node, "far");
        assert!(ranked.windows(2).all(|w| w[0].cost <= w[1].cost));
    }

    #[test]
    fn a_full_node_or_one_too_small_is_skipped() {
        let mut full = node("full", 0.0);
        full.free_slots = 0;
        let mut small = node("small", 0.0);
        small.device_memory_bytes = 1024;
        let nodes = [full, small, node("far", 100.0)];
        let ranked = rank(&task(&[("storage", 0.0)]), &nodes, &NetworkModel::default());
        assert_eq!(ranked.iter().map(|p| p.node).collect::<Vec<_>>(), vec!["far"]);
        assert!(
            best(&task(&[]), &nodes, &NetworkModel::default()).is_none(),
            "no replica, no place"
        );
    }

    #[test]
    fn a_low_reputation_node_loses_ties_and_pays_for_its_record() {
        let mut doubted = node("a-doubted", 10.0);
        doubted.reputation = 0.5;
        let trusted = node("b-trusted", 10.0);
        let ranked = rank(
            &task(&[("storage", 0.0)]),
            &[doubted.clone(), trusted],
            &NetworkModel::default(),
        );
        assert_eq!(ranked[0].node, "b-trusted");
        assert!(
            (ranked[1].cost - 2.0 * ranked[0].cost).abs() < 1e-9,
            "cost divided by reputation"
        );

        // At equal cost the better reputation wins, whatever the ids say.
        let mut slow_but_trusted = node("z-trusted", 10.0);
        slow_but_trusted.flops_per_sec = doubted.flops_per_sec;
        let mut fast_but_doubted = node("a-doubted", 10.0);
        fast_but_doubted.reputation = 0.999_999_999;
        fast_but_doubted.queue_secs = -1.0; // clamped to 0: no advantage from bad input
        let ranked = rank(
            &task(&[("storage", 0.0)]),
            &[fast_but_doubted, slow_but_trusted],
            &NetworkModel::default(),
        );
        assert_eq!(ranked[0].node, "z-trusted");
    }

    #[test]
    fn queue_wait_and_slow_devices_count() {
        let mut busy = node("busy", 1.0);
        busy.queue_secs = 30.0;
        let mut slow = node("slow", 1.0);
        slow.flops_per_sec = 1e6;
        let idle = node("idle", 40.0);
        let ranked = rank(
            &task(&[("storage", 0.0)]),
            &[busy, slow, idle],
            &NetworkModel::default(),
        );
        assert_eq!(ranked[0].node, "idle");
    }

    #[test]
    fn transfer_time_follows_the_window_limit() {
        let model = NetworkModel::default();
        let lan = model.transfer_secs(1 << 30, 0.5);
        let wan = model.transfer_secs(1 << 30, 100.0);
        // 1 GiB at 1.25 GB/s ≈ 0.86 s on a LAN; across 100 ms the 16 MiB window allows 168 MB/s.
        assert!((0.8..1.0).contains(&lan), "{lan}");
        assert!((6.0..7.0).contains(&wan), "{wan}");
    }
}
