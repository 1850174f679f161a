//! HTTP plumbing of `loopai serve`: its error style, the `ErrorKind` to status mapping,
//! and the JSON content-type check. The error type, JSON responses and body reads are
//! loopai-http's.

use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use loopai_core::ErrorKind;
use loopai_http::KindAndMessage;
pub(crate) use loopai_http::{bytes_response, json_response, ErrorFields};

/// The API error of `loopai serve`: `{"error": {"kind", "message"}}`.
pub(crate) type ApiError = loopai_http::ApiError<KindAndMessage>;

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

/// The error of a failed execution: the runtime's kind name and message, with the status
/// of [`status_of`].
pub(crate) fn runtime_error(err: loopai_core::Error) -> ApiError {
    ApiError::new(status_of(err.kind()), err.kind().name(), err.to_string())
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

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

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
        assert_eq!(e.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
}
