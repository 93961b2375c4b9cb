//! `aic model register|show` and `aic job submit|status|result|cancel`: a model asset (a layer
//! graph), and a training job paid from an escrow the submitter opens.

use std::path::PathBuf;
use std::time::Duration;

use aic_ledger::api::{LedgerRequest, LedgerResponse};
use aic_ledger::tx::{AssetKind, AssetMetadata, Call};
use aic_ledger::{Amount, Keypair};
use aic_protocol::messages::{
    ClientRequest, ClientResponse, JobRequest, LrSchedule, ModelShape, Verification,
};
use aic_protocol::model_graph::{self, ModelGraph};
use aic_protocol::rpc::RpcClient;
use aic_protocol::{AssetId, JobId};
use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crate::ledger_client::{self, load_wallet, wallet_path};
use crate::nodes::{self, ClientArgs, ClientProfile};
use crate::wallet::print_out;

#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    #[command(subcommand)]
    pub command: ModelCommand,
    #[arg(long, global = true)]
    pub wallet: Option<PathBuf>,
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ModelKindArg {
    /// Softmax regression: classes from features.
    Softmax,
    /// One hidden ReLU layer, then softmax.
    Mlp,
    /// Linear regression on mean squared error: a number from features (`--features` only).
    Linear,
}

#[derive(Subcommand, Clone, Debug)]
pub enum ModelCommand {
    /// Mint a Model asset: an architecture others may train, for a fee per job. Either a layer
    /// graph you describe (`--spec model.toml`, see examples/models/) or one of the fixed kinds.
    Register {
        /// A model description (TOML or JSON): validated, its summary printed, then minted.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["kind", "features", "classes", "hidden"])]
        spec: Option<PathBuf>,
        /// The asset's name (default: the description's name).
        #[arg(long, required_unless_present = "spec")]
        name: Option<String>,
        #[arg(long, value_enum, required_unless_present = "spec")]
        kind: Option<ModelKindArg>,
        /// Model inputs (a dataset's encoded input width).
        #[arg(long, required_unless_present_any = ["for_dataset", "spec"])]
        features: Option<u32>,
        /// Classes (classifiers only).
        #[arg(long)]
        classes: Option<u32>,
        /// Take the features (the dataset's input width) and classes from a Dataset asset; with
        /// --spec, check the description fits it.
        #[arg(long, value_name = "ASSET", conflicts_with_all = ["features", "classes"])]
        for_dataset: Option<AssetId>,
        /// Hidden units (MLP only).
        #[arg(long)]
        hidden: Option<u32>,
        /// AIC paid to you each time a job uses the model.
        #[arg(long, default_value = "0")]
        fee: Amount,
    },
    /// Print a model's layers, output shapes and parameter counts: a Model asset's, or a
    /// description's before it is minted.
    Show {
        #[arg(required_unless_present = "spec", conflicts_with = "spec")]
        asset: Option<AssetId>,
        #[arg(long, value_name = "FILE")]
        spec: Option<PathBuf>,
    },
    /// Take a TrainedModel out (its owner only): an ONNX file any runtime reads, taking the raw
    /// columns the dataset was imported with (preprocessing folded in), or the weights as Parquet.
    Export {
        asset: AssetId,
        /// onnx: one file, `--out model.onnx`; parquet: `weights.parquet` and `model.json` in
        /// the `--out` directory.
        #[arg(long, value_enum, default_value = "onnx")]
        format: crate::model_use::ExportFormat,
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
        /// Read the weights from this storage node (default: those the asset names).
        #[arg(long)]
        storage: Option<String>,
    },
    /// Answer raw rows with a TrainedModel, on this machine (its owner only): a CSV or Parquet
    /// file with the columns the dataset was imported with; class and probabilities, or a value
    /// in the target's units, per row.
    Predict {
        asset: AssetId,
        #[arg(long, value_name = "FILE")]
        input: PathBuf,
        /// Most rows read from the file.
        #[arg(long, default_value = "100000")]
        limit: usize,
        #[arg(long)]
        storage: Option<String>,
    },
    /// Offer a TrainedModel you own for inference through the grid's gateways: callers pay you
    /// this price per 1,000 rows (besides compute and the platform fee).
    Publish {
        asset: AssetId,
        #[arg(long, value_name = "AIC")]
        price_per_1k_rows: Amount,
        /// The name calls use (`POST /v2/models/ALIAS/infer`); the asset id otherwise.
        #[arg(long)]
        alias: Option<String>,
    },
    /// Stop offering a TrainedModel for inference.
    Unpublish { asset: AssetId },
}

#[derive(Args, Clone, Debug)]
pub struct JobArgs {
    #[command(subcommand)]
    pub command: JobCommand,
    #[arg(long, global = true)]
    pub wallet: Option<PathBuf>,
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Clone, Debug)]
pub enum JobCommand {
    /// Train MODEL on DATASET: quote, open the escrow, start, and follow it to the end.
    Submit(SubmitArgs),
    /// A job's state and progress.
    Status { job: JobId },
    /// A finished job's report: accuracy, tasks and their cost terms, checks, payments.
    Result { job: JobId },
    /// Stop a job: the work done is paid, the rest refunded.
    Cancel { job: JobId },
}

#[derive(Args, Clone, Debug)]
pub struct SubmitArgs {
    #[arg(long)]
    pub dataset: AssetId,
    #[arg(long)]
    pub model: AssetId,
    /// Epochs (default: the model description's, else 20).
    #[arg(long)]
    pub epochs: Option<u32>,
    /// The most you will pay, in AIC: it goes into escrow; what is not spent comes back.
    #[arg(long)]
    pub budget: Amount,
    /// The local (inner) optimizer's learning rate (default: the description's, else 0.5).
    #[arg(long)]
    pub learning_rate: Option<f64>,
    /// Local steps each task takes on its shard before answering a weight update (H). More
    /// steps send the same bytes per round for H times the work: what makes slow links usable.
    /// Default: the description's, else 1.
    #[arg(long)]
    pub local_steps: Option<u32>,
    /// Seeds the initial weights, dropout and minibatches: the same job with the same seed
    /// trains the same weights (default: drawn from the job id).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Evaluate on the held-out split every N rounds while training, for the accuracy curve
    /// (each evaluation is quoted and paid; 0: only after the last round).
    #[arg(long = "evaluate-every", value_name = "ROUNDS", default_value_t = 0)]
    pub evaluate_every: u32,
    /// Rows per local step: each step takes the next minibatch of a seeded shuffle of the
    /// task's rows (default: the description's, else all of them every step).
    #[arg(long)]
    pub batch_size: Option<u32>,
    /// The local optimizer (default: the description's, else sgd).
    #[arg(long, value_enum)]
    pub inner_optimizer: Option<InnerOptimizerArg>,
    /// Weight decay of the local optimizer: L2 for sgd and momentum, decoupled for adamw
    /// (default: the description's, else 0).
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// How the local learning rate changes over the rounds (default: the description's, else
    /// constant).
    #[arg(long, value_enum)]
    pub schedule: Option<ScheduleArg>,
    /// Cosine schedule: rounds of linear warm-up first.
    #[arg(long, default_value_t = 0)]
    pub warmup_rounds: u32,
    /// Step schedule: decay every this many rounds …
    #[arg(long, default_value_t = 10)]
    pub step_every: u32,
    /// … by this factor.
    #[arg(long, default_value_t = 0.5)]
    pub step_factor: f64,
    /// How the round's mean update is applied to the weights.
    #[arg(long, value_enum, default_value_t = OuterOptimizerArg::Sgd)]
    pub outer_optimizer: OuterOptimizerArg,
    /// The outer optimizer's learning rate (1 with outer SGD applies the mean update as is).
    #[arg(long, default_value_t = 1.0)]
    pub outer_lr: f64,
    /// Which results are re-executed on an independent node before they enter the weights:
    /// `sampled` at each node's rate from its record (a node found wrong rewinds the job), or
    /// `every` one (no unconfirmed result in the model; twice the compute).
    #[arg(long = "verify", value_enum, default_value_t = VerifyArg::Sampled)]
    pub verification: VerifyArg,
    /// Return once the job runs instead of following it.
    #[arg(long)]
    pub detach: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum VerifyArg {
    Sampled,
    Every,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum InnerOptimizerArg {
    Sgd,
    Momentum,
    Adam,
    Adamw,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ScheduleArg {
    Constant,
    Step,
    Cosine,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OuterOptimizerArg {
    Sgd,
    Nesterov,
}

impl SubmitArgs {
    /// Plain synchronous SGD: one local step, SGD inside and out.
    pub fn synchronous(
        dataset: AssetId,
        model: AssetId,
        epochs: u32,
        budget: Amount,
        learning_rate: f64,
    ) -> Self {
        SubmitArgs {
            dataset,
            model,
            epochs: Some(epochs),
            budget,
            learning_rate: Some(learning_rate),
            local_steps: Some(1),
            inner_optimizer: Some(InnerOptimizerArg::Sgd),
            weight_decay: None,
            batch_size: None,
            seed: None,
            evaluate_every: 0,
            schedule: None,
            warmup_rounds: 0,
            step_every: 10,
            step_factor: 0.5,
            outer_optimizer: OuterOptimizerArg::Sgd,
            outer_lr: 1.0,
            verification: VerifyArg::Sampled,
            detach: true,
        }
    }
}

pub async fn run_model(args: ModelArgs) -> anyhow::Result<()> {
    match &args.command {
        ModelCommand::Register {
            spec: Some(path),
            name,
            for_dataset,
            fee,
            ..
        } => register_spec(&args, path, name.as_deref(), for_dataset.as_ref(), *fee).await,
        ModelCommand::Register { .. } => register_kind(&args).await,
        ModelCommand::Show { asset, spec } => show_model(&args, asset.as_ref(), spec.as_deref()).await,
        ModelCommand::Export {
            asset,
            format,
            out,
            storage,
        } => crate::model_use::export(&args, asset, *format, out, storage.as_deref()).await,
        ModelCommand::Predict {
            asset,
            input,
            limit,
            storage,
        } => crate::model_use::predict(&args, asset, input, *limit, storage.as_deref()).await,
        ModelCommand::Publish {
            asset,
            price_per_1k_rows,
            alias,
        } => crate::gateway::publish(&args, asset, *price_per_1k_rows, alias.as_deref()).await,
        ModelCommand::Unpublish { asset } => crate::gateway::unpublish(&args, asset).await,
    }
}

/// Reads and validates a description file.
fn read_spec(path: &std::path::Path) -> anyhow::Result<ModelGraph> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.len() > aic_protocol::model_graph::MAX_SPEC_BYTES as u64 {
        bail!(
            "{}: {} bytes; a model description is at most {} bytes",
            path.display(),
            meta.len(),
            aic_protocol::model_graph::MAX_SPEC_BYTES
        );
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    model_graph::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

async fn register_spec(
    args: &ModelArgs,
    path: &std::path::Path,
    name: Option<&str>,
    for_dataset: Option<&AssetId>,
    fee: Amount,
) -> anyhow::Result<()> {
    let graph = read_spec(path)?;
    let summary = graph.render_summary()?;
    let profile = args.client.load()?;
    if let Some(asset) = for_dataset {
        let (features, classes, target) = dataset_dimensions(&profile, asset).await?;
        let classes = (!target).then_some(classes as usize);
        graph
            .check_dataset(u64::from(features), classes)
            .map_err(|e| anyhow::anyhow!("the description does not fit dataset {asset}: {e}"))?;
    }
    let key = load_wallet(&wallet_path(args.wallet.as_ref()))?;
    let name = name.unwrap_or(&graph.name).to_string();
    let asset = register_graph(&profile, &key, &name, &graph, fee).await?;
    print_out(
        args.json,
        json!({
            "asset": asset.to_string(),
            "parameters": graph.parameters()?,
            "graph": graph,
        }),
        || format!("{summary}model {name} registered as asset {asset}"),
    );
    Ok(())
}

async fn register_kind(args: &ModelArgs) -> anyhow::Result<()> {
    let ModelCommand::Register {
        name: Some(name),
        kind: Some(kind),
        features,
        classes,
        for_dataset,
        hidden,
        fee,
        ..
    } = &args.command
    else {
        bail!("aic model register needs --spec FILE, or --name and --kind");
    };
    let profile = args.client.load()?;
    let regression = matches!(kind, ModelKindArg::Linear);
    let (features, classes) = match for_dataset {
        Some(asset) => {
            let (features, classes, target) = dataset_dimensions(&profile, asset).await?;
            if target != regression {
                bail!(
                    "dataset {asset} has {}: a {} model does not fit it",
                    if target { "a numeric target" } else { "classes" },
                    if regression {
                        "regression"
                    } else {
                        "classification"
                    }
                );
            }
            (features, classes)
        }
        None => {
            let features = features.expect("required without --for-dataset");
            let classes = match (classes, regression) {
                (Some(_), true) => bail!("a linear regression predicts a number: it takes no --classes"),
                (None, true) => 0,
                (Some(classes), false) => *classes,
                (None, false) => bail!("--classes is needed for a classifier (or --for-dataset ASSET)"),
            };
            (features, classes)
        }
    };
    let shape = match kind {
        ModelKindArg::Softmax => ModelShape::SoftmaxRegression { features, classes },
        ModelKindArg::Mlp => ModelShape::Mlp {
            features,
            hidden: hidden.unwrap_or(64),
            classes,
        },
        ModelKindArg::Linear => ModelShape::LinearRegression { features },
    };
    let key = load_wallet(&wallet_path(args.wallet.as_ref()))?;
    let asset = register_model(&profile, &key, name, shape, *fee).await?;
    print_out(
        args.json,
        json!({"asset": asset.to_string(), "model": shape}),
        || format!("model {name} registered as asset {asset}"),
    );
    Ok(())
}

async fn show_model(
    args: &ModelArgs,
    asset: Option<&AssetId>,
    spec: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let graph = match (asset, spec) {
        (_, Some(path)) => read_spec(path)?,
        (Some(asset), None) => {
            let profile = args.client.load()?;
            let scheduler = nodes::connect(&profile).await?;
            let found = fetch_asset(&scheduler, asset, AssetKind::Model).await?;
            let mut graph = model_graph::of_manifest(&found.metadata.manifest)
                .map_err(|e| anyhow::anyhow!("asset {asset}'s description: {e}"))?;
            graph.name = found.metadata.name;
            graph
        }
        (None, None) => bail!("aic model show needs an ASSET or --spec FILE"),
    };
    let summary = graph.render_summary()?;
    let rows: Vec<Value> = graph
        .summary()?
        .iter()
        .map(|r| json!({"name": r.name, "kind": r.kind, "output": r.output.to_string(), "parameters": r.parameters}))
        .collect();
    print_out(
        args.json,
        json!({"name": graph.name, "layers": rows, "parameters": graph.parameters()?}),
        || summary.trim_end().to_string(),
    );
    Ok(())
}

/// An asset from the ledger, refused unless it is of `kind`.
pub(crate) async fn fetch_asset(
    scheduler: &RpcClient,
    asset: &AssetId,
    kind: AssetKind,
) -> anyhow::Result<aic_ledger::state::Asset> {
    let LedgerResponse::Asset(Some(found)) =
        ledger_client::request(scheduler, &LedgerRequest::Asset(*asset)).await?
    else {
        bail!("no asset {asset} on the ledger");
    };
    if found.kind != kind {
        bail!("asset {asset} is a {:?}, not a {kind:?}", found.kind);
    }
    Ok(found)
}

/// The training defaults a Model asset's description carries (none for a fixed shape).
async fn model_training_defaults(
    scheduler: &RpcClient,
    asset: &AssetId,
) -> anyhow::Result<aic_protocol::model_graph::TrainingDefaults> {
    let found = fetch_asset(scheduler, asset, AssetKind::Model).await?;
    let graph = model_graph::of_manifest(&found.metadata.manifest)
        .map_err(|e| anyhow::anyhow!("asset {asset}'s description: {e}"))?;
    Ok(graph.training)
}

/// A Dataset asset's model input width, class count, and whether its label is a numeric target,
/// from its published manifest.
async fn dataset_dimensions(profile: &ClientProfile, asset: &AssetId) -> anyhow::Result<(u32, u32, bool)> {
    let scheduler = nodes::connect(profile).await?;
    let found = fetch_asset(&scheduler, asset, AssetKind::Dataset).await?;
    let manifest = aic_storage_node::manifest::Manifest::from_json(&found.metadata.manifest)
        .map_err(|e| anyhow::anyhow!("the dataset's manifest: {e}"))?;
    Ok((
        u32::try_from(manifest.input_width())?,
        u32::try_from(manifest.classes.len())?,
        manifest.target.is_some(),
    ))
}

/// Mints a Model asset of one of the fixed shapes: an ordinary description of it.
pub async fn register_model(
    profile: &ClientProfile,
    key: &Keypair,
    name: &str,
    shape: ModelShape,
    fee: Amount,
) -> anyhow::Result<AssetId> {
    if shape.features() == 0 || (!shape.is_regression() && shape.classes() < 2) {
        bail!("a model needs at least one feature, and a classifier two classes");
    }
    let graph = ModelGraph::of_shape(name, shape);
    graph.summary()?;
    register_graph(profile, key, name, &graph, fee).await
}

/// Mints a Model asset whose manifest is the description's canonical form and whose content
/// hash is that form's hash.
pub async fn register_graph(
    profile: &ClientProfile,
    key: &Keypair,
    name: &str,
    graph: &ModelGraph,
    fee: Amount,
) -> anyhow::Result<AssetId> {
    let scheduler = nodes::connect(profile).await?;
    let manifest = String::from_utf8(graph.canonical_bytes())?;
    let call = Call::MintAsset {
        kind: AssetKind::Model,
        metadata: AssetMetadata {
            name: name.to_string(),
            content_hash: graph.content_hash(),
            manifest,
            usage_fee: fee,
        },
    };
    let events = match ledger_client::submit(&scheduler, key, call).await {
        Ok((_, _, events)) => events,
        Err(error) => {
            // A description is registered once: registering your own again names the asset
            // you already hold; someone else's is refused.
            if let Some(aic_ledger::TxError::AlreadyMinted { asset, .. }) = error.downcast_ref() {
                let request = aic_ledger::api::LedgerRequest::Asset(*asset);
                if let aic_ledger::api::LedgerResponse::Asset(Some(held)) =
                    ledger_client::request(&scheduler, &request).await?
                {
                    if held.owner == key.address() {
                        return Ok(*asset);
                    }
                    bail!(
                        "this model description is already registered as asset {asset}, owned by {}",
                        held.owner
                    );
                }
            }
            return Err(error);
        }
    };
    ledger_client::minted_asset(&events)
}

pub async fn run_job(args: JobArgs) -> anyhow::Result<()> {
    let profile = args.client.load()?;
    let scheduler = nodes::connect(&profile).await?;
    match &args.command {
        JobCommand::Submit(submit) => {
            let key = load_wallet(&wallet_path(args.wallet.as_ref()))?;
            let job = submit_job(&scheduler, &key, submit).await?;
            if submit.detach {
                print_out(args.json, json!({"job": job.to_string()}), || {
                    format!("job {job} is running")
                });
                return Ok(());
            }
            let report = follow(&scheduler, job, !args.json).await?;
            if report["state"] == "moved" {
                bail!(
                    "job {job} moved: another scheduler replica took it over and finishes it; \
                     ask the other replicas (`aic job status {job} --scheduler HOST:PORT`)"
                );
            }
            print_report(args.json, &report);
        }
        JobCommand::Status { job } => {
            let (state, report) = status(&scheduler, *job).await?;
            print_out(
                args.json,
                json!({"state": state, "rounds": report["rounds"], "epoch": report["epoch"], "loss": report["loss"]}),
                || {
                    format!(
                        "job {job}: {state}, round {}, loss {}",
                        report["rounds"], report["loss"]
                    )
                },
            );
        }
        JobCommand::Result { job } => {
            let (_, report) = status(&scheduler, *job).await?;
            print_report(args.json, &report);
        }
        JobCommand::Cancel { job } => match scheduler.call(&ClientRequest::CancelJob { job: *job }).await? {
            ClientResponse::Job { state, .. } => {
                print_out(args.json, json!({"job": job.to_string(), "state": state}), || {
                    format!("job {job}: cancel requested ({state}); the work done is paid, the rest refunded")
                })
            }
            other => bail!("unexpected answer {other:?}"),
        },
    }
    Ok(())
}

/// Quotes the job, checks the budget and the balance, opens the escrow and starts the job.
/// Everything refusable is refused before the escrow is opened.
pub async fn submit_job(scheduler: &RpcClient, key: &Keypair, submit: &SubmitArgs) -> anyhow::Result<JobId> {
    // What the flags leave open comes from the model's description, then the built-in defaults.
    let defaults = model_training_defaults(scheduler, &submit.model).await?;
    let learning_rate = submit
        .learning_rate
        .or(defaults.learning_rate.map(f64::from))
        .unwrap_or(0.5);
    if !(learning_rate > 0.0 && learning_rate <= 100.0) {
        bail!("--learning-rate must be in (0, 100]");
    }
    if !(submit.outer_lr > 0.0 && submit.outer_lr <= 100.0) {
        bail!("--outer-lr must be in (0, 100]");
    }
    let inner_optimizer = match submit.inner_optimizer {
        Some(InnerOptimizerArg::Sgd) => aic_protocol::messages::InnerOptimizer::Sgd,
        Some(InnerOptimizerArg::Momentum) => aic_protocol::messages::InnerOptimizer::Momentum,
        Some(InnerOptimizerArg::Adam) => aic_protocol::messages::InnerOptimizer::Adam,
        Some(InnerOptimizerArg::Adamw) => aic_protocol::messages::InnerOptimizer::AdamW,
        None => defaults.optimizer.unwrap_or_default(),
    };
    let weight_decay = submit
        .weight_decay
        .or(defaults.weight_decay.map(f64::from))
        .unwrap_or(0.0);
    if !(0.0..=1.0).contains(&weight_decay) {
        bail!("--weight-decay must be in [0, 1]");
    }
    let schedule = match submit.schedule {
        None => defaults.schedule.unwrap_or_default(),
        Some(ScheduleArg::Constant) => LrSchedule::Constant,
        Some(ScheduleArg::Cosine) => LrSchedule::Cosine {
            warmup_rounds: submit.warmup_rounds,
        },
        Some(ScheduleArg::Step) => {
            if submit.step_every == 0 || !(submit.step_factor > 0.0 && submit.step_factor <= 1.0) {
                bail!("a step schedule needs --step-every of 1 or more and a --step-factor in (0, 1]");
            }
            LrSchedule::Step {
                every_rounds: submit.step_every,
                factor_milli: (submit.step_factor * 1000.0).round().max(1.0) as u32,
            }
        }
    };
    let request = JobRequest {
        job: JobId::random(),
        dataset_asset: submit.dataset,
        model_asset: submit.model,
        epochs: submit.epochs.or(defaults.epochs).unwrap_or(20),
        learning_rate_milli: (learning_rate * 1000.0).round() as u32,
        local_steps: submit.local_steps.or(defaults.local_steps).unwrap_or(1),
        inner_optimizer,
        outer_optimizer: match submit.outer_optimizer {
            OuterOptimizerArg::Sgd => aic_protocol::messages::OuterOptimizer::Sgd,
            OuterOptimizerArg::Nesterov => aic_protocol::messages::OuterOptimizer::Nesterov,
        },
        outer_learning_rate_milli: (submit.outer_lr * 1000.0).round() as u32,
        weight_decay_micro: (weight_decay * 1e6).round() as u32,
        schedule,
        batch_size: submit.batch_size.or(defaults.batch_size).unwrap_or(0),
        seed: submit.seed,
        evaluate_every_rounds: submit.evaluate_every,
        verification: match submit.verification {
            VerifyArg::Sampled => Verification::Sampled,
            VerifyArg::Every => Verification::Every,
        },
    };
    let (quote, detail) = match scheduler.call(&ClientRequest::QuoteJob(request.clone())).await? {
        ClientResponse::JobQuote { amount, detail } => {
            (amount.parse::<Amount>().map_err(anyhow::Error::msg)?, detail)
        }
        other => bail!("unexpected answer {other:?}"),
    };
    if submit.budget < quote {
        bail!(
            "the budget {} AIC is below what this job may cost, {quote} AIC ({detail}); nothing was escrowed",
            submit.budget
        );
    }
    let LedgerResponse::Account(view) =
        ledger_client::request(scheduler, &LedgerRequest::Account(key.address())).await?
    else {
        bail!("unexpected answer to an account request");
    };
    if view.spendable < submit.budget {
        bail!(
            "the budget {} AIC is more than this wallet can spend ({} AIC); nothing was escrowed",
            submit.budget,
            view.spendable
        );
    }
    ledger_client::submit(
        scheduler,
        key,
        Call::OpenEscrow {
            job: request.job,
            amount: submit.budget,
        },
    )
    .await
    .context("opening the escrow")?;
    match scheduler.call(&ClientRequest::SubmitJob(request.clone())).await {
        Ok(_) => Ok(request.job),
        Err(error) => bail!(
            "the scheduler refused the job after the escrow was opened: {error}; the escrow for job {} \
             stays until the scheduler refunds it",
            request.job
        ),
    }
}

pub async fn status(scheduler: &RpcClient, job: JobId) -> anyhow::Result<(String, Value)> {
    match scheduler.call(&ClientRequest::JobStatus { job }).await? {
        ClientResponse::Job { state, report } => Ok((state, serde_json::from_str(&report)?)),
        other => bail!("unexpected answer {other:?}"),
    }
}

/// Polls the job until it ends, with a progress bar over its rounds.
pub async fn follow(scheduler: &RpcClient, job: JobId, show: bool) -> anyhow::Result<Value> {
    let bar = if show {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} round {pos}/{len} {msg}")
                .expect("a valid template"),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    loop {
        let (state, report) = status(scheduler, job).await?;
        if let (Some(epochs), Some(rounds)) = (report["epochs"].as_u64(), report["rounds"].as_u64()) {
            let tasks = report["tasks"].as_array().map_or(0, |t| t.len());
            bar.set_length(epochs * 2);
            bar.set_position(rounds);
            bar.set_message(format!(
                "loss {:.4}, {tasks} tasks",
                report["loss"].as_f64().unwrap_or(f64::NAN)
            ));
        }
        if state != "running" {
            bar.finish_and_clear();
            if state == "failed" {
                bail!("job {job} failed: {}", report["error"]);
            }
            return Ok(report);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

pub fn print_report(as_json: bool, report: &Value) {
    print_out(as_json, report.clone(), || render_report(report));
}

/// The report as text: accuracy, where tasks ran and why, spot checks, payments.
pub fn render_report(report: &Value) -> String {
    // A classifier reports its accuracy, a regression its R².
    let score = match (report["accuracy"].as_f64(), report["r2"].as_f64()) {
        (Some(accuracy), _) => format!("held-out accuracy {accuracy:.4}"),
        (None, Some(r2)) => format!("held-out R² {r2:.4}"),
        (None, None) => "no held-out score".to_string(),
    };
    let mut text = format!(
        "job {} {}: {score} on {} rows after {} rounds ({:.1} s)\n",
        report["id"].as_str().unwrap_or_default(),
        report["state"].as_str().unwrap_or_default(),
        report["test_rows"],
        report["rounds"],
        report["seconds"].as_f64().unwrap_or(0.0)
    );
    let tasks = report["tasks"].as_array().cloned().unwrap_or_default();
    text.push_str(&format!(
        "\ntasks ({}), first round and evaluation:\n",
        tasks.len()
    ));
    for task in tasks
        .iter()
        .filter(|t| t["round"] == 0 || t["kind"] == "evaluate")
    {
        let cost = &task["cost"];
        text.push_str(&format!(
            "  {:<8} {:<10} shard {}… from {:<10} rtt {:>6.2} ms transfer {:.4} s queue {:.4} s compute {:.4} s rep {:.2} → cost {:.4}\n",
            task["kind"].as_str().unwrap_or_default(),
            task["node"].as_str().unwrap_or_default(),
            &task["shard"].as_str().unwrap_or_default().chars().take(8).collect::<String>(),
            task["storage_node"].as_str().unwrap_or_default(),
            cost["rtt_ms"].as_f64().unwrap_or(0.0),
            cost["transfer_secs"].as_f64().unwrap_or(0.0),
            cost["queue_secs"].as_f64().unwrap_or(0.0),
            cost["compute_secs"].as_f64().unwrap_or(0.0),
            cost["reputation"].as_f64().unwrap_or(0.0),
            cost["total"].as_f64().unwrap_or(0.0),
        ));
    }
    let checks = report["spot_checks"].as_array().cloned().unwrap_or_default();
    text.push_str(&format!("\nspot checks ({}):\n", checks.len()));
    for check in checks.iter().take(12) {
        text.push_str(&format!(
            "  round {:>3} {} checked by {}: {}\n",
            check["round"],
            check["original"].as_str().unwrap_or_default(),
            check["checker"].as_str().unwrap_or_default(),
            check["verdict"].as_str().unwrap_or_default()
        ));
    }
    if checks.len() > 12 {
        text.push_str(&format!("  … {} more\n", checks.len() - 12));
    }
    text.push_str(&format!("\npenalties: {}\n", report["penalties"]));
    text.push_str("\npayments:\n");
    for payment in report["payments"].as_array().cloned().unwrap_or_default() {
        text.push_str(&format!(
            "  {:>14} AIC  {}\n",
            payment["amount"].as_str().unwrap_or_default(),
            payment["role"].as_str().unwrap_or_default()
        ));
    }
    text.push_str(&format!(
        "  {:>14} AIC  platform fee (burned)\n  {:>14} AIC  refunded\n",
        report["platform_fee_burned"].as_str().unwrap_or_default(),
        report["refund"].as_str().unwrap_or_default()
    ));
    for reward in report["rewards"].as_array().cloned().unwrap_or_default() {
        text.push_str(&format!(
            "  {:>14} AIC  Proof-of-Value reward ({}){}\n",
            reward["amount"].as_str().unwrap_or_default(),
            reward["node"].as_str().unwrap_or_default(),
            reward["why"]
                .as_str()
                .map(|w| format!(": {w}"))
                .unwrap_or_default()
        ));
    }
    if let Some(model) = report["trained_model"].as_str() {
        text.push_str(&format!("\ntrained model: asset {model}\n"));
    }
    if let Some(model) = report["trained_model_identical_to"].as_str() {
        text.push_str(&format!(
            "\ntrained model: these weights are already asset {model} (a seeded job run again)\n"
        ));
    }
    if let Some(error) = report["settlement_error"].as_str() {
        text.push_str(&format!("\nsettlement: {error}\n"));
    }
    text
}
