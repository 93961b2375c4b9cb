//! The durable Raft log: an append-only file of checksummed records, fsynced before an append
//! is acknowledged, with the vote and the purge point in small files replaced atomically.
//!
//! ```text
//! dir/log        [len u32][blake3[..8] of body][body = postcard Entry] …
//! dir/vote       postcard Option<Vote>      (write temp, fsync, rename, fsync dir)
//! dir/purged     postcard Option<LogId>
//! dir/committed  the commit index           (a hint overwritten in place, no fsync: see
//!                                           [`super::commit_hint`])
//! ```
//!
//! On open the file is read back; a torn record at the tail (a crash mid-append, never
//! acknowledged) is cut off. An append that fails (a full disk, a failed fsync) is never
//! acknowledged: what it wrote is cut off again where the disk allows, and the error goes to
//! openraft, which stops the replica (a storage error is fatal); it rejoins once restarted on a
//! disk with room. Entries stay in memory as well: the log is bounded by snapshots
//! and purging, and reads are served from memory.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, OptionalSend, RaftLogReader, StorageIOError, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Mutex;

use super::commit_hint::CommitHint;
use super::disk_faults::{self, DiskFaults};
use super::types::{Entry, LedgerRaft, LogId, ReplicaId, StorageError};

/// Largest record accepted when reading the log back (a corrupt length is not trusted).
const MAX_RECORD: u32 = 64 * 1024 * 1024;

/// Entries by index, each with the byte offset of its record.
type Indexed = BTreeMap<u64, (Entry, u64)>;

struct Inner {
    dir: PathBuf,
    file: File,
    /// Entries by index, with each record's byte offset for truncation.
    entries: Indexed,
    /// Bytes of valid records in the file.
    end: u64,
    vote: Option<Vote<ReplicaId>>,
    purged: Option<LogId>,
    committed: Option<LogId>,
    hint: CommitHint,
    /// Faults a test put under the log (none in production).
    faults: Option<Arc<DiskFaults>>,
}

/// The durable log store; clones share the same files (openraft asks for a reader handle).
#[derive(Clone)]
pub struct FileLogStore {
    inner: Arc<Mutex<Inner>>,
}

fn io_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

fn checksum(body: &[u8]) -> [u8; 8] {
    let mut sum = [0u8; 8];
    sum.copy_from_slice(&blake3::hash(body).as_bytes()[..8]);
    sum
}

/// Writes `value` to `dir/name` so that a crash leaves either the old or the new file.
fn write_atomically<T: Serialize>(dir: &Path, name: &str, value: &T) -> io::Result<()> {
    let bytes = postcard::to_stdvec(value).map_err(io::Error::other)?;
    let temp = dir.join(format!("{name}.tmp"));
    let mut file = File::create(&temp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    fs::rename(temp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

/// Makes `dir` the log of a replica restored from a snapshot ending at `last`: empty, purged and
/// committed up to it (see [`crate::backup::restore_into`]). Its vote is in the term of that last
/// entry, for no replica: a leader of the restored cluster is elected in a later term, so its
/// entries follow the snapshot's in term order, as Raft requires (a vote left empty, at term 0,
/// let a leader of term 1 append after entries of a higher term, and its writes stalled).
pub(crate) fn write_restored(dir: &Path, last: Option<LogId>) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    File::create(dir.join("log"))?.sync_all()?;
    if let Some(last) = last {
        write_atomically(dir, "purged", &Some(last))?;
        CommitHint::save_durably(dir, &Some(last))?;
        // Replica ids are hashes of node keys: 0 names no replica.
        let vote: Vote<ReplicaId> = Vote::new(last.leader_id.term, 0);
        write_atomically(dir, "vote", &Some(vote))?;
    }
    Ok(())
}

fn read_small<T: DeserializeOwned>(dir: &Path, name: &str) -> io::Result<Option<T>> {
    match fs::read(dir.join(name)) {
        Ok(bytes) => postcard::from_bytes(&bytes).map_err(io::Error::other),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

impl FileLogStore {
    /// Opens (or creates) the log in `dir`.
    pub fn open(dir: &Path) -> io::Result<Self> {
        Self::open_with(dir, None)
    }

    /// Opens the log with `faults` under its appends (tests).
    pub fn open_with(dir: &Path, faults: Option<Arc<DiskFaults>>) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let path = dir.join("log");
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        let (entries, end) = Self::read_records(&file)?;
        if end < file.metadata()?.len() {
            tracing::warn!(path = %path.display(), at = end, "cutting a torn record off the log tail");
            file.set_len(end)?;
            file.sync_all()?;
        }
        file = OpenOptions::new().read(true).append(true).open(&path)?;
        let (hint, committed) = CommitHint::open(dir)?;
        Ok(FileLogStore {
            inner: Arc::new(Mutex::new(Inner {
                dir: dir.to_path_buf(),
                file,
                entries,
                end,
                vote: read_small(dir, "vote")?,
                purged: read_small(dir, "purged")?,
                // A hint written without fsync: one a crash left unreadable is no hint.
                committed,
                hint,
                faults,
            })),
        })
    }

    /// Where the durable log ends (its last entry, else its purge point) and the replicas the
    /// latest membership entry in it names: what a replica checks against its peers at start.
    pub async fn durable_end(&self) -> (Option<LogId>, Vec<(ReplicaId, super::types::ReplicaAddr)>) {
        let inner = self.inner.lock().await;
        let last = inner.last_log_id();
        let members = inner
            .entries
            .values()
            .rev()
            .find_map(|(entry, _)| match &entry.payload {
                openraft::EntryPayload::Membership(membership) => {
                    Some(membership.nodes().map(|(id, addr)| (*id, addr.clone())).collect())
                }
                _ => None,
            })
            .unwrap_or_default();
        (last, members)
    }

    fn read_records(file: &File) -> io::Result<(Indexed, u64)> {
        let mut reader = BufReader::new(file);
        let mut entries = BTreeMap::new();
        let mut offset = 0u64;
        loop {
            let mut header = [0u8; 12];
            if reader.read_exact(&mut header).is_err() {
                break;
            }
            let len = u32::from_be_bytes(header[..4].try_into().expect("4 bytes"));
            if len > MAX_RECORD {
                break;
            }
            let mut body = vec![0u8; len as usize];
            if reader.read_exact(&mut body).is_err() || checksum(&body) != header[4..12] {
                break;
            }
            let Ok(entry) = postcard::from_bytes::<Entry>(&body) else {
                break;
            };
            entries.insert(entry.log_id.index, (entry, offset));
            offset += 12 + u64::from(len);
        }
        Ok((entries, offset))
    }
}

impl Inner {
    /// The last entry's id, else the purge point.
    fn last_log_id(&self) -> Option<LogId> {
        self.entries
            .values()
            .next_back()
            .map(|(e, _)| e.log_id)
            .or(self.purged)
    }

    /// Writes `bytes` at the end of the log and syncs them, through the test's faults if any.
    fn write_durably(&mut self, bytes: &[u8]) -> io::Result<()> {
        if let Some(room) = self.faults.as_ref().and_then(|f| f.room_for(bytes.len())) {
            self.file.write_all(&bytes[..room])?;
            return Err(disk_faults::no_space());
        }
        self.file.write_all(bytes)?;
        if let Some(faults) = &self.faults {
            faults.fsync()?;
        }
        self.file.sync_data()
    }
}

impl RaftLogReader<LedgerRaft> for FileLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let inner = self.inner.lock().await;
        Ok(inner
            .entries
            .range(range)
            .map(|(_, (entry, _))| entry.clone())
            .collect())
    }
}

impl RaftLogStorage<LedgerRaft> for FileLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<LedgerRaft>, StorageError> {
        let inner = self.inner.lock().await;
        let last = inner.last_log_id();
        Ok(LogState {
            last_purged_log_id: inner.purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<ReplicaId>) -> Result<(), StorageError> {
        let mut inner = self.inner.lock().await;
        write_atomically(&inner.dir, "vote", &Some(*vote))
            .map_err(|e| StorageError::from(StorageIOError::write_vote(AnyError::new(&e))))?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<ReplicaId>>, StorageError> {
        Ok(self.inner.lock().await.vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let mut inner = self.inner.lock().await;
        // A hint for the restart (openraft re-learns the commit index from the leader), written
        // without fsync: two fsyncs here doubled every commit's disk waits. It is kept current at
        // every commit: written only every 64 entries, a read right after a full restart missed
        // a committed transfer (the guide walk caught it), so a lag stays a machine crash's.
        inner.hint.save(&committed).map_err(io_err)?;
        inner.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.inner.lock().await.committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<LedgerRaft>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut inner = self.inner.lock().await;
        // One write and one fsync for the whole batch.
        let mut buffer = Vec::new();
        let mut placed = Vec::new();
        let mut offset = inner.end;
        for entry in entries {
            let body = postcard::to_stdvec(&entry).map_err(io_err)?;
            let len =
                u32::try_from(body.len()).map_err(|_| io_err(io::Error::other("log entry too large")))?;
            buffer.extend_from_slice(&len.to_be_bytes());
            buffer.extend_from_slice(&checksum(&body));
            buffer.extend_from_slice(&body);
            placed.push((entry, offset));
            offset += 12 + u64::from(len);
        }
        // The fsync blocks this thread for as long as the disk takes: on a multi-threaded
        // runtime the thread's other tasks (the network, the other replicas' cores) move to
        // another worker meanwhile instead of waiting behind it.
        let result = match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| inner.write_durably(&buffer))
            }
            _ => inner.write_durably(&buffer),
        };
        if let Err(e) = result {
            // Not durable, so never acknowledged. Cut what part of the batch reached the file,
            // so that nothing follows a torn record (a full disk still allows shrinking).
            let end = inner.end;
            if let Err(cut) = inner.file.set_len(end) {
                tracing::error!(error = %cut, "cutting a failed append off the log");
            }
            tracing::error!(error = %e, "the Raft log could not be written durably; this replica stops");
            callback.log_io_completed(Err(io::Error::new(e.kind(), e.to_string())));
            return Err(io_err(e));
        }
        inner.end = offset;
        for (entry, at) in placed {
            inner.entries.insert(entry.log_id.index, (entry, at));
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut inner = self.inner.lock().await;
        let Some(&(_, offset)) = inner.entries.get(&log_id.index) else {
            return Ok(());
        };
        inner
            .file
            .set_len(offset)
            .and_then(|()| inner.file.sync_all())
            .map_err(io_err)?;
        inner.end = offset;
        inner.entries.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut inner = self.inner.lock().await;
        // Record the purge point first: a crash after it leaves extra entries, never missing ones.
        write_atomically(&inner.dir, "purged", &Some(log_id)).map_err(io_err)?;
        inner.purged = Some(log_id);
        let kept = inner.entries.split_off(&(log_id.index + 1));
        // Rewrite the file with the kept entries only.
        let temp = inner.dir.join("log.tmp");
        let mut file = File::create(&temp).map_err(io_err)?;
        let mut entries = BTreeMap::new();
        let mut offset = 0u64;
        for (index, (entry, _)) in kept {
            let body = postcard::to_stdvec(&entry).map_err(io_err)?;
            let len = body.len() as u32;
            file.write_all(&len.to_be_bytes()).map_err(io_err)?;
            file.write_all(&checksum(&body)).map_err(io_err)?;
            file.write_all(&body).map_err(io_err)?;
            entries.insert(index, (entry, offset));
            offset += 12 + u64::from(len);
        }
        file.sync_all().map_err(io_err)?;
        fs::rename(&temp, inner.dir.join("log")).map_err(io_err)?;
        File::open(&inner.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err)?;
        inner.file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(inner.dir.join("log"))
            .map_err(read_err)?;
        inner.entries = entries;
        inner.end = offset;
        Ok(())
    }
}
