//! The ledger's boundaries as an attacker meets them over a real QUIC connection: which role may
//! make which ledger request (the authorization table, every cell), requests that must be refused
//! before they cost a Raft entry (oversized, badly signed, replayed), and replication that is
//! split by bytes so no entry batch can outgrow a frame.

use aic_ledger::amount::Amount;
use aic_ledger::api::{LedgerApiError, LedgerRequest, LedgerResponse};
use aic_ledger::authz;
use aic_ledger::testkit::{wait_for, TestCluster};
use aic_ledger::tx::{AssetKind, AssetMetadata, Call, Transaction};
use aic_ledger::{Keypair, SignedTransaction, TxError};
use aic_protocol::{JobId, NodeId, Role};

fn signed(cluster: &TestCluster, key: &Keypair, nonce: u64, call: Call) -> SignedTransaction {
    Transaction {
        chain_id: cluster.genesis.chain_id.clone(),
        from: key.address(),
        nonce,
        call,
    }
    .sign(key)
}

/// Every ledger request with a certificate of every role, sent to a follower (the check is made
/// where a request enters, before it is forwarded): refused exactly where the table says.
/// Membership requests that are allowed are sent in a form that changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ledger_request_and_role_is_allowed_or_refused_as_the_table_says() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = TestCluster::new(dir.path(), 3);
    cluster.start_all().await;
    let leader = cluster.leader_index().unwrap();
    let follower = (leader + 1) % 3;
    let voters: Vec<u64> = (0..3).map(|i| cluster.replica(i).id).collect();
    let harmless = |request: LedgerRequest| match request {
        LedgerRequest::AddLearner { .. } => LedgerRequest::AddLearner {
            id: cluster.replica(follower).id,
            addr: cluster.replica(follower).me.clone(),
        },
        LedgerRequest::ChangeMembership { .. } => LedgerRequest::ChangeMembership {
            voters: voters.clone(),
        },
        other => other,
    };
    let mut cells = 0;
    for role in Role::ALL {
        let client = cluster.client_as(follower, role).await;
        for request in LedgerRequest::examples() {
            let name = request.kind_name();
            let answer = client.request(&harmless(request.clone())).await;
            let forbidden = matches!(answer, Err(LedgerApiError::Forbidden { .. }));
            assert_eq!(
                forbidden,
                !authz::allows(&request, role),
                "{role} making {name}: {answer:?}"
            );
            cells += 1;
        }
    }
    assert_eq!(cells, Role::ALL.len() * authz::TABLE.len());

    // Issue 12's attack: a compute node's certificate removing a voter is refused, and the
    // voters stay three.
    for role in [Role::Compute, Role::Storage, Role::Client, Role::Scheduler] {
        let attacker = cluster.client_as(follower, role).await;
        let cut = LedgerRequest::ChangeMembership {
            voters: voters[..2].to_vec(),
        };
        assert!(matches!(
            attacker.request(&cut).await,
            Err(LedgerApiError::Forbidden { .. })
        ));
    }
    let status = cluster.replica(leader).status();
    assert_eq!(status.replicas.iter().filter(|r| r.voter).count(), 3);
}

/// A request of nearly 4 MiB once deposed the leader every time (followers refused the
/// replication frame). Now it is refused by size before it is proposed: the term, the leader
/// and the log stay as they were, however often it is sent. So are a bad signature, a wrong
/// chain and a replayed nonce — none costs a Raft entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_cost_no_raft_entry_and_depose_no_leader() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = TestCluster::new(dir.path(), 3);
    cluster.start_all().await;
    let leader = cluster.leader_index().unwrap();
    let client = cluster.client((leader + 1) % 3).await;
    let before = cluster.replica(leader).status();
    let alice = Keypair::generate();
    let huge = signed(
        &cluster,
        &alice,
        0,
        Call::MintAsset {
            kind: AssetKind::Model,
            metadata: AssetMetadata {
                name: "huge".into(),
                content_hash: [1; 32],
                manifest: "x".repeat(3 * 1024 * 1024 + 900 * 1024),
                usage_fee: Amount::ZERO,
            },
        },
    );
    for _ in 0..3 {
        let answer = client
            .request(&LedgerRequest::Submit(Box::new(huge.clone())))
            .await;
        assert!(
            matches!(answer, Err(LedgerApiError::Refused(TxError::TooLarge { .. }))),
            "{answer:?}"
        );
    }
    let fundraiser = cluster.keys.fundraiser.clone();
    let transfer = |nonce| {
        let call = Call::Transfer {
            to: alice.address(),
            amount: Amount::aic(1).unwrap(),
        };
        signed(&cluster, &fundraiser, nonce, call)
    };
    let mut forged = transfer(0);
    forged.signature[0] ^= 1;
    let mut wrong_chain = transfer(0);
    wrong_chain.tx.chain_id = "another-chain".into();
    let wrong_chain = wrong_chain.tx.sign(&fundraiser);
    let ahead = transfer(authz::MAX_NONCE_AHEAD + 1);
    for (what, tx, expected) in [
        ("forged", forged, "bad_signature"),
        ("wrong chain", wrong_chain, "wrong_chain"),
        ("far ahead", ahead, "bad_nonce"),
    ] {
        match client.request(&LedgerRequest::Submit(Box::new(tx))).await {
            Err(LedgerApiError::Refused(refusal)) => assert_eq!(refusal.label(), expected, "{what}"),
            other => panic!("{what}: {other:?}"),
        }
    }
    let after = cluster.replica(leader).status();
    assert_eq!(
        (after.term, after.leader, after.applied_index),
        (before.term, before.leader, before.applied_index),
        "a refused request changed the term, the leader or the log"
    );
    // A good transfer goes through; replaying it is refused before consensus.
    let good = transfer(0);
    let answer = client
        .request(&LedgerRequest::Submit(Box::new(good.clone())))
        .await;
    assert!(
        matches!(answer, Ok(LedgerResponse::Submitted { result: Ok(_), .. })),
        "{answer:?}"
    );
    let applied = cluster.replica(leader).status().applied_index;
    let replay = client.request(&LedgerRequest::Submit(Box::new(good))).await;
    assert!(matches!(
        replay,
        Err(LedgerApiError::Refused(TxError::BadNonce { .. }))
    ));
    assert_eq!(cluster.replica(leader).status().applied_index, applied);
}

/// A follower that was down while 20 checkpoints of 250 KiB were committed must be sent ~5 MB of
/// entries to catch up: more than one frame holds. Replication splits the batch by bytes, so it
/// catches up and ends in the leader's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_follower_catches_up_on_entries_larger_than_a_frame() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = TestCluster::new(dir.path(), 3);
    // What is tested is the splitting, not failover: election timeouts far above a loaded
    // host's worst stall, so the follower catching up never stands for election meanwhile.
    cluster.settings = Box::new(|dir, genesis| {
        let mut settings = aic_ledger::raft::replica::ReplicaSettings::new(dir, genesis);
        settings.audit_every_entry = true;
        settings.election_timeout = (
            std::time::Duration::from_secs(3),
            std::time::Duration::from_secs(6),
        );
        settings
    });
    cluster.start_all().await;
    let leader = cluster.leader_index().unwrap();
    let lagging = (leader + 1) % 3;
    let client = cluster.client(leader).await;
    let (fundraiser, system) = (cluster.keys.fundraiser.clone(), cluster.keys.system.clone());
    let job = JobId::random();
    let runner = NodeId::from_public_key(b"runner");
    let submit = |tx: SignedTransaction| {
        let client = client.clone();
        async move {
            match client.request(&LedgerRequest::Submit(Box::new(tx))).await {
                Ok(LedgerResponse::Submitted { result: Ok(_), .. }) => {}
                other => panic!("{other:?}"),
            }
        }
    };
    submit(signed(
        &cluster,
        &fundraiser,
        0,
        Call::OpenEscrow {
            job,
            amount: Amount::aic(10).unwrap(),
        },
    ))
    .await;
    submit(signed(
        &cluster,
        &system,
        0,
        Call::RecordJob {
            job,
            runner,
            dataset: aic_protocol::AssetId::from_bytes([1; 16]),
            model: aic_protocol::AssetId::from_bytes([2; 16]),
            request: vec![1],
        },
    ))
    .await;
    cluster.kill(lagging).await;
    // 72 entries of 60 KiB: more than one 4 MiB frame holds.
    for round in 1..=72u32 {
        submit(signed(
            &cluster,
            &system,
            u64::from(round),
            Call::CheckpointJob {
                job,
                runner,
                round,
                tensors: None,
                progress: vec![round as u8; 60 * 1024],
            },
        ))
        .await;
    }
    let target = cluster.replica(leader).status();
    let back = cluster.start(lagging).await;
    wait_for(|| back.status().applied_index >= target.applied_index).await;
    assert_eq!(
        back.status().state_hash,
        cluster.replica(leader).status().state_hash
    );
    assert_eq!(cluster.replica(leader).status().term, target.term, "no election");
}
