//! `POST /v1/chat/completions` end to end: a real `loopai serve` on 127.0.0.1:0 in front of
//! an in-process stand-in upstream that speaks the Chat Completions protocol (JSON and
//! SSE, error statuses, slowness), a real HTTP client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use loopai_core::{ArtifactStore, NewArtifact};
use loopai_serve::{Server, ServerHandle};
use parking_lot::Mutex;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// How the stand-in upstream answers.
#[derive(Debug, Clone)]
enum Behaviour {
    /// The true label: `spam` when the last user message mentions a prize, else `ham`.
    Label,
    /// Always this content.
    Content(&'static str),
    /// An error status with OpenAI's error body (and `Retry-After` for 429).
    Status(u16),
    /// Sleep, then answer the label.
    Slow(Duration),
    /// A stream that breaks off after its first chunk.
    BrokenStream,
}

#[derive(Debug, Default)]
struct Seen {
    bodies: Vec<Bytes>,
    authorization: Vec<Option<String>>,
}

struct Upstream {
    addr: SocketAddr,
    behaviour: Arc<Mutex<Behaviour>>,
    seen: Arc<Mutex<Seen>>,
    _runtime: tokio::runtime::Runtime,
}

impl Upstream {
    fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    fn set(&self, b: Behaviour) {
        *self.behaviour.lock() = b;
    }

    fn calls(&self) -> usize {
        self.seen.lock().bodies.len()
    }
}

type UpState = (Arc<Mutex<Behaviour>>, Arc<Mutex<Seen>>);

fn label_of(body: &Value) -> &'static str {
    let text = body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or("");
    if text.to_lowercase().contains("prize") {
        "spam"
    } else {
        "ham"
    }
}

fn sse(chunks: &[Value]) -> String {
    let mut s = String::new();
    for c in chunks {
        s.push_str(&format!("data: {c}\n\n"));
    }
    s
}

async fn completions(
    State((behaviour, seen)): State<UpState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    {
        let mut s = seen.lock();
        s.bodies.push(body.clone());
        s.authorization.push(
            headers
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_string()),
        );
    }
    let request: Value = serde_json::from_slice(&body).unwrap();
    let behaviour = behaviour.lock().clone();
    let content = match behaviour {
        Behaviour::Label => label_of(&request),
        Behaviour::Content(c) => c,
        Behaviour::Slow(d) => {
            tokio::time::sleep(d).await;
            label_of(&request)
        }
        Behaviour::Status(code) => {
            let body = json!({"error": {"message": format!("stand-in says {code}"), "type": "rate_limit_error", "param": null, "code": "standin"}});
            return Response::builder()
                .status(code)
                .header("content-type", "application/json")
                .header("retry-after", "7")
                .header("x-request-id", "req-standin")
                .body(Body::from(body.to_string()))
                .unwrap();
        }
        Behaviour::BrokenStream => {
            let first = Bytes::from(sse(&[
                json!({"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "sp"}, "finish_reason": null}]}),
            ]));
            let stream = futures_util::stream::iter(vec![
                Ok::<Bytes, std::io::Error>(first),
                Err(std::io::Error::other("cut")),
            ]);
            return Response::builder()
                .status(200)
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(stream))
                .unwrap();
        }
    };
    let model = request["model"].as_str().unwrap_or("").to_string();
    if request["stream"] == true {
        let (a, b) = content.split_at(content.len() / 2);
        let mut chunks = vec![
            json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]}),
            json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [{"index": 0, "delta": {"content": a}, "finish_reason": null}]}),
            json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [{"index": 0, "delta": {"content": b}, "finish_reason": null}]}),
            json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
        ];
        if request["stream_options"]["include_usage"] == true {
            chunks.push(json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 2, "total_tokens": 32}}));
        }
        let mut text = sse(&chunks);
        text.push_str("data: [DONE]\n\n");
        return Response::builder()
            .status(200)
            .header("content-type", "text/event-stream")
            .body(Body::from(text))
            .unwrap();
    }
    let body = json!({"id": "chatcmpl-standin", "object": "chat.completion", "created": 1, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 30, "completion_tokens": 2, "total_tokens": 32}});
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

/// A CA made at test time and a certificate for `localhost` it issued, written as
/// `ca.pem`, `cert.pem` and `key.pem` in `dir`.
fn write_test_pki(dir: &Path) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca =
        rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
}

/// The stand-in upstream over HTTPS (loopai-http's TLS serving) with the certificate in
/// `dir` (see [`write_test_pki`]); its base URL is `https://localhost:<port>/v1`.
fn tls_upstream(dir: &Path) -> (Upstream, loopai_http::Serving) {
    let behaviour = Arc::new(Mutex::new(Behaviour::Label));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let app = Router::new()
        .route("/v1/chat/completions", post(completions))
        .with_state((Arc::clone(&behaviour), Arc::clone(&seen)));
    let tls = loopai_http::ServerTls::load(dir.join("cert.pem"), dir.join("key.pem")).unwrap();
    let listener = loopai_http::Listener {
        addr: "127.0.0.1:0".parse().unwrap(),
        tls: Some(tls),
    };
    let serving = loopai_http::start_with(
        listener,
        Some(1),
        "tls-upstream",
        "starting",
        app,
        loopai_http::ConnectionLimits::default(),
        Arc::default(),
    )
    .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let upstream = Upstream {
        addr: serving.local_addr,
        behaviour,
        seen,
        _runtime: runtime,
    };
    (upstream, serving)
}

fn upstream() -> Upstream {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let behaviour = Arc::new(Mutex::new(Behaviour::Label));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let app = Router::new()
        .route("/v1/chat/completions", post(completions))
        .with_state((Arc::clone(&behaviour), Arc::clone(&seen)));
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
    Upstream {
        addr,
        behaviour,
        seen,
        _runtime: runtime,
    }
}

fn add_spec(dir: &Path) {
    let spec = loopai_synth::TaskSpec::from_json(
        br#"{"name": "spam", "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}},
        "output_schema": {"type": "string", "enum": ["spam", "ham"]}}"#,
    )
    .unwrap();
    loopai_gateway::add_task(dir, &spec).unwrap();
}

/// The rule program of the serve tests: `spam` (0.95) when a prize is mentioned, else
/// `ham` (0.8) — what the stand-in answers too.
fn install_program(dir: &Path) {
    let program = br#"{"format": "loopai.program/1", "task": "spam",
      "inputs": [{"name": "text", "path": "/text", "type": "text"}],
      "features": [{"name": "prize", "op": "keywords", "source": "text", "terms": ["prize"], "case_insensitive": true}],
      "decide": {"op": "rules", "rules": [
        {"when": {"feature": "prize", "gt": 0}, "then": "spam", "confidence": 0.95},
        {"when": {"always": true}, "then": "ham", "confidence": 0.8}]},
      "output": {"kind": "label", "labels": ["spam", "ham"]}}"#;
    ArtifactStore::open(dir, "spam")
        .unwrap()
        .install(program, NewArtifact::default(), true)
        .unwrap();
}

fn serve(dir: &Path, base_url: &str, upstream_extra: &str) -> ServerHandle {
    let config = format!(
        "gateway:\n  upstream: {{base_url: '{base_url}', timeout_ms: 2000{upstream_extra}}}\n  max_disagreement: 0.05\n  routes:\n    - {{task: spam, model: sms-model}}\nlearn: {{min_examples: 100000}}\nsampling: {{rate: 0}}\n"
    );
    std::fs::create_dir_all(dir.join("config")).unwrap();
    std::fs::write(dir.join("config/deployment.yaml"), config).unwrap();
    let server = Server::builder()
        .data_dir(dir)
        .port(0)
        .build()
        .unwrap()
        .spawn()
        .unwrap();
    server.wait_ready(WAIT).unwrap();
    server
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

    /// The OpenAI error body's `code`, after checking its shape.
    fn error_code(&self) -> String {
        let v = self.json();
        let e = v["error"].as_object().unwrap_or_else(|| panic!("{v}"));
        for key in ["message", "type", "param", "code"] {
            assert!(e.contains_key(key), "{v}");
        }
        assert!(!e["message"].as_str().unwrap().is_empty(), "{v}");
        e["code"].as_str().unwrap().to_string()
    }
}

fn chat(server: &ServerHandle, body: &str, headers: &[(&str, &str)]) -> Reply {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(WAIT))
        .build()
        .into();
    let mut req = agent
        .post(format!("{}/v1/chat/completions", server.url()))
        .header("Content-Type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut r = req.send(body).expect("HTTP exchange");
    Reply {
        status: r.status().as_u16(),
        headers: r
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        text: r.body_mut().read_to_string().unwrap(),
    }
}

fn get_json(server: &ServerHandle, path: &str) -> Value {
    let mut r = ureq::get(format!("{}{path}", server.url())).call().unwrap();
    let text = r.body_mut().read_to_string().unwrap();
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

fn get_text(server: &ServerHandle, path: &str) -> String {
    ureq::get(format!("{}{path}", server.url()))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap()
}

fn body(text: &str, stream: bool) -> String {
    json!({"model": "sms-model", "temperature": 0, "stream": stream,
        "stream_options": if stream { json!({"include_usage": true}) } else { Value::Null },
        "messages": [{"role": "system", "content": "Answer spam or ham."}, {"role": "user", "content": text}]})
    .to_string()
}

fn task_stats(server: &ServerHandle) -> Value {
    get_json(server, "/health")["gateway"]["tasks"][0].clone()
}

/// Lines of the call log.
fn call_log(dir: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir.join("datasets/spam/gateway")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        out.extend(
            text.lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap()),
        );
    }
    out
}

#[test]
fn shadow_forwards_the_body_as_sent_and_records_the_label() {
    let up = upstream();
    let dir = tempfile::tempdir().unwrap();
    add_spec(dir.path());
    let mut server = serve(dir.path(), &up.base_url(), "");
    let sent = body("You won a PRIZE", false);
    let r = chat(&server, &sent, &[("Authorization", "Bearer client-key")]);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.headers["x-loopai-source"], "oracle");
    assert_eq!(
        r.json()["id"],
        "chatcmpl-standin",
        "the upstream's answer as is"
    );
    assert_eq!(r.json()["choices"][0]["message"]["content"], "spam");
    {
        let seen = up.seen.lock();
        assert_eq!(seen.bodies[0], sent.as_bytes(), "the body as sent");
        assert_eq!(seen.authorization[0].as_deref(), Some("Bearer client-key"));
    }
    // Streamed: relayed chunk by chunk, and its content recorded.
    let r = chat(&server, &body("see you at lunch", true), &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "text/event-stream");
    assert_eq!(r.headers["x-loopai-source"], "oracle");
    assert!(r.text.ends_with("data: [DONE]\n\n"), "{}", r.text);
    assert!(r.text.contains(r#""content":"h""#), "{}", r.text);
    // No task (another model): forwarded untouched, counted.
    let other = r#"{"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}]}"#;
    let r = chat(&server, other, &[]);
    assert_eq!(r.status, 200);
    assert_eq!(up.seen.lock().bodies[2], other.as_bytes());
    // Answers outside the labels are relayed, counted, not learnt from.
    up.set(Behaviour::Content("I am not sure"));
    let r = chat(&server, &body("hmm", false), &[]);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "I am not sure"
    );
    let health = get_json(&server, "/health");
    assert_eq!(health["gateway"]["untasked_calls"], 1);
    let t = &health["gateway"]["tasks"][0];
    assert_eq!(t["state"], "shadow");
    assert_eq!(t["calls"], 3);
    assert_eq!(t["forwarded"], 3);
    assert_eq!(t["oracle_labels"], 2);
    assert_eq!(t["outside_labels"], 1);
    assert_eq!(t["upstream_tokens"], 32 * 3);
    let metrics = get_text(&server, "/metrics");
    assert!(
        metrics.contains("loopai_gateway_calls_total{task=\"spam\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("loopai_gateway_untasked_calls_total 1"),
        "{metrics}"
    );
    server.shutdown(WAIT).unwrap();
    let log = call_log(dir.path());
    assert_eq!(log.len(), 3);
    assert_eq!(log[0]["label"], "spam");
    assert_eq!(log[0]["input"], json!({"text": "You won a PRIZE"}));
    assert_eq!(log[0]["source"], "oracle");
    assert!(log[0]["upstream_latency_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(log[1]["label"], "ham", "the streamed answer");
    assert_eq!(log[2]["outside_labels"], true);
}

#[test]
fn bad_input_and_upstream_failures_get_clear_errors_and_record_nothing() {
    let up = upstream();
    let dir = tempfile::tempdir().unwrap();
    add_spec(dir.path());
    let mut server = serve(dir.path(), &up.base_url(), "");
    let r = chat(&server, "{not json", &[]);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "invalid_request")
    );
    let r = chat(&server, r#"{"model": "m"}"#, &[]);
    assert_eq!(r.status, 400);
    assert!(r.text.contains("missing field `messages`"), "{}", r.text);
    let r = chat(&server, &body("x", false), &[("X-Loopai-Task", "ghost")]);
    assert_eq!((r.status, r.error_code().as_str()), (404, "unknown_task"));
    assert!(r.text.contains("ghost"), "{}", r.text);
    let r = chat(
        &server,
        r#"{"model": "sms-model", "messages": [{"role": "system", "content": "x"}]}"#,
        &[],
    );
    assert_eq!((r.status, r.error_code().as_str()), (422, "invalid_input"));
    assert_eq!(up.calls(), 0, "refused requests are not forwarded");
    // The upstream's errors are relayed as they are.
    for code in [429, 500] {
        up.set(Behaviour::Status(code));
        let r = chat(&server, &body("a prize", false), &[]);
        assert_eq!(r.status, code);
        assert_eq!(r.error_code(), "standin");
        assert_eq!(r.headers["x-loopai-source"], "oracle");
        assert_eq!(r.headers["retry-after"], "7");
        assert_eq!(r.headers["x-request-id"], "req-standin");
    }
    // Slow: 504 after upstream.timeout_ms.
    up.set(Behaviour::Slow(Duration::from_secs(5)));
    let started = Instant::now();
    let r = chat(&server, &body("a prize", false), &[]);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (504, "upstream_timeout")
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // A stream that breaks off: the client sees it end early; nothing is recorded.
    up.set(Behaviour::BrokenStream);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let outcome = agent
        .post(format!("{}/v1/chat/completions", server.url()))
        .send(body("a prize", true))
        .map(|mut r| r.body_mut().read_to_string());
    assert!(
        !matches!(outcome, Ok(Ok(ref t)) if t.contains("[DONE]")),
        "{outcome:?}"
    );
    let t = task_stats(&server);
    assert_eq!(t["oracle_labels"], 0, "{t}");
    assert_eq!(t["upstream_errors"], 4, "{t}");
    server.shutdown(WAIT).unwrap();
    assert!(
        !dir.path().join("datasets/spam/gateway").exists() || call_log(dir.path()).is_empty(),
        "failed calls are not logged"
    );

    // Upstream down: 502.
    let dir = tempfile::tempdir().unwrap();
    add_spec(dir.path());
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut server = serve(dir.path(), &format!("http://127.0.0.1:{port}/v1"), "");
    let r = chat(&server, &body("a prize", false), &[]);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (502, "upstream_unreachable")
    );
    assert_eq!(task_stats(&server)["upstream_errors"], 1);
    server.shutdown(WAIT).unwrap();
}

#[test]
fn a_calibrated_program_answers_locally_in_openai_format() {
    let up = upstream();
    let dir = tempfile::tempdir().unwrap();
    add_spec(dir.path());
    install_program(dir.path());
    std::env::set_var("LOOPAI_GATEWAY_TEST_KEY", "sk-upstream");
    let mut server = serve(
        dir.path(),
        &up.base_url(),
        ", api_key_env: LOOPAI_GATEWAY_TEST_KEY",
    );
    assert_eq!(task_stats(&server)["state"], "learning");
    // The program agrees with the upstream: forwarded calls calibrate it.
    let mut i = 0;
    let deadline = Instant::now() + WAIT;
    while task_stats(&server)["state"] != "serving" {
        assert!(Instant::now() < deadline, "{}", task_stats(&server));
        let text = if i % 2 == 0 {
            format!("prize number {i}")
        } else {
            format!("lunch at {i}")
        };
        let r = chat(
            &server,
            &body(&text, false),
            &[("Authorization", "Bearer client-key")],
        );
        assert_eq!(r.status, 200);
        i += 1;
    }
    assert!(i >= 59, "the budget needs 59 agreeing pairs at 95%: {i}");
    assert_eq!(
        up.seen.lock().authorization[0].as_deref(),
        Some("Bearer sk-upstream"),
        "api_key_env replaces the client's key"
    );
    let before = up.calls();
    // The last calls of the loop may have been answered locally already (the threshold is
    // set by the calibrator thread, between two of them).
    let local_before = task_stats(&server)["local"].as_u64().unwrap();
    let r = chat(&server, &body("A PRIZE awaits", false), &[]);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.headers["x-loopai-source"], "program");
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "sms-model");
    assert_eq!(v["choices"][0]["message"]["content"], "spam");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["total_tokens"], 0);
    assert_eq!(v["choices"][0]["message"]["refusal"], Value::Null);
    let version = r.headers["x-loopai-version"].clone();
    assert_eq!(
        v["system_fingerprint"],
        format!("loopai-program-v{version}")
    );
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 36);
    // Streamed local answer: OpenAI's chunks, then [DONE].
    let r = chat(&server, &body("see you", true), &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "text/event-stream");
    assert_eq!(r.headers["x-loopai-source"], "program");
    let events: Vec<&str> = r.text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.last(), Some(&"data: [DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "ham");
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[2]["choices"][0]["finish_reason"], "stop");
    assert!(chunks[..3]
        .iter()
        .all(|c| c["choices"][0]["logprobs"].is_null()
            && c["system_fingerprint"]
                .as_str()
                .unwrap()
                .starts_with("loopai-program-v")
            && c["id"] == chunks[0]["id"]));
    assert_eq!(
        chunks[3]["choices"],
        json!([]),
        "the usage chunk has no choices"
    );
    assert_eq!(chunks[3]["usage"]["total_tokens"], 0, "include_usage");
    assert_eq!(
        up.calls(),
        before,
        "local answers do not reach the upstream"
    );
    let t = task_stats(&server);
    let local = t["local"].as_u64().unwrap();
    assert_eq!(local, local_before + 2, "{t}");
    assert_eq!(t["tokens_saved"].as_u64().unwrap(), local * 32, "{t}");
    assert!(t["disagreement_upper"].as_f64().unwrap() <= 0.05, "{t}");
    server.shutdown(WAIT).unwrap();
    // The local answer is in the call log (source program) and the execution log, by id.
    let log = call_log(dir.path());
    let line = log.iter().find(|l| l["id"] == id.as_str()).unwrap();
    assert_eq!(line["source"], "program");
    let executions = std::fs::read_dir(dir.path().join("datasets/spam/executions")).unwrap();
    let mut found = false;
    for e in executions {
        found |= std::fs::read_to_string(e.unwrap().path())
            .unwrap()
            .contains(&id);
    }
    assert!(found);
}

#[test]
fn an_https_upstream_is_reached_through_its_ca_file_and_refused_without() {
    let pki = tempfile::tempdir().unwrap();
    write_test_pki(pki.path());
    let (up, mut serving) = tls_upstream(pki.path());
    let base_url = format!("https://localhost:{}/v1", up.addr.port());
    let ca = pki.path().join("ca.pem");

    let dir = tempfile::tempdir().unwrap();
    add_spec(dir.path());
    let mut server = serve(
        dir.path(),
        &base_url,
        &format!(", ca_file: '{}'", ca.display()),
    );
    let r = chat(&server, &body("You won a PRIZE", false), &[]);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.headers["x-loopai-source"], "oracle");
    assert_eq!(up.calls(), 1);
    server.shutdown(WAIT).unwrap();

    // Without the CA (Mozilla's roots) the certificate is refused, saying how to fix it;
    // the call never reaches the upstream, over HTTPS or plain HTTP.
    let dir = tempfile::tempdir().unwrap();
    add_spec(dir.path());
    let mut server = serve(dir.path(), &base_url, "");
    let r = chat(&server, &body("You won a PRIZE", false), &[]);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (502, "upstream_unreachable"),
        "{}",
        r.text
    );
    assert_eq!(
        r.json()["error"]["message"],
        format!("upstream {base_url}/chat/completions: TLS: the upstream's certificate has an unknown issuer: it is not signed by a trusted CA (set gateway.upstream.ca_file to trust a private CA)")
    );
    assert_eq!(up.calls(), 1);
    server.shutdown(WAIT).unwrap();
    serving.stop();
    serving.join(WAIT).unwrap();
    serving.shutdown_background();
}

/// An extraction task beside `spam`: a hand-written program (order number, amount) and an
/// upstream answering the same object as fenced JSON; once calibrated, local answers are
/// the object as compact JSON in schema order, plain and streamed.
#[test]
fn an_extraction_task_answers_locally_with_the_object_as_json() {
    let up = upstream();
    let dir = tempfile::tempdir().unwrap();
    add_spec(dir.path());
    loopai_gateway::add_task_json(
        dir.path(),
        br#"{"name": "order", "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}},
        "output_schema": {"type": "object", "required": ["order_id"], "properties": {
          "order_id": {"type": "string"}, "amount": {"type": ["number", "null"]}}}}"#,
    )
    .unwrap();
    let program = br#"{"format": "loopai.program/1", "task": "order",
      "inputs": [{"name": "text", "path": "/text", "type": "text"}],
      "output": {"kind": "extract", "source": "text", "fields": [
        {"name": "order_id", "pattern": "ORD-[0-9]+", "confidence_found": 0.97},
        {"name": "amount", "pattern": "\\$([0-9.,]+[0-9])", "type": "number", "number_format": "auto",
         "required": false, "confidence_found": 0.95, "confidence_missing": 0.9}]}}"#;
    ArtifactStore::open(dir.path(), "order")
        .unwrap()
        .install(program, NewArtifact::default(), true)
        .unwrap();
    // The upstream answers every call with this object, fenced and in another key order.
    up.set(Behaviour::Content(
        "```json\n{\"amount\": \"1,234.50\", \"order_id\": \"ORD-77\"}\n```",
    ));
    let mut server = serve(dir.path(), &up.base_url(), "");
    let order = [("X-Loopai-Task", "order")];
    let stats = |server: &ServerHandle| {
        get_json(server, "/health")["gateway"]["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["task"] == "order")
            .unwrap()
            .clone()
    };
    let deadline = Instant::now() + WAIT;
    let mut i = 0;
    while stats(&server)["state"] != "serving" {
        assert!(Instant::now() < deadline, "{}", stats(&server));
        let r = chat(
            &server,
            &body(&format!("ORD-77, paid $1,234.50 ({i})"), false),
            &order,
        );
        assert_eq!(r.status, 200, "{}", r.text);
        i += 1;
    }
    let t = stats(&server);
    assert_eq!(t["outside_labels"], 0, "{t}");
    assert!(t["oracle_labels"].as_u64().unwrap() >= 59, "{t}");
    let want = r#"{"order_id":"ORD-77","amount":1234.5}"#;
    let r = chat(&server, &body("ORD-77 cost me $1,234.50", false), &order);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.headers["x-loopai-source"], "program");
    assert_eq!(r.headers["x-loopai-task"], "order");
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], want);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // Streamed: the role, the content, the finish reason, the usage, [DONE].
    let r = chat(&server, &body("ORD-77 cost me $1,234.50", true), &order);
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "text/event-stream");
    assert_eq!(r.headers["x-loopai-source"], "program");
    let events: Vec<&str> = r.text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.last(), Some(&"data: [DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, want);
    assert_eq!(chunks[2]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[3]["usage"]["total_tokens"], 0);
    // A forwarded answer outside the schema is relayed unchanged and counted.
    up.set(Behaviour::Content(
        "{\"order_id\": \"ORD-77\", \"note\": \"x\"}",
    ));
    let r = chat(&server, &body("no order number here", false), &order);
    assert_eq!(r.headers["x-loopai-source"], "oracle");
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "{\"order_id\": \"ORD-77\", \"note\": \"x\"}"
    );
    assert_eq!(stats(&server)["outside_labels"], 1);
    server.shutdown(WAIT).unwrap();
}
