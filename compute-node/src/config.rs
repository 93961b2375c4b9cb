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
    pub compute: ComputeSettings,
}

/// Which backend runs the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendSetting {
    /// A Vulkan GPU if there is one, else the CPU (the registration says which).
    Auto,
    Cpu,
    /// Vulkan, admitting a CPU-type device (lavapipe): for tests and drills.
    Lavapipe,
}

/// The `[compute]` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ComputeSettings {
    pub backend: BackendSetting,
    /// Cores the CPU backend's matrix multiplies use; 0 means every core.
    pub cpu_threads: u32,
    /// Tasks run at once (they share the one device, one after another).
    pub task_slots: u32,
    /// Bytes of decoded shards kept for later rounds.
    pub cache_bytes: u64,
    /// Bytes of tensors held: fetched weights, and task updates until the runner collects them.
    pub tensor_cache_bytes: u64,
    /// The ledger account paid for verified work (hex address); empty for none.
    pub payout_address: String,
    /// FAULT INJECTION, for verification tests and drills only: the percentage of gradient
    /// results this node corrupts (with a digest that matches the corrupted numbers, as a
    /// dishonest node would). 0 in production.
    pub corrupt_results_percent: u8,
    /// FAULT INJECTION, for verification tests and drills only: the percentage of inference
    /// batches whose outputs this node corrupts. 0 in production.
    pub corrupt_inference_percent: u8,
    /// FAULT INJECTION, for drills only: the process exits, as if killed, the moment it is handed
    /// an inference batch of at least this many rows, before running it (a node dying with a
    /// batch in flight). 0, never, in production.
    pub exit_on_inference_rows: u32,
    /// With `exit_on_inference_rows`: a file the dying node creates first; a node that finds it
    /// made already lives on, so a drill set on several nodes kills exactly one — the first
    /// handed such a batch. Empty: no claim, this node always exits.
    pub exit_claim_file: std::path::PathBuf,
}

impl Default for ComputeSettings {
    fn default() -> Self {
        ComputeSettings {
            backend: BackendSetting::Auto,
            cpu_threads: 0,
            task_slots: 2,
            cache_bytes: 512 * 1024 * 1024,
            tensor_cache_bytes: 4 * 1024 * 1024 * 1024,
            payout_address: String::new(),
            corrupt_results_percent: 0,
            corrupt_inference_percent: 0,
            exit_on_inference_rows: 0,
            exit_claim_file: std::path::PathBuf::new(),
        }
    }
}

impl Default for ComputeConfig {
    fn default() -> Self {
        let mut endpoint = EndpointSettings::with_ports(7420, 9420);
        endpoint.tls.cert = "certs/compute.pem".into();
        endpoint.tls.key = "certs/compute.key".into();
        ComputeConfig {
            endpoint,
            scheduler: SchedulerLink::default(),
            compute: ComputeSettings::default(),
        }
    }
}

impl Validate for ComputeConfig {
    fn validate(&self) -> Result<(), Invalid> {
        self.endpoint.validate("endpoint")?;
        self.scheduler.validate("scheduler")?;
        if self.compute.task_slots == 0 {
            return Err(Invalid::new("compute.task_slots", "must be at least 1"));
        }
        if self.compute.cpu_threads > 1024 {
            return Err(Invalid::new(
                "compute.cpu_threads",
                "is a core count, 0 (every core) to 1024",
            ));
        }
        for (key, percent) in [
            (
                "compute.corrupt_results_percent",
                self.compute.corrupt_results_percent,
            ),
            (
                "compute.corrupt_inference_percent",
                self.compute.corrupt_inference_percent,
            ),
        ] {
            if percent > 100 {
                return Err(Invalid::new(key, "is a percentage, 0 to 100"));
            }
        }
        aic_protocol::config::check_payout_address("compute.payout_address", &self.compute.payout_address)
    }
}

impl aic_protocol::config::Preflight for ComputeConfig {
    fn preflight(&self, ports: bool) -> Vec<Invalid> {
        aic_protocol::preflight::endpoint(&self.endpoint, aic_protocol::Role::Compute, ports)
    }
}
