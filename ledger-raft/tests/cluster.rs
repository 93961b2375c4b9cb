//! Three replicas on loopback QUIC: a leader killed in the middle of a stream of transfers is
//! replaced and no acknowledged transfer is lost; a follower that missed a purged log catches up
//! by snapshot and reaches the same state hash; replays stay refused after both.

use aic_ledger::amount::Amount;
use aic_ledger::api::{LedgerRequest, LedgerResponse};
use aic_ledger::raft::replica::ReplicaSettings;
use aic_ledger::testkit::{wait_for, LedgerClient, TestCluster};
use aic_ledger::{Address, Keypair, SignedTransaction, TxError};

/// Submits through any live replica; after a failure (leadership moving) it waits until a live
/// replica leads again, then retries. Returns whether the ledger acknowledged the transfer.
async fn submit(
    cluster: &TestCluster,
    clients: &[LedgerClient],
    signed: &SignedTransaction,
) -> Option<Result<(), TxError>> {
    for attempt in 0..40 {
        let client = &clients[attempt % clients.len()];
        match client
            .request(&LedgerRequest::Submit(Box::new(signed.clone())))
            .await
        {
            Ok(LedgerResponse::Submitted { result, .. }) => return Some(result.map(|_| ())),
            // Refused before consensus (a replay's spent nonce): a refusal all the same.
            Err(aic_ledger::api::LedgerApiError::Refused(refusal)) => return Some(Err(refusal)),
            Ok(other) => panic!("unexpected answer {other:?}"),
            Err(_) => wait_for(|| cluster.leader_index().is_some()).await,
        }
    }
    None
}

async fn next_nonce(cluster: &TestCluster, clients: &[LedgerClient], who: Address) -> u64 {
    for attempt in 0..40 {
        if let Ok(nonce) = clients[attempt % clients.len()].nonce(who).await {
            return nonce;
        }
        wait_for(|| cluster.leader_index().is_some()).await;
    }
    panic!("no replica answered a nonce query");
}

fn new_leader_hint(cluster: &TestCluster) -> usize {
    cluster
        .leader_index()
        .unwrap_or_else(|| (0..3).find(|&i| cluster.replicas[i].is_some()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_loses_no_acknowledged_transfer() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = TestCluster::new(dir.path(), 3);
    cluster.start_all().await;
    let clients = [
        cluster.client(0).await,
        cluster.client(1).await,
        cluster.client(2).await,
    ];
    let fundraiser = cluster.keys.fundraiser.address();

    let mut acknowledged: Vec<(Address, Amount)> = Vec::new();
    let mut first_acknowledged: Option<SignedTransaction> = None;
    let mut killed = None;
    for i in 0..40u128 {
        if i == 15 {
            let leader = cluster.leader_index().expect("a leader");
            cluster.kill(leader).await;
            killed = Some(leader);
        }
        let live: Vec<LedgerClient> = (0..3)
            .filter(|j| Some(*j) != killed)
            .map(|j| clients[j].clone())
            .collect();
        let nonce = next_nonce(&cluster, &live, fundraiser).await;
        let to = Keypair::generate().address();
        let amount = Amount::aic(i + 1).unwrap();
        let signed = cluster.fundraiser_transfer(nonce, to, amount);
        if let Some(Ok(())) = submit(&cluster, &live, &signed).await {
            acknowledged.push((to, amount));
            first_acknowledged.get_or_insert(signed);
        }
    }
    assert!(
        acknowledged.len() >= 35,
        "most transfers were acknowledged: {}",
        acknowledged.len()
    );

    // Raft traffic is for scheduler certificates only: a client may not vote.
    let vote = aic_protocol::messages::ReplicaRequest::Vote(Vec::new());
    let refused = clients[new_leader_hint(&cluster)]
        .0
        .call(&vote)
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            aic_protocol::Error::Rpc(aic_protocol::RpcError {
                code: aic_protocol::ErrorCode::PermissionDenied,
                ..
            })
        ),
        "{refused}"
    );

    let survivors: Vec<usize> = (0..3).filter(|j| Some(*j) != killed).collect();
    let new_leader = cluster.leader_index().expect("a new leader");
    assert_ne!(Some(new_leader), killed);
    let client = &clients[new_leader];
    for (to, amount) in &acknowledged {
        match client.request(&LedgerRequest::Account(*to)).await.unwrap() {
            LedgerResponse::Account(view) => assert_eq!(view.account.balance, *amount, "transfer to {to:?}"),
            other => panic!("{other:?}"),
        }
    }
    // A transaction acknowledged by the old leader is refused as a replay by the new one.
    let replay = submit(
        &cluster,
        std::slice::from_ref(client),
        &first_acknowledged.unwrap(),
    )
    .await;
    assert!(
        matches!(replay, Some(Err(TxError::BadNonce { .. }))),
        "{replay:?}"
    );
    cluster.same_state_everywhere(&survivors).await;
    match client.request(&LedgerRequest::Audit).await.unwrap() {
        LedgerResponse::Audit(result) => result.unwrap(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_missed_a_purged_log_catches_up_by_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = TestCluster::new(dir.path(), 3);
    cluster.settings = Box::new(|dir, genesis| {
        let mut settings = ReplicaSettings::new(dir, genesis);
        settings.audit_every_entry = true;
        settings.snapshot_every_entries = 10;
        settings.logs_kept_after_snapshot = 0;
        settings
    });
    cluster.start_all().await;
    let leader = cluster.leader_index().unwrap();
    let lagging = (0..3).find(|&i| i != leader).unwrap();
    let clients = vec![cluster.client(leader).await];
    let fundraiser = cluster.keys.fundraiser.address();

    // The follower crashes and the operator removes it, so the leader may purge its log.
    cluster.kill(lagging).await;
    let ids = cluster.ids();
    let remaining: Vec<_> = ids.values().copied().collect();
    let lagging_id = cluster
        .replica(leader)
        .raft()
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .find(|id| !remaining.contains(id))
        .unwrap();
    cluster
        .replica(leader)
        .execute(LedgerRequest::ChangeMembership {
            voters: remaining.clone(),
        })
        .await
        .unwrap();
    let mut first_signed = None;
    for i in 0..30u128 {
        let nonce = next_nonce(&cluster, &clients, fundraiser).await;
        let signed =
            cluster.fundraiser_transfer(nonce, Keypair::generate().address(), Amount::aic(i + 1).unwrap());
        assert_eq!(submit(&cluster, &clients, &signed).await, Some(Ok(())));
        first_signed.get_or_insert(signed);
    }
    // The leader has snapshotted and purged the entries the lagging follower lacks.
    let leader_replica = cluster.replica(leader).clone();
    wait_for(|| {
        leader_replica
            .raft()
            .metrics()
            .borrow()
            .purged
            .is_some_and(|purged| purged.index >= 20)
    })
    .await;

    // It comes back on its old data and rejoins: first as a learner, then as a voter.
    let restarted = cluster.start(lagging).await;
    assert_eq!(restarted.id, lagging_id);
    // A config that still says `bootstrap = true` leaves a replica with a log as it is.
    assert_eq!(
        restarted.bootstrap().await.unwrap(),
        aic_ledger::raft::replica::Bootstrap::AlreadyMember
    );
    leader_replica
        .execute(LedgerRequest::AddLearner {
            id: restarted.id,
            addr: restarted.me.clone(),
        })
        .await
        .unwrap();
    let mut voters = remaining;
    voters.push(restarted.id);
    leader_replica
        .execute(LedgerRequest::ChangeMembership { voters })
        .await
        .unwrap();
    let target = leader_replica.status().applied_index;
    wait_for(|| restarted.status().applied_index >= target).await;
    assert!(
        restarted.raft().metrics().borrow().snapshot.is_some(),
        "the follower installed a snapshot"
    );
    cluster.same_state_everywhere(&[0, 1, 2]).await;

    // A replay of an early transfer is refused after the snapshot restore, on every replica.
    let replay = first_signed.unwrap();
    let refused = submit(&cluster, &[cluster.client(lagging).await], &replay).await;
    assert!(
        matches!(refused, Some(Err(TxError::BadNonce { .. }))),
        "{refused:?}"
    );
    cluster.same_state_everywhere(&[0, 1, 2]).await;
}
