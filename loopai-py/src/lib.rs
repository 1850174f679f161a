//! `loopai._loopai`: the native module of the `loopai-runtime` Python package.
//!
//! The public package is `python/loopai`, which re-exports everything defined here and
//! registers the `atexit` flush. This crate is a thin layer over `loopai-core`: it
//! converts arguments, releases the GIL around every core call, and maps each
//! `ErrorKind` to its exception class. It holds no logic of its own.

mod artifacts;
mod convert;
mod errors;
mod oracle;
mod runtime;

use pyo3::prelude::*;

/// The module's Rust allocations (Python objects keep CPython's allocator). `execute`
/// allocates the execution record that the dataset writer thread frees: with glibc's
/// malloc each such free takes the lock of the calling thread's arena, and the two
/// threads contend on it (futex waits and wake-ups on every call); mimalloc frees
/// cross-thread without a lock.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Native module of the `loopai` package (import `loopai`, not this module).
#[pymodule]
fn _loopai(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    m.add_class::<runtime::PyRuntime>()?;
    m.add_class::<runtime::PyExecutionResult>()?;
    m.add_function(wrap_pyfunction!(artifacts::install_program, m)?)?;
    m.add_function(wrap_pyfunction!(artifacts::synthesize, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::_flush_all, m)?)?;
    Ok(())
}
