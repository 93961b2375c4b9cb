//! Dispatch: what the engine's task commands do on the wire — a placement from the allocator,
//! a `RunTask` to the chosen compute node with shard and weights tickets, the rater's draw, two
//! executions compared update chunk by update chunk, and the round's updates collected in order.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aic_ledger::state::CheckpointTensors;
use aic_protocol::manifest::ShardEntry;
use aic_protocol::messages::{
    LocalTraining, NodeState, PeerRequest, PeerResponse, ShardSource, TaskKind, TaskResult, TaskSpec,
    WeightsSource,
};
use aic_protocol::rpc::RpcClient;
use aic_protocol::tensor::TensorRef;
use aic_protocol::ticket::ShardTicket;
use aic_protocol::{NodeId, Role, ShardId, TaskId};
use tracing::warn;

use super::engine::{CollectFailure, Comparison};
use super::runner::Effects;
use crate::allocator::{Finished, Place, PlaceRound};
use crate::data_plane::{self, Part, PlaneError};
use crate::placement::Placement;
use crate::rater::{Penalty, RecordPenalty, ShouldCheck};
use crate::rating;
use crate::registry::ListNodes;

/// How long dialing a compute node may take.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a running task's node is looked up in the registry (a node marked down is given
/// up on at once, not at the transport's timeout).
const DOWN_POLL: Duration = Duration::from_millis(250);

impl Effects {
    /// A connection to a compute node, reused across tasks and collections.
    pub async fn client_for(&self, node: &NodeId) -> Result<RpcClient, String> {
        let cached = self
            .clients
            .lock()
            .expect("clients")
            .get(node)
            .filter(|c| !c.is_closed())
            .cloned();
        if let Some(client) = cached {
            return Ok(client);
        }
        let status = self.node(node).ok_or("the node left")?;
        let connect = RpcClient::connect(&self.ctx.endpoint, &status.quic_addr, Role::Compute);
        let client = tokio::time::timeout(DIAL_TIMEOUT, connect)
            .await
            .map_err(|_| format!("{} did not answer within {DIAL_TIMEOUT:?}", status.quic_addr))?
            .map_err(|e| e.to_string())?
            .with_timeout(self.ctx.task_timeout);
        if client.peer().node_id != *node {
            return Err("the node at that address is another node".to_string());
        }
        self.clients
            .lock()
            .expect("clients")
            .insert(*node, client.clone());
        Ok(client)
    }

    /// The allocator's best node for a task on `shard`, not among `exclude`.
    pub async fn place(
        self: Arc<Self>,
        shard: &ShardEntry,
        exclude: Vec<NodeId>,
    ) -> Option<Placement<NodeId>> {
        self.place_round(vec![(shard.clone(), exclude)])
            .await
            .pop()
            .flatten()
    }

    /// The allocator's nodes for many tasks at once (a round's), in order: the same nodes as
    /// placing them one after another.
    pub async fn place_round(
        self: Arc<Self>,
        tasks: Vec<(ShardEntry, Vec<NodeId>)>,
    ) -> Vec<Option<Placement<NodeId>>> {
        let count = tasks.len();
        let replicas = super::engine::replicas_of(&self.nodes(), &self.plan.dataset);
        let tasks = tasks
            .into_iter()
            .map(|(shard, exclude)| self.placement_request(&shard, replicas.clone(), exclude))
            .collect();
        let placing = Instant::now();
        let placed = self
            .ctx
            .allocator
            .send(PlaceRound { tasks })
            .await
            .unwrap_or_else(|_| vec![None; count]);
        self.ctx
            .metrics
            .placement_duration
            .observe(placing.elapsed().as_secs_f64());
        placed
    }

    fn placement_request(&self, shard: &ShardEntry, replicas: Vec<NodeId>, exclude: Vec<NodeId>) -> Place {
        Place {
            shard_bytes: shard.bytes,
            flops: shard.rows as f64 * self.plan.parameters() as f64 * 6.0,
            memory_bytes: shard.bytes.saturating_mul(4),
            replicas,
            exclude,
        }
    }

    /// Runs a task on the placed node and frees its slot with the allocator afterwards.
    pub async fn dispatch(
        self: Arc<Self>,
        task: TaskId,
        kind: TaskKind,
        round: u32,
        shard: &ShardEntry,
        placement: &Placement<NodeId>,
        weights: &CheckpointTensors,
    ) -> Result<TaskResult, String> {
        let outcome = self.run_on(task, kind, round, shard, placement, weights).await;
        self.ctx.allocator.do_send(Finished {
            node: placement.node,
            compute_secs: placement.compute_secs,
        });
        if let Ok(result) = &outcome {
            self.wire.add_fetched(result.weights_fetched_bytes);
        }
        outcome
    }

    async fn run_on(
        &self,
        task: TaskId,
        kind: TaskKind,
        round: u32,
        entry: &ShardEntry,
        placement: &Placement<NodeId>,
        stored: &CheckpointTensors,
    ) -> Result<TaskResult, String> {
        let shard: ShardId = entry
            .id
            .parse()
            .map_err(|_| "a bad shard id in the manifest".to_string())?;
        let storage = self.node(&placement.replica).ok_or("the storage node left")?;
        let expires_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
            + self.ctx.task_timeout.as_millis() as u64
            + 60_000;
        let job = self.plan.request.job;
        let ticket_for = |dataset: String| {
            ShardTicket {
                job,
                node: placement.node,
                dataset,
                expires_ms,
            }
            .sign(&self.ctx.ticket_key)
        };
        // The weights' holders, the storage node chosen for the shard first when it holds them.
        let mut holders: Vec<&NodeId> = stored.holders.iter().collect();
        holders.sort_by_key(|id| **id != placement.replica);
        let weights = WeightsSource {
            tensor: stored.weights,
            storage: holders.into_iter().filter_map(|id| self.address_of(id)).collect(),
            ticket: ticket_for(stored.weights.ticket_name()),
        };
        let spec = TaskSpec {
            job,
            task,
            round,
            kind,
            model: self.plan.model.clone(),
            weights,
            training: LocalTraining {
                steps: self.plan.request.local_steps,
                optimizer: self.plan.request.inner_optimizer,
                learning_rate: self.plan.request.schedule.rate(
                    self.plan.request.learning_rate_milli as f32 / 1000.0,
                    round,
                    self.rounds,
                ),
                weight_decay: self.plan.request.weight_decay_micro as f32 / 1e6,
                batch_size: self.plan.request.batch_size,
            },
            label: self.plan.manifest.label.clone(),
            seed: self.plan.request.task_seed(round, &shard),
            shards: vec![ShardSource {
                dataset: self.plan.dataset.clone(),
                shard,
                storage: storage.quic_addr.clone(),
                ticket: ticket_for(self.plan.dataset.clone()),
            }],
        };
        let call = async {
            let client = self.client_for(&placement.node).await?;
            client
                .call(&PeerRequest::RunTask(Box::new(spec)))
                .await
                .map_err(|e| e.to_string())
        };
        let marked_down = async {
            loop {
                tokio::time::sleep(DOWN_POLL).await;
                let down = self
                    .ctx
                    .registry
                    .send(ListNodes)
                    .await
                    .map(|nodes| {
                        nodes
                            .iter()
                            .any(|n| n.node_id == placement.node && n.state == NodeState::Down)
                    })
                    .unwrap_or(false);
                if down {
                    return;
                }
            }
        };
        let answer = tokio::select! {
            answer = tokio::time::timeout(self.ctx.task_timeout, call) => {
                answer.map_err(|_| format!("no result within {:?}", self.ctx.task_timeout))??
            }
            () = marked_down => return Err("the node was marked down while running the task".into()),
        };
        match answer {
            PeerResponse::TaskDone(result) => Ok(*result),
            _ => Err("unexpected answer to a task".into()),
        }
    }

    /// Whether the rater draws a re-execution of this node's result.
    pub async fn draw_check(self: Arc<Self>, node: NodeId) -> bool {
        // A rater that cannot answer checks: the safe side.
        self.ctx.rater.send(ShouldCheck { node }).await.unwrap_or(true)
    }

    /// How two executions of one task compare: their results' numbers, then their updates
    /// chunk by chunk as both stream in. An update that cannot be read names its node: that is
    /// no verdict on anyone (a node that went away mid-check is not judged).
    pub async fn agree(self: Arc<Self>, a: &(NodeId, TaskResult), b: &(NodeId, TaskResult)) -> Comparison {
        let ((node_a, a), (node_b, b)) = (a, b);
        if !rating::results_agree(a, b) {
            return Comparison::Disagree;
        }
        let (Some(update_a), Some(update_b)) = (a.update, b.update) else {
            return if a.update.is_none() && b.update.is_none() {
                Comparison::Agree
            } else {
                Comparison::Disagree
            };
        };
        let client_a = match self.client_for(node_a).await {
            Ok(client) => client,
            Err(_) => return Comparison::Unreadable(*node_a),
        };
        let client_b = match self.client_for(node_b).await {
            Ok(client) => client,
            Err(_) => return Comparison::Unreadable(*node_b),
        };
        let parameters = self.plan.parameters();
        match data_plane::updates_agree((&client_a, update_a), (&client_b, update_b), parameters).await {
            Ok(agree) => {
                self.wire.add_compared(2 * parameters * 4);
                if agree {
                    Comparison::Agree
                } else {
                    Comparison::Disagree
                }
            }
            Err((side, error)) => {
                let node = if side == 0 { node_a } else { node_b };
                warn!(node = %self.name(node), %error, "a spot check could not read an update");
                self.ctx
                    .metrics
                    .tensor_refusals
                    .with_label_values(&[error.reason()])
                    .inc();
                Comparison::Unreadable(*node)
            }
        }
    }

    /// The round's mean update: every task's update collected from the node that holds it, in
    /// this order, weighted by its rows, kept for the outer step. Nothing reaches the weights
    /// until every update is in; the first that cannot be collected is named.
    pub async fn collect(
        self: Arc<Self>,
        parts: Vec<(NodeId, TensorRef, u64)>,
    ) -> Result<(), CollectFailure> {
        let parameters = self.plan.parameters();
        let rows: u64 = parts.iter().map(|(_, _, r)| r).sum();
        let mut streams = Vec::with_capacity(parts.len());
        for (index, (node, update, part_rows)) in parts.iter().enumerate() {
            let client = self.client_for(node).await.map_err(|error| CollectFailure {
                index: Some(index),
                error,
            })?;
            streams.push(Part {
                client,
                update: *update,
                share: *part_rows as f64 / rows.max(1) as f64,
            });
        }
        match data_plane::reduce(&streams, parameters).await {
            Ok(sum) => {
                self.wire.add_collected(parameters * 4 * streams.len() as u64);
                *self.mean_update.lock().expect("mean update") = Some(sum);
                Ok(())
            }
            Err(PlaneError::Collect { index, error }) => {
                self.ctx
                    .metrics
                    .tensor_refusals
                    .with_label_values(&[error.reason()])
                    .inc();
                let (node, _, _) = parts[index];
                warn!(node = %self.name(&node), %error, "an update could not be collected; re-running its task elsewhere");
                Err(CollectFailure {
                    index: Some(index),
                    error: error.to_string(),
                })
            }
            // Not one node's fault: the reduce itself failed.
            Err(other) => Err(CollectFailure {
                index: None,
                error: other.to_string(),
            }),
        }
    }

    /// Records a penalty against a node confirmed wrong, with its reputation after the check.
    pub async fn penalise(self: Arc<Self>, node: NodeId, task: TaskId) {
        let reason = "gradient disagreed with two other executions of the same task";
        let records = self.ctx.rater.send(crate::rater::Records).await.ok();
        let reputation = records
            .and_then(|(r, _)| r.get(&node).map(|n| n.reputation))
            .unwrap_or(0.0);
        let penalty = Penalty {
            node: self.name(&node),
            job: self.plan.request.job.to_string(),
            task: task.to_string(),
            reason: reason.to_string(),
            slashed: "0".into(),
            reputation_after: reputation,
        };
        warn!(node = %penalty.node, %task, reason, "penalty");
        self.ctx
            .metrics
            .penalties
            .with_label_values(&["wrong_result"])
            .inc();
        let _ = self.ctx.rater.send(RecordPenalty(penalty)).await;
    }
}
