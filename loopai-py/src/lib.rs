//! `loopai._loopai`: the native module of the `loopai-runtime` Python package.
//!
//! The public package is `python/loopai`, which re-exports everything defined here and
//! registers the `atexit` flush. This crate is a thin layer over `loopai-core` (and
//! `loopai-gateway`, under `loopai.wrap`): it converts arguments, releases the GIL around
//! every core call, and maps each `ErrorKind` to its exception class. It holds no logic of
//! its own.

mod artifacts;
mod convert;
mod errors;
mod gateway;
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
    m.add_class::<gateway::PyGateway>()?;
    m.add_class::<gateway::PyLocalAnswer>()?;
    m.add_class::<gateway::PyPending>()?;
    m.add_function(wrap_pyfunction!(gateway::add_task, m)?)?;
    m.add_function(wrap_pyfunction!(artifacts::install_program, m)?)?;
    m.add_function(wrap_pyfunction!(artifacts::synthesize, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::_flush_all, m)?)?;
    m.add_function(wrap_pyfunction!(_cli_main, m)?)?;
    Ok(())
}

/// Runs the ``loopai`` command (the same CLI as the Rust binary) with ``argv``, the
/// program name first, and returns its exit status (0 success, 1 failure, 2 usage error).
/// It writes to the process's stdout and stderr directly. The GIL is released while it
/// runs. Used by ``loopai.__main__`` (the wheel's ``loopai`` script, ``python -m loopai``).
#[pyfunction]
fn _cli_main(py: Python<'_>, argv: Vec<std::ffi::OsString>) -> i32 {
    py.detach(|| loopai_cli::main_with_args(argv))
}
