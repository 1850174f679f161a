//! Argument checks shared by the entry points: NULL pointers, NUL-terminated UTF-8
//! strings, pointer + length buffers and `out` parameters, each refused with an error that
//! names the function and the argument.

use std::ffi::{c_char, CStr};

use loopai_core::{Error, ErrorKind};

pub(crate) fn null_error(function: &str, arg: &str, kind: ErrorKind) -> Error {
    Error::new(kind, format!("{function}: {arg} is NULL"))
}

/// Reads a NUL-terminated UTF-8 string argument.
///
/// SAFETY: `p` is NULL or points to a NUL-terminated string valid for the call.
pub(crate) unsafe fn c_str<'a>(
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
pub(crate) unsafe fn byte_slice<'a>(
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

pub(crate) fn check_out<T>(function: &str, out: *mut *mut T) -> Result<(), Error> {
    if out.is_null() {
        Err(null_error(function, "out", ErrorKind::InvalidInput))
    } else {
        Ok(())
    }
}
