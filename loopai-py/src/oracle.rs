//! A Python callable as the runtime's oracle.
//!
//! The callable is called with the request as a dict (`task`, `description`, `labels`,
//! `output_schema`, `input`, `timeout_ms`) and returns the output: a label (`str`) or a
//! dict of extracted fields. It runs on the validation worker threads (and, with
//! `execution.fallback: oracle`, on the thread calling `execute`): the GIL is taken only
//! around the call. An exception, an unconvertible return value, or an interpreter that is
//! shutting down is an `Oracle` error, counted by the runtime; it never propagates.

use std::fmt;

use loopai_core as core;
use pyo3::prelude::*;

use crate::convert;

pub(crate) struct PyOracle {
    callable: Py<PyAny>,
}

impl PyOracle {
    pub(crate) fn new(callable: Py<PyAny>) -> PyOracle {
        PyOracle { callable }
    }
}

impl fmt::Debug for PyOracle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PyOracle")
    }
}

fn oracle_error(message: String) -> core::Error {
    core::Error::new(core::ErrorKind::Oracle, message)
}

impl core::Oracle for PyOracle {
    fn ask(&self, request: &core::OracleRequest<'_>) -> core::Result<core::OracleAnswer> {
        let value = serde_json::to_value(request).map_err(|e| {
            core::Error::new(core::ErrorKind::Internal, format!("oracle request: {e}"))
        })?;
        let outcome = Python::try_attach(|py| -> Result<serde_json::Value, String> {
            let arg = convert::to_py(py, &value).map_err(|e| e.to_string())?;
            let out = self
                .callable
                .bind(py)
                .call1((arg,))
                .map_err(|e| format!("the Python oracle raised {e}"))?;
            convert::to_value(&out).map_err(|e| e.describe("the Python oracle's return value"))
        });
        match outcome {
            Some(Ok(output)) => Ok(core::OracleAnswer::new(output)),
            Some(Err(message)) => Err(oracle_error(message)),
            None => Err(oracle_error(
                "the Python interpreter is not available (shutting down?)".to_owned(),
            )),
        }
    }
}
