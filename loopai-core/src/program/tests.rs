use serde_json::{json, Value};

use super::*;
use crate::error::ErrorKind;

fn program(v: Value) -> Program {
    Program::from_value(&v, &ProgramLimits::default()).expect("program compiles")
}

fn load_err(v: Value) -> String {
    let err = Program::from_json(v.to_string().as_bytes()).expect_err("program must be refused");
    assert_eq!(err.kind(), ErrorKind::Program, "{err}");
    err.to_string()
}

fn base() -> Value {
    json!({
        "format": "loopai.program/1",
        "task": "t",
        "inputs": [{"name": "text", "path": "/text", "type": "text"}],
        "preprocess": [{"name": "clean", "from": "text", "steps": [
            {"op": "nfkc"}, {"op": "lowercase"},
            {"op": "replace", "kind": "url", "with": " __url__ "},
            {"op": "replace", "kind": "number", "with": " __num__ "},
            {"op": "collapse_whitespace"}
        ]}],
        "features": [
            {"name": "kw", "op": "keywords", "source": "clean", "terms": ["free", "prize", "claim now"], "whole_words": true},
            {"name": "money", "op": "regex", "source": "text", "pattern": "[£$€]\\s?\\d", "mode": "count"},
            {"name": "len", "op": "stat", "source": "text", "stat": "chars"}
        ],
        "decide": {"op": "rules", "rules": [
            {"name": "money-and-keyword", "when": {"all": [{"feature": "kw", "ge": 1}, {"feature": "money", "gt": 0}]}, "then": "spam", "confidence": 0.99},
            {"when": {"any": [{"feature": "kw", "ge": 2}, {"not": {"feature": "len", "lt": 500}}]}, "then": "spam", "confidence": 0.8},
            {"when": {"always": true}, "then": "ham", "confidence": 0.7}
        ]},
        "output": {"kind": "label", "labels": ["spam", "ham"], "abstain_below": 0.75}
    })
}

fn set(mut v: Value, pointer: &str, new: Value) -> Value {
    *v.pointer_mut(pointer).expect("pointer exists") = new;
    v
}

#[test]
fn rules_decide_in_order_with_paths_and_abstain() {
    let p = program(base());
    let o = p
        .evaluate(&json!({"text": "Claim now: FREE £100 prize"}))
        .unwrap();
    assert_eq!(o.output, "spam");
    assert_eq!(o.confidence, 0.99);
    assert_eq!(o.scores, vec![0.99, 1.0 - 0.99]);
    assert!(!o.abstained);
    assert_eq!(
        p.decision_path(o.decided_by.unwrap()),
        Some("decide.rules[0] (money-and-keyword)")
    );

    let o = p.evaluate(&json!({"text": "free prize"})).unwrap();
    assert_eq!(
        p.decision_path(o.decided_by.unwrap()),
        Some("decide.rules[1]")
    );

    let o = p.evaluate(&json!({"text": "see you at 5"})).unwrap();
    assert_eq!(o.output, "ham");
    assert!(o.abstained, "0.7 is below abstain_below 0.75");
}

#[test]
fn whole_word_keywords_ignore_partial_matches() {
    let p = program(base());
    // "freedom" must not count as "free": no keyword, short text -> the ham rule.
    let o = p.evaluate(&json!({"text": "freedom prizes"})).unwrap();
    assert_eq!(o.output, "ham");
}

#[test]
fn input_errors_name_the_field() {
    let p = program(base());
    let e = p.evaluate(&json!({"txt": "x"})).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert_eq!(
        e.to_string(),
        "input /text: required field `text` is missing"
    );
    let e = p.evaluate(&json!({"text": 3})).unwrap_err();
    assert_eq!(
        e.to_string(),
        "input /text: expected a string, got a number"
    );
    let e = p.evaluate(&json!("just a string")).unwrap_err();
    assert_eq!(e.to_string(), "input: expected a JSON object, got a string");
    let big = "a".repeat(70_000);
    let e = p.evaluate(&json!({ "text": big })).unwrap_err();
    assert!(
        e.to_string()
            .contains("70000 bytes, over the limit of 65536"),
        "{e}"
    );
}

#[test]
fn oversize_text_can_be_truncated_instead() {
    let v = set(
        base(),
        "/inputs/0",
        json!({"name": "text", "path": "/text", "type": "text", "max_bytes": 10, "on_oversize": "truncate"}),
    );
    let p = program(v);
    // The keyword is beyond byte 10, so truncation removes it.
    let o = p
        .evaluate(&json!({"text": "hello there free prize"}))
        .unwrap();
    assert_eq!(o.output, "ham");
}

#[test]
fn malformed_programs_are_refused_with_their_json_path() {
    assert!(load_err(json!({"task": "t"})).contains("missing field `format`"));
    assert!(load_err(set(base(), "/format", json!("loopai.program/9")))
        .starts_with("format: unsupported format"));
    let mut v = base();
    v["surprise"] = json!(1);
    assert!(load_err(v).contains("unknown field `surprise`"));
    let e = load_err(set(base(), "/features/1/pattern", json!("([a-z")));
    assert!(e.starts_with("features[1].pattern: invalid regex"), "{e}");
    let e = load_err(set(base(), "/features/1/mode", json!(7)));
    assert!(e.starts_with("features[1].mode: invalid type"), "{e}");
    let e = load_err(set(base(), "/features/0/terms", json!("free")));
    assert!(e.starts_with("features[0].terms: invalid type"), "{e}");
    let e = load_err(set(base(), "/features/2/stat", json!("vibes")));
    assert!(e.starts_with("features[2].stat: unknown variant"), "{e}");
    let e = load_err(set(
        base(),
        "/decide/rules/1/when/any/1/not/feature",
        json!("nope"),
    ));
    assert_eq!(
        e,
        "decide.rules[1].when.any[1].not.feature: unknown feature \"nope\""
    );
    let e = load_err(set(base(), "/decide/rules/0/then", json!("eggs")));
    assert_eq!(
        e,
        "decide.rules[0].then: \"eggs\" is not one of output.labels"
    );
    let e = load_err(set(base(), "/decide/rules/0/confidence", json!(1.5)));
    assert_eq!(
        e,
        "decide.rules[0].confidence: must be between 0 and 1, got 1.5"
    );
    let e = load_err(set(base(), "/preprocess/0/steps/2/kind", json!("phone")));
    assert!(
        e.starts_with("preprocess[0].steps[2].kind: unknown variant"),
        "{e}"
    );
    let e = load_err(set(base(), "/features/0/source", json!("raw")));
    assert!(
        e.starts_with("features[0].source: unknown text source \"raw\""),
        "{e}"
    );
    let e = Program::from_json(b"{\"format\": ").unwrap_err();
    assert!(e.to_string().starts_with("not valid JSON at line 1"), "{e}");
}

#[test]
fn oversize_regex_is_refused() {
    let e = load_err(set(base(), "/features/1/pattern", json!("a{1000}{1000}")));
    assert!(e.starts_with("features[1].pattern: invalid regex"), "{e}");
    let long = "a".repeat(5000);
    let e = load_err(set(base(), "/features/1/pattern", json!(long)));
    assert!(e.contains("over the limit"), "{e}");
}

fn linear_program(weights: Value, link: &str, bias: Value) -> Value {
    json!({
        "format": "loopai.program/1",
        "task": "t",
        "inputs": [{"name": "text", "path": "/text", "type": "text"}],
        "features": [
            {"name": "words", "op": "word_ngrams", "source": "text", "n": [1, 1], "vocabulary": ["free", "prize", "hello"]},
            {"name": "len", "op": "stat", "source": "text", "stat": "words"}
        ],
        "decide": {"op": "linear", "inputs": ["words", "len"], "classes": ["ham", "spam"],
                   "link": link, "weights": weights, "bias": bias},
        "output": {"kind": "label", "labels": ["spam", "ham"]}
    })
}

#[test]
fn linear_sigmoid_model_matches_hand_computation() {
    let p = program(linear_program(
        json!([2.0, 1.0, -3.0, 0.5]),
        "sigmoid",
        json!([-1.0]),
    ));
    let o = p.evaluate(&json!({"text": "free free prize"})).unwrap();
    // z = -1 + 2*2 (free twice) + 1 (prize) + 0.5*3 words = 5.5
    let p_spam = 1.0 / (1.0 + libm::exp(-5.5));
    assert_eq!(o.output, "spam");
    assert_eq!(o.scores, vec![p_spam, 1.0 - p_spam]);
    let o = p.evaluate(&json!({"text": "hello"})).unwrap();
    assert_eq!(o.output, "ham");
}

#[test]
fn linear_softmax_accepts_packed_weights() {
    let w: Vec<f32> = vec![0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0];
    let bytes: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
    let packed = format!(
        "base64:{}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes)
    );
    let p = program(linear_program(json!(packed), "softmax", json!([0.0, 0.0])));
    let o = p.evaluate(&json!({"text": "free prize"})).unwrap();
    assert_eq!(o.output, "spam");
    let e = load_err(linear_program(
        json!("base64:AAAA"),
        "softmax",
        json!([0.0, 0.0]),
    ));
    assert!(e.starts_with("decide.weights: expected 8 floats"), "{e}");
    let e = load_err(linear_program(json!([1.0]), "softmax", json!([0.0, 0.0])));
    assert_eq!(e, "decide.weights: expected 8 numbers, got 1");
}

#[test]
fn hashed_ngrams_are_deterministic_and_count_every_occurrence() {
    let v = json!({
        "format": "loopai.program/1", "task": "t",
        "inputs": [{"name": "text", "path": "/text", "type": "text"}],
        "features": [
            {"name": "w", "op": "word_ngrams", "source": "text", "n": [1, 3], "hash": {"bits": 4, "seed": 3}},
            {"name": "c", "op": "char_ngrams", "source": "text", "n": [2, 4], "within_words": true, "hash": {"bits": 4}, "weighting": "log1p", "normalize": "l2"}
        ],
        "decide": {"op": "linear", "inputs": ["w", "c"], "classes": ["a", "b", "c"],
                   "weights": (0..96).map(|i| ((i * 7) % 11) as f64 / 10.0 - 0.5).collect::<Vec<_>>(),
                   "bias": [0.1, 0.0, -0.1], "temperature": 2.0},
        "output": {"kind": "label", "labels": ["a", "b", "c"]}
    });
    let p = program(v);
    let input = json!({"text": "Ünïcode wörds and more words, ﬁne"});
    let first = p.evaluate(&input).unwrap();
    for _ in 0..3 {
        assert_eq!(p.evaluate(&input).unwrap(), first);
    }
    let sum: f64 = first.scores.iter().sum();
    assert!((sum - 1.0).abs() < 1e-12);
    // Other threads compute the same bits.
    let p = std::sync::Arc::new(p);
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let p = p.clone();
            let input = input.clone();
            std::thread::spawn(move || p.evaluate(&input).unwrap())
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), first);
    }
}

#[test]
fn naive_bayes_prefers_the_likelier_class() {
    let v = json!({
        "format": "loopai.program/1", "task": "t",
        "inputs": [{"name": "text", "path": "/text", "type": "text"}],
        "features": [{"name": "w", "op": "word_ngrams", "source": "text", "n": [1, 1], "vocabulary": ["cheap", "meeting"]}],
        "decide": {"op": "naive_bayes", "inputs": ["w"], "classes": ["spam", "ham"],
                   "class_log_prior": [-0.69, -0.69],
                   "feature_log_prob": [-0.2, -2.0, -2.0, -0.2]},
        "output": {"kind": "label", "labels": ["spam", "ham"]}
    });
    let p = program(v);
    assert_eq!(
        p.evaluate(&json!({"text": "cheap cheap"})).unwrap().output,
        "spam"
    );
    assert_eq!(
        p.evaluate(&json!({"text": "meeting at noon"}))
            .unwrap()
            .output,
        "ham"
    );
}

fn tree_program(left: Value) -> Value {
    json!({
        "format": "loopai.program/1", "task": "t",
        "inputs": [{"name": "text", "path": "/text", "type": "text"}, {"name": "amount", "path": "/order/amount", "type": "number", "default": 0}],
        "features": [{"name": "amt", "op": "number", "input": "amount"}, {"name": "digits", "op": "stat", "source": "text", "stat": "digit_ratio"}],
        "decide": {"op": "tree", "inputs": ["amt", "digits"], "classes": ["low", "high"],
                   "feature": [0, -1, 1, -1, -1], "threshold": [100.0, 0, 0.5, 0, 0],
                   "left": left, "right": [2, 0, 4, 0, 0],
                   "value": [0, 0, 9, 1, 0, 0, 2, 8, 1, 1]},
        "output": {"kind": "label", "labels": ["low", "high"]}
    })
}

#[test]
fn trees_walk_flat_arrays() {
    let p = program(tree_program(json!([1, 0, 3, 0, 0])));
    let o = p
        .evaluate(&json!({"text": "abc", "order": {"amount": 50}}))
        .unwrap();
    assert_eq!((o.output.clone(), o.confidence), (json!("low"), 0.9));
    let o = p
        .evaluate(&json!({"text": "a", "order": {"amount": 500}}))
        .unwrap();
    assert_eq!((o.output.clone(), o.confidence), (json!("high"), 0.8));
    let o = p.evaluate(&json!({"text": "12345678"})).unwrap();
    assert_eq!(o.output, "low", "the default amount 0 goes left");
    let o = p
        .evaluate(&json!({"text": "1234", "order": {"amount": 101}}))
        .unwrap();
    assert_eq!(o.confidence, 0.5);
}

#[test]
fn tree_cycles_are_refused() {
    let e = load_err(tree_program(json!([0, 0, 3, 0, 0])));
    assert_eq!(
        e,
        "decide.left[0]: child 0 must be greater than 0 and less than 5"
    );
}

#[test]
fn hybrid_and_vote_compose_with_abstention() {
    let v = json!({
        "format": "loopai.program/1", "task": "t",
        "inputs": [{"name": "text", "path": "/text", "type": "text"}],
        "features": [
            {"name": "kw", "op": "keywords", "source": "text", "terms": ["urgent"], "case_insensitive": true},
            {"name": "w", "op": "word_ngrams", "source": "text", "n": [1, 1], "vocabulary": ["hello", "cash"]}
        ],
        "decide": {"op": "first", "steps": [
            {"op": "rules", "rules": [{"when": {"feature": "kw", "gt": 0}, "then": "spam", "confidence": 0.95}]},
            {"op": "vote", "members": [
                {"weight": 3, "decide": {"op": "linear", "inputs": ["w"], "classes": ["spam", "ham"], "link": "softmax",
                                          "weights": [0, 1, 2, 0], "bias": [0, 0], "min_confidence": 0.6}},
                {"weight": 1, "decide": {"op": "rules", "rules": [{"when": {"always": true}, "then": "ham", "confidence": 0.9}]}}
            ]}
        ]},
        "output": {"kind": "label", "labels": ["spam", "ham"]}
    });
    let p = program(v);
    let o = p.evaluate(&json!({"text": "URGENT!"})).unwrap();
    assert_eq!(
        p.decision_path(o.decided_by.unwrap()),
        Some("decide.steps[0].rules[0]")
    );
    // "cash": linear gives spam with p = e^2/(1+e^2) ≈ 0.88; vote = (3*0.88 + 0.1) / 4.
    let o = p.evaluate(&json!({"text": "cash"})).unwrap();
    let p_lin = libm::exp(2.0) / (1.0 + libm::exp(2.0));
    assert_eq!(o.output, "spam");
    assert!((o.scores[0] - (3.0 * p_lin + 0.1) / 4.0).abs() < 1e-12);
    assert_eq!(
        p.decision_path(o.decided_by.unwrap()),
        Some("decide.steps[1]")
    );
    // No words: linear is 50/50, below its min_confidence, so only the ham rule votes.
    let o = p.evaluate(&json!({"text": "zzz"})).unwrap();
    assert_eq!((o.output.clone(), o.confidence), (json!("ham"), 0.9));
}

#[test]
fn program_with_no_applicable_decision_abstains_with_null_output() {
    let v = set(
        base(),
        "/decide/rules",
        json!([{"when": {"feature": "kw", "gt": 5}, "then": "spam", "confidence": 1.0}]),
    );
    let o = program(v).evaluate(&json!({"text": "hi"})).unwrap();
    assert_eq!(o.output, Value::Null);
    assert!(o.abstained);
    assert_eq!(o.confidence, 0.0);
}

#[test]
fn extraction_programs_return_named_captures() {
    let v = json!({
        "format": "loopai.program/1", "task": "orders",
        "inputs": [{"name": "text", "path": "/text", "type": "text"}],
        "features": [],
        "output": {"kind": "extract", "source": "text", "fields": [
            {"name": "order_id", "pattern": "order #(?P<id>[0-9]+)", "group": "id"},
            {"name": "total", "pattern": "total:? \\$?([0-9.]+)", "type": "number"},
            {"name": "coupon", "pattern": "coupon ([A-Z0-9]+)", "required": false}
        ]}
    });
    let p = program(v);
    assert_eq!(
        p.extract_fields(),
        Some(vec!["order_id", "total", "coupon"])
    );
    let o = p
        .evaluate(&json!({"text": "Your order #123 total: $45.50"}))
        .unwrap();
    assert_eq!(
        o.output,
        json!({"order_id": "123", "total": 45.5, "coupon": null})
    );
    assert!(!o.abstained);
    assert!((o.confidence - 2.0 / 3.0).abs() < 1e-12);
    let o = p.evaluate(&json!({"text": "no order here"})).unwrap();
    assert!(o.abstained);
}

#[test]
fn stats_describe_the_program() {
    let p = program(base());
    assert_eq!(p.stats().rules, 3);
    assert_eq!(p.stats().features, 3);
    assert_eq!(p.stats().keywords, 3);
    assert_eq!(p.stats().regexes, 1);
}

#[test]
fn program_and_outcome_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Program>();
    check::<Outcome>();
}

// ---------------------------------------------------------------------------------------
// Adversarial programs: each of these once cost the host unbounded time or memory, or
// loaded a program that could never answer.

#[test]
fn chained_replacements_cannot_grow_a_view_without_bound() {
    // Each step turns every number into 32 numbers: 32^5 numbers (64 MiB) from "1"
    // without the view cap, 8 x 64 = 512 bytes with it.
    let with = vec!["1"; 32].join(" ");
    let steps: Vec<Value> = (0..5)
        .map(|_| json!({"op": "replace", "kind": "number", "with": with}))
        .collect();
    let v = json!({
        "format": "loopai.program/1",
        "task": "t",
        "inputs": [{"name": "text", "path": "/text", "type": "text"}],
        "preprocess": [{"name": "big", "from": "text", "steps": steps}],
        "features": [{"name": "len", "op": "stat", "source": "big", "stat": "bytes"}],
        "decide": {"op": "rules", "rules": [
            {"when": {"feature": "len", "eq": 512}, "then": "capped", "confidence": 0.9},
            {"when": {"always": true}, "then": "other", "confidence": 0.9}
        ]},
        "output": {"kind": "label", "labels": ["capped", "other"]}
    });
    let p = Program::from_value(&v, &ProgramLimits::default().with_max_input_bytes(64)).unwrap();
    let o = p.evaluate(&json!({"text": "1"})).unwrap();
    assert_eq!(o.output, "capped");
}

#[test]
fn a_temperature_whose_inverse_overflows_is_refused() {
    // 1 / 1e-320 is infinite: every score would be NaN and the program would abstain on
    // every input.
    let mut v = linear_program(json!([2.0, 1.0, -3.0, 0.5]), "sigmoid", json!([-1.0]));
    v["decide"]["temperature"] = json!(1e-320);
    let err = load_err(v);
    assert!(err.starts_with("decide.temperature: "), "{err}");
}

/// A chain tree of `k` tests over `["words", "len"]` (dimension 4: the vocabulary's
/// "free", "prize", "hello", then the word count): test `j` reads input `j % 4` and goes
/// on (right) when it is above `thresholds[j % 4]`, except the last test, which needs
/// "free" above `last`. Ending the chain is "deep", leaving it early "shallow".
fn chain_tree(k: usize, thresholds: [f64; 4], last: f64) -> Value {
    let (mut feature, mut threshold, mut left, mut right, mut value) =
        (vec![], vec![], vec![], vec![], vec![]);
    for j in 0..k {
        let (f, t) = if j + 1 == k {
            (0, last)
        } else {
            (j % 4, thresholds[j % 4])
        };
        // Node 2j tests, node 2j + 1 is its "shallow" leaf.
        feature.extend([f as i64, -1]);
        threshold.extend([t, 0.0]);
        left.extend([2 * j + 1, 0]);
        right.extend([2 * j + 2, 0]);
        value.extend([0.0, 0.0, 0.0, 1.0]);
    }
    feature.push(-1);
    threshold.push(0.0);
    left.push(0);
    right.push(0);
    value.extend([1.0, 0.0]);
    json!({
        "format": "loopai.program/1",
        "task": "t",
        "inputs": [{"name": "text", "path": "/text", "type": "text"}],
        "features": [
            {"name": "words", "op": "word_ngrams", "source": "text", "n": [1, 1], "vocabulary": ["free", "prize", "hello"]},
            {"name": "len", "op": "stat", "source": "text", "stat": "words"}
        ],
        "decide": {"op": "tree", "inputs": ["words", "len"], "classes": ["deep", "shallow"],
                   "feature": feature, "threshold": threshold, "left": left, "right": right,
                   "value": value},
        "output": {"kind": "label", "labels": ["deep", "shallow"]}
    })
}

#[test]
fn deep_trees_over_ngrams_read_the_same_values_as_shallow_ones() {
    // Deeper than the walk's scans before it sorts its sparse inputs: every lookup after
    // the 8th goes through the sorted table, including repeated n-grams (summed) and
    // absent ones (0).
    for k in [3, 40, 1000] {
        let p = program(chain_tree(k, [0.5, 0.5, -0.5, 2.5], 2.5));
        let o = p
            .evaluate(&json!({"text": "free prize free free"}))
            .unwrap();
        assert_eq!(o.output, "deep", "k = {k}");
        let o = p.evaluate(&json!({"text": "free prize free"})).unwrap();
        assert_eq!(o.output, "shallow", "k = {k}: the last test sees free = 2");
        let o = p
            .evaluate(&json!({"text": "free prize hello free free"}))
            .unwrap();
        assert_eq!(o.output, "deep", "k = {k}");
        let o = p.evaluate(&json!({"text": "prize free"})).unwrap();
        assert_eq!(o.output, "shallow", "k = {k}: len = 2 stops at test 3");
    }
}

#[test]
fn deeply_nested_program_json_is_refused_without_overflowing_the_stack() {
    let deep = format!("{}{}", "[".repeat(1 << 20), "]".repeat(1 << 20));
    let doc = format!(r#"{{"format": "loopai.program/1", "task": "t", "metadata": {deep}}}"#);
    let err = Program::from_json(doc.as_bytes()).expect_err("must be refused");
    assert_eq!(err.kind(), ErrorKind::Program);
    assert!(err.to_string().contains("recursion limit"), "{err}");
    // Within the parser's limit, the conditions' own depth limit names the path.
    let mut when = json!({"always": true});
    for _ in 0..40 {
        when = json!({"not": when});
    }
    let err = load_err(set(base(), "/decide/rules/0/when", when));
    assert!(err.contains("conditions nest deeper than 32"), "{err}");
    assert!(err.starts_with("decide.rules[0].when.not"), "{err}");
}

#[test]
fn the_classes_of_all_models_together_are_limited() {
    let linear = json!({"op": "linear", "inputs": ["w"], "classes": ["spam", "ham"], "link": "softmax",
                        "weights": [0, 1, 2, 0], "bias": [0, 0]});
    let with_members = |n: usize| {
        json!({
            "format": "loopai.program/1", "task": "t",
            "inputs": [{"name": "text", "path": "/text", "type": "text"}],
            "features": [{"name": "w", "op": "word_ngrams", "source": "text", "n": [1, 1],
                          "vocabulary": ["hello", "cash"]}],
            "decide": {"op": "vote", "members": vec![json!({"weight": 1, "decide": linear}); n]},
            "output": {"kind": "label", "labels": ["spam", "ham"]}
        })
    };
    let limits = ProgramLimits {
        max_model_classes: 6,
        ..ProgramLimits::default()
    };
    // Three two-class models: 6 classes in all, at the limit.
    Program::from_value(&with_members(3), &limits).unwrap();
    let Err(err) = Program::from_value(&with_members(4), &limits) else {
        panic!("8 classes were accepted with a limit of 6");
    };
    assert_eq!(err.kind(), ErrorKind::Program);
    let message = err.to_string();
    assert!(
        message.contains("decide.members[3].decide.classes"),
        "{message}"
    );
    assert!(message.contains("more than 6 classes"), "{message}");
    // By default 4096 classes: 8 × 16 × 16 two-class models in three levels of votes.
    let nested = |outer: usize| {
        let mut v = with_members(16);
        let level1 = v["decide"].clone();
        let level2 =
            json!({"op": "vote", "members": vec![json!({"weight": 1, "decide": level1}); 16]});
        v["decide"] =
            json!({"op": "vote", "members": vec![json!({"weight": 1, "decide": level2}); outer]});
        v
    };
    assert!(Program::from_value(&nested(8), &ProgramLimits::default()).is_ok());
    match Program::from_value(&nested(9), &ProgramLimits::default()) {
        Err(e) => assert!(e.to_string().contains("more than 4096 classes"), "{e}"),
        Ok(_) => panic!("4608 classes were accepted"),
    }
}

#[test]
fn tfidf_features_apply_sublinear_counts_idf_then_l2() {
    let mut v = linear_program(json!([1.0, 0.0, 0.0, 0.0]), "sigmoid", json!([0.0]));
    v["features"][0]["weighting"] = json!("sublinear");
    v["features"][0]["idf"] = json!([2.0, 1.0, 0.5]);
    v["features"][0]["normalize"] = json!("l2");
    let p = program(v.clone());
    let o = p.evaluate(&json!({"text": "free free prize"})).unwrap();
    // free: (1 + ln 2) * 2, prize: 1 * 1, then scaled to unit length; only `free` weighs.
    let free = ((1.0 + libm::log(2.0)) as f32 as f64 * 2.0) as f32 as f64;
    let prize = 1.0f64;
    let x = (free / libm::sqrt(free * free + prize * prize)) as f32 as f64;
    let p_spam = 1.0 / (1.0 + libm::exp(-x));
    assert!(
        (o.scores[0] - p_spam).abs() < 1e-6,
        "{:?} vs {p_spam}",
        o.scores
    );
    // An index whose factor is 0 is dropped from the vector and its norm.
    v["features"][0]["idf"] = json!([2.0, 0.0, 0.5]);
    let o = program(v.clone())
        .evaluate(&json!({"text": "free free prize"}))
        .unwrap();
    let p_spam = 1.0 / (1.0 + libm::exp(-1.0));
    assert!((o.scores[0] - p_spam).abs() < 1e-7, "{:?}", o.scores);
    // Programs without `idf` load and evaluate as before.
    let plain = linear_program(json!([1.0, 0.0, 0.0, 0.0]), "sigmoid", json!([0.0]));
    let o = program(plain)
        .evaluate(&json!({"text": "free free prize"}))
        .unwrap();
    assert_eq!(o.scores[0], 1.0 / (1.0 + libm::exp(-2.0)));
}

#[test]
fn bad_idf_factors_are_refused_with_their_path() {
    let mut v = linear_program(json!([1.0, 0.0, 0.0, 0.0]), "sigmoid", json!([0.0]));
    v["features"][0]["idf"] = json!([1.0, 2.0]);
    assert_eq!(
        load_err(v.clone()),
        "features[0].idf: expected 3 numbers, got 2"
    );
    v["features"][0]["idf"] = json!([1.0, -2.0, 1.0]);
    assert_eq!(
        load_err(v.clone()),
        "features[0].idf: number 1 is negative (-2): factors must be >= 0"
    );
    v["features"][0]["idf"] = json!("base64:AAAA");
    assert!(load_err(v.clone()).starts_with("features[0].idf: expected 3 floats"));
    v["features"][0]["idf"] = json!({"int8": "base64:AAAA", "scale": [1.0]});
    assert_eq!(
        load_err(v),
        "features[0].idf: the int8 form is only for the weights of a linear model"
    );
}

#[test]
fn int8_weights_equal_the_float_weights_they_encode() {
    // Columns scaled by 0.5 and 0.25: every weight is exact in both forms.
    let q: [i8; 8] = [0, 4, -2, 8, 6, 0, 1, -1];
    let scale = [0.5, 0.25];
    let floats: Vec<f64> = q
        .iter()
        .enumerate()
        .map(|(i, &v)| f64::from(v) * scale[i % 2])
        .collect();
    let packed = format!(
        "base64:{}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            q.iter().map(|&v| v as u8).collect::<Vec<_>>()
        )
    );
    let a = program(linear_program(json!(floats), "softmax", json!([0.1, 0.0])));
    let b = program(linear_program(
        json!({"int8": packed, "scale": scale}),
        "softmax",
        json!([0.1, 0.0]),
    ));
    for text in ["free prize", "hello hello", "free hello prize prize"] {
        let input = json!({ "text": text });
        assert_eq!(a.evaluate(&input).unwrap(), b.evaluate(&input).unwrap());
    }
    let e = load_err(linear_program(
        json!({"int8": packed, "scale": [0.5]}),
        "softmax",
        json!([0.0, 0.0]),
    ));
    assert_eq!(e, "decide.weights.scale: expected 2 numbers, got 1");
    let e = load_err(linear_program(
        json!({"int8": "base64:AAAA", "scale": scale}),
        "softmax",
        json!([0.0, 0.0]),
    ));
    assert_eq!(
        e,
        "decide.weights.int8: expected 8 int8 values (8 bytes), got 3 bytes"
    );
}

#[test]
fn int8_weights_score_bit_for_bit_as_the_f32_weights_they_decode_to() {
    // Scales that are not powers of two, for a sigmoid (1 column), softmax with 2
    // columns and softmax with 3 (the three loops of the evaluator): the program in the
    // int8 form and the one with the f32 weights the format decodes it to must give the
    // same bits, although the int8 form is evaluated from its codes.
    let pack = |bytes: Vec<u8>| {
        format!(
            "base64:{}",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes)
        )
    };
    for (classes, width) in [(2usize, 1usize), (2, 2), (3, 3)] {
        let scale: Vec<f64> = (0..width).map(|c| 0.1 + 0.37 * c as f64 / 3.0).collect();
        let q: Vec<i8> = (0..4 * width)
            .map(|i| ((i * 53 + 17) % 255) as i32 - 127)
            .map(|v| v as i8)
            .collect();
        let decoded: Vec<u8> = q
            .iter()
            .enumerate()
            .flat_map(|(i, &v)| ((f64::from(v) * scale[i % width]) as f32).to_le_bytes())
            .collect();
        let labels: Vec<String> = (0..classes).map(|c| format!("c{c}")).collect();
        let make = |weights: Value| {
            let mut v = linear_program(
                weights,
                if width == 1 { "sigmoid" } else { "softmax" },
                json!(vec![0.25; width]),
            );
            v["decide"]["classes"] = json!(labels);
            v["output"]["labels"] = json!(labels);
            program(v)
        };
        let a = make(json!(pack(decoded)));
        let b = make(json!({"int8": pack(q.iter().map(|&v| v as u8).collect()), "scale": scale}));
        for text in ["free prize", "hello hello", "free hello prize prize", ""] {
            let input = json!({ "text": text });
            let (oa, ob) = (a.evaluate(&input).unwrap(), b.evaluate(&input).unwrap());
            let bits = |o: &crate::program::Outcome| -> Vec<u64> {
                o.scores.iter().map(|s| s.to_bits()).collect()
            };
            assert_eq!(bits(&oa), bits(&ob), "width {width}, {text:?}");
            assert_eq!(oa, ob);
        }
    }
    // A scale that makes a code overflow f32 names the first weight it makes infinite.
    let e = load_err(linear_program(
        json!({"int8": pack(vec![0, 0, 4, 0, 0, 0, 0, 0]), "scale": [1e38, 1.0]}),
        "softmax",
        json!([0.0, 0.0]),
    ));
    assert_eq!(e, "decide.weights: number 2 is not finite");
}

/// A ticket program over a text, a number, a category and a boolean, with every
/// structured feature.
fn structured() -> Value {
    json!({
        "format": "loopai.program/1",
        "task": "tickets",
        "inputs": [
            {"name": "subject", "path": "/subject", "type": "text", "required": false},
            {"name": "lines", "path": "/lines", "type": "number", "required": false, "default": 10},
            {"name": "priority", "path": "/meta/priority", "type": "category", "required": false},
            {"name": "vip", "path": "/vip", "type": "category", "required": false}
        ],
        "features": [
            {"name": "lines.num", "op": "number", "input": "lines"},
            {"name": "lines.z", "op": "scale", "input": "lines", "mean": 10, "std": 4, "clip": 3},
            {"name": "lines.bins", "op": "bins", "input": "lines", "edges": [5, 20]},
            {"name": "lines.missing", "op": "missing", "input": "lines"},
            {"name": "priority.cat", "op": "one_hot", "input": "priority", "values": ["low", "high"]},
            {"name": "priority.missing", "op": "missing", "input": "priority"},
            {"name": "vip.cat", "op": "one_hot", "input": "vip", "values": ["false", "true"]},
            {"name": "subject.missing", "op": "missing", "input": "subject"}
        ],
        "decide": {"op": "rules", "rules": [
            {"name": "vip", "when": {"feature": "vip.cat", "in": ["true"]}, "then": "urgent", "confidence": 0.9},
            {"name": "high and mid-sized", "when": {"all": [
                {"feature": "priority.cat", "in": ["high"]},
                {"feature": "lines.num", "ge": 5, "lt": 20}]}, "then": "urgent", "confidence": 0.8},
            {"name": "no priority", "when": {"feature": "priority.missing", "eq": 1}, "then": "later", "confidence": 0.7},
            {"when": {"always": true}, "then": "normal", "confidence": 0.6}
        ]},
        "output": {"kind": "label", "labels": ["urgent", "normal", "later"]}
    })
}

fn rule_of(p: &Program, input: Value) -> String {
    let o = p.evaluate(&input).expect("input is valid");
    p.decision_path(o.decided_by.expect("a rule decides"))
        .expect("known decision")
        .to_string()
}

#[test]
fn rules_test_number_ranges_categories_booleans_and_missing_values() {
    let p = program(structured());
    let high = |lines: Value| json!({"lines": lines, "meta": {"priority": "high"}});
    assert_eq!(
        rule_of(&p, high(json!(5))),
        "decide.rules[1] (high and mid-sized)"
    );
    assert_eq!(
        rule_of(&p, high(json!(19.5))),
        "decide.rules[1] (high and mid-sized)"
    );
    // The range is [5, 20): both ends are tested.
    assert_eq!(rule_of(&p, high(json!(20))), "decide.rules[3]");
    assert_eq!(rule_of(&p, high(json!(4.99))), "decide.rules[3]");
    // A missing number reads its default (10), which is in the range.
    assert_eq!(
        rule_of(&p, json!({"meta": {"priority": "high"}})),
        "decide.rules[1] (high and mid-sized)"
    );
    // An unknown category value is in no `in` list; a missing one neither, and it is flagged.
    assert_eq!(
        rule_of(&p, json!({"lines": 8, "meta": {"priority": "p0"}})),
        "decide.rules[3]"
    );
    assert_eq!(
        rule_of(&p, json!({"lines": 8, "meta": {"priority": null}})),
        "decide.rules[2] (no priority)"
    );
    // Booleans are the categories "true" and "false".
    assert_eq!(rule_of(&p, json!({"vip": true})), "decide.rules[0] (vip)");
    assert_eq!(
        rule_of(&p, json!({"vip": false, "meta": {"priority": "low"}})),
        "decide.rules[3]"
    );
}

#[test]
fn a_linear_model_reads_scaled_numbers_bins_one_hot_and_missing_flags() {
    // One input per class column is enough to read every feature's value back from
    // the scores: a sigmoid over a single feature with weight 1 gives sigma(value).
    let read = |feature: &str, input: Value| -> [f64; 1] {
        let mut v = structured();
        let dim = match feature {
            "lines.bins" => 3,
            "priority.cat" | "vip.cat" => 3,
            _ => 1,
        };
        v["decide"] = json!({"op": "linear", "inputs": [feature], "classes": ["normal", "urgent"],
            "link": "softmax", "weights": (0..dim).flat_map(|i| [0.0, f64::from(i as u8 + 1)]).collect::<Vec<_>>(),
            "bias": [0.0, 0.0]});
        let p = program(v);
        let o = p.evaluate(&input).expect("input is valid");
        // z(urgent) - z(normal) = the weighted sum: recover it from the probabilities.
        [(o.scores[0] / o.scores[1]).ln()]
    };
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
    // scale: (x - 10) / 4, clipped to [-3, 3], rounded to f32.
    assert!(close(read("lines.z", json!({"lines": 17}))[0], 1.75));
    assert!(close(read("lines.z", json!({"lines": 1000}))[0], 3.0));
    assert!(close(read("lines.z", json!({"lines": -1000}))[0], -3.0));
    assert!(close(read("lines.z", json!({}))[0], 0.0), "default 10");
    // bins [5, 20]: bin 0 below 5, 1 in [5, 20), 2 from 20; weight of bin i is i + 1.
    assert!(close(read("lines.bins", json!({"lines": 4}))[0], 1.0));
    assert!(close(read("lines.bins", json!({"lines": 5}))[0], 2.0));
    assert!(close(read("lines.bins", json!({"lines": 20}))[0], 3.0));
    // one_hot ["low", "high"] + other: weights 1, 2, 3; missing = no entry.
    let prio = |p: Value| read("priority.cat", json!({"meta": {"priority": p}}))[0];
    assert!(close(prio(json!("low")), 1.0));
    assert!(close(prio(json!("high")), 2.0));
    assert!(close(prio(json!("p0")), 3.0));
    assert!(close(prio(Value::Null), 0.0));
    assert!(close(read("vip.cat", json!({"vip": true}))[0], 2.0));
    assert!(close(read("lines.missing", json!({}))[0], 1.0));
    assert!(close(read("lines.missing", json!({"lines": 3}))[0], 0.0));
    assert!(close(
        read("subject.missing", json!({"subject": ""}))[0],
        0.0
    ));
    assert!(close(
        read("subject.missing", json!({"subject": null}))[0],
        1.0
    ));
}

#[test]
fn scaled_numbers_are_rounded_to_f32() {
    let mut v = structured();
    v["features"][1] =
        json!({"name": "lines.z", "op": "scale", "input": "lines", "mean": 0, "std": 3});
    v["decide"] = json!({"op": "linear", "inputs": ["lines.z"], "classes": ["normal", "urgent"],
        "link": "sigmoid", "weights": [1.0], "bias": [0.0]});
    let p = program(v);
    let o = p.evaluate(&json!({"lines": 1})).unwrap();
    let z = f64::from((1.0f64 / 3.0) as f32);
    // Scores follow output.labels: "urgent" (the model's class 1) first.
    assert_eq!(o.scores[0], 1.0 / (1.0 + libm::exp(-z)));
    // Without `clip`, huge values saturate at f32's largest finite number.
    let o = p.evaluate(&json!({"lines": 1e300})).unwrap();
    assert_eq!(o.output, "urgent");
}

#[test]
fn structured_inputs_of_the_wrong_type_are_input_errors() {
    let p = program(structured());
    let e = p.evaluate(&json!({"meta": {"priority": 3}})).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert_eq!(
        e.to_string(),
        "input /meta/priority: expected a string or a boolean, got a number"
    );
    let e = p.evaluate(&json!({"lines": "12"})).unwrap_err();
    assert_eq!(
        e.to_string(),
        "input /lines: expected a number, got a string"
    );
    let v = set(structured(), "/inputs/2/required", json!(true));
    let e = program(v).evaluate(&json!({"lines": 1})).unwrap_err();
    assert_eq!(
        e.to_string(),
        "input /meta/priority: required field `priority` is missing"
    );
}

#[test]
fn malformed_structured_features_are_refused_with_their_json_path() {
    let cases = [
        (
            "/features/2/edges",
            json!([5, 5]),
            "features[2].edges[1]: edges must increase strictly: 5 follows 5",
        ),
        ("/features/2/edges", json!([]), "features[2].edges: must have 1 to 1024 edges"),
        (
            "/features/1/std",
            json!(0),
            "features[1].std: must be a positive finite number, got 0",
        ),
        (
            "/features/1/clip",
            json!(-1),
            "features[1].clip: must be a positive finite number, got -1",
        ),
        (
            "/features/1/input",
            json!("priority"),
            "features[1].input: input \"priority\" is a category; `scale` needs a number input",
        ),
        (
            "/features/4/input",
            json!("lines"),
            "features[4].input: input \"lines\" is a number; `one_hot` needs a category input",
        ),
        (
            "/features/4/values",
            json!(["a", "b", "a"]),
            "features[4].values[2]: duplicate value \"a\"",
        ),
        ("/features/3/input", json!("nope"), "features[3].input: no input named \"nope\""),
        (
            "/decide/rules/0/when/in/0",
            json!("yes"),
            "decide.rules[0].when.in[0]: \"yes\" is not one of the values of feature \"vip.cat\"",
        ),
        (
            "/decide/rules/0/when",
            json!({"feature": "vip.cat", "eq": 1}),
            "decide.rules[0].when.feature: feature \"vip.cat\" is a category; test it with `in`: {\"feature\": \"vip.cat\", \"in\": [values]}",
        ),
        (
            "/decide/rules/0/when",
            json!({"feature": "lines.num", "in": ["1"]}),
            "decide.rules[0].when.feature: feature \"lines.num\" is not a category (`in` needs a one_hot feature)",
        ),
        (
            "/decide/rules/0/when",
            json!({"feature": "lines.bins", "gt": 1}),
            "decide.rules[0].when.feature: feature \"lines.bins\" is a vector (n-grams or bins); conditions need a number-valued feature",
        ),
        (
            "/decide/rules/0/when",
            json!({"feature": "lines.num", "ge": 1, "below": 3}),
            "decide.rules[0].when.below: unknown comparison (expected gt, ge, lt, le, eq or ne)",
        ),
        (
            "/decide/rules/0/when",
            json!({"feature": "vip.cat", "in": ["true"], "eq": 1}),
            "decide.rules[0].when: `in` takes no other comparison beside `feature`",
        ),
        (
            "/inputs/2",
            json!({"name": "priority", "path": "/p", "type": "category", "default": 1}),
            "inputs[2].default: only number inputs take a default",
        ),
        (
            "/inputs/1",
            json!({"name": "lines", "path": "/lines", "type": "number", "max_bytes": 10}),
            "inputs[1]: max_bytes and on_oversize apply to text inputs only",
        ),
    ];
    for (pointer, value, want) in cases {
        assert_eq!(
            load_err(set(structured(), pointer, value)),
            want,
            "{pointer}"
        );
    }
}

#[test]
fn extraction_fields_normalise_numbers_dates_and_mapped_strings() {
    let v = json!({
        "format": "loopai.program/1", "task": "orders",
        "inputs": [{"name": "text", "path": "/text", "type": "text"}],
        "output": {"kind": "extract", "source": "text", "fields": [
            {"name": "total", "type": "number", "number_format": "auto", "group": "*",
             "pattern": "(?:[€$][ ]?([0-9][0-9.,]*[0-9])|([0-9][0-9.,]*[0-9])[ ]?(?:EUR|USD))",
             "required": false, "confidence_found": 0.9, "confidence_missing": 0.5},
            {"name": "currency", "pattern": "([€$]|EUR|USD)", "map": {"€": "EUR", "$": "USD"},
             "required": false},
            {"name": "date", "type": "date", "pattern": "([0-9]{1,2}\\.[0-9]{1,2}\\.[0-9]{4}|[A-Z][a-z]+ [0-9]{1,2}(?:th)?, [0-9]{4})",
             "formats": ["%d.%m.%Y", "%B %d, %Y"], "required": false},
            {"name": "qty", "type": "integer", "pattern": "([0-9]+) items?", "required": false},
            {"name": "last_ref", "pattern": "ref ([A-Z0-9]+)", "occurrence": -1,
             "fallbacks": [{"pattern": "REF-([0-9]+)"}], "required": false}
        ]}
    });
    let p = program(v);
    let o = p
        .evaluate(&json!({"text": "3 items, total €1.234,50 on 05.03.2026, ref A1 ref B2"}))
        .unwrap();
    assert_eq!(
        o.output,
        json!({"total": 1234.5, "currency": "EUR", "date": "2026-03-05", "qty": 3, "last_ref": "B2"})
    );
    assert_eq!(o.scores, vec![0.9, 1.0, 1.0, 1.0, 1.0]);
    assert!((o.confidence - 4.9 / 5.0).abs() < 1e-12);
    let o = p
        .evaluate(&json!({"text": "paid 12.50 USD on March 7th, 2026 (REF-77)"}))
        .unwrap();
    assert_eq!(
        o.output,
        json!({"total": 12.5, "currency": "USD", "date": "2026-03-07", "qty": null, "last_ref": "77"})
    );
    // A capture that does not normalise is skipped: the next match counts.
    let o = p
        .evaluate(&json!({"text": "on 31.02.2026, no: on 01.03.2026"}))
        .unwrap();
    assert_eq!(o.output["date"], "2026-03-01");
    assert_eq!(o.output["total"], Value::Null);
    assert_eq!(o.scores[0], 0.5);
}

#[test]
fn malformed_extraction_fields_are_refused_with_their_path() {
    let field = |f: Value| {
        json!({
            "format": "loopai.program/1", "task": "t",
            "inputs": [{"name": "text", "path": "/text", "type": "text"}],
            "output": {"kind": "extract", "source": "text", "fields": [
                {"name": "ok", "pattern": "x"}, f]}
        })
    };
    let cases = [
        (
            json!({"name": "d", "type": "date", "pattern": "(x)"}),
            "output.fields[1].formats: missing",
        ),
        (
            json!({"name": "d", "type": "date", "pattern": "(x)", "formats": ["%Y-%m-%q"]}),
            "output.fields[1].formats[0]: \"%Y-%m-%q\": unknown directive %q",
        ),
        (
            json!({"name": "n", "pattern": "(x)", "number_format": "auto"}),
            "output.fields[1].number_format: only allowed with \"type\": \"number\" or \"integer\"",
        ),
        (
            json!({"name": "n", "type": "number", "pattern": "(x)", "map": {}}),
            "output.fields[1].map: only allowed with \"type\": \"string\"",
        ),
        (
            json!({"name": "n", "pattern": "x", "group": "*"}),
            "output.fields[1].group: \"*\" needs a pattern with capture groups",
        ),
        (
            json!({"name": "n", "pattern": "(x)", "occurrence": 99}),
            "output.fields[1].occurrence: must be between -64 and 63",
        ),
        (
            json!({"name": "n", "pattern": "(x)", "fallbacks": [{"pattern": "("}]}),
            "output.fields[1].fallbacks[0].pattern: invalid regex",
        ),
        (
            json!({"name": "n", "pattern": "(x)", "confidence_found": 2}),
            "output.fields[1].confidence_found: must be between 0 and 1",
        ),
        (
            json!({"name": "ok", "pattern": "(x)"}),
            "output.fields[1].name: duplicate field",
        ),
    ];
    for (f, want) in cases {
        let e = Program::from_json(&serde_json::to_vec(&field(f)).unwrap()).unwrap_err();
        assert!(e.to_string().starts_with(want), "{e} (wanted {want})");
    }
}
