//! The ledger's metrics, recorded by the state machine and the replica.

use aic_protocol::metrics::registered;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Clone)]
pub struct LedgerMetrics {
    pub raft_term: IntGauge,
    pub is_leader: IntGauge,
    pub leader_changes: IntCounter,
    pub applied_index: IntGauge,
    pub commit_latency: Histogram,
    pub transactions: IntCounterVec,
    pub blocks_sealed: IntCounter,
    pub block_height: IntGauge,
    pub invariant_violations: IntCounter,
}

impl LedgerMetrics {
    pub fn register(registry: &Registry) -> aic_protocol::Result<Self> {
        Ok(LedgerMetrics {
            raft_term: registered(
                registry,
                IntGauge::new("aic_ledger_raft_term", "Current Raft term")?,
            )?,
            is_leader: registered(
                registry,
                IntGauge::new("aic_ledger_is_leader", "1 on the Raft leader")?,
            )?,
            leader_changes: registered(
                registry,
                IntCounter::new(
                    "aic_ledger_leader_changes_total",
                    "Times this replica saw the leader change",
                )?,
            )?,
            applied_index: registered(
                registry,
                IntGauge::new("aic_ledger_applied_index", "Index of the last log entry applied")?,
            )?,
            commit_latency: registered(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "aic_ledger_commit_latency_seconds",
                        "Time from proposing a command to its commit and application",
                    )
                    .buckets(prometheus::exponential_buckets(0.0005, 2.0, 14)?),
                )?,
            )?,
            transactions: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "aic_ledger_transactions_total",
                        "Transactions applied, by kind and result",
                    ),
                    &["kind", "result"],
                )?,
            )?,
            blocks_sealed: registered(
                registry,
                IntCounter::new("aic_ledger_blocks_sealed_total", "Blocks appended to the chain")?,
            )?,
            block_height: registered(
                registry,
                IntGauge::new("aic_ledger_block_height", "Height of the chain head")?,
            )?,
            invariant_violations: registered(
                registry,
                IntCounter::new(
                    "aic_ledger_invariant_violations_total",
                    "Ledger invariant violations (any value above 0 stops the replica)",
                )?,
            )?,
        })
    }

    /// Metrics in a private registry, for tests and benches.
    pub fn unregistered() -> Self {
        Self::register(&Registry::new()).expect("fresh registry")
    }
}
