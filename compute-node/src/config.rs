//! The compute node's configuration (`aic compute-node --config FILE`).

use aic_protocol::config::{Invalid, Validate};
use aic_protocol::node_agent::SchedulerLink;
use aic_protocol::service::EndpointSettings;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ComputeConfig {
    pub endpoint: EndpointSettings,
    pub scheduler: SchedulerLink,
}

impl Default for ComputeConfig {
    fn default() -> Self {
        let mut endpoint = EndpointSettings::with_ports(7420, 9420);
        endpoint.tls.cert = "certs/compute.pem".into();
        endpoint.tls.key = "certs/compute.key".into();
        ComputeConfig {
            endpoint,
            scheduler: SchedulerLink::default(),
        }
    }
}

impl Validate for ComputeConfig {
    fn validate(&self) -> Result<(), Invalid> {
        self.endpoint.validate("endpoint")?;
        self.scheduler.validate("scheduler")
    }
}
