//! `loopai_status_t`: the status codes every fallible function returns, one per
//! [`loopai_core::ErrorKind`], and their names.

use std::ffi::{c_char, CStr};

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

#[cfg(test)]
mod tests {
    use std::ffi::CStr;

    use loopai_core::ErrorKind;

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
}
