//! `Gateway`, `LocalAnswer`, `PendingCall`: the in-process gateway (`loopai-gateway`)
//! behind `loopai.wrap`. The decision, the labels and learning are the crate's; this file
//! converts arguments and releases the GIL.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use loopai_core as core;
use loopai_gateway as gw;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::runtime::seconds;
use crate::{convert, errors};

/// The deployment configuration: a dict, a path, or `<data_dir>/config/deployment.yaml`.
fn deployment_config(
    py: Python<'_>,
    data_dir: &Path,
    config: Option<&Bound<'_, PyAny>>,
) -> PyResult<core::DeploymentConfig> {
    let loaded = match config.filter(|c| !c.is_none()) {
        None => py.detach(|| core::DeploymentConfig::load_for_data_dir(data_dir)),
        Some(c) => {
            if let Ok(dict) = c.cast::<PyDict>() {
                let value = convert::to_value(dict.as_any()).map_err(|e| {
                    errors::to_py(
                        py,
                        core::Error::new(core::ErrorKind::Config, e.describe("config")),
                    )
                })?;
                core::DeploymentConfig::from_json_value(&value, "config")
            } else {
                let path: PathBuf = c.extract().map_err(|_| {
                    pyo3::exceptions::PyTypeError::new_err(
                        "config: expected a path (str or os.PathLike) or a dict",
                    )
                })?;
                py.detach(|| core::DeploymentConfig::from_file(&path))
            }
        }
    };
    loaded.map_err(|e| errors::to_py(py, e))
}

/// Registers (or updates) a gateway task from its specification alone, with no program
/// (what ``loopai tasks add`` does): ``spec`` is a dict, JSON text, or a path to a spec
/// file (``name``, ``description``, ``input_schema``, ``output_schema`` with its labels,
/// or an object of fields for an extraction task; zero or more ``examples``). Raises
/// ``InvalidInput`` naming what is wrong in the spec.
#[pyfunction]
pub(crate) fn add_task(py: Python<'_>, data_dir: PathBuf, spec: &Bound<'_, PyAny>) -> PyResult<()> {
    let mut bytes = crate::artifacts::program_bytes(py, spec)?.map_err(|e| errors::to_py(py, e))?;
    if spec.cast::<PyDict>().is_ok() {
        // A dict converted above lists its keys by name; `json.dumps` keeps the dict's order
        // (an extraction task's local answers list the fields in that order).
        let text: String = py
            .import("json")?
            .call_method1("dumps", (spec,))?
            .extract()?;
        bytes = text.into_bytes();
    }
    py.detach(move || -> core::Result<()> { gw::add_task_json(&data_dir, &bytes).map(drop) })
        .map_err(|e| errors::to_py(py, e))
}

/// The gateway of a data directory: every task registered from a specification
/// (``loopai tasks add``), the decision on each chat call, the upstream's answers recorded
/// as labels, and learning in background threads. ``config`` is a path to a
/// ``deployment.yaml`` or a dict of the same keys (it needs a ``gateway`` section); by
/// default ``<data_dir>/config/deployment.yaml``. Share one per process.
#[pyclass(frozen, name = "Gateway", module = "loopai._loopai")]
pub(crate) struct PyGateway {
    inner: gw::Gateway,
}

/// A call answered locally: the program's label (``content``; for an extraction task the
/// extracted object as compact JSON) and the execution id;
/// ``validate`` is a ``PendingCall`` when the sampler picked the call for validation (send
/// the request to the LLM and record its answer).
#[pyclass(frozen, name = "LocalAnswer", module = "loopai._loopai")]
pub(crate) struct PyLocalAnswer {
    task: String,
    execution_id: String,
    content: String,
    confidence: f64,
    version: u32,
    latency_ms: f64,
    validate: Option<Py<PyPending>>,
}

/// A call to forward to the LLM (or a local answer to validate): give it back to
/// ``Gateway.record_upstream`` with the answer, or to ``Gateway.record_failure``. Each is
/// recorded once.
#[pyclass(frozen, name = "PendingCall", module = "loopai._loopai")]
pub(crate) struct PyPending {
    task: Option<String>,
    id: String,
    inner: Mutex<Option<gw::Pending>>,
}

impl PyPending {
    fn new(pending: gw::Pending) -> PyPending {
        PyPending {
            task: pending.task().map(str::to_owned),
            id: pending.id().to_string(),
            inner: Mutex::new(Some(pending)),
        }
    }

    fn take(&self) -> PyResult<gw::Pending> {
        let mut slot = self.inner.lock().map_err(|_| {
            pyo3::exceptions::PyRuntimeError::new_err("PendingCall: a thread panicked holding it")
        })?;
        slot.take().ok_or_else(|| {
            pyo3::exceptions::PyValueError::new_err(format!(
                "PendingCall {}: already recorded",
                self.id
            ))
        })
    }
}

#[pymethods]
impl PyPending {
    /// The call's task (``None`` for a call with no task).
    #[getter]
    fn task(&self) -> Option<&str> {
        self.task.as_deref()
    }

    /// The call's id.
    #[getter]
    fn id(&self) -> &str {
        &self.id
    }

    fn __repr__(&self) -> String {
        format!("PendingCall(task={:?}, id={:?})", self.task, self.id)
    }
}

#[pymethods]
impl PyLocalAnswer {
    /// The task.
    #[getter]
    fn task(&self) -> &str {
        &self.task
    }

    /// The execution id (the completion's ``id``).
    #[getter]
    fn execution_id(&self) -> &str {
        &self.execution_id
    }

    /// The completion's content: the label, or the extracted object as compact JSON.
    #[getter]
    fn content(&self) -> &str {
        &self.content
    }

    /// The program's confidence.
    #[getter]
    fn confidence(&self) -> f64 {
        self.confidence
    }

    /// The artifact version that answered.
    #[getter]
    fn version(&self) -> u32 {
        self.version
    }

    /// Time in the program, in milliseconds.
    #[getter]
    fn latency_ms(&self) -> f64 {
        self.latency_ms
    }

    /// A ``PendingCall`` when the call was sampled for validation, else ``None``.
    #[getter]
    fn validate(&self, py: Python<'_>) -> Option<Py<PyPending>> {
        self.validate.as_ref().map(|p| p.clone_ref(py))
    }

    fn __repr__(&self) -> String {
        format!(
            "LocalAnswer(task={:?}, content={:?}, confidence={}, version={})",
            self.task, self.content, self.confidence, self.version
        )
    }
}

#[pymethods]
impl PyGateway {
    #[new]
    #[pyo3(signature = (data_dir, *, config = None))]
    fn new(py: Python<'_>, data_dir: PathBuf, config: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let config = deployment_config(py, &data_dir, config)?;
        let inner = py
            .detach(|| gw::Gateway::open(&data_dir, &config))
            .map_err(|e| errors::to_py(py, e))?;
        Ok(PyGateway { inner })
    }

    /// Decides a chat call: ``request`` is the Chat Completions request body (JSON bytes),
    /// ``task`` the ``X-Loopai-Task`` (else the configured routes apply). Returns a
    /// ``LocalAnswer`` or a ``PendingCall`` to forward. Raises ``InvalidInput`` for a
    /// malformed request or an unknown task, ``SchemaError`` when the program's input
    /// cannot be built from the messages.
    #[pyo3(signature = (request, task = None))]
    fn decide<'py>(
        &self,
        py: Python<'py>,
        request: &[u8],
        task: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let request = gw::ChatRequest::parse(request).map_err(|e| errors::to_py(py, e))?;
        let decision = py
            .detach(|| self.inner.decide(task.as_deref(), &request))
            .map_err(|e| errors::to_py(py, e))?;
        match decision {
            gw::Decision::Local(a) => {
                let validate = match a.validate {
                    Some(p) => Some(Py::new(py, PyPending::new(p))?),
                    None => None,
                };
                let answer = PyLocalAnswer {
                    task: a.task,
                    execution_id: a.execution_id.to_string(),
                    content: a.content,
                    confidence: a.confidence,
                    version: a.version,
                    latency_ms: a.latency_ms,
                    validate,
                };
                Ok(Bound::new(py, answer)?.into_any())
            }
            gw::Decision::Forward(p) => Ok(Bound::new(py, PyPending::new(p))?.into_any()),
            other => Err(pyo3::exceptions::PyRuntimeError::new_err(format!(
                "Gateway.decide: unknown decision {other:?}"
            ))),
        }
    }

    /// Records what the LLM answered to a ``PendingCall``: ``content`` is
    /// ``choices[0].message.content`` (or a stream's concatenated deltas), ``total_tokens``
    /// the ``usage``. Returns ``("label", LABEL)`` when the answer was recorded as a label
    /// (for an extraction task, the normalised object as compact JSON), ``("outside",
    /// None)`` when it is not one of the task's labels (counted, not learnt),
    /// ``("untasked", None)`` for a call with no task.
    #[pyo3(signature = (pending, content, total_tokens = None, latency_ms = 0.0))]
    fn record_upstream(
        &self,
        py: Python<'_>,
        pending: &PyPending,
        content: Option<String>,
        total_tokens: Option<u64>,
        latency_ms: f64,
    ) -> PyResult<(&'static str, Option<String>)> {
        let pending = pending.take()?;
        let answer = gw::UpstreamAnswer::new(content.as_deref(), total_tokens, latency_ms);
        let recorded = py.detach(|| self.inner.record_upstream(pending, &answer));
        Ok(match recorded {
            gw::Recorded::Label(label) => ("label", Some(label)),
            gw::Recorded::Outside => ("outside", None),
            gw::Recorded::Untasked => ("untasked", None),
            other => ("other", Some(format!("{other:?}"))),
        })
    }

    /// Records that the LLM failed (error, timeout) on a ``PendingCall``: counted, nothing
    /// recorded as a label.
    fn record_failure(&self, pending: &PyPending) -> PyResult<()> {
        let pending = pending.take()?;
        self.inner.record_failure(pending);
        Ok(())
    }

    /// The gateway's figures: ``untasked_calls``, ``log_dropped``... and ``tasks``, one
    /// dict per task with ``state``, ``calls``, ``local``, ``forwarded``, ``coverage``,
    /// ``labels``, ``outside_labels``, ``upstream_calls``, ``upstream_tokens``,
    /// ``tokens_saved``, ``threshold``, ``disagreement``, ``disagreement_upper``... (see
    /// ``docs/gateway.md``).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let stats = self.inner.stats();
        let value = serde_json::to_value(&stats)
            .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))?;
        convert::to_py(py, &value)
    }

    /// The gateway's tasks, sorted.
    fn tasks(&self) -> Vec<String> {
        self.inner.tasks()
    }

    /// Waits until every call recorded before this call is written, at most ``timeout``
    /// seconds (``TimeoutError`` otherwise).
    #[pyo3(signature = (timeout = 5.0))]
    fn flush(&self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        let timeout = seconds(timeout)?;
        py.detach(|| self.inner.flush(timeout))
            .map_err(|e| errors::to_py(py, e))
    }

    /// Flushes and stops the gateway's background threads within ``timeout`` seconds.
    #[pyo3(signature = (timeout = 5.0))]
    fn close(&self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        let timeout = seconds(timeout)?;
        py.detach(|| self.inner.shutdown(timeout))
            .map_err(|e| errors::to_py(py, e))
    }

    fn __repr__(&self) -> String {
        format!("Gateway(tasks={:?})", self.inner.tasks())
    }
}
