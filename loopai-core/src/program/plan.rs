//! The compiled execution plan: everything resolved to indices, regexes and automata
//! built, weights unpacked. Executing a plan does no compilation.

use std::collections::HashMap;

use aho_corasick::AhoCorasick;
use regex::Regex;

use super::text::{Placeholder, TokenMode};
use super::vocab::VocabTable;
use super::ProgramStats;

pub(crate) const MAX_INPUTS: usize = 32;
/// A view's text is at most this many times `ProgramLimits::max_input_bytes`.
pub(crate) const VIEW_GROWTH: usize = 8;
pub(crate) const MAX_CLASSES: usize = 1024;
pub(crate) const MAX_DECISION_DEPTH: usize = 8;
pub(crate) const MAX_CONDITION_DEPTH: usize = 32;

#[derive(Debug)]
pub(crate) struct Plan {
    pub task: String,
    pub description: Option<String>,
    pub inputs: Vec<InputPlan>,
    pub text_inputs: usize,
    pub views: Vec<ViewPlan>,
    /// Largest text of a view, in bytes ([`VIEW_GROWTH`] × the input limit).
    pub view_max_bytes: usize,
    pub features: Vec<FeaturePlan>,
    /// The name of each feature (for `explain`).
    pub feature_names: Vec<String>,
    pub decide: Option<DecisionPlan>,
    pub output: OutputPlan,
    /// JSON paths of decisions and rules, for `Outcome::decided_by`.
    pub decision_names: Vec<String>,
    pub stats: ProgramStats,
}

#[derive(Debug)]
pub(crate) struct InputPlan {
    pub name: String,
    pub pointer: String,
    /// `pointer` split into unescaped reference tokens (RFC 6901), parsed once.
    pub tokens: Vec<PointerToken>,
    pub required: bool,
    pub kind: InputKind,
}

/// One reference token of a JSON Pointer: an object key, and the array index it denotes
/// when it is one (`0` or digits without a leading zero).
#[derive(Debug)]
pub(crate) struct PointerToken {
    pub key: String,
    pub index: Option<usize>,
}

impl PointerToken {
    pub(crate) fn parse_pointer(pointer: &str) -> Vec<PointerToken> {
        if pointer.is_empty() {
            return Vec::new();
        }
        pointer
            .split('/')
            .skip(1)
            .map(|raw| {
                let key = raw.replace("~1", "/").replace("~0", "~");
                let index = (key == "0" || (!key.starts_with('0') && !key.is_empty()))
                    .then(|| key.parse::<usize>().ok())
                    .flatten();
                PointerToken { key, index }
            })
            .collect()
    }
}

/// Follows pre-parsed pointer tokens; no allocation.
#[inline]
pub(crate) fn resolve<'a>(
    mut value: &'a serde_json::Value,
    tokens: &[PointerToken],
) -> Option<&'a serde_json::Value> {
    for t in tokens {
        value = match value {
            serde_json::Value::Object(map) => map.get(t.key.as_str())?,
            serde_json::Value::Array(list) => list.get(t.index?)?,
            _ => return None,
        };
    }
    Some(value)
}

#[derive(Debug)]
pub(crate) enum InputKind {
    Text {
        slot: usize,
        max_bytes: usize,
        truncate: bool,
    },
    Number {
        slot: usize,
        default: Option<f64>,
    },
    /// A category: a JSON string, or a boolean read as `"true"`/`"false"`.
    Category {
        slot: usize,
    },
}

#[derive(Debug)]
pub(crate) struct ViewPlan {
    pub from: usize,
    pub steps: Vec<StepPlan>,
}

#[derive(Debug)]
pub(crate) enum StepPlan {
    Nfkc,
    Lowercase,
    CollapseWhitespace,
    Replace { kind: Placeholder, with: String },
    Truncate(usize),
}

#[derive(Debug)]
pub(crate) enum NgramIndex {
    Hashed { bits: u32, seed: u64 },
    Vocabulary(VocabTable),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Weighting {
    Count,
    Binary,
    Log1p,
    /// `1 + ln(count)`.
    Sublinear,
}

#[derive(Debug)]
pub(crate) struct SparsePlan {
    pub source: usize,
    pub words: bool,
    pub n_min: usize,
    pub n_max: usize,
    /// Tokenizer of word n-grams.
    pub tokens: TokenMode,
    pub within_words: bool,
    pub index: NgramIndex,
    pub dim: usize,
    pub weighting: Weighting,
    /// Per-index factors applied after the weighting (inverse document frequencies).
    pub idf: Option<Vec<f32>>,
    pub l2: bool,
}

#[derive(Debug)]
pub(crate) struct KeywordsPlan {
    pub source: usize,
    pub ac: Box<AhoCorasick>,
    pub whole_words: bool,
}

#[derive(Debug)]
pub(crate) struct RegexPlan {
    pub source: usize,
    pub re: Regex,
    pub count: bool,
    pub max_count: u32,
}

/// Simple numeric statistics of a text (`op: "stat"`); defined with its JSON form.
pub(crate) use super::raw::Stat;

#[derive(Debug)]
pub(crate) enum FeaturePlan {
    Sparse(SparsePlan),
    Keywords(KeywordsPlan),
    Regex(RegexPlan),
    Stat {
        source: usize,
        stat: Stat,
    },
    Number(usize),
    /// `(x - mean) / std` of a number input, clipped to `[-clip, clip]`, rounded to `f32`.
    Scale {
        slot: usize,
        mean: f64,
        std: f64,
        clip: f64,
    },
    /// One-hot bin of a number input: bin `i` = how many `edges` are `<= x`.
    Bins {
        slot: usize,
        edges: Vec<f64>,
    },
    /// One-hot value of a category input; unknown values go to the last bucket, a missing
    /// value to none. Its scalar (for conditions) is the bucket, or -1 when missing.
    OneHot {
        slot: usize,
        values: HashMap<String, u32>,
    },
    /// 1 when input `.0` (an index into `Plan::inputs`) is absent or null, else 0.
    Missing(usize),
}

impl FeaturePlan {
    /// How references see the feature.
    pub(crate) fn shape(&self) -> FeatureShape {
        match self {
            FeaturePlan::Sparse(s) => FeatureShape::Sparse { dim: s.dim },
            FeaturePlan::Bins { edges, .. } => FeatureShape::Sparse {
                dim: edges.len() + 1,
            },
            FeaturePlan::OneHot { values, .. } => FeatureShape::Category {
                values: values.clone(),
            },
            _ => FeatureShape::Scalar,
        }
    }
}

/// What the compiler knows of a feature for references to it (conditions, model inputs).
#[derive(Debug, Clone)]
pub(crate) enum FeatureShape {
    /// An n-gram or one-hot bin vector (models only).
    Sparse { dim: usize },
    /// A single number (models and comparisons).
    Scalar,
    /// A one-hot category vector of `values.len() + 1` entries (models, and `in`
    /// conditions by value): each value with its bucket.
    Category { values: HashMap<String, u32> },
}

impl FeatureShape {
    /// Entries the feature contributes to a model's input vector.
    pub(crate) fn dim(&self) -> usize {
        match self {
            FeatureShape::Sparse { dim } => *dim,
            FeatureShape::Scalar => 1,
            FeatureShape::Category { values } => values.len() + 1,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Cmp {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

#[derive(Debug)]
pub(crate) enum CondPlan {
    All(Vec<CondPlan>),
    Any(Vec<CondPlan>),
    Not(Box<CondPlan>),
    Always,
    Cmp {
        feature: usize,
        cmp: Cmp,
        value: f64,
    },
    /// The category bucket of a `one_hot` feature is one of `buckets` (sorted).
    In {
        feature: usize,
        buckets: Vec<u32>,
    },
}

#[derive(Debug)]
pub(crate) struct RulePlan {
    pub when: CondPlan,
    pub label: usize,
    pub confidence: f64,
    pub id: u32,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct InputGroup {
    pub feature: usize,
    pub offset: usize,
    /// An n-gram vector (else a single number).
    pub sparse: bool,
}

/// A linear model (softmax/sigmoid) or multinomial naive Bayes (softmax of
/// `class_log_prior + x · feature_log_prob`): the same arithmetic.
#[derive(Debug)]
pub(crate) struct LinearPlan {
    pub groups: Vec<InputGroup>,
    /// Output-label index of each model class.
    pub classes: Vec<usize>,
    pub sigmoid: bool,
    /// Columns of `weights` (1 for sigmoid, else the class count).
    pub width: usize,
    /// Row-major `dim × width`.
    pub weights: Weights,
    pub bias: Vec<f64>,
    pub inv_temperature: f64,
    pub min_confidence: f64,
    pub id: u32,
    pub bayes: bool,
}

#[derive(Debug)]
pub(crate) struct TreePlan {
    pub groups: Vec<InputGroup>,
    pub classes: Vec<usize>,
    /// `u32::MAX` marks a leaf.
    pub feature: Vec<u32>,
    pub threshold: Vec<f32>,
    pub left: Vec<u32>,
    pub right: Vec<u32>,
    /// `nodes × classes` leaf weights.
    pub value: Vec<f32>,
    pub min_confidence: f64,
    pub id: u32,
}

#[derive(Debug)]
pub(crate) enum DecisionPlan {
    Rules(Vec<RulePlan>),
    Linear(LinearPlan),
    Tree(TreePlan),
    First(Vec<DecisionPlan>),
    Vote {
        members: Vec<(f64, DecisionPlan)>,
        min_confidence: f64,
        id: u32,
    },
}

#[derive(Debug)]
pub(crate) enum OutputPlan {
    Label {
        labels: Vec<String>,
        abstain_below: f64,
    },
    Extract {
        source: usize,
        fields: Vec<super::extract::ExtractField>,
        abstain_below: f64,
    },
}

/// The weights of a linear model, row-major `dim × width`, as the program wrote them.
///
/// The int8 form stays int8 in memory: a long document looks up thousands of rows of a
/// table larger than the caches, and a quarter of the bytes is a quarter of the lines to
/// wait for. A weight reads as the same `f32` either way: `levels` holds, per column, the
/// value of each of the 256 codes, computed as the format defines it.
#[derive(Debug)]
pub(crate) enum Weights {
    F32(Vec<f32>),
    Int8 {
        /// The codes, as bytes (an `i8` reinterpreted).
        codes: Vec<u8>,
        /// `levels[col * 256 + code]` = `(f64::from(code as i8) * scale[col]) as f32`.
        levels: Vec<f32>,
    },
}

impl Weights {
    /// The weight at `flat` (`row * width + col`), whose column is `col`.
    #[inline(always)]
    pub(crate) fn at(&self, flat: usize, col: usize) -> f32 {
        match self {
            Weights::F32(w) => w[flat],
            Weights::Int8 { codes, levels } => levels[col * 256 + usize::from(codes[flat])],
        }
    }
}

/// Row access of a weight matrix, for loops that are compiled once per form (the form is
/// matched once per model, not once per weight).
pub(crate) trait WeightRows {
    /// The weight at `flat` (`row * width + col`), whose column is `col`.
    fn at(&self, flat: usize, col: usize) -> f32;
    /// Hints the CPU to fetch the row starting at `flat` (no effect on any result).
    fn prefetch(&self, flat: usize);
}

/// The f32 form of [`Weights`].
pub(crate) struct F32Rows<'a>(pub &'a [f32]);

/// The int8 form of [`Weights`].
pub(crate) struct Int8Rows<'a> {
    pub codes: &'a [u8],
    pub levels: &'a [f32],
}

#[inline(always)]
fn prefetch_ptr<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never dereferences its address and cannot fault. SSE is part of
    // the x86_64 baseline.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

impl WeightRows for F32Rows<'_> {
    #[inline(always)]
    fn at(&self, flat: usize, _col: usize) -> f32 {
        self.0[flat]
    }
    #[inline(always)]
    fn prefetch(&self, flat: usize) {
        prefetch_ptr(self.0.as_ptr().wrapping_add(flat));
    }
}

impl WeightRows for Int8Rows<'_> {
    #[inline(always)]
    fn at(&self, flat: usize, col: usize) -> f32 {
        self.levels[col * 256 + usize::from(self.codes[flat])]
    }
    #[inline(always)]
    fn prefetch(&self, flat: usize) {
        prefetch_ptr(self.codes.as_ptr().wrapping_add(flat));
    }
}
