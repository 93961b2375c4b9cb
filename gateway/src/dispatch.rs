//! Where a call's rows run: calls for one model wait a bounded delay for company and go to a
//! compute node together (up to a bounded batch, and within a frame; at most one batch of the
//! model per usable node at a time, so calls gather while the nodes are busy); the node is the
//! cheapest
//! by the gateway's placement ([`super::placement`]: its path to the node, the batches already
//! there, the node's measured speed and its reputation), and a batch a node fails is retried on
//! the next, so a node that dies mid-stream loses no call. Rows are counted only once a node has
//! answered. A sampled share of batches is run again on a second node (a third when they
//! disagree), off the callers' path: a node two others outvote is reported to the scheduler's
//! rater and passed over from then on.
//!
//! ```text
//!  call ──► queue[model] ──(max_rows or max_delay)──► batch ──► cheapest node ──► outputs
//!                                                        └── node fails: next node (attempts)
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aic_kernels::Matrix;
use aic_ledger::Address;
use aic_protocol::messages::{InferRequest, NodeState, PeerRequest, PeerResponse, ServedModel};
use aic_protocol::rpc::RpcClient;
use aic_protocol::{NodeId, Role};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use super::ledger::Ledger;
use super::metrics::GatewayMetrics;
use super::placement::{self, BatchDemand, Candidate};
use aic_protocol::path_model::NetworkModel;

/// Encoded values one batch may carry, inputs or outputs: well within a 4 MiB frame.
const MAX_BATCH_VALUES: usize = 768 * 1024;
/// How long a node that failed a batch is passed over.
const FAILED_NODE_COOLDOWN: Duration = Duration::from_secs(10);
/// How long one batch may take on a node.
const BATCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Calls waiting per model before new ones are refused.
const QUEUE_CAPACITY: usize = 4096;
/// How long a node two others outvoted is passed over.
const DISTRUST_FOR: Duration = Duration::from_secs(600);
/// A batch unanswered for this many times the model's usual batch time goes to a second node.
const HEDGE_FACTOR: u32 = 4;
/// The shortest hedge delay: below it, a second node would mostly duplicate work.
const HEDGE_MIN: Duration = Duration::from_millis(50);
/// The hedge delay before a model's first batch is answered (the node fetches its weights).
const HEDGE_UNKNOWN: Duration = Duration::from_secs(5);
/// Nodes whose cost is within this factor of the cheapest, plus [`NEAR_EQUAL_SECS`], count as
/// equal and share the batches at random.
const COST_SPREAD: f64 = 1.25;
/// Cost differences under this are noise next to an HTTPS call.
const NEAR_EQUAL_SECS: f64 = 0.001;

/// A compute node the gateway may use.
#[derive(Clone, Debug)]
pub struct ComputeNode {
    pub id: NodeId,
    pub addr: String,
    /// The operator account paid for the rows it serves.
    pub payout: Address,
    pub mflops: u64,
    /// The scheduler's rater's word on it, in (0, 1].
    pub reputation: f64,
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

/// A batch's share of rows, served.
#[derive(Clone, Debug)]
struct Part {
    outputs: Matrix,
    node: ComputeNode,
}

/// A call's rows, served (by one node, or several for a call split across frames).
#[derive(Clone, Debug)]
pub struct Served {
    pub outputs: Matrix,
    /// Each serving node's operator account and how many of the rows it served.
    pub served_by: Vec<(Address, u64)>,
}

struct Pending {
    features: Matrix,
    /// Values a row of the model's outputs.
    output_width: usize,
    reply: oneshot::Sender<Result<Part, DispatchError>>,
}

/// The compute nodes, their load, and one batching queue per model.
pub struct Dispatcher {
    outbound: quinn::Endpoint,
    nodes: Mutex<Vec<ComputeNode>>,
    load: Mutex<HashMap<NodeId, u32>>,
    /// Each model's moving average of an answered batch's time (the hedge delay's base).
    latency: Mutex<HashMap<aic_protocol::AssetId, Duration>>,
    /// The gateway's latest round-trip estimate to each node it has dialled, in milliseconds.
    rtt_ms: Mutex<HashMap<NodeId, f64>>,
    failed: Mutex<HashMap<NodeId, Instant>>,
    distrusted: Mutex<HashMap<NodeId, Instant>>,
    /// Percent of batches verified on other nodes.
    verify_percent: u8,
    ledger: Arc<Ledger>,
    clients: tokio::sync::Mutex<HashMap<NodeId, RpcClient>>,
    queues: Mutex<HashMap<aic_protocol::AssetId, mpsc::Sender<Pending>>>,
    max_rows: usize,
    max_delay: Duration,
    network: NetworkModel,
    attempts: u32,
    /// Batches of one model out at once (0: one per usable node).
    max_in_flight: u32,
    metrics: GatewayMetrics,
    shutdown: CancellationToken,
}

impl Dispatcher {
    pub fn new(
        outbound: quinn::Endpoint,
        batching: &super::config::BatchingSettings,
        verify_percent: u8,
        ledger: Arc<Ledger>,
        metrics: GatewayMetrics,
        shutdown: CancellationToken,
    ) -> Self {
        Dispatcher {
            outbound,
            nodes: Mutex::new(Vec::new()),
            load: Mutex::new(HashMap::new()),
            latency: Mutex::new(HashMap::new()),
            rtt_ms: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
            distrusted: Mutex::new(HashMap::new()),
            verify_percent,
            ledger,
            clients: tokio::sync::Mutex::new(HashMap::new()),
            queues: Mutex::new(HashMap::new()),
            max_rows: batching.max_rows as usize,
            max_delay: Duration::from_micros(batching.max_delay_us),
            network: NetworkModel::default(),
            attempts: batching.attempts,
            max_in_flight: batching.max_in_flight,
            metrics,
            shutdown,
        }
    }

    /// Keeps the node list fresh until shutdown.
    pub async fn follow_nodes(self: Arc<Self>, ledger: Arc<Ledger>, every: Duration) {
        loop {
            // A scheduler that does not answer must not hold up a shutdown.
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = self.refresh_nodes(&ledger) => {}
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    /// Reads the compute node list and the rater's reputations once.
    async fn refresh_nodes(&self, ledger: &Ledger) {
        match ledger.nodes().await {
            Ok(listed) => {
                // Without the rater's word (an older or busy scheduler) every node counts as
                // trusted; the gateway's own verification still passes over a liar.
                let reputations = ledger.reputations().await.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "reading the nodes' reputations");
                    HashMap::new()
                });
                let nodes: Vec<ComputeNode> = listed
                    .into_iter()
                    .filter(|n| n.role == Role::Compute && n.state == NodeState::Up)
                    .filter_map(|n| {
                        Some(ComputeNode {
                            payout: n.payout_address.parse().ok()?,
                            id: n.node_id,
                            addr: n.quic_addr,
                            mflops: n.capacity.measured_mflops,
                            reputation: reputations.get(&n.node_id).copied().unwrap_or(1.0),
                        })
                    })
                    .collect();
                self.metrics.compute_nodes.set(nodes.len() as i64);
                *self.nodes.lock().expect("nodes") = nodes;
            }
            Err(e) => tracing::warn!(error = %e, "listing compute nodes"),
        }
    }

    /// Whether any compute node is known.
    pub fn has_nodes(&self) -> bool {
        !self.nodes.lock().expect("nodes").is_empty()
    }

    /// Serves `features` (encoded rows) with `model`, whose outputs are `output_width` values a
    /// row, batched with other calls for it. A call too big for one frame is streamed as several
    /// parts, each batched on its own, and answered whole.
    pub async fn serve(
        self: &Arc<Self>,
        model: &ServedModel,
        features: Matrix,
        output_width: usize,
    ) -> Result<Served, DispatchError> {
        let width = features.cols.max(output_width).max(1);
        let part_rows = (MAX_BATCH_VALUES / width).max(1);
        let queue = self.queue(model);
        let mut answers = Vec::new();
        for start in (0..features.rows).step_by(part_rows) {
            let rows = part_rows.min(features.rows - start);
            let cols = features.cols;
            let part = Matrix {
                rows,
                cols,
                data: features.data[start * cols..(start + rows) * cols].to_vec(),
            };
            let (reply, answer) = oneshot::channel();
            queue
                .try_send(Pending {
                    features: part,
                    output_width,
                    reply,
                })
                .map_err(|e| match e {
                    mpsc::error::TrySendError::Full(_) => DispatchError::QueueFull,
                    mpsc::error::TrySendError::Closed(_) => DispatchError::Stopping,
                })?;
            self.metrics.queue_depth.inc();
            answers.push(answer);
        }
        let mut outputs = Matrix {
            rows: features.rows,
            cols: output_width,
            data: Vec::with_capacity(features.rows * output_width),
        };
        let mut served_by: Vec<(Address, u64)> = Vec::new();
        for answer in answers {
            let part = answer.await.map_err(|_| DispatchError::Stopping)??;
            outputs.cols = part.outputs.cols;
            outputs.data.extend_from_slice(&part.outputs.data);
            match served_by
                .iter_mut()
                .find(|(payout, _)| *payout == part.node.payout)
            {
                Some((_, rows)) => *rows += part.outputs.rows as u64,
                None => served_by.push((part.node.payout, part.outputs.rows as u64)),
            }
        }
        Ok(Served { outputs, served_by })
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

    /// Gathers calls for one model into batches and runs each on a node. At most one batch of
    /// the model per usable node is out at a time: a node's device runs batches one after
    /// another, so while every node is busy the calls gather here into bigger batches (a wide
    /// model's weights are read once for the whole batch) instead of queueing on the nodes.
    async fn batch_loop(self: Arc<Self>, model: ServedModel, mut queue: mpsc::Receiver<Pending>) {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let finished = Arc::new(Notify::new());
        // A call too big to join the last batch starts the next one.
        let mut carried: Option<Pending> = None;
        loop {
            let first = match carried.take() {
                Some(first) => first,
                None => tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    next = queue.recv() => match next {
                        Some(first) => first,
                        None => return,
                    },
                },
            };
            while in_flight.load(Ordering::SeqCst) >= self.node_slots() {
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    _ = finished.notified() => {}
                }
            }
            let width = first.features.cols.max(1);
            // Within the row bound, and within a frame for inputs and outputs alike.
            let max_rows = self.max_rows.min((MAX_BATCH_VALUES / width).max(1));
            let mut rows = first.features.rows;
            let mut batch = vec![first];
            // Waiting for company pays only under load: with no batch of this model on a node,
            // the call goes at once, with whatever already queued behind it.
            let idle = in_flight.load(Ordering::SeqCst) == 0;
            let deadline = tokio::time::Instant::now() + self.max_delay;
            while rows < max_rows {
                let next = if idle {
                    match queue.try_recv() {
                        Ok(next) => Some(next),
                        Err(_) => break,
                    }
                } else {
                    tokio::select! {
                        next = queue.recv() => next,
                        _ = tokio::time::sleep_until(deadline) => break,
                    }
                };
                match next {
                    Some(next) if rows + next.features.rows <= max_rows => {
                        rows += next.features.rows;
                        batch.push(next);
                    }
                    Some(next) => {
                        carried = Some(next);
                        break;
                    }
                    None => break,
                }
            }
            self.metrics.queue_depth.sub(batch.len() as i64);
            in_flight.fetch_add(1, Ordering::SeqCst);
            let (dispatcher, model, in_flight, finished) =
                (self.clone(), model.clone(), in_flight.clone(), finished.clone());
            tokio::spawn(async move {
                dispatcher.run_batch(&model, batch).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                // One waiter (this loop); a permit is kept if it is not waiting yet.
                finished.notify_one();
            });
        }
    }

    /// How many batches of one model may be out at once: one per node not outvoted lately, or
    /// fewer where the configuration says the nodes share their hardware.
    fn node_slots(&self) -> usize {
        let distrusted = self.distrusted.lock().expect("distrusted");
        let usable = self
            .nodes
            .lock()
            .expect("nodes")
            .iter()
            .filter(|n| {
                distrusted
                    .get(&n.id)
                    .is_none_or(|at| at.elapsed() >= DISTRUST_FOR)
            })
            .count();
        match self.max_in_flight {
            0 => usable.max(1),
            limit => usable.min(limit as usize).max(1),
        }
    }

    /// Runs one batch, on another node after each failure, and answers every call in it.
    async fn run_batch(self: &Arc<Self>, model: &ServedModel, batch: Vec<Pending>) {
        let width = batch[0].features.cols;
        let rows: usize = batch.iter().map(|p| p.features.rows).sum();
        self.metrics.batch_rows.observe(rows as f64);
        let mut features = Vec::with_capacity(rows * width);
        for pending in &batch {
            features.extend_from_slice(&pending.features.data);
        }
        let demand = BatchDemand {
            bytes: (rows * (width + batch[0].output_width)) as u64 * 4,
            flops: rows as f64 * 2.0 * model.tensor.elements as f64,
        };
        let request = PeerRequest::Infer(Box::new(InferRequest {
            model: model.clone(),
            rows: rows as u32,
            width: width as u32,
            features,
        }));
        let outcome = self.run_on_nodes(model.asset, &request, rows, demand).await;
        match outcome {
            Ok((outputs, node)) => {
                if self.verify_percent > 0 && rand::random_range(0..100u8) < self.verify_percent {
                    tokio::spawn(self.clone().verify(
                        model.asset,
                        request,
                        demand,
                        outputs.clone(),
                        node.clone(),
                    ));
                }
                let mut offset = 0;
                for pending in batch {
                    let n = pending.features.rows;
                    let data = outputs.data[offset * outputs.cols..(offset + n) * outputs.cols].to_vec();
                    offset += n;
                    let _ = pending.reply.send(Ok(Part {
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

    /// Runs a served batch again on a second node, and on a third when the two disagree; reports
    /// what it found to the scheduler's rater and passes over a node the other two outvoted.
    async fn verify(
        self: Arc<Self>,
        model: aic_protocol::AssetId,
        request: PeerRequest,
        demand: BatchDemand,
        first: Matrix,
        node: ComputeNode,
    ) {
        let verdict = async {
            let second_node = self.pick(&[node.id], demand)?;
            let second = self.call(&second_node.node, &request).await.ok()?;
            if outputs_agree(&first, &second) {
                return Some(vec![(node.id, true), (second_node.node.id, true)]);
            }
            let third_node = self.pick(&[node.id, second_node.node.id], demand)?;
            let third = self.call(&third_node.node, &request).await.ok()?;
            match judge(&first, &second, &third) {
                Judgement::FirstWrong => Some(vec![
                    (node.id, false),
                    (second_node.node.id, true),
                    (third_node.node.id, true),
                ]),
                Judgement::SecondWrong => Some(vec![
                    (second_node.node.id, false),
                    (node.id, true),
                    (third_node.node.id, true),
                ]),
                Judgement::NoMajority => None,
            }
        }
        .await;
        let Some(verdicts) = verdict else {
            self.metrics
                .verifications
                .with_label_values(&["inconclusive"])
                .inc();
            return;
        };
        // The rater hears first, so whoever sees the verdict counted may read it there.
        let outvoted = verdicts.iter().any(|(_, matched)| !matched);
        for (id, matched) in verdicts {
            if !matched {
                tracing::warn!(node = %id, %model, "a compute node's inference outputs were outvoted");
                self.distrusted
                    .lock()
                    .expect("distrusted")
                    .insert(id, Instant::now());
            }
            if let Err(e) = self.ledger.report_verdict(id, model, matched).await {
                tracing::warn!(error = %e, node = %id, "reporting a verification verdict");
            }
        }
        self.metrics
            .verifications
            .with_label_values(&[if outvoted { "outvoted" } else { "agreed" }])
            .inc();
    }

    /// Runs `request` on the cheapest node, and on the next one when a node fails or has not
    /// answered by the hedge delay (the first good answer wins, the others are dropped), up to
    /// the configured attempts. Answers the outputs and the node that computed them.
    async fn run_on_nodes(
        self: &Arc<Self>,
        model: aic_protocol::AssetId,
        request: &PeerRequest,
        rows: usize,
        demand: BatchDemand,
    ) -> Result<(Matrix, ComputeNode), DispatchError> {
        let hedge_after = self.hedge_delay(model);
        let mut tried = Vec::new();
        let mut failures = Vec::new();
        let mut running = futures::stream::FuturesUnordered::new();
        // No node left to try: no more hedges either.
        let mut exhausted = false;
        let mut hedging = false;
        // Each turn starts with a node to try: the first, the next after a failure, or a hedge.
        loop {
            if !exhausted && tried.len() < self.attempts as usize {
                match self.pick(&tried, demand) {
                    Some(lease) => {
                        if hedging {
                            self.metrics.hedges.inc();
                        }
                        tried.push(lease.node.id);
                        running.push(async move {
                            let started = Instant::now();
                            let answer = self.call(&lease.node, request).await;
                            (lease, answer, started.elapsed())
                        });
                    }
                    None => exhausted = true,
                }
            }
            hedging = false;
            if running.is_empty() {
                return Err(if failures.is_empty() {
                    DispatchError::NoNode
                } else {
                    DispatchError::Failed(failures.join("; "))
                });
            }
            let may_hedge = !exhausted && running.len() == 1 && tried.len() < self.attempts as usize;
            tokio::select! {
                Some((lease, answer, took)) = futures::StreamExt::next(&mut running) => {
                    let node = lease.node.clone();
                    drop(lease);
                    match answer {
                        Ok(outputs) if outputs.rows == rows => {
                            self.observe_latency(model, took);
                            // Whoever is still computing it lost the race: passed over a while.
                            for id in tried.iter().filter(|id| **id != node.id) {
                                self.failed.lock().expect("failed").entry(*id).or_insert_with(Instant::now);
                            }
                            return Ok((outputs, node));
                        }
                        Ok(outputs) => failures.push(format!(
                            "{}: {} output rows for {rows}",
                            node.addr, outputs.rows
                        )),
                        Err(e) => failures.push(format!("{}: {e}", node.addr)),
                    }
                    self.metrics.retries.inc();
                    self.failed.lock().expect("failed").insert(node.id, Instant::now());
                }
                _ = tokio::time::sleep(hedge_after), if may_hedge => hedging = true,
            }
        }
    }

    /// How long a batch of `model` may go unanswered before it is sent to a second node too:
    /// a few times the model's usual batch, so only a node that stalls or died is hedged.
    fn hedge_delay(&self, model: aic_protocol::AssetId) -> Duration {
        match self.latency.lock().expect("latency").get(&model) {
            Some(usual) => (*usual * HEDGE_FACTOR).clamp(HEDGE_MIN, BATCH_TIMEOUT),
            // The first batch of a model fetches its weights on the node.
            None => HEDGE_UNKNOWN,
        }
    }

    /// Folds one answered batch's time into the model's moving average.
    fn observe_latency(&self, model: aic_protocol::AssetId, took: Duration) {
        let mut latency = self.latency.lock().expect("latency");
        let average = latency.entry(model).or_insert(took);
        *average = (*average * 7 + took) / 8;
    }

    /// A node not tried yet for a batch of `demand`, drawn among those whose cost is within
    /// [`COST_SPREAD`] of the cheapest (so near-equal nodes share the load); never one two others
    /// outvoted lately, and one that failed lately only when no other is left. The batch counts
    /// in the node's load while the lease is held.
    fn pick(self: &Arc<Self>, tried: &[NodeId], demand: BatchDemand) -> Option<Lease> {
        let nodes = self.nodes.lock().expect("nodes");
        let mut load = self.load.lock().expect("load");
        let rtt_ms = self.rtt_ms.lock().expect("rtt");
        let mut failed = self.failed.lock().expect("failed");
        failed.retain(|_, at| at.elapsed() < FAILED_NODE_COOLDOWN);
        let mut distrusted = self.distrusted.lock().expect("distrusted");
        distrusted.retain(|_, at| at.elapsed() < DISTRUST_FOR);
        let usable = |n: &&ComputeNode| !tried.contains(&n.id) && !distrusted.contains_key(&n.id);
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
        let candidates: Vec<Candidate> = candidates
            .iter()
            .map(|n| Candidate {
                node: n.id,
                rtt_ms: rtt_ms.get(&n.id).copied(),
                in_flight: load.get(&n.id).copied().unwrap_or(0),
                flops_per_sec: n.mflops as f64 * 1e6,
                reputation: n.reputation,
            })
            .collect();
        let ranked = placement::rank(demand, &candidates, &self.network);
        let cheapest = ranked.first()?.cost_secs;
        let near: Vec<&placement::Ranked> = ranked
            .iter()
            .take_while(|r| r.cost_secs <= cheapest * COST_SPREAD + NEAR_EQUAL_SECS)
            .collect();
        let chosen = near[rand::random_range(0..near.len())].node;
        let node = nodes.iter().find(|n| n.id == chosen)?.clone();
        *load.entry(node.id).or_default() += 1;
        Some(Lease {
            node,
            dispatcher: self.clone(),
        })
    }

    async fn call(&self, node: &ComputeNode, request: &PeerRequest) -> Result<Matrix, String> {
        let client = self.client(node).await?;
        let answer = client.call(request).await;
        self.rtt_ms
            .lock()
            .expect("rtt")
            .insert(node.id, client.connection().rtt().as_secs_f64() * 1e3);
        match answer {
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

/// A batch's place in a node's load, given back when dropped (answered, failed or abandoned).
struct Lease {
    node: ComputeNode,
    dispatcher: Arc<Dispatcher>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(load) = self.dispatcher.load.lock().expect("load").get_mut(&self.node.id) {
            *load = load.saturating_sub(1);
        }
    }
}

/// Two nodes' outputs for one batch agree within the rule the rater applies to training.
fn outputs_agree(a: &Matrix, b: &Matrix) -> bool {
    (a.rows, a.cols) == (b.rows, b.cols) && aic_kernels::compare::agree(&a.data, &b.data).is_ok()
}

/// Who is wrong when a first and second node disagree, by a third node's outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Judgement {
    FirstWrong,
    SecondWrong,
    NoMajority,
}

fn judge(first: &Matrix, second: &Matrix, third: &Matrix) -> Judgement {
    match (outputs_agree(first, third), outputs_agree(second, third)) {
        (false, true) => Judgement::FirstWrong,
        (true, false) => Judgement::SecondWrong,
        _ => Judgement::NoMajority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outputs(values: &[f32]) -> Matrix {
        Matrix::new(1, values.len(), values.to_vec()).unwrap()
    }

    #[test]
    fn the_node_two_others_outvote_is_the_wrong_one() {
        let right = outputs(&[1.0, 2.0, 3.0]);
        // Another device's rounding: agreed within the rater's tolerance.
        let close = outputs(&[1.0, 2.0000001, 3.0]);
        let wrong = outputs(&[-2.99, -5.99, -8.99]);
        assert!(outputs_agree(&right, &close));
        assert!(!outputs_agree(&right, &wrong));
        assert!(
            !outputs_agree(&right, &outputs(&[1.0, 2.0])),
            "another shape never agrees"
        );
        assert_eq!(judge(&wrong, &right, &close), Judgement::FirstWrong);
        assert_eq!(judge(&right, &wrong, &close), Judgement::SecondWrong);
        // Three different answers name nobody.
        assert_eq!(
            judge(&right, &wrong, &outputs(&[9.0, 9.0, 9.0])),
            Judgement::NoMajority
        );
    }
}
