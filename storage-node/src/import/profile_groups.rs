//! Pass 1's columns profiled on one thread per core: the columns are dealt into contiguous
//! groups, each group's thread sees every batch in file order, and the refusal answered is the
//! one reading batch by batch, column by column would meet first.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use arrow_array::RecordBatch;

use super::profile::ColumnProfile;
use super::ImportError;

/// Batches a group's thread may have waiting: the reading runs a little ahead, memory stays
/// bounded.
const QUEUED_BATCHES: usize = 2;

/// A group's refusal: the batch's first data row, the column, why.
type Refusal = (u64, usize, ImportError);

/// A group's profiles by source column, and its refusal if it met one.
type GroupResult = (Vec<(usize, ColumnProfile)>, Option<Refusal>);

pub(super) struct ProfileGroups {
    queues: Vec<SyncSender<(u64, RecordBatch)>>,
    threads: Vec<JoinHandle<GroupResult>>,
    /// The first data row of the earliest batch a group refused; batches after it are not
    /// needed to settle which refusal comes first.
    earliest_refusal: Arc<AtomicU64>,
}

impl ProfileGroups {
    /// Starts `groups` threads over `profiles` (source column, profile), dealt in order.
    pub fn start(
        profiles: Vec<(usize, ColumnProfile)>,
        markers: &[String],
        file: &str,
        groups: usize,
    ) -> std::io::Result<Self> {
        let groups = groups.clamp(1, profiles.len().max(1));
        let per_group = profiles.len().div_ceil(groups).max(1);
        let earliest_refusal = Arc::new(AtomicU64::new(u64::MAX));
        let mut queues = Vec::with_capacity(groups);
        let mut threads = Vec::with_capacity(groups);
        let mut profiles = profiles.into_iter().peekable();
        let mut index = 0;
        while profiles.peek().is_some() {
            let mut mine: Vec<(usize, ColumnProfile)> = profiles.by_ref().take(per_group).collect();
            let (queue, batches) = sync_channel::<(u64, RecordBatch)>(QUEUED_BATCHES);
            let (markers, file, earliest) = (markers.to_vec(), file.to_string(), earliest_refusal.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("aic-import-profile-{index}"))
                    .spawn(move || {
                        for (first_row, batch) in batches {
                            for (column, profile) in &mut mine {
                                if let Err(error) =
                                    profile.add(batch.column(*column), &markers, first_row, &file)
                                {
                                    earliest.fetch_min(first_row, Ordering::SeqCst);
                                    let refusal = (first_row, *column, error);
                                    return (mine, Some(refusal));
                                }
                            }
                        }
                        (mine, None)
                    })?,
            );
            queues.push(queue);
            index += 1;
        }
        Ok(ProfileGroups {
            queues,
            threads,
            earliest_refusal,
        })
    }

    /// Hands a batch (its first data row numbered from 1) to every group. False once a group
    /// has refused an earlier batch: reading further cannot change the answer.
    pub fn add(&self, first_row: u64, batch: &RecordBatch) -> bool {
        if self.earliest_refusal.load(Ordering::SeqCst) < first_row {
            return false;
        }
        for queue in &self.queues {
            // A group that refused has hung up; its refusal is collected in `finish`.
            let _ = queue.send((first_row, batch.clone()));
        }
        true
    }

    /// Waits for every group: the profiles in source-column order, or the refusal of the
    /// earliest batch (of its first column where several groups refused it).
    pub fn finish(self) -> Result<Vec<(usize, ColumnProfile)>, ImportError> {
        drop(self.queues);
        let mut profiles = Vec::new();
        let mut first: Option<Refusal> = None;
        for thread in self.threads {
            let (mine, refusal) = thread.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            profiles.extend(mine);
            if let Some(refusal) = refusal {
                if first.as_ref().is_none_or(|f| (refusal.0, refusal.1) < (f.0, f.1)) {
                    first = Some(refusal);
                }
            }
        }
        match first {
            Some((_, _, error)) => Err(error),
            None => {
                profiles.sort_by_key(|(column, _)| *column);
                Ok(profiles)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{ArrayRef, StringArray};

    fn batch(columns: [[&str; 2]; 4]) -> RecordBatch {
        RecordBatch::try_from_iter(columns.iter().enumerate().map(|(i, values)| {
            (
                format!("c{i}"),
                std::sync::Arc::new(StringArray::from(values.to_vec())) as ArrayRef,
            )
        }))
        .unwrap()
    }

    fn profile(batches: &[RecordBatch], groups: usize) -> Result<Vec<String>, String> {
        let profiles = (0..4)
            .map(|i| (i, ColumnProfile::new(&format!("c{i}"), false, 4)))
            .collect();
        let running = ProfileGroups::start(profiles, &["NA".to_string()], "file.csv", groups).unwrap();
        let mut first_row = 1;
        for batch in batches {
            if !running.add(first_row, batch) {
                break;
            }
            first_row += batch.num_rows() as u64;
        }
        running
            .finish()
            .map(|profiles| profiles.into_iter().map(|(_, p)| p.name).collect())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_refusal_met_first_in_file_order_wins_however_the_columns_are_grouped() {
        let fine = ["1", "2"];
        let batches = [
            batch([fine, fine, fine, fine]),
            // Row 4, the last column: the first refusal in file order.
            batch([fine, fine, fine, ["3", "inf"]]),
            // Row 5, the first column: later in the file, earlier in the row.
            batch([["NaN", "1"], fine, fine, fine]),
        ];
        for groups in [1, 2, 3, 4, 9] {
            let refused = profile(&batches, groups).unwrap_err();
            assert!(
                refused.contains("\"c3\"") && refused.contains("row 4"),
                "{groups} groups: {refused}"
            );
        }
        // Within one batch the earlier column wins.
        let same_batch = [batch([fine, ["1", "inf"], ["-inf", "2"], fine])];
        for groups in [1, 2, 4] {
            let refused = profile(&same_batch, groups).unwrap_err();
            assert!(
                refused.contains("\"c1\"") && refused.contains("row 2"),
                "{groups} groups: {refused}"
            );
        }
        // Without a refusal every column comes back, in order.
        for groups in [1, 2, 4] {
            assert_eq!(
                profile(&batches[..1], groups),
                Ok(vec!["c0".into(), "c1".into(), "c2".into(), "c3".into()])
            );
        }
    }
}
