//! HTTP plumbing: JSON responses, the error body, the `ErrorKind` to status mapping, and
//! bounded body reads.

use axum::body::{Body, Bytes};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use loopai_core::ErrorKind;
use serde::Serialize;

const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// A refused or failed request: the status and `{"error": {"kind", "message"}}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) kind: &'static str,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub(crate) fn not_ready(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", message)
    }

    pub(crate) fn into_response(self) -> Response {
        let unauthorized = self.status == StatusCode::UNAUTHORIZED;
        let mut response = json_response(self.status, &ErrorBody::from(&self));
        if unauthorized {
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The HTTP status of a runtime error: the client's fault (422) only for inputs the
/// program refuses; the server's otherwise.
pub(crate) fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::InvalidInput => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::Closed => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::Oracle => StatusCode::BAD_GATEWAY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<loopai_core::Error> for ApiError {
    fn from(err: loopai_core::Error) -> Self {
        ApiError {
            status: status_of(err.kind()),
            kind: err.kind().name(),
            message: err.to_string(),
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorFields<'a>,
}

#[derive(Serialize)]
pub(crate) struct ErrorFields<'a> {
    pub(crate) kind: &'a str,
    pub(crate) message: &'a str,
}

impl<'a> From<&'a ApiError> for ErrorBody<'a> {
    fn from(e: &'a ApiError) -> Self {
        ErrorBody {
            error: ErrorFields {
                kind: e.kind,
                message: &e.message,
            },
        }
    }
}

/// A JSON response. Serializing our own response types cannot fail; if it ever did, the
/// client gets a 500 with a JSON error body rather than a dropped connection.
pub(crate) fn json_response<T: Serialize + ?Sized>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => bytes_response(status, JSON, bytes),
        Err(e) => bytes_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            JSON,
            format!(
                "{{\"error\":{{\"kind\":\"internal\",\"message\":{}}}}}",
                serde_json::Value::String(format!("encoding the response: {e}"))
            )
            .into_bytes(),
        ),
    }
}

pub(crate) fn bytes_response(
    status: StatusCode,
    content_type: HeaderValue,
    body: Vec<u8>,
) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, content_type);
    response
}

/// Refuses bodies that declare a type other than JSON; a missing `Content-Type` is
/// accepted (load generators and minimal clients often send none).
pub(crate) fn check_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return Ok(());
    };
    let essence = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json" || essence.ends_with("+json") {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        format!(
            "Content-Type: expected application/json, got {:?}",
            String::from_utf8_lossy(value.as_bytes())
        ),
    ))
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("request body: larger than the limit of {limit} bytes"),
    )
}

/// Reads the whole body, refusing (413) one over `limit` bytes: at once when
/// `Content-Length` says so, otherwise as soon as the limit is crossed.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    if let Some(len) = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit as u64 {
            return Err(too_large(limit));
        }
    }
    match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => Ok(bytes),
        Err(err) => {
            let inner = err.into_inner();
            if inner
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(too_large(limit))
            } else {
                Err(ApiError::bad_request(format!("request body: {inner}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_map_to_statuses() {
        assert_eq!(
            status_of(ErrorKind::InvalidInput),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            status_of(ErrorKind::Closed),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(status_of(ErrorKind::Timeout), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(status_of(ErrorKind::Oracle), StatusCode::BAD_GATEWAY);
        for kind in [
            ErrorKind::Program,
            ErrorKind::Schema,
            ErrorKind::InvalidOutput,
            ErrorKind::Artifact,
            ErrorKind::Config,
            ErrorKind::Io,
            ErrorKind::Internal,
        ] {
            assert_eq!(status_of(kind), StatusCode::INTERNAL_SERVER_ERROR, "{kind}");
        }
    }

    #[test]
    fn content_types() {
        let mut h = HeaderMap::new();
        assert!(check_json_content_type(&h).is_ok());
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert!(check_json_content_type(&h).is_ok());
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/vnd.x+json"),
        );
        assert!(check_json_content_type(&h).is_ok());
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        let e = check_json_content_type(&h).unwrap_err();
        assert_eq!(e.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
}
