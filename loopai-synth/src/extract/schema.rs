//! The output schema of an extraction task (an object of typed, possibly nullable fields)
//! and the checks of its examples, with errors that name the spec path at fault.

use serde_json::Value;

use crate::spec::TaskSpec;

/// Most fields of an extraction task (the program format's limit).
pub(crate) const MAX_FIELDS: usize = 64;

/// The type of an extracted field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldKind {
    /// Any text, as it appears in the input (or mapped, e.g. `€` to `EUR`).
    String,
    /// An e-mail address (`"format": "email"`).
    Email,
    /// A number, read in any common notation (`1.234,50`, `1,234.50`).
    Number,
    /// An integer.
    Integer,
    /// A date (`"format": "date"`), normalised to ISO 8601 `YYYY-MM-DD`.
    Date,
}

impl FieldKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            FieldKind::String => "string",
            FieldKind::Email => "email",
            FieldKind::Number => "number",
            FieldKind::Integer => "integer",
            FieldKind::Date => "date",
        }
    }
}

/// One field of the output object.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FieldSpec {
    /// The property name (also the program's field name).
    pub name: String,
    pub kind: FieldKind,
    /// Whether `null` (absent) is a valid answer.
    pub nullable: bool,
}

/// A field's expected value in one example.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expected {
    Null,
    Text(String),
    Number(f64),
}

impl Expected {
    /// Whether an extracted JSON value is this one exactly (numbers compare by value, so
    /// `12` and `12.0` agree).
    pub(crate) fn matches(&self, v: &Value) -> bool {
        match (self, v) {
            (Expected::Null, Value::Null) => true,
            (Expected::Text(a), Value::String(b)) => a == b,
            (Expected::Number(a), Value::Number(b)) => b.as_f64() == Some(*a),
            _ => false,
        }
    }
}

/// Whether the spec's output schema is an object (an extraction task).
pub(crate) fn is_extraction(output_schema: &Value) -> bool {
    output_schema.get("type").and_then(Value::as_str) == Some("object")
        || output_schema.get("properties").is_some()
}

/// The fields of an extraction spec's output schema; errors name the path.
pub(crate) fn fields(output_schema: &Value) -> Result<Vec<FieldSpec>, String> {
    let path = "spec.output_schema";
    if let Some(t) = output_schema.get("type") {
        if t != "object" {
            return Err(format!(
                "{path}.type: an extraction task's output is \"object\", got {t}"
            ));
        }
    }
    let Some(props) = output_schema.get("properties") else {
        return Err(format!(
            "{path}.properties: missing (the fields to extract, e.g. {{\"order_id\": \
             {{\"type\": \"string\"}}, \"total\": {{\"type\": \"number\"}}}})"
        ));
    };
    let Some(props) = props.as_object() else {
        return Err(format!("{path}.properties: expected a JSON object"));
    };
    if props.is_empty() || props.len() > MAX_FIELDS {
        return Err(format!(
            "{path}.properties: between 1 and {MAX_FIELDS} fields are required, got {}",
            props.len()
        ));
    }
    let required: Vec<&str> = match output_schema.get("required") {
        None => Vec::new(),
        Some(Value::Array(a)) => {
            let mut out = Vec::new();
            for (i, v) in a.iter().enumerate() {
                match v.as_str() {
                    Some(s) if props.contains_key(s) => out.push(s),
                    Some(s) => {
                        return Err(format!(
                            "{path}.required[{i}]: {s:?} is not one of the properties"
                        ))
                    }
                    None => return Err(format!("{path}.required[{i}]: expected a string")),
                }
            }
            out
        }
        Some(_) => return Err(format!("{path}.required: expected an array of field names")),
    };
    let mut out = Vec::new();
    for (name, prop) in props {
        let at = format!("{path}.properties.{name}");
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !name_ok {
            return Err(format!(
                "{at}: field names are 1 to 64 characters of [A-Za-z0-9_.-]"
            ));
        }
        let Some(prop) = prop.as_object() else {
            return Err(format!("{at}: expected a JSON object ({{\"type\": ...}})"));
        };
        let mut nullable = !required.contains(&name.as_str())
            || prop.get("nullable").and_then(Value::as_bool) == Some(true);
        let mut types: Vec<&str> = Vec::new();
        match prop.get("type") {
            Some(Value::String(t)) => types.push(t),
            Some(Value::Array(ts)) => {
                for (i, t) in ts.iter().enumerate() {
                    match t.as_str() {
                        Some(t) => types.push(t),
                        None => return Err(format!("{at}.type[{i}]: expected a string")),
                    }
                }
            }
            Some(other) => return Err(format!("{at}.type: expected a string, got {other}")),
            None => return Err(format!("{at}.type: missing (string, number, integer)")),
        }
        if let Some(i) = types.iter().position(|t| *t == "null") {
            nullable = true;
            types.remove(i);
        }
        let format = prop.get("format").and_then(Value::as_str);
        let kind = match (types.as_slice(), format) {
            (["string"], Some("date")) => FieldKind::Date,
            (["string"], Some("email")) => FieldKind::Email,
            (["string"], None) => FieldKind::String,
            (["string"], Some(f)) => {
                return Err(format!(
                    "{at}.format: {f:?} is not supported (\"date\", \"email\" or none)"
                ))
            }
            (["number"], _) => FieldKind::Number,
            (["integer"], _) => FieldKind::Integer,
            _ => {
                return Err(format!(
                    "{at}.type: {} is not supported; a field is a \"string\" (optionally with \
                     \"format\": \"date\" or \"email\"), a \"number\" or an \"integer\", \
                     optionally nullable",
                    prop.get("type").map(Value::to_string).unwrap_or_default()
                ))
            }
        };
        out.push(FieldSpec {
            name: name.clone(),
            kind,
            nullable,
        });
    }
    Ok(out)
}

/// The output schema the runtime enforces on the program's answers (in its JSON Schema
/// subset): every field present, of its type or `null` when nullable, nothing else.
/// (`format` and `nullable` are left out: the program normalises dates itself.)
pub(crate) fn runtime_schema(fields: &[FieldSpec]) -> Value {
    let mut props = serde_json::Map::new();
    for f in fields {
        let t = match f.kind {
            FieldKind::String | FieldKind::Email | FieldKind::Date => "string",
            FieldKind::Number => "number",
            FieldKind::Integer => "integer",
        };
        let ty = if f.nullable {
            serde_json::json!([t, "null"])
        } else {
            serde_json::json!(t)
        };
        props.insert(f.name.clone(), serde_json::json!({ "type": ty }));
    }
    serde_json::json!({
        "type": "object",
        "properties": props,
        "required": fields.iter().map(|f| f.name.clone()).collect::<Vec<_>>(),
        "additionalProperties": false,
    })
}

/// Reads one example's expected value of `field`; errors name `path` (the example's
/// output).
pub(crate) fn expected(field: &FieldSpec, output: &Value, path: &str) -> Result<Expected, String> {
    let at = format!("{path}.{}", field.name);
    let v = output.get(&field.name).unwrap_or(&Value::Null);
    match (field.kind, v) {
        (_, Value::Null) if field.nullable => Ok(Expected::Null),
        (_, Value::Null) => Err(format!(
            "{at}: missing, but the field is required (make it nullable in \
             output_schema if it can be absent)"
        )),
        (FieldKind::String | FieldKind::Email, Value::String(s)) if !s.is_empty() => {
            Ok(Expected::Text(s.clone()))
        }
        (FieldKind::Date, Value::String(s)) => {
            if iso_date(s) {
                Ok(Expected::Text(s.clone()))
            } else {
                Err(format!(
                    "{at}: {s:?} is not an ISO 8601 date (YYYY-MM-DD); dates are given \
                     normalised, whatever their format in the text"
                ))
            }
        }
        (FieldKind::Number, Value::Number(n)) => n
            .as_f64()
            .map(Expected::Number)
            .ok_or_else(|| format!("{at}: {n} is not a finite number")),
        (FieldKind::Integer, Value::Number(n)) if n.as_i64().is_some() => {
            Ok(Expected::Number(n.as_f64().unwrap_or_default()))
        }
        (kind, other) => Err(format!(
            "{at}: expected {} ({}), got {other}",
            match kind {
                FieldKind::String | FieldKind::Email => "a non-empty string",
                FieldKind::Date => "a date string",
                FieldKind::Number => "a number",
                FieldKind::Integer => "an integer",
            },
            kind.as_str()
        )),
    }
}

/// `YYYY-MM-DD` naming a real calendar day.
fn iso_date(s: &str) -> bool {
    loopai_core::__private::extract::DateFormat::parse("%Y-%m-%d")
        .ok()
        .and_then(|f| f.apply(s))
        .is_some_and(|iso| iso == s)
}

/// Every problem of an extraction spec (empty when it is fine): the output schema, and
/// each example's input (an object) and output (an object of the schema's fields).
pub(crate) fn problems(spec: &TaskSpec, need_examples: bool) -> Vec<String> {
    let mut problems = Vec::new();
    let fields = match fields(&spec.output_schema) {
        Ok(f) => f,
        Err(e) => return vec![e],
    };
    if need_examples && spec.examples.is_empty() {
        problems.push(
            "spec.examples: none; extraction is learnt from examples \
             ({\"input\": {\"text\": ...}, \"output\": {field: value, ...}})"
                .to_string(),
        );
    }
    for (i, ex) in spec.examples.iter().enumerate() {
        if !ex.input.is_object() {
            problems.push(format!("spec.examples[{i}].input: expected a JSON object"));
        }
        let path = format!("spec.examples[{i}].output");
        let Some(obj) = ex.output.as_object() else {
            problems.push(format!(
                "{path}: expected an object of the fields ({{\"{}\": ...}})",
                fields[0].name
            ));
            continue;
        };
        for key in obj.keys() {
            if !fields.iter().any(|f| &f.name == key) {
                problems.push(format!("{path}.{key}: not one of output_schema.properties"));
            }
        }
        for f in &fields {
            if let Err(e) = expected(f, &ex.output, &path) {
                problems.push(e);
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn schema_types_and_nullability() {
        let f = fields(&json!({"type": "object", "required": ["id", "total"], "properties": {
            "id": {"type": "string"}, "total": {"type": ["number", "null"]},
            "when": {"type": "string", "format": "date"}, "to": {"type": "string", "format": "email"},
            "n": {"type": "integer"}}}))
        .unwrap();
        let by = |n: &str| f.iter().find(|x| x.name == n).unwrap().clone();
        assert_eq!(by("id").kind, FieldKind::String);
        assert!(!by("id").nullable);
        assert!(by("total").nullable);
        assert_eq!(by("when").kind, FieldKind::Date);
        assert_eq!(by("to").kind, FieldKind::Email);
        assert_eq!(by("n").kind, FieldKind::Integer);
        assert!(by("n").nullable);
    }

    #[test]
    fn schema_errors_name_the_path() {
        let e = fields(&json!({"type": "object", "properties": {"a": {"type": "boolean"}}}))
            .unwrap_err();
        assert!(
            e.starts_with("spec.output_schema.properties.a.type:"),
            "{e}"
        );
        let e = fields(&json!({"type": "object", "properties": {"a b": {"type": "string"}}}))
            .unwrap_err();
        assert!(e.starts_with("spec.output_schema.properties.a b:"), "{e}");
        let e = fields(
            &json!({"type": "object", "required": ["x"], "properties": {"a": {"type": "string"}}}),
        )
        .unwrap_err();
        assert!(e.starts_with("spec.output_schema.required[0]:"), "{e}");
    }

    #[test]
    fn example_values_are_checked_against_the_types() {
        let f = FieldSpec {
            name: "d".into(),
            kind: FieldKind::Date,
            nullable: false,
        };
        assert_eq!(
            expected(&f, &json!({"d": "2026-02-28"}), "o").unwrap(),
            Expected::Text("2026-02-28".into())
        );
        let e = expected(&f, &json!({"d": "28.02.2026"}), "o").unwrap_err();
        assert!(
            e.starts_with("o.d: \"28.02.2026\" is not an ISO 8601 date"),
            "{e}"
        );
        let e = expected(&f, &json!({}), "o").unwrap_err();
        assert!(e.starts_with("o.d: missing"), "{e}");
        assert!(Expected::Number(12.0).matches(&json!(12)));
        assert!(Expected::Number(12.0).matches(&json!(12.0)));
        assert!(!Expected::Text("12".into()).matches(&json!(12)));
    }
}
