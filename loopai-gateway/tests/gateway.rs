//! The gateway library end to end, without HTTP: shadow forwarding and labels, learning at
//! `learn.min_examples`, the calibrated threshold, local answers, drift back to
//! forwarding, bad input, and state restored on reopening.

use std::path::Path;
use std::time::Duration;

use loopai_core::{DeploymentConfig, ErrorKind};
use loopai_gateway::{
    add_task, summarize, ChatRequest, Decision, Gateway, Recorded, TaskState, UpstreamAnswer,
};
use loopai_synth::TaskSpec;

mod common;
use common::{messages, request, spec, WAIT};

/// Learning at 60 labels; `growth` large: one pass only, unless a test says otherwise.
fn config(extra: &str) -> DeploymentConfig {
    let extra = if extra.contains("learn:") {
        extra.to_string()
    } else {
        format!("learn: {{min_examples: 60, growth: 100, seed: 7}}\n{extra}")
    };
    DeploymentConfig::from_yaml_str(
        &format!(
            "gateway:\n  upstream: {{base_url: 'http://127.0.0.1:9/v1'}}\n  max_disagreement: 0.05\n  routes:\n    - {{task: spam, model: sms-model}}\nsampling: {{rate: 0}}\n{extra}"
        ),
        "test",
    )
    .unwrap()
}

/// Sends `text` through the gateway; a forwarded call gets `label` from the "upstream".
/// Returns whether the program answered.
fn call(gw: &Gateway, text: &str, label: &str) -> bool {
    match gw.decide(None, &request(text)).unwrap() {
        Decision::Local(_) => true,
        Decision::Forward(pending) => {
            assert_eq!(pending.task(), Some("spam"));
            let recorded =
                gw.record_upstream(pending, &UpstreamAnswer::new(Some(label), Some(40), 100.0));
            assert_eq!(recorded, Recorded::Label(label.to_string()));
            false
        }
        _ => unreachable!(),
    }
}

/// Like `call`, and a sampled local answer's validation gets `label` too. Returns whether
/// the upstream's answer was recorded (forwarded or validated).
fn call_validated(gw: &Gateway, text: &str, label: &str) -> bool {
    match gw.decide(None, &request(text)).unwrap() {
        Decision::Local(answer) => match answer.validate {
            Some(p) => {
                gw.record_upstream(p, &UpstreamAnswer::new(Some(label), None, 1.0));
                true
            }
            None => false,
        },
        Decision::Forward(p) => {
            gw.record_upstream(p, &UpstreamAnswer::new(Some(label), None, 1.0));
            true
        }
        _ => unreachable!(),
    }
}

fn setup(dir: &Path) {
    add_task(dir, &spec()).unwrap();
}

#[test]
fn shadow_forwards_and_records_labels_and_outside_answers() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let gw = Gateway::open(dir.path(), &config("")).unwrap();
    assert_eq!(gw.tasks(), ["spam"]);
    for (text, label) in messages(5, 1) {
        assert!(!call(&gw, &text, label));
    }
    // Normalised: quotes, case, a final period.
    let Decision::Forward(p) = gw.decide(Some("spam"), &request("x")).unwrap() else {
        panic!("shadow must forward")
    };
    assert_eq!(
        gw.record_upstream(p, &UpstreamAnswer::new(Some(" \"SPAM.\"\n"), None, 1.0)),
        Recorded::Label("spam".into())
    );
    let Decision::Forward(p) = gw.decide(None, &request("y")).unwrap() else {
        panic!()
    };
    assert_eq!(
        gw.record_upstream(
            p,
            &UpstreamAnswer::new(Some("I cannot tell."), Some(12), 1.0)
        ),
        Recorded::Outside
    );
    // A failed upstream call records nothing.
    let Decision::Forward(p) = gw.decide(None, &request("z")).unwrap() else {
        panic!()
    };
    gw.record_failure(p);
    // No task: forwarded untouched, counted.
    let other = ChatRequest::parse(
        br#"{"model": "other", "messages": [{"role": "user", "content": "hi"}]}"#,
    )
    .unwrap();
    let Decision::Forward(p) = gw.decide(None, &other).unwrap() else {
        panic!()
    };
    assert_eq!(p.task(), None);
    assert_eq!(
        gw.record_upstream(p, &UpstreamAnswer::new(Some("hello"), None, 1.0)),
        Recorded::Untasked
    );
    let stats = gw.stats();
    assert_eq!(stats.untasked_calls, 1);
    let t = &stats.tasks[0];
    assert_eq!(t.state, TaskState::Shadow);
    assert_eq!((t.calls, t.local, t.forwarded), (8, 0, 8));
    assert_eq!(
        (t.oracle_labels, t.outside_labels, t.upstream_errors),
        (6, 1, 1)
    );
    assert_eq!(t.upstream_tokens, 5 * 40 + 12);
    gw.flush(WAIT).unwrap();
    let day_files: Vec<_> = std::fs::read_dir(dir.path().join("datasets/spam/gateway"))
        .unwrap()
        .collect();
    assert_eq!(day_files.len(), 1);
    let text = std::fs::read_to_string(day_files[0].as_ref().unwrap().path()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 7, "the failed call is not logged");
    assert_eq!(lines[0]["source"], "oracle");
    assert_eq!(lines[0]["input"]["text"], messages(1, 1)[0].0);
    assert_eq!(lines[6]["label"], serde_json::Value::Null);
    assert_eq!(lines[6]["outside_labels"], true);
    gw.shutdown(WAIT).unwrap();

    // Reopened: the counters come back from the call log.
    let gw = Gateway::open(dir.path(), &config("")).unwrap();
    let t = &gw.stats().tasks[0];
    assert_eq!((t.calls, t.oracle_labels, t.outside_labels), (7, 6, 1));
    gw.shutdown(WAIT).unwrap();
    let offline = summarize(dir.path(), None).unwrap();
    assert_eq!(offline[0].oracle_labels, 6);
    assert_eq!(offline[0].state, TaskState::Shadow);
}

#[test]
fn bad_input_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let yaml = "  tasks:\n    spam:\n      input: {mode: json}\n";
    let mut c = config("");
    let with_json = DeploymentConfig::from_yaml_str(
        &format!("gateway:\n  upstream: {{base_url: 'http://127.0.0.1:9/v1'}}\n{yaml}"),
        "test",
    )
    .unwrap();
    c.gateway = with_json.gateway;
    let gw = Gateway::open(dir.path(), &c).unwrap();
    let err = gw.decide(Some("nope"), &request("x")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(
        err.to_string().contains("\"nope\" is not a gateway task"),
        "{err}"
    );
    let err = gw.decide(Some("spam"), &request("not json")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Schema);
    assert!(err.to_string().contains("is not JSON"), "{err}");
    assert_eq!(gw.stats().tasks[0].calls, 0, "refused calls are not calls");
    gw.shutdown(WAIT).unwrap();

    // A route to a task without a spec is a configuration error.
    let bad = DeploymentConfig::from_yaml_str(
        "gateway:\n  upstream: {base_url: 'http://127.0.0.1:9/v1'}\n  routes: [{task: ghost, model: m}]\n",
        "test",
    )
    .unwrap();
    let err = Gateway::open(dir.path(), &bad).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("gateway.routes[0].task"), "{err}");
    // An extraction spec is checked as `loopai synth` checks it: errors name the path.
    let extraction = TaskSpec::from_json(
        br#"{"name": "order", "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}}, "output_schema": {"type": "object", "properties": {"id": {"type": "boolean"}}}}"#,
    )
    .unwrap();
    let err = add_task(dir.path(), &extraction).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(
        err.to_string()
            .contains("spec.output_schema.properties.id.type"),
        "{err}"
    );
}

#[test]
fn learns_at_min_examples_then_answers_locally_within_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let gw = Gateway::open(dir.path(), &config("")).unwrap();
    let stream = messages(600, 42);
    // 59 labels: not yet.
    for (text, label) in &stream[..59] {
        call(&gw, text, label);
    }
    gw.wait_idle(WAIT).unwrap();
    assert_eq!(gw.stats().tasks[0].active_version, None);
    // The 60th starts the first learning pass in the background.
    call(&gw, &stream[59].0, stream[59].1);
    gw.wait_idle(WAIT).unwrap();
    let t = gw.stats().tasks[0].clone();
    assert_eq!(t.active_version, Some(1), "{t:?}");
    assert!(t.last_learn_error.is_none(), "{t:?}");
    // Calibrated at once on 60 cross-fitted pairs (serving if all agree: 95% upper bound
    // 0.049, within 5%).
    assert_eq!(t.calibration_pairs, 60, "{t:?}");
    assert_ne!(t.state, TaskState::Shadow, "{t:?}");
    // Forwarded calls calibrate the program (it runs on them; the oracle answers).
    let mut local = 0;
    for (text, label) in &stream[60..] {
        local += usize::from(call(&gw, text, label));
    }
    gw.wait_idle(WAIT).unwrap();
    let t = gw.stats().tasks[0].clone();
    assert_eq!(t.state, TaskState::Serving, "{t:?}");
    assert!(local > 100, "answered locally: {local}; {t:?}");
    assert!(t.disagreement_upper.unwrap() <= 0.05, "{t:?}");
    assert!(t.tokens_saved > 0);
    let Decision::Local(answer) = gw
        .decide(None, &request("win free prize cash the you"))
        .unwrap()
    else {
        panic!("a confident input must be answered locally")
    };
    assert_eq!(answer.content, "spam");
    assert!(answer.validate.is_none(), "sampling.rate is 0");

    gw.shutdown(WAIT).unwrap();
}

#[test]
fn sampled_local_answers_are_validated_and_disagreement_sends_the_task_back() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let gw = Gateway::open(dir.path(), &config("")).unwrap();
    for (text, label) in &messages(60, 3) {
        call(&gw, text, label);
    }
    gw.wait_idle(WAIT).unwrap();
    for (text, label) in &messages(300, 4) {
        call(&gw, text, label);
    }
    gw.wait_idle(WAIT).unwrap();
    assert_eq!(gw.stats().tasks[0].state, TaskState::Serving);
    gw.shutdown(WAIT).unwrap();

    // Reopened with every local answer sampled: the state comes back from the log, and
    // validations that disagree take the task back to forwarding.
    let mut every = config("");
    every.sampling.rate = 1.0;
    let gw = Gateway::open(dir.path(), &every).unwrap();
    assert_eq!(gw.stats().tasks[0].state, TaskState::Serving);
    let mut validated = 0;
    let first_rate = gw.stats().tasks[0].validation_rate;
    // The rate starts below 1: the bound already has more pairs above the threshold
    // than it needs (never below a fifth of sampling.rate).
    assert!((0.2..1.0).contains(&first_rate), "{first_rate}");
    for (text, label) in &messages(1000, 5) {
        if validated >= 40 {
            break;
        }
        match gw.decide(None, &request(text)).unwrap() {
            Decision::Local(answer) => {
                let Some(p) = answer.validate else { continue };
                let wrong = if answer.content == "spam" {
                    "ham"
                } else {
                    "spam"
                };
                gw.record_upstream(p, &UpstreamAnswer::new(Some(wrong), None, 1.0));
                validated += 1;
            }
            Decision::Forward(p) => {
                gw.record_upstream(p, &UpstreamAnswer::new(Some(label), None, 1.0));
            }
            _ => unreachable!(),
        }
    }
    gw.wait_idle(WAIT).unwrap();
    gw.recalibrate("spam");
    let t = gw.stats().tasks[0].clone();
    // Up to 40 disagreeing validations: the calibrator may send the task back to forwarding
    // before the 40th arrives (it re-estimates in the background), after which nothing is
    // answered locally any more. Either way every validation is counted and the task stops
    // serving.
    assert!((1..=40).contains(&validated), "{validated} {t:?}");
    assert_eq!(t.validations as usize, validated);
    assert_eq!(t.validation_disagreements as usize, validated);
    assert_ne!(t.state, TaskState::Serving, "{t:?}");
    gw.shutdown(WAIT).unwrap();
}

#[test]
fn learns_again_each_time_the_labels_grow_by_the_growth_share() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let gw = Gateway::open(
        dir.path(),
        &config("learn: {min_examples: 40, growth: 0.5, seed: 7}\n"),
    )
    .unwrap();
    let stream = messages(70, 11);
    for (text, label) in &stream[..59] {
        call(&gw, text, label);
        gw.wait_idle(WAIT).unwrap();
    }
    // Passes at 40 labels and at 60 (40 x 1.5); not yet at 59.
    assert_eq!(gw.stats().tasks[0].active_version, Some(1));
    call(&gw, &stream[59].0, stream[59].1);
    gw.wait_idle(WAIT).unwrap();
    let t = gw.stats().tasks[0].clone();
    let versions = loopai_core::ArtifactStore::open(dir.path(), "spam")
        .unwrap()
        .versions()
        .unwrap();
    assert_eq!(versions, [1, 2], "{t:?}");
    let report = gw.learn_now("spam").unwrap();
    assert_eq!(report.labels, 60);
    assert_eq!(report.version, 3);
    assert!(report.agreement.unwrap() > 0.8, "{report:?}");
    assert_eq!(
        report.cross_fitted, 60,
        "every oracle label is scored out of sample"
    );
    gw.shutdown(WAIT).unwrap();
}

#[test]
fn a_later_version_is_promoted_by_its_canary_against_the_upstream() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let mut every = config("");
    every.sampling.rate = 1.0;
    let gw = Gateway::open(dir.path(), &every).unwrap();
    let stream = messages(2000, 21);
    for (text, label) in &stream[..60] {
        call(&gw, text, label);
    }
    gw.wait_idle(WAIT).unwrap();
    assert_eq!(gw.stats().tasks[0].active_version, Some(1));
    // A second pass: v2 is installed but goes into canary, run in shadow.
    let report = gw.learn_now("spam").unwrap();
    assert_eq!(
        (report.version, report.activated, report.canary),
        (2, false, true)
    );
    let t = gw.stats().tasks[0].clone();
    assert_eq!(t.active_version, Some(1), "{t:?}");
    let canary = t.canary.expect("v2 is in canary");
    assert_eq!(
        (canary.version, canary.cross_fitted, canary.calls),
        (2, true, 0)
    );
    // Forwarded calls (and validations) compare both programs with the upstream; after
    // 100 such calls v2, as good as v1 on this stream, is promoted.
    let mut compared = 0;
    for (text, label) in &stream[60..] {
        if call_validated(&gw, text, label) {
            compared += 1;
        }
        if compared == 100 {
            break;
        }
    }
    assert_eq!(
        compared, 100,
        "the stream has enough forwarded or validated calls"
    );
    gw.wait_idle(WAIT).unwrap();
    let t = gw.stats().tasks[0].clone();
    let outcome = t.last_canary.clone().expect("a verdict");
    assert_eq!(outcome.version, 2);
    assert_eq!(outcome.calls, 100);
    assert!(
        outcome.candidate_agreed >= outcome.running_agreed,
        "{outcome:?}"
    );
    assert!(outcome.promoted, "{outcome:?}");
    assert_eq!(t.active_version, Some(2), "{t:?}");
    assert!(t.canary.is_none());
    // Its calibration starts from its cross-fitted pairs and the canary's.
    assert!(t.calibration_pairs >= 160, "{t:?}");
    gw.shutdown(WAIT).unwrap();
}

#[test]
fn a_candidate_worse_than_the_running_program_is_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let mut every = config("");
    every.sampling.rate = 1.0;
    let gw = Gateway::open(dir.path(), &every).unwrap();
    let stream = messages(4000, 22);
    for (text, label) in &stream[..60] {
        call(&gw, text, label);
    }
    gw.wait_idle(WAIT).unwrap();
    // The upstream swaps its labels for a while (forwarded calls and validations record
    // 200 swapped labels) and v2 learns that; then it is back to normal: on the canary's
    // calls v2 is worse than v1.
    let swap = |l: &str| if l == "spam" { "ham" } else { "spam" };
    let mut swapped = 0;
    let mut rest = stream[60..].iter();
    for (text, label) in rest.by_ref() {
        swapped += usize::from(call_validated(&gw, text, swap(label)));
        if swapped == 200 {
            break;
        }
    }
    assert_eq!(swapped, 200);
    gw.wait_idle(WAIT).unwrap();
    let report = gw.learn_now("spam").unwrap();
    assert!(report.canary, "{report:?}");
    let mut compared = 0;
    for (text, label) in rest {
        compared += usize::from(call_validated(&gw, text, label));
        if compared == 100 {
            break;
        }
    }
    assert_eq!(compared, 100);
    gw.wait_idle(WAIT).unwrap();
    let t = gw.stats().tasks[0].clone();
    let outcome = t.last_canary.clone().expect("a verdict");
    assert_eq!(outcome.version, report.version);
    assert!(!outcome.promoted, "{outcome:?}");
    assert!(
        outcome.candidate_agreed < outcome.running_agreed,
        "{outcome:?}"
    );
    assert_eq!(t.active_version, Some(1), "{t:?}");
    gw.shutdown(WAIT).unwrap();
}

#[test]
fn shutdown_returns_within_its_timeout_while_a_learning_pass_runs() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let gw = Gateway::open(dir.path(), &config("")).unwrap();
    for (text, label) in &messages(60, 23) {
        call(&gw, text, label);
    }
    // The 60th label queued a pass on the learner; shut down while it runs.
    let mut waited = 0;
    while !gw.stats().tasks[0].learning && waited < 1000 {
        std::thread::sleep(Duration::from_millis(1));
        waited += 1;
    }
    let started = std::time::Instant::now();
    gw.shutdown(Duration::from_millis(200)).unwrap();
    // Bounded by its timeout (plus scheduling slack), not by the synthesis.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // Nothing is installed once it has returned, whether or not the pass got that far.
    let before = loopai_core::ArtifactStore::open(dir.path(), "spam")
        .unwrap()
        .versions()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let after = loopai_core::ArtifactStore::open(dir.path(), "spam")
        .unwrap()
        .versions()
        .unwrap();
    assert_eq!(before, after);
    assert_eq!(
        gw.decide(None, &request("hello")).unwrap_err().kind(),
        ErrorKind::Closed
    );
}

#[test]
fn gateway_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Gateway>();
}

// ---------------------------------------------------------------------------------------
// Extraction tasks

/// The bound on an extraction pass (at `nice` 10, on a loaded machine, in a debug build).
const LEARN_WAIT: Duration = Duration::from_secs(600);

/// An order-desk extraction task: the order number and the amount (nullable), listed
/// with `order_id` first (the local answer keeps that order, not the names' order).
const ORDER_SPEC: &str = r#"{"name": "order", "description": "Order number and amount of a customer message",
  "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
  "output_schema": {"type": "object", "required": ["order_id"], "properties": {
    "order_id": {"type": "string"}, "amount": {"type": ["number", "null"]}}}}"#;

/// `extra` may set `sampling:` (default rate 0).
fn order_config(extra: &str) -> DeploymentConfig {
    let sampling = if extra.contains("sampling:") {
        ""
    } else {
        "sampling: {rate: 0}\n"
    };
    DeploymentConfig::from_yaml_str(
        &format!(
            "gateway:\n  upstream: {{base_url: 'http://127.0.0.1:9/v1'}}\n  max_disagreement: 0.05\n  routes:\n    - {{task: order, model: desk-model}}\n{sampling}{extra}"
        ),
        "test",
    )
    .unwrap()
}

/// A seeded stream of customer messages: an order number and (mostly) an amount embedded
/// in varied sentences, with the truth as the upstream would answer it.
fn orders(n: usize, seed: u64) -> Vec<(String, serde_json::Value)> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n)
        .map(|_| {
            let id = format!("ORD-{}", rng.u32(10_000..100_000));
            let cents = rng.u32(100..500_000);
            let amount = f64::from(cents) / 100.0;
            let (whole, frac) = (cents / 100, cents % 100);
            let money = match rng.u8(0..3) {
                0 => format!("${whole}.{frac:02}"),
                1 => format!("{whole}.{frac:02} USD"),
                _ => format!("USD {whole}.{frac:02}"),
            };
            let (text, amount) = match rng.u8(0..7) {
                0 => (
                    format!("Hi, my order {id} arrived damaged, I paid {money} for it."),
                    Some(amount),
                ),
                1 => (
                    format!("Refund request for order {id}: total {money}"),
                    Some(amount),
                ),
                2 => (
                    format!("Where is {id}? You charged me {money} yesterday."),
                    Some(amount),
                ),
                3 => (
                    format!("Order number {id} - amount due {money}, please confirm"),
                    Some(amount),
                ),
                4 => (
                    format!("I was billed {money} twice for {id}!"),
                    Some(amount),
                ),
                5 => (format!("Can you check the status of {id}? Thanks"), None),
                _ => (
                    format!("Hello. The parcel for {id} never came. It cost {money}."),
                    Some(amount),
                ),
            };
            (text, serde_json::json!({"order_id": id, "amount": amount}))
        })
        .collect()
}

fn order_request(text: &str) -> ChatRequest {
    let body = serde_json::json!({"model": "desk-model", "messages": [
        {"role": "system", "content": "Extract order_id and amount as JSON."},
        {"role": "user", "content": text}]});
    ChatRequest::parse(body.to_string().as_bytes()).unwrap()
}

fn add_order_task(dir: &Path) {
    let spec = loopai_gateway::add_task_json(dir, ORDER_SPEC.as_bytes()).unwrap();
    assert!(spec.is_extraction());
}

#[test]
fn an_extraction_task_records_json_answers_and_counts_the_others() {
    let dir = tempfile::tempdir().unwrap();
    add_order_task(dir.path());
    let listed = summarize(dir.path(), None).unwrap();
    assert_eq!(listed[0].task, "order");
    assert_eq!(listed[0].state, TaskState::Shadow);
    let gw = Gateway::open(dir.path(), &order_config("")).unwrap();
    let record = |text: &str, content: &str| {
        let Decision::Forward(p) = gw.decide(None, &order_request(text)).unwrap() else {
            panic!("shadow must forward")
        };
        assert_eq!(p.task(), Some("order"));
        gw.record_upstream(p, &UpstreamAnswer::new(Some(content), Some(50), 300.0))
    };
    // Recorded normalised: compact, keys in schema order, numbers as numbers, absent = null.
    let compact = r#"{"order_id":"ORD-12345","amount":1234.5}"#;
    for content in [
        r#"{"amount": 1234.5, "order_id": "ORD-12345"}"#,
        "```json\n{\"order_id\": \"ORD-12345\", \"amount\": \"1,234.50\"}\n```",
        "  ```\n{\"order_id\": \" ORD-12345 \", \"amount\": 1234.50}\n```  ",
    ] {
        assert_eq!(
            record("order ORD-12345 cost $1,234.50", content),
            Recorded::Label(compact.into()),
            "{content}"
        );
    }
    assert_eq!(
        record("where is ORD-1?", r#"{"order_id": "ORD-1"}"#),
        Recorded::Label(r#"{"order_id":"ORD-1","amount":null}"#.into())
    );
    // Outside the schema: counted, not learnt from.
    for content in [
        "The order is ORD-12345.",
        r#"{"order_id": "ORD-12345", "amount": 5, "currency": "USD"}"#,
        r#"{"amount": 5}"#,
        r#"{"order_id": "ORD-12345", "amount": "five dollars"}"#,
        r#"["ORD-12345", 5]"#,
    ] {
        assert_eq!(record("x", content), Recorded::Outside, "{content}");
    }
    let t = gw.stats().tasks[0].clone();
    assert_eq!((t.oracle_labels, t.outside_labels, t.calls), (4, 5, 9));
    assert_eq!(t.labels, 4);
    gw.flush(WAIT).unwrap();
    let dir_calls = dir.path().join("datasets/order/gateway");
    let file = std::fs::read_dir(&dir_calls)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(file.path())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines[1]["label"],
        serde_json::json!({"order_id": "ORD-12345", "amount": 1234.5})
    );
    assert_eq!(lines[5]["label"], serde_json::Value::Null);
    assert_eq!(lines[5]["outside_labels"], true);
    gw.shutdown(WAIT).unwrap();
    // Reopened: counted again from the log.
    let gw = Gateway::open(dir.path(), &order_config("")).unwrap();
    let t = gw.stats().tasks[0].clone();
    assert_eq!((t.oracle_labels, t.outside_labels), (4, 5));
    gw.shutdown(WAIT).unwrap();
}

#[test]
fn an_extraction_task_learns_from_the_upstream_then_answers_locally() {
    let dir = tempfile::tempdir().unwrap();
    add_order_task(dir.path());
    let gw = Gateway::open(
        dir.path(),
        &order_config("learn: {min_examples: 120, growth: 100, seed: 7}\nsampling: {rate: 0.2}\n"),
    )
    .unwrap();
    let stream = orders(500, 11);
    let mut local = 0;
    let mut checked = 0;
    let mut validated = 0;
    for (i, (text, truth)) in stream.iter().enumerate() {
        match gw.decide(None, &order_request(text)).unwrap() {
            Decision::Local(answer) => {
                local += 1;
                let got: serde_json::Value = serde_json::from_str(&answer.content).unwrap();
                assert_eq!(&got, truth, "{text}");
                // Compact, in schema order.
                assert!(
                    answer.content.starts_with("{\"order_id\":"),
                    "{}",
                    answer.content
                );
                checked += 1;
                // A sampled local answer is validated: the upstream's object, in another
                // key order, agrees with the program's.
                if let Some(p) = answer.validate {
                    let upstream = format!(
                        "{{\"amount\": {}, \"order_id\": \"{}\"}}",
                        truth["amount"],
                        truth["order_id"].as_str().unwrap()
                    );
                    gw.record_upstream(p, &UpstreamAnswer::new(Some(&upstream), None, 1.0));
                    validated += 1;
                }
            }
            Decision::Forward(p) => {
                // The stand-in upstream answers the truth as JSON, sometimes fenced.
                let content = if i % 3 == 0 {
                    format!("```json\n{truth}\n```")
                } else {
                    truth.to_string()
                };
                let r = gw.record_upstream(p, &UpstreamAnswer::new(Some(&content), Some(60), 1.0));
                assert!(matches!(r, Recorded::Label(_)), "{r:?}");
            }
            _ => unreachable!(),
        }
        if i == 120 {
            // The first pass runs at 120 labels: its program is activated as soon as it is
            // installed, and the forwarded calls calibrate it while the pass cross-fits.
            let deadline = std::time::Instant::now() + LEARN_WAIT;
            while gw.stats().tasks[0].active_version.is_none() {
                assert!(std::time::Instant::now() < deadline, "{:?}", gw.stats());
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    gw.wait_idle(LEARN_WAIT).unwrap();
    let t = gw.stats().tasks[0].clone();
    assert_eq!(t.active_version, Some(1), "{t:?}");
    assert!(t.last_learn_error.is_none(), "{t:?}");
    assert_eq!(t.state, TaskState::Serving, "{t:?}");
    assert!(local > 100, "answered locally: {local}; {t:?}");
    assert_eq!(checked, local);
    assert_eq!(t.outside_labels, 0);
    assert!(validated > 0, "{t:?}");
    assert_eq!(
        (t.validations, t.validation_disagreements),
        (validated, 0),
        "{t:?}"
    );
    eprintln!(
        "extraction stream: {local} of {} calls answered locally; {t:?}",
        stream.len()
    );
    // A message the program never saw.
    let Decision::Local(answer) = gw
        .decide(
            None,
            &order_request("Refund request for order ORD-55555: total $12.50"),
        )
        .unwrap()
    else {
        panic!("{:?}", gw.stats().tasks[0])
    };
    assert_eq!(answer.content, r#"{"order_id":"ORD-55555","amount":12.5}"#);
    gw.shutdown(WAIT).unwrap();
}
