//! The scheduler's configuration (`aic scheduler --config FILE`).

use aic_protocol::config::{Invalid, Validate};
use aic_protocol::service::EndpointSettings;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    pub endpoint: EndpointSettings,
    pub membership: MembershipSettings,
}

/// The `[membership]` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MembershipSettings {
    /// How often nodes send heartbeats.
    pub heartbeat_interval_ms: u64,
    /// A node silent for this many intervals is marked down.
    pub missed_heartbeats_before_down: u32,
    /// How many peers each node measures its RTT to per round.
    pub probe_targets_per_node: u32,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        let mut endpoint = EndpointSettings::with_ports(7400, 9400);
        endpoint.tls.cert = "certs/scheduler.pem".into();
        endpoint.tls.key = "certs/scheduler.key".into();
        SchedulerConfig {
            endpoint,
            membership: MembershipSettings::default(),
        }
    }
}

impl Default for MembershipSettings {
    fn default() -> Self {
        MembershipSettings {
            heartbeat_interval_ms: 1000,
            missed_heartbeats_before_down: 3,
            probe_targets_per_node: 3,
        }
    }
}

impl Validate for SchedulerConfig {
    fn validate(&self) -> Result<(), Invalid> {
        self.endpoint.validate("endpoint")?;
        let m = &self.membership;
        if !(10..=60_000).contains(&m.heartbeat_interval_ms) {
            return Err(Invalid::new(
                "membership.heartbeat_interval_ms",
                format!("must be between 10 and 60000, got {}", m.heartbeat_interval_ms),
            ));
        }
        if !(1..=100).contains(&m.missed_heartbeats_before_down) {
            return Err(Invalid::new(
                "membership.missed_heartbeats_before_down",
                format!(
                    "must be between 1 and 100, got {}",
                    m.missed_heartbeats_before_down
                ),
            ));
        }
        if m.probe_targets_per_node > 16 {
            return Err(Invalid::new(
                "membership.probe_targets_per_node",
                format!("must be at most 16, got {}", m.probe_targets_per_node),
            ));
        }
        Ok(())
    }
}
