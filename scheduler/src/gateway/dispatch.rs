//! Where a call's rows run: calls for one model wait a bounded delay for company and go to a
//! compute node together (up to a bounded batch, and within a frame); the node is the least
//! loaded live one (then the fastest measured), and a batch a node fails is retried on another,
//! so a node that dies mid-stream loses no call. Rows are counted only once a node has answered.
//!
//! ```text
//!  call ──► queue[model] ──(max_rows or max_delay)──► batch ──► least-loaded node ──► outputs
//!                                                        └── node fails: next node (attempts)
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aic_kernels::Matrix;
use aic_ledger::Address;
use aic_protocol::messages::{InferRequest, NodeState, PeerRequest, PeerResponse, ServedModel};
use aic_protocol::rpc::RpcClient;
use aic_protocol::{NodeId, Role};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;

use super::ledger::Ledger;
use super::metrics::GatewayMetrics;

/// Encoded values one batch may carry, inputs or outputs: well within a 4 MiB frame.
const MAX_BATCH_VALUES: usize = 768 * 1024;
/// Batches of one model in flight at once.
const BATCHES_IN_FLIGHT: usize = 8;
/// How long a node that failed a batch is passed over.
const FAILED_NODE_COOLDOWN: Duration = Duration::from_secs(10);
/// How long one batch may take on a node.
const BATCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Calls waiting per model before new ones are refused.
const QUEUE_CAPACITY: usize = 4096;

/// A compute node the gateway may use.
#[derive(Clone, Debug)]
pub struct ComputeNode {
    pub id: NodeId,
    pub addr: String,
    /// The operator account paid for the rows it serves.
    pub payout: Address,
    pub mflops: u64,
}

/// Why a call's rows were not served.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DispatchError {
    #[error("no compute node is available")]
    NoNode,
    #[error("the model's queue is full; retry shortly")]
    QueueFull,
    #[error("every attempt failed: {0}")]
    Failed(String),
    #[error("the gateway is stopping")]
    Stopping,
}

/// A call's rows, served.
#[derive(Clone, Debug)]
pub struct Served {
    pub outputs: Matrix,
    pub node: ComputeNode,
}

struct Pending {
    features: Matrix,
    reply: oneshot::Sender<Result<Served, DispatchError>>,
}

/// The compute nodes, their load, and one batching queue per model.
pub struct Dispatcher {
    outbound: quinn::Endpoint,
    nodes: Mutex<Vec<ComputeNode>>,
    load: Mutex<HashMap<NodeId, u32>>,
    failed: Mutex<HashMap<NodeId, Instant>>,
    clients: tokio::sync::Mutex<HashMap<NodeId, RpcClient>>,
    queues: Mutex<HashMap<aic_protocol::AssetId, mpsc::Sender<Pending>>>,
    max_rows: usize,
    max_delay: Duration,
    attempts: u32,
    metrics: GatewayMetrics,
    shutdown: CancellationToken,
}

impl Dispatcher {
    pub fn new(
        outbound: quinn::Endpoint,
        max_rows: u32,
        max_delay: Duration,
        attempts: u32,
        metrics: GatewayMetrics,
        shutdown: CancellationToken,
    ) -> Self {
        Dispatcher {
            outbound,
            nodes: Mutex::new(Vec::new()),
            load: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
            clients: tokio::sync::Mutex::new(HashMap::new()),
            queues: Mutex::new(HashMap::new()),
            max_rows: max_rows as usize,
            max_delay,
            attempts,
            metrics,
            shutdown,
        }
    }

    /// Keeps the node list fresh until shutdown.
    pub async fn follow_nodes(self: Arc<Self>, ledger: Arc<Ledger>, every: Duration) {
        loop {
            match ledger.nodes().await {
                Ok(listed) => {
                    let nodes: Vec<ComputeNode> = listed
                        .into_iter()
                        .filter(|n| n.role == Role::Compute && n.state == NodeState::Up)
                        .filter_map(|n| {
                            Some(ComputeNode {
                                payout: n.payout_address.parse().ok()?,
                                id: n.node_id,
                                addr: n.quic_addr,
                                mflops: n.capacity.measured_mflops,
                            })
                        })
                        .collect();
                    self.metrics.compute_nodes.set(nodes.len() as i64);
                    *self.nodes.lock().expect("nodes") = nodes;
                }
                Err(e) => tracing::warn!(error = %e, "listing compute nodes"),
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    /// Whether any compute node is known.
    pub fn has_nodes(&self) -> bool {
        !self.nodes.lock().expect("nodes").is_empty()
    }

    /// Serves `features` (encoded rows) with `model`, batched with other calls for it.
    pub async fn serve(
        self: &Arc<Self>,
        model: &ServedModel,
        features: Matrix,
    ) -> Result<Served, DispatchError> {
        let (reply, answer) = oneshot::channel();
        let queue = self.queue(model);
        queue.try_send(Pending { features, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => DispatchError::QueueFull,
            mpsc::error::TrySendError::Closed(_) => DispatchError::Stopping,
        })?;
        self.metrics.queue_depth.inc();
        answer.await.map_err(|_| DispatchError::Stopping)?
    }

    fn queue(self: &Arc<Self>, model: &ServedModel) -> mpsc::Sender<Pending> {
        let mut queues = self.queues.lock().expect("queues");
        if let Some(queue) = queues.get(&model.asset).filter(|q| !q.is_closed()) {
            return queue.clone();
        }
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        queues.insert(model.asset, tx.clone());
        tokio::spawn(self.clone().batch_loop(model.clone(), rx));
        tx
    }

    /// Gathers calls for one model into batches and runs each on a node.
    async fn batch_loop(self: Arc<Self>, model: ServedModel, mut queue: mpsc::Receiver<Pending>) {
        let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
        loop {
            let first = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                next = queue.recv() => match next {
                    Some(first) => first,
                    None => return,
                },
            };
            let width = first.features.cols.max(1);
            // Within the row bound, and within a frame for inputs and outputs alike.
            let max_rows = self.max_rows.min((MAX_BATCH_VALUES / width).max(1));
            let mut rows = first.features.rows;
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + self.max_delay;
            while rows < max_rows {
                tokio::select! {
                    next = queue.recv() => match next {
                        Some(next) if rows + next.features.rows <= max_rows => {
                            rows += next.features.rows;
                            batch.push(next);
                        }
                        Some(next) => {
                            // Too big to join: it starts the next batch, which runs now too.
                            self.clone().launch(&model, vec![next], &in_flight).await;
                            break;
                        }
                        None => break,
                    },
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
            self.clone().launch(&model, batch, &in_flight).await;
        }
    }

    async fn launch(self: Arc<Self>, model: &ServedModel, batch: Vec<Pending>, in_flight: &Arc<Semaphore>) {
        self.metrics.queue_depth.sub(batch.len() as i64);
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let model = model.clone();
        tokio::spawn(async move {
            self.run_batch(&model, batch).await;
            drop(permit);
        });
    }

    /// Runs one batch, on another node after each failure, and answers every call in it.
    async fn run_batch(&self, model: &ServedModel, batch: Vec<Pending>) {
        let width = batch[0].features.cols;
        let rows: usize = batch.iter().map(|p| p.features.rows).sum();
        self.metrics.batch_rows.observe(rows as f64);
        let mut features = Vec::with_capacity(rows * width);
        for pending in &batch {
            features.extend_from_slice(&pending.features.data);
        }
        let request = PeerRequest::Infer(Box::new(InferRequest {
            model: model.clone(),
            rows: rows as u32,
            width: width as u32,
            features,
        }));
        let mut tried = Vec::new();
        let mut failures = Vec::new();
        let outcome = loop {
            if tried.len() >= self.attempts as usize {
                break Err(DispatchError::Failed(failures.join("; ")));
            }
            let Some(node) = self.pick(&tried) else {
                break Err(if failures.is_empty() {
                    DispatchError::NoNode
                } else {
                    DispatchError::Failed(failures.join("; "))
                });
            };
            tried.push(node.id);
            *self.load.lock().expect("load").entry(node.id).or_default() += 1;
            let answer = self.call(&node, &request).await;
            if let Some(load) = self.load.lock().expect("load").get_mut(&node.id) {
                *load = load.saturating_sub(1);
            }
            match answer {
                Ok(outputs) if outputs.rows == rows => break Ok((outputs, node)),
                Ok(outputs) => {
                    failures.push(format!("{}: {} output rows for {rows}", node.addr, outputs.rows))
                }
                Err(e) => failures.push(format!("{}: {e}", node.addr)),
            }
            self.metrics.retries.inc();
            self.failed
                .lock()
                .expect("failed")
                .insert(node.id, Instant::now());
        };
        match outcome {
            Ok((outputs, node)) => {
                let mut offset = 0;
                for pending in batch {
                    let n = pending.features.rows;
                    let data = outputs.data[offset * outputs.cols..(offset + n) * outputs.cols].to_vec();
                    offset += n;
                    let _ = pending.reply.send(Ok(Served {
                        outputs: Matrix {
                            rows: n,
                            cols: outputs.cols,
                            data,
                        },
                        node: node.clone(),
                    }));
                }
            }
            Err(e) => {
                for pending in batch {
                    let _ = pending.reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// The least loaded live node not tried yet (then the fastest, then by id).
    fn pick(&self, tried: &[NodeId]) -> Option<ComputeNode> {
        let nodes = self.nodes.lock().expect("nodes");
        let load = self.load.lock().expect("load");
        let mut failed = self.failed.lock().expect("failed");
        failed.retain(|_, at| at.elapsed() < FAILED_NODE_COOLDOWN);
        let usable = |n: &&ComputeNode| !tried.contains(&n.id);
        let fresh: Vec<&ComputeNode> = nodes
            .iter()
            .filter(usable)
            .filter(|n| !failed.contains_key(&n.id))
            .collect();
        // Nodes that failed lately are a last resort, not never.
        let candidates = if fresh.is_empty() {
            nodes.iter().filter(usable).collect()
        } else {
            fresh
        };
        candidates
            .into_iter()
            .min_by_key(|n| {
                (
                    load.get(&n.id).copied().unwrap_or(0),
                    std::cmp::Reverse(n.mflops),
                    n.id,
                )
            })
            .cloned()
    }

    async fn call(&self, node: &ComputeNode, request: &PeerRequest) -> Result<Matrix, String> {
        let client = self.client(node).await?;
        match client.call(request).await {
            Ok(PeerResponse::Inferred { rows, width, outputs }) => {
                Matrix::new(rows as usize, width as usize, outputs).map_err(|e| e.to_string())
            }
            Ok(other) => Err(format!("unexpected answer {other:?}")),
            Err(e) => {
                self.clients.lock().await.remove(&node.id);
                Err(e.to_string())
            }
        }
    }

    async fn client(&self, node: &ComputeNode) -> Result<RpcClient, String> {
        let mut clients = self.clients.lock().await;
        if let Some(client) = clients.get(&node.id).filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        let client = RpcClient::connect(&self.outbound, &node.addr, Role::Compute)
            .await
            .map_err(|e| e.to_string())?
            .with_timeout(BATCH_TIMEOUT);
        clients.insert(node.id, client.clone());
        Ok(client)
    }
}
