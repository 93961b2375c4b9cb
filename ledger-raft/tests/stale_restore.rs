//! A replica brought back on an older copy of its data dir (the "restore one replica" mistake)
//! refuses to start when the leader says it had acknowledged more; when nobody can say, the
//! leader's Raft core keeps running (it takes the follower's log going back as a conflict to
//! search from, not as a panic) and the replica catches up. A replica given another replica's
//! data dir refuses to start on it.

use aic_ledger::testkit::{wait_for, TestCluster};

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum OlderCopy {
    /// Its own data dir, with a leader to ask at start.
    Own,
    /// Its own, with the start-up check off (as when no peer answers): the leader must cope.
    OwnUnchecked,
    /// The other follower's.
    Other,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_refuses_to_start_on_an_older_copy_of_its_own_data_dir() {
    restore_from_an_older_copy(OlderCopy::Own).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_back_on_an_older_copy_unchecked_does_not_stop_the_leader() {
    restore_from_an_older_copy(OlderCopy::OwnUnchecked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_refuses_to_start_on_another_replicas_data_dir() {
    restore_from_an_older_copy(OlderCopy::Other).await;
}

async fn restore_from_an_older_copy(kind: OlderCopy) {
    let other = kind == OlderCopy::Other;
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = TestCluster::new(dir.path(), 3);
    cluster.start_all().await;
    let leader = cluster.leader_index().unwrap();
    let stale = (0..3).find(|&i| i != leader).unwrap();
    let copied = if other {
        (0..3).find(|&i| i != leader && i != stale).unwrap()
    } else {
        stale
    };
    let client = cluster.client(leader).await;
    for n in 1..=3 {
        cluster.fundraiser_pays(&client, n).await;
    }
    // The operator's "backup": a copy of the follower's data dir, taken with it stopped.
    cluster.kill(copied).await;
    let copy = dir.path().join("old-copy");
    copy_dir(&dir.path().join(format!("replica-{}", copied + 1)), &copy);
    cluster.start(copied).await;
    let data = dir.path().join(format!("replica-{}", stale + 1));
    for n in 4..=20 {
        cluster.fundraiser_pays(&client, n).await;
    }
    let leader_replica = cluster.replica(leader).clone();
    let stale_id = cluster.replica(stale).id;
    wait_for(|| {
        leader_replica
            .raft()
            .metrics()
            .borrow()
            .replication
            .as_ref()
            .and_then(|r| r.get(&stale_id).cloned().flatten())
            .is_some_and(|matched| matched.index >= 20)
    })
    .await;
    // The "restore": the old copy put back, and the replica started on it.
    cluster.kill(stale).await;
    std::fs::remove_dir_all(&data).unwrap();
    copy_dir(&copy, &data);
    if other {
        // The copy carries the other replica's vote and log: this replica will not run on it.
        let refused = cluster.try_start(stale).await;
        assert!(
            matches!(
                refused,
                Err(aic_ledger::raft::replica::ReplicaError::ForeignDataDir { .. })
            ),
            "{:?}",
            refused.map(|r| r.id)
        );
        return;
    }
    if kind == OlderCopy::Own {
        // The leader knows it acknowledged more than the copy holds.
        let refused = cluster.try_start(stale).await;
        assert!(
            matches!(
                refused,
                Err(aic_ledger::raft::replica::ReplicaError::RevertedLog { held, acknowledged, .. })
                    if acknowledged > held
            ),
            "{:?}",
            refused.map(|r| r.id)
        );
        for n in 21..=23 {
            cluster.fundraiser_pays(&client, n).await;
        }
        assert!(leader_replica.is_leader());
        return;
    }
    cluster.settings = Box::new(|dir, genesis| {
        let mut settings = aic_ledger::raft::replica::ReplicaSettings::new(dir, genesis);
        settings.audit_every_entry = true;
        settings.check_log_with_peers = false;
        settings
    });
    let restored = cluster.start(stale).await;
    let leader_id = leader_replica.id;
    // It hears from the leader (which then learns its log went back).
    wait_for(|| restored.raft().metrics().borrow().current_leader == Some(leader_id)).await;
    for n in 21..=30 {
        cluster.fundraiser_pays(&client, n).await;
    }
    // The leader replicates the new entries to it: it either catches up from where its log
    // really is, or the leader's core stops (what happened before).
    wait_for(|| {
        let metrics = leader_replica.raft().metrics().borrow().clone();
        metrics.running_state.is_err()
            || restored
                .raft()
                .metrics()
                .borrow()
                .last_applied
                .is_some_and(|l| l.index >= 30)
    })
    .await;
    let running = leader_replica.raft().metrics().borrow().running_state.clone();
    assert!(running.is_ok(), "{running:?}");
    assert!(leader_replica.is_leader());
}
