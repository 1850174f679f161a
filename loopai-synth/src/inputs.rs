//! The fields of a task's input object and their kinds: text, number, or category (a
//! string enum or a boolean). Read from `input_schema.properties`, or, without it, from the
//! JSON types of the examples' values; every example is checked against them.

use serde_json::Value;

use loopai_core::{Error, ErrorKind, Result};

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidInput, msg)
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

/// Most text fields of one task (each gets its own views and n-gram features).
pub(crate) const MAX_TEXT_FIELDS: usize = 16;
/// Most fields of one task: a program has at most 32 inputs.
pub(crate) const MAX_FIELDS: usize = 32;

/// A number or category field of the input object.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FieldDecl {
    /// The property name in the input object.
    pub key: String,
    /// The program-safe name (`[A-Za-z0-9_.-]`, unique among all fields).
    pub name: String,
    /// Whether a value is always there: listed in `required` and not nullable. Otherwise
    /// the program's input is optional and a missing value is a feature of its own.
    pub required: bool,
    pub kind: DeclKind,
}

/// What a non-text field holds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum DeclKind {
    /// A JSON number (`number` or `integer`).
    Number,
    /// A category: a string of `enum` (the listed values, in order), or a boolean
    /// (`["false", "true"]`); `None` when the values are only known from the examples.
    Category(Option<Vec<String>>),
}

/// Every field the program reads.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct InputFields {
    pub text: Vec<TextField>,
    pub other: Vec<FieldDecl>,
}

impl InputFields {
    /// The fields of a task's input, from its `input_schema` (or, without properties, from
    /// the examples' `inputs`). Errors name the schema path; a task needs at least one
    /// field, at most [`MAX_TEXT_FIELDS`] text fields and [`MAX_FIELDS`] in all.
    pub(crate) fn of<'a>(
        schema: &Value,
        inputs: impl Iterator<Item = &'a Value>,
    ) -> Result<InputFields> {
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        // (key, required, kind); `None` = text.
        let mut found: Vec<(String, bool, Option<DeclKind>)> = Vec::new();
        if let Some(props) = schema.get("properties") {
            let props = props
                .as_object()
                .ok_or_else(|| invalid("spec.input_schema.properties: expected a JSON object"))?;
            for (k, v) in props {
                if let Some((kind, nullable)) = classify(v) {
                    found.push((k.clone(), !nullable && required.contains(&k.as_str()), kind));
                }
            }
        } else {
            let mut keys = std::collections::BTreeMap::<String, Seen>::new();
            for input in inputs {
                if let Some(obj) = input.as_object() {
                    for (k, v) in obj {
                        keys.entry(k.clone()).or_default().add(v);
                    }
                }
            }
            for (k, seen) in keys {
                if let Some(kind) = seen.kind() {
                    found.push((k, false, kind));
                }
            }
        }
        let texts = found.iter().filter(|f| f.2.is_none()).count();
        if found.is_empty() {
            return Err(invalid(
                "spec.input_schema: no field to learn from (a string, number, integer, boolean or enum property)",
            ));
        }
        if texts > MAX_TEXT_FIELDS {
            return Err(invalid(format!(
                "spec.input_schema: {texts} text fields, at most {MAX_TEXT_FIELDS} are supported"
            )));
        }
        if found.len() > MAX_FIELDS {
            return Err(invalid(format!(
                "spec.input_schema: {} fields, at most {MAX_FIELDS} are supported",
                found.len()
            )));
        }
        let mut names: Vec<String> = Vec::new();
        let mut out = InputFields::default();
        for (key, required, kind) in found {
            let name = unique_name(&key, &names);
            names.push(name.clone());
            match kind {
                None => out.text.push(TextField {
                    key,
                    name,
                    required,
                }),
                Some(kind) => out.other.push(FieldDecl {
                    key,
                    name,
                    required,
                    kind,
                }),
            }
        }
        Ok(out)
    }

    /// The problems of one example's input object (`at` is `spec.examples[i].input`).
    pub(crate) fn check_example(
        &self,
        obj: &serde_json::Map<String, Value>,
        at: &str,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        let check = |problems: &mut Vec<String>,
                     key: &str,
                     required: bool,
                     want: &str,
                     ok: &dyn Fn(&Value) -> bool| {
            match obj.get(key) {
                None | Some(Value::Null) if !required => {}
                None | Some(Value::Null) => {
                    problems.push(format!("{at}.{key}: required by input_schema but missing"))
                }
                Some(v) if ok(v) => {}
                Some(_) => problems.push(format!("{at}.{key}: expected {want}")),
            }
        };
        for f in &self.text {
            check(&mut problems, &f.key, f.required, "a string", &|v| {
                v.is_string()
            });
        }
        for f in &self.other {
            match &f.kind {
                DeclKind::Number => check(&mut problems, &f.key, f.required, "a number", &|v| {
                    v.is_number()
                }),
                DeclKind::Category(values) => {
                    check(
                        &mut problems,
                        &f.key,
                        f.required,
                        "a string or a boolean",
                        &|v| v.is_string() || v.is_boolean(),
                    );
                    if let (Some(values), Some(v)) = (values, obj.get(&f.key).and_then(category)) {
                        if !values.iter().any(|x| x == v) {
                            problems.push(format!(
                                "{at}.{}: {v:?} is not one of input_schema.properties.{}.enum",
                                f.key, f.key
                            ));
                        }
                    }
                }
            }
        }
        problems
    }
}

/// A category's value as the runtime reads it: a string, or a boolean as `"true"`/`"false"`.
pub(crate) fn category(v: &Value) -> Option<&str> {
    match v {
        Value::String(s) => Some(s),
        Value::Bool(true) => Some("true"),
        Value::Bool(false) => Some("false"),
        _ => None,
    }
}

/// The kind of a schema property (`None` inside = text) and whether it may be null;
/// `None` for properties the program cannot read (objects, arrays, untyped).
fn classify(prop: &Value) -> Option<(Option<DeclKind>, bool)> {
    let mut types: Vec<&str> = match prop.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let nullable = types.contains(&"null");
    types.retain(|t| *t != "null");
    if let Some(Value::Array(items)) = prop.get("enum") {
        let items: Vec<&Value> = items.iter().filter(|v| !v.is_null()).collect();
        let nullable = nullable
            || prop["enum"]
                .as_array()
                .is_some_and(|a| a.iter().any(Value::is_null));
        if !items.is_empty() && items.iter().all(|v| v.is_number()) {
            return Some((Some(DeclKind::Number), nullable));
        }
        if !items.is_empty() && items.iter().all(|v| category(v).is_some()) {
            let mut values: Vec<String> = Vec::new();
            for v in items.iter().filter_map(|v| category(v)) {
                if !values.iter().any(|x| x == v) {
                    values.push(v.to_string());
                }
            }
            return Some((Some(DeclKind::Category(Some(values))), nullable));
        }
        return None;
    }
    if types.contains(&"string") {
        return Some((None, nullable));
    }
    if !types.is_empty() && types.iter().all(|t| *t == "number" || *t == "integer") {
        return Some((Some(DeclKind::Number), nullable));
    }
    if types == ["boolean"] {
        let values = vec!["false".to_string(), "true".to_string()];
        return Some((Some(DeclKind::Category(Some(values))), nullable));
    }
    None
}

/// The JSON types of one key's values across the examples (nulls aside).
#[derive(Default)]
struct Seen {
    strings: usize,
    numbers: usize,
    booleans: usize,
    other: usize,
}

impl Seen {
    fn add(&mut self, v: &Value) {
        match v {
            Value::Null => {}
            Value::String(_) => self.strings += 1,
            Value::Number(_) => self.numbers += 1,
            Value::Bool(_) => self.booleans += 1,
            _ => self.other += 1,
        }
    }

    /// The field's kind when all its values have one readable type.
    fn kind(&self) -> Option<Option<DeclKind>> {
        match (self.strings, self.numbers, self.booleans, self.other) {
            (s, 0, 0, 0) if s > 0 => Some(None),
            (0, n, 0, 0) if n > 0 => Some(Some(DeclKind::Number)),
            (0, 0, b, 0) if b > 0 => Some(Some(DeclKind::Category(Some(vec![
                "false".to_string(),
                "true".to_string(),
            ])))),
            _ => None,
        }
    }
}

/// A program-safe name for `key` (`[A-Za-z0-9_-]`, at most 40 characters), unique among
/// `taken`.
fn unique_name(key: &str, taken: &[String]) -> String {
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
    while taken.contains(&name) {
        name = format!("{base}_{k}");
        k += 1;
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::TaskSpec;

    fn fields(schema: Value, examples: Value) -> Result<InputFields> {
        let spec = TaskSpec::from_json(
            serde_json::json!({"name": "t", "input_schema": schema,
                "output_schema": {"enum": ["a", "b"]}, "examples": examples})
            .to_string()
            .as_bytes(),
        )?;
        InputFields::of(&spec.input_schema, spec.examples.iter().map(|e| &e.input))
    }

    #[test]
    fn schema_types_give_text_number_and_category_fields() {
        let f = fields(
            serde_json::json!({"properties": {
                "subject": {"type": "string"}, "lines": {"type": "integer"},
                "score": {"type": ["number", "null"]}, "vip": {"type": "boolean"},
                "priority": {"type": "string", "enum": ["low", "high"]},
                "tags": {"type": "array"}}, "required": ["subject", "lines", "score", "vip"]}),
            serde_json::json!([]),
        )
        .unwrap();
        assert_eq!(f.text.len(), 1);
        assert!(f.text[0].required);
        let kinds: Vec<(&str, bool, &DeclKind)> = f
            .other
            .iter()
            .map(|d| (d.name.as_str(), d.required, &d.kind))
            .collect();
        let cat = |v: &[&str]| DeclKind::Category(Some(v.iter().map(|s| s.to_string()).collect()));
        assert_eq!(
            kinds,
            [
                ("lines", true, &DeclKind::Number),
                ("priority", false, &cat(&["low", "high"])),
                // Nullable: a null is a missing value, so the input is optional.
                ("score", false, &DeclKind::Number),
                ("vip", true, &cat(&["false", "true"])),
            ]
        );
    }

    #[test]
    fn without_properties_the_examples_types_decide() {
        let f = fields(
            Value::Null,
            serde_json::json!([
                {"input": {"text": "x", "n": 1, "ok": true, "mixed": 1}, "output": "a"},
                {"input": {"text": "y", "n": null, "ok": false, "mixed": "1"}, "output": "b"}]),
        )
        .unwrap();
        assert_eq!(
            f.text.iter().map(|t| t.key.as_str()).collect::<Vec<_>>(),
            ["text"]
        );
        let keys: Vec<&str> = f.other.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(keys, ["n", "ok"], "a field of mixed types is not read");
    }

    #[test]
    fn examples_are_checked_against_the_field_kinds() {
        let f = fields(
            serde_json::json!({"properties": {"n": {"type": "number"},
                "p": {"enum": ["lo", "hi"]}, "t": {"type": "string"}}, "required": ["n"]}),
            serde_json::json!([]),
        )
        .unwrap();
        let obj = serde_json::json!({"n": "3", "p": "mid", "t": 4});
        let problems = f.check_example(obj.as_object().unwrap(), "spec.examples[2].input");
        assert_eq!(
            problems,
            [
                "spec.examples[2].input.t: expected a string",
                "spec.examples[2].input.n: expected a number",
                "spec.examples[2].input.p: \"mid\" is not one of input_schema.properties.p.enum",
            ]
        );
        let obj = serde_json::json!({"p": null});
        assert_eq!(
            f.check_example(obj.as_object().unwrap(), "spec.examples[0].input"),
            ["spec.examples[0].input.n: required by input_schema but missing"]
        );
    }
}
