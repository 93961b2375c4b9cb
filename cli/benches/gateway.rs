//! Inference gateway benchmark, on loopback, for two models trained on the devnet's digits: its
//! main model (softmax regression 64 → 10, 650 parameters, where HTTP is nearly all the cost) and
//! a wide MLP (64 → 65,536 → 10, 4.9 M parameters, trained here for one epoch: a forward pass
//! that costs something), each called over HTTPS through the gateway to the compute nodes,
//! beside the same forward pass called in this process on the CPU.
//!
//! (a) One client, one row per call, calls in sequence: p50 and p99 latency and calls/s, beside
//!     an in-process forward pass of one row. The goal: p50 overhead ≤ 2 ms.
//! (b) 64 clients at once, one row per call (the gateway batches them): rows/s, p50 and p99,
//!     beside in-process forward passes of 64 rows. The goal: ≥ 0.5× the in-process rows/s.
//!
//! `cargo bench -p aic-cli --bench gateway` (a devnet starts first and trains the wide model:
//! a few minutes).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aic_kernels::inference::ServedGraph;
use aic_kernels::{CpuBackend, Matrix};
use serde_json::{json, Value};

const CLIENTS: usize = 64;
/// API keys the concurrent clients share (each key's rate limit is 500 calls a second, with a
/// burst of 1,000: a policy, not what is measured).
const KEYS: usize = 16;
/// The wide MLP's hidden units.
const WIDE_HIDDEN: u64 = 65_536;

/// What the gateway's and the compute nodes' metrics say: batches sent and their rows, and the
/// seconds the compute nodes spent on inference batches.
#[derive(Clone, Copy, Default)]
struct Counters {
    batches: f64,
    rows: f64,
    compute_secs: f64,
}

fn counters(status: &Value) -> Counters {
    let read = |url: &str, name: &str| -> f64 {
        let page = reqwest::blocking::get(url).unwrap().text().unwrap();
        page.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let metrics = status["metrics"].as_object().unwrap();
    let gateway = metrics["gateway-1"].as_str().unwrap();
    Counters {
        batches: read(gateway, "aic_gateway_batch_rows_count"),
        rows: read(gateway, "aic_gateway_batch_rows_sum"),
        compute_secs: metrics
            .iter()
            .filter(|(name, _)| name.starts_with("compute-"))
            .map(|(_, url)| {
                read(
                    url.as_str().unwrap(),
                    "aic_compute_inference_duration_seconds_sum",
                )
            })
            .sum(),
    }
}

/// How much of each measurement a model gets: the wide model's calls cost more.
struct Workload {
    name: &'static str,
    /// The name calls use.
    alias: String,
    asset: String,
    sequential_calls: usize,
    calls_per_client: usize,
    local_rounds: usize,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs `aic` with `args`; its JSON answer.
fn aic(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_aic"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn main() {
    aic_protocol::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("devnet");
    let mut devnet = Command::new(env!("CARGO_BIN_EXE_aic"))
        .args(["devnet", "--json", "--timeout-secs", "300", "--data-dir"])
        .arg(&data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(devnet.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let status: Value = serde_json::from_str(&line).expect("the devnet's status line");
    let gateway = &status["gateway"];
    let profile = status["profile"].as_str().unwrap();
    let wallet = |name: &str| data_dir.join(format!("wallets/{name}.key")).display().to_string();
    let ca = std::fs::read(gateway["ca"].as_str().unwrap()).unwrap();
    let client = reqwest::blocking::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    // The concurrent clients share keys of the caller's account; the sequential one uses the
    // devnet's own key.
    let keys: Vec<String> = (0..KEYS)
        .map(|_| {
            aic(&[
                "gateway",
                "key",
                "create",
                "--json",
                "--profile",
                profile,
                "--wallet",
                gateway["caller_wallet"].as_str().unwrap(),
            ])["api_key"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();

    // The wide MLP: registered, trained for one epoch, published.
    let digits = status["datasets"][0]["asset"].as_str().unwrap();
    let model = aic(&[
        "model",
        "register",
        "--name",
        "digits-wide",
        "--kind",
        "mlp",
        "--hidden",
        &WIDE_HIDDEN.to_string(),
        "--for-dataset",
        digits,
        "--profile",
        profile,
        "--wallet",
        &wallet("model-owner"),
        "--json",
    ]);
    let job = aic(&[
        "job",
        "submit",
        "--dataset",
        digits,
        "--model",
        model["asset"].as_str().unwrap(),
        "--budget",
        "200",
        "--epochs",
        "1",
        "--local-steps",
        "2",
        "--profile",
        profile,
        "--wallet",
        &wallet("user"),
        "--json",
    ]);
    assert_eq!(job["state"], "done", "{job}");
    let wide_asset = job["trained_model"].as_str().unwrap().to_string();
    aic(&[
        "model",
        "publish",
        &wide_asset,
        "--price-per-1k-rows",
        "0.1",
        "--alias",
        "digits-wide",
        "--profile",
        profile,
        "--wallet",
        &wallet("user"),
        "--json",
    ]);

    let pixels: Vec<Vec<f32>> = std::fs::read_to_string(data_dir.join("data/digits.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .take(CLIENTS)
        .map(|l| l.split(',').take(64).map(|v| v.parse().unwrap()).collect())
        .collect();
    println!("inference gateway, loopback HTTPS → gateway → compute node (QUIC)");
    let workloads = [
        Workload {
            name: "digits softmax 64 → 10 (650 parameters)",
            alias: gateway["model"].as_str().unwrap().to_string(),
            asset: gateway["asset"].as_str().unwrap().to_string(),
            sequential_calls: 1000,
            calls_per_client: 100,
            local_rounds: 2000,
        },
        Workload {
            name: "wide MLP 64 → 65,536 → 10 (4.9 M parameters)",
            alias: "digits-wide".into(),
            asset: wide_asset,
            sequential_calls: 200,
            calls_per_client: 10,
            local_rounds: 20,
        },
    ];
    let url = gateway["url"].as_str().unwrap();
    for workload in &workloads {
        let served = served_model(&data_dir, profile, &workload.asset);
        let calls = Calls {
            client: &client,
            base: url,
            key: gateway["api_key"].as_str().unwrap(),
            keys: &keys,
        };
        measure(workload, &served, &calls, &pixels, &status);
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(devnet.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    devnet.wait().unwrap();
}

/// Where and as whom the bench calls: the sequential client's key, and the concurrent ones'.
struct Calls<'a> {
    client: &'a reqwest::blocking::Client,
    base: &'a str,
    key: &'a str,
    keys: &'a [String],
}

/// (a) and (b) for one model.
fn measure(workload: &Workload, served: &ServedGraph, calls: &Calls, pixels: &[Vec<f32>], status: &Value) {
    let Calls {
        client,
        base,
        key,
        keys,
    } = *calls;
    let url = format!("{base}/v2/models/{}/infer", workload.alias);
    let body = |row: &[f32]| {
        serde_json::to_vec(
            &json!({"inputs": [{"name": "input-0", "shape": [1, 64], "datatype": "FP32", "data": row}]}),
        )
        .unwrap()
    };
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new(pixels.iter().map(|r| body(r)).collect());
    let call = |client: &reqwest::blocking::Client, key: &str, body: &[u8]| {
        let started = Instant::now();
        let response = client
            .post(&url)
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        response.bytes().unwrap();
        started.elapsed()
    };
    // Warm the model into the compute nodes and the connections.
    for body in bodies.iter() {
        call(client, key, body);
    }

    // (a) One row per call, in sequence.
    let sequential = workload.sequential_calls;
    let mut latencies: Vec<Duration> = (0..sequential)
        .map(|i| call(client, key, &bodies[i % bodies.len()]))
        .collect();
    let total: Duration = latencies.iter().sum();
    latencies.sort();
    // As a compute node runs it: the CPU backend on every core (`cpu_threads = 0`).
    let mut cpu = CpuBackend::with_threads(0);
    let one_row = Matrix::new(1, 64, pixels[0].clone()).unwrap();
    let mut local: Vec<Duration> = (0..sequential)
        .map(|_| {
            let started = Instant::now();
            served.outputs(&mut cpu, &one_row).unwrap();
            started.elapsed()
        })
        .collect();
    local.sort();
    println!(
        "
== {}",
        workload.name
    );
    println!("(a) one client, one row per call, {sequential} calls in sequence");
    println!(
        "  gateway     p50 {:>8.3} ms   p99 {:>8.3} ms   {:>8.0} calls/s",
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        sequential as f64 / total.as_secs_f64()
    );
    println!(
        "  in-process  p50 {:>8.3} ms   p99 {:>8.3} ms   (the forward pass alone)",
        ms(percentile(&local, 0.5)),
        ms(percentile(&local, 0.99))
    );
    let overhead = percentile(&latencies, 0.5).saturating_sub(percentile(&local, 0.5));
    println!(
        "  p50 overhead {:.3} ms (goal ≤ 2 ms: {})",
        ms(overhead),
        if overhead <= Duration::from_millis(2) {
            "met"
        } else {
            "missed"
        }
    );

    // (b) 64 clients at once, one row per call.
    let calls_per_client = workload.calls_per_client;
    let before = counters(status);
    let started = Instant::now();
    let workers: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (client, bodies, url, key) = (
                client.clone(),
                bodies.clone(),
                url.clone(),
                keys[c % keys.len()].clone(),
            );
            std::thread::spawn(move || {
                (0..calls_per_client)
                    .map(|i| {
                        let started = Instant::now();
                        let response = client
                            .post(&url)
                            .header("authorization", format!("Bearer {key}"))
                            .header("content-type", "application/json")
                            .body(bodies[(c + i) % bodies.len()].clone())
                            .send()
                            .unwrap();
                        assert_eq!(response.status().as_u16(), 200);
                        response.bytes().unwrap();
                        started.elapsed()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut concurrent: Vec<Duration> = workers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    let wall = started.elapsed();
    let after = counters(status);
    concurrent.sort();
    let rows = (CLIENTS * calls_per_client) as f64;
    let batch = Matrix::new(CLIENTS, 64, pixels.concat()).unwrap();
    let local_started = Instant::now();
    for _ in 0..workload.local_rounds {
        served.outputs(&mut cpu, &batch).unwrap();
    }
    let local_rows = (workload.local_rounds * CLIENTS) as f64 / local_started.elapsed().as_secs_f64();
    let gateway_rows = rows / wall.as_secs_f64();
    println!("(b) {CLIENTS} clients at once, one row per call, {calls_per_client} calls each (batched by the gateway)");
    println!(
        "  gateway     {:>10.0} rows/s   p50 {:>8.3} ms   p99 {:>8.3} ms",
        gateway_rows,
        ms(percentile(&concurrent, 0.5)),
        ms(percentile(&concurrent, 0.99))
    );
    println!("  in-process  {local_rows:>10.0} rows/s   (forward passes of {CLIENTS} rows, every core)");
    let batches = after.batches - before.batches;
    println!(
        "  {batches:.0} batches (verifications included), mean {:.1} rows; compute nodes busy {:.2} s of {:.2} s",
        (after.rows - before.rows) / batches.max(1.0),
        after.compute_secs - before.compute_secs,
        wall.as_secs_f64()
    );
    println!(
        "  gateway ÷ in-process {:.4}× (goal ≥ 0.5×: {})",
        gateway_rows / local_rows,
        if gateway_rows / local_rows >= 0.5 {
            "met"
        } else {
            "missed"
        }
    );
}

/// The served model built in this process from the weights its owner exports.
fn served_model(data_dir: &Path, profile: &str, asset: &str) -> ServedGraph {
    let out = data_dir.join(format!("bench-weights-{asset}"));
    let exported = Command::new(env!("CARGO_BIN_EXE_aic"))
        .args(["model", "export", asset, "--format", "parquet", "--out"])
        .arg(&out)
        .args(["--profile", profile, "--wallet"])
        .arg(data_dir.join("wallets/user.key"))
        .output()
        .unwrap();
    assert!(
        exported.status.success(),
        "{}",
        String::from_utf8_lossy(&exported.stderr)
    );
    let model: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("model.json")).unwrap()).unwrap();
    let served = aic_protocol::messages::ServedModel::from_trained_manifest(
        asset.parse().unwrap(),
        [0; 32],
        &model["manifest"],
    )
    .unwrap();
    let file = std::fs::File::open(out.join("weights.parquet")).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut flat = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let values = batch
            .column(2)
            .as_any()
            .downcast_ref::<arrow_array::Float32Array>()
            .unwrap();
        flat.extend(values.values().iter().copied());
    }
    ServedGraph::new(&served.model, &flat).unwrap()
}
