//! The Raft state machine: applies committed commands to the [`LedgerState`], audits it, and
//! builds, persists and installs snapshots.
//!
//! Only the latest snapshot is kept, on disk (`dir/snapshot`, replaced atomically) and in memory.
//! After a restart the state is the snapshot's; openraft re-applies the committed log after it.

use std::fs::{self, File};
use std::io::{self, Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::types::{
    CommandOutcome, Entry, LedgerCommand, LedgerRaft, LogId, ReplicaAddr, ReplicaId, StorageError, TxOutcome,
};
use crate::error::{InvariantViolation, TxError};
use crate::genesis::Genesis;
use crate::metrics::LedgerMetrics;
use crate::state::{Event, LedgerState};
use crate::tx::SignedTransaction;

/// What the replica's readers see: the state and how far it is applied.
pub struct Applied {
    pub state: LedgerState,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership<ReplicaId, ReplicaAddr>,
}

/// A shared, read-only view of the applied state.
pub type SharedState = Arc<RwLock<Applied>>;

/// A snapshot as `dir/snapshot` holds it, and as a backup carries it.
#[derive(Serialize, Deserialize)]
pub(crate) struct SnapshotFile {
    pub(crate) meta: SnapshotMeta<ReplicaId, ReplicaAddr>,
    pub(crate) data: Vec<u8>,
}

pub struct LedgerStateMachine {
    shared: SharedState,
    dir: PathBuf,
    /// The latest snapshot, shared with the builders openraft runs beside this state machine.
    snapshot: Arc<Mutex<Option<Arc<SnapshotFile>>>>,
    /// Audit after every entry (tests); production audits on demand.
    audit_every_entry: bool,
    metrics: LedgerMetrics,
}

fn sm_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_state_machine(AnyError::error(e.to_string())).into()
}

impl LedgerStateMachine {
    /// Opens the state machine in `dir`: from its snapshot if there is one, else from genesis.
    pub fn open(
        dir: &Path,
        genesis: Genesis,
        audit_every_entry: bool,
        metrics: LedgerMetrics,
    ) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let snapshot: Option<SnapshotFile> = match fs::read(dir.join("snapshot")) {
            Ok(bytes) => Some(postcard::from_bytes(&bytes).map_err(io::Error::other)?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let applied = match &snapshot {
            Some(file) => Applied {
                state: postcard::from_bytes(&file.data).map_err(io::Error::other)?,
                last_applied: file.meta.last_log_id,
                membership: file.meta.last_membership.clone(),
            },
            None => Applied {
                state: LedgerState::from_genesis(genesis),
                last_applied: None,
                membership: StoredMembership::default(),
            },
        };
        metrics.record_state(&applied.state);
        Ok(LedgerStateMachine {
            shared: Arc::new(RwLock::new(applied)),
            dir: dir.to_path_buf(),
            snapshot: Arc::new(Mutex::new(snapshot.map(Arc::new))),
            audit_every_entry,
            metrics,
        })
    }

    pub fn shared(&self) -> SharedState {
        self.shared.clone()
    }

    /// Counts an applied transaction (by kind and outcome) and its bytes.
    fn count(&self, signed: &SignedTransaction, result: &Result<Vec<Event>, TxError>) {
        let kind = signed.tx.call.kind();
        let label = match result {
            Ok(_) => "ok",
            Err(e) => e.label(),
        };
        self.metrics.transactions.with_label_values(&[kind, label]).inc();
        if let Ok(bytes) = postcard::experimental::serialized_size(signed) {
            self.metrics
                .transaction_bytes
                .with_label_values(&[kind])
                .inc_by(bytes as u64);
        }
        if let Ok(events) = result {
            self.metrics.record_events(events);
        }
    }

    fn apply_one(&self, applied: &mut Applied, entry: Entry) -> Result<CommandOutcome, InvariantViolation> {
        applied.last_applied = Some(entry.log_id);
        let outcome = match entry.payload {
            EntryPayload::Blank => CommandOutcome::None,
            EntryPayload::Membership(membership) => {
                applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                CommandOutcome::None
            }
            EntryPayload::Normal(LedgerCommand::Transaction(signed)) => {
                let result = applied.state.apply_transaction(&signed);
                self.count(&signed, &result);
                CommandOutcome::Transaction {
                    hash: signed.hash(),
                    result,
                }
            }
            EntryPayload::Normal(LedgerCommand::Batch(batch)) => CommandOutcome::Batch(
                batch
                    .iter()
                    .map(|signed| {
                        let hash = signed.hash();
                        let result = applied.state.apply_verified(signed, hash);
                        self.count(signed, &result);
                        TxOutcome { hash, result }
                    })
                    .collect(),
            ),
            EntryPayload::Normal(LedgerCommand::SealBlock(header)) => {
                let result = applied.state.apply_block(&header);
                if result.is_ok() {
                    self.metrics.blocks_sealed.inc();
                }
                CommandOutcome::Block(result)
            }
        };
        self.metrics.applied_index.set(entry.log_id.index as i64);
        if self.audit_every_entry {
            applied.state.audit()?;
        }
        Ok(outcome)
    }

    fn persist(&self, file: &SnapshotFile) -> io::Result<()> {
        let bytes = postcard::to_stdvec(file).map_err(io::Error::other)?;
        let temp = self.dir.join("snapshot.tmp");
        let mut out = File::create(&temp)?;
        out.write_all(&bytes)?;
        out.sync_all()?;
        fs::rename(&temp, self.dir.join("snapshot"))?;
        File::open(&self.dir)?.sync_all()
    }
}

impl RaftSnapshotBuilder<LedgerRaft> for LedgerStateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<LedgerRaft>, StorageError> {
        let file = {
            let applied = self.shared.read().expect("state lock");
            let data = postcard::to_stdvec(&applied.state).map_err(sm_err)?;
            let snapshot_id = match applied.last_applied {
                Some(id) => format!(
                    "{}-{}-{}",
                    id.leader_id,
                    id.index,
                    hex::encode(&applied.state.state_hash()[..6])
                ),
                None => "empty".to_string(),
            };
            SnapshotFile {
                meta: SnapshotMeta {
                    last_log_id: applied.last_applied,
                    last_membership: applied.membership.clone(),
                    snapshot_id,
                },
                data,
            }
        };
        self.persist(&file)
            .map_err(|e| StorageError::from(StorageIOError::write_snapshot(None, AnyError::new(&e))))?;
        let snapshot = Snapshot {
            meta: file.meta.clone(),
            snapshot: Box::new(Cursor::new(file.data.clone())),
        };
        *self.snapshot.lock().expect("snapshot lock") = Some(Arc::new(file));
        Ok(snapshot)
    }
}

/// Whether an applied entry may have moved what escrows and stakes hold: anything but
/// transactions whose events all leave holdings alone (a refused one has none).
fn may_move_held(outcome: &CommandOutcome) -> bool {
    let moves = |result: &Result<Vec<Event>, TxError>| {
        result
            .as_ref()
            .is_ok_and(|events| !events.iter().all(Event::leaves_holdings_alone))
    };
    match outcome {
        CommandOutcome::Transaction { result, .. } => moves(result),
        CommandOutcome::Batch(outcomes) => outcomes.iter().any(|o| moves(&o.result)),
        CommandOutcome::Block(_) | CommandOutcome::None => true,
    }
}

impl RaftStateMachine<LedgerRaft> for LedgerStateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<ReplicaId, ReplicaAddr>), StorageError> {
        let applied = self.shared.read().expect("state lock");
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandOutcome>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut applied = self.shared.write().expect("state lock");
        let mut outcomes = Vec::new();
        let mut held_may_move = false;
        for entry in entries {
            let log_id = entry.log_id;
            match self.apply_one(&mut applied, entry) {
                Ok(outcome) => {
                    held_may_move |= may_move_held(&outcome);
                    outcomes.push(outcome);
                }
                Err(violation) => {
                    // Fatal by design: openraft stops this replica on a storage error.
                    self.metrics.invariant_violations.inc();
                    tracing::error!(index = log_id.index, %violation, "ledger invariant violated; stopping the replica");
                    return Err(StorageIOError::apply(log_id, AnyError::error(violation.to_string())).into());
                }
            }
        }
        self.metrics.record_head(&applied.state);
        if held_may_move {
            self.metrics.record_held(&applied.state);
        }
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self {
        LedgerStateMachine {
            shared: self.shared.clone(),
            dir: self.dir.clone(),
            snapshot: self.snapshot.clone(),
            audit_every_entry: self.audit_every_entry,
            metrics: self.metrics.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<ReplicaId, ReplicaAddr>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let state: LedgerState = postcard::from_bytes(&data)
            .map_err(|e| StorageError::from(StorageIOError::read_snapshot(None, AnyError::new(&e))))?;
        if self.audit_every_entry {
            state.audit().map_err(sm_err)?;
        }
        let file = SnapshotFile {
            meta: meta.clone(),
            data,
        };
        self.persist(&file)
            .map_err(|e| StorageError::from(StorageIOError::write_snapshot(None, AnyError::new(&e))))?;
        {
            let mut applied = self.shared.write().expect("state lock");
            self.metrics.record_state(&state);
            applied.state = state;
            applied.last_applied = meta.last_log_id;
            applied.membership = meta.last_membership.clone();
        }
        *self.snapshot.lock().expect("snapshot lock") = Some(Arc::new(file));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<LedgerRaft>>, StorageError> {
        let current = self.snapshot.lock().expect("snapshot lock").clone();
        Ok(current.map(|file| Snapshot {
            meta: file.meta.clone(),
            snapshot: Box::new(Cursor::new(file.data.clone())),
        }))
    }
}
