//! An AIC compute node.
//!
//! It probes its device at start (a Vulkan GPU, else the CPU: name, memory, a short matrix-
//! multiply benchmark) and registers it; then runs the tasks the scheduler sends: fetches the
//! round's weights by name and the shards a task names from the storage nodes the allocator
//! chose (keeping bounded caches of both), runs the local steps on the device thread, keeps the
//! weight update for the runner to collect, and returns the result with a digest and timings.
//! For inference gateways it runs published models' forward passes on batches of encoded rows.

pub mod config;
pub mod executor;
mod inference;
pub mod inner_optimizer;
pub mod metrics;
pub mod minibatch;
pub mod shard_cache;
pub mod tensor_cache;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aic_protocol::certs::PeerIdentity;
use aic_protocol::messages::{
    Capacity, PeerRequest, PeerResponse, TaskKind, TaskResult, TaskSpec, MAX_LOCAL_STEPS, MAX_TASK_SHARDS,
    MAX_WEIGHT_SOURCES,
};
use aic_protocol::node_agent::{answer_peer, local_capacity, start_node, NodeExtras};
use aic_protocol::rpc::{Reply, RpcClient, RpcHandler};
use aic_protocol::service::{BoundSockets, ServiceHandle};
use aic_protocol::shard_fetch::SHARDS_IN_FLIGHT;
use aic_protocol::tensor::TensorRef;
use aic_protocol::transport;
use aic_protocol::{ErrorCode, Role, RpcError};
use arrow_array::RecordBatch;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::{Mutex, Semaphore};
use tokio_util::sync::CancellationToken;

use config::BackendSetting;
pub use config::ComputeConfig;
use executor::Executor;
use shard_cache::ShardCache;
use tensor_cache::TensorCache;

/// How long dialing a storage node may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one shard fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(120);

struct ComputeNode {
    executor: Executor,
    backend: String,
    cache: Mutex<ShardCache>,
    tensors: std::sync::Mutex<TensorCache>,
    /// Published models built for inference.
    served: std::sync::Mutex<inference::ServedModels>,
    slots: Semaphore,
    outbound: quinn::Endpoint,
    storage: Mutex<HashMap<String, RpcClient>>,
    metrics: metrics::ComputeMetrics,
    corrupt_percent: u8,
    /// Fault injection: the percentage of inference batches answered wrong.
    corrupt_inference_percent: u8,
    /// Drill: the inference batch size at which the process exits (0: never), and the file
    /// whose creation claims the exit among several nodes (empty: none).
    exit_on_inference_rows: u32,
    exit_claim_file: std::path::PathBuf,
    /// The certificate key, which signs lottery blocks.
    key: aic_ledger::Keypair,
    me: aic_protocol::NodeId,
}

struct ComputeApi(Arc<ComputeNode>);

impl RpcHandler for ComputeApi {
    async fn peer_reply(
        &self,
        peer: &PeerIdentity,
        request: PeerRequest,
    ) -> Result<Reply<PeerResponse>, RpcError> {
        match request {
            // The runner collects a task's update (or any tensor this node holds).
            PeerRequest::GetTensor { tensor, .. } => {
                if peer.role != Role::Scheduler {
                    return Err(RpcError::new(
                        ErrorCode::PermissionDenied,
                        "a compute node hands its tensors to the scheduler only",
                    ));
                }
                let held = self.0.tensors.lock().expect("tensor cache").get(&tensor);
                let Some(values) = held else {
                    self.0
                        .metrics
                        .tensor_refusals
                        .with_label_values(&["unknown_tensor"])
                        .inc();
                    return Err(RpcError::new(
                        ErrorCode::NotFound,
                        format!("tensor {tensor} is not held here (collected late, or evicted)"),
                    ));
                };
                let frames = aic_protocol::tensor::chunk_frames(values).map(Ok);
                Ok(Reply::Stream(Box::pin(futures::stream::iter(frames))))
            }
            other => self.peer(peer, other).await.map(Reply::One),
        }
    }

    async fn peer(&self, _peer: &PeerIdentity, request: PeerRequest) -> Result<PeerResponse, RpcError> {
        match request {
            PeerRequest::RunTask(spec) => {
                let kind = kind_label(spec.kind);
                let started = Instant::now();
                // The task's span carries the job, round and task ids the runner's spans carry.
                let span =
                    tracing::info_span!("task", job = %spec.job, round = spec.round, task = %spec.task);
                let result = tracing::Instrument::instrument(self.0.run_task(*spec), span).await;
                self.0
                    .metrics
                    .tasks
                    .with_label_values(&[kind, if result.is_ok() { "ok" } else { "error" }])
                    .inc();
                self.0
                    .metrics
                    .task_duration
                    .with_label_values(&[kind])
                    .observe(started.elapsed().as_secs_f64());
                result.map(|r| PeerResponse::TaskDone(Box::new(r)))
            }
            PeerRequest::SignTicket { session } => {
                let signature = self
                    .0
                    .key
                    .sign(&aic_ledger::lottery::ticket_message(&session, &self.0.me));
                self.0.metrics.blocks_signed.with_label_values(&["ticket"]).inc();
                Ok(PeerResponse::TicketSigned {
                    signature: signature.to_vec(),
                })
            }
            PeerRequest::SignBlock { header } => self.0.cosign_block(&header),
            PeerRequest::Infer(request) => self.0.infer(*request).await,
            other => answer_peer(other),
        }
    }
}

fn kind_label(kind: TaskKind) -> &'static str {
    match kind {
        TaskKind::Gradient => "gradient",
        TaskKind::Evaluate => "evaluate",
    }
}

impl ComputeNode {
    /// Checks a lottery block before co-signing it: a session, the winner's signed ticket
    /// drawing under the target, and another node as the winner.
    fn cosign_block(&self, bytes: &[u8]) -> Result<PeerResponse, RpcError> {
        let invalid = |m: String| RpcError::new(ErrorCode::InvalidArgument, m);
        if bytes.len() > 64 * 1024 {
            return Err(invalid("a block header is far smaller than that".into()));
        }
        let mut header: aic_ledger::block::BlockHeader =
            postcard::from_bytes(bytes).map_err(|e| invalid(format!("not a block header: {e}")))?;
        if header.proposer == self.me {
            return Err(invalid("a node does not co-sign its own block".into()));
        }
        // The block must verify once this node's signature is added.
        let signature = self.key.sign(&header.signing_bytes());
        header.signatures.push(aic_ledger::block::BlockSignature {
            signer: self.key.address(),
            signature,
        });
        header
            .check_signatures()
            .map_err(|e| invalid(format!("not a valid lottery block: {e}")))?;
        self.metrics.blocks_signed.with_label_values(&["cosigner"]).inc();
        Ok(PeerResponse::BlockSigned {
            signature: signature.to_vec(),
        })
    }

    async fn run_task(&self, spec: TaskSpec) -> Result<TaskResult, RpcError> {
        let invalid = |m: String| RpcError::new(ErrorCode::InvalidArgument, m);
        if spec.shards.is_empty() || spec.shards.len() > MAX_TASK_SHARDS {
            return Err(invalid(format!("a task names 1 to {MAX_TASK_SHARDS} shards")));
        }
        // A described model is validated here again: a scheduler's word is not taken for it.
        let model =
            aic_kernels::Trainable::of(&spec.model).map_err(|e| invalid(format!("the task's model: {e}")))?;
        let parameters = model.parameters() as u64;
        if spec.weights.tensor.elements != parameters {
            return Err(invalid(format!(
                "the model has {parameters} parameters, the task's weights {}",
                spec.weights.tensor.elements
            )));
        }
        if spec.weights.storage.is_empty() || spec.weights.storage.len() > MAX_WEIGHT_SOURCES {
            return Err(invalid(format!(
                "a task names 1 to {MAX_WEIGHT_SOURCES} storage nodes holding its weights"
            )));
        }
        let training = spec.training;
        if training.steps == 0
            || training.steps > MAX_LOCAL_STEPS
            || !training.learning_rate.is_finite()
            || training.learning_rate <= 0.0
        {
            return Err(invalid(format!(
                "a task takes 1 to {MAX_LOCAL_STEPS} local steps at a positive learning rate"
            )));
        }
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| RpcError::new(ErrorCode::Unavailable, "shutting down"))?;
        let fetch_started = Instant::now();
        let (weights, weights_fetched_bytes) = self.weights(&spec, parameters).await?;
        // Shards in the task's order, a few fetched at once (see `SHARDS_IN_FLIGHT`).
        let shards: Vec<(Arc<Vec<RecordBatch>>, bool)> = futures::stream::iter(spec.shards.iter().cloned())
            .map(|source| async move { self.cached_or_fetched(&source).await })
            .buffered(SHARDS_IN_FLIGHT)
            .try_collect()
            .await?;
        let cache_hits = shards.iter().filter(|(_, hit)| *hit).count() as u32;
        let batches: Vec<RecordBatch> = shards
            .iter()
            .flat_map(|(shard, _)| shard.iter().cloned())
            .collect();
        let fetch_micros = fetch_started.elapsed().as_micros() as u64;
        let compute_started = Instant::now();
        let mut computed = self
            .executor
            .run(
                spec.kind, model, spec.seed, weights, training, spec.label, batches,
            )
            .await
            .map_err(|e| RpcError::new(ErrorCode::InvalidArgument, e))?;
        let compute_micros = compute_started.elapsed().as_micros() as u64;
        if let Some(update) = computed.update.as_mut() {
            if self.corrupt_percent > 0 && rand::random_range(0..100u8) < self.corrupt_percent {
                // Fault injection (tests and drills): a plausible-looking wrong update.
                tracing::warn!(task = %spec.task, "fault injection: corrupting this result");
                update.iter_mut().for_each(|g| *g = -*g * 3.0 + 0.01);
            }
        }
        let update = match computed.update.take() {
            Some(values) => {
                // Hashing a large update is CPU work: off the runtime's threads.
                let values = Arc::new(values);
                let named = values.clone();
                let tensor = tokio::task::spawn_blocking(move || TensorRef::of(&named))
                    .await
                    .map_err(|e| RpcError::new(ErrorCode::Internal, e.to_string()))?;
                self.tensors.lock().expect("tensor cache").insert(tensor, values);
                Some(tensor)
            }
            None => None,
        };
        let digest = TaskResult::compute_digest(
            &spec.task,
            computed.rows,
            computed.loss,
            update.as_ref(),
            &computed.values,
            computed.correct,
        );
        Ok(TaskResult {
            task: spec.task,
            rows: computed.rows,
            loss: computed.loss,
            update,
            values: computed.values,
            correct: computed.correct,
            digest,
            fetch_micros,
            compute_micros,
            cache_hits,
            weights_fetched_bytes,
            backend: self.backend.clone(),
        })
    }

    /// The task's starting weights: held already, or fetched from the first storage node named
    /// that serves them whole and true to their name.
    async fn weights(&self, spec: &TaskSpec, parameters: u64) -> Result<(Arc<Vec<f32>>, u64), RpcError> {
        let tensor = spec.weights.tensor;
        let ticket = &spec.weights.ticket;
        self.held_or_fetched(tensor, &spec.weights.storage, &format!("the task's weights {tensor}"), |client| {
            let ticket = ticket.clone();
            async move { aic_protocol::tensor::fetch_tensor(&client, tensor, Some(ticket), parameters).await }
        })
        .await
    }

    /// `tensor` held already, or fetched with `fetch` from the first of `holders` that serves it
    /// whole and true to its name (and kept). Answers the values and the bytes fetched (0 when
    /// held); every holder's failure, named, when none served it.
    pub(crate) async fn held_or_fetched<Fut>(
        &self,
        tensor: TensorRef,
        holders: &[String],
        what: &str,
        fetch: impl Fn(RpcClient) -> Fut,
    ) -> Result<(Arc<Vec<f32>>, u64), RpcError>
    where
        Fut: std::future::Future<Output = Result<Vec<f32>, aic_protocol::tensor::TensorError>>,
    {
        if let Some(held) = self.tensors.lock().expect("tensor cache").get(&tensor) {
            return Ok((held, 0));
        }
        let mut failures = Vec::new();
        for holder in holders {
            let client = match self.storage_client(holder).await {
                Ok(client) => client,
                Err(e) => {
                    failures.push(e.to_string());
                    continue;
                }
            };
            match fetch(client).await {
                Ok(values) => {
                    let values = Arc::new(values);
                    self.tensors
                        .lock()
                        .expect("tensor cache")
                        .insert(tensor, values.clone());
                    return Ok((values, tensor.bytes()));
                }
                Err(e) => {
                    self.metrics
                        .tensor_refusals
                        .with_label_values(&[e.reason()])
                        .inc();
                    failures.push(format!("{holder}: {e}"));
                }
            }
        }
        Err(RpcError::new(
            ErrorCode::Unavailable,
            format!("{what}: {}", failures.join("; ")),
        ))
    }

    /// A task's shard from the cache, else from its storage node (then cached); `true` for a
    /// cache hit.
    async fn cached_or_fetched(
        &self,
        source: &aic_protocol::messages::ShardSource,
    ) -> Result<(Arc<Vec<RecordBatch>>, bool), RpcError> {
        if let Some(cached) = self.cache.lock().await.get(&source.dataset, &source.shard) {
            self.metrics.cache.with_label_values(&["hit"]).inc();
            return Ok((cached, true));
        }
        self.metrics.cache.with_label_values(&["miss"]).inc();
        let fetched = Arc::new(self.fetch(source).await?);
        self.metrics
            .fetched_bytes
            .inc_by(fetched.iter().map(|b| b.get_array_memory_size() as u64).sum());
        self.cache
            .lock()
            .await
            .insert(&source.dataset, source.shard, fetched.clone());
        Ok((fetched, false))
    }

    async fn storage_client(&self, addr: &str) -> Result<RpcClient, RpcError> {
        let unavailable = |m: String| RpcError::new(ErrorCode::Unavailable, m);
        let mut clients = self.storage.lock().await;
        if let Some(client) = clients.get(addr).filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        let connect = RpcClient::connect(&self.outbound, addr, Role::Storage);
        let client = tokio::time::timeout(DIAL_TIMEOUT, connect)
            .await
            .map_err(|_| unavailable(format!("storage node {addr} did not answer")))?
            .map_err(|e| unavailable(format!("storage node {addr}: {e}")))?
            .with_timeout(FETCH_TIMEOUT);
        clients.insert(addr.to_string(), client.clone());
        Ok(client)
    }

    async fn fetch(
        &self,
        source: &aic_protocol::messages::ShardSource,
    ) -> Result<Vec<RecordBatch>, RpcError> {
        let unavailable = |m: String| RpcError::new(ErrorCode::Unavailable, m);
        let client = self.storage_client(&source.storage).await?;
        aic_protocol::shard_fetch::fetch_shard(&client, &source.dataset, &source.shard, &source.ticket)
            .await
            .map_err(|e| match e {
                aic_protocol::shard_fetch::FetchError::Transport(aic_protocol::Error::Rpc(e)) => e,
                other => unavailable(format!(
                    "fetching shard {} from {}: {other}",
                    source.shard, source.storage
                )),
            })
    }
}

/// Starts a compute node on already-bound sockets. It stops when `shutdown` is cancelled.
pub fn start(
    config: ComputeConfig,
    bound: BoundSockets,
    shutdown: CancellationToken,
) -> aic_protocol::Result<ServiceHandle> {
    let choice = match config.compute.backend {
        BackendSetting::Auto => aic_kernels::BackendChoice::Auto,
        BackendSetting::Cpu => aic_kernels::BackendChoice::Cpu,
        BackendSetting::Lavapipe => aic_kernels::BackendChoice::Vulkan {
            allow_cpu_device: true,
        },
    };
    let (executor, probe) = Executor::start(choice, config.compute.cpu_threads as usize)
        .map_err(|e| aic_protocol::Error::Transport(format!("opening the compute backend: {e}")))?;
    let host = local_capacity();
    tracing::info!(device = %probe.describe, mflops = probe.mflops, "device probed");
    let capacity = Capacity {
        device: probe.describe.clone(),
        device_memory_bytes: probe.memory_bytes.unwrap_or(host.memory_bytes),
        measured_mflops: probe.mflops,
        task_slots: config.compute.task_slots,
        ..host
    };
    let identity = config.endpoint.tls.load()?;
    let outbound = transport::outbound_endpoint(&identity)?;
    let registry = prometheus::Registry::new();
    let metrics = metrics::ComputeMetrics::register(&registry, probe.mflops)?;
    let node = Arc::new(ComputeNode {
        executor,
        backend: probe.describe,
        cache: Mutex::new(ShardCache::new(config.compute.cache_bytes)),
        tensors: std::sync::Mutex::new(TensorCache::new(config.compute.tensor_cache_bytes)),
        served: std::sync::Mutex::new(inference::ServedModels::default()),
        slots: Semaphore::new(config.compute.task_slots as usize),
        outbound,
        storage: Mutex::new(HashMap::new()),
        metrics,
        corrupt_percent: config.compute.corrupt_results_percent,
        corrupt_inference_percent: config.compute.corrupt_inference_percent,
        exit_on_inference_rows: config.compute.exit_on_inference_rows,
        exit_claim_file: config.compute.exit_claim_file.clone(),
        key: aic_ledger::Keypair::from_pkcs8_der(identity.key.secret_der())
            .map_err(|e| aic_protocol::Error::Certificate(format!("the node key cannot sign blocks: {e}")))?,
        me: identity.me.node_id,
    });
    start_node(
        Role::Compute,
        &config.endpoint,
        &config.scheduler,
        capacity,
        bound,
        Arc::new(ComputeApi(node)),
        registry,
        NodeExtras {
            payout_address: config.compute.payout_address.clone(),
            ..Default::default()
        },
        shutdown,
    )
}
