//! Conversions between Python objects and `serde_json::Value`, done while attached to the
//! interpreter and before any core call.
//!
//! Python to JSON accepts exactly what `json.dumps` accepts with `allow_nan=False` and
//! string keys: `dict` (string keys), `list`, `tuple`, `str`, `int` (64-bit), `float`
//! (finite), `bool` and `None`, and subclasses of those. Anything else is an
//! `InvalidInput` error naming the JSON path of the offending value.

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde_json::{Map, Number, Value};

/// Nesting deeper than this is refused (it also stops self-referencing containers).
pub(crate) const MAX_DEPTH: usize = 128;

/// Why a Python object could not be converted, and where (`/a/0/b`).
#[derive(Debug)]
pub(crate) struct ConvertError {
    path: Vec<String>,
    message: String,
}

impl ConvertError {
    fn new(message: String) -> ConvertError {
        ConvertError {
            path: Vec::new(),
            message,
        }
    }

    fn at(mut self, segment: impl Into<String>) -> ConvertError {
        self.path.push(segment.into());
        self
    }

    /// `"{what} /a/0: {message}"`, in the core's style (`input /text: ...`).
    pub(crate) fn describe(&self, what: &str) -> String {
        let mut path = String::new();
        for segment in self.path.iter().rev() {
            path.push('/');
            // JSON Pointer escaping.
            path.push_str(&segment.replace('~', "~0").replace('/', "~1"));
        }
        if path.is_empty() {
            format!("{what}: {}", self.message)
        } else {
            format!("{what} {path}: {}", self.message)
        }
    }
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "object".to_owned())
}

fn string(s: &Bound<'_, PyString>) -> Result<String, ConvertError> {
    s.to_cow()
        .map(|c| c.into_owned())
        .map_err(|e| ConvertError::new(format!("string is not valid UTF-8: {e}")))
}

/// Converts a Python object to JSON.
pub(crate) fn to_value(obj: &Bound<'_, PyAny>) -> Result<Value, ConvertError> {
    to_value_at(obj, 0)
}

fn to_value_at(obj: &Bound<'_, PyAny>, depth: usize) -> Result<Value, ConvertError> {
    if depth > MAX_DEPTH {
        return Err(ConvertError::new(format!(
            "nested more than {MAX_DEPTH} levels deep (or a container that contains itself)"
        )));
    }
    // Most frequent first: strings and dicts, then scalars.
    if let Ok(s) = obj.cast::<PyString>() {
        return string(s).map(Value::String);
    }
    if let Ok(dict) = obj.cast::<PyDict>() {
        let mut map = Map::new();
        for (key, value) in dict.iter() {
            let key = match key.cast::<PyString>() {
                Ok(k) => string(k)?,
                Err(_) => {
                    return Err(ConvertError::new(format!(
                        "object keys must be strings, got {}",
                        type_name(&key)
                    )))
                }
            };
            match to_value_at(&value, depth + 1) {
                Ok(v) => {
                    map.insert(key, v);
                }
                Err(e) => return Err(e.at(key)),
            }
        }
        return Ok(Value::Object(map));
    }
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if obj.is_none() {
        return Ok(Value::Null);
    }
    if obj.cast::<PyInt>().is_ok() {
        if let Ok(i) = obj.extract::<i64>() {
            return Ok(Value::from(i));
        }
        if let Ok(u) = obj.extract::<u64>() {
            return Ok(Value::from(u));
        }
        return Err(ConvertError::new(
            "integer does not fit in 64 bits".to_owned(),
        ));
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        return Number::from_f64(f.value())
            .map(Value::Number)
            .ok_or_else(|| ConvertError::new(format!("{} is not a JSON number", f.value())));
    }
    if let Ok(list) = obj.cast::<PyList>() {
        let mut out = Vec::with_capacity(list.len());
        for (i, item) in list.iter().enumerate() {
            out.push(to_value_at(&item, depth + 1).map_err(|e| e.at(i.to_string()))?);
        }
        return Ok(Value::Array(out));
    }
    if let Ok(tuple) = obj.cast::<PyTuple>() {
        let mut out = Vec::with_capacity(tuple.len());
        for (i, item) in tuple.iter().enumerate() {
            out.push(to_value_at(&item, depth + 1).map_err(|e| e.at(i.to_string()))?);
        }
        return Ok(Value::Array(out));
    }
    Err(ConvertError::new(format!(
        "cannot convert {} to JSON (expected dict, list, tuple, str, int, float, bool or None)",
        type_name(obj)
    )))
}

/// Converts JSON to the equivalent Python object (`dict`, `list`, `str`, `int`, `float`,
/// `bool`, `None`).
pub(crate) fn to_py<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match value {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into_pyobject(py)?.into_any()
            } else if let Some(u) = n.as_u64() {
                u.into_pyobject(py)?.into_any()
            } else {
                n.as_f64().unwrap_or(f64::NAN).into_pyobject(py)?.into_any()
            }
        }
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(to_py(py, item)?)?;
            }
            list.into_any()
        }
        Value::Object(map) => {
            let dict = PyDict::new(py);
            for (k, v) in map {
                dict.set_item(k, to_py(py, v)?)?;
            }
            dict.into_any()
        }
    })
}
