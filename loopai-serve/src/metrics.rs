//! Request and execution counters (atomics only: recording never takes a lock) and their
//! rendering in the Prometheus text exposition format (version 0.0.4).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use loopai_core::{ErrorKind, ExecutionStatus, Health};

/// The content type of `GET /metrics`.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds of the latency histogram buckets, in seconds (1 µs to 100 ms, then +Inf).
const BUCKETS: [f64; 16] = [
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2,
    5e-2, 1e-1,
];
/// The same bounds in nanoseconds, for recording without floating point.
const BUCKETS_NS: [u64; 16] = [
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
];

/// A latency histogram: one counter per bucket (not cumulative; summed when rendered).
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    pub(crate) fn observe_ns(&self, ns: u64) {
        let i = BUCKETS_NS.partition_point(|&b| b < ns);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    pub(crate) fn observe(&self, d: Duration) {
        self.observe_ns(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0u64;
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Relaxed);
            match BUCKETS.get(i) {
                Some(le) => {
                    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let sum = self.sum_ns.load(Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

/// Versions tracked separately per task; executions of further versions are counted under
/// `version="other"`. Slots are claimed once and never reused.
const VERSION_SLOTS: usize = 8;
/// `success`, `abstain`, `error`, `timeout`.
const STATUSES: usize = 4;

fn status_index(status: ExecutionStatus) -> usize {
    match status {
        ExecutionStatus::Success => 0,
        ExecutionStatus::Abstain => 1,
        ExecutionStatus::Error => 2,
        ExecutionStatus::Timeout => 3,
    }
}

const STATUS_NAMES: [&str; STATUSES] = ["success", "abstain", "error", "timeout"];

#[derive(Debug, Default)]
struct VersionSlot {
    /// 0 while the slot is free (artifact versions start at 1).
    version: AtomicU32,
    by_status: [AtomicU64; STATUSES],
}

/// Counters of one served task.
#[derive(Debug, Default)]
pub(crate) struct TaskMetrics {
    versions: [VersionSlot; VERSION_SLOTS],
    other_versions: [AtomicU64; STATUSES],
    errors_by_kind: [AtomicU64; ErrorKind::ALL.len() + 1],
    sampled: AtomicU64,
    /// The runtime's own measure of each execution (`latency_ms` in the response).
    execution_latency: Histogram,
    /// Handler time of `POST /execute`: body read, JSON parse, execute, response encoding.
    request_duration: Histogram,
}

impl TaskMetrics {
    fn slot(&self, version: u32) -> &[AtomicU64; STATUSES] {
        if version != 0 {
            for slot in &self.versions {
                let v = slot.version.load(Relaxed);
                if v == version {
                    return &slot.by_status;
                }
                if v == 0 {
                    match slot.version.compare_exchange(0, version, Relaxed, Relaxed) {
                        Ok(_) => return &slot.by_status,
                        Err(now) if now == version => return &slot.by_status,
                        Err(_) => continue,
                    }
                }
            }
        }
        &self.other_versions
    }

    /// Records a finished execution.
    pub(crate) fn executed(&self, version: u32, status: ExecutionStatus, sampled: bool, ms: f64) {
        self.slot(version)[status_index(status)].fetch_add(1, Relaxed);
        if sampled {
            self.sampled.fetch_add(1, Relaxed);
        }
        self.execution_latency.observe_ns((ms * 1e6) as u64);
    }

    /// Records a failed execution (`version`: the one active when it failed).
    pub(crate) fn failed(&self, version: u32, kind: ErrorKind) {
        self.slot(version)[status_index(ExecutionStatus::Error)].fetch_add(1, Relaxed);
        let i = ErrorKind::ALL
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(ErrorKind::ALL.len());
        self.errors_by_kind[i].fetch_add(1, Relaxed);
    }

    pub(crate) fn request_took(&self, d: Duration) {
        self.request_duration.observe(d);
    }

    /// Executions counted so far (every version and status), for tests and health.
    pub(crate) fn executions(&self) -> u64 {
        let slots: u64 = self
            .versions
            .iter()
            .flat_map(|s| s.by_status.iter())
            .map(|c| c.load(Relaxed))
            .sum();
        slots
            + self
                .other_versions
                .iter()
                .map(|c| c.load(Relaxed))
                .sum::<u64>()
    }
}

/// The routes counted by `loopai_http_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    Execute,
    Batch,
    Health,
    Ready,
    Metrics,
    Other,
    Explain,
}

const ROUTES: [(Route, &str); 7] = [
    (Route::Execute, "execute"),
    (Route::Batch, "execute_batch"),
    (Route::Health, "health"),
    (Route::Ready, "ready"),
    (Route::Metrics, "metrics"),
    (Route::Other, "other"),
    (Route::Explain, "explain"),
];

/// Status codes counted separately; others are counted by class (`2xx`, `4xx`, ...).
const CODES: [u16; 14] = [
    200, 400, 401, 403, 404, 405, 408, 413, 415, 422, 500, 502, 503, 504,
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Server-wide counters.
#[derive(Debug, Default)]
pub(crate) struct ServerMetrics {
    requests: [[AtomicU64; CODES.len() + CLASSES.len()]; ROUTES.len()],
    in_flight: AtomicI64,
}

impl ServerMetrics {
    pub(crate) fn responded(&self, route: Route, code: u16) {
        let r = ROUTES.iter().position(|(x, _)| *x == route).unwrap_or(5);
        let c = match CODES.iter().position(|&x| x == code) {
            Some(i) => i,
            None => CODES.len() + usize::from(code / 100).clamp(1, 5) - 1,
        };
        self.requests[r][c].fetch_add(1, Relaxed);
    }

    pub(crate) fn enter(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Relaxed);
        InFlight(&self.in_flight)
    }
}

/// Decrements the in-flight gauge when dropped (also when a request is cancelled).
pub(crate) struct InFlight<'a>(&'a AtomicI64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// What `/metrics` shows of one task.
pub(crate) struct TaskSnapshot<'a> {
    pub(crate) task: &'a str,
    pub(crate) metrics: &'a TaskMetrics,
    pub(crate) health: Health,
}

/// Escapes a label value (`\`, `"` and newlines).
fn label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Renders every metric family. Telemetry families are left out when telemetry is off in
/// every task.
pub(crate) fn render(server: &ServerMetrics, ready: bool, tasks: &[TaskSnapshot<'_>]) -> String {
    let mut out = String::with_capacity(8192 + tasks.len() * 6144);
    let o = &mut out;

    family(o, "loopai_build_info", "gauge", "The loopai-serve version.");
    let _ = writeln!(
        o,
        "loopai_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    family(
        o,
        "loopai_ready",
        "gauge",
        "1 when the server accepts executions (GET /ready is 200).",
    );
    let _ = writeln!(o, "loopai_ready {}", u8::from(ready));

    family(
        o,
        "loopai_http_requests_total",
        "counter",
        "HTTP responses by route and status code.",
    );
    for (r, (_, route)) in ROUTES.iter().enumerate() {
        let row = &server.requests[r];
        for (c, counter) in row.iter().enumerate() {
            let n = counter.load(Relaxed);
            if n == 0 {
                continue;
            }
            let code = match CODES.get(c) {
                Some(code) => code.to_string(),
                None => CLASSES[c - CODES.len()].to_string(),
            };
            let _ = writeln!(
                o,
                "loopai_http_requests_total{{route=\"{route}\",code=\"{code}\"}} {n}"
            );
        }
    }
    family(
        o,
        "loopai_http_requests_in_flight",
        "gauge",
        "HTTP requests being handled.",
    );
    let _ = writeln!(
        o,
        "loopai_http_requests_in_flight {}",
        server.in_flight.load(Relaxed)
    );

    if tasks.is_empty() {
        return out;
    }
    family(
        o,
        "loopai_active_version",
        "gauge",
        "The artifact version executing now.",
    );
    for t in tasks {
        let _ = writeln!(
            o,
            "loopai_active_version{{task=\"{}\"}} {}",
            label(t.task),
            t.health.active_version
        );
    }
    family(
        o,
        "loopai_executions_total",
        "counter",
        "Executions by program version and status.",
    );
    for t in tasks {
        let task = label(t.task);
        let rows = t
            .metrics
            .versions
            .iter()
            .filter_map(|s| match s.version.load(Relaxed) {
                0 => None,
                v => Some((v.to_string(), &s.by_status)),
            })
            .chain(std::iter::once((
                "other".to_string(),
                &t.metrics.other_versions,
            )));
        for (version, counters) in rows {
            for (i, status) in STATUS_NAMES.iter().enumerate() {
                let n = counters[i].load(Relaxed);
                if n > 0 || (version != "other" && i < 3) {
                    let _ = writeln!(
                        o,
                        "loopai_executions_total{{task=\"{task}\",version=\"{version}\",status=\"{status}\"}} {n}"
                    );
                }
            }
        }
    }
    family(
        o,
        "loopai_execution_errors_total",
        "counter",
        "Failed executions by error kind.",
    );
    for t in tasks {
        let task = label(t.task);
        for (i, counter) in t.metrics.errors_by_kind.iter().enumerate() {
            let n = counter.load(Relaxed);
            if n == 0 && i != 0 {
                continue;
            }
            let kind = ErrorKind::ALL.get(i).map_or("other", |k| k.name());
            let _ = writeln!(
                o,
                "loopai_execution_errors_total{{task=\"{task}\",kind=\"{kind}\"}} {n}"
            );
        }
    }
    family(
        o,
        "loopai_executions_sampled_total",
        "counter",
        "Executions sampled for validation.",
    );
    for t in tasks {
        let _ = writeln!(
            o,
            "loopai_executions_sampled_total{{task=\"{}\"}} {}",
            label(t.task),
            t.metrics.sampled.load(Relaxed)
        );
    }
    family(
        o,
        "loopai_execution_latency_seconds",
        "histogram",
        "Time spent in Runtime::execute, as the runtime measures it (latency_ms).",
    );
    for t in tasks {
        let labels = format!("task=\"{}\"", label(t.task));
        t.metrics
            .execution_latency
            .render(o, "loopai_execution_latency_seconds", &labels);
    }
    family(
        o,
        "loopai_request_duration_seconds",
        "histogram",
        "Handler time of single executions: body read, JSON parse, execute, response encoding.",
    );
    for t in tasks {
        let labels = format!("task=\"{}\"", label(t.task));
        t.metrics
            .request_duration
            .render(o, "loopai_request_duration_seconds", &labels);
    }

    family(
        o,
        "loopai_validations_total",
        "counter",
        "Sampled executions compared with the oracle, by program version.",
    );
    for t in tasks {
        for v in &t.health.validation.versions {
            let _ = writeln!(
                o,
                "loopai_validations_total{{task=\"{}\",version=\"{}\"}} {}",
                label(t.task),
                v.version,
                v.validated
            );
        }
    }
    family(
        o,
        "loopai_validation_matches_total",
        "counter",
        "Validations whose output matched the oracle's, by program version.",
    );
    for t in tasks {
        for v in &t.health.validation.versions {
            let _ = writeln!(
                o,
                "loopai_validation_matches_total{{task=\"{}\",version=\"{}\"}} {}",
                label(t.task),
                v.version,
                v.matched
            );
        }
    }
    family(
        o,
        "loopai_validation_match_rate",
        "gauge",
        "Share of validations that matched the oracle, by program version (since start).",
    );
    for t in tasks {
        for v in &t.health.validation.versions {
            if let Some(rate) = v.match_rate {
                let _ = writeln!(
                    o,
                    "loopai_validation_match_rate{{task=\"{}\",version=\"{}\"}} {rate}",
                    label(t.task),
                    v.version
                );
            }
        }
    }
    family(
        o,
        "loopai_validation_rolling_match_rate",
        "gauge",
        "Match rate over the last validations (loopai_core::ROLLING_WINDOW), by program version.",
    );
    for t in tasks {
        for v in &t.health.validation.versions {
            if let Some(rate) = v.rolling_match_rate {
                let _ = writeln!(
                    o,
                    "loopai_validation_rolling_match_rate{{task=\"{}\",version=\"{}\"}} {rate}",
                    label(t.task),
                    v.version
                );
            }
        }
    }
    family(
        o,
        "loopai_validation_queue_depth",
        "gauge",
        "Samples waiting for the oracle.",
    );
    for t in tasks {
        let _ = writeln!(
            o,
            "loopai_validation_queue_depth{{task=\"{}\"}} {}",
            label(t.task),
            t.health.validation.queued
        );
    }
    family(
        o,
        "loopai_validation_skipped_total",
        "counter",
        "Sampled executions not validated, by reason.",
    );
    for t in tasks {
        let v = &t.health.validation;
        for (reason, n) in [
            ("queue_full", v.skipped_queue_full),
            ("no_oracle", v.skipped_no_oracle),
            ("shutdown", v.skipped_shutdown),
            ("not_logged", v.skipped_not_logged),
        ] {
            let _ = writeln!(
                o,
                "loopai_validation_skipped_total{{task=\"{}\",reason=\"{reason}\"}} {n}",
                label(t.task)
            );
        }
    }
    family(
        o,
        "loopai_oracle_errors_total",
        "counter",
        "Validations that failed because the oracle failed or answered something invalid.",
    );
    for t in tasks {
        let _ = writeln!(
            o,
            "loopai_oracle_errors_total{{task=\"{}\"}} {}",
            label(t.task),
            t.health.validation.oracle_errors
        );
    }
    family(
        o,
        "loopai_oracle_fallbacks_total",
        "counter",
        "Abstentions sent to the oracle (execution.fallback: oracle), by outcome.",
    );
    for t in tasks {
        let v = &t.health.validation;
        for (outcome, n) in [
            ("answered", v.oracle_fallbacks),
            ("failed", v.oracle_fallback_failures),
        ] {
            let _ = writeln!(
                o,
                "loopai_oracle_fallbacks_total{{task=\"{}\",outcome=\"{outcome}\"}} {n}",
                label(t.task)
            );
        }
    }

    type DatasetField = fn(&loopai_core::DatasetMetrics) -> u64;
    let dataset: [(&str, &str, &str, DatasetField); 6] = [
        (
            "loopai_dataset_records_accepted_total",
            "counter",
            "Execution-log records accepted into the writer queue.",
            |d| d.accepted,
        ),
        (
            "loopai_dataset_records_written_total",
            "counter",
            "Execution-log records written to the OS.",
            |d| d.written,
        ),
        (
            "loopai_dataset_records_dropped_total",
            "counter",
            "Execution-log records dropped because the queue was full (storage.on_full: drop).",
            |d| d.dropped,
        ),
        (
            "loopai_dataset_write_errors_total",
            "counter",
            "Failed execution-log write or sync attempts.",
            |d| d.write_errors,
        ),
        (
            "loopai_dataset_pending_records",
            "gauge",
            "Execution-log records queued but not written yet (writer lag).",
            |d| d.pending,
        ),
        (
            "loopai_dataset_syncs_total",
            "counter",
            "fsync calls of the execution log.",
            |d| d.syncs,
        ),
    ];
    for (name, kind, help, field) in dataset {
        family(o, name, kind, help);
        for t in tasks {
            let _ = writeln!(
                o,
                "{name}{{task=\"{}\"}} {}",
                label(t.task),
                field(&t.health.dataset)
            );
        }
    }
    family(
        o,
        "loopai_dataset_healthy",
        "gauge",
        "0 while execution-log writes are failing.",
    );
    for t in tasks {
        let _ = writeln!(
            o,
            "loopai_dataset_healthy{{task=\"{}\"}} {}",
            label(t.task),
            u8::from(t.health.status == "ok")
        );
    }

    let telemetry: Vec<_> = tasks
        .iter()
        .filter_map(|t| t.health.telemetry.as_ref().map(|m| (label(t.task), m)))
        .collect();
    if !telemetry.is_empty() {
        type TelemetryField = fn(&loopai_core::TelemetryMetrics) -> u64;
        let fields: [(&str, &str, &str, TelemetryField); 6] = [
            (
                "loopai_telemetry_pending_records",
                "gauge",
                "Records in telemetry batches not cut yet.",
                |m| m.pending_records,
            ),
            (
                "loopai_telemetry_spooled_batches",
                "gauge",
                "Telemetry batches waiting in the spool (upload queue depth).",
                |m| m.spooled_batches,
            ),
            (
                "loopai_telemetry_spooled_bytes",
                "gauge",
                "Size of the spooled telemetry batches (gzip).",
                |m| m.spooled_bytes,
            ),
            (
                "loopai_telemetry_batches_cut_total",
                "counter",
                "Telemetry batches cut.",
                |m| m.batches_cut,
            ),
            (
                "loopai_telemetry_batches_sent_total",
                "counter",
                "Telemetry batches the collector accepted.",
                |m| m.sent,
            ),
            (
                "loopai_telemetry_retries_total",
                "counter",
                "Failed telemetry uploads that will be retried.",
                |m| m.retries,
            ),
        ];
        for (name, kind, help, field) in fields {
            family(o, name, kind, help);
            for (task, m) in &telemetry {
                let _ = writeln!(o, "{name}{{task=\"{task}\"}} {}", field(m));
            }
        }
        family(
            o,
            "loopai_telemetry_batches_dropped_total",
            "counter",
            "Telemetry batches lost, by reason.",
        );
        for (task, m) in &telemetry {
            for (reason, n) in [
                ("spool_full", m.dropped_spool_full),
                ("permanent", m.dropped_permanent),
                ("corrupt", m.dropped_corrupt),
                ("spool_error", m.spool_errors),
            ] {
                let _ = writeln!(
                    o,
                    "loopai_telemetry_batches_dropped_total{{task=\"{task}\",reason=\"{reason}\"}} {n}"
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_with_inf() {
        let h = Histogram::default();
        h.observe_ns(500);
        h.observe_ns(1_000);
        h.observe_ns(3_000);
        h.observe_ns(1_000_000_000);
        let mut out = String::new();
        h.render(&mut out, "x", "task=\"t\"");
        assert!(
            out.contains("x_bucket{task=\"t\",le=\"0.000001\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{task=\"t\",le=\"0.000005\"} 3\n"),
            "{out}"
        );
        assert!(out.contains("x_bucket{task=\"t\",le=\"0.1\"} 3\n"), "{out}");
        assert!(
            out.contains("x_bucket{task=\"t\",le=\"+Inf\"} 4\n"),
            "{out}"
        );
        assert!(out.contains("x_count{task=\"t\"} 4\n"), "{out}");
        assert!(out.contains("x_sum{task=\"t\"} 1.0000045\n"), "{out}");
    }

    #[test]
    fn versions_get_their_own_slots_then_other() {
        let m = TaskMetrics::default();
        for v in 1..=(VERSION_SLOTS as u32 + 2) {
            m.executed(v, ExecutionStatus::Success, false, 0.001);
        }
        m.executed(1, ExecutionStatus::Abstain, true, 0.001);
        m.failed(2, ErrorKind::InvalidInput);
        assert_eq!(m.executions(), VERSION_SLOTS as u64 + 4);
        assert_eq!(m.slot(1)[1].load(Relaxed), 1);
        assert_eq!(m.slot(2)[2].load(Relaxed), 1);
        assert_eq!(m.other_versions[0].load(Relaxed), 2);
        assert_eq!(m.sampled.load(Relaxed), 1);
        assert_eq!(m.errors_by_kind[0].load(Relaxed), 1);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn http_codes_outside_the_list_count_by_class() {
        let s = ServerMetrics::default();
        s.responded(Route::Other, 418);
        s.responded(Route::Execute, 200);
        let text = render(&s, true, &[]);
        assert!(
            text.contains("loopai_http_requests_total{route=\"other\",code=\"4xx\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("loopai_http_requests_total{route=\"execute\",code=\"200\"} 1\n"),
            "{text}"
        );
    }
}
