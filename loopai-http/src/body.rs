//! Reading a request body within a size limit and a time limit.

use std::error::Error as _;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header::CONTENT_LENGTH;
use axum::http::{HeaderMap, StatusCode};

use crate::api_error::ApiError;

/// Limits on a request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// The largest body, in bytes.
    pub max_bytes: usize,
    /// How long reading the body may take.
    pub read_timeout: Duration,
}

/// Reads the whole body: 413 `payload_too_large` for one larger than `limits.max_bytes`,
/// at once when `Content-Length` says so, otherwise as soon as the limit is crossed; 408
/// `request_timeout` for one not received within `limits.read_timeout`; 400
/// `invalid_request` for a `Content-Length` that is not a number or a broken body.
pub async fn read_body<S>(
    headers: &HeaderMap,
    body: Body,
    limits: BodyLimits,
) -> Result<Bytes, ApiError<S>> {
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
            "request_timeout",
            format!(
                "request body not received within {} s",
                limits.read_timeout.as_secs_f64()
            ),
        )),
        Ok(Ok(bytes)) => Ok(bytes),
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

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;
    use crate::api_error::KindAndMessage;

    fn read(headers: &HeaderMap, body: &'static str, max_bytes: usize) -> Result<Bytes, ApiError> {
        let limits = BodyLimits {
            max_bytes,
            read_timeout: Duration::from_secs(5),
        };
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(read_body::<KindAndMessage>(
                headers,
                Body::from(body),
                limits,
            ))
    }

    #[test]
    fn bodies_over_the_limit_or_with_a_bad_length_are_refused() {
        let mut h = HeaderMap::new();
        assert_eq!(read(&h, "12345", 5).unwrap(), "12345");
        let e = read(&h, "123456", 5).unwrap_err();
        assert_eq!(
            (e.status(), e.kind()),
            (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
        );
        assert_eq!(e.message(), "request body exceeds 5 bytes");
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("99"));
        let e = read(&h, "1", 5).unwrap_err();
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("many"));
        let e = read(&h, "1", 5).unwrap_err();
        assert_eq!(e.message(), "Content-Length is not a number");
    }
}
