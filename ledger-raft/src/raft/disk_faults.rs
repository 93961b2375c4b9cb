//! Faults a test can put under a replica's Raft log: a disk that fills up (an append writes
//! part of its records, then fails with "no space left on device") and an fsync that fails
//! (EIO). The log store asks before each write and each fsync; production replicas have none.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// What the disk under one replica's log does now; switched by the test while it runs.
#[derive(Debug, Default)]
pub struct DiskFaults {
    full: AtomicBool,
    failing_fsync: AtomicBool,
    /// Appends refused so far.
    refused: AtomicU64,
}

impl DiskFaults {
    /// From now on every append runs out of space part way through its records.
    pub fn fill(&self) {
        self.full.store(true, Ordering::SeqCst);
    }

    /// From now on every fsync fails.
    pub fn fail_fsync(&self) {
        self.failing_fsync.store(true, Ordering::SeqCst);
    }

    /// Space is back and the disk syncs again.
    pub fn heal(&self) {
        self.full.store(false, Ordering::SeqCst);
        self.failing_fsync.store(false, Ordering::SeqCst);
    }

    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }

    /// How many of `len` bytes a write may put down before the disk is full, or none when
    /// there is room.
    pub(crate) fn room_for(&self, len: usize) -> Option<usize> {
        self.full.load(Ordering::SeqCst).then(|| {
            self.refused.fetch_add(1, Ordering::SeqCst);
            len / 2
        })
    }

    pub(crate) fn fsync(&self) -> io::Result<()> {
        if self.failing_fsync.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(io::Error::from_raw_os_error(libc_eio()));
        }
        Ok(())
    }
}

/// "No space left on device".
pub(crate) fn no_space() -> io::Error {
    io::Error::from_raw_os_error(28)
}

/// EIO, what a failed fsync reports on Linux.
fn libc_eio() -> i32 {
    5
}
