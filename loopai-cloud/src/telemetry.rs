//! `POST /api/v1/telemetry`: the telemetry collector endpoint.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{Map, Value};

use crate::auth::{Caller, Role};
use crate::http::{self, ApiError};
use crate::state::AppState;
use crate::storage::{Appended, NewBatch};

/// The longest accepted `batch_id`, in bytes.
pub const MAX_BATCH_ID_BYTES: usize = 128;

/// The path of the telemetry endpoint.
pub(crate) const TELEMETRY_PATH: &str = "/api/v1/telemetry";

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new().route(TELEMETRY_PATH, post(upload))
}

async fn upload(State(app): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    match accept(app, headers, body).await {
        Ok(response) => response,
        Err(err) => {
            log::debug!(
                "telemetry refused: {} {}",
                err.status().as_u16(),
                err.message()
            );
            err.into_response()
        }
    }
}

async fn accept(app: Arc<AppState>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let caller = app.auth.authorize(&headers, Role::Deployment)?;
    let who = caller.describe();
    let key_deployment = match caller {
        Caller::Key(p) => p.deployment_id().map(str::to_owned),
        Caller::Anonymous => None,
    };
    let (bytes, encoding) = http::read_body(&headers, body, app.limits).await?;
    let max = app.limits.max_bytes;
    let app2 = Arc::clone(&app);
    // Decompression, parsing and the fsync block: off the async workers.
    let (batch_id, appended) = tokio::task::spawn_blocking(move || {
        let json = http::decode(bytes, encoding, max)?;
        let batch = Batch::parse(&json)?;
        if let (Some(expected), Some(got)) = (&key_deployment, &batch.deployment_id) {
            if expected != got {
                return Err(ApiError::forbidden(format!(
                    "deployment_id: this key belongs to deployment {expected:?}, not {got:?}"
                )));
            }
        }
        let line = serde_json::to_vec(&batch.value)
            .map_err(|e| ApiError::internal(format!("re-serializing the batch: {e}")))?;
        let appended = app2
            .telemetry
            .append(&NewBatch {
                batch_id: &batch.batch_id,
                task_id: &batch.task_id,
                deployment_id: batch.deployment_id.as_deref(),
                value: &batch.value,
                line: &line,
            })
            .map_err(|e| {
                log::error!(
                    "storing batch {:?} of task {}: {e}",
                    batch.batch_id,
                    batch.task_id
                );
                ApiError::internal(format!("storing the batch failed: {e}"))
            })?;
        if let Appended::Accepted(_) = appended {
            // The fleet's aggregates and last-seen times (the query API, the dashboard).
            if let Err(e) = app2.fleet.ingest_batch(&batch.value) {
                log::error!("fleet index: batch {:?}: {e}", batch.batch_id);
            }
        }
        Ok((batch.batch_id, appended))
    })
    .await
    .map_err(|e| ApiError::internal(format!("the storage task failed: {e}")))??;
    let status = match appended {
        Appended::Accepted(place) => {
            log::info!("batch {batch_id:?} from {who} -> {place}");
            "accepted"
        }
        Appended::Duplicate => {
            log::info!("batch {batch_id:?} from {who}: duplicate, not stored again");
            "duplicate"
        }
    };
    Ok(http::json_response(
        StatusCode::OK,
        &serde_json::json!({ "status": status, "batch_id": batch_id }),
    ))
}

/// A validated telemetry batch.
#[derive(Debug)]
struct Batch {
    batch_id: String,
    task_id: String,
    deployment_id: Option<String>,
    /// The whole batch as received (unknown fields included).
    value: Value,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn required_string<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<&'a str, ApiError> {
    match obj.get(key) {
        None => Err(ApiError::bad_request(format!("{key}: missing"))),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(ApiError::bad_request(format!(
            "{key}: expected a string, got {}",
            type_name(other)
        ))),
    }
}

impl Batch {
    /// Checks the shape of a batch: a JSON object with a string `batch_id`, a valid
    /// `task_id`, a `timestamp`, and — when present — a string `deployment_id`, arrays
    /// `execution_summaries` / `sampled_validations` and an object `metrics`. Other fields
    /// are kept as they are.
    fn parse(json: &[u8]) -> Result<Batch, ApiError> {
        let value: Value = serde_json::from_slice(json)
            .map_err(|e| ApiError::bad_request(format!("body is not valid JSON: {e}")))?;
        let Value::Object(obj) = &value else {
            return Err(ApiError::bad_request(format!(
                "a batch must be a JSON object, got {}",
                type_name(&value)
            )));
        };
        let batch_id = required_string(obj, "batch_id")?;
        if batch_id.is_empty() || batch_id.len() > MAX_BATCH_ID_BYTES {
            return Err(ApiError::bad_request(format!(
                "batch_id: must be 1-{MAX_BATCH_ID_BYTES} bytes, got {}",
                batch_id.len()
            )));
        }
        if batch_id.chars().any(char::is_control) {
            return Err(ApiError::bad_request(
                "batch_id: must not contain control characters",
            ));
        }
        let task_id = required_string(obj, "task_id")?;
        loopai_core::validate_task_id(task_id)
            .map_err(|e| ApiError::bad_request(format!("task_id: {e}")))?;
        match obj.get("timestamp") {
            None => return Err(ApiError::bad_request("timestamp: missing")),
            Some(Value::String(s)) => {
                time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                    .map_err(|e| {
                        ApiError::bad_request(format!(
                            "timestamp: {s:?} is not an RFC 3339 date-time ({e})"
                        ))
                    })?;
            }
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => {}
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "timestamp: expected an RFC 3339 string or integer milliseconds since the epoch, got {}",
                    type_name(other)
                )))
            }
        }
        let deployment_id = match obj.get("deployment_id") {
            None => None,
            Some(_) => Some(required_string(obj, "deployment_id")?.to_owned()),
        };
        for (key, want_array) in [
            ("execution_summaries", true),
            ("sampled_validations", true),
            ("metrics", false),
        ] {
            match (obj.get(key), want_array) {
                (None | Some(Value::Array(_)), true) | (None | Some(Value::Object(_)), false) => {}
                (Some(other), _) => {
                    return Err(ApiError::bad_request(format!(
                        "{key}: expected {}, got {}",
                        if want_array { "an array" } else { "an object" },
                        type_name(other)
                    )))
                }
            }
        }
        Ok(Batch {
            batch_id: batch_id.to_owned(),
            task_id: task_id.to_owned(),
            deployment_id,
            value,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> String {
        let e = Batch::parse(json.as_bytes()).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        e.message().to_owned()
    }

    #[test]
    fn shape_errors_name_the_field() {
        let ok = r#"{"batch_id":"b","task_id":"spam","timestamp":"2026-11-25T04:23:14.123Z"}"#;
        let b = Batch::parse(ok.as_bytes()).unwrap();
        assert_eq!((b.batch_id.as_str(), b.task_id.as_str()), ("b", "spam"));
        assert!(err("{").starts_with("body is not valid JSON"));
        assert_eq!(err("[1]"), "a batch must be a JSON object, got an array");
        assert_eq!(
            err(r#"{"task_id":"spam","timestamp":1}"#),
            "batch_id: missing"
        );
        assert_eq!(
            err(r#"{"batch_id":7,"task_id":"spam","timestamp":1}"#),
            "batch_id: expected a string, got a number"
        );
        assert!(err(r#"{"batch_id":"","task_id":"spam","timestamp":1}"#)
            .starts_with("batch_id: must be 1-128 bytes"));
        assert!(err(r#"{"batch_id":"b","task_id":"../etc","timestamp":1}"#)
            .starts_with("task_id: task id \"../etc\""));
        assert_eq!(
            err(r#"{"batch_id":"b","task_id":"spam"}"#),
            "timestamp: missing"
        );
        assert!(
            err(r#"{"batch_id":"b","task_id":"spam","timestamp":"yesterday"}"#)
                .starts_with("timestamp: \"yesterday\" is not an RFC 3339")
        );
        assert!(err(r#"{"batch_id":"b","task_id":"spam","timestamp":1.5}"#)
            .starts_with("timestamp: expected an RFC 3339 string"));
        assert_eq!(
            err(r#"{"batch_id":"b","task_id":"spam","timestamp":1,"deployment_id":null}"#),
            "deployment_id: expected a string, got null"
        );
        assert_eq!(
            err(r#"{"batch_id":"b","task_id":"spam","timestamp":1,"metrics":[]}"#),
            "metrics: expected an object, got an array"
        );
        assert_eq!(
            err(r#"{"batch_id":"b","task_id":"spam","timestamp":1,"sampled_validations":{}}"#),
            "sampled_validations: expected an array, got an object"
        );
    }
}
