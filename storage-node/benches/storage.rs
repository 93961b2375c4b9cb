//! Storage benchmark, measured in one run:
//! 1. Import of a generated CSV of at least `AIC_BENCH_IMPORT_MB` MiB (default 1024): rows/s and
//!    MB/s, beside a plain arrow-csv parse of the same file (the floor any import pays).
//! 2. Shard serving over loopback QUIC with mutual TLS (GetShard, ticket checked, shard opened and
//!    hash-checked), as a compute node fetches a task's shards (a few in flight) and one at a
//!    time, beside reading and opening the same shards straight from the local store, one at a
//!    time and on every core.
//!
//! ```text
//! cargo bench -p aic-storage-node --bench storage
//! AIC_BENCH_IMPORT_MB=256 cargo bench -p aic-storage-node --bench storage
//! ```

use std::io::{BufWriter, Write};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use aic_protocol::certs::{CertificateAuthority, Identity, Validity};
use aic_protocol::node_agent::SchedulerLink;
use aic_protocol::rpc::RpcClient;
use aic_protocol::service::{BoundSockets, EndpointSettings};
use aic_protocol::ticket::ShardTicket;
use aic_protocol::transport::{self, TransportTuning};
use aic_protocol::{JobId, NodeId, Role, ShardId};
use aic_storage_node::catalog::Catalog;
use aic_storage_node::import::{import_file, read_shard, ImportOptions};
use aic_storage_node::shard_fetch::{fetch_shard, fetch_shards, SHARDS_IN_FLIGHT};
use aic_storage_node::shard_store::ShardStore;
use aic_storage_node::StorageConfig;
use ed25519_dalek::SigningKey;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

const FEATURES: usize = 32;
const SERVED_SHARDS: usize = 200;

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// Writes rows of `FEATURES` decimals and a label until the file holds `target` bytes.
fn generate(path: &std::path::Path, target: u64) -> (u64, u64) {
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let header: Vec<String> = (0..FEATURES)
        .map(|f| format!("f{f}"))
        .chain(["label".to_string()])
        .collect();
    writeln!(out, "{}", header.join(",")).unwrap();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let (mut rows, mut bytes) = (0u64, 0u64);
    let mut line = String::with_capacity(512);
    while bytes < target {
        line.clear();
        for _ in 0..FEATURES {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            line.push_str(&format!("{:.5},", (state % 2_000_000) as f64 / 1_000_000.0 - 1.0));
        }
        line.push_str(&format!("{}\n", state % 10));
        out.write_all(line.as_bytes()).unwrap();
        bytes += line.len() as u64;
        rows += 1;
    }
    out.flush().unwrap();
    (rows, bytes)
}

fn plain_parse(path: &std::path::Path) -> u64 {
    let file = std::fs::File::open(path).unwrap();
    let format = arrow_csv::reader::Format::default().with_header(true);
    let (schema, _) = format
        .infer_schema(std::fs::File::open(path).unwrap(), Some(10_000))
        .unwrap();
    let reader = arrow_csv::ReaderBuilder::new(Arc::new(schema))
        .with_header(true)
        .with_batch_size(8192)
        .build(std::io::BufReader::new(file))
        .unwrap();
    reader.map(|b| b.unwrap().num_rows() as u64).sum()
}

fn main() {
    aic_protocol::install_crypto_provider();
    let target_mb: u64 = std::env::var("AIC_BENCH_IMPORT_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("generated.csv");
        let (rows, bytes) = generate(&csv, target_mb * 1024 * 1024);
        println!(
            "AIC storage benchmark\n\nimport of a generated CSV: {rows} rows × {FEATURES} features, {:.0} MB",
            mb(bytes)
        );

        let started = Instant::now();
        let parsed = plain_parse(&csv);
        let parse_secs = started.elapsed().as_secs_f64();
        assert_eq!(parsed, rows);

        let store = ShardStore::local(&dir.path().join("node/shards")).unwrap();
        let started = Instant::now();
        let (manifest, key) = import_file(&csv, "generated", &ImportOptions::new("label"), &store)
            .await
            .unwrap();
        let import_secs = started.elapsed().as_secs_f64();
        std::fs::remove_file(&csv).unwrap();
        println!(
            "  import (2 passes, standardise, split, Parquet LZ4, seal, store): {:>9.0} rows/s {:>7.1} MB/s",
            rows as f64 / import_secs,
            mb(bytes) / import_secs
        );
        println!(
            "  baseline: one arrow-csv parse of the file:                       {:>9.0} rows/s {:>7.1} MB/s",
            rows as f64 / parse_secs,
            mb(bytes) / parse_secs
        );
        println!("  ratio import/parse: {:.2}×", parse_secs / import_secs);

        // Serving: a storage node on loopback, a compute client with a valid ticket.
        let dataset = Catalog::open(&dir.path().join("node/datasets"))
            .unwrap()
            .add(manifest.clone(), key.clone(), None)
            .unwrap();
        let ca = CertificateAuthority::generate("bench").unwrap();
        ca.save(dir.path()).unwrap();
        let tls = ca
            .issue(Role::Storage, "storage", &[], Validity::default())
            .unwrap()
            .save(dir.path(), "storage")
            .unwrap();
        let scheduler = SigningKey::from_bytes(&[3u8; 32]);
        let mut config = StorageConfig {
            endpoint: EndpointSettings {
                tls,
                ..EndpointSettings::with_ports(0, 0)
            },
            scheduler: SchedulerLink {
                addr: "127.0.0.1:9".into(),
                replicas: Vec::new(),
            },
            ..Default::default()
        };
        config.storage.data_dir = dir.path().join("node");
        config.storage.trusted_schedulers =
            vec![NodeId::from_public_key(&scheduler.verifying_key().to_bytes()).to_string()];
        let shutdown = CancellationToken::new();
        let node = aic_storage_node::start(
            config,
            BoundSockets::loopback_ephemeral().unwrap(),
            shutdown.clone(),
        )
        .unwrap();
        let identity = Identity::from_issued(
            &ca,
            &ca.issue(Role::Compute, "compute", &[], Validity::default())
                .unwrap(),
        )
        .unwrap();
        let tuning = TransportTuning::default();
        let endpoint = transport::endpoint(
            transport::bind_udp("127.0.0.1:0".parse().unwrap(), &tuning).unwrap(),
            &identity,
            &tuning,
        )
        .unwrap();
        let client = RpcClient::connect(&endpoint, &node.quic_addr.to_string(), Role::Storage)
            .await
            .unwrap();
        let expires_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64 + 600_000;
        let ticket = ShardTicket {
            job: JobId::random(),
            node: identity.me.node_id,
            dataset: dataset.clone(),
            expires_ms,
        }
        .sign(&scheduler);
        let shards: Vec<ShardId> = manifest
            .train
            .iter()
            .take(SERVED_SHARDS)
            .map(|s| s.id.parse().unwrap())
            .collect();

        // Every way ends with the same record batches in memory; MB/s counts the shards'
        // Parquet bytes.
        let shard_bytes: u64 = manifest.train.iter().take(SERVED_SHARDS).map(|s| s.bytes).sum();
        let rows_of = |shards: &[Vec<arrow_array::RecordBatch>]| -> usize {
            shards.iter().flatten().map(|b| b.num_rows()).sum()
        };

        // One untimed read first, so that every way below finds the shards in the page cache.
        for shard in &shards {
            read_shard(&store, &key, shard).await.unwrap();
        }
        let started = Instant::now();
        let mut local = Vec::with_capacity(shards.len());
        for shard in &shards {
            local.push(read_shard(&store, &key, shard).await.unwrap());
        }
        let local_secs = started.elapsed().as_secs_f64();
        let local_rows = rows_of(&local);

        // The same reads on both cores: decoding is CPU work, so a local reader could use them.
        let started = Instant::now();
        let local_parallel: Vec<_> = futures::stream::iter(shards.clone())
            .map(|shard| {
                let (store, key) = (store.clone(), key.clone());
                async move {
                    tokio::spawn(async move { read_shard(&store, &key, &shard).await.unwrap() })
                        .await
                        .unwrap()
                }
            })
            .buffered(SHARDS_IN_FLIGHT)
            .collect()
            .await;
        let local_parallel_secs = started.elapsed().as_secs_f64();
        assert_eq!(rows_of(&local_parallel), local_rows);

        let started = Instant::now();
        let mut sequential = Vec::with_capacity(shards.len());
        for shard in &shards {
            sequential.push(fetch_shard(&client, &dataset, shard, &ticket).await.unwrap());
        }
        let sequential_secs = started.elapsed().as_secs_f64();
        assert_eq!(rows_of(&sequential), local_rows);

        // What a compute node does with a task's shards.
        let started = Instant::now();
        let pipelined = fetch_shards(&client, &dataset, &shards, &ticket).await.unwrap();
        let pipelined_secs = started.elapsed().as_secs_f64();
        assert_eq!(rows_of(&pipelined), local_rows);

        println!(
            "\nshard serving, {} shards, {:.1} MB of Parquet, {local_rows} rows",
            shards.len(),
            mb(shard_bytes)
        );
        let rate = |secs: f64| mb(shard_bytes) / secs;
        println!(
            "  over loopback QUIC + mTLS, {SHARDS_IN_FLIGHT} shards in flight (fetch_shards):  {:>8.1} MB/s",
            rate(pipelined_secs)
        );
        println!(
            "  over loopback QUIC + mTLS, one shard at a time (fetch_shard):     {:>8.1} MB/s",
            rate(sequential_secs)
        );
        println!(
            "  baseline: local store read + open + Parquet decode, one at a time: {:>8.1} MB/s",
            rate(local_secs)
        );
        println!(
            "  local store read + open + Parquet decode on every core:           {:>8.1} MB/s",
            rate(local_parallel_secs)
        );
        println!(
            "  ratio served/local: {:.2}× ({SHARDS_IN_FLIGHT} in flight), {:.2}× (one at a time); \
             {:.2}× against the local read on every core",
            local_secs / pipelined_secs,
            local_secs / sequential_secs,
            local_parallel_secs / pipelined_secs
        );
        shutdown.cancel();
        node.stopped().await;
    });
}
