//! The task specification (the design's `TaskSpecification`): parsing, extra examples from
//! JSON Lines, and validation with errors that name the spec path at fault.

use std::path::Path;

use loopai_core::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

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
    /// program; when it has no properties, the string fields of the examples' inputs are used.
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
}

/// A text field of the input object.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TextField {
    /// The property name in the input object.
    pub key: String,
    /// The program-safe name (`[A-Za-z0-9_.-]`, unique).
    pub name: String,
    /// Whether the input schema marks it required.
    pub required: bool,
}

impl TaskSpec {
    /// Parses a specification from JSON bytes. Errors name the path (`spec.examples[3].output`).
    pub fn from_json(bytes: &[u8]) -> Result<TaskSpec> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let at = if path == "." {
                "spec".to_string()
            } else {
                format!("spec.{path}")
            };
            Error::new(ErrorKind::InvalidInput, format!("{at}: {}", e.inner()))
        })
    }

    /// Reads and parses a specification file.
    pub fn from_path(path: &Path) -> Result<TaskSpec> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path.display(), e))?;
        TaskSpec::from_json(&bytes).map_err(|e| e.context(path.display()))
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

    /// Checks the specification: a usable name, a supported output schema, every example an
    /// object whose output is one of the labels, and at least one text field.
    ///
    /// Errors are [`ErrorKind::InvalidInput`] and name the path, e.g.
    /// `spec.examples[12].output: "maybe" is not one of output_schema.enum`.
    pub fn validate(&self) -> Result<()> {
        let n = self.name.chars().count();
        if n == 0 || n > 128 {
            return Err(invalid("spec.name: must be 1 to 128 characters"));
        }
        check_unit(self.accuracy_target, "spec.accuracy_target")?;
        check_unit(self.sampling_rate, "spec.sampling_rate")?;
        if let Some(ms) = self.latency_target_ms {
            if !(ms.is_finite() && ms > 0.0) {
                return Err(invalid(format!(
                    "spec.latency_target_ms: must be a positive number, got {ms}"
                )));
            }
        }
        if !self.input_schema.is_null() && !self.input_schema.is_object() {
            return Err(invalid("spec.input_schema: expected a JSON object"));
        }
        if let Some(i) = self.examples.iter().position(|e| !e.input.is_object()) {
            return Err(invalid(format!(
                "spec.examples[{i}].input: expected a JSON object"
            )));
        }
        let labels = self.labels()?;
        let fields = self.text_fields()?;
        for (i, ex) in self.examples.iter().enumerate() {
            let Some(obj) = ex.input.as_object() else {
                return Err(invalid(format!(
                    "spec.examples[{i}].input: expected a JSON object"
                )));
            };
            for f in &fields {
                match obj.get(&f.key) {
                    Some(Value::String(_)) => {}
                    None | Some(Value::Null) if !f.required => {}
                    None | Some(Value::Null) => {
                        return Err(invalid(format!(
                            "spec.examples[{i}].input.{}: required by input_schema but missing",
                            f.key
                        )))
                    }
                    Some(_) => {
                        return Err(invalid(format!(
                            "spec.examples[{i}].input.{}: expected a string",
                            f.key
                        )))
                    }
                }
            }
            match &ex.output {
                Value::String(s) if labels.iter().any(|l| l == s) => {}
                other => {
                    return Err(invalid(format!(
                        "spec.examples[{i}].output: {other} is not one of output_schema.enum"
                    )))
                }
            }
        }
        if self.examples.is_empty() {
            return Err(invalid("spec.examples: at least one example is needed"));
        }
        Ok(())
    }

    /// The output labels, from `output_schema.enum` or else the examples.
    pub(crate) fn labels(&self) -> Result<Vec<String>> {
        let schema = self
            .output_schema
            .as_object()
            .ok_or_else(|| invalid("spec.output_schema: expected a JSON object"))?;
        if schema.get("type").and_then(Value::as_str) == Some("object")
            || schema.contains_key("properties")
        {
            return Err(Error::new(
                ErrorKind::Program,
                "spec.output_schema: extraction tasks (an object output) are not supported by \
                 the program generator yet; only classification (a string enum)",
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
    pub(crate) fn text_fields(&self) -> Result<Vec<TextField>> {
        let mut keys: Vec<(String, bool)> = Vec::new();
        let required: Vec<&str> = self
            .input_schema
            .get("required")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(props) = self.input_schema.get("properties") {
            let props = props
                .as_object()
                .ok_or_else(|| invalid("spec.input_schema.properties: expected a JSON object"))?;
            for (k, v) in props {
                let ty = v.get("type");
                let is_text = match ty {
                    Some(Value::String(t)) => t == "string",
                    Some(Value::Array(ts)) => ts.iter().any(|t| t == "string"),
                    _ => false,
                };
                if is_text {
                    keys.push((k.clone(), required.contains(&k.as_str())));
                }
            }
        } else {
            let mut set = std::collections::BTreeSet::new();
            for ex in &self.examples {
                if let Some(obj) = ex.input.as_object() {
                    for (k, v) in obj {
                        if v.is_string() {
                            set.insert(k.clone());
                        }
                    }
                }
            }
            keys.extend(set.into_iter().map(|k| (k, false)));
        }
        if keys.is_empty() {
            return Err(invalid(
                "spec.input_schema: no text (string) field to learn from",
            ));
        }
        if keys.len() > 16 {
            return Err(invalid(format!(
                "spec.input_schema: {} text fields, at most 16 are supported",
                keys.len()
            )));
        }
        let mut out: Vec<TextField> = Vec::new();
        for (key, required) in keys {
            let mut base: String = key
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .take(40)
                .collect();
            if base.is_empty() {
                base.push('f');
            }
            let mut name = base.clone();
            let mut k = 2;
            while out.iter().any(|f| f.name == name) {
                name = format!("{base}_{k}");
                k += 1;
            }
            out.push(TextField {
                key,
                name,
                required,
            });
        }
        Ok(out)
    }
}

fn check_unit(v: Option<f64>, path: &str) -> Result<()> {
    match v {
        Some(x) if !(0.0..=1.0).contains(&x) => {
            Err(invalid(format!("{path}: must be between 0 and 1, got {x}")))
        }
        _ => Ok(()),
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
