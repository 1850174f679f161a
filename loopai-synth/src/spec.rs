//! The task specification (the design's `TaskSpecification`): parsing, extra examples from
//! JSON Lines, and validation with errors that name the spec path at fault.

use std::path::Path;

use loopai_core::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::inputs::InputFields;

/// One labeled example: an input object and the expected output (a label string for
/// classification tasks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// The input object, as the runtime will receive it.
    pub input: Value,
    /// The expected output.
    pub output: Value,
}

/// A task specification: what the program must do, and labeled examples of it.
///
/// Unknown keys (`id`, `created_at`, ...) are tolerated and ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The task id; becomes the program's `task`.
    pub name: String,
    /// What the task is, in words.
    #[serde(default)]
    pub description: String,
    /// JSON Schema of the input object. Every `string` property becomes a text input of the
    /// program, every `number`/`integer` property a number input, every `boolean` or `enum`
    /// property a category input; when it has no properties, the fields of the examples'
    /// inputs are used by their JSON type.
    #[serde(default)]
    pub input_schema: Value,
    /// JSON Schema of the output: `{"type": "string", "enum": [labels]}` for classification.
    /// Without `enum`, the labels are the distinct example outputs (sorted).
    pub output_schema: Value,
    /// The labeled examples (the training data).
    #[serde(default)]
    pub examples: Vec<Example>,
    /// The accuracy the program should reach (informational; reported beside the estimate).
    #[serde(default)]
    pub accuracy_target: Option<f64>,
    /// Per-execution latency budget in milliseconds; `Strategy::Auto` only picks candidates
    /// whose measured latency fits.
    #[serde(default)]
    pub latency_target_ms: Option<f64>,
    /// Fraction of executions the runtime samples for validation (not used by synthesis).
    #[serde(default)]
    pub sampling_rate: Option<f64>,
    /// The cross-validated figure synthesis picks candidates by (default accuracy).
    #[serde(default)]
    pub metric: Metric,
}

/// What synthesis maximises when it picks a candidate: `"metric": "accuracy"` (the
/// default) or `"macro_f1"` (the mean of the per-label F1 scores, which weighs rare labels
/// as much as frequent ones).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Share of examples labelled correctly.
    #[default]
    Accuracy,
    /// Unweighted mean over the labels of each label's F1 score.
    MacroF1,
}

impl Metric {
    /// The spec's spelling (`accuracy`, `macro_f1`).
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Accuracy => "accuracy",
            Metric::MacroF1 => "macro_f1",
        }
    }
}

impl TaskSpec {
    /// Parses a specification from JSON bytes.
    ///
    /// Errors are [`ErrorKind::InvalidInput`] and say what is wrong and where: a JSON syntax
    /// error names its line and column; anything but an object says what a specification
    /// is; a program file (`loopai.program/1`) is recognised as one; and every field that
    /// does not have the right type is reported (`spec.examples[3].output: ...`), one a
    /// line, not only the first.
    pub fn from_json(bytes: &[u8]) -> Result<TaskSpec> {
        parse(bytes, None)
    }

    /// Reads and parses a specification file. Errors start with the file name (a JSON
    /// syntax error as `FILE:LINE:COLUMN`).
    pub fn from_path(path: &Path) -> Result<TaskSpec> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path.display(), e))?;
        parse(&bytes, Some(path))
    }

    /// Appends examples from JSON Lines bytes (one `{"input": ..., "output": ...}` a line;
    /// blank lines are skipped). Returns how many were added. Errors name the line number;
    /// on error nothing is added.
    pub fn add_examples_jsonl(&mut self, bytes: &[u8]) -> Result<usize> {
        let text = std::str::from_utf8(bytes).map_err(|e| {
            Error::new(ErrorKind::InvalidInput, format!("examples: not UTF-8: {e}"))
        })?;
        let mut added = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let de = &mut serde_json::Deserializer::from_str(line);
            let ex: Example = serde_path_to_error::deserialize(de).map_err(|e| {
                Error::new(
                    ErrorKind::InvalidInput,
                    format!("examples line {}: {}: {}", i + 1, e.path(), e.inner()),
                )
            })?;
            added.push(ex);
        }
        let n = added.len();
        self.examples.extend(added);
        Ok(n)
    }

    /// Like [`TaskSpec::add_examples_jsonl`], reading a file; errors name the file and line.
    pub fn add_examples_path(&mut self, path: &Path) -> Result<usize> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path.display(), e))?;
        self.add_examples_jsonl(&bytes)
            .map_err(|e| e.context(path.display()))
    }

    /// Checks the specification: a usable name, a supported output schema with at least
    /// two labels, every example an object whose output is one of the labels and whose fields
    /// have the types of the input schema, and at least one field to learn from.
    ///
    /// Errors are [`ErrorKind::InvalidInput`] and name the path, e.g.
    /// `spec.examples[12].output: "maybe" is not one of output_schema.enum`; when there are
    /// several problems, all of them are listed, one a line (at most 20, then how many
    /// more). An extraction task (an object output) is [`ErrorKind::Program`].
    pub fn validate(&self) -> Result<()> {
        self.check(true)
    }

    /// Checks the specification as [`TaskSpec::validate`] does, except that it may have no
    /// example yet: a task served through the gateway learns from the LLM's answers. Its
    /// labels must then be given by `output_schema.enum`.
    pub fn validate_without_examples(&self) -> Result<()> {
        self.check(false)
    }

    /// Whether this is an extraction task: its `output_schema` is an object of fields
    /// (`{"type": "object", "properties": {...}}`).
    pub fn is_extraction(&self) -> bool {
        crate::extract::schema::is_extraction(&self.output_schema)
    }

    fn check(&self, need_examples: bool) -> Result<()> {
        let mut problems = Vec::new();
        if self.is_extraction() {
            let n = self.name.chars().count();
            if n == 0 || n > 128 {
                problems.push("spec.name: must be 1 to 128 characters".to_string());
            }
            check_unit(self.accuracy_target, "spec.accuracy_target", &mut problems);
            check_unit(self.sampling_rate, "spec.sampling_rate", &mut problems);
            if !self.input_schema.is_null() && !self.input_schema.is_object() {
                problems.push("spec.input_schema: expected a JSON object".to_string());
            } else {
                match crate::inputs::InputFields::of(
                    &self.input_schema,
                    self.examples.iter().map(|e| &e.input),
                ) {
                    Ok(f) if f.text.is_empty() => problems.push(
                        "spec.input_schema: no text (string) field to extract from".to_string(),
                    ),
                    Ok(_) => {}
                    Err(e) => problems.push(e.to_string()),
                }
            }
            problems.extend(crate::extract::schema::problems(self, need_examples));
            return if problems.is_empty() {
                Ok(())
            } else {
                Err(invalid(list_problems(problems)))
            };
        }
        let n = self.name.chars().count();
        if n == 0 || n > 128 {
            problems.push("spec.name: must be 1 to 128 characters".to_string());
        }
        check_unit(self.accuracy_target, "spec.accuracy_target", &mut problems);
        check_unit(self.sampling_rate, "spec.sampling_rate", &mut problems);
        if let Some(ms) = self.latency_target_ms {
            if !(ms.is_finite() && ms > 0.0) {
                problems.push(format!(
                    "spec.latency_target_ms: must be a positive number, got {ms}"
                ));
            }
        }
        let mut schema_ok = true;
        if !self.input_schema.is_null() && !self.input_schema.is_object() {
            problems.push("spec.input_schema: expected a JSON object".to_string());
            schema_ok = false;
        }
        let labels = match self.labels() {
            Ok(labels) => Some(labels),
            Err(e) if e.kind() == ErrorKind::Program => return Err(e),
            Err(e) => {
                problems.push(e.to_string());
                None
            }
        };
        if let Some([only]) = labels.as_deref() {
            problems.push(if self.output_schema.get("enum").is_some() {
                format!(
                    "spec.output_schema.enum: only one label ({only:?}); a classifier needs at least two"
                )
            } else {
                format!(
                    "spec.examples: every example has the output {only:?}; a classifier needs at \
                     least two labels (list them in output_schema.enum)"
                )
            });
        }
        let fields = if schema_ok {
            match InputFields::of(&self.input_schema, self.examples.iter().map(|e| &e.input)) {
                Ok(fields) => fields,
                Err(e) => {
                    problems.push(e.to_string());
                    InputFields::default()
                }
            }
        } else {
            InputFields::default()
        };
        for (i, ex) in self.examples.iter().enumerate() {
            let Some(obj) = ex.input.as_object() else {
                problems.push(format!("spec.examples[{i}].input: expected a JSON object"));
                continue;
            };
            problems.extend(fields.check_example(obj, &format!("spec.examples[{i}].input")));
            if let Some(labels) = &labels {
                match &ex.output {
                    Value::String(s) if labels.iter().any(|l| l == s) => {}
                    other => problems.push(format!(
                        "spec.examples[{i}].output: {other} is not one of output_schema.enum"
                    )),
                }
            }
        }
        if need_examples && self.examples.is_empty() {
            problems.push("spec.examples: at least one example is needed".to_string());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(invalid(list_problems(problems)))
        }
    }

    /// What is legal but probably not what was meant: labels of `output_schema.enum` that
    /// no example has (the program never answers them; with one label left, it always
    /// answers that one). [`synthesize`](crate::synthesize) copies these into
    /// [`Synthesis::warnings`](crate::Synthesis::warnings).
    pub fn warnings(&self) -> Vec<String> {
        let Ok(labels) = self.labels() else {
            return Vec::new();
        };
        labels
            .iter()
            .filter(|l| !self.examples.iter().any(|e| e.output.as_str() == Some(l.as_str())))
            .map(|l| {
                format!("spec.output_schema.enum: label {l:?} has no example; the program will never answer it")
            })
            .collect()
    }

    /// The labels of a classification task: `output_schema.enum`, else the distinct example
    /// outputs (sorted). Errors as [`TaskSpec::validate`] for unsupported output schemas.
    pub fn labels(&self) -> Result<Vec<String>> {
        let schema = self
            .output_schema
            .as_object()
            .ok_or_else(|| invalid("spec.output_schema: expected a JSON object"))?;
        if schema.get("type").and_then(Value::as_str) == Some("object")
            || schema.contains_key("properties")
        {
            return Err(Error::new(
                ErrorKind::Program,
                "spec.output_schema: an extraction task (an object output) has fields, not \
                 labels",
            ));
        }
        if let Some(t) = schema.get("type").and_then(Value::as_str) {
            if t != "string" {
                return Err(invalid(format!(
                    "spec.output_schema.type: only \"string\" labels are supported, got {t:?}"
                )));
            }
        }
        let mut labels: Vec<String> = Vec::new();
        match schema.get("enum") {
            Some(Value::Array(items)) => {
                for (i, v) in items.iter().enumerate() {
                    let Some(s) = v.as_str() else {
                        return Err(invalid(format!(
                            "spec.output_schema.enum[{i}]: expected a string, got {v}"
                        )));
                    };
                    if s.is_empty() {
                        return Err(invalid(format!(
                            "spec.output_schema.enum[{i}]: labels must not be empty"
                        )));
                    }
                    if labels.iter().any(|l| l == s) {
                        return Err(invalid(format!(
                            "spec.output_schema.enum[{i}]: duplicate label {s:?}"
                        )));
                    }
                    labels.push(s.to_string());
                }
            }
            Some(_) => return Err(invalid("spec.output_schema.enum: expected an array")),
            None => {
                let mut set = std::collections::BTreeSet::new();
                for (i, ex) in self.examples.iter().enumerate() {
                    match ex.output.as_str() {
                        Some(s) if !s.is_empty() => {
                            set.insert(s.to_string());
                        }
                        _ => {
                            return Err(invalid(format!(
                                "spec.examples[{i}].output: expected a non-empty string label"
                            )))
                        }
                    }
                }
                labels.extend(set);
            }
        }
        if labels.is_empty() {
            return Err(invalid("spec.output_schema.enum: no labels"));
        }
        if labels.len() > 1024 {
            return Err(invalid("spec.output_schema.enum: more than 1024 labels"));
        }
        Ok(labels)
    }

    /// The text fields of the input, in a stable order.
    #[cfg(test)]
    pub(crate) fn text_fields(&self) -> Result<Vec<crate::inputs::TextField>> {
        InputFields::of(&self.input_schema, self.examples.iter().map(|e| &e.input)).map(|f| f.text)
    }
}

fn check_unit(v: Option<f64>, path: &str, problems: &mut Vec<String>) {
    if let Some(x) = v {
        if !(0.0..=1.0).contains(&x) {
            problems.push(format!("{path}: must be between 0 and 1, got {x}"));
        }
    }
}

/// At most this many problems are listed in one error.
const MAX_LISTED: usize = 20;

/// One problem as it is; several one a line, at most [`MAX_LISTED`].
fn list_problems(problems: Vec<String>) -> String {
    if problems.len() == 1 {
        return problems.into_iter().next().unwrap_or_default();
    }
    let mut s = format!("the task specification has {} problems:", problems.len());
    for p in problems.iter().take(MAX_LISTED) {
        s.push_str("\n  ");
        s.push_str(p);
    }
    if problems.len() > MAX_LISTED {
        s.push_str(&format!("\n  ... and {} more", problems.len() - MAX_LISTED));
    }
    s
}

/// What a specification is, said when something else is given.
const SPEC_SHAPE: &str = "a task specification is a JSON object with `name` (the task id), \
    `output_schema` ({\"type\": \"string\", \"enum\": [labels]}) and `examples` \
    ([{\"input\": {...}, \"output\": label}, ...]); `description`, `input_schema`, \
    `accuracy_target`, `latency_target_ms`, `sampling_rate` and `metric` (\"accuracy\" or \
    \"macro_f1\") are optional";

/// Parses a specification, collecting every field error; `file` prefixes the messages.
fn parse(bytes: &[u8], file: Option<&Path>) -> Result<TaskSpec> {
    let located = |msg: String| match file {
        Some(f) => invalid(format!("{}: {msg}", f.display())),
        None => invalid(msg),
    };
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        let text = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let what = text.strip_suffix(&suffix).unwrap_or(&text);
        invalid(match file {
            Some(f) => format!(
                "{}:{}:{}: not valid JSON: {what}",
                f.display(),
                e.line(),
                e.column()
            ),
            None => format!(
                "spec: not valid JSON at line {} column {}: {what}",
                e.line(),
                e.column()
            ),
        })
    })?;
    let mut obj = match value {
        Value::Object(obj) => obj,
        other => {
            return Err(located(format!(
                "spec: {SPEC_SHAPE}; got {}",
                kind_of(&other)
            )))
        }
    };
    let is_program = obj
        .get("format")
        .and_then(Value::as_str)
        .is_some_and(|f| f.starts_with("loopai.program/"))
        || (obj.contains_key("decide") && !obj.contains_key("examples"));
    if is_program {
        return Err(located(format!(
            "spec: this looks like a program ({}), not a task specification; install it \
             with `loopai artifacts install` (Python: `loopai.install_program`), or give \
             `loopai synth` the specification it was learnt from",
            loopai_core::PROGRAM_FORMAT
        )));
    }
    let mut problems = Vec::new();
    let name: Option<String> = field(&mut obj, "name", &mut problems);
    let output_schema: Option<Value> = field(&mut obj, "output_schema", &mut problems);
    let description: Option<String> = field(&mut obj, "description", &mut problems);
    let input_schema: Option<Value> = field(&mut obj, "input_schema", &mut problems);
    let accuracy_target: Option<f64> = field(&mut obj, "accuracy_target", &mut problems);
    let latency_target_ms: Option<f64> = field(&mut obj, "latency_target_ms", &mut problems);
    let sampling_rate: Option<f64> = field(&mut obj, "sampling_rate", &mut problems);
    let metric: Option<Metric> = field(&mut obj, "metric", &mut problems);
    let mut examples = Vec::new();
    match obj.remove("examples") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            examples.reserve(items.len());
            for (i, item) in items.into_iter().enumerate() {
                match deserialize::<Example>(item) {
                    Ok(ex) => examples.push(ex),
                    Err((path, msg)) => problems.push(format!("spec.examples[{i}]{path}: {msg}")),
                }
            }
        }
        Some(other) => problems.push(format!(
            "spec.examples: expected an array of {{\"input\": {{...}}, \"output\": label}}, got {}",
            kind_of(&other)
        )),
    }
    if name.is_none() && !problems.iter().any(|p| p.starts_with("spec.name")) {
        problems.insert(0, "spec.name: missing (the task id)".to_string());
    }
    if output_schema.is_none() && !problems.iter().any(|p| p.starts_with("spec.output_schema")) {
        problems.push(
            "spec.output_schema: missing ({\"type\": \"string\", \"enum\": [labels]})".to_string(),
        );
    }
    match (name, output_schema) {
        (Some(name), Some(output_schema)) if problems.is_empty() => Ok(TaskSpec {
            name,
            description: description.unwrap_or_default(),
            input_schema: input_schema.unwrap_or_default(),
            output_schema,
            examples,
            accuracy_target,
            latency_target_ms,
            sampling_rate,
            metric: metric.unwrap_or_default(),
        }),
        _ => Err(located(list_problems(problems))),
    }
}

/// Takes `key` out of `obj` and deserializes it; a problem naming the path otherwise.
/// `null` counts as absent.
fn field<T: serde::de::DeserializeOwned>(
    obj: &mut serde_json::Map<String, Value>,
    key: &str,
    problems: &mut Vec<String>,
) -> Option<T> {
    let value = obj.remove(key).filter(|v| !v.is_null())?;
    match deserialize::<T>(value) {
        Ok(v) => Some(v),
        Err((path, msg)) => {
            problems.push(format!("spec.{key}{path}: {msg}"));
            None
        }
    }
}

/// Deserializes `value`; on error the path inside it (`.input`, empty at the top) and the
/// message.
fn deserialize<T: serde::de::DeserializeOwned>(
    value: Value,
) -> std::result::Result<T, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." {
            String::new()
        } else if path.starts_with('[') {
            path
        } else {
            format!(".{path}")
        };
        (path, e.inner().to_string())
    })
}

/// "an array", "a string", ... for messages.
fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(crate) fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidInput, msg)
}

/// The JSON Pointer of a top-level key.
pub(crate) fn pointer(key: &str) -> String {
    format!("/{}", key.replace('~', "~0").replace('/', "~1"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> Vec<u8> {
        format!(
            r#"{{"name": "t", "id": "x", "input_schema": {{"type": "object", "properties":
            {{"text": {{"type": "string"}}}}, "required": ["text"]}},
            "output_schema": {{"type": "string", "enum": ["a", "b"]}}{extra}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn unknown_keys_are_tolerated_and_labels_follow_enum_order() {
        let s = TaskSpec::from_json(&spec(
            r#", "examples": [{"input": {"text": "x"}, "output": "b"}]"#,
        ))
        .unwrap();
        s.validate().unwrap();
        assert_eq!(s.labels().unwrap(), ["a", "b"]);
        assert_eq!(s.text_fields().unwrap()[0].name, "text");
    }

    #[test]
    fn bad_label_names_the_example() {
        let s = TaskSpec::from_json(&spec(
            r#", "examples": [{"input": {"text": "x"}, "output": "a"}, {"input": {"text": "y"}, "output": "maybe"}]"#,
        ))
        .unwrap();
        let e = s.validate().unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"spec.examples[1].output: "maybe" is not one of output_schema.enum"#
        );
    }

    #[test]
    fn jsonl_errors_name_the_line() {
        let mut s = TaskSpec::from_json(&spec("")).unwrap();
        let e = s
            .add_examples_jsonl(
                b"{\"input\": {\"text\": \"a\"}, \"output\": \"a\"}\n\n{\"input\": 1}\n",
            )
            .unwrap_err();
        assert!(e.to_string().starts_with("examples line 3:"), "{e}");
        assert!(s.examples.is_empty());
    }

    #[test]
    fn field_names_are_sanitized_and_unique() {
        let s = TaskSpec::from_json(
            br#"{"name": "t", "input_schema": {"properties": {"a b": {"type": "string"},
            "a_b": {"type": "string"}, "n": {"type": "number"}}}, "output_schema": {"enum": ["x"]}}"#,
        )
        .unwrap();
        let names: Vec<_> = s
            .text_fields()
            .unwrap()
            .into_iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(names, ["a_b", "a_b_2"]);
        assert_eq!(pointer("a/b~"), "/a~1b~0");
    }
}
