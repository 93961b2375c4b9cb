//! Admission: a job request checked against the ledger (the assets exist and fit each other),
//! priced, fitted to the live compute nodes' device memory, its escrow checked, recorded on the
//! ledger, and started. Everything refused here is refused before any escrow is touched.

use aic_ledger::api::{LedgerRequest, LedgerResponse};
use aic_ledger::raft::replica::LedgerReplica;
use aic_ledger::tx::{AssetKind, Call};
use aic_ledger::{Address, Amount};
use aic_protocol::manifest::{Manifest, ShardEntry};
use aic_protocol::messages::{
    InnerOptimizer, JobRequest, ModelShape, NodeState, NodeStatus, TaskModel, MAX_LOCAL_STEPS,
};
use aic_protocol::{AssetId, ErrorCode, NodeId, Role, RpcError};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::board::{JobState, Open, Update};
use super::JobContext;
use crate::registry::ListNodes;

/// A job's inputs, resolved from the ledger.
pub struct Plan {
    pub request: JobRequest,
    pub payer: Address,
    pub budget: Amount,
    /// The dataset's id, as storage nodes report their holdings.
    pub dataset: String,
    pub manifest: Manifest,
    pub dataset_owner: Address,
    pub dataset_fee: Amount,
    /// What tasks train: a fixed shape or a layer graph.
    pub model: TaskModel,
    /// The same model, runnable: its parameters, initial weights, memory per row.
    pub trainable: aic_kernels::Trainable,
    pub model_owner: Address,
    pub model_fee: Amount,
}

pub(super) fn refuse(code: ErrorCode, message: impl Into<String>) -> RpcError {
    RpcError::new(code, message.into())
}

pub(super) async fn read(ledger: &LedgerReplica, request: LedgerRequest) -> Result<LedgerResponse, RpcError> {
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
pub(super) async fn resolve(ledger: &LedgerReplica, request: &JobRequest) -> Result<Plan, RpcError> {
    if request.epochs == 0 || request.epochs > 1000 {
        return Err(refuse(ErrorCode::InvalidArgument, "epochs must be 1 to 1000"));
    }
    if request.learning_rate_milli == 0 || request.learning_rate_milli > 100_000 {
        return Err(refuse(
            ErrorCode::InvalidArgument,
            "the learning rate must be in (0, 100]",
        ));
    }
    if request.weight_decay_micro > 1_000_000 {
        return Err(refuse(
            ErrorCode::InvalidArgument,
            "the weight decay must be in [0, 1]",
        ));
    }
    match request.schedule {
        aic_protocol::messages::LrSchedule::Step {
            every_rounds,
            factor_milli,
        } if every_rounds == 0 || factor_milli == 0 || factor_milli > 1000 => {
            return Err(refuse(
                ErrorCode::InvalidArgument,
                "a step schedule decays every 1 or more rounds by a factor in (0, 1]",
            ))
        }
        _ => {}
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
    if request.batch_size > aic_protocol::messages::MAX_BATCH_SIZE {
        return Err(refuse(
            ErrorCode::InvalidArgument,
            format!(
                "a batch size of {} rows; at most {}",
                request.batch_size,
                aic_protocol::messages::MAX_BATCH_SIZE
            ),
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
    let graph = aic_protocol::model_graph::of_manifest(&model.metadata.manifest).map_err(|e| {
        refuse(
            ErrorCode::InvalidArgument,
            format!("the model's manifest is not a usable description: {e}"),
        )
    })?;
    // An image model reads the dataset's columns as the images they were imported as.
    if let (aic_protocol::model_graph::InputView::Image(view), Some(imported)) =
        (graph.input, manifest.image_shape)
    {
        if view != imported {
            return Err(refuse(
                ErrorCode::InvalidArgument,
                format!(
                    "the model reads {}×{}×{} images; the dataset was imported as {}×{}×{}",
                    view[0], view[1], view[2], imported[0], imported[1], imported[2]
                ),
            ));
        }
    }
    // The model's input is the dataset's encoded width (one-hot categories take a column each);
    // a numeric target needs a regression, classes a classifier with as many outputs.
    let input_width = manifest.input_width();
    let model_to_train = match graph.as_shape() {
        // A fixed shape runs on the backends' fused kernels.
        Some(shape) => {
            check_shape_fits(&shape, &manifest)?;
            TaskModel::Shape(shape)
        }
        // Any other graph runs layer by layer.
        None => {
            let classes = manifest.target.is_none().then_some(manifest.classes.len());
            graph.check_dataset(input_width, classes).map_err(|e| {
                refuse(
                    ErrorCode::InvalidArgument,
                    format!("the model does not fit the dataset: {e}"),
                )
            })?;
            TaskModel::Graph(String::from_utf8(graph.canonical_bytes()).expect("canonical JSON is UTF-8"))
        }
    };
    let trainable = aic_kernels::Trainable::of(&model_to_train).map_err(|e| {
        refuse(
            ErrorCode::InvalidArgument,
            format!("the model cannot be built: {e}"),
        )
    })?;
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
        model: model_to_train,
        trainable,
        model_owner: model.owner,
        model_fee: model.metadata.usage_fee,
    })
}

impl Plan {
    /// The model's weights and biases in all.
    pub fn parameters(&self) -> u64 {
        self.trainable.parameters() as u64
    }

    /// The model as the report and the TrainedModel manifest show it: a fixed shape as itself,
    /// a graph by its name and size.
    pub fn model_json(&self) -> serde_json::Value {
        match &self.model {
            TaskModel::Shape(shape) => json!(shape),
            TaskModel::Graph(text) => {
                let graph: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
                json!({"graph": graph, "parameters": self.parameters()})
            }
        }
    }
}

/// A fixed shape against the dataset: its features the dataset's encoded width, and a numeric
/// target for a regression or as many classes as the classifier has outputs.
fn check_shape_fits(shape: &ModelShape, manifest: &Manifest) -> Result<(), RpcError> {
    let input_width = manifest.input_width();
    let fits = match (&manifest.target, shape.is_regression()) {
        (Some(_), true) => u64::from(shape.features()) == input_width,
        (None, false) => {
            u64::from(shape.features()) == input_width && shape.classes() as usize == manifest.classes.len()
        }
        _ => false,
    };
    if fits {
        return Ok(());
    }
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
    Err(refuse(
        ErrorCode::InvalidArgument,
        format!(
            "{model}; the dataset has {dataset} \
             (aic model register --for-dataset ASSET takes them from the dataset)"
        ),
    ))
}

fn fees(plan: &Plan) -> Result<Amount, RpcError> {
    plan.dataset_fee
        .checked_add(plan.model_fee)
        .map_err(|_| refuse(ErrorCode::InvalidArgument, "fees overflow"))
}

/// Device memory one task of `plan` needs: the weights, a copy for the update, the gradient
/// and its double-precision sum, the inner optimizer's two moments when it is Adam, and the
/// largest shard decoded with the activations of one pass over it.
pub fn task_memory_bytes(model: &aic_kernels::Trainable, inner: InnerOptimizer, manifest: &Manifest) -> u64 {
    let parameter_copies: u64 = match inner {
        InnerOptimizer::Sgd => 5,
        InnerOptimizer::Momentum => 6,
        InnerOptimizer::Adam | InnerOptimizer::AdamW => 7,
    };
    let largest = manifest
        .shards()
        .map(|e| (e.rows, e.bytes))
        .max_by_key(|(_, b)| *b);
    let (rows, bytes) = largest.unwrap_or((0, 0));
    // A pass holds the activations of at most the kernels' rows per pass (a larger shard is cut).
    let pass_rows = rows.min(model.rows_per_pass() as u64);
    let activations = pass_rows.saturating_mul(model.activation_bytes_per_row());
    (model.parameters() as u64)
        .saturating_mul(4 * parameter_copies)
        .saturating_add(bytes.saturating_mul(4))
        .saturating_add(activations)
}

/// Refuses a job whose tasks fit no live compute node's device memory, saying what is short.
fn check_fits(plan: &Plan, nodes: &[NodeStatus]) -> Result<(), RpcError> {
    let needed = task_memory_bytes(&plan.trainable, plan.request.inner_optimizer, &plan.manifest);
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
                plan.parameters(),
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
    let rounds = request.epochs.saturating_mul(super::engine::rounds_per_epoch(
        ctx.steps_per_epoch,
        plan.manifest.train.len(),
    ));
    let evaluations = request.evaluations(rounds);
    let test_rows = rows(&plan.manifest.test)
        .checked_mul(u64::from(evaluations))
        .ok_or_else(|| refuse(ErrorCode::InvalidArgument, "the quote overflows"))?;
    let amount = ctx
        .pricing
        .quote(
            fees,
            rows(&plan.manifest.train),
            test_rows,
            request.epochs,
            bytes,
            compute,
        )
        .ok_or_else(|| refuse(ErrorCode::InvalidArgument, "the quote overflows"))?;
    let detail = format!(
        "usage fees {fees} AIC; {} training rows × {} epochs (spot checks counted at the new-node rate) and \
         {} held-out rows × {evaluations} evaluations at {} AIC per million rows; {bytes} bytes to up to \
         {compute} compute nodes at {} AIC per GB; platform fee {} %",
        rows(&plan.manifest.train),
        request.epochs,
        rows(&plan.manifest.test),
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
        dataset: request.dataset_asset,
        model: request.model_asset,
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
    let effects = super::runner::Effects::new(ctx.clone(), plan);
    super::runner::launch(ctx.clone(), effects, cancel, None, None);
    Ok(())
}

/// What a job record on the ledger holds: the request and who submitted it.
#[derive(Serialize, Deserialize)]
pub struct RecordedJob {
    pub request: JobRequest,
    pub submitter: NodeId,
}
