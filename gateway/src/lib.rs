//! The inference gateway: trained models served as an API in the Open Inference Protocol v2
//! ("KServe v2") REST dialect over HTTPS, metered per row and paid on the ledger.
//!
//! ```text
//!  HTTPS call ──► key (hash) + escrow + publication: one ledger read ──► encode raw columns
//!       │            (http, access)                                    (the dataset's import)
//!       ▼
//!  reserve the call's cost ──► batch with other calls ──► cheapest compute node (QUIC, mTLS)
//!       (meter)                   (dispatch)     (placement) └─ fails or stalls: the next node,
//!                                                               rows counted once
//!       ▼
//!  outputs ──► labels + probabilities / prediction ──► rows metered ──► SettleInference per period
//! ```
//!
//! The gateway holds a `gateway` certificate of the grid's CA (it serves HTTPS with it and dials
//! the grid over mutual TLS) and a settler key genesis names.

pub mod access;
pub mod config;
pub mod dispatch;
pub mod http;
pub mod ledger;
pub mod meter;
pub mod metrics;
pub mod oip;
pub mod placement;

use std::sync::Arc;
use std::time::Duration;

use aic_ledger::state::InferenceTariff;
use aic_protocol::service::ServiceHandle;
use aic_protocol::{metrics_http, transport};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::GatewayConfig;

/// How often the compute node list is refreshed.
const NODE_REFRESH: Duration = Duration::from_secs(1);

/// Why a gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Protocol(#[from] aic_protocol::Error),
    #[error("settlement.key {0}")]
    SettlerKey(String),
    #[error("{0}")]
    Config(String),
    #[error("the HTTPS listener: {0}")]
    Https(String),
}

/// What the request handlers share.
pub struct Gateway {
    pub config: GatewayConfig,
    pub tariff: InferenceTariff,
    pub ledger: Arc<ledger::Ledger>,
    pub dispatcher: Arc<dispatch::Dispatcher>,
    pub models: access::Models,
    pub access: access::AccessCache,
    pub limiter: access::RateLimiter,
    pub meter: Arc<meter::Meter>,
    pub metrics: metrics::GatewayMetrics,
}

/// Starts a gateway: the HTTPS API, the metrics endpoint, the node list and the settlement
/// loop. Its handle's `quic_addr` is the HTTPS address (the gateway accepts no QUIC). It stops
/// when `shutdown` is cancelled, settling what it metered first.
pub async fn start(
    config: GatewayConfig,
    shutdown: CancellationToken,
) -> Result<ServiceHandle, GatewayError> {
    let tariff = config
        .settlement
        .tariff()
        .map_err(|e| GatewayError::Config(format!("{}: {}", e.key, e.reason)))?;
    let settler =
        aic_ledger::Keypair::from_wallet_file(&config.settlement.key).map_err(GatewayError::SettlerKey)?;
    let identity = config.endpoint.tls.load()?;
    let outbound = transport::outbound_endpoint(&identity)?;
    let registry = prometheus::Registry::new();
    let metrics = metrics::GatewayMetrics::register(&registry)?;
    let mut replicas = vec![config.scheduler.addr.clone()];
    replicas.extend(config.scheduler.replicas.iter().cloned());
    let ledger = Arc::new(ledger::Ledger::new(outbound.clone(), replicas));
    let dispatcher = Arc::new(dispatch::Dispatcher::new(
        outbound,
        &config.batching,
        config.verification.sample_percent,
        ledger.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    let meter = Arc::new(meter::Meter::default());
    let gateway = Arc::new(Gateway {
        limiter: access::RateLimiter::new(config.limits.requests_per_minute, config.limits.burst),
        tariff,
        ledger: ledger.clone(),
        dispatcher: dispatcher.clone(),
        models: access::Models::default(),
        access: access::AccessCache::new(Duration::from_millis(config.limits.access_cache_ms)),
        meter: meter.clone(),
        metrics: metrics.clone(),
        config: config.clone(),
    });

    let https = std::net::TcpListener::bind(config.endpoint.https_listen)
        .map_err(|e| GatewayError::Https(format!("{}: {e}", config.endpoint.https_listen)))?;
    let https_addr = https
        .local_addr()
        .map_err(|e| GatewayError::Https(e.to_string()))?;
    let metrics_listener = metrics_http::bind(config.endpoint.metrics_listen)?;
    let metrics_addr = metrics_listener.local_addr().map_err(aic_protocol::Error::from)?;
    let tls = aic_protocol::tls::https_server_config(&identity)?;
    let state = actix_web::web::Data::new(http::HttpState {
        gateway: gateway.clone(),
        runtime: tokio::runtime::Handle::current(),
    });
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(state.clone())
            .configure(http::routes)
    })
    .workers(2)
    .disable_signals()
    .shutdown_timeout(5)
    .listen_rustls_0_23(https, tls)
    .map_err(|e| GatewayError::Https(e.to_string()))?
    .run();
    let server_handle = server.handle();

    let name = if config.endpoint.name.is_empty() {
        identity.me.name.clone()
    } else {
        config.endpoint.name.clone()
    };
    info!(%name, %https_addr, %metrics_addr, "gateway starting");
    let mut handle = ServiceHandle::new(name, https_addr, metrics_addr, shutdown.clone());
    handle.spawn(async move {
        if let Err(error) = server.await {
            warn!(%error, "the HTTPS server stopped");
        }
    });
    let stop = shutdown.clone();
    handle.spawn(async move {
        stop.cancelled().await;
        server_handle.stop(true).await;
    });
    let stop = shutdown.clone();
    handle.spawn(async move {
        if let Err(error) = metrics_http::serve(metrics_listener, registry, stop).await {
            warn!(%error, "the metrics endpoint stopped");
        }
    });
    handle.spawn(dispatcher.follow_nodes(ledger.clone(), NODE_REFRESH));
    handle.spawn(meter::settle_loop(
        meter,
        ledger,
        settler,
        tariff,
        Duration::from_millis(config.settlement.period_ms),
        metrics,
        shutdown,
    ));
    Ok(handle)
}
