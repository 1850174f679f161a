//! HTTP pieces shared by every client in the crate (the oracle, the telemetry uploader,
//! the artifact refresh): the `ureq` agent and the certificate authorities it trusts
//! ([`Tls`]), TLS errors in words, the retryable-status rule, `Retry-After` parsing and
//! exponential backoff with jitter. A leaf module: it imports from the crate only the
//! error type.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use time::PrimitiveDateTime;
use ureq::tls::{Certificate, RootCerts, TlsConfig};

use crate::error::{Error, ErrorKind, Result};

/// The `User-Agent` of every request.
const USER_AGENT: &str = concat!("loopai/", env!("CARGO_PKG_VERSION"));

/// How a client checks the servers it talks to over HTTPS.
///
/// The roots are either Mozilla's (the `webpki-roots` list built into the binary, the
/// default) or only the certificates of a `ca_file` (a private CA, as curl's `--cacert`).
/// A client whose URL is `https://` is HTTPS only: a redirect to `http://` is refused,
/// never followed in clear.
#[derive(Debug, Clone)]
pub(crate) struct Tls {
    roots: Option<Arc<Vec<Certificate<'static>>>>,
    /// The option that sets the roots (`cloud.ca_file`), for the hint of an unknown issuer.
    key: &'static str,
    https_only: bool,
}

impl Tls {
    /// For a client of `url`, trusting the CA certificates of `ca_file` (option `key`)
    /// when given, else Mozilla's roots. Errors ([`ErrorKind::Config`]) name the option
    /// and the file: cannot be read, holds no PEM certificate, holds one that is not a
    /// usable CA certificate.
    pub(crate) fn for_url(key: &'static str, url: &str, ca_file: Option<&Path>) -> Result<Tls> {
        let roots = match ca_file {
            Some(path) => Some(Arc::new(load_ca_file(key, path)?)),
            None => None,
        };
        Ok(Tls {
            roots,
            key,
            https_only: url.starts_with("https://"),
        })
    }

    fn config(&self) -> TlsConfig {
        let roots = match &self.roots {
            Some(certs) => RootCerts::Specific(Arc::clone(certs)),
            None => RootCerts::WebPki,
        };
        TlsConfig::builder().root_certs(roots).build()
    }
}

/// Reads the CA certificates of a `ca_file`, checking each one as a trust anchor.
fn load_ca_file(key: &str, path: &Path) -> Result<Vec<Certificate<'static>>> {
    let fail = |what: String| {
        Error::new(
            ErrorKind::Config,
            format!("{key}: {}: {what}", path.display()),
        )
    };
    let pem = std::fs::read(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let mut store = rustls::RootCertStore::empty();
    let mut certs = Vec::new();
    for (i, item) in CertificateDer::pem_slice_iter(&pem).enumerate() {
        let der = item.map_err(|e| fail(format!("PEM certificate #{}: {e}", i + 1)))?;
        store
            .add(der.clone())
            .map_err(|e| fail(format!("certificate #{} is not a usable CA: {e}", i + 1)))?;
        certs.push(Certificate::from_der(der.as_ref()).to_owned());
    }
    if certs.is_empty() {
        return Err(fail(
            "no certificate found (expected a PEM `BEGIN CERTIFICATE` block)".to_owned(),
        ));
    }
    Ok(certs)
}

/// An agent that returns 4xx and 5xx as answers to classify (not errors) and sends
/// [`USER_AGENT`]; `follow_redirects: false` makes a 3xx an answer too. It checks servers'
/// certificates as `tls` says. Each request sets its own timeout.
pub(crate) fn agent(follow_redirects: bool, tls: &Tls) -> ureq::Agent {
    let builder = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .https_only(tls.https_only)
        .tls_config(tls.config())
        .user_agent(USER_AGENT);
    let builder = if follow_redirects {
        builder
    } else {
        builder.max_redirects(0)
    };
    builder.build().into()
}

/// The host of `url` (without port or brackets), for messages.
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let authority = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    authority.split(':').next().unwrap_or(authority)
}

/// The TLS error inside `err`, if it is one.
fn tls_error(err: &ureq::Error) -> Option<&rustls::Error> {
    match err {
        ureq::Error::Rustls(e) => Some(e),
        ureq::Error::Io(io) => io.get_ref()?.downcast_ref::<rustls::Error>(),
        _ => None,
    }
}

/// `err` from a request to `url`, in words. A certificate that is refused says why:
/// `the certificate for other.example is not valid for host api.example`, `... expired
/// at ...`, `... has an unknown issuer ... (set cloud.ca_file to trust a private CA)`.
/// `https_only` refusals say that a redirect to plain HTTP was refused.
pub(crate) fn describe_error(err: &ureq::Error, url: &str, tls: &Tls) -> String {
    let host = host_of(url);
    if let Some(e) = tls_error(err) {
        return describe_tls(e, host, tls.key);
    }
    match err {
        ureq::Error::RequireHttpsOnly(to) => format!(
            "refused to follow a redirect from {url} to {to}: plain HTTP after HTTPS would send the request unencrypted"
        ),
        other => other.to_string(),
    }
}

/// Whether `err` is a refused certificate or a failed TLS handshake: retrying the same
/// request will not help.
pub(crate) fn is_tls_error(err: &ureq::Error) -> bool {
    tls_error(err).is_some() || matches!(err, ureq::Error::RequireHttpsOnly(_))
}

fn utc(time: rustls::pki_types::UnixTime) -> String {
    i64::try_from(time.as_secs())
        .ok()
        .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{} s after the epoch", time.as_secs()))
}

/// A name from a certificate as rustls reports it (`DnsName("api.example")`,
/// `IpAddress(127.0.0.1)`), without the wrapping.
fn bare_name(presented: &str) -> &str {
    match presented.split_once('(') {
        Some((_, rest)) => rest.strip_suffix(')').unwrap_or(rest).trim_matches('"'),
        None => presented,
    }
}

fn describe_tls(e: &rustls::Error, host: &str, key: &str) -> String {
    use rustls::CertificateError as C;
    let cert = |why: String| format!("TLS: the certificate of {host} {why}");
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::NotValidForNameContext { presented, .. } => format!(
                "TLS: the certificate for {} is not valid for host {host}",
                if presented.is_empty() {
                    "no name".to_owned()
                } else {
                    let names: Vec<&str> = presented.iter().map(|n| bare_name(n)).collect();
                    names.join(", ")
                }
            ),
            C::NotValidForName => format!("TLS: the certificate is not valid for host {host}"),
            C::ExpiredContext { not_after, .. } => {
                cert(format!("expired at {}", utc(*not_after)))
            }
            C::Expired => cert("has expired".to_owned()),
            C::NotValidYetContext { not_before, .. } => {
                cert(format!("is not valid before {}", utc(*not_before)))
            }
            C::NotValidYet => cert("is not valid yet".to_owned()),
            C::UnknownIssuer => cert(format!(
                "has an unknown issuer: it is not signed by a trusted CA (set {key} to trust a private CA)"
            )),
            C::BadSignature => cert("has a bad signature".to_owned()),
            C::Revoked => cert("is revoked".to_owned()),
            other => cert(format!("is invalid: {other:?}")),
        },
        other => format!("TLS handshake with {host} failed: {other}"),
    }
}

/// Whether a request that got `status` may succeed if sent again: 408, 429 and 5xx. Any
/// other 4xx is permanent ([`is_permanent_status`]).
pub(crate) fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500..=599)
}

/// Whether `status` says the request will never succeed: a 4xx other than 408 and 429.
pub(crate) fn is_permanent_status(status: u16) -> bool {
    (400..=499).contains(&status) && !is_retryable_status(status)
}

/// Parses `Retry-After` (RFC 9110 §10.2.3): delay-seconds, or an HTTP date (IMF-fixdate,
/// `Sun, 06 Nov 1994 08:49:37 GMT`) resolved against `now_ms` (milliseconds since the
/// Unix epoch); a date in the past is a zero delay. Anything else is ignored (`None`).
pub(crate) fn parse_retry_after(value: &str, now_ms: i64) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        let secs = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs));
    }
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let at = PrimitiveDateTime::parse(value, format).ok()?.assume_utc();
    let at_ms = i64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()?;
    Some(Duration::from_millis(
        u64::try_from(at_ms.saturating_sub(now_ms)).unwrap_or(0),
    ))
}

/// How a backoff delay is drawn below its ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Jitter {
    /// Uniform in `[0, ceiling]` (background retries: spreads many clients out).
    Full,
    /// Uniform in `[ceiling / 2, ceiling]` (a caller waiting for the answer).
    Equal,
}

/// Exponential backoff with jitter, capped; `Retry-After` wins when given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    /// The ceiling after the first failure; it doubles per failure.
    pub base: Duration,
    /// The largest ceiling.
    pub cap: Duration,
    /// Longest `Retry-After` honoured; longer ones are shortened to this.
    pub max_retry_after: Duration,
    pub jitter: Jitter,
}

/// Delay before the first retry of [`Backoff::default`] (the upper bound of its jitter).
pub(crate) const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest delay between retries of [`Backoff::default`] without a `Retry-After`.
pub(crate) const BACKOFF_CAP: Duration = Duration::from_secs(300);
/// Longest `Retry-After` honoured by [`Backoff::default`].
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

impl Default for Backoff {
    /// Background retries: 1 s doubling to 5 min, full jitter, `Retry-After` up to 1 h.
    fn default() -> Self {
        Backoff {
            base: BACKOFF_BASE,
            cap: BACKOFF_CAP,
            max_retry_after: MAX_RETRY_AFTER,
            jitter: Jitter::Full,
        }
    }
}

impl Backoff {
    /// The ceiling of the jitter after `failures` consecutive failures (≥ 1):
    /// `min(cap, base · 2^(failures-1))`.
    pub(crate) fn ceiling(&self, failures: u32) -> Duration {
        let factor = 1u32
            .checked_shl(failures.saturating_sub(1).min(31))
            .unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The wait before the next attempt: the server's `Retry-After` (at most
    /// `max_retry_after`) when it sent one, otherwise drawn below the ceiling as `jitter`
    /// says.
    pub(crate) fn delay(
        &self,
        failures: u32,
        retry_after: Option<Duration>,
        rng: &mut fastrand::Rng,
    ) -> Duration {
        if let Some(after) = retry_after {
            return after.min(self.max_retry_after);
        }
        let ceiling = self.ceiling(failures);
        match self.jitter {
            Jitter::Full => {
                let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
                Duration::from_millis(rng.u64(0..=ms))
            }
            Jitter::Equal => {
                let half = ceiling / 2;
                half + half.mul_f64(rng.f64())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls_testing::{json_response, HttpsServer, TestCa};

    /// GETs `url` with an agent that trusts `ca_file` (or Mozilla's roots); the status or
    /// the error in words.
    fn get(url: &str, ca_file: Option<&Path>) -> std::result::Result<u16, String> {
        let tls = Tls::for_url("cloud.ca_file", url, ca_file).unwrap();
        let agent = agent(true, &tls);
        let request = agent
            .get(url)
            .config()
            .timeout_global(Some(Duration::from_secs(30)))
            .build();
        match request.call() {
            Ok(response) => Ok(response.status().as_u16()),
            Err(e) => {
                assert!(is_tls_error(&e), "{e}");
                Err(describe_error(&e, url, &tls))
            }
        }
    }

    #[test]
    fn a_private_ca_is_trusted_through_ca_file_and_only_then() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("private CA");
        let ca_file = ca.write_ca(dir.path(), "ca.pem");
        let server = HttpsServer::start(&ca.leaf(&["localhost"]), json_response("{}"));
        assert_eq!(get(&server.url(), Some(&ca_file)), Ok(200));
        // Mozilla's roots do not know the private CA.
        let host = "localhost";
        assert_eq!(
            get(&server.url(), None).unwrap_err(),
            format!("TLS: the certificate of {host} has an unknown issuer: it is not signed by a trusted CA (set cloud.ca_file to trust a private CA)")
        );
        // Nor does a ca_file with another CA.
        let other = TestCa::new("another CA").write_ca(dir.path(), "other.pem");
        assert!(get(&server.url(), Some(&other))
            .unwrap_err()
            .contains("has an unknown issuer"));
        assert_eq!(
            server.answered.load(std::sync::atomic::Ordering::Acquire),
            1
        );
    }

    #[test]
    fn a_certificate_for_another_host_is_refused_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("private CA");
        let ca_file = ca.write_ca(dir.path(), "ca.pem");
        let server = HttpsServer::start(&ca.leaf(&["api.example"]), json_response("{}"));
        assert_eq!(
            get(&server.url(), Some(&ca_file)).unwrap_err(),
            "TLS: the certificate for api.example is not valid for host localhost"
        );
        assert_eq!(
            server.answered.load(std::sync::atomic::Ordering::Acquire),
            0
        );
    }

    #[test]
    fn an_expired_certificate_is_refused_saying_when_it_expired() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("private CA");
        let ca_file = ca.write_ca(dir.path(), "ca.pem");
        let server = HttpsServer::start(&ca.expired_leaf(&["localhost"]), json_response("{}"));
        assert_eq!(
            get(&server.url(), Some(&ca_file)).unwrap_err(),
            "TLS: the certificate of localhost expired at 2020-01-01T00:00:00Z"
        );
    }

    #[test]
    fn an_https_client_never_follows_a_redirect_to_plain_http() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("private CA");
        let ca_file = ca.write_ca(dir.path(), "ca.pem");
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = format!("http://127.0.0.1:{}/", plain.local_addr().unwrap().port());
        let redirect = format!(
            "HTTP/1.1 302 Found\r\nlocation: {target}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
        let server = HttpsServer::start(&ca.leaf(&["localhost"]), redirect);
        let err = get(&server.url(), Some(&ca_file)).unwrap_err();
        assert_eq!(
            err,
            format!("refused to follow a redirect from {} to {target}: plain HTTP after HTTPS would send the request unencrypted", server.url())
        );
        // Nothing was sent in clear.
        plain.set_nonblocking(true).unwrap();
        assert!(plain.accept().is_err());
    }

    #[test]
    fn a_bad_ca_file_is_a_config_error_naming_the_option_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").unwrap();
        let url = "https://localhost";
        let err = Tls::for_url("oracle.ca_file", url, Some(&missing)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(
            err.message().starts_with(&format!(
                "oracle.ca_file: {}: cannot read: ",
                missing.display()
            )),
            "{err}"
        );
        let err = Tls::for_url("cloud.ca_file", url, Some(&empty)).unwrap_err();
        assert_eq!(
            err.message(),
            format!(
                "cloud.ca_file: {}: no certificate found (expected a PEM `BEGIN CERTIFICATE` block)",
                empty.display()
            )
        );
    }

    #[test]
    fn hosts_are_taken_from_urls() {
        assert_eq!(host_of("https://api.example:8443/v1/x"), "api.example");
        assert_eq!(host_of("https://user@api.example/x"), "api.example");
        assert_eq!(host_of("https://[::1]:8443/"), "::1");
        assert_eq!(host_of("http://h?q"), "h");
        assert_eq!(bare_name("DnsName(\"api.example\")"), "api.example");
        assert_eq!(bare_name("IpAddress(127.0.0.1)"), "127.0.0.1");
        assert_eq!(bare_name("plain"), "plain");
    }

    // 2025-11-25T00:00:00Z
    const NOW: i64 = 1_764_028_800_000;

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        assert_eq!(
            parse_retry_after("120", NOW),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 7 ", NOW), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", NOW), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Tue, 25 Nov 2025 00:01:30 GMT", NOW),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            parse_retry_after("Mon, 24 Nov 2025 23:00:00 GMT", NOW),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        assert_eq!(parse_retry_after("soon", NOW), None);
        assert_eq!(parse_retry_after("-5", NOW), None);
        assert_eq!(parse_retry_after("", NOW), None);
    }

    #[test]
    fn only_408_429_and_5xx_are_retryable_and_other_4xx_are_permanent() {
        for status in [408, 429, 500, 502, 503, 504, 599] {
            assert!(is_retryable_status(status), "{status}");
            assert!(!is_permanent_status(status), "{status}");
        }
        for status in [400, 401, 403, 404, 413, 422, 499] {
            assert!(!is_retryable_status(status), "{status}");
            assert!(is_permanent_status(status), "{status}");
        }
        for status in [200, 204, 302, 304] {
            assert!(!is_retryable_status(status), "{status}");
            assert!(!is_permanent_status(status), "{status}");
        }
    }

    #[test]
    fn backoff_is_exponential_capped_and_fully_jittered() {
        let b = Backoff::default();
        assert_eq!(b.ceiling(1), Duration::from_secs(1));
        assert_eq!(b.ceiling(2), Duration::from_secs(2));
        assert_eq!(b.ceiling(5), Duration::from_secs(16));
        assert_eq!(b.ceiling(9), Duration::from_secs(256));
        assert_eq!(b.ceiling(10), BACKOFF_CAP);
        assert_eq!(b.ceiling(u32::MAX), BACKOFF_CAP);
        let mut rng = fastrand::Rng::with_seed(1);
        let delays: Vec<Duration> = (0..200).map(|_| b.delay(4, None, &mut rng)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(8)));
        assert!(
            delays.iter().any(|d| *d < Duration::from_secs(2)),
            "jitter reaches low"
        );
        assert!(
            delays.iter().any(|d| *d > Duration::from_secs(6)),
            "jitter reaches high"
        );
        // Retry-After wins, capped.
        let ra = Some(Duration::from_secs(42));
        assert_eq!(b.delay(1, ra, &mut rng), Duration::from_secs(42));
        let huge = Some(Duration::from_secs(86_400));
        assert_eq!(b.delay(1, huge, &mut rng), MAX_RETRY_AFTER);
    }

    #[test]
    fn equal_jitter_stays_between_half_and_all_of_the_ceiling() {
        let b = Backoff {
            base: Duration::from_millis(250),
            cap: Duration::from_secs(8),
            max_retry_after: Duration::MAX,
            jitter: Jitter::Equal,
        };
        let mut rng = fastrand::Rng::with_seed(3);
        for failures in 1..=10 {
            let ceiling = b.ceiling(failures);
            for _ in 0..50 {
                let d = b.delay(failures, None, &mut rng);
                assert!(d >= ceiling / 2 && d <= ceiling, "{failures}: {d:?}");
            }
        }
        assert_eq!(b.ceiling(6), Duration::from_secs(8));
        let ra = Some(Duration::from_secs(86_400));
        assert_eq!(b.delay(1, ra, &mut rng), Duration::from_secs(86_400));
    }
}
