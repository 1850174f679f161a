//! Strings the library hands out: `loopai_string_free` for the owned ones, and the
//! conversion of Rust text to a C string.

use std::ffi::{c_char, CString};

/// `text` as a C string, without the NUL bytes it may contain.
pub(crate) fn cstring_lossy(text: String) -> CString {
    CString::new(text).unwrap_or_else(|e| {
        let mut bytes = e.into_vec();
        bytes.retain(|&b| b != 0);
        CString::new(bytes).unwrap_or_default()
    })
}

/// Frees a string returned through a `char **out_json` parameter
/// (`loopai_runtime_execute_batch`, `loopai_runtime_explain`, `loopai_runtime_health_json`,
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
    fn interior_nul_is_removed_from_messages() {
        assert_eq!(cstring_lossy("a\0b".into()).to_str().unwrap(), "ab");
    }
}
