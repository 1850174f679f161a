//! [`HttpOracle`]: an oracle reached over the chat-completions API that OpenAI introduced
//! and most LLM servers copy (vLLM, llama.cpp, Ollama, LiteLLM, Azure-style gateways...).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{quote_snippet, Oracle, OracleAnswer, OracleRequest};
use crate::clock::{Clock, SystemClock};
use crate::config::OracleConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::net::{self, is_retryable_status, parse_retry_after, Backoff, Jitter};

/// How [`HttpOracle`] waits between attempts (injectable so that tests do not sleep).
pub type SleepFn = Arc<dyn Fn(Duration) + Send + Sync>;

/// Largest response body read (an answer is a label or a small object).
const MAX_RESPONSE_BYTES: u64 = 4 << 20;
/// Longest backoff delay (a `Retry-After` may ask for longer).
pub(crate) const BACKOFF_CAP: Duration = Duration::from_secs(8);
/// The wait before retry `n` (1-based): the step `250 ms × 2^(n-1)` capped at
/// [`BACKOFF_CAP`], jittered uniformly between half and all of it; a `Retry-After` is
/// honoured whatever its length (the request's budget bounds it).
const BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(250),
    cap: BACKOFF_CAP,
    max_retry_after: Duration::MAX,
    jitter: Jitter::Equal,
};

/// An oracle that asks an LLM through `POST {base_url}/chat/completions`.
///
/// * `base_url` is what OpenAI-compatible clients call the base URL: it **includes** the API
///   version prefix, e.g. `https://api.openai.com/v1` or `http://localhost:8000/v1`; the
///   oracle appends `/chat/completions`.
/// * The API key, if any, is read once, at construction, from the environment variable
///   named by `oracle.api_key_env`, and sent as `Authorization: Bearer <key>`.
/// * Every request has its own timeout (`oracle.timeout_ms`), and the whole call —
///   attempts and the waits between them — ends within [`OracleRequest::timeout`].
/// * Connection failures, timeouts, 408, 429 and 5xx are retried up to
///   `oracle.max_retries` times with exponential backoff (250 ms doubling to 8 s, with
///   jitter: each wait is uniform between half and all of the step), or after the time a
///   `Retry-After` header asks for (seconds or an HTTP date). Other 4xx are permanent.
/// * The request: `model`, `temperature: 0`, a system message (the task, its description,
///   the allowed labels or the output schema, and "answer with ... and nothing else") and a
///   user message holding the input as JSON. See `docs/oracle.md` for the exact text.
/// * The answer (`choices[0].message.content`) is parsed strictly by
///   [`OracleRequest::parse_answer_text`]; `usage.total_tokens` becomes the cost.
///
/// Every failure is an [`ErrorKind::Oracle`] error naming the endpoint and what went wrong.
///
/// ```no_run
/// use loopai_core::{HttpOracle, Oracle, OracleRequest};
/// use serde_json::json;
/// use std::time::Duration;
///
/// let oracle = HttpOracle::new("https://api.openai.com/v1", "gpt-4o-mini")?
///     .with_api_key(std::env::var("OPENAI_API_KEY").ok());
/// let labels = ["spam".to_owned(), "ham".to_owned()];
/// let input = json!({"text": "WIN a FREE prize now"});
/// let request = OracleRequest::new("spam", "SMS spam filter", &labels, None, &input, Duration::from_secs(30));
/// assert_eq!(oracle.ask(&request)?.output, "spam");
/// # Ok::<(), loopai_core::Error>(())
/// ```
#[derive(Clone)]
pub struct HttpOracle {
    agent: ureq::Agent,
    tls: net::Tls,
    endpoint: String,
    model: String,
    api_key: Option<String>,
    api_key_env: Option<String>,
    request_timeout: Duration,
    max_retries: u32,
    sleep: SleepFn,
}

impl fmt::Debug for HttpOracle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpOracle")
            .field("endpoint", &self.endpoint)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("request_timeout", &self.request_timeout)
            .field("max_retries", &self.max_retries)
            .finish()
    }
}

impl HttpOracle {
    /// An oracle for `model` at `base_url` (`http://` or `https://`, including the `/v1`
    /// prefix), without an API key, with a 10 s request timeout and 3 retries.
    pub fn new(base_url: &str, model: &str) -> Result<HttpOracle> {
        let base = base_url.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::new(
                ErrorKind::Config,
                format!("oracle.base_url: must be an http:// or https:// URL, got {base_url:?}"),
            ));
        }
        if model.is_empty() {
            return Err(Error::new(ErrorKind::Config, "oracle.model: required"));
        }
        let tls = net::Tls::for_url("oracle.ca_file", base, None)?;
        Ok(HttpOracle {
            agent: net::agent(false, &tls),
            tls,
            endpoint: format!("{base}/chat/completions"),
            model: model.to_owned(),
            api_key: None,
            api_key_env: None,
            request_timeout: Duration::from_secs(10),
            max_retries: 3,
            sleep: Arc::new(std::thread::sleep),
        })
    }

    /// The oracle described by the `oracle` configuration section. Reads the API key from
    /// the environment variable `oracle.api_key_env`; [`ErrorKind::Config`] when that
    /// variable is not set (or empty).
    pub fn from_config(config: &OracleConfig) -> Result<HttpOracle> {
        let mut oracle = HttpOracle::new(&config.base_url, &config.model)?
            .with_timeout(Duration::from_millis(config.timeout_ms))
            .with_max_retries(config.max_retries);
        if let Some(ca_file) = &config.ca_file {
            oracle = oracle.with_ca_file(ca_file)?;
        }
        if let Some(name) = &config.api_key_env {
            let key = std::env::var(name).ok().filter(|k| !k.is_empty());
            if key.is_none() {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("oracle.api_key_env: the environment variable {name} is not set"),
                ));
            }
            oracle.api_key = key;
            oracle.api_key_env = Some(name.clone());
        }
        Ok(oracle)
    }

    /// Sends `Authorization: Bearer <key>` when `key` is given.
    #[must_use]
    pub fn with_api_key(mut self, key: Option<String>) -> HttpOracle {
        self.api_key = key;
        self
    }

    /// Trusts only the CA certificates in `ca_file` (PEM) for the oracle's HTTPS
    /// certificate, instead of Mozilla's roots: for an oracle behind a private CA.
    /// [`ErrorKind::Config`] naming `oracle.ca_file` and the file when it cannot be read
    /// or holds no usable CA certificate.
    pub fn with_ca_file(mut self, ca_file: &std::path::Path) -> Result<HttpOracle> {
        self.tls = net::Tls::for_url("oracle.ca_file", &self.endpoint, Some(ca_file))?;
        self.agent = net::agent(false, &self.tls);
        Ok(self)
    }

    /// The timeout of each HTTP request (at least 1 ms).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> HttpOracle {
        self.request_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// How many times a transient failure is retried.
    #[must_use]
    pub fn with_max_retries(mut self, retries: u32) -> HttpOracle {
        self.max_retries = retries;
        self
    }

    /// Replaces `std::thread::sleep` between attempts (for tests: record the waits
    /// instead of sleeping).
    #[must_use]
    pub fn with_sleep(mut self, sleep: SleepFn) -> HttpOracle {
        self.sleep = sleep;
        self
    }

    /// `{base_url}/chat/completions`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The model name sent with every request.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The longest time one call may take with the configured timeout and retries,
    /// assuming no `Retry-After` longer than the backoff: every attempt timing out, plus
    /// the waits between them.
    pub fn worst_case(&self) -> Duration {
        let attempts = self.max_retries.saturating_add(1);
        self.request_timeout
            .saturating_mul(attempts)
            .saturating_add(BACKOFF_CAP.saturating_mul(self.max_retries))
    }

    /// The chat-completions request body for `request`.
    pub fn request_body(&self, request: &OracleRequest<'_>) -> Value {
        let (system, user) = prompt(request);
        json!({
            "model": self.model,
            "temperature": 0,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": user},
            ],
        })
    }

    fn attempt(
        &self,
        body: &[u8],
        timeout: Duration,
    ) -> std::result::Result<(String, f64), Failure> {
        let mut req = self
            .agent
            .post(&self.endpoint)
            .config()
            .timeout_global(Some(timeout))
            .build()
            .header("Content-Type", "application/json")
            .header("Accept", "application/json");
        if let Some(key) = &self.api_key {
            req = req.header("Authorization", format!("Bearer {key}"));
        }
        let mut response = req
            .send(body)
            .map_err(|e| self.transport_failure(e, timeout))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemClock.now_millis()));
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE_BYTES)
            .lossy_utf8(true)
            .read_to_string()
            .map_err(|e| self.transport_failure(e, timeout))?;
        if !(200..300).contains(&status) {
            let detail = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| text.chars().take(200).collect());
            let hint = match (status, &self.api_key_env) {
                (401 | 403, Some(env)) => format!(" (check the API key in ${env})"),
                (401 | 403, None) => " (no API key was sent: set oracle.api_key_env)".to_owned(),
                _ => String::new(),
            };
            return Err(Failure {
                retryable: is_retryable_status(status),
                retry_after,
                message: format!("HTTP {status}{hint}: {}", quote_snippet(&detail)),
            });
        }
        let value: Value = serde_json::from_str(&text).map_err(|e| {
            Failure::permanent(format!(
                "the response is not JSON ({e}): {}",
                quote_snippet(&text)
            ))
        })?;
        let content = value["choices"][0]["message"]["content"]
            .as_str()
            .ok_or_else(|| {
                Failure::permanent(format!(
                    "the response has no choices[0].message.content string: {}",
                    quote_snippet(&text)
                ))
            })?
            .to_owned();
        let usage = &value["usage"];
        let cost = usage["total_tokens"].as_f64().unwrap_or_else(|| {
            usage["prompt_tokens"].as_f64().unwrap_or(0.0)
                + usage["completion_tokens"].as_f64().unwrap_or(0.0)
        });
        Ok((content, cost))
    }
}

impl Oracle for HttpOracle {
    fn ask(&self, request: &OracleRequest<'_>) -> Result<OracleAnswer> {
        let start = Instant::now();
        let deadline = start + request.timeout;
        let body = serde_json::to_vec(&self.request_body(request))
            .map_err(|e| Error::new(ErrorKind::Internal, format!("oracle request: {e}")))?;
        let fail = |attempts: u32, message: String| {
            let tries = if attempts == 1 {
                String::new()
            } else {
                format!(" (after {attempts} attempts)")
            };
            Err(Error::new(
                ErrorKind::Oracle,
                format!("oracle {}: {message}{tries}", self.endpoint),
            ))
        };
        let mut attempts = 0u32;
        let mut rng = fastrand::Rng::new();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return fail(
                    attempts.max(1),
                    format!("no answer within the {:?} budget", request.timeout),
                );
            }
            attempts += 1;
            let failure = match self.attempt(&body, self.request_timeout.min(remaining)) {
                Ok((content, cost)) => {
                    return match request.parse_answer_text(&content) {
                        Ok(output) => Ok(OracleAnswer { output, cost }),
                        Err(e) => fail(attempts, e.to_string()),
                    }
                }
                Err(f) => f,
            };
            if !failure.retryable || attempts > self.max_retries {
                return fail(attempts, failure.message);
            }
            let wait = BACKOFF.delay(attempts, failure.retry_after, &mut rng);
            let remaining = deadline.saturating_duration_since(Instant::now());
            if wait >= remaining {
                return fail(
                    attempts,
                    format!(
                        "{}; retrying would need a wait of {wait:?}, beyond the {remaining:?} left",
                        failure.message
                    ),
                );
            }
            log::debug!(
                "loopai: oracle {}: {}; retrying in {wait:?}",
                self.endpoint,
                failure.message
            );
            (self.sleep)(wait);
        }
    }
}

/// The system and user messages for `request`.
pub(crate) fn prompt(request: &OracleRequest<'_>) -> (String, String) {
    let mut system = format!(
        "You are the reference model for the task {:?}.",
        request.task
    );
    if !request.description.trim().is_empty() {
        system.push_str("\nTask description: ");
        system.push_str(request.description.trim());
    }
    if !request.labels.is_empty() {
        let labels = serde_json::to_string(request.labels).unwrap_or_default();
        system.push_str(&format!(
            "\nClassify the input. Answer with exactly one of these labels, written exactly as given, and nothing else: {labels}"
        ));
    } else if let Some(schema) = request.output_schema {
        system.push_str(&format!(
            "\nExtract the requested fields from the input. Answer with a single JSON object, valid against this JSON Schema, and nothing else:\n{schema}"
        ));
    } else {
        system.push_str(
            "\nExtract the requested fields from the input. Answer with a single JSON object and nothing else.",
        );
    }
    let user = format!("Input (JSON):\n{}", request.input);
    (system, user)
}

/// Why an attempt failed.
#[derive(Debug)]
struct Failure {
    retryable: bool,
    retry_after: Option<Duration>,
    message: String,
}

impl Failure {
    fn permanent(message: String) -> Failure {
        Failure {
            retryable: false,
            retry_after: None,
            message,
        }
    }
}

impl HttpOracle {
    fn transport_failure(&self, e: ureq::Error, timeout: Duration) -> Failure {
        if net::is_tls_error(&e) {
            // A refused certificate stays refused: no retry, and never a fallback to http.
            return Failure {
                retryable: false,
                retry_after: None,
                message: net::describe_error(&e, &self.endpoint, &self.tls),
            };
        }
        transport_failure(e, timeout)
    }
}

fn transport_failure(e: ureq::Error, timeout: Duration) -> Failure {
    use ureq::Error as E;
    let (retryable, message) = match e {
        E::Timeout(_) => (true, format!("no response within {timeout:?}")),
        E::ConnectionFailed => (true, "connection failed".to_owned()),
        E::HostNotFound => (true, "host not found".to_owned()),
        E::Io(io) => (true, format!("I/O error: {io}")),
        E::BodyExceedsLimit(n) => (false, format!("the response is larger than {n} bytes")),
        other => (false, other.to_string()),
    };
    Failure {
        retryable,
        retry_after: None,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_server::{Reply, TestServer};
    use super::*;
    use std::sync::Mutex;

    struct Fixture {
        server: TestServer,
        oracle: HttpOracle,
        waits: Arc<Mutex<Vec<Duration>>>,
    }

    fn fixture(script: Vec<Reply>) -> Fixture {
        let server = TestServer::start(script);
        let waits = Arc::new(Mutex::new(Vec::new()));
        let w = waits.clone();
        let oracle = HttpOracle::new(&server.base_url(), "test-model")
            .unwrap()
            .with_api_key(Some("sk-test".into()))
            .with_max_retries(2)
            .with_timeout(Duration::from_secs(5))
            .with_sleep(Arc::new(move |d| w.lock().unwrap().push(d)));
        Fixture {
            server,
            oracle,
            waits,
        }
    }

    fn labels() -> Vec<String> {
        vec!["spam".into(), "ham".into()]
    }

    fn ask(oracle: &HttpOracle, labels: &[String]) -> Result<OracleAnswer> {
        let input = json!({"text": "WIN a prize"});
        let req = OracleRequest::new(
            "sms",
            "Flags unsolicited SMS.",
            labels,
            None,
            &input,
            Duration::from_secs(30),
        );
        oracle.ask(&req)
    }

    #[test]
    fn a_good_answer_is_parsed_and_the_request_is_what_openai_expects() {
        let f = fixture(vec![Reply::content("spam")]);
        let answer = ask(&f.oracle, &labels()).unwrap();
        assert_eq!(answer.output, "spam");
        assert_eq!(answer.cost, 42.0, "usage.total_tokens is the cost");
        let got = f.server.received();
        assert_eq!(got.len(), 1);
        let r = &got[0];
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("POST", "/v1/chat/completions")
        );
        assert_eq!(r.header("authorization"), Some("Bearer sk-test"));
        assert_eq!(r.body["model"], "test-model");
        assert_eq!(r.body["temperature"], 0);
        let system = r.body["messages"][0]["content"].as_str().unwrap();
        assert_eq!(r.body["messages"][0]["role"], "system");
        assert!(system.contains("\"sms\""), "{system}");
        assert!(system.contains("Flags unsolicited SMS."), "{system}");
        assert!(system.contains(r#"["spam","ham"]"#), "{system}");
        assert_eq!(
            r.body["messages"][1]["content"],
            "Input (JSON):\n{\"text\":\"WIN a prize\"}"
        );
        assert!(f.waits.lock().unwrap().is_empty());
    }

    #[test]
    fn a_quoted_or_cased_label_is_accepted() {
        let f = fixture(vec![Reply::content(" \"Spam\"\n"), Reply::content("'HAM'")]);
        assert_eq!(ask(&f.oracle, &labels()).unwrap().output, "spam");
        assert_eq!(ask(&f.oracle, &labels()).unwrap().output, "ham");
    }

    #[test]
    fn a_garbage_answer_is_an_oracle_error_and_is_not_retried() {
        let f = fixture(vec![Reply::content("I think this is probably spam")]);
        let err = ask(&f.oracle, &labels()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Oracle);
        let msg = err.to_string();
        assert!(msg.contains("/v1/chat/completions"), "{msg}");
        assert!(
            msg.contains("\"I think this is probably spam\", which is not one of the labels [\"spam\", \"ham\"]"),
            "{msg}"
        );
        assert_eq!(f.server.received().len(), 1);
        // A response without the content field.
        let f = fixture(vec![Reply::Http(200, vec![], "{\"choices\": []}".into())]);
        let err = ask(&f.oracle, &labels()).unwrap_err();
        assert!(
            err.to_string().contains("no choices[0].message.content"),
            "{err}"
        );
    }

    #[test]
    fn extraction_answers_are_checked_against_the_schema() {
        let f = fixture(vec![
            Reply::content("```json\n{\"amount\": 12.5}\n```"),
            Reply::content("{\"amount\": \"twelve\"}"),
        ]);
        let schema = json!({"type": "object", "properties": {"amount": {"type": "number"}}});
        let input = json!({"text": "pay 12.50"});
        let req = OracleRequest::new(
            "pay",
            "",
            &[],
            Some(&schema),
            &input,
            Duration::from_secs(9),
        );
        assert_eq!(f.oracle.ask(&req).unwrap().output, json!({"amount": 12.5}));
        let err = f.oracle.ask(&req).unwrap_err();
        assert!(err.to_string().contains("oracle answer /amount:"), "{err}");
        let system = f.server.received()[0].body["messages"][0]["content"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            system.contains("valid against this JSON Schema"),
            "{system}"
        );
        assert!(system.contains("\"amount\""), "{system}");
    }

    #[test]
    fn rate_limits_honour_retry_after_then_succeed() {
        let f = fixture(vec![
            Reply::status(429).header("Retry-After", "2"),
            Reply::status(503).header("Retry-After", "0"),
            Reply::content("ham"),
        ]);
        assert_eq!(ask(&f.oracle, &labels()).unwrap().output, "ham");
        assert_eq!(
            *f.waits.lock().unwrap(),
            vec![Duration::from_secs(2), Duration::ZERO]
        );
        assert_eq!(f.server.received().len(), 3);
    }

    #[test]
    fn server_errors_are_retried_with_backoff_until_retries_run_out() {
        let f = fixture(vec![
            Reply::status(500),
            Reply::status(502),
            Reply::status(500),
        ]);
        let err = ask(&f.oracle, &labels()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Oracle);
        let msg = err.to_string();
        assert!(msg.contains("HTTP 500"), "{msg}");
        assert!(msg.ends_with("(after 3 attempts)"), "{msg}");
        let waits = f.waits.lock().unwrap().clone();
        assert_eq!(waits.len(), 2);
        // 250 ms then 500 ms steps, each jittered into [step/2, step].
        assert!(
            waits[0] >= Duration::from_millis(125) && waits[0] <= Duration::from_millis(250),
            "{waits:?}"
        );
        assert!(
            waits[1] >= Duration::from_millis(250) && waits[1] <= Duration::from_millis(500),
            "{waits:?}"
        );
    }

    #[test]
    fn client_errors_are_permanent() {
        let f = fixture(vec![Reply::status(401), Reply::content("spam")]);
        let err = ask(&f.oracle, &labels()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("HTTP 401"), "{msg}");
        assert!(msg.contains("test error 401"), "{msg}");
        assert!(!msg.contains("attempts"), "{msg}");
        assert_eq!(f.server.received().len(), 1);
        assert!(f.waits.lock().unwrap().is_empty());
    }

    #[test]
    fn a_request_that_gets_no_answer_times_out() {
        let f = fixture(vec![Reply::Hang]);
        let oracle = f
            .oracle
            .clone()
            .with_timeout(Duration::from_millis(200))
            .with_max_retries(0);
        let err = ask(&oracle, &labels()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Oracle);
        assert!(
            err.to_string().contains("no response within 200ms"),
            "{err}"
        );
    }

    #[test]
    fn a_retry_after_beyond_the_budget_is_not_waited_for() {
        let f = fixture(vec![Reply::status(429).header("Retry-After", "3600")]);
        let err = ask(&f.oracle, &labels()).unwrap_err();
        assert!(
            err.to_string()
                .contains("retrying would need a wait of 3600s"),
            "{err}"
        );
        assert!(f.waits.lock().unwrap().is_empty());
    }

    #[test]
    fn an_unreachable_server_is_a_retried_connection_failure() {
        // Bind then drop: nothing listens on the port any more.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let waits = Arc::new(Mutex::new(Vec::new()));
        let w = waits.clone();
        let oracle = HttpOracle::new(&format!("http://127.0.0.1:{port}/v1"), "m")
            .unwrap()
            .with_max_retries(1)
            .with_sleep(Arc::new(move |d| w.lock().unwrap().push(d)));
        let err = ask(&oracle, &labels()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Oracle);
        assert!(err.to_string().ends_with("(after 2 attempts)"), "{err}");
        assert_eq!(waits.lock().unwrap().len(), 1);
    }

    #[test]
    fn config_reads_the_key_from_the_environment_and_redacts_it() {
        let mut config = OracleConfig {
            base_url: "https://llm.example/v1/".into(),
            model: "m".into(),
            api_key_env: Some("LOOPAI_TEST_ORACLE_KEY_UNSET".into()),
            ..OracleConfig::default()
        };
        let err = HttpOracle::from_config(&config).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert_eq!(
            err.to_string(),
            "oracle.api_key_env: the environment variable LOOPAI_TEST_ORACLE_KEY_UNSET is not set"
        );
        // PATH is set in every test environment; it stands in for a key here.
        config.api_key_env = Some("PATH".into());
        let oracle = HttpOracle::from_config(&config).unwrap();
        assert_eq!(oracle.endpoint(), "https://llm.example/v1/chat/completions");
        let debug = format!("{oracle:?}");
        assert!(debug.contains("<redacted>"), "{debug}");
        assert!(!debug.contains(&std::env::var("PATH").unwrap()), "{debug}");
        assert_eq!(
            oracle.worst_case(),
            Duration::from_secs(4 * 10) + BACKOFF_CAP * 3
        );
    }

    #[test]
    fn an_https_oracle_behind_a_private_ca_needs_its_ca_file_and_a_refusal_is_not_retried() {
        use crate::tls_testing::{json_response, HttpsServer, TestCa};
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("private CA");
        let ca_file = ca.write_ca(dir.path(), "ca.pem");
        let answer = json!({
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "spam"}}],
            "usage": {"total_tokens": 7}
        });
        let server =
            HttpsServer::start(&ca.leaf(&["localhost"]), json_response(&answer.to_string()));
        let mut config = OracleConfig {
            base_url: format!("{}/v1", server.url()),
            model: "m".into(),
            ca_file: Some(ca_file),
            ..OracleConfig::default()
        };
        let oracle = HttpOracle::from_config(&config).unwrap();
        assert_eq!(ask(&oracle, &labels()).unwrap().output, "spam");

        // Without the CA: a clear error after one attempt, no retry, no plain-HTTP try.
        config.ca_file = None;
        let waits = Arc::new(Mutex::new(Vec::new()));
        let w = waits.clone();
        let oracle = HttpOracle::from_config(&config)
            .unwrap()
            .with_sleep(Arc::new(move |d| w.lock().unwrap().push(d)));
        let err = ask(&oracle, &labels()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Oracle);
        assert_eq!(
            err.to_string(),
            format!(
                "oracle {}/v1/chat/completions: TLS: the certificate of localhost has an unknown issuer: it is not signed by a trusted CA (set oracle.ca_file to trust a private CA)",
                server.url()
            )
        );
        assert!(waits.lock().unwrap().is_empty());
        assert_eq!(
            server.answered.load(std::sync::atomic::Ordering::Acquire),
            1
        );

        // A ca_file that cannot be read is a configuration error naming it.
        config.ca_file = Some(dir.path().join("missing.pem"));
        let err = HttpOracle::from_config(&config).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().starts_with("oracle.ca_file: "), "{err}");
    }
}
