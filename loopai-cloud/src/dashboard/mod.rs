//! The monitoring dashboard: server-rendered HTML pages with inline SVG charts, no script
//! and nothing loaded from elsewhere.
//!
//! * `GET /` — the fleet: deployments (version, rollout, last seen, health, queues, last
//!   error) and tasks;
//! * `GET /tasks/{task}` — a task: match rate and volume per version over the last 30 days
//!   with data, the current rollout and the rollout decisions, the improvement history,
//!   the escalations with their failing examples, the task's deployments;
//! * `GET /login`, `POST /login`, `POST /logout` — signing in with a `viewer` or
//!   `publisher` key, kept in an `HttpOnly`, `SameSite=Strict` cookie (`docs/cloud.md`).
//!
//! A server without keys (open) shows the pages to anyone. The pages read the same
//! [`FleetQueries`](crate::query::FleetQueries) as the query API.

mod chart;
mod html;
mod pages;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION, REFERRER_POLICY, SET_COOKIE,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;

use crate::auth::{Auth, READERS, SESSION_COOKIE};
use crate::http::{percent_encode, BodyLimits};
use crate::query::params::parse;
use crate::query::{DailyFilter, PageRequest, QueryError, MAX_PAGE_LIMIT};
use crate::state::AppState;

/// How long a sign-in lasts (the cookie's `Max-Age`), in seconds: 12 hours.
const SESSION_MAX_AGE_SEC: u64 = 12 * 3600;
/// The largest login form body.
const MAX_FORM_BYTES: usize = 4096;
/// Rollout events shown on a task page.
const ROLLOUTS_SHOWN: usize = 20;
/// Escalations shown on a task page.
const ESCALATIONS_SHOWN: usize = 5;

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(fleet))
        .route("/tasks/{task}", get(task))
        .route("/login", get(login_form).post(login))
        .route("/logout", axum::routing::post(logout))
}

/// An HTML answer with the dashboard's security headers: nothing but inline styles and
/// `data:` images may load, no framing, no caching of the (authenticated) page.
fn html(status: StatusCode, body: String) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn redirect(to: &'static str, cookie: Option<String>) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SEE_OTHER;
    r.headers_mut()
        .insert(LOCATION, HeaderValue::from_static(to));
    if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        r.headers_mut().insert(SET_COOKIE, c);
    }
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Whether the request may see the pages: `Ok(signed_in)`, or the answer to give (a
/// redirect to the sign-in form, or the form with why the key does not fit).
fn allow(app: &AppState, headers: &HeaderMap) -> Result<bool, Box<Response>> {
    match app.auth.authorize_browser(headers, READERS) {
        Ok(_) => Ok(matches!(app.auth, Auth::Keys(_))),
        Err(e) if e.status() == StatusCode::FORBIDDEN => Err(Box::new(html(
            StatusCode::FORBIDDEN,
            pages::login(Some(&format!(
                "{} (the dashboard needs a viewer or publisher key)",
                e.message()
            ))),
        ))),
        Err(_) => Err(Box::new(redirect("/login", None))),
    }
}

fn query_error(e: QueryError, signed_in: bool) -> Response {
    let (status, message) = match e {
        QueryError::NotFound(m) => (StatusCode::NOT_FOUND, m),
        QueryError::Storage(m) => {
            log::error!("dashboard: {m}");
            (StatusCode::INTERNAL_SERVER_ERROR, m)
        }
    };
    html(
        status,
        html::page(
            "Error",
            &format!(
                "<h1>Not available</h1><p class=\"error\">{}</p>",
                html::esc(&message)
            ),
            signed_in,
        ),
    )
}

/// Runs `render` on the blocking pool (the file backend reads files).
async fn render_blocking<F>(app: Arc<AppState>, signed_in: bool, render: F) -> Response
where
    F: FnOnce(&AppState) -> Result<String, QueryError> + Send + 'static,
{
    match tokio::task::spawn_blocking(move || render(&app)).await {
        Ok(Ok(body)) => html(StatusCode::OK, body),
        Ok(Err(e)) => query_error(e, signed_in),
        Err(e) => query_error(
            QueryError::Storage(format!("the page task failed: {e}")),
            signed_in,
        ),
    }
}

async fn fleet(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let signed_in = match allow(&app, &headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    render_blocking(app, signed_in, move |app| {
        let all = PageRequest::first(MAX_PAGE_LIMIT);
        let mut tasks = app.queries.tasks(all)?.items;
        for t in &mut tasks {
            t.published_version = app.repository.latest(&t.task_id).ok().flatten();
        }
        let deployments = app.queries.deployments(None, all)?.items;
        Ok(pages::fleet(&tasks, &deployments, signed_in))
    })
    .await
}

async fn task(
    State(app): State<Arc<AppState>>,
    Path(task): Path<String>,
    headers: HeaderMap,
) -> Response {
    let signed_in = match allow(&app, &headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    render_blocking(app, signed_in, move |app| {
        let q = &app.queries;
        let mut summary = q.task(&task)?;
        summary.published_version = app.repository.latest(&task).ok().flatten();
        let filter = DailyFilter {
            from: summary.last_day.as_deref().and_then(pages::chart_start),
            ..DailyFilter::default()
        };
        let daily = q
            .daily(&task, &filter, PageRequest::first(MAX_PAGE_LIMIT))?
            .items;
        let rollouts = q.rollouts(&task, PageRequest::first(ROLLOUTS_SHOWN))?.items;
        let improvements = q
            .improvements(&task, PageRequest::first(MAX_PAGE_LIMIT))?
            .items;
        let escalations = q
            .escalations(Some(&task), PageRequest::first(ESCALATIONS_SHOWN))?
            .items;
        let deployments = q
            .deployments(Some(&task), PageRequest::first(MAX_PAGE_LIMIT))?
            .items;
        Ok(pages::task(
            &pages::TaskPage {
                summary: &summary,
                daily: &daily,
                rollouts: &rollouts,
                improvements: &improvements,
                escalations: &escalations,
                deployments: &deployments,
            },
            signed_in,
        ))
    })
    .await
}

async fn login_form(State(app): State<Arc<AppState>>) -> Response {
    match app.auth {
        Auth::Open => redirect("/", None),
        Auth::Keys(_) => html(StatusCode::OK, pages::login(None)),
    }
}

/// Sets the cookie; `Secure` when a TLS-terminating proxy says the request was HTTPS.
fn session_cookie(key: &str, headers: &HeaderMap) -> String {
    let https = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"));
    format!(
        "{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={SESSION_MAX_AGE_SEC}{}",
        percent_encode(key),
        if https { "; Secure" } else { "" }
    )
}

async fn login(State(app): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    if let Auth::Open = app.auth {
        return redirect("/", None);
    }
    let limits = BodyLimits {
        max_bytes: MAX_FORM_BYTES,
        read_timeout: app.limits.read_timeout,
    };
    let bytes = match crate::http::read_body(&headers, body, limits)
        .await
        .and_then(|(b, encoding)| crate::http::decode(b, encoding, MAX_FORM_BYTES))
    {
        Ok(b) => b,
        Err(e) => return html(e.status(), pages::login(Some(e.message()))),
    };
    let form = std::str::from_utf8(&bytes)
        .map_err(|_| "the form is not UTF-8".to_owned())
        .and_then(parse);
    let key = match form {
        Ok(pairs) => pairs
            .into_iter()
            .find(|(n, _)| n == "key")
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default(),
        Err(e) => return html(StatusCode::BAD_REQUEST, pages::login(Some(&e))),
    };
    if key.is_empty() {
        return html(StatusCode::BAD_REQUEST, pages::login(Some("key: missing")));
    }
    match app.auth.authorize_key(&key, READERS) {
        Ok(caller) => {
            log::info!("dashboard: {} signed in", caller.describe());
            redirect("/", Some(session_cookie(&key, &headers)))
        }
        Err(e) => html(e.status(), pages::login(Some(e.message()))),
    }
}

async fn logout() -> Response {
    redirect(
        "/login",
        Some(format!(
            "{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
        )),
    )
}
