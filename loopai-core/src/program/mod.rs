//! The `loopai.program/1` language: parsing, validation, compilation and evaluation.
//!
//! See `docs/program-format.md` for the format. A [`Program`] is compiled once from JSON
//! (regexes, automata and weight arrays built, every reference resolved) and then
//! evaluated any number of times from any number of threads.

mod compile;
mod condition;
mod eval;
mod explain;
pub(crate) mod extract;
mod plan;
mod raw;
mod structured;
pub(crate) mod text;
mod vocab;

use serde::Serialize;
use serde_json::Value;

use crate::error::Result;

pub use explain::{Abstention, Decision, ExplainOptions, Explanation, DEFAULT_TOP_K};
pub use text::ngram_hash;

/// The `format` string every program carries.
pub const FORMAT: &str = "loopai.program/1";

/// Limits checked when a program is loaded. Programs come from outside: these bound the
/// memory and time a program can cost the host.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ProgramLimits {
    /// Largest program file, in bytes (default 256 MiB).
    pub max_program_bytes: usize,
    /// Largest text input field, in bytes (default 64 KiB). A field's own `max_bytes`
    /// can only lower it.
    pub max_input_bytes: usize,
    /// Most features (default 256).
    pub max_features: usize,
    /// Most rules in the whole program (default 10 000).
    pub max_rules: usize,
    /// Longest regex pattern source, in bytes (default 4 KiB).
    pub max_regex_bytes: usize,
    /// Compiled size limit of each regex and its lazy DFA, in bytes (default 2 MiB).
    pub regex_size_limit: usize,
    /// Largest hash table: `2^max_hash_bits` buckets (default 24).
    pub max_hash_bits: u32,
    /// Most entries in an explicit vocabulary (default 1 000 000).
    pub max_vocabulary: usize,
    /// Most keyword terms in one keyword set (default 100 000).
    pub max_keywords: usize,
    /// Most numbers in one weight array (default 2^26).
    pub max_weights: usize,
    /// Most nodes in one decision tree (default 1 000 000).
    pub max_tree_nodes: usize,
    /// Most classes summed over every model (`linear`, `naive_bayes`, `tree`) of a program
    /// (default 4 096). Each model scores each of its classes for the input's features, so
    /// this bounds the work of one evaluation per input feature, however many models a
    /// program combines with `first` and `vote`.
    pub max_model_classes: usize,
}

impl Default for ProgramLimits {
    fn default() -> Self {
        ProgramLimits {
            max_program_bytes: 256 << 20,
            max_input_bytes: 64 << 10,
            max_features: 256,
            max_rules: 10_000,
            max_regex_bytes: 4 << 10,
            regex_size_limit: 2 << 20,
            max_hash_bits: 24,
            max_vocabulary: 1_000_000,
            max_keywords: 100_000,
            max_weights: 1 << 26,
            max_tree_nodes: 1_000_000,
            max_model_classes: 4096,
        }
    }
}

impl ProgramLimits {
    /// The default limits with a different maximum text input size.
    pub fn with_max_input_bytes(mut self, bytes: usize) -> Self {
        self.max_input_bytes = bytes;
        self
    }
}

/// Size and shape of a compiled program (recorded in artifact metadata as
/// `complexity_metrics`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ProgramStats {
    /// Rules across all `rules` decisions.
    pub rules: usize,
    /// Features defined.
    pub features: usize,
    /// Keyword terms across keyword sets.
    pub keywords: usize,
    /// Regexes compiled (features and extraction fields).
    pub regexes: usize,
    /// Numbers in weight arrays (linear, naive Bayes, tree thresholds and leaves).
    pub weights: u64,
    /// Total dimension of the n-gram feature spaces.
    pub sparse_dims: u64,
    /// Decision-tree nodes.
    pub tree_nodes: usize,
    /// Size of the program source in bytes.
    pub program_bytes: u64,
}

/// Identifies the rule or model that produced an [`Outcome`]; see
/// [`Program::decision_path`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DecisionId(u32);

/// The result of evaluating a program on one input.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Outcome {
    /// The output: a label string for classifiers (`null` when every decision abstained),
    /// an object of extracted fields for extraction programs.
    pub output: Value,
    /// Index of the output label in [`Program::labels`], for classifiers.
    pub label: Option<usize>,
    /// Calibrated confidence in `[0, 1]`.
    pub confidence: f64,
    /// Per-label scores (probabilities summing to 1), aligned with [`Program::labels`];
    /// for extraction programs, each field's confidence (its `confidence_found` or
    /// `confidence_missing`), aligned with [`Program::extract_fields`].
    pub scores: Vec<f64>,
    /// True when the confidence is below the program's `abstain_below` threshold, no
    /// decision applied, or a required extraction field was not found.
    pub abstained: bool,
    /// The rule or model that decided.
    pub decided_by: Option<DecisionId>,
}

/// A compiled `loopai.program/1` program.
///
/// ```
/// use loopai_core::Program;
/// use serde_json::json;
///
/// let program = Program::from_json(br#"{
///   "format": "loopai.program/1",
///   "task": "spam",
///   "inputs": [{"name": "text", "path": "/text", "type": "text"}],
///   "preprocess": [{"name": "clean", "from": "text", "steps": [{"op": "lowercase"}]}],
///   "features": [{"name": "prize", "op": "keywords", "source": "clean", "terms": ["prize", "free"]}],
///   "decide": {"op": "rules", "rules": [
///     {"when": {"feature": "prize", "gt": 0}, "then": "spam", "confidence": 0.9},
///     {"when": {"always": true}, "then": "ham", "confidence": 0.6}
///   ]},
///   "output": {"kind": "label", "labels": ["spam", "ham"]}
/// }"#)?;
/// let outcome = program.evaluate(&json!({"text": "WIN a FREE prize"}))?;
/// assert_eq!(outcome.output, "spam");
/// assert_eq!(outcome.confidence, 0.9);
/// assert_eq!(program.decision_path(outcome.decided_by.unwrap()), Some("decide.rules[0]"));
/// # Ok::<(), loopai_core::Error>(())
/// ```
#[derive(Debug)]
pub struct Program {
    plan: plan::Plan,
}

impl Program {
    /// Parses, validates and compiles a program with the default [`ProgramLimits`].
    ///
    /// Errors are [`ErrorKind::Program`](crate::ErrorKind::Program) and name the JSON path
    /// at fault, e.g. `features[2].pattern: invalid regex: ...`.
    pub fn from_json(bytes: &[u8]) -> Result<Program> {
        Program::from_json_with_limits(bytes, &ProgramLimits::default())
    }

    /// Like [`Program::from_json`] with explicit limits.
    pub fn from_json_with_limits(bytes: &[u8], limits: &ProgramLimits) -> Result<Program> {
        Ok(Program {
            plan: compile::compile(bytes, limits)?,
        })
    }

    /// Compiles a program from an already-parsed JSON value.
    pub fn from_value(value: &Value, limits: &ProgramLimits) -> Result<Program> {
        Ok(Program {
            plan: compile::compile_value(value, 0, limits)?,
        })
    }

    /// The task id the program was written for.
    pub fn task(&self) -> &str {
        &self.plan.task
    }

    /// The program's description, if any.
    pub fn description(&self) -> Option<&str> {
        self.plan.description.as_deref()
    }

    /// The output labels of a classifier, `None` for extraction programs.
    pub fn labels(&self) -> Option<&[String]> {
        match &self.plan.output {
            plan::OutputPlan::Label { labels, .. } => Some(labels),
            plan::OutputPlan::Extract { .. } => None,
        }
    }

    /// Names of the extracted fields of an extraction program.
    pub fn extract_fields(&self) -> Option<Vec<&str>> {
        match &self.plan.output {
            plan::OutputPlan::Label { .. } => None,
            plan::OutputPlan::Extract { fields, .. } => {
                Some(fields.iter().map(|f| f.name.as_str()).collect())
            }
        }
    }

    /// Size and shape of the program.
    pub fn stats(&self) -> &ProgramStats {
        &self.plan.stats
    }

    /// The JSON path of the rule or model behind a decision (`decide.steps[0].rules[3]`),
    /// with the rule's name in parentheses when it has one.
    pub fn decision_path(&self, id: DecisionId) -> Option<&str> {
        self.plan
            .decision_names
            .get(id.0 as usize)
            .map(String::as_str)
    }

    /// Evaluates the program on one input object.
    ///
    /// Fails only with [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput): the
    /// input is not an object, a required field is missing or has the wrong type, or a
    /// text field is over its size limit. Evaluation is deterministic: the same program and
    /// input give bit-for-bit the same outcome on every run and platform.
    pub fn evaluate(&self, input: &Value) -> Result<Outcome> {
        eval::evaluate(&self.plan, input)
    }
}

#[cfg(test)]
mod tests;
