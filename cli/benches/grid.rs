//! Grid benchmark.
//!
//! (c) The devnet's main job end to end (placement, tickets, shard fetches over QUIC, kernels on
//!     three compute nodes, spot checks, settlement) beside the same number of kernel calls run
//!     locally in one process on the same shards: the grid's overhead.
//! (d) Verification overhead — re-executions as a share of all executions — and how a node that
//!     corrupts 10 % of its results fares: caught in how many jobs, how many of its corrupted
//!     results are in the trained model (none once it is caught: the job rewinds before them),
//!     and how many rounds the rewinds trained again; with sampled checks, then with every
//!     result checked (`--verify every`).
//! (e) A 10 M-parameter MLP over the grid (one OS process per service) with H = 1 and H = 8 local
//!     steps, beside the same kernel calls in one process: the wall-time ratio, bytes on the wire
//!     per round ÷ model bytes, the runner's peak RSS (growth during the job) ÷ model bytes, and
//!     the ledger bytes per round.
//! (f) A 100 M-parameter MLP over the same grid for one epoch (H = 1): the job's time, and the
//!     peak RSS of every process ÷ the model bytes. Heavy (about 10 GB of memory in all), so it
//!     runs only when asked.
//!
//! `cargo bench -p aic-cli --bench grid` runs (c)–(e); `-- faulty` runs (d)'s corrupting node
//! alone, `-- large` runs (e) alone, `-- hundred` runs (f) alone.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
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
    if std::env::args().any(|a| a == "hundred") {
        hundred_million_parameters();
        return;
    }
    if std::env::args().any(|a| a == "faulty") {
        corrupting_node();
        return;
    }
    let large_only = std::env::args().any(|a| a == "large");
    let shards = digits_shards(&runtime);
    if !large_only {
        small_model(&shards);
    }
    large_model(&shards);
}

/// The digits as the devnet imports them (256-row shards), decoded: training shards first.
fn digits_shards(runtime: &tokio::runtime::Runtime) -> Vec<Vec<arrow_array::RecordBatch>> {
    let digits = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../storage-node/data/digits/digits.csv"
    );
    let store = ShardStore::memory();
    let mut options = ImportOptions::new("digit");
    options.shard_rows = Some(256);
    let (manifest, key) = runtime
        .block_on(import_file(
            std::path::Path::new(digits),
            "digits",
            &options,
            &store,
        ))
        .unwrap();
    manifest
        .train
        .iter()
        .chain(&manifest.test)
        .map(|e| {
            runtime
                .block_on(read_shard(&store, &key, &e.id.parse().unwrap()))
                .unwrap()
        })
        .collect()
}

fn small_model(shards: &[Vec<arrow_array::RecordBatch>]) {
    // (c) the grid's overhead.
    let (status, _) = devnet(&[]);
    let job = &status["job"];
    let grid_secs = job["seconds"].as_f64().unwrap();
    let (tasks, extra) = executions(job);
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
    corrupting_node();
}

/// (d) continued: jobs beside compute-3 corrupting 10 % of its results, sampled checks, then
/// every result checked.
fn corrupting_node() {
    for verify in ["sampled", "every"] {
        println!("  --verify {verify}:");
        jobs_beside_a_corrupter(verify);
    }
}

fn jobs_beside_a_corrupter(verify: &str) {
    let mut caught = 0;
    let (mut slipped, mut in_model, mut rerun) = (Vec::new(), Vec::new(), Vec::new());
    let mut overhead = Vec::new();
    for _ in 0..FAULTY_RUNS {
        let (status, log) = devnet(&["--faulty-percent", "10", "--verify", verify]);
        let job = &status["job"];
        let (tasks, extra) = executions(job);
        overhead.push(extra as f64 / (tasks + extra) as f64);
        // The compute node logs each result it corrupts, with the task's id.
        let plain = without_colours(&log);
        let corrupted: std::collections::BTreeSet<&str> = plain
            .lines()
            .filter(|l| l.contains("fault injection: corrupting this result"))
            .filter_map(|l| l.split("task=").nth(1)?.split([' ', ':', '}']).next())
            .collect();
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
        // In the model: compute-3's accepted training results of rounds no rewind discarded (a
        // check's re-run of a task has the task's id, from another node).
        let kept = job["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["kind"] == "gradient" && t["discarded"].is_null() && t["node"] == "compute-3")
            .filter(|t| corrupted.contains(t["task"].as_str().unwrap_or_default()))
            .count();
        let rewinds = job["rewinds"].as_array().cloned().unwrap_or_default();
        let rounds_rerun: u64 = rewinds
            .iter()
            .map(|r| r["from_round"].as_u64().unwrap_or(0) - r["to_round"].as_u64().unwrap_or(0))
            .sum();
        slipped.push(corrupted.len().saturating_sub(detected));
        in_model.push(kept);
        rerun.push(rounds_rerun);
        println!(
            "  run: {} corrupted results, {detected} caught, {kept} in the trained model, {} rewinds \
             re-running {rounds_rerun} rounds, accuracy {:.4}, {:.1} % extra compute",
            corrupted.len(),
            rewinds.len(),
            job["accuracy"].as_f64().unwrap(),
            100.0 * extra as f64 / (tasks + extra) as f64
        );
    }
    let mean = |v: &[usize]| v.iter().sum::<usize>() as f64 / FAULTY_RUNS as f64;
    println!(
        "  a node corrupting 10 % of its results: caught and slashed in {caught} of {FAULTY_RUNS} jobs; \
         corrupted results not caught by a check per job: mean {:.1}; in the trained model: mean {:.1} \
         (max {}); rounds re-run by rewinds per job: mean {:.1}; extra compute mean {:.1} %",
        mean(&slipped),
        mean(&in_model),
        in_model.iter().max().unwrap_or(&0),
        rerun.iter().sum::<u64>() as f64 / FAULTY_RUNS as f64,
        100.0 * overhead.iter().sum::<f64>() / FAULTY_RUNS as f64
    );
}

/// The log without its terminal colour codes (ESC [ … m), so its fields read `name=value`.
fn without_colours(log: &str) -> String {
    let mut plain = String::with_capacity(log.len());
    let mut in_code = false;
    for c in log.chars() {
        match (in_code, c) {
            (false, '\u{1b}') => in_code = true,
            (false, c) => plain.push(c),
            (true, 'm') => in_code = false,
            (true, _) => {}
        }
    }
    plain
}

/// Runs `aic` with `args`, answering its JSON output.
fn aic_json(args: &[&str]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_aic"))
        .args(args)
        .output()
        .expect("the aic binary runs");
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON")
}

/// A `/metrics` page over plain HTTP/1.0.
fn scrape(url: &str) -> String {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://").trim_end_matches("/metrics");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut page = String::new();
    stream.read_to_string(&mut page).unwrap();
    page
}

/// The sum of a counter's samples whose labels contain `labels`.
fn counter(page: &str, name: &str, labels: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The process whose command line names `<service>.toml` (the devnet's child for a service).
fn pid_of(service: &str) -> Option<u32> {
    let wanted = format!("{service}.toml");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
        String::from_utf8_lossy(&cmdline).contains(&wanted).then_some(pid)
    })
}

/// Clears each process's peak-RSS mark (so VmHWM counts from here) and answers its RSS now.
fn reset_peaks(pids: impl Iterator<Item = u32>) -> Vec<u64> {
    pids.map(|pid| {
        let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
        status_bytes(pid, "VmRSS")
    })
    .collect()
}

/// A `/proc/PID/status` field in bytes (VmRSS, VmHWM).
fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// (e) a 10 M-parameter model over the grid, H = 1 and H = 8, beside one process.
fn large_model(shards: &[Vec<arrow_array::RecordBatch>]) {
    const HIDDEN: usize = 133_334;
    const EPOCHS: &str = "2";
    let spec = ModelSpec::Mlp {
        features: 64,
        hidden: HIDDEN,
        classes: 10,
    };
    let parameters: usize = spec.shapes().iter().map(|(r, c)| r * c).sum();
    let model_bytes = parameters as f64 * 4.0;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("devnet");
    let (mut devnet, status) = process_devnet(&data_dir, &[]);
    let profile = status["profile"].as_str().unwrap().to_string();
    let digits = status["datasets"][0]["asset"].as_str().unwrap().to_string();
    let wallet = |name: &str| data_dir.join(format!("wallets/{name}.key")).display().to_string();
    let names: Vec<(String, String)> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap().to_string(),
                n["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let scheduler_metrics = status["metrics"]["scheduler-1"].as_str().unwrap().to_string();
    let model = register_mlp("mlp-10m", HIDDEN, &digits, &profile, &wallet("model-owner"));
    println!(
        "\n(e) a {parameters}-parameter MLP (64 → {HIDDEN} → 10, {:.1} MB) on the digits, {EPOCHS} epochs, \
         3 compute nodes, one OS process per service",
        model_bytes / 1e6
    );
    let mut backend = aic_kernels::open(BackendChoice::Cpu).unwrap();
    let weights = spec.init(1);
    for local_steps in [1u32, 8] {
        let pids: Vec<(String, u32)> = ["scheduler-1", "scheduler-2", "scheduler-3"]
            .iter()
            .filter_map(|s| pid_of(s).map(|p| (s.to_string(), p)))
            .collect();
        // Peak RSS from here on: clear each replica's high-water mark.
        let rss_before = reset_peaks(pids.iter().map(|(_, pid)| *pid));
        let page = scrape(&scheduler_metrics);
        let ledger_before = counter(&page, "aic_ledger_transaction_bytes_total", "");
        let checkpoints_before = counter(&page, "aic_ledger_transaction_bytes_total", "checkpoint_job");
        let job = aic_json(&[
            "job",
            "submit",
            "--dataset",
            &digits,
            "--model",
            &model,
            "--budget",
            "300",
            "--epochs",
            EPOCHS,
            "--local-steps",
            &local_steps.to_string(),
            "--learning-rate",
            "0.05",
            "--profile",
            &profile,
            "--wallet",
            &wallet("user"),
            "--json",
        ]);
        assert_eq!(job["state"], "done", "{job}");
        let page = scrape(&scheduler_metrics);
        let rounds = job["rounds"].as_f64().unwrap();
        let ledger = (counter(&page, "aic_ledger_transaction_bytes_total", "") - ledger_before) / rounds;
        let checkpoints = (counter(&page, "aic_ledger_transaction_bytes_total", "checkpoint_job")
            - checkpoints_before)
            / rounds;
        let runner_id = job["runner"].as_str().unwrap();
        let runner = names
            .iter()
            .find(|(id, _)| id == runner_id)
            .map(|(_, n)| n.clone())
            .unwrap();
        let (index, pid) = pids
            .iter()
            .enumerate()
            .find(|(_, (name, _))| *name == runner)
            .map(|(i, (_, pid))| (i, *pid))
            .unwrap();
        let peak = status_bytes(pid, "VmHWM");
        let growth = peak.saturating_sub(rss_before[index]);
        let grid_secs = job["seconds"].as_f64().unwrap();
        let (tasks, extra) = executions(&job);
        let train_tasks = job["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["kind"] == "gradient")
            .count();
        let evaluations = tasks - train_tasks;
        // The same kernel calls in one process: every training execution (accepted, checks,
        // third runs) takes H steps over its 256-row shard; every evaluation one pass.
        let train_shards = shards.len() - 2;
        let started = Instant::now();
        for call in 0..train_tasks + extra {
            for _ in 0..local_steps {
                for batch in &shards[call % train_shards] {
                    aic_kernels::step::train_step(backend.as_mut(), &spec, &weights, batch, "digit").unwrap();
                }
            }
        }
        for call in 0..evaluations {
            for batch in &shards[train_shards + call % 2] {
                aic_kernels::step::evaluate(backend.as_mut(), &spec, &weights, batch, "digit").unwrap();
            }
        }
        let local_secs = started.elapsed().as_secs_f64();
        println!(
            "  H = {local_steps}: {rounds} rounds, {train_tasks} training tasks + {extra} re-executions + {evaluations} evaluations, accuracy {:.4}",
            job["accuracy"].as_f64().unwrap_or(f64::NAN)
        );
        println!(
            "    grid {grid_secs:.1} s; the same kernel calls in one process {local_secs:.1} s; ratio grid/local {:.2}×",
            grid_secs / local_secs
        );
        println!(
            "    bytes on the wire per round ÷ model bytes: {:.2} (stored {:.0} MB, fetched {:.0} MB, collected {:.0} MB, compared {:.0} MB in all)",
            job["wire"]["per_round_over_model_bytes"].as_f64().unwrap(),
            job["wire"]["stored_bytes"].as_f64().unwrap() / 1e6,
            job["wire"]["fetched_bytes"].as_f64().unwrap() / 1e6,
            job["wire"]["collected_bytes"].as_f64().unwrap() / 1e6,
            job["wire"]["compared_bytes"].as_f64().unwrap() / 1e6,
        );
        println!(
            "    runner ({runner}) peak RSS {:.0} MB, {:.0} MB above its RSS before the job: {:.2}× the model bytes",
            peak as f64 / 1e6,
            growth as f64 / 1e6,
            growth as f64 / model_bytes
        );
        println!("    ledger bytes per round: {ledger:.0} (checkpoints {checkpoints:.0})");
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(devnet.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = devnet.wait();
}

/// A devnet with one OS process per service, its status line, and the child to stop.
fn process_devnet(data_dir: &std::path::Path, extra: &[&str]) -> (std::process::Child, Value) {
    let mut devnet = Command::new(env!("CARGO_BIN_EXE_aic"))
        .args([
            "devnet",
            "--processes",
            "--json",
            "--epochs",
            "1",
            "--timeout-secs",
            "120",
        ])
        .args(extra)
        .arg("--data-dir")
        .arg(data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(devnet.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (
        devnet,
        serde_json::from_str(&line).expect("the devnet's status line"),
    )
}

/// (f) a 100 M-parameter model over the grid: time and peak memory per process.
fn hundred_million_parameters() {
    const HIDDEN: usize = 1_333_334;
    let spec = ModelSpec::Mlp {
        features: 64,
        hidden: HIDDEN,
        classes: 10,
    };
    let parameters: usize = spec.shapes().iter().map(|(r, c)| r * c).sum();
    let model_bytes = parameters as f64 * 4.0;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("devnet");
    // A round of this model takes minutes on a small machine: the lease and the task timeout
    // are raised above it, so no replica takes the job for dead.
    let (mut devnet, status) = process_devnet(
        &data_dir,
        &["--resume-after-secs", "1800", "--task-timeout-secs", "1200"],
    );
    let profile = status["profile"].as_str().unwrap().to_string();
    let digits = status["datasets"][0]["asset"].as_str().unwrap().to_string();
    let wallet = |name: &str| data_dir.join(format!("wallets/{name}.key")).display().to_string();
    let scheduler_metrics = status["metrics"]["scheduler-1"].as_str().unwrap().to_string();
    let services = [
        "scheduler-1",
        "scheduler-2",
        "scheduler-3",
        "storage-1",
        "storage-2",
        "compute-1",
        "compute-2",
        "compute-3",
    ];
    let pids: Vec<(&str, u32)> = services
        .iter()
        .filter_map(|s| pid_of(s).map(|p| (*s, p)))
        .collect();
    let model = register_mlp("mlp-100m", HIDDEN, &digits, &profile, &wallet("model-owner"));
    println!(
        "\n(f) a {parameters}-parameter MLP (64 → {HIDDEN} → 10, {:.0} MB) on the digits, 1 epoch, H = 1, \
         3 compute nodes, one OS process per service",
        model_bytes / 1e6
    );
    let rss_before = reset_peaks(pids.iter().map(|(_, pid)| *pid));
    let page = scrape(&scheduler_metrics);
    let ledger_before = counter(&page, "aic_ledger_transaction_bytes_total", "");
    let started = Instant::now();
    let job = aic_json(&[
        "job",
        "submit",
        "--dataset",
        &digits,
        "--model",
        &model,
        "--budget",
        "300",
        "--epochs",
        "1",
        "--learning-rate",
        "0.05",
        "--profile",
        &profile,
        "--wallet",
        &wallet("user"),
        "--json",
    ]);
    let wall = started.elapsed().as_secs_f64();
    assert_eq!(job["state"], "done", "{job}");
    let rounds = job["rounds"].as_f64().unwrap();
    let page = scrape(&scheduler_metrics);
    let ledger = (counter(&page, "aic_ledger_transaction_bytes_total", "") - ledger_before) / rounds;
    let (tasks, extra) = executions(&job);
    println!(
        "  {rounds} rounds, {tasks} accepted tasks + {extra} re-executions, accuracy {:.4}; \
         the job took {:.0} s ({wall:.0} s from submit to answer)",
        job["accuracy"].as_f64().unwrap_or(f64::NAN),
        job["seconds"].as_f64().unwrap_or(f64::NAN),
    );
    println!(
        "  bytes on the wire per round ÷ model bytes: {:.2}; ledger bytes per round: {ledger:.0}",
        job["wire"]["per_round_over_model_bytes"].as_f64().unwrap(),
    );
    println!(
        "  {:<12} {:>12} {:>14} {:>12}",
        "process", "peak RSS MB", "growth MB", "peak ÷ model"
    );
    for ((name, pid), before) in pids.iter().zip(&rss_before) {
        let peak = status_bytes(*pid, "VmHWM");
        println!(
            "  {name:<12} {:>12.0} {:>14.0} {:>12.2}",
            peak as f64 / 1e6,
            peak.saturating_sub(*before) as f64 / 1e6,
            peak as f64 / model_bytes
        );
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(devnet.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = devnet.wait();
}

/// Registers an MLP of `hidden` units for the digits; answers its asset.
fn register_mlp(name: &str, hidden: usize, digits: &str, profile: &str, wallet: &str) -> String {
    let model = aic_json(&[
        "model",
        "register",
        "--name",
        name,
        "--kind",
        "mlp",
        "--hidden",
        &hidden.to_string(),
        "--for-dataset",
        digits,
        "--profile",
        profile,
        "--wallet",
        wallet,
        "--json",
    ]);
    model["asset"].as_str().unwrap().to_string()
}
