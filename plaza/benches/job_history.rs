//! The job history page at scale: the ledger's job log holding 10,000 jobs against one holding
//! 100, measured in the same run. Each sample reads the newest page and the oldest page from the
//! log (what a replica does for `LedgerRequest::JobLog`) and renders the page's HTML (what the
//! console does), so the ratio says whether the page's cost grows with the history.
//!
//! `cargo bench -p aic-plaza --bench job_history`

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aic_ledger::genesis::{Genesis, Holders};
use aic_ledger::state::JobLogFilter;
use aic_ledger::tx::{Call, Transaction};
use aic_ledger::{Amount, Keypair, LedgerState};
use aic_plaza::jobs::{job_rows, JobsPage, JOBS_PER_PAGE};
use aic_protocol::{AssetId, JobId, NodeId};
use askama::Template;

const SAMPLES: usize = 200;

fn send(state: &mut LedgerState, key: &Keypair, call: Call) {
    let nonce = state.account(&key.address()).nonce;
    let signed = Transaction {
        chain_id: "aic-bench".into(),
        from: key.address(),
        nonce,
        call,
    }
    .sign(key);
    state.apply_transaction(&signed).expect("applies");
}

/// A ledger whose log holds `jobs` jobs, each escrowed by one of ten payers and recorded.
fn ledger_with(jobs: usize) -> LedgerState {
    let system = Keypair::generate();
    let fundraiser = Keypair::generate();
    let holders = Holders {
        fundraiser: fundraiser.address(),
        advisors: Keypair::generate().address(),
        company: Keypair::generate().address(),
        team: Keypair::generate().address(),
        operations: Keypair::generate().address(),
    };
    let mut state =
        LedgerState::from_genesis(Genesis::local("aic-bench", 1_000_000, holders, system.address()));
    let payers: Vec<Keypair> = (0..10).map(|_| Keypair::generate()).collect();
    for payer in &payers {
        send(
            &mut state,
            &fundraiser,
            Call::Transfer {
                to: payer.address(),
                amount: Amount::aic(10_000).unwrap(),
            },
        );
    }
    let (dataset, model) = (AssetId::from_bytes([1; 16]), AssetId::from_bytes([2; 16]));
    for i in 0..jobs {
        let job = JobId::random();
        send(
            &mut state,
            &payers[i % payers.len()],
            Call::OpenEscrow {
                job,
                amount: Amount::aic(1).unwrap(),
            },
        );
        send(
            &mut state,
            &system,
            Call::RecordJob {
                job,
                runner: NodeId::from_public_key(b"scheduler-1"),
                dataset,
                model,
                request: vec![1],
            },
        );
    }
    assert_eq!(state.job_log.len(), jobs);
    state
}

/// The median time to read the newest and the oldest page and render them.
fn measure(state: &LedgerState) -> Duration {
    let names: HashMap<AssetId, String> = [
        (AssetId::from_bytes([1; 16]), "digits".to_string()),
        (AssetId::from_bytes([2; 16]), "digits-mlp".to_string()),
    ]
    .into();
    let oldest_cursor = Some(JOBS_PER_PAGE as u64);
    let mut times = Vec::with_capacity(SAMPLES);
    let mut bytes = 0;
    for _ in 0..SAMPLES {
        let started = Instant::now();
        for before in [None, oldest_cursor] {
            let entries = state.job_log.page(JobLogFilter::All, before, JOBS_PER_PAGE);
            let page = JobsPage {
                title: "Jobs",
                problems: Vec::new(),
                rows: job_rows(&entries, &names),
                total: state.job_log.len() as u64,
                mine: false,
                has_wallet: true,
                older: None,
                asset: None,
            };
            bytes = page.render().expect("renders").len();
        }
        times.push(started.elapsed());
    }
    assert!(bytes > 10_000, "a page of {JOBS_PER_PAGE} rows");
    times.sort();
    times[SAMPLES / 2]
}

fn main() {
    let small = ledger_with(100);
    let large = ledger_with(10_000);
    let baseline = measure(&small);
    let at_scale = measure(&large);
    println!(
        "job history, newest and oldest page of {JOBS_PER_PAGE} rows read from the log and rendered (median of {SAMPLES}):"
    );
    println!("  100 jobs:    {:>8.3} ms", baseline.as_secs_f64() * 1e3);
    println!("  10,000 jobs: {:>8.3} ms", at_scale.as_secs_f64() * 1e3);
    println!(
        "  ratio 10,000 / 100 jobs: {:.2}× (1× is a page whose cost does not grow with the history)",
        at_scale.as_secs_f64() / baseline.as_secs_f64()
    );
}
