//! The Open Inference Protocol v2 REST endpoints over HTTPS (actix-web): server and model
//! metadata, liveness and readiness, inference, and an OpenAPI document of them. Every error is
//! the protocol's `{"error": "..."}` with a status chosen from the typed refusal, never from its
//! text; a refused call costs nothing and reaches no compute node.
//!
//! The handlers run on actix's worker threads; each call's work (ledger reads, the compute node,
//! the meter) runs on the gateway's main runtime, where its QUIC connections live.

use std::sync::Arc;
use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use aic_kernels::KernelError;
use futures::StreamExt;
use serde_json::{json, Value};

use super::access::{self, Denied};
use super::dispatch::DispatchError;
use super::metrics::UNKNOWN_MODEL;
use super::oip::{self, InferRequestBody, TensorError};
use super::Gateway;

/// The OpenAPI document of these endpoints.
const OPENAPI: &str = include_str!("openapi.json");

/// What the handlers share.
pub struct HttpState {
    pub gateway: Arc<Gateway>,
    pub runtime: tokio::runtime::Handle,
}

/// An error answer: a status and the protocol's error body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    /// Seconds a refused caller should wait (`Retry-After`).
    retry_after_secs: Option<u64>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if let Some(secs) = self.retry_after_secs {
            response.insert_header((actix_web::http::header::RETRY_AFTER, secs.to_string()));
        }
        response.json(json!({ "error": self.message }))
    }
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            retry_after_secs: None,
        }
    }
}

impl From<Denied> for ApiError {
    fn from(denied: Denied) -> Self {
        let status = match &denied {
            Denied::NoKey | Denied::UnknownKey => StatusCode::UNAUTHORIZED,
            Denied::RevokedKey => StatusCode::FORBIDDEN,
            Denied::UnknownModel(_) | Denied::UnknownVersion { .. } => StatusCode::NOT_FOUND,
            Denied::NoFunds { .. } => StatusCode::PAYMENT_REQUIRED,
            Denied::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Denied::BrokenModel(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Denied::Ledger(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        let mut error = ApiError::new(status, denied.to_string());
        if let Denied::RateLimited { retry_after_secs } = denied {
            error.retry_after_secs = Some(retry_after_secs);
        }
        error
    }
}

impl From<TensorError> for ApiError {
    fn from(error: TensorError) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, error.to_string())
    }
}

impl From<DispatchError> for ApiError {
    fn from(error: DispatchError) -> Self {
        let status = match &error {
            DispatchError::NoNode | DispatchError::QueueFull | DispatchError::Stopping => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            DispatchError::Failed(_) => StatusCode::BAD_GATEWAY,
        };
        ApiError::new(status, error.to_string())
    }
}

/// Rows that do not encode (a cell the column's encoding refuses) are the caller's; anything
/// else the kernels refuse is the gateway's.
fn kernel_error(error: KernelError) -> ApiError {
    match error {
        KernelError::Input(input) => ApiError::new(StatusCode::BAD_REQUEST, input.to_string()),
        other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    }
}

pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/v2", web::get().to(server_metadata))
        .route("/v2/health/live", web::get().to(live))
        .route("/v2/health/ready", web::get().to(ready))
        .route("/v2/openapi.json", web::get().to(openapi))
        .route("/v2/models/{name}", web::get().to(model_metadata))
        .route(
            "/v2/models/{name}/versions/{version}",
            web::get().to(model_metadata),
        )
        .route("/v2/models/{name}/ready", web::get().to(model_ready))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            web::get().to(model_ready),
        )
        .route("/v2/models/{name}/infer", web::post().to(infer))
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            web::post().to(infer),
        )
        .default_service(web::to(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such endpoint (see GET /v2/openapi.json)",
            )
            .error_response()
        }));
}

/// The model name and optional version of a model route.
#[derive(serde::Deserialize)]
struct ModelPath {
    name: String,
    version: Option<String>,
}

async fn server_metadata() -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "name": "aic-gateway",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": [],
    }))
}

async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "live": true }))
}

async fn openapi() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(OPENAPI)
}

/// Ready when the ledger answers and a compute node is known.
async fn ready(state: web::Data<HttpState>) -> Result<HttpResponse, ApiError> {
    let gateway = state.gateway.clone();
    let ledger_up = on_main(&state, async move {
        gateway
            .ledger
            .request(&aic_ledger::api::LedgerRequest::Status)
            .await
            .is_ok()
    })
    .await?;
    if ledger_up && state.gateway.dispatcher.has_nodes() {
        Ok(HttpResponse::Ok().json(json!({ "ready": true })))
    } else {
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            if ledger_up {
                "no compute node is available"
            } else {
                "the ledger does not answer"
            },
        ))
    }
}

/// Runs `work` on the gateway's main runtime.
async fn on_main<T: Send + 'static>(
    state: &HttpState,
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, ApiError> {
    state
        .runtime
        .spawn(work)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

async fn model_metadata(
    state: web::Data<HttpState>,
    path: web::Path<ModelPath>,
) -> Result<HttpResponse, ApiError> {
    let gateway = state.gateway.clone();
    let path = path.into_inner();
    on_main(&state, async move {
        let (published, entry) = resolve(&gateway, &path).await?;
        let pre = &entry.preprocessor;
        Ok::<_, ApiError>(json!({
            "name": path.name,
            "versions": [entry.version],
            "platform": "aic-layer-graph",
            "inputs": oip::input_metadata(pre),
            "outputs": oip::output_metadata(pre),
            "parameters": {
                "asset": entry.id.to_string(),
                "alias": published.publication.alias,
                "job": entry.version,
                "classes": pre.classes(),
                "price_per_1k_rows": published.publication.price_per_1k_rows.to_string(),
                "preprocessing": "send the raw columns the dataset was imported with: the gateway applies the import's encoding (standardisation with its means and standard deviations, one-hot category codes, dates as days) before the model",
            },
        }))
    })
    .await?
    .map(|value| HttpResponse::Ok().json(value))
}

async fn model_ready(
    state: web::Data<HttpState>,
    path: web::Path<ModelPath>,
) -> Result<HttpResponse, ApiError> {
    let gateway = state.gateway.clone();
    let path = path.into_inner();
    on_main(&state, async move {
        resolve(&gateway, &path).await?;
        Ok::<_, ApiError>(json!({ "name": path.name, "ready": true }))
    })
    .await?
    .map(|value| HttpResponse::Ok().json(value))
}

/// The published model a model route names, built, at the version the route asks for.
async fn resolve(
    gateway: &Gateway,
    path: &ModelPath,
) -> Result<(aic_ledger::api::PublishedModel, Arc<access::ModelEntry>), Denied> {
    let published = access::published(&gateway.ledger, &path.name).await?;
    let entry = gateway.models.entry(&gateway.ledger, &published).await?;
    check_version(path, &entry.version)?;
    Ok((published, entry))
}

fn check_version(path: &ModelPath, actual: &str) -> Result<(), Denied> {
    match &path.version {
        Some(version) if version != actual => Err(Denied::UnknownVersion {
            model: path.name.clone(),
            version: version.clone(),
            actual: actual.to_string(),
        }),
        _ => Ok(()),
    }
}

/// The API key of `Authorization: Bearer <key>`.
fn bearer(request: &HttpRequest) -> Option<String> {
    let value = request
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let key = value.strip_prefix("Bearer ")?.trim();
    (!key.is_empty()).then(|| key.to_string())
}

/// Reads the body, refusing it at the configured limit before it is all in memory.
async fn read_body(mut payload: web::Payload, limit: usize) -> Result<Vec<u8>, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body exceeds {limit} bytes"),
        )
    };
    let mut body = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("reading the body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

async fn infer(
    state: web::Data<HttpState>,
    request: HttpRequest,
    path: web::Path<ModelPath>,
    payload: web::Payload,
) -> HttpResponse {
    let started = Instant::now();
    let path = path.into_inner();
    let gateway = state.gateway.clone();
    let limit = gateway.config.limits.max_body_bytes;
    let declared = request
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let (served_model, answer) = match declared {
        Some(length) if length > limit => (
            None,
            Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body's {length} bytes exceed {limit}"),
            )),
        ),
        _ => match read_body(payload, limit).await {
            Err(e) => (None, Err(e)),
            Ok(body) => {
                let key = bearer(&request);
                let answered = on_main(&state, async move {
                    let mut served_model = None;
                    let answer = run_infer(&gateway, path, key, &body, &mut served_model).await;
                    (served_model, answer)
                })
                .await;
                answered.unwrap_or_else(|e| (None, Err(e)))
            }
        },
    };
    // Metric labels name only models that exist: a URL's text is the caller's to choose.
    let label = served_model.unwrap_or_else(|| UNKNOWN_MODEL.to_string());
    let response = match answer {
        Ok(value) => HttpResponse::Ok().json(value),
        Err(error) => error.error_response(),
    };
    let metrics = &state.gateway.metrics;
    metrics
        .requests
        .with_label_values(&[&label, response.status().as_str()])
        .inc();
    metrics
        .request_duration
        .with_label_values(&[&label])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// One inference call, checked in order — key, rate, body, publication, version, outputs, rows,
/// funds — before any compute node is asked.
async fn run_infer(
    gateway: &Gateway,
    path: ModelPath,
    key: Option<String>,
    body: &[u8],
    served_model: &mut Option<String>,
) -> Result<Value, ApiError> {
    let key = key.ok_or(Denied::NoKey)?;
    gateway.limiter.admit(&access::key_hash(&key))?;
    let request: InferRequestBody = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the body is not an inference request: {e}"),
        )
    })?;
    let access = access::check(&gateway.ledger, &gateway.access, Some(&key), &path.name).await?;
    let entry = gateway.models.entry(&gateway.ledger, &access.published).await?;
    *served_model = Some(entry.label.clone());
    check_version(&path, &entry.version)?;
    let pre = &entry.preprocessor;
    oip::check_requested(pre, request.outputs.as_deref())?;
    let max_rows = gateway.config.limits.max_rows_per_request as usize;
    let (header, rows) = oip::rows_of(&request.inputs, pre, max_rows)?;
    let features = pre.encode(&header, &rows).map_err(kernel_error)?;
    let n = rows.len() as u64;
    let tariff = gateway.tariff;
    let prices = [
        access.published.publication.price_per_1k_rows,
        tariff.compute_per_1k_rows,
        tariff.platform_per_1k_rows,
    ];
    let cost = access::call_cost(&prices, n);
    gateway
        .meter
        .reserve(access.account, cost, access.escrow)
        .map_err(|available| Denied::NoFunds {
            needed: cost,
            available,
        })?;
    let served = match gateway
        .dispatcher
        .serve(&entry.served, features, pre.output_width())
        .await
    {
        Ok(served) => served,
        Err(e) => {
            gateway.meter.release(access.account, cost);
            return Err(e.into());
        }
    };
    let answers = match pre.answers(&served.outputs) {
        Ok(answers) => answers,
        Err(e) => {
            gateway.meter.release(access.account, cost);
            return Err(kernel_error(e));
        }
    };
    gateway
        .meter
        .record(access.account, entry.id, &served.served_by, cost);
    gateway.metrics.rows.with_label_values(&[&entry.label]).inc_by(n);
    gateway
        .metrics
        .charged
        .with_label_values(&[&entry.label])
        .inc_by(cost.as_aic_f64());
    let outputs = oip::outputs_of(&answers, pre, request.outputs.as_deref())?;
    Ok(json!({
        "model_name": path.name,
        "model_version": entry.version,
        "id": request.id,
        "outputs": outputs,
    }))
}
