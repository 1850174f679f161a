//! `POST /v1/chat/completions`: the OpenAI-compatible gateway (see `docs/gateway.md`).
//! The decision, labels and learning are `loopai-gateway`'s; this module speaks HTTP:
//! local answers in OpenAI's format (JSON or SSE), forwarding to the upstream with
//! streams relayed chunk by chunk, and errors in OpenAI's format.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use futures_util::StreamExt;
use loopai_core::{DeploymentConfig, Error, ErrorKind, Result};
use loopai_gateway::{ChatRequest, Decision, Gateway, LocalAnswer, Pending, UpstreamAnswer};
use serde::Serialize;
use serde_json::{json, Value};

use crate::gateway_state::GatewayState;
use crate::state::{AppState, Phase};

/// The request header that names the task.
pub(crate) const TASK_HEADER: &str = "x-loopai-task";
/// The response header that says who answered: `program` or `oracle`.
pub(crate) const SOURCE_HEADER: &str = "x-loopai-source";
/// Largest request body of the gateway (the runtime's document limit).
const MAX_BODY: usize = loopai_core::MAX_INPUT_DOCUMENT_BYTES;
/// Validations of local answers in flight at most; more are skipped.
const MAX_VALIDATIONS_IN_FLIGHT: u64 = 64;

/// An error in OpenAI's format: `{"error": {"message", "type", "param", "code"}}`.
fn openai_error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let kind = match status.as_u16() {
        400..=499 => "invalid_request_error",
        503 => "server_error",
        _ => "upstream_error",
    };
    let body =
        json!({"error": {"message": message.into(), "type": kind, "param": null, "code": code}});
    let mut response = crate::http::json_response(status, &body);
    response.headers_mut().insert(
        HeaderName::from_static("x-loopai-source"),
        HeaderValue::from_static("gateway"),
    );
    response
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat_completions(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> Response {
    let received = Instant::now();
    let _in_flight = state.server.enter();
    let Some(gws) = state.gateway.get() else {
        let message = match state.phase() {
            Phase::Failed => "the server failed to load its tasks (see GET /health)",
            _ => "the server is loading its tasks; retry when GET /ready is 200",
        };
        return openai_error(StatusCode::SERVICE_UNAVAILABLE, "not_ready", message);
    };
    let (parts, body) = request.into_parts();
    let response = handle(&state, gws, parts.headers, body, received).await;
    if response
        .headers()
        .get(SOURCE_HEADER)
        .is_some_and(|v| v.as_bytes() == b"gateway")
    {
        gws.responses.refused.fetch_add(1, Relaxed);
    }
    response
}

async fn handle(
    state: &AppState,
    gws: &GatewayState,
    headers: HeaderMap,
    body: Body,
    received: Instant,
) -> Response {
    let bytes = match state.read_body(&headers, body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => return openai_error(e.status(), e.kind(), e.message().to_string()),
    };
    let request = match ChatRequest::parse(&bytes) {
        Ok(r) => r,
        Err(e) => return openai_error(StatusCode::BAD_REQUEST, "invalid_request", e.to_string()),
    };
    let task = match headers.get(TASK_HEADER).map(HeaderValue::to_str) {
        None => None,
        Some(Ok(t)) => Some(t.trim()),
        Some(Err(_)) => {
            return openai_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "X-Loopai-Task: not a visible ASCII task id",
            )
        }
    };
    if let Some(t) = task {
        if !gws.gateway.has_task(t) {
            return openai_error(
                StatusCode::NOT_FOUND,
                "unknown_task",
                format!(
                    "X-Loopai-Task: {t:?} is not a gateway task (add it with `loopai tasks add`)"
                ),
            );
        }
    }
    let decision = match gws.gateway.decide(task, &request) {
        Ok(d) => d,
        Err(e) => {
            let (status, code) = match e.kind() {
                ErrorKind::Schema => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_input"),
                ErrorKind::InvalidInput => (StatusCode::NOT_FOUND, "unknown_task"),
                ErrorKind::Closed => (StatusCode::SERVICE_UNAVAILABLE, "closed"),
                _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            };
            return openai_error(status, code, e.to_string());
        }
    };
    match decision {
        Decision::Local(answer) => {
            gws.responses.program.fetch_add(1, Relaxed);
            let model = request.model.as_deref().unwrap_or("");
            let response = if request.is_stream() {
                local_stream(&answer, model, request.include_usage())
            } else {
                local_json(&answer, model)
            };
            if let Some(pending) = answer.validate {
                spawn_validation(gws, &headers, bytes, request.is_stream(), pending);
            }
            gws.local_time.observe(received.elapsed());
            response
        }
        Decision::Forward(pending) => {
            forward(gws, &headers, bytes, request.is_stream(), pending, received).await
        }
        _ => openai_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "unknown decision",
        ),
    }
}

fn with_source(mut response: Response, source: &'static str, task: Option<&str>) -> Response {
    let h = response.headers_mut();
    h.insert(
        HeaderName::from_static(SOURCE_HEADER),
        HeaderValue::from_static(source),
    );
    if let Some(t) = task.and_then(|t| HeaderValue::from_str(t).ok()) {
        h.insert(HeaderName::from_static(TASK_HEADER), t);
    }
    response
}

/// A `chat.completion` object as OpenAI's API returns it (the fields the SDKs read).
/// A derived `Serialize` writes it straight to bytes: the local answer is the hot path.
#[derive(Serialize)]
struct Completion<'a> {
    id: String,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [Choice<'a>; 1],
    usage: Usage,
    /// `loopai-program-v<N>`, as the Python wrapper says it: SDK users see which version
    /// answered without reading headers.
    system_fingerprint: &'a str,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    message: Message<'a>,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: &'a str,
    refusal: Option<&'static str>,
}

/// `usage` of a local answer: no tokens.
#[derive(Serialize)]
struct Usage {
    prompt_tokens: u32,
    completion_tokens: u32,
    total_tokens: u32,
}

const NO_USAGE: Usage = Usage {
    prompt_tokens: 0,
    completion_tokens: 0,
    total_tokens: 0,
};

/// One `chat.completion.chunk` of a local stream.
#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: &'a str,
    choices: Vec<ChunkChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

/// What every chunk of one local stream repeats.
struct ChunkHead<'a> {
    id: &'a str,
    created: u64,
    model: &'a str,
    fingerprint: &'a str,
}

impl<'a> ChunkHead<'a> {
    fn chunk(&self, delta: Delta<'a>, finish: Option<&'static str>) -> Chunk<'a> {
        Chunk {
            id: self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model,
            system_fingerprint: self.fingerprint,
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                logprobs: None,
                finish_reason: finish,
            }],
            usage: None,
        }
    }
}

/// A chunk's `delta`: each field only when the chunk carries it.
#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    /// `Some(None)` writes `"refusal": null`, as OpenAI's first chunk has it.
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<Option<&'static str>>,
}

/// The `system_fingerprint` of a local answer.
fn fingerprint(answer: &LocalAnswer) -> String {
    format!("loopai-program-v{}", answer.version)
}

fn local_json(answer: &LocalAnswer, model: &str) -> Response {
    let fingerprint = fingerprint(answer);
    let body = Completion {
        id: answer.execution_id.to_string(),
        object: "chat.completion",
        created: unix_seconds(),
        model,
        choices: [Choice {
            index: 0,
            message: Message {
                role: "assistant",
                content: &answer.content,
                refusal: None,
            },
            logprobs: None,
            finish_reason: "stop",
        }],
        usage: NO_USAGE,
        system_fingerprint: &fingerprint,
    };
    let mut response = with_source(
        crate::http::json_response(StatusCode::OK, &body),
        "program",
        Some(&answer.task),
    );
    if let Ok(v) = HeaderValue::from_str(&answer.version.to_string()) {
        response
            .headers_mut()
            .insert(HeaderName::from_static("x-loopai-version"), v);
    }
    response
}

fn local_stream(answer: &LocalAnswer, model: &str, include_usage: bool) -> Response {
    let id = answer.execution_id.to_string();
    let created = unix_seconds();
    let fingerprint = fingerprint(answer);
    let head = ChunkHead {
        id: &id,
        created,
        model,
        fingerprint: &fingerprint,
    };
    let mut events = vec![
        head.chunk(
            Delta {
                role: Some("assistant"),
                content: Some(""),
                refusal: Some(None),
            },
            None,
        ),
        head.chunk(
            Delta {
                content: Some(&answer.content),
                ..Delta::default()
            },
            None,
        ),
        head.chunk(Delta::default(), Some("stop")),
    ];
    if include_usage {
        events.push(Chunk {
            choices: Vec::new(),
            usage: Some(NO_USAGE),
            ..head.chunk(Delta::default(), None)
        });
    }
    let mut text = Vec::with_capacity(256 * events.len());
    for e in &events {
        text.extend_from_slice(b"data: ");
        serde_json::to_writer(&mut text, e).expect("a chunk always serializes");
        text.extend_from_slice(b"\n\n");
    }
    text.extend_from_slice(b"data: [DONE]\n\n");
    let response = crate::http::bytes_response(
        StatusCode::OK,
        HeaderValue::from_static("text/event-stream"),
        text,
    );
    with_source(response, "program", Some(&answer.task))
}

/// Headers of the client's request passed to the upstream.
const FORWARD_HEADERS: [&str; 3] = ["openai-organization", "openai-project", "openai-beta"];

fn upstream_request(
    gws: &GatewayState,
    headers: &HeaderMap,
    body: Bytes,
) -> reqwest::RequestBuilder {
    let mut req = gws
        .client
        .post(&gws.url)
        .timeout(gws.timeout)
        .header(CONTENT_TYPE, "application/json")
        .body(body);
    match (&gws.api_key, headers.get(AUTHORIZATION)) {
        (Some(key), _) => req = req.header(AUTHORIZATION, key.clone()),
        (None, Some(client)) => req = req.header(AUTHORIZATION, client.clone()),
        (None, None) => {}
    }
    for name in FORWARD_HEADERS {
        if let Some(v) = headers.get(name) {
            req = req.header(name, v.clone());
        }
    }
    req
}

/// Headers of the upstream's answer relayed to the client.
fn relay_header(name: &str) -> bool {
    name == "content-type"
        || name == "retry-after"
        || name == "x-request-id"
        || name.starts_with("x-ratelimit-")
        || name.starts_with("openai-")
}

fn relayed(
    status: reqwest::StatusCode,
    upstream: &reqwest::header::HeaderMap,
    body: Body,
    task: Option<&str>,
) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() =
        StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    for (name, value) in upstream {
        if relay_header(name.as_str()) {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_str().as_bytes()),
                HeaderValue::from_bytes(value.as_bytes()),
            ) {
                response.headers_mut().insert(n, v);
            }
        }
    }
    with_source(response, "oracle", task)
}

fn upstream_error(gws: &GatewayState, e: &reqwest::Error) -> Response {
    if e.is_timeout() {
        gws.responses.upstream_timeout.fetch_add(1, Relaxed);
        openai_error(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            format!(
                "upstream {}: no complete answer within {} ms",
                gws.url,
                gws.timeout.as_millis()
            ),
        )
    } else {
        gws.responses.upstream_unreachable.fetch_add(1, Relaxed);
        openai_error(
            StatusCode::BAD_GATEWAY,
            "upstream_unreachable",
            format!("upstream {}: {}", gws.url, error_chain(e)),
        )
    }
}

/// The rustls error that `e` is or wraps. The TLS connector wraps it in an `io::Error`,
/// itself wrapped in another, and an `io::Error`'s `source()` skips the error it wraps:
/// so `io::Error`s are opened here.
fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current = e;
    // A few levels of wrapping at most; never loops.
    for _ in 0..4 {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(inner) = current
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            current = inner;
        } else {
            return None;
        }
    }
    None
}

/// The certificate problem in `e`'s chain, in words (`None` when there is none).
fn certificate_problem(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut source = Some(e);
    while let Some(s) = source {
        let tls = rustls_error(s);
        if let Some(rustls::Error::InvalidCertificate(c)) = tls {
            use rustls::CertificateError as C;
            let why = match c {
                C::UnknownIssuer => "has an unknown issuer: it is not signed by a trusted CA (set gateway.upstream.ca_file to trust a private CA)".to_owned(),
                C::Expired | C::ExpiredContext { .. } => "has expired".to_owned(),
                C::NotValidForName | C::NotValidForNameContext { .. } => {
                    "is not valid for the upstream's host name".to_owned()
                }
                other => format!("is invalid ({other:?})"),
            };
            return Some(format!("TLS: the upstream's certificate {why}"));
        }
        source = s.source();
    }
    None
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    if let Some(problem) = certificate_problem(e) {
        return problem;
    }
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

async fn forward(
    gws: &GatewayState,
    headers: &HeaderMap,
    body: Bytes,
    stream: bool,
    pending: Pending,
    received: Instant,
) -> Response {
    let started = Instant::now();
    let task = pending.task().map(str::to_string);
    let response = match upstream_request(gws, headers, body).send().await {
        Ok(r) => r,
        Err(e) => {
            gws.gateway.record_failure(pending);
            return upstream_error(gws, &e);
        }
    };
    let status = response.status();
    let upstream_headers = response.headers().clone();
    let is_sse = upstream_headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if stream && status.is_success() && is_sse {
        gws.responses.oracle.fetch_add(1, Relaxed);
        let body = relay_stream(gws.gateway.clone(), response, pending, started);
        return relayed(status, &upstream_headers, body, task.as_deref());
    }
    let bytes = match response.bytes().await {
        Ok(b) => b,
        Err(e) => {
            gws.gateway.record_failure(pending);
            return upstream_error(gws, &e);
        }
    };
    let upstream_time = started.elapsed();
    let latency_ms = upstream_time.as_secs_f64() * 1000.0;
    if status.is_success() {
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(completion) => {
                gws.gateway.record_upstream(
                    pending,
                    &UpstreamAnswer::from_completion(&completion, latency_ms),
                );
            }
            Err(_) => gws.gateway.record_failure(pending),
        }
    } else {
        gws.gateway.record_failure(pending);
    }
    gws.responses.oracle.fetch_add(1, Relaxed);
    let response = relayed(
        status,
        &upstream_headers,
        Body::from(bytes),
        task.as_deref(),
    );
    gws.forwarded_overhead
        .observe(received.elapsed().saturating_sub(upstream_time));
    response
}

/// What a relayed SSE stream said: the concatenated content, the usage, and whether it
/// ended properly (`[DONE]` or a finish reason).
#[derive(Debug, Default)]
pub(crate) struct SseCollector {
    pending: Vec<u8>,
    pub(crate) content: String,
    pub(crate) total_tokens: Option<u64>,
    pub(crate) finished: bool,
    pub(crate) done: bool,
}

impl SseCollector {
    pub(crate) fn push(&mut self, chunk: &[u8]) {
        self.pending.extend_from_slice(chunk);
        while let Some(pos) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=pos).collect();
            self.line(&line);
        }
    }

    fn line(&mut self, line: &[u8]) {
        let Ok(text) = std::str::from_utf8(line) else {
            return;
        };
        let Some(data) = text.trim_end().strip_prefix("data:") else {
            return;
        };
        let data = data.trim();
        if data == "[DONE]" {
            self.done = true;
            return;
        }
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            return;
        };
        if let Some(c) = v
            .pointer("/choices/0/delta/content")
            .and_then(Value::as_str)
        {
            self.content.push_str(c);
        }
        if v.pointer("/choices/0/finish_reason")
            .is_some_and(|f| !f.is_null())
        {
            self.finished = true;
        }
        if let Some(t) = v.pointer("/usage/total_tokens").and_then(Value::as_u64) {
            self.total_tokens = Some(t);
        }
    }
}

/// Relays the upstream's stream chunk by chunk; records its answer once it ended
/// properly, nothing if it broke off or the client left.
fn relay_stream(
    gateway: Gateway,
    response: reqwest::Response,
    pending: Pending,
    started: Instant,
) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::result::Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        let mut upstream = response.bytes_stream();
        let mut collector = SseCollector::default();
        while let Some(chunk) = upstream.next().await {
            match chunk {
                Ok(bytes) => {
                    collector.push(&bytes);
                    if tx.send(Ok(bytes)).await.is_err() {
                        gateway.record_failure(pending);
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx
                        .send(Err(std::io::Error::other(format!(
                            "upstream stream: {}",
                            error_chain(&e)
                        ))))
                        .await;
                    gateway.record_failure(pending);
                    return;
                }
            }
        }
        if collector.done || collector.finished {
            let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
            gateway.record_upstream(
                pending,
                &UpstreamAnswer::new(Some(&collector.content), collector.total_tokens, latency_ms),
            );
        } else {
            gateway.record_failure(pending);
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Body::from_stream(stream)
}

/// Sends a locally answered request to the upstream in the background and records its
/// answer as a validation (skipped when too many are in flight).
fn spawn_validation(
    gws: &GatewayState,
    headers: &HeaderMap,
    body: Bytes,
    stream: bool,
    pending: Pending,
) {
    if gws.validations_in_flight.fetch_add(1, Relaxed) >= MAX_VALIDATIONS_IN_FLIGHT {
        gws.validations_in_flight.fetch_sub(1, Relaxed);
        gws.validations_skipped.fetch_add(1, Relaxed);
        return;
    }
    let request = upstream_request(gws, headers, body);
    let gateway = gws.gateway.clone();
    let counter = Arc::clone(&gws.validations_in_flight);
    tokio::spawn(async move {
        let started = Instant::now();
        let outcome = async {
            let response = request.send().await.ok()?;
            if !response.status().is_success() {
                return None;
            }
            let bytes = response.bytes().await.ok()?;
            Some(bytes)
        }
        .await;
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        match outcome {
            Some(bytes) if stream => {
                let mut c = SseCollector::default();
                c.push(&bytes);
                if c.done || c.finished {
                    gateway.record_upstream(
                        pending,
                        &UpstreamAnswer::new(Some(&c.content), c.total_tokens, latency_ms),
                    );
                } else {
                    gateway.record_failure(pending);
                }
            }
            Some(bytes) => match serde_json::from_slice::<Value>(&bytes) {
                Ok(v) => {
                    gateway
                        .record_upstream(pending, &UpstreamAnswer::from_completion(&v, latency_ms));
                }
                Err(_) => gateway.record_failure(pending),
            },
            None => gateway.record_failure(pending),
        }
        counter.fetch_sub(1, Relaxed);
    });
}

/// The configuration of a server with a data directory, when it has a `gateway:` section.
pub(crate) fn configured(
    data_dir: &std::path::Path,
    config_file: Option<&std::path::Path>,
) -> Result<Option<DeploymentConfig>> {
    let config = match config_file {
        Some(file) => DeploymentConfig::from_file(file)?,
        None => DeploymentConfig::load_for_data_dir(data_dir)?,
    };
    Ok(config.gateway.is_some().then_some(config))
}

/// A task is either an execute task or a gateway task: both would log to one dataset
/// from two runtimes.
pub(crate) fn check_no_overlap(data_dir: &std::path::Path, tasks: &[String]) -> Result<()> {
    let gateway = loopai_gateway::gateway_tasks(data_dir)?;
    match tasks.iter().find(|t| gateway.contains(t)) {
        Some(t) => Err(Error::new(
            ErrorKind::Config,
            format!("tasks: {t:?} is a gateway task (it has a stored spec); serve it through /v1/chat/completions, not as an execute task"),
        )),
        None => Ok(()),
    }
}
