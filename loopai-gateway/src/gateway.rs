//! The facade: the registry of gateway tasks, the decision on each call, recording the
//! upstream's answers, and the background threads.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use crossbeam_channel::{bounded, Receiver, Sender};
use loopai_core::{
    ArtifactStore, Clock, DeploymentConfig, Error, ErrorKind, ExecutionStatus, Fallback,
    GatewayConfig, InputMapping, KeyRing, LearnConfig, Result, Runtime, SystemClock, Timestamp,
};
use loopai_synth::TaskSpec;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::calibrate::{choose_threshold, guarded, margin, pairs_needed, Estimate, DRIFT_WINDOW};
use crate::calls::{self, CallKind, CallRecord, ProgramAnswer, Source, Writer};
use crate::canary::{Canary, CanaryOutcome, CanaryStatus, Shadow};
use crate::chat::{self, ChatRequest};
use crate::extract::Answers;
use crate::learn::{self, LearnReport, Stored};

/// New calibration pairs that trigger a re-estimate of the threshold.
pub(crate) const RECALIBRATE_EVERY: usize = 32;
/// Calibration pairs kept per version (the newest).
pub(crate) const MAX_PAIRS: usize = 50_000;

/// The learner thread's name.
const LEARNER_THREAD: &str = "loopai-gateway-learn";

/// `gateway.max_disagreement`'s default.
pub const DEFAULT_MAX_DISAGREEMENT: f64 = 0.02;

/// A gateway task's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TaskState {
    /// No program yet: every call is forwarded.
    Shadow,
    /// A program is installed, but no threshold meets the disagreement budget.
    Learning,
    /// Calls above the calibrated threshold are answered locally.
    Serving,
}

impl TaskState {
    /// `shadow`, `learning` or `serving`.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Shadow => "shadow",
            TaskState::Learning => "learning",
            TaskState::Serving => "serving",
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) calls: AtomicU64,
    pub(crate) local: AtomicU64,
    pub(crate) forwarded: AtomicU64,
    pub(crate) upstream_errors: AtomicU64,
    pub(crate) oracle_labels: AtomicU64,
    pub(crate) outside_labels: AtomicU64,
    pub(crate) upstream_tokens: AtomicU64,
    pub(crate) token_calls: AtomicU64,
    pub(crate) validations: AtomicU64,
    pub(crate) validation_disagreements: AtomicU64,
    pub(crate) validation_calls: AtomicU64,
}

/// The calibration of the running version.
#[derive(Debug, Default)]
pub(crate) struct Calibration {
    pub(crate) version: u32,
    pub(crate) pairs: Vec<(f64, bool)>,
    pub(crate) new_pairs: usize,
    pub(crate) estimate: Option<Estimate>,
    /// The latest validations of `version` (`true`: agreed), at most
    /// [`DRIFT_WINDOW`]: the drift guard's evidence.
    pub(crate) validations: VecDeque<bool>,
}

impl Calibration {
    /// Records a validation of the running version.
    pub(crate) fn push_validation(&mut self, agreed: bool) {
        if self.validations.len() == DRIFT_WINDOW {
            self.validations.pop_front();
        }
        self.validations.push_back(agreed);
    }
}

#[derive(Debug)]
pub(crate) struct Task {
    pub(crate) index: usize,
    pub(crate) name: String,
    pub(crate) spec: TaskSpec,
    /// Its labels, or its output's fields.
    pub(crate) answers: Answers,
    pub(crate) budget: f64,
    pub(crate) input: InputMapping,
    pub(crate) runtime: ArcSwapOption<Runtime>,
    /// The threshold's bits; NaN when there is none.
    threshold: AtomicU64,
    pub(crate) counters: Counters,
    pub(crate) calibration: Mutex<Calibration>,
    /// Labels at the start of the last learning pass (0: never).
    pub(crate) learned_at: AtomicU64,
    pub(crate) learn_queued: AtomicBool,
    pub(crate) learning: AtomicBool,
    pub(crate) learn_lock: Mutex<()>,
    pub(crate) last_learn: Mutex<Option<std::result::Result<LearnReport, String>>>,
    /// The candidate version in canary, run in shadow on calls the upstream answers.
    pub(crate) shadow: ArcSwapOption<Shadow>,
    /// What its canary has seen.
    pub(crate) canary: Mutex<Option<Canary>>,
    pub(crate) last_canary: Mutex<Option<CanaryOutcome>>,
    /// The probability that a local answer is validated (bits of an f64).
    validation_rate: AtomicU64,
}

impl Task {
    pub(crate) fn threshold(&self) -> Option<f64> {
        let t = f64::from_bits(self.threshold.load(Ordering::Acquire));
        (!t.is_nan()).then_some(t)
    }

    pub(crate) fn set_threshold(&self, t: Option<f64>) {
        self.threshold
            .store(t.unwrap_or(f64::NAN).to_bits(), Ordering::Release);
    }

    /// The probability that a local answer is sent to the upstream for validation.
    pub(crate) fn validation_rate(&self) -> f64 {
        f64::from_bits(self.validation_rate.load(Ordering::Relaxed))
    }

    /// Sets the validation rate from the estimate the threshold was chosen on:
    /// `sampling.rate` while the pairs at or above the threshold are fewer than one bound
    /// needs ([`pairs_needed`]), then in proportion to what a new pair still adds to the
    /// bound (`needed / answered`), never below a fifth of `sampling.rate` (the drift
    /// guard's floor).
    pub(crate) fn set_validation_rate(&self, sampling_rate: f64, estimate: Option<&Estimate>) {
        let needed = pairs_needed(self.budget) as f64;
        let rate = match estimate {
            Some(e) if e.threshold.is_some() && e.answered as f64 > needed => {
                (sampling_rate * needed / e.answered as f64).max(sampling_rate / 5.0)
            }
            _ => sampling_rate,
        };
        self.validation_rate
            .store(rate.to_bits(), Ordering::Relaxed);
    }

    pub(crate) fn labels_total(&self) -> u64 {
        self.spec.examples.len() as u64 + self.counters.oracle_labels.load(Ordering::Relaxed)
    }

    fn state(&self) -> TaskState {
        match (self.runtime.load().is_some(), self.threshold().is_some()) {
            (false, _) => TaskState::Shadow,
            (true, false) => TaskState::Learning,
            (true, true) => TaskState::Serving,
        }
    }
}

pub(crate) enum Job {
    Task(usize),
    /// A canary verdict is due (calibrator only).
    Canary(usize),
    Stop,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) data_dir: PathBuf,
    pub(crate) runtime_config: DeploymentConfig,
    /// The keys of `storage.encryption`, loaded once at start: the call log and
    /// `gateway.json` are encrypted with them.
    pub(crate) keys: Option<Arc<KeyRing>>,
    pub(crate) gateway: GatewayConfig,
    pub(crate) learn: LearnConfig,
    pub(crate) tasks: Vec<Arc<Task>>,
    by_name: HashMap<String, usize>,
    pub(crate) sampling_rate: f64,
    pub(crate) writer: Writer,
    /// Held while a learning pass or a canary verdict installs or activates a version, and
    /// by `shutdown` while it closes: nothing is installed after `shutdown` returns.
    pub(crate) install_lock: Mutex<()>,
    learn_tx: Sender<JobBox>,
    calibrate_tx: Sender<JobBox>,
    /// Re-estimates queued or running.
    pub(crate) calibrating: AtomicU64,
    handles: Mutex<Vec<JoinHandle<()>>>,
    untasked: AtomicU64,
    untasked_errors: AtomicU64,
    closed: AtomicBool,
    shutting_down: AtomicBool,
    clock: SystemClock,
}

/// `Job` behind a newtype so that `Inner` can derive `Debug`.
pub(crate) struct JobBox(Job);

impl std::fmt::Debug for JobBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

/// The gateway: every task of a data directory that has a stored specification, the
/// decision on each call, what the upstream answered, and learning in the background.
///
/// Cheap to clone (an `Arc`); `Send + Sync`. See the crate documentation.
#[derive(Debug, Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

/// What the program answered, for a call answered locally.
#[derive(Debug)]
#[non_exhaustive]
pub struct LocalAnswer {
    /// The task.
    pub task: String,
    /// The execution id (the completion's `id`).
    pub execution_id: Uuid,
    /// The completion's content: the label.
    pub content: String,
    /// The program's confidence.
    pub confidence: f64,
    /// The artifact version that answered.
    pub version: u32,
    /// Time in the program, in milliseconds.
    pub latency_ms: f64,
    /// When the sampler picked this call for validation: send the request to the upstream
    /// (in the background) and give its answer to [`Gateway::record_upstream`].
    pub validate: Option<Pending>,
}

/// A call to forward (or a local answer to validate): give it back to
/// [`Gateway::record_upstream`] with the upstream's answer, or to
/// [`Gateway::record_failure`] when the upstream failed.
#[derive(Debug)]
#[must_use = "give a pending call back with the upstream's answer or its failure"]
pub struct Pending {
    task: Option<Arc<Task>>,
    id: Uuid,
    kind: CallKind,
    input: Value,
    program: Option<ProgramAnswer>,
    program_latency_ms: Option<f64>,
    /// The canary candidate's answer, when one runs in shadow.
    candidate: Option<ProgramAnswer>,
}

impl Pending {
    /// The task of the call, if it has one.
    pub fn task(&self) -> Option<&str> {
        self.task.as_deref().map(|t| t.name.as_str())
    }

    /// The call's id.
    pub fn id(&self) -> Uuid {
        self.id
    }
}

/// What to do with a call.
#[derive(Debug)]
#[non_exhaustive]
pub enum Decision {
    /// Answer with the program's answer.
    Local(LocalAnswer),
    /// Forward the request, as received, to the upstream.
    Forward(Pending),
}

/// What the upstream answered (only its successful answers are recorded).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct UpstreamAnswer<'a> {
    /// `choices[0].message.content` (or a stream's concatenated `delta.content`).
    pub content: Option<&'a str>,
    /// `usage.total_tokens`, when given.
    pub total_tokens: Option<u64>,
    /// Time of the upstream call, in milliseconds.
    pub latency_ms: f64,
}

impl<'a> UpstreamAnswer<'a> {
    /// An answer with its content, tokens and latency.
    pub fn new(content: Option<&'a str>, total_tokens: Option<u64>, latency_ms: f64) -> Self {
        UpstreamAnswer {
            content,
            total_tokens,
            latency_ms,
        }
    }

    /// Reads `choices[0].message.content` and `usage.total_tokens` from a
    /// `chat.completion` object.
    pub fn from_completion(completion: &'a Value, latency_ms: f64) -> Self {
        UpstreamAnswer {
            content: completion
                .pointer("/choices/0/message/content")
                .and_then(Value::as_str),
            total_tokens: completion
                .pointer("/usage/total_tokens")
                .and_then(Value::as_u64),
            latency_ms,
        }
    }
}

/// What recording an upstream answer did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Recorded {
    /// The call has no task: counted only.
    Untasked,
    /// The answer was normalised to this label and recorded.
    Label(String),
    /// The answer is not one of the task's labels: logged and counted, not learnt from.
    Outside,
}

/// A task's figures (see `docs/gateway.md`).
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct TaskStats {
    /// The task.
    pub task: String,
    /// `shadow`, `learning` or `serving`.
    pub state: TaskState,
    /// Spec examples plus oracle labels.
    pub labels: u64,
    /// Examples in the spec.
    pub spec_examples: u64,
    /// The oracle's answers recorded as labels.
    pub oracle_labels: u64,
    /// The oracle's answers outside the label set.
    pub outside_labels: u64,
    /// Calls of the task.
    pub calls: u64,
    /// Calls answered locally.
    pub local: u64,
    /// Calls forwarded.
    pub forwarded: u64,
    /// `local / calls` (null before any call).
    pub coverage: Option<f64>,
    /// Calls sent to the upstream: forwarded calls and validations.
    pub upstream_calls: u64,
    /// Upstream calls that failed or answered an error.
    pub upstream_errors: u64,
    /// Tokens the upstream reported.
    pub upstream_tokens: u64,
    /// Local answers × the mean upstream tokens of a call.
    pub tokens_saved: u64,
    /// The active program's version.
    pub active_version: Option<u32>,
    /// The confidence threshold (null: every call is forwarded).
    pub threshold: Option<f64>,
    /// Disagreement among the calibration pairs at or above the threshold.
    pub disagreement: Option<f64>,
    /// Its one-sided 95% upper bound.
    pub disagreement_upper: Option<f64>,
    /// Calibration pairs of the active version.
    pub calibration_pairs: u64,
    /// The disagreement budget.
    pub max_disagreement: f64,
    /// Validations of local answers, and how many disagreed.
    pub validations: u64,
    /// Of those, how many disagreed.
    pub validation_disagreements: u64,
    /// A learning pass is queued or running.
    pub learning: bool,
    /// The last learning pass's error, if it failed.
    pub last_learn_error: Option<String>,
    /// The candidate version in canary, if any.
    pub canary: Option<CanaryStatus>,
    /// The outcome of the last canary.
    pub last_canary: Option<CanaryOutcome>,
    /// The probability that a local answer is validated now.
    pub validation_rate: f64,
}

/// Every gateway figure.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct GatewayStats {
    /// Calls with no task (forwarded untouched).
    pub untasked_calls: u64,
    /// Of those, how many the upstream failed.
    pub untasked_errors: u64,
    /// Call-log lines dropped because the queue was full.
    pub log_dropped: u64,
    /// Call-log write errors.
    pub log_write_errors: u64,
    /// Per task.
    pub tasks: Vec<TaskStats>,
}

/// The tasks of `data_dir` that have a stored specification (`artifacts/<task>/spec.json`),
/// sorted.
pub fn gateway_tasks(data_dir: &Path) -> Result<Vec<String>> {
    let dir = data_dir.join("artifacts");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("reading {}", dir.display()), e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        let path = entry.path();
        if path.join(loopai_synth::SPEC_FILE).is_file() {
            if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                if loopai_core::validate_task_id(name).is_ok() {
                    out.push(name.to_string());
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

fn runtime_config(config: &DeploymentConfig, data_dir: &Path) -> DeploymentConfig {
    let mut c = config.clone();
    // The upstream is the oracle of gateway tasks; the host validates through it.
    c.oracle = None;
    c.execution.fallback = Fallback::default();
    c.storage.data_dir = data_dir.to_path_buf();
    c
}

impl Gateway {
    /// Opens the gateway of `data_dir` with `config` (which must have a `gateway` section):
    /// loads every task with a stored specification and, where it has an active program, its
    /// runtime; restores the counters, labels and calibration from the call log; starts the
    /// log writer, the calibrator and the learner (low priority).
    ///
    /// With `storage.encryption` the call logs and `gateway.json` files are encrypted with
    /// its key (and read with it and its `old_keys`; files written in clear still read).
    ///
    /// Errors: [`ErrorKind::Config`] without a `gateway` section, for a key of
    /// `storage.encryption` that cannot be loaded (naming `storage.encryption.key_env` or
    /// `key_file`), for a route naming a task
    /// that has no specification, or for a spec that is neither a classification nor an
    /// extraction task; [`ErrorKind::Io`] for unreadable files; the runtime's errors for a task whose
    /// program cannot be loaded.
    pub fn open(data_dir: impl AsRef<Path>, config: &DeploymentConfig) -> Result<Gateway> {
        let data_dir = data_dir.as_ref().to_path_buf();
        let gateway = config.gateway.clone().ok_or_else(|| {
            Error::new(
                ErrorKind::Config,
                "gateway: the configuration has no gateway section",
            )
        })?;
        let keys = KeyRing::from_config(config)?.map(Arc::new);
        let names = gateway_tasks(&data_dir)?;
        let rt_config = runtime_config(config, &data_dir);
        for (i, route) in gateway.routes.iter().enumerate() {
            if !names.contains(&route.task) {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!(
                        "gateway.routes[{i}].task: {:?} has no stored specification in {} (add it with `loopai tasks add`)",
                        route.task,
                        data_dir.join("artifacts").display()
                    ),
                ));
            }
        }
        let mut tasks = Vec::new();
        let mut dirs = Vec::new();
        for (index, name) in names.iter().enumerate() {
            let task = Self::load_task(
                &data_dir,
                Some(&rt_config),
                keys.as_deref(),
                gateway.max_disagreement_of(name),
                gateway.input_of(name),
                index,
                name,
            )?;
            dirs.push(calls::calls_dir(&data_dir, name));
            tasks.push(Arc::new(task));
        }
        let (writer, writer_handle) = Writer::start(dirs, keys.clone())?;
        let (learn_tx, learn_rx) = bounded::<JobBox>(1024);
        let (calibrate_tx, calibrate_rx) = bounded::<JobBox>(1024);
        let by_name = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect();
        let inner = Arc::new(Inner {
            data_dir,
            runtime_config: rt_config,
            keys,
            gateway,
            learn: config.learn.clone(),
            tasks,
            by_name,
            sampling_rate: config.sampling.rate,
            writer,
            install_lock: Mutex::new(()),
            learn_tx,
            calibrate_tx,
            calibrating: AtomicU64::new(0),
            handles: Mutex::new(vec![writer_handle]),
            untasked: AtomicU64::new(0),
            untasked_errors: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            clock: SystemClock,
        });
        let weak = Arc::downgrade(&inner);
        let learner = std::thread::Builder::new()
            .name(LEARNER_THREAD.into())
            .spawn(move || learn::learner_loop(&weak, &learn_rx))
            .map_err(|e| Error::io("starting the gateway learner thread", e))?;
        let weak = Arc::downgrade(&inner);
        let calibrator = std::thread::Builder::new()
            .name("loopai-gateway-calibrate".into())
            .spawn(move || learn::calibrator_loop(&weak, &calibrate_rx))
            .map_err(|e| Error::io("starting the gateway calibrator thread", e))?;
        inner.handles.lock().extend([learner, calibrator]);
        let gw = Gateway { inner };
        for task in &gw.inner.tasks {
            let estimate = task.calibration.lock().estimate;
            task.set_validation_rate(gw.inner.sampling_rate, estimate.as_ref());
            gw.inner.maybe_learn(task);
        }
        Ok(gw)
    }

    pub(crate) fn load_task(
        data_dir: &Path,
        rt_config: Option<&DeploymentConfig>,
        keys: Option<&KeyRing>,
        budget: f64,
        input: InputMapping,
        index: usize,
        name: &str,
    ) -> Result<Task> {
        let spec = loopai_synth::load_spec(data_dir, name)?;
        let spec_path = loopai_synth::spec_path(data_dir, name)?;
        let spec_json = std::fs::read(&spec_path)
            .map_err(|e| Error::io(format!("reading {}", spec_path.display()), e))?;
        let answers = Answers::of(&spec, &spec_json).map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!("task {name:?}: not a classification or extraction task: {e}"),
            )
        })?;
        let store = ArtifactStore::open(data_dir, name)?;
        let active = store.active_version()?;
        let runtime = match (active, rt_config) {
            (Some(_), Some(rt_config)) => Some(Arc::new(
                Runtime::builder()
                    .data_dir(data_dir)
                    .task(name)
                    .config(rt_config.clone())
                    .build()?,
            )),
            _ => None,
        };
        let task = Task {
            index,
            name: name.to_string(),
            spec,
            answers,
            budget,
            input,
            runtime: ArcSwapOption::new(runtime),
            threshold: AtomicU64::new(f64::NAN.to_bits()),
            counters: Counters::default(),
            calibration: Mutex::new(Calibration::default()),
            learned_at: AtomicU64::new(0),
            learn_queued: AtomicBool::new(false),
            learning: AtomicBool::new(false),
            learn_lock: Mutex::new(()),
            last_learn: Mutex::new(None),
            shadow: ArcSwapOption::new(None),
            canary: Mutex::new(None),
            last_canary: Mutex::new(None),
            validation_rate: AtomicU64::new(0f64.to_bits()),
        };
        // Restore from the call log and the stored learning state.
        let stored = Stored::load(data_dir, name, keys)?;
        task.learned_at.store(stored.learned_at, Ordering::Relaxed);
        let active = match task.runtime.load().as_deref() {
            Some(rt) => Some(rt.active_version()),
            None => active,
        };
        let mut pairs = Vec::new();
        let mut validations = Calibration::default();
        // With three labels or more the pairs' scores are margins: pairs stored or logged
        // before margins were kept (confidences) are left out.
        let margins = matches!(&task.answers, Answers::Labels(l) if l.len() >= 3);
        if let Some(v) = active {
            if stored.version == v && (stored.margins || !margins) {
                pairs.extend(stored.holdout.iter().map(|p| (p.0, p.1)));
            }
        }
        let c = &task.counters;
        for r in calls::read_all(data_dir, name, keys)? {
            if r.kind == CallKind::Call {
                c.calls.fetch_add(1, Ordering::Relaxed);
                match r.source {
                    Source::Program => c.local.fetch_add(1, Ordering::Relaxed),
                    Source::Oracle => c.forwarded.fetch_add(1, Ordering::Relaxed),
                };
            } else {
                c.validations.fetch_add(1, Ordering::Relaxed);
                c.validation_calls.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(t) = r.upstream_tokens {
                c.upstream_tokens.fetch_add(t, Ordering::Relaxed);
                c.token_calls.fetch_add(1, Ordering::Relaxed);
            }
            if r.outside_labels {
                c.outside_labels.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(label) = &r.label {
                c.oracle_labels.fetch_add(1, Ordering::Relaxed);
                if let (Some(p), Some(v)) = (&r.program, active) {
                    if p.version == v {
                        let agreed = task.answers.agrees(&p.output, label);
                        if p.margin.is_some() || !margins {
                            pairs.push((p.score(), agreed));
                        }
                        if r.kind == CallKind::Validation {
                            validations.push_validation(agreed);
                            if !agreed {
                                c.validation_disagreements.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            }
        }
        if let (Some(v), Some(_)) = (active, rt_config) {
            let estimate = guarded(
                choose_threshold(&pairs, task.budget),
                &validations.validations,
                task.budget,
            );
            task.set_threshold(estimate.threshold);
            *task.calibration.lock() = Calibration {
                version: v,
                pairs,
                new_pairs: 0,
                estimate: Some(estimate),
                validations: validations.validations,
            };
        }
        Ok(task)
    }

    /// The gateway tasks, sorted.
    pub fn tasks(&self) -> Vec<String> {
        self.inner.tasks.iter().map(|t| t.name.clone()).collect()
    }

    /// Whether `task` is a gateway task.
    pub fn has_task(&self, task: &str) -> bool {
        self.inner.by_name.contains_key(task)
    }

    /// The runtime of `task`'s active program, if it has one.
    pub fn runtime(&self, task: &str) -> Option<Runtime> {
        let t = self.inner.task(task)?;
        let guard = t.runtime.load();
        guard.as_deref().cloned()
    }

    /// The task of a call: `header` (the `X-Loopai-Task` value) when given, else the first
    /// matching route. `Ok(None)`: no task (forward untouched).
    ///
    /// Errors: [`ErrorKind::InvalidInput`] when `header` names no gateway task.
    pub fn route(&self, header: Option<&str>, request: &ChatRequest) -> Result<Option<String>> {
        Ok(self.inner.route(header, request)?.map(|t| t.name.clone()))
    }

    /// Decides a call: answer it locally (the task's program is confident enough) or
    /// forward it. Runs the program when the task has one (microseconds; no I/O but the
    /// execution log's queue). The call is logged when answered locally, or when its
    /// forward is recorded.
    ///
    /// Errors: [`ErrorKind::InvalidInput`] for an unknown `header` task;
    /// [`ErrorKind::Schema`] when the task's input mapping cannot build the program's
    /// input from the messages (`messages: no message with role "user"`);
    /// [`ErrorKind::Closed`] after [`shutdown`](Self::shutdown).
    pub fn decide(&self, header: Option<&str>, request: &ChatRequest) -> Result<Decision> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(Error::new(ErrorKind::Closed, "the gateway is shut down"));
        }
        let Some(task) = inner.route(header, request)? else {
            inner.untasked.fetch_add(1, Ordering::Relaxed);
            return Ok(Decision::Forward(Pending {
                task: None,
                id: Uuid::new_v4(),
                kind: CallKind::Call,
                input: Value::Null,
                program: None,
                program_latency_ms: None,
                candidate: None,
            }));
        };
        let input = chat::build_input(&task.input, request)
            .map_err(|e| Error::new(ErrorKind::Schema, e.to_string()))?;
        task.counters.calls.fetch_add(1, Ordering::Relaxed);
        let runtime = task.runtime.load();
        let mut id = None;
        let mut program = None;
        let mut program_latency_ms = None;
        if let Some(rt) = runtime.as_deref() {
            match rt.execute(&input) {
                Ok(result) => {
                    id = Some(result.execution_id);
                    program_latency_ms = Some(result.latency_ms);
                    // The calibration score: the margin for three labels or more.
                    let margin = margin(result.scores.iter().map(|(_, v)| v));
                    let score = margin.unwrap_or(result.confidence);
                    let answered = result.status == ExecutionStatus::Success
                        && task.threshold().is_some_and(|t| score >= t);
                    let content = answered
                        .then(|| task.answers.content(&result.output))
                        .flatten();
                    if let Some(content) = content {
                        task.counters.local.fetch_add(1, Ordering::Relaxed);
                        let answer = ProgramAnswer {
                            version: result.version,
                            output: result.output.clone(),
                            confidence: result.confidence,
                            margin,
                        };
                        inner.writer.push(
                            task.index,
                            CallRecord {
                                id: result.execution_id,
                                timestamp: inner.now(),
                                kind: CallKind::Call,
                                source: Source::Program,
                                input: input.clone(),
                                label: None,
                                outside_labels: false,
                                program: Some(answer.clone()),
                                program_latency_ms: Some(result.latency_ms),
                                upstream_latency_ms: None,
                                upstream_tokens: None,
                            },
                        );
                        let rate = task.validation_rate();
                        let validate = (rate > 0.0 && fastrand::f64() < rate).then(|| Pending {
                            candidate: task.shadow.load().as_deref().and_then(|s| s.answer(&input)),
                            task: Some(Arc::clone(&task)),
                            id: result.execution_id,
                            kind: CallKind::Validation,
                            input,
                            program: Some(answer),
                            program_latency_ms: Some(result.latency_ms),
                        });
                        return Ok(Decision::Local(LocalAnswer {
                            task: task.name.clone(),
                            execution_id: result.execution_id,
                            content,
                            confidence: result.confidence,
                            version: result.version,
                            latency_ms: result.latency_ms,
                            validate,
                        }));
                    }
                    program = Some(ProgramAnswer {
                        version: result.version,
                        output: result.output,
                        confidence: result.confidence,
                        margin,
                    });
                }
                Err(e) => {
                    log::debug!("gateway task {}: the program failed: {e}", task.name);
                }
            }
        }
        task.counters.forwarded.fetch_add(1, Ordering::Relaxed);
        let candidate = task.shadow.load().as_deref().and_then(|s| s.answer(&input));
        Ok(Decision::Forward(Pending {
            task: Some(task),
            id: id.unwrap_or_else(Uuid::new_v4),
            kind: CallKind::Call,
            input,
            program,
            program_latency_ms,
            candidate,
        }))
    }

    /// Records the upstream's successful answer to a forwarded call (or to a local answer's
    /// validation): normalised to the task's labels, logged, counted, added to the labels
    /// and to the calibration; may start a learning pass in the background.
    pub fn record_upstream(&self, pending: Pending, answer: &UpstreamAnswer<'_>) -> Recorded {
        let inner = &self.inner;
        let Some(task) = pending.task else {
            return Recorded::Untasked;
        };
        let c = &task.counters;
        let label = answer
            .content
            .and_then(|content| task.answers.read(content));
        if let Some(t) = answer.total_tokens {
            c.upstream_tokens.fetch_add(t, Ordering::Relaxed);
            c.token_calls.fetch_add(1, Ordering::Relaxed);
        }
        let outside = label.is_none();
        if outside {
            c.outside_labels.fetch_add(1, Ordering::Relaxed);
        } else {
            c.oracle_labels.fetch_add(1, Ordering::Relaxed);
        }
        let validation = pending.kind == CallKind::Validation;
        if validation {
            c.validations.fetch_add(1, Ordering::Relaxed);
            c.validation_calls.fetch_add(1, Ordering::Relaxed);
        }
        if let (Some(l), Some(candidate)) = (&label, &pending.candidate) {
            let mut guard = task.canary.lock();
            if let Some(c) = guard.as_mut().filter(|c| c.version == candidate.version) {
                match (&task.answers, l) {
                    (Answers::Labels(_), Value::String(l)) => {
                        c.observe(candidate, pending.program.as_ref(), l);
                    }
                    _ => {
                        // The canary compares labels: an extraction answer is compared as
                        // the compact JSON of its normalised object.
                        let key = |p: &ProgramAnswer| ProgramAnswer {
                            output: task.answers.key(&p.output),
                            ..p.clone()
                        };
                        let running = pending.program.as_ref().map(key);
                        let l = task.answers.key(l);
                        let l = l.as_str().unwrap_or_default();
                        c.observe(&key(candidate), running.as_ref(), l);
                    }
                }
                if c.due() {
                    c.queued = true;
                    drop(guard);
                    inner.queue_canary(&task);
                }
            }
        }
        if let (Some(l), Some(p)) = (&label, &pending.program) {
            let agreed = task.answers.agrees(&p.output, l);
            if validation && !agreed {
                c.validation_disagreements.fetch_add(1, Ordering::Relaxed);
            }
            let mut cal = task.calibration.lock();
            if cal.version == p.version {
                cal.pairs.push((p.score(), agreed));
                if validation {
                    cal.push_validation(agreed);
                }
                if cal.pairs.len() > MAX_PAIRS {
                    let excess = cal.pairs.len() - MAX_PAIRS;
                    cal.pairs.drain(..excess);
                }
                cal.new_pairs += 1;
                if cal.new_pairs >= RECALIBRATE_EVERY {
                    cal.new_pairs = 0;
                    drop(cal);
                    inner.calibrating.fetch_add(1, Ordering::AcqRel);
                    if inner
                        .calibrate_tx
                        .try_send(JobBox(Job::Task(task.index)))
                        .is_err()
                    {
                        inner.calibrating.fetch_sub(1, Ordering::AcqRel);
                    }
                }
            }
        }
        inner.writer.push(
            task.index,
            CallRecord {
                id: pending.id,
                timestamp: inner.now(),
                kind: pending.kind,
                source: if validation {
                    Source::Program
                } else {
                    Source::Oracle
                },
                input: pending.input,
                label: label.clone(),
                outside_labels: outside,
                program: pending.program,
                program_latency_ms: pending.program_latency_ms,
                upstream_latency_ms: Some(answer.latency_ms),
                upstream_tokens: answer.total_tokens,
            },
        );
        if label.is_some() {
            inner.maybe_learn(&task);
        }
        match label {
            Some(l) => Recorded::Label(match l {
                Value::String(s) => s,
                other => task.answers.content(&other).unwrap_or_default(),
            }),
            None => Recorded::Outside,
        }
    }

    /// Records that the upstream failed (unreachable, timed out, or answered an error) on
    /// a forwarded call or a validation: counted, nothing logged.
    pub fn record_failure(&self, pending: Pending) {
        match pending.task {
            Some(task) => {
                task.counters
                    .upstream_errors
                    .fetch_add(1, Ordering::Relaxed);
                if pending.kind == CallKind::Validation {
                    task.counters
                        .validation_calls
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {
                self.inner.untasked_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Runs a learning pass of `task` now, on the calling thread (waits for a pass already
    /// running): the same pass the background learner runs.
    ///
    /// Errors: [`ErrorKind::InvalidInput`] for an unknown task; the generator's errors
    /// (e.g. too few labels of some class).
    pub fn learn_now(&self, task: &str) -> Result<LearnReport> {
        let t = self.inner.task(task).ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("task {task:?}: not a gateway task"),
            )
        })?;
        learn::run_pass(&self.inner, &t)
    }

    /// Waits until no learning pass is queued or running and every queued re-estimate is
    /// done, at most `timeout`. Errors: [`ErrorKind::Timeout`].
    pub fn wait_idle(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let busy = self.inner.tasks.iter().any(|t| {
                t.learn_queued.load(Ordering::Acquire) || t.learning.load(Ordering::Acquire)
            }) || self.inner.calibrating.load(Ordering::Acquire) > 0;
            if !busy {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    "gateway: learning still running at the deadline",
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Re-estimates `task`'s threshold now from its calibration pairs.
    pub fn recalibrate(&self, task: &str) -> Option<f64> {
        let t = self.inner.task(task)?;
        learn::recalibrate(&self.inner, &t);
        t.threshold()
    }

    /// Every figure, per task.
    pub fn stats(&self) -> GatewayStats {
        let inner = &self.inner;
        GatewayStats {
            untasked_calls: inner.untasked.load(Ordering::Relaxed),
            untasked_errors: inner.untasked_errors.load(Ordering::Relaxed),
            log_dropped: inner.writer.dropped.load(Ordering::Relaxed),
            log_write_errors: inner.writer.write_errors.load(Ordering::Relaxed),
            tasks: inner.tasks.iter().map(|t| task_stats(t)).collect(),
        }
    }

    /// Makes every call recorded before this call written to the call log, and flushes the
    /// task runtimes' execution logs, within `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        self.inner.writer.flush(timeout)?;
        for t in &self.inner.tasks {
            if let Some(rt) = t.runtime.load().as_deref() {
                rt.flush(deadline.saturating_duration_since(Instant::now()))?;
            }
        }
        Ok(())
    }

    /// Stops the gateway within `timeout`: refuses new calls, writes the call log, stops
    /// the threads and shuts the task runtimes down. A learning pass in progress does not
    /// hold it up: it installs nothing once this returns (installing and closing take one
    /// lock) and stops at its next check, before its next synthesis.
    ///
    /// Errors: [`ErrorKind::Timeout`] when the call log or the calibrator did not finish
    /// within `timeout`.
    pub fn shutdown(&self, timeout: Duration) -> Result<()> {
        let inner = &self.inner;
        if inner.shutting_down.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
        {
            // A learning pass or a canary verdict installing a version finishes first;
            // after this none starts (they check `closed` under the lock).
            let _installing = inner.install_lock.lock();
            inner.closed.store(true, Ordering::Release);
        }
        let _ = inner.learn_tx.try_send(JobBox(Job::Stop));
        let _ = inner.calibrate_tx.try_send(JobBox(Job::Stop));
        let flushed = inner.writer.flush(timeout);
        inner.writer.stop();
        let handles: Vec<JoinHandle<()>> = std::mem::take(&mut *inner.handles.lock());
        let mut late = 0;
        for h in handles {
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            if h.is_finished() {
                let _ = h.join();
            } else if h.thread().name() != Some(LEARNER_THREAD) {
                late += 1;
            }
            // A learner still inside a synthesis is left to stop at its next check (between
            // candidates and folds): it can no longer install anything.
        }
        for t in &inner.tasks {
            if let Some(rt) = t.runtime.load().as_deref() {
                rt.shutdown(deadline.saturating_duration_since(Instant::now()))?;
            }
        }
        flushed?;
        if late > 0 {
            return Err(Error::new(
                ErrorKind::Timeout,
                format!("gateway: {late} background thread(s) still running at the deadline"),
            ));
        }
        Ok(())
    }
}

pub(crate) fn task_stats(t: &Task) -> TaskStats {
    let c = &t.counters;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let calls = load(&c.calls);
    let local = load(&c.local);
    let token_calls = load(&c.token_calls);
    let tokens = load(&c.upstream_tokens);
    let tokens_saved = if token_calls == 0 {
        0
    } else {
        (local as f64 * tokens as f64 / token_calls as f64).round() as u64
    };
    let (estimate, pairs) = {
        let cal = t.calibration.lock();
        (cal.estimate, cal.pairs.len() as u64)
    };
    let threshold = t.threshold();
    let (disagreement, upper) = match estimate {
        Some(e) if e.answered > 0 => (Some(e.disagreed as f64 / e.answered as f64), Some(e.upper)),
        _ => (None, None),
    };
    let runtime = t.runtime.load();
    TaskStats {
        task: t.name.clone(),
        state: t.state(),
        labels: t.labels_total(),
        spec_examples: t.spec.examples.len() as u64,
        oracle_labels: load(&c.oracle_labels),
        outside_labels: load(&c.outside_labels),
        calls,
        local,
        forwarded: load(&c.forwarded),
        coverage: (calls > 0).then(|| local as f64 / calls as f64),
        upstream_calls: load(&c.forwarded) + load(&c.validation_calls),
        upstream_errors: load(&c.upstream_errors),
        upstream_tokens: tokens,
        tokens_saved,
        active_version: runtime.as_deref().map(Runtime::active_version),
        threshold,
        disagreement,
        disagreement_upper: upper,
        calibration_pairs: pairs,
        max_disagreement: t.budget,
        validations: load(&c.validations),
        validation_disagreements: load(&c.validation_disagreements),
        learning: t.learn_queued.load(Ordering::Relaxed) || t.learning.load(Ordering::Relaxed),
        last_learn_error: match &*t.last_learn.lock() {
            Some(Err(e)) => Some(e.clone()),
            _ => None,
        },
        canary: t.canary.lock().as_ref().map(Canary::status),
        last_canary: t.last_canary.lock().clone(),
        validation_rate: t.validation_rate(),
    }
}

impl Inner {
    pub(crate) fn task(&self, name: &str) -> Option<Arc<Task>> {
        self.by_name.get(name).map(|&i| Arc::clone(&self.tasks[i]))
    }

    fn now(&self) -> Timestamp {
        Timestamp(self.clock.now_millis())
    }

    fn route(&self, header: Option<&str>, request: &ChatRequest) -> Result<Option<Arc<Task>>> {
        if let Some(name) = header {
            return self.task(name).map(Some).ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidInput,
                    format!("X-Loopai-Task: {name:?} is not a gateway task (add it with `loopai tasks add`)"),
                )
            });
        }
        let Some(model) = request.model.as_deref() else {
            return Ok(None);
        };
        let mut system: Option<Option<String>> = None;
        for route in &self.gateway.routes {
            if route.model != model {
                continue;
            }
            if let Some(needle) = &route.system_contains {
                let text = system.get_or_insert_with(|| request.system_text());
                if !text.as_deref().is_some_and(|t| t.contains(needle.as_str())) {
                    continue;
                }
            }
            return Ok(self.task(&route.task));
        }
        Ok(None)
    }

    /// Queues a learning pass of `task` when its labels reached `learn.min_examples`, or
    /// grew by `learn.growth` since the last pass.
    pub(crate) fn maybe_learn(&self, task: &Arc<Task>) {
        let labels = task.labels_total();
        if labels < self.learn.min_examples as u64 {
            return;
        }
        let at = task.learned_at.load(Ordering::Relaxed);
        if at > 0 && (labels as f64) < at as f64 * (1.0 + self.learn.growth) {
            return;
        }
        if task.learn_queued.swap(true, Ordering::AcqRel) {
            return;
        }
        if self
            .learn_tx
            .try_send(JobBox(Job::Task(task.index)))
            .is_err()
        {
            task.learn_queued.store(false, Ordering::Release);
        }
    }

    /// Queues a canary verdict of `task` on the calibrator.
    pub(crate) fn queue_canary(&self, task: &Task) {
        self.calibrating.fetch_add(1, Ordering::AcqRel);
        if self
            .calibrate_tx
            .try_send(JobBox(Job::Canary(task.index)))
            .is_err()
        {
            self.calibrating.fetch_sub(1, Ordering::AcqRel);
            if let Some(c) = task.canary.lock().as_mut() {
                c.queued = false;
            }
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn install_runtime(&self, task: &Task) -> Result<Arc<Runtime>> {
        let rt = Arc::new(
            Runtime::builder()
                .data_dir(&self.data_dir)
                .task(&task.name)
                .config(self.runtime_config.clone())
                .build()?,
        );
        task.runtime.store(Some(Arc::clone(&rt)));
        Ok(rt)
    }
}

pub(crate) fn job_of(msg: JobBox) -> Job {
    msg.0
}

pub(crate) type JobRx = Receiver<JobBox>;
