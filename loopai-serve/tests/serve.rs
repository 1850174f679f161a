//! The HTTP API end to end: real servers on 127.0.0.1:0, a real HTTP client.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use loopai_core::{ArtifactStore, ErrorKind, NewArtifact};
use loopai_serve::{ApiKeys, Server, ServerHandle};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

fn program(task: &str) -> Vec<u8> {
    format!(
        r#"{{"format": "loopai.program/1", "task": "{task}",
          "inputs": [{{"name": "text", "path": "/text", "type": "text"}}],
          "features": [{{"name": "prize", "op": "keywords", "source": "text", "terms": ["prize", "free"], "case_insensitive": true}}],
          "decide": {{"op": "rules", "rules": [
            {{"when": {{"feature": "prize", "gt": 0}}, "then": "spam", "confidence": 0.95}},
            {{"when": {{"always": true}}, "then": "ham", "confidence": 0.8}}]}},
          "output": {{"kind": "label", "labels": ["spam", "ham"]}}}}"#
    )
    .into_bytes()
}

fn install(dir: &Path, task: &str) {
    ArtifactStore::open(dir, task)
        .unwrap()
        .install(&program(task), NewArtifact::default(), true)
        .unwrap();
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(WAIT))
        .build()
        .into()
}

struct Reply {
    status: u16,
    headers: HashMap<String, String>,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("{e}: {}", self.text))
    }

    /// The `{"error": {"kind", "message"}}` body: its kind, after checking the shape.
    fn error_kind(&self) -> String {
        let v = self.json();
        let error = v["error"].as_object().unwrap_or_else(|| panic!("{v}"));
        assert_eq!(error.len(), 2, "{v}");
        assert!(!error["message"].as_str().unwrap().is_empty(), "{v}");
        error["kind"].as_str().unwrap().to_string()
    }
}

fn reply(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
    let mut r = r.expect("HTTP exchange");
    let headers = r
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    Reply {
        status: r.status().as_u16(),
        headers,
        text: r.body_mut().read_to_string().unwrap(),
    }
}

fn post(server: &ServerHandle, path: &str, body: &str, key: Option<&str>) -> Reply {
    let mut req = agent()
        .post(format!("{}{path}", server.url()))
        .header("Content-Type", "application/json");
    if let Some(key) = key {
        req = req.header("Authorization", format!("Bearer {key}"));
    }
    reply(req.send(body))
}

fn get(server: &ServerHandle, path: &str) -> Reply {
    reply(agent().get(format!("{}{path}", server.url())).call())
}

fn single(dir: &Path) -> ServerHandle {
    install(dir, "spam");
    let server = Server::builder()
        .data_dir(dir)
        .task("spam")
        .port(0)
        .build()
        .unwrap()
        .spawn()
        .unwrap();
    server.wait_ready(WAIT).unwrap();
    server
}

/// Lines of the task's execution logs.
fn logged(dir: &Path, task: &str) -> Vec<Value> {
    let logs = dir.join("datasets").join(task).join("executions");
    let mut records = Vec::new();
    for entry in std::fs::read_dir(logs).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        records.extend(
            text.lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap()),
        );
    }
    records
}

#[test]
fn execute_answers_the_result_fields() {
    let dir = tempfile::tempdir().unwrap();
    let server = single(dir.path());
    let r = post(
        &server,
        "/execute",
        r#"{"input": {"text": "Claim your FREE prize"}}"#,
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.headers["content-type"], "application/json");
    let v = r.json();
    assert_eq!(v["output"], "spam");
    assert_eq!(v["confidence"], 0.95);
    assert_eq!(v["version"], 1);
    assert_eq!(v["status"], "success");
    // Sampling is a random draw: only its presence is certain.
    assert!(v["sampled"].is_boolean(), "{v}");
    assert!(v["latency_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(v["execution_id"].as_str().unwrap().len(), 36);
    // The central route serves the single task too.
    let r = post(
        &server,
        "/v1/execute/spam",
        r#"{"input": {"text": "see you"}}"#,
        None,
    );
    assert_eq!(r.json()["output"], "ham");
}

#[test]
fn batch_answers_one_item_per_input_with_errors_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let server = single(dir.path());
    let r = post(
        &server,
        "/execute/batch",
        r#"{"inputs": [{"text": "free prize"}, {"text": 5}, {"text": "lunch?"}]}"#,
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["output"], "spam");
    assert_eq!(results[1]["error"]["kind"], "invalid_input");
    assert!(results[1]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("/text"));
    assert_eq!(results[2]["output"], "ham");

    // Larger batches run on the blocking pool; same answers.
    let inputs: Vec<Value> = (0..40)
        .map(|i| json!({"text": format!("prize {i}")}))
        .collect();
    let r = post(
        &server,
        "/execute/batch",
        &json!({ "inputs": inputs }).to_string(),
        None,
    );
    let v = r.json();
    assert_eq!(v["results"].as_array().unwrap().len(), 40);
    assert!(v["results"]
        .as_array()
        .unwrap()
        .iter()
        .all(|x| x["output"] == "spam"));
}

#[test]
fn health_and_ready_describe_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = single(dir.path());
    let r = get(&server, "/ready");
    assert_eq!(
        (r.status, r.json()["status"].clone()),
        (200, json!("ready"))
    );
    post(&server, "/execute", r#"{"input": {"text": "hi"}}"#, None);
    let r = get(&server, "/health");
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["task"], "spam");
    assert_eq!(v["active_version"], 1);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["executions"], 1);
    assert!(v["dataset"]["accepted"].as_u64().is_some(), "{v}");
    assert_eq!(v["telemetry"], Value::Null);
}

/// Polls `GET path` every 20 ms, for at most 30 s, until `done` holds.
fn poll_until(
    server: &ServerHandle,
    path: &str,
    what: &str,
    done: impl Fn(&Reply) -> bool,
) -> Reply {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let r = get(server, path);
        if done(&r) {
            return r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never {what}: {}",
            r.text
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Makes the task's execution logs impossible to open: a file where their directory was
/// (works as root too, unlike permissions). Returns the function that repairs it.
fn break_the_log(dir: &Path) -> impl Fn() {
    let logs = dir.join("datasets/spam/executions");
    std::fs::remove_dir_all(&logs).unwrap();
    std::fs::write(&logs, b"not a directory").unwrap();
    move || {
        std::fs::remove_file(&logs).unwrap();
        std::fs::create_dir(&logs).unwrap();
    }
}

#[test]
fn ready_is_503_while_the_log_cannot_be_written_and_health_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let server = single(dir.path());
    assert_eq!(get(&server, "/ready").status, 200);
    let repair = break_the_log(dir.path());
    // Executions still answer; their records wait in memory.
    let r = post(&server, "/execute", r#"{"input": {"text": "hi"}}"#, None);
    assert_eq!(r.status, 200, "{}", r.text);
    let r = poll_until(&server, "/ready", "503", |r| r.status == 503);
    let v = r.json();
    assert_eq!(v["status"], "log_unwritable", "{v}");
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .starts_with("task spam: the execution log cannot be written: "),
        "{v}"
    );
    let v = get(&server, "/health").json();
    assert_eq!(
        (v["status"].clone(), v["ready"].clone()),
        (json!("degraded"), json!(false))
    );
    assert!(
        v["log_unwritable"]
            .as_str()
            .unwrap()
            .contains("datasets/spam/executions"),
        "{v}"
    );
    let m = parse_prometheus(&get(&server, "/metrics").text);
    assert_eq!(m.get("loopai_ready"), Some(&0.0));
    // Once the disk is repaired, the kept record is written and the replica is ready.
    repair();
    poll_until(&server, "/ready", "200 again", |r| r.status == 200);
    let v = get(&server, "/health").json();
    assert_eq!(
        (v["status"].clone(), v["ready"].clone()),
        (json!("ok"), json!(true))
    );
    assert_eq!(v["log_unwritable"], Value::Null);
    let mut server = server;
    server.shutdown(WAIT).unwrap();
    assert_eq!(logged(dir.path(), "spam").len(), 1);
}

#[test]
fn ready_can_ignore_the_log() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "spam");
    let server = Server::builder()
        .data_dir(dir.path())
        .task("spam")
        .port(0)
        .ready_requires_log(false)
        .build()
        .unwrap()
        .spawn()
        .unwrap();
    server.wait_ready(WAIT).unwrap();
    let _repair = break_the_log(dir.path());
    post(&server, "/execute", r#"{"input": {"text": "hi"}}"#, None);
    let v = poll_until(&server, "/health", "degraded", |r| {
        r.json()["status"] == "degraded"
    })
    .json();
    assert_eq!(v["ready"], true);
    assert!(v["log_unwritable"].is_string(), "{v}");
    assert_eq!(get(&server, "/ready").status, 200);
}

/// Posts `/execute` with varied inputs until `stop`, at most 20 000 times; returns every
/// (HTTP status, version) seen.
fn request_loop(
    url: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seen: std::sync::Arc<std::sync::Mutex<Vec<(u16, u64)>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let agent = agent();
        for i in 0..20_000 {
            if stop.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            let body = json!({"input": {"text": format!("hello {i}")}}).to_string();
            let r = reply(
                agent
                    .post(format!("{url}/execute"))
                    .header("Content-Type", "application/json")
                    .send(&body),
            );
            let version = if r.status == 200 {
                r.json()["version"].as_u64().unwrap_or(0)
            } else {
                0
            };
            seen.lock().unwrap().push((r.status, version));
        }
    })
}

#[test]
fn a_running_server_follows_activate_rollback_and_promote_from_other_processes() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "spam");
    let v2 = String::from_utf8(program("spam"))
        .unwrap()
        .replace("\"confidence\": 0.8", "\"confidence\": 0.7");
    let store = ArtifactStore::open(dir.path(), "spam").unwrap();
    store
        .install(v2.as_bytes(), NewArtifact::default(), false)
        .unwrap();
    let mut server = Server::builder()
        .data_dir(dir.path())
        .task("spam")
        .port(0)
        .follow_interval(Duration::from_millis(100))
        .build()
        .unwrap()
        .spawn()
        .unwrap();
    server.wait_ready(WAIT).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let client = request_loop(server.url(), stop.clone(), seen.clone());
    let wait_for = |what: &str, version: u64| {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let at = seen.lock().unwrap().len();
            std::thread::sleep(Duration::from_millis(50));
            if seen.lock().unwrap()[at..]
                .iter()
                .any(|&(_, v)| v == version)
            {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "never served {what}");
        }
    };
    wait_for("v1", 1);
    // `loopai artifacts activate 2`, as another process does it.
    store.promote(Some(2)).unwrap();
    wait_for("v2 after activate", 2);
    assert_eq!(get(&server, "/health").json()["active_version"], 2);
    // `loopai artifacts rollback`.
    assert_eq!(store.abort_rollout("test").unwrap(), None);
    assert_eq!(store.rollback().unwrap(), 1);
    wait_for("v1 after rollback", 1);
    // `loopai artifacts promote 2` (no rollout in progress: activates v2).
    assert_eq!(store.promote(Some(2)).unwrap(), 2);
    wait_for("v2 after promote", 2);
    std::thread::sleep(Duration::from_millis(300));
    let at = seen.lock().unwrap().len();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    client.join().unwrap();
    let seen = seen.lock().unwrap();
    assert!(seen[at..].iter().all(|&(_, v)| v == 2), "v1 still served");
    let failed = seen.iter().filter(|&&(status, _)| status != 200).count();
    eprintln!(
        "{} requests across the switches, {failed} failed",
        seen.len()
    );
    assert_eq!(failed, 0);
    server.shutdown(WAIT).unwrap();
}

#[test]
fn a_task_that_cannot_load_keeps_the_server_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "other");
    let server = Server::builder()
        .data_dir(dir.path())
        .task("spam")
        .port(0)
        .build()
        .unwrap()
        .spawn()
        .unwrap();
    let err = server.wait_ready(WAIT).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Artifact, "{err}");
    assert!(err.to_string().contains("no active program"), "{err}");
    let r = get(&server, "/ready");
    assert_eq!(
        (r.status, r.json()["status"].clone()),
        (503, json!("failed"))
    );
    let r = get(&server, "/health");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"]["kind"], "artifact");
    let r = post(&server, "/execute", r#"{"input": {"text": "hi"}}"#, None);
    assert_eq!((r.status, r.error_kind().as_str()), (503, "not_ready"));
}

/// Parses the Prometheus text format strictly enough to catch malformed output: every
/// sample belongs to a family declared by `# TYPE`, and every value is a number.
fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "family twice: {name}"
            );
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(
            !line.is_empty() && !line.starts_with('#'),
            "stray line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value of {line:?}")),
        };
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|k| k == "histogram"))
            })
            .unwrap_or(name);
        assert!(
            types.contains_key(family),
            "sample before its # TYPE: {line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
            }
        }
        assert!(
            samples.insert(series.to_string(), value).is_none(),
            "series twice: {series}"
        );
    }
    samples
}

#[test]
fn metrics_count_executions_in_prometheus_text() {
    let dir = tempfile::tempdir().unwrap();
    let server = single(dir.path());
    let mut sampled = 0;
    for text in ["free prize", "hello", "prize!"] {
        let body = json!({"input": {"text": text}}).to_string();
        let r = post(&server, "/execute", &body, None);
        assert_eq!(r.status, 200);
        sampled += u8::from(r.json()["sampled"] == true);
    }
    assert_eq!(
        post(&server, "/execute", r#"{"input": {"text": 1}}"#, None).status,
        422
    );
    assert_eq!(post(&server, "/execute", r#"{"input": "#, None).status, 400);
    let r = get(&server, "/metrics");
    assert_eq!(r.status, 200);
    assert!(
        r.headers["content-type"].starts_with("text/plain; version=0.0.4"),
        "{:?}",
        r.headers
    );
    let m = parse_prometheus(&r.text);
    let at = |series: &str| {
        *m.get(series)
            .unwrap_or_else(|| panic!("no {series} in\n{}", r.text))
    };
    assert_eq!(
        at(r#"loopai_executions_total{task="spam",version="1",status="success"}"#),
        3.0
    );
    assert_eq!(
        at(r#"loopai_executions_total{task="spam",version="1",status="error"}"#),
        1.0
    );
    assert_eq!(
        at(r#"loopai_execution_errors_total{task="spam",kind="invalid_input"}"#),
        1.0
    );
    assert_eq!(
        at(r#"loopai_execution_latency_seconds_count{task="spam"}"#),
        3.0
    );
    assert_eq!(
        at(r#"loopai_execution_latency_seconds_bucket{task="spam",le="+Inf"}"#),
        3.0
    );
    assert_eq!(
        at(r#"loopai_request_duration_seconds_count{task="spam"}"#),
        4.0
    );
    assert_eq!(
        at(r#"loopai_http_requests_total{route="execute",code="200"}"#),
        3.0
    );
    assert_eq!(
        at(r#"loopai_http_requests_total{route="execute",code="422"}"#),
        1.0
    );
    assert_eq!(
        at(r#"loopai_http_requests_total{route="execute",code="400"}"#),
        1.0
    );
    assert_eq!(at(r#"loopai_active_version{task="spam"}"#), 1.0);
    assert_eq!(at("loopai_ready"), 1.0);
    assert_eq!(
        at(r#"loopai_executions_sampled_total{task="spam"}"#),
        f64::from(sampled)
    );
    // Four executions were logged (three results, one failure); the writer may lag.
    let accepted = at(r#"loopai_dataset_records_accepted_total{task="spam"}"#);
    assert_eq!(accepted, 4.0);
    assert!(m.contains_key(r#"loopai_dataset_pending_records{task="spam"}"#));
    // Telemetry is off: no telemetry family.
    assert!(!r.text.contains("loopai_telemetry_"), "{}", r.text);
    // This scrape itself is counted by the next one.
    let m = parse_prometheus(&get(&server, "/metrics").text);
    assert_eq!(
        m[r#"loopai_http_requests_total{route="metrics",code="200"}"#],
        1.0
    );
}

#[test]
fn bad_requests_get_json_error_bodies() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "spam");
    let server = Server::builder()
        .data_dir(dir.path())
        .task("spam")
        .port(0)
        .max_body_bytes(100)
        .max_batch(2)
        .build()
        .unwrap()
        .spawn()
        .unwrap();
    server.wait_ready(WAIT).unwrap();
    let cases: [(&str, &str, u16, &str); 7] = [
        ("/execute", "not json", 400, "invalid_request"),
        ("/execute", r#"{"inputs": {}}"#, 400, "invalid_request"),
        ("/execute", r#"{"input": [1]}"#, 422, "invalid_input"),
        ("/execute", r#"{"input": {}}"#, 422, "invalid_input"),
        (
            "/execute/batch",
            r#"{"inputs": {}}"#,
            400,
            "invalid_request",
        ),
        (
            "/execute/batch",
            r#"{"inputs": [{}, {}, {}]}"#,
            413,
            "payload_too_large",
        ),
        ("/v1/execute/nope", r#"{"input": {}}"#, 404, "not_found"),
    ];
    for (path, body, status, kind) in cases {
        let r = post(&server, path, body, None);
        assert_eq!(
            (r.status, r.error_kind().as_str()),
            (status, kind),
            "{path} {body}: {}",
            r.text
        );
    }
    let big = json!({"input": {"text": "x".repeat(200)}}).to_string();
    let r = post(&server, "/execute", &big, None);
    assert_eq!(
        (r.status, r.error_kind().as_str()),
        (413, "payload_too_large")
    );
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("100 bytes"));

    let r = get(&server, "/nowhere");
    assert_eq!((r.status, r.error_kind().as_str()), (404, "not_found"));
    let r = get(&server, "/execute");
    assert_eq!(
        (r.status, r.error_kind().as_str()),
        (405, "method_not_allowed")
    );
    let r = reply(
        agent()
            .post(format!("{}/execute", server.url()))
            .header("Content-Type", "text/plain")
            .send("{}"),
    );
    assert_eq!(
        (r.status, r.error_kind().as_str()),
        (415, "unsupported_media_type")
    );
}

const KEYS: &str = r#"
# the operator may run everything; the checkout service only task "a"
{"key": "sk_ops_0123456789abcdef", "name": "ops"}
{"key": "sk_checkout_0123456789", "name": "checkout", "tasks": ["a"]}
"#;

fn central(dir: &Path) -> ServerHandle {
    install(dir, "a");
    install(dir, "b");
    let keys_file = dir.join("keys.jsonl");
    std::fs::write(&keys_file, KEYS).unwrap();
    let server = Server::builder()
        .data_dir(dir)
        .all_tasks()
        .api_keys_file(&keys_file)
        .port(0)
        .build()
        .unwrap()
        .spawn()
        .unwrap();
    server.wait_ready(WAIT).unwrap();
    server
}

#[test]
fn central_mode_routes_by_task_and_checks_keys() {
    let dir = tempfile::tempdir().unwrap();
    let server = central(dir.path());
    let body = r#"{"input": {"text": "free prize"}}"#;
    let ops = Some("sk_ops_0123456789abcdef");
    let checkout = Some("sk_checkout_0123456789");

    let r = post(&server, "/v1/execute/b", body, ops);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["output"], "spam");
    assert_eq!(post(&server, "/v1/execute/a", body, checkout).status, 200);
    let r = post(
        &server,
        "/v1/execute/a/batch",
        r#"{"inputs": [{"text": "hi"}]}"#,
        checkout,
    );
    assert_eq!(r.json()["results"][0]["output"], "ham");

    let r = post(&server, "/v1/execute/a", body, None);
    assert_eq!((r.status, r.error_kind().as_str()), (401, "unauthorized"));
    assert_eq!(r.headers["www-authenticate"], "Bearer");
    let r = post(
        &server,
        "/v1/execute/a",
        body,
        Some("sk_unknown_0123456789"),
    );
    assert_eq!((r.status, r.error_kind().as_str()), (401, "unauthorized"));
    let r = reply(
        agent()
            .post(format!("{}/v1/execute/a", server.url()))
            .header("Authorization", "Basic b3BzOnNlY3JldA==")
            .send(body),
    );
    assert_eq!(r.status, 401);
    let r = post(&server, "/v1/execute/b", body, checkout);
    assert_eq!((r.status, r.error_kind().as_str()), (403, "forbidden"));
    assert!(r.text.contains("checkout"), "{}", r.text);
    // A key scoped to other tasks learns nothing about which tasks exist.
    let r = post(&server, "/v1/execute/zzz", body, checkout);
    assert_eq!(r.status, 403);
    let r = post(&server, "/v1/execute/zzz", body, ops);
    assert_eq!((r.status, r.error_kind().as_str()), (404, "not_found"));
    // No single-task routes in central mode.
    let r = post(&server, "/execute", body, ops);
    assert_eq!(r.status, 404);

    let v = get(&server, "/health").json();
    assert_eq!(v["status"], "ok");
    let tasks: Vec<&str> = v["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task"].as_str().unwrap())
        .collect();
    assert_eq!(tasks, ["a", "b"]);
    let m = parse_prometheus(&get(&server, "/metrics").text);
    // Task a: one execution and a batch of one.
    assert_eq!(
        m[r#"loopai_executions_total{task="a",version="1",status="success"}"#],
        2.0
    );
    assert_eq!(
        m[r#"loopai_executions_total{task="a",version="1",status="abstain"}"#],
        0.0
    );
    assert_eq!(
        m[r#"loopai_executions_total{task="b",version="1",status="success"}"#],
        1.0
    );
    assert_eq!(
        m[r#"loopai_http_requests_total{route="execute",code="401"}"#],
        3.0
    );
}

#[test]
fn builder_refuses_bad_options() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "spam");
    let err = |b: loopai_serve::ServerBuilder| b.build().unwrap_err().to_string();
    assert!(err(Server::builder().data_dir(dir.path())).starts_with("tasks: "));
    assert!(err(Server::builder().task("spam")).starts_with("data_dir: required"));
    assert!(err(Server::builder()
        .data_dir(dir.path())
        .task("a")
        .tasks(["b"]))
    .contains("only one of"));
    assert!(err(Server::builder().data_dir(dir.path()).tasks(["spam"]))
        .contains("central mode (several tasks) requires API keys"));
    assert!(err(Server::builder()
        .data_dir(dir.path())
        .tasks(["spam", "spam"]))
    .contains("listed twice"));
    assert!(err(Server::builder()
        .data_dir(dir.path())
        .task("spam")
        .max_body_bytes(0))
    .starts_with("max_body_bytes"));
    let empty = tempfile::tempdir().unwrap();
    std::fs::create_dir(empty.path().join("artifacts")).unwrap();
    let keys = ApiKeys::parse(r#"{"key": "sk_0123456789abcdef"}"#, "k").unwrap();
    assert!(err(Server::builder()
        .data_dir(empty.path())
        .all_tasks()
        .api_keys(keys))
    .contains("no task in"));
}

#[test]
fn shutdown_drains_and_flushes_the_execution_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = single(dir.path());
    for i in 0..25 {
        let r = post(
            &server,
            "/execute",
            &json!({"input": {"text": format!("msg {i}")}}).to_string(),
            None,
        );
        assert_eq!(r.status, 200);
    }
    let r = post(
        &server,
        "/execute/batch",
        r#"{"inputs": [{"text": "a"}, {"text": "b"}]}"#,
        None,
    );
    assert_eq!(r.status, 200);
    let runtime = server.runtime("spam").unwrap();
    server.shutdown(WAIT).unwrap();
    let records = logged(dir.path(), "spam");
    assert_eq!(records.len(), 27);
    assert!(records.iter().any(|r| r["input"]["text"] == "msg 24"));
    // The runtime is closed, and so is the listener.
    assert_eq!(
        runtime
            .execute(&json!({"text": "late"}))
            .unwrap_err()
            .kind(),
        ErrorKind::Closed
    );
    assert!(agent()
        .get(format!("{}/health", server.url()))
        .call()
        .is_err());
    // Shutting down again does nothing.
    server.shutdown(WAIT).unwrap();
}

#[test]
fn durable_mode_executes_on_the_blocking_pool() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "spam");
    let config = dir.path().join("deployment.yaml");
    std::fs::write(&config, "storage:\n  durability: durable\n").unwrap();
    let mut server = Server::builder()
        .data_dir(dir.path())
        .config_file(&config)
        .task("spam")
        .port(0)
        .build()
        .unwrap()
        .spawn()
        .unwrap();
    server.wait_ready(WAIT).unwrap();
    let r = post(&server, "/execute", r#"{"input": {"text": "free"}}"#, None);
    assert_eq!(r.json()["output"], "spam");
    // Durable: on disk before the answer, without a flush.
    assert_eq!(logged(dir.path(), "spam").len(), 1);
    server.shutdown(WAIT).unwrap();
}

#[test]
fn a_runtime_built_by_the_caller_is_served_and_shut_down() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "spam");
    let runtime = loopai_core::Runtime::builder()
        .data_dir(dir.path())
        .task("spam")
        .build()
        .unwrap();
    let mut server = Server::builder()
        .runtime(runtime.clone())
        .port(0)
        .build()
        .unwrap()
        .spawn()
        .unwrap();
    server.wait_ready(WAIT).unwrap();
    assert_eq!(
        post(&server, "/execute", r#"{"input": {"text": "x"}}"#, None).status,
        200
    );
    server.shutdown(WAIT).unwrap();
    assert_eq!(
        runtime.execute(&json!({"text": "x"})).unwrap_err().kind(),
        ErrorKind::Closed
    );
}

/// deploy/kubernetes.yaml embeds a deployment.yaml and a keys file: the first must be
/// valid for the runtime, the second must be refused until a real key replaces the
/// placeholder (so a copy-paste never runs with a known key).
#[test]
fn deploy_manifest_config_is_valid_and_its_placeholder_key_is_refused() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let docs: Vec<serde_yaml_ng::Value> = text
        .split("\n---\n")
        .map(|d| serde_yaml_ng::from_str(d).unwrap())
        .collect();
    let find = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"].as_str() == Some(kind))
            .unwrap_or_else(|| panic!("no {kind}"))
    };
    let config = find("ConfigMap")["data"]["deployment.yaml"]
        .as_str()
        .unwrap();
    let parsed = loopai_core::DeploymentConfig::from_yaml_str(config, "ConfigMap loopai-config");
    assert!(parsed.is_ok(), "{parsed:?}");
    let keys = find("Secret")["stringData"]["api-keys.jsonl"]
        .as_str()
        .unwrap();
    let err = ApiKeys::parse(keys, "api-keys.jsonl").unwrap_err();
    assert!(
        err.to_string().contains("sha256: expected 64 hex digits"),
        "{err}"
    );
}

#[test]
fn metrics_report_validation_against_the_oracle() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "spam");
    let config = dir.path().join("deployment.yaml");
    std::fs::write(&config, "sampling:\n  strategy: random\n  rate: 1\n").unwrap();
    // The oracle says spam to everything: it agrees with the program on the prize texts.
    let oracle =
        loopai_core::FnOracle::shared(|_| Ok(loopai_core::OracleAnswer::new(json!("spam"))));
    let runtime = loopai_core::Runtime::builder()
        .data_dir(dir.path())
        .task("spam")
        .config_file(&config)
        .oracle(oracle)
        .build()
        .unwrap();
    let mut server = Server::builder()
        .runtime(runtime.clone())
        .port(0)
        .build()
        .unwrap()
        .spawn()
        .unwrap();
    server.wait_ready(WAIT).unwrap();
    for text in ["a prize", "free prize", "see you", "lunch"] {
        let body = json!({"input": {"text": text}}).to_string();
        assert_eq!(
            post(&server, "/execute", &body, None).json()["sampled"],
            true
        );
    }
    // Waits for the validations of every sampled execution.
    runtime.flush(WAIT).unwrap();
    let r = get(&server, "/metrics");
    let m = parse_prometheus(&r.text);
    let at = |series: &str| {
        *m.get(series)
            .unwrap_or_else(|| panic!("no {series} in\n{}", r.text))
    };
    assert_eq!(
        at(r#"loopai_validations_total{task="spam",version="1"}"#),
        4.0
    );
    assert_eq!(
        at(r#"loopai_validation_matches_total{task="spam",version="1"}"#),
        2.0
    );
    assert_eq!(
        at(r#"loopai_validation_match_rate{task="spam",version="1"}"#),
        0.5
    );
    assert_eq!(at(r#"loopai_executions_sampled_total{task="spam"}"#), 4.0);
    assert_eq!(at(r#"loopai_validation_queue_depth{task="spam"}"#), 0.0);
    assert_eq!(at(r#"loopai_oracle_errors_total{task="spam"}"#), 0.0);
    let v = get(&server, "/health").json();
    assert_eq!(v["validation"]["matched"], 2, "{v}");
    server.shutdown(WAIT).unwrap();
}

/// A raw connection to `server`, for what an HTTP client library hides (keep-alive,
/// half-sent headers).
fn raw(server: &ServerHandle) -> std::net::TcpStream {
    let stream = std::net::TcpStream::connect(server.local_addr()).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
}

/// Sends one keep-alive request on `stream` and returns the response (head and body).
fn exchange(stream: &mut std::net::TcpStream, method: &str, path: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).expect("a response");
        assert!(
            n > 0,
            "closed before the response: {:?}",
            String::from_utf8_lossy(&response)
        );
        response.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&response);
        if let Some((head, rest)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            if rest.len() >= length {
                return text.into_owned();
            }
        }
    }
}

/// Reads until the server closes `stream`; panics if it is still open after `WAIT`.
fn closed_by_server(stream: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    let mut all = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("connection still open after {WAIT:?} ({e})"),
        }
    }
    String::from_utf8_lossy(&all).into_owned()
}

#[test]
fn slowloris_and_idle_connections_are_closed_and_counted() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "spam");
    let mut server = Server::builder()
        .data_dir(dir.path())
        .task("spam")
        .port(0)
        .header_read_timeout(Duration::from_millis(400))
        .idle_timeout(Duration::from_millis(400))
        .build()
        .unwrap()
        .spawn()
        .unwrap();
    server.wait_ready(WAIT).unwrap();

    // A header line every 100 ms, never the end of the headers.
    let mut slow = raw(&server);
    slow.write_all(b"POST /execute HTTP/1.1\r\n").unwrap();
    let mut closed = false;
    for i in 0..300 {
        std::thread::sleep(Duration::from_millis(100));
        if slow
            .write_all(format!("x-slow-{i}: 1\r\n").as_bytes())
            .is_err()
        {
            closed = true;
            break;
        }
        slow.set_nonblocking(true).unwrap();
        let peek = slow.read(&mut [0u8; 64]);
        slow.set_nonblocking(false).unwrap();
        if matches!(peek, Ok(0))
            || matches!(&peek, Err(e) if e.kind() != std::io::ErrorKind::WouldBlock)
        {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "a slowloris client was still connected after 300 header lines"
    );

    // A keep-alive connection that goes quiet after its request.
    let mut idle = raw(&server);
    let answer = exchange(
        &mut idle,
        "POST",
        "/execute",
        r#"{"input": {"text": "win a prize"}}"#,
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(closed_by_server(&mut idle), "");

    let metrics = get(&server, "/metrics").text;
    for line in [
        "loopai_http_connections_timed_out_total{reason=\"header\"} 1\n",
        "loopai_http_connections_timed_out_total{reason=\"idle\"} 1\n",
        "loopai_http_connections_refused_total 0\n",
    ] {
        assert!(metrics.contains(line), "{line}in\n{metrics}");
    }
    server.shutdown(WAIT).unwrap();
}

#[test]
fn over_max_connections_new_ones_get_503_while_execute_keeps_answering() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "spam");
    let mut server = Server::builder()
        .data_dir(dir.path())
        .task("spam")
        .port(0)
        .max_connections(2)
        .build()
        .unwrap()
        .spawn()
        .unwrap();
    server.wait_ready(WAIT).unwrap();
    let mut first = raw(&server);
    let mut second = raw(&server);
    assert!(exchange(&mut first, "GET", "/ready", "").starts_with("HTTP/1.1 200"));
    assert!(exchange(&mut second, "GET", "/ready", "").starts_with("HTTP/1.1 200"));

    let refused = closed_by_server(&mut raw(&server));
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");

    let input = r#"{"input": {"text": "win a prize"}}"#;
    for stream in [&mut first, &mut second] {
        let answer = exchange(stream, "POST", "/execute", input);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("\"output\":\"spam\""), "{answer}");
    }
    let metrics = exchange(&mut first, "GET", "/metrics", "");
    for line in [
        "loopai_http_connections_open 2\n",
        "loopai_http_connections_max 2\n",
        "loopai_http_connections_refused_total 1\n",
    ] {
        assert!(metrics.contains(line), "{line}in\n{metrics}");
    }
    drop((first, second));
    server.shutdown(WAIT).unwrap();
}

#[test]
fn explain_returns_the_decision_path_without_logging_an_execution() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = single(dir.path());
    let r = post(
        &server,
        "/explain",
        r#"{"input": {"text": "Claim your FREE prize"}, "top_k": 3}"#,
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.headers["content-type"], "application/json");
    let v = r.json();
    assert_eq!((&v["task"], &v["version"]), (&json!("spam"), &json!(1)));
    assert_eq!(
        (&v["output"], &v["confidence"]),
        (&json!("spam"), &json!(0.95))
    );
    assert_eq!(v["decided_by"], "decide.rules[0]");
    let fired = &v["decision"]["fired"];
    assert_eq!(fired["when"]["feature"], "prize");
    assert_eq!(fired["when"]["value"], 2.0);
    assert_eq!(fired["when"]["sources"], json!(["FREE", "prize"]));
    // The central route explains the single task too.
    let r = post(
        &server,
        "/v1/explain/spam",
        r#"{"input": {"text": "see you"}}"#,
        None,
    );
    assert_eq!(r.json()["decision"]["fired"]["index"], 1);
    // Bad input: the execute endpoint's errors.
    let r = post(&server, "/explain", r#"{"input": {"text": 4}}"#, None);
    assert_eq!((r.status, r.error_kind().as_str()), (422, "invalid_input"));
    let r = post(&server, "/explain", r#"{"inputs": []}"#, None);
    assert_eq!(r.status, 400, "{}", r.text);
    // Nothing was logged or counted as an execution.
    let m = parse_prometheus(&get(&server, "/metrics").text);
    assert_eq!(
        m[r#"loopai_http_requests_total{route="explain",code="200"}"#],
        2.0
    );
    assert_eq!(
        m.get(r#"loopai_executions_total{task="spam",version="1",status="success"}"#)
            .copied()
            .unwrap_or(0.0),
        0.0
    );
    server.shutdown(WAIT).unwrap();
    let logs = dir.path().join("datasets/spam/executions");
    let records = std::fs::read_dir(&logs).map_or(0, |d| {
        d.map(|e| {
            std::fs::read_to_string(e.unwrap().path())
                .unwrap()
                .lines()
                .count()
        })
        .sum()
    });
    assert_eq!(records, 0, "explain logged an execution");
}

#[test]
fn central_explain_checks_keys_like_execute() {
    let dir = tempfile::tempdir().unwrap();
    let server = central(dir.path());
    let body = r#"{"input": {"text": "free prize"}}"#;
    let r = post(
        &server,
        "/v1/explain/b",
        body,
        Some("sk_ops_0123456789abcdef"),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["output"], "spam");
    let r = post(&server, "/v1/explain/b", body, None);
    assert_eq!((r.status, r.error_kind().as_str()), (401, "unauthorized"));
    let r = post(
        &server,
        "/v1/explain/b",
        body,
        Some("sk_checkout_0123456789"),
    );
    assert_eq!((r.status, r.error_kind().as_str()), (403, "forbidden"));
    assert_eq!(post(&server, "/explain", body, None).status, 404);
}
