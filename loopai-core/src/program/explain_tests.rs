//! Explanations of every decision kind agree with evaluation and trace features back to
//! this input.

use serde_json::{json, Value};

use super::*;
use crate::program::ProgramLimits;

fn program(v: Value) -> Program {
    Program::from_value(&v, &ProgramLimits::default()).expect("program compiles")
}

/// Explains `input` and checks that the explanation agrees with `evaluate` exactly.
fn explain(p: &Program, input: Value) -> (Explanation, Value) {
    explain_k(p, input, DEFAULT_TOP_K)
}

fn explain_k(p: &Program, input: Value, top_k: usize) -> (Explanation, Value) {
    let outcome = p.evaluate(&input).expect("evaluates");
    let e = p
        .explain(&input, &ExplainOptions::default().with_top_k(top_k))
        .expect("explains");
    assert_eq!(e.output, outcome.output, "output of {input}");
    assert_eq!(
        e.confidence.to_bits(),
        outcome.confidence.to_bits(),
        "confidence of {input}"
    );
    assert_eq!(e.abstained, outcome.abstained, "abstained on {input}");
    assert_eq!(
        e.decided_by.as_deref(),
        outcome.decided_by.and_then(|id| p.decision_path(id)),
        "decided_by on {input}"
    );
    assert_eq!(e.abstention.is_some(), e.abstained);
    let json = serde_json::to_value(&e).expect("serializes");
    (e, json)
}

fn rules_program() -> Value {
    json!({
        "format": "loopai.program/1",
        "task": "t",
        "inputs": [{"name": "text", "path": "/text", "type": "text"}],
        "preprocess": [{"name": "clean", "from": "text", "steps": [{"op": "lowercase"}]}],
        "features": [
            {"name": "kw", "op": "keywords", "source": "clean", "terms": ["free", "prize", "claim now"], "whole_words": true},
            {"name": "money", "op": "regex", "source": "text", "pattern": "[£$€]\\s?\\d+", "mode": "count"},
            {"name": "len", "op": "stat", "source": "text", "stat": "chars"}
        ],
        "decide": {"op": "rules", "rules": [
            {"name": "money-and-keyword", "when": {"all": [{"feature": "kw", "ge": 1}, {"feature": "money", "gt": 0}]}, "then": "spam", "confidence": 0.99},
            {"when": {"any": [{"feature": "kw", "ge": 2}, {"not": {"feature": "len", "lt": 500}}]}, "then": "spam", "confidence": 0.8},
            {"when": {"feature": "len", "lt": 10}, "then": "ham", "confidence": 0.7}
        ]},
        "output": {"kind": "label", "labels": ["spam", "ham"], "abstain_below": 0.75}
    })
}

#[test]
fn rules_show_the_fired_rule_its_conditions_and_the_matches_behind_them() {
    let p = program(rules_program());
    let (e, j) = explain(&p, json!({"text": "Claim now: FREE £100 prize"}));
    assert_eq!(e.output, "spam");
    let d = &j["decision"];
    assert_eq!(d["op"], "rules");
    assert_eq!(d["path"], "decide");
    assert_eq!(d["rules_tried"], 1);
    assert_eq!(d["fired"]["index"], 0);
    assert_eq!(d["fired"]["path"], "decide.rules[0] (money-and-keyword)");
    assert_eq!(d["fired"]["then"], "spam");
    let when = &d["fired"]["when"];
    assert_eq!(when["test"], "all");
    assert_eq!(when["holds"], true);
    let kw = &when["conditions"][0];
    assert_eq!(
        (&kw["feature"], &kw["cmp"], &kw["threshold"], &kw["value"]),
        (&json!("kw"), &json!("ge"), &json!(1.0), &json!(3.0))
    );
    assert_eq!(kw["sources"], json!(["claim now", "free", "prize"]));
    assert_eq!(when["conditions"][1]["sources"], json!(["£100"]));
    assert_eq!(
        d["probabilities"],
        json!([{"label": "spam", "probability": 0.99}, {"label": "ham", "probability": 1.0 - 0.99}])
    );
    assert!(j.get("abstention").is_some_and(Value::is_null));

    // The second rule: `any` lists every branch with whether it held.
    let (_, j) = explain(
        &p,
        json!({"text": "free prize inside, nothing else to say"}),
    );
    let d = &j["decision"];
    assert_eq!(d["rules_tried"], 2);
    let any = &d["fired"]["when"];
    assert_eq!(any["test"], "any");
    assert_eq!(any["conditions"][0]["holds"], true);
    assert_eq!(any["conditions"][1]["test"], "not");
    assert_eq!(any["conditions"][1]["holds"], false);
    assert_eq!(any["conditions"][1]["condition"]["value"], 38.0);
    // Below `abstain_below`: the output stays, and the threshold is named.
    let (e, j) = explain(&p, json!({"text": "hi there"}));
    assert_eq!((e.output.as_str(), e.abstained), (Some("ham"), true));
    assert_eq!(
        j["abstention"],
        json!({"reason": "abstain_below", "confidence": 0.7, "threshold": 0.75})
    );
    // No rule matched: every rule was tried.
    let (e, j) = explain(&p, json!({"text": "a perfectly ordinary message"}));
    assert_eq!(e.output, Value::Null);
    assert_eq!(j["abstention"], json!({"reason": "no_decision"}));
    assert_eq!(j["decision"]["rules_tried"], 3);
    assert_eq!(j["decision"]["fired"], Value::Null);
    assert_eq!(
        j["decision"]["abstain"],
        json!({"reason": "no_rule_matched"})
    );
}

/// A softmax model over hashed word 1–2-grams (tf-idf-like weighting, l2) and a number.
fn linear_program(link: &str, min_confidence: f64) -> Value {
    let bits = 6;
    let dim = 1usize << bits;
    let classes = if link == "sigmoid" { 1 } else { 3 };
    let mut rng = fastrand::Rng::with_seed(11);
    let weights: Vec<f64> = (0..(dim + 1) * classes)
        .map(|_| (rng.f64() * 4.0 - 2.0).round() / 2.0)
        .collect();
    let (labels, model_classes, bias) = if link == "sigmoid" {
        (json!(["a", "b", "c"]), json!(["b", "c"]), json!([0.25]))
    } else {
        (
            json!(["a", "b", "c"]),
            json!(["a", "b", "c"]),
            json!([0.1, -0.2, 0.3]),
        )
    };
    json!({
        "format": "loopai.program/1",
        "task": "t",
        "inputs": [{"name": "text", "path": "/text", "type": "text"},
                   {"name": "n", "path": "/n", "type": "number", "required": false}],
        "features": [
            {"name": "words", "op": "word_ngrams", "source": "text", "n": [1, 2],
             "hash": {"bits": bits, "seed": 3}, "weighting": "sublinear", "normalize": "l2"},
            {"name": "n", "op": "number", "input": "n"}
        ],
        "decide": {"op": "linear", "inputs": ["words", "n"], "classes": model_classes,
                   "link": link, "weights": weights, "bias": bias, "temperature": 0.8,
                   "min_confidence": min_confidence},
        "output": {"kind": "label", "labels": labels}
    })
}

/// Checks a model node's per-class arithmetic: score = bias + listed + rest, and every
/// n-gram dimension is traced back to at least one n-gram of the input.
fn check_model(model: &Value, text: &str) {
    for class in model["classes"].as_array().expect("classes") {
        let listed: f64 = class["contributions"]
            .as_array()
            .expect("contributions")
            .iter()
            .map(|c| c["contribution"].as_f64().expect("a number"))
            .sum();
        let total =
            class["bias"].as_f64().unwrap() + listed + class["rest_contribution"].as_f64().unwrap();
        let score = class["score"].as_f64().unwrap();
        assert!((total - score).abs() < 1e-9, "{class}");
        let mut last = f64::INFINITY;
        for c in class["contributions"].as_array().unwrap() {
            let size = c["contribution"].as_f64().unwrap().abs();
            assert!(size <= last, "contributions are sorted by size");
            last = size;
            let product = c["value"].as_f64().unwrap() * c["weight"].as_f64().unwrap();
            assert!((product - c["contribution"].as_f64().unwrap()).abs() < 1e-12);
            if c["feature"] == "words" {
                let sources = c["sources"].as_array().unwrap();
                assert!(!sources.is_empty(), "{c}");
                for s in sources {
                    let s = s.as_str().unwrap();
                    // Each source n-gram hashes to the listed bucket.
                    let bucket = text::bucket(crate::program::ngram_hash(3, s), 6);
                    assert_eq!(bucket as u64, c["index"].as_u64().unwrap(), "{s}");
                    for w in s.split(' ') {
                        assert!(text.to_string().contains(w), "{w} in {text}");
                    }
                }
            }
        }
    }
}

#[test]
fn linear_softmax_lists_top_contributions_traced_to_the_input_ngrams() {
    let p = program(linear_program("softmax", 0.0));
    for (i, text) in [
        "win a free prize now",
        "free free free money",
        "the meeting is at noon tomorrow",
        "",
    ]
    .into_iter()
    .enumerate()
    {
        let input = json!({"text": text, "n": i as f64 - 1.5});
        let (e, j) = explain(&p, input.clone());
        let d = &j["decision"];
        assert_eq!(d["op"], "linear");
        assert_eq!(d["link"], "softmax");
        assert_eq!(d["temperature"], 0.8);
        assert_eq!(d["decided"], true);
        let scores = p.evaluate(&input).unwrap().scores;
        for (k, class) in d["classes"].as_array().unwrap().iter().enumerate() {
            assert_eq!(
                class["probability"].as_f64().unwrap().to_bits(),
                scores[k].to_bits()
            );
            assert_eq!(class["label"], ["a", "b", "c"][k]);
        }
        check_model(d, text);
        assert!(!e.abstained);
    }
    // `n` is a number-valued input: no index, and its value as it was given.
    let (_, j) = explain(&p, json!({"text": "", "n": 2.0}));
    let c = &j["decision"]["classes"][0]["contributions"];
    assert_eq!(c.as_array().unwrap().len(), 1);
    assert_eq!(
        (&c[0]["feature"], &c[0]["value"]),
        (&json!("n"), &json!(2.0))
    );
    assert!(c[0].get("index").is_none());
    // top_k cuts the list and sums the rest.
    let (_, j) = explain_k(&p, json!({"text": "win a free prize now", "n": 1}), 2);
    let class = &j["decision"]["classes"][1];
    assert_eq!(class["contributions"].as_array().unwrap().len(), 2);
    assert!(class["rest_count"].as_u64().unwrap() > 0);
    check_model(&j["decision"], "win a free prize now");
}

#[test]
fn linear_sigmoid_explains_both_classes_and_min_confidence_abstention() {
    let p = program(linear_program("sigmoid", 0.0));
    let (_, j) = explain(&p, json!({"text": "free prize", "n": 1}));
    let d = &j["decision"];
    assert_eq!(d["link"], "sigmoid");
    let (neg, pos) = (&d["classes"][0], &d["classes"][1]);
    assert_eq!((&neg["label"], &pos["label"]), (&json!("b"), &json!("c")));
    assert_eq!(
        neg["score"].as_f64().unwrap(),
        -pos["score"].as_f64().unwrap()
    );
    assert_eq!(neg["bias"], -0.25);
    check_model(d, "free prize");

    let p = program(linear_program("sigmoid", 0.999_999));
    let (e, j) = explain(&p, json!({"text": "free prize", "n": 0}));
    assert!(e.abstained);
    assert_eq!(j["abstention"], json!({"reason": "no_decision"}));
    let a = &j["decision"]["abstain"];
    assert_eq!(a["reason"], "min_confidence");
    assert_eq!(a["threshold"], 0.999_999);
    assert!(a["confidence"].as_f64().unwrap() < 0.999_999);
}

#[test]
fn naive_bayes_over_a_char_vocabulary_traces_dimensions_to_char_ngrams() {
    let vocab = ["fr", "re", "ee", " f", "e ", "pr", "iz"];
    let mut rng = fastrand::Rng::with_seed(5);
    let log_prob: Vec<f64> = (0..vocab.len() * 2)
        .map(|_| -1.0 - rng.f64() * 3.0)
        .collect();
    let p = program(json!({
        "format": "loopai.program/1", "task": "t",
        "inputs": [{"name": "text", "path": "/text", "type": "text"}],
        "features": [{"name": "chars", "op": "char_ngrams", "source": "text", "n": [2, 2],
                      "vocabulary": vocab, "within_words": true}],
        "decide": {"op": "naive_bayes", "inputs": ["chars"], "classes": ["spam", "ham"],
                   "class_log_prior": [-0.7, -0.69], "feature_log_prob": log_prob},
        "output": {"kind": "label", "labels": ["spam", "ham"]}
    }));
    let (_, j) = explain(&p, json!({"text": "free prize, freedom"}));
    let d = &j["decision"];
    assert_eq!(d["op"], "naive_bayes");
    assert_eq!(d["classes"][0]["bias"], -0.7);
    for class in d["classes"].as_array().unwrap() {
        for c in class["contributions"].as_array().unwrap() {
            let at = c["index"].as_u64().unwrap() as usize;
            // A vocabulary index names its n-gram exactly.
            assert_eq!(c["sources"], json!([vocab[at]]), "{c}");
        }
        let fr = class["contributions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["sources"] == json!(["fr"]))
            .expect("`fr` contributes");
        assert_eq!(fr["value"], 2.0, "`fr` occurs twice (count weighting)");
    }
}

#[test]
fn tree_lists_the_path_of_splits_and_a_min_confidence_abstention() {
    let tree = |min: f64| {
        program(json!({
            "format": "loopai.program/1", "task": "t",
            "inputs": [{"name": "amount", "path": "/amount", "type": "number"},
                       {"name": "text", "path": "/text", "type": "text"}],
            "features": [{"name": "amount", "op": "number", "input": "amount"},
                         {"name": "w", "op": "word_ngrams", "source": "text", "n": [1, 1], "vocabulary": ["urgent", "hi"]}],
            "decide": {"op": "tree", "inputs": ["amount", "w"], "classes": ["low", "high"],
                       "feature": [0, -1, 1, -1, -1], "threshold": [100, 0, 0.5, 0, 0],
                       "left": [1, 0, 3, 0, 0], "right": [2, 0, 4, 0, 0],
                       "value": [0, 0, 9, 1, 0, 0, 3, 2, 1, 9], "min_confidence": min},
            "output": {"kind": "label", "labels": ["low", "high"]}
        }))
    };
    let p = tree(0.0);
    let (e, j) = explain(&p, json!({"amount": 500, "text": "URGENT: urgent"}));
    assert_eq!(e.output, "high");
    let d = &j["decision"];
    assert_eq!(d["op"], "tree");
    assert_eq!(d["leaf"], 4);
    assert_eq!(
        d["splits"],
        json!([
            {"node": 0, "feature": "amount", "value": 500.0, "threshold": 100.0, "went": "right", "sources": []},
            {"node": 2, "feature": "w", "index": 0, "value": 1.0, "threshold": 0.5, "went": "right", "sources": ["urgent"]}
        ])
    );
    let (_, j) = explain(&p, json!({"amount": 5, "text": ""}));
    assert_eq!(j["decision"]["leaf"], 1);
    let p = tree(0.7);
    let (e, j) = explain(&p, json!({"amount": 500, "text": "hi"}));
    assert!(e.abstained);
    assert_eq!(
        j["decision"]["abstain"],
        json!({"reason": "min_confidence", "confidence": 0.6, "threshold": 0.7})
    );
}

#[test]
fn first_and_vote_show_their_sub_decisions() {
    let mut hybrid = linear_program("softmax", 0.0);
    let model = hybrid["decide"].take();
    hybrid["features"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "kw", "op": "keywords", "source": "text", "terms": ["refund"]}));
    hybrid["decide"] = json!({"op": "first", "steps": [
        {"op": "rules", "rules": [{"when": {"feature": "kw", "gt": 0}, "then": "a", "confidence": 0.9}]},
        model.clone()
    ]});
    let p = program(hybrid.clone());
    let (e, j) = explain(&p, json!({"text": "refund please"}));
    assert_eq!(e.decided_by.as_deref(), Some("decide.steps[0].rules[0]"));
    let steps = j["decision"]["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 1, "later steps are not evaluated");
    assert_eq!(steps[0]["fired"]["when"]["sources"], json!(["refund"]));
    let (e, j) = explain(&p, json!({"text": "where is my parcel"}));
    assert_eq!(e.decided_by.as_deref(), Some("decide.steps[1]"));
    let steps = j["decision"]["steps"].as_array().unwrap();
    assert_eq!(
        (
            steps.len(),
            &steps[0]["decided"],
            &steps[1]["op"],
            &steps[1]["path"]
        ),
        (
            2,
            &json!(false),
            &json!("linear"),
            &json!("decide.steps[1]")
        )
    );
    check_model(&steps[1], "where is my parcel");

    hybrid["decide"] = json!({"op": "vote", "min_confidence": 0.5, "members": [
        {"weight": 2.0, "decide": {"op": "rules", "rules": [{"when": {"feature": "kw", "gt": 0}, "then": "a", "confidence": 0.9}]}},
        {"weight": 1.0, "decide": model}
    ]});
    let p = program(hybrid);
    let (e, j) = explain(&p, json!({"text": "refund please"}));
    let d = &j["decision"];
    assert_eq!(d["op"], "vote");
    assert_eq!(e.decided_by.as_deref(), Some("decide"));
    let members = d["members"].as_array().unwrap();
    assert_eq!(members.len(), 2);
    assert_eq!(members[0]["weight"], 2.0);
    assert_eq!(members[0]["decision"]["path"], "decide.members[0].decide");
    assert_eq!(members[1]["decision"]["op"], "linear");
    // Only the model votes; it answers with less than 0.5 here or it does not.
    let (e, j) = explain(&p, json!({"text": "the", "n": 0}));
    let d = &j["decision"];
    assert_eq!(d["members"][0]["decision"]["decided"], false);
    if e.abstained {
        assert_eq!(d["abstain"]["reason"], "min_confidence");
        assert_eq!(d["abstain"]["threshold"], 0.5);
    } else {
        assert!(d.get("abstain").is_none());
    }
}

#[test]
fn structured_features_show_categories_and_one_hot_sources() {
    let p = program(json!({
        "format": "loopai.program/1", "task": "t",
        "inputs": [{"name": "country", "path": "/country", "type": "category", "required": false},
                   {"name": "age", "path": "/age", "type": "number", "required": false}],
        "features": [{"name": "c", "op": "one_hot", "input": "country", "values": ["fr", "de", "us"]},
                     {"name": "age_z", "op": "scale", "input": "age", "mean": 40, "std": 10},
                     {"name": "no_age", "op": "missing", "input": "age"}],
        "decide": {"op": "first", "steps": [
            {"op": "rules", "rules": [{"when": {"feature": "c", "in": ["us", "de"]}, "then": "x", "confidence": 0.9}]},
            {"op": "linear", "inputs": ["c", "age_z", "no_age"], "classes": ["x", "y"], "link": "sigmoid",
             "weights": [0.5, -0.5, 1.0, 0.0, 2.0, 3.0], "bias": [0.0]}
        ]},
        "output": {"kind": "label", "labels": ["x", "y"]}
    }));
    let (_, j) = explain(&p, json!({"country": "de"}));
    let when = &j["decision"]["steps"][0]["fired"]["when"];
    assert_eq!(
        when,
        &json!({"test": "in", "holds": true, "feature": "c", "values": ["de", "us"], "value": "de"})
    );
    let (_, j) = explain(&p, json!({"country": "fr", "age": 60}));
    let model = &j["decision"]["steps"][1];
    let contributions = &model["classes"][1]["contributions"];
    assert_eq!(contributions[0]["feature"], "age_z");
    assert_eq!(contributions[0]["value"], 2.0);
    assert_eq!(contributions[1]["feature"], "c");
    assert_eq!(contributions[1]["sources"], json!(["fr"]));
    // A missing value: the indicator contributes (3), the number reads as 0 (scaled: -4,
    // contributing -8), the category has no value.
    let (_, j) = explain(&p, json!({}));
    let model = &j["decision"]["steps"][1];
    assert_eq!(j["decision"]["steps"][0]["fired"], Value::Null);
    let features: Vec<&Value> = model["classes"][1]["contributions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["feature"])
        .collect();
    assert_eq!(features, [&json!("age_z"), &json!("no_age")]);
}

#[test]
fn extraction_names_the_pattern_and_where_it_matched() {
    let p = program(json!({
        "format": "loopai.program/1", "task": "t",
        "inputs": [{"name": "text", "path": "/text", "type": "text"}],
        "output": {"kind": "extract", "source": "text", "fields": [
            {"name": "amount", "type": "number", "pattern": "total:? (\\d+)",
             "fallbacks": [{"pattern": "(\\d+) EUR"}]},
            {"name": "ref", "type": "string", "pattern": "ref ([A-Z]+)", "required": false}
        ]}
    }));
    let (e, j) = explain(&p, json!({"text": "paid 42 EUR, ref ABC"}));
    assert!(!e.abstained);
    assert_eq!(
        j["decision"],
        json!({"op": "extract", "fields": [
            {"name": "amount", "found": true, "value": 42.0, "required": true, "confidence": 1.0,
             "pattern": 1, "matched": "42", "start": 5, "end": 7},
            {"name": "ref", "found": true, "value": "ABC", "required": false, "confidence": 1.0,
             "pattern": 0, "matched": "ABC", "start": 17, "end": 20}
        ]})
    );
    let (e, j) = explain(&p, json!({"text": "nothing here"}));
    assert!(e.abstained);
    assert_eq!(
        j["abstention"],
        json!({"reason": "missing_required", "fields": ["amount"]})
    );
    assert_eq!(j["decision"]["fields"][0]["found"], false);
}

#[test]
fn bad_input_is_refused_as_evaluation_refuses_it() {
    let p = program(rules_program());
    for input in [json!([1]), json!({"text": 3})] {
        let a = p.evaluate(&input).expect_err("refused").to_string();
        let b = p
            .explain(&input, &ExplainOptions::default())
            .expect_err("refused")
            .to_string();
        assert_eq!(a, b);
    }
}

#[test]
fn explanations_are_send_sync_and_serialize_the_same_twice() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Explanation>();
    assert_send_sync::<ExplainOptions>();
    let p = program(linear_program("softmax", 0.0));
    let input = json!({"text": "free free prize now now", "n": 3});
    let a = serde_json::to_string(&p.explain(&input, &ExplainOptions::default()).unwrap());
    let b = serde_json::to_string(&p.explain(&input, &ExplainOptions::default()).unwrap());
    assert_eq!(a.unwrap(), b.unwrap());
}
