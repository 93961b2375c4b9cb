//! The storage node's own metrics: what it holds and what the scrubber found.

use aic_protocol::metrics::registered;
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::scrub::ScrubReport;

/// Every reason a shard request is refused.
pub const REJECTION_REASONS: [&str; 8] = [
    "ticket_expired",
    "ticket_wrong_node",
    "ticket_wrong_dataset",
    "ticket_untrusted",
    "ticket_forged",
    "unknown_dataset",
    "unknown_shard",
    "corrupt_shard",
];

#[derive(Clone)]
pub struct StorageMetrics {
    pub bytes_stored: IntGauge,
    pub shards: IntGaugeVec,
    pub scrubs: IntCounterVec,
    pub scrub_duration: Histogram,
    pub served_bytes: IntCounter,
    pub rejected: IntCounterVec,
}

impl StorageMetrics {
    pub fn register(registry: &Registry) -> aic_protocol::Result<Self> {
        let metrics = StorageMetrics {
            bytes_stored: registered(
                registry,
                IntGauge::new("aic_storage_stored_bytes", "Bytes of sealed shards held")?,
            )?,
            shards: registered(
                registry,
                IntGaugeVec::new(
                    Opts::new("aic_storage_shards", "Shards by state at the last scrub"),
                    &["state"],
                )?,
            )?,
            scrubs: registered(
                registry,
                IntCounterVec::new(
                    Opts::new("aic_storage_scrubs_total", "Scrub runs by result"),
                    &["result"],
                )?,
            )?,
            scrub_duration: registered(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new("aic_storage_scrub_duration_seconds", "Time to scrub every shard")
                        .buckets(prometheus::exponential_buckets(0.001, 4.0, 10)?),
                )?,
            )?,
            served_bytes: registered(
                registry,
                IntCounter::new(
                    "aic_storage_served_bytes_total",
                    "Shard bytes served to compute nodes",
                )?,
            )?,
            rejected: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "aic_storage_requests_rejected_total",
                        "Shard requests refused, by reason",
                    ),
                    &["reason"],
                )?,
            )?,
        };
        for reason in REJECTION_REASONS {
            metrics.rejected.with_label_values(&[reason]);
        }
        for state in ["healthy", "corrupt", "missing", "unknown"] {
            metrics.shards.with_label_values(&[state]).set(0);
        }
        for result in ["clean", "damaged", "error"] {
            metrics.scrubs.with_label_values(&[result]);
        }
        Ok(metrics)
    }

    pub fn record(&self, report: &ScrubReport) {
        for (state, count) in [
            ("healthy", report.healthy.len()),
            ("corrupt", report.corrupt.len()),
            ("missing", report.missing.len()),
            ("unknown", report.unknown.len()),
        ] {
            self.shards.with_label_values(&[state]).set(count as i64);
        }
        let result = if report.damaged().next().is_some() {
            "damaged"
        } else {
            "clean"
        };
        self.scrubs.with_label_values(&[result]).inc();
    }
}
