//! Minibatches of a task's rows: one seeded shuffle of the rows per task, walked `batch_size`
//! rows per local step (wrapping around), so a spot check that re-executes the task on another
//! node takes exactly the same rows in the same steps.

use arrow_array::{RecordBatch, UInt32Array};

/// The task's rows, shuffled once, cut into minibatches on demand.
pub struct Minibatches {
    rows: RecordBatch,
    order: Vec<u32>,
    batch_size: usize,
}

impl Minibatches {
    /// `None` when every step takes all the rows (a batch size of 0, or one that covers them).
    pub fn new(batches: &[RecordBatch], batch_size: u32, seed: u64) -> Result<Option<Self>, String> {
        let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
        if batch_size == 0 || batch_size as usize >= total || batches.is_empty() {
            return Ok(None);
        }
        let rows = arrow_select::concat::concat_batches(&batches[0].schema(), batches)
            .map_err(|e| format!("joining the task's batches: {e}"))?;
        let n = u32::try_from(total).map_err(|_| format!("{total} rows in one task"))?;
        Ok(Some(Minibatches {
            rows,
            order: shuffled(n, seed),
            batch_size: batch_size as usize,
        }))
    }

    /// The rows of local step `step`.
    pub fn step(&self, step: u32) -> Result<RecordBatch, String> {
        let n = self.order.len();
        let start = (step as usize).wrapping_mul(self.batch_size) % n;
        let indices: UInt32Array = (0..self.batch_size)
            .map(|i| self.order[(start + i) % n])
            .collect();
        arrow_select::take::take_record_batch(&self.rows, &indices)
            .map_err(|e| format!("taking a minibatch: {e}"))
    }
}

/// 0..n in a seeded order (Fisher–Yates over SplitMix64). Written out rather than taken from a
/// random-number crate because every node must draw the same order for a seed, across crate
/// versions and platforms, or spot checks would compare different work.
fn shuffled(n: u32, seed: u64) -> Vec<u32> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut order: Vec<u32> = (0..n).collect();
    for i in (1..order.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Int32Array};
    use arrow_schema::{DataType, Field, Schema};

    use super::*;

    fn batch(values: std::ops::Range<i32>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int32, false)]));
        RecordBatch::try_new(
            schema,
            vec![Arc::new(Int32Array::from_iter_values(values)) as ArrayRef],
        )
        .unwrap()
    }

    fn values(batch: &RecordBatch) -> Vec<i32> {
        batch
            .column(0)
            .as_any()
            .downcast_ref::<Int32Array>()
            .unwrap()
            .values()
            .to_vec()
    }

    #[test]
    fn steps_walk_one_seeded_shuffle_and_cover_every_row() {
        let batches = [batch(0..7), batch(7..10)];
        let minibatches = Minibatches::new(&batches, 4, 42).unwrap().unwrap();
        let mut seen: Vec<i32> = (0..3)
            .flat_map(|s| values(&minibatches.step(s).unwrap()))
            .collect();
        assert_eq!(seen.len(), 12, "three steps of four rows, wrapping after ten");
        let again = Minibatches::new(&batches, 4, 42).unwrap().unwrap();
        let repeat: Vec<i32> = (0..3).flat_map(|s| values(&again.step(s).unwrap())).collect();
        assert_eq!(seen, repeat, "the same seed takes the same rows");
        assert_ne!(
            values(&minibatches.step(0).unwrap()),
            [0, 1, 2, 3],
            "the rows are shuffled"
        );
        seen.truncate(10);
        seen.sort();
        assert_eq!(seen, (0..10).collect::<Vec<_>>(), "a pass takes each row once");
        let other = Minibatches::new(&batches, 4, 43).unwrap().unwrap();
        assert_ne!(
            values(&other.step(0).unwrap()),
            values(&minibatches.step(0).unwrap())
        );
    }

    #[test]
    fn a_batch_that_covers_the_rows_is_full_batch() {
        let batches = [batch(0..5)];
        assert!(Minibatches::new(&batches, 0, 1).unwrap().is_none());
        assert!(Minibatches::new(&batches, 5, 1).unwrap().is_none());
        assert!(Minibatches::new(&batches, 9, 1).unwrap().is_none());
        assert!(Minibatches::new(&batches, 4, 1).unwrap().is_some());
    }
}
