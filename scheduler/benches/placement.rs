//! Placement benchmark.
//!
//! (a) Decisions per second and p50/p99 latency of the pure placement function over 10,000
//!     registered compute nodes, beside a baseline that only scans the same nodes for the one
//!     with the most free slots (the least work any allocator does), measured in the same run.
//! (b) A simulated grid of 1,200 nodes in 4 regions: coordinates fitted by Vivaldi from sampled
//!     RTTs (16 peers per node), 2 replicas per shard in random regions, one task per shard;
//!     bytes moved across regions with proximity ranking beside random placement.
//! (c) A round of 1,000 tasks over 10,000 compute nodes, its shards on 20 storage nodes (2
//!     replicas each): the whole round placed at once beside the per-task ranking it must agree
//!     with (each task in turn takes the cheapest node left), both measured in the same run, and
//!     the two checked to choose the same node and replica for every task.
//!
//! `cargo bench -p aic-scheduler --bench placement`

use std::time::Instant;

use aic_scheduler::placement::{
    best, place_one_by_one, ComputeCandidate, NetworkModel, ReplicaLocation, RoundTask, TaskDemand,
};
use aic_scheduler::round_placement::place_round;
use aic_scheduler::vivaldi::{Coordinate, Coordinates};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const NODES: usize = 10_000;
const DECISIONS: usize = 2_000;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// A storage node at a random place on the 200 × 200 ms plane.
fn random_storage(rng: &mut StdRng, node: u32) -> ReplicaLocation<u32> {
    ReplicaLocation {
        node,
        coordinate: Coordinate {
            position: [rng.random_range(0.0..200.0), rng.random_range(0.0..200.0), 0.0],
            height: 0.5,
            error: 0.2,
        },
    }
}

fn compute_nodes(rng: &mut StdRng) -> Vec<ComputeCandidate<u32>> {
    (0..NODES as u32)
        .map(|node| ComputeCandidate {
            node,
            coordinate: Coordinate {
                position: [rng.random_range(0.0..200.0), rng.random_range(0.0..200.0), 0.0],
                height: rng.random_range(0.1..2.0),
                error: 0.2,
            },
            free_slots: rng.random_range(0..4),
            queue_secs: rng.random_range(0.0..5.0),
            reputation: rng.random_range(0.3..1.0),
            device_memory_bytes: 8 << 30,
            flops_per_sec: rng.random_range(1e10..1e12),
        })
        .collect()
}

fn decisions_per_second(rng: &mut StdRng) {
    let candidates = compute_nodes(rng);
    let tasks: Vec<TaskDemand<u32>> = (0..DECISIONS)
        .map(|_| TaskDemand {
            shard_bytes: 128 << 10,
            flops: 1e8,
            memory_bytes: 1 << 20,
            replicas: (0..2).map(|r| random_storage(rng, 1_000_000 + r)).collect(),
        })
        .collect();
    let network = NetworkModel::default();
    let mut latencies = Vec::with_capacity(DECISIONS);
    let started = Instant::now();
    let mut chosen = 0u64;
    for task in &tasks {
        let t = Instant::now();
        let placement = best(task, &candidates, &network).expect("some node is free");
        latencies.push(t.elapsed().as_secs_f64() * 1e6);
        chosen = chosen.wrapping_add(placement.node as u64);
    }
    let placement_secs = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);

    let started = Instant::now();
    let mut baseline = 0u64;
    for _ in &tasks {
        let most_free = candidates.iter().max_by_key(|c| (c.free_slots, c.node)).unwrap();
        baseline = baseline.wrapping_add(most_free.node as u64);
    }
    let baseline_secs = started.elapsed().as_secs_f64();
    println!(
        "(a) placement over {NODES} compute nodes, {DECISIONS} decisions (checksums {chosen} {baseline})"
    );
    println!(
        "  cost-ranked placement: {:>10.0} decisions/s  p50 {:.1} µs  p99 {:.1} µs",
        DECISIONS as f64 / placement_secs,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );
    println!(
        "  baseline (scan for most free slots): {:>10.0} decisions/s",
        DECISIONS as f64 / baseline_secs
    );
    println!(
        "  ratio placement/baseline: {:.2}×",
        baseline_secs / placement_secs
    );
}

/// Four regions far apart; inside one, a few milliseconds.
const REGIONS: [(f64, f64); 4] = [(0.0, 0.0), (120.0, 0.0), (0.0, 90.0), (150.0, 110.0)];

struct SimNode {
    region: usize,
    /// Where it really is (the simulator's ground truth, unseen by the allocator).
    truth: (f64, f64),
}

fn true_rtt(a: &SimNode, b: &SimNode) -> f64 {
    let (dx, dy) = (a.truth.0 - b.truth.0, a.truth.1 - b.truth.1);
    (dx * dx + dy * dy).sqrt() + 0.5
}

fn cross_region_bytes(rng: &mut StdRng) {
    const COMPUTE: usize = 1_000;
    const STORAGE: usize = 200;
    const SHARDS: usize = 2_000;
    const SHARD_BYTES: u64 = 64 << 20;
    const SLOTS: u32 = 3;
    let nodes: Vec<SimNode> = (0..COMPUTE + STORAGE)
        .map(|_| {
            let region = rng.random_range(0..REGIONS.len());
            let (cx, cy) = REGIONS[region];
            SimNode {
                region,
                truth: (cx + rng.random_range(-3.0..3.0), cy + rng.random_range(-3.0..3.0)),
            }
        })
        .collect();
    // Vivaldi from sampled RTTs with 5 % jitter: each node measures 16 random peers, 30 rounds.
    let mut coordinates = Coordinates::<usize>::new();
    for _ in 0..30 {
        for i in 0..nodes.len() {
            for _ in 0..16 {
                let j = rng.random_range(0..nodes.len());
                let rtt = true_rtt(&nodes[i], &nodes[j]) * rng.random_range(0.95..1.05);
                coordinates.observe(&i, &j, rtt);
            }
        }
    }
    let mut errors: Vec<f64> = (0..2_000)
        .map(|_| {
            let (i, j) = (rng.random_range(0..nodes.len()), rng.random_range(0..nodes.len()));
            let truth = true_rtt(&nodes[i], &nodes[j]);
            (coordinates.estimate_ms(&i, &j) - truth).abs() / truth
        })
        .collect();
    errors.sort_by(f64::total_cmp);

    let network = NetworkModel::default();
    let tasks: Vec<TaskDemand<usize>> = (0..SHARDS)
        .map(|_| {
            let first = COMPUTE + rng.random_range(0..STORAGE);
            let mut second = COMPUTE + rng.random_range(0..STORAGE);
            while second == first {
                second = COMPUTE + rng.random_range(0..STORAGE);
            }
            TaskDemand {
                shard_bytes: SHARD_BYTES,
                flops: 1e9,
                memory_bytes: 1 << 20,
                replicas: [first, second]
                    .into_iter()
                    .map(|node| ReplicaLocation {
                        node,
                        coordinate: coordinates.get(&node),
                    })
                    .collect(),
            }
        })
        .collect();
    let fresh = || -> Vec<ComputeCandidate<usize>> {
        (0..COMPUTE)
            .map(|node| ComputeCandidate {
                node,
                coordinate: coordinates.get(&node),
                free_slots: SLOTS,
                queue_secs: 0.0,
                reputation: 1.0,
                device_memory_bytes: 8 << 30,
                flops_per_sec: 1e11,
            })
            .collect()
    };

    let mut ranked_nodes = fresh();
    let mut ranked_cross = 0u64;
    for task in &tasks {
        let placement = best(task, &ranked_nodes, &network).expect("enough slots");
        ranked_nodes[placement.node].free_slots -= 1;
        if nodes[placement.node].region != nodes[placement.replica].region {
            ranked_cross += SHARD_BYTES;
        }
    }
    let mut random_nodes = fresh();
    let mut random_cross = 0u64;
    for task in &tasks {
        let node = loop {
            let n = rng.random_range(0..COMPUTE);
            if random_nodes[n].free_slots > 0 {
                break n;
            }
        };
        random_nodes[node].free_slots -= 1;
        let replica = task.replicas[rng.random_range(0..task.replicas.len())].node;
        if nodes[node].region != nodes[replica].region {
            random_cross += SHARD_BYTES;
        }
    }
    let gb = |b: u64| b as f64 / 1e9;
    println!(
        "\n(b) {COMPUTE} compute + {STORAGE} storage nodes in {} regions, {SHARDS} tasks of {} MiB, 2 replicas each",
        REGIONS.len(),
        SHARD_BYTES >> 20
    );
    println!(
        "  Vivaldi RTT estimate error: median {:.1} %, p90 {:.1} %",
        percentile(&errors, 0.5) * 100.0,
        percentile(&errors, 0.9) * 100.0
    );
    println!(
        "  cross-region bytes, proximity ranking: {:>8.1} GB",
        gb(ranked_cross)
    );
    println!(
        "  cross-region bytes, random placement:  {:>8.1} GB",
        gb(random_cross)
    );
    println!(
        "  ratio ranked/random: {:.3}×",
        ranked_cross as f64 / random_cross.max(1) as f64
    );
}

fn a_whole_round(rng: &mut StdRng) {
    const TASKS: usize = 1_000;
    const STORAGE: u32 = 20;
    const RUNS: usize = 5;
    let candidates = compute_nodes(rng);
    let storage: Vec<ReplicaLocation<u32>> =
        (0..STORAGE).map(|s| random_storage(rng, 1_000_000 + s)).collect();
    let tasks: Vec<RoundTask<u32>> = (0..TASKS)
        .map(|_| {
            let first = rng.random_range(0..storage.len());
            let second = (first + rng.random_range(1..storage.len())) % storage.len();
            RoundTask {
                demand: TaskDemand {
                    shard_bytes: 128 << 10,
                    flops: 1e8,
                    memory_bytes: 1 << 20,
                    replicas: vec![storage[first].clone(), storage[second].clone()],
                },
                exclude: Vec::new(),
            }
        })
        .collect();
    let network = NetworkModel::default();
    let started = Instant::now();
    let one_by_one = place_one_by_one(&tasks, &candidates, &network);
    let one_by_one_secs = started.elapsed().as_secs_f64();
    // The round is quick: the best of a few runs, so one scheduling hiccup does not decide it.
    let mut round_secs = f64::INFINITY;
    let mut round = Vec::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        round = place_round(&tasks, &candidates, &network);
        round_secs = round_secs.min(started.elapsed().as_secs_f64());
    }
    let placed = round.iter().flatten().count();
    let agree = round == one_by_one;
    println!(
        "\n(c) a round of {TASKS} tasks over {NODES} compute nodes, shards on {STORAGE} storage nodes (2 replicas each)"
    );
    println!(
        "  per-task ranking, one task after another: {:>9.1} ms",
        one_by_one_secs * 1e3
    );
    println!(
        "  the whole round at once (best of {RUNS}):     {:>9.1} ms",
        round_secs * 1e3
    );
    println!(
        "  ratio one-by-one/round: {:.0}×; {placed} of {TASKS} placed; same node and replica for every task: {}",
        one_by_one_secs / round_secs,
        if agree { "yes" } else { "NO" }
    );
    assert!(
        agree,
        "the round placement must choose what the per-task ranking chooses"
    );
}

fn main() {
    let mut rng = StdRng::seed_from_u64(2018);
    decisions_per_second(&mut rng);
    cross_region_bytes(&mut rng);
    a_whole_round(&mut rng);
}
