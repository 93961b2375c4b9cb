//! The runner's side of the tensor data plane: storing a round's weights (and the outer
//! optimizer's state) on storage nodes, collecting the tasks' updates from the compute nodes
//! that hold them and reducing them in a fixed order, comparing two executions' updates for a
//! spot check, and the outer optimizer step.
//!
//! Aggregation is a streaming reduce at the runner: one accumulator the size of the model, the
//! updates read one chunk at a time in task order (shard order), so memory is O(model) whatever
//! the number of tasks, and the sum is the same on every re-execution of the round. A round's
//! bytes on the wire: the weights once to each holder, once to each compute node that runs a
//! task (it keeps them for its other tasks of the round), and each update once back.

use std::time::Duration;

use aic_protocol::messages::OuterOptimizer;
use aic_protocol::rpc::RpcClient;
use aic_protocol::tensor::{put_tensor, TensorError, TensorReader, TensorRef};
use aic_protocol::{NodeId, Role};

/// Nesterov's momentum coefficient.
pub const NESTEROV_MOMENTUM: f32 = 0.9;
/// How long one tensor call may take (a chunk, or opening a stream).
const TENSOR_CALL_TIMEOUT: Duration = Duration::from_secs(120);
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);
/// Most storage nodes that hold a round's weights.
pub const WEIGHT_HOLDERS: usize = 2;

/// The weights and the outer optimizer's state: what the runner holds between rounds.
#[derive(Clone, Debug, PartialEq)]
pub struct OuterState {
    pub weights: Vec<f32>,
    /// Nesterov momentum, shaped like the weights; none for outer SGD.
    pub momentum: Option<Vec<f32>>,
}

impl OuterState {
    pub fn new(weights: Vec<f32>, optimizer: OuterOptimizer) -> Self {
        let momentum = match optimizer {
            OuterOptimizer::Sgd => None,
            OuterOptimizer::Nesterov => Some(vec![0.0; weights.len()]),
        };
        OuterState { weights, momentum }
    }

    /// Applies the round's mean update Δ: SGD w ← w − η·Δ; Nesterov m ← μ·m + Δ,
    /// w ← w − η·(Δ + μ·m).
    pub fn apply(&mut self, mean_update: &[f32], learning_rate: f32) {
        match self.momentum.as_mut() {
            None => {
                for (w, d) in self.weights.iter_mut().zip(mean_update) {
                    *w -= learning_rate * d;
                }
            }
            Some(momentum) => {
                for ((w, m), d) in self.weights.iter_mut().zip(momentum.iter_mut()).zip(mean_update) {
                    *m = NESTEROV_MOMENTUM * *m + d;
                    *w -= learning_rate * (d + NESTEROV_MOMENTUM * *m);
                }
            }
        }
    }
}

/// Why a data-plane step failed, typed so the runner re-runs a task rather than reading text.
#[derive(Debug, thiserror::Error)]
pub enum PlaneError {
    #[error("no storage node took the tensor: {0}")]
    NotStored(String),
    #[error("the update of task {index} could not be collected from its node: {error}")]
    Collect { index: usize, error: TensorError },
    #[error("node {addr}: {reason}")]
    Dial { addr: String, reason: String },
    #[error("reading tensor {tensor}: {error}")]
    Read { tensor: TensorRef, error: TensorError },
}

/// Dials a node with the scheduler's certificate, checking its role.
pub async fn dial(endpoint: &quinn::Endpoint, addr: &str, role: Role) -> Result<RpcClient, PlaneError> {
    let dialing = RpcClient::connect(endpoint, addr, role);
    match tokio::time::timeout(DIAL_TIMEOUT, dialing).await {
        Ok(Ok(client)) => Ok(client.with_timeout(TENSOR_CALL_TIMEOUT)),
        Ok(Err(e)) => Err(PlaneError::Dial {
            addr: addr.to_string(),
            reason: e.to_string(),
        }),
        Err(_) => Err(PlaneError::Dial {
            addr: addr.to_string(),
            reason: format!("no answer within {DIAL_TIMEOUT:?}"),
        }),
    }
}

/// Stores `values` on each of `storage` (node, address), answering its name and the nodes that
/// took it; at least one must.
pub async fn store(
    endpoint: &quinn::Endpoint,
    storage: &[(NodeId, String)],
    values: &[f32],
) -> Result<(TensorRef, Vec<NodeId>), PlaneError> {
    let mut holders = Vec::new();
    let mut failures = Vec::new();
    let mut stored = None;
    for (node, addr) in storage.iter().take(WEIGHT_HOLDERS) {
        let outcome = match dial(endpoint, addr, Role::Storage).await {
            Ok(client) => put_tensor(&client, values).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(tensor) => {
                stored = Some(tensor);
                holders.push(*node);
            }
            Err(e) => failures.push(format!("{addr}: {e}")),
        }
    }
    match stored {
        Some(tensor) => Ok((tensor, holders)),
        None => Err(PlaneError::NotStored(if failures.is_empty() {
            "no storage node is up".into()
        } else {
            failures.join("; ")
        })),
    }
}

/// Fetches a whole tensor from the first of `holders` (addresses) that serves it true to its
/// name: how a resumed job gets its checkpoint back.
pub async fn fetch(
    endpoint: &quinn::Endpoint,
    holders: &[String],
    tensor: TensorRef,
) -> Result<Vec<f32>, PlaneError> {
    let mut last = PlaneError::NotStored("the checkpoint names no reachable holder".into());
    for addr in holders {
        let client = match dial(endpoint, addr, Role::Storage).await {
            Ok(client) => client,
            Err(e) => {
                last = e;
                continue;
            }
        };
        match aic_protocol::tensor::fetch_tensor(&client, tensor, None, tensor.elements).await {
            Ok(values) => return Ok(values),
            Err(error) => last = PlaneError::Read { tensor, error },
        }
    }
    Err(last)
}

/// One task's update to reduce: where it is held, its name, and its weight in the mean (its
/// share of the round's rows).
pub struct Part {
    pub client: RpcClient,
    pub update: TensorRef,
    pub share: f64,
}

/// The weighted sum of the parts' updates, read chunk by chunk in the parts' order. A part that
/// cannot be read (gone, cut, not true to its name, not finite) fails the reduce with its index;
/// nothing of the sum is kept.
pub async fn reduce(parts: &[Part], parameters: u64) -> Result<Vec<f32>, PlaneError> {
    let mut sum = vec![0.0f32; parameters as usize];
    for (index, part) in parts.iter().enumerate() {
        let collect = |error| PlaneError::Collect { index, error };
        if part.update.elements != parameters {
            return Err(collect(TensorError::TooLarge {
                elements: part.update.elements,
                limit: parameters,
            }));
        }
        let mut reader = TensorReader::open(&part.client, part.update, None, parameters)
            .await
            .map_err(collect)?;
        let share = part.share as f32;
        let mut offset = 0;
        while let Some(chunk) = reader.next_chunk().await.map_err(collect)? {
            for (s, v) in sum[offset..offset + chunk.len()].iter_mut().zip(&chunk) {
                *s += share * v;
            }
            offset += chunk.len();
        }
    }
    Ok(sum)
}

/// Whether two executions' updates agree within the rating tolerance, compared chunk by chunk
/// as both stream in. An error names which side could not be read (0 or 1).
pub async fn updates_agree(
    a: (&RpcClient, TensorRef),
    b: (&RpcClient, TensorRef),
    parameters: u64,
) -> Result<bool, (usize, TensorError)> {
    if a.1.elements != b.1.elements {
        return Ok(false);
    }
    let mut left = TensorReader::open(a.0, a.1, None, parameters)
        .await
        .map_err(|e| (0, e))?;
    let mut right = TensorReader::open(b.0, b.1, None, parameters)
        .await
        .map_err(|e| (1, e))?;
    let mut agree = true;
    loop {
        let l = left.next_chunk().await.map_err(|e| (0, e))?;
        let r = right.next_chunk().await.map_err(|e| (1, e))?;
        match (l, r) {
            (Some(l), Some(r)) => agree &= crate::rating::chunks_agree(&l, &r),
            (None, None) => return Ok(agree),
            // Equal lengths were checked: both readers end together.
            _ => return Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outer_sgd_at_rate_one_applies_the_mean_update() {
        let mut state = OuterState::new(vec![1.0, 2.0], OuterOptimizer::Sgd);
        state.apply(&[0.5, -1.0], 1.0);
        assert_eq!(state.weights, vec![0.5, 3.0]);
        assert!(state.momentum.is_none());
    }

    #[test]
    fn nesterov_keeps_momentum_and_looks_ahead() {
        let mut state = OuterState::new(vec![0.0], OuterOptimizer::Nesterov);
        state.apply(&[1.0], 0.5);
        // m = 1; w = −0.5·(1 + 0.9·1)
        assert_eq!(state.momentum, Some(vec![1.0]));
        assert!((state.weights[0] + 0.95).abs() < 1e-6);
        state.apply(&[1.0], 0.5);
        // m = 1.9; w −= 0.5·(1 + 0.9·1.9)
        assert!((state.momentum.as_ref().unwrap()[0] - 1.9).abs() < 1e-6);
        assert!((state.weights[0] + 0.95 + 0.5 * (1.0 + 0.9 * 1.9)).abs() < 1e-5);
    }
}
