//! The saved commit index: a fixed-size, checksummed record overwritten in place at every
//! commit, without fsync. It is a hint for the restart (openraft re-learns the commit index from
//! the leader): a record a crash tore reads as no hint. A shorter file is an older version's
//! plain postcard value and reads as such.
//!
//! ```text
//! dir/committed  [len u8][postcard Option<LogId>, zero-padded to BODY bytes][blake3[..8] of it]
//! ```
//!
//! Overwriting one small record in place costs one `pwrite`; the earlier temp file and rename
//! cost a file creation and a directory update at every commit, on every replica.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::types::LogId;

/// The file's name in the log's directory.
pub(crate) const FILE: &str = "committed";
/// Room for a postcard `Option<LogId>`: a tag and three varints, at most 31 bytes.
const BODY: usize = 48;
/// The whole record: length, body, checksum.
const RECORD: usize = 1 + BODY + 8;

/// The open hint file of one log.
pub(crate) struct CommitHint {
    file: File,
}

impl CommitHint {
    /// Opens (or creates) `dir/committed` and reads the hint in it: `None` where there is none
    /// or it does not read (with a warning).
    pub fn open(dir: &Path) -> io::Result<(CommitHint, Option<LogId>)> {
        let path = dir.join(FILE);
        let saved = match std::fs::read(&path) {
            Ok(bytes) => decode(&bytes).unwrap_or_else(|| {
                tracing::warn!(
                    path = %path.display(),
                    "the saved commit index is unreadable; the leader will tell it again"
                );
                None
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        Ok((CommitHint { file }, saved))
    }

    /// Overwrites the hint with `committed`, without waiting for the disk.
    pub fn save(&self, committed: &Option<LogId>) -> io::Result<()> {
        self.file.write_all_at(&encode(committed)?, 0)
    }

    /// Writes `committed` as the hint of the log in `dir` and waits for the disk: a restored
    /// replica's starting point.
    pub fn save_durably(dir: &Path, committed: &Option<LogId>) -> io::Result<()> {
        let (hint, _) = CommitHint::open(dir)?;
        hint.save(committed)?;
        hint.file.sync_all()
    }
}

fn encode(committed: &Option<LogId>) -> io::Result<[u8; RECORD]> {
    let mut record = [0u8; RECORD];
    let used = postcard::to_slice(committed, &mut record[1..1 + BODY])
        .map_err(io::Error::other)?
        .len();
    record[0] = u8::try_from(used).expect("a body of at most 48 bytes");
    let sum = blake3::hash(&record[1..1 + BODY]);
    record[1 + BODY..].copy_from_slice(&sum.as_bytes()[..8]);
    Ok(record)
}

/// The hint in `bytes`; `None` for a torn record.
fn decode(bytes: &[u8]) -> Option<Option<LogId>> {
    if bytes.len() != RECORD {
        // Written by an older version: the value alone, replaced by rename.
        return postcard::from_bytes(bytes).ok();
    }
    let body = &bytes[1..1 + BODY];
    if blake3::hash(body).as_bytes()[..8] != bytes[1 + BODY..] {
        return None;
    }
    let used = usize::from(bytes[0]);
    postcard::from_bytes(body.get(..used)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn log_id(term: u64, node: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, node), index)
    }

    #[test]
    fn a_hint_reads_back_after_a_longer_one_is_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let (hint, saved) = CommitHint::open(dir.path()).unwrap();
        assert_eq!(saved, None);
        hint.save(&Some(log_id(u64::MAX, u64::MAX, u64::MAX))).unwrap();
        hint.save(&Some(log_id(2, 7, 41))).unwrap();
        drop(hint);
        let (_, saved) = CommitHint::open(dir.path()).unwrap();
        assert_eq!(saved, Some(log_id(2, 7, 41)));
    }

    #[test]
    fn a_torn_hint_reads_as_none_and_an_older_plain_one_as_its_value() {
        let dir = tempfile::tempdir().unwrap();
        CommitHint::save_durably(dir.path(), &Some(log_id(3, 1, 99))).unwrap();
        let path = dir.path().join(FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[3] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(CommitHint::open(dir.path()).unwrap().1, None);
        std::fs::write(&path, &bytes[..RECORD - 1]).unwrap();
        assert_eq!(CommitHint::open(dir.path()).unwrap().1, None);
        std::fs::write(&path, postcard::to_stdvec(&Some(log_id(3, 1, 99))).unwrap()).unwrap();
        assert_eq!(CommitHint::open(dir.path()).unwrap().1, Some(log_id(3, 1, 99)));
    }
}
