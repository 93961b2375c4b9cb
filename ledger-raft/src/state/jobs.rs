//! Job records: the request a running job was started with, the replica running it, and its
//! latest checkpoint (weights and tallies after a round), so that another scheduler replica can
//! resume the job where it stopped. Every checkpoint goes through the log, so the chain keeps
//! each round's assignments. A record exists only beside its open escrow and goes when the
//! escrow is released: paid work is never resumed, so never paid twice.

use aic_protocol::{JobId, NodeId};
use serde::{Deserialize, Serialize};

use super::{Event, LedgerState, TxResult};
use crate::error::TxError;

/// Largest encoded job request a record holds.
pub const MAX_JOB_REQUEST_BYTES: usize = 4096;
/// Largest checkpointed weights (a job with a bigger model is not resumable).
pub const MAX_JOB_WEIGHTS_BYTES: usize = 256 * 1024;
/// Largest checkpointed tallies.
pub const MAX_JOB_PROGRESS_BYTES: usize = 64 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The scheduler replica running the job; only it may checkpoint.
    pub runner: NodeId,
    /// The job's request, as the scheduler encodes it (opaque to the ledger).
    pub request: Vec<u8>,
    /// Rounds completed at the latest checkpoint (0 before the first).
    pub round: u32,
    #[serde(with = "serde_bytes")]
    pub weights: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub progress: Vec<u8>,
    /// Checkpoints so far.
    pub checkpoints: u64,
    /// Replicas that took the job over.
    pub takeovers: u32,
}

fn too_large(what: &str, len: usize, max: usize) -> TxError {
    TxError::Invalid(format!("{what} of {len} bytes exceeds {max}"))
}

impl LedgerState {
    pub(super) fn record_job(&mut self, job: &JobId, runner: NodeId, request: &[u8]) -> TxResult {
        if !self.escrows.contains_key(job) {
            return Err(TxError::UnknownEscrow(job.to_string()));
        }
        if self.jobs.contains_key(job) {
            return Err(TxError::Invalid(format!("job {job} is already recorded")));
        }
        if request.is_empty() || request.len() > MAX_JOB_REQUEST_BYTES {
            return Err(too_large("a job request", request.len(), MAX_JOB_REQUEST_BYTES));
        }
        self.jobs.insert(
            *job,
            JobRecord {
                runner,
                request: request.to_vec(),
                round: 0,
                weights: Vec::new(),
                progress: Vec::new(),
                checkpoints: 0,
                takeovers: 0,
            },
        );
        Ok(vec![Event::JobRecorded { job: *job, runner }])
    }

    pub(super) fn checkpoint_job(
        &mut self,
        job: &JobId,
        runner: NodeId,
        round: u32,
        weights: &[u8],
        progress: &[u8],
    ) -> TxResult {
        let record = self
            .jobs
            .get(job)
            .ok_or_else(|| TxError::JobNotRecorded(job.to_string()))?;
        if record.runner != runner {
            return Err(TxError::NotTheRunner {
                job: job.to_string(),
                runner: record.runner.to_string(),
                caller: runner.to_string(),
            });
        }
        if round < record.round {
            return Err(TxError::Invalid(format!(
                "job {job} is at round {}; a checkpoint cannot go back to {round}",
                record.round
            )));
        }
        if weights.len() > MAX_JOB_WEIGHTS_BYTES {
            return Err(too_large(
                "checkpointed weights",
                weights.len(),
                MAX_JOB_WEIGHTS_BYTES,
            ));
        }
        if progress.len() > MAX_JOB_PROGRESS_BYTES {
            return Err(too_large(
                "checkpointed progress",
                progress.len(),
                MAX_JOB_PROGRESS_BYTES,
            ));
        }
        let checkpoints = record.checkpoints.checked_add(1).ok_or(TxError::Overflow)?;
        let record = self.jobs.get_mut(job).expect("checked above");
        record.round = round;
        record.weights = weights.to_vec();
        record.progress = progress.to_vec();
        record.checkpoints = checkpoints;
        Ok(vec![Event::JobCheckpointed {
            job: *job,
            runner,
            round,
        }])
    }

    pub(super) fn take_over_job(&mut self, job: &JobId, runner: NodeId) -> TxResult {
        let record = self
            .jobs
            .get_mut(job)
            .ok_or_else(|| TxError::JobNotRecorded(job.to_string()))?;
        if record.runner == runner {
            return Err(TxError::Invalid(format!("{runner} already runs job {job}")));
        }
        let takeovers = record.takeovers.checked_add(1).ok_or(TxError::Overflow)?;
        let from = record.runner;
        record.runner = runner;
        record.takeovers = takeovers;
        Ok(vec![Event::JobTakenOver {
            job: *job,
            from,
            to: runner,
        }])
    }
}
