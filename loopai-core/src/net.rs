//! HTTP pieces shared by every client in the crate (the oracle, the telemetry uploader,
//! the artifact refresh): the `ureq` agent, the retryable-status rule, `Retry-After`
//! parsing and exponential backoff with jitter. A leaf module: it imports nothing from the
//! crate.

use std::time::Duration;

use time::PrimitiveDateTime;

/// The `User-Agent` of every request.
const USER_AGENT: &str = concat!("loopai/", env!("CARGO_PKG_VERSION"));

/// An agent that returns 4xx and 5xx as answers to classify (not errors) and sends
/// [`USER_AGENT`]; `follow_redirects: false` makes a 3xx an answer too. Each request sets
/// its own timeout.
pub(crate) fn agent(follow_redirects: bool) -> ureq::Agent {
    let builder = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .user_agent(USER_AGENT);
    let builder = if follow_redirects {
        builder
    } else {
        builder.max_redirects(0)
    };
    builder.build().into()
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
