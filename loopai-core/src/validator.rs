//! The validator: checks sampled executions against the oracle in the background, and
//! asks the oracle synchronously when a program abstains (`execution.fallback: oracle`).
//!
//! * Comparison ([`compare_outputs`]): `exact`, `normalized`, `fuzzy`, `structured`.
//! * Queue: `execute` prepares a [`PendingSample`] for a sampled execution and attaches it
//!   to the execution's record; the dataset writer hands it to a bounded queue
//!   (`validation.queue_capacity`, `try_send`) only once that record is in the local log
//!   (`durable`: synced), so the oracle — an outbound call — never sees an input the local
//!   dataset lacks (issue #15). When the queue is full the sample is skipped and counted
//!   (`skipped_queue_full`); a sample whose record never reaches the log (dropped on a full
//!   log queue, unwritten at shutdown) is counted in `skipped_not_logged`. `execute` never
//!   waits for validation.
//! * Workers: `validation.workers` threads take samples from the queue, ask the oracle,
//!   check its answer, compare, and write a [`ValidationRecord`] through the dataset writer.
//!   Oracle failures are counted (`oracle_errors`) and logged at `warn`, at most once per
//!   10 s.
//! * Metrics ([`ValidationMetrics`]): totals and, per program version, the match rate over
//!   all validations and over the last [`ROLLING_WINDOW`].
//! * Flush and shutdown are bounded: see [`crate::Runtime::flush`] and
//!   [`crate::Runtime::shutdown`].

use std::collections::{BTreeMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_channel::{bounded, select, Receiver, Sender, TrySendError};
use parking_lot::{Condvar, Mutex};
use serde::Serialize;
use serde_json::Value;
use unicode_normalization::UnicodeNormalization;
use uuid::Uuid;

use crate::clock::{Clock, Timestamp};
use crate::config::ComparisonMode;
use crate::dataset::DatasetWriter;
use crate::dataset::ValidationRecord;
use crate::error::{Error, ErrorKind, Result};
use crate::oracle::check_output;
use crate::oracle::{Oracle, OracleRequest};
use crate::sampler::SampleReason;
use crate::schema::JsonSchema;

/// Validations per version over which the rolling match rate is computed.
pub const ROLLING_WINDOW: usize = 1000;
/// Program versions whose metrics are kept (the oldest are forgotten; totals stay).
const MAX_VERSIONS: usize = 32;
/// Least time between two `warn` logs about oracle failures.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Comparison

/// How a program's output compared with the oracle's.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Comparison {
    /// Whether the outputs match under the comparison method.
    pub matched: bool,
    /// Similarity in `[0, 1]` (1 for equal outputs).
    pub similarity: f64,
}

/// Compares a program's output with the oracle's.
///
/// * `exact`: equal JSON values (numbers by value: `1` equals `1.0`).
/// * `normalized`: equal after normalizing every string: Unicode NFKC, lowercase, runs of
///   whitespace collapsed to one space, trimmed.
/// * `fuzzy`: strings match when their normalized edit similarity (1 − Levenshtein
///   distance / length of the longer, on normalized strings) is at least `fuzzy_threshold`;
///   objects when the mean similarity of their fields (union of keys, a missing field
///   counts 0) is.
/// * `structured`: objects field by field: similarity is the fraction of fields (union of
///   keys) whose values are equal after normalization; they match when every field does.
///   Other values are compared as `normalized`.
///
/// Where no partial similarity is defined (`exact`, `normalized`, differing JSON types),
/// similarity is 1 for a match and 0 otherwise.
///
/// ```
/// use loopai_core::{compare_outputs, ComparisonMode};
/// use serde_json::json;
///
/// let c = compare_outputs(ComparisonMode::Normalized, 0.9, &json!("New  York"), &json!("new york"));
/// assert!(c.matched);
/// let c = compare_outputs(ComparisonMode::Structured, 0.9,
///     &json!({"city": "Paris", "zip": "75001"}), &json!({"city": "paris", "zip": "75002"}));
/// assert_eq!((c.matched, c.similarity), (false, 0.5));
/// ```
pub fn compare_outputs(
    mode: ComparisonMode,
    fuzzy_threshold: f64,
    program: &Value,
    oracle: &Value,
) -> Comparison {
    let binary = |matched: bool| Comparison {
        matched,
        similarity: if matched { 1.0 } else { 0.0 },
    };
    match mode {
        ComparisonMode::Exact => binary(values_equal(program, oracle, false)),
        ComparisonMode::Normalized => binary(values_equal(program, oracle, true)),
        ComparisonMode::Fuzzy => {
            let similarity = fuzzy_similarity(program, oracle);
            Comparison {
                matched: similarity >= fuzzy_threshold,
                similarity,
            }
        }
        ComparisonMode::Structured => match (program, oracle) {
            (Value::Object(a), Value::Object(b)) => {
                let keys = union_keys(a, b);
                if keys.is_empty() {
                    return binary(true);
                }
                let equal = keys
                    .iter()
                    .filter(|k| match (a.get(**k), b.get(**k)) {
                        (Some(x), Some(y)) => values_equal(x, y, true),
                        _ => false,
                    })
                    .count();
                Comparison {
                    matched: equal == keys.len(),
                    similarity: equal as f64 / keys.len() as f64,
                }
            }
            _ => binary(values_equal(program, oracle, true)),
        },
    }
}

fn union_keys<'a>(
    a: &'a serde_json::Map<String, Value>,
    b: &'a serde_json::Map<String, Value>,
) -> Vec<&'a str> {
    let mut keys: Vec<&str> = a.keys().chain(b.keys()).map(String::as_str).collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// NFKC, lowercase, whitespace runs collapsed to one space, trimmed.
pub(crate) fn normalize_text(s: &str) -> String {
    let lowered: String = s.nfkc().collect::<String>().to_lowercase();
    let mut out = String::with_capacity(lowered.len());
    for word in lowered.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

fn values_equal(a: &Value, b: &Value, normalize: bool) -> bool {
    match (a, b) {
        (Value::String(x), Value::String(y)) => {
            x == y || (normalize && normalize_text(x) == normalize_text(y))
        }
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => x == y,
            _ => x == y,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| values_equal(x, y, normalize))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, xv)| y.get(k).is_some_and(|yv| values_equal(xv, yv, normalize)))
        }
        _ => a == b,
    }
}

fn fuzzy_similarity(a: &Value, b: &Value) -> f64 {
    match (a, b) {
        (Value::String(x), Value::String(y)) => {
            let (x, y) = (normalize_text(x), normalize_text(y));
            if x == y {
                1.0
            } else {
                strsim::normalized_levenshtein(&x, &y)
            }
        }
        (Value::Object(x), Value::Object(y)) => {
            let keys = union_keys(x, y);
            if keys.is_empty() {
                return 1.0;
            }
            let total: f64 = keys
                .iter()
                .map(|k| match (x.get(*k), y.get(*k)) {
                    (Some(xv), Some(yv)) => fuzzy_similarity(xv, yv),
                    _ => 0.0,
                })
                .sum();
            total / keys.len() as f64
        }
        _ => {
            if values_equal(a, b, true) {
                1.0
            } else {
                0.0
            }
        }
    }
}

fn comparison_name(mode: ComparisonMode) -> &'static str {
    match mode {
        ComparisonMode::Exact => "exact",
        ComparisonMode::Normalized => "normalized",
        ComparisonMode::Fuzzy => "fuzzy",
        ComparisonMode::Structured => "structured",
    }
}

// ---------------------------------------------------------------------------------------
// Metrics

/// Validation counters of one program version.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct VersionValidationMetrics {
    /// The artifact version.
    pub version: u32,
    /// Sampled executions compared with the oracle's answer.
    pub validated: u64,
    /// Of those, how many matched.
    pub matched: u64,
    /// `matched / validated` (`None` before the first validation).
    pub match_rate: Option<f64>,
    /// Validations in the rolling window (the last [`ROLLING_WINDOW`] at most).
    pub rolling_validated: u64,
    /// The match rate over the rolling window (`None` when it is empty).
    pub rolling_match_rate: Option<f64>,
    /// Samples skipped because the validation queue was full.
    pub skipped_queue_full: u64,
    /// Validations that failed because the oracle failed or answered something invalid.
    pub oracle_errors: u64,
    /// Abstentions answered by the oracle (`execution.fallback: oracle`).
    pub oracle_fallbacks: u64,
    /// Abstentions the oracle could not answer in time (the program's answer was returned).
    pub oracle_fallback_failures: u64,
}

/// The validation state of a [`Runtime`](crate::Runtime) (also in its
/// [`Health`](crate::Health)); what a `/metrics` endpoint exports.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ValidationMetrics {
    /// The oracle in use (`"in-process"`, `"http <model> at <endpoint>"`), or `None`: then
    /// sampled executions are not validated (counted in `skipped_no_oracle`).
    pub oracle: Option<String>,
    /// `validation.comparison`.
    pub comparison: ComparisonMode,
    /// Whether `execution.fallback: oracle` is in effect.
    pub fallback: bool,
    /// Samples waiting in the queue now.
    pub queued: u64,
    /// Totals over every version.
    pub validated: u64,
    /// Total matches.
    pub matched: u64,
    /// `matched / validated` over every version (`None` before the first validation).
    pub match_rate: Option<f64>,
    /// Total samples skipped because the queue was full.
    pub skipped_queue_full: u64,
    /// Sampled executions not validated because there is no oracle.
    pub skipped_no_oracle: u64,
    /// Samples discarded at shutdown (still queued when its deadline passed).
    pub skipped_shutdown: u64,
    /// Samples never sent to the oracle because their execution record never reached the
    /// local log (dropped on a full log queue with `storage.on_full: drop`, or still
    /// unwritten when the runtime shut down): nothing leaves the process that the local
    /// dataset lacks.
    pub skipped_not_logged: u64,
    /// Total oracle failures during validation.
    pub oracle_errors: u64,
    /// Total abstentions answered by the oracle.
    pub oracle_fallbacks: u64,
    /// Total abstentions the oracle could not answer.
    pub oracle_fallback_failures: u64,
    /// Per program version, ascending (the last 32 versions seen).
    pub versions: Vec<VersionValidationMetrics>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    validated: u64,
    matched: u64,
    skipped_queue_full: u64,
    oracle_errors: u64,
    oracle_fallbacks: u64,
    oracle_fallback_failures: u64,
}

#[derive(Debug, Default)]
struct VersionState {
    counters: Counters,
    window: VecDeque<bool>,
    window_matched: u64,
}

#[derive(Debug, Default)]
struct MetricsState {
    totals: Counters,
    versions: BTreeMap<u32, VersionState>,
}

impl MetricsState {
    fn update(&mut self, version: u32, f: impl Fn(&mut Counters)) -> &mut VersionState {
        f(&mut self.totals);
        if !self.versions.contains_key(&version) && self.versions.len() >= MAX_VERSIONS {
            self.versions.pop_first();
        }
        let state = self.versions.entry(version).or_default();
        f(&mut state.counters);
        state
    }
}

fn rate(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

/// Counters shared by `execute`, the workers and readers.
#[derive(Debug, Default)]
struct Shared {
    state: Mutex<MetricsState>,
    skipped_no_oracle: AtomicU64,
    skipped_shutdown: AtomicU64,
    skipped_not_logged: AtomicU64,
    closed: AtomicBool,
    abandon: AtomicBool,
    warn: WarnLimiter,
}

impl Shared {
    fn count(&self, version: u32, f: impl Fn(&mut Counters)) {
        self.state.lock().update(version, f);
    }

    fn validated(&self, version: u32, matched: bool) {
        let mut state = self.state.lock();
        let v = state.update(version, |c| {
            c.validated += 1;
            c.matched += u64::from(matched);
        });
        if v.window.len() == ROLLING_WINDOW && v.window.pop_front() == Some(true) {
            v.window_matched -= 1;
        }
        v.window.push_back(matched);
        v.window_matched += u64::from(matched);
    }
}

/// Logs at `warn` at most once per [`WARN_INTERVAL`], saying how many were suppressed.
#[derive(Debug, Default)]
struct WarnLimiter {
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl WarnLimiter {
    fn warn(&self, message: std::fmt::Arguments<'_>) {
        let now = Instant::now();
        let mut last = self.last.lock();
        if last.is_some_and(|t| now.duration_since(t) < WARN_INTERVAL) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = Some(now);
        drop(last);
        match self.suppressed.swap(0, Ordering::Relaxed) {
            0 => log::warn!("loopai: {message}"),
            n => log::warn!("loopai: {message} ({n} similar messages suppressed)"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The validator

/// What an oracle request says about the task, shared by `execute` and the workers.
#[derive(Debug)]
pub(crate) struct TaskInfo {
    pub task: String,
    /// The task description of the active artifact (replaced on activation).
    pub description: ArcSwap<String>,
    /// The raw output schema (sent to the oracle) and its compiled form (checks answers).
    pub output_schema: Option<(Value, JsonSchema)>,
}

impl TaskInfo {
    fn request<'a>(
        &'a self,
        description: &'a str,
        labels: &'a [String],
        input: &'a Value,
        timeout: Duration,
    ) -> OracleRequest<'a> {
        OracleRequest::new(
            &self.task,
            description,
            labels,
            self.output_schema.as_ref().map(|(raw, _)| raw),
            input,
            timeout,
        )
    }

    /// Asks `oracle` (a panic is an error) and checks the answer; `(output, cost)`.
    fn ask(
        &self,
        oracle: &dyn Oracle,
        labels: &[String],
        input: &Value,
        timeout: Duration,
    ) -> Result<(Value, f64)> {
        let description = self.description.load();
        let request = self.request(&description, labels, input, timeout);
        let answer =
            catch_unwind(AssertUnwindSafe(|| oracle.ask(&request))).map_err(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Error::new(ErrorKind::Oracle, format!("the oracle panicked: {what}"))
            })??;
        let schema = self.output_schema.as_ref().map(|(_, compiled)| compiled);
        let output = check_output(labels, schema, answer.output)?;
        Ok((output, answer.cost))
    }
}

/// Settings of a [`Validator`].
#[derive(Debug, Clone)]
pub(crate) struct ValidatorSettings {
    pub comparison: ComparisonMode,
    pub fuzzy_threshold: f64,
    pub workers: usize,
    pub queue_capacity: usize,
    /// Budget of one validation's oracle call.
    pub request_timeout: Duration,
    /// `execution.fallback: oracle` (and an oracle exists).
    pub fallback: bool,
}

/// One sampled execution to validate.
struct Job {
    execution_id: Uuid,
    version: u32,
    /// Why the execution was sampled (only random samples count for a rollout).
    reason: SampleReason,
    input: Value,
    output: Value,
    labels: Arc<[String]>,
}

enum Msg {
    Validate(Job),
    Barrier(Arc<Barrier>),
}

/// Flush barrier: every worker takes one and waits for the others, so once all have
/// arrived every sample queued before the flush has been handled.
struct Barrier {
    remaining: Mutex<usize>,
    cv: Condvar,
    deadline: Instant,
}

impl Barrier {
    fn arrive(&self) {
        let mut left = self.remaining.lock();
        // After the deadline the flush has given up: a late arrival must not complete it.
        if Instant::now() < self.deadline {
            *left = left.saturating_sub(1);
        }
        if *left == 0 {
            self.cv.notify_all();
        }
        self.wait_locked(&mut left);
    }

    fn wait(&self) -> bool {
        let mut left = self.remaining.lock();
        self.wait_locked(&mut left)
    }

    fn wait_locked(&self, left: &mut parking_lot::MutexGuard<'_, usize>) -> bool {
        while **left > 0 {
            if self.cv.wait_until(left, self.deadline).timed_out() {
                return **left == 0;
            }
        }
        true
    }
}

/// Called with `(program version, sample reason, matched)` after each validation (the
/// rollout's per-arm counters).
pub(crate) type ValidationHook = Arc<dyn Fn(u32, SampleReason, bool) + Send + Sync>;

/// Everything a worker needs.
struct WorkerContext {
    oracle: Arc<dyn Oracle>,
    hook: Option<ValidationHook>,
    task: Arc<TaskInfo>,
    writer: Arc<DatasetWriter>,
    clock: Arc<dyn Clock>,
    settings: ValidatorSettings,
    shared: Arc<Shared>,
}

/// The worker threads and their queue.
struct Pool {
    tx: Sender<Msg>,
    rx: Receiver<Msg>,
    stop: Mutex<Option<Sender<()>>>,
    handles: Mutex<Vec<JoinHandle<()>>>,
    exited: Receiver<()>,
    exits_seen: Mutex<usize>,
    /// Held while a flush sends its barriers, so that concurrent flushes do not interleave
    /// them (two half-complete barriers would each hold a worker until their deadline).
    flush_send: Mutex<()>,
    workers: usize,
}

/// Validation and cascade for one runtime; owns the worker threads.
pub(crate) struct Validator {
    oracle: Option<Arc<dyn Oracle>>,
    oracle_name: Option<String>,
    task: Arc<TaskInfo>,
    settings: ValidatorSettings,
    shared: Arc<Shared>,
    pool: Option<Arc<Pool>>,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator")
            .field("oracle", &self.oracle_name)
            .field("settings", &self.settings)
            .finish()
    }
}

/// A sampled execution waiting for its record to reach the local log (see
/// [`Validator::sample`]). The dataset writer calls [`submit`](PendingSample::submit) on its
/// thread once the record is appended (`durable`: synced); dropped without that — the
/// record was never written — it is counted in `skipped_not_logged` and the oracle never
/// sees the input. It holds the queue weakly: it does not keep a shut-down validator alive.
pub(crate) struct PendingSample {
    job: Option<Job>,
    pool: Weak<Pool>,
    shared: Arc<Shared>,
}

impl PendingSample {
    /// Hands the sample to the workers without waiting: skipped and counted when the queue
    /// is full or after shutdown.
    pub(crate) fn submit(mut self) {
        let Some(job) = self.job.take() else {
            return;
        };
        let version = job.version;
        let pool = match self.pool.upgrade() {
            Some(pool) if !self.shared.closed.load(Ordering::Acquire) => pool,
            _ => {
                self.shared.skipped_shutdown.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        match pool.tx.try_send(Msg::Validate(job)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.shared.count(version, |c| c.skipped_queue_full += 1),
            Err(TrySendError::Disconnected(_)) => {
                self.shared.skipped_shutdown.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for PendingSample {
    fn drop(&mut self) {
        if self.job.is_some() {
            self.shared
                .skipped_not_logged
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Validator {
    /// Starts the workers when there is an oracle; without one, only counts.
    pub(crate) fn start(
        oracle: Option<(Arc<dyn Oracle>, String)>,
        task: Arc<TaskInfo>,
        settings: ValidatorSettings,
        writer: Arc<DatasetWriter>,
        clock: Arc<dyn Clock>,
        hook: Option<ValidationHook>,
    ) -> Result<Validator> {
        let shared = Arc::new(Shared::default());
        let (oracle, oracle_name) = match oracle {
            Some((o, name)) => (Some(o), Some(name)),
            None => (None, None),
        };
        let pool = match &oracle {
            None => None,
            Some(oracle) => {
                let ctx = Arc::new(WorkerContext {
                    oracle: oracle.clone(),
                    hook,
                    task: task.clone(),
                    writer,
                    clock,
                    settings: settings.clone(),
                    shared: shared.clone(),
                });
                Some(Arc::new(Pool::start(ctx)?))
            }
        };
        Ok(Validator {
            oracle,
            oracle_name,
            task,
            settings,
            shared,
            pool,
        })
    }

    /// Prepares a sampled execution for validation, without waiting: the returned
    /// [`PendingSample`] is handed to the workers by [`PendingSample::submit`] once the
    /// execution's record is in the local log. `None` (skipped and counted) when the queue
    /// is full already, when there is no oracle, or after shutdown.
    pub(crate) fn sample(
        &self,
        execution_id: Uuid,
        version: u32,
        reason: SampleReason,
        input: &Value,
        output: &Value,
        labels: &Arc<[String]>,
    ) -> Option<PendingSample> {
        let Some(pool) = &self.pool else {
            self.shared
                .skipped_no_oracle
                .fetch_add(1, Ordering::Relaxed);
            return None;
        };
        if self.shared.closed.load(Ordering::Acquire) {
            self.shared.skipped_shutdown.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        // Skip before copying the input when the queue is visibly full (the usual case
        // under load with a slow oracle); `submit` still decides.
        if pool.tx.is_full() {
            self.shared.count(version, |c| c.skipped_queue_full += 1);
            return None;
        }
        Some(PendingSample {
            job: Some(Job {
                execution_id,
                version,
                reason,
                input: input.clone(),
                output: output.clone(),
                labels: Arc::clone(labels),
            }),
            pool: Arc::downgrade(pool),
            shared: Arc::clone(&self.shared),
        })
    }

    /// Whether there are workers (an oracle): only then is there anything to flush.
    pub(crate) fn has_workers(&self) -> bool {
        self.pool.is_some()
    }

    /// Whether `execute` should ask the oracle when the program abstains.
    #[inline]
    pub(crate) fn fallback(&self) -> bool {
        self.settings.fallback
    }

    /// The cascade: asks the oracle on the caller's thread within `budget`. `Some(output)`
    /// when it answered validly in time; `None` (counted, logged) otherwise.
    pub(crate) fn cascade(
        &self,
        input: &Value,
        labels: &[String],
        version: u32,
        budget: Duration,
    ) -> Option<Value> {
        let oracle = self.oracle.as_ref()?;
        let start = Instant::now();
        let result = if budget.is_zero() {
            Err(Error::new(
                ErrorKind::Oracle,
                "no time left of execution.timeout_ms to ask the oracle",
            ))
        } else {
            self.task
                .ask(oracle.as_ref(), labels, input, budget)
                .and_then(|(output, _)| {
                    let took = start.elapsed();
                    if took > budget {
                        Err(Error::new(
                            ErrorKind::Oracle,
                            format!("the oracle answered after {took:?}, beyond the {budget:?} left of execution.timeout_ms"),
                        ))
                    } else {
                        Ok(output)
                    }
                })
        };
        match result {
            Ok(output) => {
                self.shared.count(version, |c| c.oracle_fallbacks += 1);
                Some(output)
            }
            Err(e) => {
                self.shared
                    .count(version, |c| c.oracle_fallback_failures += 1);
                self.shared.warn.warn(format_args!(
                    "task {:?}: oracle fallback failed, returning the program's abstention: {e}",
                    self.task.task
                ));
                None
            }
        }
    }

    /// Waits until every sample queued before the call has been validated and its record
    /// handed to the dataset writer, until `deadline`.
    pub(crate) fn flush(&self, deadline: Instant) -> Result<()> {
        let Some(pool) = &self.pool else {
            return Ok(());
        };
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(Error::new(ErrorKind::Closed, "the validator is shut down"));
        }
        let barrier = Arc::new(Barrier {
            remaining: Mutex::new(pool.workers),
            cv: Condvar::new(),
            deadline,
        });
        let timeout = || {
            Error::new(
                ErrorKind::Timeout,
                "flush: sampled executions still being validated against the oracle at the deadline",
            )
        };
        let sending = pool
            .flush_send
            .try_lock_until(deadline)
            .ok_or_else(timeout)?;
        for _ in 0..pool.workers {
            pool.tx
                .send_deadline(Msg::Barrier(barrier.clone()), deadline)
                .map_err(|e| match e {
                    crossbeam_channel::SendTimeoutError::Timeout(_) => timeout(),
                    crossbeam_channel::SendTimeoutError::Disconnected(_) => {
                        Error::new(ErrorKind::Closed, "the validator is shut down")
                    }
                })?;
        }
        drop(sending);
        if barrier.wait() {
            Ok(())
        } else {
            Err(timeout())
        }
    }

    /// Stops accepting samples and stops the workers: queued samples are still validated
    /// until `deadline`; then the rest are discarded (counted in `skipped_shutdown`) and
    /// workers still waiting on the oracle are left to finish on their own
    /// ([`ErrorKind::Timeout`]). Calling it again waits for those workers again.
    pub(crate) fn shutdown(&self, deadline: Instant) -> Result<()> {
        self.shared.closed.store(true, Ordering::Release);
        let Some(pool) = &self.pool else {
            return Ok(());
        };
        drop(pool.stop.lock().take());
        let mut handles = std::mem::take(&mut *pool.handles.lock());
        let mut seen = pool.exits_seen.lock();
        while *seen < handles.len() {
            match pool.exited.recv_deadline(deadline) {
                Ok(()) => *seen += 1,
                Err(_) => break,
            }
        }
        let stuck = handles.len() - *seen;
        if stuck == 0 {
            for h in handles.drain(..) {
                let _ = h.join();
            }
            *seen = 0;
        } else {
            self.shared.abandon.store(true, Ordering::Release);
        }
        drop(seen);
        // Samples nobody will take any more.
        while let Ok(msg) = pool.rx.try_recv() {
            match msg {
                Msg::Validate(_) => {
                    self.shared.skipped_shutdown.fetch_add(1, Ordering::Relaxed);
                }
                Msg::Barrier(b) => b.arrive_without_waiting(),
            }
        }
        if stuck == 0 {
            return Ok(());
        }
        *pool.handles.lock() = handles;
        Err(Error::new(
            ErrorKind::Timeout,
            format!(
                "validation: {stuck} of {} workers still waiting on the oracle at the shutdown deadline; their results will be discarded",
                pool.workers
            ),
        ))
    }

    /// Current metrics. Never blocks for long (after `fork()`, a lock held by a worker of
    /// the parent at the fork leaves the per-version metrics out).
    pub(crate) fn metrics(&self) -> ValidationMetrics {
        let queued = self.pool.as_ref().map_or(0, |p| p.rx.len() as u64);
        let (totals, versions) = match self.shared.state.try_lock_for(Duration::from_millis(100)) {
            Some(state) => (
                state.totals,
                state
                    .versions
                    .iter()
                    .map(|(&version, v)| VersionValidationMetrics {
                        version,
                        validated: v.counters.validated,
                        matched: v.counters.matched,
                        match_rate: rate(v.counters.matched, v.counters.validated),
                        rolling_validated: v.window.len() as u64,
                        rolling_match_rate: rate(v.window_matched, v.window.len() as u64),
                        skipped_queue_full: v.counters.skipped_queue_full,
                        oracle_errors: v.counters.oracle_errors,
                        oracle_fallbacks: v.counters.oracle_fallbacks,
                        oracle_fallback_failures: v.counters.oracle_fallback_failures,
                    })
                    .collect(),
            ),
            None => (Counters::default(), Vec::new()),
        };
        ValidationMetrics {
            oracle: self.oracle_name.clone(),
            comparison: self.settings.comparison,
            fallback: self.settings.fallback,
            queued,
            validated: totals.validated,
            matched: totals.matched,
            match_rate: rate(totals.matched, totals.validated),
            skipped_queue_full: totals.skipped_queue_full,
            skipped_no_oracle: self.shared.skipped_no_oracle.load(Ordering::Relaxed),
            skipped_shutdown: self.shared.skipped_shutdown.load(Ordering::Relaxed),
            skipped_not_logged: self.shared.skipped_not_logged.load(Ordering::Relaxed),
            oracle_errors: totals.oracle_errors,
            oracle_fallbacks: totals.oracle_fallbacks,
            oracle_fallback_failures: totals.oracle_fallback_failures,
            versions,
        }
    }
}

impl Barrier {
    /// Arrival on behalf of a worker that is gone (shutdown): no waiting.
    fn arrive_without_waiting(&self) {
        let mut left = self.remaining.lock();
        *left = left.saturating_sub(1);
        if *left == 0 {
            self.cv.notify_all();
        }
    }
}

/// Sends on `exited` when a worker ends, however it ends.
struct ExitGuard(Sender<()>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

impl Pool {
    fn start(ctx: Arc<WorkerContext>) -> Result<Pool> {
        let workers = ctx.settings.workers.max(1);
        let (tx, rx) = bounded(ctx.settings.queue_capacity.max(1));
        let (stop, stop_rx) = bounded::<()>(0);
        let (exited_tx, exited) = bounded(workers);
        let mut handles = Vec::with_capacity(workers);
        for i in 0..workers {
            let (ctx, rx, stop_rx, exited_tx) =
                (ctx.clone(), rx.clone(), stop_rx.clone(), exited_tx.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("loopai-validate-{i}"))
                .spawn(move || {
                    let _exit = ExitGuard(exited_tx);
                    work(&ctx, &rx, &stop_rx);
                });
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    // Stop the workers already started before reporting.
                    drop(stop);
                    for h in handles {
                        let _ = h.join();
                    }
                    return Err(Error::io("starting a validation worker thread", e));
                }
            }
        }
        Ok(Pool {
            tx,
            rx,
            stop: Mutex::new(Some(stop)),
            handles: Mutex::new(handles),
            exited,
            exits_seen: Mutex::new(0),
            flush_send: Mutex::new(()),
            workers,
        })
    }
}

fn work(ctx: &WorkerContext, rx: &Receiver<Msg>, stop: &Receiver<()>) {
    loop {
        select! {
            recv(rx) -> msg => match msg {
                Ok(msg) => handle(ctx, msg),
                Err(_) => return,
            },
            recv(stop) -> _ => break,
        }
    }
    // Shutting down: drain what is queued unless told to abandon it.
    while let Ok(msg) = rx.try_recv() {
        match msg {
            Msg::Validate(_) if ctx.shared.abandon.load(Ordering::Acquire) => {
                ctx.shared.skipped_shutdown.fetch_add(1, Ordering::Relaxed);
            }
            Msg::Barrier(b) => b.arrive_without_waiting(),
            msg => handle(ctx, msg),
        }
    }
}

fn handle(ctx: &WorkerContext, msg: Msg) {
    match msg {
        Msg::Barrier(b) => b.arrive(),
        Msg::Validate(job) => {
            // Nothing in here may take the worker down: a panic is a lost validation.
            if catch_unwind(AssertUnwindSafe(|| validate(ctx, job))).is_err() {
                ctx.shared
                    .warn
                    .warn(format_args!("a validation panicked (a bug in loopai)"));
            }
        }
    }
}

fn validate(ctx: &WorkerContext, job: Job) {
    let start = Instant::now();
    let asked = ctx.task.ask(
        ctx.oracle.as_ref(),
        &job.labels,
        &job.input,
        ctx.settings.request_timeout,
    );
    let latency_ms = start.elapsed().as_secs_f64() * 1e3;
    let (oracle_output, cost) = match asked {
        Ok(answer) => answer,
        Err(e) => {
            ctx.shared.count(job.version, |c| c.oracle_errors += 1);
            ctx.shared.warn.warn(format_args!(
                "task {:?}: validation of execution {} failed: {e}",
                ctx.task.task, job.execution_id
            ));
            return;
        }
    };
    let mode = ctx.settings.comparison;
    let cmp = compare_outputs(
        mode,
        ctx.settings.fuzzy_threshold,
        &job.output,
        &oracle_output,
    );
    ctx.shared.validated(job.version, cmp.matched);
    if let Some(hook) = &ctx.hook {
        hook(job.version, job.reason, cmp.matched);
    }
    let record = ValidationRecord::new(
        job.execution_id,
        job.version,
        oracle_output,
        latency_ms,
        cost,
        cmp.matched,
        cmp.similarity,
        comparison_name(mode),
        Timestamp(ctx.clock.now_millis()),
    );
    if let Err(e) = ctx.writer.log_validation(record) {
        ctx.shared.warn.warn(format_args!(
            "task {:?}: could not log the validation of execution {}: {e}",
            ctx.task.task, job.execution_id
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cmp(mode: ComparisonMode, a: Value, b: Value) -> (bool, f64) {
        let c = compare_outputs(mode, 0.8, &a, &b);
        (c.matched, c.similarity)
    }

    #[test]
    fn exact_needs_equal_values() {
        use ComparisonMode::Exact;
        assert_eq!(cmp(Exact, json!("spam"), json!("spam")), (true, 1.0));
        assert_eq!(cmp(Exact, json!("spam"), json!("Spam")), (false, 0.0));
        assert_eq!(cmp(Exact, json!({"n": 1}), json!({"n": 1.0})), (true, 1.0));
        assert_eq!(cmp(Exact, json!(null), json!("spam")), (false, 0.0));
    }

    #[test]
    fn normalized_ignores_case_whitespace_and_compatibility_forms() {
        use ComparisonMode::Normalized;
        assert_eq!(
            cmp(Normalized, json!("  New\tYork "), json!("new york")),
            (true, 1.0)
        );
        // NFKC: the "ﬁ" ligature and full-width letters.
        assert_eq!(
            cmp(Normalized, json!("ﬁle ＡＢＣ"), json!("file abc")),
            (true, 1.0)
        );
        assert_eq!(
            cmp(Normalized, json!({"a": " X "}), json!({"a": "x"})),
            (true, 1.0)
        );
        assert_eq!(
            cmp(Normalized, json!("new york"), json!("newyork")),
            (false, 0.0)
        );
    }

    #[test]
    fn fuzzy_uses_normalized_edit_similarity_against_the_threshold() {
        use ComparisonMode::Fuzzy;
        let (m, s) = cmp(Fuzzy, json!("Jonathan Smith"), json!("jonathon smith"));
        assert!(m && (s - (1.0 - 1.0 / 14.0)).abs() < 1e-9, "{s}");
        let (m, s) = cmp(Fuzzy, json!("kitten"), json!("sitting"));
        assert!(!m && (s - (1.0 - 3.0 / 7.0)).abs() < 1e-9, "{s}");
        // Objects: mean over the union of fields; a missing field counts 0.
        let (m, s) = cmp(
            Fuzzy,
            json!({"a": "abcd", "b": 1}),
            json!({"a": "abce", "b": 1, "c": 2}),
        );
        assert!(!m && (s - (0.75 + 1.0) / 3.0).abs() < 1e-9, "{s}");
        assert_eq!(cmp(Fuzzy, json!(""), json!("")), (true, 1.0));
    }

    #[test]
    fn structured_scores_the_fraction_of_matching_fields() {
        use ComparisonMode::Structured;
        assert_eq!(
            cmp(
                Structured,
                json!({"name": "Ann", "zip": "1000", "n": 2}),
                json!({"name": "ann ", "zip": "1001", "n": 2.0})
            ),
            (false, 2.0 / 3.0)
        );
        assert_eq!(
            cmp(Structured, json!({"a": 1}), json!({"a": 1, "b": 2})),
            (false, 0.5)
        );
        assert_eq!(
            cmp(Structured, json!({"a": "X"}), json!({"a": "x"})),
            (true, 1.0)
        );
        assert_eq!(cmp(Structured, json!({}), json!({})), (true, 1.0));
        assert_eq!(cmp(Structured, json!("Spam"), json!("spam")), (true, 1.0));
    }

    #[test]
    fn the_rolling_window_keeps_the_last_validations() {
        let shared = Shared::default();
        for i in 0..(ROLLING_WINDOW + 500) {
            // The first 1000 match, the last 500 do not.
            shared.validated(3, i < ROLLING_WINDOW);
        }
        let state = shared.state.lock();
        let v = &state.versions[&3];
        assert_eq!(v.counters.validated, 1500);
        assert_eq!(v.counters.matched, 1000);
        assert_eq!(v.window.len(), ROLLING_WINDOW);
        assert_eq!(v.window_matched, 500);
    }

    #[test]
    fn old_versions_are_forgotten_but_totals_stay() {
        let shared = Shared::default();
        for v in 0..(MAX_VERSIONS as u32 + 5) {
            shared.validated(v, true);
        }
        let state = shared.state.lock();
        assert_eq!(state.versions.len(), MAX_VERSIONS);
        assert_eq!(state.versions.keys().next(), Some(&5));
        assert_eq!(state.totals.validated, MAX_VERSIONS as u64 + 5);
    }

    // -----------------------------------------------------------------------------------
    // Through the runtime: validation, queue, cascade, shutdown, fork.

    use crate::artifact::ArtifactStore;
    use crate::config::DeploymentConfig;
    use crate::dataset::{ExecutionSource, ExecutionStatus};
    use crate::oracle::test_server::{Reply, TestServer};
    use crate::oracle::{FnOracle, OracleAnswer};
    use crate::runtime::Runtime;
    use std::path::Path;
    use std::sync::mpsc;

    /// "prize" → spam (0.95); anything else → ham (0.55), an abstention (below 0.6).
    const RULES: &[u8] = br#"{"format": "loopai.program/1", "task": "spam",
      "description": "Flags SMS spam.",
      "inputs": [{"name": "text", "path": "/text", "type": "text"}],
      "features": [{"name": "prize", "op": "keywords", "source": "text", "terms": ["prize"]}],
      "decide": {"op": "rules", "rules": [
        {"when": {"feature": "prize", "gt": 0}, "then": "spam", "confidence": 0.95},
        {"when": {"always": true}, "then": "ham", "confidence": 0.55}]},
      "output": {"kind": "label", "labels": ["spam", "ham"], "abstain_below": 0.6}}"#;

    const SAMPLE_ALL: &str = "sampling:\n  strategy: random\n  rate: 1\n";

    fn runtime(
        dir: &Path,
        yaml: &str,
        oracle: Option<Arc<dyn Oracle>>,
    ) -> crate::error::Result<Runtime> {
        if ArtifactStore::open(dir, "spam")
            .unwrap()
            .load_active()
            .unwrap()
            .is_none()
        {
            crate::testing::install(dir, RULES, true);
        }
        let mut b = Runtime::builder()
            .data_dir(dir)
            .task("spam")
            .config(DeploymentConfig::from_yaml_str(yaml, "test").unwrap());
        if let Some(o) = oracle {
            b = b.oracle(o);
        }
        b.build()
    }

    fn lines(dir: &Path, sub: &str) -> Vec<Value> {
        let Ok(entries) = std::fs::read_dir(dir.join("datasets/spam").join(sub)) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in entries {
            let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
            out.extend(
                text.lines()
                    .map(|l| serde_json::from_str::<Value>(l).unwrap()),
            );
        }
        out
    }

    const FLUSH: Duration = Duration::from_secs(10);

    #[test]
    fn sampled_executions_are_validated_and_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let oracle = FnOracle::shared(move |req| {
            s.lock()
                .push(serde_json::from_str::<Value>(&req.to_json()).unwrap());
            Ok(OracleAnswer::new(json!("spam")).with_cost(3.0))
        });
        let rt = runtime(dir.path(), SAMPLE_ALL, Some(oracle)).unwrap();
        let a = rt.execute(&json!({"text": "a prize"})).unwrap();
        let b = rt.execute(&json!({"text": "hello"})).unwrap();
        assert!(a.sampled && b.sampled);
        rt.flush(FLUSH).unwrap();

        let m = rt.validation_metrics();
        assert_eq!(m.oracle.as_deref(), Some("in-process"));
        assert_eq!((m.validated, m.matched, m.match_rate), (2, 1, Some(0.5)));
        assert_eq!(m.versions.len(), 1);
        let v = &m.versions[0];
        assert_eq!(
            (v.version, v.rolling_validated, v.rolling_match_rate),
            (1, 2, Some(0.5))
        );
        assert_eq!(rt.health().validation, m);

        let mut records = lines(dir.path(), "validations");
        records.sort_by_key(|r| r["match"].as_bool());
        assert_eq!(records.len(), 2);
        assert_eq!(records[0]["execution_id"], b.execution_id.to_string());
        assert_eq!(records[0]["match"], false);
        assert_eq!(records[0]["similarity_score"], 0.0);
        assert_eq!(records[1]["execution_id"], a.execution_id.to_string());
        assert_eq!(records[1]["match"], true);
        for r in &records {
            assert_eq!(r["oracle_output"], "spam");
            assert_eq!(r["oracle_cost"], 3.0);
            assert_eq!(r["comparison_method"], "exact");
            assert_eq!(r["program_version"], 1);
        }
        let stats = rt.stats(1).unwrap();
        assert_eq!(stats[0].validations.match_rate, Some(0.5));

        let seen = seen.lock();
        assert_eq!(seen[0]["task"], "spam");
        assert_eq!(seen[0]["description"], "Flags SMS spam.");
        assert_eq!(seen[0]["labels"], json!(["spam", "ham"]));
        assert_eq!(seen[0]["timeout_ms"], 10_000);
        let inputs: Vec<&Value> = seen.iter().map(|r| &r["input"]).collect();
        assert!(inputs.contains(&&json!({"text": "hello"})), "{inputs:?}");
    }

    /// Issue #15: the oracle is an outbound call; it must never be sent an execution that
    /// the local log lacks. The day's file is made a directory, so the log cannot be
    /// written; the oracle checks at every call that the input is in the log.
    #[test]
    fn the_oracle_never_sees_an_execution_the_local_log_lacks() {
        use crate::testing::{wait_for, TestClock, DAY, DAY1};
        let dir = tempfile::tempdir().unwrap();
        crate::testing::install(dir.path(), RULES, true);
        let executions = dir.path().join("datasets/spam/executions");
        let calls = Arc::new(Mutex::new(Vec::new()));
        let (c, logs) = (calls.clone(), executions.clone());
        let oracle = FnOracle::shared(move |req| {
            let text = req.input["text"].as_str().unwrap_or_default().to_owned();
            let logged = ["2025-11-25.jsonl", "2025-11-26.jsonl"].iter().any(|day| {
                std::fs::read_to_string(logs.join(day)).is_ok_and(|log| log.contains(&text))
            });
            c.lock().push((text, logged));
            Ok(OracleAnswer::new(json!("ham")))
        });
        let clock = TestClock::at(DAY1 + 1000);
        let rt = Runtime::builder()
            .data_dir(dir.path())
            .task("spam")
            .clock(clock.clone())
            .config(DeploymentConfig::from_yaml_str(SAMPLE_ALL, "test").unwrap())
            .oracle(oracle)
            .build()
            .unwrap();
        let day_file = executions.join("2025-11-25.jsonl");
        std::fs::create_dir_all(&day_file).unwrap();
        assert!(rt.execute(&json!({"text": "stalled-1"})).unwrap().sampled);
        wait_for("a failed write", FLUSH, || {
            rt.health().dataset.write_errors > 0
        });
        // Whatever was queued for validation is validated now: the oracle would be asked
        // here if samples were queued before their records were logged.
        rt.flush_validation(FLUSH).unwrap();
        assert!(
            calls.lock().is_empty(),
            "asked before logging: {:?}",
            calls.lock()
        );
        assert_eq!(rt.validation_metrics().validated, 0);

        // The log recovers: the record is written (after the writer's backoff), then the
        // sample is validated.
        std::fs::remove_dir(&day_file).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Err(e) = rt.flush(FLUSH) {
            assert!(Instant::now() < deadline, "the log never recovered: {e}");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(*calls.lock(), vec![("stalled-1".to_owned(), true)]);
        assert_eq!(rt.validation_metrics().validated, 1);

        // A record still unwritten at shutdown never reaches the oracle, and is counted.
        clock.set(DAY1 + DAY + 1000);
        std::fs::create_dir_all(executions.join("2025-11-26.jsonl")).unwrap();
        rt.execute(&json!({"text": "stalled-2"})).unwrap();
        let err = rt.shutdown(Duration::from_secs(2)).unwrap_err();
        assert!(err.to_string().contains("could not be written"), "{err}");
        let m = rt.validation_metrics();
        assert_eq!((m.validated, m.skipped_not_logged), (1, 1));
        assert_eq!(calls.lock().len(), 1, "{:?}", calls.lock());
    }

    #[test]
    fn the_comparison_method_comes_from_the_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let oracle = FnOracle::shared(|_| Ok(OracleAnswer::new(json!(" SPAM "))));
        let yaml = format!("{SAMPLE_ALL}validation:\n  comparison: normalized\n");
        let rt = runtime(dir.path(), &yaml, Some(oracle)).unwrap();
        rt.execute(&json!({"text": "prize"})).unwrap();
        rt.flush(FLUSH).unwrap();
        let records = lines(dir.path(), "validations");
        // The answer was canonicalized to the label, then compared.
        assert_eq!(records[0]["oracle_output"], "spam");
        assert_eq!(records[0]["comparison_method"], "normalized");
        assert_eq!(records[0]["match"], true);
    }

    /// An oracle that signals when it is entered and blocks until released.
    fn gated() -> (Arc<dyn Oracle>, mpsc::Receiver<()>, mpsc::Sender<()>) {
        let (entered_tx, entered) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<()>();
        let entered_tx = Mutex::new(entered_tx);
        let release_rx = Mutex::new(release_rx);
        let oracle = FnOracle::shared(move |_| {
            let _ = entered_tx.lock().send(());
            let _ = release_rx.lock().recv();
            Ok(OracleAnswer::new(json!("spam")))
        });
        (oracle, entered, release)
    }

    #[test]
    fn a_full_queue_skips_samples_and_never_blocks_execute() {
        let dir = tempfile::tempdir().unwrap();
        let (oracle, entered, release) = gated();
        let yaml = format!("{SAMPLE_ALL}validation:\n  workers: 1\n  queue_capacity: 1\n");
        let rt = runtime(dir.path(), &yaml, Some(oracle)).unwrap();
        rt.execute(&json!({"text": "prize"})).unwrap();
        entered.recv().unwrap(); // the only worker is now stuck in the oracle
        for _ in 0..4 {
            // Each returns although the oracle is blocked: one waits in the queue, three
            // find it full (once their records are in the log).
            assert!(rt.execute(&json!({"text": "prize"})).unwrap().sampled);
        }
        rt.flush_log(FLUSH).unwrap();
        let m = rt.validation_metrics();
        assert_eq!((m.skipped_queue_full, m.queued, m.validated), (3, 1, 0));
        assert_eq!(m.versions[0].skipped_queue_full, 3);
        release.send(()).unwrap();
        release.send(()).unwrap();
        rt.flush(FLUSH).unwrap();
        let m = rt.validation_metrics();
        assert_eq!((m.validated, m.matched, m.queued), (2, 2, 0));
        assert_eq!(lines(dir.path(), "validations").len(), 2);
        // Every execution is still logged.
        assert_eq!(lines(dir.path(), "executions").len(), 5);
    }

    #[test]
    fn concurrent_flushes_complete_and_validate_every_sample() {
        let dir = tempfile::tempdir().unwrap();
        let oracle = FnOracle::shared(|_| {
            std::thread::sleep(Duration::from_micros(200));
            Ok(OracleAnswer::new(json!("spam")))
        });
        let yaml = format!("{SAMPLE_ALL}validation:\n  workers: 2\n");
        let rt = runtime(dir.path(), &yaml, Some(oracle)).unwrap();
        // Interleaved barriers of two flushes would each hold a worker until the deadline.
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..25 {
                        rt.execute(&json!({"text": "prize"})).unwrap();
                        rt.flush(FLUSH).unwrap();
                    }
                });
            }
        });
        assert_eq!(rt.validation_metrics().validated, 200);
    }

    #[test]
    fn oracle_failures_are_counted_and_never_reach_execute() {
        let dir = tempfile::tempdir().unwrap();
        let calls = Arc::new(AtomicU64::new(0));
        let c = calls.clone();
        let oracle = FnOracle::shared(move |_| match c.fetch_add(1, Ordering::SeqCst) {
            0 => Err(Error::new(ErrorKind::Oracle, "unreachable")),
            1 => Ok(OracleAnswer::new(json!("maybe"))),
            _ => panic!("oracle bug"),
        });
        let rt = runtime(dir.path(), SAMPLE_ALL, Some(oracle)).unwrap();
        for _ in 0..3 {
            rt.execute(&json!({"text": "prize"})).unwrap();
        }
        rt.flush(FLUSH).unwrap();
        let m = rt.validation_metrics();
        assert_eq!((m.oracle_errors, m.validated), (3, 0));
        assert_eq!(m.versions[0].oracle_errors, 3);
        assert!(lines(dir.path(), "validations").is_empty());
        // The workers survived the panic.
        assert!(rt.execute(&json!({"text": "prize"})).is_ok());
        rt.flush(FLUSH).unwrap();
        assert_eq!(rt.validation_metrics().oracle_errors, 4);
    }

    #[test]
    fn without_an_oracle_or_telemetry_nothing_is_sampled() {
        let dir = tempfile::tempdir().unwrap();
        // Nothing would ever validate a sample: the sampler is off, whatever the rate.
        let rt = runtime(dir.path(), SAMPLE_ALL, None).unwrap();
        for _ in 0..20 {
            assert!(!rt.execute(&json!({"text": "prize"})).unwrap().sampled);
        }
        rt.flush(FLUSH).unwrap();
        let h = rt.health();
        assert_eq!(h.validation.oracle, None);
        assert_eq!(h.validation.skipped_no_oracle, 0);
        assert_eq!(h.validation.validated, 0);
        rt.shutdown(FLUSH).unwrap();

        // Telemetry uploads samples to the cloud, which validates them: sampled, and
        // counted as not validated here.
        let yaml = format!(
            "{SAMPLE_ALL}telemetry:\n  enabled: true\ncloud:\n  api_url: http://127.0.0.1:9\n"
        );
        let rt = runtime(dir.path(), &yaml, None).unwrap();
        assert!(rt.execute(&json!({"text": "prize"})).unwrap().sampled);
        // (Not flush: it would wait for the upload to the unreachable cloud.) The count is
        // taken in `execute`.
        let h = rt.health();
        assert_eq!(h.validation.oracle, None);
        assert_eq!(h.validation.skipped_no_oracle, 1);
        assert_eq!(h.validation.validated, 0);
        drop(rt.shutdown(FLUSH));
        let err = runtime(dir.path(), "execution:\n  fallback: oracle\n", None).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(
            err.to_string()
                .starts_with("execution.fallback: \"oracle\" requires an oracle"),
            "{err}"
        );
    }

    #[test]
    fn an_in_process_oracle_wins_over_the_configured_one() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = "oracle:\n  base_url: http://127.0.0.1:9/v1\n  model: m\n  api_key_env: LOOPAI_TEST_UNSET_KEY_VAR\n";
        let err = runtime(dir.path(), yaml, None).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        let oracle = FnOracle::shared(|_| Ok(OracleAnswer::new(json!("ham"))));
        let rt = runtime(dir.path(), yaml, Some(oracle)).unwrap();
        assert_eq!(
            rt.validation_metrics().oracle.as_deref(),
            Some("in-process")
        );
    }

    #[test]
    fn the_configured_http_oracle_validates_samples() {
        let server = TestServer::start(vec![Reply::content("ham")]);
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!(
            "{SAMPLE_ALL}oracle:\n  base_url: {}\n  model: test-model\n  timeout_ms: 5000\n",
            server.base_url()
        );
        let rt = runtime(dir.path(), &yaml, None).unwrap();
        let name = rt.validation_metrics().oracle.unwrap();
        assert!(
            name.starts_with("http test-model at http://127.0.0.1:"),
            "{name}"
        );
        rt.execute(&json!({"text": "hello"})).unwrap();
        rt.flush(FLUSH).unwrap();
        let records = lines(dir.path(), "validations");
        assert_eq!(records.len(), 1);
        assert_eq!(records[0]["oracle_output"], "ham");
        assert_eq!(records[0]["oracle_cost"], 42.0);
        assert_eq!(records[0]["match"], true);
        let got = server.received();
        let system = got[0].body["messages"][0]["content"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(system.contains("Flags SMS spam."), "{system}");
    }

    #[test]
    fn cascade_returns_the_oracle_answer_for_abstentions() {
        let dir = tempfile::tempdir().unwrap();
        let timeouts = Arc::new(Mutex::new(Vec::new()));
        let t = timeouts.clone();
        let oracle = FnOracle::shared(move |req| {
            t.lock().push(req.timeout);
            Ok(OracleAnswer::new(json!("Spam")))
        });
        let yaml = format!("{SAMPLE_ALL}execution:\n  fallback: oracle\n  timeout_ms: 800\n");
        let rt = runtime(dir.path(), &yaml, Some(oracle)).unwrap();
        let r = rt.execute(&json!({"text": "hello"})).unwrap();
        assert_eq!(r.output, "spam");
        assert_eq!(r.status, ExecutionStatus::Success);
        assert_eq!(r.source, ExecutionSource::Oracle);
        assert!(
            !r.sampled,
            "an oracle answer is not validated against the oracle"
        );
        assert_eq!(r.confidence, 0.55, "confidence stays the program's");
        // Asked once, with what was left of execution.timeout_ms.
        let first = timeouts.lock().clone();
        assert_eq!(first.len(), 1);
        assert!(first[0] <= Duration::from_millis(800), "{first:?}");
        // A confident program answer does not ask the oracle (beyond its validation).
        let p = rt.execute(&json!({"text": "prize"})).unwrap();
        assert_eq!(
            (p.source, p.status),
            (ExecutionSource::Program, ExecutionStatus::Success)
        );
        rt.flush(FLUSH).unwrap();
        let execs = lines(dir.path(), "executions");
        let logged = execs
            .iter()
            .find(|e| e["execution_id"] == r.execution_id.to_string())
            .unwrap();
        assert_eq!(
            (&logged["source"], &logged["output"], &logged["status"]),
            (&json!("oracle"), &json!("spam"), &json!("success"))
        );
        let logged = execs
            .iter()
            .find(|e| e["execution_id"] == p.execution_id.to_string())
            .unwrap();
        assert_eq!(logged["source"], "program");
        let m = rt.validation_metrics();
        assert_eq!(
            (m.oracle_fallbacks, m.oracle_fallback_failures, m.validated),
            (1, 0, 1)
        );
        assert!(m.fallback);
        // Cascade answers are not validations.
        assert_eq!(lines(dir.path(), "validations").len(), 1);
    }

    #[test]
    fn cascade_failures_return_the_abstention() {
        let dir = tempfile::tempdir().unwrap();
        let calls = Arc::new(AtomicU64::new(0));
        let c = calls.clone();
        let oracle = FnOracle::shared(move |_| match c.fetch_add(1, Ordering::SeqCst) {
            0 => Err(Error::new(ErrorKind::Oracle, "down")),
            1 => Ok(OracleAnswer::new(json!("not a label"))),
            _ => {
                // Ignores its timeout: the answer comes too late to be used.
                std::thread::sleep(Duration::from_millis(100));
                Ok(OracleAnswer::new(json!("spam")))
            }
        });
        let yaml = "execution:\n  fallback: oracle\n  timeout_ms: 20\nsampling:\n  rate: 0\n";
        let rt = runtime(dir.path(), yaml, Some(oracle)).unwrap();
        for _ in 0..3 {
            let r = rt.execute(&json!({"text": "hello"})).unwrap();
            assert_eq!(
                (r.output.as_str(), r.status, r.source),
                (
                    Some("ham"),
                    ExecutionStatus::Abstain,
                    ExecutionSource::Program
                )
            );
        }
        let m = rt.validation_metrics();
        assert_eq!((m.oracle_fallbacks, m.oracle_fallback_failures), (0, 3));
        assert_eq!(m.versions[0].oracle_fallback_failures, 3);
    }

    #[test]
    fn shutdown_does_not_wait_for_a_stuck_oracle() {
        let dir = tempfile::tempdir().unwrap();
        let (oracle, entered, release) = gated();
        let yaml = format!("{SAMPLE_ALL}validation:\n  workers: 1\n");
        let rt = runtime(dir.path(), &yaml, Some(oracle)).unwrap();
        rt.execute(&json!({"text": "prize"})).unwrap();
        entered.recv().unwrap();
        rt.execute(&json!({"text": "prize"})).unwrap(); // queued behind the stuck one
                                                        // Long enough for the log to close even on a loaded machine; the stuck worker
                                                        // still outlasts it.
        let err = rt.shutdown(Duration::from_secs(2)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout);
        assert!(
            err.to_string()
                .contains("1 of 1 workers still waiting on the oracle"),
            "{err}"
        );
        let m = rt.validation_metrics();
        assert_eq!(m.skipped_shutdown, 1);
        // The execution log was still closed properly.
        assert_eq!(lines(dir.path(), "executions").len(), 2);
        assert_eq!(
            rt.execute(&json!({"text": "x"})).unwrap_err().kind(),
            ErrorKind::Closed
        );
        // Once the oracle returns, the worker exits and a second shutdown joins it.
        release.send(()).unwrap();
        rt.shutdown(Duration::from_secs(10)).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_forked_child_neither_validates_nor_hangs() {
        let dir = tempfile::tempdir().unwrap();
        let oracle = FnOracle::shared(|_| Ok(OracleAnswer::new(json!("spam"))));
        let rt = runtime(dir.path(), SAMPLE_ALL, Some(oracle)).unwrap();
        rt.execute(&json!({"text": "prize"})).unwrap();
        rt.flush(FLUSH).unwrap();
        // SAFETY: the child only reads metrics and calls methods that fail fast, then _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let closed =
                |r: crate::error::Result<()>| matches!(r, Err(e) if e.kind() == ErrorKind::Closed);
            let ok = rt.execute(&json!({"text": "prize"})).is_err()
                && closed(rt.flush(Duration::from_millis(10)))
                && closed(rt.shutdown(Duration::from_millis(10)))
                && rt.validation_metrics().validated == 1;
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child checks failed"
        );
        rt.execute(&json!({"text": "prize"})).unwrap();
        rt.flush(FLUSH).unwrap();
        assert_eq!(rt.validation_metrics().validated, 2);
    }

    #[test]
    fn public_validation_types_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<ValidationMetrics>();
        check::<Comparison>();
        check::<crate::oracle::HttpOracle>();
        check::<Validator>();
    }
}
