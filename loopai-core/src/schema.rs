//! A small, documented subset of JSON Schema for task input and output schemas.
//!
//! A schema is compiled once ([`JsonSchema::compile`]), rejecting any keyword outside the
//! subset so that a schema never silently means less than its author thought; validation
//! ([`JsonSchema::validate`]) stops at the first violation and allocates nothing when the
//! value is valid. The subset is described in `docs/json-schema-subset.md`.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Number, Value};

use crate::error::{Error, ErrorKind, Result};

/// The validation keywords of the subset, as listed in error messages.
const SUPPORTED: &str = "type, properties, required, additionalProperties, enum, const, \
minLength, maxLength, minimum, maximum, items, minItems, maxItems; annotations: $schema, $id, \
title, description, default, examples, $comment";

/// Keywords accepted and ignored.
const ANNOTATIONS: [&str; 7] = [
    "$schema",
    "$id",
    "title",
    "description",
    "default",
    "examples",
    "$comment",
];

/// Schemas nested deeper than this are rejected (keeps compilation and validation
/// recursion bounded).
const MAX_DEPTH: usize = 64;

/// How many enum values a violation message lists before summarizing.
const MAX_LISTED_VALUES: usize = 10;

/// A compiled schema of the supported JSON Schema subset.
///
/// Cheap to clone (the compiled tree is shared) and `Send + Sync`.
///
/// ```
/// use loopai_core::JsonSchema;
/// use serde_json::json;
///
/// let input = JsonSchema::compile(&json!({
///     "type": "object",
///     "properties": {"text": {"type": "string", "maxLength": 5}},
///     "required": ["text"],
/// }))?;
/// assert!(input.validate(&json!({"text": "hi"})).is_ok());
/// let violation = input.validate(&json!({"text": 7})).unwrap_err();
/// assert_eq!(violation.to_string(), "/text: expected string, got number");
///
/// let output = JsonSchema::compile(&json!({"type": "string", "enum": ["spam", "ham"]}))?;
/// assert_eq!(output.enum_values().unwrap().len(), 2);
///
/// let err = JsonSchema::compile(&json!({"type": "string", "pattern": "^a"})).unwrap_err();
/// assert!(err.to_string().starts_with("pattern: unsupported keyword \"pattern\""));
/// # Ok::<(), loopai_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct JsonSchema {
    root: Arc<Node>,
}

/// The first place where a value does not match a [`JsonSchema`].
///
/// Displays as `"/text: expected string, got number"` (the root as `(root)`). Messages
/// describe what was expected and never quote the value itself (only its type, length or
/// item count), so a violation can be logged without leaking input content.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaViolation {
    /// JSON Pointer (RFC 6901) to the offending location in the value; `""` is the root.
    pub path: String,
    /// What is wrong there.
    pub message: String,
}

impl fmt::Display for SchemaViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "(root)"
        } else {
            &self.path
        };
        write!(f, "{path}: {}", self.message)
    }
}

impl std::error::Error for SchemaViolation {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TypeSet(u8);

impl TypeSet {
    const NAMES: [&'static str; 7] = [
        "object", "array", "string", "number", "integer", "boolean", "null",
    ];
    const OBJECT: u8 = 1 << 0;
    const ARRAY: u8 = 1 << 1;
    const STRING: u8 = 1 << 2;
    const NUMBER: u8 = 1 << 3;
    const INTEGER: u8 = 1 << 4;
    const BOOLEAN: u8 = 1 << 5;
    const NULL: u8 = 1 << 6;

    fn bit_of(name: &str) -> Option<u8> {
        Self::NAMES
            .iter()
            .position(|n| *n == name)
            .map(|i| 1u8 << i)
    }

    fn matches(self, value: &Value) -> bool {
        match value {
            Value::Null => self.0 & Self::NULL != 0,
            Value::Bool(_) => self.0 & Self::BOOLEAN != 0,
            Value::Number(n) => {
                self.0 & Self::NUMBER != 0 || (self.0 & Self::INTEGER != 0 && is_integer(n))
            }
            Value::String(_) => self.0 & Self::STRING != 0,
            Value::Array(_) => self.0 & Self::ARRAY != 0,
            Value::Object(_) => self.0 & Self::OBJECT != 0,
        }
    }
}

impl fmt::Display for TypeSet {
    /// `string`, `string or null`, `object, string or null`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Self::NAMES
            .iter()
            .enumerate()
            .filter(|(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, n)| *n)
            .collect();
        for (i, name) in names.iter().enumerate() {
            if i > 0 {
                f.write_str(if i + 1 == names.len() { " or " } else { ", " })?;
            }
            f.write_str(name)?;
        }
        Ok(())
    }
}

/// One compiled (sub)schema. Absent keywords are `None` / empty.
#[derive(Debug, Default)]
struct Node {
    types: Option<TypeSet>,
    properties: BTreeMap<String, Node>,
    required: Vec<String>,
    additional_properties: bool,
    enum_values: Option<Vec<Value>>,
    const_value: Option<Value>,
    min_length: Option<u64>,
    max_length: Option<u64>,
    minimum: Option<Number>,
    maximum: Option<Number>,
    items: Option<Box<Node>>,
    min_items: Option<u64>,
    max_items: Option<u64>,
}

impl JsonSchema {
    /// Compiles `schema`. Errors are [`ErrorKind::Schema`] naming the schema path
    /// (`properties.text.maxLength: expected a non-negative integer`), including for any
    /// keyword outside the supported subset.
    pub fn compile(schema: &Value) -> Result<JsonSchema> {
        let mut path = String::new();
        let root = compile_node(schema, &mut path, 0)?;
        Ok(JsonSchema {
            root: Arc::new(root),
        })
    }

    /// Checks `value` against the schema and returns the first violation.
    pub fn validate(&self, value: &Value) -> std::result::Result<(), SchemaViolation> {
        check(&self.root, value).map_err(|failure| (*failure).into_violation())
    }

    /// The top-level `enum` values, if the schema has one (for a classifier's output
    /// schema: its label set).
    pub fn enum_values(&self) -> Option<&[Value]> {
        self.root.enum_values.as_deref()
    }

    /// Whether the top-level `type` is exactly `"object"` (or `["object"]`), that is,
    /// every valid value is a JSON object.
    pub fn is_object_schema(&self) -> bool {
        self.root.types == Some(TypeSet(TypeSet::OBJECT))
    }
}

fn schema_error(path: &str, keyword: &str, message: impl fmt::Display) -> Error {
    let location = match (path.is_empty(), keyword.is_empty()) {
        (true, true) => "(root)".to_string(),
        (true, false) => keyword.to_string(),
        (false, true) => path.to_string(),
        (false, false) => format!("{path}.{keyword}"),
    };
    Error::new(ErrorKind::Schema, format!("{location}: {message}"))
}

fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `path` is the dotted schema path of `schema` (`""` at the root, `properties.text`).
fn compile_node(schema: &Value, path: &mut String, depth: usize) -> Result<Node> {
    if depth > MAX_DEPTH {
        return Err(schema_error(
            path,
            "",
            format_args!("schema nesting deeper than {MAX_DEPTH} levels"),
        ));
    }
    let Value::Object(map) = schema else {
        return Err(schema_error(
            path,
            "",
            format_args!("expected a schema object, got {}", json_type_name(schema)),
        ));
    };
    let mut node = Node {
        additional_properties: true,
        ..Node::default()
    };
    for (keyword, value) in map {
        let kw = keyword.as_str();
        match kw {
            "type" => node.types = Some(compile_type(value, path)?),
            "properties" => {
                let Value::Object(props) = value else {
                    return Err(schema_error(path, kw, "expected an object of schemas"));
                };
                for (name, sub) in props {
                    let restore = path.len();
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str("properties.");
                    path.push_str(name);
                    let compiled = compile_node(sub, path, depth + 1)?;
                    path.truncate(restore);
                    node.properties.insert(name.clone(), compiled);
                }
            }
            "required" => {
                let Value::Array(names) = value else {
                    return Err(schema_error(path, kw, "expected an array of strings"));
                };
                for (i, name) in names.iter().enumerate() {
                    let Value::String(name) = name else {
                        return Err(schema_error(
                            path,
                            &format!("required[{i}]"),
                            format_args!("expected a string, got {}", json_type_name(name)),
                        ));
                    };
                    node.required.push(name.clone());
                }
            }
            "additionalProperties" => {
                let Value::Bool(allowed) = value else {
                    return Err(schema_error(
                        path,
                        kw,
                        "expected a boolean (schemas are not supported here)",
                    ));
                };
                node.additional_properties = *allowed;
            }
            "enum" => match value {
                Value::Array(values) if !values.is_empty() => {
                    node.enum_values = Some(values.clone());
                }
                Value::Array(_) => return Err(schema_error(path, kw, "must not be empty")),
                _ => return Err(schema_error(path, kw, "expected an array")),
            },
            "const" => node.const_value = Some(value.clone()),
            "minLength" => node.min_length = Some(non_negative_integer(value, path, kw)?),
            "maxLength" => node.max_length = Some(non_negative_integer(value, path, kw)?),
            "minItems" => node.min_items = Some(non_negative_integer(value, path, kw)?),
            "maxItems" => node.max_items = Some(non_negative_integer(value, path, kw)?),
            "minimum" | "maximum" => {
                let Value::Number(n) = value else {
                    return Err(schema_error(path, kw, "expected a number"));
                };
                if kw == "minimum" {
                    node.minimum = Some(n.clone());
                } else {
                    node.maximum = Some(n.clone());
                }
            }
            "items" => {
                if !value.is_object() {
                    return Err(schema_error(
                        path,
                        kw,
                        "expected a schema object (the array form is not supported)",
                    ));
                }
                let restore = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str("items");
                let compiled = compile_node(value, path, depth + 1)?;
                path.truncate(restore);
                node.items = Some(Box::new(compiled));
            }
            _ if ANNOTATIONS.contains(&kw) => {}
            _ => {
                return Err(schema_error(
                    path,
                    kw,
                    format_args!("unsupported keyword {kw:?} (supported: {SUPPORTED})"),
                ))
            }
        }
    }
    check_bounds(&node, path)?;
    Ok(node)
}

fn compile_type(value: &Value, path: &str) -> Result<TypeSet> {
    let bit = |name: &Value, keyword: &str| -> Result<u8> {
        let Value::String(name) = name else {
            return Err(schema_error(
                path,
                keyword,
                format_args!("expected a type name, got {}", json_type_name(name)),
            ));
        };
        TypeSet::bit_of(name).ok_or_else(|| {
            schema_error(
                path,
                keyword,
                format_args!(
                    "unknown type {name:?} (expected one of {})",
                    TypeSet::NAMES.join(", ")
                ),
            )
        })
    };
    match value {
        Value::Array(names) if names.is_empty() => {
            Err(schema_error(path, "type", "must not be empty"))
        }
        Value::Array(names) => {
            let mut set = 0u8;
            for (i, name) in names.iter().enumerate() {
                set |= bit(name, &format!("type[{i}]"))?;
            }
            Ok(TypeSet(set))
        }
        _ => Ok(TypeSet(bit(value, "type")?)),
    }
}

fn non_negative_integer(value: &Value, path: &str, keyword: &str) -> Result<u64> {
    let parsed = match value {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| *f >= 0.0 && f.fract() == 0.0 && *f < u64::MAX as f64)
                .map(|f| f as u64)
        }),
        _ => None,
    };
    parsed.ok_or_else(|| schema_error(path, keyword, "expected a non-negative integer"))
}

/// Rejects schemas no value can satisfy because of contradictory bounds.
fn check_bounds(node: &Node, path: &str) -> Result<()> {
    let pairs = [
        ("minLength", node.min_length, "maxLength", node.max_length),
        ("minItems", node.min_items, "maxItems", node.max_items),
    ];
    for (min_kw, min, max_kw, max) in pairs {
        if let (Some(min), Some(max)) = (min, max) {
            if min > max {
                return Err(schema_error(
                    path,
                    max_kw,
                    format_args!("must be at least {min_kw} ({min}), got {max}"),
                ));
            }
        }
    }
    if let (Some(min), Some(max)) = (&node.minimum, &node.maximum) {
        if compare_numbers(min, max) == Some(Ordering::Greater) {
            return Err(schema_error(
                path,
                "maximum",
                format_args!("must be at least minimum ({min}), got {max}"),
            ));
        }
    }
    if !node.additional_properties {
        if let Some(name) = node
            .required
            .iter()
            .find(|name| !node.properties.contains_key(name.as_str()))
        {
            return Err(schema_error(
                path,
                "required",
                format_args!("{name:?} is not in properties, but additionalProperties is false"),
            ));
        }
    }
    Ok(())
}

/// A JSON number with an integral value (`1.0` counts, as in JSON Schema).
fn is_integer(n: &Number) -> bool {
    n.is_i64()
        || n.is_u64()
        || n.as_f64()
            .is_some_and(|f| f.is_finite() && f.fract() == 0.0)
}

/// Compares two numbers exactly when both are integers, else as `f64`.
fn compare_numbers(a: &Number, b: &Number) -> Option<Ordering> {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return Some(x.cmp(&y));
    }
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
        return Some(x.cmp(&y));
    }
    // Here one is a negative i64 and the other a u64 above i64::MAX, or one is a float.
    if a.is_i64() && b.is_u64() {
        return Some(Ordering::Less);
    }
    if a.is_u64() && b.is_i64() {
        return Some(Ordering::Greater);
    }
    a.as_f64()?.partial_cmp(&b.as_f64()?)
}

/// JSON equality where numbers compare by value (`1 == 1.0`), as `enum` and `const` require.
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => compare_numbers(x, y) == Some(Ordering::Equal),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_equal(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}

enum Segment {
    Key(String),
    Index(usize),
}

/// A violation on its way up: the path is collected in reverse while unwinding, so
/// nothing is allocated unless validation fails.
struct Failure {
    reverse_path: Vec<Segment>,
    message: String,
}

impl Failure {
    fn new(message: String) -> Box<Failure> {
        Box::new(Failure {
            reverse_path: Vec::new(),
            message,
        })
    }

    fn at(mut self: Box<Self>, segment: Segment) -> Box<Failure> {
        self.reverse_path.push(segment);
        self
    }

    fn into_violation(self) -> SchemaViolation {
        let mut path = String::new();
        for segment in self.reverse_path.iter().rev() {
            path.push('/');
            match segment {
                Segment::Key(key) => {
                    for c in key.chars() {
                        match c {
                            '~' => path.push_str("~0"),
                            '/' => path.push_str("~1"),
                            c => path.push(c),
                        }
                    }
                }
                Segment::Index(i) => path.push_str(&i.to_string()),
            }
        }
        SchemaViolation {
            path,
            message: self.message,
        }
    }
}

fn render_value(value: &Value) -> String {
    let mut text = value.to_string();
    if text.len() > 64 {
        let mut end = 60;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
}

fn check(node: &Node, value: &Value) -> std::result::Result<(), Box<Failure>> {
    if let Some(types) = node.types {
        if !types.matches(value) {
            return Err(Failure::new(format!(
                "expected {types}, got {}",
                json_type_name(value)
            )));
        }
    }
    if let Some(expected) = &node.const_value {
        if !json_equal(expected, value) {
            return Err(Failure::new(format!(
                "expected the constant {}",
                render_value(expected)
            )));
        }
    }
    if let Some(allowed) = &node.enum_values {
        if !allowed.iter().any(|a| json_equal(a, value)) {
            let message = if allowed.len() <= MAX_LISTED_VALUES {
                let listed: Vec<String> = allowed.iter().map(render_value).collect();
                format!("expected one of {}", listed.join(", "))
            } else {
                format!("expected one of the {} allowed values", allowed.len())
            };
            return Err(Failure::new(message));
        }
    }
    match value {
        Value::String(s) => check_string(node, s),
        Value::Number(n) => check_number(node, n),
        Value::Array(items) => check_array(node, items),
        Value::Object(map) => check_object(node, map),
        Value::Null | Value::Bool(_) => Ok(()),
    }
}

fn check_string(node: &Node, s: &str) -> std::result::Result<(), Box<Failure>> {
    if node.min_length.is_none() && node.max_length.is_none() {
        return Ok(());
    }
    // A string of n bytes has between ceil(n / 4) and n characters, so most strings need
    // no count.
    let bytes = s.len() as u64;
    let min_ok = node.min_length.is_none_or(|min| bytes.div_ceil(4) >= min);
    let max_ok = node.max_length.is_none_or(|max| bytes <= max);
    if min_ok && max_ok {
        return Ok(());
    }
    let chars = s.chars().count() as u64;
    if let Some(min) = node.min_length {
        if chars < min {
            return Err(Failure::new(format!(
                "expected at least {min} characters, got {chars}"
            )));
        }
    }
    if let Some(max) = node.max_length {
        if chars > max {
            return Err(Failure::new(format!(
                "expected at most {max} characters, got {chars}"
            )));
        }
    }
    Ok(())
}

fn check_number(node: &Node, n: &Number) -> std::result::Result<(), Box<Failure>> {
    if let Some(min) = &node.minimum {
        if matches!(compare_numbers(n, min), Some(Ordering::Less) | None) {
            return Err(Failure::new(format!("expected a number >= {min}")));
        }
    }
    if let Some(max) = &node.maximum {
        if matches!(compare_numbers(n, max), Some(Ordering::Greater) | None) {
            return Err(Failure::new(format!("expected a number <= {max}")));
        }
    }
    Ok(())
}

fn check_array(node: &Node, items: &[Value]) -> std::result::Result<(), Box<Failure>> {
    let len = items.len() as u64;
    if let Some(min) = node.min_items {
        if len < min {
            return Err(Failure::new(format!(
                "expected at least {min} items, got {len}"
            )));
        }
    }
    if let Some(max) = node.max_items {
        if len > max {
            return Err(Failure::new(format!(
                "expected at most {max} items, got {len}"
            )));
        }
    }
    if let Some(item_schema) = &node.items {
        for (i, item) in items.iter().enumerate() {
            check(item_schema, item).map_err(|f| f.at(Segment::Index(i)))?;
        }
    }
    Ok(())
}

fn check_object(node: &Node, map: &Map<String, Value>) -> std::result::Result<(), Box<Failure>> {
    for name in &node.required {
        if !map.contains_key(name) {
            return Err(Failure::new(format!(
                "missing required property {}",
                render_value(&Value::String(name.clone()))
            )));
        }
    }
    for (name, sub) in &node.properties {
        if let Some(v) = map.get(name) {
            check(sub, v).map_err(|f| f.at(Segment::Key(name.clone())))?;
        }
    }
    if !node.additional_properties {
        if let Some(extra) = map
            .keys()
            .find(|k| !node.properties.contains_key(k.as_str()))
        {
            return Err(Failure::new(
                "property is not allowed (additionalProperties is false)".into(),
            )
            .at(Segment::Key(extra.clone())));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn compile(schema: Value) -> JsonSchema {
        JsonSchema::compile(&schema).unwrap()
    }

    fn compile_err(schema: Value) -> String {
        let err = JsonSchema::compile(&schema).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Schema, "{err}");
        err.to_string()
    }

    fn violation(schema: &JsonSchema, value: Value) -> String {
        schema.validate(&value).unwrap_err().to_string()
    }

    #[test]
    fn design_input_and_output_schemas() {
        let input = compile(json!({"type": "object", "properties": {"text": {"type": "string"}}}));
        assert!(input.is_object_schema());
        assert_eq!(input.enum_values(), None);
        input.validate(&json!({"text": "Buy now!"})).unwrap();
        input.validate(&json!({})).unwrap();
        assert_eq!(
            violation(&input, json!({"text": 1})),
            "/text: expected string, got number"
        );
        assert_eq!(
            violation(&input, json!("text")),
            "(root): expected object, got string"
        );

        let output = compile(json!({"type": "string", "enum": ["spam", "ham"]}));
        assert!(!output.is_object_schema());
        assert_eq!(
            output.enum_values(),
            Some(&[json!("spam"), json!("ham")][..])
        );
        output.validate(&json!("ham")).unwrap();
        assert_eq!(
            violation(&output, json!("eggs")),
            "(root): expected one of \"spam\", \"ham\""
        );
    }

    #[test]
    fn type_accepts_and_rejects_each_json_type() {
        let cases = [
            ("object", json!({}), json!([])),
            ("array", json!([]), json!({})),
            ("string", json!(""), json!(1)),
            ("number", json!(1.5), json!("1")),
            ("number", json!(1), json!(null)),
            ("integer", json!(-3), json!(1.5)),
            ("boolean", json!(false), json!(0)),
            ("null", json!(null), json!(false)),
        ];
        for (ty, good, bad) in cases {
            let s = compile(json!({ "type": ty }));
            s.validate(&good).unwrap();
            let v = s.validate(&bad).unwrap_err();
            assert_eq!(v.path, "");
            assert!(v.message.starts_with(&format!("expected {ty}, got")), "{v}");
        }
    }

    #[test]
    fn integral_floats_count_as_integers() {
        let s = compile(json!({"type": "integer"}));
        s.validate(&json!(1.0)).unwrap();
        s.validate(&json!(u64::MAX)).unwrap();
        s.validate(&json!(i64::MIN)).unwrap();
        assert_eq!(
            violation(&s, json!(0.5)),
            "(root): expected integer, got number"
        );
    }

    #[test]
    fn type_list_accepts_any_listed_type() {
        let s = compile(json!({"type": ["string", "null"]}));
        s.validate(&json!("x")).unwrap();
        s.validate(&json!(null)).unwrap();
        assert_eq!(
            violation(&s, json!(1)),
            "(root): expected string or null, got number"
        );
        let s = compile(json!({"type": ["object"]}));
        assert!(s.is_object_schema());
        let s = compile(json!({"type": ["object", "null"]}));
        assert!(!s.is_object_schema());
    }

    #[test]
    fn properties_required_and_additional_properties() {
        let s = compile(json!({
            "type": "object",
            "properties": {"text": {"type": "string"}, "lang": {"type": "string"}},
            "required": ["text"],
            "additionalProperties": false,
        }));
        s.validate(&json!({"text": "a"})).unwrap();
        s.validate(&json!({"text": "a", "lang": "en"})).unwrap();
        assert_eq!(
            violation(&s, json!({"lang": "en"})),
            "(root): missing required property \"text\""
        );
        assert_eq!(
            violation(&s, json!({"text": "a", "extra/x": 1})),
            "/extra~1x: property is not allowed (additionalProperties is false)"
        );
        // additionalProperties defaults to true.
        let open = compile(json!({"properties": {"a": {"type": "string"}}}));
        open.validate(&json!({"b": 1})).unwrap();
        // properties only apply to objects.
        open.validate(&json!(5)).unwrap();
    }

    #[test]
    fn enum_and_const_compare_numbers_by_value() {
        let s = compile(json!({"enum": [1, "a", null, [1, {"k": 2}]]}));
        s.validate(&json!(1.0)).unwrap();
        s.validate(&json!(null)).unwrap();
        s.validate(&json!([1, {"k": 2.0}])).unwrap();
        assert_eq!(
            violation(&s, json!(2)),
            "(root): expected one of 1, \"a\", null, [1,{\"k\":2}]"
        );
        let many: Vec<Value> = (0..20).map(|i| json!(i)).collect();
        let s = compile(json!({ "enum": many }));
        assert_eq!(
            violation(&s, json!(20)),
            "(root): expected one of the 20 allowed values"
        );

        let s = compile(json!({"const": "v1"}));
        s.validate(&json!("v1")).unwrap();
        assert_eq!(
            violation(&s, json!("v2")),
            "(root): expected the constant \"v1\""
        );
        compile(json!({"const": 2})).validate(&json!(2.0)).unwrap();
    }

    #[test]
    fn string_lengths_count_unicode_scalar_values() {
        let s = compile(json!({"type": "string", "minLength": 2, "maxLength": 3}));
        s.validate(&json!("ab")).unwrap();
        s.validate(&json!("héé")).unwrap(); // 5 bytes, 3 characters
        s.validate(&json!("😀😀😀")).unwrap();
        assert_eq!(
            violation(&s, json!("é")),
            "(root): expected at least 2 characters, got 1"
        );
        assert_eq!(
            violation(&s, json!("abcd")),
            "(root): expected at most 3 characters, got 4"
        );
        assert_eq!(
            violation(&s, json!("😀😀😀😀")),
            "(root): expected at most 3 characters, got 4"
        );
        // Length keywords apply only to strings.
        s.validate(&json!(12345)).unwrap_err();
        compile(json!({"maxLength": 1}))
            .validate(&json!(12345))
            .unwrap();
    }

    #[test]
    fn minimum_and_maximum_are_inclusive() {
        let s = compile(json!({"type": "number", "minimum": 0, "maximum": 1}));
        for ok in [json!(0), json!(0.0), json!(0.5), json!(1), json!(1.0)] {
            s.validate(&ok).unwrap();
        }
        assert_eq!(violation(&s, json!(-0.1)), "(root): expected a number >= 0");
        assert_eq!(violation(&s, json!(2)), "(root): expected a number <= 1");
        let s = compile(json!({"minimum": -5, "maximum": u64::MAX}));
        s.validate(&json!(u64::MAX)).unwrap();
        s.validate(&json!(-5)).unwrap();
        assert_eq!(
            violation(&s, json!(i64::MIN)),
            "(root): expected a number >= -5"
        );
        let s = compile(json!({"maximum": 10}));
        assert_eq!(
            violation(&s, json!(u64::MAX)),
            "(root): expected a number <= 10"
        );
    }

    #[test]
    fn items_and_item_counts() {
        let s = compile(json!({
            "type": "array",
            "items": {"type": "object", "properties": {"name": {"type": "string"}}},
            "minItems": 1,
            "maxItems": 5,
        }));
        s.validate(&json!([{"name": "a"}, {}])).unwrap();
        assert_eq!(
            violation(&s, json!([])),
            "(root): expected at least 1 items, got 0"
        );
        assert_eq!(
            violation(&s, json!([{}, {}, {}, {}, {}, {}])),
            "(root): expected at most 5 items, got 6"
        );
        let v = s
            .validate(&json!([{}, {}, {}, {"name": false}]))
            .unwrap_err();
        assert_eq!(v.path, "/3/name");
        assert_eq!(v.to_string(), "/3/name: expected string, got boolean");
    }

    #[test]
    fn nested_violation_paths_are_json_pointers() {
        let s = compile(json!({
            "type": "object",
            "properties": {
                "items": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"name": {"type": "string", "maxLength": 2}},
                        "required": ["name"],
                    },
                },
                "a~b": {"type": "integer"},
            },
        }));
        assert_eq!(
            violation(
                &s,
                json!({"items": [{"name": "a"}, {"name": "b"}, {"name": "c"}, {"name": "toolong"}]})
            ),
            "/items/3/name: expected at most 2 characters, got 7"
        );
        assert_eq!(
            violation(&s, json!({"items": [{}]})),
            "/items/0: missing required property \"name\""
        );
        assert_eq!(
            violation(&s, json!({"a~b": "x"})),
            "/a~0b: expected integer, got string"
        );
    }

    #[test]
    fn annotations_are_accepted_and_ignored() {
        let s = compile(json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "urn:x",
            "title": "T",
            "description": "D",
            "default": {"text": ""},
            "examples": [{"text": "hi"}],
            "$comment": "c",
            "type": "object",
        }));
        s.validate(&json!({})).unwrap();
    }

    #[test]
    fn unsupported_keywords_are_errors_with_their_path() {
        let msg = compile_err(json!({
            "type": "object",
            "properties": {"text": {"type": "string", "pattern": "^a"}},
        }));
        assert!(
            msg.starts_with(
                "properties.text.pattern: unsupported keyword \"pattern\" (supported: type, "
            ),
            "{msg}"
        );
        let msg = compile_err(json!({"items": {"oneOf": []}}));
        assert!(
            msg.starts_with("items.oneOf: unsupported keyword \"oneOf\""),
            "{msg}"
        );
        let msg = compile_err(json!({"exclusiveMinimum": 0}));
        assert!(
            msg.starts_with("exclusiveMinimum: unsupported keyword"),
            "{msg}"
        );
    }

    #[test]
    fn malformed_keyword_values_are_errors_with_their_path() {
        let cases = [
            (
                json!({"properties": {"text": {"maxLength": -1}}}),
                "properties.text.maxLength: expected a non-negative integer",
            ),
            (
                json!({"minLength": 1.5}),
                "minLength: expected a non-negative integer",
            ),
            (
                json!({"minItems": "1"}),
                "minItems: expected a non-negative integer",
            ),
            (
                json!({"type": "str"}),
                "type: unknown type \"str\" (expected one of object, array, string, number, \
                 integer, boolean, null)",
            ),
            (
                json!({"type": ["string", 1]}),
                "type[1]: expected a type name, got number",
            ),
            (json!({"type": []}), "type: must not be empty"),
            (
                json!({"required": ["a", 1]}),
                "required[1]: expected a string, got number",
            ),
            (
                json!({"required": "a"}),
                "required: expected an array of strings",
            ),
            (
                json!({"additionalProperties": {"type": "string"}}),
                "additionalProperties: expected a boolean (schemas are not supported here)",
            ),
            (json!({"enum": []}), "enum: must not be empty"),
            (json!({"enum": "a"}), "enum: expected an array"),
            (json!({"minimum": "0"}), "minimum: expected a number"),
            (
                json!({"items": [{"type": "string"}]}),
                "items: expected a schema object (the array form is not supported)",
            ),
            (
                json!({"properties": []}),
                "properties: expected an object of schemas",
            ),
            (
                json!({"properties": {"a": true}}),
                "properties.a: expected a schema object, got boolean",
            ),
            (json!([]), "(root): expected a schema object, got array"),
            (
                json!({"minLength": 3, "maxLength": 2}),
                "maxLength: must be at least minLength (3), got 2",
            ),
            (
                json!({"minItems": 3, "maxItems": 2}),
                "maxItems: must be at least minItems (3), got 2",
            ),
            (
                json!({"minimum": 1.5, "maximum": 1}),
                "maximum: must be at least minimum (1.5), got 1",
            ),
            (
                json!({"properties": {}, "required": ["x"], "additionalProperties": false}),
                "required: \"x\" is not in properties, but additionalProperties is false",
            ),
        ];
        for (schema, expected) in cases {
            assert_eq!(compile_err(schema.clone()), expected, "for {schema}");
        }
    }

    #[test]
    fn deeply_nested_schema_is_rejected() {
        let mut schema = json!({"type": "string"});
        for _ in 0..100 {
            schema = json!({ "items": schema });
        }
        let msg = compile_err(schema);
        assert!(
            msg.contains("schema nesting deeper than 64 levels"),
            "{msg}"
        );
    }

    #[test]
    fn empty_schema_accepts_everything() {
        let s = compile(json!({}));
        for v in [
            json!(null),
            json!(1),
            json!("x"),
            json!([1]),
            json!({"a": 1}),
        ] {
            s.validate(&v).unwrap();
        }
    }

    #[test]
    fn schema_types_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<JsonSchema>();
        assert_send_sync::<SchemaViolation>();
    }

    #[test]
    fn validating_a_valid_input_allocates_nothing() {
        let s = compile(json!({
            "type": "object",
            "properties": {"text": {"type": "string"}},
            "required": ["text"],
        }));
        let input = json!({"text": "Congratulations, you won a prize!"});
        let bounded = compile(json!({
            "type": "object",
            "properties": {
                "text": {"type": "string", "minLength": 1, "maxLength": 1000},
                "n": {"type": "integer", "minimum": 0},
                "tags": {"type": "array", "items": {"enum": ["a", "b"]}},
            },
            "required": ["text"],
            "additionalProperties": false,
        }));
        let rich = json!({"text": "héllo", "n": 3, "tags": ["a", "b"]});
        let allocations = alloc_counter::allocations_during(|| {
            for _ in 0..100 {
                assert!(s.validate(&input).is_ok());
                assert!(bounded.validate(&rich).is_ok());
            }
        });
        assert_eq!(allocations, 0);
        // The counter works: a violation allocates its message.
        let allocations = alloc_counter::allocations_during(|| {
            assert!(s.validate(&json!(1)).is_err());
        });
        assert!(allocations > 0);
    }

    /// A global allocator for this test binary that counts allocations made by the
    /// current thread (other tests run concurrently on other threads).
    mod alloc_counter {
        use std::alloc::{GlobalAlloc, Layout, System};
        use std::cell::Cell;

        thread_local! {
            static COUNT: Cell<usize> = const { Cell::new(0) };
        }

        struct Counting;

        fn count() {
            let _ = COUNT.try_with(|c| c.set(c.get() + 1));
        }

        // SAFETY: forwards to `System`; counting touches only a const-initialized
        // thread-local without destructor, which never allocates.
        unsafe impl GlobalAlloc for Counting {
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                count();
                // SAFETY: same contract as the caller's.
                unsafe { System.alloc(layout) }
            }

            unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
                count();
                // SAFETY: same contract as the caller's.
                unsafe { System.alloc_zeroed(layout) }
            }

            unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
                count();
                // SAFETY: same contract as the caller's.
                unsafe { System.realloc(ptr, layout, new_size) }
            }

            unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
                // SAFETY: same contract as the caller's.
                unsafe { System.dealloc(ptr, layout) }
            }
        }

        #[global_allocator]
        static ALLOCATOR: Counting = Counting;

        pub(super) fn allocations_during(f: impl FnOnce()) -> usize {
            let before = COUNT.with(Cell::get);
            f();
            COUNT.with(Cell::get) - before
        }
    }
}
