//! `loopai_error_t`: the error object a failing call hands to its caller.

use std::ffi::{c_char, CString};

use crate::status::{loopai_status_t, LOOPAI_OK};

/// An error: a status code and a message (opaque). Freed by `loopai_error_free`.
#[derive(Debug)]
pub struct loopai_error_t {
    code: loopai_status_t,
    message: CString,
}

impl loopai_error_t {
    /// A new error object, owned by the caller it is handed to.
    pub(crate) fn new(code: loopai_status_t, message: CString) -> Self {
        Self { code, message }
    }
}

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
