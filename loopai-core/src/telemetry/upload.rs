//! Uploading spooled batches: the HTTP transport, the retry policy and the uploader's
//! state machine. The state machine does one attempt per [`Uploader::step`] and says how
//! long to wait before the next one; the thread in `mod.rs` does the waiting, so tests
//! drive it with a fake transport and a fixed clock and never sleep.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use time::PrimitiveDateTime;

use super::spool::{verify, Spool};
use super::Counters;
use crate::Clock;

/// Delay before the first retry (the upper bound of its jitter).
pub(crate) const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest delay between retries without a `Retry-After`.
pub(crate) const BACKOFF_CAP: Duration = Duration::from_secs(300);
/// Longest `Retry-After` honoured; longer ones are shortened to this.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// What the collector answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Response {
    pub status: u16,
    /// The `Retry-After` header, verbatim.
    pub retry_after: Option<String>,
}

/// Sends one gzip-compressed batch to the collector.
pub(crate) trait Transport: Send + Sync + fmt::Debug {
    /// POSTs `body` (gzip JSON), giving up after `timeout`. `Err` is a transport failure
    /// (connection refused, DNS, TLS, timeout...), always retried.
    fn post(&self, body: &[u8], timeout: Duration) -> Result<Response, String>;
}

/// The real transport: `POST {api_url}/api/v1/telemetry` with `ureq`.
pub(crate) struct HttpTransport {
    url: String,
    authorization: Option<String>,
    agent: ureq::Agent,
}

impl fmt::Debug for HttpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpTransport")
            .field("url", &self.url)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl HttpTransport {
    /// The endpoint under `api_url` (`cloud.api_url`; a trailing `/` is ignored).
    pub(crate) fn endpoint(api_url: &str) -> String {
        format!("{}/api/v1/telemetry", api_url.trim_end_matches('/'))
    }

    pub(crate) fn new(api_url: &str, api_key: Option<&str>) -> HttpTransport {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            // 4xx and 5xx are answers to classify, not errors.
            .http_status_as_error(false)
            .user_agent(format!("loopai/{}", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        HttpTransport {
            url: Self::endpoint(api_url),
            authorization: api_key.map(|k| format!("Bearer {k}")),
            agent,
        }
    }
}

impl Transport for HttpTransport {
    fn post(&self, body: &[u8], timeout: Duration) -> Result<Response, String> {
        let mut request = self
            .agent
            .post(&self.url)
            .config()
            .timeout_global(Some(timeout))
            .build()
            .header("Content-Type", "application/json")
            .header("Content-Encoding", "gzip");
        if let Some(auth) = &self.authorization {
            request = request.header("Authorization", auth);
        }
        let response = request.send(body).map_err(|e| e.to_string())?;
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let status = response.status().as_u16();
        // Read (a bounded amount of) the body so that the connection can be reused.
        let _ = response
            .into_body()
            .with_config()
            .limit(64 << 10)
            .read_to_vec();
        Ok(Response {
            status,
            retry_after,
        })
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// 2xx: delivered.
    Sent,
    /// A 4xx other than 408 and 429: the collector will never accept this batch.
    Permanent(String),
    /// 408, 429, 5xx, other statuses or a transport failure: try again later, no sooner
    /// than `after` when the collector said so.
    Retry {
        reason: String,
        after: Option<Duration>,
    },
}

/// Classifies an attempt's result; `now_ms` (wall clock) resolves an HTTP-date
/// `Retry-After`.
pub(crate) fn classify(result: Result<Response, String>, now_ms: i64) -> Verdict {
    let response = match result {
        Ok(r) => r,
        Err(e) => {
            return Verdict::Retry {
                reason: e,
                after: None,
            }
        }
    };
    let status = response.status;
    match status {
        200..=299 => Verdict::Sent,
        408 | 429 => Verdict::Retry {
            reason: format!("HTTP {status}"),
            after: response
                .retry_after
                .as_deref()
                .and_then(|v| parse_retry_after(v, now_ms)),
        },
        400..=499 => Verdict::Permanent(format!("HTTP {status}")),
        _ => Verdict::Retry {
            reason: format!("HTTP {status}"),
            after: response
                .retry_after
                .as_deref()
                .and_then(|v| parse_retry_after(v, now_ms)),
        },
    }
}

/// Parses `Retry-After`: delay-seconds, or an HTTP date (IMF-fixdate,
/// `Sun, 06 Nov 1994 08:49:37 GMT`) resolved against `now_ms`; a date in the past is a
/// zero delay. Anything else is ignored (`None`).
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

/// Exponential backoff with full jitter, capped; `Retry-After` wins when given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    pub max_retry_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: BACKOFF_BASE,
            cap: BACKOFF_CAP,
            max_retry_after: MAX_RETRY_AFTER,
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

    /// The wait before the next attempt: the collector's `Retry-After` (at most
    /// `max_retry_after`) when it sent one, otherwise uniform in `[0, ceiling]`.
    pub(crate) fn delay(
        &self,
        failures: u32,
        retry_after: Option<Duration>,
        rng: &mut fastrand::Rng,
    ) -> Duration {
        if let Some(after) = retry_after {
            return after.min(self.max_retry_after);
        }
        let ceiling = u64::try_from(self.ceiling(failures).as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rng.u64(0..=ceiling))
    }
}

/// What one [`Uploader::step`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nothing is spooled.
    Idle,
    /// A batch was delivered (and deleted from the spool).
    Sent,
    /// A batch was dropped: refused for good, or unreadable.
    Dropped,
    /// The attempt failed; wait this long before the next one.
    Retry(Duration),
}

/// Uploads the spool's batches oldest first, one attempt per step.
#[derive(Debug)]
pub(crate) struct Uploader {
    pub spool: Arc<Spool>,
    pub transport: Arc<dyn Transport>,
    pub counters: Arc<Counters>,
    pub clock: Arc<dyn Clock>,
    pub backoff: Backoff,
    pub rng: fastrand::Rng,
    /// Consecutive failed attempts (reset by any answer that settles a batch).
    pub failures: u32,
}

impl Uploader {
    /// Tries to deliver the oldest spooled batch once, giving the request at most
    /// `timeout`.
    pub(crate) fn step(&mut self, timeout: Duration) -> Step {
        loop {
            let Some(name) = self.spool.take_oldest() else {
                return Step::Idle;
            };
            let bytes = match self.spool.read(&name) {
                Ok(Some(bytes)) => bytes,
                Ok(None) => {
                    // Evicted, or delivered by another process sharing the spool.
                    let _ = self.spool.remove(&name);
                    continue;
                }
                Err(e) => {
                    let path = self.spool.dir().join(&name);
                    log::warn!(
                        "loopai: telemetry spool file {} unreadable ({e}); moved aside",
                        path.display()
                    );
                    self.spool.quarantine(&name);
                    self.counters.dropped_corrupt.inc();
                    return Step::Dropped;
                }
            };
            if let Err(why) = verify(&bytes) {
                let path = self.spool.dir().join(&name);
                log::warn!(
                    "loopai: telemetry spool file {} is corrupt ({why}); moved aside",
                    path.display()
                );
                self.spool.quarantine(&name);
                self.counters.dropped_corrupt.inc();
                return Step::Dropped;
            }
            let result = self.transport.post(&bytes, timeout);
            return match classify(result, self.clock.now_millis()) {
                Verdict::Sent => {
                    self.settle(&name);
                    self.counters.sent.inc();
                    self.counters.set_error(None);
                    Step::Sent
                }
                Verdict::Permanent(reason) => {
                    self.settle(&name);
                    self.counters.dropped_permanent.inc();
                    log::error!("loopai: telemetry batch {name} refused by the collector ({reason}); dropped");
                    self.counters
                        .set_error(Some(format!("{name}: refused: {reason}")));
                    Step::Dropped
                }
                Verdict::Retry { reason, after } => {
                    self.spool.release();
                    self.failures = self.failures.saturating_add(1);
                    self.counters.retries.inc();
                    let delay = self.backoff.delay(self.failures, after, &mut self.rng);
                    log::warn!("loopai: telemetry upload failed ({reason}); retrying in {delay:?}");
                    self.counters.set_error(Some(reason));
                    Step::Retry(delay)
                }
            };
        }
    }

    fn settle(&mut self, name: &str) {
        self.failures = 0;
        if let Err(e) = self.spool.remove(name) {
            log::error!("loopai: telemetry spool: deleting {name}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::testing::FakeTransport;
    use uuid::Uuid;

    #[derive(Debug)]
    struct FixedClock(i64);

    impl Clock for FixedClock {
        fn now_millis(&self) -> i64 {
            self.0
        }
    }

    // 2025-11-25T00:00:00Z
    const NOW: i64 = 1_764_028_800_000;

    fn gz_batch(id: Uuid) -> Vec<u8> {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        write!(enc, r#"{{"batch_id": "{id}"}}"#).unwrap();
        enc.finish().unwrap()
    }

    fn uploader(dir: &std::path::Path, n: usize) -> (Uploader, Arc<FakeTransport>, Vec<Uuid>) {
        let (spool, _) = Spool::open(dir, 1 << 20).unwrap();
        let ids: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
        for id in &ids {
            spool.push(*id, &gz_batch(*id)).unwrap();
        }
        let transport = Arc::new(FakeTransport::default());
        let up = Uploader {
            spool: Arc::new(spool),
            transport: transport.clone(),
            counters: Arc::default(),
            clock: Arc::new(FixedClock(NOW)),
            backoff: Backoff::default(),
            rng: fastrand::Rng::with_seed(7),
            failures: 0,
        };
        (up, transport, ids)
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        assert_eq!(
            parse_retry_after("120", NOW),
            Some(Duration::from_secs(120))
        );
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
    fn statuses_are_classified() {
        let r = |status| {
            classify(
                Ok(Response {
                    status,
                    retry_after: None,
                }),
                NOW,
            )
        };
        assert_eq!(r(200), Verdict::Sent);
        assert_eq!(r(202), Verdict::Sent);
        for status in [400, 401, 403, 404, 413, 422] {
            assert!(matches!(r(status), Verdict::Permanent(_)), "{status}");
        }
        for status in [408, 429, 500, 502, 503, 504, 302] {
            assert!(matches!(r(status), Verdict::Retry { .. }), "{status}");
        }
        assert!(matches!(
            classify(Err("connection refused".into()), NOW),
            Verdict::Retry { after: None, .. }
        ));
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
    fn failures_back_off_then_success_resets_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let (mut up, transport, ids) = uploader(dir.path(), 2);
        // Connection refused three times: growing ceilings, the same batch each time.
        for failures in 1..=3u32 {
            match up.step(Duration::from_secs(1)) {
                Step::Retry(d) => assert!(d <= up.backoff.ceiling(failures), "{d:?}"),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(up.failures, 3);
        assert_eq!(up.counters.snapshot().retries, 3);
        assert_eq!(
            up.counters.last_error().as_deref(),
            Some("connection refused")
        );
        transport.answer(200, None);
        assert_eq!(up.step(Duration::from_secs(1)), Step::Sent);
        assert_eq!(up.failures, 0);
        assert_eq!(up.counters.last_error(), None);
        transport.answer(201, None);
        assert_eq!(up.step(Duration::from_secs(1)), Step::Sent);
        assert_eq!(up.step(Duration::from_secs(1)), Step::Idle);
        let bodies = transport.bodies.lock();
        let sent: Vec<Uuid> = bodies.iter().map(|b| verify(b).unwrap()).collect();
        assert_eq!(sent, [ids[0], ids[0], ids[0], ids[0], ids[1]]);
        assert_eq!(up.counters.snapshot().sent, 2);
        assert_eq!(up.spool.stats(), (0, 0));
    }

    #[test]
    fn retry_after_is_honoured_with_an_injected_clock() {
        let dir = tempfile::tempdir().unwrap();
        let (mut up, transport, _) = uploader(dir.path(), 1);
        transport.answer(503, Some("120"));
        assert_eq!(
            up.step(Duration::from_secs(1)),
            Step::Retry(Duration::from_secs(120))
        );
        transport.answer(429, Some("Tue, 25 Nov 2025 00:10:00 GMT"));
        assert_eq!(
            up.step(Duration::from_secs(1)),
            Step::Retry(Duration::from_secs(600))
        );
        transport.answer(408, Some("Tue, 25 Nov 2025 23:10:00 GMT"));
        assert_eq!(
            up.step(Duration::from_secs(1)),
            Step::Retry(MAX_RETRY_AFTER)
        );
        assert_eq!(up.spool.stats().0, 1, "still spooled");
        assert_eq!(up.counters.last_error().as_deref(), Some("HTTP 408"));
    }

    #[test]
    fn permanent_refusals_drop_the_batch_and_count_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut up, transport, _) = uploader(dir.path(), 2);
        transport.answer(401, None);
        assert_eq!(up.step(Duration::from_secs(1)), Step::Dropped);
        transport.answer(200, None);
        assert_eq!(up.step(Duration::from_secs(1)), Step::Sent);
        let m = up.counters.snapshot();
        assert_eq!((m.dropped_permanent, m.sent, m.retries), (1, 1, 0));
        assert_eq!(up.spool.stats(), (0, 0));
    }

    #[test]
    fn corrupt_spool_files_are_dropped_without_an_upload() {
        let dir = tempfile::tempdir().unwrap();
        let (mut up, transport, _) = uploader(dir.path(), 0);
        up.spool
            .push(Uuid::new_v4(), b"\x1f\x8b truncated")
            .unwrap();
        assert_eq!(up.step(Duration::from_secs(1)), Step::Dropped);
        assert!(transport.bodies.lock().is_empty());
        assert_eq!(up.counters.snapshot().dropped_corrupt, 1);
        assert_eq!(
            std::fs::read_dir(dir.path().join("corrupt"))
                .unwrap()
                .count(),
            1
        );
    }
}
