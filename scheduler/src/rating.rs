//! Contribution rating (Proof of Value): which results to re-execute on another node, whether
//! two results agree, and what a node's record says about it — pure, so every replica and every
//! test reaches the same decisions.
//!
//! The spot-check rate follows BOINC's adaptive replication: a node with no record is checked
//! every time; each matching check lowers its rate (1 / (1 + matches / 2), never below
//! [`MIN_CHECK_RATE`]); a confirmed mismatch resets its record so it is checked every time again.
//! Two results agree when their row counts are equal, their losses and every value agree within
//! |a − b| ≤ [`ATOL`] + [`RTOL`]·max(|a|, |b|) — the kernels' cross-backend rule, loosened for
//! sums over many batches.

use std::collections::BTreeMap;

use aic_protocol::messages::TaskResult;

/// Relative tolerance when comparing two executions of one task.
pub const RTOL: f32 = 1e-3;
/// Absolute tolerance when comparing two executions of one task.
pub const ATOL: f32 = 1e-4;
/// The lowest spot-check rate a well-behaved node reaches.
pub const MIN_CHECK_RATE: f64 = 0.05;
/// Reputation lost to each confirmed mismatch (multiplicative).
pub const MISMATCH_REPUTATION_FACTOR: f64 = 0.25;

/// What the rater knows about one node.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeRecord {
    /// Checks it passed since its last confirmed mismatch.
    pub matches: u64,
    pub mismatches: u64,
    /// In (0, 1]; starts at 1, cut by mismatches, recovering slowly with matches.
    pub reputation: f64,
}

impl Default for NodeRecord {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeRecord {
    pub fn new() -> Self {
        NodeRecord {
            matches: 0,
            mismatches: 0,
            reputation: 1.0,
        }
    }

    /// The probability that this node's next result is re-executed.
    pub fn check_rate(&self) -> f64 {
        (1.0 / (1.0 + self.matches as f64 / 2.0)).max(MIN_CHECK_RATE)
    }

    pub fn record_match(&mut self) {
        self.matches += 1;
        self.reputation = (self.reputation + (1.0 - self.reputation) * 0.05).min(1.0);
    }

    pub fn record_mismatch(&mut self) {
        self.matches = 0;
        self.mismatches += 1;
        self.reputation = (self.reputation * MISMATCH_REPUTATION_FACTOR).max(0.01);
    }
}

/// Whether to check a result, given a uniform draw in [0, 1).
pub fn should_check(record: &NodeRecord, draw: f64) -> bool {
    draw < record.check_rate()
}

/// Whether two executions of one task agree on what the result carries: rows, correct count,
/// loss, evaluation sums, and whether each has an update of the same length. The updates
/// themselves are compared chunk by chunk with [`chunks_agree`] as they stream in.
pub fn results_agree(a: &TaskResult, b: &TaskResult) -> bool {
    a.rows == b.rows
        && a.correct == b.correct
        && a.update.map(|u| u.elements) == b.update.map(|u| u.elements)
        && aic_kernels::compare::agree_within(&[a.loss], &[b.loss], RTOL, ATOL).is_ok()
        && aic_kernels::compare::agree_within(&a.values, &b.values, RTOL, ATOL).is_ok()
}

/// Whether the same chunk of two executions' updates agrees within the tolerance.
pub fn chunks_agree(a: &[f32], b: &[f32]) -> bool {
    aic_kernels::compare::agree_within(a, b, RTOL, ATOL).is_ok()
}

/// The outcome of a spot check with a possible third execution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The re-execution agreed: both nodes were right.
    Agreed,
    /// The original disagreed with the re-execution and with a third execution, which agreed
    /// with each other: the original node is wrong.
    OriginalWrong,
    /// The checker was the odd one out.
    CheckerWrong,
    /// All three disagree: nobody is penalised, the task is re-run.
    Undecided,
}

/// Decides a spot check from whether the original and the check agree and, when they do not,
/// how a third run compared with each: `(check agrees with third, original agrees with third)`.
pub fn decide(original_agrees_with_check: bool, third: Option<(bool, bool)>) -> Verdict {
    if original_agrees_with_check {
        return Verdict::Agreed;
    }
    match third {
        Some((true, _)) => Verdict::OriginalWrong,
        Some((false, true)) => Verdict::CheckerWrong,
        _ => Verdict::Undecided,
    }
}

/// Every node's record, by node.
pub type Records<K> = BTreeMap<K, NodeRecord>;

#[cfg(test)]
mod tests {
    use super::*;
    use aic_protocol::TaskId;

    fn result(values: Vec<f32>, loss: f32) -> TaskResult {
        let task = TaskId::from_bytes([1; 16]);
        TaskResult {
            task,
            rows: 100,
            loss,
            digest: TaskResult::compute_digest(&task, 100, loss, None, &values, 0),
            update: None,
            values,
            correct: 0,
            fetch_micros: 0,
            compute_micros: 0,
            cache_hits: 0,
            weights_fetched_bytes: 0,
            backend: "cpu".into(),
        }
    }

    #[test]
    fn new_nodes_are_always_checked_and_the_rate_falls_with_matches_and_resets_on_a_mismatch() {
        let mut record = NodeRecord::new();
        assert_eq!(record.check_rate(), 1.0);
        assert!(should_check(&record, 0.999));
        for _ in 0..10 {
            record.record_match();
        }
        assert!((record.check_rate() - 1.0 / 6.0).abs() < 1e-12);
        for _ in 0..1000 {
            record.record_match();
        }
        assert_eq!(record.check_rate(), MIN_CHECK_RATE);
        record.record_mismatch();
        assert_eq!(record.check_rate(), 1.0);
        assert!(record.reputation <= MISMATCH_REPUTATION_FACTOR + 1e-9);
    }

    #[test]
    fn agreement_is_within_the_stated_tolerance_and_a_third_run_decides() {
        let honest = result(vec![0.5, -0.25, 1e-6], 2.3);
        let rounded = result(vec![0.500_3, -0.250_1, 5e-5], 2.300_5);
        let wrong = result(vec![-1.5, 0.76, 0.01], 2.3);
        assert!(results_agree(&honest, &rounded));
        assert!(!results_agree(&honest, &wrong));
        assert!(chunks_agree(&honest.values, &rounded.values));
        assert!(!chunks_agree(&honest.values, &wrong.values));
        let agree = |a: &TaskResult, b: &TaskResult| results_agree(a, b);
        assert_eq!(decide(agree(&honest, &rounded), None), Verdict::Agreed);
        assert_eq!(
            decide(
                agree(&wrong, &honest),
                Some((agree(&honest, &rounded), agree(&wrong, &rounded)))
            ),
            Verdict::OriginalWrong
        );
        assert_eq!(
            decide(
                agree(&honest, &wrong),
                Some((agree(&wrong, &rounded), agree(&honest, &rounded)))
            ),
            Verdict::CheckerWrong
        );
        let other = result(vec![9.0, 9.0, 9.0], 1.0);
        assert_eq!(
            decide(
                agree(&honest, &wrong),
                Some((agree(&wrong, &other), agree(&honest, &other)))
            ),
            Verdict::Undecided
        );
        assert_eq!(decide(false, None), Verdict::Undecided);
        let mut fewer_rows = honest.clone();
        fewer_rows.rows = 99;
        assert!(!results_agree(&honest, &fewer_rows));
    }
}
