//! The transport metrics every serving process records, named `aic_<component>_<what>_<unit>`.
//!
//! Each service owns its own `prometheus::Registry` (several services share one process in the
//! devnet and in tests), so metrics are registered per component rather than globally. Label
//! values come from closed sets: RPC names, error codes and rejection reasons.

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::error::Result;

/// Connections, RPCs and rejections of one serving endpoint.
#[derive(Clone)]
pub struct TransportMetrics {
    pub connections_open: IntGauge,
    pub connections_accepted: IntCounter,
    pub handshakes_rejected: IntCounterVec,
    pub frames_rejected: IntCounterVec,
    pub rpcs: IntCounterVec,
    pub rpc_duration: HistogramVec,
}

impl TransportMetrics {
    /// Registers the metrics of `component` (`scheduler`, `storage`, `compute`) in `registry`.
    pub fn register(registry: &Registry, component: &str) -> Result<Self> {
        let name = |what: &str| format!("aic_{component}_{what}");
        let metrics = TransportMetrics {
            connections_open: registered(
                registry,
                IntGauge::new(name("connections_open"), "QUIC connections currently open")?,
            )?,
            connections_accepted: registered(
                registry,
                IntCounter::new(
                    name("connections_accepted_total"),
                    "QUIC connections that completed the mutual-TLS handshake",
                )?,
            )?,
            handshakes_rejected: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        name("handshakes_rejected_total"),
                        "Incoming connections refused before any request, by reason",
                    ),
                    &["reason"],
                )?,
            )?,
            frames_rejected: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        name("frames_rejected_total"),
                        "Request frames refused by the codec, by reason",
                    ),
                    &["reason"],
                )?,
            )?,
            rpcs: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(name("rpcs_total"), "Requests served, by RPC and result"),
                    &["rpc", "result"],
                )?,
            )?,
            rpc_duration: registered(
                registry,
                HistogramVec::new(
                    HistogramOpts::new(name("rpc_duration_seconds"), "Time to serve a request, by RPC")
                        .buckets(prometheus::exponential_buckets(0.0001, 4.0, 9)?),
                    &["rpc"],
                )?,
            )?,
        };
        for reason in crate::tls::HANDSHAKE_REJECTION_REASONS {
            metrics.handshakes_rejected.with_label_values(&[reason]);
        }
        for reason in crate::rpc::FRAME_REJECTION_REASONS {
            metrics.frames_rejected.with_label_values(&[reason]);
        }
        Ok(metrics)
    }
}

/// Registers a collector and hands it back, for the per-role metric structs.
pub fn registered<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    collector: C,
) -> Result<C> {
    registry.register(Box::new(collector.clone()))?;
    Ok(collector)
}
