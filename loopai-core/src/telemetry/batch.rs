//! Telemetry batches: what one upload carries, and how the writer thread builds them from
//! the records it sees, according to the privacy mode.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::clock::Timestamp;
use crate::config::PrivacyMode;
use crate::dataset::{ExecutionRecord, ExecutionStatus, ValidationRecord};
use crate::privacy::PrivacyPolicy;
use crate::rollout::RolloutEvent;
use crate::telemetry::heartbeat::Heartbeat;

/// The `format` of every batch this version writes.
pub const TELEMETRY_FORMAT: &str = "loopai.telemetry/1";

/// Most distinct output classes counted in one batch; later new ones are counted under
/// `"(other)"`.
pub const MAX_OUTPUT_CLASSES: usize = 1000;

/// The key under which outputs beyond [`MAX_OUTPUT_CLASSES`] are counted.
const OTHER_OUTPUTS: &str = "(other)";
/// The key under which outputs that are not labels (extracted objects) are counted.
const STRUCTURED_OUTPUTS: &str = "(structured)";

/// One upload: the telemetry of one program version of one task over a window of time.
///
/// The JSON form (`docs/telemetry.md`) is the request body of
/// `POST {cloud.api_url}/api/v1/telemetry`. What the per-record lists hold depends on
/// [`privacy_mode`](Self::privacy_mode): no input or output text at all in `strict`.
/// It implements `Deserialize`, so a collector can parse uploads with it:
///
/// ```
/// use loopai_core::{PrivacyMode, TelemetryBatch, TELEMETRY_FORMAT};
///
/// let body = r#"{"format": "loopai.telemetry/1",
///   "batch_id": "0b7c6f1e-3d9a-4c55-9a43-1f0d7e2b8c11", "deployment_id": "edge-1",
///   "task_id": "spam", "program_version": 3, "timestamp": "2026-11-25T04:24:00.000Z",
///   "window_start": "2026-11-25T04:23:00.112Z", "window_end": "2026-11-25T04:23:59.870Z",
///   "privacy_mode": "strict",
///   "metrics": {"executions": 1, "by_status": {"success": 1, "abstain": 0, "error": 0, "timeout": 0},
///     "latency_ms": {"p50": 0.004, "p95": 0.004, "p99": 0.004, "mean": 0.004, "max": 0.004},
///     "mean_confidence": 0.95, "sampled": 0, "validations": 0, "matches": 0,
///     "match_rate": null, "outputs": {}},
///   "execution_summaries": [], "sampled_validations": []}"#;
/// let batch: TelemetryBatch = serde_json::from_str(body)?;
/// assert_eq!(batch.format, TELEMETRY_FORMAT);
/// assert_eq!(batch.privacy_mode, PrivacyMode::Strict);
/// assert_eq!(batch.metrics.match_rate, None);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TelemetryBatch {
    /// Always `loopai.telemetry/1`.
    pub format: String,
    /// A fresh UUID v4 per batch: the collector de-duplicates on it, which makes
    /// re-sending a batch harmless.
    pub batch_id: Uuid,
    /// `runtime.deployment_id`, or the id generated once in `<data_dir>/config/deployment-id`.
    pub deployment_id: String,
    /// The task id.
    pub task_id: String,
    /// The program version whose records this batch holds.
    pub program_version: u32,
    /// When the batch was cut.
    pub timestamp: Timestamp,
    /// Timestamp of the earliest record in the batch.
    pub window_start: Timestamp,
    /// Timestamp of the latest record in the batch.
    pub window_end: Timestamp,
    /// The privacy mode the batch was built under.
    pub privacy_mode: PrivacyMode,
    /// Aggregates over every execution and validation of the window.
    pub metrics: BatchMetrics,
    /// Per-execution summaries: the sampled executions (`strict`: hashes only; `balanced`:
    /// PII redacted), or every execution (`permissive`).
    pub execution_summaries: Vec<ExecutionSummary>,
    /// The validations of sampled executions against the oracle (`strict`: the oracle's
    /// output as a keyed hash only).
    pub sampled_validations: Vec<ValidationSummary>,
    /// Canary rollout events of the task since the previous batch (stage changes,
    /// promotions, rollbacks: see `docs/rollout.md`), whatever their version. Absent from
    /// the JSON when empty; batches without it parse with an empty list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollout_events: Vec<RolloutEvent>,
    /// The deployment's latest [`Heartbeat`] when the batch was spooled (absent before
    /// the first one, or with `telemetry.heartbeat_interval_sec: 0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<Heartbeat>,
}

/// Aggregate metrics of a batch, over every record of the window (sampled or not).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BatchMetrics {
    /// Executions in the window.
    pub executions: u64,
    /// Executions by status.
    pub by_status: StatusCounts,
    /// Latency percentiles of the window's executions (`null` when there were none).
    pub latency_ms: Option<LatencySummary>,
    /// Mean confidence of the executions that did not fail (`null` when none).
    pub mean_confidence: Option<f64>,
    /// Executions sampled for validation.
    pub sampled: u64,
    /// Validations in the window.
    pub validations: u64,
    /// Validations whose program output matched the oracle.
    pub matches: u64,
    /// `matches / validations` (`null` when there were no validations).
    pub match_rate: Option<f64>,
    /// Executions per output class: the label (`"null"` for an abstention without an
    /// answer, `"(structured)"` for object outputs, `"(other)"` beyond
    /// [`MAX_OUTPUT_CLASSES`]). In `strict` a label is replaced by its keyed hash
    /// (HMAC-SHA256 of its canonical JSON, 64 hex digits).
    pub outputs: BTreeMap<String, u64>,
}

/// Execution counts by [`ExecutionStatus`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StatusCounts {
    /// `success`.
    pub success: u64,
    /// `abstain`.
    pub abstain: u64,
    /// `error`.
    pub error: u64,
    /// `timeout`.
    pub timeout: u64,
}

/// Latency percentiles (nearest rank) in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LatencySummary {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Mean.
    pub mean: f64,
    /// Largest.
    pub max: f64,
}

/// One execution in a batch. Which fields are present depends on the privacy mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ExecutionSummary {
    /// The execution's UUID (joins with [`ValidationSummary::execution_id`]).
    pub execution_id: Uuid,
    /// Keyed hash (HMAC-SHA256, deployment secret) of the input's canonical JSON; with
    /// `privacy.hash_inputs` the hash already stored in the local log.
    pub input_hash: String,
    /// The input with PII redacted (`balanced`, `permissive`; raw when
    /// `privacy.pii_detection: false`). Absent in `strict`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    /// The output, redacted like the input. Absent in `strict`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// Keyed hash of the output's canonical JSON (`strict` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_hash: Option<String>,
    /// The confidence.
    pub confidence: f64,
    /// Time spent in `execute`, in milliseconds.
    pub latency_ms: f64,
    /// How the execution ended.
    pub status: ExecutionStatus,
    /// The error message of a failed execution, redacted like the input. Absent in `strict`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether the execution was sampled for validation.
    pub sampled: bool,
    /// When it ran.
    pub timestamp: Timestamp,
}

/// One validation in a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ValidationSummary {
    /// The validated execution.
    pub execution_id: Uuid,
    /// The program version that produced the validated output.
    pub program_version: u32,
    /// The oracle's answer, redacted like inputs. Absent in `strict`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oracle_output: Option<Value>,
    /// Keyed hash of the oracle's answer (`strict` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oracle_output_hash: Option<String>,
    /// How long the oracle took, in milliseconds.
    pub oracle_latency_ms: f64,
    /// What the oracle call cost.
    pub oracle_cost: f64,
    /// Whether the program's output matched the oracle's.
    #[serde(rename = "match")]
    pub matched: bool,
    /// Similarity in `[0, 1]`.
    pub similarity_score: f64,
    /// exact | normalized | fuzzy | structured.
    pub comparison_method: String,
    /// When the validation finished.
    pub validated_at: Timestamp,
}

/// What every batch of a runtime shares.
#[derive(Debug, Clone)]
pub(crate) struct BatchContext {
    pub deployment_id: String,
    pub task_id: String,
    pub policy: PrivacyPolicy,
    /// `privacy.hash_inputs`: logged inputs are already keyed hashes.
    pub hash_inputs: bool,
    /// `privacy.sample_only`: in `balanced`, only sampled executions get a summary.
    pub sample_only: bool,
    /// `telemetry.batch_size`: records (executions + validations) per batch.
    pub batch_size: usize,
    /// `telemetry.upload_interval_sec`, in milliseconds.
    pub interval_ms: i64,
}

/// The batch of one program version being filled.
#[derive(Debug, Default)]
struct OpenBatch {
    /// Set at the first tick after the first record (the writer's clock).
    opened_at: Option<i64>,
    records: usize,
    window: Option<(Timestamp, Timestamp)>,
    status: StatusCounts,
    latencies: Vec<f64>,
    confidence_sum: f64,
    confidence_n: u64,
    sampled: u64,
    validations: u64,
    matches: u64,
    outputs: HashMap<String, u64>,
    other_outputs: u64,
    summaries: Vec<ExecutionSummary>,
    validation_summaries: Vec<ValidationSummary>,
}

impl OpenBatch {
    fn widen(&mut self, t: Timestamp) {
        self.window = Some(match self.window {
            None => (t, t),
            Some((a, b)) => (a.min(t), b.max(t)),
        });
    }

    fn count_output(&mut self, key: String) {
        if let Some(n) = self.outputs.get_mut(&key) {
            *n += 1;
        } else if self.outputs.len() < MAX_OUTPUT_CLASSES {
            self.outputs.insert(key, 1);
        } else {
            self.other_outputs += 1;
        }
    }
}

/// Builds batches per program version from the records the writer thread sees.
#[derive(Debug)]
pub(crate) struct BatchBuilder {
    ctx: BatchContext,
    open: BTreeMap<u32, OpenBatch>,
    /// Rollout events for the next batch cut.
    events: Vec<RolloutEvent>,
}

impl BatchBuilder {
    pub(crate) fn new(ctx: BatchContext) -> BatchBuilder {
        BatchBuilder {
            ctx,
            open: BTreeMap::new(),
            events: Vec::new(),
        }
    }

    /// Queues rollout events: they go with the next batch cut, or — when no batch is
    /// open — with a batch of their own at the next tick or flush.
    pub(crate) fn add_rollout_events(&mut self, events: Vec<RolloutEvent>) {
        self.events.extend(events);
    }

    /// A batch with no records that carries the queued rollout events.
    fn events_only(&mut self, now: Timestamp) -> Option<TelemetryBatch> {
        let version = self.events.last()?.canary_version;
        Some(self.finish(version, OpenBatch::default(), now))
    }

    /// Records held in open batches.
    pub(crate) fn pending_records(&self) -> usize {
        self.open.values().map(|b| b.records).sum()
    }

    fn mode(&self) -> PrivacyMode {
        self.ctx.policy.mode()
    }

    /// Adds an execution; returns the batch it completed, if it reached `batch_size`.
    pub(crate) fn execution(
        &mut self,
        r: &ExecutionRecord,
        now: Timestamp,
    ) -> Option<TelemetryBatch> {
        let class = self.output_class(&r.output);
        let summary = self.wants_summary(r).then(|| self.summarize(r));
        let b = self.open.entry(r.program_version).or_default();
        b.records += 1;
        b.widen(r.timestamp);
        match r.status {
            ExecutionStatus::Success => b.status.success += 1,
            ExecutionStatus::Abstain => b.status.abstain += 1,
            ExecutionStatus::Error => b.status.error += 1,
            ExecutionStatus::Timeout => b.status.timeout += 1,
        }
        if r.latency_ms.is_finite() && r.latency_ms >= 0.0 {
            b.latencies.push(r.latency_ms);
        }
        if r.status != ExecutionStatus::Error && r.confidence.is_finite() {
            b.confidence_sum += r.confidence;
            b.confidence_n += 1;
        }
        b.sampled += u64::from(r.sampled);
        if r.status != ExecutionStatus::Error {
            b.count_output(class);
        }
        if let Some(s) = summary {
            b.summaries.push(s);
        }
        self.cut_if_full(r.program_version, now)
    }

    /// Adds a validation to the batch of the validated version; returns the batch it
    /// completed, if any.
    pub(crate) fn validation(
        &mut self,
        r: &ValidationRecord,
        now: Timestamp,
    ) -> Option<TelemetryBatch> {
        let summary = self.summarize_validation(r);
        let b = self.open.entry(r.program_version).or_default();
        b.records += 1;
        b.widen(r.validated_at);
        b.validations += 1;
        b.matches += u64::from(r.matched);
        b.validation_summaries.push(summary);
        self.cut_if_full(r.program_version, now)
    }

    fn cut_if_full(&mut self, version: u32, now: Timestamp) -> Option<TelemetryBatch> {
        let full = self
            .open
            .get(&version)
            .is_some_and(|b| b.records >= self.ctx.batch_size);
        if full {
            let b = self.open.remove(&version)?;
            Some(self.finish(version, b, now))
        } else {
            None
        }
    }

    /// Starts the interval of newly opened batches and cuts those whose
    /// `upload_interval_sec` has elapsed.
    pub(crate) fn tick(&mut self, now: Timestamp) -> Vec<TelemetryBatch> {
        let interval = self.ctx.interval_ms;
        let mut due = Vec::new();
        for (version, b) in &mut self.open {
            let opened = *b.opened_at.get_or_insert(now.millis());
            if now.millis().saturating_sub(opened) >= interval {
                due.push(*version);
            }
        }
        let mut cut = Vec::with_capacity(due.len());
        for version in due {
            if let Some(b) = self.open.remove(&version) {
                cut.push(self.finish(version, b, now));
            }
        }
        if self.open.is_empty() {
            cut.extend(self.events_only(now));
        }
        cut
    }

    /// Cuts every open batch (flush, shutdown).
    pub(crate) fn cut_all(&mut self, now: Timestamp) -> Vec<TelemetryBatch> {
        let mut cut: Vec<TelemetryBatch> = std::mem::take(&mut self.open)
            .into_iter()
            .filter(|(_, b)| b.records > 0)
            .map(|(v, b)| self.finish(v, b, now))
            .collect();
        cut.extend(self.events_only(now));
        cut
    }

    /// Whether `r` gets a per-record summary in this mode.
    fn wants_summary(&self, r: &ExecutionRecord) -> bool {
        match self.mode() {
            PrivacyMode::Permissive => true,
            PrivacyMode::Balanced => r.sampled || !self.ctx.sample_only,
            // Hashes only, for the sampled executions (they join the validations).
            _ => r.sampled,
        }
    }

    fn input_hash(&self, input: &Value) -> String {
        match input {
            // With `hash_inputs` the log (and so the record) already holds the keyed hash.
            Value::String(s) if self.ctx.hash_inputs => s.clone(),
            other => self.ctx.policy.input_hash(other),
        }
    }

    fn summarize(&self, r: &ExecutionRecord) -> ExecutionSummary {
        let policy = &self.ctx.policy;
        let strict = !policy.uploads_records();
        ExecutionSummary {
            execution_id: r.execution_id,
            input_hash: self.input_hash(&r.input),
            input: policy.upload_value(&r.input),
            output: policy.upload_value(&r.output),
            output_hash: strict.then(|| policy.hasher().hash_value(&r.output)),
            confidence: r.confidence,
            latency_ms: r.latency_ms,
            status: r.status,
            error: if strict {
                None
            } else {
                r.error.as_ref().and_then(|e| {
                    match policy.upload_value(&Value::String(e.clone())) {
                        Some(Value::String(s)) => Some(s),
                        _ => None,
                    }
                })
            },
            sampled: r.sampled,
            timestamp: r.timestamp,
        }
    }

    fn summarize_validation(&self, r: &ValidationRecord) -> ValidationSummary {
        let policy = &self.ctx.policy;
        let strict = !policy.uploads_records();
        ValidationSummary {
            execution_id: r.execution_id,
            program_version: r.program_version,
            oracle_output: policy.upload_value(&r.oracle_output),
            oracle_output_hash: strict.then(|| policy.hasher().hash_value(&r.oracle_output)),
            oracle_latency_ms: r.oracle_latency_ms,
            oracle_cost: r.oracle_cost,
            matched: r.matched,
            similarity_score: r.similarity_score,
            comparison_method: r.comparison_method.clone(),
            validated_at: r.validated_at,
        }
    }

    /// The output-class key of an output (a label, its keyed hash in `strict`).
    fn output_class(&self, output: &Value) -> String {
        match output {
            Value::String(_) | Value::Null => {
                if self.ctx.policy.uploads_records() {
                    match output {
                        Value::String(s) => s.clone(),
                        _ => "null".to_owned(),
                    }
                } else {
                    self.ctx.policy.hasher().hash_value(output)
                }
            }
            _ => STRUCTURED_OUTPUTS.to_owned(),
        }
    }

    /// Turns an open batch into a batch; the queued rollout events go with it.
    fn finish(&mut self, version: u32, b: OpenBatch, now: Timestamp) -> TelemetryBatch {
        let (start, end) = b.window.unwrap_or((now, now));
        let executions = b.status.success + b.status.abstain + b.status.error + b.status.timeout;
        let mut outputs: BTreeMap<String, u64> = b.outputs.into_iter().collect();
        if b.other_outputs > 0 {
            *outputs.entry(OTHER_OUTPUTS.to_owned()).or_default() += b.other_outputs;
        }
        TelemetryBatch {
            format: TELEMETRY_FORMAT.to_owned(),
            batch_id: Uuid::new_v4(),
            deployment_id: self.ctx.deployment_id.clone(),
            task_id: self.ctx.task_id.clone(),
            program_version: version,
            timestamp: now,
            window_start: start,
            window_end: end,
            privacy_mode: self.mode(),
            metrics: BatchMetrics {
                executions,
                by_status: b.status,
                latency_ms: latency_summary(b.latencies),
                mean_confidence: (b.confidence_n > 0)
                    .then(|| b.confidence_sum / b.confidence_n as f64),
                sampled: b.sampled,
                validations: b.validations,
                matches: b.matches,
                match_rate: (b.validations > 0).then(|| b.matches as f64 / b.validations as f64),
                outputs,
            },
            execution_summaries: b.summaries,
            sampled_validations: b.validation_summaries,
            rollout_events: std::mem::take(&mut self.events),
            heartbeat: None,
        }
    }
}

/// Nearest-rank percentiles of `latencies`; `None` when empty.
fn latency_summary(mut latencies: Vec<f64>) -> Option<LatencySummary> {
    if latencies.is_empty() {
        return None;
    }
    latencies.sort_by(f64::total_cmp);
    let n = latencies.len();
    let rank = |p: f64| {
        let r = (p * n as f64).ceil() as usize;
        latencies[r.clamp(1, n) - 1]
    };
    Some(LatencySummary {
        p50: rank(0.50),
        p95: rank(0.95),
        p99: rank(0.99),
        mean: latencies.iter().sum::<f64>() / n as f64,
        max: latencies[n - 1],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PrivacyConfig;
    use crate::privacy::KeyedHasher;
    use serde_json::json;

    fn ctx(mode: PrivacyMode, batch_size: usize) -> BatchContext {
        BatchContext {
            deployment_id: "dep-1".into(),
            task_id: "spam".into(),
            policy: PrivacyPolicy::new(mode, &PrivacyConfig::default(), KeyedHasher::new(b"k")),
            hash_inputs: false,
            sample_only: true,
            batch_size,
            interval_ms: 60_000,
        }
    }

    fn exec(
        version: u32,
        text: &str,
        output: &str,
        latency: f64,
        sampled: bool,
    ) -> ExecutionRecord {
        ExecutionRecord::new(
            Uuid::new_v4(),
            "spam",
            version,
            json!({ "text": text }),
            json!(output),
            0.8,
            latency,
            ExecutionStatus::Success,
            None,
            sampled,
            Timestamp(1_000),
        )
    }

    #[test]
    fn nearest_rank_percentiles() {
        let l = latency_summary((1..=100).map(f64::from).collect()).unwrap();
        assert_eq!((l.p50, l.p95, l.p99, l.max), (50.0, 95.0, 99.0, 100.0));
        assert_eq!(l.mean, 50.5);
        let one = latency_summary(vec![3.0]).unwrap();
        assert_eq!((one.p50, one.p99), (3.0, 3.0));
        assert!(latency_summary(Vec::new()).is_none());
    }

    #[test]
    fn batches_are_cut_per_version_at_batch_size() {
        let mut b = BatchBuilder::new(ctx(PrivacyMode::Balanced, 3));
        let now = Timestamp(5_000);
        assert!(b.execution(&exec(1, "a", "ham", 1.0, false), now).is_none());
        assert!(b.execution(&exec(2, "b", "spam", 2.0, true), now).is_none());
        assert!(b.execution(&exec(1, "c", "spam", 3.0, true), now).is_none());
        let batch = b.execution(&exec(1, "d", "ham", 4.0, false), now).unwrap();
        assert_eq!(batch.program_version, 1);
        assert_eq!(batch.metrics.executions, 3);
        assert_eq!(batch.metrics.sampled, 1);
        assert_eq!(batch.metrics.outputs.get("ham"), Some(&2));
        assert_eq!(batch.execution_summaries.len(), 1, "balanced: sampled only");
        assert_eq!(b.pending_records(), 1);
        let rest = b.cut_all(now);
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].program_version, 2);
        assert!(b.cut_all(now).is_empty());
    }

    #[test]
    fn batches_are_cut_when_the_interval_elapses() {
        let mut b = BatchBuilder::new(ctx(PrivacyMode::Balanced, 1000));
        b.execution(&exec(1, "a", "ham", 1.0, false), Timestamp(0));
        assert!(b.tick(Timestamp(10_000)).is_empty(), "opens the interval");
        assert!(b.tick(Timestamp(69_999)).is_empty());
        let cut = b.tick(Timestamp(70_000));
        assert_eq!(cut.len(), 1);
        assert_eq!(cut[0].timestamp, Timestamp(70_000));
        assert!(b.tick(Timestamp(200_000)).is_empty(), "nothing open");
    }

    fn event(canary: u32) -> RolloutEvent {
        serde_json::from_value(
            json!({"at": "2025-11-25T00:00:01.000Z", "kind": "stage_advanced",
            "stable_version": 1, "canary_version": canary, "stage": 1, "fraction": 0.5,
            "reason": "canary not worse"}),
        )
        .unwrap()
    }

    #[test]
    fn rollout_events_ride_on_the_next_batch_or_their_own() {
        let mut b = BatchBuilder::new(ctx(PrivacyMode::Strict, 100));
        // No batch open: the events get a batch of their own at the next tick.
        b.add_rollout_events(vec![event(2)]);
        let cut = b.tick(Timestamp(5_000));
        assert_eq!(cut.len(), 1);
        assert_eq!(cut[0].program_version, 2);
        assert_eq!(cut[0].metrics.executions, 0);
        assert_eq!(cut[0].rollout_events, [event(2)]);
        assert!(b.tick(Timestamp(6_000)).is_empty(), "sent once");
        // A batch open: they go with it when it is cut.
        b.execution(&exec(1, "a", "ham", 1.0, false), Timestamp(0));
        b.add_rollout_events(vec![event(2)]);
        assert!(b.tick(Timestamp(7_000)).is_empty());
        let cut = b.cut_all(Timestamp(8_000));
        assert_eq!(cut.len(), 1);
        assert_eq!(
            (cut[0].program_version, cut[0].rollout_events.len()),
            (1, 1)
        );
        // The field is left out when empty, and batches without it still parse.
        let mut json = serde_json::to_value(&cut[0]).unwrap();
        assert_eq!(json["rollout_events"][0]["kind"], "stage_advanced");
        json.as_object_mut().unwrap().remove("rollout_events");
        let parsed: TelemetryBatch = serde_json::from_value(json).unwrap();
        assert!(parsed.rollout_events.is_empty());
        assert!(serde_json::to_value(&parsed)
            .unwrap()
            .get("rollout_events")
            .is_none());
    }

    #[test]
    fn validations_count_into_their_version_and_match_rate() {
        let mut b = BatchBuilder::new(ctx(PrivacyMode::Strict, 100));
        let e = exec(4, "hello", "ham", 1.0, true);
        b.execution(&e, Timestamp(0));
        for matched in [true, false, true, true] {
            let v = ValidationRecord::new(
                e.execution_id,
                4,
                json!("ham"),
                12.0,
                0.001,
                matched,
                1.0,
                "exact",
                Timestamp(2_000),
            );
            b.validation(&v, Timestamp(0));
        }
        let batch = b.cut_all(Timestamp(3_000)).pop().unwrap();
        assert_eq!(batch.metrics.validations, 4);
        assert_eq!(batch.metrics.matches, 3);
        assert_eq!(batch.metrics.match_rate, Some(0.75));
        assert_eq!(
            (batch.window_start, batch.window_end),
            (Timestamp(1_000), Timestamp(2_000))
        );
        let v = &batch.sampled_validations[0];
        assert_eq!(v.oracle_output, None);
        assert_eq!(v.oracle_output_hash.as_deref().map(str::len), Some(64));
    }
}
