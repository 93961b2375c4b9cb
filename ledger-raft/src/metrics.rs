//! The ledger's metrics, recorded by the state machine and the replica: Raft, blocks,
//! transactions, and the economy read from the applied state (supply, burned, issued, fees,
//! escrowed, staked, slashed), in whole AIC as floating point for dashboards.

use aic_protocol::metrics::registered;
use prometheus::{
    Counter, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

use crate::amount::Amount;
use crate::state::{Event, LedgerState};

#[derive(Clone)]
pub struct LedgerMetrics {
    pub raft_term: IntGauge,
    pub is_leader: IntGauge,
    pub leader_changes: IntCounter,
    pub applied_index: IntGauge,
    pub commit_latency: Histogram,
    /// Transactions per batch entry the leader proposed (group commit).
    pub batch_transactions: Histogram,
    pub transactions: IntCounterVec,
    /// Encoded bytes of the transactions applied (what each kind costs every replica's log).
    pub transaction_bytes: IntCounterVec,
    pub blocks_sealed: IntCounter,
    pub block_height: IntGauge,
    pub invariant_violations: IntCounter,
    pub last_block_timestamp: Gauge,
    pub pending_transactions: IntGauge,
    pub supply: Gauge,
    pub burned: Gauge,
    pub issued: Gauge,
    pub fees: Gauge,
    pub escrowed: Gauge,
    pub escrows_open: IntGauge,
    pub staked: Gauge,
    pub slashed: Counter,
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
                        "Time from submitting a command to its commit and application (a transaction: including its wait for a batch)",
                    )
                    .buckets(prometheus::exponential_buckets(0.0005, 2.0, 14)?),
                )?,
            )?,
            batch_transactions: registered(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "aic_ledger_batch_transactions",
                        "Transactions in each batch entry the leader proposed (group commit)",
                    )
                    .buckets(prometheus::exponential_buckets(1.0, 2.0, 11)?),
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
            transaction_bytes: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "aic_ledger_transaction_bytes_total",
                        "Encoded bytes of the transactions applied, by kind: what each kind costs \
                         every replica's log",
                    ),
                    &["kind"],
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
            last_block_timestamp: registered(
                registry,
                Gauge::new(
                    "aic_ledger_last_block_timestamp_seconds",
                    "Timestamp of the chain head (Unix seconds), as the block states it",
                )?,
            )?,
            pending_transactions: registered(
                registry,
                IntGauge::new(
                    "aic_ledger_pending_transactions",
                    "Applied transactions waiting for the next block",
                )?,
            )?,
            supply: registered(
                registry,
                Gauge::new(
                    "aic_ledger_supply_aic",
                    "Total supply: genesis accounts plus issued less burned",
                )?,
            )?,
            burned: registered(
                registry,
                Gauge::new(
                    "aic_ledger_burned_aic",
                    "AIC burned so far (platform fees, slashes, unsold fundraiser share)",
                )?,
            )?,
            issued: registered(
                registry,
                Gauge::new(
                    "aic_ledger_issued_aic",
                    "AIC issued from the reserve so far (Proof-of-Value rewards)",
                )?,
            )?,
            fees: registered(
                registry,
                Gauge::new(
                    "aic_ledger_fees_aic",
                    "Fees paid through escrow so far (platform and usage fees)",
                )?,
            )?,
            escrowed: registered(
                registry,
                Gauge::new("aic_ledger_escrowed_aic", "AIC held in open job escrows")?,
            )?,
            escrows_open: registered(
                registry,
                IntGauge::new("aic_ledger_escrows_open", "Job escrows not yet settled")?,
            )?,
            staked: registered(
                registry,
                Gauge::new("aic_ledger_staked_aic", "AIC staked by providers")?,
            )?,
            slashed: registered(
                registry,
                Counter::new(
                    "aic_ledger_slashed_aic_total",
                    "AIC slashed from providers' stakes, as this replica applied it",
                )?,
            )?,
        })
    }

    /// Publishes the economy and the chain head of `state` (after each batch it applies).
    pub fn record_state(&self, state: &LedgerState) {
        self.record_head(state);
        self.record_held(state);
    }

    /// The gauges that cost nothing to read: height, pending, supply, burned, issued, fees.
    pub fn record_head(&self, state: &LedgerState) {
        self.block_height.set(state.height() as i64);
        if let Some(head) = state.blocks.last() {
            self.last_block_timestamp.set(head.timestamp_ms as f64 / 1000.0);
        }
        self.pending_transactions.set(state.pending.len() as i64);
        self.supply.set(state.total_supply().as_aic_f64());
        self.burned.set(state.burned.as_aic_f64());
        self.issued.set(state.issued.as_aic_f64());
        self.fees.set(state.cumulative_fees.as_aic_f64());
    }

    /// What escrows and stakes hold: sums over every escrow and account, so recounted only
    /// after entries whose events can move them (not after plain transfers and approvals).
    pub fn record_held(&self, state: &LedgerState) {
        // Both sums are parts of the supply (audited), so they cannot overflow; checked anyway.
        let escrowed = total(state.escrows.values().map(|e| e.remaining));
        self.escrowed.set(escrowed.as_aic_f64());
        self.escrows_open.set(state.escrows.len() as i64);
        let staked = total(state.accounts.values().map(|a| a.stake));
        self.staked.set(staked.as_aic_f64());
    }

    /// Counts what an applied transaction's events move (slashes).
    pub fn record_events(&self, events: &[Event]) {
        for event in events {
            if let Event::Slashed { amount, .. } = event {
                self.slashed.inc_by(amount.as_aic_f64());
            }
        }
    }

    /// Metrics in a private registry, for tests and benches.
    pub fn unregistered() -> Self {
        Self::register(&Registry::new()).expect("fresh registry")
    }
}

/// Sum of amounts that are parts of the supply.
fn total(mut amounts: impl Iterator<Item = Amount>) -> Amount {
    amounts
        .try_fold(Amount::ZERO, Amount::checked_add)
        .expect("parts of the supply sum within the supply (audited)")
}
