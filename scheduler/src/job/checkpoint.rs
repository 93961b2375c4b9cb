//! Checkpoints: the tallies a job records on the ledger after each round (postcard, O(1) in the
//! model size), the weights it stores on storage nodes by name, and taking both back when a
//! replica resumes the job.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use aic_ledger::state::CheckpointTensors;
use aic_ledger::tx::Call;
use aic_protocol::{NodeId, ShardId};
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::engine::CheckpointOutcome;
use super::runner::Effects;
use super::signer::Refusal;
use crate::data_plane::{self, OuterState};

/// What a job has earned so far, by node: enough to resume it and pay it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tallies {
    /// Row-passes of accepted tasks.
    pub compute_rows: BTreeMap<NodeId, u64>,
    /// Rows of results a spot check confirmed: what Proof-of-Value rewards.
    pub verified_rows: BTreeMap<NodeId, u64>,
    /// Shard bytes served.
    pub storage_bytes: BTreeMap<NodeId, u64>,
    /// Nodes confirmed wrong in this job: never used again, never paid.
    pub banned: BTreeSet<NodeId>,
    /// Spot checks of each node's results: (agreed, caught). Encoded after the rest of the
    /// progress (see `Progress::encode`), so checkpoints written before they were counted read.
    #[serde(skip)]
    pub checks: BTreeMap<NodeId, (u32, u32)>,
}

/// A checkpoint's progress field: the tallies and where the round's tasks ran (shard, compute
/// node, storage node). Node ids are 32 raw bytes, so a round costs the log a few hundred bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub tallies: Tallies,
    pub assignments: Vec<(ShardId, NodeId, NodeId)>,
    /// Where the job would go back to if a node were found wrong. Encoded after the checks
    /// (see `encode`), so checkpoints written before rewinds existed read.
    #[serde(skip)]
    pub rewind: RewindPoints,
}

/// The rounds a job can rewind to. A node's results that no spot check confirmed are trusted
/// only until the node is found wrong; then every round from its earliest such result is
/// re-run without it. So the job keeps, for each node, that earliest round, and the weights the
/// round started from: one set of weights per distinct round, typically the first round only
/// (every node joins then), not one per round.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RewindPoints {
    /// Each node's earliest round with an accepted result no spot check confirmed.
    pub first_unverified: BTreeMap<NodeId, u32>,
    /// The start of every round some node's `first_unverified` names.
    pub starts: BTreeMap<u32, RoundStart>,
}

/// What a rewind to a round restores: the weights the round started from and the rows spot
/// checks had confirmed before it (Proof of Value counts only what stays in the model).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundStart {
    pub tensors: CheckpointTensors,
    pub verified_rows: BTreeMap<NodeId, u64>,
}

impl Progress {
    /// The progress, then the spot-check counts, then the rewind points.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = postcard::to_stdvec(self).expect("tallies encode");
        bytes.extend(postcard::to_stdvec(&self.tallies.checks).expect("checks encode"));
        bytes.extend(postcard::to_stdvec(&self.rewind).expect("rewind points encode"));
        bytes
    }

    /// Reads `encode`'s bytes; without the counts or rewind points after them (an older
    /// checkpoint) the job resumes with none.
    pub fn decode(bytes: &[u8]) -> Result<Self, postcard::Error> {
        if bytes.is_empty() {
            return Ok(Progress::default());
        }
        let (mut progress, rest): (Progress, &[u8]) = postcard::take_from_bytes(bytes)?;
        if !rest.is_empty() {
            let (checks, rest) = postcard::take_from_bytes(rest)?;
            progress.tallies.checks = checks;
            if !rest.is_empty() {
                progress.rewind = postcard::from_bytes(rest)?;
            }
        }
        Ok(progress)
    }
}

impl Effects {
    /// Records a checkpoint on the ledger. A refusal because another replica runs the job (or
    /// already settled it: its record went with the escrow release) is `TakenOver`; anything
    /// else only costs resumability.
    pub async fn record_checkpoint(
        self: Arc<Self>,
        round: u32,
        tensors: Option<CheckpointTensors>,
        progress: Progress,
    ) -> CheckpointOutcome {
        let Some(system) = self.ctx.system.clone() else {
            return CheckpointOutcome::NotRecorded;
        };
        let call = Call::CheckpointJob {
            job: self.plan.request.job,
            runner: self.ctx.me,
            round,
            tensors,
            progress: progress.encode(),
        };
        let submitted = system.try_submit(&self.ctx.ledger, call).await;
        self.outcome(submitted.map(drop), "checkpoint")
    }

    /// What the ledger's answer to a checkpoint or a rewind means for the job.
    fn outcome(&self, submitted: Result<(), Refusal>, what: &str) -> CheckpointOutcome {
        match submitted {
            Ok(()) => CheckpointOutcome::Recorded,
            Err(Refusal::Ledger(
                aic_ledger::TxError::NotTheRunner { .. } | aic_ledger::TxError::JobNotRecorded(_),
            )) => CheckpointOutcome::TakenOver,
            Err(error) => {
                warn!(job = %self.plan.request.job, ?error, "{what} not recorded");
                CheckpointOutcome::NotRecorded
            }
        }
    }

    /// Goes back to the start of round `round`: its weights restored from the storage nodes
    /// that kept them, then the rewind recorded on the ledger (which names these weights from
    /// now on). Restoring failing is an error; the ledger's answer is read like a checkpoint's.
    pub async fn rewind(
        self: Arc<Self>,
        round: u32,
        tensors: CheckpointTensors,
        progress: Progress,
        wrong: NodeId,
    ) -> Result<CheckpointOutcome, String> {
        self.restore(&tensors).await?;
        self.mean_update.lock().expect("mean update").take();
        let Some(system) = self.ctx.system.clone() else {
            return Ok(CheckpointOutcome::NotRecorded);
        };
        let call = Call::RewindJob {
            job: self.plan.request.job,
            runner: self.ctx.me,
            round,
            tensors,
            progress: progress.encode(),
            wrong,
        };
        let submitted = system.try_submit(&self.ctx.ledger, call).await;
        Ok(self.outcome(submitted.map(drop), "rewind"))
    }

    /// Storage nodes up, nearest to the runner's view first (the registry's order), with their
    /// addresses.
    fn storage_nodes(&self) -> Vec<(NodeId, String)> {
        use aic_protocol::messages::NodeState;
        use aic_protocol::Role;
        self.nodes()
            .iter()
            .filter(|n| n.role == Role::Storage && n.state == NodeState::Up)
            .map(|n| (n.node_id, n.quic_addr.clone()))
            .collect()
    }

    /// Stores the current weights (and the outer optimizer's state) on storage nodes: what
    /// tasks fetch and what the next checkpoint names.
    pub async fn store_state(self: Arc<Self>) -> Result<CheckpointTensors, String> {
        let storage = self.storage_nodes();
        let (weights, momentum) = {
            let state = self.outer.lock().expect("outer state");
            (state.weights.clone(), state.momentum.clone())
        };
        let (weights, holders) = data_plane::store(&self.ctx.endpoint, &storage, weights)
            .await
            .map_err(|e| format!("storing the round's weights: {e}"))?;
        let holder_addrs: Vec<(NodeId, String)> = storage
            .iter()
            .filter(|(n, _)| holders.contains(n))
            .cloned()
            .collect();
        let optimizer_state = match momentum {
            Some(momentum) => Some(
                data_plane::store(&self.ctx.endpoint, &holder_addrs, momentum)
                    .await
                    .map_err(|e| format!("storing the outer optimizer's state: {e}"))?
                    .0,
            ),
            None => None,
        };
        let per_holder = weights.bytes() + optimizer_state.map_or(0, |t| t.bytes());
        self.wire.add_stored(per_holder * holders.len() as u64);
        Ok(CheckpointTensors {
            weights,
            optimizer_state,
            holders,
        })
    }

    /// Applies the outer optimizer to the round's collected mean update (on a blocking thread:
    /// the actor's thread keeps serving) and stores the new weights.
    pub async fn outer_step(self: Arc<Self>) -> Result<CheckpointTensors, String> {
        let mean_update = self
            .mean_update
            .lock()
            .expect("mean update")
            .take()
            .ok_or("no collected update to apply")?;
        let outer_lr = self.plan.request.outer_learning_rate_milli as f32 / 1000.0;
        let mut state = std::mem::take(&mut *self.outer.lock().expect("outer state"));
        state = tokio::task::spawn_blocking(move || {
            state.apply(&mean_update, outer_lr);
            state
        })
        .await
        .map_err(|e| format!("the outer step: {e}"))?;
        *self.outer.lock().expect("outer state") = state;
        self.store_state().await
    }

    /// Takes a checkpoint's weights (and optimizer state) back from the storage nodes that
    /// hold them, checked against their names.
    pub async fn restore(&self, tensors: &CheckpointTensors) -> Result<(), String> {
        let parameters = self.plan.parameters();
        if tensors.weights.elements != parameters {
            return Err(format!(
                "the checkpoint's weights hold {} values; the model has {parameters}",
                tensors.weights.elements
            ));
        }
        let holders: Vec<String> = tensors
            .holders
            .iter()
            .filter_map(|id| self.address_of(id))
            .collect();
        let weights = data_plane::fetch(&self.ctx.endpoint, &holders, tensors.weights)
            .await
            .map_err(|e| format!("the checkpoint's weights: {e}"))?;
        let momentum = match tensors.optimizer_state {
            Some(state) => Some(
                data_plane::fetch(&self.ctx.endpoint, &holders, state)
                    .await
                    .map_err(|e| format!("the checkpoint's optimizer state: {e}"))?,
            ),
            None => None,
        };
        let mut outer = self.outer.lock().expect("outer state");
        if momentum.is_some() != outer.momentum.is_some() {
            return Err("the checkpoint's optimizer state does not fit the job's outer optimizer".into());
        }
        *outer = OuterState {
            weights: Arc::new(weights),
            momentum: momentum.map(Arc::new),
        };
        Ok(())
    }

    /// Forgets tensors no checkpoint names any more (best effort).
    pub async fn drop_tensors(
        self: Arc<Self>,
        tensors: Vec<aic_protocol::tensor::TensorRef>,
        holders: Vec<NodeId>,
    ) {
        let holders: Vec<String> = holders.iter().filter_map(|id| self.address_of(id)).collect();
        for tensor in tensors {
            data_plane::drop(&self.ctx.endpoint, &holders, tensor).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_of_many_nodes_stays_small_and_round_trips() {
        let node = |b: u8| -> NodeId { hex::encode([b; 32]).parse().expect("64 hex digits") };
        let mut tallies = Tallies::default();
        for b in 0..8 {
            tallies.compute_rows.insert(node(b), u64::MAX / 3);
            tallies.verified_rows.insert(node(b), 1 << 40);
            tallies.storage_bytes.insert(node(100 + b), 1 << 50);
        }
        tallies.banned.insert(node(7));
        tallies.checks.insert(node(1), (3, 0));
        tallies.checks.insert(node(7), (1, 2));
        let weights = |b: u8| CheckpointTensors {
            weights: aic_protocol::tensor::TensorRef::of(&[f32::from(b); 4]),
            optimizer_state: None,
            holders: vec![node(100)],
        };
        let mut rewind = RewindPoints::default();
        for b in 0..8 {
            rewind.first_unverified.insert(node(b), u32::from(b % 2));
        }
        for round in 0..2u8 {
            rewind.starts.insert(
                u32::from(round),
                RoundStart {
                    tensors: weights(round),
                    verified_rows: tallies.verified_rows.clone(),
                },
            );
        }
        let progress = Progress {
            tallies,
            assignments: (0..8u8)
                .map(|b| (ShardId::of_content(&[b]), node(b), node(100 + b)))
                .collect(),
            rewind,
        };
        let bytes = progress.encode();
        // A round of 8 tasks over 16 nodes, with two rounds to rewind to, fits the 4 KB a
        // checkpoint may cost, whatever the model.
        assert!(bytes.len() < 4_096, "{} bytes", bytes.len());
        assert_eq!(Progress::decode(&bytes).unwrap(), progress);
        assert_eq!(Progress::decode(&[]).unwrap(), Progress::default());
        assert!(Progress::decode(&[0xff; 3]).is_err());
        // A checkpoint from before rewinds reads, with nothing to rewind to; one from before
        // the checks were counted reads, with none counted.
        let mut older = progress.clone();
        older.rewind = RewindPoints::default();
        let mut bytes = postcard::to_stdvec(&older).unwrap();
        bytes.extend(postcard::to_stdvec(&older.tallies.checks).unwrap());
        assert_eq!(Progress::decode(&bytes).unwrap(), older);
        older.tallies.checks.clear();
        let bytes = postcard::to_stdvec(&older).unwrap();
        assert_eq!(Progress::decode(&bytes).unwrap(), older);
    }
}
