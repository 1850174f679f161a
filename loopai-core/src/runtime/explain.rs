//! [`Runtime::explain`]: the decision path of the active program on one input, off the hot
//! path (nothing logged, sampled, counted or sent).

use serde_json::Value;

use super::{parse_input, Runtime};
use crate::error::Result;
use crate::program::{ExplainOptions, Explanation};

impl Runtime {
    /// Explains what the active program decides on `input`: the rule that fired with its
    /// conditions and the feature values they saw, or a model's per-class scores with its
    /// largest contributions traced back to the n-grams and keywords of this input, the
    /// splits of a tree, the steps of `first` and `vote`, and which threshold made it
    /// abstain. See "Explanations" in `docs/program-format.md` for the JSON form.
    ///
    /// The input is validated as [`execute`](Runtime::execute) validates it (same errors),
    /// and `output` and `confidence` are exactly what `execute` returns for it. Explaining
    /// always uses the active version, never the canary of a rollout in progress; it logs
    /// no execution, samples nothing, counts nothing and sends no telemetry.
    ///
    /// ```
    /// # use loopai_core::{ArtifactStore, NewArtifact, Runtime};
    /// # use serde_json::json;
    /// # let dir = tempfile::tempdir()?;
    /// # let program = br#"{"format": "loopai.program/1", "task": "spam",
    /// #   "inputs": [{"name": "text", "path": "/text", "type": "text"}],
    /// #   "features": [{"name": "prize", "op": "keywords", "source": "text", "terms": ["prize"]}],
    /// #   "decide": {"op": "rules", "rules": [
    /// #     {"when": {"feature": "prize", "gt": 0}, "then": "spam", "confidence": 0.9},
    /// #     {"when": {"always": true}, "then": "ham", "confidence": 0.8}]},
    /// #   "output": {"kind": "label", "labels": ["spam", "ham"]}}"#;
    /// # ArtifactStore::open(dir.path(), "spam")?.install(program, NewArtifact::default(), true)?;
    /// let runtime = Runtime::builder().data_dir(dir.path()).task("spam").build()?;
    /// let why = runtime.explain(&json!({"text": "win a prize"}))?;
    /// assert_eq!((why.output.as_str(), why.version), (Some("spam"), 1));
    /// assert_eq!(why.decided_by.as_deref(), Some("decide.rules[0]"));
    /// println!("{}", serde_json::to_string_pretty(&why)?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn explain(&self, input: &Value) -> Result<Explanation> {
        self.explain_with(input, &ExplainOptions::default())
    }

    /// [`explain`](Runtime::explain) with options (how many contributions per class).
    pub fn explain_with(&self, input: &Value, options: &ExplainOptions) -> Result<Explanation> {
        self.inner.executor.explain(input, options)
    }

    /// Parses `input` as a JSON object (at most
    /// [`MAX_INPUT_DOCUMENT_BYTES`](crate::MAX_INPUT_DOCUMENT_BYTES)) and explains it, as
    /// [`execute_json`](Runtime::execute_json) parses (a document that does not parse is
    /// refused, and not logged).
    pub fn explain_json(&self, input: &[u8], options: &ExplainOptions) -> Result<Explanation> {
        self.explain_with(&parse_input(input)?, options)
    }
}
