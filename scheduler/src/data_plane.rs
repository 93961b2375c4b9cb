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

use std::sync::Arc;
use std::time::Duration;

use aic_protocol::messages::OuterOptimizer;
use aic_protocol::rpc::RpcClient;
use aic_protocol::tensor::{put_named_tensor, TensorError, TensorReader, TensorRef};
use aic_protocol::{NodeId, Role};

/// Nesterov's momentum coefficient.
pub const NESTEROV_MOMENTUM: f32 = 0.9;
/// How long one tensor call may take (a chunk, or opening a stream).
const TENSOR_CALL_TIMEOUT: Duration = Duration::from_secs(120);
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);
/// Most storage nodes that hold a round's weights.
pub const WEIGHT_HOLDERS: usize = 2;

/// The weights and the outer optimizer's state: what the runner holds between rounds. Shared
/// (`Arc`) so hashing and the outer step run on a blocking thread, never on the actor's.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OuterState {
    pub weights: Arc<Vec<f32>>,
    /// Nesterov momentum, shaped like the weights; none for outer SGD.
    pub momentum: Option<Arc<Vec<f32>>>,
}

impl OuterState {
    pub fn new(weights: Vec<f32>, optimizer: OuterOptimizer) -> Self {
        let momentum = match optimizer {
            OuterOptimizer::Sgd => None,
            OuterOptimizer::Nesterov => Some(Arc::new(vec![0.0; weights.len()])),
        };
        OuterState {
            weights: Arc::new(weights),
            momentum,
        }
    }

    /// Applies the round's mean update Δ: SGD w ← w − η·Δ; Nesterov m ← μ·m + Δ,
    /// w ← w − η·(Δ + μ·m).
    pub fn apply(&mut self, mean_update: &[f32], learning_rate: f32) {
        let weights = Arc::make_mut(&mut self.weights);
        match self.momentum.as_mut().map(Arc::make_mut) {
            None => {
                for (w, d) in weights.iter_mut().zip(mean_update) {
                    *w -= learning_rate * d;
                }
            }
            Some(momentum) => {
                for ((w, m), d) in weights.iter_mut().zip(momentum.iter_mut()).zip(mean_update) {
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

/// The name of `values`, hashed on a blocking thread.
pub async fn name_of(values: Arc<Vec<f32>>) -> TensorRef {
    tokio::task::spawn_blocking(move || TensorRef::of(&values))
        .await
        .expect("hashing does not panic")
}

/// Stores `values` on each of `storage` (node, address), answering its name and the nodes that
/// took it; at least one must.
pub async fn store(
    endpoint: &quinn::Endpoint,
    storage: &[(NodeId, String)],
    values: Arc<Vec<f32>>,
) -> Result<(TensorRef, Vec<NodeId>), PlaneError> {
    let tensor = name_of(values.clone()).await;
    let mut holders = Vec::new();
    let mut failures = Vec::new();
    let mut stored = None;
    for (node, addr) in storage.iter().take(WEIGHT_HOLDERS) {
        let outcome = match dial(endpoint, addr, Role::Storage).await {
            Ok(client) => put_named_tensor(&client, tensor, &values)
                .await
                .map_err(|e| e.to_string()),
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

/// Asks each of `holders` (addresses) to forget `tensor`; a holder that cannot be reached keeps
/// it (disk, not correctness, is what that costs). Answers how many dropped it.
pub async fn drop(endpoint: &quinn::Endpoint, holders: &[String], tensor: TensorRef) -> usize {
    let mut dropped = 0;
    for addr in holders {
        if let Ok(client) = dial(endpoint, addr, Role::Storage).await {
            let asked = client
                .call(&aic_protocol::messages::PeerRequest::DropTensor { tensor })
                .await;
            if matches!(asked, Ok(aic_protocol::messages::PeerResponse::Dropped)) {
                dropped += 1;
            }
        }
    }
    dropped
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
            return Err(collect(TensorError::WrongLength {
                elements: part.update.elements,
                expected: parameters,
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
    use std::collections::HashMap;
    use std::sync::Arc;

    use aic_protocol::certs::{CertificateAuthority, Identity, PeerIdentity, Validity};
    use aic_protocol::messages::{PeerRequest, PeerResponse};
    use aic_protocol::metrics::TransportMetrics;
    use aic_protocol::rpc::{self, Reply, RpcHandler};
    use aic_protocol::tensor::{to_bytes, TENSOR_CHUNK_ELEMENTS};
    use aic_protocol::transport::{self, TransportTuning};
    use aic_protocol::{ErrorCode, RpcError};
    use tokio_util::sync::CancellationToken;

    use super::*;

    /// A compute node that lies: for each update name it serves the frames it was given.
    struct Liar(HashMap<TensorRef, Vec<PeerResponse>>);

    impl RpcHandler for Liar {
        async fn peer_reply(
            &self,
            _: &PeerIdentity,
            request: PeerRequest,
        ) -> Result<Reply<PeerResponse>, RpcError> {
            let PeerRequest::GetTensor { tensor, .. } = request else {
                return Err(RpcError::new(ErrorCode::Unsupported, "only tensors here"));
            };
            let frames = self.0.get(&tensor).cloned().unwrap_or_default();
            Ok(Reply::Stream(Box::pin(futures::stream::iter(
                frames.into_iter().map(Ok),
            ))))
        }
    }

    fn endpoint(ca: &CertificateAuthority, role: Role) -> quinn::Endpoint {
        let identity = Identity::from_issued(
            ca,
            &ca.issue(role, role.as_str(), &[], Validity::default()).unwrap(),
        )
        .unwrap();
        let tuning = TransportTuning::default();
        transport::endpoint(
            transport::bind_udp("127.0.0.1:0".parse().unwrap(), &tuning).unwrap(),
            &identity,
            &tuning,
        )
        .unwrap()
    }

    fn chunk(index: u64, values: &[f32]) -> PeerResponse {
        PeerResponse::TensorChunk {
            index,
            bytes: to_bytes(values),
        }
    }

    /// The runner's reduce against a compute node serving updates that are not what their
    /// names say, cut short, too long, out of order, not finite or of the wrong shape: each is
    /// refused with its typed reason and the part's index, and no sum comes back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lying_compute_node_gets_no_update_into_the_sum() {
        aic_protocol::install_crypto_provider();
        let ca = CertificateAuthority::generate("data-plane").unwrap();
        let n = TENSOR_CHUNK_ELEMENTS + 10;
        let honest: Vec<f32> = (0..n).map(|i| (i % 13) as f32 * 0.5).collect();
        let other: Vec<f32> = honest.iter().map(|v| v + 1.0).collect();
        let name = TensorRef::of(&honest);
        let (first, second) = honest.split_at(TENSOR_CHUNK_ELEMENTS);
        let end = PeerResponse::TensorEnd { chunks: 2 };
        let mut nan = second.to_vec();
        nan[3] = f32::NAN;
        // A stream that goes on after a tensor true to its name.
        let long: Vec<f32> = honest.iter().map(|v| v + 2.0).collect();
        let long_name = TensorRef::of(&long);
        let (long_first, long_second) = long.split_at(TENSOR_CHUNK_ELEMENTS);
        // Each lie is served under its own name (the runner knows each by its result).
        let lies: Vec<(&str, TensorRef, Vec<PeerResponse>)> = vec![
            (
                "wrong_hash",
                TensorRef {
                    hash: [1; 32],
                    ..name
                },
                vec![chunk(0, first), chunk(1, second), end.clone()],
            ),
            (
                "truncated",
                TensorRef {
                    hash: [2; 32],
                    ..name
                },
                vec![chunk(0, first)],
            ),
            (
                "too_long",
                long_name,
                vec![chunk(0, long_first), chunk(1, long_second), chunk(2, &[1.0])],
            ),
            (
                "out_of_order",
                TensorRef {
                    hash: [4; 32],
                    ..name
                },
                vec![chunk(1, second), chunk(0, first), end.clone()],
            ),
            (
                "not_finite",
                TensorRef {
                    hash: [5; 32],
                    ..name
                },
                vec![chunk(0, first), chunk(1, &nan), end.clone()],
            ),
            (
                "wrong_chunk_size",
                TensorRef {
                    hash: [6; 32],
                    ..name
                },
                vec![chunk(0, &first[..10]), end.clone()],
            ),
        ];
        let mut served: HashMap<TensorRef, Vec<PeerResponse>> =
            lies.iter().map(|(_, t, frames)| (*t, frames.clone())).collect();
        served.insert(name, vec![chunk(0, first), chunk(1, second), end.clone()]);
        let other_name = TensorRef::of(&other);
        served.insert(
            other_name,
            vec![
                chunk(0, &other[..TENSOR_CHUNK_ELEMENTS]),
                chunk(1, &other[TENSOR_CHUNK_ELEMENTS..]),
                end,
            ],
        );
        let shutdown = CancellationToken::new();
        let server = endpoint(&ca, Role::Compute);
        let addr = server.local_addr().unwrap().to_string();
        let metrics = TransportMetrics::register(&prometheus::Registry::new(), "compute").unwrap();
        tokio::spawn(rpc::serve(
            server,
            Arc::new(Liar(served)),
            metrics,
            shutdown.clone(),
        ));
        let runner = endpoint(&ca, Role::Scheduler);
        let client = dial(&runner, &addr, Role::Compute).await.unwrap();
        let part = |update: TensorRef, share: f64| Part {
            client: client.clone(),
            update,
            share,
        };

        // Honest parts reduce to their weighted sum, in order.
        let sum = reduce(&[part(name, 0.25), part(other_name, 0.75)], n as u64)
            .await
            .unwrap();
        assert!((sum[7] - (0.25 * honest[7] + 0.75 * other[7])).abs() < 1e-6);

        for (reason, lie, _) in &lies {
            match reduce(&[part(name, 0.5), part(*lie, 0.5)], n as u64).await {
                Err(PlaneError::Collect { index: 1, error }) => {
                    assert_eq!(error.reason(), *reason, "{error}")
                }
                Ok(_) => panic!("{reason}: a lie reached the sum"),
                Err(other) => panic!("{reason}: {other}"),
            }
        }
        // An update of the wrong shape is refused before a byte is read.
        let short = TensorRef { elements: 10, ..name };
        match reduce(&[part(short, 1.0)], n as u64).await {
            Err(PlaneError::Collect { index: 0, error }) => assert_eq!(error.reason(), "wrong_length"),
            other => panic!("{:?}", other.map(|s| s.len())),
        }
        // A spot check sees the difference too, chunk by chunk.
        assert!(updates_agree((&client, name), (&client, name), n as u64)
            .await
            .unwrap());
        assert!(!updates_agree((&client, name), (&client, other_name), n as u64)
            .await
            .unwrap());
        assert!(matches!(
            updates_agree((&client, name), (&client, lies[0].1), n as u64).await,
            Err((1, TensorError::WrongHash))
        ));
        shutdown.cancel();
    }

    #[test]
    fn outer_sgd_at_rate_one_applies_the_mean_update() {
        let mut state = OuterState::new(vec![1.0, 2.0], OuterOptimizer::Sgd);
        state.apply(&[0.5, -1.0], 1.0);
        assert_eq!(*state.weights, vec![0.5, 3.0]);
        assert!(state.momentum.is_none());
    }

    #[test]
    fn nesterov_keeps_momentum_and_looks_ahead() {
        let mut state = OuterState::new(vec![0.0], OuterOptimizer::Nesterov);
        state.apply(&[1.0], 0.5);
        // m = 1; w = −0.5·(1 + 0.9·1)
        assert_eq!(state.momentum.as_deref(), Some(&vec![1.0]));
        assert!((state.weights[0] + 0.95).abs() < 1e-6);
        state.apply(&[1.0], 0.5);
        // m = 1.9; w −= 0.5·(1 + 0.9·1.9)
        assert!((state.momentum.as_ref().unwrap()[0] - 1.9).abs() < 1e-6);
        assert!((state.weights[0] + 0.95 + 0.5 * (1.0 + 0.9 * 1.9)).abs() < 1e-5);
    }
}
