//! A broken invariant is fatal: the state machine refuses to go on, outside any transaction's
//! error path, and counts the violation.

use aic_ledger::amount::Amount;
use aic_ledger::metrics::LedgerMetrics;
use aic_ledger::raft::state_machine::LedgerStateMachine;
use aic_ledger::raft::types::{LedgerCommand, LedgerRaft};
use aic_ledger::testkit::test_genesis;
use aic_ledger::tx::{Call, Transaction};
use aic_ledger::Keypair;
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

#[tokio::test]
async fn a_violated_invariant_stops_the_state_machine() {
    let dir = tempfile::tempdir().unwrap();
    let (genesis, keys) = test_genesis("stop");
    let metrics = LedgerMetrics::unregistered();
    let mut machine = LedgerStateMachine::open(dir.path(), genesis.clone(), true, metrics.clone()).unwrap();

    // Value appears from nowhere (as a bug would make it): the next applied entry must fail.
    machine
        .shared()
        .write()
        .unwrap()
        .state
        .accounts
        .entry(Keypair::generate().address())
        .or_default()
        .balance = Amount::aic(1).unwrap();
    let signed = Transaction {
        chain_id: genesis.chain_id.clone(),
        from: keys.fundraiser.address(),
        nonce: 0,
        call: Call::Transfer {
            to: Keypair::generate().address(),
            amount: Amount::aic(1).unwrap(),
        },
    }
    .sign(&keys.fundraiser);
    let entry: Entry<LedgerRaft> = Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 0), 1),
        payload: EntryPayload::Normal(LedgerCommand::Transaction(signed)),
    };
    let error = machine.apply(vec![entry]).await.unwrap_err();
    assert!(error.to_string().contains("invariant"), "{error}");
    assert_eq!(metrics.invariant_violations.get(), 1);
}
