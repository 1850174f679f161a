//! Python exception classes: `LoopaiError` and one subclass per [`ErrorKind`].
//!
//! The classes are built with `type(name, bases, namespace)` at module initialization so
//! that some of them can also derive from a builtin (`StorageError` is an `OSError`,
//! `TimeoutError` is the builtin `TimeoutError`, `InvalidInput` a `ValueError`), which
//! `create_exception!` (single base) cannot express. Each class carries the kind's stable
//! `kind` name and `code` as class attributes; messages are the core's, unchanged.

use loopai_core::{Error, ErrorKind};
use pyo3::exceptions::{PyException, PyOSError, PyTimeoutError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

/// Python class name, extra builtin base (if any) and docstring of each kind.
fn class_of(kind: ErrorKind) -> Option<(&'static str, &'static str)> {
    Some(match kind {
        ErrorKind::InvalidInput => (
            "InvalidInput",
            "The input is malformed, too large, not convertible to JSON, or does not match the task's input schema. Also a ValueError.",
        ),
        ErrorKind::Program => (
            "ProgramError",
            "A program is malformed, fails validation or exceeds a limit.",
        ),
        ErrorKind::Schema => (
            "SchemaError",
            "A task's input or output schema is malformed or uses an unsupported keyword.",
        ),
        ErrorKind::InvalidOutput => (
            "InvalidOutput",
            "The program's output does not match the task's output schema.",
        ),
        ErrorKind::Artifact => (
            "ArtifactError",
            "An artifact is missing, corrupt, or does not match its recorded sha256.",
        ),
        ErrorKind::Config => (
            "ConfigError",
            "The deployment configuration is malformed or has an invalid value.",
        ),
        ErrorKind::Io => (
            "StorageError",
            "Reading or writing local storage failed. Also an OSError.",
        ),
        ErrorKind::Timeout => (
            "TimeoutError",
            "An operation did not finish within its timeout. Also the builtin TimeoutError.",
        ),
        ErrorKind::Closed => (
            "ClosedError",
            "The runtime has been closed, or was created before os.fork() in a parent process.",
        ),
        ErrorKind::Internal => (
            "InternalError",
            "A bug in loopai itself. Please report it.",
        ),
        ErrorKind::Oracle => (
            "OracleError",
            "The oracle failed: unreachable, timed out, refused the request, or answered something that is not an allowed output.",
        ),
        _ => return None,
    })
}

fn builtin_base(py: Python<'_>, kind: ErrorKind) -> Option<Bound<'_, PyType>> {
    match kind {
        ErrorKind::InvalidInput => Some(py.get_type::<PyValueError>()),
        ErrorKind::Io => Some(py.get_type::<PyOSError>()),
        ErrorKind::Timeout => Some(py.get_type::<PyTimeoutError>()),
        _ => None,
    }
}

struct Classes {
    base: Py<PyType>,
    /// Indexed like [`ErrorKind::ALL`].
    kinds: Vec<(ErrorKind, Py<PyType>)>,
}

static CLASSES: PyOnceLock<Classes> = PyOnceLock::new();

fn new_class<'py>(
    py: Python<'py>,
    name: &str,
    bases: Bound<'py, PyTuple>,
    doc: &str,
    kind: Option<ErrorKind>,
) -> PyResult<Bound<'py, PyType>> {
    let namespace = PyDict::new(py);
    namespace.set_item("__doc__", doc)?;
    namespace.set_item("__module__", "loopai")?;
    match kind {
        Some(kind) => {
            namespace.set_item("kind", kind.name())?;
            namespace.set_item("code", kind.code())?;
        }
        None => {
            namespace.set_item("kind", py.None())?;
            namespace.set_item("code", py.None())?;
        }
    }
    let class = py
        .get_type::<PyType>()
        .call1((name, bases, namespace))?
        .cast_into::<PyType>()?;
    Ok(class)
}

fn build(py: Python<'_>) -> PyResult<Classes> {
    let base = new_class(
        py,
        "LoopaiError",
        PyTuple::new(py, [py.get_type::<PyException>()])?,
        "Base class of every error raised by loopai. `kind` is the stable snake_case name of the error kind (`\"invalid_input\"`, ...) and `code` its stable negative status code, shared with the C ABI.",
        None,
    )?;
    let mut kinds = Vec::new();
    for kind in ErrorKind::ALL {
        let Some((name, doc)) = class_of(kind) else {
            continue;
        };
        let bases = match builtin_base(py, kind) {
            Some(builtin) => PyTuple::new(py, [base.clone(), builtin])?,
            None => PyTuple::new(py, [base.clone()])?,
        };
        kinds.push((kind, new_class(py, name, bases, doc, Some(kind))?.unbind()));
    }
    Ok(Classes {
        base: base.unbind(),
        kinds,
    })
}

/// Adds `LoopaiError` and its subclasses to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let classes = CLASSES.get_or_try_init(py, || build(py))?;
    m.add("LoopaiError", classes.base.bind(py))?;
    for (_, class) in &classes.kinds {
        let class = class.bind(py);
        m.add(class.name()?, class)?;
    }
    Ok(())
}

/// The Python exception for a core error: the class of its kind, the core's message.
pub(crate) fn to_py(py: Python<'_>, err: Error) -> PyErr {
    let Some(classes) = CLASSES.get(py) else {
        return PyException::new_err(err.to_string());
    };
    let kind = err.kind();
    match classes.kinds.iter().find(|(k, _)| *k == kind) {
        Some((_, class)) => PyErr::from_type(class.bind(py).clone(), err.to_string()),
        None => {
            // A kind this binding does not know yet: the base class, with the kind's
            // name and code on the instance.
            let base = classes.base.bind(py);
            match base.call1((err.to_string(),)).and_then(|exc| {
                exc.setattr("kind", kind.name())?;
                exc.setattr("code", kind.code())?;
                Ok(PyErr::from_value(exc))
            }) {
                Ok(e) | Err(e) => e,
            }
        }
    }
}

/// An [`ErrorKind::InvalidInput`] error raised by the binding itself (conversion).
pub(crate) fn invalid_input(py: Python<'_>, message: String) -> PyErr {
    to_py(py, Error::new(ErrorKind::InvalidInput, message))
}
