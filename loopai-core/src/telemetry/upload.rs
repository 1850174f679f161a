//! Uploading spooled batches: the HTTP transport, the retry policy and the uploader's
//! state machine. The state machine does one attempt per [`Uploader::step`] and says how
//! long to wait before the next one; the thread in `mod.rs` does the waiting, so tests
//! drive it with a fake transport and a fixed clock and never sleep.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::spool::{verify, Spool};
use super::Counters;
use crate::clock::Clock;
use crate::net::{self, is_permanent_status, parse_retry_after, Backoff};

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

    /// POSTs one heartbeat (plain JSON) to the heartbeat endpoint, giving up after
    /// `timeout`. Never retried: the next heartbeat replaces it.
    fn post_heartbeat(&self, body: &[u8], timeout: Duration) -> Result<Response, String>;
}

/// The real transport: `POST {api_url}/api/v1/telemetry` (and `/api/v1/heartbeats`) with
/// `ureq`.
pub(crate) struct HttpTransport {
    url: String,
    heartbeat_url: String,
    authorization: Option<String>,
    agent: ureq::Agent,
    tls: net::Tls,
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

    /// Checks the collector's certificate as `tls` says (`cloud.ca_file`).
    pub(crate) fn new(api_url: &str, api_key: Option<&str>, tls: net::Tls) -> HttpTransport {
        HttpTransport {
            url: Self::endpoint(api_url),
            heartbeat_url: format!("{}/api/v1/heartbeats", api_url.trim_end_matches('/')),
            authorization: api_key.map(|k| format!("Bearer {k}")),
            agent: net::agent(true, &tls),
            tls,
        }
    }
}

impl Transport for HttpTransport {
    fn post(&self, body: &[u8], timeout: Duration) -> Result<Response, String> {
        self.send(&self.url, true, body, timeout)
    }

    fn post_heartbeat(&self, body: &[u8], timeout: Duration) -> Result<Response, String> {
        self.send(&self.heartbeat_url, false, body, timeout)
    }
}

impl HttpTransport {
    fn send(
        &self,
        url: &str,
        gzip: bool,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Response, String> {
        let mut request = self
            .agent
            .post(url)
            .config()
            .timeout_global(Some(timeout))
            .build()
            .header("Content-Type", "application/json");
        if gzip {
            request = request.header("Content-Encoding", "gzip");
        }
        if let Some(auth) = &self.authorization {
            request = request.header("Authorization", auth);
        }
        let response = request
            .send(body)
            .map_err(|e| net::describe_error(&e, &self.url, &self.tls))?;
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
        _ if is_permanent_status(status) => Verdict::Permanent(format!("HTTP {status}")),
        _ => Verdict::Retry {
            reason: format!("HTTP {status}"),
            after: response
                .retry_after
                .as_deref()
                .and_then(|v| parse_retry_after(v, now_ms)),
        },
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
                    // Includes a sealed file that fails authentication or whose key is
                    // not configured (`storage.encryption`).
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
    use crate::net::MAX_RETRY_AFTER;
    use crate::telemetry::testing::FakeTransport;
    use crate::testing::TestClock;
    use uuid::Uuid;

    // 2025-11-25T00:00:00Z
    const NOW: i64 = 1_764_028_800_000;

    fn gz_batch(id: Uuid) -> Vec<u8> {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        write!(enc, r#"{{"batch_id": "{id}"}}"#).unwrap();
        enc.finish().unwrap()
    }

    fn uploader(dir: &std::path::Path, n: usize) -> (Uploader, Arc<FakeTransport>, Vec<Uuid>) {
        let (spool, _) = Spool::open(dir, 1 << 20, None).unwrap();
        let ids: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
        for id in &ids {
            spool.push(*id, &gz_batch(*id)).unwrap();
        }
        let transport = Arc::new(FakeTransport::default());
        let up = Uploader {
            spool: Arc::new(spool),
            transport: transport.clone(),
            counters: Arc::default(),
            clock: TestClock::at(NOW),
            backoff: Backoff::default(),
            rng: fastrand::Rng::with_seed(7),
            failures: 0,
        };
        (up, transport, ids)
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
