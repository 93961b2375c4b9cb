//! Job records: the request a running job was started with, the replica running it, and its
//! latest checkpoint (the names of its weight tensors, where they are stored, and the tallies
//! after a round), so that another scheduler replica can
//! resume the job where it stopped. Every checkpoint goes through the log, so the chain keeps
//! each round's assignments. A record exists only beside its open escrow and goes when the
//! escrow is released: paid work is never resumed, so never paid twice.

use aic_protocol::tensor::TensorRef;
use aic_protocol::{AssetId, JobId, NodeId};
use serde::{Deserialize, Serialize};

use super::escrow::MAX_PAYOUTS;
use super::{Event, LedgerState, NodeWork, TxResult};
use crate::error::TxError;

/// Largest encoded job request a record holds.
pub const MAX_JOB_REQUEST_BYTES: usize = 4096;
/// Most storage nodes a checkpoint may name as holding its tensors.
pub const MAX_CHECKPOINT_HOLDERS: usize = 8;
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
    /// The latest checkpoint's tensors (none before the first round).
    pub tensors: Option<CheckpointTensors>,
    #[serde(with = "serde_bytes")]
    pub progress: Vec<u8>,
    /// Checkpoints so far.
    pub checkpoints: u64,
    /// Replicas that took the job over.
    pub takeovers: u32,
}

/// What a checkpoint names: the weights and the outer optimizer's state as tensor objects, and
/// the storage nodes that hold them. The bytes stay off the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointTensors {
    pub weights: TensorRef,
    /// The outer optimizer's state (Nesterov momentum), shaped like the weights.
    pub optimizer_state: Option<TensorRef>,
    pub holders: Vec<NodeId>,
}

fn too_large(what: &str, len: usize, max: usize) -> TxError {
    TxError::Invalid(format!("{what} of {len} bytes exceeds {max}"))
}

/// A checkpoint's tensors: held by 1 to `MAX_CHECKPOINT_HOLDERS` storage nodes, non-empty
/// weights, and an optimizer state shaped like them.
fn check_tensors(tensors: &CheckpointTensors) -> Result<(), TxError> {
    if tensors.holders.is_empty() || tensors.holders.len() > MAX_CHECKPOINT_HOLDERS {
        return Err(TxError::Invalid(format!(
            "a checkpoint names 1 to {MAX_CHECKPOINT_HOLDERS} storage nodes holding its tensors"
        )));
    }
    if tensors.weights.elements == 0
        || tensors
            .optimizer_state
            .is_some_and(|state| state.elements != tensors.weights.elements)
    {
        return Err(TxError::Invalid(
            "a checkpoint's optimizer state must be shaped like its (non-empty) weights".into(),
        ));
    }
    Ok(())
}

fn check_progress(progress: &[u8]) -> Result<(), TxError> {
    if progress.len() > MAX_JOB_PROGRESS_BYTES {
        return Err(too_large(
            "checkpointed progress",
            progress.len(),
            MAX_JOB_PROGRESS_BYTES,
        ));
    }
    Ok(())
}

impl LedgerState {
    pub(super) fn record_job(
        &mut self,
        job: &JobId,
        runner: NodeId,
        dataset: AssetId,
        model: AssetId,
        request: &[u8],
    ) -> TxResult {
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
                tensors: None,
                progress: Vec::new(),
                checkpoints: 0,
                takeovers: 0,
            },
        );
        Ok(vec![Event::JobRecorded {
            job: *job,
            runner,
            dataset,
            model,
        }])
    }

    /// A recorded job's record, if `runner` is the replica running it.
    fn run_by(&self, job: &JobId, runner: NodeId) -> Result<&JobRecord, TxError> {
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
        Ok(record)
    }

    pub(super) fn checkpoint_job(
        &mut self,
        job: &JobId,
        runner: NodeId,
        round: u32,
        tensors: &Option<CheckpointTensors>,
        progress: &[u8],
    ) -> TxResult {
        let record = self.run_by(job, runner)?;
        if round < record.round {
            return Err(TxError::Invalid(format!(
                "job {job} is at round {}; a checkpoint cannot go back to {round}",
                record.round
            )));
        }
        if let Some(tensors) = tensors {
            check_tensors(tensors)?;
        }
        check_progress(progress)?;
        let checkpoints = record.checkpoints.checked_add(1).ok_or(TxError::Overflow)?;
        let record = self.jobs.get_mut(job).expect("checked above");
        record.round = round;
        record.tensors = tensors.clone();
        record.progress = progress.to_vec();
        record.checkpoints = checkpoints;
        Ok(vec![Event::JobCheckpointed {
            job: *job,
            runner,
            round,
        }])
    }

    /// Sends a job back to the start of an earlier round (see `Call::RewindJob`): its record
    /// names the weights that round started with from now on.
    pub(super) fn rewind_job(
        &mut self,
        job: &JobId,
        runner: NodeId,
        round: u32,
        tensors: &CheckpointTensors,
        progress: &[u8],
        wrong: NodeId,
    ) -> TxResult {
        let record = self.run_by(job, runner)?;
        if round >= record.round {
            return Err(TxError::Invalid(format!(
                "job {job} is at round {}; a rewind must go back, not to {round}",
                record.round
            )));
        }
        check_tensors(tensors)?;
        check_progress(progress)?;
        let checkpoints = record.checkpoints.checked_add(1).ok_or(TxError::Overflow)?;
        let record = self.jobs.get_mut(job).expect("checked above");
        let from = record.round;
        record.round = round;
        record.tensors = Some(tensors.clone());
        record.progress = progress.to_vec();
        record.checkpoints = checkpoints;
        Ok(vec![Event::JobRewound {
            job: *job,
            runner,
            from,
            to: round,
            wrong,
        }])
    }

    /// The runner's record of who did a job's work; only the replica running the job may
    /// write it, while its escrow is open, for at most `MAX_PAYOUTS` nodes.
    pub(super) fn record_job_work(&mut self, job: &JobId, runner: NodeId, nodes: &[NodeWork]) -> TxResult {
        self.run_by(job, runner)?;
        if nodes.len() > MAX_PAYOUTS {
            return Err(TxError::Invalid(format!(
                "a job's work names at most {MAX_PAYOUTS} nodes"
            )));
        }
        let mut seen = std::collections::BTreeSet::new();
        for work in nodes {
            if !seen.insert(work.node) {
                return Err(TxError::Invalid(format!("node {} is named twice", work.node)));
            }
            if work.verified_rows > work.rows {
                return Err(TxError::Invalid(format!(
                    "node {} has more verified rows than rows",
                    work.node
                )));
            }
        }
        Ok(vec![Event::JobWorkRecorded {
            job: *job,
            nodes: nodes.to_vec(),
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
