//! The gateway's configuration (`aic gateway --config FILE`): where it serves HTTPS, which grid
//! it places work on, how it batches, limits and settles.

use std::net::SocketAddr;
use std::path::PathBuf;

use aic_ledger::amount::Amount;
use aic_protocol::certs::IdentityFiles;
use aic_protocol::config::{Invalid, Validate};
use aic_protocol::node_agent::SchedulerLink;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    pub endpoint: GatewayEndpoint,
    /// The scheduler replicas: the ledger is read and the compute nodes listed through them.
    pub scheduler: SchedulerLink,
    pub batching: BatchingSettings,
    pub limits: LimitSettings,
    pub settlement: SettlementSettings,
    pub verification: VerificationSettings,
}

/// The `[verification]` table: the share of batches re-run on a second node (and a third when
/// the two disagree), off the callers' path; a node the other two outvote is reported to the
/// scheduler's rater and passed over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerificationSettings {
    pub sample_percent: u8,
}

impl Default for VerificationSettings {
    fn default() -> Self {
        VerificationSettings { sample_percent: 5 }
    }
}

/// The `[endpoint]` table: the HTTPS API, the metrics endpoint and the gateway's certificate
/// (role `gateway`, from the grid's CA; it serves HTTPS and dials the grid over mutual TLS).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayEndpoint {
    /// Display name; empty means the certificate's name.
    pub name: String,
    /// TCP address of the HTTPS API (the Open Inference Protocol's REST endpoints).
    pub https_listen: SocketAddr,
    /// TCP address of `/metrics`. Loopback unless set otherwise.
    pub metrics_listen: SocketAddr,
    pub tls: IdentityFiles,
}

/// The `[batching]` table: requests for one model wait at most `max_delay_us` for company, and
/// go to a compute node together up to `max_rows` rows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchingSettings {
    pub max_rows: u32,
    pub max_delay_us: u64,
    /// Attempts per batch on different compute nodes before the callers get an error.
    pub attempts: u32,
    /// Batches of one model out at once: 0 for one per usable compute node (nodes with their
    /// own devices); set it lower where nodes share one machine's cores or one GPU, where
    /// batches in parallel only contend and smaller ones waste the device.
    pub max_in_flight: u32,
}

/// The `[limits]` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSettings {
    /// The largest request body read, in bytes (larger: 413 before it is parsed).
    pub max_body_bytes: usize,
    /// The most rows one request may carry.
    pub max_rows_per_request: u32,
    /// Each API key's sustained requests per minute, and the burst it may save up.
    pub requests_per_minute: u32,
    pub burst: u32,
    /// How long the ledger's word on a key, its escrow and a model is reused: a revocation or an
    /// unpublication holds within this (0: every call reads the ledger).
    pub access_cache_ms: u64,
}

/// The `[settlement]` table: metered rows go to the ledger once per period, signed by the
/// settler key (a wallet file genesis names among `inference_settlers`, or the system key). Each
/// gateway needs a key of its own: the ledger keeps one period counter per key, and a period at
/// or below the key's last is refused as already settled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SettlementSettings {
    pub key: PathBuf,
    pub period_ms: u64,
    /// AIC per 1,000 rows paid to the compute nodes that served them (decimal text).
    pub compute_per_1k_rows: String,
    /// AIC per 1,000 rows burned as the platform fee (decimal text).
    pub platform_per_1k_rows: String,
}

impl Default for BatchingSettings {
    fn default() -> Self {
        BatchingSettings {
            max_rows: 256,
            max_delay_us: 500,
            attempts: 3,
            max_in_flight: 0,
        }
    }
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            max_body_bytes: 4 << 20,
            max_rows_per_request: 4096,
            requests_per_minute: 30_000,
            burst: 1000,
            access_cache_ms: 1000,
        }
    }
}

impl Default for SettlementSettings {
    fn default() -> Self {
        SettlementSettings {
            key: PathBuf::new(),
            period_ms: 10_000,
            compute_per_1k_rows: "0.01".into(),
            platform_per_1k_rows: "0.001".into(),
        }
    }
}

impl Default for GatewayEndpoint {
    fn default() -> Self {
        GatewayEndpoint {
            name: String::new(),
            https_listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9480)),
            tls: IdentityFiles {
                ca: "certs/ca.pem".into(),
                cert: "certs/gateway.pem".into(),
                key: "certs/gateway.key".into(),
            },
        }
    }
}

impl SettlementSettings {
    /// The tariff as amounts.
    pub fn tariff(&self) -> Result<aic_ledger::state::InferenceTariff, Invalid> {
        let parse = |key: &str, text: &str| {
            text.parse::<Amount>()
                .map_err(|e| Invalid::new(format!("settlement.{key}"), e.to_string()))
        };
        Ok(aic_ledger::state::InferenceTariff {
            compute_per_1k_rows: parse("compute_per_1k_rows", &self.compute_per_1k_rows)?,
            platform_per_1k_rows: parse("platform_per_1k_rows", &self.platform_per_1k_rows)?,
        })
    }
}

impl Validate for GatewayConfig {
    fn validate(&self) -> Result<(), Invalid> {
        self.scheduler.validate("scheduler")?;
        if self.batching.max_rows == 0 {
            return Err(Invalid::new("batching.max_rows", "at least 1"));
        }
        if self.batching.max_delay_us > 1_000_000 {
            return Err(Invalid::new(
                "batching.max_delay_us",
                "at most a second (1000000)",
            ));
        }
        if self.batching.attempts == 0 || self.batching.attempts > 10 {
            return Err(Invalid::new("batching.attempts", "1 to 10"));
        }
        if self.limits.max_body_bytes < 1024 || self.limits.max_body_bytes > 64 << 20 {
            return Err(Invalid::new("limits.max_body_bytes", "1 KiB to 64 MiB"));
        }
        if self.limits.max_rows_per_request == 0 {
            return Err(Invalid::new("limits.max_rows_per_request", "at least 1"));
        }
        if self.limits.requests_per_minute == 0 {
            return Err(Invalid::new("limits.requests_per_minute", "at least 1"));
        }
        if self.limits.burst == 0 {
            return Err(Invalid::new("limits.burst", "at least 1"));
        }
        if self.verification.sample_percent > 100 {
            return Err(Invalid::new("verification.sample_percent", "0 to 100"));
        }
        if self.limits.access_cache_ms > 60_000 {
            return Err(Invalid::new("limits.access_cache_ms", "at most a minute (60000)"));
        }
        if self.settlement.period_ms < 100 {
            return Err(Invalid::new("settlement.period_ms", "at least 100"));
        }
        if self.settlement.key.as_os_str().is_empty() {
            return Err(Invalid::new(
                "settlement.key",
                "the settler's wallet file is required",
            ));
        }
        self.settlement.tariff()?;
        Ok(())
    }
}

impl aic_protocol::config::Preflight for GatewayConfig {
    fn preflight(&self, ports: bool) -> Vec<Invalid> {
        use aic_protocol::preflight;
        let mut problems =
            preflight::identity("endpoint.tls", &self.endpoint.tls, aic_protocol::Role::Gateway);
        if ports {
            problems.extend(preflight::tcp_port_free(
                "endpoint.https_listen",
                self.endpoint.https_listen,
            ));
            problems.extend(preflight::tcp_port_free(
                "endpoint.metrics_listen",
                self.endpoint.metrics_listen,
            ));
        }
        if let Err(reason) = aic_ledger::Keypair::from_wallet_file(&self.settlement.key) {
            problems.push(Invalid::new("settlement.key", reason));
        }
        problems
    }
}
