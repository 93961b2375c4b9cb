//! The scheduler's configuration (`aic scheduler --config FILE`).

use aic_protocol::config::{Invalid, Validate};
use aic_protocol::service::EndpointSettings;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    pub endpoint: EndpointSettings,
    pub membership: MembershipSettings,
    pub ledger: LedgerSettings,
    pub jobs: JobSettings,
}

/// The `[jobs]` table: training jobs run by this scheduler and what they cost.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobSettings {
    /// The genesis system key (a wallet file: 64 hex digits) that signs payroll, slashing and
    /// minting; without it this scheduler refuses jobs.
    pub system_key: PathBuf,
    /// AIC per million rows through a kernel (decimal text).
    pub compute_per_million_rows: String,
    /// AIC per 10^9 bytes of shards served (decimal text).
    pub storage_per_gb: String,
    /// Share of compute and storage pay burned as the platform fee.
    pub platform_fee_percent: u8,
    /// AIC slashed from a node's stake for a confirmed wrong result (at most its stake).
    pub slash_aic: String,
    /// Proof-of-Value reward from the reserve per million verified rows (AIC; issuance caps it).
    pub reward_per_million_rows: String,
    /// Accrued Proof-of-Value rewards are issued once per this many blocks.
    pub reward_epoch_blocks: u64,
    /// Synchronous SGD steps per epoch (the training shards are split among them).
    pub steps_per_epoch: u32,
    /// How long one task may run before it is placed elsewhere.
    pub task_timeout_ms: u64,
    /// The leader resumes a job whose runner has recorded no checkpoint for this long (its
    /// replica died). Longer than a slow round, or a busy runner loses its job.
    pub resume_after_ms: u64,
    /// A tensor on a storage node that no ledger entry names (a failed job's weights, or ones a
    /// ledger restore forgot) is dropped by the leader's sweep once it is this old.
    pub tensor_sweep_grace_secs: u64,
    /// A fault drill's hook (written by `aic devnet --kill-*-at-round`; never needed in
    /// production): hold each job after the checkpoint of a round until the drill is done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drill: Option<crate::job::drill::DrillHook>,
}

impl Default for JobSettings {
    fn default() -> Self {
        JobSettings {
            system_key: PathBuf::new(),
            compute_per_million_rows: "1".into(),
            storage_per_gb: "1".into(),
            platform_fee_percent: 5,
            slash_aic: "10".into(),
            reward_per_million_rows: "100".into(),
            reward_epoch_blocks: 100,
            steps_per_epoch: 2,
            task_timeout_ms: 60_000,
            resume_after_ms: 180_000,
            tensor_sweep_grace_secs: 86_400,
            drill: None,
        }
    }
}

/// The `[ledger]` table: this scheduler's ledger replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerSettings {
    /// Where the Raft log and snapshots live.
    pub data_dir: PathBuf,
    /// The genesis file (TOML); every replica of a cluster must use the same one.
    pub genesis: PathBuf,
    /// Start a one-replica cluster if this replica has never been part of one. Set on exactly
    /// one replica of a new cluster; add the others with `aic ledger add-learner`/`promote`.
    pub bootstrap: bool,
    /// How often the leader seals a block.
    pub block_interval_ms: u64,
    /// Snapshot after this many log entries.
    pub snapshot_every_entries: u64,
    /// Audit the ledger after every applied entry (slow; for tests and investigations).
    pub audit_every_entry: bool,
    /// How long a follower hears nothing from the leader before it stands for election: a
    /// random time between these two, after a leader lease as long as the second. Shorter
    /// fails over sooner; longer rides out a host too loaded to send heartbeats (every 100 ms).
    pub election_timeout_ms: [u64; 2],
}

impl Default for LedgerSettings {
    fn default() -> Self {
        LedgerSettings {
            data_dir: "data/ledger".into(),
            genesis: "genesis.toml".into(),
            bootstrap: false,
            block_interval_ms: 2000,
            snapshot_every_entries: 5000,
            audit_every_entry: false,
            election_timeout_ms: [300, 600],
        }
    }
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
    /// A storage node silent this long (and marked down) is lost for good: the leader has each
    /// dataset it held copied to another node until every dataset has its replica count again.
    /// Longer than a restart takes, so a node that comes back is not copied needlessly.
    pub storage_lost_after_ms: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        let mut endpoint = EndpointSettings::with_ports(7400, 9400);
        endpoint.tls.cert = "certs/scheduler.pem".into();
        endpoint.tls.key = "certs/scheduler.key".into();
        SchedulerConfig {
            endpoint,
            membership: MembershipSettings::default(),
            ledger: LedgerSettings::default(),
            jobs: JobSettings::default(),
        }
    }
}

impl Default for MembershipSettings {
    fn default() -> Self {
        MembershipSettings {
            heartbeat_interval_ms: 1000,
            missed_heartbeats_before_down: 3,
            probe_targets_per_node: 3,
            storage_lost_after_ms: 300_000,
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
        let l = &self.ledger;
        if !(100..=600_000).contains(&l.block_interval_ms) {
            return Err(Invalid::new(
                "ledger.block_interval_ms",
                format!("must be between 100 and 600000, got {}", l.block_interval_ms),
            ));
        }
        let [low, high] = l.election_timeout_ms;
        if !(300..=60_000).contains(&low) || high <= low || high > 120_000 {
            return Err(Invalid::new(
                "ledger.election_timeout_ms",
                format!("must be [low, high] with 300 <= low < high <= 120000, got [{low}, {high}]"),
            ));
        }
        if l.snapshot_every_entries < 10 {
            return Err(Invalid::new(
                "ledger.snapshot_every_entries",
                "must be at least 10",
            ));
        }
        if l.data_dir.as_os_str().is_empty() || l.genesis.as_os_str().is_empty() {
            return Err(Invalid::new(
                "ledger.data_dir",
                "ledger.data_dir and ledger.genesis must name paths",
            ));
        }
        let j = &self.jobs;
        for (key, value) in [
            ("jobs.compute_per_million_rows", &j.compute_per_million_rows),
            ("jobs.storage_per_gb", &j.storage_per_gb),
            ("jobs.slash_aic", &j.slash_aic),
            ("jobs.reward_per_million_rows", &j.reward_per_million_rows),
        ] {
            if value.parse::<aic_ledger::Amount>().is_err() {
                return Err(Invalid::new(key, format!("{value:?} is not an AIC amount")));
            }
        }
        if j.platform_fee_percent > 100 {
            return Err(Invalid::new(
                "jobs.platform_fee_percent",
                "is a percentage, 0 to 100",
            ));
        }
        if j.steps_per_epoch == 0 || j.task_timeout_ms < 100 {
            return Err(Invalid::new(
                "jobs.steps_per_epoch",
                "steps_per_epoch must be at least 1 and task_timeout_ms at least 100",
            ));
        }
        if j.reward_epoch_blocks == 0 {
            return Err(Invalid::new("jobs.reward_epoch_blocks", "must be at least 1"));
        }
        if j.tensor_sweep_grace_secs < 3600 {
            return Err(Invalid::new(
                "jobs.tensor_sweep_grace_secs",
                "must be at least 3600 (a running job's newest weights are named only at its next checkpoint)",
            ));
        }
        if j.resume_after_ms < 1000 {
            return Err(Invalid::new("jobs.resume_after_ms", "must be at least 1000"));
        }
        // Shorter than the time to be marked down is allowed: a node counts as lost only once
        // it is down, so the threshold is then the time to be marked down.
        if !(1_000..=30 * 86_400_000).contains(&m.storage_lost_after_ms) {
            return Err(Invalid::new(
                "membership.storage_lost_after_ms",
                format!(
                    "must be between 1000 (a second) and 2592000000 (30 days), got {}",
                    m.storage_lost_after_ms
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

impl aic_protocol::config::Preflight for SchedulerConfig {
    fn preflight(&self, ports: bool) -> Vec<Invalid> {
        use aic_protocol::preflight;
        let mut problems = preflight::endpoint(&self.endpoint, aic_protocol::Role::Scheduler, ports);
        problems.extend(preflight::directory_writable(
            "ledger.data_dir",
            &self.ledger.data_dir,
        ));
        let genesis = preflight::file_readable("ledger.genesis", &self.ledger.genesis).map_or_else(
            || {
                aic_ledger::genesis::Genesis::load(&self.ledger.genesis)
                    .map_err(|reason| Invalid::new("ledger.genesis", reason))
            },
            Err,
        );
        let genesis = match genesis {
            Ok(genesis) => Some(genesis),
            Err(problem) => {
                problems.push(problem);
                None
            }
        };
        if !self.jobs.system_key.as_os_str().is_empty() {
            match aic_ledger::Keypair::from_wallet_file(&self.jobs.system_key) {
                Err(reason) => problems.push(Invalid::new("jobs.system_key", reason)),
                Ok(key) => {
                    if let Some(genesis) = genesis.filter(|g| g.system_key != key.address()) {
                        problems.push(Invalid::new(
                            "jobs.system_key",
                            format!(
                                "{} is not the genesis system key ({})",
                                self.jobs.system_key.display(),
                                genesis.system_key
                            ),
                        ));
                    }
                }
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_election_timeout_must_be_a_rising_pair_of_at_least_300_ms() {
        let with = |pair: [u64; 2]| {
            let mut config = SchedulerConfig::default();
            config.ledger.election_timeout_ms = pair;
            config.validate()
        };
        assert!(with([300, 600]).is_ok());
        assert!(with([1000, 2000]).is_ok());
        for bad in [[100, 600], [600, 600], [600, 300], [300, 200_000]] {
            let refused = with(bad).expect_err("refused");
            assert_eq!(
                refused.key, "ledger.election_timeout_ms",
                "{bad:?}: {}",
                refused.reason
            );
        }
    }
}
