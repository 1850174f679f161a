//! HTTP plumbing shared by every endpoint: JSON error bodies, bounded request bodies,
//! `Content-Encoding: gzip`.

use std::error::Error as _;
use std::io::Read;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use flate2::read::MultiGzDecoder;

/// A refused request: a status and a message, sent as `{"error": "<message>"}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub(crate) fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, message)
    }

    pub(crate) fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, message)
    }

    pub(crate) fn too_large(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, message)
    }

    pub(crate) fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    pub(crate) fn message(&self) -> &str {
        &self.message
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response =
            json_response(self.status, &serde_json::json!({ "error": self.message }));
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"loopai\""),
            );
        }
        response
    }
}

/// A JSON response with `status`.
pub(crate) fn json_response(status: StatusCode, value: &serde_json::Value) -> Response {
    let mut response = (status, value.to_string()).into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The unknown-route answer: 404 with a JSON body.
pub(crate) async fn not_found(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no endpoint {method} {}", uri.path()),
    )
    .into_response()
}

/// How a request body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    Identity,
    Gzip,
}

/// Limits on request bodies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyLimits {
    /// The largest body, in bytes, both as received and after decompression.
    pub(crate) max_bytes: usize,
    /// How long reading a body may take.
    pub(crate) read_timeout: Duration,
}

fn encoding(headers: &HeaderMap) -> Result<Encoding, ApiError> {
    let mut encoding = Encoding::Identity;
    for value in headers.get_all(CONTENT_ENCODING) {
        let value = value.to_str().unwrap_or("").trim();
        for coding in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            encoding = match (encoding, coding.to_ascii_lowercase().as_str()) {
                (e, "identity") => e,
                (Encoding::Identity, "gzip" | "x-gzip") => Encoding::Gzip,
                _ => {
                    return Err(ApiError::new(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        format!("Content-Encoding {value:?} is not supported; use gzip or none"),
                    ))
                }
            };
        }
    }
    Ok(encoding)
}

/// Reads the whole body, refusing (413) one larger than `limits.max_bytes` as soon as that
/// is known, and (408) one that takes longer than `limits.read_timeout`.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limits: BodyLimits,
) -> Result<(Bytes, Encoding), ApiError> {
    let encoding = encoding(headers)?;
    let too_large =
        || ApiError::too_large(format!("request body exceeds {} bytes", limits.max_bytes));
    if let Some(length) = headers.get(CONTENT_LENGTH) {
        let length: u64 = length
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ApiError::bad_request("Content-Length is not a number"))?;
        if length > limits.max_bytes as u64 {
            return Err(too_large());
        }
    }
    match tokio::time::timeout(
        limits.read_timeout,
        axum::body::to_bytes(body, limits.max_bytes),
    )
    .await
    {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "request body not received within {} s",
                limits.read_timeout.as_secs_f64()
            ),
        )),
        Ok(Ok(bytes)) => Ok((bytes, encoding)),
        Ok(Err(err)) => {
            let mut source: Option<&(dyn std::error::Error + 'static)> = err.source();
            while let Some(e) = source {
                if e.is::<http_body_util::LengthLimitError>() {
                    return Err(too_large());
                }
                source = e.source();
            }
            Err(ApiError::bad_request(format!(
                "reading the request body: {err}"
            )))
        }
    }
}

/// Decodes a body read by [`read_body`]; a gzip body may expand to at most `max_bytes`
/// (so a small "gzip bomb" is refused with 413 after reading at most that much).
pub(crate) fn decode(
    bytes: Bytes,
    encoding: Encoding,
    max_bytes: usize,
) -> Result<Bytes, ApiError> {
    match encoding {
        Encoding::Identity => Ok(bytes),
        Encoding::Gzip => {
            let mut out = Vec::new();
            let limit = u64::try_from(max_bytes)
                .unwrap_or(u64::MAX)
                .saturating_add(1);
            MultiGzDecoder::new(&bytes[..])
                .take(limit)
                .read_to_end(&mut out)
                .map_err(|e| ApiError::bad_request(format!("invalid gzip body: {e}")))?;
            if out.len() > max_bytes {
                return Err(ApiError::too_large(format!(
                    "decompressed request body exceeds {max_bytes} bytes"
                )));
            }
            Ok(Bytes::from(out))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Bytes {
        let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        Bytes::from(enc.finish().unwrap())
    }

    #[test]
    fn gzip_expanding_past_the_limit_is_refused() {
        let bomb = gzip(&vec![b' '; 1 << 20]);
        assert!(bomb.len() < 4096);
        let err = decode(bomb.clone(), Encoding::Gzip, (1 << 20) - 1).unwrap_err();
        assert_eq!(err.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            decode(bomb, Encoding::Gzip, 1 << 20).unwrap().len(),
            1 << 20
        );
    }

    #[test]
    fn corrupt_gzip_is_a_bad_request() {
        let mut data = gzip(b"{\"a\": 1}").to_vec();
        let n = data.len();
        data.truncate(n - 4);
        let err = decode(Bytes::from(data), Encoding::Gzip, 1024).unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        assert!(
            err.message().starts_with("invalid gzip body"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn content_encodings_other_than_gzip_are_unsupported() {
        let mut h = HeaderMap::new();
        assert_eq!(encoding(&h).unwrap(), Encoding::Identity);
        h.insert(CONTENT_ENCODING, HeaderValue::from_static("GZIP"));
        assert_eq!(encoding(&h).unwrap(), Encoding::Gzip);
        h.insert(CONTENT_ENCODING, HeaderValue::from_static("br"));
        assert_eq!(
            encoding(&h).unwrap_err().status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        h.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip, gzip"));
        assert_eq!(
            encoding(&h).unwrap_err().status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
    }
}
