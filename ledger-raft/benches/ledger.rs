//! Ledger benchmark: signed transfers committed per second and commit latency on 3 durable
//! replicas over loopback QUIC, beside the same workload on 1 replica with an in-memory log and
//! no network, measured in the same run.
//!
//! ```text
//! cargo bench -p aic-ledger --bench ledger
//! AIC_BENCH_SENDERS=64 AIC_BENCH_TRANSFERS=40 cargo bench -p aic-ledger --bench ledger
//! ```
//!
//! Each of `AIC_BENCH_SENDERS` funded accounts submits `AIC_BENCH_TRANSFERS` transfers one after
//! another (its nonces in order), each once the one before committed; the senders run
//! concurrently, so the leader batches many transactions into each entry and each fsync. The
//! transfers are signed before the clock starts: signing is the clients' work, on their machines,
//! not the ledger's (it would share this machine's two cores with the replicas).
//!
//! Beside them, the same run measures what bounds any ledger on this machine. The CPU: strict
//! Ed25519 verification of `VERIFY_SAMPLES` transfers on every core (each transaction is verified
//! once). The disk: `FSYNC_SAMPLES` appends of 4 KiB, each followed by `fdatasync`, in the
//! cluster's directory; it prints the p99 commit latency over that fsync p99 (the goal: at most
//! 3×).

use std::sync::Arc;
use std::time::{Duration, Instant};

use aic_ledger::amount::Amount;
use aic_ledger::api::{LedgerRequest, LedgerResponse};
use aic_ledger::raft::replica::{LedgerReplica, ReplicaSettings};
use aic_ledger::testkit::{LedgerClient, TestCluster};
use aic_ledger::tx::{Call, Transaction};
use aic_ledger::{Keypair, SignedTransaction};

#[derive(Clone)]
enum Target {
    /// Straight into the replica: no network.
    Local(Arc<LedgerReplica>),
    /// Over QUIC with mutual TLS to the leader.
    Remote(LedgerClient),
}

impl Target {
    async fn submit(&self, signed: SignedTransaction) -> Result<(), String> {
        let request = LedgerRequest::Submit(Box::new(signed));
        let answer = match self {
            Target::Local(replica) => replica.execute(request).await,
            Target::Remote(client) => client.request(&request).await,
        };
        match answer {
            Ok(LedgerResponse::Submitted { result: Ok(_), .. }) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    }
}

struct Figures {
    per_second: f64,
    p50: Duration,
    p99: Duration,
    committed: usize,
}

fn signed(chain: &str, from: &Keypair, nonce: u64, call: Call) -> SignedTransaction {
    Transaction {
        chain_id: chain.to_string(),
        from: from.address(),
        nonce,
        call,
    }
    .sign(from)
}

const FSYNC_SAMPLES: usize = 200;
/// Signatures verified, on every core, to measure the bound verification alone sets.
const VERIFY_SAMPLES: usize = 4_000;

/// Strict verifications per second on every core of this machine: the one check each
/// transaction costs wherever it goes, so no ledger on this machine commits faster than this.
fn verification_bound(chain: &str) -> f64 {
    let key = Keypair::generate();
    let transactions: Vec<SignedTransaction> = (0..VERIFY_SAMPLES as u64)
        .map(|nonce| {
            let call = Call::Transfer {
                to: Keypair::generate().address(),
                amount: Amount::base_units(1),
            };
            signed(chain, &key, nonce, call)
        })
        .collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let started = Instant::now();
    let verified: usize = std::thread::scope(|scope| {
        let shares: Vec<_> = transactions
            .chunks(VERIFY_SAMPLES.div_ceil(cores))
            .map(|share| scope.spawn(move || share.iter().filter(|tx| tx.verify()).count()))
            .collect();
        shares.into_iter().map(|share| share.join().unwrap()).sum()
    });
    let elapsed = started.elapsed();
    assert_eq!(verified, VERIFY_SAMPLES, "every sample signature verifies");
    VERIFY_SAMPLES as f64 / elapsed.as_secs_f64()
}
/// Transfers of the one-sender run that measures latency without a queue.
const UNLOADED_TRANSFERS: usize = 300;

/// p50 and p99 of appending 4 KiB to a file in `dir` and `fdatasync`ing it, as the log does.
fn fsync_latency(dir: &std::path::Path) -> (Duration, Duration) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("fsync-probe"))
        .unwrap();
    let block = vec![7u8; 4096];
    let mut samples: Vec<Duration> = (0..FSYNC_SAMPLES)
        .map(|_| {
            let t = Instant::now();
            file.write_all(&block).unwrap();
            file.sync_data().unwrap();
            t.elapsed()
        })
        .collect();
    samples.sort();
    (samples[FSYNC_SAMPLES / 2], samples[FSYNC_SAMPLES * 99 / 100])
}

async fn workload(
    target: Target,
    chain: &str,
    fundraiser: &Keypair,
    fundraiser_nonce: u64,
    senders: usize,
    transfers: usize,
) -> Figures {
    let keys: Vec<Keypair> = (0..senders).map(|_| Keypair::generate()).collect();
    for (nonce, key) in keys.iter().enumerate() {
        let fund = Call::Transfer {
            to: key.address(),
            amount: Amount::aic(1_000_000).unwrap(),
        };
        target
            .submit(signed(chain, fundraiser, fundraiser_nonce + nonce as u64, fund))
            .await
            .expect("funding");
    }
    let signed_up_front: Vec<Vec<SignedTransaction>> = keys
        .iter()
        .map(|key| {
            (0..transfers as u64)
                .map(|nonce| {
                    let call = Call::Transfer {
                        to: Keypair::generate().address(),
                        amount: Amount::base_units(1),
                    };
                    signed(chain, key, nonce, call)
                })
                .collect()
        })
        .collect();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for transactions in signed_up_front {
        let target = target.clone();
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(transactions.len());
            for tx in transactions {
                let t = Instant::now();
                target.submit(tx).await.expect("a committed transfer");
                latencies.push(t.elapsed());
            }
            latencies
        });
    }
    let mut latencies = Vec::new();
    while let Some(done) = tasks.join_next().await {
        latencies.extend(done.expect("a sender task"));
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Figures {
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.5),
        p99: at(0.99),
        committed: latencies.len(),
    }
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let senders = env("AIC_BENCH_SENDERS", 256);
    let transfers = env("AIC_BENCH_TRANSFERS", 40);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();

        let mut baseline = TestCluster::new(&dir.path().join("baseline"), 1);
        baseline.settings = Box::new(|dir, genesis| {
            let mut settings = ReplicaSettings::new(dir, genesis);
            settings.volatile_log = true;
            settings
        });
        baseline.start(0).await;
        let replica = baseline.replica(0).clone();
        replica.bootstrap().await.unwrap();
        aic_ledger::testkit::wait_for(|| replica.is_leader()).await;
        let chain = baseline.genesis.chain_id.clone();
        let base = workload(
            Target::Local(replica),
            &chain,
            &baseline.keys.fundraiser,
            0,
            senders,
            transfers,
        )
        .await;

        let verify_bound = verification_bound(&chain);
        let (fsync_p50, fsync_p99) = fsync_latency(dir.path());
        let mut cluster = TestCluster::new(&dir.path().join("cluster"), 3);
        cluster.settings = Box::new(ReplicaSettings::new);
        cluster.start_all().await;
        let leader = cluster.leader_index().expect("a leader");
        let client = cluster.client(leader).await;
        let chain = cluster.genesis.chain_id.clone();
        let replicated = workload(
            Target::Remote(client.clone()),
            &chain,
            &cluster.keys.fundraiser,
            0,
            senders,
            transfers,
        )
        .await;
        // One sender, one transfer at a time: the commit path's own latency, with no queue.
        let unloaded = workload(
            Target::Remote(client),
            &chain,
            &cluster.keys.fundraiser,
            senders as u64,
            1,
            UNLOADED_TRANSFERS,
        )
        .await;

        println!("AIC ledger benchmark: {senders} concurrent senders × {transfers} signed transfers each\n");
        println!(
            "  {:<44} {:>10} {:>10} {:>10} {:>7}",
            "", "tx/s", "p50 ms", "p99 ms", "n"
        );
        for (name, f) in [
            ("3 durable replicas, loopback QUIC + mTLS", &replicated),
            ("baseline: 1 replica, in-memory log, no net", &base),
            ("3 durable replicas, 1 sender (no queue)", &unloaded),
        ] {
            println!(
                "  {:<44} {:>10.0} {:>10.2} {:>10.2} {:>7}",
                name,
                f.per_second,
                f.p50.as_secs_f64() * 1e3,
                f.p99.as_secs_f64() * 1e3,
                f.committed
            );
        }
        println!(
            "  ratio replicated/baseline: throughput {:.2}×, p50 latency {:.2}×, p99 latency {:.2}×",
            replicated.per_second / base.per_second,
            replicated.p50.as_secs_f64() / base.p50.as_secs_f64(),
            replicated.p99.as_secs_f64() / base.p99.as_secs_f64()
        );
        println!(
            "  strict Ed25519 verification alone, on all cores: {verify_bound:.0}/s; replicated ÷ that bound {:.2}×",
            replicated.per_second / verify_bound
        );
        println!(
            "  fsync of a 4 KiB append in the same directory: p50 {:.2} ms, p99 {:.2} ms",
            fsync_p50.as_secs_f64() * 1e3,
            fsync_p99.as_secs_f64() * 1e3,
        );
        println!(
            "  p99 commit ÷ p99 fsync (goal ≤ 3×): {:.1}× at {senders} senders, {:.1}× with 1 sender",
            replicated.p99.as_secs_f64() / fsync_p99.as_secs_f64(),
            unloaded.p99.as_secs_f64() / fsync_p99.as_secs_f64()
        );
        for i in 0..3 {
            cluster.kill(i).await;
        }
        baseline.kill(0).await;
    });
}
