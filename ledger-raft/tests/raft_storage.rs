//! openraft's own storage test suite, run against our durable log store and state machine.

use aic_ledger::genesis::{Genesis, Holders};
use aic_ledger::metrics::LedgerMetrics;
use aic_ledger::raft::log_store::FileLogStore;
use aic_ledger::raft::state_machine::LedgerStateMachine;
use aic_ledger::raft::types::{LedgerRaft, StorageError};
use aic_ledger::Keypair;
use openraft::testing::{StoreBuilder, Suite};
use openraft::{AnyError, StorageIOError};

struct Builder;

fn genesis() -> Genesis {
    let key = || Keypair::generate().address();
    let holders = Holders {
        fundraiser: key(),
        advisors: key(),
        company: key(),
        team: key(),
        operations: key(),
    };
    Genesis::local("suite", 0, holders, key())
}

impl StoreBuilder<LedgerRaft, FileLogStore, LedgerStateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, FileLogStore, LedgerStateMachine), StorageError> {
        let dir = tempfile::tempdir().unwrap();
        let io = |e: std::io::Error| StorageError::from(StorageIOError::write(AnyError::new(&e)));
        let log = FileLogStore::open(&dir.path().join("log")).map_err(io)?;
        let sm = LedgerStateMachine::open(
            &dir.path().join("sm"),
            genesis(),
            true,
            LedgerMetrics::unregistered(),
        )
        .map_err(io)?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes() {
    Suite::test_all(Builder).unwrap();
}
