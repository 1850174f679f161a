//! Property tests of program loading and evaluation: programs and inputs come from
//! outside, so nothing they contain may panic, and evaluation must be deterministic.
//!
//! * arbitrary JSON inputs on fixed programs: `Ok` with a sane outcome, or `InvalidInput`;
//! * arbitrary programs (generated plausible ones, and mutations of valid ones): loading
//!   never panics, and a program that loads evaluates arbitrary inputs without panicking;
//! * determinism: the same input (and the same program loaded twice) gives bit-identical
//!   outcomes;
//! * arbitrary bytes to `Program::from_json` never panic.
//!
//! Programs are generated from a seed by a hand-written generator (`ProgramGen`) rather
//! than by composed strategies: the shapes depend on each other (a linear model's weight
//! count is its inputs' dimension times its width), and a failure prints the program.

use loopai_core::{ErrorKind, Outcome, Program};
use proptest::prelude::*;
use serde_json::{json, Map, Number, Value};

// ---------------------------------------------------------------------------------------
// Fixed programs

const SPAM_EXAMPLE: &[u8] = include_bytes!("../../examples/spam/program.json");

fn fixed_programs() -> Vec<(&'static str, Value)> {
    let text = json!({"name": "text", "path": "/text", "type": "text", "max_bytes": 300, "on_oversize": "truncate"});
    let subject = json!({"name": "subject", "path": "/meta/subject", "type": "text", "required": false, "max_bytes": 40});
    let amount =
        json!({"name": "amount", "path": "/order/amount", "type": "number", "required": false});
    let labels = json!({"kind": "label", "labels": ["spam", "ham", "other"], "abstain_below": 0.5});
    let clean = json!([{"name": "clean", "from": "text", "steps": [
        {"op": "nfkc"}, {"op": "lowercase"}, {"op": "replace", "kind": "url", "with": " __url__ "},
        {"op": "replace", "kind": "number", "with": " __num__ "}, {"op": "collapse_whitespace"},
        {"op": "truncate", "max_bytes": 7}]}]);
    let scalars = json!([
        {"name": "kw", "op": "keywords", "source": "clean", "terms": ["free", "win", "é"], "whole_words": true},
        {"name": "kwi", "op": "keywords", "source": "subject", "terms": ["RE:", "ß"], "case_insensitive": true},
        {"name": "re", "op": "regex", "source": "text", "pattern": "\\d+", "mode": "count", "max_count": 3},
        {"name": "up", "op": "stat", "source": "text", "stat": "upper_ratio"},
        {"name": "dig", "op": "stat", "source": "subject", "stat": "digit_ratio"},
        {"name": "amt", "op": "number", "input": "amount"}
    ]);
    let mut with_ngrams = scalars.as_array().unwrap().clone();
    with_ngrams.extend([
        json!({"name": "w", "op": "word_ngrams", "source": "clean", "n": [1, 3], "hash": {"bits": 3, "seed": 9},
               "weighting": "log1p", "normalize": "l2", "tokens": "whitespace"}),
        json!({"name": "c", "op": "char_ngrams", "source": "text", "n": [1, 4], "within_words": true,
               "hash": {"bits": 2, "seed": 1}, "weighting": "binary"}),
        json!({"name": "v", "op": "char_ngrams", "source": "subject", "n": [2, 2], "vocabulary": [" a", "ab", "é ", "ßx"]}),
    ]);
    let base = |features: &Value, decide: Value| {
        json!({"format": "loopai.program/1", "task": "t", "inputs": [text, subject, amount],
               "preprocess": clean, "features": features, "decide": decide, "output": labels})
    };
    // Dimension of `with_ngrams` in order: 6 scalars, then 8 + 4 + 4 buckets = 22.
    let dim = 22;
    let linear = json!({"op": "linear", "inputs": ["up", "amt", "w", "c", "v", "kw", "re", "dig", "kwi"],
        "classes": ["spam", "ham", "other"], "link": "softmax",
        "weights": (0..(dim - 6 + 6) * 3).map(|i| (i % 7) as f64 - 3.0).collect::<Vec<_>>(),
        "bias": [0.1, 0.0, -0.1], "temperature": 0.7});
    let sigmoid = json!({"op": "linear", "inputs": ["w", "amt"], "classes": ["ham", "spam"], "link": "sigmoid",
        "weights": (0..9).map(|i| (i as f64) * 0.25 - 1.0).collect::<Vec<_>>(), "bias": [0.0], "min_confidence": 0.8});
    let bayes = json!({"op": "naive_bayes", "inputs": ["c"], "classes": ["spam", "ham"],
        "class_log_prior": [-0.7, -0.7], "feature_log_prob": [-1.0, -2.0, -2.0, -1.0, -1.5, -1.5, -3.0, -0.1]});
    let tree = json!({"op": "tree", "inputs": ["amt", "up", "w"], "classes": ["spam", "ham", "other"],
        "feature": [0, 1, -1, -1, -1], "threshold": [100.0, 0.5, 0, 0, 0],
        "left": [1, 2, 0, 0, 0], "right": [4, 3, 0, 0, 0],
        "value": [0, 0, 0, 0, 0, 0, 1, 9, 0, 8, 1, 1, 1, 1, 5]});
    let rules = json!({"op": "rules", "rules": [
        {"when": {"all": [{"feature": "kw", "gt": 0}, {"not": {"feature": "amt", "le": 10}}]}, "then": "spam", "confidence": 0.9},
        {"when": {"any": [{"feature": "re", "ge": 3}, {"feature": "dig", "eq": 1}]}, "then": "other", "confidence": 0.5},
        {"when": {"feature": "kwi", "ne": 0}, "then": "ham", "confidence": 0.99}]});
    vec![
        (
            "spam_example",
            serde_json::from_slice(SPAM_EXAMPLE).unwrap(),
        ),
        ("rules", base(&scalars, rules.clone())),
        (
            "hybrid",
            base(
                &Value::Array(with_ngrams.clone()),
                json!({"op": "first", "steps": [rules, sigmoid, bayes]}),
            ),
        ),
        (
            "vote",
            base(
                &Value::Array(with_ngrams.clone()),
                json!({"op": "vote", "min_confidence": 0.4, "members": [
                    {"weight": 2, "decide": linear}, {"weight": 0.5, "decide": tree}]}),
            ),
        ),
        (
            "extract",
            json!({"format": "loopai.program/1", "task": "t", "inputs": [text],
               "output": {"kind": "extract", "source": "text", "abstain_below": 0.5, "fields": [
                   {"name": "amount", "pattern": "\\$\\s*([0-9.eE+-]+)", "type": "number"},
                   {"name": "who", "pattern": "(?P<n>[A-Z]\\w+)", "group": "n", "required": false},
                   {"name": "any", "pattern": "."}]}}),
        ),
    ]
}

fn compiled_fixed() -> Vec<(&'static str, Program)> {
    fixed_programs()
        .into_iter()
        .map(|(name, v)| {
            let p = Program::from_value(&v, &Default::default())
                .unwrap_or_else(|e| panic!("fixed program {name} must load: {e}"));
            (name, p)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Checks

/// The documented contract of a successful evaluation.
fn check_outcome(program: &Program, outcome: &Outcome) -> Result<(), TestCaseError> {
    prop_assert!(
        (0.0..=1.0).contains(&outcome.confidence),
        "confidence {} outside [0, 1]: {outcome:?}",
        outcome.confidence
    );
    match program.labels() {
        Some(labels) => {
            prop_assert_eq!(outcome.scores.len(), labels.len());
            let sum: f64 = outcome.scores.iter().sum();
            prop_assert!(
                outcome.scores.iter().all(|s| (0.0..=1.0).contains(s)),
                "score outside [0, 1]: {outcome:?}"
            );
            if outcome.output.is_null() {
                prop_assert!(outcome.abstained && outcome.label.is_none());
            } else {
                prop_assert!((sum - 1.0).abs() < 1e-6, "scores sum to {sum}: {outcome:?}");
                let label = outcome.label.expect("a label output has an index");
                prop_assert_eq!(outcome.output.as_str(), Some(labels[label].as_str()));
                prop_assert_eq!(outcome.confidence, outcome.scores[label]);
            }
        }
        None => {
            // Extraction: one confidence per field, the outcome's is their mean.
            let fields = program.extract_fields().map_or(0, |f| f.len());
            prop_assert_eq!(outcome.scores.len(), fields);
            prop_assert!(outcome.scores.iter().all(|s| (0.0..=1.0).contains(s)));
            let mean = outcome.scores.iter().sum::<f64>() / fields.max(1) as f64;
            prop_assert!((outcome.confidence - mean).abs() < 1e-12);
            prop_assert!(outcome.output.is_object());
        }
    }
    Ok(())
}

/// Bit-level equality of outcomes (`PartialEq` would call two NaNs different).
fn same(a: &Outcome, b: &Outcome) -> bool {
    a.output == b.output
        && a.label == b.label
        && a.confidence.to_bits() == b.confidence.to_bits()
        && a.scores.len() == b.scores.len()
        && a.scores
            .iter()
            .zip(&b.scores)
            .all(|(x, y)| x.to_bits() == y.to_bits())
        && a.abstained == b.abstained
        && a.decided_by == b.decided_by
}

fn eval_checked(program: &Program, input: &Value) -> Result<(), TestCaseError> {
    match program.evaluate(input) {
        Ok(outcome) => {
            check_outcome(program, &outcome)?;
            let again = program
                .evaluate(input)
                .expect("second evaluation succeeds too");
            prop_assert!(same(&outcome, &again), "{outcome:?} != {again:?}");
        }
        Err(e) => {
            prop_assert_eq!(e.kind(), ErrorKind::InvalidInput, "{}", e);
            let again = program
                .evaluate(input)
                .expect_err("second evaluation fails too");
            prop_assert_eq!(e.to_string(), again.to_string());
        }
    }
    Ok(())
}

/// Evaluation must not panic; for generated programs we only check the `Result` kind (the
/// numeric contract is checked on the fixed programs, see `scores_stay_finite_*`).
fn eval_no_panic(program: &Program, input: &Value) -> Result<(), TestCaseError> {
    let first = program.evaluate(input);
    let second = program.evaluate(input);
    match (&first, &second) {
        (Ok(a), Ok(b)) => prop_assert!(same(a, b), "{a:?} != {b:?}"),
        (Err(a), Err(b)) => {
            prop_assert_eq!(a.kind(), ErrorKind::InvalidInput, "{}", a);
            prop_assert_eq!(a.to_string(), b.to_string());
        }
        _ => prop_assert!(false, "nondeterministic: {first:?} vs {second:?}"),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Arbitrary inputs

fn arb_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-zA-Z0-9 $£€.,!_-]{0,60}",
        3 => any::<String>(),
        2 => "(FREE|win|WIN|é|ß|RE:|http://x.io/a|a@b.cd|123,45|\\$ ?9|\\u{1F600}|\u{301}|\\s| ){0,40}",
        1 => "[\\PC\\s]{200,700}",
    ]
}

fn arb_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(vec![
            0.0,
            -0.0,
            1e308,
            -1e308,
            5e-324,
            f64::MAX,
            f64::MIN,
            100.0
        ])
        .prop_map(Value::from),
    ]
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        arb_number(),
        arb_text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        Just("text".to_string()),
                        Just("amount".to_string()),
                        Just("subject".to_string()),
                        any::<String>()
                    ],
                    inner
                ),
                0..6
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Input objects that usually have the fields the programs read, sometimes with the wrong
/// type, sometimes missing, plus noise.
fn arb_input() -> impl Strategy<Value = Value> {
    let field = |s: BoxedStrategy<Value>| prop::option::weighted(0.8, s);
    prop_oneof![
        9 => (
            field(prop_oneof![6 => arb_text().prop_map(Value::String), 1 => arb_json()].boxed()),
            field(prop_oneof![4 => arb_text().prop_map(Value::String), 1 => arb_json()].boxed()),
            field(prop_oneof![4 => arb_number(), 1 => arb_json()].boxed()),
            prop::option::of(arb_json()),
        )
            .prop_map(|(text, subject, amount, noise)| {
                let mut m = Map::new();
                if let Some(t) = text {
                    m.insert("text".into(), t);
                }
                if let Some(s) = subject {
                    m.insert("meta".into(), json!({ "subject": s }));
                }
                if let Some(a) = amount {
                    m.insert("order".into(), json!({ "amount": a }));
                }
                if let Some(n) = noise {
                    m.insert("noise".into(), n);
                }
                Value::Object(m)
            }),
        1 => arb_json(),
    ]
}

// ---------------------------------------------------------------------------------------
// Arbitrary programs

/// SplitMix64: the program generator's randomness, from one proptest-chosen seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    /// Mostly one of `good`, rarely (3%) one of `bad`: each generated item has a small
    /// chance to be invalid, so that a whole program still loads fairly often.
    fn mostly<T: Copy>(&mut self, good: &[T], bad: &[T]) -> T {
        if self.chance(3) {
            *self.pick(bad)
        } else {
            *self.pick(good)
        }
    }
    /// A number fit for a weight array: finite as `f32`, sometimes huge or subnormal.
    fn weight(&mut self) -> f32 {
        if self.chance(5) {
            *self.pick(&[3.4e38, -3.4e38, 1e30, -1e-40, 0.0])
        } else {
            (self.unit() * 4.0 - 2.0) as f32
        }
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// A number from a distribution heavy on edge cases.
    fn number(&mut self) -> f64 {
        match self.below(10) {
            0 => *self.pick(&[
                0.0, -0.0, 1.0, -1.0, 0.5, 1e-300, 3.4e38, -3.4e38, 1e300, -1e300,
            ]),
            1 => *self.pick(&[f64::MAX, f64::MIN, 1e39, 5e-324, 1024.0, 1025.0, 16777217.0]),
            2..=5 => self.unit() * 4.0 - 2.0,
            6..=7 => self.unit(),
            _ => (self.below(200) as f64) - 50.0,
        }
    }
    fn count(&mut self) -> Value {
        match self.below(12) {
            0 => json!(0),
            1 => json!(-1),
            2 => json!(u64::MAX),
            3 => json!(1.5),
            4 => json!(1u64 << 40),
            _ => json!(self.below(10) + 1),
        }
    }
}

#[derive(Clone)]
struct FeatureInfo {
    name: String,
    dim: usize,
    /// Number-valued (usable in conditions), not an n-gram vector.
    scalar: bool,
}

/// Builds structurally plausible programs: most of them load, and the rest fail in
/// interesting places (references to missing names, wrong sizes, out-of-range numbers).
struct ProgramGen {
    rng: Rng,
    features: Vec<FeatureInfo>,
    labels: Vec<String>,
    has_amount: bool,
}

impl ProgramGen {
    fn new(seed: u64) -> Self {
        ProgramGen {
            rng: Rng(seed),
            features: Vec::new(),
            labels: Vec::new(),
            has_amount: false,
        }
    }

    fn program(&mut self) -> Value {
        let r = &mut self.rng;
        let mut inputs = vec![
            json!({"name": "text", "path": "/text", "type": "text", "required": r.chance(70),
                   "max_bytes": r.mostly(&[1, 2, 3, 50, 300, 65536], &[0, 1 << 20]), "on_oversize": r.pick(&["error", "truncate"])}),
        ];
        if r.chance(50) {
            inputs.push(json!({"name": "subject", "path": "/meta/subject", "type": "text", "required": r.chance(30)}));
        }
        if r.chance(60) {
            let mut amount = json!({"name": "amount", "path": r.mostly(&["/order/amount", "/order~1x", "/text"], &["", "order"]),
                                    "type": "number", "required": r.chance(40)});
            if r.chance(50) {
                amount["default"] = json!(r.number());
            }
            inputs.push(amount);
            self.has_amount = true;
        }
        let mut sources = vec!["text".to_string()];
        if inputs.iter().any(|i| i["name"] == "subject") {
            sources.push("subject".into());
        }
        let mut preprocess = Vec::new();
        for v in 0..self.rng.below(3) {
            let from = self.source(&sources);
            let steps: Vec<Value> = (0..self.rng.below(6)).map(|_| self.step()).collect();
            preprocess.push(json!({"name": format!("v{v}"), "from": from, "steps": steps}));
            sources.push(format!("v{v}"));
        }
        let mut features = Vec::new();
        for f in 0..self.rng.mostly(&[1, 2, 3, 4, 5, 6], &[0]) {
            features.push(self.feature(f, &sources));
        }
        let n_labels = 1 + self.rng.below(4);
        self.labels = ["spam", "ham", "other", "x"][..n_labels]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut program = json!({"format": "loopai.program/1", "task": "gen", "inputs": inputs,
                                 "preprocess": preprocess, "features": features});
        if self.rng.chance(85) {
            program["decide"] = self.decision(0);
            program["output"] = json!({"kind": "label", "labels": self.labels,
                                       "abstain_below": self.rng.pick(&[0.0, 0.5, 0.9, 1.0])});
        } else {
            let fields: Vec<Value> = (0..1 + self.rng.below(3))
                .map(|i| {
                    json!({"name": format!("f{i}"), "pattern": self.rng.mostly(PATTERNS, BAD_PATTERNS),
                           "type": self.rng.pick(&["string", "number"]), "required": self.rng.chance(50)})
                })
                .collect();
            program["output"] =
                json!({"kind": "extract", "source": self.source(&sources), "fields": fields});
        }
        program
    }

    /// A text source: an input or earlier view, rarely an unknown name.
    fn source(&mut self, sources: &[String]) -> String {
        if self.rng.chance(2) {
            "nope".into()
        } else {
            self.rng.pick(sources).clone()
        }
    }

    fn step(&mut self) -> Value {
        let r = &mut self.rng;
        match r.below(6) {
            0 => json!({"op": "nfkc"}),
            1 => json!({"op": "lowercase"}),
            2 => json!({"op": "collapse_whitespace"}),
            3 => json!({"op": "truncate", "max_bytes": r.mostly(&[1, 2, 3, 5, 100], &[0, -1])}),
            _ => json!({"op": "replace", "kind": r.mostly(&["url", "email", "number"], &["other"]),
                        "with": r.pick(&["", " __x__ ", "é", "\u{1F600}"])}),
        }
    }

    fn feature(&mut self, f: usize, sources: &[String]) -> Value {
        let name = format!("f{f}");
        let source = self.source(sources);
        let ops = if self.has_amount { 7 } else { 6 };
        let r = &mut self.rng;
        let (value, dim, scalar) = match r.below(ops) {
            0 | 1 => {
                let words = r.chance(50);
                let lo = r.mostly(&[1, 1, 2, 3], &[0, 4, 9]);
                let max = if words { 3 } else { 8 };
                let hi = r.mostly(&[lo, lo + 1, lo + 2, lo + 5], &[lo + 7, 99]);
                let hi = if hi > 9 { hi } else { hi.min(max) };
                let mut v = json!({"name": name, "op": if words { "word_ngrams" } else { "char_ngrams" },
                                   "source": source, "n": [lo, hi],
                                   "weighting": r.pick(&["count", "binary", "log1p"]),
                                   "normalize": r.pick(&["none", "l2"])});
                if words && r.chance(50) {
                    v["tokens"] = json!(r.pick(&["alnum", "whitespace"]));
                }
                if !words && r.chance(60) {
                    v["within_words"] = json!(r.chance(50));
                }
                let dim = if r.chance(70) {
                    let bits = r.mostly(&[1usize, 2, 3, 4, 6, 8], &[0, 25]);
                    v["hash"] = json!({"bits": bits, "seed": r.next() % 1000});
                    // An invalid size fails to load anyway: don't generate 2^25 weights.
                    if bits <= 8 {
                        1 << bits
                    } else {
                        1
                    }
                } else {
                    let vocab: Vec<&str> = (0..1 + r.below(5))
                        .map(|_| {
                            *r.pick(&["free", "win", " w", "wi", "in ", "é", "free win", "a", "a"])
                        })
                        .collect();
                    let n = vocab.len();
                    v["vocabulary"] = json!(vocab);
                    n
                };
                (v, dim, false)
            }
            2 => {
                let terms: Vec<&str> = (0..r.mostly(&[1, 2, 3], &[0]))
                    .map(|_| {
                        r.mostly(
                            &["free", "WIN", "é", "ß", "claim now", "a", "\u{1F600}"],
                            &[""],
                        )
                    })
                    .collect();
                (
                    json!({"name": name, "op": "keywords", "source": source, "terms": terms,
                        "whole_words": r.chance(50), "case_insensitive": r.chance(50)}),
                    1,
                    true,
                )
            }
            3 => {
                let mut v = json!({"name": name, "op": "regex", "source": source, "pattern": r.mostly(PATTERNS, BAD_PATTERNS),
                                   "mode": r.mostly(&["match", "count"], &["all"])});
                if r.chance(50) {
                    v["max_count"] = if r.chance(5) {
                        r.count()
                    } else {
                        json!(1 + r.below(1024))
                    };
                }
                (v, 1, true)
            }
            4 | 5 => (
                json!({"name": name, "op": "stat", "source": source, "stat": r.pick(&[
                "chars", "bytes", "words", "digit_ratio", "upper_ratio", "url_count", "email_count",
                "number_count"])}),
                1,
                true,
            ),
            _ => (
                json!({"name": name, "op": "number", "input": r.mostly(&["amount"], &["text", "nope"])}),
                1,
                true,
            ),
        };
        self.features.push(FeatureInfo { name, dim, scalar });
        value
    }

    fn label(&mut self) -> String {
        if self.rng.chance(95) {
            self.rng.pick(&self.labels).clone()
        } else {
            "unknown".into()
        }
    }

    fn classes(&mut self, exactly_two: bool) -> Vec<String> {
        let mut classes: Vec<String> = self.labels.clone();
        if !exactly_two {
            classes.truncate(1 + self.rng.below(classes.len()));
        } else {
            classes.truncate(2);
        }
        if self.rng.chance(2) {
            classes.push(classes[0].clone());
        }
        classes
    }

    /// Random model inputs and their total dimension.
    fn model_inputs(&mut self) -> (Vec<String>, usize) {
        if self.features.is_empty() || self.rng.chance(3) {
            return (vec!["nope".into()], 1);
        }
        let mut names = Vec::new();
        let mut dim = 0;
        for _ in 0..1 + self.rng.below(3) {
            let f = self.rng.pick(&self.features).clone();
            if !names.contains(&f.name) || self.rng.chance(3) {
                names.push(f.name);
                dim += f.dim;
            }
        }
        (names, dim)
    }

    /// `n` numbers (off by one now and then), as a JSON array or packed base64.
    fn floats(&mut self, n: usize, nonneg: bool) -> Value {
        let n = match self.rng.below(60) {
            0 => n + 1,
            _ => n,
        };
        let values: Vec<f32> = (0..n)
            .map(|_| {
                let x = self.rng.weight();
                if nonneg {
                    x.abs()
                } else {
                    x
                }
            })
            .collect();
        if self.rng.chance(50) {
            let mut s = String::from("base64:");
            let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
            s.push_str(&base64_encode(&bytes));
            if self.rng.chance(2) {
                s.push('=');
            }
            json!(s)
        } else {
            json!(values
                .iter()
                .map(|&x| if x.is_finite() { json!(x) } else { json!(1e39) })
                .collect::<Vec<_>>())
        }
    }

    fn condition(&mut self, depth: usize) -> Value {
        let r = &mut self.rng;
        let k = if depth > 3 {
            4 + r.below(2)
        } else {
            r.below(6)
        };
        match k {
            0 => {
                json!({"all": (0..r.mostly(&[1, 2], &[0])).map(|_| self.condition(depth + 1)).collect::<Vec<_>>()})
            }
            1 => {
                json!({"any": (0..r.mostly(&[1, 2], &[0])).map(|_| self.condition(depth + 1)).collect::<Vec<_>>()})
            }
            2 => json!({"not": self.condition(depth + 1)}),
            3 => json!({"always": r.chance(97)}),
            _ => {
                let scalars: Vec<&FeatureInfo> =
                    self.features.iter().filter(|f| f.scalar).collect();
                let feature = if scalars.is_empty() || r.chance(3) {
                    "nope".to_string()
                } else {
                    scalars[r.below(scalars.len())].name.clone()
                };
                let op = *self.rng.pick(&["gt", "ge", "lt", "le", "eq", "ne"]);
                let mut c = json!({"feature": feature});
                c[op] = json!(self.rng.number());
                c
            }
        }
    }

    fn decision(&mut self, depth: usize) -> Value {
        let leaf_only = depth >= 3;
        let op = if leaf_only {
            self.rng.below(4)
        } else {
            self.rng.below(6)
        };
        let min_confidence = self.rng.mostly(&[0.0, 0.0, 0.3, 0.9, 1.0], &[1.5, -0.1]);
        match op {
            0 => {
                let rules: Vec<Value> = (0..1 + self.rng.below(4))
                    .map(|i| {
                        let mut rule = json!({"when": self.condition(0), "then": self.label(),
                                              "confidence": self.rng.mostly(&[0.99, 0.9, 0.8, 1.0], &[0.6, 0.5, 0.0, 1.01])});
                        if self.rng.chance(30) {
                            rule["name"] = json!(format!("rule {i} é"));
                        }
                        rule
                    })
                    .collect();
                json!({"op": "rules", "rules": rules})
            }
            1 => {
                let sigmoid = self.labels.len() >= 2 && self.rng.chance(40);
                let classes = self.classes(sigmoid);
                let width = if sigmoid { 1 } else { classes.len() };
                let (inputs, dim) = self.model_inputs();
                let mut m = json!({"op": "linear", "inputs": inputs, "classes": classes,
                                   "link": if sigmoid { "sigmoid" } else { "softmax" },
                                   "weights": self.floats(dim * width, false),
                                   "bias": (0..width).map(|_| self.rng.number()).collect::<Vec<_>>(),
                                   "min_confidence": min_confidence});
                if self.rng.chance(40) {
                    m["temperature"] =
                        json!(self.rng.mostly(&[1.0, 0.01, 1e-300, 100.0], &[0.0, -1.0]));
                }
                m
            }
            2 => {
                let classes = self.classes(false);
                let (inputs, dim) = self.model_inputs();
                json!({"op": "naive_bayes", "inputs": inputs, "classes": classes,
                       "class_log_prior": (0..classes.len()).map(|_| -self.rng.unit() * 3.0).collect::<Vec<_>>(),
                       "feature_log_prob": self.floats(dim * classes.len(), false),
                       "min_confidence": min_confidence})
            }
            3 => {
                let classes = self.classes(false);
                let (inputs, dim) = self.model_inputs();
                let n = 1 + self.rng.below(7);
                let nonneg = self.rng.chance(95);
                let (mut feature, mut left, mut right) = (Vec::new(), Vec::new(), Vec::new());
                for i in 0..n {
                    if i + 2 < n && self.rng.chance(60) {
                        let past_end = usize::from(self.rng.chance(2));
                        feature.push(json!(self.rng.below(dim + past_end)));
                        let l = i + 1 + self.rng.below(n - i - 1);
                        let rt = i + 1 + self.rng.below(n - i - 1);
                        left.push(json!(l));
                        right.push(json!(if self.rng.chance(2) { i } else { rt }));
                    } else {
                        feature.push(json!(-1));
                        left.push(json!(0));
                        right.push(json!(0));
                    }
                }
                json!({"op": "tree", "inputs": inputs, "classes": classes, "feature": feature,
                       "threshold": self.floats(n, false), "left": left, "right": right,
                       "value": self.floats(n * classes.len(), nonneg),
                       "min_confidence": min_confidence})
            }
            4 => {
                json!({"op": "first", "steps": (0..1 + self.rng.below(3)).map(|_| self.decision(depth + 1)).collect::<Vec<_>>()})
            }
            _ => {
                let members: Vec<Value> = (0..1 + self.rng.below(3))
                    .map(|_| {
                        json!({"weight": self.rng.mostly(&[1.0, 2.0, 0.5, 1e308, 1e-308], &[0.0]),
                               "decide": self.decision(depth + 1)})
                    })
                    .collect();
                json!({"op": "vote", "members": members, "min_confidence": min_confidence})
            }
        }
    }
}

const PATTERNS: &[&str] = &[
    "\\d+",
    "(?i)free|win",
    "(\\w+)@(\\w+)",
    "(?P<amount>[0-9.]+)",
    "^",
    "",
    "(a|b)*c?",
    "\\bé\\b",
    "\\p{Greek}+",
];

const BAD_PATTERNS: &[&str] = &["[", "(?=x)", "x{1000}{1000}"];

fn base64_encode(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Applies `count` random structural mutations to `value`.
fn mutate(value: &mut Value, rng: &mut Rng, count: usize) {
    for _ in 0..count {
        // Walk down a random path, stopping at a random depth.
        let mut node = &mut *value;
        loop {
            let len = match &*node {
                Value::Object(m) => m.len(),
                Value::Array(a) => a.len(),
                _ => 0,
            };
            if len == 0 || rng.chance(25) {
                break;
            }
            let i = rng.below(len);
            node = match node {
                Value::Object(m) => m.values_mut().nth(i).expect("index in range"),
                Value::Array(a) => &mut a[i],
                _ => unreachable!("containers only"),
            };
        }
        match rng.below(9) {
            0 => {
                if let Value::Object(m) = node {
                    if let Some(k) = m.keys().nth(rng.below(m.len())).cloned() {
                        m.remove(&k);
                    }
                }
            }
            1 => {
                if let Value::Array(a) = node {
                    if !a.is_empty() {
                        a.remove(rng.below(a.len()));
                    }
                }
            }
            2 => {
                if let Value::Array(a) = node {
                    if let Some(x) = a.first().cloned() {
                        a.push(x);
                    }
                }
            }
            3 => *node = json!(rng.number()),
            4 => *node = rng.count(),
            5 => {
                *node = json!(*rng.pick(&["", "x", "spam", "text", "f0", "v0", "é", "base64:AAAA"]))
            }
            6 => *node = json!(null),
            7 => *node = json!([]),
            _ => {
                if let Value::Object(m) = node {
                    m.insert("unexpected".into(), json!(1));
                } else {
                    *node = json!({});
                }
            }
        }
    }
}

/// Loads `value`, asserting that a failure is a `Program` error, and returns the program.
fn load(value: &Value) -> Result<Option<Program>, TestCaseError> {
    match Program::from_value(value, &Default::default()) {
        Ok(p) => {
            // Loading from bytes agrees with loading from the value.
            let bytes = serde_json::to_vec(value).expect("serializes");
            prop_assert!(Program::from_json(&bytes).is_ok());
            Ok(Some(p))
        }
        Err(e) => {
            prop_assert_eq!(e.kind(), ErrorKind::Program, "{}", e);
            prop_assert!(!e.to_string().is_empty());
            Ok(None)
        }
    }
}

// ---------------------------------------------------------------------------------------
// Properties

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_inputs_give_sane_outcomes_or_invalid_input(input in arb_input()) {
        for (_, program) in compiled_fixed().iter() {
            eval_checked(program, &input)?;
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_loader(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Err(e) = Program::from_json(&bytes) {
            prop_assert_eq!(e.kind(), ErrorKind::Program);
        }
    }

    #[test]
    fn corrupted_program_bytes_never_panic_the_loader(
        which in 0usize..5,
        cuts in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        truncate in any::<Option<prop::sample::Index>>(),
    ) {
        let (_, v) = &fixed_programs()[which];
        let mut bytes = serde_json::to_vec(v).unwrap();
        for (at, byte) in cuts {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        if let Some(t) = truncate {
            bytes.truncate(t.index(bytes.len()));
        }
        if let Err(e) = Program::from_json(&bytes) {
            prop_assert_eq!(e.kind(), ErrorKind::Program);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn generated_programs_load_or_fail_cleanly_and_evaluate_without_panics(
        seed in any::<u64>(),
        inputs in prop::collection::vec(arb_input(), 4),
    ) {
        let value = ProgramGen::new(seed).program();
        if let Some(program) = load(&value)? {
            let again = Program::from_value(&value, &Default::default()).expect("loads twice");
            for input in &inputs {
                eval_no_panic(&program, input)?;
                // Two compilations of one program agree bit for bit.
                match (program.evaluate(input), again.evaluate(input)) {
                    (Ok(a), Ok(b)) => prop_assert!(same(&a, &b)),
                    (Err(a), Err(b)) => prop_assert_eq!(a.to_string(), b.to_string()),
                    (a, b) => prop_assert!(false, "{a:?} vs {b:?}"),
                }
            }
        }
    }

    #[test]
    fn mutated_programs_load_or_fail_cleanly_and_evaluate_without_panics(
        seed in any::<u64>(),
        which in 0usize..6,
        count in 1usize..4,
        inputs in prop::collection::vec(arb_input(), 2),
    ) {
        let mut rng = Rng(seed);
        let mut value = match which {
            5 => ProgramGen::new(seed ^ 0x5eed).program(),
            w => fixed_programs().swap_remove(w).1,
        };
        mutate(&mut value, &mut rng, count);
        if let Some(program) = load(&value)? {
            for input in &inputs {
                eval_no_panic(&program, input)?;
            }
        }
    }
}

#[test]
fn generator_produces_a_useful_share_of_loadable_programs() {
    let mut loaded = 0;
    let mut errors = std::collections::BTreeMap::<String, usize>::new();
    for seed in 0..300 {
        match Program::from_value(&ProgramGen::new(seed).program(), &Default::default()) {
            Ok(_) => loaded += 1,
            Err(e) => {
                let msg = e.to_string();
                let key = msg.split(':').next().unwrap_or("").to_string();
                *errors.entry(key).or_default() += 1;
            }
        }
    }
    // Half failing is fine (failures exercise validation), but the loadable ones exercise
    // evaluation, so there must be plenty of them.
    assert!(
        loaded >= 60,
        "only {loaded}/300 generated programs load: {errors:?}"
    );
}

#[test]
fn fixed_programs_cover_every_outcome_shape() {
    let programs = compiled_fixed();
    let inputs = [
        json!({"text": "FREE win $5 now", "order": {"amount": 500}, "meta": {"subject": "RE: 1"}}),
        json!({"text": "hello there", "meta": {"subject": "12"}}),
        json!({"text": ""}),
        json!({"text": "Bob paid $ 12.5"}),
    ];
    let mut abstained = 0;
    let mut decided = 0;
    for (_, p) in &programs {
        for input in &inputs {
            let o = p.evaluate(input).unwrap();
            check_outcome(p, &o).unwrap();
            abstained += usize::from(o.abstained);
            decided += usize::from(o.decided_by.is_some());
        }
    }
    assert!(abstained > 0 && decided > 0);
}

/// Known bug: a linear model whose logits overflow `f64` (a large number input times a
/// weight, or huge weights, or vote weights summing to infinity) reports NaN scores and a
/// NaN confidence as a confident, non-abstained answer. The arbitrary-input property above
/// finds this as soon as a fixed program has a softmax over a number input, so that program
/// lives here until `eval.rs` guards against non-finite logits.
#[test]
fn overflowing_logits_do_not_give_nan_confidence() {
    let program = Program::from_value(
        &json!({"format": "loopai.program/1", "task": "t",
            "inputs": [{"name": "amount", "path": "/amount", "type": "number"}],
            "features": [{"name": "amt", "op": "number", "input": "amount"}],
            "decide": {"op": "linear", "inputs": ["amt"], "classes": ["spam", "ham"],
                       "link": "softmax", "weights": [3.0, -3.0], "bias": [0, 0]},
            "output": {"kind": "label", "labels": ["spam", "ham"], "abstain_below": 0.5}}),
        &Default::default(),
    )
    .unwrap();
    let outcome = program.evaluate(&json!({"amount": 1e308})).unwrap();
    check_outcome(&program, &outcome).unwrap();
}
