//! The query API: `GET /api/v1/query/...`, JSON, paginated, for `viewer` and `publisher`
//! keys (`Authorization: Bearer`). See `docs/cloud.md`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Serialize;

use crate::auth::READERS;
use crate::http::{self, ApiError};
use crate::query::params::Params;
use crate::query::QueryError;
use crate::state::AppState;

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/query/tasks", get(tasks))
        .route("/api/v1/query/tasks/{task}", get(task))
        .route("/api/v1/query/tasks/{task}/daily", get(daily))
        .route("/api/v1/query/tasks/{task}/rollouts", get(rollouts))
        .route("/api/v1/query/tasks/{task}/improvements", get(improvements))
        .route("/api/v1/query/escalations", get(escalations))
        .route("/api/v1/query/deployments", get(deployments))
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> ApiError {
        match e {
            QueryError::NotFound(m) => ApiError::not_found(m),
            QueryError::Storage(m) => {
                log::error!("query: {m}");
                ApiError::internal(m)
            }
        }
    }
}

/// Authorizes, parses the query string (refusing parameters other than `allowed`), and
/// runs `answer` on the blocking pool (the file backend reads files).
async fn run<T, F>(
    app: Arc<AppState>,
    headers: &HeaderMap,
    uri: &Uri,
    allowed: &'static [&'static str],
    answer: F,
) -> Response
where
    T: Serialize + Send + 'static,
    F: FnOnce(&AppState, &Params) -> Result<T, ApiError> + Send + 'static,
{
    let result = async {
        app.auth.authorize_any(headers, READERS)?;
        let params = Params::from_query(uri.query()).map_err(ApiError::bad_request)?;
        params.only(allowed).map_err(ApiError::bad_request)?;
        tokio::task::spawn_blocking(move || answer(&app, &params))
            .await
            .map_err(|e| ApiError::internal(format!("the query task failed: {e}")))?
    }
    .await;
    match result {
        Ok(value) => http::json_response(StatusCode::OK, &value),
        Err(e) => e.into_response(),
    }
}

const PAGED: &[&str] = &["limit", "cursor"];

async fn tasks(State(app): State<Arc<AppState>>, headers: HeaderMap, uri: Uri) -> Response {
    run(app, &headers, &uri, PAGED, |app, p| {
        let mut page = app
            .queries
            .tasks(p.page().map_err(ApiError::bad_request)?)?;
        for t in &mut page.items {
            t.published_version = app.repository.latest(&t.task_id).ok().flatten();
        }
        Ok(page)
    })
    .await
}

async fn task(
    State(app): State<Arc<AppState>>,
    Path(task): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    run(app, &headers, &uri, &[], move |app, _| {
        let mut summary = app.queries.task(&task)?;
        summary.published_version = app.repository.latest(&task).ok().flatten();
        Ok(summary)
    })
    .await
}

async fn daily(
    State(app): State<Arc<AppState>>,
    Path(task): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    const ALLOWED: &[&str] = &["limit", "cursor", "from", "to", "version"];
    run(app, &headers, &uri, ALLOWED, move |app, p| {
        let filter = p.daily_filter().map_err(ApiError::bad_request)?;
        let page = p.page().map_err(ApiError::bad_request)?;
        Ok(app.queries.daily(&task, &filter, page)?)
    })
    .await
}

async fn rollouts(
    State(app): State<Arc<AppState>>,
    Path(task): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    run(app, &headers, &uri, PAGED, move |app, p| {
        Ok(app
            .queries
            .rollouts(&task, p.page().map_err(ApiError::bad_request)?)?)
    })
    .await
}

async fn improvements(
    State(app): State<Arc<AppState>>,
    Path(task): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    run(app, &headers, &uri, PAGED, move |app, p| {
        Ok(app
            .queries
            .improvements(&task, p.page().map_err(ApiError::bad_request)?)?)
    })
    .await
}

async fn escalations(State(app): State<Arc<AppState>>, headers: HeaderMap, uri: Uri) -> Response {
    run(
        app,
        &headers,
        &uri,
        &["limit", "cursor", "task"],
        |app, p| {
            let page = p.page().map_err(ApiError::bad_request)?;
            Ok(app.queries.escalations(p.get("task"), page)?)
        },
    )
    .await
}

async fn deployments(State(app): State<Arc<AppState>>, headers: HeaderMap, uri: Uri) -> Response {
    run(
        app,
        &headers,
        &uri,
        &["limit", "cursor", "task"],
        |app, p| {
            let page = p.page().map_err(ApiError::bad_request)?;
            Ok(app.queries.deployments(p.get("task"), page)?)
        },
    )
    .await
}
