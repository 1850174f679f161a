//! Extraction tasks (an object `output_schema`): the fields of the output, the upstream's
//! answer read as a JSON object of them and normalised as the extraction program
//! normalises its values, agreement between two answers, and a local answer's content
//! (compact JSON, keys in schema order).

use loopai_core::__private::extract::{parse_number, DateFormat, NumberFormat};
use loopai_synth::TaskSpec;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Integers are exact up to 2^53 (as the program format's `integer` fields).
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_992.0;

/// Date notations read from an upstream answer besides ISO 8601 `YYYY-MM-DD`: only those
/// that cannot be read two ways (month names, or the year first). `05/03/2026` is refused:
/// it is 5 March or 3 May depending on the writer.
const DATE_FORMATS: &[&str] = &[
    "%Y-%m-%d",
    "%Y/%m/%d",
    "%B %d, %Y",
    "%B %d %Y",
    "%d %B %Y",
    "%d %B, %Y",
    "%b %d, %Y",
    "%b %d %Y",
    "%d %b %Y",
    "%d %b, %Y",
];

/// The type of an output field (as `loopai synth` reads the output schema).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `"type": "string"` (also with `"format": "email"`).
    String,
    /// `"type": "number"`.
    Number,
    /// `"type": "integer"`.
    Integer,
    /// `"type": "string", "format": "date"`: ISO 8601 `YYYY-MM-DD`.
    Date,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Field {
    pub(crate) name: String,
    pub(crate) kind: Kind,
    pub(crate) nullable: bool,
}

/// The output fields of an extraction task, in schema order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Schema {
    pub(crate) fields: Vec<Field>,
}

impl Schema {
    /// The fields of a validated extraction spec's `output_schema`, ordered as `order`
    /// lists them (the order of `output_schema.properties` in the spec file); fields
    /// `order` lacks follow, by name.
    pub(crate) fn of(output_schema: &Value, order: &[String]) -> Schema {
        let required: Vec<&str> = output_schema
            .get("required")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let empty = Map::new();
        let props = output_schema
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let mut names: Vec<&String> = order.iter().filter(|n| props.contains_key(*n)).collect();
        names.extend(props.keys().filter(|k| !order.contains(k)));
        let fields = names
            .into_iter()
            .map(|name| {
                let prop = &props[name];
                let types: Vec<&str> = match prop.get("type") {
                    Some(Value::String(t)) => vec![t.as_str()],
                    Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
                    _ => Vec::new(),
                };
                let nullable = !required.contains(&name.as_str())
                    || prop.get("nullable").and_then(Value::as_bool) == Some(true)
                    || types.contains(&"null");
                let kind = if types.contains(&"number") {
                    Kind::Number
                } else if types.contains(&"integer") {
                    Kind::Integer
                } else if prop.get("format").and_then(Value::as_str) == Some("date") {
                    Kind::Date
                } else {
                    Kind::String
                };
                Field {
                    name: name.clone(),
                    kind,
                    nullable,
                }
            })
            .collect();
        Schema { fields }
    }

    /// Reads an upstream answer: the content, trimmed, optionally inside one Markdown code
    /// fence (```` ```json ```` or ```` ``` ````), must be a JSON object of the schema's
    /// fields, each value normalised ([`Schema::normalize`]). The error says why not.
    pub(crate) fn parse_answer(&self, content: &str) -> Result<Value, String> {
        let text = unfence(content);
        let value: Value =
            serde_json::from_str(text).map_err(|e| format!("not a JSON object: {e}"))?;
        self.normalize(&value)
    }

    /// Normalises an answer object: every schema field present (an absent one is `null`),
    /// nothing else; strings trimmed (empty = `null`); numbers as JSON floats and integers
    /// as JSON integers, also when written as text in any notation the program reads
    /// (`"1,234.50"`, `"1.234,50"`); dates to ISO 8601 `YYYY-MM-DD`; `null` only where the
    /// field is nullable. Errors name the field.
    pub(crate) fn normalize(&self, value: &Value) -> Result<Value, String> {
        let Some(obj) = value.as_object() else {
            return Err(format!("expected a JSON object, got {}", kind_of(value)));
        };
        if let Some(key) = obj
            .keys()
            .find(|k| !self.fields.iter().any(|f| &f.name == *k))
        {
            return Err(format!("{key}: not one of output_schema.properties"));
        }
        let mut out = Map::new();
        for f in &self.fields {
            let v = normalize_value(f, obj.get(&f.name).unwrap_or(&Value::Null))
                .map_err(|e| format!("{}: {e}", f.name))?;
            if v.is_null() && !f.nullable {
                return Err(format!("{}: missing, but the field is required", f.name));
            }
            out.insert(f.name.clone(), v);
        }
        Ok(Value::Object(out))
    }

    /// Whether a program's output agrees with the upstream's normalised answer: every
    /// field equal after normalisation (numbers by value).
    pub(crate) fn agrees(&self, output: &Value, label: &Value) -> bool {
        let Ok(output) = self.normalize(output) else {
            return false;
        };
        self.fields.iter().all(|f| {
            let (a, b) = (&output[&f.name], &label[&f.name]);
            match (a.as_f64(), b.as_f64()) {
                (Some(x), Some(y)) => x == y,
                _ => a == b,
            }
        })
    }

    /// The compact JSON of an answer object, keys in schema order, `null` for absent
    /// fields (a local answer's content; also the key its agreement is compared on in
    /// the canary).
    pub(crate) fn to_json(&self, answer: &Value) -> String {
        let mut out = String::from("{");
        for (i, f) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&Value::String(f.name.clone()).to_string());
            out.push(':');
            let v = answer.get(&f.name).unwrap_or(&Value::Null);
            match (f.kind, v.as_f64()) {
                // Numbers by value: 12 and 12.0 are one answer.
                (Kind::Number, Some(x)) => out.push_str(&Value::from(x).to_string()),
                _ => out.push_str(&v.to_string()),
            }
        }
        out.push('}');
        out
    }
}

/// What a task answers: one of its labels (classification), or an object of fields
/// (extraction).
#[derive(Debug)]
pub(crate) enum Answers {
    Labels(Vec<String>),
    Fields(Schema),
}

impl Answers {
    /// From a task's specification and the text of its file (for the order of an
    /// extraction task's fields).
    pub(crate) fn of(spec: &TaskSpec, spec_json: &[u8]) -> loopai_core::Result<Answers> {
        if spec.is_extraction() {
            Ok(Answers::Fields(Schema::of(
                &spec.output_schema,
                &property_order(spec_json),
            )))
        } else {
            spec.labels().map(Answers::Labels)
        }
    }

    /// The upstream's answer as a label (a string) or a normalised object; `None` when it
    /// is outside the labels, or not an object of the schema's fields.
    pub(crate) fn read(&self, content: &str) -> Option<Value> {
        match self {
            Answers::Labels(labels) => {
                crate::chat::normalize_label(content, labels).map(|l| Value::String(l.to_string()))
            }
            Answers::Fields(schema) => schema
                .parse_answer(content)
                .map_err(|e| {
                    log::debug!("loopai gateway: an upstream answer outside the schema: {e}")
                })
                .ok(),
        }
    }

    /// Whether a program's output agrees with a recorded label.
    pub(crate) fn agrees(&self, output: &Value, label: &Value) -> bool {
        match self {
            Answers::Labels(_) => output.is_string() && output == label,
            Answers::Fields(schema) => schema.agrees(output, label),
        }
    }

    /// A local answer's content: the label, or the object as compact JSON in schema order;
    /// `None` when the output is neither (the program abstained without an answer).
    pub(crate) fn content(&self, output: &Value) -> Option<String> {
        match self {
            Answers::Labels(_) => output.as_str().map(str::to_string),
            Answers::Fields(schema) => output.is_object().then(|| {
                // Normalised as the upstream's answers are (trimmed strings); as it is when
                // that fails (it cannot for a program that did not abstain).
                match schema.normalize(output) {
                    Ok(v) => schema.to_json(&v),
                    Err(_) => schema.to_json(output),
                }
            }),
        }
    }

    /// An answer as one comparable string value (the canary compares labels): the label
    /// itself, or the compact JSON of the normalised object (`null` when it is not one).
    pub(crate) fn key(&self, answer: &Value) -> Value {
        match self {
            Answers::Labels(_) => answer.clone(),
            Answers::Fields(schema) => schema
                .normalize(answer)
                .map_or(Value::Null, |v| Value::String(schema.to_json(&v))),
        }
    }
}

fn normalize_value(f: &Field, v: &Value) -> Result<Value, String> {
    let text = match v {
        Value::Null => return Ok(Value::Null),
        Value::String(s) => {
            let t = s.trim();
            if t.is_empty() {
                return Ok(Value::Null);
            }
            Some(t)
        }
        _ => None,
    };
    match f.kind {
        Kind::String => text
            .map(|t| Value::String(t.to_string()))
            .ok_or_else(|| format!("expected a string, got {}", kind_of(v))),
        Kind::Date => {
            let t = text.ok_or_else(|| format!("expected a date string, got {}", kind_of(v)))?;
            DATE_FORMATS
                .iter()
                .filter_map(|f| DateFormat::parse(f).ok())
                .find_map(|f| f.apply(t))
                .map(Value::String)
                .ok_or_else(|| {
                    format!(
                        "{t:?} is not a date in an unambiguous notation (YYYY-MM-DD, or with \
                         the month's name)"
                    )
                })
        }
        Kind::Number | Kind::Integer => {
            let x = match (v, text) {
                (Value::Number(n), _) => n.as_f64(),
                (_, Some(t)) => parse_number(t, NumberFormat::Auto),
                _ => None,
            }
            .filter(|x| x.is_finite())
            .ok_or_else(|| format!("expected a number, got {v}"))?;
            if f.kind == Kind::Number {
                Ok(Value::from(x))
            } else if x.fract() == 0.0 && x.abs() <= MAX_SAFE_INTEGER {
                Ok(Value::from(x as i64))
            } else {
                Err(format!("expected an integer, got {v}"))
            }
        }
    }
}

/// The content without surrounding whitespace and, when it is one Markdown code block,
/// without its fence (```` ```json ````, ```` ```JSON ```` or ```` ``` ````, and the
/// closing ```` ``` ````).
pub(crate) fn unfence(content: &str) -> &str {
    let t = content.trim();
    let Some(rest) = t.strip_prefix("```") else {
        return t;
    };
    let Some(body) = rest.strip_suffix("```") else {
        return t;
    };
    let body = match body.find('\n') {
        // The info string (`json`) runs to the end of the first line.
        Some(nl) if body[..nl].trim().chars().all(|c| c.is_ascii_alphanumeric()) => &body[nl..],
        _ => body,
    };
    body.trim()
}

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

/// The names of `output_schema.properties` in the order a spec file lists them (serde_json
/// keeps objects sorted by key, so this reads the file itself); empty when it has none.
pub(crate) fn property_order(spec_json: &[u8]) -> Vec<String> {
    #[derive(Deserialize)]
    struct Spec {
        output_schema: Option<OutputSchema>,
    }
    #[derive(Deserialize)]
    struct OutputSchema {
        properties: Option<Keys>,
    }
    struct Keys(Vec<String>);
    impl<'de> Deserialize<'de> for Keys {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Keys, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Keys;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Keys, A::Error> {
                    let mut keys = Vec::new();
                    while let Some(k) = map.next_key::<String>()? {
                        map.next_value::<IgnoredAny>()?;
                        keys.push(k);
                    }
                    Ok(Keys(keys))
                }
            }
            d.deserialize_map(V)
        }
    }
    serde_json::from_slice::<Spec>(spec_json)
        .ok()
        .and_then(|s| s.output_schema)
        .and_then(|o| o.properties)
        .map(|k| k.0)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Schema {
        let s = json!({"type": "object", "required": ["order"], "properties": {
            "order": {"type": "string"}, "amount": {"type": "number"},
            "items": {"type": ["integer", "null"]}, "due": {"type": "string", "format": "date"}}});
        Schema::of(
            &s,
            &[
                "order".into(),
                "amount".into(),
                "items".into(),
                "due".into(),
            ],
        )
    }

    #[test]
    fn fenced_and_padded_answers_are_read() {
        let s = schema();
        let want = json!({"order": "A-12", "amount": 12.5, "items": 3, "due": null});
        for content in [
            r#"{"order": "A-12", "amount": 12.5, "items": 3}"#,
            "  \n```json\n{\"order\": \" A-12 \", \"amount\": \"12.50\", \"items\": 3.0}\n```\n",
            "```\n{\"order\": \"A-12\", \"amount\": 12.5, \"items\": \"3\", \"due\": \"\"}```",
        ] {
            assert_eq!(s.parse_answer(content).unwrap(), want, "{content}");
        }
    }

    #[test]
    fn values_are_normalised_as_the_program_does() {
        let s = schema();
        let a = s
            .parse_answer(r#"{"order": "B", "amount": "1.234,50", "due": "March 5, 2026"}"#)
            .unwrap();
        assert_eq!(a["amount"], json!(1234.5));
        assert_eq!(a["due"], json!("2026-03-05"));
        assert_eq!(
            s.to_json(&a),
            r#"{"order":"B","amount":1234.5,"items":null,"due":"2026-03-05"}"#
        );
        // 12 and 12.0 agree.
        let l = s.parse_answer(r#"{"order": "B", "amount": 12}"#).unwrap();
        assert!(s.agrees(
            &json!({"order": "B", "amount": 12.0, "items": null, "due": null}),
            &l
        ));
        assert!(!s.agrees(
            &json!({"order": "C", "amount": 12.0, "items": null, "due": null}),
            &l
        ));
        assert_eq!(
            s.to_json(&l),
            r#"{"order":"B","amount":12.0,"items":null,"due":null}"#
        );
    }

    #[test]
    fn answers_outside_the_schema_are_refused_with_the_reason() {
        let s = schema();
        for (content, why) in [
            ("the order is A-12", "not a JSON object"),
            ("[1, 2]", "expected a JSON object, got an array"),
            (r#"{"order": "A", "note": "x"}"#, "note: not one of"),
            (r#"{"amount": 3}"#, "order: missing"),
            (
                r#"{"order": "A", "amount": "about ten"}"#,
                "amount: expected a number",
            ),
            (
                r#"{"order": "A", "items": 2.5}"#,
                "items: expected an integer",
            ),
            (
                r#"{"order": "A", "due": "05/03/2026"}"#,
                "due: \"05/03/2026\" is not a date",
            ),
            (r#"{"order": 12}"#, "order: expected a string, got a number"),
        ] {
            let e = s.parse_answer(content).unwrap_err();
            assert!(e.starts_with(why), "{content}: {e}");
        }
    }

    #[test]
    fn answers_compare_and_print_objects_by_value() {
        let a = Answers::Fields(schema());
        let label = a
            .read("```json\n{\"order\": \"A\", \"amount\": 12}\n```")
            .unwrap();
        let program = json!({"order": " A", "amount": 12.0, "items": null, "due": null});
        assert!(a.agrees(&program, &label));
        // The canary's key: equal for equal objects, null for a non-object.
        assert_eq!(a.key(&program), a.key(&label));
        assert_eq!(a.key(&json!("A")), Value::Null);
        assert_eq!(
            a.content(&program).unwrap(),
            r#"{"order":"A","amount":12.0,"items":null,"due":null}"#
        );
        assert_eq!(a.content(&Value::Null), None);
        let l = Answers::Labels(vec!["spam".into(), "ham".into()]);
        assert_eq!(l.read(" Spam."), Some(json!("spam")));
        assert!(l.agrees(&json!("spam"), &json!("spam")));
        assert!(!l.agrees(&json!({"spam": 1}), &json!("spam")));
        assert_eq!(l.content(&json!("ham")).as_deref(), Some("ham"));
    }

    #[test]
    fn the_property_order_is_read_from_the_file() {
        let spec = br#"{"name": "t", "output_schema": {"type": "object", "properties":
            {"zeta": {"type": "string"}, "alpha": {"type": "number"}}}, "examples": []}"#;
        assert_eq!(property_order(spec), ["zeta", "alpha"]);
        assert!(property_order(b"{}").is_empty());
        assert_eq!(unfence("```json\n{}\n```"), "{}");
        assert_eq!(unfence(" {} "), "{}");
    }
}
