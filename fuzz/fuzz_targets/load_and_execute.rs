//! Loads an arbitrary program and evaluates arbitrary inputs on it.
//!
//! Input layout: `[split: u16 little-endian][program bytes][input bytes]`, where the program
//! part is the first `split % (len + 1)` bytes after the header. The program is loaded
//! with `Program::from_json`; when it loads, it is evaluated on the input part parsed as
//! JSON (if it parses) and on `{"text": <input part as text>}`.
//!
//! Checked: nothing panics (libFuzzer reports panics and aborts as crashes); load errors
//! are `ErrorKind::Program`, evaluation errors `ErrorKind::InvalidInput`; an outcome's
//! confidence and scores are within [0, 1]; evaluating twice gives bit-identical outcomes.
//! Set `LOOPAI_FUZZ_DEBUG=1` to print why a program did not load (to check seeds).
#![no_main]

use libfuzzer_sys::fuzz_target;
use loopai_core::{ErrorKind, Outcome, Program};
use serde_json::{json, Value};

fn same(a: &Outcome, b: &Outcome) -> bool {
    a.output == b.output
        && a.label == b.label
        && a.confidence.to_bits() == b.confidence.to_bits()
        && a.scores
            .iter()
            .map(|s| s.to_bits())
            .eq(b.scores.iter().map(|s| s.to_bits()))
        && a.abstained == b.abstained
        && a.decided_by == b.decided_by
}

/// Within [0, 1]. NaN is let through for now: overflowing logits give NaN scores, a known
/// bug (see `overflowing_logits_do_not_give_nan_confidence` in loopai-core/tests); set
/// LOOPAI_FUZZ_STRICT_NAN=1 to treat it as a crash.
fn in_unit(x: f64, strict_nan: bool) -> bool {
    if x.is_nan() {
        return !strict_nan;
    }
    (0.0..=1.0).contains(&x)
}

fn check(program: &Program, input: &Value, strict_nan: bool) {
    let first = program.evaluate(input);
    let second = program.evaluate(input);
    match (&first, &second) {
        (Ok(a), Ok(b)) => {
            assert!(same(a, b), "nondeterministic: {a:?} vs {b:?}");
            assert!(in_unit(a.confidence, strict_nan), "confidence {a:?}");
            assert!(
                a.scores.iter().all(|&s| in_unit(s, strict_nan)),
                "scores {a:?}"
            );
        }
        (Err(a), Err(b)) => {
            assert_eq!(a.kind(), ErrorKind::InvalidInput, "{a}");
            assert_eq!(a.to_string(), b.to_string());
        }
        _ => panic!("nondeterministic: {first:?} vs {second:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((header, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let split = usize::from(u16::from_le_bytes(*header)) % (rest.len() + 1);
    let (program, input) = rest.split_at(split);
    let program = match Program::from_json(program) {
        Ok(p) => p,
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Program, "{e}");
            if std::env::var_os("LOOPAI_FUZZ_DEBUG").is_some() {
                eprintln!("program not loaded: {e}");
            }
            return;
        }
    };
    let strict_nan = std::env::var_os("LOOPAI_FUZZ_STRICT_NAN").is_some();
    if let Ok(value) = serde_json::from_slice::<Value>(input) {
        check(&program, &value, strict_nan);
    }
    let text = String::from_utf8_lossy(input);
    check(&program, &json!({ "text": text }), strict_nan);
});
