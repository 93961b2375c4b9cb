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
//! another (its nonces in order); the senders run concurrently, so the leader batches many
//! entries into each log append and each fsync.

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

async fn workload(
    target: Target,
    chain: &str,
    fundraiser: &Keypair,
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
            .submit(signed(chain, fundraiser, nonce as u64, fund))
            .await
            .expect("funding");
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for key in keys {
        let target = target.clone();
        let chain = chain.to_string();
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(transfers);
            for nonce in 0..transfers as u64 {
                let call = Call::Transfer {
                    to: Keypair::generate().address(),
                    amount: Amount::base_units(1),
                };
                let tx = signed(&chain, &key, nonce, call);
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
    let senders = env("AIC_BENCH_SENDERS", 32);
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
            senders,
            transfers,
        )
        .await;

        let mut cluster = TestCluster::new(&dir.path().join("cluster"), 3);
        cluster.settings = Box::new(ReplicaSettings::new);
        cluster.start_all().await;
        let leader = cluster.leader_index().expect("a leader");
        let client = cluster.client(leader).await;
        let chain = cluster.genesis.chain_id.clone();
        let replicated = workload(
            Target::Remote(client),
            &chain,
            &cluster.keys.fundraiser,
            senders,
            transfers,
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
        for i in 0..3 {
            cluster.kill(i).await;
        }
        baseline.kill(0).await;
    });
}
