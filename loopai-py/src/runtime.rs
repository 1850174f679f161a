//! `Runtime` and `ExecutionResult`: thin wrappers around the core types.
//!
//! Every method extracts its arguments while attached to the interpreter, then detaches
//! (releases the GIL) for the core call, so that other Python threads run while loopai
//! executes, flushes or waits. The core's background threads never touch Python, except
//! the validation workers calling a Python oracle (`oracle.rs`), which take the GIL only
//! for that call.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use loopai_core as core;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};

use crate::{convert, errors};

// `Runtime.explain` spells its default `top_k` as a literal (for the text signature that
// `mypy.stubtest` checks against the stub): it is the core's.
const _: () = assert!(core::DEFAULT_EXPLAIN_TOP_K == 10);

/// Every runtime created in this process that may still be alive, for the `atexit` flush.
static LIVE: Mutex<Vec<Weak<core::Runtime>>> = Mutex::new(Vec::new());

fn register(runtime: &Arc<core::Runtime>) {
    let mut live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
    live.retain(|w| w.strong_count() > 0);
    live.push(Arc::downgrade(runtime));
}

/// A timeout in seconds as a `Duration` (`ValueError` when negative or not finite).
pub(crate) fn seconds(timeout: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(timeout).map_err(|_| {
        PyValueError::new_err(format!(
            "timeout: expected a finite number of seconds >= 0, got {timeout}"
        ))
    })
}

/// Flushes every runtime still alive in this process, all within one `timeout`; returns
/// the failures as messages. Runtimes that are closed, or were created before a fork, have
/// nothing to flush here and are skipped. Called by the package's `atexit` hook.
#[pyfunction]
#[pyo3(signature = (timeout = 5.0))]
pub(crate) fn _flush_all(py: Python<'_>, timeout: f64) -> PyResult<Vec<String>> {
    let timeout = seconds(timeout)?;
    let runtimes: Vec<Arc<core::Runtime>> = {
        let live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
        live.iter().filter_map(Weak::upgrade).collect()
    };
    Ok(py.detach(move || {
        let deadline = Instant::now() + timeout;
        let mut failures = Vec::new();
        for rt in runtimes {
            let left = deadline.saturating_duration_since(Instant::now());
            match rt.flush(left) {
                Ok(()) => {}
                Err(e) if e.kind() == core::ErrorKind::Closed => {}
                Err(e) => failures.push(format!("task {:?}: {e}", rt.task())),
            }
        }
        failures
    }))
}

/// The embeddable Loopai runtime for one task.
///
/// Loads the task's active program from ``<data_dir>/artifacts/<task_id>/`` and logs every
/// execution to ``<data_dir>/datasets/<task_id>/``. One instance is meant to be shared by
/// every thread of the process: ``execute`` takes no lock and releases the GIL.
///
/// ``config`` is a path to a ``deployment.yaml`` or a dict with the same keys; by default
/// ``<data_dir>/config/deployment.yaml`` is read if it exists.
///
/// ``oracle`` is a callable ``(request: dict) -> output`` used to validate sampled
/// executions in the background and, with ``execution.fallback: oracle``, to answer when
/// the program abstains. ``request`` has ``task``, ``description``, ``labels``,
/// ``output_schema``, ``input`` and ``timeout_ms``; the output is a label (``str``) or a
/// dict of extracted fields. It is called from loopai's worker threads (the GIL is taken
/// just for the call) and must be thread-safe; exceptions are counted as oracle errors in
/// ``validation_metrics()`` and never raised by ``execute``. It wins over the
/// configuration's ``oracle`` section.
///
/// Use it as a context manager, or call ``shutdown()`` (``close()`` is an alias); runtimes
/// still open at interpreter exit are flushed by an ``atexit`` hook. A runtime created
/// before ``os.fork()`` raises ``ClosedError`` in the child: create a new one there.
#[pyclass(frozen, name = "Runtime", module = "loopai")]
pub(crate) struct PyRuntime {
    // `Option` only so that `Drop` can release the GIL while the core shuts down.
    inner: Option<Arc<core::Runtime>>,
    /// `shutdown()` (or `close()`) was called: later calls say so, `flush()` is a no-op.
    shut_down: AtomicBool,
}

impl PyRuntime {
    fn rt(&self) -> &Arc<core::Runtime> {
        self.inner
            .as_ref()
            .expect("loopai: Runtime used after drop (a bug in the binding)")
    }

    /// The Python exception for `e`; after `shutdown()`, a `ClosedError` says so in the
    /// user's terms rather than naming the component that refused.
    fn error(&self, py: Python<'_>, e: core::Error) -> PyErr {
        if e.kind() == core::ErrorKind::Closed && self.shut_down.load(Ordering::Acquire) {
            let message = format!(
                "task {:?}: the runtime is shut down (shutdown() or close() was called); create a new Runtime",
                self.rt().task()
            );
            return errors::to_py(py, core::Error::new(core::ErrorKind::Closed, message));
        }
        errors::to_py(py, e)
    }
}

impl Drop for PyRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.inner.take() {
            // Dropping the last clone shuts the core down (bounded wait): do not hold the
            // GIL meanwhile. At interpreter teardown, when we cannot attach, just drop.
            let mut rt = Some(rt);
            let _ = Python::try_attach(|py| {
                let rt = rt.take();
                py.detach(move || drop(rt));
            });
            drop(rt);
        }
    }
}

#[pymethods]
impl PyRuntime {
    #[new]
    #[pyo3(signature = (data_dir, task_id, *, config = None, oracle = None))]
    fn new(
        py: Python<'_>,
        data_dir: PathBuf,
        task_id: String,
        config: Option<&Bound<'_, PyAny>>,
        oracle: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let mut builder = core::Runtime::builder().data_dir(data_dir).task(task_id);
        if let Some(oracle) = oracle.filter(|o| !o.is_none()) {
            if !oracle.is_callable() {
                return Err(pyo3::exceptions::PyTypeError::new_err(
                    "oracle: expected a callable (request: dict) -> str | dict",
                ));
            }
            builder = builder.oracle(Arc::new(crate::oracle::PyOracle::new(
                oracle.clone().unbind(),
            )));
        }
        if let Some(config) = config {
            if let Ok(dict) = config.cast::<PyDict>() {
                let value = convert::to_value(dict.as_any()).map_err(|e| {
                    errors::to_py(
                        py,
                        core::Error::new(core::ErrorKind::Config, e.describe("config")),
                    )
                })?;
                let config = core::DeploymentConfig::from_json_value(&value, "config")
                    .map_err(|e| errors::to_py(py, e))?;
                builder = builder.config(config);
            } else {
                let path: PathBuf = config.extract().map_err(|_| {
                    pyo3::exceptions::PyTypeError::new_err(
                        "config: expected a path (str or os.PathLike) or a dict",
                    )
                })?;
                builder = builder.config_file(path);
            }
        }
        let rt = py
            .detach(move || builder.build())
            .map_err(|e| errors::to_py(py, e))?;
        let rt = Arc::new(rt);
        register(&rt);
        Ok(PyRuntime {
            inner: Some(rt),
            shut_down: AtomicBool::new(false),
        })
    }

    /// Executes the active program on one input (a dict, e.g. ``{"text": "..."}``) and
    /// logs the execution. During a canary rollout ``key`` (a user or session id) routes
    /// the execution: the same key gets the same version, and stays on the canary as its
    /// share grows; without it the input (or its ``rollout.sticky_key``) routes. Raises
    /// ``InvalidInput`` when the input cannot be converted to JSON or does not match the
    /// task, ``ClosedError`` after ``shutdown()`` or in a forked child.
    #[pyo3(signature = (input, key = None))]
    fn execute(
        &self,
        py: Python<'_>,
        input: &Bound<'_, PyAny>,
        key: Option<&str>,
    ) -> PyResult<PyExecutionResult> {
        let value =
            convert::to_value(input).map_err(|e| errors::invalid_input(py, e.describe("input")))?;
        let rt = self.rt();
        let run = || match key {
            Some(key) => rt.execute_with_key(&value, key),
            None => rt.execute(&value),
        };
        match py.detach(run) {
            Ok(result) => Ok(PyExecutionResult::from(result)),
            Err(e) => Err(self.error(py, e)),
        }
    }

    /// Executes one input given as JSON text (``str`` or ``bytes``), like ``execute``
    /// (``key`` routes it during a canary rollout, as there).
    #[pyo3(signature = (input, key = None))]
    fn execute_json(
        &self,
        py: Python<'_>,
        input: &Bound<'_, PyAny>,
        key: Option<&str>,
    ) -> PyResult<PyExecutionResult> {
        let owned: Vec<u8>;
        let bytes: &[u8] = if let Ok(b) = input.cast::<pyo3::types::PyBytes>() {
            b.as_bytes()
        } else if let Ok(s) = input.cast::<PyString>() {
            owned = s.to_cow()?.into_owned().into_bytes();
            &owned
        } else {
            return Err(pyo3::exceptions::PyTypeError::new_err(
                "execute_json: expected str or bytes",
            ));
        };
        let rt = self.rt();
        let run = || match key {
            Some(key) => rt.execute_json_with_key(bytes, key),
            None => rt.execute_json(bytes),
        };
        match py.detach(run) {
            Ok(result) => Ok(PyExecutionResult::from(result)),
            Err(e) => Err(self.error(py, e)),
        }
    }

    /// Why the active program decides what it does on one input (a dict, or JSON text as
    /// ``str``/``bytes``): a dict ``{"task", "version", "output", "confidence",
    /// "abstained", "decided_by", "abstention", "decision"}`` with the rule that fired and
    /// the feature values its conditions saw, or a model's per-class scores with its
    /// ``top_k`` largest contributions traced back to the n-grams and keywords of this
    /// input (see "Explanations" in ``docs/program-format.md``). ``output`` and
    /// ``confidence`` are exactly what ``execute`` returns. Always the active version,
    /// never a canary; nothing is logged, sampled or counted. Raises ``InvalidInput`` as
    /// ``execute`` does.
    #[pyo3(signature = (input, *, top_k = 10))]
    fn explain<'py>(
        &self,
        py: Python<'py>,
        input: &Bound<'py, PyAny>,
        top_k: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let options = core::ExplainOptions::default().with_top_k(top_k);
        let rt = self.rt();
        let explained = if let Ok(b) = input.cast::<pyo3::types::PyBytes>() {
            let bytes = b.as_bytes().to_vec();
            py.detach(|| rt.explain_json(&bytes, &options))
        } else if let Ok(s) = input.cast::<PyString>() {
            let bytes = s.to_cow()?.into_owned().into_bytes();
            py.detach(|| rt.explain_json(&bytes, &options))
        } else {
            let value = convert::to_value(input)
                .map_err(|e| errors::invalid_input(py, e.describe("input")))?;
            py.detach(|| rt.explain_with(&value, &options))
        };
        let explanation = explained.map_err(|e| self.error(py, e))?;
        let value = serde_json::to_value(&explanation)
            .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))?;
        convert::to_py(py, &value)
    }

    /// Executes several inputs; one result per input, in order, each logged like
    /// ``execute``. Every input is executed even when some fail. With
    /// ``return_exceptions=False`` (the default) the first failure is then raised; with
    /// ``True`` failures are returned in place as ``LoopaiError`` instances.
    #[pyo3(signature = (inputs, *, return_exceptions = false))]
    fn execute_batch<'py>(
        &self,
        py: Python<'py>,
        inputs: &Bound<'py, PyAny>,
        return_exceptions: bool,
    ) -> PyResult<Bound<'py, PyList>> {
        let mut converted = Vec::new();
        let mut failed = Vec::new();
        for (i, item) in inputs.try_iter()?.enumerate() {
            match convert::to_value(&item?) {
                Ok(v) => converted.push(v),
                Err(e) => failed.push((i, e.describe(&format!("inputs[{i}]")))),
            }
        }
        let rt = self.rt();
        let results = py.detach(|| rt.execute_batch(&converted));
        let out = PyList::empty(py);
        let mut results = results.into_iter();
        let mut failed = failed.into_iter().peekable();
        let mut first_error = None;
        let total = converted.len() + failed.len();
        for i in 0..total {
            let item: PyResult<PyExecutionResult> = match failed.peek() {
                Some((at, _)) if *at == i => {
                    let (_, message) = failed.next().unwrap_or_default();
                    Err(errors::invalid_input(py, message))
                }
                _ => match results.next() {
                    Some(Ok(result)) => Ok(PyExecutionResult::from(result)),
                    Some(Err(e)) => Err(self.error(py, e)),
                    None => break,
                },
            };
            match item {
                Ok(result) => out.append(result)?,
                Err(err) if return_exceptions => out.append(err.into_value(py))?,
                Err(err) => {
                    if first_error.is_none() {
                        first_error = Some(err);
                    }
                }
            }
        }
        match first_error {
            Some(err) => Err(err),
            None => Ok(out),
        }
    }

    /// Waits until every execution logged before this call is written and fsync'd, at
    /// most ``timeout`` seconds (``TimeoutError`` otherwise). Executions sampled for
    /// validation before the call are validated against the oracle first, within the same
    /// ``timeout``. The GIL is released while waiting. After ``shutdown()`` it returns at
    /// once: the shutdown flushed everything there was.
    #[pyo3(signature = (timeout = 5.0))]
    fn flush(&self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        let timeout = seconds(timeout)?;
        if self.shut_down.load(Ordering::Acquire) {
            return Ok(());
        }
        let rt = self.rt();
        py.detach(|| rt.flush(timeout))
            .map_err(|e| self.error(py, e))
    }

    /// Flushes the execution log and stops the background threads within ``timeout``
    /// seconds (``TimeoutError`` otherwise), as ``shutdown`` does in Rust, C and Go. Later
    /// executions raise ``ClosedError`` ("the runtime is shut down"), ``flush()`` returns
    /// at once, and shutting down again is harmless. The GIL is released while waiting.
    #[pyo3(signature = (timeout = 5.0))]
    fn shutdown(&self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        let timeout = seconds(timeout)?;
        let rt = self.rt();
        let result = py.detach(|| rt.shutdown(timeout));
        // A `Closed` refusal (a runtime created before fork()) keeps its own message.
        if !matches!(&result, Err(e) if e.kind() == core::ErrorKind::Closed) {
            self.shut_down.store(true, Ordering::Release);
        }
        result.map_err(|e| self.error(py, e))
    }

    /// The same as ``shutdown(timeout)`` (the name Python's file-like objects use).
    #[pyo3(signature = (timeout = 5.0))]
    fn close(&self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        self.shutdown(py, timeout)
    }

    /// Returns the runtime itself (``with Runtime(...) as rt:``).
    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Shuts the runtime down (``shutdown(timeout=5.0)``); exceptions propagate.
    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.shutdown(py, 5.0)?;
        Ok(false)
    }

    /// The artifact version executing now.
    #[getter]
    fn active_version(&self) -> u32 {
        self.rt().active_version()
    }

    /// Activates installed version ``version`` (on disk too) and swaps it in without
    /// interrupting executions in flight. The version is verified and compiled first.
    fn activate(&self, py: Python<'_>, version: u32) -> PyResult<()> {
        let rt = self.rt();
        py.detach(|| rt.activate(version))
            .map_err(|e| self.error(py, e))
    }

    /// Re-reads the task's ``active`` pointer (changed by ``install_program``,
    /// ``synthesize`` or the ``loopai`` CLI, possibly in another process) and swaps that
    /// version in if it differs. Returns the active version.
    fn reload(&self, py: Python<'_>) -> PyResult<u32> {
        let rt = self.rt();
        py.detach(|| rt.reload()).map_err(|e| self.error(py, e))
    }

    /// Starts a canary rollout of installed version ``version``: it serves a growing
    /// share of executions (``rollout.stages``, 10% → 50% → 100% by default) and is
    /// promoted or rolled back on measured error, mismatch and abstain rates (see
    /// ``docs/rollout.md``). A rollout in progress is superseded. Raises ``ArtifactError``
    /// when the version is not installed, is active, or was rolled back before.
    fn begin_rollout(&self, py: Python<'_>, version: u32) -> PyResult<()> {
        let rt = self.rt();
        py.detach(|| rt.begin_rollout(version))
            .map_err(|e| self.error(py, e))
    }

    /// Finishes the rollout in progress now: its canary becomes the active version,
    /// which is returned. Raises ``ArtifactError`` when no rollout is in progress.
    fn promote(&self, py: Python<'_>) -> PyResult<u32> {
        let rt = self.rt();
        py.detach(|| rt.promote()).map_err(|e| self.error(py, e))
    }

    /// Rolls back the rollout in progress: the stable version stays active and the
    /// canary is not rolled out again automatically. Returns the canary's version, or
    /// ``None`` when no rollout was in progress.
    fn abort_rollout(&self, py: Python<'_>) -> PyResult<Option<u32>> {
        let rt = self.rt();
        py.detach(|| rt.abort_rollout())
            .map_err(|e| self.error(py, e))
    }

    /// The rollout in progress, or the last one, as a dict: ``state`` (``"in_progress"``,
    /// ``"promoted"``, ``"rolled_back"``, ``"aborted"``), ``stable_version``,
    /// ``canary_version``, ``stage``, ``stages``, ``fraction``, ``started_at``, per-arm
    /// ``stable`` and ``canary`` statistics, ``comparisons`` (the confidence sequences),
    /// ``decision`` and ``recent_events``. ``None`` when the task never had a rollout.
    fn rollout<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let status = self.rt().rollout();
        let value = serde_json::to_value(&status)
            .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))?;
        convert::to_py(py, &value)
    }

    /// The task id.
    #[getter]
    fn task_id(&self) -> &str {
        self.rt().task()
    }

    /// The data directory.
    #[getter]
    fn data_dir(&self) -> PathBuf {
        self.rt().data_dir().to_path_buf()
    }

    /// Daily statistics of the last ``days`` UTC days that have data, oldest first (today's
    /// are brought up to date first, which flushes the log): one dict per day with
    /// ``date``, ``total``, ``successful``, ``failed``, ``abstained``, ``success_rate``,
    /// ``latency_ms`` (``avg``, ``p50``, ``p95``, ``p99``, ...), ``output_distribution``,
    /// ``versions``, ``validations``... (see ``docs/datasets.md``).
    #[pyo3(signature = (days = 7))]
    fn stats<'py>(&self, py: Python<'py>, days: u32) -> PyResult<Bound<'py, PyAny>> {
        let rt = self.rt();
        let stats = py
            .detach(|| rt.stats(days))
            .map_err(|e| self.error(py, e))?;
        let value = serde_json::to_value(&stats)
            .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))?;
        convert::to_py(py, &value)
    }

    /// The runtime's state for health checks: ``status`` (``"ok"`` or ``"degraded"``),
    /// ``task``, ``active_version``, execution-log counters under ``dataset``, telemetry
    /// counters under ``telemetry`` (``None`` when telemetry is off; see
    /// ``docs/telemetry.md``), artifact refresh under ``refresh`` (``None`` without
    /// ``cloud.api_url``; see ``docs/repository.md``), ``validation_metrics()`` under
    /// ``validation`` and ``rollout()`` under ``rollout``.
    fn health<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let health = self.rt().health();
        let value = serde_json::to_value(&health)
            .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))?;
        convert::to_py(py, &value)
    }

    /// Validation against the oracle and oracle fallback: ``oracle`` (``"in-process"``,
    /// ``"http <model> at <url>"`` or ``None``: then samples are not validated),
    /// ``comparison``, ``fallback``, ``queued``, the totals ``validated``, ``matched``,
    /// ``match_rate``, ``skipped_queue_full``, ``skipped_no_oracle``, ``skipped_shutdown``,
    /// ``oracle_errors``, ``oracle_fallbacks``, ``oracle_fallback_failures``, and
    /// ``versions``: one dict per program version with the same counters plus
    /// ``rolling_validated`` and ``rolling_match_rate`` (the last 1000 validations).
    /// Rates are ``None`` before the first validation.
    fn validation_metrics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let metrics = self.rt().validation_metrics();
        let value = serde_json::to_value(&metrics)
            .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))?;
        convert::to_py(py, &value)
    }

    fn __repr__(&self) -> String {
        let rt = self.rt();
        format!(
            "Runtime(data_dir={:?}, task_id={:?}, active_version={})",
            rt.data_dir().display().to_string(),
            rt.task(),
            rt.active_version()
        )
    }
}

/// The result of ``Runtime.execute``. Immutable; compares equal field by field; can be
/// pickled (and copied).
#[pyclass(frozen, name = "ExecutionResult", module = "loopai")]
pub(crate) struct PyExecutionResult {
    execution_id: uuid::Uuid,
    output: serde_json::Value,
    confidence: f64,
    scores: Scores,
    version: u32,
    latency_ms: f64,
    status: &'static str,
    source: &'static str,
    sampled: bool,
    decided_by: Option<String>,
}

/// The per-label scores: the core's (no copy on the execute path), or read back from a
/// pickle.
enum Scores {
    Core(core::Scores),
    Owned(Vec<(String, f64)>),
}

impl Scores {
    fn pairs(&self) -> Vec<(&str, f64)> {
        match self {
            Scores::Core(s) => s.iter().collect(),
            Scores::Owned(v) => v.iter().map(|(l, x)| (l.as_str(), *x)).collect(),
        }
    }
}

impl From<core::ExecutionResult> for PyExecutionResult {
    fn from(r: core::ExecutionResult) -> Self {
        PyExecutionResult {
            execution_id: r.execution_id,
            status: status_name(r.status),
            source: match r.source {
                core::ExecutionSource::Oracle => "oracle",
                _ => "program",
            },
            output: r.output,
            confidence: r.confidence,
            scores: Scores::Core(r.scores),
            version: r.version,
            latency_ms: r.latency_ms,
            sampled: r.sampled,
            decided_by: r.decided_by,
        }
    }
}

fn status_name(status: core::ExecutionStatus) -> &'static str {
    match status {
        core::ExecutionStatus::Success => "success",
        core::ExecutionStatus::Abstain => "abstain",
        core::ExecutionStatus::Error => "error",
        core::ExecutionStatus::Timeout => "timeout",
    }
}

/// `state[key]`, or a `ValueError` naming what is missing from the pickled state.
fn state_item<'py, T: FromPyObjectOwned<'py>>(
    state: &Bound<'py, PyDict>,
    key: &str,
) -> PyResult<T> {
    let item = state
        .get_item(key)?
        .ok_or_else(|| PyValueError::new_err(format!("ExecutionResult state: missing {key:?}")))?;
    item.extract::<T>().map_err(|e| {
        let e: PyErr = e.into();
        PyValueError::new_err(format!("ExecutionResult state: {key}: {e}"))
    })
}

#[pymethods]
impl PyExecutionResult {
    /// The output: a label (``str``), a dict of extracted fields, or ``None`` when the
    /// program abstained without an answer.
    #[getter]
    fn output<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        convert::to_py(py, &self.output)
    }

    /// Calibrated confidence in ``[0, 1]``.
    #[getter]
    fn confidence(&self) -> f64 {
        self.confidence
    }

    /// Per-label scores, ``{label: score}`` in the program's label order (empty for
    /// extraction programs).
    #[getter]
    fn scores<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for (label, score) in self.scores.pairs() {
            dict.set_item(label, score)?;
        }
        Ok(dict)
    }

    /// The artifact version that produced the output.
    #[getter]
    fn version(&self) -> u32 {
        self.version
    }

    /// Unique id of this execution (a UUID string), also the key of its log record.
    #[getter]
    fn execution_id(&self) -> String {
        self.execution_id.to_string()
    }

    /// Time spent in the core's ``execute``, in milliseconds.
    #[getter]
    fn latency_ms(&self) -> f64 {
        self.latency_ms
    }

    /// Whether this execution was sampled for validation against the oracle. Always
    /// ``False`` when nothing could validate it: no oracle and no telemetry upload
    /// configured.
    #[getter]
    fn sampled(&self) -> bool {
        self.sampled
    }

    /// ``"success"``, or ``"abstain"`` when the confidence is below the program's
    /// threshold (and, with ``execution.fallback: oracle``, the oracle could not answer).
    #[getter]
    fn status(&self) -> &'static str {
        self.status
    }

    /// Who produced ``output``: ``"program"``, or ``"oracle"`` when the program abstained
    /// and ``execution.fallback: oracle`` answered.
    #[getter]
    fn source(&self) -> &'static str {
        self.source
    }

    /// The rule or model that decided (e.g. ``"decide.steps[0].rules[2]"``), if known.
    #[getter]
    fn decided_by(&self) -> Option<&str> {
        self.decided_by.as_deref()
    }

    /// All fields as a plain dict (JSON-serializable).
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        dict.set_item("execution_id", self.execution_id())?;
        dict.set_item("output", self.output(py)?)?;
        dict.set_item("confidence", self.confidence)?;
        dict.set_item("scores", self.scores(py)?)?;
        dict.set_item("version", self.version)?;
        dict.set_item("latency_ms", self.latency_ms)?;
        dict.set_item("status", self.status)?;
        dict.set_item("source", self.source)?;
        dict.set_item("sampled", self.sampled)?;
        dict.set_item("decided_by", self.decided_by())?;
        Ok(dict)
    }

    /// Rebuilds a result from ``to_dict()`` (how pickle restores one).
    #[classmethod]
    fn _from_dict(
        _cls: &Bound<'_, pyo3::types::PyType>,
        state: &Bound<'_, PyDict>,
    ) -> PyResult<Self> {
        let id: String = state_item(state, "execution_id")?;
        let execution_id = uuid::Uuid::parse_str(&id).map_err(|e| {
            PyValueError::new_err(format!("ExecutionResult state: execution_id: {e}"))
        })?;
        let output = state
            .get_item("output")?
            .ok_or_else(|| PyValueError::new_err("ExecutionResult state: missing \"output\""))?;
        let output = convert::to_value(&output)
            .map_err(|e| PyValueError::new_err(e.describe("ExecutionResult state: output")))?;
        let scores: Bound<'_, PyDict> = state_item(state, "scores")?;
        let mut pairs = Vec::with_capacity(scores.len());
        for (label, score) in scores.iter() {
            pairs.push((label.extract::<String>()?, score.extract::<f64>()?));
        }
        let status: String = state_item(state, "status")?;
        let status = ["success", "abstain", "error", "timeout"]
            .into_iter()
            .find(|s| *s == status)
            .ok_or_else(|| {
                PyValueError::new_err(format!("ExecutionResult state: status: unknown {status:?}"))
            })?;
        let source: String = state_item(state, "source")?;
        let source = ["program", "oracle"]
            .into_iter()
            .find(|s| *s == source)
            .ok_or_else(|| {
                PyValueError::new_err(format!("ExecutionResult state: source: unknown {source:?}"))
            })?;
        Ok(PyExecutionResult {
            execution_id,
            output,
            confidence: state_item(state, "confidence")?,
            scores: Scores::Owned(pairs),
            version: state_item(state, "version")?,
            latency_ms: state_item(state, "latency_ms")?,
            status,
            source,
            sampled: state_item(state, "sampled")?,
            decided_by: state_item(state, "decided_by")?,
        })
    }

    /// Pickle support: ``(ExecutionResult._from_dict, (self.to_dict(),))``.
    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
    ) -> PyResult<(Bound<'py, PyAny>, (Bound<'py, PyDict>,))> {
        let py = slf.py();
        let rebuild = slf.get_type().getattr("_from_dict")?;
        Ok((rebuild, (slf.get().to_dict(py)?,)))
    }

    /// Equal when every field is equal (``scores`` in label order).
    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        let Ok(other) = other.cast::<PyExecutionResult>() else {
            return false;
        };
        let o = other.get();
        self.execution_id == o.execution_id
            && self.output == o.output
            && self.confidence == o.confidence
            && self.scores.pairs() == o.scores.pairs()
            && self.version == o.version
            && self.latency_ms == o.latency_ms
            && self.status == o.status
            && self.source == o.source
            && self.sampled == o.sampled
            && self.decided_by == o.decided_by
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let output = self.output(py)?.repr()?;
        Ok(format!(
            "ExecutionResult(output={output}, confidence={}, status='{}', version={}, execution_id='{}', latency_ms={:.4})",
            self.confidence,
            self.status,
            self.version,
            self.execution_id,
            self.latency_ms
        ))
    }
}
