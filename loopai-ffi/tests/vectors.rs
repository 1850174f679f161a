//! Parity vectors: `tests/vectors/spam.jsonl` holds, for each input of
//! `tests/vectors/inputs.jsonl`, what the core returns with `tests/vectors/program.json`:
//! the output, the confidence (also as the hex of its IEEE-754 bits) and the scores. The
//! C, Go and C# tests assert the same values through libloopai, bit for bit.
//!
//! `LOOPAI_BLESS=1 cargo test -p loopai-ffi --test vectors` regenerates the file (after a
//! deliberate change of the program or of the inputs).

use std::path::{Path, PathBuf};

use loopai_core::{ArtifactStore, NewArtifact, Runtime};
use serde_json::Value;

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/vectors")
}

/// One line of spam.jsonl, built by hand so that every value keeps the exact text the
/// runtime produces (scores in the program's label order).
fn vector_line(runtime: &Runtime, input: &Value) -> String {
    let result = runtime
        .execute(input)
        .unwrap_or_else(|e| panic!("{input}: {e}"));
    let result_json = serde_json::to_value(&result).unwrap();
    let scores = serde_json::to_string(&result.scores).unwrap();
    let confidence = serde_json::to_string(&result.confidence).unwrap();
    // The printed text must read back (with a correctly rounded parser) to the same bits.
    // Not with serde_json's own parser: without its `float_roundtrip` feature it can be
    // one ulp off (it is, on some of these vectors).
    assert_eq!(
        confidence.parse::<f64>().unwrap().to_bits(),
        result.confidence.to_bits(),
        "{confidence}"
    );
    format!(
        "{{\"input\":{},\"output\":{},\"confidence\":{},\"confidence_bits\":\"{:016x}\",\"scores\":{},\"status\":{}}}",
        serde_json::to_string(input).unwrap(),
        serde_json::to_string(&result.output).unwrap(),
        confidence,
        result.confidence.to_bits(),
        scores,
        result_json["status"],
    )
}

#[test]
fn core_matches_the_committed_parity_vectors() {
    let dir = vectors_dir();
    let program = std::fs::read(dir.join("program.json")).unwrap();
    let task = serde_json::from_slice::<Value>(&program).unwrap()["task"]
        .as_str()
        .expect("program.json has a task")
        .to_owned();
    let mut meta = NewArtifact::default();
    if let Ok(spec) = std::fs::read(dir.join("spec.json")) {
        let spec: Value = serde_json::from_slice(&spec).unwrap();
        for key in ["input_schema", "output_schema"] {
            if let Some(schema) = spec.get(key) {
                meta.extra.insert(key.to_owned(), schema.clone());
            }
        }
    }
    let data_dir = tempfile::tempdir().unwrap();
    ArtifactStore::open(data_dir.path(), &task)
        .unwrap()
        .install(&program, meta, true)
        .unwrap();
    let runtime = Runtime::builder()
        .data_dir(data_dir.path())
        .task(&task)
        .build()
        .unwrap();

    let inputs = std::fs::read_to_string(dir.join("inputs.jsonl")).unwrap();
    let mut generated = String::new();
    for line in inputs.lines().filter(|l| !l.trim().is_empty()) {
        let input: Value = serde_json::from_str(line).unwrap();
        generated.push_str(&vector_line(&runtime, &input));
        generated.push('\n');
    }

    let path = dir.join(format!("{task}.jsonl"));
    if std::env::var_os("LOOPAI_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    for (i, (want, got)) in committed.lines().zip(generated.lines()).enumerate() {
        // Same text: the shortest round-trip text of a float is unique, so same bits.
        assert_eq!(got, want, "vector {i} of {}", path.display());
    }
    assert_eq!(
        committed.lines().count(),
        generated.lines().count(),
        "{} is stale: regenerate with `LOOPAI_BLESS=1 cargo test -p loopai-ffi --test vectors`",
        path.display()
    );
}

/// Explanation vectors: `tests/vectors/explain.jsonl` holds, for each input of
/// `tests/vectors/explain-inputs.jsonl` (those of `inputs.jsonl` and a few more that reach
/// the second rule, an abstention and non-ASCII n-grams), the explanation JSON text that `Runtime::explain` gives
/// with `tests/vectors/explain-program.json` (rules, then a sigmoid model over hashed word
/// n-grams, then naive Bayes over hashed character n-grams) installed as task "spam" v1,
/// and `top_k` 5. Every language returns exactly this text (C, Go and C# compare the
/// text, Python the parsed value).
///
/// `LOOPAI_BLESS=1 cargo test -p loopai-ffi --test vectors` regenerates it.
#[test]
fn core_matches_the_committed_explain_vectors() {
    let dir = vectors_dir();
    let program = std::fs::read(dir.join("explain-program.json")).unwrap();
    let data_dir = tempfile::tempdir().unwrap();
    ArtifactStore::open(data_dir.path(), "spam")
        .unwrap()
        .install(&program, NewArtifact::default(), true)
        .unwrap();
    let runtime = Runtime::builder()
        .data_dir(data_dir.path())
        .task("spam")
        .build()
        .unwrap();
    let options = loopai_core::ExplainOptions::default().with_top_k(5);
    let inputs = std::fs::read_to_string(dir.join("explain-inputs.jsonl")).unwrap();
    let mut generated = String::new();
    let mut kinds = std::collections::BTreeSet::new();
    for line in inputs.lines().filter(|l| !l.trim().is_empty()) {
        let input: Value = serde_json::from_str(line).unwrap();
        let explanation = runtime.explain_with(&input, &options).unwrap();
        let result = runtime.execute(&input).unwrap();
        assert_eq!(explanation.output, result.output, "{input}");
        assert_eq!(
            explanation.confidence.to_bits(),
            result.confidence.to_bits(),
            "{input}"
        );
        assert_eq!(explanation.decided_by, result.decided_by, "{input}");
        let text = serde_json::to_string(&explanation).unwrap();
        let steps = serde_json::to_value(&explanation).unwrap()["decision"]["steps"].clone();
        let last = &steps[steps.as_array().unwrap().len() - 1];
        kinds.insert(format!("{}/{}", last["op"], explanation.abstained));
        if let Some(path) = &explanation.decided_by {
            kinds.insert(path.clone());
        }
        generated.push_str(&format!(
            "{{\"input\":{},\"top_k\":5,\"explanation\":{text}}}\n",
            serde_json::to_string(&input).unwrap()
        ));
    }
    // The inputs reach every step and rule of the program, and an abstention.
    for op in ["rules", "linear", "naive_bayes"] {
        assert!(
            kinds.iter().any(|k| k.starts_with(&format!("\"{op}\""))),
            "no input decided by {op}: {kinds:?}"
        );
    }
    for kind in [
        "decide.steps[0].rules[0] (money-and-keyword)",
        "decide.steps[0].rules[1] (many-keywords)",
        "\"naive_bayes\"/true",
    ] {
        assert!(kinds.contains(kind), "no vector for {kind}: {kinds:?}");
    }
    let path = dir.join("explain.jsonl");
    if std::env::var_os("LOOPAI_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    for (i, (want, got)) in committed.lines().zip(generated.lines()).enumerate() {
        assert_eq!(got, want, "vector {i} of {}", path.display());
    }
    assert_eq!(
        committed.lines().count(),
        generated.lines().count(),
        "{} is stale: regenerate with `LOOPAI_BLESS=1 cargo test -p loopai-ffi --test vectors`",
        path.display()
    );
}
