//! The storage node's own metrics: what it holds, what it served, how long requests took, what
//! the scrubber found and repaired, and every refusal by reason.

use aic_protocol::metrics::registered;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::scrub::ScrubReport;

/// Every reason a shard request is refused.
pub const REJECTION_REASONS: [&str; 26] = [
    "ticket_expired",
    "ticket_wrong_node",
    "ticket_wrong_dataset",
    "ticket_untrusted",
    "ticket_forged",
    "unknown_dataset",
    "unknown_shard",
    "missing_shard",
    "corrupt_shard",
    "too_many_uploads",
    "bad_upload",
    "unknown_upload",
    "not_your_upload",
    "bad_manifest",
    "not_the_importer",
    "not_a_replica",
    "proof_expired",
    "proof_forged",
    "not_a_dataset",
    "mint_refused",
    "untrusted_scheduler",
    "not_a_holder",
    "bad_holders",
    "damaged_copy",
    "bad_escrow",
    "no_escrow",
];

/// Every request whose latency is observed.
pub const TIMED_REQUESTS: [&str; 3] = ["get_shard", "preview", "export"];

#[derive(Clone)]
pub struct StorageMetrics {
    pub bytes_stored: IntGauge,
    pub shards: IntGaugeVec,
    pub scrubs: IntCounterVec,
    pub scrub_duration: Histogram,
    pub served_bytes: IntCounter,
    pub exported_bytes: IntCounter,
    pub rejected: IntCounterVec,
    pub request_duration: HistogramVec,
    pub datasets: IntGauge,
    pub replications: IntCounterVec,
    pub repairs: IntCounterVec,
    /// Copies of a lost holder's datasets, as the holder handing one over (`source`) and as the
    /// node taking it (`target`).
    pub re_replications: IntCounterVec,
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
                    Opts::new("aic_storage_shards", "Shards by state: healthy since their checked write or the last scrub; corrupt, missing, unknown as the last scrub found them"),
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
            exported_bytes: registered(
                registry,
                IntCounter::new(
                    "aic_storage_exported_bytes_total",
                    "Plain Parquet bytes exported to dataset owners",
                )?,
            )?,
            request_duration: registered(
                registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "aic_storage_request_duration_seconds",
                        "Time to answer a data request, to the last byte of a streamed answer",
                    )
                    .buckets(prometheus::exponential_buckets(0.0005, 4.0, 10)?),
                    &["request"],
                )?,
            )?,
            datasets: registered(
                registry,
                IntGauge::new("aic_storage_datasets", "Datasets held (each on every replica)")?,
            )?,
            replications: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "aic_storage_replications_total",
                        "Replicas placed on other storage nodes at import, by result",
                    ),
                    &["result"],
                )?,
            )?,
            repairs: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "aic_storage_repairs_total",
                        "Damaged shards re-created from another replica, by result",
                    ),
                    &["result"],
                )?,
            )?,
            re_replications: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "aic_storage_re_replications_total",
                        "Datasets copied to a new holder after a holder was lost, by side and result",
                    ),
                    &["side", "result"],
                )?,
            )?,
            rejected: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "aic_storage_requests_rejected_total",
                        "Storage requests refused, by reason",
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
        for request in TIMED_REQUESTS {
            metrics.request_duration.with_label_values(&[request]);
        }
        for result in ["ok", "error"] {
            metrics.replications.with_label_values(&[result]);
        }
        for result in ["repaired", "failed"] {
            metrics.repairs.with_label_values(&[result]);
        }
        for side in ["source", "target"] {
            for result in ["ok", "failed"] {
                metrics.re_replications.with_label_values(&[side, result]);
            }
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
