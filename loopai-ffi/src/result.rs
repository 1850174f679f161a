//! `loopai_result_t`: the result of one execution and its accessors.

use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

use loopai_core::ExecutionResult;

use crate::guard::guard_value;
use crate::string::cstring_lossy;

/// The result of one execution (opaque). Freed by `loopai_result_free`.
#[derive(Debug)]
pub struct loopai_result_t {
    result: ExecutionResult,
    json: OnceLock<CString>,
    output_json: OnceLock<CString>,
}

/// Moves `result` into a new `loopai_result_t` at `*out`.
///
/// SAFETY: `out` is not NULL and writable.
pub(crate) unsafe fn write_result(result: ExecutionResult, out: *mut *mut loopai_result_t) {
    let handle = Box::into_raw(Box::new(loopai_result_t {
        result,
        json: OnceLock::new(),
        output_json: OnceLock::new(),
    }));
    // SAFETY: guaranteed by the caller.
    unsafe { *out = handle };
}

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
