//! Oracles: the reference model (usually the LLM a program replaced) that sampled
//! executions are validated against and that `execution.fallback: oracle` asks when a
//! program abstains.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::Result;

/// What an oracle is asked: the task, what answers are allowed, and one input.
///
/// Serializes as the JSON document handed to foreign callbacks (C, Go, C#, Python):
/// `{"task", "description", "labels", "output_schema", "input", "timeout_ms"}`.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct OracleRequest<'a> {
    /// The task id.
    pub task: &'a str,
    /// The task description (artifact metadata `description`, empty when unknown).
    pub description: &'a str,
    /// The allowed labels of a classification task (empty for extraction).
    pub labels: &'a [String],
    /// The task's output schema, when the artifact has one.
    pub output_schema: Option<&'a Value>,
    /// The input object, exactly as given to `execute`.
    pub input: &'a Value,
    /// How long the caller waits for the answer.
    #[serde(serialize_with = "millis")]
    pub timeout: Duration,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// An oracle's answer.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct OracleAnswer {
    /// The output: a label, or an object for extraction tasks.
    pub output: Value,
    /// What the call cost in provider units (0 for in-process oracles).
    pub cost: f64,
}

impl OracleAnswer {
    /// An answer that cost nothing.
    pub fn new(output: Value) -> OracleAnswer {
        OracleAnswer { output, cost: 0.0 }
    }

    /// Sets the cost of the call.
    #[must_use]
    pub fn with_cost(mut self, cost: f64) -> OracleAnswer {
        self.cost = cost;
        self
    }
}

/// The reference model. Implementations must be thread-safe: validation workers and
/// executing threads call [`ask`](Oracle::ask) concurrently.
///
/// Errors are reported as [`crate::Error`]s (use [`crate::ErrorKind::Oracle`]); they are
/// counted and never reach `execute`'s caller except through the cascade's `abstain`.
pub trait Oracle: Send + Sync + fmt::Debug {
    /// Answers one request, giving up after `request.timeout`.
    fn ask(&self, request: &OracleRequest<'_>) -> Result<OracleAnswer>;
}

/// An in-process oracle from a closure.
///
/// ```
/// use loopai_core::{FnOracle, OracleAnswer};
/// use serde_json::json;
///
/// let oracle = FnOracle::new(|req| {
///     let text = req.input["text"].as_str().unwrap_or("");
///     Ok(OracleAnswer::new(json!(if text.contains("prize") { "spam" } else { "ham" })))
/// });
/// # let _ = oracle;
/// ```
pub struct FnOracle<F>(F);

impl<F> FnOracle<F>
where
    F: Fn(&OracleRequest<'_>) -> Result<OracleAnswer> + Send + Sync + 'static,
{
    /// Wraps `f`.
    pub fn new(f: F) -> FnOracle<F> {
        FnOracle(f)
    }

    /// Wraps `f` into the shared handle the runtime builder takes.
    pub fn shared(f: F) -> Arc<dyn Oracle> {
        Arc::new(FnOracle(f))
    }
}

impl<F> fmt::Debug for FnOracle<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnOracle")
    }
}

impl<F> Oracle for FnOracle<F>
where
    F: Fn(&OracleRequest<'_>) -> Result<OracleAnswer> + Send + Sync + 'static,
{
    fn ask(&self, request: &OracleRequest<'_>) -> Result<OracleAnswer> {
        (self.0)(request)
    }
}
