//! A replica's disk failing under its Raft log, through the log store's fault layer: full (an
//! append half-written, then "no space left on device") or an fsync that fails. Nothing is
//! acknowledged before a majority wrote it durably; the replica whose disk failed stops and
//! says why; restarted once the disk has room, it rejoins and reaches the same state.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aic_ledger::amount::Amount;
use aic_ledger::api::{LedgerApiError, LedgerRequest, LedgerResponse};
use aic_ledger::genesis::Genesis;
use aic_ledger::raft::disk_faults::DiskFaults;
use aic_ledger::raft::replica::{CoreStopped, NotReady, ReplicaSettings};
use aic_ledger::testkit::{wait_for, LedgerClient, TestCluster};
use aic_ledger::{Address, Keypair, SignedTransaction, TxError};

/// How long a test waits for a replica to stop before it fails (never reached when it works).
const STOP_WAIT: Duration = Duration::from_secs(30);

/// Three replicas, each on a disk the test can fill or make fail.
fn cluster_on_faulty_disks(base: &std::path::Path) -> (TestCluster, Vec<Arc<DiskFaults>>) {
    let disks: Vec<Arc<DiskFaults>> = (0..3).map(|_| Arc::new(DiskFaults::default())).collect();
    let mut cluster = TestCluster::new(base, 3);
    let by_replica = disks.clone();
    cluster.settings = Box::new(move |dir: PathBuf, genesis: Genesis| {
        // The test cluster names each replica's directory "replica-N".
        let n: usize = dir
            .file_name()
            .and_then(|name| name.to_str()?.strip_prefix("replica-")?.parse().ok())
            .expect("a replica directory");
        let mut settings = ReplicaSettings::new(dir, genesis);
        settings.audit_every_entry = true;
        settings.disk_faults = Some(by_replica[n - 1].clone());
        settings
    });
    (cluster, disks)
}

async fn submit(client: &LedgerClient, signed: &SignedTransaction) -> Result<(), LedgerApiError> {
    match client
        .request(&LedgerRequest::Submit(Box::new(signed.clone())))
        .await?
    {
        LedgerResponse::Submitted { result, .. } => {
            result.map_err(|e: TxError| LedgerApiError::Refused(e))?;
            Ok(())
        }
        other => Err(LedgerApiError::BadRequest(format!("unexpected answer {other:?}"))),
    }
}

/// Submits through the first live replica that leads, waiting for a leader between tries.
async fn submit_anywhere(cluster: &TestCluster, signed: &SignedTransaction) {
    for _ in 0..40 {
        wait_for(|| cluster.leader_index().is_some()).await;
        let leader = cluster.leader_index().expect("a leader");
        if submit(&cluster.client(leader).await, signed).await.is_ok() {
            return;
        }
    }
    panic!("no leader acknowledged the transfer");
}

fn balance(cluster: &TestCluster, i: usize, of: &Address) -> Amount {
    cluster.replica(i).read(|applied| applied.state.balance_of(of))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_fsync_fails_stops_says_why_and_rejoins_once_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, disks) = cluster_on_faulty_disks(dir.path());
    cluster.start_all().await;
    let leader = cluster.leader_index().expect("a leader");
    let mut nonce = 0;
    let mut acknowledged = Vec::new();
    for i in 0..3u128 {
        let to = Keypair::generate().address();
        submit_anywhere(
            &cluster,
            &cluster.fundraiser_transfer(nonce, to, Amount::aic(i + 1).unwrap()),
        )
        .await;
        acknowledged.push((to, Amount::aic(i + 1).unwrap()));
        nonce += 1;
    }

    // The leader's disk stops syncing: its next append fails, and its Raft core stops.
    disks[leader].fail_fsync();
    let stopping = cluster.replica(leader).clone();
    let client = cluster.client(leader).await;
    let to = Keypair::generate().address();
    let first = cluster.fundraiser_transfer(nonce, to, Amount::aic(10).unwrap());
    // Acknowledged or not: an acknowledgement here means the followers, a majority, wrote it.
    if submit(&client, &first).await.is_ok() {
        acknowledged.push((to, Amount::aic(10).unwrap()));
    }
    let reason = tokio::time::timeout(STOP_WAIT, stopping.stopped())
        .await
        .expect("the replica stops");
    eprintln!("the replica whose fsync failed stopped: {reason}");
    assert!(
        matches!(reason, CoreStopped::Storage(_)),
        "it says the disk failed: {reason}"
    );
    assert!(disks[leader].refused() > 0);
    // Its `/readyz` says so until the process goes.
    assert_eq!(
        stopping.readiness(),
        Err(NotReady::Stopped(reason.clone())),
        "a stopped replica is not ready"
    );

    // Another replica leads; writes go on.
    wait_for(|| cluster.leader_index().is_some_and(|l| l != leader)).await;
    let nonce = cluster
        .client(cluster.leader_index().unwrap())
        .await
        .nonce(cluster.keys.fundraiser.address())
        .await
        .expect("a nonce");
    let to = Keypair::generate().address();
    submit_anywhere(
        &cluster,
        &cluster.fundraiser_transfer(nonce, to, Amount::aic(20).unwrap()),
    )
    .await;
    acknowledged.push((to, Amount::aic(20).unwrap()));

    // The disk works again; the supervisor restarts the replica on it (the stopped process is
    // gone: nothing of it may hold its socket).
    drop((stopping, client));
    cluster.kill(leader).await;
    disks[leader].heal();
    cluster.start(leader).await;
    cluster.same_state_everywhere(&[0, 1, 2]).await;
    for i in 0..3 {
        let replica = cluster.replica(i).clone();
        wait_for(|| replica.readiness().is_ok()).await;
    }
    for (to, amount) in &acknowledged {
        for i in 0..3 {
            assert_eq!(
                balance(&cluster, i, to),
                *amount,
                "replica {i}: acknowledged transfer lost"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_acknowledged_until_a_majority_wrote_it_durably() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, disks) = cluster_on_faulty_disks(dir.path());
    cluster.start_all().await;
    let leader = cluster.leader_index().expect("a leader");
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let client = cluster.client(leader).await;
    let before = Keypair::generate().address();
    submit(
        &client,
        &cluster.fundraiser_transfer(0, before, Amount::aic(1).unwrap()),
    )
    .await
    .expect("acknowledged while every disk works");

    // One follower's disk fills up, the other's stops syncing: only the leader can write.
    disks[followers[0]].fill();
    disks[followers[1]].fail_fsync();
    let to = Keypair::generate().address();
    let signed = cluster.fundraiser_transfer(1, to, Amount::aic(5).unwrap());
    let pending = {
        let client = client.clone();
        let signed = signed.clone();
        tokio::spawn(async move { submit(&client, &signed).await })
    };
    for &f in &followers {
        let replica = cluster.replica(f).clone();
        let reason = tokio::time::timeout(STOP_WAIT, replica.stopped())
            .await
            .expect("the follower stops");
        eprintln!("follower {f} stopped: {reason}");
        assert!(matches!(reason, CoreStopped::Storage(_)), "{reason}");
        assert!(disks[f].refused() > 0, "follower {f}'s disk refused the append");
    }
    // Both followers stopped without writing it: it is not acknowledged (still waiting, or
    // refused), and the leader has not applied it.
    if pending.is_finished() {
        let answer = pending.await.unwrap();
        assert!(
            answer.is_err(),
            "acknowledged without a durable majority: {answer:?}"
        );
    } else {
        // Answered after the followers are back: either way, nothing to assert on the answer.
        drop(pending);
    }
    assert_eq!(balance(&cluster, leader, &to), Amount::ZERO);

    // Space returns; both are restarted on their disks and rejoin.
    for &f in &followers {
        cluster.kill(f).await;
        disks[f].heal();
        cluster.start(f).await;
    }
    // Whatever the leader still holds is committed once they are back: wait for all of it.
    let current = cluster.replica(leader).clone();
    wait_for(|| {
        let m = current.raft().metrics().borrow().clone();
        m.last_applied.map(|l| l.index) >= m.last_log_index
    })
    .await;
    let nonce = cluster
        .client(leader)
        .await
        .nonce(cluster.keys.fundraiser.address())
        .await
        .expect("a nonce");
    let after = Keypair::generate().address();
    submit_anywhere(
        &cluster,
        &cluster.fundraiser_transfer(nonce, after, Amount::aic(2).unwrap()),
    )
    .await;
    cluster.same_state_everywhere(&[0, 1, 2]).await;
    for i in 0..3 {
        assert_eq!(balance(&cluster, i, &before), Amount::aic(1).unwrap());
        assert_eq!(balance(&cluster, i, &after), Amount::aic(2).unwrap());
        let applied = balance(&cluster, i, &to);
        assert!(
            applied == Amount::ZERO || applied == Amount::aic(5).unwrap(),
            "at most once: {applied:?}"
        );
    }
}
