//! Process-wide `tracing` set-up: human-readable or JSON lines, filtered by `AIC_LOG`.

use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "human" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format {other:?} (expected human or json)")),
        }
    }
}

/// Installs the global subscriber, writing to stderr. The filter comes from `AIC_LOG` (same
/// syntax as `RUST_LOG`), else `default_directive`. A second call does nothing.
pub fn init(format: LogFormat, default_directive: &str) {
    let filter = EnvFilter::try_from_env("AIC_LOG").unwrap_or_else(|_| EnvFilter::new(default_directive));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
