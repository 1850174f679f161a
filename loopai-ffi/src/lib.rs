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

// The C names (`loopai_runtime_t`, `loopai_status_t`) are the ABI.
#![allow(non_camel_case_types)]
// Each function's contract is stated in its doc comment in C terms (it is the header's
// documentation), rather than under a Rust `# Safety` heading.
#![allow(clippy::missing_safety_doc)]

use std::any::Any;
use std::ffi::{c_char, c_void, CStr, CString};
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use loopai_core::{
    DeploymentConfig, Error, ErrorKind, ExecutionResult, Oracle, OracleAnswer, OracleRequest,
    Runtime, MAX_INPUT_DOCUMENT_BYTES,
};
use serde_json::Value;

// The library's own allocations (the host's `malloc` is untouched: every pointer this
// library returns is freed by one of its `loopai_*_free` functions). The dataset writer
// thread frees the execution records that `execute` allocated on the caller's thread;
// glibc's malloc takes an arena lock for each such cross-thread free, mimalloc does not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A status code: `LOOPAI_OK` (0) on success, one of the negative `LOOPAI_E_*` codes on
/// failure. The codes are stable across releases; new ones may be added.
pub type loopai_status_t = i32;

/// Success.
pub const LOOPAI_OK: loopai_status_t = 0;
/// The input is malformed, too large or does not match the task's input schema; also a
/// NULL argument or a string that is not valid UTF-8.
pub const LOOPAI_E_INVALID_INPUT: loopai_status_t = -1;
/// A program is malformed, fails validation or exceeds a limit.
pub const LOOPAI_E_PROGRAM: loopai_status_t = -2;
/// A task's input or output schema is malformed or unsupported.
pub const LOOPAI_E_SCHEMA: loopai_status_t = -3;
/// The program's output does not match the task's output schema.
pub const LOOPAI_E_INVALID_OUTPUT: loopai_status_t = -4;
/// An artifact is missing, corrupt, or does not match its recorded sha256.
pub const LOOPAI_E_ARTIFACT: loopai_status_t = -5;
/// The configuration (data_dir, task_id, config_json, deployment.yaml) is invalid.
pub const LOOPAI_E_CONFIG: loopai_status_t = -6;
/// Reading or writing local storage failed.
pub const LOOPAI_E_IO: loopai_status_t = -7;
/// An operation did not finish within its timeout.
pub const LOOPAI_E_TIMEOUT: loopai_status_t = -8;
/// The runtime has been shut down, or was created before fork() in another process.
pub const LOOPAI_E_CLOSED: loopai_status_t = -9;
/// A bug in loopai (for example a caught panic). Please report it.
pub const LOOPAI_E_INTERNAL: loopai_status_t = -10;
/// The oracle failed: unreachable, timed out, or answered something not allowed.
pub const LOOPAI_E_ORACLE: loopai_status_t = -11;

/// A runtime for one task (opaque). Created by `loopai_runtime_new`, freed by
/// `loopai_runtime_free`.
#[derive(Debug)]
pub struct loopai_runtime_t {
    runtime: Runtime,
}

/// The result of one execution (opaque). Freed by `loopai_result_free`.
#[derive(Debug)]
pub struct loopai_result_t {
    result: ExecutionResult,
    json: OnceLock<CString>,
    output_json: OnceLock<CString>,
}

/// An error: a status code and a message (opaque). Freed by `loopai_error_free`.
#[derive(Debug)]
pub struct loopai_error_t {
    code: loopai_status_t,
    message: CString,
}

/// Where an oracle callback puts its answer (opaque): see `loopai_oracle_fn`. It belongs
/// to the library and is valid only during the callback that received it.
#[derive(Debug, Default)]
pub struct loopai_oracle_reply_t {
    /// The reply document set by `loopai_oracle_reply_set`.
    answer: Option<Vec<u8>>,
    /// The message set by `loopai_oracle_reply_set_error`.
    error: Option<String>,
    /// Why a setter call was refused (reported if the callback still returns 0).
    misuse: Option<String>,
}

/// An oracle callback, called with the `user_data` given to
/// `loopai_runtime_new_with_oracle` and one request: `request_json` points to
/// `request_len` bytes of UTF-8 JSON (also NUL-terminated), valid during the call only:
///
/// `{"task": "spam", "description": "...", "labels": ["spam", "ham"], "output_schema":
/// null, "input": {"text": "..."}, "timeout_ms": 10000}`
///
/// On success it calls `loopai_oracle_reply_set(reply, answer_json, len)` with
/// `{"output": <label or object>, "cost": <number, optional>}` and returns 0. To fail it
/// returns any other value, optionally after `loopai_oracle_reply_set_error(reply, message,
/// len)`. Returning 0 without a reply set, a reply that is not such an object, or an output
/// that is not an allowed label (or, for extraction, an object matching the output schema)
/// is an oracle error too. Oracle errors are counted in the validation metrics
/// (`oracle_errors`, `oracle_fallback_failures`); they never fail `loopai_runtime_execute`.
///
/// `reply` is owned by the library and valid only until the callback returns; call the
/// setters from within the callback (from any thread, one at a time).
///
/// Threading: the callback is called from the runtime's validation threads
/// (`validation.workers`, default 2) and, with `execution.fallback: oracle`, from the
/// threads calling `loopai_runtime_execute`, concurrently: it must be thread-safe. It
/// should answer within `timeout_ms` (a cascade answer arriving later is discarded; the
/// call cannot be interrupted). It must not call `loopai_runtime_flush`,
/// `loopai_runtime_shutdown` or `loopai_runtime_free` on its own runtime, and must not
/// unwind (C++ exceptions, longjmp) out of the call.
pub type loopai_oracle_fn = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        request_json: *const c_char,
        request_len: usize,
        reply: *mut loopai_oracle_reply_t,
    ) -> i32,
>;

/// Releases the `user_data` of a callback (see `loopai_runtime_new_with_oracle`).
pub type loopai_free_fn = Option<unsafe extern "C" fn(user_data: *mut c_void)>;

// ---------------------------------------------------------------------------------------
// Plumbing

fn cstring_lossy(text: String) -> CString {
    CString::new(text).unwrap_or_else(|e| {
        let mut bytes = e.into_vec();
        bytes.retain(|&b| b != 0);
        CString::new(bytes).unwrap_or_default()
    })
}

fn panic_error(function: &str, payload: Box<dyn Any + Send>) -> Error {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned());
    Error::new(
        ErrorKind::Internal,
        format!("{function}: panic caught at the C boundary: {what} (this is a bug in loopai, please report it)"),
    )
}

/// Runs `f`, turning an error or a panic into a status code and, if `err` is not NULL, an
/// error object.
fn guard(
    function: &str,
    err: *mut *mut loopai_error_t,
    f: impl FnOnce() -> Result<(), Error>,
) -> loopai_status_t {
    let outcome = catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|payload| Err(panic_error(function, payload)));
    match outcome {
        Ok(()) => LOOPAI_OK,
        Err(e) => {
            let code = e.kind().code();
            if !err.is_null() {
                let error = Box::new(loopai_error_t {
                    code,
                    message: cstring_lossy(e.to_string()),
                });
                // SAFETY: the caller passes either NULL or a valid `loopai_error_t **`.
                unsafe { *err = Box::into_raw(error) };
            }
            code
        }
    }
}

/// Runs an infallible accessor, returning `fallback` if it panics.
fn guard_value<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(fallback)
}

fn null_error(function: &str, arg: &str, kind: ErrorKind) -> Error {
    Error::new(kind, format!("{function}: {arg} is NULL"))
}

/// Reads a NUL-terminated UTF-8 string argument.
///
/// SAFETY: `p` is NULL or points to a NUL-terminated string valid for the call.
unsafe fn c_str<'a>(
    function: &str,
    arg: &str,
    p: *const c_char,
    kind: ErrorKind,
) -> Result<&'a str, Error> {
    if p.is_null() {
        return Err(null_error(function, arg, kind));
    }
    // SAFETY: guaranteed by the caller.
    let c = unsafe { CStr::from_ptr(p) };
    c.to_str().map_err(|e| {
        Error::new(
            kind,
            format!(
                "{function}: {arg} is not valid UTF-8 (at byte {})",
                e.valid_up_to()
            ),
        )
    })
}

/// Reads a pointer + length byte argument.
///
/// SAFETY: `p` is NULL or points to `len` readable bytes valid for the call.
unsafe fn byte_slice<'a>(
    function: &str,
    arg: &str,
    p: *const u8,
    len: usize,
) -> Result<&'a [u8], Error> {
    if p.is_null() {
        return Err(null_error(function, arg, ErrorKind::InvalidInput));
    }
    if len > isize::MAX as usize {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("{function}: {arg}: length {len} is not a valid buffer size"),
        ));
    }
    // SAFETY: guaranteed by the caller; the length is within isize::MAX.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// SAFETY: `rt` is NULL or a live runtime from `loopai_runtime_new`.
unsafe fn runtime_ref<'a>(
    function: &str,
    rt: *const loopai_runtime_t,
) -> Result<&'a Runtime, Error> {
    // SAFETY: guaranteed by the caller.
    unsafe { rt.as_ref() }
        .map(|rt| &rt.runtime)
        .ok_or_else(|| null_error(function, "rt", ErrorKind::InvalidInput))
}

fn check_out<T>(function: &str, out: *mut *mut T) -> Result<(), Error> {
    if out.is_null() {
        Err(null_error(function, "out", ErrorKind::InvalidInput))
    } else {
        Ok(())
    }
}

fn timeout(ms: u32) -> Duration {
    Duration::from_millis(u64::from(ms))
}

// ---------------------------------------------------------------------------------------
// Library

/// The library version, e.g. "0.1.0".
///
/// Returns a static string: never free it. Thread-safe.
#[no_mangle]
pub extern "C" fn loopai_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// A short, stable name for a status code: "ok", "invalid_input", "program", "schema",
/// "invalid_output", "artifact", "config", "io", "timeout", "closed", "internal",
/// "oracle", or "unknown" for any other value.
///
/// Returns a static string: never free it. Thread-safe.
#[no_mangle]
pub extern "C" fn loopai_status_str(code: loopai_status_t) -> *const c_char {
    let name: &'static CStr = match code {
        LOOPAI_OK => c"ok",
        LOOPAI_E_INVALID_INPUT => c"invalid_input",
        LOOPAI_E_PROGRAM => c"program",
        LOOPAI_E_SCHEMA => c"schema",
        LOOPAI_E_INVALID_OUTPUT => c"invalid_output",
        LOOPAI_E_ARTIFACT => c"artifact",
        LOOPAI_E_CONFIG => c"config",
        LOOPAI_E_IO => c"io",
        LOOPAI_E_TIMEOUT => c"timeout",
        LOOPAI_E_CLOSED => c"closed",
        LOOPAI_E_INTERNAL => c"internal",
        LOOPAI_E_ORACLE => c"oracle",
        _ => c"unknown",
    };
    name.as_ptr()
}

// ---------------------------------------------------------------------------------------
// Runtime

/// Creates a runtime for task `task_id` in `data_dir`: loads the task's active program
/// from `<data_dir>/artifacts/<task_id>/` and starts the execution-log writer thread.
///
/// `config_json` is NULL (read `<data_dir>/config/deployment.yaml` if it exists, else use
/// the defaults) or a NUL-terminated JSON object with the same keys as deployment.yaml.
/// All strings are NUL-terminated UTF-8 and only read during the call.
///
/// On success `*out` receives a new runtime, owned by the caller, to be freed with
/// `loopai_runtime_free`. On failure `*out` is untouched and, if `err` is not NULL, `*err`
/// receives a new error object (free it with `loopai_error_free`).
///
/// Errors: LOOPAI_E_CONFIG (NULL or non-UTF-8 data_dir/task_id, bad config_json or
/// deployment.yaml), LOOPAI_E_ARTIFACT (no active program, corrupt artifact),
/// LOOPAI_E_PROGRAM, LOOPAI_E_SCHEMA, LOOPAI_E_IO, LOOPAI_E_INVALID_INPUT (`out` is NULL).
///
/// Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn loopai_runtime_new(
    data_dir: *const c_char,
    task_id: *const c_char,
    config_json: *const c_char,
    out: *mut *mut loopai_runtime_t,
    err: *mut *mut loopai_error_t,
) -> loopai_status_t {
    const F: &str = "loopai_runtime_new";
    guard(F, err, || {
        // SAFETY: per this function's contract.
        unsafe { new_runtime(F, data_dir, task_id, config_json, None, out) }
    })
}

/// Creates a runtime as `loopai_runtime_new` does, with `oracle` as its oracle: it
/// validates sampled executions in the background and, with `execution.fallback: oracle`,
/// answers when the program abstains. It wins over the configuration's `oracle` section.
/// See `loopai_oracle_fn` for the callback's contract and docs/oracle.md for the request.
///
/// `user_data` is passed to every call of `oracle` and to `free_user_data`. The runtime
/// takes charge of it: `free_user_data` (if not NULL) is called exactly once, when the
/// library will never call `oracle` again: when the last reference to the oracle goes,
/// normally inside `loopai_runtime_free`, but later (on a validation thread) if a call of
/// `oracle` was still running when the runtime was freed; and before this function returns
/// if it fails, whatever the error (a NULL `oracle` included). Until then `user_data` must
/// stay valid. Without `free_user_data`, keep `user_data` valid until `loopai_runtime_free`
/// has returned and no call of `oracle` is running any more.
///
/// Errors: those of `loopai_runtime_new`, and LOOPAI_E_CONFIG when `oracle` is NULL.
///
/// Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn loopai_runtime_new_with_oracle(
    data_dir: *const c_char,
    task_id: *const c_char,
    config_json: *const c_char,
    oracle: loopai_oracle_fn,
    user_data: *mut c_void,
    free_user_data: loopai_free_fn,
    out: *mut *mut loopai_runtime_t,
    err: *mut *mut loopai_error_t,
) -> loopai_status_t {
    const F: &str = "loopai_runtime_new_with_oracle";
    // Built first, so that every failure below releases `user_data` (by dropping it).
    let callback = CallbackOracle {
        callback: oracle,
        user_data,
        free_user_data,
    };
    guard(F, err, move || {
        if callback.callback.is_none() {
            return Err(null_error(F, "oracle", ErrorKind::Config));
        }
        let oracle: Arc<dyn Oracle> = Arc::new(callback);
        // SAFETY: per this function's contract.
        unsafe { new_runtime(F, data_dir, task_id, config_json, Some(oracle), out) }
    })
}

/// SAFETY: each string is NULL or NUL-terminated; `out` is NULL or writable.
unsafe fn new_runtime(
    function: &str,
    data_dir: *const c_char,
    task_id: *const c_char,
    config_json: *const c_char,
    oracle: Option<Arc<dyn Oracle>>,
    out: *mut *mut loopai_runtime_t,
) -> Result<(), Error> {
    check_out(function, out)?;
    // SAFETY: per this function's contract, each string is NULL or NUL-terminated.
    let data_dir = unsafe { c_str(function, "data_dir", data_dir, ErrorKind::Config)? };
    // SAFETY: as above.
    let task_id = unsafe { c_str(function, "task_id", task_id, ErrorKind::Config)? };
    let mut builder = Runtime::builder().data_dir(data_dir).task(task_id);
    if !config_json.is_null() {
        // SAFETY: as above.
        let text = unsafe { c_str(function, "config_json", config_json, ErrorKind::Config)? };
        let value: Value = serde_json::from_str(text).map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!(
                    "config_json: not valid JSON at line {} column {}: {e}",
                    e.line(),
                    e.column()
                ),
            )
        })?;
        if !value.is_object() {
            return Err(Error::new(
                ErrorKind::Config,
                "config_json: expected a JSON object with deployment.yaml's keys",
            ));
        }
        builder = builder.config(DeploymentConfig::from_json_value(&value, "config_json")?);
    }
    if let Some(oracle) = oracle {
        builder = builder.oracle(oracle);
    }
    let runtime = builder.build()?;
    let handle = Box::into_raw(Box::new(loopai_runtime_t { runtime }));
    // SAFETY: `out` is not NULL (checked) and points to writable storage per contract.
    unsafe { *out = handle };
    Ok(())
}

/// Executes the task's active program on one input, a JSON object of `input_len` bytes of
/// UTF-8 at `input_json` (not NUL-terminated; at most 16 MiB; only read during the call),
/// and logs the execution.
///
/// On success `*out` receives a new result, owned by the caller, to be freed with
/// `loopai_result_free`. On failure `*out` is untouched and, if `err` is not NULL, `*err`
/// receives a new error object.
///
/// Errors: LOOPAI_E_INVALID_INPUT (NULL argument, invalid UTF-8 or JSON, not an object,
/// schema mismatch, text too long), LOOPAI_E_INVALID_OUTPUT, LOOPAI_E_CLOSED (after
/// `loopai_runtime_shutdown`, or in a child process after fork()), LOOPAI_E_IO (durable
/// mode only).
///
/// Thread-safe: any number of threads may execute on one runtime at once.
#[no_mangle]
pub unsafe extern "C" fn loopai_runtime_execute(
    rt: *const loopai_runtime_t,
    input_json: *const u8,
    input_len: usize,
    out: *mut *mut loopai_result_t,
    err: *mut *mut loopai_error_t,
) -> loopai_status_t {
    const F: &str = "loopai_runtime_execute";
    guard(F, err, || {
        // SAFETY: `rt` is NULL or a live runtime, per contract.
        let runtime = unsafe { runtime_ref(F, rt)? };
        check_out(F, out)?;
        // SAFETY: `input_json` is NULL or points to `input_len` bytes, per contract.
        let input = unsafe { byte_slice(F, "input_json", input_json, input_len)? };
        let result = runtime.execute_json(input)?;
        // SAFETY: `out` is not NULL (checked) and writable per contract.
        unsafe { write_result(result, out) };
        Ok(())
    })
}

/// Executes as `loopai_runtime_execute` does, with the routing key of a canary rollout
/// given by the caller: `key` is a NUL-terminated UTF-8 string (a user id, a session id;
/// only read during the call). During a rollout the same key is served by the same version
/// for the whole stage, and stays on the canary as its share grows (see docs/rollout.md);
/// the result's `version` says which version served it. Without a rollout in progress the
/// key is not used. `input_json` and `input_len` are as for `loopai_runtime_execute`.
///
/// On success `*out` receives a new result, owned by the caller, to be freed with
/// `loopai_result_free`. On failure `*out` is untouched and, if `err` is not NULL, `*err`
/// receives a new error object.
///
/// Errors: those of `loopai_runtime_execute`, and LOOPAI_E_INVALID_INPUT when `key` is NULL
/// or not valid UTF-8.
///
/// Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn loopai_runtime_execute_with_key(
    rt: *const loopai_runtime_t,
    input_json: *const u8,
    input_len: usize,
    key: *const c_char,
    out: *mut *mut loopai_result_t,
    err: *mut *mut loopai_error_t,
) -> loopai_status_t {
    const F: &str = "loopai_runtime_execute_with_key";
    guard(F, err, || {
        // SAFETY: `rt` is NULL or a live runtime, per contract.
        let runtime = unsafe { runtime_ref(F, rt)? };
        check_out(F, out)?;
        // SAFETY: `input_json` is NULL or points to `input_len` bytes, per contract.
        let input = unsafe { byte_slice(F, "input_json", input_json, input_len)? };
        // SAFETY: `key` is NULL or NUL-terminated, per contract.
        let key = unsafe { c_str(F, "key", key, ErrorKind::InvalidInput)? };
        let result = runtime.execute_json_with_key(input, key)?;
        // SAFETY: `out` is not NULL (checked) and writable per contract.
        unsafe { write_result(result, out) };
        Ok(())
    })
}

/// Moves `result` into a new `loopai_result_t` at `*out`.
///
/// SAFETY: `out` is not NULL and writable.
unsafe fn write_result(result: ExecutionResult, out: *mut *mut loopai_result_t) {
    let handle = Box::into_raw(Box::new(loopai_result_t {
        result,
        json: OnceLock::new(),
        output_json: OnceLock::new(),
    }));
    // SAFETY: guaranteed by the caller.
    unsafe { *out = handle };
}

/// Executes a batch: `inputs_json` is a JSON array of input objects (`inputs_len` bytes of
/// UTF-8, not NUL-terminated, at most 16 MiB). Each input is executed and logged as by
/// `loopai_runtime_execute`.
///
/// On success `*out_json` receives a new NUL-terminated JSON array with one element per
/// input, in order: the result object (as `loopai_result_json`), or
/// `{"error": {"code": <status>, "kind": "<name>", "message": "..."}}` for an input that
/// failed. The caller owns it and frees it with `loopai_string_free`. A failing element does
/// not fail the call; a document that is not a JSON array does (LOOPAI_E_INVALID_INPUT).
/// On failure `*out_json` is untouched and `*err` is set as usual.
///
/// Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn loopai_runtime_execute_batch(
    rt: *const loopai_runtime_t,
    inputs_json: *const u8,
    inputs_len: usize,
    out_json: *mut *mut c_char,
    err: *mut *mut loopai_error_t,
) -> loopai_status_t {
    const F: &str = "loopai_runtime_execute_batch";
    guard(F, err, || {
        // SAFETY: `rt` is NULL or a live runtime, per contract.
        let runtime = unsafe { runtime_ref(F, rt)? };
        check_out(F, out_json)?;
        // SAFETY: `inputs_json` is NULL or points to `inputs_len` bytes, per contract.
        let bytes = unsafe { byte_slice(F, "inputs_json", inputs_json, inputs_len)? };
        if bytes.len() > MAX_INPUT_DOCUMENT_BYTES {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "inputs_json: {} bytes, over the limit of {MAX_INPUT_DOCUMENT_BYTES} bytes",
                    bytes.len()
                ),
            ));
        }
        let inputs: Vec<Value> = serde_json::from_slice(bytes).map_err(|e| {
            Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "inputs_json: not a valid JSON array at line {} column {}: {e}",
                    e.line(),
                    e.column()
                ),
            )
        })?;
        let results = runtime.execute_batch(&inputs);
        let mut text = String::from("[");
        for (i, result) in results.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            let item = match result {
                Ok(r) => serde_json::to_string(r),
                Err(e) => serde_json::to_string(&serde_json::json!({"error": {
                    "code": e.kind().code(), "kind": e.kind().name(), "message": e.message()}})),
            };
            text.push_str(&item.map_err(|e| {
                Error::new(
                    ErrorKind::Internal,
                    format!("{F}: cannot serialize a result: {e}"),
                )
            })?);
        }
        text.push(']');
        let owned = cstring_lossy(text).into_raw();
        // SAFETY: `out_json` is not NULL (checked) and writable per contract.
        unsafe { *out_json = owned };
        Ok(())
    })
}

/// Makes every execution accepted so far durable (written and fsync'd), waiting at most
/// `timeout_ms` milliseconds.
///
/// Errors: LOOPAI_E_TIMEOUT, LOOPAI_E_IO, LOOPAI_E_CLOSED, LOOPAI_E_INVALID_INPUT (`rt` is
/// NULL). On failure, if `err` is not NULL, `*err` receives a new error object.
///
/// Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn loopai_runtime_flush(
    rt: *const loopai_runtime_t,
    timeout_ms: u32,
    err: *mut *mut loopai_error_t,
) -> loopai_status_t {
    const F: &str = "loopai_runtime_flush";
    guard(F, err, || {
        // SAFETY: `rt` is NULL or a live runtime, per contract.
        unsafe { runtime_ref(F, rt)? }.flush(timeout(timeout_ms))
    })
}

/// Flushes and stops the runtime's background thread, waiting at most `timeout_ms`
/// milliseconds. Later executions fail with LOOPAI_E_CLOSED; calling it again is harmless.
/// The runtime must still be freed with `loopai_runtime_free`.
///
/// Errors: LOOPAI_E_TIMEOUT, LOOPAI_E_IO, LOOPAI_E_CLOSED (in a child after fork()),
/// LOOPAI_E_INVALID_INPUT (`rt` is NULL).
///
/// Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn loopai_runtime_shutdown(
    rt: *const loopai_runtime_t,
    timeout_ms: u32,
    err: *mut *mut loopai_error_t,
) -> loopai_status_t {
    const F: &str = "loopai_runtime_shutdown";
    guard(F, err, || {
        // SAFETY: `rt` is NULL or a live runtime, per contract.
        unsafe { runtime_ref(F, rt)? }.shutdown(timeout(timeout_ms))
    })
}

/// The artifact version executing now, or 0 if `rt` is NULL.
///
/// Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn loopai_runtime_active_version(rt: *const loopai_runtime_t) -> u32 {
    guard_value(0, || {
        // SAFETY: `rt` is NULL or a live runtime, per contract.
        unsafe { runtime_ref("loopai_runtime_active_version", rt) }
            .map(Runtime::active_version)
            .unwrap_or(0)
    })
}

/// The runtime's health as a JSON object: `status` ("ok" or "degraded"), `task`,
/// `active_version`, the execution-log counters under `dataset`, the telemetry counters
/// under `telemetry` (`null` when telemetry is off: spool depth `spooled_batches`, `sent`,
/// `retries`, drops, `last_error`; see docs/telemetry.md), the validation metrics under
/// `validation` (as `loopai_runtime_validation_metrics_json`), and the rollout under
/// `rollout` (as `loopai_runtime_rollout_json`; `null` when the task never had one).
///
/// On success `*out_json` receives a new NUL-terminated string owned by the caller, to be
/// freed with `loopai_string_free`. Errors: LOOPAI_E_INVALID_INPUT (NULL argument).
///
/// Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn loopai_runtime_health_json(
    rt: *const loopai_runtime_t,
    out_json: *mut *mut c_char,
    err: *mut *mut loopai_error_t,
) -> loopai_status_t {
    const F: &str = "loopai_runtime_health_json";
    guard(F, err, || {
        // SAFETY: `rt` is NULL or a live runtime, per contract.
        let runtime = unsafe { runtime_ref(F, rt)? };
        check_out(F, out_json)?;
        // SAFETY: `out_json` is not NULL (checked) and writable per contract.
        unsafe { write_json(F, &runtime.health(), out_json) }
    })
}

/// Validation against the oracle and oracle-fallback counters as a JSON object: `oracle`
/// (`"in-process"` for a callback, `"http <model> at <endpoint>"`, or `null` when there is
/// no oracle), `comparison`, `fallback`, `queued`, `validated`, `matched`, `match_rate`
/// (`null` before the first validation), `skipped_queue_full`, `skipped_no_oracle`,
/// `skipped_shutdown`, `oracle_errors`, `oracle_fallbacks`, `oracle_fallback_failures`, and
/// `versions` (per program version, with rolling match rates). See docs/oracle.md.
///
/// The counters are updated as validations finish: call `loopai_runtime_flush` first to
/// wait for the samples queued so far.
///
/// On success `*out_json` receives a new NUL-terminated string owned by the caller, to be
/// freed with `loopai_string_free`. Errors: LOOPAI_E_INVALID_INPUT (NULL argument). Works
/// after `loopai_runtime_shutdown` and, in a child process, after fork().
///
/// Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn loopai_runtime_validation_metrics_json(
    rt: *const loopai_runtime_t,
    out_json: *mut *mut c_char,
    err: *mut *mut loopai_error_t,
) -> loopai_status_t {
    const F: &str = "loopai_runtime_validation_metrics_json";
    guard(F, err, || {
        // SAFETY: `rt` is NULL or a live runtime, per contract.
        let runtime = unsafe { runtime_ref(F, rt)? };
        check_out(F, out_json)?;
        // SAFETY: `out_json` is not NULL (checked) and writable per contract.
        unsafe { write_json(F, &runtime.validation_metrics(), out_json) }
    })
}

/// Starts a canary rollout of the installed `version` (see docs/rollout.md): it serves the
/// first stage's share of executions (`rollout.stages`, 10% by default, sticky per routing
/// key) next to the active version, and is promoted stage by stage or rolled back by the
/// runtime's sequential test. The version is verified and compiled before anything
/// changes. A rollout of another version in progress is aborted (superseded); starting the
/// rollout of the canary already in progress does nothing. With `rollout.enabled: false`
/// the version is activated at once.
///
/// Errors: LOOPAI_E_ARTIFACT (the version is not installed, is corrupt, is the active
/// version, or was rolled back before: a rolled-back canary is never rolled out again
/// automatically), LOOPAI_E_PROGRAM and LOOPAI_E_SCHEMA (it does not compile, or its labels
/// are not allowed), LOOPAI_E_IO (`rollout.json` cannot be written), LOOPAI_E_CLOSED (in a
/// child process after fork()), LOOPAI_E_INVALID_INPUT (`rt` is NULL). On failure, if `err`
/// is not NULL, `*err` receives a new error object.
///
/// Thread-safe: executions go on while the canary is swapped in.
#[no_mangle]
pub unsafe extern "C" fn loopai_runtime_begin_rollout(
    rt: *const loopai_runtime_t,
    version: u32,
    err: *mut *mut loopai_error_t,
) -> loopai_status_t {
    const F: &str = "loopai_runtime_begin_rollout";
    guard(F, err, || {
        // SAFETY: `rt` is NULL or a live runtime, per contract.
        unsafe { runtime_ref(F, rt)? }.begin_rollout(version)
    })
}

/// Finishes the rollout in progress now: its canary becomes the active version (through
/// the artifact store's `active` pointer) and serves every execution.
///
/// On success, if `out_version` is not NULL, `*out_version` receives the canary's version,
/// now active. On failure it is untouched.
///
/// Errors: LOOPAI_E_ARTIFACT (no rollout in progress, or the activation failed: then the
/// rollout goes on), LOOPAI_E_INVALID_INPUT (`rt` is NULL).
///
/// Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn loopai_runtime_promote(
    rt: *const loopai_runtime_t,
    out_version: *mut u32,
    err: *mut *mut loopai_error_t,
) -> loopai_status_t {
    const F: &str = "loopai_runtime_promote";
    guard(F, err, || {
        // SAFETY: `rt` is NULL or a live runtime, per contract.
        let version = unsafe { runtime_ref(F, rt)? }.promote()?;
        if !out_version.is_null() {
            // SAFETY: `out_version` is not NULL and writable per contract.
            unsafe { *out_version = version };
        }
        Ok(())
    })
}

/// Rolls back the rollout in progress now: the canary stops serving, the stable version
/// stays active, and the canary is marked rolled back (`loopai_runtime_begin_rollout`
/// refuses it from then on; activate it by hand if it should run). Having no rollout in
/// progress is not an error.
///
/// On success, if `out_version` is not NULL, `*out_version` receives the canary's version,
/// or 0 when no rollout was in progress (nothing was done). On failure it is untouched.
///
/// Errors: LOOPAI_E_IO (`rollout.json` cannot be written), LOOPAI_E_INVALID_INPUT (`rt` is
/// NULL).
///
/// Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn loopai_runtime_abort_rollout(
    rt: *const loopai_runtime_t,
    out_version: *mut u32,
    err: *mut *mut loopai_error_t,
) -> loopai_status_t {
    const F: &str = "loopai_runtime_abort_rollout";
    guard(F, err, || {
        // SAFETY: `rt` is NULL or a live runtime, per contract.
        let version = unsafe { runtime_ref(F, rt)? }.abort_rollout()?;
        if !out_version.is_null() {
            // SAFETY: `out_version` is not NULL and writable per contract.
            unsafe { *out_version = version.unwrap_or(0) };
        }
        Ok(())
    })
}

/// The rollout in progress, or the last one with its outcome, as a JSON object: `state`
/// ("in_progress", "promoted", "rolled_back" or "aborted"), `stable_version`,
/// `canary_version`, `stage` (index in `stages`), `stages`, `fraction` (the canary's share
/// now), `started_at` (RFC 3339), `stable` and `canary` (per-arm statistics: `version`,
/// `executions`, `errors`, `abstains`, `validations`, `mismatches`, `error_rate`,
/// `abstain_rate`, `match_rate`, `latency_p99_ms`, `stage_executions`,
/// `stage_validations`), `comparisons`, `decision` and `recent_events`. It is the JSON
/// `null` when the task never had a rollout. See docs/rollout.md. The same value is
/// `rollout` in `loopai_runtime_health_json`.
///
/// On success `*out_json` receives a new NUL-terminated string owned by the caller, to be
/// freed with `loopai_string_free`. Errors: LOOPAI_E_INVALID_INPUT (NULL argument).
///
/// Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn loopai_runtime_rollout_json(
    rt: *const loopai_runtime_t,
    out_json: *mut *mut c_char,
    err: *mut *mut loopai_error_t,
) -> loopai_status_t {
    const F: &str = "loopai_runtime_rollout_json";
    guard(F, err, || {
        // SAFETY: `rt` is NULL or a live runtime, per contract.
        let runtime = unsafe { runtime_ref(F, rt)? };
        check_out(F, out_json)?;
        // SAFETY: `out_json` is not NULL (checked) and writable per contract.
        unsafe { write_json(F, &runtime.rollout(), out_json) }
    })
}

/// Serializes `value` into a new C string at `*out_json`.
///
/// SAFETY: `out_json` is not NULL and writable.
unsafe fn write_json(
    function: &str,
    value: &impl serde::Serialize,
    out_json: *mut *mut c_char,
) -> Result<(), Error> {
    let text = serde_json::to_string(value).map_err(|e| {
        Error::new(
            ErrorKind::Internal,
            format!("{function}: cannot serialize: {e}"),
        )
    })?;
    let owned = cstring_lossy(text).into_raw();
    // SAFETY: guaranteed by the caller.
    unsafe { *out_json = owned };
    Ok(())
}

/// Frees a runtime: shuts it down, waiting at most 5 seconds for its execution log to be
/// flushed, and releases it. NULL is ignored.
///
/// Must not be called while another thread is using `rt`, nor twice on the same runtime.
/// Results created by the runtime stay valid and must still be freed.
#[no_mangle]
pub unsafe extern "C" fn loopai_runtime_free(rt: *mut loopai_runtime_t) {
    if rt.is_null() {
        return;
    }
    // SAFETY: `rt` came from `loopai_runtime_new` and is not used after this call.
    let owned = unsafe { Box::from_raw(rt) };
    // A panic while dropping is swallowed: there is nobody to report it to.
    let _ = catch_unwind(AssertUnwindSafe(move || drop(owned)));
}

// ---------------------------------------------------------------------------------------
// Oracle callbacks

/// A C oracle callback as a [`loopai_core::Oracle`]: the request goes out as
/// [`OracleRequest::to_json`], the reply comes back through [`OracleAnswer::from_json`].
/// Dropping it calls `free_user_data`.
struct CallbackOracle {
    callback: loopai_oracle_fn,
    user_data: *mut c_void,
    free_user_data: loopai_free_fn,
}

// SAFETY: the contract of `loopai_runtime_new_with_oracle` requires the callback and
// `user_data` to be usable from any thread, concurrently; `free_user_data` runs once.
unsafe impl Send for CallbackOracle {}
// SAFETY: as above.
unsafe impl Sync for CallbackOracle {}

impl fmt::Debug for CallbackOracle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallbackOracle")
            .field("user_data", &self.user_data)
            .finish_non_exhaustive()
    }
}

fn oracle_error(message: String) -> Error {
    Error::new(ErrorKind::Oracle, format!("C oracle callback: {message}"))
}

impl Oracle for CallbackOracle {
    fn ask(&self, request: &OracleRequest<'_>) -> Result<OracleAnswer, Error> {
        let Some(callback) = self.callback else {
            return Err(oracle_error("no callback".to_owned()));
        };
        // JSON escapes control characters, so the document holds no NUL byte.
        let json = cstring_lossy(request.to_json());
        let mut reply = loopai_oracle_reply_t::default();
        // SAFETY: the callback's contract (loopai_oracle_fn): `json` is NUL-terminated and
        // `reply` is valid, both for the duration of the call.
        let code = unsafe {
            callback(
                self.user_data,
                json.as_ptr(),
                json.as_bytes().len(),
                &mut reply,
            )
        };
        if code != 0 {
            let why = reply
                .error
                .or(reply.misuse)
                .unwrap_or_else(|| "no message".to_owned());
            return Err(oracle_error(format!("failed (returned {code}): {why}")));
        }
        match reply.answer {
            Some(answer) => {
                OracleAnswer::from_json(&answer).map_err(|e| oracle_error(e.message().to_owned()))
            }
            None => Err(oracle_error(reply.misuse.unwrap_or_else(|| {
                "returned 0 without calling loopai_oracle_reply_set".to_owned()
            }))),
        }
    }
}

impl Drop for CallbackOracle {
    fn drop(&mut self) {
        if let Some(free) = self.free_user_data {
            // SAFETY: called exactly once (this is the only owner), with the caller's
            // `user_data`, per the contract of `loopai_runtime_new_with_oracle`.
            unsafe { free(self.user_data) };
        }
    }
}

/// Records a setter's refusal in the reply (if any) and returns its status.
fn reply_misuse(reply: Option<&mut loopai_oracle_reply_t>, e: Error) -> loopai_status_t {
    let code = e.kind().code();
    if let Some(reply) = reply {
        reply.misuse = Some(e.message().to_owned());
    }
    code
}

/// Sets the answer of an oracle callback: `answer_json` points to `len` bytes of UTF-8
/// JSON (not NUL-terminated), `{"output": <label or object>, "cost": <number, optional>}`,
/// copied before this returns. A later call replaces the answer.
///
/// Returns LOOPAI_OK, or LOOPAI_E_INVALID_INPUT when `reply` or `answer_json` is NULL, the
/// length is too large, or the bytes are not UTF-8; then, if the callback still returns 0,
/// the call counts as an oracle error naming the problem. Only valid during the callback
/// that received `reply`.
#[no_mangle]
pub unsafe extern "C" fn loopai_oracle_reply_set(
    reply: *mut loopai_oracle_reply_t,
    answer_json: *const c_char,
    len: usize,
) -> loopai_status_t {
    const F: &str = "loopai_oracle_reply_set";
    guard_value(LOOPAI_E_INTERNAL, || {
        // SAFETY: `reply` is NULL or the live reply of the running callback, per contract.
        let Some(target) = (unsafe { reply.as_mut() }) else {
            return reply_misuse(None, null_error(F, "reply", ErrorKind::InvalidInput));
        };
        // SAFETY: `answer_json` is NULL or points to `len` readable bytes, per contract.
        let bytes = match unsafe { byte_slice(F, "answer_json", answer_json.cast(), len) } {
            Ok(bytes) => bytes,
            Err(e) => return reply_misuse(Some(target), e),
        };
        if let Err(e) = std::str::from_utf8(bytes) {
            let e = Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "{F}: answer_json is not valid UTF-8 (at byte {})",
                    e.valid_up_to()
                ),
            );
            return reply_misuse(Some(target), e);
        }
        target.answer = Some(bytes.to_vec());
        target.misuse = None;
        LOOPAI_OK
    })
}

/// Sets the failure message of an oracle callback that is about to return non-zero:
/// `len` bytes at `message` (not NUL-terminated; invalid UTF-8 is replaced), copied before
/// this returns. It becomes part of the oracle error that is counted and logged.
///
/// Returns LOOPAI_OK, or LOOPAI_E_INVALID_INPUT when `reply` or `message` is NULL or the
/// length is too large. Only valid during the callback that received `reply`.
#[no_mangle]
pub unsafe extern "C" fn loopai_oracle_reply_set_error(
    reply: *mut loopai_oracle_reply_t,
    message: *const c_char,
    len: usize,
) -> loopai_status_t {
    const F: &str = "loopai_oracle_reply_set_error";
    guard_value(LOOPAI_E_INTERNAL, || {
        // SAFETY: `reply` is NULL or the live reply of the running callback, per contract.
        let Some(target) = (unsafe { reply.as_mut() }) else {
            return reply_misuse(None, null_error(F, "reply", ErrorKind::InvalidInput));
        };
        // SAFETY: `message` is NULL or points to `len` readable bytes, per contract.
        match unsafe { byte_slice(F, "message", message.cast(), len) } {
            Ok(bytes) => {
                target.error = Some(String::from_utf8_lossy(bytes).into_owned());
                LOOPAI_OK
            }
            Err(e) => reply_misuse(Some(target), e),
        }
    })
}

// ---------------------------------------------------------------------------------------
// Results

/// SAFETY: `r` is NULL or a live result.
unsafe fn result_ref<'a>(r: *const loopai_result_t) -> Option<&'a loopai_result_t> {
    // SAFETY: guaranteed by the caller.
    unsafe { r.as_ref() }
}

/// The whole result as a JSON object: `execution_id`, `output`, `confidence`, `scores`,
/// `version`, `latency_ms`, `status` ("success" or "abstain"), `source` ("program", or
/// "oracle" when the program abstained and `execution.fallback: oracle` answered),
/// `sampled`, `decided_by`.
///
/// The string is owned by `r` and lives until `loopai_result_free(r)`; NULL if `r` is
/// NULL. Thread-safe (a result may be read from several threads).
#[no_mangle]
pub unsafe extern "C" fn loopai_result_json(r: *const loopai_result_t) -> *const c_char {
    guard_value(std::ptr::null(), || {
        // SAFETY: `r` is NULL or a live result, per contract.
        match unsafe { result_ref(r) } {
            Some(r) => r
                .json
                .get_or_init(|| cstring_lossy(serde_json::to_string(&r.result).unwrap_or_default()))
                .as_ptr(),
            None => std::ptr::null(),
        }
    })
}

/// The output alone as JSON: a label such as `"spam"` (with its quotes), an object of
/// extracted fields, or `null` when the program abstained without an answer.
///
/// The string is owned by `r` and lives until `loopai_result_free(r)`; NULL if `r` is
/// NULL. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn loopai_result_output_json(r: *const loopai_result_t) -> *const c_char {
    guard_value(std::ptr::null(), || {
        // SAFETY: `r` is NULL or a live result, per contract.
        match unsafe { result_ref(r) } {
            Some(r) => r
                .output_json
                .get_or_init(|| {
                    cstring_lossy(serde_json::to_string(&r.result.output).unwrap_or_default())
                })
                .as_ptr(),
            None => std::ptr::null(),
        }
    })
}

/// The confidence in [0, 1]; NaN if `r` is NULL. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn loopai_result_confidence(r: *const loopai_result_t) -> f64 {
    // SAFETY: `r` is NULL or a live result, per contract.
    unsafe { result_ref(r) }.map_or(f64::NAN, |r| r.result.confidence)
}

/// The artifact version that produced the result; 0 if `r` is NULL. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn loopai_result_version(r: *const loopai_result_t) -> u32 {
    // SAFETY: `r` is NULL or a live result, per contract.
    unsafe { result_ref(r) }.map_or(0, |r| r.result.version)
}

/// Frees a result and the strings it returned. NULL is ignored. Must not be called while
/// another thread is reading `r`, nor twice.
#[no_mangle]
pub unsafe extern "C" fn loopai_result_free(r: *mut loopai_result_t) {
    if !r.is_null() {
        // SAFETY: `r` came from `loopai_runtime_execute` and is not used after this call.
        let owned = unsafe { Box::from_raw(r) };
        let _ = catch_unwind(AssertUnwindSafe(move || drop(owned)));
    }
}

// ---------------------------------------------------------------------------------------
// Errors and strings

/// The status code of an error (always negative); LOOPAI_OK if `e` is NULL. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn loopai_error_code(e: *const loopai_error_t) -> loopai_status_t {
    // SAFETY: `e` is NULL or a live error, per contract.
    unsafe { e.as_ref() }.map_or(LOOPAI_OK, |e| e.code)
}

/// The error message, naming what is wrong (e.g. `input /text: expected a string, got a
/// number`). Owned by `e`, valid until `loopai_error_free(e)`; "" if `e` is NULL.
/// Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn loopai_error_message(e: *const loopai_error_t) -> *const c_char {
    // SAFETY: `e` is NULL or a live error, per contract.
    unsafe { e.as_ref() }.map_or(c"".as_ptr(), |e| e.message.as_ptr())
}

/// Frees an error. NULL is ignored.
#[no_mangle]
pub unsafe extern "C" fn loopai_error_free(e: *mut loopai_error_t) {
    if !e.is_null() {
        // SAFETY: `e` came from a loopai function and is not used after this call.
        drop(unsafe { Box::from_raw(e) });
    }
}

/// Frees a string returned through a `char **out_json` parameter
/// (`loopai_runtime_execute_batch`, `loopai_runtime_health_json`,
/// `loopai_runtime_validation_metrics_json`, `loopai_runtime_rollout_json`). NULL is
/// ignored.
/// Never pass it a string returned as `const char *`: those belong to their object.
#[no_mangle]
pub unsafe extern "C" fn loopai_string_free(s: *mut c_char) {
    if !s.is_null() {
        // SAFETY: `s` came from `CString::into_raw` in this library, per contract.
        drop(unsafe { CString::from_raw(s) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_are_exactly_the_error_kinds() {
        let ours = [
            LOOPAI_E_INVALID_INPUT,
            LOOPAI_E_PROGRAM,
            LOOPAI_E_SCHEMA,
            LOOPAI_E_INVALID_OUTPUT,
            LOOPAI_E_ARTIFACT,
            LOOPAI_E_CONFIG,
            LOOPAI_E_IO,
            LOOPAI_E_TIMEOUT,
            LOOPAI_E_CLOSED,
            LOOPAI_E_INTERNAL,
            LOOPAI_E_ORACLE,
        ];
        assert_eq!(ours.len(), ErrorKind::ALL.len());
        for (code, kind) in ours.into_iter().zip(ErrorKind::ALL) {
            assert_eq!(code, kind.code(), "{kind}");
            // SAFETY: loopai_status_str returns a static NUL-terminated string.
            let name = unsafe { CStr::from_ptr(loopai_status_str(code)) };
            assert_eq!(name.to_str().unwrap(), kind.name());
        }
        // SAFETY: as above.
        let unknown = unsafe { CStr::from_ptr(loopai_status_str(-1000)) };
        assert_eq!(unknown.to_str().unwrap(), "unknown");
    }

    #[test]
    fn panics_become_internal_errors() {
        let mut err: *mut loopai_error_t = std::ptr::null_mut();
        let code = guard("test", &mut err, || panic!("boom"));
        assert_eq!(code, LOOPAI_E_INTERNAL);
        // SAFETY: `err` was set by guard.
        unsafe {
            assert_eq!(loopai_error_code(err), LOOPAI_E_INTERNAL);
            let message = CStr::from_ptr(loopai_error_message(err)).to_str().unwrap();
            assert!(message.contains("boom"), "{message}");
            loopai_error_free(err);
        }
    }

    unsafe extern "C" fn answer_spam(
        user_data: *mut c_void,
        request: *const c_char,
        len: usize,
        reply: *mut loopai_oracle_reply_t,
    ) -> i32 {
        // SAFETY: the test passes a `Cell<u32>` as user_data; `request` is `len` bytes.
        unsafe {
            let calls = &*(user_data as *const std::cell::Cell<u32>);
            calls.set(calls.get() + 1);
            let request = std::slice::from_raw_parts(request.cast::<u8>(), len);
            assert!(std::str::from_utf8(request)
                .unwrap()
                .contains("\"task\":\"t\""));
            let answer = br#"{"output": "spam", "cost": 2}"#;
            loopai_oracle_reply_set(reply, answer.as_ptr().cast(), answer.len())
        }
    }

    unsafe extern "C" fn silent(
        _: *mut c_void,
        _: *const c_char,
        _: usize,
        _: *mut loopai_oracle_reply_t,
    ) -> i32 {
        0
    }

    unsafe extern "C" fn failing(
        _: *mut c_void,
        _: *const c_char,
        _: usize,
        reply: *mut loopai_oracle_reply_t,
    ) -> i32 {
        // SAFETY: `reply` is the live reply; the message is 4 bytes.
        unsafe { loopai_oracle_reply_set_error(reply, c"down".as_ptr(), 4) };
        7
    }

    unsafe extern "C" fn count_free(user_data: *mut c_void) {
        // SAFETY: the test passes a `Cell<u32>`.
        let freed = unsafe { &*(user_data as *const std::cell::Cell<u32>) };
        freed.set(freed.get() + 1);
    }

    fn ask(oracle: &CallbackOracle) -> Result<OracleAnswer, Error> {
        let labels = ["spam".to_owned(), "ham".to_owned()];
        let input = serde_json::json!({"text": "x"});
        oracle.ask(&OracleRequest::new(
            "t",
            "",
            &labels,
            None,
            &input,
            Duration::from_secs(1),
        ))
    }

    #[test]
    fn callback_oracle_answers_fails_and_frees_user_data_once() {
        let calls = std::cell::Cell::new(0u32);
        let oracle = CallbackOracle {
            callback: Some(answer_spam),
            user_data: (&calls as *const std::cell::Cell<u32>).cast_mut().cast(),
            free_user_data: Some(count_free),
        };
        let answer = ask(&oracle).unwrap();
        assert_eq!((answer.output.as_str(), answer.cost), (Some("spam"), 2.0));
        assert_eq!(calls.get(), 1);
        drop(oracle);
        assert_eq!(calls.get(), 2, "free_user_data called once, on drop");

        let silent = CallbackOracle {
            callback: Some(silent),
            user_data: std::ptr::null_mut(),
            free_user_data: None,
        };
        let e = ask(&silent).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Oracle);
        assert!(
            e.message()
                .contains("without calling loopai_oracle_reply_set"),
            "{e}"
        );

        let failing = CallbackOracle {
            callback: Some(failing),
            user_data: std::ptr::null_mut(),
            free_user_data: None,
        };
        let e = ask(&failing).unwrap_err();
        assert!(
            e.message().contains("returned 7") && e.message().contains("down"),
            "{e}"
        );
    }

    #[test]
    fn reply_setters_refuse_null_and_invalid_utf8_and_remember_why() {
        let mut reply = loopai_oracle_reply_t::default();
        // SAFETY: valid reply, NULL or valid buffers.
        unsafe {
            assert_eq!(
                loopai_oracle_reply_set(std::ptr::null_mut(), c"{}".as_ptr(), 2),
                LOOPAI_E_INVALID_INPUT
            );
            assert_eq!(
                loopai_oracle_reply_set(&mut reply, std::ptr::null(), 0),
                LOOPAI_E_INVALID_INPUT
            );
            assert_eq!(
                loopai_oracle_reply_set(&mut reply, c"\xff".as_ptr(), 1),
                LOOPAI_E_INVALID_INPUT
            );
            assert!(reply.misuse.as_deref().unwrap().contains("not valid UTF-8"));
            assert_eq!(
                loopai_oracle_reply_set_error(std::ptr::null_mut(), c"x".as_ptr(), 1),
                LOOPAI_E_INVALID_INPUT
            );
            assert_eq!(
                loopai_oracle_reply_set(&mut reply, c"{}".as_ptr(), 2),
                LOOPAI_OK
            );
        }
        assert_eq!(reply.answer.as_deref(), Some(&b"{}"[..]));
        assert!(reply.misuse.is_none());
    }

    const RULES: &[u8] = br#"{"format": "loopai.program/1", "task": "spam",
      "inputs": [{"name": "text", "path": "/text", "type": "text"}],
      "decide": {"op": "rules", "rules": [{"when": {"always": true}, "then": "ham", "confidence": 0.8}]},
      "output": {"kind": "label", "labels": ["spam", "ham"]}}"#;

    /// A runtime on a data dir where v1 is active and v2, v3 are installed.
    fn runtime_with_three_versions(dir: &std::path::Path) -> *mut loopai_runtime_t {
        let store = loopai_core::ArtifactStore::open(dir, "spam").unwrap();
        for activate in [true, false, false] {
            store
                .install(RULES, loopai_core::NewArtifact::default(), activate)
                .unwrap();
        }
        let dir = CString::new(dir.to_str().unwrap()).unwrap();
        let config = c"{\"rollout\": {\"stages\": [0.5, 1.0]}}";
        let mut rt = std::ptr::null_mut();
        // SAFETY: valid NUL-terminated strings and out pointer.
        let status = unsafe {
            loopai_runtime_new(
                dir.as_ptr(),
                c"spam".as_ptr(),
                config.as_ptr(),
                &mut rt,
                std::ptr::null_mut(),
            )
        };
        assert_eq!(status, LOOPAI_OK);
        rt
    }

    /// SAFETY: `rt` is a live runtime.
    unsafe fn rollout_json(rt: *const loopai_runtime_t) -> Value {
        let mut out = std::ptr::null_mut();
        // SAFETY: per this function's contract; `out` is freed below.
        unsafe {
            assert_eq!(
                loopai_runtime_rollout_json(rt, &mut out, std::ptr::null_mut()),
                LOOPAI_OK
            );
            let value = serde_json::from_slice(CStr::from_ptr(out).to_bytes()).unwrap();
            loopai_string_free(out);
            value
        }
    }

    /// SAFETY: `rt` is a live runtime; `key` is NULL or NUL-terminated.
    unsafe fn version_for(rt: *const loopai_runtime_t, input: &str, key: *const c_char) -> u32 {
        let mut result = std::ptr::null_mut();
        // SAFETY: per this function's contract; `result` is freed below.
        unsafe {
            let status = loopai_runtime_execute_with_key(
                rt,
                input.as_ptr(),
                input.len(),
                key,
                &mut result,
                std::ptr::null_mut(),
            );
            assert_eq!(status, LOOPAI_OK);
            let version = loopai_result_version(result);
            loopai_result_free(result);
            version
        }
    }

    #[test]
    fn keyed_executions_stick_to_an_arm_and_rollouts_promote_and_roll_back() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime_with_three_versions(dir.path());
        let mut version = 7u32;
        let mut err = std::ptr::null_mut();
        // SAFETY: `rt` is live; every out pointer is valid; errors are freed.
        unsafe {
            assert_eq!(rollout_json(rt), Value::Null);
            assert_eq!(
                loopai_runtime_abort_rollout(rt, &mut version, std::ptr::null_mut()),
                LOOPAI_OK
            );
            assert_eq!(version, 0, "nothing to abort");
            version = 7;
            assert_eq!(
                loopai_runtime_promote(rt, &mut version, &mut err),
                LOOPAI_E_ARTIFACT
            );
            assert_eq!(version, 7, "untouched on failure");
            loopai_error_free(err);
            for missing in [1, 9] {
                err = std::ptr::null_mut();
                assert_eq!(
                    loopai_runtime_begin_rollout(rt, missing, &mut err),
                    LOOPAI_E_ARTIFACT
                );
                assert_eq!(loopai_error_code(err), LOOPAI_E_ARTIFACT);
                loopai_error_free(err);
            }

            assert_eq!(
                loopai_runtime_begin_rollout(rt, 2, std::ptr::null_mut()),
                LOOPAI_OK
            );
            let status = rollout_json(rt);
            assert_eq!(status["state"], "in_progress");
            assert_eq!(
                (&status["stable_version"], &status["canary_version"]),
                (&Value::from(1), &Value::from(2))
            );
            assert_eq!(
                (&status["stage"], &status["fraction"]),
                (&Value::from(0), &Value::from(0.5))
            );
            let mut seen = [0u32; 2];
            for i in 0..64 {
                let key = CString::new(format!("user-{i}")).unwrap();
                let first = version_for(rt, r#"{"text": "hello"}"#, key.as_ptr());
                let again = version_for(rt, r#"{"text": "something else"}"#, key.as_ptr());
                assert_eq!(first, again, "key user-{i}");
                seen[first as usize - 1] += 1;
            }
            assert!(seen[0] > 0 && seen[1] > 0, "both arms serve: {seen:?}");

            let input = r#"{"text": "x"}"#;
            let sentinel = std::ptr::dangling_mut::<loopai_result_t>();
            let mut result = sentinel;
            err = std::ptr::null_mut();
            assert_eq!(
                loopai_runtime_execute_with_key(
                    rt,
                    input.as_ptr(),
                    input.len(),
                    std::ptr::null(),
                    &mut result,
                    &mut err
                ),
                LOOPAI_E_INVALID_INPUT
            );
            assert!(CStr::from_ptr(loopai_error_message(err))
                .to_str()
                .unwrap()
                .contains("key is NULL"));
            loopai_error_free(err);
            assert_eq!(
                loopai_runtime_execute_with_key(
                    rt,
                    input.as_ptr(),
                    input.len(),
                    c"\xff".as_ptr(),
                    &mut result,
                    std::ptr::null_mut()
                ),
                LOOPAI_E_INVALID_INPUT
            );
            assert_eq!(
                loopai_runtime_execute_with_key(
                    rt,
                    b"{".as_ptr(),
                    1,
                    c"k".as_ptr(),
                    &mut result,
                    std::ptr::null_mut()
                ),
                LOOPAI_E_INVALID_INPUT
            );
            assert_eq!(result, sentinel, "untouched on failure");

            assert_eq!(
                loopai_runtime_promote(rt, &mut version, std::ptr::null_mut()),
                LOOPAI_OK
            );
            assert_eq!((version, loopai_runtime_active_version(rt)), (2, 2));
            assert_eq!(rollout_json(rt)["state"], "promoted");
            assert_eq!(version_for(rt, input, c"user-1".as_ptr()), 2);

            assert_eq!(
                loopai_runtime_begin_rollout(rt, 3, std::ptr::null_mut()),
                LOOPAI_OK
            );
            assert_eq!(
                loopai_runtime_abort_rollout(rt, std::ptr::null_mut(), std::ptr::null_mut()),
                LOOPAI_OK,
                "out_version may be NULL"
            );
            assert_eq!(loopai_runtime_active_version(rt), 2);
            let status = rollout_json(rt);
            assert_eq!(
                (&status["state"], &status["canary_version"]),
                (&Value::from("rolled_back"), &Value::from(3))
            );
            assert_eq!(
                loopai_runtime_begin_rollout(rt, 3, std::ptr::null_mut()),
                LOOPAI_E_ARTIFACT,
                "a rolled-back canary is refused"
            );

            assert_eq!(
                loopai_runtime_begin_rollout(std::ptr::null(), 3, std::ptr::null_mut()),
                LOOPAI_E_INVALID_INPUT
            );
            assert_eq!(
                loopai_runtime_promote(std::ptr::null(), &mut version, std::ptr::null_mut()),
                LOOPAI_E_INVALID_INPUT
            );
            assert_eq!(
                loopai_runtime_abort_rollout(std::ptr::null(), &mut version, std::ptr::null_mut()),
                LOOPAI_E_INVALID_INPUT
            );
            assert_eq!(
                loopai_runtime_rollout_json(rt, std::ptr::null_mut(), std::ptr::null_mut()),
                LOOPAI_E_INVALID_INPUT
            );
            loopai_runtime_free(rt);
        }
    }

    #[test]
    fn interior_nul_is_removed_from_messages() {
        assert_eq!(cstring_lossy("a\0b".into()).to_str().unwrap(), "ab");
    }
}
