//! The devnet's inference gateway as its users meet it: an HTTPS client (reqwest, trusting the
//! grid's CA) drives every Open Inference Protocol endpoint; the digits model's answers equal
//! those onnxruntime computes from the exported ONNX file; bad requests get the protocol's error
//! body and status, reach no compute node and cost nothing; keys are created, revoked and
//! refused without funds; and the settled period balances to the base unit.

pub mod limits;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::support::{http_get, sample};
use super::{aic, stderr};

/// The gateway reuses the ledger's word on a key and a model for `limits.access_cache_ms` (1 s by
/// default): a revocation or an unpublication committed before this returns holds after it.
fn settle_access_cache() {
    std::thread::sleep(Duration::from_millis(1200));
}

struct Gateway {
    client: reqwest::blocking::Client,
    url: String,
    key: String,
}

impl Gateway {
    fn new(status: &Value) -> Self {
        let gateway = &status["gateway"];
        // reqwest takes the process's rustls provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = std::fs::read(gateway["ca"].as_str().unwrap()).unwrap();
        let client = reqwest::blocking::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        Gateway {
            client,
            url: gateway["url"].as_str().unwrap().to_string(),
            key: gateway["api_key"].as_str().unwrap().to_string(),
        }
    }

    fn get(&self, path: &str) -> (u16, Value) {
        let response = self.client.get(format!("{}{path}", self.url)).send().unwrap();
        let status = response.status().as_u16();
        (
            status,
            serde_json::from_slice(&response.bytes().unwrap()).unwrap(),
        )
    }

    fn infer_with(&self, key: Option<&str>, model: &str, body: &[u8]) -> (u16, Value) {
        let mut request = self
            .client
            .post(format!("{}/v2/models/{model}/infer", self.url))
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        let response = request.send().unwrap();
        let status = response.status().as_u16();
        let body = response.bytes().unwrap();
        let value = serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!(
                "status {status}: not JSON ({e}): {}",
                String::from_utf8_lossy(&body)
            )
        });
        (status, value)
    }

    fn infer(&self, model: &str, body: &Value) -> (u16, Value) {
        self.infer_with(Some(&self.key), model, &serde_json::to_vec(body).unwrap())
    }
}

/// The first `n` rows of the bundled digits (header, then rows of 64 pixel values and a label).
fn digits(data_dir: &Path, n: usize) -> (Vec<String>, Vec<Vec<String>>) {
    let text = std::fs::read_to_string(data_dir.join("data/digits.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().unwrap().split(',').map(String::from).collect();
    let rows = lines
        .take(n)
        .map(|l| l.split(',').map(String::from).collect())
        .collect();
    (header, rows)
}

/// One input tensor per pixel column.
fn column_request(header: &[String], rows: &[Vec<String>]) -> Value {
    let inputs: Vec<Value> = header
        .iter()
        .enumerate()
        .filter(|(_, name)| name.starts_with("pixel"))
        .map(|(c, name)| {
            let data: Vec<f64> = rows.iter().map(|r| r[c].parse().unwrap()).collect();
            json!({"name": name, "shape": [rows.len()], "datatype": "FP32", "data": data})
        })
        .collect();
    json!({"id": "digits", "inputs": inputs})
}

fn error_of(answer: &(u16, Value), status: u16, words: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    let message = answer.1["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error body: {}", answer.1));
    assert!(message.contains(words), "{message}");
}

/// Inference batches every compute node has run, from their metrics pages.
fn batches_run(status: &Value) -> f64 {
    status["metrics"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(name, _)| name.starts_with("compute-"))
        .map(|(_, url)| {
            let addr = url
                .as_str()
                .unwrap()
                .trim_start_matches("http://")
                .trim_end_matches("/metrics");
            let (_, page) = http_get(addr, "/metrics");
            sample(&page, "aic_compute_inference_batches_total", "result=\"ok\"")
        })
        .sum()
}

fn escrow(profile: &str, wallet: &Path) -> aic_ledger::Amount {
    let listed = aic(&[
        "gateway",
        "key",
        "list",
        "--profile",
        profile,
        "--wallet",
        wallet.to_str().unwrap(),
        "--json",
    ]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    listed["escrow"].as_str().unwrap().parse().unwrap()
}

pub fn check_the_gateway(status: &Value, data_dir: &Path) {
    let gateway = Gateway::new(status);
    let profile = status["profile"].as_str().unwrap();
    let model = status["gateway"]["model"].as_str().unwrap();
    let version = status["job"]["id"].as_str().unwrap().to_string();
    let caller = data_dir.join("wallets/caller.key");

    // Metadata, health and the OpenAPI document need no key.
    assert_eq!(gateway.get("/v2").1["name"], "aic-gateway");
    assert_eq!(gateway.get("/v2/health/live").0, 200);
    assert_eq!(gateway.get("/v2/health/ready").0, 200);
    let (code, openapi) = gateway.get("/v2/openapi.json");
    assert_eq!(code, 200);
    assert!(openapi["paths"]["/v2/models/{name}/versions/{version}/infer"]["post"].is_object());
    let (code, metadata) = gateway.get(&format!("/v2/models/{model}"));
    assert_eq!(code, 200, "{metadata}");
    assert_eq!(metadata["inputs"].as_array().unwrap().len(), 64);
    assert_eq!(metadata["outputs"][0]["name"], "label");
    assert_eq!(metadata["versions"][0], version.as_str());
    assert_eq!(metadata["parameters"]["classes"].as_array().unwrap().len(), 10);
    assert_eq!(
        gateway.get(&format!("/v2/models/{model}/versions/{version}")).0,
        200
    );
    assert_eq!(gateway.get(&format!("/v2/models/{model}/ready")).0, 200);
    assert_eq!(
        gateway
            .get(&format!("/v2/models/{model}/versions/{version}/ready"))
            .0,
        200
    );
    error_of(
        &gateway.get("/v2/models/no-such-model"),
        404,
        "no published model",
    );
    error_of(
        &gateway.get(&format!("/v2/models/{model}/versions/123/ready")),
        404,
        "no version",
    );
    error_of(&gateway.get("/v3/anything"), 404, "no such endpoint");

    // Bad requests: each refused with its status and the protocol's error body, before any
    // compute node is asked, and nothing charged.
    let (header, rows) = digits(data_dir, 40);
    let good = column_request(&header, &rows[..20]);
    let batches_before = batches_run(status);
    let escrow_before = escrow(profile, &caller);
    let body = serde_json::to_vec(&good).unwrap();
    error_of(&gateway.infer_with(None, model, &body), 401, "no API key");
    error_of(
        &gateway.infer_with(Some("aic_0000"), model, &body),
        401,
        "not registered",
    );
    error_of(
        &gateway.infer_with(Some(&gateway.key), model, b"{not json"),
        400,
        "not an inference request",
    );
    error_of(&gateway.infer(model, &json!({"inputs": []})), 400, "missing");
    error_of(&gateway.infer("no-such-model", &good), 404, "no published model");
    let mut wrong = good.clone();
    wrong["inputs"][3]["datatype"] = json!("BYTES");
    error_of(&gateway.infer(model, &wrong), 400, "datatype");
    let mut wrong = good.clone();
    wrong["inputs"][3]["shape"] = json!([20, 2]);
    error_of(&gateway.infer(model, &wrong), 400, "shape");
    let mut wrong = good.clone();
    wrong["inputs"][3]["name"] = json!("beak");
    error_of(
        &gateway.infer(model, &wrong),
        400,
        "not one of the model's inputs",
    );
    let mut wrong = good.clone();
    wrong["inputs"][3]["data"][2] = json!("NaN");
    error_of(&gateway.infer(model, &wrong), 400, "a number was expected");
    let mut wrong = good.clone();
    wrong["outputs"] = json!([{"name": "logits"}]);
    error_of(
        &gateway.infer(model, &wrong),
        400,
        "not one of the model's outputs",
    );
    let huge = vec![b' '; 5 << 20];
    error_of(
        &gateway.infer_with(Some(&gateway.key), model, &huge),
        413,
        "exceed",
    );
    assert_eq!(
        batches_run(status),
        batches_before,
        "a refused request reached a compute node"
    );

    // A good request: the answers onnxruntime computes from the exported model, independently.
    let (code, answer) = gateway.infer(model, &good);
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["model_version"], version.as_str());
    assert_eq!(answer["id"], "digits");
    let theirs = onnxruntime_answers(data_dir, status, &header, &rows[..20]);
    let labels = answer["outputs"][0]["data"].as_array().unwrap();
    let probabilities = answer["outputs"][1]["data"].as_array().unwrap();
    assert_eq!(answer["outputs"][1]["shape"], json!([20, 10]));
    for (row, theirs) in theirs.iter().enumerate() {
        assert_eq!(labels[row], theirs["label"], "row {row}");
        for (class, q) in theirs["probabilities"].as_array().unwrap().iter().enumerate() {
            let p = probabilities[row * 10 + class].as_f64().unwrap();
            assert!(
                (p - q.as_f64().unwrap()).abs() <= 1e-4,
                "row {row} class {class}: {p} vs {q}"
            );
        }
    }
    // The same rows as one [N, 64] tensor, and by version.
    let pixels: Vec<f64> = rows[..20]
        .iter()
        .flat_map(|r| r[..64].iter().map(|v| v.parse::<f64>().unwrap()))
        .collect();
    let matrix =
        json!({"inputs": [{"name": "input-0", "shape": [20, 64], "datatype": "FP64", "data": pixels}]});
    let (code, again) = gateway.infer(&format!("{model}/versions/{version}"), &matrix);
    assert_eq!(code, 200, "{again}");
    assert_eq!(again["outputs"][0]["data"], answer["outputs"][0]["data"]);

    // Keys: a second key works, revoked it is refused; a key whose account holds no inference
    // escrow is refused for want of funds.
    let wallet = caller.to_str().unwrap();
    let created = aic(&[
        "gateway",
        "key",
        "create",
        "--label",
        "second",
        "--profile",
        profile,
        "--wallet",
        wallet,
        "--json",
    ]);
    assert!(created.status.success(), "{}", stderr(&created));
    let created: Value = serde_json::from_slice(&created.stdout).unwrap();
    let second = created["api_key"].as_str().unwrap();
    let body = serde_json::to_vec(&column_request(&header, &rows[20..21])).unwrap();
    assert_eq!(gateway.infer_with(Some(second), model, &body).0, 200);
    let revoked = aic(&[
        "gateway",
        "key",
        "revoke",
        second,
        "--profile",
        profile,
        "--wallet",
        wallet,
    ]);
    assert!(revoked.status.success(), "{}", stderr(&revoked));
    settle_access_cache();
    error_of(&gateway.infer_with(Some(second), model, &body), 403, "revoked");
    let broke = data_dir.join("wallets/data-owner.key");
    let created = aic(&[
        "gateway",
        "key",
        "create",
        "--profile",
        profile,
        "--wallet",
        broke.to_str().unwrap(),
        "--json",
    ]);
    assert!(created.status.success(), "{}", stderr(&created));
    let created: Value = serde_json::from_slice(&created.stdout).unwrap();
    error_of(
        &gateway.infer_with(Some(created["api_key"].as_str().unwrap()), model, &body),
        402,
        "inference escrow",
    );

    // 64 clients at once, a row each: every call answered, each with its own row's answer.
    let alone: Vec<Value> = rows[..20]
        .iter()
        .map(|row| {
            let (code, answer) = gateway.infer(model, &column_request(&header, std::slice::from_ref(row)));
            assert_eq!(code, 200, "{answer}");
            answer["outputs"][0]["data"][0].clone()
        })
        .collect();
    let together: Vec<(usize, Value)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..64)
            .map(|i| {
                let (gateway, header, rows) = (&gateway, &header, &rows);
                scope.spawn(move || {
                    let row = i % 20;
                    let (code, answer) =
                        gateway.infer(model, &column_request(header, std::slice::from_ref(&rows[row])));
                    assert_eq!(code, 200, "{answer}");
                    (row, answer["outputs"][0]["data"][0].clone())
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    for (row, label) in &together {
        assert_eq!(label, &alone[*row], "row {row} answered differently under load");
    }

    // Settlement: 20 + 20 + 1 + 20 + 64 rows, each period's lines paid to the base unit (this
    // devnet's caller made no other call).
    check_settlement(profile, &caller, escrow_before, 125);

    // A compute node reads a published model's weights from a storage node — those weights
    // only, and only while the model is published.
    let asset: aic_protocol::AssetId = status["gateway"]["asset"].as_str().unwrap().parse().unwrap();
    assert_eq!(published_weights(status, data_dir, asset, false), Ok(650));
    assert_eq!(
        published_weights(status, data_dir, asset, true),
        Err(aic_protocol::ErrorCode::PermissionDenied)
    );
    let owner = data_dir.join("wallets/user.key");
    let unpublished = aic(&[
        "model",
        "unpublish",
        &asset.to_string(),
        "--profile",
        profile,
        "--wallet",
        owner.to_str().unwrap(),
    ]);
    assert!(unpublished.status.success(), "{}", stderr(&unpublished));
    settle_access_cache();
    error_of(&gateway.infer(model, &good), 404, "no published model");
    assert_eq!(
        published_weights(status, data_dir, asset, false),
        Err(aic_protocol::ErrorCode::PermissionDenied)
    );
}

/// What a storage node holding them answers compute-1 asking for `asset`'s weights (with a tensor name not the
/// asset's when `tampered`): how many values, or the refusal's code.
fn published_weights(
    status: &Value,
    data_dir: &Path,
    asset: aic_protocol::AssetId,
    tampered: bool,
) -> Result<usize, aic_protocol::ErrorCode> {
    use aic_ledger::api::{LedgerRequest, LedgerResponse};
    use aic_protocol::certs::IdentityFiles;
    use aic_protocol::rpc::RpcClient;
    use aic_protocol::Role;
    let node = |name: &str| {
        status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .unwrap()["addr"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let identity = |name: &str| {
        let certs = data_dir.join("certs");
        IdentityFiles {
            ca: certs.join("ca.pem"),
            cert: certs.join(format!("{name}.pem")),
            key: certs.join(format!("{name}.key")),
        }
        .load()
        .unwrap()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = aic_protocol::transport::outbound_endpoint(&identity("client")).unwrap();
        let scheduler = RpcClient::connect(&client, &node("scheduler-1"), Role::Scheduler)
            .await
            .unwrap();
        let LedgerResponse::Asset(Some(held)) =
            aic_ledger::remote::request(&scheduler, &LedgerRequest::Asset(asset))
                .await
                .unwrap()
        else {
            panic!("no asset {asset}");
        };
        let manifest: Value = serde_json::from_str(&held.metadata.manifest).unwrap();
        let served = aic_protocol::messages::ServedModel::from_trained_manifest(
            asset,
            held.metadata.content_hash,
            &manifest,
        )
        .unwrap();
        let mut tensor = served.tensor;
        if tampered {
            tensor.hash[0] ^= 1;
        }
        let compute = aic_protocol::transport::outbound_endpoint(&identity("compute-1")).unwrap();
        let storage = RpcClient::connect(&compute, &node("storage-1"), Role::Storage)
            .await
            .unwrap();
        match aic_protocol::tensor::fetch_published_tensor(&storage, asset, tensor, tensor.elements).await {
            Ok(values) => Ok(values.len()),
            Err(aic_protocol::tensor::TensorError::Transport(aic_protocol::Error::Rpc(e))) => Err(e.code),
            Err(other) => panic!("refused for another reason: {other}"),
        }
    })
}

/// Waits (bounded) for the gateway's periods to settle the caller's `rows`, then checks the
/// escrow fell by exactly what the ledger charged, and each charge is the owner's price, the
/// compute and the platform fee for its rows.
fn check_settlement(profile: &str, caller: &Path, before: aic_ledger::Amount, rows: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let history = aic(&[
            "wallet",
            "history",
            "--profile",
            profile,
            "--wallet",
            caller.to_str().unwrap(),
            "--json",
        ]);
        let history: Vec<Value> = serde_json::from_slice(&history.stdout).unwrap();
        let charges: Vec<&Value> = history
            .iter()
            .filter_map(|entry| entry["event"].get("InferenceCharged"))
            .collect();
        let charged_rows: u64 = charges.iter().map(|c| c["rows"].as_u64().unwrap()).sum();
        // Earlier calls of this run (none before this check) would show here too.
        if charged_rows >= rows {
            assert_eq!(charged_rows, rows, "every served row charged once: {charges:?}");
            let total: u128 = charges
                .iter()
                .map(|c| {
                    c["amount"]
                        .as_str()
                        .unwrap()
                        .parse::<aic_ledger::Amount>()
                        .unwrap()
                        .0
                })
                .sum();
            let after = escrow(profile, caller);
            assert_eq!(
                before.0 - after.0,
                total,
                "the escrow paid exactly what was charged"
            );
            let per_1k = |aic: &str| aic.parse::<aic_ledger::Amount>().unwrap().0;
            for charge in &charges {
                assert!(
                    charge["model"]
                        .as_str()
                        .is_some_and(|m| m.parse::<aic_protocol::AssetId>().is_ok()),
                    "an asset id is hex text in JSON: {charge}"
                );
                let n = u128::from(charge["rows"].as_u64().unwrap());
                // One node served each line here; every term rounds down on its own.
                let expected =
                    per_1k("0.1") * n / 1000 + per_1k("0.01") * n / 1000 + per_1k("0.001") * n / 1000;
                let amount = charge["amount"]
                    .as_str()
                    .unwrap()
                    .parse::<aic_ledger::Amount>()
                    .unwrap()
                    .0;
                assert!(
                    amount <= expected && amount + 3 >= expected,
                    "{charge}: {amount} base units for {n} rows, {expected} expected"
                );
            }
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{charged_rows} of {rows} rows settled after 60 s"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// onnxruntime's answers for `rows`, from the TrainedModel exported by its owner.
fn onnxruntime_answers(
    data_dir: &Path,
    status: &Value,
    header: &[String],
    rows: &[Vec<String>],
) -> Vec<Value> {
    let profile = status["profile"].as_str().unwrap();
    let asset = status["gateway"]["asset"].as_str().unwrap();
    let file = data_dir.join("served.onnx");
    let exported = aic(&[
        "model",
        "export",
        asset,
        "--format",
        "onnx",
        "--out",
        file.to_str().unwrap(),
        "--profile",
        profile,
        "--wallet",
        data_dir.join("wallets/user.key").to_str().unwrap(),
    ]);
    assert!(exported.status.success(), "{}", stderr(&exported));
    let csv = data_dir.join("served-rows.csv");
    let mut text = header.join(",") + "\n";
    for row in rows {
        text += &(row.join(",") + "\n");
    }
    std::fs::write(&csv, text).unwrap();
    let runtime = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../ops/onnx-predict.py"))
        .arg(&file)
        .arg(&csv)
        .output()
        .expect("python3 runs (ops/install-test-deps.sh installs onnx and onnxruntime)");
    assert!(
        runtime.status.success(),
        "{}",
        String::from_utf8_lossy(&runtime.stderr)
    );
    String::from_utf8(runtime.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Rows of the call the devnet's drill kills a node on (`--kill-compute-on-inference-rows`);
/// every other call here is smaller.
pub const DRILL_ROWS: usize = 40;

/// The gateway against a devnet (one process per service) whose compute-3 corrupts every
/// output: its verification outvotes compute-3 (`check_a_lying_node_is_outvoted`); then an
/// honest node dies holding a call's batch and the call is answered by the other; every row
/// served is charged once.
pub fn check_a_lying_node_and_a_dead_one(status: &Value, data_dir: &Path) {
    let profile = status["profile"].as_str().unwrap();
    let caller = data_dir.join("wallets/caller.key");
    let before = escrow(profile, &caller);
    let mut rows = check_a_lying_node_is_outvoted(status, data_dir);
    rows += check_a_node_dying_mid_batch_loses_no_call(status, data_dir);
    check_settlement(profile, &caller, before, rows);
}

/// compute-3 is passed over by now. A call of [`DRILL_ROWS`] rows goes to compute-1 or
/// compute-2, whichever the gateway places it on; that node exits holding the batch (the drill
/// claims one node: the first handed such a batch). The gateway sends the batch to the other
/// node when the first does not answer: the call is answered, as are ten more. Answers the rows
/// served.
fn check_a_node_dying_mid_batch_loses_no_call(status: &Value, data_dir: &Path) -> u64 {
    let gateway = Gateway::new(status);
    let model = status["gateway"]["model"].as_str().unwrap();
    let metrics = gateway_metrics(status);
    let rescued = || {
        let page = http_get(&metrics, "/metrics").1;
        sample(&page, "aic_gateway_batch_hedges_total", "")
            + sample(&page, "aic_gateway_batch_retries_total", "")
    };
    let claim = data_dir.join("drill-inference-exit");
    assert!(!claim.exists(), "no node has died yet");
    let rescued_before = rescued();

    let (header, rows) = digits(data_dir, DRILL_ROWS);
    let (code, answer) = gateway.infer(model, &column_request(&header, &rows));
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["outputs"][0]["shape"][0], DRILL_ROWS, "{answer}");
    assert!(claim.exists(), "the node handed the batch died holding it");
    assert!(
        rescued() > rescued_before,
        "the batch was hedged or retried on another node"
    );
    let mut served = DRILL_ROWS as u64;
    let (header, rows) = digits(data_dir, 5);
    let request = column_request(&header, &rows);
    for call in 0..10 {
        let (code, answer) = gateway.infer(model, &request);
        assert_eq!(code, 200, "call {call} after the death: {answer}");
        served += 5;
    }
    served
}

/// The gateway's metrics address.
fn gateway_metrics(status: &Value) -> String {
    let url = status["metrics"]["gateway-1"].as_str().unwrap();
    url.trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_string()
}

/// Calls succeed, the batches are re-run on other nodes, compute-3 is outvoted by the two honest
/// ones, the scheduler's rater records a `wrong_inference_outputs` penalty against it (and
/// against no honest node), and later calls are answered by honest nodes only. Answers the rows
/// served.
fn check_a_lying_node_is_outvoted(status: &Value, data_dir: &Path) -> u64 {
    let gateway = Gateway::new(status);
    let profile = status["profile"].as_str().unwrap();
    let model = status["gateway"]["model"].as_str().unwrap();
    let (header, rows) = digits(data_dir, 5);
    let request = column_request(&header, &rows);
    let addr = gateway_metrics(status);
    let outvoted = || {
        sample(
            &http_get(&addr, "/metrics").1,
            "aic_gateway_verifications_total",
            "verdict=\"outvoted\"",
        )
    };
    // Each call's batch is verified (a faulty devnet checks them all) by randomly drawn nodes.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut calls: u64 = 0;
    while outvoted() < 1.0 {
        assert!(
            Instant::now() < deadline,
            "compute-3 was not outvoted after {calls} calls"
        );
        let (code, answer) = gateway.infer(model, &request);
        assert_eq!(code, 200, "{answer}");
        calls += 1;
    }
    // The gateway counts a verdict only once the scheduler's rater has it.
    let nodes = aic(&["nodes", "--json", "--profile", profile]);
    let nodes: Vec<Value> = serde_json::from_slice(&nodes.stdout).unwrap();
    let names: Vec<&str> = nodes
        .iter()
        .filter(|n| {
            n["penalties"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p["reason"] == "wrong_inference_outputs"))
        })
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["compute-3"], "only the lying node is penalised");
    // Its stake pays, as for a wrong training result: the devnet slashes 10 AIC a fault, from a
    // stake of 50 (verifications already under way may outvote it more than once).
    let penalties = nodes
        .iter()
        .flat_map(|n| n["penalties"].as_array().cloned().unwrap_or_default())
        .filter(|p| p["reason"] == "wrong_inference_outputs")
        .collect::<Vec<_>>();
    assert_eq!(penalties[0]["slashed"], "10", "{penalties:?}");
    // Passed over from now on: honest nodes answer alike.
    let answers: Vec<Value> = (0..6)
        .map(|_| gateway.infer(model, &request).1["outputs"][0]["data"].clone())
        .collect();
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    (calls + 6) * 5
}
