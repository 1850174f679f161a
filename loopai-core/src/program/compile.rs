//! Parsing and validation of `loopai.program/1` JSON into an execution plan.
//!
//! Parsing walks the JSON value by hand where the shape depends on an `op`/`kind` tag
//! and uses typed serde structs (with `deny_unknown_fields`) for the leaves, so that
//! every error carries the JSON path of the fault: `features[2].pattern: ...`.

use std::collections::{HashMap, HashSet};

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use base64::Engine as _;
use regex::{Regex, RegexBuilder};
use serde_json::Value;

use super::condition::Conditions;
use super::extract;
use super::plan::*;
use super::structured::{self, InputRef};
use super::text::{ngram_hash, Placeholder, TokenMode};
use super::vocab::VocabTable;
use super::{ProgramLimits, ProgramStats, FORMAT};
use crate::error::Result;
use crate::program::raw::{
    check_name, idx, join, kind_of, object, perr, tag, typed, RawBayes, RawFirst, RawFloats,
    RawInputType, RawKeywords, RawLabelOutput, RawLinear, RawLink, RawNgrams, RawNormalize,
    RawNumber, RawOversize, RawProgram, RawRegex, RawRegexMode, RawReplaceKind, RawRule, RawRules,
    RawStat, RawStepPlain, RawStepReplace, RawStepTruncate, RawTokens, RawTree, RawVote,
    RawWeighting,
};

// ---------------------------------------------------------------------------------------
// Compiler

struct Compiler<'l> {
    limits: &'l ProgramLimits,
    /// Text slots by name: inputs of type text, then views.
    text_slots: HashMap<String, usize>,
    number_inputs: HashMap<String, usize>,
    category_inputs: usize,
    /// Every input by name, for the structured features.
    input_refs: HashMap<String, InputRef>,
    features: HashMap<String, usize>,
    feature_kinds: Vec<FeatureShape>,
    labels: Vec<String>,
    label_index: HashMap<String, usize>,
    stats: ProgramStats,
    decision_names: Vec<String>,
    regex_bytes_used: usize,
    /// Classes summed over the models compiled so far (`max_model_classes`).
    model_classes: usize,
}

/// Parses and compiles program bytes.
pub(crate) fn compile(bytes: &[u8], limits: &ProgramLimits) -> Result<Plan> {
    if bytes.len() > limits.max_program_bytes {
        return Err(perr(
            "",
            format!(
                "program is {} bytes, over the limit of {} bytes",
                bytes.len(),
                limits.max_program_bytes
            ),
        ));
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        perr(
            "",
            format!(
                "not valid JSON at line {} column {}: {e}",
                e.line(),
                e.column()
            ),
        )
    })?;
    compile_value(&value, bytes.len(), limits)
}

pub(crate) fn compile_value(
    value: &Value,
    byte_len: usize,
    limits: &ProgramLimits,
) -> Result<Plan> {
    let root = object(value, "")?;
    match root.get("format") {
        Some(Value::String(f)) if f == FORMAT => {}
        Some(Value::String(f)) => {
            return Err(perr(
                "format",
                format!("unsupported format {f:?}, expected {FORMAT:?}"),
            ))
        }
        Some(other) => {
            return Err(perr(
                "format",
                format!("expected the string {FORMAT:?}, got {}", kind_of(other)),
            ))
        }
        None => {
            return Err(perr(
                "",
                format!("missing field `format` (expected {FORMAT:?})"),
            ))
        }
    }
    let raw: RawProgram = typed(value, "")?;
    let _ = &raw.format;
    if raw.task.is_empty() || raw.task.len() > 128 {
        return Err(perr("task", "must be 1-128 bytes"));
    }
    let mut c = Compiler {
        limits,
        text_slots: HashMap::new(),
        number_inputs: HashMap::new(),
        category_inputs: 0,
        input_refs: HashMap::new(),
        features: HashMap::new(),
        feature_kinds: Vec::new(),
        labels: Vec::new(),
        label_index: HashMap::new(),
        stats: ProgramStats {
            program_bytes: byte_len as u64,
            ..ProgramStats::default()
        },
        decision_names: Vec::new(),
        regex_bytes_used: 0,
        model_classes: 0,
    };

    // Inputs.
    if raw.inputs.is_empty() {
        return Err(perr("inputs", "at least one input is required"));
    }
    if raw.inputs.len() > MAX_INPUTS {
        return Err(perr(
            "inputs",
            format!("at most {MAX_INPUTS} inputs are allowed"),
        ));
    }
    let mut inputs = Vec::with_capacity(raw.inputs.len());
    let mut seen = HashSet::new();
    for (i, inp) in raw.inputs.iter().enumerate() {
        let path = idx("inputs", i);
        check_name(&inp.name, &join(&path, "name"))?;
        if !seen.insert(inp.name.clone()) {
            return Err(perr(
                &join(&path, "name"),
                format!("duplicate input {:?}", inp.name),
            ));
        }
        if !(inp.path.is_empty() || inp.path.starts_with('/')) {
            return Err(perr(
                &join(&path, "path"),
                format!(
                    "{:?} is not a JSON Pointer (it must start with '/')",
                    inp.path
                ),
            ));
        }
        let max_bytes = inp
            .max_bytes
            .unwrap_or(limits.max_input_bytes)
            .min(limits.max_input_bytes);
        if max_bytes == 0 {
            return Err(perr(&join(&path, "max_bytes"), "must be at least 1"));
        }
        let kind = match inp.ty {
            RawInputType::Text => {
                if inp.default.is_some() {
                    return Err(perr(
                        &join(&path, "default"),
                        "only number inputs take a default",
                    ));
                }
                let slot = c.text_slots.len();
                c.text_slots.insert(inp.name.clone(), slot);
                InputKind::Text {
                    slot,
                    max_bytes,
                    truncate: matches!(inp.on_oversize, RawOversize::Truncate),
                }
            }
            RawInputType::Number => {
                if let Some(d) = inp.default {
                    if !d.is_finite() {
                        return Err(perr(&join(&path, "default"), "must be finite"));
                    }
                }
                let slot = c.number_inputs.len();
                c.number_inputs.insert(inp.name.clone(), slot);
                InputKind::Number {
                    slot,
                    default: inp.default,
                }
            }
            RawInputType::Category => {
                if inp.default.is_some() {
                    return Err(perr(
                        &join(&path, "default"),
                        "only number inputs take a default",
                    ));
                }
                c.category_inputs += 1;
                InputKind::Category {
                    slot: c.category_inputs - 1,
                }
            }
        };
        if inp.ty != RawInputType::Text
            && (inp.max_bytes.is_some() || !matches!(inp.on_oversize, RawOversize::Error))
        {
            return Err(perr(
                &path,
                "max_bytes and on_oversize apply to text inputs only",
            ));
        }
        let slot = match kind {
            InputKind::Text { slot, .. }
            | InputKind::Number { slot, .. }
            | InputKind::Category { slot } => slot,
        };
        c.input_refs.insert(
            inp.name.clone(),
            InputRef {
                index: i,
                ty: inp.ty,
                slot,
            },
        );
        inputs.push(InputPlan {
            name: inp.name.clone(),
            pointer: inp.path.clone(),
            tokens: PointerToken::parse_pointer(&inp.path),
            required: inp.required,
            kind,
        });
    }
    let text_inputs = c.text_slots.len();

    // Views.
    if raw.preprocess.len() > 32 {
        return Err(perr("preprocess", "at most 32 text views are allowed"));
    }
    let mut views = Vec::with_capacity(raw.preprocess.len());
    for (i, v) in raw.preprocess.iter().enumerate() {
        let path = idx("preprocess", i);
        check_name(&v.name, &join(&path, "name"))?;
        if c.text_slots.contains_key(&v.name) || c.input_refs.contains_key(&v.name) {
            return Err(perr(
                &join(&path, "name"),
                format!("name {:?} is already used", v.name),
            ));
        }
        let from = c.text_slot(&v.from, &join(&path, "from"))?;
        if v.steps.len() > 32 {
            return Err(perr(&join(&path, "steps"), "at most 32 steps are allowed"));
        }
        let mut steps = Vec::with_capacity(v.steps.len());
        for (j, s) in v.steps.iter().enumerate() {
            steps.push(c.step(s, &idx(&join(&path, "steps"), j))?);
        }
        let slot = c.text_slots.len();
        c.text_slots.insert(v.name.clone(), slot);
        views.push(ViewPlan { from, steps });
    }

    // Features.
    if raw.features.len() > limits.max_features {
        return Err(perr(
            "features",
            format!(
                "{} features, over the limit of {}",
                raw.features.len(),
                limits.max_features
            ),
        ));
    }
    let mut features = Vec::with_capacity(raw.features.len());
    for (i, f) in raw.features.iter().enumerate() {
        let path = idx("features", i);
        let (name, feat) = c.feature(f, &path)?;
        if c.features.contains_key(&name) {
            return Err(perr(
                &join(&path, "name"),
                format!("duplicate feature {name:?}"),
            ));
        }
        c.feature_kinds.push(feat.shape());
        c.features.insert(name, features.len());
        features.push(feat);
    }
    c.stats.features = features.len();

    // Output.
    let kind = tag(&raw.output, "output", "kind")?;
    let (output, decide) = match kind {
        "label" => {
            let out: RawLabelOutput = typed(&raw.output, "output")?;
            if out.labels.is_empty() {
                return Err(perr("output.labels", "at least one label is required"));
            }
            if out.labels.len() > MAX_CLASSES {
                return Err(perr(
                    "output.labels",
                    format!("at most {MAX_CLASSES} labels"),
                ));
            }
            for (i, l) in out.labels.iter().enumerate() {
                if c.label_index.insert(l.clone(), i).is_some() {
                    return Err(perr(
                        &idx("output.labels", i),
                        format!("duplicate label {l:?}"),
                    ));
                }
            }
            c.labels = out.labels.clone();
            check_prob(out.abstain_below, "output.abstain_below")?;
            let decide = match &raw.decide {
                Some(d) => c.decision(d, "decide", 0)?,
                None => {
                    return Err(perr(
                        "",
                        "missing field `decide` (required for output.kind \"label\")",
                    ))
                }
            };
            (
                OutputPlan::Label {
                    labels: out.labels,
                    abstain_below: out.abstain_below,
                },
                Some(decide),
            )
        }
        "extract" => {
            if raw.decide.is_some() {
                return Err(perr("decide", "not allowed with output.kind \"extract\""));
            }
            let out = extract::raw_output(&raw.output)?;
            check_prob(out.abstain_below, "output.abstain_below")?;
            let source = c.text_slot(&out.source, "output.source")?;
            if out.fields.is_empty() || out.fields.len() > 64 {
                return Err(perr(
                    "output.fields",
                    "between 1 and 64 fields are required",
                ));
            }
            extract::check_unique(&out.fields, "output.fields")?;
            let mut fields = Vec::new();
            for (i, f) in out.fields.iter().enumerate() {
                let path = idx("output.fields", i);
                fields.push(extract::compile_field(f, &path, &mut |p, at| {
                    c.regex(p, at)
                })?);
            }
            (
                OutputPlan::Extract {
                    source,
                    fields,
                    abstain_below: out.abstain_below,
                },
                None,
            )
        }
        other => {
            return Err(perr(
                "output.kind",
                format!("unknown output kind {other:?} (expected \"label\" or \"extract\")"),
            ))
        }
    };

    let mut feature_names = vec![String::new(); features.len()];
    for (name, &i) in &c.features {
        feature_names[i].clone_from(name);
    }
    Ok(Plan {
        task: raw.task,
        description: raw.description,
        inputs,
        text_inputs,
        views,
        view_max_bytes: limits.max_input_bytes.saturating_mul(VIEW_GROWTH),
        features,
        feature_names,
        decide,
        output,
        decision_names: c.decision_names,
        stats: c.stats,
    })
}

fn check_prob(p: f64, path: &str) -> Result<()> {
    if (0.0..=1.0).contains(&p) {
        Ok(())
    } else {
        Err(perr(path, format!("must be between 0 and 1, got {p}")))
    }
}

fn check_ngram_range(n: [usize; 2], max: usize, path: &str) -> Result<()> {
    if n[0] < 1 || n[0] > n[1] || n[1] > max {
        return Err(perr(
            path,
            format!(
                "expected [min, max] with 1 <= min <= max <= {max}, got [{}, {}]",
                n[0], n[1]
            ),
        ));
    }
    Ok(())
}

impl Compiler<'_> {
    fn text_slot(&self, name: &str, path: &str) -> Result<usize> {
        self.text_slots.get(name).copied().ok_or_else(|| {
            let mut known: Vec<_> = self.text_slots.keys().map(String::as_str).collect();
            known.sort_unstable();
            perr(
                path,
                format!("unknown text source {name:?} (known: {})", known.join(", ")),
            )
        })
    }

    fn regex(&mut self, pattern: &str, path: &str) -> Result<Regex> {
        if pattern.len() > self.limits.max_regex_bytes {
            return Err(perr(
                path,
                format!(
                    "pattern is {} bytes, over the limit of {}",
                    pattern.len(),
                    self.limits.max_regex_bytes
                ),
            ));
        }
        self.regex_bytes_used += pattern.len();
        self.stats.regexes += 1;
        RegexBuilder::new(pattern)
            .size_limit(self.limits.regex_size_limit)
            .dfa_size_limit(self.limits.regex_size_limit)
            .nest_limit(64)
            .build()
            .map_err(|e| perr(path, format!("invalid regex: {e}")))
    }

    fn step(&mut self, value: &Value, path: &str) -> Result<StepPlan> {
        let op = tag(value, path, "op")?;
        Ok(match op {
            "nfkc" => {
                typed::<RawStepPlain>(value, path)?;
                StepPlan::Nfkc
            }
            "lowercase" => {
                typed::<RawStepPlain>(value, path)?;
                StepPlan::Lowercase
            }
            "collapse_whitespace" => {
                typed::<RawStepPlain>(value, path)?;
                StepPlan::CollapseWhitespace
            }
            "replace" => {
                let r: RawStepReplace = typed(value, path)?;
                if r.with.len() > 64 {
                    return Err(perr(&join(path, "with"), "at most 64 bytes"));
                }
                let kind = match r.kind {
                    RawReplaceKind::Url => Placeholder::Url,
                    RawReplaceKind::Email => Placeholder::Email,
                    RawReplaceKind::Number => Placeholder::Number,
                };
                StepPlan::Replace { kind, with: r.with }
            }
            "truncate" => {
                let r: RawStepTruncate = typed(value, path)?;
                if r.max_bytes == 0 {
                    return Err(perr(&join(path, "max_bytes"), "must be at least 1"));
                }
                StepPlan::Truncate(r.max_bytes)
            }
            other => {
                return Err(perr(
                    &join(path, "op"),
                    format!(
                        "unknown step {other:?} (expected nfkc, lowercase, collapse_whitespace, replace or truncate)"
                    ),
                ))
            }
        })
    }

    fn feature(&mut self, value: &Value, path: &str) -> Result<(String, FeaturePlan)> {
        let op = tag(value, path, "op")?;
        if structured::is_structured(op) {
            return structured::feature(op, value, path, &self.input_refs, self.limits);
        }
        match op {
            "word_ngrams" | "char_ngrams" => {
                let r: RawNgrams = typed(value, path)?;
                check_name(&r.name, &join(path, "name"))?;
                let words = r.op == "word_ngrams";
                let source = self.text_slot(&r.source, &join(path, "source"))?;
                check_ngram_range(r.n, if words { 3 } else { 8 }, &join(path, "n"))?;
                if words && r.within_words.is_some() {
                    return Err(perr(&join(path, "within_words"), "only for char_ngrams"));
                }
                if !words && r.tokens.is_some() {
                    return Err(perr(&join(path, "tokens"), "only for word_ngrams"));
                }
                let (index, dim) = match (&r.hash, &r.vocabulary) {
                    (Some(h), None) => {
                        if h.bits < 1 || h.bits > self.limits.max_hash_bits {
                            return Err(perr(
                                &join(path, "hash.bits"),
                                format!("must be between 1 and {}, got {}", self.limits.max_hash_bits, h.bits),
                            ));
                        }
                        (NgramIndex::Hashed { bits: h.bits, seed: h.seed }, 1usize << h.bits)
                    }
                    (None, Some(vocab)) => {
                        if vocab.is_empty() || vocab.len() > self.limits.max_vocabulary {
                            return Err(perr(
                                &join(path, "vocabulary"),
                                format!("must have 1 to {} entries", self.limits.max_vocabulary),
                            ));
                        }
                        let mut map = VocabTable::with_capacity(vocab.len());
                        for (i, term) in vocab.iter().enumerate() {
                            let h = ngram_hash(0, term);
                            if !map.insert(h, i as u32) {
                                return Err(perr(
                                    &idx(&join(path, "vocabulary"), i),
                                    format!("duplicate term {term:?}"),
                                ));
                            }
                        }
                        (NgramIndex::Vocabulary(map), vocab.len())
                    }
                    _ => {
                        return Err(perr(path, "exactly one of `hash` or `vocabulary` is required"));
                    }
                };
                let idf = match &r.idf {
                    None => None,
                    Some(raw) => {
                        let at = join(path, "idf");
                        let v = self.floats(raw, dim, &at)?;
                        if let Some(i) = v.iter().position(|&x| x < 0.0) {
                            return Err(perr(
                                &at,
                                format!("number {i} is negative ({}): factors must be >= 0", v[i]),
                            ));
                        }
                        Some(v)
                    }
                };
                self.stats.sparse_dims += dim as u64;
                Ok((
                    r.name,
                    FeaturePlan::Sparse(SparsePlan {
                        source,
                        words,
                        n_min: r.n[0],
                        n_max: r.n[1],
                        tokens: match r.tokens.unwrap_or_default() {
                            RawTokens::Alnum => TokenMode::Alnum,
                            RawTokens::Whitespace => TokenMode::Whitespace,
                            RawTokens::AlnumCjk => TokenMode::AlnumCjk,
                        },
                        within_words: r.within_words.unwrap_or(false),
                        index,
                        dim,
                        weighting: match r.weighting {
                            RawWeighting::Count => Weighting::Count,
                            RawWeighting::Binary => Weighting::Binary,
                            RawWeighting::Log1p => Weighting::Log1p,
                            RawWeighting::Sublinear => Weighting::Sublinear,
                        },
                        idf,
                        l2: matches!(r.normalize, RawNormalize::L2),
                    }),
                ))
            }
            "keywords" => {
                let r: RawKeywords = typed(value, path)?;
                check_name(&r.name, &join(path, "name"))?;
                let source = self.text_slot(&r.source, &join(path, "source"))?;
                if r.terms.is_empty() || r.terms.len() > self.limits.max_keywords {
                    return Err(perr(
                        &join(path, "terms"),
                        format!("must have 1 to {} terms", self.limits.max_keywords),
                    ));
                }
                for (i, t) in r.terms.iter().enumerate() {
                    if t.is_empty() || t.len() > 256 {
                        return Err(perr(&idx(&join(path, "terms"), i), "terms must be 1-256 bytes"));
                    }
                }
                let ac = AhoCorasickBuilder::new()
                    .match_kind(MatchKind::LeftmostLongest)
                    .ascii_case_insensitive(r.case_insensitive)
                    .build(&r.terms)
                    .map_err(|e| perr(&join(path, "terms"), e))?;
                self.stats.keywords += r.terms.len();
                Ok((
                    r.name,
                    FeaturePlan::Keywords(KeywordsPlan {
                        source,
                        ac: Box::new(ac) as Box<AhoCorasick>,
                        whole_words: r.whole_words,
                    }),
                ))
            }
            "regex" => {
                let r: RawRegex = typed(value, path)?;
                check_name(&r.name, &join(path, "name"))?;
                let source = self.text_slot(&r.source, &join(path, "source"))?;
                let re = self.regex(&r.pattern, &join(path, "pattern"))?;
                let max_count = r.max_count.unwrap_or(64);
                if !(1..=1024).contains(&max_count) {
                    return Err(perr(&join(path, "max_count"), "must be between 1 and 1024"));
                }
                Ok((
                    r.name,
                    FeaturePlan::Regex(RegexPlan {
                        source,
                        re,
                        count: matches!(r.mode, RawRegexMode::Count),
                        max_count,
                    }),
                ))
            }
            "stat" => {
                let r: RawStat = typed(value, path)?;
                check_name(&r.name, &join(path, "name"))?;
                let source = self.text_slot(&r.source, &join(path, "source"))?;
                Ok((r.name, FeaturePlan::Stat { source, stat: r.stat }))
            }
            "number" => {
                let r: RawNumber = typed(value, path)?;
                check_name(&r.name, &join(path, "name"))?;
                let slot = *self.number_inputs.get(&r.input).ok_or_else(|| {
                    perr(&join(path, "input"), format!("no number input named {:?}", r.input))
                })?;
                Ok((r.name, FeaturePlan::Number(slot)))
            }
            other => Err(perr(
                &join(path, "op"),
                format!(
                    "unknown feature {other:?} (expected word_ngrams, char_ngrams, keywords, regex, stat, number, scale, bins, one_hot or missing)"
                ),
            )),
        }
    }

    /// Adds a model's classes to the program's total (`max_model_classes`).
    fn count_model_classes(&mut self, classes: usize, path: &str) -> Result<()> {
        self.model_classes = self.model_classes.saturating_add(classes);
        if self.model_classes > self.limits.max_model_classes {
            return Err(perr(
                &join(path, "classes"),
                format!(
                    "the program's models have more than {} classes in all (each model scores all its classes for every input feature)",
                    self.limits.max_model_classes
                ),
            ));
        }
        Ok(())
    }

    fn class_map(&self, classes: &[String], path: &str) -> Result<Vec<usize>> {
        if classes.is_empty() {
            return Err(perr(path, "at least one class is required"));
        }
        let mut seen = HashSet::new();
        classes
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if !seen.insert(c) {
                    return Err(perr(&idx(path, i), format!("duplicate class {c:?}")));
                }
                self.label_index.get(c).copied().ok_or_else(|| {
                    perr(&idx(path, i), format!("{c:?} is not one of output.labels"))
                })
            })
            .collect()
    }

    /// Resolves model inputs into groups with offsets; returns (groups, total dim).
    fn model_inputs(&self, names: &[String], path: &str) -> Result<(Vec<InputGroup>, usize)> {
        if names.is_empty() {
            return Err(perr(path, "at least one input feature is required"));
        }
        let mut groups = Vec::with_capacity(names.len());
        let mut offset = 0usize;
        let mut seen = HashSet::new();
        for (i, n) in names.iter().enumerate() {
            let p = idx(path, i);
            if !seen.insert(n) {
                return Err(perr(&p, format!("duplicate input {n:?}")));
            }
            let f = *self
                .features
                .get(n)
                .ok_or_else(|| perr(&p, format!("unknown feature {n:?}")))?;
            let shape = &self.feature_kinds[f];
            let (dim, sparse) = (shape.dim(), !matches!(shape, FeatureShape::Scalar));
            groups.push(InputGroup {
                feature: f,
                offset,
                sparse,
            });
            offset += dim;
        }
        Ok((groups, offset))
    }

    /// Decodes the `expected` weights of a linear model of `width` columns: the int8 form
    /// is kept as codes and per-column levels (see [`Weights`]), any other as `f32`.
    fn linear_weights(
        &mut self,
        raw: &RawFloats,
        expected: usize,
        width: usize,
        path: &str,
    ) -> Result<Weights> {
        let RawFloats::Quantized(q) = raw else {
            return Ok(Weights::F32(self.floats(raw, expected, path)?));
        };
        self.check_count(expected, path)?;
        let scale = self.finite_list(&q.scale, width, &join(path, "scale"))?;
        let codes = decode_int8(&q.int8, expected, &join(path, "int8"))?;
        let levels: Vec<f32> = scale
            .iter()
            .flat_map(|&s| (0..=255u8).map(move |b| (f64::from(b as i8) * s) as f32))
            .collect();
        if levels.iter().any(|x| !x.is_finite()) {
            // Name the first weight that reads as a non-finite number, as the f32 form does.
            if let Some(i) = codes
                .iter()
                .enumerate()
                .position(|(i, &b)| !levels[(i % width) * 256 + usize::from(b)].is_finite())
            {
                return Err(perr(path, format!("number {i} is not finite")));
            }
        }
        self.stats.weights += expected as u64;
        Ok(Weights::Int8 { codes, levels })
    }

    /// Refuses an array of `expected` numbers over the program's limit.
    fn check_count(&self, expected: usize, path: &str) -> Result<()> {
        if expected > self.limits.max_weights {
            return Err(perr(
                path,
                format!(
                    "{expected} numbers, over the limit of {}",
                    self.limits.max_weights
                ),
            ));
        }
        Ok(())
    }

    /// Decodes a number array of `expected` numbers (a list or packed `f32`; the int8 form
    /// is only for a linear model's weights, see [`Self::linear_weights`]).
    fn floats(&mut self, raw: &RawFloats, expected: usize, path: &str) -> Result<Vec<f32>> {
        self.check_count(expected, path)?;
        let v: Vec<f32> = match raw {
            RawFloats::List(list) => {
                if list.len() != expected {
                    return Err(perr(
                        path,
                        format!("expected {expected} numbers, got {}", list.len()),
                    ));
                }
                list.iter().map(|&x| x as f32).collect()
            }
            RawFloats::Packed(s) => {
                let b64 = s.strip_prefix("base64:").ok_or_else(|| {
                    perr(
                        path,
                        "expected an array of numbers or a \"base64:...\" string",
                    )
                })?;
                decode_base64(b64, expected, 4, "floats", path)?
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()
            }
            RawFloats::Quantized(_) => {
                return Err(perr(
                    path,
                    "the int8 form is only for the weights of a linear model",
                ))
            }
        };
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(perr(path, format!("number {i} is not finite")));
        }
        self.stats.weights += v.len() as u64;
        Ok(v)
    }

    fn finite_list(&self, v: &[f64], expected: usize, path: &str) -> Result<Vec<f64>> {
        if v.len() != expected {
            return Err(perr(
                path,
                format!("expected {expected} numbers, got {}", v.len()),
            ));
        }
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(perr(&idx(path, i), "must be finite"));
        }
        Ok(v.to_vec())
    }

    fn name_decision(&mut self, path: &str) -> u32 {
        self.decision_names.push(path.to_string());
        (self.decision_names.len() - 1) as u32
    }

    fn temperature(t: Option<f64>, path: &str) -> Result<f64> {
        let t = t.unwrap_or(1.0);
        if !(t.is_finite() && t > 0.0) {
            return Err(perr(path, format!("must be a positive number, got {t}")));
        }
        if !(1.0 / t).is_finite() {
            return Err(perr(
                path,
                format!("{t} is too small: its inverse is not a finite number"),
            ));
        }
        Ok(t)
    }

    fn decision(&mut self, value: &Value, path: &str, depth: usize) -> Result<DecisionPlan> {
        if depth >= MAX_DECISION_DEPTH {
            return Err(perr(
                path,
                format!("decisions nest deeper than {MAX_DECISION_DEPTH}"),
            ));
        }
        let op = tag(value, path, "op")?;
        match op {
            "rules" => {
                let r: RawRules = typed(value, path)?;
                if r.rules.is_empty() {
                    return Err(perr(&join(path, "rules"), "at least one rule is required"));
                }
                self.stats.rules += r.rules.len();
                if self.stats.rules > self.limits.max_rules {
                    return Err(perr(
                        &join(path, "rules"),
                        format!("more than {} rules in the program", self.limits.max_rules),
                    ));
                }
                let mut rules = Vec::with_capacity(r.rules.len());
                for (i, rv) in r.rules.iter().enumerate() {
                    let rp = idx(&join(path, "rules"), i);
                    let rule: RawRule = typed(rv, &rp)?;
                    let label = *self.label_index.get(&rule.then).ok_or_else(|| {
                        perr(&join(&rp, "then"), format!("{:?} is not one of output.labels", rule.then))
                    })?;
                    check_prob(rule.confidence, &join(&rp, "confidence"))?;
                    let share = 1.0 / self.labels.len() as f64;
                    if self.labels.len() > 1 && rule.confidence <= share {
                        return Err(perr(
                            &join(&rp, "confidence"),
                            format!(
                                "must be above 1/{} so that the rule's label gets the highest score, got {}",
                                self.labels.len(),
                                rule.confidence
                            ),
                        ));
                    }
                    let mut nodes = 0;
                    let conditions = Conditions { features: &self.features, shapes: &self.feature_kinds };
                    let when = conditions.condition(&rule.when, &join(&rp, "when"), 0, &mut nodes)?;
                    let id = match &rule.name {
                        Some(n) => self.name_decision(&format!("{rp} ({n})")),
                        None => self.name_decision(&rp),
                    };
                    rules.push(RulePlan {
                        when,
                        label,
                        confidence: rule.confidence,
                        id,
                    });
                }
                Ok(DecisionPlan::Rules(rules))
            }
            "linear" => {
                let r: RawLinear = typed(value, path)?;
                let classes = self.class_map(&r.classes, &join(path, "classes"))?;
                self.count_model_classes(classes.len(), path)?;
                let (groups, dim) = self.model_inputs(&r.inputs, &join(path, "inputs"))?;
                let width = match r.link {
                    RawLink::Softmax => classes.len(),
                    RawLink::Sigmoid => {
                        if classes.len() != 2 {
                            return Err(perr(&join(path, "link"), "sigmoid needs exactly 2 classes"));
                        }
                        1
                    }
                };
                let expected = dim
                    .checked_mul(width)
                    .ok_or_else(|| perr(&join(path, "weights"), "too many weights"))?;
                let weights =
                    self.linear_weights(&r.weights, expected, width, &join(path, "weights"))?;
                let bias = self.finite_list(&r.bias, width, &join(path, "bias"))?;
                let min_confidence = r.min_confidence.unwrap_or(0.0);
                check_prob(min_confidence, &join(path, "min_confidence"))?;
                let id = self.name_decision(path);
                Ok(DecisionPlan::Linear(LinearPlan {
                    groups,
                    classes,
                    sigmoid: r.link == RawLink::Sigmoid,
                    width,
                    weights,
                    bias,
                    inv_temperature: 1.0 / Self::temperature(r.temperature, &join(path, "temperature"))?,
                    min_confidence,
                    id,
                    bayes: false,
                }))
            }
            "naive_bayes" => {
                let r: RawBayes = typed(value, path)?;
                let classes = self.class_map(&r.classes, &join(path, "classes"))?;
                self.count_model_classes(classes.len(), path)?;
                let (groups, dim) = self.model_inputs(&r.inputs, &join(path, "inputs"))?;
                let expected = dim
                    .checked_mul(classes.len())
                    .ok_or_else(|| perr(&join(path, "feature_log_prob"), "too many numbers"))?;
                let weights = Weights::F32(self.floats(
                    &r.feature_log_prob,
                    expected,
                    &join(path, "feature_log_prob"),
                )?);
                let bias =
                    self.finite_list(&r.class_log_prior, classes.len(), &join(path, "class_log_prior"))?;
                let min_confidence = r.min_confidence.unwrap_or(0.0);
                check_prob(min_confidence, &join(path, "min_confidence"))?;
                let id = self.name_decision(path);
                let width = classes.len();
                Ok(DecisionPlan::Linear(LinearPlan {
                    groups,
                    classes,
                    sigmoid: false,
                    width,
                    weights,
                    bias,
                    inv_temperature: 1.0 / Self::temperature(r.temperature, &join(path, "temperature"))?,
                    min_confidence,
                    id,
                    bayes: true,
                }))
            }
            "tree" => {
                let r: RawTree = typed(value, path)?;
                let classes = self.class_map(&r.classes, &join(path, "classes"))?;
                self.count_model_classes(classes.len(), path)?;
                let (groups, dim) = self.model_inputs(&r.inputs, &join(path, "inputs"))?;
                let n = r.feature.len();
                if n == 0 || n > self.limits.max_tree_nodes {
                    return Err(perr(
                        &join(path, "feature"),
                        format!("a tree needs 1 to {} nodes", self.limits.max_tree_nodes),
                    ));
                }
                if r.left.len() != n || r.right.len() != n {
                    return Err(perr(path, format!("feature, left and right must all have {n} entries")));
                }
                let threshold = self.floats(&r.threshold, n, &join(path, "threshold"))?;
                let value =
                    self.floats(&r.value, n * classes.len(), &join(path, "value"))?;
                let mut feature = Vec::with_capacity(n);
                for i in 0..n {
                    let f = r.feature[i];
                    if f < 0 {
                        feature.push(u32::MAX);
                        let leaf = &value[i * classes.len()..(i + 1) * classes.len()];
                        let sum = leaf.iter().map(|&p| f64::from(p)).sum::<f64>();
                        if leaf.iter().any(|&p| p < 0.0) || !(sum > 0.0 && sum.is_finite()) {
                            return Err(perr(
                                &idx(&join(path, "value"), i),
                                "a leaf needs non-negative class weights with a positive sum",
                            ));
                        }
                        continue;
                    }
                    if f as u64 >= dim as u64 {
                        return Err(perr(
                            &idx(&join(path, "feature"), i),
                            format!("feature index {f} is out of range (the inputs have {dim})"),
                        ));
                    }
                    // Children must come after their parent: no cycles, bounded depth.
                    for (side, list) in [("left", &r.left), ("right", &r.right)] {
                        let child = list[i] as usize;
                        if child <= i || child >= n {
                            return Err(perr(
                                &idx(&join(path, side), i),
                                format!("child {child} must be greater than {i} and less than {n}"),
                            ));
                        }
                    }
                    feature.push(f as u32);
                }
                let min_confidence = r.min_confidence.unwrap_or(0.0);
                check_prob(min_confidence, &join(path, "min_confidence"))?;
                self.stats.tree_nodes += n;
                let id = self.name_decision(path);
                Ok(DecisionPlan::Tree(TreePlan {
                    groups,
                    classes,
                    feature,
                    threshold,
                    left: r.left,
                    right: r.right,
                    value,
                    min_confidence,
                    id,
                }))
            }
            "first" => {
                let r: RawFirst = typed(value, path)?;
                if r.steps.is_empty() || r.steps.len() > 16 {
                    return Err(perr(&join(path, "steps"), "between 1 and 16 steps are required"));
                }
                let mut steps = Vec::with_capacity(r.steps.len());
                for (i, s) in r.steps.iter().enumerate() {
                    steps.push(self.decision(s, &idx(&join(path, "steps"), i), depth + 1)?);
                }
                Ok(DecisionPlan::First(steps))
            }
            "vote" => {
                let r: RawVote = typed(value, path)?;
                if r.members.is_empty() || r.members.len() > 16 {
                    return Err(perr(&join(path, "members"), "between 1 and 16 members are required"));
                }
                let mut members = Vec::with_capacity(r.members.len());
                for (i, m) in r.members.iter().enumerate() {
                    let mp = idx(&join(path, "members"), i);
                    if !(m.weight.is_finite() && m.weight > 0.0) {
                        return Err(perr(&join(&mp, "weight"), "must be a positive number"));
                    }
                    members.push((m.weight, self.decision(&m.decide, &join(&mp, "decide"), depth + 1)?));
                }
                let total: f64 = r.members.iter().map(|m| m.weight).sum();
                if !total.is_finite() {
                    return Err(perr(&join(path, "members"), "the weights must have a finite sum"));
                }
                let min_confidence = r.min_confidence.unwrap_or(0.0);
                check_prob(min_confidence, &join(path, "min_confidence"))?;
                let id = self.name_decision(path);
                Ok(DecisionPlan::Vote {
                    members,
                    min_confidence,
                    id,
                })
            }
            other => Err(perr(
                &join(path, "op"),
                format!("unknown decision {other:?} (expected rules, linear, naive_bayes, tree, first or vote)"),
            )),
        }
    }
}

/// Decodes the `"base64:..."` codes of the int8 form: exactly `expected` bytes.
fn decode_int8(packed: &str, expected: usize, path: &str) -> Result<Vec<u8>> {
    let b64 = packed
        .strip_prefix("base64:")
        .ok_or_else(|| perr(path, "expected a \"base64:...\" string"))?;
    decode_base64(b64, expected, 1, "int8 values", path)
}

/// Decodes base64 that must hold exactly `count` values of `width` bytes (`what` names
/// them in errors); data much larger is refused before it is decoded.
fn decode_base64(b64: &str, count: usize, width: usize, what: &str, path: &str) -> Result<Vec<u8>> {
    let bytes_expected = count * width;
    if b64.len() / 4 * 3 > bytes_expected + 3 {
        return Err(perr(
            path,
            format!("expected {count} {what}, the data is larger"),
        ));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| perr(path, format!("invalid base64: {e}")))?;
    if bytes.len() != bytes_expected {
        return Err(perr(
            path,
            format!(
                "expected {count} {what} ({bytes_expected} bytes), got {} bytes",
                bytes.len()
            ),
        ));
    }
    Ok(bytes)
}
