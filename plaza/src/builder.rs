//! The Easy AI Builder: a model trained without writing code. Pick a dataset (and look at rows
//! of it), pick a model — one already on the ledger, a template, or a pasted description — see
//! the quote, train; the job's page follows it, and the trained model's page publishes it for
//! inference with a ready-to-paste call. Every step is a page of its own, so the browser's back
//! button and a reload both work; nothing is escrowed before the user has seen the quote.

use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use aic_ledger::api::{LedgerRequest, LedgerResponse};
use aic_ledger::tx::{AssetKind, AssetMetadata, Call};
use aic_ledger::{Amount, TxError};
use aic_protocol::messages::{ClientRequest, ClientResponse, JobRequest, OuterOptimizer};
use aic_protocol::model_graph::{self, ModelGraph};
use aic_protocol::{AssetId, JobId};
use askama::Template;
use serde::Deserialize;

use crate::actions::{amount_field, see_other, signing, Signing};
use crate::forms::{FieldErrors, FormToken};
use crate::grid::SubmitError;
use crate::pages::{all_assets, manifest_of, render, State};

/// Rows the preview shows.
const PREVIEW_ROWS: u32 = 10;
/// Held-out accuracy after every round unless asked otherwise: the curve the job page plots.
const DEFAULT_EVALUATE_EVERY: u32 = 1;
/// The widest evaluation interval the builder takes.
const MAX_EVALUATE_EVERY: u32 = 10_000;
/// Most epochs the builder offers (the CLI takes any the scheduler admits).
const MAX_EPOCHS: u32 = 1000;

/// Model descriptions a user can start from, embedded in the binary.
pub const TEMPLATES: &[(&str, &str, &str)] = &[
    (
        "digits-mlp",
        "Two hidden ReLU layers with dropout, for 8×8 digit images read as 64 features",
        include_str!("../../examples/models/digits-mlp.toml"),
    ),
    (
        "digits-cnn",
        "A small convolutional network for 8×8 digit images",
        include_str!("../../examples/models/digits-cnn.toml"),
    ),
    (
        "penguins-regression",
        "A regression on the penguins' measurements",
        include_str!("../../examples/models/penguins-regression.toml"),
    ),
];

struct Choice {
    id: String,
    name: String,
    detail: String,
}

#[derive(Template)]
#[template(path = "builder.html")]
struct BuilderPage {
    title: &'static str,
    problems: Vec<String>,
    step: u8,
    datasets: Vec<Choice>,
    dataset: Option<Choice>,
    preview_columns: Vec<String>,
    preview_rows: Vec<Vec<String>>,
    models: Vec<Choice>,
    templates: Vec<(&'static str, &'static str)>,
    model: Option<Choice>,
    epochs: u32,
    evaluate_every: u32,
    quote: Option<(String, String)>,
    budget: String,
    spec: String,
    errors: FieldErrors,
    form: FormToken,
    has_wallet: bool,
}

#[derive(Deserialize, Default)]
pub struct BuilderQuery {
    dataset: Option<String>,
    model: Option<String>,
    epochs: Option<String>,
    evaluate_every: Option<String>,
}

/// The builder at whichever step the query reaches.
pub async fn builder(state: web::Data<State>, query: web::Query<BuilderQuery>) -> HttpResponse {
    builder_view(&state, query.into_inner(), BTreeMap::new(), String::new()).await
}

async fn builder_view(state: &State, query: BuilderQuery, errors: FieldErrors, spec: String) -> HttpResponse {
    let page = builder_page(state, query, errors, spec).await;
    let status = if page.errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    render(status, &page)
}

async fn builder_page(
    state: &State,
    query: BuilderQuery,
    mut errors: FieldErrors,
    spec: String,
) -> BuilderPage {
    let mut problems = Vec::new();
    let assets = all_assets(&state.grid, &mut problems).await;
    let find = |id: &Option<String>, kind: AssetKind| {
        let id = id.as_deref()?.parse::<AssetId>().ok()?;
        assets
            .iter()
            .find(|(a, asset)| *a == id && asset.kind == kind)
            .cloned()
    };
    let dataset = find(&query.dataset, AssetKind::Dataset);
    let model = find(&query.model, AssetKind::Model);
    if query.dataset.is_some() && dataset.is_none() {
        errors.insert(
            "dataset".into(),
            "No such dataset on the ledger: choose one below.".into(),
        );
    }
    if query.model.is_some() && model.is_none() {
        errors.insert(
            "model".into(),
            "No such model on the ledger: choose one below.".into(),
        );
    }
    let datasets = assets
        .iter()
        .filter(|(_, a)| a.kind == AssetKind::Dataset)
        .map(|(id, a)| {
            let manifest = manifest_of(a);
            Choice {
                id: id.to_string(),
                name: a.metadata.name.clone(),
                detail: format!(
                    "{} rows, label {}, fee {} AIC",
                    manifest["rows"],
                    manifest["label"].as_str().unwrap_or("?"),
                    a.metadata.usage_fee
                ),
            }
        })
        .collect();
    let models = assets
        .iter()
        .filter(|(_, a)| a.kind == AssetKind::Model)
        .map(|(id, a)| Choice {
            id: id.to_string(),
            name: a.metadata.name.clone(),
            detail: format!("fee {} AIC", a.metadata.usage_fee),
        })
        .collect();
    let mut page = BuilderPage {
        title: "Easy AI Builder",
        problems,
        step: 1,
        datasets,
        dataset: None,
        preview_columns: Vec::new(),
        preview_rows: Vec::new(),
        models,
        templates: TEMPLATES.iter().map(|(name, about, _)| (*name, *about)).collect(),
        model: None,
        epochs: 0,
        evaluate_every: DEFAULT_EVALUATE_EVERY,
        quote: None,
        budget: String::new(),
        spec,
        errors,
        form: state.forms.issue(),
        has_wallet: state.wallet.is_some(),
    };
    let Some((dataset_id, dataset)) = dataset else {
        return page;
    };
    page.step = 2;
    page.dataset = Some(Choice {
        id: dataset_id.to_string(),
        name: dataset.metadata.name.clone(),
        detail: String::new(),
    });
    let previewed = match state.grid.nodes().await {
        Ok(nodes) => preview(state, &dataset, &nodes).await,
        Err(e) => Err(e),
    };
    match previewed {
        Ok((columns, rows)) => {
            page.preview_columns = columns;
            page.preview_rows = rows;
        }
        Err(e) => page.problems.push(format!("The preview could not be read: {e}")),
    }
    let Some((model_id, model)) = model else {
        return page;
    };
    page.step = 3;
    let graph = match model_graph::of_manifest(&model.metadata.manifest) {
        Ok(graph) => graph,
        Err(e) => {
            page.errors.insert(
                "model".into(),
                format!("This model's description does not read: {e}"),
            );
            return page;
        }
    };
    let epochs = match query.epochs.as_deref().map(str::trim).filter(|e| !e.is_empty()) {
        None => graph.training.epochs.unwrap_or(20),
        Some(text) => match text.parse::<u32>() {
            Ok(n) if (1..=MAX_EPOCHS).contains(&n) => n,
            _ => {
                page.errors.insert(
                    "epochs".into(),
                    format!("Epochs are a whole number from 1 to {MAX_EPOCHS}."),
                );
                graph.training.epochs.unwrap_or(20)
            }
        },
    };
    page.epochs = epochs;
    let evaluate_every = match query.evaluate_every.as_deref() {
        None => DEFAULT_EVALUATE_EVERY,
        Some(text) => evaluate_every_field(&mut page.errors, text).unwrap_or(DEFAULT_EVALUATE_EVERY),
    };
    page.evaluate_every = evaluate_every;
    page.model = Some(Choice {
        id: model_id.to_string(),
        name: model.metadata.name.clone(),
        detail: String::new(),
    });
    let request = job_request(
        JobId::random(),
        dataset_id,
        model_id,
        &graph,
        (epochs, evaluate_every),
    );
    match state.grid.quote(&request).await {
        Ok((amount, detail)) => {
            // The quote moves with the grid (its nodes' speeds and reputations) until the job
            // is submitted and quoted again: the budget offered leaves a quarter of headroom,
            // and what the job does not use is refunded.
            page.budget = amount
                .parse::<Amount>()
                .ok()
                .and_then(|quote| quote.checked_add(Amount(quote.0 / 4)).ok())
                .map_or_else(|| amount.clone(), |budget| budget.to_string());
            page.quote = Some((amount, detail));
        }
        // The scheduler's reason (the model does not fit the dataset, …) beside the model.
        Err(e) => {
            page.errors.insert(
                "model".into(),
                format!("The scheduler will not run this job: {e}"),
            );
        }
    }
    page
}

/// Rows of a dataset from a storage node that holds it whole, found in the grid's node list.
pub(crate) async fn preview(
    state: &State,
    dataset: &aic_ledger::state::Asset,
    nodes: &[aic_protocol::messages::NodeStatus],
) -> Result<(Vec<String>, Vec<Vec<String>>), String> {
    let id = aic_protocol::manifest::dataset_id_of_hash(&dataset.metadata.content_hash);
    let holder = nodes
        .iter()
        .find(|n| {
            n.holdings
                .iter()
                .any(|h| h.dataset == id && h.healthy_shards == h.shards)
        })
        .ok_or("no storage node reports holding it whole")?;
    let request = ClientRequest::Preview {
        dataset: id,
        rows: PREVIEW_ROWS,
    };
    match state.grid.storage(&holder.quic_addr, &request).await? {
        ClientResponse::Preview(preview) => {
            let classes: Vec<String> = manifest_of(dataset)["classes"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| c.as_str().unwrap_or_default().to_string())
                .collect();
            let mut columns = preview.columns.clone();
            columns.push("label".into());
            let rows = preview
                .rows
                .iter()
                .enumerate()
                .map(|(i, row)| {
                    let mut cells: Vec<String> = row.iter().map(|v| format!("{v:.2}")).collect();
                    cells.push(match (preview.labels.get(i), preview.targets.get(i)) {
                        (Some(label), _) => classes
                            .get(*label as usize)
                            .cloned()
                            .unwrap_or_else(|| label.to_string()),
                        (None, Some(target)) => format!("{target}"),
                        (None, None) => String::new(),
                    });
                    cells
                })
                .collect();
            Ok((columns, rows))
        }
        other => Err(format!("unexpected answer: {other:?}")),
    }
}

/// Reads the "held-out accuracy every N rounds" field; a wrong one is noted beside it.
fn evaluate_every_field(errors: &mut FieldErrors, text: &str) -> Option<u32> {
    match text.trim().parse::<u32>() {
        Ok(n) if n <= MAX_EVALUATE_EVERY => Some(n),
        _ => {
            errors.insert(
                "evaluate_every".into(),
                format!("Evaluations come every 0 (only at the end) to {MAX_EVALUATE_EVERY} rounds."),
            );
            None
        }
    }
}

/// The job the builder submits: the model description's training defaults, the epochs and the
/// evaluation interval chosen.
fn job_request(
    job: JobId,
    dataset: AssetId,
    model: AssetId,
    graph: &ModelGraph,
    (epochs, evaluate_every_rounds): (u32, u32),
) -> JobRequest {
    let defaults = &graph.training;
    JobRequest {
        job,
        dataset_asset: dataset,
        model_asset: model,
        epochs,
        learning_rate_milli: (defaults.learning_rate.map_or(0.5, f64::from) * 1000.0).round() as u32,
        local_steps: defaults.local_steps.unwrap_or(1),
        inner_optimizer: defaults.optimizer.unwrap_or_default(),
        outer_optimizer: OuterOptimizer::Nesterov,
        outer_learning_rate_milli: 700,
        weight_decay_micro: (defaults.weight_decay.map_or(0.0, f64::from) * 1e6).round() as u32,
        schedule: defaults.schedule.unwrap_or_default(),
        batch_size: defaults.batch_size.unwrap_or(0),
        seed: None,
        evaluate_every_rounds,
        verification: Default::default(),
    }
}

#[derive(Deserialize)]
pub struct ModelForm {
    csrf: Option<String>,
    idempotency: Option<String>,
    dataset: Option<String>,
    template: Option<String>,
    spec: Option<String>,
}

/// Puts a model description on the ledger (a template or one pasted), then on to the quote.
pub async fn add_model(state: web::Data<State>, form: web::Form<ModelForm>) -> HttpResponse {
    let (key, attempt) = match signing(&state, form.csrf.as_deref(), form.idempotency.as_deref()) {
        Signing::Act { key, attempt } => (key, attempt),
        Signing::Answer(page) => return page,
    };
    let mut errors = BTreeMap::new();
    let pasted = form.spec.as_deref().unwrap_or("").trim().to_string();
    let text = match form.template.as_deref().filter(|t| !t.is_empty()) {
        Some(name) => TEMPLATES
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, _, text)| text.to_string()),
        None => Some(pasted.clone()),
    };
    let query = |model: Option<String>| BuilderQuery {
        dataset: form.dataset.clone(),
        model,
        epochs: None,
        evaluate_every: None,
    };
    let graph = match text {
        None => {
            errors.insert("spec".into(), "No such template.".into());
            None
        }
        Some(text) if text.is_empty() => {
            errors.insert(
                "spec".into(),
                "Choose a template or paste a model description.".into(),
            );
            None
        }
        Some(text) if text.len() > model_graph::MAX_SPEC_BYTES => {
            errors.insert(
                "spec".into(),
                format!(
                    "A description is at most {} bytes; this one is {}.",
                    model_graph::MAX_SPEC_BYTES,
                    text.len()
                ),
            );
            None
        }
        Some(text) => match model_graph::parse(&text) {
            Ok(graph) => Some(graph),
            Err(e) => {
                errors.insert("spec".into(), format!("The description does not read: {e}"));
                None
            }
        },
    };
    let Some(graph) = graph else {
        state.forms.release(&attempt);
        return builder_view(&state, query(None), errors, pasted).await;
    };
    let call = Call::MintAsset {
        kind: AssetKind::Model,
        metadata: AssetMetadata {
            name: graph.name.clone(),
            content_hash: graph.content_hash(),
            manifest: String::from_utf8_lossy(&graph.canonical_bytes()).into_owned(),
            usage_fee: Amount::ZERO,
        },
    };
    let asset = match state.grid.submit(&key, call).await {
        Ok(events) => aic_ledger::state::Event::minted_asset(&events),
        // The same description is on the ledger already: train with that asset.
        Err(SubmitError::Refused(TxError::AlreadyMinted { asset, .. })) => Some(asset),
        Err(error) => {
            errors.insert("spec".into(), format!("It could not be registered: {error}"));
            None
        }
    };
    let Some(asset) = asset else {
        state.forms.release(&attempt);
        return builder_view(&state, query(None), errors, pasted).await;
    };
    let page = format!(
        "/builder?dataset={}&model={asset}",
        form.dataset.as_deref().unwrap_or_default()
    );
    state.forms.finish(&attempt, &page);
    see_other(&page)
}

#[derive(Deserialize)]
pub struct TrainForm {
    csrf: Option<String>,
    idempotency: Option<String>,
    dataset: Option<String>,
    model: Option<String>,
    epochs: Option<String>,
    evaluate_every: Option<String>,
    budget: Option<String>,
}

/// Escrows the budget and starts the job, after the same checks the quote page made.
pub async fn train(state: web::Data<State>, form: web::Form<TrainForm>) -> HttpResponse {
    let (key, attempt) = match signing(&state, form.csrf.as_deref(), form.idempotency.as_deref()) {
        Signing::Act { key, attempt } => (key, attempt),
        Signing::Answer(page) => return page,
    };
    let query = BuilderQuery {
        dataset: form.dataset.clone(),
        model: form.model.clone(),
        epochs: form.epochs.clone(),
        evaluate_every: form.evaluate_every.clone(),
    };
    let mut errors = BTreeMap::new();
    let outcome = async {
        let dataset = form.dataset.as_deref().and_then(|d| d.parse::<AssetId>().ok());
        let model_id = form.model.as_deref().and_then(|m| m.parse::<AssetId>().ok());
        let epochs = form.epochs.as_deref().and_then(|e| e.trim().parse::<u32>().ok()).filter(|e| (1..=MAX_EPOCHS).contains(e));
        if epochs.is_none() {
            errors.insert("epochs".into(), format!("Epochs are a whole number from 1 to {MAX_EPOCHS}."));
        }
        let evaluate_every = evaluate_every_field(&mut errors, form.evaluate_every.as_deref().unwrap_or("0"));
        let budget = amount_field(&mut errors, "budget", form.budget.as_deref());
        let (Some(dataset), Some(model_id), Some(epochs), Some(evaluate_every), Some(budget)) =
            (dataset, model_id, epochs, evaluate_every, budget)
        else {
            return None;
        };
        let model = match state.grid.ledger(&LedgerRequest::Asset(model_id)).await {
            Ok(LedgerResponse::Asset(Some(model))) if model.kind == AssetKind::Model => model,
            _ => {
                errors.insert("model".into(), "The model could not be read from the ledger.".into());
                return None;
            }
        };
        let graph = model_graph::of_manifest(&model.metadata.manifest).ok()?;
        let request = job_request(JobId::random(), dataset, model_id, &graph, (epochs, evaluate_every));
        let quote = match state.grid.quote(&request).await {
            Ok((amount, _)) => amount.parse::<Amount>().ok()?,
            Err(e) => {
                errors.insert("model".into(), format!("The scheduler will not run this job: {e}"));
                return None;
            }
        };
        if budget < quote {
            errors.insert(
                "budget".into(),
                format!("The job may cost up to {quote} AIC; a budget of {budget} AIC is not enough. Nothing was escrowed."),
            );
            return None;
        }
        let escrow = Call::OpenEscrow { job: request.job, amount: budget };
        if let Err(error) = state.grid.submit(&key, escrow).await {
            errors.insert("budget".into(), format!("The escrow was not opened: {error}"));
            return None;
        }
        if let Err(e) = state.grid.start_job(&request).await {
            // The escrow stays until the scheduler refunds it; the job's page shows it.
            tracing::warn!(job = %request.job, error = %e, "the scheduler refused a job after its escrow opened");
        }
        Some(request.job)
    }
    .await;
    match outcome {
        Some(job) => {
            let page = format!("/jobs/{job}");
            state.forms.finish(&attempt, &page);
            see_other(&page)
        }
        None => {
            state.forms.release(&attempt);
            builder_view(&state, query, errors, String::new()).await
        }
    }
}
