//! The console's pages: each reads what it shows from the ledger and the scheduler when asked,
//! renders it on the server, and shows what it could not read as a banner above the rest.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use aic_ledger::api::{LedgerRequest, LedgerResponse, MAX_LISTINGS_PER_REQUEST};
use aic_ledger::state::{Asset, Provenance};
use aic_ledger::tx::{AssetKind, PayoutKind};
use aic_ledger::Amount;
use aic_protocol::AssetId;
use askama::Template;

use crate::auth::LoginToken;
use crate::grid::Grid;

/// Blocks the chain page shows, newest first.
const RECENT_BLOCKS: u64 = 25;
const STYLESHEET: &str = include_str!("../assets/plaza.css");
const SCRIPT: &str = include_str!("../assets/plaza.js");

/// What every handler shares.
pub struct State {
    pub grid: Grid,
    pub token: LoginToken,
    pub wallet: Option<aic_ledger::Keypair>,
    pub forms: crate::forms::Forms,
    /// Where a published model is called, for the ready-to-paste snippet.
    pub gateway: Option<crate::GatewayLink>,
}

pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/", web::get().to(network))
        .route("/datasets", web::get().to(datasets))
        .route("/datasets/import", web::get().to(crate::import::form))
        // The multipart body streams; the handler counts the file against its cap.
        .route("/datasets/import", web::post().to(crate::import::import))
        .route("/models", web::get().to(models))
        .route("/market", web::get().to(market))
        .route("/chain", web::get().to(chain))
        .route("/chain/verify", web::get().to(verify))
        .route("/wallet", web::get().to(wallet))
        .route("/wallet/transfer", web::post().to(crate::actions::transfer))
        .route("/wallet/top-up", web::post().to(crate::actions::top_up))
        .route("/wallet/api-keys", web::post().to(crate::actions::create_api_key))
        .route("/assets/{id}", web::get().to(asset))
        .route("/assets/{id}", web::post().to(crate::actions::asset_action))
        .route("/jobs", web::get().to(crate::jobs::history))
        .route("/jobs/{id}", web::get().to(crate::jobs::job))
        .route("/jobs/{id}/events", web::get().to(crate::jobs::events))
        .route("/builder", web::get().to(crate::builder::builder))
        .service(
            web::resource("/builder/model")
                // A pasted description may be as long as the model format allows, and
                // urlencoding can triple it; the handler refuses one over the format's limit
                // beside its field.
                .app_data(
                    web::FormConfig::default().limit(3 * aic_protocol::model_graph::MAX_SPEC_BYTES + 4096),
                )
                .route(web::post().to(crate::builder::add_model)),
        )
        .route("/builder/train", web::post().to(crate::builder::train))
        .route("/plaza.css", web::get().to(stylesheet))
        .route("/plaza.js", web::get().to(script))
        .default_service(web::to(|| async {
            error_page(StatusCode::NOT_FOUND, "There is no such page.")
        }));
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    title: &'a str,
    problems: Vec<String>,
    message: &'a str,
}

/// A page that says what went wrong, with its status.
pub fn error_page(status: StatusCode, message: &str) -> HttpResponse {
    let title = status.canonical_reason().unwrap_or("Error");
    render(
        status,
        &ErrorPage {
            title,
            problems: Vec::new(),
            message,
        },
    )
}

pub(crate) fn render(status: StatusCode, page: &impl Template) -> HttpResponse {
    match page.render() {
        Ok(html) => HttpResponse::build(status)
            .content_type("text/html; charset=utf-8")
            .insert_header((
                "content-security-policy",
                "default-src 'self'; frame-ancestors 'none'",
            ))
            .insert_header(("x-content-type-options", "nosniff"))
            .body(html),
        Err(error) => HttpResponse::InternalServerError().body(format!("rendering the page: {error}")),
    }
}

async fn script() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .body(SCRIPT)
}

async fn stylesheet() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .body(STYLESHEET)
}

struct ChainFacts {
    chain_id: String,
    height: u64,
    supply: String,
    burned: String,
    issued: String,
    accrued: String,
}

struct NodeRow {
    name: String,
    role: String,
    state: String,
    device: String,
    memory: String,
    gflops: String,
    reputation: String,
    penalties: usize,
}

struct PenaltyRow {
    node: String,
    job: String,
    reason: String,
    slashed: String,
}

#[derive(Template)]
#[template(path = "network.html")]
struct NetworkPage {
    title: &'static str,
    problems: Vec<String>,
    chain: Option<ChainFacts>,
    nodes: Vec<NodeRow>,
    penalties: Vec<PenaltyRow>,
    /// The compute nodes' measured speeds, drawn.
    speeds: Option<String>,
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Nodes with their device, memory, measured speed, reputation and penalties; the chain head and
/// the money supply.
async fn network(state: web::Data<State>) -> HttpResponse {
    let mut problems = Vec::new();
    let chain = match state.grid.ledger(&LedgerRequest::Status).await {
        Ok(LedgerResponse::Status(s)) => Some(ChainFacts {
            chain_id: s.chain_id,
            height: s.block_height,
            supply: s.total_supply.to_string(),
            burned: s.burned.to_string(),
            issued: s.issued.to_string(),
            accrued: s.accrued_rewards.to_string(),
        }),
        Ok(other) => {
            problems.push(format!("unexpected ledger answer: {other:?}"));
            None
        }
        Err(e) => {
            problems.push(format!("The ledger could not be read: {e}"));
            None
        }
    };
    let ratings = state.grid.ratings().await.unwrap_or_else(|e| {
        problems.push(format!("Reputations could not be read: {e}"));
        serde_json::Value::Null
    });
    let listed = state.grid.nodes().await.unwrap_or_else(|e| {
        problems.push(format!("The node list could not be read: {e}"));
        Vec::new()
    });
    let penalties: Vec<PenaltyRow> = ratings["penalties"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| PenaltyRow {
            node: p["node"].as_str().unwrap_or_default().to_string(),
            job: p["job"].as_str().unwrap_or_default().to_string(),
            reason: p["reason"].as_str().unwrap_or_default().to_string(),
            slashed: p["slashed"].as_str().unwrap_or("0").to_string(),
        })
        .collect();
    let nodes = listed
        .iter()
        .map(|n| {
            let record = &ratings["records"][n.node_id.to_string()];
            NodeRow {
                name: n.name.clone(),
                role: n.role.to_string(),
                state: n.state.as_str().to_string(),
                device: n.capacity.device.clone(),
                memory: gib(n.capacity.memory_bytes),
                gflops: if n.capacity.measured_mflops == 0 {
                    "—".into()
                } else {
                    format!("{:.1}", n.capacity.measured_mflops as f64 / 1000.0)
                },
                reputation: record["reputation"]
                    .as_f64()
                    .map_or_else(|| "1.00".into(), |r| format!("{r:.2}")),
                penalties: penalties.iter().filter(|p| p.node == n.name).count(),
            }
        })
        .collect();
    let speeds: Vec<(String, f64)> = listed
        .iter()
        .filter(|n| n.role == aic_protocol::Role::Compute && n.capacity.measured_mflops > 0)
        .map(|n| (n.name.clone(), n.capacity.measured_mflops as f64 / 1000.0))
        .collect();
    render(
        StatusCode::OK,
        &NetworkPage {
            title: "Network",
            problems,
            chain,
            nodes,
            penalties,
            speeds: crate::plots::node_speeds(&speeds),
        },
    )
}

/// Every asset on the ledger, or why not.
pub(crate) async fn all_assets(grid: &Grid, problems: &mut Vec<String>) -> Vec<(AssetId, Asset)> {
    match grid.ledger(&LedgerRequest::Assets { owner: None }).await {
        Ok(LedgerResponse::Assets(assets)) => assets,
        Ok(other) => {
            problems.push(format!("unexpected ledger answer: {other:?}"));
            Vec::new()
        }
        Err(e) => {
            problems.push(format!("The assets could not be read: {e}"));
            Vec::new()
        }
    }
}

pub(crate) fn manifest_of(asset: &Asset) -> serde_json::Value {
    serde_json::from_str(&asset.metadata.manifest).unwrap_or(serde_json::Value::Null)
}

struct DatasetRow {
    id: String,
    name: String,
    rows: String,
    columns: String,
    label: String,
    classes: String,
    fee: String,
    owner: String,
}

#[derive(Template)]
#[template(path = "datasets.html")]
struct DatasetsPage {
    title: &'static str,
    problems: Vec<String>,
    datasets: Vec<DatasetRow>,
    /// The search, as typed.
    query: String,
}

#[derive(serde::Deserialize)]
pub struct SearchQuery {
    q: Option<String>,
}

/// Whether a dataset matches a search: every word of it in its name, label, columns or classes
/// (ignoring case).
fn matches_search(asset: &Asset, manifest: &serde_json::Value, query: &str) -> bool {
    let mut haystack = asset.metadata.name.to_lowercase();
    haystack.push(' ');
    haystack.push_str(&manifest["label"].as_str().unwrap_or_default().to_lowercase());
    for key in ["features", "classes"] {
        for item in manifest[key].as_array().into_iter().flatten() {
            haystack.push(' ');
            let text = item["name"].as_str().or(item.as_str()).unwrap_or_default();
            haystack.push_str(&text.to_lowercase());
        }
    }
    query
        .split_whitespace()
        .all(|word| haystack.contains(&word.to_lowercase()))
}

/// Every imported dataset, as its import published it: rows, columns, label, classes, fee; or
/// those a search names.
async fn datasets(state: web::Data<State>, search: web::Query<SearchQuery>) -> HttpResponse {
    let mut problems = Vec::new();
    let query = search
        .q
        .clone()
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect::<String>();
    let datasets = all_assets(&state.grid, &mut problems)
        .await
        .into_iter()
        .filter(|(_, a)| a.kind == AssetKind::Dataset)
        .filter(|(_, a)| matches_search(a, &manifest_of(a), &query))
        .map(|(id, a)| {
            let manifest = manifest_of(&a);
            let count = |key: &str| manifest[key].as_array().map_or(0, Vec::len);
            DatasetRow {
                id: id.to_string(),
                name: a.metadata.name.clone(),
                rows: manifest["rows"]
                    .as_u64()
                    .map_or_else(|| "?".into(), |r| r.to_string()),
                columns: count("features").to_string(),
                label: manifest["label"].as_str().unwrap_or_default().to_string(),
                classes: count("classes").to_string(),
                fee: a.metadata.usage_fee.to_string(),
                owner: a.owner.short(),
            }
        })
        .collect();
    render(
        StatusCode::OK,
        &DatasetsPage {
            title: "Datasets",
            problems,
            datasets,
            query,
        },
    )
}

struct TrainedRow {
    id: String,
    name: String,
    accuracy: String,
    dataset: String,
    dataset_name: String,
    model: String,
    model_name: String,
    owner: String,
}

struct ModelRow {
    id: String,
    name: String,
    fee: String,
    owner: String,
}

#[derive(Template)]
#[template(path = "models.html")]
struct ModelsPage {
    title: &'static str,
    problems: Vec<String>,
    trained: Vec<TrainedRow>,
    models: Vec<ModelRow>,
}

/// What a TrainedModel's manifest says it came from, with the names of those assets.
struct Lineage {
    dataset: String,
    dataset_name: String,
    model: String,
    model_name: String,
    job: String,
    accuracy: String,
}

fn lineage_of(asset: &Asset, names: &std::collections::HashMap<String, String>) -> Option<Lineage> {
    let manifest = manifest_of(asset);
    let dataset = manifest["dataset_asset"].as_str()?.to_string();
    let model = manifest["model_asset"].as_str()?.to_string();
    let name = |id: &String| {
        names
            .get(id)
            .cloned()
            .unwrap_or_else(|| id[..12.min(id.len())].to_string())
    };
    Some(Lineage {
        dataset_name: name(&dataset),
        model_name: name(&model),
        dataset,
        model,
        job: manifest["job"].as_str().unwrap_or_default().to_string(),
        accuracy: accuracy_text(&manifest),
    })
}

pub(crate) fn accuracy_text(manifest: &serde_json::Value) -> String {
    match (manifest["accuracy"].as_f64(), manifest["r2"].as_f64()) {
        (Some(accuracy), _) => format!("{:.1} %", accuracy * 100.0),
        (None, Some(r2)) => format!("R² {r2:.3}"),
        (None, None) => "—".into(),
    }
}

/// Trained models with their held-out accuracy and where they came from; model descriptions.
async fn models(state: web::Data<State>) -> HttpResponse {
    let mut problems = Vec::new();
    let assets = all_assets(&state.grid, &mut problems).await;
    let names: std::collections::HashMap<String, String> = assets
        .iter()
        .map(|(id, a)| (id.to_string(), a.metadata.name.clone()))
        .collect();
    let trained = assets
        .iter()
        .filter(|(_, a)| a.kind == AssetKind::TrainedModel)
        .map(|(id, a)| {
            let lineage = lineage_of(a, &names);
            TrainedRow {
                id: id.to_string(),
                name: a.metadata.name.clone(),
                accuracy: accuracy_text(&manifest_of(a)),
                dataset: lineage.as_ref().map(|l| l.dataset.clone()).unwrap_or_default(),
                dataset_name: lineage
                    .as_ref()
                    .map(|l| l.dataset_name.clone())
                    .unwrap_or_default(),
                model: lineage.as_ref().map(|l| l.model.clone()).unwrap_or_default(),
                model_name: lineage.map(|l| l.model_name).unwrap_or_default(),
                owner: a.owner.short(),
            }
        })
        .collect();
    let models = assets
        .iter()
        .filter(|(_, a)| a.kind == AssetKind::Model)
        .map(|(id, a)| ModelRow {
            id: id.to_string(),
            name: a.metadata.name.clone(),
            fee: a.metadata.usage_fee.to_string(),
            owner: a.owner.short(),
        })
        .collect();
    render(
        StatusCode::OK,
        &ModelsPage {
            title: "Models",
            problems,
            trained,
            models,
        },
    )
}

struct ListingRow {
    id: String,
    short_id: String,
    kind: String,
    name: String,
    price: String,
    seller: String,
}

#[derive(Template)]
#[template(path = "market.html")]
struct MarketPage {
    title: &'static str,
    problems: Vec<String>,
    listings: Vec<ListingRow>,
}

/// Every asset for sale.
async fn market(state: web::Data<State>) -> HttpResponse {
    let mut problems = Vec::new();
    let mut listings = Vec::new();
    let mut after = None;
    loop {
        let page = LedgerRequest::Listings {
            after,
            limit: MAX_LISTINGS_PER_REQUEST,
        };
        match state.grid.ledger(&page).await {
            Ok(LedgerResponse::Listings(got)) => {
                let full = got.len() == MAX_LISTINGS_PER_REQUEST as usize;
                after = got.last().map(|(id, _, _)| *id);
                listings.extend(got.into_iter().map(|(id, listing, asset)| ListingRow {
                    id: id.to_string(),
                    short_id: id.to_string()[..12].to_string(),
                    kind: format!("{:?}", asset.kind),
                    name: asset.metadata.name,
                    price: listing.price.to_string(),
                    seller: listing.seller.short(),
                }));
                if !full {
                    break;
                }
            }
            Ok(other) => {
                problems.push(format!("unexpected ledger answer: {other:?}"));
                break;
            }
            Err(e) => {
                problems.push(format!("The listings could not be read: {e}"));
                break;
            }
        }
    }
    render(
        StatusCode::OK,
        &MarketPage {
            title: "Marketplace",
            problems,
            listings,
        },
    )
}

struct BlockRow {
    height: u64,
    time: String,
    proposer: String,
    cosigners: usize,
    transactions: u32,
}

#[derive(Template)]
#[template(path = "chain.html")]
struct ChainPage {
    title: &'static str,
    problems: Vec<String>,
    blocks: Vec<BlockRow>,
}

/// The latest blocks: who proposed each (the lottery's winner) and who co-signed it.
async fn chain(state: web::Data<State>) -> HttpResponse {
    let mut problems = Vec::new();
    let height = match state.grid.ledger(&LedgerRequest::Status).await {
        Ok(LedgerResponse::Status(s)) => s.block_height,
        Ok(_) | Err(_) => {
            problems.push("The ledger could not be read.".to_string());
            0
        }
    };
    let from = height.saturating_sub(RECENT_BLOCKS - 1);
    let mut blocks = match state
        .grid
        .ledger(&LedgerRequest::Blocks {
            from,
            count: RECENT_BLOCKS,
        })
        .await
    {
        Ok(LedgerResponse::Blocks(blocks)) => blocks
            .into_iter()
            .map(|(header, _)| BlockRow {
                height: header.height,
                time: utc(header.timestamp_ms),
                proposer: header.proposer.short(),
                cosigners: header.signatures.len(),
                transactions: header.tx_count,
            })
            .collect(),
        Ok(_) | Err(_) => {
            problems.push("The blocks could not be read.".to_string());
            Vec::new()
        }
    };
    blocks.reverse();
    render(
        StatusCode::OK,
        &ChainPage {
            title: "Chain",
            problems,
            blocks,
        },
    )
}

#[derive(Template)]
#[template(path = "verify.html")]
struct VerifyPage {
    title: &'static str,
    problems: Vec<String>,
    /// The blocks checked, when all verify.
    verified: Option<usize>,
    failure: String,
}

/// Fetches every block from genesis and checks the chain here, trusting no replica's word.
async fn verify(state: web::Data<State>) -> HttpResponse {
    let mut blocks = Vec::new();
    let outcome = loop {
        let page = LedgerRequest::Blocks {
            from: blocks.len() as u64,
            count: aic_ledger::api::MAX_BLOCKS_PER_REQUEST,
        };
        match state.grid.ledger(&page).await {
            Ok(LedgerResponse::Blocks(got)) if got.is_empty() => {
                let (headers, transactions): (Vec<_>, Vec<_>) = blocks.into_iter().unzip();
                break aic_ledger::block::verify_chain(&headers, &transactions)
                    .map(|()| headers.len())
                    .map_err(|e| format!("The chain does not verify: {e}"));
            }
            Ok(LedgerResponse::Blocks(mut got)) => blocks.append(&mut got),
            Ok(other) => break Err(format!("unexpected ledger answer: {other:?}")),
            Err(e) => break Err(format!("The blocks could not be read: {e}")),
        }
    };
    let (verified, failure) = match outcome {
        Ok(count) => (Some(count), String::new()),
        Err(failure) => (None, failure),
    };
    render(
        StatusCode::OK,
        &VerifyPage {
            title: "Chain verification",
            problems: Vec::new(),
            verified,
            failure,
        },
    )
}

/// `YYYY-MM-DD hh:mm:ss` of a Unix time in milliseconds.
pub(crate) fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let rest = secs % 86_400;
    format!(
        "{} {:02}:{:02}:{:02}",
        aic_protocol::encoding::date_text((secs / 86_400) as i64),
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// What a trained model's job did, from the ledger's job log: each compute node's part as the
/// runner recorded it at settlement (rows, rows a spot check confirmed, checks agreed and
/// caught) and what the escrow paid it.
struct CardWork {
    checks_agreed: u64,
    checks_caught: u64,
    nodes: Vec<CardNode>,
    /// Each time the job went back to drop a wrong node's unconfirmed results: what it says.
    rewinds: Vec<String>,
}

struct CardNode {
    name: String,
    rows: u64,
    verified_rows: u64,
    checks: String,
    paid: String,
}

/// The card's work section; node names from the registry where the node is still known.
fn card_work(work: &aic_ledger::state::JobWork, registry: &[aic_protocol::messages::NodeStatus]) -> CardWork {
    let name_of = |node: &aic_protocol::NodeId| {
        registry
            .iter()
            .find(|n| n.node_id == *node)
            .map_or_else(|| node.to_string()[..12].to_string(), |n| n.name.clone())
    };
    let address_of = |node: &aic_protocol::NodeId| {
        registry
            .iter()
            .find(|n| n.node_id == *node)
            .and_then(|n| n.payout_address.parse::<aic_ledger::Address>().ok())
    };
    let nodes = work
        .nodes
        .iter()
        .map(|n| {
            let paid = address_of(&n.node).map_or_else(
                || "?".to_string(),
                |address| {
                    work.payouts
                        .iter()
                        .filter(|(to, kind, _)| *to == address && *kind == PayoutKind::Compute)
                        .fold(Amount::ZERO, |sum, (_, _, amount)| {
                            sum.checked_add(*amount).unwrap_or(sum)
                        })
                        .to_string()
                },
            );
            CardNode {
                name: name_of(&n.node),
                rows: n.rows,
                verified_rows: n.verified_rows,
                checks: match (n.checks_passed, n.checks_failed, n.confirmed_wrong) {
                    (0, 0, false) => "none".into(),
                    (passed, 0, false) => format!("{passed} agreed"),
                    (passed, failed, _) => {
                        format!("{passed} agreed, {failed} caught: confirmed wrong, unpaid")
                    }
                },
                paid,
            }
        })
        .collect();
    let rewinds = work
        .rewinds
        .iter()
        .map(|(from, to, wrong)| {
            format!(
                "{} found wrong after round {from}: rounds {} to {from} trained again without it",
                name_of(wrong),
                to + 1
            )
        })
        .collect();
    CardWork {
        checks_agreed: work.nodes.iter().map(|n| u64::from(n.checks_passed)).sum(),
        checks_caught: work.nodes.iter().map(|n| u64::from(n.checks_failed)).sum(),
        nodes,
        rewinds,
    }
}

/// A storage node's copy of a dataset.
struct HoldingRow {
    node: String,
    state: String,
    healthy: u32,
    shards: u32,
    bytes: String,
}

/// What a dataset's page adds: where it is stored, a sample, and what paid for it.
struct DatasetFacts {
    holdings: Vec<HoldingRow>,
    replicas_wanted: u32,
    preview_columns: Vec<String>,
    preview_rows: Vec<Vec<String>>,
    usage: Vec<crate::jobs::JobRow>,
    /// Fees the listed jobs paid its owner.
    fees_paid: String,
}

#[derive(Template)]
#[template(path = "asset.html")]
struct AssetPage {
    title: String,
    problems: Vec<String>,
    notice: Option<&'static str>,
    id: String,
    kind: String,
    owner: String,
    provenance: String,
    usage_fee: String,
    price: Option<String>,
    lineage: Option<Lineage>,
    /// The lineage drawn, with the job's payments.
    lineage_graph: Option<String>,
    /// From the report of the replica that ran its job, while it has it.
    work: Option<CardWork>,
    manifest: String,
    dataset: Option<DatasetFacts>,
    /// The console's wallet owns it.
    mine: bool,
    has_wallet: bool,
    is_trained: bool,
    /// Its publication (alias or id, price per 1,000 rows) and the call to paste.
    published: Option<(String, String)>,
    snippet: Option<String>,
    errors: crate::forms::FieldErrors,
    form: crate::forms::FormToken,
}

#[derive(serde::Deserialize)]
pub struct DoneQuery {
    done: Option<String>,
}

/// One asset: what it is, who owns it, where it came from, its manifest and its price if listed.
async fn asset(state: web::Data<State>, id: web::Path<String>, query: web::Query<DoneQuery>) -> HttpResponse {
    let Ok(id) = id.parse::<AssetId>() else {
        return error_page(StatusCode::NOT_FOUND, "That is not an asset id.");
    };
    asset_view(
        &state,
        id,
        Default::default(),
        crate::actions::notice_of(query.done.as_deref()),
    )
    .await
}

/// The asset page, with the errors of a form sent from it beside their fields.
pub(crate) async fn asset_view(
    state: &State,
    id: AssetId,
    errors: crate::forms::FieldErrors,
    notice: Option<&'static str>,
) -> HttpResponse {
    let found: Asset = match state.grid.ledger(&LedgerRequest::Asset(id)).await {
        Ok(LedgerResponse::Asset(Some(asset))) => asset,
        Ok(LedgerResponse::Asset(None)) => {
            return error_page(StatusCode::NOT_FOUND, "No such asset: never minted, or burned.")
        }
        Ok(_) | Err(_) => {
            return error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "The ledger could not be read; try again shortly.",
            )
        }
    };
    let mut problems = Vec::new();
    let price = listed_price(&state.grid, id).await;
    let lineage = if found.kind == AssetKind::TrainedModel {
        // The names of the two assets it came from: two reads, not the whole asset table.
        let manifest = manifest_of(&found);
        let mut names = std::collections::HashMap::new();
        for key in ["dataset_asset", "model_asset"] {
            let Some(source) = manifest[key].as_str().and_then(|id| id.parse::<AssetId>().ok()) else {
                continue;
            };
            if let Ok(LedgerResponse::Asset(Some(asset))) =
                state.grid.ledger(&LedgerRequest::Asset(source)).await
            {
                names.insert(source.to_string(), asset.metadata.name);
            }
        }
        lineage_of(&found, &names)
    } else {
        None
    };
    let mut lineage_graph = None;
    let mut work = None;
    if let Some(l) = &lineage {
        if let Ok(job) = l.job.parse::<aic_protocol::JobId>() {
            if let Ok(LedgerResponse::JobSummary(Some((_, summary, job_work)))) =
                state.grid.ledger(&LedgerRequest::JobSummary(job)).await
            {
                let registry = state.grid.nodes().await.unwrap_or_default();
                work = Some(card_work(&job_work, &registry));
                lineage_graph = Some(crate::jobs::lineage_graph(
                    &summary,
                    (l.dataset.clone(), l.dataset_name.clone()),
                    (l.model.clone(), l.model_name.clone()),
                ));
            }
        }
    }
    let dataset = if found.kind == AssetKind::Dataset {
        Some(dataset_facts(state, id, &found, &mut problems).await)
    } else {
        None
    };
    let published = if found.kind == AssetKind::TrainedModel {
        publication_of(state, id).await
    } else {
        None
    };
    let features = match published {
        Some(_) => trained_features(state, &found).await,
        None => Vec::new(),
    };
    let snippet = published.as_ref().and_then(|(name, _)| {
        let gateway = state.gateway.as_ref()?;
        let body = crate::actions::sample_body(&features).replace('\'', "'\\''");
        crate::actions::Snippet {
            gateway: &gateway.url,
            ca: &gateway.ca,
            model: name,
            body: &body,
        }
        .render()
        .ok()
    });
    let manifest = serde_json::from_str::<serde_json::Value>(&found.metadata.manifest)
        .and_then(|m| serde_json::to_string_pretty(&m))
        .unwrap_or_else(|_| found.metadata.manifest.clone());
    let provenance = match &found.provenance {
        Provenance::Registered => "registered by its author".to_string(),
        Provenance::Imported { attesters } => {
            format!("imported, attested by {} storage replicas", attesters.len())
        }
        Provenance::Trained { job } => format!("trained by job {job}"),
    };
    let mine = state.wallet.as_ref().is_some_and(|w| w.address() == found.owner);
    let status = if errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    render(
        status,
        &AssetPage {
            title: found.metadata.name.clone(),
            problems,
            notice,
            id: id.to_string(),
            kind: format!("{:?}", found.kind),
            owner: found.owner.to_string(),
            provenance,
            usage_fee: found.metadata.usage_fee.to_string(),
            price,
            lineage,
            lineage_graph,
            work,
            manifest,
            dataset,
            mine,
            has_wallet: state.wallet.is_some(),
            is_trained: found.kind == AssetKind::TrainedModel,
            published,
            snippet,
            errors,
            form: state.forms.issue(),
        },
    )
}

/// The features a trained model takes: those of the dataset its manifest names.
async fn trained_features(state: &State, asset: &Asset) -> Vec<aic_protocol::encoding::Feature> {
    let Some(dataset) = manifest_of(asset)["dataset_asset"]
        .as_str()
        .and_then(|id| id.parse::<AssetId>().ok())
    else {
        return Vec::new();
    };
    match state.grid.ledger(&LedgerRequest::Asset(dataset)).await {
        Ok(LedgerResponse::Asset(Some(found))) => {
            serde_json::from_value(manifest_of(&found)["features"].clone()).unwrap_or_default()
        }
        _ => Vec::new(),
    }
}

/// A trained model's live publication: the name a caller uses and the price per 1,000 rows.
async fn publication_of(state: &State, id: AssetId) -> Option<(String, String)> {
    let request = LedgerRequest::InferenceAccess {
        key_hash: [0; 32],
        model: id.to_string(),
    };
    match state.grid.ledger(&request).await {
        Ok(LedgerResponse::InferenceAccess(access)) => access.model.map(|m| {
            (
                m.publication.alias.clone().unwrap_or_else(|| id.to_string()),
                m.publication.price_per_1k_rows.to_string(),
            )
        }),
        _ => None,
    }
}

/// Where a dataset is stored, a sample of it, and the jobs that paid for it (from the ledger's
/// job log, newest first).
async fn dataset_facts(
    state: &State,
    id: AssetId,
    asset: &Asset,
    problems: &mut Vec<String>,
) -> DatasetFacts {
    let dataset_id = aic_protocol::manifest::dataset_id_of_hash(&asset.metadata.content_hash);
    let mut facts = DatasetFacts {
        holdings: Vec::new(),
        replicas_wanted: 0,
        preview_columns: Vec::new(),
        preview_rows: Vec::new(),
        usage: Vec::new(),
        fees_paid: String::new(),
    };
    // One node list for both: where the dataset is stored, and which node to ask for rows.
    let nodes = match state.grid.nodes().await {
        Ok(nodes) => nodes,
        Err(e) => {
            problems.push(format!("Where it is stored could not be read: {e}"));
            Vec::new()
        }
    };
    for node in &nodes {
        for holding in node.holdings.iter().filter(|h| h.dataset == dataset_id) {
            facts.replicas_wanted = holding.replicas_wanted;
            facts.holdings.push(HoldingRow {
                node: node.name.clone(),
                state: node.state.as_str().to_string(),
                healthy: holding.healthy_shards,
                shards: holding.shards,
                bytes: format!("{:.1} MiB", holding.bytes as f64 / (1u64 << 20) as f64),
            });
        }
    }
    if !nodes.is_empty() {
        match crate::builder::preview(state, asset, &nodes).await {
            Ok((columns, rows)) => {
                facts.preview_columns = columns;
                facts.preview_rows = rows;
            }
            Err(e) => problems.push(format!("The preview could not be read: {e}")),
        }
    }
    let request = LedgerRequest::JobLog {
        filter: aic_ledger::state::JobLogFilter::Asset(id),
        before: None,
        limit: crate::jobs::JOBS_PER_PAGE,
    };
    match state.grid.ledger(&request).await {
        Ok(LedgerResponse::JobLog { entries, .. }) => {
            let entries: Vec<_> = entries
                .into_iter()
                .filter(|(_, s)| s.dataset == Some(id))
                .collect();
            let fees = entries.iter().fold(aic_ledger::Amount::ZERO, |sum, (_, s)| {
                sum.checked_add(s.dataset_fee).unwrap_or(sum)
            });
            facts.fees_paid = fees.to_string();
            let mut names = std::collections::HashMap::new();
            names.insert(id, asset.metadata.name.clone());
            for model in entries.iter().filter_map(|(_, s)| s.model) {
                if let std::collections::hash_map::Entry::Vacant(slot) = names.entry(model) {
                    if let Ok(LedgerResponse::Asset(Some(found))) =
                        state.grid.ledger(&LedgerRequest::Asset(model)).await
                    {
                        slot.insert(found.metadata.name);
                    }
                }
            }
            facts.usage = crate::jobs::job_rows(&entries, &names);
        }
        Ok(_) | Err(_) => problems.push("The jobs that used it could not be read.".to_string()),
    }
    facts
}
/// The asset's price if it is listed: the first listing from its id on (listings are ordered by
/// asset id, and the page starts after the id just below it).
async fn listed_price(grid: &Grid, id: AssetId) -> Option<String> {
    let below = u128::from_be_bytes(*id.as_bytes())
        .checked_sub(1)
        .map(|n| AssetId::from_bytes(n.to_be_bytes()));
    match grid
        .ledger(&LedgerRequest::Listings {
            after: below,
            limit: 1,
        })
        .await
    {
        Ok(LedgerResponse::Listings(listed)) => listed
            .first()
            .filter(|(listed, _, _)| *listed == id)
            .map(|(_, listing, _)| listing.price.to_string()),
        _ => None,
    }
}

/// Lines of history the wallet page shows.
const HISTORY_LINES: u32 = 50;

struct WalletFacts {
    address: String,
    balance: String,
    spendable: String,
    stake: String,
    inference_escrow: String,
    /// Id, kind, name.
    assets: Vec<(String, String, String)>,
    /// Block, transaction (short), event.
    history: Vec<(u64, String, String)>,
}

#[derive(Template)]
#[template(path = "wallet.html")]
struct WalletPage {
    title: &'static str,
    problems: Vec<String>,
    notice: Option<&'static str>,
    wallet: Option<WalletFacts>,
    /// A key just created, shown this once.
    new_api_key: Option<String>,
    errors: crate::forms::FieldErrors,
    form: crate::forms::FormToken,
}

/// The console user's account: balances, stake, inference escrow, assets and recent history.
async fn wallet(state: web::Data<State>, query: web::Query<DoneQuery>) -> HttpResponse {
    let notice = crate::actions::notice_of(query.done.as_deref());
    let mut page = wallet_page(&state, Default::default(), None).await;
    page.notice = notice;
    render(StatusCode::OK, &page)
}

/// The wallet page after a form: its errors beside their fields (422), or a new API key.
pub(crate) async fn wallet_view(
    state: &State,
    errors: crate::forms::FieldErrors,
    new_api_key: Option<String>,
) -> HttpResponse {
    let status = if errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    render(status, &wallet_page(state, errors, new_api_key).await)
}

async fn wallet_page(
    state: &State,
    errors: crate::forms::FieldErrors,
    new_api_key: Option<String>,
) -> WalletPage {
    let mut problems = Vec::new();
    let wallet = match &state.wallet {
        None => None,
        Some(key) => {
            let address = key.address();
            let requests = [
                LedgerRequest::Account(address),
                LedgerRequest::ApiKeys(address),
                LedgerRequest::Assets { owner: Some(address) },
                LedgerRequest::History {
                    account: address,
                    limit: HISTORY_LINES,
                },
            ];
            let (account, escrow, assets, history) = tokio::join!(
                state.grid.ledger(&requests[0]),
                state.grid.ledger(&requests[1]),
                state.grid.ledger(&requests[2]),
                state.grid.ledger(&requests[3]),
            );
            let mut facts = WalletFacts {
                address: address.to_string(),
                balance: "?".into(),
                spendable: "?".into(),
                stake: "?".into(),
                inference_escrow: "?".into(),
                assets: Vec::new(),
                history: Vec::new(),
            };
            match account {
                Ok(LedgerResponse::Account(view)) => {
                    facts.balance = view.account.balance.to_string();
                    facts.spendable = view.spendable.to_string();
                    facts.stake = view.account.stake.to_string();
                }
                _ => problems.push("The account could not be read.".to_string()),
            }
            if let Ok(LedgerResponse::ApiKeys { escrow, .. }) = escrow {
                facts.inference_escrow = escrow.to_string();
            }
            match assets {
                Ok(LedgerResponse::Assets(owned)) => {
                    facts.assets = owned
                        .into_iter()
                        .map(|(id, a)| (id.to_string(), format!("{:?}", a.kind), a.metadata.name))
                        .collect()
                }
                _ => problems.push("The account's assets could not be read.".to_string()),
            }
            match history {
                Ok(LedgerResponse::History(entries)) => {
                    facts.history = entries
                        .into_iter()
                        .rev()
                        .map(|h| {
                            (
                                h.block_height,
                                hex::encode(&h.tx_hash[..6]),
                                format!("{:?}", h.event),
                            )
                        })
                        .collect()
                }
                _ => problems.push("The account's history could not be read.".to_string()),
            }
            Some(facts)
        }
    };
    WalletPage {
        title: "Wallet",
        problems,
        notice: None,
        wallet,
        new_api_key,
        errors,
        form: state.forms.issue(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_milliseconds_read_as_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        // 2026-11-30 15:45:55 UTC.
        assert_eq!(utc(1_796_053_555_000), "2026-11-30 15:45:55");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00");
    }

    #[test]
    fn the_card_says_which_rounds_a_rewind_trained_again_and_whom_it_dropped() {
        let wrong = aic_protocol::NodeId::from_public_key(b"compute-3");
        let work = aic_ledger::state::JobWork {
            rewinds: vec![(7, 2, wrong)],
            ..Default::default()
        };
        let card = card_work(&work, &[]);
        assert_eq!(
            card.rewinds,
            vec![format!(
                "{} found wrong after round 7: rounds 3 to 7 trained again without it",
                &wrong.to_string()[..12]
            )]
        );
    }
}
