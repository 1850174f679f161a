//! Reading a program document: the typed serde leaves (`deny_unknown_fields`, so an
//! unknown key is an error) and the helpers that read a JSON value at a path, so that
//! every error carries the JSON path of the fault (`features[2].pattern: ...`).

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, ErrorKind, Result};

/// A program error at `path`.
pub(super) fn perr(path: &str, msg: impl std::fmt::Display) -> Error {
    if path.is_empty() {
        Error::new(ErrorKind::Program, msg.to_string())
    } else {
        Error::new(ErrorKind::Program, format!("{path}: {msg}"))
    }
}

pub(super) fn join(base: &str, key: &str) -> String {
    if base.is_empty() {
        key.to_string()
    } else if key.starts_with('[') {
        format!("{base}{key}")
    } else {
        format!("{base}.{key}")
    }
}

pub(super) fn idx(base: &str, i: usize) -> String {
    format!("{base}[{i}]")
}

/// Deserializes a typed leaf, reporting the full path of any fault.
pub(super) fn typed<T: DeserializeOwned>(value: &Value, path: &str) -> Result<T> {
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let inner = e.path().to_string();
        let full = if inner == "." || inner.is_empty() {
            path.to_string()
        } else {
            join(path, &inner)
        };
        perr(&full, e.into_inner())
    })
}

pub(super) fn object<'a>(
    value: &'a Value,
    path: &str,
) -> Result<&'a serde_json::Map<String, Value>> {
    value
        .as_object()
        .ok_or_else(|| perr(path, format!("expected an object, got {}", kind_of(value))))
}

pub(super) fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The `op` (or other tag) string of an object.
pub(super) fn tag<'a>(value: &'a Value, path: &str, key: &str) -> Result<&'a str> {
    let obj = object(value, path)?;
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(perr(
            &join(path, key),
            format!("expected a string, got {}", kind_of(other)),
        )),
        None => Err(perr(path, format!("missing field `{key}`"))),
    }
}

pub(super) fn check_name(name: &str, path: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(perr(
            path,
            format!("invalid name {name:?}: use 1-64 characters of [A-Za-z0-9_.-]"),
        ))
    }
}

// ---------------------------------------------------------------------------------------
// Typed leaves

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProgram {
    pub(super) format: String,
    pub(super) task: String,
    #[serde(default)]
    pub(super) description: Option<String>,
    pub(super) inputs: Vec<RawInput>,
    #[serde(default)]
    pub(super) preprocess: Vec<RawView>,
    #[serde(default)]
    pub(super) features: Vec<Value>,
    #[serde(default)]
    pub(super) decide: Option<Value>,
    pub(super) output: Value,
    /// Free-form annotations (generator, training notes). Not interpreted.
    #[serde(default)]
    #[allow(dead_code)]
    pub(super) metadata: Option<Value>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawInputType {
    Text,
    Number,
    Category,
}

#[derive(Deserialize, Clone, Copy, Default)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawOversize {
    #[default]
    Error,
    Truncate,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInput {
    pub(super) name: String,
    pub(super) path: String,
    #[serde(rename = "type")]
    pub(super) ty: RawInputType,
    #[serde(default = "yes")]
    pub(super) required: bool,
    #[serde(default)]
    pub(super) max_bytes: Option<usize>,
    #[serde(default)]
    pub(super) on_oversize: RawOversize,
    #[serde(default)]
    pub(super) default: Option<f64>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawView {
    pub(super) name: String,
    pub(super) from: String,
    pub(super) steps: Vec<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStepReplace {
    #[allow(dead_code)]
    pub(super) op: String,
    pub(super) kind: RawReplaceKind,
    pub(super) with: String,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawReplaceKind {
    Url,
    Email,
    Number,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStepTruncate {
    #[allow(dead_code)]
    pub(super) op: String,
    pub(super) max_bytes: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStepPlain {
    #[allow(dead_code)]
    pub(super) op: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHash {
    pub(super) bits: u32,
    #[serde(default)]
    pub(super) seed: u64,
}

#[derive(Deserialize, Clone, Copy, Default)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawWeighting {
    #[default]
    Count,
    Binary,
    Log1p,
    Sublinear,
}

#[derive(Deserialize, Clone, Copy, Default)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawNormalize {
    #[default]
    None,
    L2,
}

#[derive(Deserialize, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawTokens {
    #[default]
    Alnum,
    Whitespace,
    AlnumCjk,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNgrams {
    pub(super) name: String,
    pub(super) op: String,
    pub(super) source: String,
    pub(super) n: [usize; 2],
    #[serde(default)]
    pub(super) hash: Option<RawHash>,
    #[serde(default)]
    pub(super) vocabulary: Option<Vec<String>>,
    #[serde(default)]
    pub(super) weighting: RawWeighting,
    #[serde(default)]
    pub(super) normalize: RawNormalize,
    /// Per-index factors (inverse document frequencies), applied after `weighting`.
    #[serde(default)]
    pub(super) idf: Option<RawFloats>,
    /// word_ngrams only.
    #[serde(default)]
    pub(super) tokens: Option<RawTokens>,
    /// char_ngrams only.
    #[serde(default)]
    pub(super) within_words: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKeywords {
    pub(super) name: String,
    #[allow(dead_code)]
    pub(super) op: String,
    pub(super) source: String,
    pub(super) terms: Vec<String>,
    #[serde(default)]
    pub(super) whole_words: bool,
    #[serde(default)]
    pub(super) case_insensitive: bool,
}

#[derive(Deserialize, Clone, Copy, Default)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawRegexMode {
    #[default]
    Match,
    Count,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRegex {
    pub(super) name: String,
    #[allow(dead_code)]
    pub(super) op: String,
    pub(super) source: String,
    pub(super) pattern: String,
    #[serde(default)]
    pub(super) mode: RawRegexMode,
    #[serde(default)]
    pub(super) max_count: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStat {
    pub(super) name: String,
    #[allow(dead_code)]
    pub(super) op: String,
    pub(super) source: String,
    pub(super) stat: Stat,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNumber {
    pub(super) name: String,
    #[allow(dead_code)]
    pub(super) op: String,
    pub(super) input: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScale {
    pub(super) name: String,
    #[allow(dead_code)]
    pub(super) op: String,
    pub(super) input: String,
    pub(super) mean: f64,
    pub(super) std: f64,
    #[serde(default)]
    pub(super) clip: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBins {
    pub(super) name: String,
    #[allow(dead_code)]
    pub(super) op: String,
    pub(super) input: String,
    pub(super) edges: Vec<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOneHot {
    pub(super) name: String,
    #[allow(dead_code)]
    pub(super) op: String,
    pub(super) input: String,
    pub(super) values: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMissing {
    pub(super) name: String,
    #[allow(dead_code)]
    pub(super) op: String,
    pub(super) input: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    #[serde(default)]
    pub(super) name: Option<String>,
    pub(super) when: Value,
    pub(super) then: String,
    pub(super) confidence: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRules {
    #[allow(dead_code)]
    pub(super) op: String,
    pub(super) rules: Vec<Value>,
}

/// Numbers: a JSON array, `"base64:"` + little-endian f32 bytes, or (weights of a
/// `linear` model only) int8 values with one scale per column.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawFloats {
    List(Vec<f64>),
    Packed(String),
    Quantized(RawQuantized),
}

/// `{"int8": "base64:...", "scale": [...]}`: row-major int8 values, number `i` of a row
/// is `value * scale[i]` (computed in f64, stored as f32).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQuantized {
    pub(super) int8: String,
    pub(super) scale: Vec<f64>,
}

#[derive(Deserialize, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawLink {
    #[default]
    Softmax,
    Sigmoid,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLinear {
    #[allow(dead_code)]
    pub(super) op: String,
    pub(super) inputs: Vec<String>,
    pub(super) classes: Vec<String>,
    #[serde(default)]
    pub(super) link: RawLink,
    pub(super) weights: RawFloats,
    pub(super) bias: Vec<f64>,
    #[serde(default)]
    pub(super) temperature: Option<f64>,
    #[serde(default)]
    pub(super) min_confidence: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBayes {
    #[allow(dead_code)]
    pub(super) op: String,
    pub(super) inputs: Vec<String>,
    pub(super) classes: Vec<String>,
    pub(super) class_log_prior: Vec<f64>,
    pub(super) feature_log_prob: RawFloats,
    #[serde(default)]
    pub(super) temperature: Option<f64>,
    #[serde(default)]
    pub(super) min_confidence: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTree {
    #[allow(dead_code)]
    pub(super) op: String,
    pub(super) inputs: Vec<String>,
    pub(super) classes: Vec<String>,
    pub(super) feature: Vec<i64>,
    pub(super) threshold: RawFloats,
    pub(super) left: Vec<u32>,
    pub(super) right: Vec<u32>,
    pub(super) value: RawFloats,
    #[serde(default)]
    pub(super) min_confidence: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFirst {
    #[allow(dead_code)]
    pub(super) op: String,
    pub(super) steps: Vec<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVote {
    #[allow(dead_code)]
    pub(super) op: String,
    pub(super) members: Vec<RawMember>,
    #[serde(default)]
    pub(super) min_confidence: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMember {
    pub(super) weight: f64,
    pub(super) decide: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLabelOutput {
    #[allow(dead_code)]
    pub(super) kind: String,
    pub(super) labels: Vec<String>,
    #[serde(default)]
    pub(super) abstain_below: f64,
}

/// Simple numeric statistics of a text (`op: "stat"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Stat {
    /// Unicode scalar values.
    Chars,
    /// UTF-8 bytes.
    Bytes,
    /// Word tokens (`alnum` tokenizer).
    Words,
    /// Decimal digits / chars (0 for empty text).
    DigitRatio,
    /// Uppercase letters / letters (0 without letters).
    UpperRatio,
    /// Matches of the `url` placeholder pattern.
    UrlCount,
    /// Matches of the `email` placeholder pattern.
    EmailCount,
    /// Matches of the `number` placeholder pattern.
    NumberCount,
}
