//! An online backup taken from the leader in pieces, and a whole cluster restored from it with a
//! new membership that leaves a retired replica out: the restored replicas start identical to
//! the backup, elect a leader among themselves and go on. A restore never fills a data dir that
//! holds a replica's data, nor names a voter the backup does not know, nor reads a damaged file.

use aic_ledger::api::{LedgerApiError, LedgerRequest, LedgerResponse};
use aic_ledger::backup::{self, RestoreRefusal};
use aic_ledger::raft::replica::LedgerReplica;
use aic_ledger::testkit::{wait_for, TestCluster};

/// The whole backup, piece by piece, as `aic ledger backup` fetches it.
async fn fetch_backup(replica: &LedgerReplica) -> Vec<u8> {
    let mut snapshot = None;
    let mut bytes = Vec::new();
    loop {
        let answer = replica
            .execute(LedgerRequest::Backup {
                snapshot,
                offset: bytes.len() as u64,
            })
            .await
            .unwrap();
        let LedgerResponse::Backup {
            snapshot: hash,
            total,
            bytes: piece,
        } = answer
        else {
            panic!("{answer:?}")
        };
        snapshot = Some(hash);
        bytes.extend_from_slice(&piece);
        if bytes.len() as u64 >= total {
            assert_eq!(blake3::hash(&bytes).as_bytes(), &hash);
            return bytes;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_restored_from_an_online_backup_drops_a_retired_replica_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = TestCluster::new(dir.path(), 3);
    cluster.start_all().await;
    let leader = cluster.leader_index().unwrap();
    let client = cluster.client(leader).await;
    for n in 1..=5 {
        cluster.fundraiser_pays(&client, n).await;
    }
    let leader_replica = cluster.replica(leader).clone();
    let snapshot = fetch_backup(&leader_replica).await;
    let info = backup::describe(&snapshot).unwrap();
    let (hash_at_backup, nonce_at_backup) = leader_replica.read(|a| {
        (
            a.state.state_hash(),
            a.state.account(&cluster.keys.fundraiser.address()).nonce,
        )
    });
    assert_eq!(info.state_hash, hash_at_backup, "the backup is the applied state");
    assert_eq!(info.voters.len(), 3);
    // A piece of a snapshot that is not the one being fetched is refused.
    let gone = leader_replica
        .execute(LedgerRequest::Backup {
            snapshot: Some([1; 32]),
            offset: 0,
        })
        .await;
    assert!(matches!(gone, Err(LedgerApiError::BackupGone)), "{gone:?}");

    // The file: written once, read back, a damaged copy refused.
    let file = dir.path().join("ledger.backup");
    backup::write_file(&file, &snapshot).unwrap();
    assert!(matches!(
        backup::write_file(&file, &snapshot),
        Err(RestoreRefusal::Io(..))
    ));
    assert_eq!(backup::read_file(&file).unwrap(), snapshot);
    let mut damaged = std::fs::read(&file).unwrap();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 1;
    let damaged_file = dir.path().join("damaged.backup");
    std::fs::write(&damaged_file, damaged).unwrap();
    assert!(matches!(
        backup::read_file(&damaged_file),
        Err(RestoreRefusal::Damaged)
    ));

    // Work after the backup, then every replica is lost.
    for n in 6..=8 {
        cluster.fundraiser_pays(&client, n).await;
    }
    drop((client, leader_replica));
    let ids = cluster.ids();
    for i in 0..3 {
        cluster.kill(i).await;
    }

    // Replica 3 is retired: the cluster comes back as replicas 1 and 2.
    let voters = [ids[&0], ids[&1]];
    let chain = cluster.genesis.chain_id.clone();
    let data = |i: usize| dir.path().join(format!("replica-{}", i + 1));
    assert!(
        matches!(
            backup::restore_into(&data(0), &snapshot, &voters, &chain),
            Err(RestoreRefusal::NotEmpty(_))
        ),
        "a data dir with a replica's data is never overwritten"
    );
    assert!(matches!(
        backup::restore_into(&dir.path().join("fresh"), &snapshot, &[42], &chain),
        Err(RestoreRefusal::UnknownVoter(..))
    ));
    assert!(matches!(
        backup::restore_into(&dir.path().join("fresh"), &snapshot, &voters, "another-chain"),
        Err(RestoreRefusal::OtherChain { .. })
    ));
    for i in 0..2 {
        std::fs::remove_dir_all(data(i)).unwrap();
        let restored =
            backup::restore_into(&data(i), &backup::read_file(&file).unwrap(), &voters, &chain).unwrap();
        assert_eq!(restored.voters, voters.into_iter().collect());
    }
    let first = cluster.start(0).await;
    let second = cluster.start(1).await;
    for replica in [&first, &second] {
        assert_eq!(replica.read(|a| a.state.state_hash()), hash_at_backup);
    }
    wait_for(|| first.is_leader() || second.is_leader()).await;
    let leader = if first.is_leader() { 0 } else { 1 };
    let members: Vec<u64> = cluster
        .replica(leader)
        .raft()
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .collect();
    assert_eq!(members, {
        let mut v = voters.to_vec();
        v.sort();
        v
    });
    // The new leader's term is past the backup's last entry's, so its entries follow them.
    let term = cluster.replica(leader).raft().metrics().borrow().current_term;
    assert!(
        term > info.last_log.unwrap().leader_id.term,
        "term {term}, backup {:?}",
        info.last_log
    );
    // The work after the backup is gone; the ledger goes on from the backup's nonce.
    let client = cluster.client(leader).await;
    assert_eq!(
        client.nonce(cluster.keys.fundraiser.address()).await.unwrap(),
        nonce_at_backup
    );
    cluster.fundraiser_pays(&client, 9).await;
    let other = cluster.replica(1 - leader).clone();
    let leader_hash = cluster.replica(leader).read(|a| a.state.state_hash());
    wait_for(|| other.read(|a| a.state.state_hash()) == leader_hash).await;
}
