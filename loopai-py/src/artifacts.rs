//! `install_program`: put a program into a task's artifact cache.

use std::path::PathBuf;

use loopai_core as core;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};

use crate::{convert, errors};

/// The program bytes from a dict, JSON text (`str`/`bytes`), or a path to a program.json.
pub(crate) fn program_bytes(
    py: Python<'_>,
    program: &Bound<'_, PyAny>,
) -> PyResult<Result<Vec<u8>, core::Error>> {
    Ok(document(py, program, "program")?.map(|(bytes, _)| bytes))
}

/// The bytes of a JSON document given as a dict, JSON text (`str`/`bytes`), or a path to a
/// file, and the path when it was one.
#[allow(clippy::type_complexity)]
fn document(
    py: Python<'_>,
    program: &Bound<'_, PyAny>,
    what: &str,
) -> PyResult<Result<(Vec<u8>, Option<PathBuf>), core::Error>> {
    if let Ok(dict) = program.cast::<PyDict>() {
        let kind = if what == "program" {
            core::ErrorKind::Program
        } else {
            core::ErrorKind::InvalidInput
        };
        let value = convert::to_value(dict.as_any())
            .map_err(|e| errors::to_py(py, core::Error::new(kind, e.describe(what))))?;
        return serde_json::to_vec(&value)
            .map(|bytes| Ok((bytes, None)))
            .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()));
    }
    if let Ok(bytes) = program.cast::<PyBytes>() {
        return Ok(Ok((bytes.as_bytes().to_vec(), None)));
    }
    if let Ok(s) = program.cast::<PyString>() {
        let text = s.to_cow()?;
        let start = text.trim_start();
        if start.starts_with('{') || start.starts_with('[') {
            return Ok(Ok((text.into_owned().into_bytes(), None)));
        }
    }
    let path: PathBuf = program.extract().map_err(|_| {
        pyo3::exceptions::PyTypeError::new_err(format!(
            "{what}: expected a dict, JSON text, or a path (str or os.PathLike) to a {what} file"
        ))
    })?;
    Ok(py.detach(move || match std::fs::read(&path) {
        Ok(bytes) => Ok((bytes, Some(path))),
        Err(e) => Err(core::Error::io(path.display(), e)),
    }))
}

/// Checks a ``loopai.program/1`` program and installs it as the next version of task
/// ``task_id`` under ``<data_dir>/artifacts/``, making it the active one if ``activate``.
///
/// ``program`` is a dict, JSON text, or a path to a ``program.json``. The program must
/// compile and be written for ``task_id`` (``ProgramError`` otherwise). Returns the new
/// artifact's metadata (``version``, ``sha256``, ``created_at``, ...). Running runtimes
/// pick the new version up on their next reload or restart.
#[pyfunction]
#[pyo3(signature = (data_dir, task_id, program, *, activate = true))]
pub(crate) fn install_program<'py>(
    py: Python<'py>,
    data_dir: PathBuf,
    task_id: String,
    program: &Bound<'py, PyAny>,
    activate: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let bytes = program_bytes(py, program)?.map_err(|e| errors::to_py(py, e))?;
    let installed = py.detach(move || -> core::Result<core::ArtifactMetadata> {
        let compiled = core::Program::from_json(&bytes)?;
        if compiled.task() != task_id {
            return Err(core::Error::new(
                core::ErrorKind::Program,
                format!(
                    "program: it is for task {:?}, not {task_id:?}",
                    compiled.task()
                ),
            ));
        }
        core::ArtifactStore::open(&data_dir, &task_id)?.install(
            &bytes,
            core::NewArtifact::default(),
            activate,
        )
    });
    let installed = installed.map_err(|e| errors::to_py(py, e))?;
    let value = serde_json::to_value(&installed)
        .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))?;
    convert::to_py(py, &value)
}

/// Learns a program from a task specification (the design's TaskSpecification: ``name``,
/// ``description``, ``input_schema``, ``output_schema``, ``examples``, ...) and installs it
/// as the next version of the task ``spec["name"]`` under ``<data_dir>/artifacts/``,
/// making it the active one if ``activate`` and the estimate can be trusted
/// (``complexity_metrics["trusted"]``: the cross-validated accuracy meets the spec's
/// ``accuracy_target`` and beats always answering the most frequent label; otherwise
/// ``complexity_metrics["warnings"]`` says why, and ``Runtime.activate(version)`` activates
/// it anyway). ``spec`` is a dict, JSON text, or a path to a
/// spec file; ``strategy`` is ``"auto"``, ``"rule"``, ``"ml"`` or ``"hybrid"``. The GIL is
/// released while training. Returns the new artifact's metadata (``version``,
/// ``synthesis_strategy``, ``confidence_score`` — the cross-validated accuracy, absent
/// when there was nothing to cross-validate —, ``complexity_metrics``, ...).
///
/// A malformed spec raises ``InvalidInput`` listing every problem, each with its path
/// (``spec.examples[3].output: ...``) and, for a spec file, the file name. Labels without
/// examples are reported as ``UserWarning``s.
#[pyfunction]
#[pyo3(signature = (spec, data_dir, *, strategy = "auto", activate = true, seed = 0))]
pub(crate) fn synthesize<'py>(
    py: Python<'py>,
    spec: &Bound<'py, PyAny>,
    data_dir: PathBuf,
    strategy: &str,
    activate: bool,
    seed: u64,
) -> PyResult<Bound<'py, PyAny>> {
    let strategy: loopai_synth::Strategy = strategy.parse().map_err(|e| errors::to_py(py, e))?;
    let (bytes, file) = document(py, spec, "spec")?.map_err(|e| errors::to_py(py, e))?;
    let done = py.detach(
        move || -> core::Result<(core::ArtifactMetadata, Vec<String>)> {
            let spec = match &file {
                // Read again by the parser, whose errors then name the file.
                Some(path) => loopai_synth::TaskSpec::from_path(path)?,
                None => loopai_synth::TaskSpec::from_json(&bytes)?,
            };
            // Checked here too (synthesis checks again) so that the errors name the file.
            spec.validate().map_err(|e| match (&file, e.kind()) {
                (Some(path), core::ErrorKind::InvalidInput | core::ErrorKind::Program) => {
                    e.context(path.display())
                }
                _ => e,
            })?;
            let options = loopai_synth::SynthOptions::default()
                .with_strategy(strategy)
                .with_seed(seed);
            loopai_synth::synthesize_and_install(&spec, &options, &data_dir, activate)
                .map(|(s, m)| (m, s.warnings))
        },
    );
    let (installed, warnings) = done.map_err(|e| errors::to_py(py, e))?;
    let category = py.get_type::<pyo3::exceptions::PyUserWarning>();
    for w in warnings {
        let message = std::ffi::CString::new(format!("loopai.synthesize: {w}"))
            .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))?;
        PyErr::warn(py, &category, &message, 1)?;
    }
    let value = serde_json::to_value(&installed)
        .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))?;
    convert::to_py(py, &value)
}
