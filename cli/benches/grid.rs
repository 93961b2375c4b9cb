//! Grid benchmark.
//!
//! (c) The devnet's main job end to end (placement, tickets, shard fetches over QUIC, kernels on
//!     three compute nodes, spot checks, settlement) beside the same number of kernel calls run
//!     locally in one process on the same shards: the grid's overhead.
//! (d) Verification overhead — re-executions as a share of all executions — and how a node that
//!     corrupts 10 % of its results fares: caught in how many jobs, after how many bad results.
//!
//! `cargo bench -p aic-cli --bench grid`

use std::process::Command;
use std::time::Instant;

use aic_kernels::{BackendChoice, ModelSpec};
use aic_storage_node::import::{import_file, read_shard, ImportOptions};
use aic_storage_node::shard_store::ShardStore;
use serde_json::Value;

const FAULTY_RUNS: usize = 5;

fn devnet(extra: &[&str]) -> (Value, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_aic"))
        .args(["devnet", "--once", "--json", "--timeout-secs", "120"])
        .args(extra)
        .output()
        .expect("the aic binary runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    (
        serde_json::from_slice(&output.stdout).expect("a status line"),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Executions a job ran: accepted tasks plus every re-execution of a spot check.
fn executions(job: &Value) -> (usize, usize) {
    let tasks = job["tasks"].as_array().map_or(0, Vec::len);
    let checks = job["spot_checks"].as_array().cloned().unwrap_or_default();
    let extra = checks.len() + checks.iter().filter(|c| !c["third"].is_null()).count();
    (tasks, extra)
}

fn main() {
    aic_protocol::install_crypto_provider();
    let runtime = tokio::runtime::Runtime::new().unwrap();

    // (c) the grid's overhead.
    let (status, _) = devnet(&[]);
    let job = &status["job"];
    let grid_secs = job["seconds"].as_f64().unwrap();
    let (tasks, extra) = executions(job);
    let digits = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../storage-node/data/digits/digits.csv"
    );
    let store = ShardStore::memory();
    let mut options = ImportOptions::new("digit");
    options.shard_rows = 256;
    let (manifest, key) = runtime
        .block_on(import_file(
            std::path::Path::new(digits),
            "digits",
            &options,
            &store,
        ))
        .unwrap();
    let shards: Vec<_> = manifest
        .train
        .iter()
        .chain(&manifest.test)
        .map(|e| {
            runtime
                .block_on(read_shard(&store, &key, &e.id.parse().unwrap()))
                .unwrap()
        })
        .collect();
    let spec = ModelSpec::SoftmaxRegression {
        features: 64,
        classes: 10,
    };
    let weights = spec.init(1);
    let mut backend = aic_kernels::open(BackendChoice::Cpu).unwrap();
    let started = Instant::now();
    for call in 0..tasks + extra {
        for batch in &shards[call % shards.len()] {
            aic_kernels::step::train_step(backend.as_mut(), &spec, &weights, batch, "digit").unwrap();
        }
    }
    let local_secs = started.elapsed().as_secs_f64();
    println!(
        "(c) the main job (softmax regression on digits, {} rounds, 3 compute nodes)",
        job["rounds"]
    );
    println!(
        "  grid end to end: {grid_secs:.3} s for {tasks} tasks + {extra} re-executions, accuracy {:.4}",
        job["accuracy"].as_f64().unwrap()
    );
    println!(
        "  baseline: the same {} kernel calls in one process on the CPU: {local_secs:.3} s",
        tasks + extra
    );
    println!("  ratio grid/local: {:.1}×", grid_secs / local_secs);

    // (d) verification.
    println!(
        "\n(d) verification, honest grid: {extra} re-executions of {} executions = {:.1} % extra compute",
        tasks + extra,
        100.0 * extra as f64 / (tasks + extra) as f64
    );
    let mut caught = 0;
    let mut slipped = Vec::new();
    let mut overhead = Vec::new();
    for _ in 0..FAULTY_RUNS {
        let (status, log) = devnet(&["--faulty-percent", "10"]);
        let job = &status["job"];
        let (tasks, extra) = executions(job);
        overhead.push(extra as f64 / (tasks + extra) as f64);
        let injected = log.matches("fault injection: corrupting this result").count();
        let detected = job["spot_checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| {
                (c["verdict"] == "original_wrong" && c["original"] == "compute-3")
                    || (c["verdict"] == "checker_wrong" && c["checker"] == "compute-3")
            })
            .count();
        if detected > 0 {
            caught += 1;
        }
        slipped.push(injected.saturating_sub(detected));
        println!(
            "  run: {injected} corrupted results, {detected} caught, accuracy {:.4}, {:.1} % extra compute",
            job["accuracy"].as_f64().unwrap(),
            100.0 * extra as f64 / (tasks + extra) as f64
        );
    }
    println!(
        "  a node corrupting 10 % of its results: caught and slashed in {caught} of {FAULTY_RUNS} jobs; \
         corrupted results not caught per job: mean {:.1}; extra compute mean {:.1} %",
        slipped.iter().sum::<usize>() as f64 / FAULTY_RUNS as f64,
        100.0 * overhead.iter().sum::<f64>() / FAULTY_RUNS as f64
    );
}
