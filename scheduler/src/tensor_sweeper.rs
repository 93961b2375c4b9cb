//! The leader's sweep of tensors nothing names: weights and optimizer states that storage nodes
//! keep but no ledger entry refers to any more (a job that failed or was cancelled, a ledger
//! restored to a backup older than the tensors). What the ledger names is kept: every running
//! job's checkpoint and the round starts it may rewind to, and every TrainedModel's weights.
//! Only tensors older than a grace period go (a round's new weights exist before their checkpoint
//! names them), and nothing goes while a settled job's TrainedModel is still to be minted (its
//! weights are named nowhere until then).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use aic_ledger::raft::replica::LedgerReplica;
use aic_ledger::state::{JobRecord, LedgerState};
use aic_ledger::tx::AssetKind;
use aic_protocol::messages::{NodeState, PeerRequest, PeerResponse};
use aic_protocol::tensor::TensorRef;
use aic_protocol::Role;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::data_plane;
use crate::job::checkpoint::Progress;
use crate::registry::{ListNodes, Registry};

/// The hashes of every tensor the ledger names.
pub fn referenced(state: &LedgerState) -> BTreeSet<[u8; 32]> {
    let mut named = BTreeSet::new();
    let mut add = |tensors: &aic_ledger::state::CheckpointTensors| {
        named.insert(tensors.weights.hash);
        if let Some(state) = tensors.optimizer_state {
            named.insert(state.hash);
        }
    };
    for record in state.jobs.values() {
        job_tensors(record, &mut add);
    }
    for asset in state.assets.values() {
        if asset.kind == AssetKind::TrainedModel {
            named.insert(asset.metadata.content_hash);
        }
    }
    named
}

fn job_tensors(record: &JobRecord, add: &mut impl FnMut(&aic_ledger::state::CheckpointTensors)) {
    if let Some(tensors) = &record.tensors {
        add(tensors);
    }
    // The weights a rewind would go back to live in the checkpoint's progress bytes.
    if let Ok(progress) = Progress::decode(&record.progress) {
        for start in progress.rewind.starts.values() {
            add(&start.tensors);
        }
    }
}

/// Of a node's tensors (with their ages in seconds), those to drop: named nowhere and older
/// than `grace_secs`.
pub fn to_drop(listed: &[(TensorRef, u64)], named: &BTreeSet<[u8; 32]>, grace_secs: u64) -> Vec<TensorRef> {
    listed
        .iter()
        .filter(|(tensor, age)| *age >= grace_secs && !named.contains(&tensor.hash))
        .map(|(tensor, _)| *tensor)
        .collect()
}

/// Runs the sweep on the Raft leader every `every` until shutdown.
pub struct TensorSweeper {
    pub ledger: Arc<LedgerReplica>,
    pub registry: Addr<Registry>,
    pub endpoint: quinn::Endpoint,
    pub grace: Duration,
    pub every: Duration,
}

impl TensorSweeper {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.every);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            if self.ledger.is_leader() {
                let dropped = self.sweep_once().await;
                if dropped > 0 {
                    info!(
                        dropped,
                        "tensors no ledger entry names dropped from storage nodes"
                    );
                }
            }
        }
    }

    /// One sweep over every storage node up; answers how many tensors were dropped.
    pub async fn sweep_once(&self) -> usize {
        let (named, pending) = self
            .ledger
            .read(|a| (referenced(&a.state), a.state.trained_models_pending.len()));
        if pending > 0 {
            return 0;
        }
        let Ok(nodes) = self.registry.send(ListNodes).await else {
            return 0;
        };
        let mut dropped = 0;
        for node in nodes
            .iter()
            .filter(|n| n.role == Role::Storage && n.state == NodeState::Up)
        {
            let listed = match data_plane::dial(&self.endpoint, &node.quic_addr, Role::Storage).await {
                Ok(client) => client.call(&PeerRequest::ListTensors).await,
                Err(error) => {
                    warn!(node = %node.name, %error, "tensor sweep: unreachable");
                    continue;
                }
            };
            let listed = match listed {
                Ok(PeerResponse::Tensors { tensors, .. }) => tensors,
                Ok(other) => {
                    warn!(node = %node.name, ?other, "tensor sweep: unexpected answer");
                    continue;
                }
                Err(error) => {
                    warn!(node = %node.name, %error, "tensor sweep: no list");
                    continue;
                }
            };
            for tensor in to_drop(&listed, &named, self.grace.as_secs()) {
                dropped +=
                    data_plane::drop(&self.endpoint, std::slice::from_ref(&node.quic_addr), tensor).await;
            }
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(b: u8) -> TensorRef {
        TensorRef {
            hash: [b; 32],
            elements: 10,
        }
    }

    #[test]
    fn only_old_tensors_nothing_names_are_dropped() {
        let named = BTreeSet::from([[1; 32]]);
        let listed = [(tensor(1), 10_000), (tensor(2), 10_000), (tensor(3), 5)];
        assert_eq!(to_drop(&listed, &named, 3600), [tensor(2)]);
    }

    #[test]
    fn a_jobs_checkpoint_and_its_rewind_points_are_named() {
        use crate::job::checkpoint::{RewindPoints, RoundStart};
        let tensors = |b: u8| aic_ledger::state::CheckpointTensors {
            weights: tensor(b),
            optimizer_state: Some(tensor(b + 1)),
            holders: vec![aic_protocol::NodeId::from_public_key(b"storage")],
        };
        let progress = Progress {
            rewind: RewindPoints {
                first_unverified: Default::default(),
                starts: [(
                    2,
                    RoundStart {
                        tensors: tensors(5),
                        verified_rows: Default::default(),
                    },
                )]
                .into(),
            },
            ..Default::default()
        };
        let record = JobRecord {
            runner: aic_protocol::NodeId::from_public_key(b"runner"),
            request: Vec::new(),
            round: 3,
            tensors: Some(tensors(1)),
            progress: progress.encode(),
            checkpoints: 3,
            takeovers: 0,
        };
        let mut named = BTreeSet::new();
        job_tensors(&record, &mut |t| {
            named.insert(t.weights.hash);
            if let Some(s) = t.optimizer_state {
                named.insert(s.hash);
            }
        });
        assert_eq!(named, BTreeSet::from([[1; 32], [2; 32], [5; 32], [6; 32]]));
    }
}
