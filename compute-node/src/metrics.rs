//! The compute node's own metrics: tasks by kind and result, their duration, shard bytes
//! fetched, cache hits, tensors refused, inference batches and rows served, and the device's
//! measured speed.

use aic_protocol::metrics::registered;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

#[derive(Clone)]
pub struct ComputeMetrics {
    pub tasks: IntCounterVec,
    pub task_duration: HistogramVec,
    pub fetched_bytes: IntCounter,
    pub cache: IntCounterVec,
    pub device_mflops: IntGauge,
    pub blocks_signed: IntCounterVec,
    pub tensor_refusals: IntCounterVec,
    pub inference_batches: IntCounterVec,
    pub inference_rows: IntCounter,
    pub inference_duration: Histogram,
}

impl ComputeMetrics {
    pub fn register(registry: &Registry, mflops: u64) -> aic_protocol::Result<Self> {
        let metrics = ComputeMetrics {
            tasks: registered(
                registry,
                IntCounterVec::new(
                    Opts::new("aic_compute_tasks_total", "Tasks run, by kind and result"),
                    &["kind", "result"],
                )?,
            )?,
            task_duration: registered(
                registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "aic_compute_task_duration_seconds",
                        "Time from a task's arrival to its result, shard fetch included",
                    )
                    .buckets(prometheus::exponential_buckets(0.001, 4.0, 10)?),
                    &["kind"],
                )?,
            )?,
            fetched_bytes: registered(
                registry,
                IntCounter::new(
                    "aic_compute_shard_fetched_bytes_total",
                    "Decoded shard bytes fetched from storage nodes",
                )?,
            )?,
            cache: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "aic_compute_shard_cache_total",
                        "Shard lookups in the local cache, by result",
                    ),
                    &["result"],
                )?,
            )?,
            device_mflops: registered(
                registry,
                IntGauge::new(
                    "aic_compute_device_mflops",
                    "The device's matrix-multiply speed measured at start, MFLOP/s",
                )?,
            )?,
            blocks_signed: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "aic_compute_blocks_signed_total",
                        "Lottery blocks signed, by role",
                    ),
                    &["role"],
                )?,
            )?,
            tensor_refusals: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "aic_compute_tensor_refusals_total",
                        "Tensors refused (fetched weights not true to their name, cut or \
                         out-of-order streams, updates asked for but not held), by reason",
                    ),
                    &["reason"],
                )?,
            )?,
            inference_batches: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "aic_compute_inference_batches_total",
                        "Inference batches run for gateways, by result",
                    ),
                    &["result"],
                )?,
            )?,
            inference_rows: registered(
                registry,
                IntCounter::new("aic_compute_inference_rows_total", "Rows of inference served")?,
            )?,
            inference_duration: registered(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "aic_compute_inference_duration_seconds",
                        "Time from an inference batch's arrival to its outputs, a weights fetch included",
                    )
                    .buckets(prometheus::exponential_buckets(0.0001, 4.0, 10)?),
                )?,
            )?,
        };
        for result in ["ok", "error"] {
            metrics.inference_batches.with_label_values(&[result]);
        }
        for reason in aic_protocol::tensor::REFUSAL_REASONS {
            metrics.tensor_refusals.with_label_values(&[reason]);
        }
        for role in ["ticket", "cosigner"] {
            metrics.blocks_signed.with_label_values(&[role]);
        }
        for kind in ["gradient", "evaluate"] {
            metrics.task_duration.with_label_values(&[kind]);
            for result in ["ok", "error"] {
                metrics.tasks.with_label_values(&[kind, result]);
            }
        }
        for result in ["hit", "miss"] {
            metrics.cache.with_label_values(&[result]);
        }
        metrics.device_mflops.set(mflops as i64);
        Ok(metrics)
    }
}
