//! The JSON error of an API: a status, a stable `kind` and a message naming what is wrong,
//! and JSON responses.

use std::fmt;
use std::marker::PhantomData;

use axum::body::Body;
use axum::http::header::{CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// How a server writes its error bodies: each server keeps its documented wire format.
pub trait ErrorStyle {
    /// The `WWW-Authenticate` challenge sent with a 401.
    const CHALLENGE: &'static str;

    /// The JSON body of an error response.
    fn body(kind: &str, message: &str) -> serde_json::Value;
}

/// `{"error": {"kind": "...", "message": "..."}}`, challenge `Bearer` (`loopai serve`).
#[derive(Debug, Clone, Copy)]
pub struct KindAndMessage;

impl ErrorStyle for KindAndMessage {
    const CHALLENGE: &'static str = "Bearer";

    fn body(kind: &str, message: &str) -> serde_json::Value {
        serde_json::json!({ "error": ErrorFields { kind, message } })
    }
}

/// `{"error": "<message>"}`, challenge `Bearer realm="loopai"` (the reference cloud).
#[derive(Debug, Clone, Copy)]
pub struct MessageOnly;

impl ErrorStyle for MessageOnly {
    const CHALLENGE: &'static str = "Bearer realm=\"loopai\"";

    fn body(_kind: &str, message: &str) -> serde_json::Value {
        serde_json::json!({ "error": message })
    }
}

/// The `{"kind", "message"}` object of an error, also for errors embedded in a larger
/// answer (one failed input of a batch).
#[derive(Debug, Serialize)]
pub struct ErrorFields<'a> {
    /// The stable name of the error (`invalid_request`, `payload_too_large`, ...).
    pub kind: &'a str,
    /// What is wrong.
    pub message: &'a str,
}

/// A refused or failed request: an HTTP status, a stable `kind` (`invalid_request`,
/// `unauthorized`, ...) and a message. As a response its body is written in the style `S`,
/// and a 401 carries `S`'s `WWW-Authenticate` challenge.
///
/// ```
/// use axum::http::StatusCode;
/// use axum::response::IntoResponse;
/// use loopai_http::{ApiError, KindAndMessage};
///
/// let e = ApiError::<KindAndMessage>::bad_request("input: expected an object");
/// assert_eq!((e.status(), e.kind()), (StatusCode::BAD_REQUEST, "invalid_request"));
/// assert_eq!(e.into_response().status(), StatusCode::BAD_REQUEST);
/// ```
pub struct ApiError<S = KindAndMessage> {
    status: StatusCode,
    kind: &'static str,
    message: String,
    style: PhantomData<fn() -> S>,
}

impl<S> fmt::Debug for ApiError<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiError")
            .field("status", &self.status)
            .field("kind", &self.kind)
            .field("message", &self.message)
            .finish()
    }
}

impl<S> fmt::Display for ApiError<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.kind,
            self.message
        )
    }
}

impl<S> ApiError<S> {
    /// An error with its status, kind and message.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
            style: PhantomData,
        }
    }

    /// 400 `invalid_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 401 `unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403 `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 413 `payload_too_large`.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }

    /// 500 `internal`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// 503 `not_ready`.
    pub fn not_ready(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", message)
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stable name of the error.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// What is wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl<S: ErrorStyle> IntoResponse for ApiError<S> {
    fn into_response(self) -> Response {
        let mut response = json_response(self.status, &S::body(self.kind, &self.message));
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static(S::CHALLENGE));
        }
        response
    }
}

/// A JSON response. Serializing a server's own response types cannot fail; if it ever
/// did, the client gets a 500 with a JSON error body rather than a dropped connection.
pub fn json_response<T: Serialize + ?Sized>(status: StatusCode, body: &T) -> Response {
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

/// A response of `body` with `status` and `Content-Type: content_type`.
pub fn bytes_response(status: StatusCode, content_type: HeaderValue, body: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, content_type);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(response: Response) -> (StatusCode, Option<HeaderValue>, serde_json::Value) {
        let status = response.status();
        let challenge = response.headers().get(WWW_AUTHENTICATE).cloned();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, challenge, serde_json::from_slice(&bytes).unwrap())
    }

    #[test]
    fn each_style_writes_its_body_and_challenge() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (status, challenge, body) = runtime.block_on(body_of(
            ApiError::<KindAndMessage>::unauthorized("unknown API key").into_response(),
        ));
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(challenge.unwrap(), "Bearer");
        assert_eq!(
            body,
            serde_json::json!({"error": {"kind": "unauthorized", "message": "unknown API key"}})
        );
        let (status, challenge, body) = runtime.block_on(body_of(
            ApiError::<MessageOnly>::too_large("request body exceeds 5 bytes").into_response(),
        ));
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(challenge.is_none());
        assert_eq!(
            body,
            serde_json::json!({"error": "request body exceeds 5 bytes"})
        );
        let (_, challenge, _) = runtime.block_on(body_of(
            ApiError::<MessageOnly>::unauthorized("x").into_response(),
        ));
        assert_eq!(challenge.unwrap(), "Bearer realm=\"loopai\"");
    }
}
