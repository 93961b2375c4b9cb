//! Proof-of-Value rewards, once per epoch of blocks: settled jobs accrue their providers'
//! rewards on the ledger; on the Raft leader this task issues everything accrued once the chain
//! enters a new epoch (`jobs.reward_epoch_blocks` blocks), within the issuance cap. The ledger
//! refuses an epoch already paid, so a leader change cannot pay one twice.

use std::sync::Arc;
use std::time::Duration;

use aic_ledger::raft::replica::LedgerReplica;
use aic_ledger::tx::Call;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::job::SystemSigner;

/// The reward epoch a chain of `height` blocks is in.
pub fn epoch_of(height: u64, epoch_blocks: u64) -> u64 {
    height / epoch_blocks.max(1)
}

/// Checks every `interval` whether a new epoch has rewards to issue, while this replica leads.
pub async fn run(
    ledger: Arc<LedgerReplica>,
    system: Arc<SystemSigner>,
    epoch_blocks: u64,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if !ledger.is_leader() {
            continue;
        }
        let status = ledger.status();
        let epoch = epoch_of(status.block_height, epoch_blocks);
        if epoch <= status.reward_epoch || status.accrued_rewards.is_zero() {
            continue;
        }
        match system.submit(&ledger, Call::PayRewardEpoch { epoch }).await {
            Ok(events) => info!(epoch, events = events.len(), "reward epoch paid"),
            Err(error) => warn!(epoch, %error, "reward epoch not paid"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::epoch_of;

    #[test]
    fn epochs_count_whole_runs_of_blocks() {
        assert_eq!(epoch_of(0, 100), 0);
        assert_eq!(epoch_of(99, 100), 0);
        assert_eq!(epoch_of(100, 100), 1);
        assert_eq!(epoch_of(250, 100), 2);
        assert_eq!(epoch_of(7, 0), 7, "a zero length counts every block");
    }
}
