//! The [`Runtime`] facade: one task's active program, loaded from the artifact cache and
//! configured by the deployment configuration.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Serialize, Serializer};
use serde_json::Value;
use uuid::Uuid;

mod builder;
mod explain;

pub use builder::RuntimeBuilder;

use crate::artifact::ArtifactStore;
use crate::clock::{Clock, Timestamp};
use crate::config::DeploymentConfig;
use crate::dataset::{
    DailyStats, DatasetMetrics, DatasetReader, DatasetWriter, ExecutionRecord, ExecutionSource,
    ExecutionStatus, Maintenance, RetentionReport,
};
use crate::error::{Error, ErrorKind, Result};
use crate::executor::Executor;
use crate::refresh::{Refresh, RefreshMetrics};
use crate::rollout::{RolloutChecker, RolloutController, RolloutStatus};
use crate::sampler::Sampler;
use crate::telemetry::{HeartbeatRollout, RuntimeState, Telemetry, TelemetryMetrics};
use crate::validator::{ValidationMetrics, Validator};

/// How long dropping a [`Runtime`] waits for its background threads to finish.
pub const DROP_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest JSON document accepted by [`Runtime::execute_json`] (16 MiB). The text fields a
/// program reads are limited separately by `execution.max_input_bytes`.
pub const MAX_INPUT_DOCUMENT_BYTES: usize = 16 << 20;

/// Per-label scores of a classification, aligned with the program's labels. Serializes as
/// a JSON object `{label: score}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    labels: Arc<[String]>,
    values: Vec<f64>,
}

impl Scores {
    /// `(label, score)` pairs in the program's label order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> + '_ {
        self.labels
            .iter()
            .map(String::as_str)
            .zip(self.values.iter().copied())
    }

    /// The score of `label`.
    pub fn get(&self, label: &str) -> Option<f64> {
        self.iter().find(|(l, _)| *l == label).map(|(_, v)| v)
    }

    /// Number of labels (0 for extraction programs).
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True for extraction programs, which have no per-label scores.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

impl Serialize for Scores {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

/// The result of [`Runtime::execute`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ExecutionResult {
    /// Unique id of this execution (UUID v4), also the key of its log record.
    pub execution_id: Uuid,
    /// The output: a label, an object of extracted fields, or `null` when the program
    /// abstained without an answer.
    pub output: Value,
    /// Calibrated confidence in `[0, 1]`.
    pub confidence: f64,
    /// Per-label scores.
    pub scores: Scores,
    /// The artifact version that produced the output.
    pub version: u32,
    /// Wall-clock time spent in `execute`, in milliseconds.
    pub latency_ms: f64,
    /// `success` or `abstain`.
    pub status: ExecutionStatus,
    /// Who produced `output`: the program, or — when it abstained and
    /// `execution.fallback: oracle` is on — the oracle. `confidence`, `scores` and
    /// `decided_by` always describe the program's own decision.
    pub source: ExecutionSource,
    /// Whether this execution was sampled for validation against the oracle (see
    /// [`Sampler`] and `sampling.*` in the configuration). Executions answered by the
    /// oracle are never sampled, and none is when nothing would validate it: no oracle
    /// and no telemetry upload (`telemetry.enabled` with `cloud.api_url`).
    pub sampled: bool,
    /// The rule or model that decided (`decide.steps[0].rules[2]`).
    pub decided_by: Option<String>,
}

#[inline]
fn new_execution_id() -> Uuid {
    // Thread-local wyrand seeded from the OS: unique ids without a syscall per call.
    let bytes = fastrand::u128(..).to_le_bytes();
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

#[derive(Debug)]
pub(crate) struct Inner {
    data_dir: PathBuf,
    task: String,
    config: DeploymentConfig,
    store: ArtifactStore,
    executor: Arc<Executor>,
    rollout: Arc<RolloutController>,
    /// Checks the rollout every `rollout.check_interval_ms`.
    rollout_thread: RolloutChecker,
    dataset: Arc<DatasetWriter>,
    maintenance: Maintenance,
    /// The telemetry uploader, when telemetry runs.
    telemetry: Option<Telemetry>,
    sampler: Arc<Sampler>,
    validator: Validator,
    /// Set when `privacy.hash_inputs` is on: inputs are logged as keyed hashes.
    privacy: Option<crate::privacy::PrivacyPolicy>,
    clock: Arc<dyn Clock>,
    /// The artifact refresh threads, when `cloud.api_url` is set.
    refresh: Option<Refresh>,
    /// The keys of `storage.encryption`, for reading the encrypted logs back.
    keys: Option<Arc<crate::crypt::KeyRing>>,
    fork_generation: u64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if crate::fork::current() != self.fork_generation {
            // The background threads belong to the parent process: nothing to stop here.
            return;
        }
        if let Err(e) = shutdown_all(self, DROP_SHUTDOWN_TIMEOUT) {
            log::error!("loopai: runtime for task {:?} dropped: {e}", self.task);
        }
    }
}

/// The state of a [`Runtime`], for health checks.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Health {
    /// `ok`, or `degraded` when the execution log cannot be written.
    pub status: &'static str,
    /// The task id.
    pub task: String,
    /// The artifact version executing now.
    pub active_version: u32,
    /// Execution-log counters, with the last write error if writes are failing.
    pub dataset: DatasetMetrics,
    /// Telemetry counters (spool depth, sent, dropped, retries, last error); `None` when
    /// telemetry is off (`telemetry.enabled: false` or no `cloud.api_url`).
    pub telemetry: Option<TelemetryMetrics>,
    /// Artifact refresh from the repository (last check, last error, available and
    /// installed versions, notification stream); `None` without `cloud.api_url`.
    pub refresh: Option<RefreshMetrics>,
    /// Validation against the oracle and oracle fallback (see
    /// [`Runtime::validation_metrics`]).
    pub validation: ValidationMetrics,
    /// The rollout in progress or the last one (see [`Runtime::rollout`]); `None` when the
    /// task never had one.
    pub rollout: Option<RolloutStatus>,
}

/// The embeddable Loopai runtime for one task.
///
/// `Runtime` is cheap to clone (an `Arc` inside), `Send + Sync`, and meant to be shared by
/// every thread of the host: [`execute`](Runtime::execute) takes no lock.
///
/// ```
/// use loopai_core::{ArtifactStore, NewArtifact, Runtime};
/// use serde_json::json;
///
/// let dir = tempfile::tempdir()?;
/// let program = br#"{"format": "loopai.program/1", "task": "spam",
///   "inputs": [{"name": "text", "path": "/text", "type": "text"}],
///   "features": [{"name": "prize", "op": "keywords", "source": "text", "terms": ["prize"], "case_insensitive": true}],
///   "decide": {"op": "rules", "rules": [
///     {"when": {"feature": "prize", "gt": 0}, "then": "spam", "confidence": 0.95},
///     {"when": {"always": true}, "then": "ham", "confidence": 0.8}]},
///   "output": {"kind": "label", "labels": ["spam", "ham"]}}"#;
/// ArtifactStore::open(dir.path(), "spam")?.install(program, NewArtifact::default(), true)?;
///
/// let runtime = Runtime::builder().data_dir(dir.path()).task("spam").build()?;
/// let result = runtime.execute(&json!({"text": "You won a PRIZE"}))?;
/// assert_eq!(result.output, "spam");
/// assert_eq!(result.version, 1);
/// assert_eq!(result.scores.get("spam"), Some(0.95));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

impl Runtime {
    /// Starts building a runtime.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }

    /// A handle on an existing runtime (for its own background threads).
    pub(crate) fn from_inner(inner: Arc<Inner>) -> Runtime {
        Runtime { inner }
    }

    /// Executes the active program on one input object and logs the execution.
    ///
    /// Every call — successful or not — is recorded in
    /// `datasets/<task>/executions/YYYY-MM-DD.jsonl`. With `storage.durability: buffered`
    /// (the default) the record is queued and `execute` does no I/O; with `durable` it
    /// returns once the record is fsync'd (concurrent callers share one fsync).
    ///
    /// Sampled executions (see [`Sampler`]) are handed to the validation workers without
    /// waiting, once their record is in the local log (`durable`: synced): the oracle is
    /// never sent an input the local dataset lacks. When the workers' queue is full the
    /// sample is skipped and counted ([`validation_metrics`](Runtime::validation_metrics)).
    ///
    /// With `execution.fallback: oracle`, when the program abstains `execute` asks the
    /// oracle **synchronously, on the calling thread**, with what is left of
    /// `execution.timeout_ms`: it may then block up to that long. A valid answer in time is
    /// returned with status `success` and [`source`](ExecutionResult::source) `oracle`;
    /// otherwise (oracle error, invalid answer, late answer) the program's answer is
    /// returned with status `abstain`. Without fallback nothing here waits on the oracle.
    ///
    /// Errors: [`ErrorKind::InvalidInput`] (not an object, schema mismatch, missing field,
    /// text over `execution.max_input_bytes`), [`ErrorKind::InvalidOutput`],
    /// [`ErrorKind::Closed`] after [`shutdown`](Runtime::shutdown), and in `durable` mode
    /// [`ErrorKind::Io`] when the record could not be synced. Oracle failures are never
    /// errors of `execute`.
    ///
    /// During a canary rollout the execution goes to the canary or the stable version by a
    /// hash of the input (or of its `rollout.sticky_key`); see
    /// [`execute_with_key`](Runtime::execute_with_key).
    pub fn execute(&self, input: &Value) -> Result<ExecutionResult> {
        self.execute_inner(input, None)
    }

    /// Like [`execute`](Runtime::execute), with the routing key of a canary rollout given
    /// by the caller (a user id, a session id): the same key is served by the same version
    /// for the whole rollout stage, and stays on the canary as its share grows. Without a
    /// rollout in progress the key is not used.
    ///
    /// ```
    /// # use loopai_core::{ArtifactStore, NewArtifact, Runtime};
    /// # use serde_json::json;
    /// # let dir = tempfile::tempdir()?;
    /// # let program = br#"{"format": "loopai.program/1", "task": "spam",
    /// #   "inputs": [{"name": "text", "path": "/text", "type": "text"}],
    /// #   "decide": {"op": "rules", "rules": [{"when": {"always": true}, "then": "ham", "confidence": 0.8}]},
    /// #   "output": {"kind": "label", "labels": ["spam", "ham"]}}"#;
    /// # let store = ArtifactStore::open(dir.path(), "spam")?;
    /// # store.install(program, NewArtifact::default(), true)?;
    /// # store.install(program, NewArtifact::default(), false)?;
    /// let runtime = Runtime::builder().data_dir(dir.path()).task("spam").build()?;
    /// runtime.begin_rollout(2)?; // v2 serves 10% of the keys
    /// let first = runtime.execute_with_key(&json!({"text": "hi"}), "user-42")?.version;
    /// let again = runtime.execute_with_key(&json!({"text": "other"}), "user-42")?.version;
    /// assert_eq!(first, again);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn execute_with_key(&self, input: &Value, key: &str) -> Result<ExecutionResult> {
        self.execute_inner(input, Some(key))
    }

    #[inline]
    fn execute_inner(&self, input: &Value, key: Option<&str>) -> Result<ExecutionResult> {
        if crate::fork::current() != self.inner.fork_generation {
            return Err(forked_error());
        }
        let start = Instant::now();
        let timestamp = Timestamp(self.inner.clock.now_millis());
        let routed = self.inner.executor.execute_routed(input, key);
        let arm = routed.arm;
        let run = match routed.result {
            Ok(run) => run,
            Err(err) => {
                // A malformed input is the caller's fault and fails on either arm: it is
                // not evidence against the canary (sticky routing would send the retries of
                // one bad payload to the same arm).
                let arm = arm.filter(|_| err.kind() != ErrorKind::InvalidInput);
                self.log_failure(input, &err, timestamp, start, routed.version, arm);
                return Err(err);
            }
        };
        let abstained = run.outcome.abstained;
        let execution_id = new_execution_id();
        let mut status = if run.outcome.abstained {
            ExecutionStatus::Abstain
        } else {
            ExecutionStatus::Success
        };
        let mut output = run.outcome.output;
        let mut source = ExecutionSource::Program;
        if status == ExecutionStatus::Abstain && self.inner.validator.fallback() {
            let budget = Duration::from_millis(self.inner.config.execution.timeout_ms)
                .saturating_sub(start.elapsed());
            if let Some(answer) =
                self.inner
                    .validator
                    .cascade(input, &run.labels, run.version, budget)
            {
                output = answer;
                status = ExecutionStatus::Success;
                source = ExecutionSource::Oracle;
            }
        }
        // An answer from the oracle is not validated against the oracle.
        let reason = if source == ExecutionSource::Program {
            self.inner.sampler.decide(
                &execution_id,
                run.outcome.label,
                run.outcome.confidence,
                timestamp.millis(),
            )
        } else {
            None
        };
        let sampled = reason.is_some();
        let sample = reason.and_then(|reason| {
            self.inner.validator.sample(
                execution_id,
                run.version,
                reason,
                input,
                &output,
                &run.labels,
            )
        });
        let latency_ms = start.elapsed().as_secs_f64() * 1e3;
        let record = ExecutionRecord {
            execution_id,
            task_id: self.inner.task.clone(),
            program_version: run.version,
            input: self.logged_input(input),
            output: output.clone(),
            confidence: run.outcome.confidence,
            latency_ms,
            status,
            error: None,
            sampled,
            source,
            timestamp,
        };
        // The rollout counts the execution, and the oracle is sent a sampled input, only
        // once the record is in the local log (issue #15): nothing leaves the process, and
        // nothing is counted, that the local dataset lacks.
        match (arm, sample) {
            (None, None) => self.inner.dataset.log_execution(record)?,
            (arm, sample) => self.inner.dataset.log_execution_then(
                record,
                Box::new(move || {
                    if let Some(arm) = arm {
                        arm.record(Some(abstained), latency_ms);
                    }
                    if let Some(sample) = sample {
                        sample.submit();
                    }
                }),
            )?,
        }
        Ok(ExecutionResult {
            execution_id,
            output,
            confidence: run.outcome.confidence,
            scores: Scores {
                labels: run.labels,
                values: run.outcome.scores,
            },
            version: run.version,
            latency_ms,
            status,
            source,
            sampled,
            decided_by: run.decided_by,
        })
    }

    /// Executes several inputs; one result per input, in order. Each is logged like
    /// [`execute`](Runtime::execute).
    pub fn execute_batch(&self, inputs: &[Value]) -> Vec<Result<ExecutionResult>> {
        inputs.iter().map(|input| self.execute(input)).collect()
    }

    /// The input as written to the execution log: a keyed hash with `privacy.hash_inputs`.
    fn logged_input(&self, input: &Value) -> Value {
        match &self.inner.privacy {
            Some(policy) => policy.local_input(input).into_owned(),
            None => input.clone(),
        }
    }

    /// Logs a failed execution of `version`, counted as an error of the rollout arm `arm`
    /// once it is in the log; returns its latency in milliseconds.
    fn log_failure(
        &self,
        input: &Value,
        err: &Error,
        timestamp: Timestamp,
        start: Instant,
        version: u32,
        arm: Option<crate::executor::canary::ArmHandle>,
    ) -> f64 {
        let latency_ms = start.elapsed().as_secs_f64() * 1e3;
        let record = ExecutionRecord {
            execution_id: new_execution_id(),
            task_id: self.inner.task.clone(),
            program_version: version,
            input: self.logged_input(input),
            output: Value::Null,
            confidence: 0.0,
            latency_ms,
            status: ExecutionStatus::Error,
            error: Some(err.to_string()),
            sampled: false,
            source: ExecutionSource::Program,
            timestamp,
        };
        let logged = match arm {
            Some(arm) => self
                .inner
                .dataset
                .log_execution_then(record, Box::new(move || arm.record(None, latency_ms))),
            None => self.inner.dataset.log_execution(record),
        };
        if let Err(e) = logged {
            log::warn!("loopai: could not log a failed execution: {e}");
        }
        latency_ms
    }

    /// Logs the validation of a sampled execution against the oracle to
    /// `datasets/<task>/validations/sampled-YYYY-MM-DD.jsonl` (same durability rules as
    /// executions).
    pub fn record_validation(&self, record: crate::dataset::ValidationRecord) -> Result<()> {
        self.inner.dataset.log_validation(record)
    }

    /// Makes every execution accepted before this call durable (written and fsync'd);
    /// validates the samples queued before the call and makes their records durable;
    /// checks the canary rollout in progress on what was counted so far (see
    /// [`begin_rollout`](Runtime::begin_rollout)); and, when telemetry runs, cuts the open
    /// telemetry batches and uploads everything spooled; all within `timeout`. The
    /// execution log is flushed first, so a slow oracle cannot keep it from being durable.
    ///
    /// Errors: [`ErrorKind::Timeout`] when the log is not durable in time, when samples
    /// are still being validated at the deadline (with a slow oracle, give it time), when
    /// a rollout check of the rollout thread still runs at the deadline, or when telemetry
    /// batches are still spooled at the deadline (the message says how many and the last
    /// upload error; they stay spooled and are retried in the background).
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        if crate::fork::current() != self.inner.fork_generation {
            return Err(forked_error());
        }
        let deadline = Instant::now() + timeout;
        let left = || deadline.saturating_duration_since(Instant::now());
        let mut validated = Ok(());
        if self.inner.validator.has_workers() {
            self.inner.dataset.flush(timeout)?;
            validated = self.inner.validator.flush(deadline);
        }
        // Decide on what was counted so far, before the telemetry batches are cut.
        let checked = self.inner.rollout.check_until(deadline);
        if let Some(telemetry) = &self.inner.telemetry {
            telemetry.request_cut();
        }
        let written = self.inner.dataset.flush(left());
        validated.and(written).and(checked)?;
        match &self.inner.telemetry {
            Some(telemetry) => telemetry.drain(deadline, timeout),
            None => Ok(()),
        }
    }

    /// Flushes and stops the background threads within `timeout`. Later executions fail
    /// with [`ErrorKind::Closed`]. Calling it again is harmless. Dropping the last clone of
    /// a runtime does the same with [`DROP_SHUTDOWN_TIMEOUT`].
    ///
    /// Validation stops first and gets at most half of `timeout`: samples still queued
    /// then are discarded (counted in `skipped_shutdown`), and workers still waiting on the
    /// oracle are not waited for (their results are discarded; the result is then an
    /// [`ErrorKind::Timeout`] saying so). The execution log gets the rest of the time.
    /// Telemetry batches are cut and uploaded until one upload fails or the deadline
    /// passes; what is not sent stays spooled in `<data_dir>/telemetry/spool/<task>/` and
    /// is sent by the next runtime for this task (that is not an error). The rollout thread
    /// makes no check once shutdown starts; one it is inside (reading or writing
    /// `rollout.json`) is waited for until the deadline, then the rollout counters are
    /// persisted ([`ErrorKind::Timeout`] if that check is still running: the thread stops
    /// on its own after it).
    pub fn shutdown(&self, timeout: Duration) -> Result<()> {
        if crate::fork::current() != self.inner.fork_generation {
            return Err(forked_error());
        }
        shutdown_all(&self.inner, timeout)
    }

    /// Validation against the oracle and oracle-fallback counters: totals and, per program
    /// version, the match rate over all validations and over the last
    /// [`ROLLING_WINDOW`](crate::ROLLING_WINDOW). Cheap; takes no lock on the hot path.
    pub fn validation_metrics(&self) -> ValidationMetrics {
        self.inner.validator.metrics()
    }

    /// Daily statistics of the last `days` days that have data, oldest first (today's are
    /// brought up to date first). See `docs/datasets.md` for the fields.
    pub fn stats(&self, days: u32) -> Result<Vec<DailyStats>> {
        if !self.inner.dataset.is_closed() {
            if crate::fork::current() != self.inner.fork_generation {
                return Err(forked_error());
            }
            // The log only: statistics do not wait for telemetry uploads.
            self.inner.dataset.flush(DROP_SHUTDOWN_TIMEOUT)?;
        }
        let today = Timestamp(self.inner.clock.now_millis()).day();
        DatasetReader::new(&self.inner.data_dir, &self.inner.task)
            .with_keys(self.inner.keys.clone())
            .stats(days, today)
    }

    /// The outcome of the last retention run (at start-up, then daily), once one finished.
    pub fn last_retention(&self) -> Option<std::result::Result<RetentionReport, String>> {
        self.inner.maintenance.last_report()
    }

    /// What a heartbeat reports about the runtime (telemetry adds its own queue depths).
    pub(crate) fn heartbeat_state(&self) -> RuntimeState {
        let dataset = self.inner.dataset.metrics();
        let validation = self.inner.validator.metrics();
        let refresh_error = self
            .inner
            .refresh
            .as_ref()
            .and_then(|r| r.metrics().last_error);
        RuntimeState {
            status: if self.inner.dataset.healthy() {
                "ok".to_owned()
            } else {
                "degraded".to_owned()
            },
            active_version: self.active_version(),
            rollout: self.rollout().map(|r| HeartbeatRollout {
                state: serde_json::to_value(r.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                stable_version: r.stable_version,
                canary_version: r.canary_version,
                stage: r.stage,
                fraction: r.fraction,
            }),
            dataset_pending: dataset.pending,
            validation_queued: validation.queued,
            last_error: dataset.last_error.or(refresh_error),
        }
    }

    /// Current state, for health checks.
    pub fn health(&self) -> Health {
        let dataset = self.inner.dataset.metrics();
        Health {
            status: if self.inner.dataset.healthy() {
                "ok"
            } else {
                "degraded"
            },
            task: self.inner.task.clone(),
            active_version: self.active_version(),
            dataset,
            telemetry: self.inner.telemetry.as_ref().map(Telemetry::metrics),
            refresh: self.inner.refresh.as_ref().map(Refresh::metrics),
            validation: self.inner.validator.metrics(),
            rollout: self.rollout(),
        }
    }

    /// Parses `input` as a JSON object (at most [`MAX_INPUT_DOCUMENT_BYTES`]) and executes it.
    /// A document that does not parse is refused ([`ErrorKind::InvalidInput`]) and logged as
    /// a failed execution with the raw text as its input.
    pub fn execute_json(&self, input: &[u8]) -> Result<ExecutionResult> {
        self.execute_json_inner(input, None)
    }

    /// [`execute_json`](Runtime::execute_json) with the routing key of a canary rollout,
    /// as [`execute_with_key`](Runtime::execute_with_key).
    pub fn execute_json_with_key(&self, input: &[u8], key: &str) -> Result<ExecutionResult> {
        self.execute_json_inner(input, Some(key))
    }

    fn execute_json_inner(&self, input: &[u8], key: Option<&str>) -> Result<ExecutionResult> {
        match parse_input(input) {
            Ok(value) => self.execute_inner(&value, key),
            Err(err) => {
                let start = Instant::now();
                let timestamp = Timestamp(self.inner.clock.now_millis());
                let raw = Value::String(String::from_utf8_lossy(input).into_owned());
                let version = self.inner.executor.version();
                self.log_failure(&raw, &err, timestamp, start, version, None);
                Err(err)
            }
        }
    }

    /// The task id.
    pub fn task(&self) -> &str {
        &self.inner.task
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    /// The deployment configuration in effect.
    pub fn config(&self) -> &DeploymentConfig {
        &self.inner.config
    }

    /// The artifact version executing now.
    pub fn active_version(&self) -> u32 {
        self.inner.executor.version()
    }

    /// The artifact cache of this task.
    pub fn artifacts(&self) -> &ArtifactStore {
        &self.inner.store
    }

    /// Activates an installed version and swaps it in without interrupting executions.
    /// The version is verified and compiled before anything changes. A rollout in
    /// progress is aborted first (its canary stops serving; it is not marked rolled back).
    pub fn activate(&self, version: u32) -> Result<()> {
        let (program, description) = self.inner.rollout.compile(version)?;
        self.inner
            .rollout
            .abort(format!("v{version} activated by hand"), false)?;
        self.inner.store.activate(version)?;
        self.inner.rollout.switch(program, description);
        self.inner
            .sampler
            .version_activated(self.inner.clock.now_millis());
        Ok(())
    }

    /// Follows the artifact cache now — what the rollout thread does every
    /// `rollout.follow_interval_ms` (see [`RuntimeBuilder::follow_interval`]): re-reads the
    /// `active` pointer (changed, say, by `loopai artifacts activate` in another process)
    /// and swaps in that version if it differs; follows `rollout.json` changed by
    /// `loopai artifacts promote|rollback` or `loopai rollout start|promote|abort` (a
    /// rollout started elsewhere that nobody drives is taken over, see `docs/rollout.md`).
    /// A rollout in progress whose stable version is no longer active is aborted. Returns
    /// the active version.
    pub fn reload(&self) -> Result<u32> {
        self.inner.rollout.check()?;
        self.inner.rollout.follow()
    }

    /// Starts a canary rollout of the installed `version` (see `docs/rollout.md`): it
    /// serves `rollout.stages[0]` of the executions (10% by default, sticky per routing
    /// key) next to the active version, and is promoted stage by stage or rolled back by
    /// the sequential test on their error, mismatch and abstain rates. This is how a new
    /// version installed by a refresh, by `loopai synth --no-activate` or by
    /// [`ArtifactStore::install`] without activation is handed over; nothing else changes
    /// the active version gradually.
    ///
    /// The version is verified and compiled before anything changes. A rollout already in
    /// progress is aborted (superseded). Starting the rollout of the canary already in
    /// progress does nothing. With `rollout.enabled: false` the version is activated at
    /// once, like [`activate`](Runtime::activate).
    ///
    /// Errors: [`ErrorKind::Artifact`] when the version is not installed, is corrupt, is
    /// the active version, or was rolled back before (a rolled-back canary is never
    /// rolled out again automatically: activate it by hand); [`ErrorKind::Program`] and
    /// [`ErrorKind::Schema`] when it does not compile or its labels are not allowed;
    /// [`ErrorKind::Io`] when `rollout.json` cannot be written.
    pub fn begin_rollout(&self, version: u32) -> Result<()> {
        self.ensure_open()?;
        if !self.inner.config.rollout.enabled {
            return self.activate(version);
        }
        self.inner.rollout.begin(version)?;
        self.inner
            .sampler
            .version_activated(self.inner.clock.now_millis());
        Ok(())
    }

    /// Finishes the rollout in progress now: its canary becomes the active version
    /// (through the artifact store's `active` pointer) and serves every execution.
    /// Returns that version.
    ///
    /// Errors: [`ErrorKind::Artifact`] when no rollout is in progress, or activation
    /// fails (then the rollout goes on); [`ErrorKind::Closed`] after
    /// [`shutdown`](Runtime::shutdown) or in a forked child.
    pub fn promote(&self) -> Result<u32> {
        self.ensure_open()?;
        self.inner.rollout.promote()
    }

    /// Rolls back the rollout in progress now: the canary stops serving, the stable
    /// version stays active, and the canary is marked rolled back (not rolled out again
    /// automatically). Returns the canary's version, or `None` when no rollout was in
    /// progress.
    ///
    /// Errors: [`ErrorKind::Closed`] after [`shutdown`](Runtime::shutdown) or in a forked
    /// child; I/O errors saving the rollout state.
    pub fn abort_rollout(&self) -> Result<Option<u32>> {
        self.ensure_open()?;
        self.inner
            .rollout
            .abort("rolled back by hand".to_owned(), true)
    }

    /// Refuses rollout changes in a forked child (the rollout thread does not exist there)
    /// and after `shutdown` (the rollout state was saved for the next start).
    fn ensure_open(&self) -> Result<()> {
        if crate::fork::current() != self.inner.fork_generation {
            return Err(forked_error());
        }
        if self.inner.dataset.is_closed() {
            return Err(Error::new(
                ErrorKind::Closed,
                format!(
                    "task {:?}: the runtime was shut down; rollout changes need a running runtime",
                    self.inner.task
                ),
            ));
        }
        Ok(())
    }

    /// The rollout in progress, or the last one (with its outcome), with live per-arm
    /// statistics and the current decision; `None` when the task never had a rollout.
    ///
    /// In a process forked after the runtime was built, the state is read without waiting
    /// for the rollout lock (the parent's rollout thread may have held it at the fork, and
    /// would never release it here): `None` when it was held.
    pub fn rollout(&self) -> Option<RolloutStatus> {
        if crate::fork::current() != self.inner.fork_generation {
            return self.inner.rollout.try_status();
        }
        self.inner.rollout.status()
    }
}

/// Stops validation (within half the time), then the writer (flushing, which cuts the last
/// telemetry batches), the retention thread, the telemetry uploader and the rollout thread
/// (then persists the rollout counters), all within one overall timeout.
fn shutdown_all(inner: &Inner, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    let deadline = start + timeout;
    let left = || deadline.saturating_duration_since(Instant::now());
    // No hand-over may start once shutting down: refresh stops first, within a quarter.
    if let Some(refresh) = &inner.refresh {
        refresh.shutdown(start + timeout / 4);
    }
    // No background check starts from now on.
    inner.rollout_thread.stop();
    if inner.validator.has_workers() && !inner.dataset.is_closed() {
        // Samples reach the validation queue once their records are in the log: write
        // what is queued first (at most a quarter of the time; failing, the rest is
        // counted as skipped), so that executions accepted before shutdown are validated.
        let _ = inner.dataset.flush(timeout / 4);
    }
    let validated = inner.validator.shutdown(start + timeout / 2);
    let written = inner.dataset.shutdown(left());
    let stopped = inner.maintenance.shutdown(left());
    let uploaded = match &inner.telemetry {
        Some(t) => t.shutdown(left()),
        None => Ok(()),
    };
    // Last, so that a check stuck in I/O on rollout.json takes no time from the others.
    let checks = inner.rollout_thread.shutdown(deadline);
    let persisted = inner.rollout.persist(deadline);
    written
        .and(stopped)
        .and(uploaded)
        .and(validated)
        .and(checks)
        .and(persisted)
}

fn forked_error() -> Error {
    Error::new(
        ErrorKind::Closed,
        "this runtime was created before fork(): its background threads do not exist in this process; create a new Runtime here",
    )
}

/// Parses one input document, size-limited.
pub(crate) fn parse_input(input: &[u8]) -> Result<Value> {
    if input.len() > MAX_INPUT_DOCUMENT_BYTES {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "input: {} bytes, over the limit of {MAX_INPUT_DOCUMENT_BYTES} bytes",
                input.len()
            ),
        ));
    }
    serde_json::from_slice(input).map_err(|e| {
        Error::new(
            ErrorKind::InvalidInput,
            format!(
                "input: not valid JSON at line {} column {}: {e}",
                e.line(),
                e.column()
            ),
        )
    })
}

/// What tests of other modules need to reach inside a runtime.
#[cfg(test)]
impl Runtime {
    /// Flushes the execution log only (not validation, rollout or telemetry).
    pub(crate) fn flush_log(&self, timeout: Duration) -> Result<()> {
        self.inner.dataset.flush(timeout)
    }

    /// Waits until the samples already queued for validation are validated (not the log).
    pub(crate) fn flush_validation(&self, timeout: Duration) -> Result<()> {
        self.inner.validator.flush(Instant::now() + timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifact::NewArtifact;
    use crate::testing::{install, install_with, TestClock, DAY, DAY1};
    use serde_json::json;

    const RULES: &[u8] = br#"{"format": "loopai.program/1", "task": "spam",
      "inputs": [{"name": "text", "path": "/text", "type": "text"}],
      "features": [{"name": "prize", "op": "keywords", "source": "text", "terms": ["prize"]}],
      "decide": {"op": "rules", "rules": [
        {"when": {"feature": "prize", "gt": 0}, "then": "spam", "confidence": 0.95},
        {"when": {"always": true}, "then": "ham", "confidence": 0.55}]},
      "output": {"kind": "label", "labels": ["spam", "ham"], "abstain_below": 0.6}}"#;

    /// v1 active and v2 installed beside it, both the RULES program.
    fn install_active_and_inactive(dir: &Path) {
        install(dir, RULES, true);
        install(dir, RULES, false);
    }

    fn runtime(dir: &Path) -> Result<Runtime> {
        Runtime::builder().data_dir(dir).task("spam").build()
    }

    #[test]
    fn execute_reports_status_version_and_unique_ids() {
        let dir = tempfile::tempdir().unwrap();
        install(dir.path(), RULES, true);
        let rt = runtime(dir.path()).unwrap();
        let a = rt.execute(&json!({"text": "a prize"})).unwrap();
        // (No oracle and no telemetry: nothing is sampled; see the validator's tests.)
        assert!(!a.sampled);
        assert_eq!((a.status, a.version), (ExecutionStatus::Success, 1));
        let b = rt.execute(&json!({"text": "hello"})).unwrap();
        assert_eq!(b.status, ExecutionStatus::Abstain);
        assert_eq!(b.output, "ham");
        assert_ne!(a.execution_id, b.execution_id);
        assert_eq!(a.execution_id.get_version_num(), 4);
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json["scores"]["spam"], 0.95);
        assert!((json["scores"]["ham"].as_f64().unwrap() - 0.05).abs() < 1e-12);
        assert_eq!(json["status"], "success");
        for key in [
            "execution_id",
            "output",
            "confidence",
            "version",
            "latency_ms",
            "status",
            "sampled",
        ] {
            assert!(json.get(key).is_some(), "{key} missing from {json}");
        }
    }

    #[test]
    fn build_without_active_program_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let err = runtime(dir.path()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Artifact);
        assert!(err.to_string().contains("has no active program"), "{err}");
        let err = Runtime::builder().task("x").build().unwrap_err();
        assert_eq!(err.to_string(), "runtime: data_dir is required");
    }

    #[test]
    fn a_missing_task_or_data_dir_fails_naming_them_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let err = runtime(dir.path()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Artifact);
        assert!(
            err.to_string().ends_with(
                "(no task is installed there yet: create one with `loopai synth` or `loopai artifacts install`)"
            ),
            "{err}"
        );
        assert!(!dir.path().join("artifacts").exists());

        install(dir.path(), RULES, true);
        ArtifactStore::open(dir.path(), "ham").unwrap();
        let err = Runtime::builder()
            .data_dir(dir.path())
            .task("spamm")
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Artifact);
        assert_eq!(
            err.to_string(),
            format!(
                "task \"spamm\" has no active program: there is no task \"spamm\" in {} \
                 (tasks there: `ham`, `spam`); did you mean `spam`?",
                dir.path().join("artifacts").display()
            )
        );
        assert!(!dir.path().join("artifacts/spamm").exists());
        assert!(!dir.path().join("datasets").exists());

        let missing = dir.path().join("no-such-dir");
        let err = runtime(&missing).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert_eq!(
            err.to_string(),
            format!(
                "data dir {}: no such directory (task \"spam\" cannot be there)",
                missing.display()
            )
        );
        assert!(!missing.exists());

        // A task that exists without an active version keeps its own message.
        let err = Runtime::builder()
            .data_dir(dir.path())
            .task("ham")
            .build()
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("task \"ham\" has no active program in "),
            "{err}"
        );
    }

    #[test]
    fn tampered_program_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        install(dir.path(), RULES, true);
        let path = dir.path().join("artifacts/spam/v1/program.json");
        let tampered = String::from_utf8(RULES.to_vec())
            .unwrap()
            .replace("0.95", "0.99");
        std::fs::write(&path, tampered).unwrap();
        let err = runtime(dir.path()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Artifact);
        assert!(err.to_string().contains("sha256 mismatch"), "{err}");
    }

    #[test]
    fn metadata_schemas_are_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let mut extra = serde_json::Map::new();
        extra.insert(
            "input_schema".into(),
            json!({"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"], "additionalProperties": false}),
        );
        extra.insert(
            "output_schema".into(),
            json!({"type": "string", "enum": ["spam", "ham"]}),
        );
        let meta = NewArtifact {
            extra,
            ..NewArtifact::default()
        };
        install_with(dir.path(), RULES, meta, true);
        let rt = runtime(dir.path()).unwrap();
        let err = rt.execute(&json!({"text": "x", "extra": 1})).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.to_string().starts_with("input /extra:"), "{err}");
    }

    #[test]
    fn execute_json_rejects_bad_documents() {
        let dir = tempfile::tempdir().unwrap();
        install(dir.path(), RULES, true);
        let rt = runtime(dir.path()).unwrap();
        let err = rt.execute_json(b"{\"text\": ").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(
            err.to_string().starts_with("input: not valid JSON"),
            "{err}"
        );
        assert_eq!(
            rt.execute_json(br#"{"text": "prize"}"#).unwrap().output,
            "spam"
        );
    }

    #[test]
    fn activate_and_reload_swap_versions() {
        let dir = tempfile::tempdir().unwrap();
        install(dir.path(), RULES, true);
        let v2 = String::from_utf8(RULES.to_vec())
            .unwrap()
            .replace("\"prize\"]", "\"hello\"]");
        install(dir.path(), v2.as_bytes(), true);
        let rt = runtime(dir.path()).unwrap();
        assert_eq!(rt.active_version(), 2);
        assert_eq!(
            rt.execute(&json!({"text": "hello"})).unwrap().output,
            "spam"
        );
        rt.activate(1).unwrap();
        assert_eq!(rt.execute(&json!({"text": "hello"})).unwrap().version, 1);
        // Another process activates v2: reload picks it up.
        ArtifactStore::open(dir.path(), "spam")
            .unwrap()
            .activate(2)
            .unwrap();
        assert_eq!(rt.reload().unwrap(), 2);
        assert_eq!(rt.active_version(), 2);
    }

    fn day_lines(dir: &Path, file: &str) -> Vec<Value> {
        let day_dir = dir.join("datasets/spam").join(file);
        let mut out = Vec::new();
        for entry in std::fs::read_dir(day_dir).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            out.extend(
                text.lines()
                    .map(|l| serde_json::from_str::<Value>(l).unwrap()),
            );
        }
        out
    }

    #[test]
    fn every_execution_is_logged_including_failures() {
        let dir = tempfile::tempdir().unwrap();
        install(dir.path(), RULES, true);
        let rt = runtime(dir.path()).unwrap();
        let ok = rt.execute(&json!({"text": "a prize"})).unwrap();
        rt.execute(&json!({"nope": 1})).unwrap_err();
        rt.execute_json(b"{oops").unwrap_err();
        rt.flush(Duration::from_secs(5)).unwrap();
        let lines = day_lines(dir.path(), "executions");
        assert_eq!(lines.len(), 3);
        let first = &lines[0];
        assert_eq!(first["execution_id"], ok.execution_id.to_string());
        assert_eq!(first["task_id"], "spam");
        assert_eq!(first["program_version"], 1);
        assert_eq!(first["input"], json!({"text": "a prize"}));
        assert_eq!(first["output"], "spam");
        assert_eq!(first["status"], "success");
        assert!(first["sampled"].is_boolean());
        assert!(first["timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(lines[1]["status"], "error");
        assert!(lines[1]["error"]
            .as_str()
            .unwrap()
            .contains("required field `text`"));
        assert_eq!(lines[2]["input"], "{oops");
        let health = rt.health();
        assert_eq!(health.status, "ok");
        assert_eq!(health.dataset.written, 3);
    }

    #[test]
    fn durable_mode_syncs_before_returning_and_shutdown_closes() {
        let dir = tempfile::tempdir().unwrap();
        install(dir.path(), RULES, true);
        let config =
            DeploymentConfig::from_yaml_str("storage:\n  durability: durable\n", "test").unwrap();
        let rt = Runtime::builder()
            .data_dir(dir.path())
            .task("spam")
            .config(config)
            .build()
            .unwrap();
        rt.execute(&json!({"text": "hello"})).unwrap();
        // No flush: the record is already on disk.
        assert_eq!(day_lines(dir.path(), "executions").len(), 1);
        assert!(rt.health().dataset.syncs >= 1);
        rt.record_validation(crate::dataset::ValidationRecord::new(
            Uuid::nil(),
            1,
            json!("ham"),
            10.0,
            0.0,
            true,
            1.0,
            "exact",
            Timestamp(0),
        ))
        .unwrap();
        assert_eq!(day_lines(dir.path(), "validations").len(), 1);
        rt.shutdown(Duration::from_secs(5)).unwrap();
        let err = rt.execute(&json!({"text": "hello"})).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Closed);
    }

    #[test]
    fn execute_json_with_key_routes_by_the_key_and_logs_what_does_not_parse() {
        let dir = tempfile::tempdir().unwrap();
        install_active_and_inactive(dir.path());
        let rt = runtime(dir.path()).unwrap();
        rt.begin_rollout(2).unwrap();
        let mut served = std::collections::BTreeSet::new();
        for user in 0..64 {
            let key = format!("user-{user}");
            let first = rt.execute_json_with_key(br#"{"text": "a"}"#, &key).unwrap();
            let again = rt.execute_json_with_key(br#"{"text": "b"}"#, &key).unwrap();
            assert_eq!(first.version, again.version, "{key}");
            served.insert(first.version);
        }
        assert_eq!(served, [1, 2].into(), "both arms serve some keys");
        let err = rt
            .execute_json_with_key(b"{not json", "user-1")
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        rt.flush(Duration::from_secs(5)).unwrap();
        let lines = day_lines(dir.path(), "executions");
        assert_eq!(lines.len(), 129);
        assert!(lines.iter().any(|l| l["input"] == json!("{not json")));
    }

    #[test]
    fn rollout_changes_are_refused_after_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        install_active_and_inactive(dir.path());
        let rt = runtime(dir.path()).unwrap();
        rt.begin_rollout(2).unwrap();
        rt.shutdown(Duration::from_secs(5)).unwrap();
        let closed = |r: Result<()>| match r {
            Err(e) if e.kind() == ErrorKind::Closed => e.to_string(),
            other => panic!("expected Closed, got {other:?}"),
        };
        assert!(closed(rt.promote().map(drop)).contains("shut down"));
        closed(rt.abort_rollout().map(drop));
        closed(rt.begin_rollout(2));
        // The rollout saved at shutdown resumes in the next runtime, unchanged.
        let next = runtime(dir.path()).unwrap();
        let status = next.rollout().expect("the rollout was saved");
        assert_eq!(status.canary_version, 2);
        assert_eq!(next.promote().unwrap(), 2);
        assert_eq!(next.active_version(), 2);
    }

    #[cfg(unix)]
    #[test]
    fn a_runtime_refuses_to_run_in_a_forked_child() {
        let dir = tempfile::tempdir().unwrap();
        install(dir.path(), RULES, true);
        let rt = runtime(dir.path()).unwrap();
        rt.execute(&json!({"text": "before"})).unwrap();
        // SAFETY: the child only executes (no locks are held across the fork) and _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let closed = |r: Result<()>| matches!(r, Err(e) if e.kind() == ErrorKind::Closed);
            let ok = closed(rt.execute(&json!({"text": "x"})).map(drop))
                && closed(rt.flush(Duration::from_millis(10)))
                && closed(rt.begin_rollout(2))
                && closed(rt.promote().map(drop))
                && closed(rt.abort_rollout().map(drop));
            // A fresh runtime in the child works.
            let fresh = runtime(dir.path()).and_then(|r| r.execute(&json!({"text": "child"})));
            unsafe { libc::_exit(if ok && fresh.is_ok() { 0 } else { 1 }) };
        }
        let mut status = 0;
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child checks failed"
        );
        assert!(rt.execute(&json!({"text": "parent still works"})).is_ok());
    }

    /// The parent's rollout thread may hold the rollout lock at the moment of a fork; in
    /// the child nobody ever releases it, and `rollout()` / `health()` must not wait on it.
    #[cfg(unix)]
    #[test]
    fn a_forked_child_reads_the_rollout_without_waiting_for_its_lock() {
        let dir = tempfile::tempdir().unwrap();
        install_active_and_inactive(dir.path());
        let rt = runtime(dir.path()).unwrap();
        rt.begin_rollout(2).unwrap();
        let held = rt.inner.rollout.hold_lock();
        // SAFETY: the child reads the rollout state and _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let ok = rt.rollout().is_none() && rt.health().rollout.is_none();
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        crate::fork::expect_child_success(pid, "on the rollout lock");
        drop(held);
        assert_eq!(rt.rollout().unwrap().canary_version, 2);
        rt.shutdown(Duration::from_secs(5)).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn refresh_threads_are_not_waited_for_in_a_forked_child() {
        let dir = tempfile::tempdir().unwrap();
        install(dir.path(), RULES, true);
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let config = DeploymentConfig::from_yaml_str(
            &format!("cloud:\n  api_url: {url}\n  refresh_interval_sec: 1\ntelemetry:\n  enabled: false\n"),
            "test",
        )
        .unwrap();
        let build = || {
            Runtime::builder()
                .data_dir(dir.path())
                .task("spam")
                .config(config.clone())
                .build()
        };
        let rt = build().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while rt.health().refresh.unwrap().checks == 0 {
            assert!(
                Instant::now() < deadline,
                "the refresh thread never checked"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // SAFETY: the child executes, drops, builds a runtime and _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let refused = matches!(rt.execute(&json!({"text": "x"})), Err(e) if e.kind() == ErrorKind::Closed);
            // Dropping must not wait for threads that do not exist here.
            drop(rt);
            let fresh = build().and_then(|r| {
                r.execute(&json!({"text": "child"}))?;
                r.shutdown(Duration::from_secs(5))
            });
            unsafe { libc::_exit(if refused && fresh.is_ok() { 0 } else { 1 }) };
        }
        let mut status = 0;
        loop {
            let done = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if done == pid {
                break;
            }
            if Instant::now() > deadline {
                unsafe { libc::kill(pid, libc::SIGKILL) };
                panic!("the forked child hung");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child checks failed"
        );
        assert!(rt.execute(&json!({"text": "parent still works"})).is_ok());
        rt.shutdown(Duration::from_secs(5)).unwrap();
    }

    #[test]
    fn execute_batch_keeps_order_and_per_item_errors() {
        let dir = tempfile::tempdir().unwrap();
        install(dir.path(), RULES, true);
        let rt = runtime(dir.path()).unwrap();
        let out = rt.execute_batch(&[json!({"text": "prize"}), json!({}), json!({"text": "hi"})]);
        assert_eq!(out[0].as_ref().unwrap().output, "spam");
        assert_eq!(out[1].as_ref().unwrap_err().kind(), ErrorKind::InvalidInput);
        assert_eq!(out[2].as_ref().unwrap().output, "ham");
    }

    fn runtime_at(dir: &Path, clock: &Arc<TestClock>) -> Runtime {
        Runtime::builder()
            .data_dir(dir)
            .task("spam")
            .clock(clock.clone())
            .build()
            .unwrap()
    }

    #[test]
    fn daily_stats_follow_rollover_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        install(dir.path(), RULES, true);
        let clock = TestClock::at(DAY1 + 1000);
        let rt = runtime_at(dir.path(), &clock);
        for text in ["prize", "prize", "hello"] {
            rt.execute(&json!({ "text": text })).unwrap();
        }
        rt.execute(&json!({})).unwrap_err();
        let stats = rt.stats(7).unwrap();
        assert_eq!(stats.len(), 1);
        assert_eq!(
            (stats[0].date.as_str(), stats[0].total, stats[0].failed),
            ("2025-11-25", 4, 1)
        );
        assert_eq!(stats[0].output_distribution.get("spam"), Some(&2));

        // Next day: a new file and a new stats entry; the closed day is persisted.
        clock.set(DAY1 + DAY + 5);
        rt.execute(&json!({"text": "prize"})).unwrap();
        let stats = rt.stats(7).unwrap();
        assert_eq!(
            stats.iter().map(|s| s.total).collect::<Vec<_>>(),
            vec![4, 1]
        );
        rt.shutdown(Duration::from_secs(5)).unwrap();
        drop(rt);

        // Restart in the middle of day 2: the aggregate starts from what is on disk.
        let rt = runtime_at(dir.path(), &clock);
        rt.execute(&json!({"text": "hello"})).unwrap();
        let stats = rt.stats(7).unwrap();
        assert_eq!(stats.last().unwrap().total, 2);
        assert!(dir
            .path()
            .join("datasets/spam/analytics/daily-stats-2025-11-26.json")
            .exists());
    }

    #[test]
    fn retention_runs_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        install(dir.path(), RULES, true);
        let clock = TestClock::at(DAY1);
        let rt = runtime_at(dir.path(), &clock);
        rt.execute(&json!({"text": "prize"})).unwrap();
        rt.shutdown(Duration::from_secs(5)).unwrap();
        drop(rt);
        // Three days later the day-1 file is compressed; ten days later it is gone.
        clock.set(DAY1 + 3 * DAY);
        let wait_for_retention = |rt: &Runtime| {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(report) = rt.last_retention() {
                    return report.unwrap();
                }
                assert!(Instant::now() < deadline, "retention did not run");
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        let rt = runtime_at(dir.path(), &clock);
        let report = wait_for_retention(&rt);
        assert_eq!(report.compressed.len(), 1, "{report:?}");
        let executions = dir.path().join("datasets/spam/executions");
        assert!(executions.join("2025-11-25.jsonl.gz").exists());
        assert!(!executions.join("2025-11-25.jsonl").exists());
        let records: Vec<_> = DatasetReader::new(dir.path(), "spam")
            .executions(
                crate::clock::parse_day("2025-11-25").unwrap(),
                crate::clock::parse_day("2025-11-25").unwrap(),
            )
            .unwrap()
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(records.len(), 1, "compressed records still read back");
        rt.shutdown(Duration::from_secs(5)).unwrap();
        drop(rt);
        clock.set(DAY1 + 10 * DAY);
        let rt = runtime_at(dir.path(), &clock);
        let report = wait_for_retention(&rt);
        assert_eq!(report.deleted.len(), 1, "{report:?}");
        assert!(!executions.join("2025-11-25.jsonl.gz").exists());
    }

    #[test]
    fn sampled_executions_are_flagged_in_results_and_logs() {
        let dir = tempfile::tempdir().unwrap();
        install(dir.path(), RULES, true);
        // Uncertainty sampling: the 0.55-confidence ham rule is always sampled.
        let config = DeploymentConfig::from_yaml_str(
            "sampling:\n  strategy: uncertainty\n  rate: 0\n  uncertainty_threshold: 0.9\n",
            "test",
        )
        .unwrap();
        // An oracle to validate the samples (without one, nothing is sampled).
        let oracle = crate::FnOracle::shared(|_| Ok(crate::OracleAnswer::new(json!("ham"))));
        let rt = Runtime::builder()
            .data_dir(dir.path())
            .task("spam")
            .config(config)
            .oracle(oracle)
            .build()
            .unwrap();
        assert!(rt.execute(&json!({"text": "hello"})).unwrap().sampled);
        assert!(!rt.execute(&json!({"text": "prize"})).unwrap().sampled);
        rt.flush(Duration::from_secs(5)).unwrap();
        let lines = day_lines(dir.path(), "executions");
        assert_eq!(lines.iter().filter(|l| l["sampled"] == true).count(), 1);
        assert_eq!(rt.stats(1).unwrap()[0].sampled_count, 1);
    }

    #[test]
    fn hash_inputs_keeps_raw_inputs_out_of_the_log() {
        let dir = tempfile::tempdir().unwrap();
        install(dir.path(), RULES, true);
        let config =
            DeploymentConfig::from_yaml_str("privacy:\n  hash_inputs: true\n", "test").unwrap();
        let rt = Runtime::builder()
            .data_dir(dir.path())
            .task("spam")
            .config(config)
            .build()
            .unwrap();
        rt.execute(&json!({"text": "my secret prize"})).unwrap();
        rt.execute(&json!({"text": "my secret prize"})).unwrap();
        rt.flush(Duration::from_secs(5)).unwrap();
        let text = std::fs::read_to_string(
            std::fs::read_dir(dir.path().join("datasets/spam/executions"))
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .path(),
        )
        .unwrap();
        assert!(!text.contains("secret"), "raw input leaked: {text}");
        let lines = day_lines(dir.path(), "executions");
        let hash = lines[0]["input"].as_str().unwrap();
        assert_eq!(hash.len(), 64);
        assert_eq!(
            lines[1]["input"], lines[0]["input"],
            "a keyed hash is stable"
        );
        assert!(dir.path().join(crate::privacy::HMAC_KEY_FILE).exists());
    }

    #[test]
    fn runtime_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Runtime>();
        check::<ExecutionResult>();
    }
}
