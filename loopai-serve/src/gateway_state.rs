//! The gateway's state in a server: the library's gateway, the upstream client, the
//! response counters, and their `/health` and `/metrics` renderings. Below both the
//! server's `AppState` (which holds it once loaded) and the HTTP handlers in `gateway`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderValue;
use loopai_core::{DeploymentConfig, Error, ErrorKind, Result};
use loopai_gateway::Gateway;
use serde_json::Value;

/// The gateway of a server: the library's [`Gateway`], the upstream client and counters.
#[derive(Debug)]
pub(crate) struct GatewayState {
    pub(crate) gateway: Gateway,
    pub(crate) client: reqwest::Client,
    pub(crate) url: String,
    pub(crate) api_key: Option<HeaderValue>,
    pub(crate) timeout: Duration,
    pub(crate) validations_in_flight: Arc<AtomicU64>,
    pub(crate) validations_skipped: AtomicU64,
    pub(crate) responses: ResponseCounters,
    /// The gateway's own time on forwarded calls: from the request received to the
    /// response handed to the server, minus the upstream call (JSON answers; not streams).
    pub(crate) forwarded_overhead: FineHistogram,
    /// Locally answered calls, from the request received to the response handed to the
    /// server.
    pub(crate) local_time: FineHistogram,
}

/// Buckets of [`FineHistogram`]: upper bounds 1 µs × 1.1^i, i = 0..N (1 µs to ~1.4 s),
/// then +Inf.
const FINE_BUCKETS: usize = 148;

/// A latency histogram with 10% wide buckets, fine enough to read a p99 from (to 10%);
/// rendered cumulatively in `/metrics`, so that a load generator can take the difference
/// of two scrapes around its run.
#[derive(Debug)]
pub(crate) struct FineHistogram {
    buckets: Vec<AtomicU64>,
    sum_ns: AtomicU64,
}

impl Default for FineHistogram {
    fn default() -> Self {
        FineHistogram {
            buckets: (0..=FINE_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl FineHistogram {
    /// The upper bound of bucket `i`, in nanoseconds.
    fn bound_ns(i: usize) -> f64 {
        1_000.0 * 1.1f64.powi(i as i32)
    }

    pub(crate) fn observe(&self, d: Duration) {
        let ns = d.as_nanos() as f64;
        let i = if ns <= 1_000.0 {
            0
        } else {
            ((ns / 1_000.0).ln() / 1.1f64.ln()).ceil() as usize
        };
        // Rounding may put a value right at a bound one bucket high; never one low.
        let i = if i > 0 && ns <= Self::bound_ns(i - 1) {
            i - 1
        } else {
            i
        };
        self.buckets[i.min(FINE_BUCKETS)].fetch_add(1, Relaxed);
        self.sum_ns
            .fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    fn render(&self, out: &mut String, name: &str) {
        use std::fmt::Write;
        let mut cumulative = 0u64;
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Relaxed);
            if i < FINE_BUCKETS {
                let le = Self::bound_ns(i) / 1e9;
                let _ = writeln!(out, "{name}_bucket{{le=\"{le:e}\"}} {cumulative}");
            } else {
                let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
            }
        }
        let sum = self.sum_ns.load(Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

/// Responses of `/v1/chat/completions` by who answered.
#[derive(Debug, Default)]
pub(crate) struct ResponseCounters {
    pub(crate) program: AtomicU64,
    pub(crate) oracle: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) upstream_unreachable: AtomicU64,
    pub(crate) upstream_timeout: AtomicU64,
}

impl GatewayState {
    /// Opens the gateway of `data_dir` and builds the upstream client (blocking: runs in
    /// the loader).
    pub(crate) fn open(data_dir: &std::path::Path, config: &DeploymentConfig) -> Result<Self> {
        let cfg = config
            .gateway
            .as_ref()
            .ok_or_else(|| Error::new(ErrorKind::Config, "gateway: section missing"))?;
        let api_key = match &cfg.upstream.api_key_env {
            None => None,
            Some(var) => {
                let key = std::env::var(var).map_err(|_| {
                    Error::new(
                        ErrorKind::Config,
                        format!("gateway.upstream.api_key_env: the variable {var} is not set"),
                    )
                })?;
                let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                    Error::new(
                        ErrorKind::Config,
                        format!("gateway.upstream.api_key_env: {var} holds characters a header cannot carry"),
                    )
                })?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        let base_url = cfg.upstream.base_url.trim();
        let mut client = reqwest::Client::builder()
            // An https upstream is never reached over plain HTTP, not even by a redirect.
            .https_only(base_url.starts_with("https://"));
        if let Some(path) = &cfg.upstream.ca_file {
            client = client.tls_built_in_root_certs(false);
            for cert in read_ca_file(path)? {
                client = client.add_root_certificate(cert);
            }
        }
        let client = client
            .connect_timeout(Duration::from_millis(cfg.upstream.connect_timeout_ms))
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| {
                Error::new(
                    ErrorKind::Config,
                    format!("gateway.upstream: building the HTTP client: {e}"),
                )
            })?;
        let url = format!(
            "{}/chat/completions",
            cfg.upstream.base_url.trim().trim_end_matches('/')
        );
        let gateway = Gateway::open(data_dir, config)?;
        Ok(GatewayState {
            gateway,
            client,
            url,
            api_key,
            timeout: Duration::from_millis(cfg.upstream.timeout_ms),
            validations_in_flight: Arc::new(AtomicU64::new(0)),
            validations_skipped: AtomicU64::new(0),
            responses: ResponseCounters::default(),
            forwarded_overhead: FineHistogram::default(),
            local_time: FineHistogram::default(),
        })
    }
}

/// The certificates of `gateway.upstream.ca_file` (at least one); errors name the option
/// and the file.
fn read_ca_file(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>> {
    let fail = |what: String| {
        Error::new(
            ErrorKind::Config,
            format!("gateway.upstream.ca_file: {}: {what}", path.display()),
        )
    };
    let pem = std::fs::read(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| fail(format!("invalid PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(fail(
            "no certificate found (expected a PEM `BEGIN CERTIFICATE` block)".to_owned(),
        ));
    }
    Ok(certs)
}

/// `"gateway"` of `GET /health`.
pub(crate) fn health_json(gws: &GatewayState) -> Value {
    let stats = gws.gateway.stats();
    let mut v = serde_json::to_value(&stats).unwrap_or(Value::Null);
    if let Some(map) = v.as_object_mut() {
        map.insert("upstream".into(), Value::String(gws.url.clone()));
        map.insert(
            "validations_skipped".into(),
            gws.validations_skipped.load(Relaxed).into(),
        );
    }
    v
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The gateway's families of `GET /metrics`.
pub(crate) fn render_metrics(gws: &GatewayState, out: &mut String) {
    use std::fmt::Write;
    let stats = gws.gateway.stats();
    let r = &gws.responses;
    let _ = writeln!(
        out,
        "# HELP loopai_gateway_responses_total Responses of /v1/chat/completions by who answered.\n# TYPE loopai_gateway_responses_total counter"
    );
    for (source, n) in [
        ("program", r.program.load(Relaxed)),
        ("oracle", r.oracle.load(Relaxed)),
        ("refused", r.refused.load(Relaxed)),
        ("upstream_unreachable", r.upstream_unreachable.load(Relaxed)),
        ("upstream_timeout", r.upstream_timeout.load(Relaxed)),
    ] {
        let _ = writeln!(
            out,
            "loopai_gateway_responses_total{{source=\"{source}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP loopai_gateway_untasked_calls_total Calls with no task, forwarded untouched.\n# TYPE loopai_gateway_untasked_calls_total counter\nloopai_gateway_untasked_calls_total {}",
        stats.untasked_calls
    );
    let _ = writeln!(
        out,
        "# HELP loopai_gateway_log_dropped_total Call-log lines dropped (queue full).\n# TYPE loopai_gateway_log_dropped_total counter\nloopai_gateway_log_dropped_total {}",
        stats.log_dropped
    );
    let _ = writeln!(
        out,
        "# HELP loopai_gateway_state The task's state (1 for the current one).\n# TYPE loopai_gateway_state gauge"
    );
    for t in &stats.tasks {
        for state in ["shadow", "learning", "serving"] {
            let _ = writeln!(
                out,
                "loopai_gateway_state{{task=\"{}\",state=\"{state}\"}} {}",
                escape(&t.task),
                u8::from(t.state.as_str() == state)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP loopai_gateway_forwarded_overhead_seconds The gateway's own time on forwarded calls (request received to response handed to the server, minus the upstream call; JSON answers).\n# TYPE loopai_gateway_forwarded_overhead_seconds histogram"
    );
    gws.forwarded_overhead
        .render(out, "loopai_gateway_forwarded_overhead_seconds");
    let _ = writeln!(
        out,
        "# HELP loopai_gateway_local_seconds Locally answered calls, request received to response handed to the server.\n# TYPE loopai_gateway_local_seconds histogram"
    );
    gws.local_time.render(out, "loopai_gateway_local_seconds");
    let families: [(&str, &str, &str); 13] = [
        ("calls_total", "counter", "Calls of the task."),
        (
            "local_total",
            "counter",
            "Calls answered locally by the program.",
        ),
        (
            "forwarded_total",
            "counter",
            "Calls forwarded to the upstream.",
        ),
        (
            "upstream_calls_total",
            "counter",
            "Requests sent to the upstream (forwards and validations).",
        ),
        (
            "upstream_errors_total",
            "counter",
            "Upstream requests that failed or answered an error.",
        ),
        (
            "upstream_tokens_total",
            "counter",
            "Tokens the upstream reported (usage.total_tokens).",
        ),
        (
            "tokens_saved_total",
            "counter",
            "Local answers times the mean upstream tokens of a call.",
        ),
        (
            "labels",
            "gauge",
            "Labels: spec examples plus the oracle's answers.",
        ),
        (
            "outside_labels_total",
            "counter",
            "Upstream answers outside the task's labels.",
        ),
        (
            "coverage",
            "gauge",
            "Share of the task's calls answered locally.",
        ),
        (
            "threshold",
            "gauge",
            "Confidence threshold (NaN: every call is forwarded).",
        ),
        (
            "disagreement",
            "gauge",
            "Disagreement among calibration pairs at or above the threshold.",
        ),
        (
            "disagreement_upper",
            "gauge",
            "Its one-sided 95% Clopper-Pearson upper bound.",
        ),
    ];
    for (name, kind, help) in families {
        let _ = writeln!(
            out,
            "# HELP loopai_gateway_{name} {help}\n# TYPE loopai_gateway_{name} {kind}"
        );
        for t in &stats.tasks {
            let value = match name {
                "calls_total" => t.calls as f64,
                "local_total" => t.local as f64,
                "forwarded_total" => t.forwarded as f64,
                "upstream_calls_total" => t.upstream_calls as f64,
                "upstream_errors_total" => t.upstream_errors as f64,
                "upstream_tokens_total" => t.upstream_tokens as f64,
                "tokens_saved_total" => t.tokens_saved as f64,
                "labels" => t.labels as f64,
                "outside_labels_total" => t.outside_labels as f64,
                "coverage" => t.coverage.unwrap_or(0.0),
                "threshold" => t.threshold.unwrap_or(f64::NAN),
                "disagreement" => t.disagreement.unwrap_or(f64::NAN),
                _ => t.disagreement_upper.unwrap_or(f64::NAN),
            };
            let _ = writeln!(
                out,
                "loopai_gateway_{name}{{task=\"{}\"}} {value}",
                escape(&t.task)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fine_histogram_puts_each_value_in_the_bucket_of_its_upper_bound() {
        let h = FineHistogram::default();
        for ns in [500u64, 1_000, 1_001, 1_100, 1_101, 50_000, 10_000_000_000] {
            h.observe(Duration::from_nanos(ns));
        }
        let counts: Vec<u64> = h.buckets.iter().map(|b| b.load(Relaxed)).collect();
        // <= 1 us: bucket 0 (two); (1, 1.1] us: bucket 1 (two); 1.101 us: bucket 2.
        assert_eq!(&counts[..3], &[2, 2, 1]);
        // 50 us: 1.1^41 = 49.8 < 50 <= 1.1^42 = 54.8.
        assert_eq!(counts[42], 1);
        assert_eq!(counts[FINE_BUCKETS], 1, "10 s is beyond the last bound");
        let mut text = String::new();
        h.render(&mut text, "x");
        assert!(text.contains("x_bucket{le=\"1e-6\"} 2\n"), "{text}");
        assert!(text.contains("x_bucket{le=\"+Inf\"} 7\n"), "{text}");
        assert!(text.contains("x_count 7"), "{text}");
    }
}
