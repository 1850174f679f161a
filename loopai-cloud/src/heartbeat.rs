//! `POST /api/v1/heartbeats`: a deployment reports its state (a
//! [`loopai_core::Heartbeat`]); authenticated like telemetry uploads.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use loopai_core::Heartbeat;
use serde_json::Value;

use crate::auth::{Caller, Role};
use crate::http::{self, ApiError};
use crate::state::AppState;

/// The path of the heartbeat endpoint.
pub(crate) const HEARTBEAT_PATH: &str = "/api/v1/heartbeats";
/// The longest accepted `deployment_id`, in bytes.
const MAX_DEPLOYMENT_ID_BYTES: usize = 256;

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new().route(HEARTBEAT_PATH, post(receive))
}

async fn receive(State(app): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    match accept(app, headers, body).await {
        Ok(r) => r,
        Err(e) => {
            log::debug!("heartbeat refused: {} {}", e.status().as_u16(), e.message());
            e.into_response()
        }
    }
}

/// Checks a heartbeat's shape; errors name the field (`active_version: invalid type ...`).
pub(crate) fn parse(json: &[u8]) -> Result<(Heartbeat, Value), ApiError> {
    let value: Value = serde_json::from_slice(json)
        .map_err(|e| ApiError::bad_request(format!("body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request("a heartbeat must be a JSON object"));
    }
    let heartbeat: Heartbeat = serde_path_to_error::deserialize(&value).map_err(|e| {
        let path = e.path().to_string();
        ApiError::bad_request(format!("{path}: {}", e.into_inner()))
    })?;
    loopai_core::validate_task_id(&heartbeat.task_id)
        .map_err(|e| ApiError::bad_request(format!("task_id: {e}")))?;
    let id = &heartbeat.deployment_id;
    if id.is_empty() || id.len() > MAX_DEPLOYMENT_ID_BYTES || id.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "deployment_id: must be 1-{MAX_DEPLOYMENT_ID_BYTES} bytes without control characters"
        )));
    }
    Ok((heartbeat, value))
}

async fn accept(app: Arc<AppState>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let caller = app.auth.authorize(&headers, Role::Deployment)?;
    let key_deployment = match caller {
        Caller::Key(p) => p.deployment_id().map(str::to_owned),
        Caller::Anonymous => None,
    };
    let (bytes, encoding) = http::read_body(&headers, body, app.limits).await?;
    let max = app.limits.max_bytes;
    let app2 = Arc::clone(&app);
    tokio::task::spawn_blocking(move || {
        let json = http::decode(bytes, encoding, max)?;
        let (heartbeat, value) = parse(&json)?;
        if let Some(expected) = &key_deployment {
            if *expected != heartbeat.deployment_id {
                return Err(ApiError::forbidden(format!(
                    "deployment_id: this key belongs to deployment {expected:?}, not {:?}",
                    heartbeat.deployment_id
                )));
            }
        }
        app2.fleet
            .ingest_heartbeat(&heartbeat.deployment_id, &heartbeat.task_id, value)
            .map_err(|e| {
                log::error!("storing a heartbeat of {}: {e}", heartbeat.deployment_id);
                ApiError::internal(format!("storing the heartbeat failed: {e}"))
            })
    })
    .await
    .map_err(|e| ApiError::internal(format!("the heartbeat task failed: {e}")))??;
    Ok(http::json_response(
        StatusCode::OK,
        &serde_json::json!({"status": "accepted"}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_shape_errors_name_the_field() {
        let err = |json: &str| parse(json.as_bytes()).unwrap_err().message().to_owned();
        let ok = r#"{"format": "loopai.heartbeat/1", "deployment_id": "d", "task_id": "spam",
            "timestamp": "2026-11-25T04:24:00.000Z", "interval_sec": 5, "status": "ok",
            "active_version": 1}"#;
        assert_eq!(parse(ok.as_bytes()).unwrap().0.active_version, 1);
        assert!(
            err(&ok.replace("\"active_version\": 1", "\"active_version\": \"x\""))
                .starts_with("active_version: invalid type")
        );
        assert!(err(&ok.replace("spam", "../etc")).starts_with("task_id: task id \"../etc\""));
        assert!(err(&ok.replace("\"d\"", "\"\"")).starts_with("deployment_id: must be"));
        assert!(err(&ok.replace("2026-11-25T04:24:00.000Z", "soon")).starts_with("timestamp:"));
        assert_eq!(err("[]"), "a heartbeat must be a JSON object");
    }
}
