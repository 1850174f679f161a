//! # libloopai — the Loopai C ABI
//!
//! This crate builds `libloopai.so` and `libloopai.a`, a C interface to
//! [`loopai_core::Runtime`]. The header `include/loopai.h` is generated from this file by
//! cbindgen (see `cbindgen.toml`) and committed; `tests/header.rs` fails when it is stale
//! (`LOOPAI_BLESS=1 cargo test -p loopai-ffi --test header` rewrites it).
//!
//! The user documentation is `docs/c-api.md`. The conventions, in short:
//!
//! * Every fallible function returns a [`loopai_status_t`]: [`LOOPAI_OK`] (0) or the
//!   negative code of a [`loopai_core::ErrorKind`]. Its outputs are written only on success.
//!   On failure, if the caller passed a non-NULL `err`, `*err` receives a new
//!   `loopai_error_t` (message and code) that the caller frees with [`loopai_error_free`].
//! * Every owned type has exactly one `_free` function, which accepts NULL.
//! * NULL arguments, invalid UTF-8 and invalid JSON are errors, never crashes; every entry
//!   point catches panics and reports them as `LOOPAI_E_INTERNAL`.
//! * There is no thread-local "last error": errors travel in the error object, so callers
//!   whose threads move (Go goroutines, .NET tasks) see the right one.
//! * An oracle can be a C function pointer (`loopai_runtime_new_with_oracle`): it receives
//!   the request as JSON and answers through a `loopai_oracle_reply_t`; an adapter
//!   (`CallbackOracle`) implements [`loopai_core::Oracle`] and releases `user_data` when
//!   the last reference to it goes.
//!
//! The sources follow the C types, one file each (like wasmtime's `crates/c-api`):
//! `runtime.rs` (`loopai_runtime_t`), `result.rs` (`loopai_result_t`), `error.rs`
//! (`loopai_error_t`), `oracle.rs` (the callback, `loopai_oracle_reply_t`), `string.rs`
//! (owned strings), `status.rs` (the status codes), `args.rs` (argument checks) and
//! `guard.rs` (the panic guard every entry point runs in); `loopai_version` is here.
//! cbindgen follows the `mod` declarations below in order; that order is the header's.

// The C names (`loopai_runtime_t`, `loopai_status_t`) are the ABI.
#![allow(non_camel_case_types)]
// Each function's contract is stated in its doc comment in C terms (it is the header's
// documentation), rather than under a Rust `# Safety` heading.
#![allow(clippy::missing_safety_doc)]

mod args;
mod guard;

// The header lists the status codes first, then the functions in the order of the
// modules below (rustfmt keeps `mod` items that are separated by blank lines in place).
mod status;

mod runtime;

mod oracle;

mod result;

mod error;

mod string;

pub use error::{loopai_error_code, loopai_error_free, loopai_error_message, loopai_error_t};
pub use oracle::{
    loopai_free_fn, loopai_oracle_fn, loopai_oracle_reply_set, loopai_oracle_reply_set_error,
    loopai_oracle_reply_t,
};
pub use result::{
    loopai_result_confidence, loopai_result_free, loopai_result_json, loopai_result_output_json,
    loopai_result_t, loopai_result_version,
};
pub use runtime::{
    loopai_runtime_abort_rollout, loopai_runtime_active_version, loopai_runtime_begin_rollout,
    loopai_runtime_execute, loopai_runtime_execute_batch, loopai_runtime_execute_with_key,
    loopai_runtime_flush, loopai_runtime_free, loopai_runtime_health_json, loopai_runtime_new,
    loopai_runtime_new_with_oracle, loopai_runtime_promote, loopai_runtime_rollout_json,
    loopai_runtime_shutdown, loopai_runtime_t, loopai_runtime_validation_metrics_json,
};
pub use status::{
    loopai_status_str, loopai_status_t, LOOPAI_E_ARTIFACT, LOOPAI_E_CLOSED, LOOPAI_E_CONFIG,
    LOOPAI_E_INTERNAL, LOOPAI_E_INVALID_INPUT, LOOPAI_E_INVALID_OUTPUT, LOOPAI_E_IO,
    LOOPAI_E_ORACLE, LOOPAI_E_PROGRAM, LOOPAI_E_SCHEMA, LOOPAI_E_TIMEOUT, LOOPAI_OK,
};
pub use string::loopai_string_free;

use std::ffi::c_char;

// The library's own allocations (the host's `malloc` is untouched: every pointer this
// library returns is freed by one of its `loopai_*_free` functions). The dataset writer
// thread frees the execution records that `execute` allocated on the caller's thread;
// glibc's malloc takes an arena lock for each such cross-thread free, mimalloc does not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The library version, e.g. "0.1.0".
///
/// Returns a static string: never free it. Thread-safe.
#[no_mangle]
pub extern "C" fn loopai_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
