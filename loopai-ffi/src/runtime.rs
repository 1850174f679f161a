//! `loopai_runtime_t`: creating a runtime, executing, flushing, shutting down, rollouts,
//! and the JSON views (health, validation metrics, rollout).

use std::ffi::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use loopai_core::{
    DeploymentConfig, Error, ErrorKind, ExplainOptions, Oracle, Runtime, MAX_INPUT_DOCUMENT_BYTES,
};
use serde_json::Value;

use crate::args::{byte_slice, c_str, check_out, null_error};
use crate::error::loopai_error_t;
use crate::guard::{guard, guard_value};
use crate::oracle::{loopai_free_fn, loopai_oracle_fn, CallbackOracle};
use crate::result::{loopai_result_t, write_result};
use crate::status::loopai_status_t;
use crate::string::cstring_lossy;

/// A runtime for one task (opaque). Created by `loopai_runtime_new`, freed by
/// `loopai_runtime_free`.
#[derive(Debug)]
pub struct loopai_runtime_t {
    pub(crate) runtime: Runtime,
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

fn timeout(ms: u32) -> Duration {
    Duration::from_millis(u64::from(ms))
}

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

/// Explains what the task's active program decides on one input (`input_json`,
/// `input_len` as for `loopai_runtime_execute`): the decision path as a JSON object
/// `{"task", "version", "output", "confidence", "abstained", "decided_by", "abstention",
/// "decision"}` — the rule that fired with its conditions and the feature values they saw,
/// or a model's per-class scores with its `top_k` largest contributions traced back to the
/// n-grams and keywords of this input, the splits of a tree, the steps of `first` and
/// `vote`, and which threshold made it abstain (docs/program-format.md, "Explanations").
/// `top_k` is the most contributions listed per class (10 is the default of the other
/// languages). `output` and `confidence` are exactly what `loopai_runtime_execute` returns
/// for the input. The active version is explained, never the canary of a rollout; nothing
/// is logged, sampled or counted.
///
/// On success `*out_json` receives a new NUL-terminated string owned by the caller, to be
/// freed with `loopai_string_free`. On failure `*out_json` is untouched and, if `err` is
/// not NULL, `*err` receives a new error object.
///
/// Errors: LOOPAI_E_INVALID_INPUT (NULL argument, invalid UTF-8 or JSON, not an object,
/// schema mismatch, text too long), LOOPAI_E_INVALID_OUTPUT. Works after
/// `loopai_runtime_shutdown` and, in a child process, after fork().
///
/// Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn loopai_runtime_explain(
    rt: *const loopai_runtime_t,
    input_json: *const u8,
    input_len: usize,
    top_k: u32,
    out_json: *mut *mut c_char,
    err: *mut *mut loopai_error_t,
) -> loopai_status_t {
    const F: &str = "loopai_runtime_explain";
    guard(F, err, || {
        // SAFETY: `rt` is NULL or a live runtime, per contract.
        let runtime = unsafe { runtime_ref(F, rt)? };
        check_out(F, out_json)?;
        // SAFETY: `input_json` is NULL or points to `input_len` bytes, per contract.
        let input = unsafe { byte_slice(F, "input_json", input_json, input_len)? };
        let options = ExplainOptions::default().with_top_k(top_k as usize);
        let explanation = runtime.explain_json(input, &options)?;
        // SAFETY: `out_json` is not NULL (checked) and writable per contract.
        unsafe { write_json(F, &explanation, out_json) }
    })
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

#[cfg(test)]
mod tests {
    use std::ffi::{CStr, CString};

    use super::*;
    use crate::error::{loopai_error_code, loopai_error_free, loopai_error_message};
    use crate::result::{loopai_result_free, loopai_result_version};
    use crate::status::{LOOPAI_E_ARTIFACT, LOOPAI_E_INVALID_INPUT, LOOPAI_OK};
    use crate::string::loopai_string_free;

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
}
