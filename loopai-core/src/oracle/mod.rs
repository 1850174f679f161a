//! Oracles: the reference model (usually the LLM a program replaced) that sampled
//! executions are validated against and that `execution.fallback: oracle` asks when a
//! program abstains.
//!
//! * [`Oracle`] is the trait; [`FnOracle`] wraps a Rust closure, [`HttpOracle`] speaks the
//!   chat-completions API. Foreign callbacks (C, Python, Go, C#) receive
//!   [`OracleRequest::to_json`] and answer with a JSON reply read by
//!   [`OracleAnswer::from_json`].
//! * Whatever the oracle, its output is checked against the task before it is used
//!   ([`OracleRequest::check_output`]): a label must be one of the task's labels (surrounding
//!   whitespace and quotes, and case when unambiguous, are tolerated), an object must match
//!   the output schema.

mod http;
#[cfg(test)]
pub(crate) mod test_server;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, ErrorKind, Result};
use crate::schema::JsonSchema;

pub use http::{HttpOracle, SleepFn};

/// What an oracle is asked: the task, what answers are allowed, and one input.
///
/// Serializes as the JSON document handed to foreign callbacks (C, Go, C#, Python):
/// `{"task", "description", "labels", "output_schema", "input", "timeout_ms"}`.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct OracleRequest<'a> {
    /// The task id.
    pub task: &'a str,
    /// The task description (artifact metadata `description`, empty when unknown).
    pub description: &'a str,
    /// The allowed labels of a classification task (empty for extraction).
    pub labels: &'a [String],
    /// The task's output schema, when the artifact has one.
    pub output_schema: Option<&'a Value>,
    /// The input object, exactly as given to `execute`.
    pub input: &'a Value,
    /// How long the caller waits for the answer.
    #[serde(rename = "timeout_ms", serialize_with = "millis")]
    pub timeout: Duration,
}

impl<'a> OracleRequest<'a> {
    /// A request for `input` in task `task`, answered within `timeout`. `labels` are the
    /// allowed labels of a classification (empty for extraction), `output_schema` the
    /// task's output schema if it has one.
    pub fn new(
        task: &'a str,
        description: &'a str,
        labels: &'a [String],
        output_schema: Option<&'a Value>,
        input: &'a Value,
        timeout: Duration,
    ) -> OracleRequest<'a> {
        OracleRequest {
            task,
            description,
            labels,
            output_schema,
            input,
            timeout,
        }
    }

    /// The request as the JSON document handed to foreign callbacks:
    ///
    /// ```
    /// use loopai_core::OracleRequest;
    /// use serde_json::json;
    /// use std::time::Duration;
    ///
    /// let labels = ["spam".to_owned(), "ham".to_owned()];
    /// let input = json!({"text": "Win a prize"});
    /// let req = OracleRequest::new("spam", "SMS spam filter", &labels, None, &input, Duration::from_secs(2));
    /// assert_eq!(req.to_json(), r#"{"task":"spam","description":"SMS spam filter","labels":["spam","ham"],"output_schema":null,"input":{"text":"Win a prize"},"timeout_ms":2000}"#);
    /// ```
    pub fn to_json(&self) -> String {
        // Serializing borrowed strings, a JSON value and numbers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Checks an oracle's output against the task and returns it in canonical form.
    ///
    /// * Classification (`labels` not empty): the output must be a string naming one of the
    ///   labels. Surrounding whitespace and one pair of surrounding quotes (`"`, `'` or
    ///   `` ` ``) are ignored; a case-insensitive match is accepted when exactly one label
    ///   matches. The canonical label is returned.
    /// * Extraction: the output must be a JSON object, valid against `output_schema` when
    ///   there is one.
    ///
    /// Errors are [`ErrorKind::Oracle`] and name what is wrong.
    pub fn check_output(&self, output: Value) -> Result<Value> {
        let schema = match self.output_schema {
            Some(raw) if self.labels.is_empty() => Some(
                JsonSchema::compile(raw)
                    .map_err(|e| Error::new(ErrorKind::Oracle, format!("output_schema: {e}")))?,
            ),
            _ => None,
        };
        check_output(self.labels, schema.as_ref(), output)
    }

    /// Parses the text an LLM answered (see [`check_output`](OracleRequest::check_output)):
    /// a label, or for extraction a JSON object, possibly inside one Markdown code fence.
    pub fn parse_answer_text(&self, text: &str) -> Result<Value> {
        if !self.labels.is_empty() {
            return match_label(self.labels, text).map(Value::String);
        }
        let body = strip_code_fence(text.trim());
        let value: Value = serde_json::from_str(body).map_err(|e| {
            Error::new(
                ErrorKind::Oracle,
                format!(
                    "oracle answered {}, which is not a JSON object: {e}",
                    quote_snippet(text)
                ),
            )
        })?;
        self.check_output(value)
    }
}

/// `check_output` with an already compiled schema (the runtime compiles it once).
pub(crate) fn check_output(
    labels: &[String],
    schema: Option<&JsonSchema>,
    output: Value,
) -> Result<Value> {
    if !labels.is_empty() {
        return match output {
            Value::String(s) => match_label(labels, &s).map(Value::String),
            other => Err(Error::new(
                ErrorKind::Oracle,
                format!(
                    "oracle answered {}, expected one of the labels {labels:?}",
                    quote_snippet(&other.to_string())
                ),
            )),
        };
    }
    if !output.is_object() {
        return Err(Error::new(
            ErrorKind::Oracle,
            format!(
                "oracle answered {}, expected a JSON object (extraction task)",
                quote_snippet(&output.to_string())
            ),
        ));
    }
    if let Some(schema) = schema {
        schema
            .validate(&output)
            .map_err(|v| Error::new(ErrorKind::Oracle, format!("oracle answer {v}")))?;
    }
    Ok(output)
}

/// The label that `text` names: exact after trimming whitespace and one pair of quotes,
/// else the only case-insensitive match.
fn match_label(labels: &[String], text: &str) -> Result<String> {
    let t = strip_quotes(text.trim());
    if let Some(l) = labels.iter().find(|l| l.as_str() == t) {
        return Ok(l.clone());
    }
    let lower = t.to_lowercase();
    let mut found = labels.iter().filter(|l| l.to_lowercase() == lower);
    match (found.next(), found.next()) {
        (Some(l), None) => Ok(l.clone()),
        (Some(_), Some(_)) => Err(Error::new(
            ErrorKind::Oracle,
            format!(
                "oracle answered {}, which matches several of the labels {labels:?} when case is ignored",
                quote_snippet(text)
            ),
        )),
        _ => Err(Error::new(
            ErrorKind::Oracle,
            format!(
                "oracle answered {}, which is not one of the labels {labels:?}",
                quote_snippet(text)
            ),
        )),
    }
}

fn strip_quotes(t: &str) -> &str {
    for q in ['"', '\'', '`'] {
        if t.len() >= 2 && t.starts_with(q) && t.ends_with(q) {
            return t[1..t.len() - 1].trim();
        }
    }
    t
}

/// The inside of one surrounding Markdown code fence (```` ```json ... ``` ````), if any.
fn strip_code_fence(t: &str) -> &str {
    let Some(rest) = t.strip_prefix("```") else {
        return t;
    };
    let Some(inner) = rest.strip_suffix("```") else {
        return t;
    };
    // Skip the info string (`json`) up to the first newline.
    match inner.find('\n') {
        Some(nl) if inner[..nl].chars().all(|c| c.is_ascii_alphanumeric()) => {
            inner[nl + 1..].trim()
        }
        _ => inner.trim(),
    }
}

/// `text` quoted for an error message, cut to 200 characters.
pub(crate) fn quote_snippet(text: &str) -> String {
    const MAX: usize = 200;
    match text.char_indices().nth(MAX) {
        Some((at, _)) => format!("{:?}...", &text[..at]),
        None => format!("{text:?}"),
    }
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// An oracle's answer.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct OracleAnswer {
    /// The output: a label, or an object for extraction tasks.
    pub output: Value,
    /// What the call cost in provider units (0 for in-process oracles; tokens used for
    /// [`HttpOracle`]).
    pub cost: f64,
}

impl OracleAnswer {
    /// Reads the reply of a foreign callback: a JSON object
    /// `{"output": <label or object>, "cost": <number, optional>}`.
    ///
    /// ```
    /// use loopai_core::OracleAnswer;
    /// let a = OracleAnswer::from_json(br#"{"output": "spam", "cost": 12}"#)?;
    /// assert_eq!((a.output.as_str(), a.cost), (Some("spam"), 12.0));
    /// # Ok::<(), loopai_core::Error>(())
    /// ```
    ///
    /// Errors ([`ErrorKind::Oracle`]): not JSON, not an object, no `output`, or a `cost`
    /// that is not a finite number.
    pub fn from_json(reply: &[u8]) -> Result<OracleAnswer> {
        let bad = |m: String| Error::new(ErrorKind::Oracle, format!("oracle reply: {m}"));
        let value: Value =
            serde_json::from_slice(reply).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let Value::Object(mut map) = value else {
            return Err(bad(
                "expected an object {\"output\": ..., \"cost\": ...}".to_owned()
            ));
        };
        let output = map
            .remove("output")
            .ok_or_else(|| bad("missing field `output`".to_owned()))?;
        let cost = match map.get("cost") {
            None | Some(Value::Null) => 0.0,
            Some(v) => v
                .as_f64()
                .filter(|c| c.is_finite())
                .ok_or_else(|| bad(format!("`cost` must be a finite number, got {v}")))?,
        };
        Ok(OracleAnswer { output, cost })
    }

    /// An answer that cost nothing.
    pub fn new(output: Value) -> OracleAnswer {
        OracleAnswer { output, cost: 0.0 }
    }

    /// Sets the cost of the call.
    #[must_use]
    pub fn with_cost(mut self, cost: f64) -> OracleAnswer {
        self.cost = cost;
        self
    }
}

/// The reference model. Implementations must be thread-safe: validation workers and
/// executing threads call [`ask`](Oracle::ask) concurrently.
///
/// Errors are reported as [`crate::Error`]s (use [`crate::ErrorKind::Oracle`]); they are
/// counted and never reach `execute`'s caller except through the cascade's `abstain`.
pub trait Oracle: Send + Sync + fmt::Debug {
    /// Answers one request, giving up after `request.timeout`.
    fn ask(&self, request: &OracleRequest<'_>) -> Result<OracleAnswer>;
}

/// An in-process oracle from a closure.
///
/// ```
/// use loopai_core::{FnOracle, OracleAnswer};
/// use serde_json::json;
///
/// let oracle = FnOracle::new(|req| {
///     let text = req.input["text"].as_str().unwrap_or("");
///     Ok(OracleAnswer::new(json!(if text.contains("prize") { "spam" } else { "ham" })))
/// });
/// # let _ = oracle;
/// ```
pub struct FnOracle<F>(F);

impl<F> FnOracle<F>
where
    F: Fn(&OracleRequest<'_>) -> Result<OracleAnswer> + Send + Sync + 'static,
{
    /// Wraps `f`.
    pub fn new(f: F) -> FnOracle<F> {
        FnOracle(f)
    }

    /// Wraps `f` into the shared handle the runtime builder takes.
    pub fn shared(f: F) -> Arc<dyn Oracle> {
        Arc::new(FnOracle(f))
    }
}

impl<F> fmt::Debug for FnOracle<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnOracle")
    }
}

impl<F> Oracle for FnOracle<F>
where
    F: Fn(&OracleRequest<'_>) -> Result<OracleAnswer> + Send + Sync + 'static,
{
    fn ask(&self, request: &OracleRequest<'_>) -> Result<OracleAnswer> {
        (self.0)(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels() -> Vec<String> {
        vec!["spam".into(), "ham".into()]
    }

    fn req<'a>(
        labels: &'a [String],
        schema: Option<&'a Value>,
        input: &'a Value,
    ) -> OracleRequest<'a> {
        OracleRequest::new("t", "", labels, schema, input, Duration::from_secs(1))
    }

    #[test]
    fn labels_tolerate_whitespace_quotes_and_unambiguous_case() {
        let (l, input) = (labels(), json!({}));
        let r = req(&l, None, &input);
        for text in [
            "spam",
            " spam\n",
            "\"spam\"",
            "'Spam'",
            "`SPAM`",
            "  \" spam \" ",
        ] {
            assert_eq!(r.parse_answer_text(text).unwrap(), "spam", "{text:?}");
        }
        for text in ["spam.", "maybe spam", "", "\"spam", "spam, ham"] {
            let err = r.parse_answer_text(text).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Oracle);
            assert!(
                err.to_string()
                    .contains("not one of the labels [\"spam\", \"ham\"]"),
                "{err}"
            );
        }
        let cased = vec!["Spam".to_owned(), "spam".to_owned()];
        let r = req(&cased, None, &input);
        assert_eq!(r.parse_answer_text("Spam").unwrap(), "Spam");
        let err = r.parse_answer_text("SPAM").unwrap_err();
        assert!(
            err.to_string().contains("matches several of the labels"),
            "{err}"
        );
        let err = check_output(&l, None, json!(3)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "oracle answered \"3\", expected one of the labels [\"spam\", \"ham\"]"
        );
    }

    #[test]
    fn extraction_answers_are_objects_valid_against_the_schema() {
        let schema = json!({"type": "object", "properties": {"amount": {"type": "number"}}, "required": ["amount"]});
        let input = json!({});
        let r = req(&[], Some(&schema), &input);
        assert_eq!(
            r.parse_answer_text("{\"amount\": 12.5}").unwrap(),
            json!({"amount": 12.5})
        );
        assert_eq!(
            r.parse_answer_text("```json\n{\"amount\": 3}\n```")
                .unwrap(),
            json!({"amount": 3})
        );
        let err = r.parse_answer_text("{\"amount\": \"12\"}").unwrap_err();
        assert!(
            err.to_string().starts_with("oracle answer /amount:"),
            "{err}"
        );
        let err = r.parse_answer_text("the amount is 12").unwrap_err();
        assert!(err.to_string().contains("is not a JSON object"), "{err}");
        let r = req(&[], None, &input);
        let err = r.check_output(json!(["a"])).unwrap_err();
        assert!(err.to_string().contains("expected a JSON object"), "{err}");
    }

    #[test]
    fn foreign_replies_are_read_strictly() {
        let a = OracleAnswer::from_json(br#"{"output": {"x": 1}}"#).unwrap();
        assert_eq!((a.output, a.cost), (json!({"x": 1}), 0.0));
        for (reply, msg) in [
            (&b"spam"[..], "not valid JSON"),
            (b"\"spam\"", "expected an object"),
            (b"{\"label\": \"spam\"}", "missing field `output`"),
            (
                b"{\"output\": \"spam\", \"cost\": \"1\"}",
                "`cost` must be a finite number",
            ),
        ] {
            let err = OracleAnswer::from_json(reply).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Oracle);
            assert!(err.to_string().contains(msg), "{err}");
        }
    }
}
