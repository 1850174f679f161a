//! HTTP plumbing of the cloud's endpoints: its error style, the unknown-route answer,
//! `Content-Encoding: gzip`. The error type, JSON responses and bounded body reads are
//! loopai-http's.

use std::io::Read;

use axum::body::{Body, Bytes};
use axum::http::header::CONTENT_ENCODING;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use flate2::read::MultiGzDecoder;
use loopai_http::MessageOnly;
pub(crate) use loopai_http::{json_response, BodyLimits};

/// The API error of the reference cloud: `{"error": "<message>"}`.
pub(crate) type ApiError = loopai_http::ApiError<MessageOnly>;

/// The unknown-route answer: 404 with a JSON body.
pub(crate) async fn not_found(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    ApiError::not_found(format!("no endpoint {method} {}", uri.path())).into_response()
}

/// Decodes one `application/x-www-form-urlencoded` component: `+` is a space, `%XX` a
/// byte; the result must be UTF-8.
pub(crate) fn form_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad percent-encoding at byte {i}"))?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| "not valid UTF-8 once decoded".to_owned())
}

/// Percent-encodes every byte but `A-Z a-z 0-9 - _ . ~` (a cookie value, a URL
/// component); [`form_decode`] reverses it.
pub(crate) fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// How a request body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    Identity,
    Gzip,
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
                        "unsupported_media_type",
                        format!("Content-Encoding {value:?} is not supported; use gzip or none"),
                    ))
                }
            };
        }
    }
    Ok(encoding)
}

/// Reads the whole body within `limits` ([`loopai_http::read_body`]: 413 when larger than
/// `limits.max_bytes` as soon as that is known, 408 when slower than `limits.read_timeout`),
/// after refusing (415) a `Content-Encoding` other than gzip.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limits: BodyLimits,
) -> Result<(Bytes, Encoding), ApiError> {
    let encoding = encoding(headers)?;
    let bytes = loopai_http::read_body(headers, body, limits).await?;
    Ok((bytes, encoding))
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
    use axum::http::HeaderValue;
    use flate2::write::GzEncoder;

    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Bytes {
        let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        Bytes::from(enc.finish().unwrap())
    }

    #[test]
    fn percent_encoding_round_trips_every_printable_key() {
        let key = "ab;c,d\"e\\f g+h%i=j~k";
        let encoded = percent_encode(key);
        assert!(encoded
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.~%".contains(&b)));
        assert_eq!(form_decode(&encoded).unwrap(), key);
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
