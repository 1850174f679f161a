//! The panic guard: every exported function runs its body in [`guard`] (fallible
//! functions) or [`guard_value`] (accessors), so that an error becomes a status code and an
//! error object, and a panic becomes `LOOPAI_E_INTERNAL` instead of unwinding into C.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

use loopai_core::{Error, ErrorKind};

use crate::error::loopai_error_t;
use crate::status::{loopai_status_t, LOOPAI_OK};
use crate::string::cstring_lossy;

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
pub(crate) fn guard(
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
                let error = Box::new(loopai_error_t::new(code, cstring_lossy(e.to_string())));
                // SAFETY: the caller passes either NULL or a valid `loopai_error_t **`.
                unsafe { *err = Box::into_raw(error) };
            }
            code
        }
    }
}

/// Runs an infallible accessor, returning `fallback` if it panics.
pub(crate) fn guard_value<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(fallback)
}

#[cfg(test)]
mod tests {
    use std::ffi::CStr;

    use super::*;
    use crate::error::{loopai_error_code, loopai_error_free, loopai_error_message};
    use crate::status::LOOPAI_E_INTERNAL;

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
}
