//! Training jobs: the `JobBoard` actor keeps every job's state and report; each job runs as its
//! own task, local-SGD rounds (DiLoCo-style; one local step with SGD is synchronous
//! data-parallel SGD) over the dataset's training shards.
//!
//! ```text
//!  per round: store the weights on storage nodes (by name) → place one task per shard
//!             (Allocator) → tickets → RunTask: H local steps on the compute node, which keeps
//!             the update → check digest and shape → maybe re-execute elsewhere (Rater; the
//!             updates compared chunk by chunk; a third run decides) → collect the updates in
//!             shard order, weighted by rows (data_plane::reduce) → outer optimizer step →
//!             checkpoint the names of the new weights on the ledger
//!  at the end: evaluate on the held-out shards → settle the escrow (payroll) → slash confirmed
//!             cheaters → mint the TrainedModel asset (naming its weights tensor) to the payer
//! ```
//!
//! A node that fails or times out has its task placed elsewhere; a node confirmed wrong is cut
//! from the job, its other results of the step are re-run, and none of its work is paid.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use aic_ledger::api::{LedgerRequest, LedgerResponse};
use aic_ledger::raft::replica::LedgerReplica;
use aic_ledger::state::{CheckpointTensors, JobRecord};
use aic_ledger::tx::{AssetKind, AssetMetadata, Call, PayoutKind, Transaction};
use aic_ledger::{Address, Amount, Keypair};
use aic_protocol::manifest::{Manifest, ShardEntry};
use aic_protocol::messages::{
    InnerOptimizer, JobRequest, LocalTraining, ModelShape, NodeState, NodeStatus, PeerRequest, PeerResponse,
    ShardSource, TaskKind, TaskResult, TaskSpec, WeightsSource, MAX_LOCAL_STEPS,
};
use aic_protocol::rpc::RpcClient;
use aic_protocol::ticket::ShardTicket;
use aic_protocol::{AssetId, ErrorCode, JobId, NodeId, Role, RpcError, ShardId, TaskId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Mutex;
use tracing::{info, warn, Instrument};

use crate::allocator::{Allocator, Finished, Place, UpdateTopology};
use crate::coin_payroll::{Accrue, CoinPayroll, Release};
use crate::data_plane::{self, OuterState, Part, PlaneError};
use crate::metrics::SchedulerMetrics;
use crate::payroll::{self, Pricing, WorkDone};
use crate::placement::Placement;
use crate::rater::{Penalty, Rater, RecordCheck, RecordPenalty, ShouldCheck};
use crate::rating::{self, Verdict};
use crate::registry::{ListNodes, Registry};

/// How long dialing a compute node may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);
/// How many nodes a task is tried on before the job fails.
const MAX_ATTEMPTS: usize = 4;
/// How long a task waits for a free slot on an eligible node.
const SLOT_WAIT: Duration = Duration::from_secs(30);
/// Tries a system transaction gets when other replicas' system transactions take its nonce.
const NONCE_ATTEMPTS: usize = 3;
/// How long a new job waits for storage nodes to report its dataset.
const REPLICA_WAIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// The board

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobState {
    Running,
    Done,
    Failed,
    Cancelled,
    /// Another replica took the job over (this one stalled); that replica runs and settles it.
    Moved,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Moved => "moved",
        }
    }
}

struct Entry {
    state: JobState,
    report: Value,
    submitter: NodeId,
    cancel: Arc<AtomicBool>,
    /// Share of the escrow left after what the job owes so far.
    escrow_left: f64,
}

pub struct JobBoard {
    jobs: HashMap<JobId, Entry>,
    metrics: SchedulerMetrics,
}

impl JobBoard {
    pub fn new(metrics: SchedulerMetrics) -> Self {
        JobBoard {
            jobs: HashMap::new(),
            metrics,
        }
    }

    /// Publishes the running jobs and the lowest escrow share any of them has left.
    fn publish(&self) {
        let running: Vec<&Entry> = self
            .jobs
            .values()
            .filter(|e| e.state == JobState::Running)
            .collect();
        self.metrics.jobs_running.set(running.len() as i64);
        let lowest = running.iter().map(|e| e.escrow_left).fold(1.0f64, f64::min);
        self.metrics.job_escrow_left.set(lowest);
    }
}

impl Actor for JobBoard {
    type Context = Context<Self>;
}

/// Registers a new job; fails if the id is taken.
#[derive(Message)]
#[rtype(result = "Result<Arc<AtomicBool>, RpcError>")]
pub struct Open {
    pub job: JobId,
    pub submitter: NodeId,
    /// A job resumed here may replace an ended entry (it ran here before another replica took
    /// it over).
    pub resuming: bool,
}

/// The job's state on this replica, if it ran here.
#[derive(Message)]
#[rtype(result = "Option<JobState>")]
pub struct StateOf {
    pub job: JobId,
}

impl Handler<StateOf> for JobBoard {
    type Result = Option<JobState>;

    fn handle(&mut self, message: StateOf, _: &mut Self::Context) -> Option<JobState> {
        self.jobs.get(&message.job).map(|e| e.state)
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Update {
    pub job: JobId,
    pub state: JobState,
    pub report: Value,
    pub escrow_left: f64,
}

#[derive(Message)]
#[rtype(result = "Option<(JobState, Value)>")]
pub struct Status {
    pub job: JobId,
}

#[derive(Message)]
#[rtype(result = "Result<(), RpcError>")]
pub struct Cancel {
    pub job: JobId,
    pub caller: NodeId,
}

impl Handler<Open> for JobBoard {
    type Result = Result<Arc<AtomicBool>, RpcError>;

    fn handle(&mut self, message: Open, _: &mut Self::Context) -> Self::Result {
        let replaceable = message.resuming
            && self
                .jobs
                .get(&message.job)
                .is_some_and(|e| e.state != JobState::Running);
        if self.jobs.contains_key(&message.job) && !replaceable {
            return Err(RpcError::new(
                ErrorCode::AlreadyExists,
                format!("job {} exists", message.job),
            ));
        }
        let cancel = Arc::new(AtomicBool::new(false));
        self.jobs.insert(
            message.job,
            Entry {
                state: JobState::Running,
                report: json!({"id": message.job.to_string(), "state": "running"}),
                submitter: message.submitter,
                cancel: cancel.clone(),
                escrow_left: 1.0,
            },
        );
        self.publish();
        Ok(cancel)
    }
}

impl Handler<Update> for JobBoard {
    type Result = ();

    fn handle(&mut self, message: Update, _: &mut Self::Context) {
        if let Some(entry) = self.jobs.get_mut(&message.job) {
            if entry.state == JobState::Running && message.state != JobState::Running {
                self.metrics
                    .jobs_finished
                    .with_label_values(&[message.state.as_str()])
                    .inc();
            }
            entry.state = message.state;
            entry.report = message.report;
            entry.escrow_left = message.escrow_left;
        }
        self.publish();
    }
}

impl Handler<Status> for JobBoard {
    type Result = Option<(JobState, Value)>;

    fn handle(&mut self, message: Status, _: &mut Self::Context) -> Self::Result {
        self.jobs.get(&message.job).map(|e| (e.state, e.report.clone()))
    }
}

impl Handler<Cancel> for JobBoard {
    type Result = Result<(), RpcError>;

    fn handle(&mut self, message: Cancel, _: &mut Self::Context) -> Self::Result {
        let entry = self
            .jobs
            .get(&message.job)
            .ok_or_else(|| RpcError::new(ErrorCode::NotFound, format!("no job {}", message.job)))?;
        if entry.submitter != message.caller {
            return Err(RpcError::new(
                ErrorCode::PermissionDenied,
                "only the submitter may cancel a job",
            ));
        }
        entry.cancel.store(true, Ordering::SeqCst);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// What a job needs

/// Why a system transaction did not apply.
#[derive(Debug)]
pub enum Refusal {
    Ledger(aic_ledger::TxError),
    Other(String),
}

/// Signs system transactions (payroll, slashing, minting) one at a time, so nonces follow.
pub struct SystemSigner {
    key: Keypair,
    lock: Mutex<()>,
}

impl SystemSigner {
    pub fn new(key: Keypair) -> Self {
        SystemSigner {
            key,
            lock: Mutex::new(()),
        }
    }

    pub fn address(&self) -> Address {
        self.key.address()
    }

    /// Submits `call` as the system account; a refusal is an error.
    pub async fn submit(
        &self,
        ledger: &LedgerReplica,
        call: Call,
    ) -> Result<Vec<aic_ledger::state::Event>, String> {
        self.try_submit(ledger, call).await.map_err(|e| match e {
            Refusal::Ledger(e) => e.to_string(),
            Refusal::Other(e) => e,
        })
    }

    /// Like [`Self::submit`], with the ledger's refusal kept typed.
    pub async fn try_submit(
        &self,
        ledger: &LedgerReplica,
        call: Call,
    ) -> Result<Vec<aic_ledger::state::Event>, Refusal> {
        let _one_at_a_time = self.lock.lock().await;
        // Another replica signing with the same key may take the nonce first: read it again.
        for _ in 1..NONCE_ATTEMPTS {
            match self.submit_once(ledger, call.clone()).await {
                Err(Refusal::Ledger(aic_ledger::TxError::BadNonce { .. })) => continue,
                other => return other,
            }
        }
        self.submit_once(ledger, call).await
    }

    async fn submit_once(
        &self,
        ledger: &LedgerReplica,
        call: Call,
    ) -> Result<Vec<aic_ledger::state::Event>, Refusal> {
        let status = match ledger.execute(LedgerRequest::Status).await {
            Ok(LedgerResponse::Status(status)) => status,
            other => return Err(Refusal::Other(format!("ledger status: {other:?}"))),
        };
        let nonce = match ledger.execute(LedgerRequest::Account(self.key.address())).await {
            Ok(LedgerResponse::Account(view)) => view.account.nonce,
            other => return Err(Refusal::Other(format!("system account: {other:?}"))),
        };
        let signed = Transaction {
            chain_id: status.chain_id,
            from: self.key.address(),
            nonce,
            call,
        }
        .sign(&self.key);
        match ledger.execute(LedgerRequest::Submit(Box::new(signed))).await {
            Ok(LedgerResponse::Submitted {
                result: Ok(events), ..
            }) => Ok(events),
            Ok(LedgerResponse::Submitted {
                result: Err(refusal), ..
            }) => Err(Refusal::Ledger(refusal)),
            // Refused before consensus (a nonce another replica took, say): the same refusal.
            Err(aic_ledger::api::LedgerApiError::Refused(refusal)) => Err(Refusal::Ledger(refusal)),
            other => Err(Refusal::Other(format!("unexpected ledger answer {other:?}"))),
        }
    }
}

/// Everything a job talks to.
#[derive(Clone)]
pub struct JobContext {
    /// This scheduler replica: the runner its job records name.
    pub me: NodeId,
    /// Where the `Job` actors run (the system's arbiter).
    pub arbiter: actix::ArbiterHandle,
    pub registry: Addr<Registry>,
    pub allocator: Addr<Allocator>,
    pub rater: Addr<Rater>,
    pub board: Addr<JobBoard>,
    pub ledger: Arc<LedgerReplica>,
    /// Dials compute nodes with the scheduler's certificate.
    pub endpoint: quinn::Endpoint,
    /// Signs shard tickets (the scheduler's certificate key, which storage nodes trust).
    pub ticket_key: ed25519_dalek::SigningKey,
    pub system: Option<Arc<SystemSigner>>,
    /// Pays jobs from escrow (absent without a system key, when jobs are refused).
    pub payroll: Option<Addr<CoinPayroll>>,
    pub pricing: Pricing,
    pub slash: Amount,
    /// Proof-of-Value reward from the reserve per million verified rows (capped by issuance).
    pub reward_per_million_rows: Amount,
    pub steps_per_epoch: u32,
    pub task_timeout: Duration,
    /// Block lottery tickets: nodes whose work a spot check confirmed hold one.
    pub tickets: crate::lottery::Tickets,
    pub metrics: SchedulerMetrics,
}

/// A job's inputs, resolved from the ledger.
struct Plan {
    request: JobRequest,
    payer: Address,
    budget: Amount,
    dataset: String,
    manifest: Manifest,
    dataset_owner: Address,
    dataset_fee: Amount,
    model: ModelShape,
    model_owner: Address,
    model_fee: Amount,
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> RpcError {
    RpcError::new(code, message.into())
}

async fn read(ledger: &LedgerReplica, request: LedgerRequest) -> Result<LedgerResponse, RpcError> {
    ledger
        .execute(request)
        .await
        .map_err(|e| refuse(ErrorCode::Unavailable, format!("reading the ledger: {e}")))
}

async fn asset(ledger: &LedgerReplica, id: AssetId) -> Result<aic_ledger::state::Asset, RpcError> {
    match read(ledger, LedgerRequest::Asset(id)).await? {
        LedgerResponse::Asset(Some(asset)) => Ok(asset),
        LedgerResponse::Asset(None) => Err(refuse(
            ErrorCode::NotFound,
            format!("no asset {id} on the ledger"),
        )),
        other => Err(refuse(
            ErrorCode::Internal,
            format!("unexpected ledger answer {other:?}"),
        )),
    }
}

/// Checks a request against the ledger: the assets exist and fit each other. Everything here
/// is refused before any escrow is touched.
async fn resolve(ledger: &LedgerReplica, request: &JobRequest) -> Result<Plan, RpcError> {
    if request.epochs == 0 || request.epochs > 1000 {
        return Err(refuse(ErrorCode::InvalidArgument, "epochs must be 1 to 1000"));
    }
    if request.learning_rate_milli == 0 || request.learning_rate_milli > 100_000 {
        return Err(refuse(
            ErrorCode::InvalidArgument,
            "the learning rate must be in (0, 100]",
        ));
    }
    if request.outer_learning_rate_milli == 0 || request.outer_learning_rate_milli > 100_000 {
        return Err(refuse(
            ErrorCode::InvalidArgument,
            "the outer learning rate must be in (0, 100]",
        ));
    }
    if request.local_steps == 0 || request.local_steps > MAX_LOCAL_STEPS {
        return Err(refuse(
            ErrorCode::InvalidArgument,
            format!("local steps must be 1 to {MAX_LOCAL_STEPS}"),
        ));
    }
    let dataset = asset(ledger, request.dataset_asset).await?;
    if dataset.kind != AssetKind::Dataset {
        return Err(refuse(
            ErrorCode::InvalidArgument,
            format!("asset {} is not a Dataset", request.dataset_asset),
        ));
    }
    let manifest = Manifest::from_json(&dataset.metadata.manifest).map_err(|e| {
        refuse(
            ErrorCode::InvalidArgument,
            format!("the dataset's published manifest is not usable for training ({e})"),
        )
    })?;
    let model = asset(ledger, request.model_asset).await?;
    if model.kind != AssetKind::Model {
        return Err(refuse(
            ErrorCode::InvalidArgument,
            format!("asset {} is not a Model", request.model_asset),
        ));
    }
    let shape: ModelShape = serde_json::from_str(&model.metadata.manifest).map_err(|e| {
        refuse(
            ErrorCode::InvalidArgument,
            format!("the model's manifest is not a model shape: {e}"),
        )
    })?;
    // The model's input is the dataset's encoded width (one-hot categories take a column each);
    // a numeric target needs a regression, classes a classifier with as many outputs.
    let input_width = manifest.input_width();
    let fits = match (&manifest.target, shape.is_regression()) {
        (Some(_), true) => u64::from(shape.features()) == input_width,
        (None, false) => {
            u64::from(shape.features()) == input_width && shape.classes() as usize == manifest.classes.len()
        }
        _ => false,
    };
    if !fits {
        let dataset = match &manifest.target {
            Some(_) => format!("{input_width} features and a numeric target {:?}", manifest.label),
            None => format!("{input_width} features and {} classes", manifest.classes.len()),
        };
        let model = if shape.is_regression() {
            format!("the model regresses {} features onto a number", shape.features())
        } else {
            format!(
                "the model takes {} features into {} classes",
                shape.features(),
                shape.classes()
            )
        };
        return Err(refuse(
            ErrorCode::InvalidArgument,
            format!(
                "{model}; the dataset has {dataset} \
                 (aic model register --for-dataset ASSET takes them from the dataset)"
            ),
        ));
    }
    if manifest.train.is_empty() || manifest.test.is_empty() {
        return Err(refuse(
            ErrorCode::InvalidArgument,
            "the dataset needs training and held-out shards",
        ));
    }
    Ok(Plan {
        request: request.clone(),
        payer: Address([0; 32]),
        budget: Amount::ZERO,
        dataset: aic_protocol::manifest::dataset_id_of_hash(&dataset.metadata.content_hash),
        manifest,
        dataset_owner: dataset.owner,
        dataset_fee: dataset.metadata.usage_fee,
        model: shape,
        model_owner: model.owner,
        model_fee: model.metadata.usage_fee,
    })
}

fn fees(plan: &Plan) -> Result<Amount, RpcError> {
    plan.dataset_fee
        .checked_add(plan.model_fee)
        .map_err(|_| refuse(ErrorCode::InvalidArgument, "fees overflow"))
}

/// Device memory one task of `plan` needs: the weights, a copy for the update, the gradient
/// and its double-precision sum, the inner optimizer's two moments when it is Adam, and the
/// largest shard decoded with the activations of its rows.
pub fn task_memory_bytes(model: &ModelShape, inner: InnerOptimizer, manifest: &Manifest) -> u64 {
    let parameter_copies: u64 = match inner {
        InnerOptimizer::Sgd => 5,
        InnerOptimizer::Adam => 7,
    };
    let largest = manifest
        .shards()
        .map(|e| (e.rows, e.bytes))
        .max_by_key(|(_, b)| *b);
    let (rows, bytes) = largest.unwrap_or((0, 0));
    let widest = match *model {
        ModelShape::Mlp {
            features,
            hidden,
            classes,
        } => features.max(hidden).max(classes),
        other => other.features().max(other.classes()),
    };
    // Features, logits and their gradients: a few activations per row of the widest layer.
    let activations = rows.saturating_mul(u64::from(widest)).saturating_mul(4 * 4);
    model
        .parameters()
        .saturating_mul(4 * parameter_copies)
        .saturating_add(bytes.saturating_mul(4))
        .saturating_add(activations)
}

/// Refuses a job whose tasks fit no live compute node's device memory, saying what is short.
fn check_fits(plan: &Plan, nodes: &[NodeStatus]) -> Result<(), RpcError> {
    let needed = task_memory_bytes(&plan.model, plan.request.inner_optimizer, &plan.manifest);
    let largest = nodes
        .iter()
        .filter(|n| n.role == Role::Compute && n.state == NodeState::Up)
        .map(|n| n.capacity.device_memory_bytes)
        .max();
    match largest {
        None => Err(refuse(ErrorCode::Unavailable, "no compute node is up")),
        Some(memory) if memory < needed => Err(refuse(
            ErrorCode::InvalidArgument,
            format!(
                "device memory is short: a task of this model ({} parameters) needs about {:.2} GiB \
                 (weights, update, gradient, optimizer state and a shard's activations); the \
                 largest live compute node offers {:.2} GiB",
                plan.model.parameters(),
                needed as f64 / (1u64 << 30) as f64,
                memory as f64 / (1u64 << 30) as f64
            ),
        )),
        Some(_) => Ok(()),
    }
}

/// The most `request` may cost.
pub async fn quote(ctx: &JobContext, request: &JobRequest) -> Result<(Amount, String), RpcError> {
    let plan = resolve(&ctx.ledger, request).await?;
    let nodes = ctx
        .registry
        .send(ListNodes)
        .await
        .map_err(|e| refuse(ErrorCode::Unavailable, e.to_string()))?;
    check_fits(&plan, &nodes)?;
    let compute = nodes
        .iter()
        .filter(|n| n.role == Role::Compute && n.state == NodeState::Up)
        .count() as u64;
    let rows = |entries: &[ShardEntry]| entries.iter().map(|e| e.rows).sum::<u64>();
    let bytes = plan.manifest.shards().map(|e| e.bytes).sum::<u64>();
    let fees = fees(&plan)?;
    let amount = ctx
        .pricing
        .quote(
            fees,
            rows(&plan.manifest.train),
            rows(&plan.manifest.test),
            request.epochs,
            bytes,
            compute,
        )
        .ok_or_else(|| refuse(ErrorCode::InvalidArgument, "the quote overflows"))?;
    let detail = format!(
        "usage fees {fees} AIC; {} training rows × {} epochs (spot checks counted at the new-node rate) at {} AIC \
         per million rows; {bytes} bytes to up to {compute} compute nodes at {} AIC per GB; platform fee {} %",
        rows(&plan.manifest.train),
        request.epochs,
        ctx.pricing.compute_per_million_rows,
        ctx.pricing.storage_per_gb,
        ctx.pricing.platform_fee_percent
    );
    Ok((amount, detail))
}

/// Checks the job and its escrow, registers it and starts it. Answers once it runs.
pub async fn submit(ctx: &JobContext, request: JobRequest, submitter: NodeId) -> Result<(), RpcError> {
    let outcome = start(ctx, request, submitter).await;
    let result = if outcome.is_ok() { "accepted" } else { "refused" };
    ctx.metrics.jobs_submitted.with_label_values(&[result]).inc();
    outcome
}

async fn start(ctx: &JobContext, request: JobRequest, submitter: NodeId) -> Result<(), RpcError> {
    if ctx.system.is_none() {
        return Err(refuse(
            ErrorCode::Unavailable,
            "this scheduler holds no system key (jobs.system_key) and cannot settle jobs",
        ));
    }
    let mut plan = resolve(&ctx.ledger, &request).await?;
    let escrow = match read(&ctx.ledger, LedgerRequest::Escrow(request.job)).await? {
        LedgerResponse::Escrow(Some(escrow)) => escrow,
        LedgerResponse::Escrow(None) => {
            return Err(refuse(
                ErrorCode::InvalidArgument,
                format!("job {} has no escrow on the ledger; open it first", request.job),
            ))
        }
        other => {
            return Err(refuse(
                ErrorCode::Internal,
                format!("unexpected ledger answer {other:?}"),
            ))
        }
    };
    let (needed, _) = quote(ctx, &request).await?;
    if escrow.remaining < needed {
        return Err(refuse(
            ErrorCode::InvalidArgument,
            format!(
                "the escrow holds {} AIC; this job may cost up to {needed} AIC",
                escrow.remaining
            ),
        ));
    }
    plan.payer = escrow.payer;
    plan.budget = escrow.remaining;
    let cancel = ctx
        .board
        .send(Open {
            job: request.job,
            submitter,
            resuming: false,
        })
        .await
        .map_err(|e| refuse(ErrorCode::Unavailable, e.to_string()))??;
    // The job goes on the ledger before any work, so another replica can resume it.
    let recorded = RecordedJob {
        request: request.clone(),
        submitter,
    };
    let system = ctx.system.as_ref().expect("checked above");
    let call = Call::RecordJob {
        job: request.job,
        runner: ctx.me,
        request: serde_json::to_vec(&recorded).map_err(|e| refuse(ErrorCode::Internal, e.to_string()))?,
    };
    if let Err(error) = system.submit(&ctx.ledger, call).await {
        let _ = ctx
            .board
            .send(Update {
                job: request.job,
                state: JobState::Failed,
                report: json!({"id": request.job.to_string(), "state": "failed", "error": error}),
                escrow_left: 1.0,
            })
            .await;
        return Err(refuse(
            ErrorCode::Unavailable,
            format!("the job could not be recorded on the ledger: {error}"),
        ));
    }
    launch(Run::new(ctx.clone(), plan, cancel));
    Ok(())
}

/// What a job record on the ledger holds: the request and who submitted it.
#[derive(Serialize, Deserialize)]
struct RecordedJob {
    request: JobRequest,
    submitter: NodeId,
}

/// A job's tallies at a checkpoint: enough to resume it and pay it. Postcard, so a round costs
/// the log a few hundred bytes (node ids as 32 raw bytes).
#[derive(Default, Serialize, Deserialize)]
struct Progress {
    compute_rows: BTreeMap<NodeId, u64>,
    verified_rows: BTreeMap<NodeId, u64>,
    storage_bytes: BTreeMap<NodeId, u64>,
    banned: Vec<NodeId>,
    /// Where this round's tasks ran: shard, compute node, storage node.
    assignments: Vec<(ShardId, NodeId, NodeId)>,
}

/// Resumes a job another replica (or this one, before a restart) ran: takes it over on the
/// ledger, restores its weights and tallies from the latest checkpoint, and runs it from there.
/// Answers whether the job now runs here.
pub async fn resume(ctx: &JobContext, job: JobId, record: &JobRecord) -> Result<(), String> {
    let recorded: RecordedJob =
        serde_json::from_slice(&record.request).map_err(|e| format!("the recorded request: {e}"))?;
    let progress: Progress = if record.progress.is_empty() {
        Progress::default()
    } else {
        postcard::from_bytes(&record.progress).map_err(|e| format!("the checkpoint: {e}"))?
    };
    let system = ctx.system.clone().ok_or("no system key")?;
    let mut plan = resolve(&ctx.ledger, &recorded.request)
        .await
        .map_err(|e| e.to_string())?;
    match read(&ctx.ledger, LedgerRequest::Escrow(job)).await {
        Ok(LedgerResponse::Escrow(Some(escrow))) => {
            plan.payer = escrow.payer;
            plan.budget = escrow.remaining;
        }
        other => return Err(format!("job {job} has no escrow to resume: {other:?}")),
    }
    let cancel = ctx
        .board
        .send(Open {
            job,
            submitter: recorded.submitter,
            resuming: true,
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    if record.runner != ctx.me {
        if let Err(error) = system
            .submit(&ctx.ledger, Call::TakeOverJob { job, runner: ctx.me })
            .await
        {
            let _ = ctx
                .board
                .send(Update {
                    job,
                    state: JobState::Failed,
                    report: json!({"id": job.to_string(), "state": "failed", "error": error}),
                    escrow_left: 1.0,
                })
                .await;
            return Err(format!("taking job {job} over: {error}"));
        }
    }
    let mut run = Run::new(ctx.clone(), plan, cancel);
    if let (Some(tensors), true) = (&record.tensors, record.round > 0) {
        run.restore(tensors).await?;
    }
    run.start_round = record.round;
    run.compute_rows = progress.compute_rows;
    run.verified_rows = progress.verified_rows;
    run.storage_bytes = progress.storage_bytes;
    run.banned = progress.banned.into_iter().collect();
    run.report["resumed"] = json!({
        "from_round": record.round,
        "by": ctx.me.to_string(),
        "previous_runner": record.runner.to_string(),
        // The checkpoint's weights, fetched back from the storage nodes that held them.
        "weights": record.tensors.as_ref().map(|t| t.weights.hex()),
        "weights_holders": record.tensors.as_ref().map(|t| t.holders.len()),
    });
    info!(%job, round = record.round, previous = %record.runner.short(), "resuming a job");
    launch(run);
    Ok(())
}

/// Runs a job to its end on a task of its own: trains, settles (unless another replica took
/// it over), and publishes the outcome.
fn launch(run: Run) {
    let arbiter = run.ctx.arbiter.clone();
    Job::start_in_arbiter(&arbiter, move |_| Job { run: Some(run) });
}

/// The `Job` actor: one per job this replica runs. It trains the job round by round, settles it
/// (unless another replica took it over), publishes the outcome on the board, and stops.
pub struct Job {
    run: Option<Run>,
}

impl Actor for Job {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let run = self.run.take().expect("a job actor starts once");
        ctx.spawn(lifecycle(run).into_actor(self).map(|(), _, ctx| ctx.stop()));
    }
}

async fn lifecycle(run: Run) {
    let span = tracing::info_span!("job", job = %run.plan.request.job);
    lifecycle_in_span(run).instrument(span).await
}

async fn lifecycle_in_span(mut run: Run) {
    {
        let ctx = run.ctx.clone();
        let job = run.plan.request.job;
        let outcome = run.train().await;
        let mut state = match &outcome {
            Ok(()) if run.cancelled() => JobState::Cancelled,
            Ok(()) => JobState::Done,
            Err(_) => JobState::Failed,
        };
        if let (Err(error), false) = (&outcome, run.taken_over) {
            warn!(%job, %error, "job failed; settling the work done");
            run.report["error"] = json!(error);
        }
        // Claim the job once more before paying: a replica that took it over settles it.
        if !run.taken_over {
            let tensors = run.stored.clone();
            run.checkpoint(Vec::new(), tensors).await;
        }
        if run.taken_over {
            warn!(%job, "another replica took this job over; it settles the job");
            state = JobState::Moved;
            run.report["moved"] = json!("taken over by another scheduler replica, which runs and settles it");
        } else if let Err(error) = run.settle(state == JobState::Done).await {
            warn!(%job, %error, "settling the job failed");
            run.report["settlement_error"] = json!(error);
        }
        run.report["state"] = json!(state.as_str());
        info!(%job, state = state.as_str(), accuracy = ?run.report["accuracy"], "job finished");
        let report = run.report.clone();
        let escrow_left = run.escrow_left();
        let _ = ctx
            .board
            .send(Update {
                job,
                state,
                report,
                escrow_left,
            })
            .await;
    }
}

// ---------------------------------------------------------------------------------------------
// A running job

/// A task after its spot check: the accepted result, whether a re-execution confirmed it, the
/// check records, nodes found wrong, and nodes whose execution was confirmed.
struct Checked {
    done: Done,
    verified: bool,
    checks: Vec<Value>,
    wrong: Vec<NodeId>,
    confirmed: Vec<NodeId>,
}

impl Checked {
    fn unverified(done: Done) -> Self {
        Checked {
            done,
            verified: false,
            checks: Vec::new(),
            wrong: Vec::new(),
            confirmed: Vec::new(),
        }
    }
}

/// One task's outcome with where it ran.
#[derive(Clone)]
struct Done {
    result: TaskResult,
    placement: Placement<NodeId>,
    /// Nodes that failed this task before it ran here, and why (never paid).
    failed_attempts: Vec<String>,
}

/// Bytes the job's tensors moved, for the report: what the rounds cost the wire.
#[derive(Debug, Default)]
struct WireTally {
    /// Weights (and optimizer state) stored on storage nodes, per holder.
    stored_bytes: std::sync::atomic::AtomicU64,
    /// Weights compute nodes fetched (their first task of a round on each node).
    fetched_bytes: std::sync::atomic::AtomicU64,
    /// Updates collected from compute nodes for the reduce.
    collected_bytes: std::sync::atomic::AtomicU64,
    /// Updates read to compare a spot check's executions.
    compared_bytes: std::sync::atomic::AtomicU64,
}

impl WireTally {
    fn add(counter: &std::sync::atomic::AtomicU64, bytes: u64) {
        counter.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The tallies, and per round (rounds run here) relative to the model's bytes.
    fn report(&self, rounds: u32, model_bytes: u64) -> Value {
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let total = get(&self.stored_bytes)
            + get(&self.fetched_bytes)
            + get(&self.collected_bytes)
            + get(&self.compared_bytes);
        let per_round = total as f64 / f64::from(rounds.max(1));
        json!({
            "stored_bytes": get(&self.stored_bytes),
            "fetched_bytes": get(&self.fetched_bytes),
            "collected_bytes": get(&self.collected_bytes),
            "compared_bytes": get(&self.compared_bytes),
            "bytes_per_round": per_round,
            "per_round_over_model_bytes": per_round / model_bytes.max(1) as f64,
        })
    }
}

struct Run {
    ctx: JobContext,
    plan: Plan,
    cancel: Arc<AtomicBool>,
    /// The weights and the outer optimizer's state.
    state: OuterState,
    /// Where the current weights are stored, by name (none until stored).
    stored: Option<CheckpointTensors>,
    wire: WireTally,
    nodes: Vec<NodeStatus>,
    /// Nodes confirmed wrong in this job: never used again, never paid.
    banned: HashSet<NodeId>,
    /// Verified row-passes and shard bytes served, by node.
    compute_rows: BTreeMap<NodeId, u64>,
    /// Rows of results a spot check confirmed, by node: what Proof-of-Value rewards.
    verified_rows: BTreeMap<NodeId, u64>,
    storage_bytes: BTreeMap<NodeId, u64>,
    /// Every failed attempt (node, task, why), for the report.
    failures: std::sync::Mutex<Vec<Value>>,
    /// Connections to compute nodes, reused across tasks.
    clients: std::sync::Mutex<HashMap<NodeId, RpcClient>>,
    report: Value,
    started: Instant,
    /// Rounds already done before this replica ran the job (a resumed job).
    start_round: u32,
    /// Rounds completed so far.
    round: u32,
    /// The ledger refused a checkpoint because another replica took the job over.
    taken_over: bool,
}

impl Run {
    fn new(ctx: JobContext, plan: Plan, cancel: Arc<AtomicBool>) -> Self {
        let spec = aic_compute_node::executor::model_spec(plan.model);
        let weights = spec
            .init(u64::from_le_bytes(
                plan.request.job.as_bytes()[..8].try_into().expect("8 bytes"),
            ))
            .flat();
        let state = OuterState::new(weights, plan.request.outer_optimizer);
        let report = json!({
            "id": plan.request.job.to_string(),
            "state": "running",
            "runner": ctx.me.to_string(),
            "dataset": plan.dataset,
            "dataset_asset": plan.request.dataset_asset.to_string(),
            "model_asset": plan.request.model_asset.to_string(),
            "model": plan.model,
            "epochs": plan.request.epochs,
            "local_steps": plan.request.local_steps,
            "inner_optimizer": plan.request.inner_optimizer,
            "outer_optimizer": plan.request.outer_optimizer,
            "budget": plan.budget.to_string(),
            "rounds": 0,
            "tasks": [],
            "spot_checks": [],
            "penalties": [],
            "payments": [],
        });
        Run {
            ctx,
            plan,
            cancel,
            state,
            stored: None,
            wire: WireTally::default(),
            nodes: Vec::new(),
            banned: HashSet::new(),
            compute_rows: BTreeMap::new(),
            verified_rows: BTreeMap::new(),
            storage_bytes: BTreeMap::new(),
            clients: std::sync::Mutex::new(HashMap::new()),
            failures: std::sync::Mutex::new(Vec::new()),
            report,
            started: Instant::now(),
            start_round: 0,
            round: 0,
            taken_over: false,
        }
    }

    /// Records the job's progress on the ledger after a round: the names of the stored weights
    /// and the tallies, with the round's assignments. A refusal because another replica runs
    /// the job marks it taken over; any other failure only costs resumability (logged).
    async fn checkpoint(
        &mut self,
        assignments: Vec<(ShardId, NodeId, NodeId)>,
        tensors: Option<CheckpointTensors>,
    ) -> bool {
        let Some(system) = self.ctx.system.clone() else {
            return false;
        };
        let progress = Progress {
            compute_rows: self.compute_rows.clone(),
            verified_rows: self.verified_rows.clone(),
            storage_bytes: self.storage_bytes.clone(),
            banned: self.banned.iter().copied().collect(),
            assignments,
        };
        let call = Call::CheckpointJob {
            job: self.plan.request.job,
            runner: self.ctx.me,
            round: self.round,
            tensors,
            progress: postcard::to_stdvec(&progress).expect("tallies encode"),
        };
        match system.try_submit(&self.ctx.ledger, call).await {
            Ok(_) => true,
            // Another replica runs the job now, or has already settled it (its record went
            // with the escrow release): either way this replica must not pay it.
            Err(Refusal::Ledger(
                aic_ledger::TxError::NotTheRunner { .. } | aic_ledger::TxError::JobNotRecorded(_),
            )) => {
                self.taken_over = true;
                self.cancel.store(true, Ordering::SeqCst);
                false
            }
            Err(error) => {
                warn!(job = %self.plan.request.job, ?error, "checkpoint not recorded");
                false
            }
        }
    }

    /// Storage nodes up, nearest to the runner's view first (the registry's order), with their
    /// addresses.
    fn storage_nodes(&self) -> Vec<(NodeId, String)> {
        self.nodes
            .iter()
            .filter(|n| n.role == Role::Storage && n.state == NodeState::Up)
            .map(|n| (n.node_id, n.quic_addr.clone()))
            .collect()
    }

    /// Stores the current weights (and the outer optimizer's state) on storage nodes and
    /// remembers their names: what tasks fetch and what the next checkpoint records.
    async fn store_state(&mut self) -> Result<CheckpointTensors, String> {
        let storage = self.storage_nodes();
        let (weights, holders) = data_plane::store(&self.ctx.endpoint, &storage, self.state.weights.clone())
            .await
            .map_err(|e| format!("storing the round's weights: {e}"))?;
        let holder_addrs: Vec<(NodeId, String)> = storage
            .iter()
            .filter(|(n, _)| holders.contains(n))
            .cloned()
            .collect();
        let optimizer_state = match &self.state.momentum {
            Some(momentum) => Some(
                data_plane::store(&self.ctx.endpoint, &holder_addrs, momentum.clone())
                    .await
                    .map_err(|e| format!("storing the outer optimizer's state: {e}"))?
                    .0,
            ),
            None => None,
        };
        let per_holder = weights.bytes() + optimizer_state.map_or(0, |t| t.bytes());
        WireTally::add(&self.wire.stored_bytes, per_holder * holders.len() as u64);
        let tensors = CheckpointTensors {
            weights,
            optimizer_state,
            holders,
        };
        self.stored = Some(tensors.clone());
        Ok(tensors)
    }

    /// Takes a checkpoint's weights (and optimizer state) back from the storage nodes that
    /// hold them, checked against their names.
    async fn restore(&mut self, tensors: &CheckpointTensors) -> Result<(), String> {
        self.refresh_nodes().await?;
        let parameters = self.plan.model.parameters();
        if tensors.weights.elements != parameters {
            return Err(format!(
                "the checkpoint's weights hold {} values; the model has {parameters}",
                tensors.weights.elements
            ));
        }
        let holders: Vec<String> = tensors
            .holders
            .iter()
            .filter_map(|id| self.node(id).map(|n| n.quic_addr.clone()))
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
        if momentum.is_some() != self.state.momentum.is_some() {
            return Err("the checkpoint's optimizer state does not fit the job's outer optimizer".into());
        }
        self.state = OuterState {
            weights: std::sync::Arc::new(weights),
            momentum: momentum.map(std::sync::Arc::new),
        };
        self.stored = Some(tensors.clone());
        Ok(())
    }

    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    async fn publish(&self) {
        let _ = self
            .ctx
            .board
            .send(Update {
                job: self.plan.request.job,
                state: JobState::Running,
                report: self.report.clone(),
                escrow_left: self.escrow_left(),
            })
            .await;
    }

    /// The payout address of each node that reported one.
    fn payout_addresses(&self) -> HashMap<NodeId, Address> {
        self.nodes
            .iter()
            .filter_map(|n| n.payout_address.parse::<Address>().ok().map(|a| (n.node_id, a)))
            .collect()
    }

    /// What the job owes so far: verified compute of nodes not banned, bytes served, and the
    /// usage fees once `completed`.
    fn work_done(&self, addresses: &HashMap<NodeId, Address>, completed: bool) -> WorkDone {
        let mut work = WorkDone::default();
        for (node, rows) in &self.compute_rows {
            if self.banned.contains(node) {
                continue;
            }
            if let Some(to) = addresses.get(node) {
                *work.compute_rows.entry(*to).or_insert(0) += rows;
            }
        }
        for (node, bytes) in &self.storage_bytes {
            if let Some(to) = addresses.get(node) {
                *work.storage_bytes.entry(*to).or_insert(0) += bytes;
            }
        }
        if completed {
            work.fees.push((
                self.plan.dataset_owner,
                self.plan.dataset_fee,
                PayoutKind::DatasetFee,
            ));
            work.fees
                .push((self.plan.model_owner, self.plan.model_fee, PayoutKind::ModelFee));
        }
        work
    }

    /// The share of the escrow left once the work so far and the usage fees are paid: what
    /// the escrow alert watches (0 when the work already exceeds it).
    fn escrow_left(&self) -> f64 {
        if self.plan.budget.is_zero() {
            return 0.0;
        }
        let work = self.work_done(&self.payout_addresses(), true);
        match payroll::settle(self.plan.budget, &work, &self.ctx.pricing) {
            Ok(settlement) => settlement.refund.0 as f64 / self.plan.budget.0 as f64,
            Err(_) => 0.0,
        }
    }

    async fn refresh_nodes(&mut self) -> Result<(), String> {
        self.nodes = self
            .ctx
            .registry
            .send(ListNodes)
            .await
            .map_err(|e| e.to_string())?;
        self.ctx
            .allocator
            .send(UpdateTopology {
                nodes: self.nodes.clone(),
            })
            .await
            .map_err(|e| e.to_string())
    }

    /// Storage nodes that report the dataset whole.
    fn replicas(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|n| {
                n.role == Role::Storage
                    && n.state == NodeState::Up
                    && n.holdings
                        .iter()
                        .any(|h| h.dataset == self.plan.dataset && h.healthy_shards == h.shards)
            })
            .map(|n| n.node_id)
            .collect()
    }

    fn node(&self, id: &NodeId) -> Option<&NodeStatus> {
        self.nodes.iter().find(|n| &n.node_id == id)
    }

    fn name(&self, id: &NodeId) -> String {
        self.node(id).map_or_else(|| id.short(), |n| n.name.clone())
    }

    async fn train(&mut self) -> Result<(), String> {
        let steps = self
            .ctx
            .steps_per_epoch
            .min(self.plan.manifest.train.len() as u32)
            .max(1) as usize;
        let train = self.plan.manifest.train.clone();
        let groups: Vec<Vec<ShardEntry>> = (0..steps)
            .map(|s| train.iter().skip(s).step_by(steps).cloned().collect())
            .collect();
        let outer_lr = self.plan.request.outer_learning_rate_milli as f32 / 1000.0;
        // Storage nodes report what they hold with their heartbeats: a dataset imported a
        // moment ago may not be reported yet.
        let deadline = Instant::now() + REPLICA_WAIT;
        loop {
            self.refresh_nodes().await?;
            if !self.replicas().is_empty() || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if self.stored.is_none() {
            self.store_state().await?;
        }
        let rounds_before = self.start_round;
        let mut round = 0u32;
        for epoch in 0..self.plan.request.epochs {
            for group in &groups {
                if round < self.start_round {
                    round += 1;
                    continue;
                }
                if self.cancelled() {
                    return Ok(());
                }
                self.refresh_nodes().await?;
                let span = tracing::info_span!("round", round, epoch);
                let (results, loss, previous) =
                    self.train_round(round, group, outer_lr).instrument(span).await?;
                round += 1;
                self.round = round;
                self.ctx.metrics.job_rounds.inc();
                self.report["rounds"] = json!(round);
                self.report["epoch"] = json!(epoch + 1);
                self.report["loss"] = json!(loss);
                self.report["wire"] = self
                    .wire
                    .report(round - rounds_before, self.plan.model.parameters() * 4);
                let assignments = group
                    .iter()
                    .zip(&results)
                    .filter_map(|(entry, d)| {
                        Some((entry.id.parse().ok()?, d.placement.node, d.placement.replica))
                    })
                    .collect();
                let tensors = self.stored.clone();
                let recorded = self.checkpoint(assignments, tensors).await;
                if self.taken_over {
                    return Err("another scheduler replica took this job over".into());
                }
                // The ledger names the new weights now; until it does, the old ones stay.
                if recorded {
                    self.drop_superseded(previous).await;
                }
                self.publish().await;
            }
        }
        // Held-out evaluation.
        self.refresh_nodes().await?;
        let test = self.plan.manifest.test.clone();
        let results = self.run_step(round, TaskKind::Evaluate, &test).await?;
        self.record_tasks(round, TaskKind::Evaluate, &test, &results);
        let rows: u64 = results.iter().map(|d| d.result.rows).sum();
        let correct: u64 = results.iter().map(|d| d.result.correct).sum();
        let loss: f64 = results
            .iter()
            .map(|d| f64::from(d.result.loss) * d.result.rows as f64)
            .sum::<f64>()
            / rows.max(1) as f64;
        if self.plan.model.is_regression() {
            // R² over the whole held-out split: 1 − SSE/SST, SSE from the tasks' mean squared
            // errors, SST from their targets' sums (Σy, Σy²).
            let n = rows.max(1) as f64;
            let sum = |i: usize| -> f64 {
                results
                    .iter()
                    .map(|d| d.result.values.get(i).copied().map_or(0.0, f64::from))
                    .sum()
            };
            let sst = sum(1) - sum(0) * sum(0) / n;
            let r2 = if sst > 0.0 { 1.0 - loss * n / sst } else { 0.0 };
            self.report["r2"] = json!(r2);
        } else {
            self.report["accuracy"] = json!(correct as f64 / rows.max(1) as f64);
        }
        self.report["test_rows"] = json!(rows);
        self.report["test_loss"] = json!(loss);
        self.report["seconds"] = json!(self.started.elapsed().as_secs_f64());
        self.report["failed_attempts"] = json!(self.failures.lock().expect("failures").clone());
        Ok(())
    }

    /// One training round: the tasks (spot-checked), their updates collected and reduced in
    /// shard order, the outer step, and the new weights stored. Answers the accepted results and
    /// the round's mean loss.
    /// Forgets the tensors of a checkpoint the ledger no longer names (the new one landed): a
    /// job keeps one round's weights on the storage nodes, not all of them.
    async fn drop_superseded(&self, old: Option<CheckpointTensors>) {
        let (Some(old), Some(new)) = (old, self.stored.as_ref()) else {
            return;
        };
        let holders: Vec<String> = old
            .holders
            .iter()
            .filter_map(|id| self.node(id).map(|n| n.quic_addr.clone()))
            .collect();
        for tensor in std::iter::once(old.weights).chain(old.optimizer_state) {
            if tensor != new.weights && Some(tensor) != new.optimizer_state {
                data_plane::drop(&self.ctx.endpoint, &holders, tensor).await;
            }
        }
    }

    async fn train_round(
        &mut self,
        round: u32,
        group: &[ShardEntry],
        outer_lr: f32,
    ) -> Result<(Vec<Done>, f64, Option<CheckpointTensors>), String> {
        let previous = self.stored.clone();
        let mut results = self.run_step(round, TaskKind::Gradient, group).await?;
        let mean_update = self.collect(round, group, &mut results).await?;
        self.record_tasks(round, TaskKind::Gradient, group, &results);
        let rows: u64 = results.iter().map(|d| d.result.rows).sum();
        let loss: f64 = results
            .iter()
            .map(|d| f64::from(d.result.loss) * d.result.rows as f64 / rows.max(1) as f64)
            .sum();
        // The outer step runs on a blocking thread: the actor's thread keeps serving.
        let mut state = std::mem::take(&mut self.state);
        self.state = tokio::task::spawn_blocking(move || {
            state.apply(&mean_update, outer_lr);
            state
        })
        .await
        .map_err(|e| format!("the outer step: {e}"))?;
        self.store_state().await?;
        Ok((results, loss, previous))
    }

    /// The round's mean update: every task's update collected from the node that holds it, in
    /// shard order, weighted by its rows. A task whose update cannot be collected (the node
    /// went away, or what it sends is not what its result named) is re-run elsewhere and the
    /// reduce starts over; nothing reaches the weights until every update is in.
    async fn collect(
        &mut self,
        round: u32,
        group: &[ShardEntry],
        results: &mut [Done],
    ) -> Result<Vec<f32>, String> {
        let parameters = self.plan.model.parameters();
        for _ in 0..MAX_ATTEMPTS {
            let rows: u64 = results.iter().map(|d| d.result.rows).sum();
            let mut parts = Vec::with_capacity(results.len());
            let mut unreachable = None;
            for (index, done) in results.iter().enumerate() {
                let update = done.result.update.ok_or("a training result without an update")?;
                match self.client_for(&done.placement.node).await {
                    Ok(client) => parts.push(Part {
                        client,
                        update,
                        share: done.result.rows as f64 / rows.max(1) as f64,
                    }),
                    Err(error) => {
                        unreachable = Some((index, error));
                        break;
                    }
                }
            }
            let failed = match unreachable {
                Some((index, error)) => (index, error),
                None => match data_plane::reduce(&parts, parameters).await {
                    Ok(sum) => {
                        WireTally::add(&self.wire.collected_bytes, parameters * 4 * parts.len() as u64);
                        return Ok(sum);
                    }
                    Err(PlaneError::Collect { index, error }) => {
                        self.ctx
                            .metrics
                            .tensor_refusals
                            .with_label_values(&[error.reason()])
                            .inc();
                        (index, error.to_string())
                    }
                    Err(other) => return Err(other.to_string()),
                },
            };
            let (index, error) = failed;
            let node = results[index].placement.node;
            warn!(round, node = %self.name(&node), %error, "an update could not be collected; re-running its task elsewhere");
            self.failures.lock().expect("failures").push(json!({
                "node": self.name(&node),
                "task": results[index].result.task.to_string(),
                "shard": group[index].id,
                "error": format!("update not collected: {error}"),
            }));
            let mut redone = self
                .execute(TaskId::random(), TaskKind::Gradient, &group[index], &[node])
                .await?;
            redone
                .failed_attempts
                .push(format!("{}: update not collected: {error}", self.name(&node)));
            results[index] = redone;
        }
        Err("the round's updates could not be collected".into())
    }

    /// A connection to a compute node, reused across tasks and collections.
    async fn client_for(&self, node: &NodeId) -> Result<RpcClient, String> {
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

    /// Whether two executions of one task agree: their results' numbers, and their updates
    /// compared chunk by chunk as both stream in. An update that cannot be read counts as a
    /// disagreement (a third execution then decides who was wrong).
    async fn agree(&self, a: &Done, b: &Done) -> bool {
        if !rating::results_agree(&a.result, &b.result) {
            return false;
        }
        let (Some(update_a), Some(update_b)) = (a.result.update, b.result.update) else {
            return a.result.update.is_none() && b.result.update.is_none();
        };
        let (Ok(client_a), Ok(client_b)) = (
            self.client_for(&a.placement.node).await,
            self.client_for(&b.placement.node).await,
        ) else {
            return false;
        };
        let parameters = self.plan.model.parameters();
        match data_plane::updates_agree((&client_a, update_a), (&client_b, update_b), parameters).await {
            Ok(agree) => {
                WireTally::add(&self.wire.compared_bytes, 2 * parameters * 4);
                agree
            }
            Err((side, error)) => {
                let node = if side == 0 {
                    a.placement.node
                } else {
                    b.placement.node
                };
                warn!(node = %self.name(&node), %error, "a spot check could not read an update");
                self.ctx
                    .metrics
                    .tensor_refusals
                    .with_label_values(&[error.reason()])
                    .inc();
                false
            }
        }
    }

    /// Runs one task per shard of `shards` (concurrently), spot-checks them, and re-runs the
    /// results of any node found wrong.
    async fn run_step(
        &mut self,
        round: u32,
        kind: TaskKind,
        shards: &[ShardEntry],
    ) -> Result<Vec<Done>, String> {
        let mut results: Vec<Option<Done>> = vec![None; shards.len()];
        let mut verified: Vec<bool> = vec![false; shards.len()];
        let mut pending: Vec<usize> = (0..shards.len()).collect();
        for _ in 0..MAX_ATTEMPTS {
            let this = &*self;
            let runs = pending.iter().map(|&i| {
                let entry = shards[i].clone();
                async move { (i, this.execute_checked(round, kind, &entry).await) }
            });
            let outcomes = futures::future::join_all(runs).await;
            let mut newly_banned = Vec::new();
            for (i, outcome) in outcomes {
                let checked = outcome?;
                for check in checked.checks {
                    push(&mut self.report["spot_checks"], check);
                }
                for node in checked.confirmed {
                    *self.verified_rows.entry(node).or_insert(0) += checked.done.result.rows;
                    self.grant_ticket(node).await;
                }
                newly_banned.extend(checked.wrong);
                results[i] = Some(checked.done);
                verified[i] = checked.verified;
            }
            for node in &newly_banned {
                self.banned.insert(*node);
                self.ctx.tickets.revoke(node);
            }
            // Unverified results from a node found wrong in this step are re-run elsewhere.
            pending = (0..shards.len())
                .filter(|&i| {
                    !verified[i]
                        && results[i]
                            .as_ref()
                            .is_some_and(|d| self.banned.contains(&d.placement.node))
                })
                .collect();
            if pending.is_empty() {
                break;
            }
        }
        if !pending.is_empty() {
            return Err("results kept coming from nodes found wrong; giving up".into());
        }
        let results: Vec<Done> = results.into_iter().map(|d| d.expect("every shard ran")).collect();
        Ok(results)
    }

    /// Credits and reports a step's accepted tasks (once their updates are in).
    fn record_tasks(&mut self, round: u32, kind: TaskKind, shards: &[ShardEntry], results: &[Done]) {
        for (done, entry) in results.iter().zip(shards) {
            self.account(done, entry);
            let task = self.task_json(round, kind, entry, done);
            push(&mut self.report["tasks"], task);
        }
    }

    /// Credits a task's work: its rows to the compute node, the shard's bytes to the storage
    /// node it came from (unless the compute node had it cached).
    fn account(&mut self, done: &Done, entry: &ShardEntry) {
        *self.compute_rows.entry(done.placement.node).or_insert(0) += done.result.rows;
        if done.result.cache_hits == 0 {
            *self.storage_bytes.entry(done.placement.replica).or_insert(0) += entry.bytes;
        }
    }

    fn task_json(&self, round: u32, kind: TaskKind, entry: &ShardEntry, done: &Done) -> Value {
        let p = &done.placement;
        json!({
            "round": round,
            "kind": if kind == TaskKind::Gradient { "gradient" } else { "evaluate" },
            "task": done.result.task.to_string(),
            "node": self.name(&p.node),
            "node_id": p.node.to_string(),
            "shard": entry.id,
            "storage_node": self.name(&p.replica),
            "rows": done.result.rows,
            "loss": done.result.loss,
            "cached": done.result.cache_hits > 0,
            "weights_fetched_bytes": done.result.weights_fetched_bytes,
            "failed_attempts": done.failed_attempts,
            "fetch_ms": done.result.fetch_micros as f64 / 1000.0,
            "compute_ms": done.result.compute_micros as f64 / 1000.0,
            "cost": {
                "rtt_ms": p.rtt_ms,
                "transfer_secs": p.transfer_secs,
                "queue_secs": p.queue_secs,
                "compute_secs": p.compute_secs,
                "reputation": p.reputation,
                "total": p.cost,
            },
        })
    }

    /// One task, maybe spot-checked: returns the accepted result, whether it was verified by
    /// a re-execution, the spot-check records, and nodes found wrong.
    async fn execute_checked(
        &self,
        round: u32,
        kind: TaskKind,
        entry: &ShardEntry,
    ) -> Result<Checked, String> {
        let task = TaskId::random();
        let original = self.execute(task, kind, entry, &[]).await?;
        let node = original.placement.node;
        let check = kind == TaskKind::Gradient
            && self
                .ctx
                .rater
                .send(ShouldCheck { node })
                .await
                .map_err(|e| e.to_string())?;
        if !check {
            return Ok(Checked::unverified(original));
        }
        let Ok(checker) = self.execute(task, kind, entry, &[node]).await else {
            // No other node could re-run it now: the result stands unverified.
            return Ok(Checked::unverified(original));
        };
        let mut record = json!({
            "round": round,
            "task": task.to_string(),
            "shard": entry.id,
            "original": self.name(&node),
            "checker": self.name(&checker.placement.node),
        });
        if self.agree(&original, &checker).await {
            self.ctx.metrics.spot_checks.with_label_values(&["agreed"]).inc();
            self.rate(node, true).await;
            self.rate(checker.placement.node, true).await;
            record["verdict"] = json!("agreed");
            let confirmed = vec![node, checker.placement.node];
            return Ok(Checked {
                done: original,
                verified: true,
                checks: vec![record],
                wrong: Vec::new(),
                confirmed,
            });
        }
        let third = self
            .execute(task, kind, entry, &[node, checker.placement.node])
            .await
            .ok();
        let third_agreement = match &third {
            Some(third) => Some((
                self.agree(&checker, third).await,
                self.agree(&original, third).await,
            )),
            None => None,
        };
        let verdict = rating::decide(false, third_agreement);
        record["third"] = json!(third.as_ref().map(|d| self.name(&d.placement.node)));
        let (accepted, wrong) = match verdict {
            // Unreachable: the first comparison disagreed.
            Verdict::Agreed => (original.clone(), None),
            Verdict::OriginalWrong => (checker.clone(), Some(node)),
            Verdict::CheckerWrong => (original.clone(), Some(checker.placement.node)),
            Verdict::Undecided => {
                self.ctx
                    .metrics
                    .spot_checks
                    .with_label_values(&["undecided"])
                    .inc();
                record["verdict"] = json!("undecided");
                return Err(format!(
                    "task {task}: three executions disagree; the round cannot be trusted"
                ));
            }
        };
        let verdict = match verdict {
            Verdict::OriginalWrong => "original_wrong",
            Verdict::CheckerWrong => "checker_wrong",
            _ => "agreed",
        };
        self.ctx.metrics.spot_checks.with_label_values(&[verdict]).inc();
        record["verdict"] = json!(verdict);
        let mut banned = Vec::new();
        let confirmed: Vec<NodeId> = [Some(&original), Some(&checker), third.as_ref()]
            .into_iter()
            .flatten()
            .map(|d| d.placement.node)
            .filter(|n| Some(*n) != wrong)
            .collect();
        if let Some(wrong) = wrong {
            self.rate(wrong, false).await;
            for honest in [Some(&original), Some(&checker), third.as_ref()]
                .into_iter()
                .flatten()
            {
                if honest.placement.node != wrong {
                    self.rate(honest.placement.node, true).await;
                }
            }
            self.penalise(
                wrong,
                task,
                "gradient disagreed with two other executions of the same task",
            )
            .await;
            banned.push(wrong);
        }
        Ok(Checked {
            done: accepted,
            verified: true,
            checks: vec![record],
            wrong: banned,
            confirmed,
        })
    }

    async fn rate(&self, node: NodeId, matched: bool) {
        let _ = self.ctx.rater.send(RecordCheck { node, matched }).await;
    }

    async fn penalise(&self, node: NodeId, task: TaskId, reason: &str) {
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

    /// Runs `task` on the best node not excluded (nor banned), retrying elsewhere on failure.
    async fn execute(
        &self,
        task: TaskId,
        kind: TaskKind,
        entry: &ShardEntry,
        exclude: &[NodeId],
    ) -> Result<Done, String> {
        let shard: ShardId = entry
            .id
            .parse()
            .map_err(|_| "a bad shard id in the manifest".to_string())?;
        let replicas = self.replicas();
        if replicas.is_empty() {
            return Err(format!(
                "no storage node reports dataset {} whole",
                self.plan.dataset
            ));
        }
        let mut excluded: Vec<NodeId> = exclude
            .iter()
            .copied()
            .chain(self.banned.iter().copied())
            .collect();
        let flops = entry.rows as f64 * self.plan.model.parameters() as f64 * 6.0;
        let mut failures = Vec::new();
        let mut waited = Duration::ZERO;
        let mut attempts = 0;
        while attempts < MAX_ATTEMPTS {
            let placing = Instant::now();
            let placed = self
                .ctx
                .allocator
                .send(Place {
                    shard_bytes: entry.bytes,
                    flops,
                    memory_bytes: entry.bytes.saturating_mul(4),
                    replicas: replicas.clone(),
                    exclude: excluded.clone(),
                })
                .await
                .map_err(|e| e.to_string())?;
            self.ctx
                .metrics
                .placement_duration
                .observe(placing.elapsed().as_secs_f64());
            let Some(placement) = placed else {
                // Every eligible node may just be busy: wait for a free slot while any could.
                let eligible = self.nodes.iter().any(|n| {
                    n.role == Role::Compute && n.state == NodeState::Up && !excluded.contains(&n.node_id)
                });
                if eligible && waited < SLOT_WAIT {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    waited += Duration::from_millis(20);
                    continue;
                }
                failures.push("no eligible compute node".to_string());
                break;
            };
            attempts += 1;
            let outcome = self.run_on(task, kind, entry, shard, &placement).await;
            self.ctx.allocator.do_send(Finished { node: placement.node });
            let kind_label = match kind {
                TaskKind::Gradient => "gradient",
                TaskKind::Evaluate => "evaluate",
            };
            let result_label = if outcome.is_ok() { "ok" } else { "failed" };
            self.ctx
                .metrics
                .tasks
                .with_label_values(&[kind_label, result_label])
                .inc();
            match outcome {
                Ok(result) => {
                    WireTally::add(&self.wire.fetched_bytes, result.weights_fetched_bytes);
                    return Ok(Done {
                        result,
                        placement,
                        failed_attempts: failures,
                    });
                }
                Err(error) => {
                    warn!(node = %self.name(&placement.node), %task, %error, "task failed; placing it elsewhere");
                    self.failures.lock().expect("failures").push(json!({
                        "node": self.name(&placement.node),
                        "task": task.to_string(),
                        "shard": entry.id,
                        "error": error,
                    }));
                    failures.push(format!("{}: {error}", self.name(&placement.node)));
                    excluded.push(placement.node);
                }
            }
        }
        Err(format!("task on shard {}: {}", entry.id, failures.join("; ")))
    }

    async fn run_on(
        &self,
        task: TaskId,
        kind: TaskKind,
        entry: &ShardEntry,
        shard: ShardId,
        placement: &Placement<NodeId>,
    ) -> Result<TaskResult, String> {
        let storage = self.node(&placement.replica).ok_or("the storage node left")?;
        let stored = self.stored.as_ref().ok_or("the round's weights are not stored")?;
        let expires_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
            + self.ctx.task_timeout.as_millis() as u64
            + 60_000;
        let ticket_for = |dataset: String| {
            ShardTicket {
                job: self.plan.request.job,
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
            storage: holders
                .into_iter()
                .filter_map(|id| self.node(id).map(|n| n.quic_addr.clone()))
                .collect(),
            ticket: ticket_for(stored.weights.ticket_name()),
        };
        let spec = TaskSpec {
            job: self.plan.request.job,
            task,
            round: self.round,
            kind,
            model: self.plan.model,
            weights,
            training: LocalTraining {
                steps: self.plan.request.local_steps,
                optimizer: self.plan.request.inner_optimizer,
                learning_rate: self.plan.request.learning_rate_milli as f32 / 1000.0,
            },
            label: self.plan.manifest.label.clone(),
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
        // A node the registry marks down is given up on at once, not at the transport's timeout.
        let marked_down = async {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
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
        let PeerResponse::TaskDone(result) = answer else {
            return Err("unexpected answer to a task".into());
        };
        // Rejected outright: a digest that does not match, the wrong task, shape or rows.
        if result.task != task || !result.digest_matches() {
            return Err("the result's digest does not match its numbers".into());
        }
        let (expected_update, expected_values) = match kind {
            TaskKind::Gradient => (Some(self.plan.model.parameters()), 0),
            // A regression's evaluation answers Σy and Σy² of its targets, for R².
            TaskKind::Evaluate if self.plan.model.is_regression() => (None, 2),
            TaskKind::Evaluate => (None, 0),
        };
        if result.update.map(|u| u.elements) != expected_update
            || result.values.len() != expected_values
            || result.rows != entry.rows
            || !result.loss.is_finite()
            || result.values.iter().any(|v| !v.is_finite())
        {
            return Err(format!(
                "the result has the wrong shape (an update of {:?} values, {} values, {} rows; \
                 expected {expected_update:?}, {expected_values} and {})",
                result.update.map(|u| u.elements),
                result.values.len(),
                result.rows,
                entry.rows
            ));
        }
        Ok(*result)
    }

    /// Pays the work done from the escrow, refunds the rest, slashes confirmed cheaters, and
    /// mints the trained model when the job completed.
    async fn settle(&mut self, completed: bool) -> Result<(), String> {
        let system = self.ctx.system.clone().ok_or("no system key")?;
        let addresses = self.payout_addresses();
        let address = |node: &NodeId| addresses.get(node).copied();
        let work = self.work_done(&addresses, completed);
        let job = self.plan.request.job;
        let payroll = self.ctx.payroll.clone().ok_or("no system key")?;
        let settlement = payroll
            .send(Release {
                job,
                budget: self.plan.budget,
                work,
            })
            .await
            .map_err(|e| e.to_string())??;
        let role_of = |to: &Address, kind: PayoutKind| -> String {
            let who = self
                .nodes
                .iter()
                .find(|n| n.payout_address.parse::<Address>().ok().as_ref() == Some(to))
                .map(|n| n.name.clone());
            match kind {
                PayoutKind::Compute => format!("compute ({})", who.unwrap_or_default()),
                PayoutKind::Storage => format!("storage ({})", who.unwrap_or_default()),
                PayoutKind::DatasetFee => "dataset owner".into(),
                PayoutKind::ModelFee => "model owner".into(),
            }
        };
        let payments: Vec<Value> = settlement
            .payouts
            .iter()
            .map(|p| json!({"to": p.to.to_string(), "role": role_of(&p.to, p.kind), "amount": p.amount.to_string()}))
            .collect();
        self.report["payments"] = json!(payments);
        self.report["platform_fee_burned"] = json!(settlement.platform_fee.to_string());
        self.report["refund"] = json!(settlement.refund.to_string());

        // Slash each node confirmed wrong in this job, as far as its stake allows.
        for node in self.banned.clone() {
            let Some(account) = address(&node) else { continue };
            let stake = match self.ctx.ledger.execute(LedgerRequest::Account(account)).await {
                Ok(LedgerResponse::Account(view)) => view.account.stake,
                _ => Amount::ZERO,
            };
            let amount = stake.min(self.ctx.slash);
            if amount.is_zero() {
                continue;
            }
            let reason = format!("job {job}: confirmed wrong result");
            match system
                .submit(
                    &self.ctx.ledger,
                    Call::Slash {
                        account,
                        amount,
                        reason,
                    },
                )
                .await
            {
                Ok(_) => {
                    let slashed = json!({"node": self.name(&node), "slashed": amount.to_string()});
                    push(&mut self.report["penalties"], slashed);
                }
                Err(error) => warn!(node = %self.name(&node), %error, "slash refused"),
            }
        }
        let (_, penalties) = self
            .ctx
            .rater
            .send(crate::rater::Records)
            .await
            .map_err(|e| e.to_string())?;
        let mine: Vec<&Penalty> = penalties.iter().filter(|p| p.job == job.to_string()).collect();
        self.report["penalties"] = json!({
            "records": mine,
            "slashed": self.report["penalties"].clone(),
        });

        self.reward(&addresses).await;

        if completed {
            // The asset names the weights tensor the last checkpoint stored: its content hash is
            // the tensor's, its manifest says where the tensor is held.
            let stored = self
                .stored
                .clone()
                .ok_or("the trained weights were never stored")?;
            let holders: Vec<Value> = stored
                .holders
                .iter()
                .map(|id| {
                    json!({
                        "node": id.to_string(),
                        "quic_addr": self.node(id).map(|n| n.quic_addr.clone()).unwrap_or_default(),
                    })
                })
                .collect();
            let content_hash = stored.weights.hash;
            let manifest = json!({
                "model": self.plan.model,
                "dataset_asset": self.plan.request.dataset_asset.to_string(),
                "model_asset": self.plan.request.model_asset.to_string(),
                "job": job.to_string(),
                "accuracy": self.report["accuracy"],
                "r2": self.report["r2"],
                "weights": {
                    "tensor": stored.weights.hex(),
                    "elements": stored.weights.elements,
                    "holders": holders,
                },
            });
            let events = system
                .submit(
                    &self.ctx.ledger,
                    Call::MintTrainedModel {
                        job,
                        metadata: AssetMetadata {
                            name: format!("trained on {}", self.plan.manifest.name),
                            content_hash,
                            manifest: manifest.to_string(),
                            usage_fee: Amount::ZERO,
                        },
                    },
                )
                .await?;
            if let Some(asset) = aic_ledger::state::Event::minted_asset(&events) {
                self.report["trained_model"] = json!(asset.to_string());
                self.report["trained_model_weights"] = json!(stored.weights.hex());
            }
        }
        Ok(())
    }
}

impl Run {
    /// A node whose work was confirmed holds a lottery ticket for this job's session: it signs
    /// the ticket once; the block lottery draws it without asking again.
    async fn grant_ticket(&self, node: NodeId) {
        let session = self.plan.request.job;
        if self.banned.contains(&node) || self.ctx.tickets.holds(&session, &node) {
            return;
        }
        let Some(status) = self.node(&node) else { return };
        let cached = self.clients.lock().expect("clients").get(&node).cloned();
        let client = match cached {
            Some(client) => client,
            None => match tokio::time::timeout(
                DIAL_TIMEOUT,
                RpcClient::connect(&self.ctx.endpoint, &status.quic_addr, Role::Compute),
            )
            .await
            {
                Ok(Ok(client)) => client,
                _ => return,
            },
        };
        let signed = client.call(&PeerRequest::SignTicket { session }).await;
        let Ok(PeerResponse::TicketSigned { signature }) = signed else {
            warn!(node = %self.name(&node), "no ticket signature; the node holds no ticket");
            return;
        };
        let Ok(ticket) = <[u8; 64]>::try_from(signature) else {
            return;
        };
        let holder = crate::lottery::Holder {
            addr: status.quic_addr.clone(),
            public_key: client.peer().public_key,
            ticket,
        };
        if let Err(error) = self.ctx.tickets.grant(session, node, holder) {
            warn!(node = %self.name(&node), %error, "ticket refused");
        }
    }

    /// Proof-of-Value rewards from the reserve for verified work, within what issuance allows
    /// now; a provider paid by the job's own submitter earns none (no self-dealing).
    /// Accrues the job's Proof-of-Value rewards on the ledger: each verified provider's rows at
    /// the configured rate, none to a node the submitter owns. The block generator issues them
    /// at the next reward epoch, within the issuance cap.
    async fn reward(&mut self, addresses: &HashMap<NodeId, Address>) {
        let mut report = Vec::new();
        let mut accrued = Vec::new();
        for (node, rows) in self.verified_rows.clone() {
            if self.banned.contains(&node) {
                continue;
            }
            let Some(to) = addresses.get(&node).copied() else {
                continue;
            };
            match payroll::pov_reward(self.ctx.reward_per_million_rows, rows, &to, &self.plan.payer) {
                Some(amount) => {
                    report.push(json!({"node": self.name(&node), "to": to.to_string(), "verified_rows": rows, "amount": amount.to_string(), "paid": "at the next reward epoch"}));
                    accrued.push((to, amount));
                }
                None if to == self.plan.payer => {
                    report.push(json!({"node": self.name(&node), "amount": "0", "why": "the submitter's own node earns no reward"}));
                }
                None => {}
            }
        }
        let accrue = Accrue {
            job: self.plan.request.job,
            rewards: accrued,
        };
        let outcome = match &self.ctx.payroll {
            Some(payroll) => payroll
                .send(accrue)
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r),
            None => Err("no system key".into()),
        };
        if let Err(error) = outcome {
            warn!(%error, "rewards not accrued");
            self.report["rewards_error"] = json!(error);
        }
        self.report["rewards"] = json!(report);
    }
}

fn push(array: &mut Value, item: Value) {
    if let Some(items) = array.as_array_mut() {
        items.push(item);
    }
}
