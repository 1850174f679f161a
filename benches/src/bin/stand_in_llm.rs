//! A stand-in upstream LLM that speaks OpenAI's Chat Completions protocol and answers the
//! true label of the inputs it knows: the upstream of the gateway's tests and of the replay
//! benchmark (`benches/compare/gateway_replay.py`).
//!
//! ```text
//! cargo run --release -p loopai-benches --bin stand_in_llm -- --answers test.jsonl \
//!     [--addr 127.0.0.1:0] [--latency-ms 0] [--api-key-env NAME] [--fault none|500|429|hang]
//! ```
//! Prints `listening on http://ADDR/v1` (the `base_url` an OpenAI client takes) as its
//! first line on stdout once it accepts connections; stops on SIGINT/SIGTERM.
//!
//! # Protocol
//! `POST /v1/chat/completions` validates the request body as OpenAI does (a JSON object;
//! `model` a string; `messages` a non-empty array of `{role, content}` objects; `stream`,
//! `stream_options`, `n`, `temperature` checked; unknown parameters refused) and answers:
//! - a `chat.completion` object (`id`, `object`, `created`, `model`, `choices[{index,
//!   message{role, content, refusal, annotations}, logprobs, finish_reason}]`, `usage`);
//! - with `stream: true`, server-sent `chat.completion.chunk` events (the role, the content
//!   in pieces of a few characters, the finish reason, with `stream_options.include_usage`
//!   a last chunk with empty `choices` and the `usage`) ending with `data: [DONE]`;
//! - errors in OpenAI's format (`{"error": {message, type, param, code}}`): 400 for a bad
//!   request, 401 without the right `Authorization: Bearer KEY` when `--api-key-env` names
//!   a key, 404 for other paths, 500 / 429 (with `Retry-After`) when a fault is injected.
//!
//! `GET /v1/models` lists one model, `stand-in`. `GET /stand-in/stats` returns the counters
//! (requests, answers, errors by status, unknown inputs, tokens) as JSON, so that a test or
//! a benchmark can check how many calls reached the upstream.
//!
//! # Answers
//! `--answers FILE` (repeatable) is a JSONL file of `{"input": {...}, "output": LABEL}` rows,
//! the format of a data set's `test.jsonl` and of a task specification's examples. The
//! content of the last user message is looked up as the `text` field of an input and, when
//! it is a JSON object, as a whole input (key order does not matter). A known input is
//! answered with its label (a string label as is, any other output as compact JSON); an
//! unknown one with `--unknown-answer` (by default a sentence outside any label set). Every
//! answer waits `--latency-ms` first.
//!
//! Tokens are counted the way OpenAI's documentation estimates them (about four characters a
//! token, plus a few tokens per message): the figures are for comparing runs, not billing.
//!
//! # Faults
//! `--fault 500|429|hang` applies to every completion request; a marker in the last user
//! message applies to that request alone: `[stand-in:500]`, `[stand-in:429]`,
//! `[stand-in:hang]`. A hang answers normally after `--hang-secs` (default 600 s) unless
//! the client gave up first.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{BufRead, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use clap::{Parser, ValueEnum};
use serde_json::{json, Map, Value};

/// The largest request body read (OpenAI's own limit is larger; no test needs more).
const MAX_BODY: usize = 16 << 20;

/// Characters of content in one streamed chunk.
const CHUNK_CHARS: usize = 4;

/// The request parameters of Chat Completions; any other is refused, as OpenAI does.
const KNOWN_PARAMS: &[&str] = &[
    "messages",
    "model",
    "audio",
    "frequency_penalty",
    "function_call",
    "functions",
    "logit_bias",
    "logprobs",
    "max_completion_tokens",
    "max_tokens",
    "metadata",
    "modalities",
    "n",
    "parallel_tool_calls",
    "prediction",
    "presence_penalty",
    "prompt_cache_key",
    "reasoning_effort",
    "response_format",
    "safety_identifier",
    "seed",
    "service_tier",
    "stop",
    "store",
    "stream",
    "stream_options",
    "temperature",
    "tool_choice",
    "tools",
    "top_logprobs",
    "top_p",
    "user",
    "verbosity",
    "web_search_options",
];

const ROLES: &[&str] = &[
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

#[derive(Parser, Debug)]
#[command(
    name = "stand_in_llm",
    about = "A stand-in upstream LLM speaking OpenAI's Chat Completions protocol, answering \
             the true label of the inputs it knows."
)]
struct Args {
    /// JSONL file of {"input": {...}, "output": LABEL} rows (repeatable).
    #[arg(long, required = true)]
    answers: Vec<PathBuf>,
    /// Address to listen on (loopback; port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// Milliseconds to wait before every answer (fractions allowed).
    #[arg(long, default_value_t = 0.0)]
    latency_ms: f64,
    /// Milliseconds between streamed chunks.
    #[arg(long, default_value_t = 0.0)]
    chunk_delay_ms: f64,
    /// Name of an environment variable holding the API key clients must send
    /// (`Authorization: Bearer KEY`); without it any or no key is accepted.
    #[arg(long)]
    api_key_env: Option<String>,
    /// A fault injected into every completion request.
    #[arg(long, value_enum, default_value_t = Fault::None)]
    fault: Fault,
    /// The `Retry-After` seconds of a 429.
    #[arg(long, default_value_t = 1)]
    retry_after: u64,
    /// How long a hang lasts before the answer is sent anyway.
    #[arg(long, default_value_t = 600.0)]
    hang_secs: f64,
    /// The answer to an input not in the answer files.
    #[arg(long, default_value = "I don't know.")]
    unknown_answer: String,
    /// Server threads (default: one per CPU).
    #[arg(long)]
    workers: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Fault {
    /// No fault.
    None,
    /// `500` with OpenAI's server error.
    #[value(name = "500")]
    ServerError,
    /// `429` with `Retry-After`.
    #[value(name = "429")]
    RateLimited,
    /// No answer for `--hang-secs`.
    Hang,
}

/// What the server knows and how it behaves.
#[derive(Debug)]
struct Config {
    by_text: HashMap<String, String>,
    by_input: HashMap<String, String>,
    latency: Duration,
    chunk_delay: Duration,
    api_key: Option<String>,
    fault: Fault,
    retry_after: u64,
    hang: Duration,
    unknown_answer: String,
}

#[derive(Debug, Default)]
struct Stats {
    requests: AtomicU64,
    answered: AtomicU64,
    streamed: AtomicU64,
    unknown_inputs: AtomicU64,
    bad_requests: AtomicU64,
    unauthorized: AtomicU64,
    server_errors: AtomicU64,
    rate_limited: AtomicU64,
    hangs: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    next_id: AtomicU64,
}

#[derive(Debug)]
struct AppState {
    config: Config,
    stats: Stats,
}

type Shared = Arc<AppState>;

/// A validated request: what the answer depends on.
#[derive(Debug, PartialEq)]
struct ChatRequest {
    model: String,
    /// The text of every message, in order (for token counting).
    texts: Vec<String>,
    /// The content of the last user message.
    last_user: Option<String>,
    stream: bool,
    include_usage: bool,
    n: u64,
}

/// An OpenAI error: status and the `error` object.
#[derive(Debug, PartialEq)]
struct ApiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<String>,
    code: Option<&'static str>,
}

impl ApiError {
    fn invalid(message: String, param: Option<&str>, code: Option<&'static str>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message,
            kind: "invalid_request_error",
            param: param.map(str::to_owned),
            code,
        }
    }

    fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }

    fn response(&self) -> Response {
        json_response(self.status, &self.body())
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// OpenAI's words for a JSON value's type in its error messages.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a decimal",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn invalid_type(param: &str, expected: &str, got: &Value) -> ApiError {
    ApiError::invalid(
        format!(
            "Invalid type for '{param}': expected {expected}, but got {} instead.",
            type_name(got)
        ),
        Some(param),
        Some("invalid_type"),
    )
}

fn missing(param: &str) -> ApiError {
    ApiError::invalid(
        format!("Missing required parameter: '{param}'."),
        Some(param),
        Some("missing_required_parameter"),
    )
}

/// The text of a message's `content`: a string, or the `text` of its text parts.
fn content_text(param: &str, content: &Value) -> Result<String, ApiError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut text = String::new();
            for (i, part) in parts.iter().enumerate() {
                let at = format!("{param}[{i}]");
                let Value::Object(part) = part else {
                    return Err(invalid_type(&at, "an object", part));
                };
                match part.get("type") {
                    None => return Err(missing(&format!("{at}.type"))),
                    Some(Value::String(t)) if t == "text" => match part.get("text") {
                        Some(Value::String(s)) => text.push_str(s),
                        Some(other) => {
                            return Err(invalid_type(&format!("{at}.text"), "a string", other))
                        }
                        None => return Err(missing(&format!("{at}.text"))),
                    },
                    Some(Value::String(_)) => {} // images, audio, files: no text to read
                    Some(other) => {
                        return Err(invalid_type(&format!("{at}.type"), "a string", other))
                    }
                }
            }
            Ok(text)
        }
        other => Err(invalid_type(
            param,
            "one of a string or array of objects",
            other,
        )),
    }
}

/// Validates a request body as the Chat Completions API does.
fn parse_request(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(
            format!(
                "We could not parse the JSON body of your request ({e}). \
                 The API expects a JSON payload."
            ),
            None,
            None,
        )
    })?;
    let Value::Object(req) = value else {
        return Err(ApiError::invalid(
            format!(
                "Invalid type for request body: expected an object, but got {} instead.",
                type_name(&value)
            ),
            None,
            Some("invalid_type"),
        ));
    };
    if let Some(unknown) = req.keys().find(|k| !KNOWN_PARAMS.contains(&k.as_str())) {
        return Err(ApiError::invalid(
            format!("Unrecognized request argument supplied: {unknown}"),
            None,
            None,
        ));
    }
    let model = match req.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        None | Some(Value::Null) | Some(Value::String(_)) => {
            return Err(ApiError::invalid(
                "you must provide a model parameter".into(),
                None,
                None,
            ))
        }
        Some(other) => return Err(invalid_type("model", "a string", other)),
    };
    let messages = match req.get("messages") {
        None => return Err(missing("messages")),
        Some(Value::Array(m)) if m.is_empty() => {
            return Err(ApiError::invalid(
                "Invalid 'messages': empty array. Expected an array with minimum length 1, \
                 but got an empty array instead."
                    .into(),
                Some("messages"),
                Some("empty_array"),
            ))
        }
        Some(Value::Array(m)) => m,
        Some(other) => return Err(invalid_type("messages", "an array of objects", other)),
    };
    let mut texts = Vec::with_capacity(messages.len());
    let mut last_user = None;
    for (i, message) in messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        let Value::Object(message) = message else {
            return Err(invalid_type(&at, "an object", message));
        };
        let role = match message.get("role") {
            None => return Err(missing(&format!("{at}.role"))),
            Some(Value::String(r)) if ROLES.contains(&r.as_str()) => r.as_str(),
            Some(Value::String(r)) => {
                return Err(ApiError::invalid(
                    format!(
                        "Invalid value: '{r}'. Supported values are: 'system', 'assistant', \
                         'user', 'function', 'tool', and 'developer'."
                    ),
                    Some(&format!("{at}.role")),
                    Some("invalid_value"),
                ))
            }
            Some(other) => return Err(invalid_type(&format!("{at}.role"), "a string", other)),
        };
        let param = format!("{at}.content");
        let text = match message.get("content") {
            // An assistant message may carry tool calls instead of content.
            None | Some(Value::Null) if role == "assistant" => String::new(),
            None => return Err(missing(&param)),
            Some(content) => content_text(&param, content)?,
        };
        if role == "user" {
            last_user = Some(text.clone());
        }
        texts.push(text);
    }
    let stream = match req.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(invalid_type("stream", "a boolean", other)),
    };
    let include_usage = match req.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(_) if !stream => {
            return Err(ApiError::invalid(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.".into(),
                Some("stream_options"),
                Some("invalid_value"),
            ))
        }
        Some(Value::Object(options)) => match options.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(invalid_type(
                    "stream_options.include_usage",
                    "a boolean",
                    other,
                ))
            }
        },
        Some(other) => return Err(invalid_type("stream_options", "an object", other)),
    };
    let n = match req.get("n") {
        None | Some(Value::Null) => 1,
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| (1..=128).contains(&n)) => {
            n.as_u64().unwrap_or(1)
        }
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => {
            let (what, bound, code) = if n.as_i64().is_some_and(|n| n < 1) {
                ("below minimum", ">= 1", "integer_below_min_value")
            } else {
                ("above maximum", "<= 128", "integer_above_max_value")
            };
            return Err(ApiError::invalid(
                format!(
                    "Invalid 'n': integer {what} value. Expected a value {bound}, \
                     but got {n} instead."
                ),
                Some("n"),
                Some(code),
            ));
        }
        Some(other) => return Err(invalid_type("n", "an integer", other)),
    };
    match req.get("temperature") {
        None | Some(Value::Null) => {}
        Some(Value::Number(t)) => {
            let t = t.as_f64().unwrap_or(f64::NAN);
            if !(0.0..=2.0).contains(&t) {
                let (what, bound, code) = if t < 0.0 {
                    ("below minimum", ">= 0", "decimal_below_min_value")
                } else {
                    ("above maximum", "<= 2", "decimal_above_max_value")
                };
                return Err(ApiError::invalid(
                    format!(
                        "Invalid 'temperature': decimal {what} value. Expected a value {bound}, \
                         but got {t} instead."
                    ),
                    Some("temperature"),
                    Some(code),
                ));
            }
        }
        Some(other) => return Err(invalid_type("temperature", "a number", other)),
    }
    Ok(ChatRequest {
        model,
        texts,
        last_user,
        stream,
        include_usage,
        n,
    })
}

/// A JSON value with object keys sorted at every level, so that equal inputs compare equal.
fn canonical(v: &Value) -> String {
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    write(&map[k], out);
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(item, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(v, &mut out);
    out
}

/// The answers of the JSONL files: by an input's `text` and by the whole input. The first
/// row of an input wins; conflicting later rows are counted in the returned number.
#[allow(clippy::type_complexity)]
fn load_answers(
    paths: &[PathBuf],
) -> Result<(HashMap<String, String>, HashMap<String, String>, usize), String> {
    let (mut by_text, mut by_input, mut conflicts) = (HashMap::new(), HashMap::new(), 0);
    for path in paths {
        let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
            let at = || format!("{}:{}", path.display(), i + 1);
            let line = line.map_err(|e| format!("{}: {e}", at()))?;
            if line.trim().is_empty() {
                continue;
            }
            let row: Value = serde_json::from_str(&line).map_err(|e| format!("{}: {e}", at()))?;
            let (Some(input), Some(output)) = (row.get("input"), row.get("output")) else {
                return Err(format!(
                    "{}: expected an object with \"input\" and \"output\"",
                    at()
                ));
            };
            if !input.is_object() {
                return Err(format!(
                    "{}: \"input\" must be an object, got {}",
                    at(),
                    type_name(input)
                ));
            }
            let answer = match output {
                Value::String(s) => s.clone(),
                Value::Null => return Err(format!("{}: \"output\" is null", at())),
                other => other.to_string(),
            };
            let previous = by_input
                .entry(canonical(input))
                .or_insert_with(|| answer.clone());
            if *previous != answer {
                conflicts += 1;
            }
            if let Some(Value::String(text)) = input.get("text") {
                by_text.entry(text.clone()).or_insert(answer);
            }
        }
    }
    Ok((by_text, by_input, conflicts))
}

impl Config {
    /// The answer to `last_user` and whether the input was known.
    fn answer(&self, last_user: Option<&str>) -> (&str, bool) {
        let Some(text) = last_user else {
            return (&self.unknown_answer, false);
        };
        if let Some(a) = self.by_text.get(text) {
            return (a, true);
        }
        if let Ok(value @ Value::Object(_)) = serde_json::from_str::<Value>(text) {
            if let Some(a) = self.by_input.get(&canonical(&value)) {
                return (a, true);
            }
        }
        (&self.unknown_answer, false)
    }

    /// The fault for a request: the marker in its last user message, else the flag.
    fn fault(&self, last_user: Option<&str>) -> Fault {
        let text = last_user.unwrap_or("");
        if text.contains("[stand-in:500]") {
            Fault::ServerError
        } else if text.contains("[stand-in:429]") {
            Fault::RateLimited
        } else if text.contains("[stand-in:hang]") {
            Fault::Hang
        } else {
            self.fault
        }
    }
}

/// OpenAI's rule of thumb: about four characters a token.
fn tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// Prompt tokens: each message's text plus its framing (about 4 tokens), plus 3 to prime
/// the answer.
fn prompt_tokens(texts: &[String]) -> u64 {
    texts.iter().map(|t| 4 + tokens(t)).sum::<u64>() + 3
}

fn usage(prompt: u64, completion: u64) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0
        }
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The `chat.completion` object answering `req` with `content`.
fn completion(id: &str, created: u64, req: &ChatRequest, content: &str) -> Value {
    let prompt = prompt_tokens(&req.texts);
    let choices: Vec<Value> = (0..req.n)
        .map(|index| {
            json!({
                "index": index,
                "message": {
                    "role": "assistant",
                    "content": content,
                    "refusal": null,
                    "annotations": []
                },
                "logprobs": null,
                "finish_reason": "stop"
            })
        })
        .collect();
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": req.model,
        "choices": choices,
        "usage": usage(prompt, tokens(content) * req.n),
        "service_tier": "default",
        "system_fingerprint": "fp_stand_in"
    })
}

/// The server-sent events of a streamed answer, each `data: ...\n\n`, ending with
/// `data: [DONE]`.
fn stream_events(id: &str, created: u64, req: &ChatRequest, content: &str) -> Vec<String> {
    let chunk = |choices: Vec<Value>, usage: Option<Value>| {
        let mut c = Map::new();
        c.insert("id".into(), json!(id));
        c.insert("object".into(), json!("chat.completion.chunk"));
        c.insert("created".into(), json!(created));
        c.insert("model".into(), json!(req.model));
        c.insert("service_tier".into(), json!("default"));
        c.insert("system_fingerprint".into(), json!("fp_stand_in"));
        c.insert("choices".into(), Value::Array(choices));
        if req.include_usage {
            c.insert("usage".into(), usage.unwrap_or(Value::Null));
        }
        format!("data: {}\n\n", Value::Object(c))
    };
    let delta = |index: u64, delta: Value, finish: Value| json!({"index": index, "delta": delta, "logprobs": null, "finish_reason": finish});
    let chars: Vec<char> = content.chars().collect();
    let mut events = Vec::new();
    for index in 0..req.n {
        events.push(chunk(
            vec![delta(
                index,
                json!({"role": "assistant", "content": "", "refusal": null}),
                Value::Null,
            )],
            None,
        ));
        for piece in chars.chunks(CHUNK_CHARS) {
            let piece: String = piece.iter().collect();
            events.push(chunk(
                vec![delta(index, json!({"content": piece}), Value::Null)],
                None,
            ));
        }
        events.push(chunk(vec![delta(index, json!({}), json!("stop"))], None));
    }
    if req.include_usage {
        let u = usage(prompt_tokens(&req.texts), tokens(content) * req.n);
        events.push(chunk(Vec::new(), Some(u)));
    }
    events.push("data: [DONE]\n\n".to_owned());
    events
}

fn check_key(config: &Config, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &config.api_key else {
        return Ok(());
    };
    let unauthorized = |message: String, code| ApiError {
        status: StatusCode::UNAUTHORIZED,
        message,
        kind: "invalid_request_error",
        param: None,
        code,
    };
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Err(unauthorized(
            "You didn't provide an API key. You need to provide your API key in an \
             Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
                .into(),
            None,
        ));
    };
    let given = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if given != expected {
        let shown: String = given.chars().take(4).collect();
        return Err(unauthorized(
            format!("Incorrect API key provided: {shown}****."),
            Some("invalid_api_key"),
        ));
    }
    Ok(())
}

fn request_id(state: &AppState) -> String {
    let n = state.stats.next_id.fetch_add(1, Ordering::Relaxed);
    format!("chatcmpl-standin{:x}{n:012x}", unix_now())
}

async fn chat_completions(State(state): State<Shared>, request: Request) -> Response {
    let stats = &state.stats;
    stats.requests.fetch_add(1, Ordering::Relaxed);
    let (parts, body) = request.into_parts();
    if let Err(e) = check_key(&state.config, &parts.headers) {
        stats.unauthorized.fetch_add(1, Ordering::Relaxed);
        return e.response();
    }
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => {
            stats.bad_requests.fetch_add(1, Ordering::Relaxed);
            return ApiError::invalid(format!("Could not read the request body: {e}"), None, None)
                .response();
        }
    };
    let req = match parse_request(&body) {
        Ok(r) => r,
        Err(e) => {
            stats.bad_requests.fetch_add(1, Ordering::Relaxed);
            return e.response();
        }
    };
    let config = &state.config;
    if !config.latency.is_zero() {
        tokio::time::sleep(config.latency).await;
    }
    let id = request_id(&state);
    let mut response = match config.fault(req.last_user.as_deref()) {
        Fault::ServerError => {
            stats.server_errors.fetch_add(1, Ordering::Relaxed);
            return ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message: "The server had an error while processing your request. \
                          Sorry about that!"
                    .into(),
                kind: "server_error",
                param: None,
                code: None,
            }
            .response();
        }
        Fault::RateLimited => {
            stats.rate_limited.fetch_add(1, Ordering::Relaxed);
            let mut r = ApiError {
                status: StatusCode::TOO_MANY_REQUESTS,
                message: format!(
                    "Rate limit reached for requests on model {}. Please try again in {}s.",
                    req.model, config.retry_after
                ),
                kind: "requests",
                param: None,
                code: Some("rate_limit_exceeded"),
            }
            .response();
            r.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(config.retry_after));
            return r;
        }
        Fault::Hang => {
            stats.hangs.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(config.hang).await;
            answer(&state, &id, &req)
        }
        Fault::None => answer(&state, &id, &req),
    };
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

fn answer(state: &AppState, id: &str, req: &ChatRequest) -> Response {
    let (stats, config) = (&state.stats, &state.config);
    let (content, known) = config.answer(req.last_user.as_deref());
    if !known {
        stats.unknown_inputs.fetch_add(1, Ordering::Relaxed);
    }
    stats.answered.fetch_add(1, Ordering::Relaxed);
    stats
        .prompt_tokens
        .fetch_add(prompt_tokens(&req.texts), Ordering::Relaxed);
    stats
        .completion_tokens
        .fetch_add(tokens(content) * req.n, Ordering::Relaxed);
    let created = unix_now();
    if !req.stream {
        return json_response(StatusCode::OK, &completion(id, created, req, content));
    }
    stats.streamed.fetch_add(1, Ordering::Relaxed);
    let events = stream_events(id, created, req, content);
    let delay = config.chunk_delay;
    let body = futures_util::stream::unfold(
        (events.into_iter(), true),
        move |(mut events, first)| async move {
            let event = events.next()?;
            if !first && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Some((Ok::<_, Infallible>(Bytes::from(event)), (events, false)))
        },
    );
    let mut response = Response::new(Body::from_stream(body));
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert("cache-control", HeaderValue::from_static("no-cache"));
    response
}

async fn models() -> Response {
    json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": [
            {"id": "stand-in", "object": "model", "created": 0, "owned_by": "loopai"}
        ]}),
    )
}

async fn stats(State(state): State<Shared>) -> Response {
    let s = &state.stats;
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    json_response(
        StatusCode::OK,
        &json!({
            "requests": get(&s.requests),
            "answered": get(&s.answered),
            "streamed": get(&s.streamed),
            "unknown_inputs": get(&s.unknown_inputs),
            "bad_requests": get(&s.bad_requests),
            "unauthorized": get(&s.unauthorized),
            "server_errors": get(&s.server_errors),
            "rate_limited": get(&s.rate_limited),
            "hangs": get(&s.hangs),
            "prompt_tokens": get(&s.prompt_tokens),
            "completion_tokens": get(&s.completion_tokens),
        }),
    )
}

async fn not_found(method: Method, uri: Uri) -> Response {
    let mut e = ApiError::invalid(format!("Invalid URL ({method} {})", uri.path()), None, None);
    e.status = StatusCode::NOT_FOUND;
    e.response()
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let mut e = ApiError::invalid(
        format!("Invalid method for URL ({method} {})", uri.path()),
        None,
        None,
    );
    e.status = StatusCode::METHOD_NOT_ALLOWED;
    e.response()
}

fn app(state: Shared) -> Router {
    Router::new()
        .route(
            "/v1/chat/completions",
            post(chat_completions).fallback(method_not_allowed),
        )
        .route("/v1/models", get(models).fallback(method_not_allowed))
        .route("/stand-in/stats", get(stats).fallback(method_not_allowed))
        .fallback(not_found)
        .with_state(state)
}

fn millis(name: &str, ms: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(ms / 1000.0).map_err(|_| format!("{name}: {ms} is not a duration"))
}

fn config(args: &Args) -> Result<Config, String> {
    if !args.addr.ip().is_loopback() {
        return Err(format!(
            "--addr {}: the stand-in listens on loopback addresses only",
            args.addr
        ));
    }
    let api_key = match &args.api_key_env {
        None => None,
        Some(name) => match std::env::var(name) {
            Ok(key) if !key.is_empty() => Some(key),
            _ => {
                return Err(format!(
                    "--api-key-env {name}: the variable is unset or empty"
                ))
            }
        },
    };
    let (by_text, by_input, conflicts) = load_answers(&args.answers)?;
    if conflicts > 0 {
        eprintln!("stand_in_llm: {conflicts} later row(s) gave another answer to a known input; the first answer is kept");
    }
    Ok(Config {
        by_text,
        by_input,
        latency: millis("--latency-ms", args.latency_ms)?,
        chunk_delay: millis("--chunk-delay-ms", args.chunk_delay_ms)?,
        api_key,
        fault: args.fault,
        retry_after: args.retry_after,
        hang: millis("--hang-secs", args.hang_secs * 1000.0)?,
        unknown_answer: args.unknown_answer.clone(),
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("stand_in_llm: {e}");
            return ExitCode::from(2);
        }
    };
    let known = config.by_input.len();
    let state = Arc::new(AppState {
        config,
        stats: Stats::default(),
    });
    let mut serving = match loopai_http::start(
        args.addr,
        args.workers,
        "stand-in-llm",
        "starting the stand-in runtime",
        app(state),
        true,
    ) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("stand_in_llm: {e}");
            return ExitCode::from(1);
        }
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on http://{}/v1", serving.local_addr);
    let _ = out.flush();
    drop(out);
    eprintln!("stand_in_llm: {known} known inputs");
    let code = match serving.wait_for_signal() {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stand_in_llm: {e}");
            ExitCode::from(1)
        }
    };
    serving.stop();
    let _ = serving.join(Duration::from_secs(2));
    serving.shutdown_background();
    code
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;
    use std::path::Path;

    use super::*;

    fn write_answers(path: &Path, rows: &[Value]) {
        let mut text = String::new();
        for row in rows {
            let _ = writeln!(text, "{row}");
        }
        std::fs::write(path, text).unwrap();
    }

    fn body(v: Value) -> Vec<u8> {
        v.to_string().into_bytes()
    }

    fn error_of(v: Value) -> ApiError {
        parse_request(&body(v)).unwrap_err()
    }

    #[test]
    fn a_valid_request_gives_its_model_texts_and_last_user_message() {
        let req = parse_request(&body(json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "classify"},
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": null},
                {"role": "user", "content": [{"type": "text", "text": "sec"}, {"type": "text", "text": "ond"}]}
            ],
            "stream": true,
            "stream_options": {"include_usage": true},
            "temperature": 0
        })))
        .unwrap();
        assert_eq!(req.model, "m");
        assert_eq!(req.last_user.as_deref(), Some("second"));
        assert_eq!(req.texts, ["classify", "first", "", "second"]);
        assert!(req.stream && req.include_usage);
        assert_eq!(req.n, 1);
    }

    #[test]
    fn bad_requests_get_openai_errors_naming_the_parameter() {
        let e = parse_request(b"{not json").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.starts_with("We could not parse the JSON body"));
        let e = error_of(json!({"messages": [{"role": "user", "content": "x"}]}));
        assert_eq!(e.message, "you must provide a model parameter");
        let e = error_of(json!({"model": "m"}));
        assert_eq!(
            (e.param.as_deref(), e.code),
            (Some("messages"), Some("missing_required_parameter"))
        );
        let e = error_of(json!({"model": "m", "messages": []}));
        assert_eq!(e.code, Some("empty_array"));
        let e = error_of(json!({"model": "m", "messages": [{"role": "robot", "content": "x"}]}));
        assert_eq!(
            (e.param.as_deref(), e.code),
            (Some("messages[0].role"), Some("invalid_value"))
        );
        let e = error_of(json!({"model": "m", "messages": [{"role": "user"}]}));
        assert_eq!(e.param.as_deref(), Some("messages[0].content"));
        let e = error_of(json!({"model": "m", "messages": [{"role": "user", "content": 3}]}));
        assert_eq!(
            e.message,
            "Invalid type for 'messages[0].content': expected one of a string or array of \
             objects, but got an integer instead."
        );
        let ok = json!([{"role": "user", "content": "x"}]);
        let e = error_of(json!({"model": "m", "messages": ok, "stream": "yes"}));
        assert_eq!(e.param.as_deref(), Some("stream"));
        let e = error_of(
            json!({"model": "m", "messages": ok, "stream_options": {"include_usage": true}}),
        );
        assert_eq!(e.param.as_deref(), Some("stream_options"));
        let e = error_of(json!({"model": "m", "messages": ok, "n": 0}));
        assert_eq!(e.code, Some("integer_below_min_value"));
        let e = error_of(json!({"model": "m", "messages": ok, "temperature": 3}));
        assert_eq!(e.code, Some("decimal_above_max_value"));
        let e = error_of(json!({"model": "m", "messages": ok, "task": "x"}));
        assert_eq!(e.message, "Unrecognized request argument supplied: task");
        let e = error_of(json!(["model"]));
        assert_eq!(e.code, Some("invalid_type"));
        assert_eq!(
            e.body()["error"]["type"],
            json!("invalid_request_error"),
            "{:?}",
            e.body()
        );
    }

    fn test_config(dir: &Path) -> Config {
        let path = dir.join("answers.jsonl");
        write_answers(
            &path,
            &[
                json!({"input": {"text": "win a prize"}, "output": "spam"}),
                json!({"input": {"text": "see you"}, "output": "ham"}),
                json!({"input": {"text": "see you"}, "output": "spam"}),
                json!({"input": {"subject": "s", "body": "b"}, "output": {"order": 7}}),
            ],
        );
        let args = Args::parse_from(["stand_in_llm", "--answers", path.to_str().unwrap()]);
        config(&args).unwrap()
    }

    #[test]
    fn known_inputs_get_their_label_by_text_or_whole_input() {
        let dir = tempfile::tempdir().unwrap();
        let c = test_config(dir.path());
        assert_eq!(c.answer(Some("win a prize")), ("spam", true));
        assert_eq!(c.answer(Some("see you")), ("ham", true), "first row wins");
        assert_eq!(
            c.answer(Some(r#"{"body": "b", "subject": "s"}"#)),
            (r#"{"order":7}"#, true)
        );
        assert_eq!(c.answer(Some("hello")), ("I don't know.", false));
        assert_eq!(c.answer(None), ("I don't know.", false));
    }

    #[test]
    fn bad_answer_files_are_named_with_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        std::fs::write(
            &path,
            "{\"input\": {\"text\": \"x\"}, \"output\": \"a\"}\n\n[1]\n",
        )
        .unwrap();
        let err = load_answers(std::slice::from_ref(&path)).unwrap_err();
        assert!(
            err.ends_with("a.jsonl:3: expected an object with \"input\" and \"output\""),
            "{err}"
        );
        std::fs::write(&path, "{\"input\": \"x\", \"output\": \"a\"}\n").unwrap();
        let err = load_answers(std::slice::from_ref(&path)).unwrap_err();
        assert!(
            err.ends_with("a.jsonl:1: \"input\" must be an object, got a string"),
            "{err}"
        );
    }

    #[test]
    fn markers_choose_the_fault_of_one_request() {
        let dir = tempfile::tempdir().unwrap();
        let c = test_config(dir.path());
        assert_eq!(c.fault(Some("x [stand-in:500]")), Fault::ServerError);
        assert_eq!(c.fault(Some("[stand-in:429]")), Fault::RateLimited);
        assert_eq!(c.fault(Some("[stand-in:hang] y")), Fault::Hang);
        assert_eq!(c.fault(Some("plain")), Fault::None);
    }

    fn request(stream: bool, include_usage: bool) -> ChatRequest {
        ChatRequest {
            model: "gpt-x".into(),
            texts: vec!["sys".into(), "hello there".into()],
            last_user: Some("hello there".into()),
            stream,
            include_usage,
            n: 1,
        }
    }

    #[test]
    fn a_completion_has_openais_fields_and_usage() {
        let c = completion("chatcmpl-1", 5, &request(false, false), "spam");
        assert_eq!(c["object"], "chat.completion");
        assert_eq!(c["model"], "gpt-x");
        assert_eq!(c["choices"][0]["message"]["content"], "spam");
        assert_eq!(c["choices"][0]["finish_reason"], "stop");
        assert!(c["choices"][0]["logprobs"].is_null());
        // (4 + 1) + (4 + 3) + 3 prompt tokens, 1 completion token.
        assert_eq!(c["usage"]["prompt_tokens"], 15);
        assert_eq!(c["usage"]["completion_tokens"], 1);
        assert_eq!(c["usage"]["total_tokens"], 16);
    }

    #[test]
    fn a_stream_sends_role_content_pieces_finish_usage_and_done() {
        let events = stream_events("chatcmpl-1", 5, &request(true, true), "not spam");
        assert_eq!(events.last().unwrap(), "data: [DONE]\n\n");
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| {
                let data = e
                    .strip_prefix("data: ")
                    .unwrap()
                    .strip_suffix("\n\n")
                    .unwrap();
                serde_json::from_str(data).unwrap()
            })
            .collect();
        assert!(chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk"));
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let content: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(content, "not spam");
        assert_eq!(
            chunks.len(),
            1 + 2 + 1 + 1,
            "role, two pieces, finish, usage"
        );
        assert_eq!(chunks[3]["choices"][0]["finish_reason"], "stop");
        assert!(chunks[0]["usage"].is_null());
        assert_eq!(chunks[4]["choices"], json!([]));
        assert_eq!(chunks[4]["usage"]["completion_tokens"], 2);
        let without = stream_events("chatcmpl-1", 5, &request(true, false), "spam");
        assert!(!without[0].contains("\"usage\""));
    }

    #[test]
    fn a_configured_key_is_required() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = test_config(dir.path());
        c.api_key = Some("sk-right".into());
        let mut headers = HeaderMap::new();
        let e = check_key(&c, &headers).unwrap_err();
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer sk-wrong"));
        assert_eq!(
            check_key(&c, &headers).unwrap_err().code,
            Some("invalid_api_key")
        );
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer sk-right"));
        assert!(check_key(&c, &headers).is_ok());
    }

    #[test]
    fn the_server_answers_over_http_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let state = Arc::new(AppState {
            config: test_config(dir.path()),
            stats: Stats::default(),
        });
        let mut serving = loopai_http::start(
            "127.0.0.1:0".parse().unwrap(),
            Some(1),
            "stand-in-test",
            "starting",
            app(state),
            true,
        )
        .unwrap();
        let base = format!("http://{}", serving.local_addr);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let post = |body: &str| {
            let mut r = agent
                .post(format!("{base}/v1/chat/completions"))
                .header("content-type", "application/json")
                .send(body)
                .unwrap();
            let status = r.status().as_u16();
            (status, r.body_mut().read_to_string().unwrap())
        };
        let (status, text) =
            post(r#"{"model":"m","messages":[{"role":"user","content":"win a prize"}]}"#);
        assert_eq!(status, 200, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "spam");
        let (status, text) =
            post(r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"see you"}]}"#);
        assert_eq!(status, 200);
        assert!(
            text.starts_with("data: {") && text.ends_with("data: [DONE]\n\n"),
            "{text}"
        );
        let (status, text) =
            post(r#"{"model":"m","messages":[{"role":"user","content":"[stand-in:429]"}]}"#);
        assert_eq!(status, 429);
        assert!(text.contains("rate_limit_exceeded"));
        let (status, _) =
            post(r#"{"model":"m","messages":[{"role":"user","content":"[stand-in:500]"}]}"#);
        assert_eq!(status, 500);
        let (status, text) = post("{");
        assert_eq!(status, 400);
        assert!(text.contains("invalid_request_error"));
        let mut r = agent.get(format!("{base}/v1/nope")).call().unwrap();
        assert_eq!(r.status().as_u16(), 404);
        assert!(r
            .body_mut()
            .read_to_string()
            .unwrap()
            .contains("Invalid URL (GET /v1/nope)"));
        let mut r = agent.get(format!("{base}/stand-in/stats")).call().unwrap();
        let s: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        assert_eq!(
            (&s["requests"], &s["answered"], &s["streamed"]),
            (&json!(5), &json!(2), &json!(1))
        );
        assert_eq!(
            (&s["bad_requests"], &s["server_errors"], &s["rate_limited"]),
            (&json!(1), &json!(1), &json!(1))
        );
        serving.stop();
        serving.join(Duration::from_secs(5)).unwrap();
        serving.shutdown_background();
    }
}
