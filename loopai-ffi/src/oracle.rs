//! Oracle callbacks: `loopai_oracle_fn`, the `loopai_oracle_reply_t` it answers through,
//! and `CallbackOracle`, the adapter that makes a C callback a [`loopai_core::Oracle`].

use std::ffi::{c_char, c_void};
use std::fmt;

use loopai_core::{Error, ErrorKind, Oracle, OracleAnswer, OracleRequest};

use crate::args::{byte_slice, null_error};
use crate::guard::guard_value;
use crate::status::{loopai_status_t, LOOPAI_E_INTERNAL, LOOPAI_OK};
use crate::string::cstring_lossy;

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

/// A C oracle callback as a [`loopai_core::Oracle`]: the request goes out as
/// [`OracleRequest::to_json`], the reply comes back through [`OracleAnswer::from_json`].
/// Dropping it calls `free_user_data`.
pub(crate) struct CallbackOracle {
    pub(crate) callback: loopai_oracle_fn,
    pub(crate) user_data: *mut c_void,
    pub(crate) free_user_data: loopai_free_fn,
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::status::LOOPAI_E_INVALID_INPUT;

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
}
