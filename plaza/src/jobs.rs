//! The Jobs pages: the job history, paged from the ledger's job log (so it outlives the replica
//! that ran a job), and one job's page — what the ledger records of it, and while the replica
//! running it answers, its live progress: the training curve, each task's node and cost terms,
//! the spot checks, the escrow left — pushed to the browser as server-sent events.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use aic_ledger::api::{LedgerRequest, LedgerResponse};
use aic_ledger::state::{JobLogFilter, JobOutcome, JobSummary};
use aic_protocol::{AssetId, JobId};
use askama::Template;
use serde::Deserialize;
use serde_json::Value;

use crate::pages::{error_page, render, State};
use crate::plots;

/// Jobs one history page shows.
pub const JOBS_PER_PAGE: u32 = 50;
/// Tasks the job page lists (the latest).
const TASKS_SHOWN: usize = 40;
/// How often the live stream asks the runner for progress.
const LIVE_EVERY: Duration = Duration::from_millis(500);
/// The longest a live stream stays open; the page reconnects after.
const LIVE_FOR: Duration = Duration::from_secs(3600);

/// One line of the job history.
pub struct JobRow {
    pub number: u64,
    pub id: String,
    pub short_id: String,
    pub opened: String,
    pub payer: String,
    pub dataset: Option<(String, String)>,
    pub model: Option<(String, String)>,
    pub outcome: &'static str,
    pub rounds: u32,
    pub budget: String,
    pub paid: String,
    pub refunded: String,
    /// Id and its short form.
    pub trained: Option<(String, String)>,
}

#[derive(Template)]
#[template(path = "jobs.html")]
pub struct JobsPage {
    pub title: &'static str,
    pub problems: Vec<String>,
    pub rows: Vec<JobRow>,
    pub total: u64,
    pub mine: bool,
    pub has_wallet: bool,
    /// The link to the next (older) page, if there is one.
    pub older: Option<String>,
    /// The dataset or model the page is limited to.
    pub asset: Option<String>,
}

/// Names of the assets the rows name: one read per distinct asset, not the asset table.
async fn asset_names(state: &State, entries: &[(u64, JobSummary)]) -> HashMap<AssetId, String> {
    let mut names = HashMap::new();
    for id in entries.iter().flat_map(|(_, s)| [s.dataset, s.model]).flatten() {
        if names.contains_key(&id) {
            continue;
        }
        let name = match state.grid.ledger(&LedgerRequest::Asset(id)).await {
            Ok(LedgerResponse::Asset(Some(asset))) => asset.metadata.name,
            _ => id.to_string()[..12].to_string(),
        };
        names.insert(id, name);
    }
    names
}

/// The history's rows from log entries and the names of their assets.
pub fn job_rows(entries: &[(u64, JobSummary)], names: &HashMap<AssetId, String>) -> Vec<JobRow> {
    let named = |id: Option<AssetId>| {
        id.map(|id| {
            let name = names.get(&id).cloned().unwrap_or_else(|| id.to_string());
            (id.to_string(), name)
        })
    };
    entries
        .iter()
        .map(|(number, s)| JobRow {
            number: *number,
            id: s.job.to_string(),
            short_id: s.job.to_string()[..12].to_string(),
            opened: crate::pages::utc(s.opened_ms),
            payer: s.payer.short(),
            dataset: named(s.dataset),
            model: named(s.model),
            outcome: s.outcome.as_str(),
            rounds: s.rounds,
            budget: s.budget.to_string(),
            paid: s.paid().to_string(),
            refunded: s.refunded.to_string(),
            trained: s
                .trained_model
                .map(|a| (a.to_string(), a.to_string()[..12].to_string())),
        })
        .collect()
}

#[derive(Deserialize)]
pub struct HistoryQuery {
    before: Option<u64>,
    mine: Option<u8>,
    /// Only the jobs that trained on this dataset or with this model.
    asset: Option<String>,
}

/// The job history, newest first, a page at a time; all jobs, the console user's, or those of
/// one dataset or model.
pub async fn history(state: web::Data<State>, query: web::Query<HistoryQuery>) -> HttpResponse {
    let mut problems = Vec::new();
    let asset = match query.asset.as_deref().map(str::parse::<AssetId>) {
        None => None,
        Some(Ok(asset)) => Some(asset),
        Some(Err(_)) => return error_page(StatusCode::NOT_FOUND, "That is not an asset id."),
    };
    let mine = query.mine == Some(1) && state.wallet.is_some() && asset.is_none();
    let filter = match (&state.wallet, mine, asset) {
        (_, _, Some(asset)) => JobLogFilter::Asset(asset),
        (Some(key), true, None) => JobLogFilter::Payer(key.address()),
        _ => JobLogFilter::All,
    };
    let request = LedgerRequest::JobLog {
        filter,
        before: query.before,
        limit: JOBS_PER_PAGE,
    };
    let (entries, total) = match state.grid.ledger(&request).await {
        Ok(LedgerResponse::JobLog { entries, total }) => (entries, total),
        Ok(other) => {
            problems.push(format!("unexpected ledger answer: {other:?}"));
            (Vec::new(), 0)
        }
        Err(e) => {
            problems.push(format!("The job log could not be read: {e}"));
            (Vec::new(), 0)
        }
    };
    let names = asset_names(&state, &entries).await;
    let older = (entries.len() == JOBS_PER_PAGE as usize)
        .then(|| entries.last().map(|(n, _)| *n))
        .flatten()
        .filter(|n| *n > 0)
        .map(|n| match asset {
            Some(asset) => format!("/jobs?before={n}&asset={asset}"),
            None => format!("/jobs?before={n}{}", if mine { "&mine=1" } else { "" }),
        });
    render(
        StatusCode::OK,
        &JobsPage {
            title: "Jobs",
            problems,
            rows: job_rows(&entries, &names),
            total,
            mine,
            has_wallet: state.wallet.is_some(),
            older,
            asset: asset.map(|a| a.to_string()),
        },
    )
}

struct TaskLine {
    round: u64,
    kind: String,
    node: String,
    shard: String,
    storage: String,
    rtt_ms: String,
    transfer_s: String,
    queue_s: String,
    compute_s: String,
    reputation: String,
    cost: String,
}

struct CheckLine {
    round: u64,
    original: String,
    checker: String,
    verdict: String,
}

/// What changes while a job runs: re-rendered for each server-sent event.
#[derive(Template)]
#[template(path = "job_live.html")]
struct JobLive {
    id: String,
    /// Whether the page should keep listening.
    running: bool,
    state: String,
    rounds: String,
    epoch: String,
    loss: String,
    accuracy: String,
    escrow_left: String,
    curve: Option<String>,
    /// The held-out accuracy (or R²) at each evaluation.
    held_out_curve: Option<String>,
    tasks: Vec<TaskLine>,
    spot_checks: Vec<CheckLine>,
    payments: Vec<(String, String, String)>,
    error: String,
    /// Why the live part is missing, when the replica that ran the job does not answer for it.
    unavailable: String,
}

#[derive(Template)]
#[template(path = "job.html")]
struct JobPage {
    title: String,
    problems: Vec<String>,
    id: String,
    summary: Option<JobSummary>,
    dataset: Option<(String, String)>,
    model: Option<(String, String)>,
    trained: Option<String>,
    paid: String,
    lineage: Option<String>,
    live: String,
}

fn number(value: &Value, digits: usize) -> String {
    value
        .as_f64()
        .map_or_else(|| "—".into(), |v| format!("{v:.digits$}"))
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The held-out score per evaluation: accuracy for a classifier, R² for a regression.
fn held_out_curve(report: &Value) -> Option<String> {
    let points = report["held_out"].as_array()?;
    let measure = if points.iter().any(|p| p.get("r2").is_some()) {
        "r2"
    } else {
        "accuracy"
    };
    let values: Vec<(u32, f64)> = points
        .iter()
        .filter_map(|p| Some((u32::try_from(p["round"].as_u64()?).ok()?, p[measure].as_f64()?)))
        .collect();
    let label = if measure == "r2" {
        "held-out R²"
    } else {
        "held-out accuracy"
    };
    plots::round_curve(&values, label)
}

/// The live part of a job's page from the runner's report and the escrow.
async fn live_part(state: &State, job: JobId, summary: Option<&JobSummary>) -> JobLive {
    let report = state.grid.job(job).await;
    let escrow = match state.grid.ledger(&LedgerRequest::Escrow(job)).await {
        Ok(LedgerResponse::Escrow(Some(escrow))) => format!("{} AIC", escrow.remaining),
        Ok(LedgerResponse::Escrow(None)) => "closed".into(),
        _ => "?".into(),
    };
    let ledger_running =
        summary.is_some_and(|s| matches!(s.outcome, JobOutcome::Escrowed | JobOutcome::Running));
    let mut live = JobLive {
        id: job.to_string(),
        running: ledger_running,
        state: summary.map_or("unknown", |s| s.outcome.as_str()).to_string(),
        rounds: summary.map_or_else(String::new, |s| s.rounds.to_string()),
        epoch: String::new(),
        loss: "—".into(),
        accuracy: "—".into(),
        escrow_left: escrow,
        curve: None,
        held_out_curve: None,
        tasks: Vec::new(),
        spot_checks: Vec::new(),
        payments: Vec::new(),
        error: String::new(),
        unavailable: String::new(),
    };
    let report = match report {
        Ok(Some((state, report))) => {
            live.running = state == "running";
            live.state = state;
            report
        }
        Ok(None) => {
            live.unavailable = "The scheduler replica asked does not hold this job's report (another replica ran it, or it restarted); what the ledger recorded is above.".into();
            return live;
        }
        Err(e) => {
            live.unavailable = format!("The job's progress could not be read: {e}");
            return live;
        }
    };
    live.rounds = text(&report["rounds"]);
    live.epoch = text(&report["epoch"]);
    live.loss = number(&report["loss"], 4);
    live.accuracy = crate::pages::accuracy_text(&report);
    if report["accuracy"].is_null() && report["r2"].is_null() {
        // Before the final evaluation: the latest periodic one, named by its round.
        if let Some(point) = report["held_out"].as_array().and_then(|p| p.last()) {
            live.accuracy = format!(
                "{} (after round {})",
                crate::pages::accuracy_text(point),
                text(&point["round"])
            );
        }
    }
    live.error = text(&report["error"]);
    let curve: Vec<(u32, f64)> = report["curve"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["round"].as_u64()? as u32, p["loss"].as_f64()?)))
        .collect();
    live.curve = plots::loss_curve(&curve);
    live.held_out_curve = held_out_curve(&report);
    let tasks = report["tasks"].as_array().cloned().unwrap_or_default();
    live.tasks = tasks
        .iter()
        .rev()
        .take(TASKS_SHOWN)
        .map(|t| TaskLine {
            round: t["round"].as_u64().unwrap_or(0),
            kind: text(&t["kind"]),
            node: text(&t["node"]),
            shard: text(&t["shard"]).chars().take(12).collect(),
            storage: text(&t["storage_node"]),
            rtt_ms: number(&t["cost"]["rtt_ms"], 2),
            transfer_s: number(&t["cost"]["transfer_secs"], 4),
            queue_s: number(&t["cost"]["queue_secs"], 4),
            compute_s: number(&t["cost"]["compute_secs"], 4),
            reputation: number(&t["cost"]["reputation"], 2),
            cost: number(&t["cost"]["total"], 4),
        })
        .collect();
    live.spot_checks = report["spot_checks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| CheckLine {
            round: c["round"].as_u64().unwrap_or(0),
            original: text(&c["original"]),
            checker: text(&c["checker"]),
            verdict: text(&c["verdict"]),
        })
        .collect();
    live.payments = report["payments"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| (text(&p["role"]), text(&p["to"]), text(&p["amount"])))
        .collect();
    live
}

/// The ledger's entry for a job, or why not.
async fn summary_of(state: &State, job: JobId) -> Result<Option<JobSummary>, String> {
    match state.grid.ledger(&LedgerRequest::JobSummary(job)).await {
        Ok(LedgerResponse::JobSummary(found)) => Ok(found.map(|(_, s, _)| s)),
        Ok(other) => Err(format!("unexpected ledger answer: {other:?}")),
        Err(e) => Err(e),
    }
}

/// One job: its ledger record, its lineage, and its live progress.
pub async fn job(state: web::Data<State>, id: web::Path<String>) -> HttpResponse {
    let Ok(job) = id.parse::<JobId>() else {
        return error_page(StatusCode::NOT_FOUND, "That is not a job id.");
    };
    let mut problems = Vec::new();
    let summary = match summary_of(&state, job).await {
        Ok(Some(summary)) => Some(summary),
        Ok(None) => {
            return error_page(
                StatusCode::NOT_FOUND,
                "No such job: the ledger never escrowed it.",
            )
        }
        Err(e) => {
            problems.push(format!("The ledger could not be read: {e}"));
            None
        }
    };
    let entries: Vec<(u64, JobSummary)> = summary.iter().map(|s| (0, s.clone())).collect();
    let names = asset_names(&state, &entries).await;
    let row = job_rows(&entries, &names).into_iter().next();
    let lineage = summary.as_ref().and_then(|s| {
        let row = row.as_ref()?;
        Some(lineage_graph(s, row.dataset.clone()?, row.model.clone()?))
    });
    let live = live_part(&state, job, summary.as_ref()).await;
    let live = live
        .render()
        .unwrap_or_else(|e| format!("<p>rendering the progress: {e}</p>"));
    render(
        StatusCode::OK,
        &JobPage {
            title: format!("Job {}", &job.to_string()[..12]),
            problems,
            id: job.to_string(),
            paid: summary
                .as_ref()
                .map_or_else(String::new, |s| s.paid().to_string()),
            dataset: row.as_ref().and_then(|r| r.dataset.clone()),
            model: row.as_ref().and_then(|r| r.model.clone()),
            trained: summary
                .as_ref()
                .and_then(|s| s.trained_model)
                .map(|t| t.to_string()),
            summary,
            lineage,
            live,
        },
    )
}

/// Dataset and model → job → trained model, with what the job paid each, as an SVG graph.
pub fn lineage_graph(s: &JobSummary, dataset: (String, String), model: (String, String)) -> String {
    let node = |label: &str, (id, name): (String, String)| plots::LineageNode {
        label: label.into(),
        name,
        href: format!("/assets/{id}"),
    };
    let job = s.job.to_string();
    plots::lineage(&plots::LineageGraph {
        dataset: node("Dataset", dataset),
        model: node("Model", model),
        job: plots::LineageNode {
            label: "Job".into(),
            name: job[..12].to_string(),
            href: format!("/jobs/{job}"),
        },
        trained: s.trained_model.map(|t| plots::LineageNode {
            label: "TrainedModel".into(),
            name: t.to_string()[..12].to_string(),
            href: format!("/assets/{t}"),
        }),
        dataset_fee: s.dataset_fee.to_string(),
        model_fee: s.model_fee.to_string(),
        compute_paid: s.compute_paid.to_string(),
    })
}

/// Server-sent events: the job's live part each time it changes, then `done` when it ends.
pub async fn events(state: web::Data<State>, id: web::Path<String>) -> HttpResponse {
    let Ok(job) = id.parse::<JobId>() else {
        return error_page(StatusCode::NOT_FOUND, "That is not a job id.");
    };
    struct Stream {
        state: web::Data<State>,
        job: JobId,
        last: String,
        ended: bool,
        opened: Instant,
        first: bool,
    }
    let start = Stream {
        state,
        job,
        last: String::new(),
        ended: false,
        opened: Instant::now(),
        first: true,
    };
    let stream = futures::stream::unfold(start, |mut s| async move {
        if s.ended || s.opened.elapsed() > LIVE_FOR {
            return None;
        }
        loop {
            if !s.first {
                tokio::time::sleep(LIVE_EVERY).await;
            }
            s.first = false;
            let summary = summary_of(&s.state, s.job).await.ok().flatten();
            let live = live_part(&s.state, s.job, summary.as_ref()).await;
            let html = live.render().unwrap_or_default();
            if !live.running {
                s.ended = true;
                let mut event = sse("progress", &html);
                event.push_str(&sse("done", "ended"));
                return Some((Ok::<_, actix_web::Error>(web::Bytes::from(event)), s));
            }
            if html != s.last {
                s.last = html.clone();
                return Some((Ok(web::Bytes::from(sse("progress", &html))), s));
            }
            if s.opened.elapsed() > LIVE_FOR {
                return None;
            }
        }
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .streaming(stream)
}

/// One server-sent event: each line of the payload its own `data:` line.
fn sse(event: &str, payload: &str) -> String {
    let mut out = format!("event: {event}\n");
    for line in payload.lines() {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_event_carries_every_line_of_its_payload() {
        assert_eq!(
            super::sse("progress", "<p>\nround 3</p>"),
            "event: progress\ndata: <p>\ndata: round 3</p>\n\n"
        );
    }
}
