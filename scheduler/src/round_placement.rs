//! A whole round of tasks placed at once, with the same choices as placing them one by one
//! ([`placement::place_one_by_one`]) but without scoring every node for every task.
//!
//! A task's cost on a node is the cheapest of its replicas' costs there, so every distinct source
//! of a round (demand shape × replica) gets one lane: each node is scored once for it and the
//! best `k` are kept in a heap. Placing a task takes the cheapest valid entry over its lanes. A
//! node that takes a task only gets dearer (one slot fewer, a longer queue), so its entries are
//! marked stale and rescored when they reach a lane's top, not before. A round of M tasks changes
//! at most M nodes: a lane that keeps its best M + (nodes a task excludes) + 1 always holds an
//! unchanged node at least as cheap as every node it dropped, so the truncation loses no choice.
//!
//! In a job every task reads the same dataset, whose shards sit on the same storage nodes: a
//! round has a lane per storage node, and costs O(lanes × nodes + tasks × log nodes).

use std::cmp::Ordering;
use std::collections::hash_map::Entry as MapEntry;
use std::collections::{BinaryHeap, HashMap};
use std::hash::Hash;

use crate::placement::{
    eligible, occupy, place_on, ComputeCandidate, CostTerms, NetworkModel, Placement, RoundTask, TaskDemand,
};

/// Every task of `tasks` in order, each on the node [`placement::place_one_by_one`] would give
/// it; `None` where no node can take it.
pub fn place_round<K: Clone + Ord + Hash>(
    tasks: &[RoundTask<K>],
    candidates: &[ComputeCandidate<K>],
    network: &NetworkModel,
) -> Vec<Option<Placement<K>>> {
    let mut round = Round::new(tasks, candidates, network);
    tasks.iter().enumerate().map(|(t, _)| round.place(t)).collect()
}

/// A node's place in a lane: ordered like [`crate::placement::compare`] (cost, then the better
/// reputation, then the lower node id), reversed so `BinaryHeap` pops the cheapest.
#[derive(Clone, Copy, Debug)]
struct Scored {
    cost: f64,
    reputation: f64,
    /// The node's position among the candidates sorted by id.
    rank: u32,
    node: u32,
    /// The node's version when scored; an older one than the node's is stale.
    version: u32,
}

impl Scored {
    fn cheaper_first(&self, other: &Self) -> Ordering {
        self.cost
            .total_cmp(&other.cost)
            .then_with(|| other.reputation.total_cmp(&self.reputation))
            .then_with(|| self.rank.cmp(&other.rank))
    }
}

impl PartialEq for Scored {
    fn eq(&self, other: &Self) -> bool {
        self.cheaper_first(other) == Ordering::Equal
    }
}

impl Eq for Scored {}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        other.cheaper_first(self)
    }
}

/// What makes two tasks' costs from one replica the same: the demand's shape and the replica.
#[derive(Clone, PartialEq, Eq, Hash)]
struct LaneKey<K> {
    shard_bytes: u64,
    flops: u64,
    memory_bytes: u64,
    replica: K,
    /// The replica's coordinate, bit for bit (position and height: what a distance reads).
    at: [u64; 4],
}

struct Lane {
    /// A task with this lane's shape, and which of its replicas the lane reads from.
    task: usize,
    replica: usize,
    heap: BinaryHeap<Scored>,
}

struct Round<'a, K> {
    tasks: &'a [RoundTask<K>],
    network: &'a NetworkModel,
    nodes: Vec<ComputeCandidate<K>>,
    rank: Vec<u32>,
    version: Vec<u32>,
    lanes: Vec<Lane>,
    lane_of: HashMap<LaneKey<K>, usize>,
    /// How many entries a lane keeps.
    keep: usize,
}

impl<'a, K: Clone + Ord + Hash> Round<'a, K> {
    fn new(tasks: &'a [RoundTask<K>], candidates: &[ComputeCandidate<K>], network: &'a NetworkModel) -> Self {
        let mut by_id: Vec<u32> = (0..candidates.len() as u32).collect();
        by_id.sort_unstable_by(|&a, &b| candidates[a as usize].node.cmp(&candidates[b as usize].node));
        let mut rank = vec![0; candidates.len()];
        for (position, &node) in by_id.iter().enumerate() {
            rank[node as usize] = position as u32;
        }
        let most_excluded = tasks.iter().map(|t| t.exclude.len()).max().unwrap_or(0);
        Round {
            tasks,
            network,
            nodes: candidates.to_vec(),
            rank,
            version: vec![0; candidates.len()],
            lanes: Vec::new(),
            lane_of: HashMap::new(),
            keep: tasks.len() + most_excluded + 1,
        }
    }

    fn score(&self, task: &TaskDemand<K>, replica: usize, node: u32) -> Option<Scored> {
        let candidate = &self.nodes[node as usize];
        if !eligible(task, candidate) {
            return None;
        }
        let source = &task.replicas[replica];
        let rtt = candidate.coordinate.distance_ms(&source.coordinate);
        let terms = CostTerms::of(task, candidate);
        Some(Scored {
            cost: terms.cost(self.network.transfer_secs(task.shard_bytes, rtt)),
            reputation: terms.reputation,
            rank: self.rank[node as usize],
            node,
            version: self.version[node as usize],
        })
    }

    fn lane(&mut self, task: usize, replica: usize) -> usize {
        let demand = &self.tasks[task].demand;
        let source = &demand.replicas[replica];
        let position = source.coordinate.position;
        let key = LaneKey {
            shard_bytes: demand.shard_bytes,
            flops: demand.flops.to_bits(),
            memory_bytes: demand.memory_bytes,
            replica: source.node.clone(),
            at: [
                position[0].to_bits(),
                position[1].to_bits(),
                position[2].to_bits(),
                source.coordinate.height.to_bits(),
            ],
        };
        let next = self.lanes.len();
        match self.lane_of.entry(key) {
            MapEntry::Occupied(found) => *found.get(),
            MapEntry::Vacant(vacant) => {
                vacant.insert(next);
                let mut scored: Vec<Scored> = (0..self.nodes.len() as u32)
                    .filter_map(|node| self.score(demand, replica, node))
                    .collect();
                if scored.len() > self.keep {
                    scored.select_nth_unstable_by(self.keep - 1, Scored::cheaper_first);
                    scored.truncate(self.keep);
                }
                self.lanes.push(Lane {
                    task,
                    replica,
                    heap: BinaryHeap::from(scored),
                });
                next
            }
        }
    }

    /// The cheapest current entry of `lane` that `task` may use. Stale entries met on the way
    /// are rescored; excluded ones are set aside for the caller to put back.
    fn cheapest(&mut self, lane: usize, task: usize, set_aside: &mut Vec<(usize, Scored)>) -> Option<Scored> {
        loop {
            let top = *self.lanes[lane].heap.peek()?;
            if top.version != self.version[top.node as usize] {
                self.lanes[lane].heap.pop();
                let (shape, replica) = (self.lanes[lane].task, self.lanes[lane].replica);
                if let Some(rescored) = self.score(&self.tasks[shape].demand, replica, top.node) {
                    self.lanes[lane].heap.push(rescored);
                }
            } else if self.tasks[task]
                .exclude
                .contains(&self.nodes[top.node as usize].node)
            {
                self.lanes[lane].heap.pop();
                set_aside.push((lane, top));
            } else {
                return Some(top);
            }
        }
    }

    fn place(&mut self, task: usize) -> Option<Placement<K>> {
        let mut set_aside = Vec::new();
        let mut best: Option<Scored> = None;
        for replica in 0..self.tasks[task].demand.replicas.len() {
            let lane = self.lane(task, replica);
            if let Some(found) = self.cheapest(lane, task, &mut set_aside) {
                if best.is_none_or(|b| found.cheaper_first(&b) == Ordering::Less) {
                    best = Some(found);
                }
            }
        }
        for (lane, entry) in set_aside {
            self.lanes[lane].heap.push(entry);
        }
        let chosen = best?.node as usize;
        let placed = place_on(&self.tasks[task].demand, &self.nodes[chosen], self.network)?;
        occupy(&mut self.nodes[chosen], &placed);
        self.version[chosen] = self.version[chosen].wrapping_add(1);
        Some(placed)
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::placement::{place_one_by_one, ReplicaLocation};
    use crate::vivaldi::Coordinate;

    fn at(x: f64, y: f64) -> Coordinate {
        Coordinate {
            position: [x, y, 0.0],
            height: 0.1,
            error: 0.1,
        }
    }

    /// A grid with few slots per node (so nodes fill up within a round), coarse coordinates
    /// and reputations (so costs tie), and tasks that exclude nodes.
    fn random_round(
        rng: &mut StdRng,
        nodes: u32,
        tasks: usize,
    ) -> (Vec<RoundTask<u32>>, Vec<ComputeCandidate<u32>>) {
        let candidates: Vec<ComputeCandidate<u32>> = (0..nodes)
            .map(|node| ComputeCandidate {
                node: (nodes - node) * 3, // ids not in index order
                coordinate: at(rng.random_range(0..20) as f64, rng.random_range(0..20) as f64),
                free_slots: rng.random_range(0..3),
                queue_secs: rng.random_range(0..3) as f64,
                reputation: [0.5, 1.0][rng.random_range(0..2)],
                device_memory_bytes: [1 << 20, 8 << 30][rng.random_range(0..2)],
                flops_per_sec: [1e9, 1e10][rng.random_range(0..2)],
            })
            .collect();
        let storage: Vec<ReplicaLocation<u32>> = (0..6)
            .map(|s| ReplicaLocation {
                node: 1_000 + s,
                coordinate: at(rng.random_range(0..20) as f64, rng.random_range(0..20) as f64),
            })
            .collect();
        let tasks = (0..tasks)
            .map(|_| RoundTask {
                demand: TaskDemand {
                    shard_bytes: [1 << 20, 64 << 20][rng.random_range(0..2)],
                    flops: 1e9,
                    memory_bytes: [1 << 10, 1 << 30][rng.random_range(0..2)],
                    replicas: (0..rng.random_range(0..3))
                        .map(|_| storage[rng.random_range(0..storage.len())].clone())
                        .collect(),
                },
                exclude: (0..rng.random_range(0..3))
                    .map(|_| rng.random_range(0..nodes) * 3)
                    .collect(),
            })
            .collect();
        (tasks, candidates)
    }

    #[test]
    fn a_round_gets_the_same_nodes_as_placing_its_tasks_one_by_one() {
        let mut rng = StdRng::seed_from_u64(18);
        let network = NetworkModel::default();
        let mut placed = 0;
        for case in 0..300 {
            let (nodes, tasks) = (rng.random_range(1..200), rng.random_range(1..80));
            let (tasks, candidates) = random_round(&mut rng, nodes, tasks);
            let one_by_one = place_one_by_one(&tasks, &candidates, &network);
            let round = place_round(&tasks, &candidates, &network);
            assert_eq!(round, one_by_one, "case {case}");
            placed += round.iter().flatten().count();
        }
        assert!(placed > 1_000, "the cases placed tasks: {placed}");
    }

    #[test]
    fn a_round_never_puts_more_tasks_on_a_node_than_its_free_slots() {
        let mut rng = StdRng::seed_from_u64(7);
        let network = NetworkModel::default();
        let (tasks, candidates) = random_round(&mut rng, 40, 200);
        let round = place_round(&tasks, &candidates, &network);
        let mut taken: HashMap<u32, u32> = HashMap::new();
        for placement in round.iter().flatten() {
            *taken.entry(placement.node).or_default() += 1;
        }
        let slots: u32 = candidates.iter().map(|c| c.free_slots).sum();
        assert!(taken.values().sum::<u32>() > 0);
        assert!(
            round.iter().any(Option::is_none),
            "200 tasks cannot fit in {slots} slots"
        );
        for candidate in &candidates {
            let on_it = taken.get(&candidate.node).copied().unwrap_or(0);
            assert!(
                on_it <= candidate.free_slots,
                "node {} took {on_it} tasks with {} free slots",
                candidate.node,
                candidate.free_slots
            );
        }
        for (task, placement) in tasks.iter().zip(&round) {
            if let Some(placement) = placement {
                assert!(
                    !task.exclude.contains(&placement.node),
                    "an excluded node was used"
                );
            }
        }
    }
}
