//! Group commit on three replicas over loopback QUIC: transactions submitted together share a
//! batch entry, and the bad ones among them fail alone (a forged signature or an impossible
//! nonce is refused before consensus; an overdraft or a replay inside a batch fails when
//! applied) while the rest apply, and every replica ends in the same state.

use aic_ledger::amount::Amount;
use aic_ledger::api::{LedgerApiError, LedgerRequest, LedgerResponse, LedgerResult};
use aic_ledger::authz::MAX_NONCE_AHEAD;
use aic_ledger::raft::types::{CommandOutcome, LedgerCommand};
use aic_ledger::testkit::{LedgerClient, TestCluster};
use aic_ledger::tx::{Call, Transaction};
use aic_ledger::{Keypair, SignedTransaction, TxError};

fn transfer(chain: &str, from: &Keypair, nonce: u64, to: &Keypair, base_units: u128) -> SignedTransaction {
    Transaction {
        chain_id: chain.to_string(),
        from: from.address(),
        nonce,
        call: Call::Transfer {
            to: to.address(),
            amount: Amount::base_units(base_units),
        },
    }
    .sign(from)
}

async fn submit(client: &LedgerClient, signed: SignedTransaction) -> LedgerResult {
    client.request(&LedgerRequest::Submit(Box::new(signed))).await
}

async fn balance(client: &LedgerClient, who: &Keypair) -> Amount {
    match client.request(&LedgerRequest::Account(who.address())).await {
        Ok(LedgerResponse::Account(view)) => view.account.balance,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_refuses_its_bad_transactions_alone_and_the_replicas_end_identical() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = TestCluster::new(dir.path(), 3);
    cluster.start_all().await;
    let leader = cluster.leader_index().expect("a leader");
    let follower = (leader + 1) % 3;
    let client = cluster.client(follower).await;
    let chain = cluster.genesis.chain_id.clone();
    let fundraiser = &cluster.keys.fundraiser;

    let senders: Vec<Keypair> = (0..8).map(|_| Keypair::generate()).collect();
    for (nonce, sender) in senders.iter().enumerate() {
        let fund = transfer(&chain, fundraiser, nonce as u64, sender, 1_000);
        match submit(&client, fund).await {
            Ok(LedgerResponse::Submitted { result: Ok(_), .. }) => {}
            other => panic!("funding: {other:?}"),
        }
    }
    let recipient = Keypair::generate();
    let broke = Keypair::generate();

    // Submitted at once, through a follower (forwarded to the leader's batch).
    let mut forged = transfer(&chain, &senders[1], 1, &recipient, 1);
    forged.signature[10] ^= 1;
    let mut submissions: Vec<SignedTransaction> = senders
        .iter()
        .map(|s| transfer(&chain, s, 0, &recipient, 10))
        .collect();
    submissions.push(forged);
    submissions.push(transfer(&chain, &broke, 0, &recipient, 1));
    submissions.push(transfer(&chain, &senders[2], MAX_NONCE_AHEAD + 5, &recipient, 1));
    let pending: Vec<_> = submissions
        .into_iter()
        .map(|signed| {
            let client = client.clone();
            tokio::spawn(async move { submit(&client, signed).await })
        })
        .collect();
    let mut answers = Vec::new();
    for answer in pending {
        answers.push(answer.await.expect("a submission task"));
    }
    for (i, answer) in answers[..8].iter().enumerate() {
        assert!(
            matches!(answer, Ok(LedgerResponse::Submitted { result: Ok(_), .. })),
            "sender {i}: {answer:?}"
        );
    }
    assert!(
        matches!(answers[8], Err(LedgerApiError::Refused(TxError::BadSignature))),
        "{:?}",
        answers[8]
    );
    assert!(
        matches!(
            answers[9],
            Ok(LedgerResponse::Submitted {
                result: Err(TxError::InsufficientBalance { .. }),
                ..
            })
        ),
        "{:?}",
        answers[9]
    );
    assert!(
        matches!(
            answers[10],
            Err(LedgerApiError::Refused(TxError::BadNonce { .. }))
        ),
        "{:?}",
        answers[10]
    );
    assert_eq!(balance(&client, &recipient).await, Amount::base_units(80));

    // One batch entry, proposed as the leader would: its overdraft and its replay fail alone.
    let good = transfer(&chain, &senders[3], 1, &recipient, 5);
    let batch = vec![
        good.clone(),
        transfer(&chain, &broke, 0, &recipient, 1),
        good,
        transfer(&chain, &senders[4], 1, &recipient, 7),
    ];
    let written = cluster
        .replica(leader)
        .raft()
        .client_write(LedgerCommand::Batch(batch))
        .await
        .expect("a committed batch");
    let CommandOutcome::Batch(outcomes) = written.data else {
        panic!("a batch's outcome: {:?}", written.data)
    };
    let results: Vec<&Result<_, TxError>> = outcomes.iter().map(|o| &o.result).collect();
    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert!(
        matches!(results[1], Err(TxError::InsufficientBalance { .. })),
        "{:?}",
        results[1]
    );
    assert!(
        matches!(results[2], Err(TxError::BadNonce { expected: 2, got: 1 })),
        "the replay inside the batch: {:?}",
        results[2]
    );
    assert!(results[3].is_ok(), "{:?}", results[3]);
    assert_eq!(balance(&client, &recipient).await, Amount::base_units(92));

    cluster.same_state_everywhere(&[0, 1, 2]).await;
    for i in 0..3 {
        cluster.kill(i).await;
    }
}
