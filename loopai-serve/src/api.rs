//! The routes and their handlers.

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use loopai_core::{ExecutionResult, ExecutionStatus, ExplainOptions};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::http::{self, ApiError, ErrorFields};
use crate::metrics::{self, Route, TaskSnapshot};
use crate::state::{AppState, Mode, Phase};
use crate::tasks::TaskEntry;

/// Batches with more inputs than this run on the blocking pool, so that one large batch
/// does not hold an async worker (and the connections it serves) for milliseconds.
const INLINE_BATCH_INPUTS: usize = 16;

pub(crate) fn router(state: Arc<AppState>) -> Router {
    let mut router = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .route("/v1/execute/{task}", post(execute_task))
        .route("/v1/execute/{task}/batch", post(batch_task))
        .route("/v1/explain/{task}", post(explain_task));
    if state.gateway_enabled {
        router = router.route(
            "/v1/chat/completions",
            post(crate::gateway::chat_completions),
        );
    }
    if state.mode == Mode::Single {
        router = router
            .route("/execute", post(execute_single))
            .route("/execute/batch", post(batch_single))
            .route("/explain", post(explain_single));
    }
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

#[derive(Deserialize)]
struct ExecuteRequest {
    input: Value,
}

#[derive(Deserialize)]
struct ExplainRequest {
    input: Value,
    #[serde(default = "default_top_k")]
    top_k: usize,
}

fn default_top_k() -> usize {
    loopai_core::DEFAULT_EXPLAIN_TOP_K
}

#[derive(Deserialize)]
struct BatchRequest {
    inputs: Vec<Value>,
}

#[derive(Serialize)]
struct ExecuteResponse<'a> {
    output: &'a Value,
    confidence: f64,
    version: u32,
    execution_id: &'a Uuid,
    latency_ms: f64,
    status: ExecutionStatus,
    sampled: bool,
}

impl<'a> From<&'a ExecutionResult> for ExecuteResponse<'a> {
    fn from(r: &'a ExecutionResult) -> Self {
        ExecuteResponse {
            output: &r.output,
            confidence: r.confidence,
            version: r.version,
            execution_id: &r.execution_id,
            latency_ms: r.latency_ms,
            status: r.status,
            sampled: r.sampled,
        }
    }
}

#[derive(Serialize)]
struct BatchResponse<'a> {
    results: Vec<BatchItem<'a>>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum BatchItem<'a> {
    Ok(ExecuteResponse<'a>),
    Err { error: ErrorFields<'a> },
}

fn respond(state: &AppState, route: Route, result: Result<Response, ApiError>) -> Response {
    let response = result.unwrap_or_else(ApiError::into_response);
    state.server.responded(route, response.status().as_u16());
    response
}

/// The bearer token of a request, if any.
fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("");
    match text.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(Some(token.trim())),
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Authorization: expected \"Bearer <key>\"",
        )),
    }
}

/// Authenticates the request (when the server has API keys) and finds the task: 401
/// before anything else, 403 for a task the key may not execute (known or not), 404 for
/// an unknown task, 503 while the runtimes are loading.
fn authorize<'s>(
    state: &'s AppState,
    headers: &HeaderMap,
    task: Option<&str>,
) -> Result<&'s Arc<TaskEntry>, ApiError> {
    let principal = match &state.auth {
        None => None,
        Some(keys) => {
            let token = bearer(headers)?.ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "missing Authorization: Bearer <key> header",
                )
            })?;
            Some(keys.authenticate(token).ok_or_else(|| {
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "unknown API key")
            })?)
        }
    };
    let tasks = state.tasks.get().ok_or_else(|| {
        ApiError::not_ready(match state.phase() {
            Phase::Failed => "the server failed to load its tasks (see GET /health)",
            _ => "the server is loading its tasks; retry when GET /ready is 200",
        })
    })?;
    let name = match task {
        Some(name) => name,
        None => tasks.entries[0].name(),
    };
    if let Some(p) = principal {
        if !p.may_execute(name) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("API key {:?} may not execute task {name:?}", p.name()),
            ));
        }
    }
    tasks.get(name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("task {name:?} is not served here"),
        )
    })
}

fn parse<'a, T: Deserialize<'a>>(body: &'a Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("request body: {e}")))
}

/// Executes one input and counts it.
fn run_one(entry: &TaskEntry, input: &Value) -> loopai_core::Result<ExecutionResult> {
    let result = entry.runtime.execute(input);
    match &result {
        Ok(r) => entry
            .metrics
            .executed(r.version, r.status, r.sampled, r.latency_ms),
        Err(e) => entry
            .metrics
            .failed(entry.runtime.active_version(), e.kind()),
    }
    result
}

async fn execute_on(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    task: Option<&str>,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let entry = authorize(state, headers, task)?;
    http::check_json_content_type(headers)?;
    let bytes = state.read_body(headers, body, entry.body_limit).await?;
    let request: ExecuteRequest = parse(&bytes)?;
    let result = if entry.blocking {
        let entry = Arc::clone(entry);
        tokio::task::spawn_blocking(move || run_one(&entry, &request.input))
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    format!("execution task failed: {e}"),
                )
            })?
    } else {
        run_one(entry, &request.input)
    };
    let response = match result {
        Ok(r) => http::json_response(StatusCode::OK, &ExecuteResponse::from(&r)),
        Err(e) => http::runtime_error(e).into_response(),
    };
    entry.metrics.request_took(start.elapsed());
    Ok(response)
}

/// Explains one input on the active program: nothing is logged or counted as an
/// execution (the request is counted under the `explain` route).
async fn explain_on(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    task: Option<&str>,
) -> Result<Response, ApiError> {
    let entry = authorize(state, headers, task)?;
    http::check_json_content_type(headers)?;
    let bytes = state.read_body(headers, body, entry.body_limit).await?;
    let request: ExplainRequest = parse(&bytes)?;
    let options = ExplainOptions::default().with_top_k(request.top_k);
    // Off the hot path: explaining walks the whole decision, so it never runs inline.
    let entry = Arc::clone(entry);
    let result =
        tokio::task::spawn_blocking(move || entry.runtime.explain_with(&request.input, &options))
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    format!("explain task failed: {e}"),
                )
            })?;
    Ok(match result {
        Ok(explanation) => http::json_response(StatusCode::OK, &explanation),
        Err(e) => http::runtime_error(e).into_response(),
    })
}

async fn explain_single(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let _in_flight = state.server.enter();
    let (parts, body) = request.into_parts();
    let result = explain_on(&state, &parts.headers, body, None).await;
    respond(&state, Route::Explain, result)
}

async fn explain_task(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
    request: Request,
) -> Response {
    let _in_flight = state.server.enter();
    let (parts, body) = request.into_parts();
    let result = match task_path(path) {
        Ok(task) => explain_on(&state, &parts.headers, body, Some(&task)).await,
        Err(e) => Err(e),
    };
    respond(&state, Route::Explain, result)
}

async fn batch_on(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    task: Option<&str>,
) -> Result<Response, ApiError> {
    let entry = authorize(state, headers, task)?;
    http::check_json_content_type(headers)?;
    let bytes = state
        .read_body(headers, body, state.batch_body_limit)
        .await?;
    let request: BatchRequest = parse(&bytes)?;
    if request.inputs.len() > state.max_batch {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "inputs: at most {} inputs per batch, got {}",
                state.max_batch,
                request.inputs.len()
            ),
        ));
    }
    let run = |entry: &TaskEntry, inputs: &[Value]| -> Response {
        let results: Vec<Result<ExecutionResult, ApiError>> = inputs
            .iter()
            .map(|i| run_one(entry, i).map_err(http::runtime_error))
            .collect();
        let results = results
            .iter()
            .map(|r| match r {
                Ok(r) => BatchItem::Ok(ExecuteResponse::from(r)),
                Err(e) => BatchItem::Err {
                    error: ErrorFields {
                        kind: e.kind(),
                        message: e.message(),
                    },
                },
            })
            .collect();
        http::json_response(StatusCode::OK, &BatchResponse { results })
    };
    if entry.blocking || request.inputs.len() > INLINE_BATCH_INPUTS {
        let entry = Arc::clone(entry);
        tokio::task::spawn_blocking(move || run(&entry, &request.inputs))
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    format!("batch task failed: {e}"),
                )
            })
    } else {
        Ok(run(entry, &request.inputs))
    }
}

async fn execute_single(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let _in_flight = state.server.enter();
    let (parts, body) = request.into_parts();
    let result = execute_on(&state, &parts.headers, body, None).await;
    respond(&state, Route::Execute, result)
}

async fn batch_single(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let _in_flight = state.server.enter();
    let (parts, body) = request.into_parts();
    let result = batch_on(&state, &parts.headers, body, None).await;
    respond(&state, Route::Batch, result)
}

fn task_path(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(task)| task)
        .map_err(|e| ApiError::bad_request(format!("task in the path: {e}")))
}

async fn execute_task(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
    request: Request,
) -> Response {
    let _in_flight = state.server.enter();
    let (parts, body) = request.into_parts();
    let result = match task_path(path) {
        Ok(task) => execute_on(&state, &parts.headers, body, Some(&task)).await,
        Err(e) => Err(e),
    };
    respond(&state, Route::Execute, result)
}

async fn batch_task(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
    request: Request,
) -> Response {
    let _in_flight = state.server.enter();
    let (parts, body) = request.into_parts();
    let result = match task_path(path) {
        Ok(task) => batch_on(&state, &parts.headers, body, Some(&task)).await,
        Err(e) => Err(e),
    };
    respond(&state, Route::Batch, result)
}

#[derive(Serialize)]
struct TaskHealth<'a> {
    task: &'a str,
    status: &'static str,
    active_version: u32,
    /// Executions counted by this server since it started.
    executions: u64,
    dataset: &'a loopai_core::DatasetMetrics,
    telemetry: Option<&'a loopai_core::TelemetryMetrics>,
    validation: &'a loopai_core::ValidationMetrics,
}

/// `GET /health`: liveness. 200 unless loading the tasks failed (503).
async fn health(State(state): State<Arc<AppState>>) -> Response {
    let _in_flight = state.server.enter();
    let phase = state.phase();
    let healths: Vec<(Arc<TaskEntry>, loopai_core::Health)> = state
        .tasks
        .get()
        .map(|set| {
            set.entries
                .iter()
                .map(|e| (Arc::clone(e), e.runtime.health()))
                .collect()
        })
        .unwrap_or_default();
    let tasks: Vec<TaskHealth<'_>> = healths
        .iter()
        .map(|(e, h)| TaskHealth {
            task: e.name(),
            status: h.status,
            active_version: h.active_version,
            executions: e.metrics.executions(),
            dataset: &h.dataset,
            telemetry: h.telemetry.as_ref(),
            validation: &h.validation,
        })
        .collect();
    let status = match phase {
        Phase::Ready if tasks.iter().any(|t| t.status != "ok") => "degraded",
        Phase::Ready => "ok",
        other => other.name(),
    };
    let problems = log_problems(
        healths
            .iter()
            .map(|(e, h)| (e.name(), h.status, &h.dataset)),
    );
    let mut body = serde_json::Map::new();
    body.insert("status".into(), status.into());
    body.insert("version".into(), env!("CARGO_PKG_VERSION").into());
    body.insert(
        "ready".into(),
        (phase == Phase::Ready && (problems.is_empty() || !state.ready_requires_log)).into(),
    );
    if !problems.is_empty() {
        // Why /ready is 503 (or would be, with ready_requires_log).
        body.insert("log_unwritable".into(), problems.join("; ").into());
    }
    if let Some((kind, message)) = state.load_error.lock().as_ref() {
        body.insert(
            "error".into(),
            serde_json::json!({"kind": kind.name(), "message": message}),
        );
    }
    match state.mode {
        Mode::Single => {
            body.insert("task".into(), state.task_names[0].as_str().into());
            let t = tasks.first();
            body.insert(
                "active_version".into(),
                t.map_or(Value::Null, |t| t.active_version.into()),
            );
            if let Some(t) = t {
                body.insert("executions".into(), t.executions.into());
                body.insert("dataset".into(), json_value(t.dataset));
                body.insert("telemetry".into(), json_value(&t.telemetry));
                body.insert("validation".into(), json_value(t.validation));
            }
        }
        Mode::Central => {
            body.insert("tasks".into(), json_value(&tasks));
        }
    }
    if let Some(gw) = state.gateway.get() {
        body.insert("gateway".into(), crate::gateway_state::health_json(gw));
    }
    let code = if phase == Phase::Failed {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    respond(&state, Route::Health, Ok(http::json_response(code, &body)))
}

fn json_value<T: Serialize + ?Sized>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or_else(|e| Value::String(format!("unencodable: {e}")))
}

/// The tasks whose execution log cannot be written, each with the reason.
fn log_problems<'a>(
    tasks: impl Iterator<Item = (&'a str, &'a str, &'a loopai_core::DatasetMetrics)>,
) -> Vec<String> {
    tasks
        .filter(|(_, status, _)| *status != "ok")
        .map(|(task, _, dataset)| {
            format!(
                "task {task}: the execution log cannot be written: {}",
                dataset
                    .last_error
                    .as_deref()
                    .unwrap_or("the log writer stopped")
            )
        })
        .collect()
}

/// `GET /ready`: 200 once every task is loaded, 503 before and once shutdown began, and
/// (with `ready_requires_log`, the default) while an execution log cannot be written.
async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let _in_flight = state.server.enter();
    let phase = state.phase();
    let problems = if phase == Phase::Ready && state.ready_requires_log {
        log_problems_of(&state).await
    } else {
        Vec::new()
    };
    let body = if phase != Phase::Ready {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "status": phase.name() }),
        )
    } else if problems.is_empty() {
        (StatusCode::OK, serde_json::json!({ "status": "ready" }))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "status": "log_unwritable", "reason": problems.join("; ") }),
        )
    };
    respond(
        &state,
        Route::Ready,
        Ok(http::json_response(body.0, &body.1)),
    )
}

/// [`log_problems`] of every task, read off the async workers (health takes the runtimes'
/// locks briefly).
async fn log_problems_of(state: &Arc<AppState>) -> Vec<String> {
    let entries: Vec<Arc<TaskEntry>> = state
        .tasks
        .get()
        .map(|set| set.entries.clone())
        .unwrap_or_default();
    tokio::task::spawn_blocking(move || {
        let healths: Vec<(Arc<TaskEntry>, loopai_core::Health)> = entries
            .into_iter()
            .map(|e| {
                let h = e.runtime.health();
                (e, h)
            })
            .collect();
        log_problems(
            healths
                .iter()
                .map(|(e, h)| (e.name(), h.status, &h.dataset)),
        )
    })
    .await
    .unwrap_or_else(|e| vec![format!("health check failed: {e}")])
}

/// `GET /metrics`: Prometheus text format.
async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    let _in_flight = state.server.enter();
    let entries: Vec<Arc<TaskEntry>> = state
        .tasks
        .get()
        .map(|set| set.entries.clone())
        .unwrap_or_default();
    // Health takes the runtimes' locks (briefly, but the log writer may hold one while it
    // syncs): not on an async worker.
    let st = Arc::clone(&state);
    let rendered = tokio::task::spawn_blocking(move || {
        let snapshots: Vec<TaskSnapshot<'_>> = entries
            .iter()
            .map(|e| TaskSnapshot {
                task: e.name(),
                metrics: &e.metrics,
                health: e.runtime.health(),
            })
            .collect();
        let log_ok = !st.ready_requires_log
            || log_problems(
                snapshots
                    .iter()
                    .map(|s| (s.task, s.health.status, &s.health.dataset)),
            )
            .is_empty();
        let mut text =
            metrics::render(&st.server, st.phase() == Phase::Ready && log_ok, &snapshots);
        st.connections.render_prometheus(&mut text);
        if let Some(gw) = st.gateway.get() {
            crate::gateway_state::render_metrics(gw, &mut text);
        }
        text
    })
    .await;
    let result = rendered
        .map(|text| {
            http::bytes_response(
                StatusCode::OK,
                HeaderValue::from_static(metrics::CONTENT_TYPE),
                text.into_bytes(),
            )
        })
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("rendering metrics: {e}"),
            )
        });
    respond(&state, Route::Metrics, result)
}

async fn not_found(State(state): State<Arc<AppState>>, uri: axum::http::Uri) -> Response {
    respond(
        &state,
        Route::Other,
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no route for {}", uri.path()),
        )),
    )
}

async fn method_not_allowed(
    State(state): State<Arc<AppState>>,
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> Response {
    respond(
        &state,
        Route::Other,
        Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not allowed on {}", uri.path()),
        )),
    )
}
