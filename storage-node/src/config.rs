//! The storage node's configuration (`aic storage-node --config FILE`).

use std::path::PathBuf;

use aic_protocol::config::{Invalid, Validate};
use aic_protocol::node_agent::SchedulerLink;
use aic_protocol::service::EndpointSettings;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub endpoint: EndpointSettings,
    pub scheduler: SchedulerLink,
    pub storage: StorageSettings,
}

/// The `[storage]` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSettings {
    /// Where shards are kept.
    pub data_dir: PathBuf,
    /// Bytes offered to the grid.
    pub capacity_bytes: u64,
    /// Where shards live: empty for `<data_dir>/shards`, a directory, `file://…`, `memory://`,
    /// or a bucket: `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix`
    /// (credentials from the `AWS_*`, `GOOGLE_*` or `AZURE_*` environment variables).
    pub store: String,
    /// How often the scrubber re-checks every shard at rest.
    pub scrub_interval_secs: u64,
    /// Node ids (hex) of schedulers whose shard tickets are honoured, besides the scheduler this
    /// node registers with.
    pub trusted_schedulers: Vec<String>,
    /// The ledger account paid for bytes served (hex address); empty for none.
    pub payout_address: String,
    /// Uploads one client certificate may hold open at once.
    pub uploads_per_client: usize,
    /// An upload untouched this long is abandoned and its shards deleted.
    pub upload_idle_secs: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        let mut endpoint = EndpointSettings::with_ports(7410, 9410);
        endpoint.tls.cert = "certs/storage.pem".into();
        endpoint.tls.key = "certs/storage.key".into();
        StorageConfig {
            endpoint,
            scheduler: SchedulerLink::default(),
            storage: StorageSettings {
                data_dir: "data/storage".into(),
                capacity_bytes: 100 * 1024 * 1024 * 1024,
                store: String::new(),
                scrub_interval_secs: 3600,
                trusted_schedulers: Vec::new(),
                payout_address: String::new(),
                uploads_per_client: 2,
                upload_idle_secs: 120,
            },
        }
    }
}

impl Default for StorageSettings {
    fn default() -> Self {
        StorageConfig::default().storage
    }
}

impl Validate for StorageConfig {
    fn validate(&self) -> Result<(), Invalid> {
        self.endpoint.validate("endpoint")?;
        self.scheduler.validate("scheduler")?;
        if self.storage.data_dir.as_os_str().is_empty() {
            return Err(Invalid::new("storage.data_dir", "must name a directory"));
        }
        if self.storage.uploads_per_client == 0 {
            return Err(Invalid::new("storage.uploads_per_client", "must be at least 1"));
        }
        if self.storage.upload_idle_secs == 0 {
            return Err(Invalid::new("storage.upload_idle_secs", "must be at least 1"));
        }
        if let Some(bad) = self
            .storage
            .trusted_schedulers
            .iter()
            .find(|id| id.parse::<aic_protocol::NodeId>().is_err())
        {
            return Err(Invalid::new(
                "storage.trusted_schedulers",
                format!("{bad:?} is not a 64-digit hex node id"),
            ));
        }
        if let Some((scheme, _)) = self.storage.store.split_once("://") {
            if !["file", "memory", "s3", "gs", "az", "azure"].contains(&scheme) {
                return Err(Invalid::new(
                    "storage.store",
                    format!(
                        "unknown scheme {scheme}://; use a path, file://, memory://, s3://, gs:// or az://"
                    ),
                ));
            }
        }
        aic_protocol::config::check_payout_address("storage.payout_address", &self.storage.payout_address)?;
        if self.storage.scrub_interval_secs == 0 {
            return Err(Invalid::new("storage.scrub_interval_secs", "must be at least 1"));
        }
        if self.storage.capacity_bytes == 0 {
            return Err(Invalid::new("storage.capacity_bytes", "must be more than 0"));
        }
        Ok(())
    }
}

impl aic_protocol::config::Preflight for StorageConfig {
    fn preflight(&self, ports: bool) -> Vec<Invalid> {
        use aic_protocol::preflight;
        let mut problems = preflight::endpoint(&self.endpoint, aic_protocol::Role::Storage, ports);
        problems.extend(preflight::directory_writable(
            "storage.data_dir",
            &self.storage.data_dir,
        ));
        let store = &self.storage.store;
        let local = match store.split_once("://") {
            None if !store.is_empty() => Some(PathBuf::from(store)),
            Some(("file", path)) => Some(PathBuf::from(path)),
            _ => None,
        };
        if let Some(path) = local {
            problems.extend(preflight::directory_writable("storage.store", &path));
        }
        problems
    }
}
