//! The artifact repository endpoints and the notification hub:
//!
//! * `GET /api/v1/artifacts/{task}/versions` — the versions list, with `ETag` /
//!   `If-None-Match` → 304;
//! * `GET /api/v1/artifacts/{task}/v{N}/download` — the archive of one version;
//! * `POST /api/v1/artifacts/{task}/upload[?version=N]` — publish (publisher key);
//! * `GET /api/v1/notifications/{task}` — server-sent events: `artifact` on publish (and
//!   once on connect, with the latest version), `heartbeat` every few seconds.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::Stream;
use loopai_core::validate_task_id;
use tokio::sync::{broadcast, watch};

use crate::auth::Role;
use crate::http::{self, ApiError};
use crate::publish;
use crate::repository::etag;
use crate::state::AppState;
use crate::storage::Published;

/// Roles that may read the repository and subscribe to notifications.
const READERS: &[Role] = &[Role::Deployment, Role::Publisher];

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/artifacts/{task}/versions", get(versions))
        .route("/api/v1/artifacts/{task}/{version}/download", get(download))
        .route("/api/v1/artifacts/{task}/upload", post(upload))
        .route("/api/v1/notifications/{task}", get(notifications))
}

fn check_task(task: &str) -> Result<(), ApiError> {
    validate_task_id(task).map_err(|e| ApiError::bad_request(format!("task: {}", e.message())))
}

fn not_found(message: String) -> ApiError {
    ApiError::not_found(message)
}

/// Whether `If-None-Match` lists `etag` (or is `*`); weak comparison.
fn matches(headers: &HeaderMap, etag: &str) -> bool {
    headers.get_all(IF_NONE_MATCH).iter().any(|value| {
        value.to_str().unwrap_or("").split(',').any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag
        })
    })
}

/// Runs a storage call on the blocking pool (file I/O or a database round trip).
pub(crate) async fn storage<T: Send + 'static>(
    app: &Arc<AppState>,
    call: impl FnOnce(&AppState) -> crate::error::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let app = Arc::clone(app);
    tokio::task::spawn_blocking(move || {
        call(&app).map_err(|e| {
            log::error!("storage: {e}");
            ApiError::internal(format!("reading the repository failed: {e}"))
        })
    })
    .await
    .map_err(|e| ApiError::internal(format!("the storage task failed: {e}")))?
}

async fn versions(
    State(app): State<Arc<AppState>>,
    Path(task): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    app.auth.authorize_any(&headers, READERS)?;
    check_task(&task)?;
    let task2 = task.clone();
    let list = storage(&app, move |app| app.repository.versions_list(&task2)).await?;
    let Some(bytes) = list else {
        return Err(not_found(format!("task {task:?}: no version is published")));
    };
    let tag = etag(&bytes);
    let header = HeaderValue::from_str(&tag).map_err(|e| ApiError::internal(e.to_string()))?;
    let mut response = if matches(&headers, &tag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = (StatusCode::OK, bytes).into_response();
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        r
    };
    response.headers_mut().insert(ETAG, header);
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

async fn download(
    State(app): State<Arc<AppState>>,
    Path((task, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    app.auth.authorize_any(&headers, READERS)?;
    check_task(&task)?;
    let number = version
        .strip_prefix('v')
        .filter(|d| !d.starts_with('0') && d.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|d| d.parse::<u32>().ok())
        .ok_or_else(|| {
            not_found(format!(
                "no endpoint GET /api/v1/artifacts/{task}/{version}/download (expected v<N>)"
            ))
        })?;
    let task2 = task.clone();
    let archive = storage(&app, move |app| app.repository.download(&task2, number)).await?;
    let Some(bytes) = archive else {
        return Err(not_found(format!("task {task:?}: no version {version}")));
    };
    let mut response = (StatusCode::OK, bytes).into_response();
    let h = response.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/gzip"));
    h.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    Ok(response)
}

/// The `version` query parameter of an upload (`?version=N`); other parameters are
/// refused, so that a typo is not silently ignored.
fn requested_version(uri: &axum::http::Uri) -> Result<Option<u32>, ApiError> {
    let Some(query) = uri.query().filter(|q| !q.is_empty()) else {
        return Ok(None);
    };
    let mut version = None;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("version", v)) => {
                version = Some(v.parse::<u32>().map_err(|_| {
                    ApiError::bad_request(format!("version: expected a number, got {v:?}"))
                })?);
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {pair:?} (only version=N is allowed)"
                )))
            }
        }
    }
    Ok(version)
}

async fn upload(
    State(app): State<Arc<AppState>>,
    Path(task): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        let caller = app.auth.authorize(&headers, Role::Publisher)?;
        let who = caller.describe();
        check_task(&task)?;
        let requested = requested_version(&uri)?;
        let (bytes, encoding) = http::read_body(&headers, body, app.limits).await?;
        let max = app.limits.max_bytes;
        let app2 = Arc::clone(&app);
        let task2 = task.clone();
        let info = tokio::task::spawn_blocking(move || {
            let body = http::decode(bytes, encoding, max)?;
            publish::publish(
                app2.repository.as_ref(),
                &app2.hub,
                &task2,
                &body,
                requested,
            )
        })
        .await
        .map_err(|e| ApiError::internal(format!("the storage task failed: {e}")))??;
        log::info!(
            "published {task} v{} by {who} (sha256 {})",
            info.version,
            &info.sha256[..12]
        );
        let value = serde_json::to_value(&info)
            .map_err(|e| ApiError::internal(format!("serializing the entry: {e}")))?;
        Ok::<_, ApiError>(http::json_response(StatusCode::CREATED, &value))
    }
    .await;
    result.unwrap_or_else(|err| {
        log::info!(
            "upload for {task:?} refused: {} {}",
            err.status().as_u16(),
            err.message()
        );
        err.into_response()
    })
}

fn artifact_event(task: &str, version: u32) -> Event {
    Event::default()
        .event("artifact")
        .data(serde_json::json!({"task": task, "version": version}).to_string())
}

async fn notifications(
    State(app): State<Arc<AppState>>,
    Path(task): Path<String>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    app.auth.authorize_any(&headers, READERS)?;
    check_task(&task)?;
    // Subscribe before reading the latest version, so no publication falls in between.
    let rx = app.hub.tx.subscribe();
    let task2 = task.clone();
    let initial = storage(&app, move |app| app.repository.latest(&task2)).await?;
    let state = StreamState {
        initial,
        rx,
        stopping: app.hub.stopping.subscribe(),
        heartbeat: tokio::time::interval_at(
            tokio::time::Instant::now() + app.hub.heartbeat,
            app.hub.heartbeat,
        ),
        app: Arc::clone(&app),
        task,
    };
    Ok(Sse::new(futures_util::stream::unfold(state, next_event)))
}

struct StreamState {
    initial: Option<u32>,
    rx: broadcast::Receiver<Published>,
    stopping: watch::Receiver<bool>,
    heartbeat: tokio::time::Interval,
    app: Arc<AppState>,
    task: String,
}

async fn next_event(mut st: StreamState) -> Option<(Result<Event, Infallible>, StreamState)> {
    if *st.stopping.borrow() {
        return None;
    }
    if let Some(version) = st.initial.take() {
        return Some((Ok(artifact_event(&st.task, version)), st));
    }
    loop {
        tokio::select! {
            _ = st.stopping.changed() => return None,
            _ = st.heartbeat.tick() => {
                let event = Event::default().event("heartbeat").data("{}");
                return Some((Ok(event), st));
            }
            message = st.rx.recv() => match message {
                Ok(p) if p.task == st.task => {
                    return Some((Ok(artifact_event(&st.task, p.version)), st));
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Missed some: announce the latest; the client checks the list anyway.
                    let task = st.task.clone();
                    let latest = storage(&st.app, move |app| app.repository.latest(&task)).await;
                    if let Ok(Some(version)) = latest {
                        return Some((Ok(artifact_event(&st.task, version)), st));
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}
