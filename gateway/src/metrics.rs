//! The gateway's metrics: requests by model and status code, latency, batch sizes, queue depth,
//! retries on another node, rows served, AIC charged, settlements by outcome and the compute
//! nodes it can use.

use aic_protocol::metrics::registered;
use prometheus::{
    CounterVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

#[derive(Clone)]
pub struct GatewayMetrics {
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub rows: IntCounterVec,
    pub charged: CounterVec,
    pub batch_rows: Histogram,
    pub queue_depth: IntGauge,
    pub retries: IntCounter,
    pub hedges: IntCounter,
    pub settlements: IntCounterVec,
    pub compute_nodes: IntGauge,
    pub verifications: IntCounterVec,
}

/// Every settlement outcome, so each series exists from the start.
pub const SETTLEMENT_OUTCOMES: [&str; 4] = ["settled", "already_settled", "refused", "retried"];

/// Every verification verdict: the second node agreed; a node was outvoted by two others; no
/// majority (or no other node to ask).
pub const VERDICTS: [&str; 3] = ["agreed", "outvoted", "inconclusive"];

/// The `model` label of calls that named no published model; its refusals' series exist from
/// the start, so an error-rate alert sees them.
pub const UNKNOWN_MODEL: &str = "unknown";

/// The `model` label of a model published without an alias (its asset id would make the label
/// unbounded).
pub const UNALIASED_MODEL: &str = "unaliased";

/// Status codes a call may end with.
pub const STATUS_CODES: [&str; 11] = [
    "200", "400", "401", "402", "403", "404", "413", "429", "500", "502", "503",
];

impl GatewayMetrics {
    pub fn register(registry: &Registry) -> aic_protocol::Result<Self> {
        let metrics = GatewayMetrics {
            requests: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "aic_gateway_requests_total",
                        "Inference requests, by model and status code",
                    ),
                    &["model", "code"],
                )?,
            )?,
            request_duration: registered(
                registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "aic_gateway_request_duration_seconds",
                        "Time from an inference request's arrival to its answer, by model",
                    )
                    .buckets(prometheus::exponential_buckets(0.0002, 2.0, 16)?),
                    &["model"],
                )?,
            )?,
            rows: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "aic_gateway_rows_total",
                        "Rows served (metered for settlement), by model",
                    ),
                    &["model"],
                )?,
            )?,
            charged: registered(
                registry,
                CounterVec::new(
                    Opts::new(
                        "aic_gateway_charged_aic_total",
                        "AIC charged to callers' escrow as checked per call (settled per period), by model",
                    ),
                    &["model"],
                )?,
            )?,
            batch_rows: registered(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new("aic_gateway_batch_rows", "Rows per batch sent to a compute node")
                        .buckets(prometheus::exponential_buckets(1.0, 2.0, 14)?),
                )?,
            )?,
            queue_depth: registered(
                registry,
                IntGauge::new("aic_gateway_queue_depth", "Calls waiting to join a batch")?,
            )?,
            retries: registered(
                registry,
                IntCounter::new(
                    "aic_gateway_batch_retries_total",
                    "Batches a compute node failed, sent to another node",
                )?,
            )?,
            hedges: registered(
                registry,
                IntCounter::new(
                    "aic_gateway_batch_hedges_total",
                    "Batches sent to a second compute node because the first had not answered by the hedge delay",
                )?,
            )?,
            settlements: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "aic_gateway_settlements_total",
                        "Settlement transactions, by outcome",
                    ),
                    &["outcome"],
                )?,
            )?,
            compute_nodes: registered(
                registry,
                IntGauge::new(
                    "aic_gateway_compute_nodes",
                    "Live compute nodes the gateway may use",
                )?,
            )?,
            verifications: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "aic_gateway_verifications_total",
                        "Batches re-run on other nodes to check a node's outputs, by verdict",
                    ),
                    &["verdict"],
                )?,
            )?,
        };
        for verdict in VERDICTS {
            metrics.verifications.with_label_values(&[verdict]);
        }
        for outcome in SETTLEMENT_OUTCOMES {
            metrics.settlements.with_label_values(&[outcome]);
        }
        for code in &STATUS_CODES[1..] {
            metrics.requests.with_label_values(&[UNKNOWN_MODEL, code]);
        }
        metrics.request_duration.with_label_values(&[UNKNOWN_MODEL]);
        metrics.rows.with_label_values(&[UNKNOWN_MODEL]);
        metrics.charged.with_label_values(&[UNKNOWN_MODEL]);
        Ok(metrics)
    }
}
