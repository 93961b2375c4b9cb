//! Pass 1's columns profiled on one thread per core: the columns are dealt into contiguous
//! groups, each group's thread sees every batch in file order, and the refusal answered is the
//! one reading batch by batch, column by column would meet first.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use arrow_array::{ArrayRef, RecordBatch};

use super::profile::ColumnProfile;
use super::spill::{NumberColumn, Spill, SpillPart, SpillWriter};
use super::ImportError;

/// Batches a group's thread may have waiting: the reading runs a little ahead, memory stays
/// bounded.
const QUEUED_BATCHES: usize = 2;

/// A group's refusal: the batch's first data row, the column, why.
type Refusal = (u64, usize, ImportError);

/// A group's profiles by source column, its refusal if it met one, and its spill if it wrote
/// one whole.
type GroupResult = (Vec<(usize, ColumnProfile)>, Option<Refusal>, Option<SpillPart>);

/// A column to profile: its source index, its profile, and whether to spill its batches as
/// numbers where they are all numbers.
pub(super) struct ProfiledColumn {
    pub index: usize,
    pub profile: ColumnProfile,
    pub as_numbers: bool,
}

/// Every profiled column's profile by source column, in order, and the spill if it is whole.
pub(super) type Profiled = (Vec<(usize, ColumnProfile)>, Option<Spill>);

pub(super) struct ProfileGroups {
    queues: Vec<SyncSender<(u64, RecordBatch)>>,
    threads: Vec<JoinHandle<GroupResult>>,
    /// The first data row of the earliest batch a group refused; batches after it are not
    /// needed to settle which refusal comes first.
    earliest_refusal: Arc<AtomicU64>,
    /// Columns of the file.
    columns: usize,
}

fn profiles_of(columns: Vec<ProfiledColumn>) -> Vec<(usize, ColumnProfile)> {
    columns.into_iter().map(|c| (c.index, c.profile)).collect()
}

/// One group's thread: every batch through its columns' profiles, and into its spill while it
/// has one; stops at its first refusal.
fn profile_group(
    batches: Receiver<(u64, RecordBatch)>,
    mut mine: Vec<ProfiledColumn>,
    markers: &[String],
    file: &str,
    earliest_refusal: &AtomicU64,
    mut spill: Option<SpillWriter>,
) -> GroupResult {
    for (first_row, batch) in batches {
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(mine.len());
        for column in &mut mine {
            let source = batch.column(column.index);
            let mut numbers =
                (column.as_numbers && spill.is_some()).then(|| NumberColumn::with_capacity(batch.num_rows()));
            if let Err(error) = column
                .profile
                .add(source, markers, first_row, file, numbers.as_mut())
            {
                earliest_refusal.fetch_min(first_row, Ordering::SeqCst);
                let refusal = (first_row, column.index, error);
                return (profiles_of(mine), Some(refusal), None);
            }
            if spill.is_some() {
                arrays.push(match numbers.and_then(NumberColumn::finish) {
                    Some(numbers) => Arc::new(numbers),
                    None => source.clone(),
                });
            }
        }
        if let Some(writer) = spill.as_mut() {
            if let Err(e) = writer.write(arrays) {
                tracing::warn!("the import spill stopped: {e}");
                spill = None;
            }
        }
    }
    let part = spill.and_then(|writer| {
        writer
            .finish()
            .inspect_err(|e| tracing::warn!("the import spill stopped: {e}"))
            .ok()
    });
    (profiles_of(mine), None, part)
}

impl ProfileGroups {
    /// Starts `groups` threads over `profiles`, dealt in order; with `spill_dir`, each group
    /// also spills what it parsed there (see [`super::spill`]).
    pub fn start(
        profiles: Vec<ProfiledColumn>,
        columns: usize,
        markers: &[String],
        file: &str,
        spill_dir: Option<&Path>,
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
            let mine: Vec<ProfiledColumn> = profiles.by_ref().take(per_group).collect();
            // Without a spill file pass 2 parses the file again; nothing else changes.
            let spill = spill_dir.and_then(|dir| {
                let columns = mine.iter().map(|c| (c.index, c.profile.name.clone())).collect();
                SpillWriter::create(dir, columns)
                    .inspect_err(|e| tracing::warn!(dir = %dir.display(), "no import spill: {e}"))
                    .ok()
            });
            let (queue, batches) = sync_channel::<(u64, RecordBatch)>(QUEUED_BATCHES);
            let (markers, file, earliest) = (markers.to_vec(), file.to_string(), earliest_refusal.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("aic-import-profile-{index}"))
                    .spawn(move || profile_group(batches, mine, &markers, &file, &earliest, spill))?,
            );
            queues.push(queue);
            index += 1;
        }
        Ok(ProfileGroups {
            queues,
            threads,
            earliest_refusal,
            columns,
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

    /// Waits for every group: the profiles in source-column order and the spill if every group
    /// wrote its part whole, or the refusal of the earliest batch (of its first column where
    /// several groups refused it).
    pub fn finish(self) -> Result<Profiled, ImportError> {
        drop(self.queues);
        let mut profiles = Vec::new();
        let mut first: Option<Refusal> = None;
        let mut parts = Some(Vec::new());
        for thread in self.threads {
            let (mine, refusal, part) = thread.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            profiles.extend(mine);
            parts = parts.zip(part).map(|(mut parts, part)| {
                parts.push(part);
                parts
            });
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
                Ok((profiles, parts.and_then(|parts| Spill::new(parts, self.columns))))
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
            .map(|index| ProfiledColumn {
                index,
                profile: ColumnProfile::new(&format!("c{index}"), false, 4),
                as_numbers: true,
            })
            .collect();
        let running =
            ProfileGroups::start(profiles, 4, &["NA".to_string()], "file.csv", None, groups).unwrap();
        let mut first_row = 1;
        for batch in batches {
            if !running.add(first_row, batch) {
                break;
            }
            first_row += batch.num_rows() as u64;
        }
        running
            .finish()
            .map(|(profiles, _)| profiles.into_iter().map(|(_, p)| p.name).collect())
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
