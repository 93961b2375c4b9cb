//! Ledger backups and restores. A backup is the leader's latest snapshot (the applied state,
//! its last log id and membership), taken online and fetched in pieces; a restore writes it into
//! an empty data dir with the membership the operator names, so a whole cluster restored from
//! one backup starts identical, without the replicas it has retired. Nothing here touches a data
//! dir that holds a log: a live member's history never goes back.
//!
//! ```text
//! backup file   "AIC-LEDGER-BAK01" [snapshot bytes] [blake3 of the snapshot bytes]
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;

use openraft::{Membership, SnapshotMeta, StoredMembership};

use crate::raft::state_machine::SnapshotFile;
use crate::raft::types::{LogId, ReplicaAddr, ReplicaId};
use crate::state::LedgerState;

/// The first bytes of a backup file.
pub const BACKUP_MAGIC: &[u8; 16] = b"AIC-LEDGER-BAK01";
/// Bytes of snapshot one backup answer carries (the frame limit is 4 MiB).
pub const BACKUP_PIECE_BYTES: usize = 2 * 1024 * 1024;
/// The largest snapshot a backup fetches or a restore reads.
pub const MAX_BACKUP_BYTES: u64 = 16 * 1024 * 1024 * 1024;

/// Why a backup cannot be read or restored; nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum RestoreRefusal {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("not an AIC ledger backup (its first bytes are not {magic:?})", magic = std::str::from_utf8(BACKUP_MAGIC).unwrap_or_default())]
    NotABackup,
    #[error("the backup is damaged: its checksum does not match")]
    Damaged,
    #[error("the backup's snapshot does not decode: {0}")]
    Undecodable(String),
    #[error("the backup is larger than {MAX_BACKUP_BYTES} bytes")]
    TooLarge,
    #[error("{0} already holds a replica's data: a restore only fills an empty data dir (wipe it only if this replica is being restored with the whole cluster, or rejoin it as a learner)")]
    NotEmpty(String),
    #[error("no voters named: name the replicas that make up the restored cluster")]
    NoVoters,
    #[error("replica {0} is not a member in the backup; its members are {1}")]
    UnknownVoter(String, String),
    #[error("the backup is of chain {backup}, this replica's genesis of chain {genesis}")]
    OtherChain { backup: String, genesis: String },
}

/// What a backup holds, as `aic ledger backup` and `restore` report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupInfo {
    pub chain_id: String,
    pub last_log: Option<LogId>,
    pub block_height: u64,
    pub state_hash: [u8; 32],
    /// Every member (voters and learners) with its address.
    pub members: BTreeMap<ReplicaId, ReplicaAddr>,
    pub voters: BTreeSet<ReplicaId>,
}

/// Reads the snapshot inside a backup.
pub fn describe(snapshot: &[u8]) -> Result<BackupInfo, RestoreRefusal> {
    let file: SnapshotFile =
        postcard::from_bytes(snapshot).map_err(|e| RestoreRefusal::Undecodable(e.to_string()))?;
    let state: LedgerState =
        postcard::from_bytes(&file.data).map_err(|e| RestoreRefusal::Undecodable(e.to_string()))?;
    let membership = file.meta.last_membership.membership();
    Ok(BackupInfo {
        chain_id: state.chain_id().to_string(),
        last_log: file.meta.last_log_id,
        block_height: state.height(),
        state_hash: state.state_hash(),
        members: membership.nodes().map(|(id, addr)| (*id, addr.clone())).collect(),
        voters: membership.voter_ids().collect(),
    })
}

/// Writes a backup file (never over an existing one), synced before it is renamed into place.
pub fn write_file(path: &Path, snapshot: &[u8]) -> Result<(), RestoreRefusal> {
    let io = |e| RestoreRefusal::Io(path.display().to_string(), e);
    if path.exists() {
        return Err(io(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "exists; a backup is never overwritten",
        )));
    }
    let partial = path.with_extension("partial");
    let mut file = std::fs::File::create(&partial).map_err(io)?;
    file.write_all(BACKUP_MAGIC).map_err(io)?;
    file.write_all(snapshot).map_err(io)?;
    file.write_all(blake3::hash(snapshot).as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&partial, path).map_err(io)
}

/// Reads a backup file back: its snapshot bytes, checked against the checksum.
pub fn read_file(path: &Path) -> Result<Vec<u8>, RestoreRefusal> {
    let io = |e| RestoreRefusal::Io(path.display().to_string(), e);
    let length = std::fs::metadata(path).map_err(io)?.len();
    if length > MAX_BACKUP_BYTES + 48 {
        return Err(RestoreRefusal::TooLarge);
    }
    let bytes = std::fs::read(path).map_err(io)?;
    let Some(body) = bytes.strip_prefix(BACKUP_MAGIC.as_slice()) else {
        return Err(RestoreRefusal::NotABackup);
    };
    if body.len() < 32 {
        return Err(RestoreRefusal::Damaged);
    }
    let (snapshot, checksum) = body.split_at(body.len() - 32);
    if blake3::hash(snapshot).as_bytes() != checksum {
        return Err(RestoreRefusal::Damaged);
    }
    Ok(snapshot.to_vec())
}

/// Fills the empty data dir `dir` of one replica from `snapshot`, with `voters` (members of the
/// backup, by replica id) as the cluster's only members. Every replica of the restored cluster
/// gets the same command; each then starts from the same state and elects a leader among them.
pub fn restore_into(
    dir: &Path,
    snapshot: &[u8],
    voters: &[ReplicaId],
    chain_id: &str,
) -> Result<BackupInfo, RestoreRefusal> {
    let info = describe(snapshot)?;
    if info.chain_id != chain_id {
        return Err(RestoreRefusal::OtherChain {
            backup: info.chain_id,
            genesis: chain_id.to_string(),
        });
    }
    if voters.is_empty() {
        return Err(RestoreRefusal::NoVoters);
    }
    let members_text = || {
        info.members
            .iter()
            .map(|(id, addr)| format!("{id} ({})", addr.addr))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut nodes = BTreeMap::new();
    for voter in voters {
        let addr = info
            .members
            .get(voter)
            .ok_or_else(|| RestoreRefusal::UnknownVoter(voter.to_string(), members_text()))?;
        nodes.insert(*voter, addr.clone());
    }
    let holds_data = std::fs::read_dir(dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if holds_data {
        return Err(RestoreRefusal::NotEmpty(dir.display().to_string()));
    }
    let mut file: SnapshotFile =
        postcard::from_bytes(snapshot).map_err(|e| RestoreRefusal::Undecodable(e.to_string()))?;
    let voter_set: BTreeSet<ReplicaId> = nodes.keys().copied().collect();
    let membership = Membership::new(vec![voter_set], nodes);
    file.meta = SnapshotMeta {
        last_log_id: file.meta.last_log_id,
        last_membership: StoredMembership::new(file.meta.last_log_id, membership),
        snapshot_id: format!("restored-{}", file.meta.snapshot_id),
    };
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |e| RestoreRefusal::Io(path, e)
    };
    let state_dir = dir.join("state");
    let log_dir = dir.join("log");
    std::fs::create_dir_all(&state_dir).map_err(io(&state_dir))?;
    std::fs::create_dir_all(&log_dir).map_err(io(&log_dir))?;
    let encoded = postcard::to_stdvec(&file).map_err(|e| RestoreRefusal::Undecodable(e.to_string()))?;
    write_synced(&state_dir.join("snapshot"), &encoded)?;
    // The log starts after the snapshot, as if it had been purged up to it.
    crate::raft::log_store::write_restored(&log_dir, file.meta.last_log_id).map_err(io(&log_dir))?;
    Ok(BackupInfo {
        voters: voters.iter().copied().collect(),
        ..info
    })
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), RestoreRefusal> {
    let io = |e| RestoreRefusal::Io(path.display().to_string(), e);
    let mut file = std::fs::File::create(path).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
}
